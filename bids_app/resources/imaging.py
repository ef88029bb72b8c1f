"""Grids, resampling and atomic NIfTI writing for building the embedded resources."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

MNI_CODE = 4  # NIfTI xform code "mni"


@dataclass(frozen=True)
class Grid:
    """A RAS, axis-aligned voxel grid: shape, isotropic voxel size and first-voxel centre."""

    shape: tuple[int, int, int]
    zoom: float
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.zoom, self.zoom, self.zoom, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def matches(self, img: nib.spatialimages.SpatialImage, tol: float = 1e-3) -> bool:
        """True when ``img`` lies on this grid."""
        return tuple(img.shape[:3]) == self.shape and np.allclose(img.affine, self.affine, atol=tol)


# TemplateFlow's MNI152NLin2009cAsym grids; res-02 voxel i sits on res-01 voxel 2i.
GRIDS = {
    1: Grid((193, 229, 193), 1.0, (-96.0, -132.0, -78.0)),
    2: Grid((97, 115, 97), 2.0, (-96.0, -132.0, -78.0)),
}


def resample(data: np.ndarray, affine: np.ndarray, grid: Grid, order: int) -> np.ndarray:
    """Sample a 3D array given in world space by ``affine`` onto ``grid``.

    ``order=0`` (nearest neighbour) for labels, ``order=1`` (trilinear) for
    continuous maps; outside the source field of view the result is 0.
    """
    mapping = np.linalg.inv(affine) @ grid.affine  # target voxel -> source voxel
    return ndimage.affine_transform(
        data, mapping[:3, :3], mapping[:3, 3],
        output_shape=grid.shape, order=order, mode="constant", cval=0, prefilter=False,
    )


def downsample_1_to_2(data: np.ndarray) -> np.ndarray:
    """Partial-volume average of a 1 mm image onto the co-centred 2 mm grid.

    A 2 mm voxel centred on 1 mm voxel ``2i`` covers that voxel and half of each
    neighbour along every axis: weights (1/4, 1/2, 1/4), then keep every other voxel.
    """
    out = np.asarray(data, dtype=np.float64)
    for axis in range(3):
        out = ndimage.correlate1d(out, [0.25, 0.5, 0.25], axis=axis, mode="constant", cval=0.0)
    return out[::2, ::2, ::2]


def fill_mask(mask: np.ndarray) -> np.ndarray:
    """Binary mask with enclosed holes filled."""
    return ndimage.binary_fill_holes(mask.astype(bool))


def atomic_path(dest: Path):
    """A temporary sibling of ``dest`` with the same extension (for write-then-rename)."""
    suffix = ".nii.gz" if dest.name.endswith(".nii.gz") else dest.suffix
    handle, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(handle)
    return Path(tmp)


def _commit(tmp: Path, dest: Path) -> None:
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def save_image(data: np.ndarray, grid: Grid, dest: Path, dtype, description: str = "") -> None:
    """Write ``data`` on ``grid`` as NIfTI (MNI xform codes), atomically."""
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), grid.affine)
    img.set_sform(grid.affine, code=MNI_CODE)
    img.set_qform(grid.affine, code=MNI_CODE)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode()[:79]
    tmp = atomic_path(dest)
    try:
        nib.save(img, tmp)
        _commit(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically."""
    tmp = atomic_path(dest)
    try:
        shutil.copyfile(src, tmp)
        _commit(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, dest: Path) -> None:
    """Write a text file atomically."""
    tmp = atomic_path(dest)
    try:
        tmp.write_text(text, encoding="utf-8")
        _commit(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
