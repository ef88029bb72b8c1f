"""Jacobian-modulated tissue maps in template space: the input of voxel-based morphometry.

A tissue probability map ``p`` of the T1w is resampled onto the template grid
through the normalization's pull-back map ``psi`` (template point -> T1w point,
the ``to_template`` transform: affine and SyN field together) and multiplied by
``det(D psi)``, the Jacobian determinant, so that the integral of tissue is kept:
``int p(x) dx = int p(psi(y)) |det D psi(y)| dy`` ("modulation", Ashburner &
Friston, 2000, NeuroImage 11:805, doi:10.1006/nimg.2000.0582; Good et al., 2001,
NeuroImage 14:21, doi:10.1006/nimg.2001.0786). A voxel of the modulated map holds
the tissue volume that maps into it, per unit template volume.

The determinant is taken from the *composed* displacement field of the whole
transform (antsApplyTransforms writes it), in ANTs' LPS physical space, by central
differences: ``D psi = I + (du/di) (D S)^-1`` with ``D S`` the grid's direction
times spacing. The Jacobian of the SyN field alone would miss the affine's
determinant (the head-size scaling), which is most of the volume change.

Output grids coarser than the T1w (a 2 mm VBM grid for a 1 mm scan) are handled
by supersampling: each output voxel is split into ``k^3`` sub-voxels, the product
is formed there and averaged back, which integrates thin cortex far better than
sampling it once per 2 mm voxel. The determinant itself is smooth (SyN's field
lives on a 2 mm grid), so it is computed on the output grid and interpolated to
the sub-voxels: 0.5 s instead of 3.3 s, total GM error -0.0046 % instead of
-0.0025 % on the 1 mm phantom (voxelwise: median 0.05 %, 99th percentile 0.4 %).

Measured on the phantoms of ``tests/test_register.py`` (GM of ~900 mL): the
modulated total differs from the native one by < 0.005 % at 1 mm and at 2 mm
(supersampled; 0.04 % when sampled once per 2 mm voxel), where the unmodulated
warped map is off by 3 % (the head-size part of the affine).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ants
import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_app.participant.antsio import to_ants
from bids_app.participant.register import TemplateRegistration, to_template


def composed_displacement(transform: Path, reference: nb.Nifti1Image) -> tuple[np.ndarray, "ants.ANTsImage"]:
    """Displacement field ``u`` (X, Y, Z, 3; LPS mm) of ``transform`` sampled on ``reference``'s grid.

    ``psi(p) = p + u(p)`` is the point map that ``transform`` applies when resampling
    onto ``reference`` (for ``to_template``: template point -> T1w point).
    """
    grid = to_ants(nb.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine))
    with tempfile.TemporaryDirectory(prefix="morphobids-jac-") as tmp:
        out = str(Path(tmp) / "field.nii")
        pointer = ants.internal.get_pointer_string(grid)
        args = ["-d", "3", "-i", pointer, "-r", pointer, "-o", f"[{out},1]",
                "-t", str(transform), "--float", "1", "-v", "0"]
        code = ants.internal.get_lib_fn("antsApplyTransforms")(args)
        if code != 0:
            raise RuntimeError(f"antsApplyTransforms could not compose {transform} (exit code {code})")
        field = np.asarray(nb.load(out).dataobj, dtype=np.float32)
    return field.reshape(reference.shape[:3] + (3,)), grid


def determinant_of_map(field: np.ndarray, grid: "ants.ANTsImage") -> np.ndarray:
    """``det(I + du/dp)`` per voxel for a displacement ``field`` (X, Y, Z, 3) in physical units.

    Central differences along the voxel axes, turned into physical derivatives with
    the grid's inverse direction-times-spacing; the 3x3 determinant is expanded by
    cofactors over whole arrays (much faster than a batched ``np.linalg.det``).
    """
    to_index = np.linalg.inv(np.asarray(grid.direction) * np.asarray(grid.spacing)).astype(np.float32)
    m = []  # m[c][e] = delta_ce + d u_c / d p_e
    for c in range(3):
        du_di = np.gradient(field[..., c], axis=(0, 1, 2))
        row = [sum(du_di[d] * to_index[d, e] for d in range(3) if to_index[d, e] != 0) for e in range(3)]
        row[c] = row[c] + np.float32(1.0)
        m.append(row)
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])).astype(np.float32)


def jacobian_determinant(reg: TemplateRegistration, reference: nb.Nifti1Image) -> nb.Nifti1Image:
    """Jacobian determinant of the template -> T1w map on the template grid ``reference``.

    Values below 1: the subject's tissue there is smaller than the template's
    (expansion into template space); above 1: larger.
    """
    field, grid = composed_displacement(reg.to_template, reference)
    return nb.Nifti1Image(determinant_of_map(field, grid), reference.affine)


def supersampled_grid(reference: nb.Nifti1Image, k: int) -> nb.Nifti1Image:
    """Empty image on ``reference``'s grid with every voxel split into ``k^3`` sub-voxels.

    Sub-voxel ``j`` sits at reference voxel coordinate ``(j - (k - 1) / 2) / k``, so the
    ``k^3`` sub-voxel centres tile each reference voxel evenly.
    """
    scale = np.diag([1.0 / k] * 3 + [1.0])
    scale[:3, 3] = -(k - 1) / (2.0 * k)
    shape = tuple(int(n) * k for n in reference.shape[:3])
    return nb.Nifti1Image(np.zeros(shape, np.uint8), reference.affine @ scale)


def block_mean(data: np.ndarray, k: int) -> np.ndarray:
    """Mean over non-overlapping ``k^3`` blocks (inverse of :func:`supersampled_grid`)."""
    if k == 1:
        return data
    x, y, z = (n // k for n in data.shape)
    return data.reshape(x, k, y, k, z, k).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def upsample_linear(data: np.ndarray, k: int, shape: tuple[int, int, int]) -> np.ndarray:
    """``data`` trilinearly interpolated at the sub-voxel centres of :func:`supersampled_grid`."""
    if k == 1:
        return data
    return ndimage.affine_transform(data, np.eye(3) / k, offset=-(k - 1) / (2.0 * k), output_shape=shape,
                                    order=1, mode="nearest").astype(np.float32)


def supersampling_factor(native: nb.Nifti1Image, reference: nb.Nifti1Image) -> int:
    """Sub-voxels per axis so the supersampled grid is about as fine as the native one."""
    ratio = max(reference.header.get_zooms()[:3]) / min(native.header.get_zooms()[:3])
    return max(1, int(np.floor(ratio + 0.25)))


def modulate(prob_native: nb.Nifti1Image, reg: TemplateRegistration, reference: nb.Nifti1Image,
             supersample: int | None = None) -> nb.Nifti1Image:
    """Jacobian-modulated ``prob_native`` on the template grid ``reference`` (float32).

    ``sum(result) * voxel_volume(reference)`` equals ``sum(prob_native) *
    voxel_volume(prob_native)`` up to interpolation error. ``supersample`` (sub-voxels
    per axis) defaults to :func:`supersampling_factor` (2 for a 1 mm scan and a 2 mm grid).
    """
    return modulate_maps({"map": prob_native}, reg, reference, supersample)["map"]


def modulate_maps(prob_natives: dict[str, nb.Nifti1Image], reg: TemplateRegistration,
                  reference: nb.Nifti1Image, supersample: int | None = None) -> dict[str, nb.Nifti1Image]:
    """:func:`modulate` of several maps on one native grid, composing the transform and its
    Jacobian determinant once for all of them."""
    if not prob_natives:
        return {}
    first = next(iter(prob_natives.values()))
    k = supersampling_factor(first, reference) if supersample is None else int(supersample)
    fine = supersampled_grid(reference, k) if k > 1 else reference
    field, grid = composed_displacement(reg.to_template, reference)
    jd = upsample_linear(determinant_of_map(field, grid), k, fine.shape[:3])
    del field
    out = {}
    for key, prob_native in prob_natives.items():
        warped = to_template(prob_native, reg, fine, interpolation="linear").get_fdata(dtype=np.float32)
        out[key] = nb.Nifti1Image(block_mean(warped * jd, k).astype(np.float32), reference.affine)
    return out
