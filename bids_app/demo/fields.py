"""Smooth fields that turn one real head into a cohort of phantoms with known truth.

Pure functions on numpy arrays; nothing here reads or writes files.

Conventions
-----------
* A *vector field* is an array of shape ``(3, X, Y, Z)`` holding, at each voxel of
  the grid it lives on, a displacement in **voxel units of that grid**.
* A *pull-back map* ``x -> x + u(x)`` says where, in the source, the value shown at
  ``x`` comes from; images are resampled with it ("backward warping").
* Deformations are built as stationary velocity fields (SVFs) and exponentiated by
  scaling and squaring, so they are diffeomorphic by construction and their inverse
  is ``exp(-v)`` (Arsigny et al., MICCAI 2006, doi:10.1007/11866565_113; Ashburner,
  NeuroImage 2007, doi:10.1016/j.neuroimage.2007.07.007). :func:`jacobian_determinant`
  checks that the discretised result keeps a positive Jacobian.
* Local volume change ("atrophy") is prescribed through the divergence of the
  velocity: along the flow of ``v`` the Jacobian obeys ``d log J / dt = div v``.
  A curl-free velocity ``v = grad(phi)`` with ``laplacian(phi) = f`` therefore
  shrinks tissue where ``f < 0`` and expands it where ``f > 0`` (the construction of
  Karaçali & Davatzikos, IEEE TMI 2006, doi:10.1109/TMI.2006.875820, solved here
  with a fast cosine transform; Khanal et al., Front. Neurosci. 2017,
  doi:10.3389/fnins.2017.00132, likewise move the lost tissue volume into CSF).
* The intensity non-uniformity is a smooth multiplicative field, the log of a low
  order polynomial, as in the model behind N3/N4 (Sled et al., IEEE TMI 1998,
  doi:10.1109/42.668698). Magnitude images get Rician noise: Gaussian noise of the
  same sigma on the real and imaginary channels (Gudbjartsson & Patz, MRM 1995,
  doi:10.1002/mrm.1910340618), as BrainWeb does (Kwan et al., IEEE TMI 1999).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import legendre
from scipy import fft, ndimage

from bids_app.arrays import bounding_box

__all__ = [
    "add_rician_noise",
    "apply_bias",
    "bias_field",
    "box_selection",
    "compose",
    "cosine_field",
    "draw_bias_coefficients",
    "draw_velocity_coefficients",
    "exp_velocity",
    "jacobian_determinant",
    "jittered_points",
    "make_displacement_field",
    "poisson_velocity",
    "rayleigh_sigma",
    "sample",
    "sample_within",
    "shrink_region",
    "similarity_matrix",
    "warped_volume",
]


# --------------------------------------------------------------------------- sampling


def sample(volume: np.ndarray, coords: np.ndarray, order: int = 1, mode: str = "nearest", cval: float = 0.0):
    """Values of ``volume`` at continuous voxel ``coords`` (shape ``(3, ...)``).

    A thin wrapper over :func:`scipy.ndimage.map_coordinates` that keeps float32
    and pre-filters once for spline orders above 1.
    """
    vol = np.asarray(volume)
    if order > 1:
        vol = ndimage.spline_filter(vol, order=order, output=np.float32, mode="mirror")
    return ndimage.map_coordinates(vol, coords, order=order, mode=mode, cval=cval, prefilter=False, output=np.float32)


def box_selection(coords: np.ndarray, ref: np.ndarray, margin: int = 2) -> np.ndarray:
    """Boolean mask of the points in ``coords`` (3, ...) that fall in the box of ``ref``'s non-zero voxels.

    ``ref`` may be 4-D with the channel first (a vector field). ``margin`` grows the
    box by that many voxels, so trilinear interpolation near its faces is complete.
    """
    ref = np.asarray(ref)
    nz = np.nonzero(ref.reshape(-1, *ref.shape[-3:]).any(axis=0)) if ref.ndim == 4 else np.nonzero(ref)
    inside = np.zeros(coords.shape[1:], dtype=bool)
    if not nz[0].size:
        return inside
    inside[...] = True
    for d in range(3):
        lo, hi = float(nz[d].min()) - margin, float(nz[d].max()) + margin
        inside &= (coords[d] >= lo) & (coords[d] <= hi)
    return inside


def sample_within(
    volume: np.ndarray, coords: np.ndarray, order: int = 1, margin: int = 2,
    box_of: np.ndarray | None = None, inside: np.ndarray | None = None,
) -> np.ndarray:
    """Like :func:`sample` (zero outside), but only for points inside the box where ``volume`` is non-zero.

    Much faster when the volume's content (a brain, a displacement confined to a
    box) covers a small part of the points; other points get 0. ``box_of``: take the
    box from this array instead; ``inside``: a ready :func:`box_selection` (reuse it
    for several volumes with the same box). ``volume`` may be 4-D, channel first.
    """
    vol = np.asarray(volume)
    if inside is None:
        inside = box_selection(coords, vol if box_of is None else box_of, margin)
    out_shape = coords.shape[1:] if vol.ndim == 3 else (vol.shape[0],) + coords.shape[1:]
    out = np.zeros(out_shape, dtype=np.float32 if order > 0 or vol.dtype.kind == "f" else vol.dtype)
    if not inside.any():
        return out
    pts = coords[:, inside]
    channels = [vol] if vol.ndim == 3 else list(vol)
    for c, channel in enumerate(channels):
        values = ndimage.map_coordinates(channel, pts, order=order, mode="constant", cval=0, prefilter=False)
        if vol.ndim == 3:
            out[inside] = values
        else:
            out[c][inside] = values
    return out


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Displacement of ``x -> inner(x) -> outer(.)`` (both as pull-back displacements).

    ``w(x) = u_inner(x) + u_outer(x + u_inner(x))``: first follow ``inner``, then look
    up ``outer`` where that lands. Both fields live on the same grid.
    """
    grid = np.indices(inner.shape[1:], dtype=np.float32)
    where = grid + inner
    return inner + np.stack([sample(outer[c], where) for c in range(3)])


