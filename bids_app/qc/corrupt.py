"""Controlled degradations of a real T1w, to validate the QC metrics and checks.

Each function takes a nibabel image (RAS-conformed for the crops) and returns a new float32
image; none modifies its input, and the random ones are reproducible through ``seed``.

- :func:`add_noise`: Rician noise, as magnitude reconstruction makes it (Gudbjartsson & Patz,
  MRM 1995, doi:10.1002/mrm.1910340618): Gaussian noise on the real and imaginary channels.
- :func:`add_bias`: a smooth multiplicative field (low-order polynomial in space), the model
  of intensity non-uniformity that N3/N4 assume (Sled et al., IEEE TMI 1998, doi:10.1109/42.668698).
- :func:`blur`: Gaussian smoothing of a given FWHM.
- :func:`ghosting`: a copy of the image shifted by half the field of view along the
  phase-encoding axis (a Nyquist / periodic-motion ghost), with a random phase.
- :func:`motion_ringing`: rigid shifts of the head during part of the acquisition, simulated
  as phase ramps on a fraction of the k-space lines (Shaw et al., MIDL 2019, TorchIO's
  ``RandomMotion``; Reuter et al., NeuroImage 2015, doi:10.1016/j.neuroimage.2014.12.006).
- :func:`crop_vertex`, :func:`crop_cerebellum`: a field of view that misses the top or the
  bottom of the brain, made by removing slices (the brain then reaches the image border).
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_app.qc.masks import superior_axis, voxel_sizes


def _data(img: nb.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj).astype(np.float32)


def _image(data: np.ndarray, like: nb.Nifti1Image, affine: np.ndarray | None = None) -> nb.Nifti1Image:
    affine = like.affine if affine is None else affine
    out = nb.Nifti1Image(data.astype(np.float32), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    out.header.set_xyzt_units("mm")
    return out


def white_matter_level(img: nb.Nifti1Image, wm_mask: nb.Nifti1Image | None = None) -> float:
    """Mean WM intensity: over ``wm_mask`` when given, else the median of the brightest 10 % of
    the voxels above the mean (a T1w's head foreground is dominated by WM-bright tissue)."""
    data = _data(img)
    if wm_mask is not None:
        return float(data[np.asanyarray(wm_mask.dataobj) > 0].mean())
    foreground = data[data > data.mean()]
    return float(np.median(foreground[foreground >= np.percentile(foreground, 90)]))


def add_noise(img: nb.Nifti1Image, sigma_fraction: float, seed: int = 0,
              wm_mask: nb.Nifti1Image | None = None) -> nb.Nifti1Image:
    """Rician noise of SD ``sigma_fraction`` x the mean WM intensity (:func:`white_matter_level`)."""
    rng = np.random.default_rng(seed)
    data = _data(img)
    sigma = float(sigma_fraction) * white_matter_level(img, wm_mask)
    real = data + rng.normal(0.0, sigma, data.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, data.shape).astype(np.float32)
    return _image(np.sqrt(real * real + imag * imag), img)


def bias_field(shape, strength: float, seed: int = 0, order: int = 3) -> np.ndarray:
    """A smooth positive field whose max / min over the ellipsoid inscribed in the grid (where
    the head is) is (1 + s/2) / (1 - s/2), with geometric mean about 1 there.

    ``f``: a random polynomial of total degree ``order`` in the voxel coordinates scaled to
    -1..1 per axis, rescaled so that its range over the ellipsoid is [-1, 1] (clipped to
    [-1.5, 1.5] in the corners); the field is ``exp(c f)`` with ``c = ln((1 + s/2) / (1 - s/2)) / 2``.
    """
    if not 0 <= strength < 2:
        raise ValueError(f"bias strength must be in [0, 2), not {strength}")
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    field = np.zeros(shape, np.float32)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k:
                    field = field + np.float32(rng.normal()) * (x ** i) * (y ** j) * (z ** k)
    inside = field[(x * x + y * y + z * z) <= 1.0]
    lo, hi = float(inside.min()), float(inside.max())
    field = np.clip(2.0 * (field - lo) / ((hi - lo) or 1.0) - 1.0, -1.5, 1.5)
    half_log_ratio = 0.5 * np.log((1 + strength / 2) / (1 - strength / 2))
    return np.exp(half_log_ratio * field).astype(np.float32)


def add_bias(img: nb.Nifti1Image, strength: float, seed: int = 0) -> nb.Nifti1Image:
    """The image times a smooth field spanning ``1 +- strength / 2`` (see :func:`bias_field`)."""
    return _image(_data(img) * bias_field(img.shape[:3], strength, seed), img)


def blur(img: nb.Nifti1Image, fwhm_mm: float, seed: int = 0) -> nb.Nifti1Image:
    """Gaussian smoothing with an isotropic ``fwhm_mm`` (``seed`` is unused: deterministic)."""
    sigma = float(fwhm_mm) / np.sqrt(8 * np.log(2)) / voxel_sizes(img.affine)
    return _image(ndimage.gaussian_filter(_data(img), sigma, mode="nearest"), img)


def ghosting(img: nb.Nifti1Image, amplitude: float, seed: int = 0, axis: int = 1) -> nb.Nifti1Image:
    """Add a ghost: the image shifted circularly by N/2 along ``axis`` (the phase-encoding axis;
    default 1, anterior-posterior), scaled by ``amplitude`` and with a random phase relative to
    the object, combined as complex values and returned as magnitude."""
    rng = np.random.default_rng(seed)
    data = _data(img)
    ghost = np.roll(data, data.shape[axis] // 2, axis=axis) * np.float32(amplitude)
    phase = rng.uniform(-np.pi / 4, np.pi / 4)  # partly coherent, as a ghost of the same echo
    return _image(np.abs(data + ghost * np.exp(1j * phase)).astype(np.float32), img)


def motion_ringing(img: nb.Nifti1Image, fraction: float, seed: int = 0, shift_mm: float = 4.0,
                   axis: int = 1) -> nb.Nifti1Image:
    """Corrupt ``fraction`` of the k-space lines along the phase-encoding ``axis`` with phase
    ramps, as if the head had moved by a random translation of length ``shift_mm`` while they
    were acquired (a different random direction per line); returns the magnitude."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], not {fraction}")
    rng = np.random.default_rng(seed)
    data = _data(img)
    kspace = np.fft.fftn(data)
    n_lines = data.shape[axis]
    lines = rng.choice(n_lines, size=int(round(fraction * n_lines)), replace=False)
    zooms = voxel_sizes(img.affine)
    freqs = [np.fft.fftfreq(n, d=float(z)) for n, z in zip(data.shape, zooms)]  # cycles per mm
    for line in lines:
        direction = rng.normal(size=3)
        shift = shift_mm * direction / np.linalg.norm(direction)
        index = [slice(None)] * 3
        index[axis] = line
        grids = [f for a, f in enumerate(freqs) if a != axis]
        k_axis = freqs[axis][line]
        ka, kb = np.meshgrid(*grids, indexing="ij", sparse=True)
        other = [a for a in range(3) if a != axis]
        phase = k_axis * shift[axis] + ka * shift[other[0]] + kb * shift[other[1]]
        kspace[tuple(index)] *= np.exp(-2j * np.pi * phase)
    return _image(np.abs(np.fft.ifftn(kspace)).astype(np.float32), img)


def crop_slices(img: nb.Nifti1Image, axis: int, start: int, stop: int) -> nb.Nifti1Image:
    """Slices ``start:stop`` of ``img`` along ``axis``, with the affine moved so that every kept
    voxel stays where it was in world space."""
    index = [slice(None)] * 3
    index[axis] = slice(int(start), int(stop))
    offset = np.zeros(3)
    offset[axis] = start
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ offset + img.affine[:3, 3]
    data = np.asanyarray(img.dataobj)[tuple(index)]
    out = nb.Nifti1Image(np.ascontiguousarray(data), affine)
    out.set_data_dtype(data.dtype)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    out.header.set_xyzt_units("mm")
    return out


def crop_like(img: nb.Nifti1Image, cropped: nb.Nifti1Image) -> nb.Nifti1Image:
    """``img`` cut to the grid of ``cropped``, a crop of an image on ``img``'s grid (masks and
    tissue maps of the original follow a cropped T1w this way)."""
    offset = np.rint(np.linalg.solve(img.affine, cropped.affine)[:3, 3]).astype(int)
    out = img
    for axis in range(3):
        if offset[axis] or cropped.shape[axis] != img.shape[axis]:
            start = offset[axis]
            out = crop_slices(out, axis, start, start + cropped.shape[axis])
            offset[axis] = 0
    return out


def _brain_extent(brain_mask: nb.Nifti1Image, axis: int) -> tuple[int, int]:
    mask = np.asanyarray(brain_mask.dataobj) > 0
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    if present.size == 0:
        raise ValueError("The brain mask is empty.")
    return int(present[0]), int(present[-1])


def crop_vertex(img: nb.Nifti1Image, mm: float, brain_mask: nb.Nifti1Image, seed: int = 0) -> nb.Nifti1Image:
    """Remove the slices above the level ``mm`` below the top of the brain (``brain_mask`` on
    ``img``'s grid), so that the top ``mm`` of the brain are outside the field of view."""
    axis, sign = superior_axis(img.affine)
    lo, hi = _brain_extent(brain_mask, axis)
    cut = int(round(float(mm) / voxel_sizes(img.affine)[axis]))
    if sign > 0:
        return crop_slices(img, axis, 0, hi + 1 - cut)
    return crop_slices(img, axis, lo + cut, img.shape[axis])


def crop_cerebellum(img: nb.Nifti1Image, mm: float, brain_mask: nb.Nifti1Image, seed: int = 0) -> nb.Nifti1Image:
    """Remove the slices below the level ``mm`` above the bottom of the brain mask (the foramen
    magnum, near the lowest point of the cerebellum), cutting off the inferior cerebellum."""
    axis, sign = superior_axis(img.affine)
    lo, hi = _brain_extent(brain_mask, axis)
    cut = int(round(float(mm) / voxel_sizes(img.affine)[axis]))
    if sign > 0:
        return crop_slices(img, axis, lo + cut, img.shape[axis])
    return crop_slices(img, axis, 0, hi + 1 - cut)
