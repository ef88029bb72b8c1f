"""Exact, in-memory conversion between nibabel (RAS+ world) and ANTs (LPS world) images,
and a private folder for the temporary files antspyx leaves behind."""

from __future__ import annotations

import contextlib
import tempfile

import ants
import nibabel as nb
import numpy as np

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_ants(img: nb.Nifti1Image, dtype=np.float32) -> "ants.ANTsImage":
    """nibabel image -> ANTsImage with the same voxel-to-world mapping."""
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = _RAS_TO_LPS @ (affine[:3, :3] / zooms)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    data = np.asanyarray(img.dataobj).astype(dtype, copy=False)
    return ants.from_numpy(np.ascontiguousarray(data), origin=origin.tolist(), spacing=zooms.tolist(),
                           direction=direction)


def affine_of(image: "ants.ANTsImage") -> np.ndarray:
    """RAS+ affine of an ANTsImage."""
    direction = np.asarray(image.direction) * np.asarray(image.spacing)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.origin)
    return affine


def from_ants(image: "ants.ANTsImage", like: nb.Nifti1Image | None = None, dtype=np.float32) -> nb.Nifti1Image:
    """ANTsImage -> nibabel image (the affine of ``like`` when given, to avoid round-off)."""
    affine = like.affine if like is not None else affine_of(image)
    return nb.Nifti1Image(image.numpy().astype(dtype, copy=False), affine)


@contextlib.contextmanager
def private_tempdir(prefix: str = "morphobids-ants-"):
    """Point :mod:`tempfile` at a fresh folder for the duration (antspyx writes its
    ``antsr*prob*.nii.gz`` files there); the folder and its files are removed after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        previous = tempfile.tempdir
        tempfile.tempdir = folder
        try:
            yield folder
        finally:
            tempfile.tempdir = previous