def exp_velocity(velocity: np.ndarray, max_step: float = 0.25) -> np.ndarray:
    """Exponentiate a stationary velocity field by scaling and squaring.

    Parameters
    ----------
    velocity : (3, X, Y, Z) array, voxel units
    max_step : the scaled field ``v / 2**n`` moves no voxel by more than this.

    Returns
    -------
    (3, X, Y, Z) float32 displacement ``u`` with ``exp(v)(x) = x + u(x)``.
    """
    v = np.asarray(velocity, dtype=np.float32)
    vmax = float(np.sqrt((v**2).sum(0)).max())
    n = max(4, math.ceil(math.log2(max(vmax, 1e-12) / max_step)))
    u = v / np.float32(2**n)
    for _ in range(n):
        u = compose(u, u)
    return u


def jacobian_determinant(displacement: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """``det(I + grad u)`` at every voxel, by central differences.

    ``displacement`` and ``spacing`` must be in the same length unit (voxel units
    with unit spacing, or millimetres with the grid's voxel size). A map is locally
    invertible (folds nowhere) where the determinant is positive.
    """
    u = np.asarray(displacement, dtype=np.float64)
    g = [[np.gradient(u[c], spacing[d], axis=d) for d in range(3)] for c in range(3)]
    a, b, c = 1 + g[0][0], g[0][1], g[0][2]
    d, e, f = g[1][0], 1 + g[1][1], g[1][2]
    h, i, j = g[2][0], g[2][1], 1 + g[2][2]
    return (a * (e * j - f * i) - b * (d * j - f * h) + c * (d * i - e * h)).astype(np.float32)


# ------------------------------------------------------------- random smooth shape change


def cosine_field(coefficients: np.ndarray, axes: list[np.ndarray], extent) -> np.ndarray:
    """Evaluate a low-frequency cosine (DCT-II) series on a rectilinear grid.

    ``field_c(q) = sum_k a[c, k] * prod_d cos(pi * k_d * (q_d + 0.5) / N_d)`` for
    ``k`` in ``{0..K-1}^3``: the smooth basis of SPM's nonlinear spatial
    normalisation (Ashburner & Friston, Hum Brain Mapp 1999,
    doi:10.1002/(SICI)1097-0193(1999)7:4<254::AID-HBM4>3.0.CO;2-G).

    Parameters
    ----------
    coefficients : (C, K, K, K) array
    axes : three 1-D arrays, the grid's coordinates ``q_d`` along each axis (any
        unit; continuous positions are allowed, the basis is defined everywhere)
    extent : ``(N_0, N_1, N_2)``, the length of the box the basis lives on
    """
    a = np.asarray(coefficients, dtype=np.float64)
    k = np.arange(a.shape[1])
    basis = [
        np.cos(np.pi * np.outer(k, np.asarray(q, dtype=np.float64) + 0.5) / n)
        for q, n in zip(axes, extent, strict=True)
    ]
    out = np.einsum("cijk,ix,jy,kz->cxyz", a, *basis, optimize=True)
    return out.astype(np.float32)


def draw_velocity_coefficients(rng: np.random.Generator, n_freq: int = 5, decay: float = 1.5) -> np.ndarray:
    """Random cosine-series coefficients ``(3, K, K, K)`` with a power-law spectrum.

    The constant term is zero (translation is left to the pose); higher frequencies
    are damped by ``(1 + |k|^2) ** -decay`` so the field is smooth. Scale the result
    with :func:`make_displacement_field`.
    """
    k = np.arange(n_freq, dtype=np.float64)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    weight = (1.0 + k2) ** (-decay)
    weight[0, 0, 0] = 0.0
    return rng.standard_normal((3, n_freq, n_freq, n_freq)) * weight


def make_displacement_field(
    coefficients: np.ndarray, axes: list[np.ndarray], extent, step: float, max_velocity: float | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """A smooth random diffeomorphism from cosine-series velocity coefficients.

    Parameters
    ----------
    coefficients : (3, K, K, K), see :func:`draw_velocity_coefficients`
    axes, extent : where to evaluate, in *source* voxel units (see :func:`cosine_field`)
    step : spacing of ``axes`` in source voxels (the field grid is usually coarser)
    max_velocity : if given, rescale the coefficients so that the largest velocity on
        the grid equals this many source voxels

    Returns
    -------
    displacement : (3, ...) pull-back displacement ``exp(v)`` in **source voxel units**
    coefficients : the coefficients actually used (rescaled when ``max_velocity``)
    vmax : the largest velocity on the grid, in source voxels
    """
    v = cosine_field(coefficients, axes, extent)
    vmax = float(np.sqrt((v**2).sum(0)).max())
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if max_velocity is not None and vmax > 0:
        factor = max_velocity / vmax
        coefficients = coefficients * factor
        v = v * np.float32(factor)
        vmax = max_velocity
    # exponentiate on the field's own grid, where one voxel is ``step`` source voxels
    u = exp_velocity(v / np.float32(step)) * np.float32(step)
    return u, coefficients, vmax


def similarity_matrix(angles_deg, translation, scale: float, center) -> np.ndarray:
    """4x4 matrix of ``x -> center + scale * R (x - center) + translation``.

    ``R`` rotates about x, then y, then z by ``angles_deg`` (degrees). Units of
    ``translation`` and ``center`` are those of the points it will act on.
    """
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    lin = scale * (rz @ ry @ rx)
    center = np.asarray(center, dtype=np.float64)
    mat = np.eye(4)
    mat[:3, :3] = lin
    mat[:3, 3] = center - lin @ center + np.asarray(translation, dtype=np.float64)
    return mat


# ------------------------------------------------------------------------ local atrophy


def poisson_velocity(source: np.ndarray) -> np.ndarray:
    """Curl-free velocity ``grad(phi)`` whose divergence is ``source`` (voxel units).

    Solves ``laplacian(phi) = source`` with zero-flux (Neumann) boundaries by a
    type-II discrete cosine transform, which diagonalises the 7-point Laplacian with
    those boundaries. The mean of ``source`` cannot be honoured under zero flux and is
    spread uniformly over the grid, so give sources that sum to (nearly) zero.
    """
    f = np.asarray(source, dtype=np.float64)
    eig = np.zeros(f.shape)
    for d, n in enumerate(f.shape):
        shape = [1, 1, 1]
        shape[d] = n
        eig = eig + (2.0 * np.cos(np.pi * np.arange(n) / n) - 2.0).reshape(shape)
    coef = fft.dctn(f, type=2, norm="ortho", workers=-1)
    eig[0, 0, 0] = 1.0
    coef /= eig
    coef[0, 0, 0] = 0.0
    phi = fft.idctn(coef, type=2, norm="ortho", workers=-1)
    return np.stack(np.gradient(phi)).astype(np.float32)


def shrink_region(
    density: np.ndarray,
    sink: np.ndarray,
    fraction: float,
    support: np.ndarray | None = None,
    margin: int = 16,
    taper: int = 6,
    n_jitter: int = 6,
    tol: float = 2e-4,
    max_iter: int = 8,
) -> tuple[np.ndarray, dict]:
    """Pull-back displacement that shrinks the tissue ``density`` by ``fraction``.

    A velocity with divergence ``k * (support - s * sink)`` is built with
    :func:`poisson_velocity`, where ``s`` balances the two terms so the volume lost
    by the region is gained by ``sink`` (e.g. the CSF around the region: sulci
    widen where cortex thins). The scalar ``k < 0`` is tuned by the secant method
    until the realised loss, ``1 - sum(density o phi) / sum(density)`` with ``phi``
    the returned map, equals ``fraction`` to within ``tol``.

    The loss is measured as a continuous volume, not as a sum over the grid: the
    (trilinearly interpolated) density is integrated by jittered sampling, one
    uniformly random point per voxel and ``n_jitter`` repetitions with a fixed seed.
    Summing the warped density at the grid points themselves overstates the loss of
    a ribbon one or two voxels thick (10 % on the grid was 9 % in any resampling).

    The work is done in the bounding box of the sources grown by ``margin`` voxels;
    the velocity is tapered to zero over the box's outer ``taper`` voxels, so the
    map is smooth and exactly the identity outside the box (with balanced sources
    the flow has decayed to a few hundredths of a voxel there).

    Parameters
    ----------
    density : partial-volume map of the tissue to shrink (e.g. GM of one gyrus)
    sink : partial-volume map that grows in exchange (0 where nothing should grow)
    fraction : wanted relative volume loss, e.g. 0.10
    support : where contraction is prescribed (default ``density``)

    Returns
    -------
    displacement : (3, X, Y, Z) pull-back displacement in voxel units
    info : ``{"k", "realised_fraction", "intended_fraction", "iterations",
        "sink_balance", "box", "jacobian_min", "jacobian_max"}``
    """
    density = np.asarray(density, dtype=np.float32)
    support = density if support is None else np.asarray(support, dtype=np.float32)
    sink = np.asarray(sink, dtype=np.float32)
    box = bounding_box((support > 0) | (sink > 0), margin)
    dens_b, supp_b, sink_b = density[box], support[box], sink[box]
    balance = float(supp_b.sum()) / max(float(sink_b.sum()), 1e-6)
    base_velocity = poisson_velocity(supp_b - np.float32(balance) * sink_b) * _taper_window(dens_b.shape, taper)
    points = jittered_points(dens_b.shape, n_jitter)
    before = warped_volume(dens_b, points)

    def loss(k: float) -> tuple[float, np.ndarray]:
        # the forward flow exp(k v) contracts the region; images are pulled back through exp(-k v)
        u = exp_velocity(np.float32(-k) * base_velocity)
        return 1.0 - warped_volume(dens_b, points, u) / before, u

    # loss(0) = 0 and loss is nearly linear in k: one probe, then secant steps
    k0, f0 = 0.0, 0.0
    k1 = 2.0 * math.log1p(-fraction)
    f1, u = loss(k1)
    iterations = 1
    while abs(f1 - fraction) > tol and iterations < max_iter and f1 != f0:
        k0, k1 = k1, k1 + (fraction - f1) * (k1 - k0) / (f1 - f0)
        f0 = f1
        f1, u = loss(k1)
        iterations += 1
    jac = jacobian_determinant(u)
    full = np.zeros((3,) + density.shape, dtype=np.float32)
    full[(slice(None),) + box] = u
    info = {
        "k": k1,
        "intended_fraction": fraction,
        "realised_fraction": f1,
        "iterations": iterations,
        "sink_balance": balance,
        "box": [[s.start, s.stop] for s in box],
        "jacobian_min": float(jac.min()),
        "jacobian_max": float(jac.max()),
    }
    return full, info


def jittered_points(shape, n: int = 2, seed: int = 0) -> list[np.ndarray]:
    """``n`` sets of one uniformly random point per voxel (fixed seed): for volume integrals."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    return [grid + rng.uniform(-0.5, 0.5, grid.shape).astype(np.float32) for _ in range(n)]


def warped_volume(density: np.ndarray, points: list[np.ndarray], displacement: np.ndarray | None = None) -> float:
    """Integral (in voxels, times ``len(points)``) of ``density`` pulled back by ``displacement``.

    Estimated by sampling the trilinear interpolant at the jittered ``points``
    (:func:`jittered_points`), which, unlike a sum over the grid, does not favour
    structures aligned with the grid.
    """
    total = 0.0
    for p in points:
        if displacement is not None:
            p = p + np.stack([sample(displacement[c], p) for c in range(3)])
        total += float(sample(density, p, mode="constant").sum(dtype=np.float64))
    return total


def _taper_window(shape, width: int) -> np.ndarray:
    """Separable window: 1 inside, a raised-cosine ramp to 0 over ``width`` voxels at each face."""
    window = np.ones(shape, dtype=np.float32)
    for d, n in enumerate(shape):
        ramp = np.ones(n, dtype=np.float32)
        w = min(width, n // 2)
        if w > 0:
            edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(w) / w)
            ramp[:w] = edge
            ramp[n - w :] = edge[::-1]
        shp = [1, 1, 1]
        shp[d] = n
        window = window * ramp.reshape(shp)
    return window


# ------------------------------------------------------------------ bias field and noise


def draw_bias_coefficients(rng: np.random.Generator, degree: int = 3) -> np.ndarray:
    """Random Legendre coefficients ``(D+1, D+1, D+1)`` for a log bias field.

    Only terms of total degree ``1..degree`` are non-zero; lower orders get more
    weight. Scale and centre the field with :func:`bias_field` arguments.
    """
    idx = np.indices((degree + 1,) * 3).sum(0)
    weight = np.where((idx >= 1) & (idx <= degree), 1.0 / np.maximum(idx, 1), 0.0)
    return rng.standard_normal((degree + 1,) * 3) * weight


def bias_field(coefficients: np.ndarray, axes, log_offset: float = 0.0) -> np.ndarray:
    """Smooth multiplicative field ``exp(log_offset + sum c_lmn P_l(x) P_m(y) P_n(z))``.

    ``P`` are Legendre polynomials; ``axes`` are three 1-D arrays of normalised
    coordinates (the box the field is defined on spans ``[-1, 1]`` along each axis),
    so grids of any resolution over the same box see the same field.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    basis = [legendre.legvander(np.asarray(x, dtype=np.float64), c.shape[d] - 1) for d, x in enumerate(axes)]
    log_b = np.einsum("lmn,xl,ym,zn->xyz", c, *basis, optimize=True) + log_offset
    return np.exp(log_b).astype(np.float32)


def apply_bias(image: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Multiply an image by a bias field (the receive-coil sensitivity model)."""
    return (np.asarray(image, dtype=np.float32) * np.asarray(bias, dtype=np.float32)).astype(np.float32)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``image + n_re + i n_im`` with ``n ~ N(0, sigma^2)`` per channel.

    In signal-free air the result is Rayleigh distributed with parameter ``sigma``;
    in bright tissue it is nearly Gaussian with standard deviation ``sigma``.
    """
    img = np.asarray(image, dtype=np.float32)
    re = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    im = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(re, im)


def rayleigh_sigma(values: np.ndarray) -> float:
    """Maximum-likelihood Rayleigh parameter of signal-free magnitudes: ``sqrt(mean(m^2)/2)``."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(v**2) / 2.0))
