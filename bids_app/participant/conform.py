"""Conform an anatomical image: one trusted affine, RAS+ voxel order, float32 data.

Rule for the affine (as validated by :mod:`bids_app.bids.image_checks`): a valid
sform (code > 0) is preferred; otherwise the qform; when both are set and disagree
by more than 1 mm the user must choose (``--affine-source``). Voxels are only
permuted/flipped to RAS (no resampling), so anisotropic voxels are kept; the
sidecar says so. Both header transforms of the output equal the chosen affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nb
import numpy as np


@dataclass(frozen=True)
class ConformInfo:
    """What conforming did, for the sidecar and the report."""

    affine_source: str
    original_orientation: str
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int, int]
    anisotropic: bool

    def sidecar(self) -> dict:
        return {
            "AffineSource": self.affine_source,
            "OriginalOrientation": self.original_orientation,
            "VoxelSize": list(self.voxel_size),
            "Resampled": False,
            "Note": "Reoriented to RAS by permuting/flipping axes only; voxel sizes kept"
                    + (" (anisotropic)." if self.anisotropic else "."),
        }


def choose_affine(img: nb.Nifti1Image, source: str) -> np.ndarray:
    """The affine named by ``source`` ('sform', 'qform' or 'none' -> nibabel's best guess)."""
    if source == "sform":
        affine = img.get_sform()
    elif source == "qform":
        affine = img.get_qform()
    else:
        affine = img.affine
    return np.asarray(affine, dtype=np.float64)


def conform(img: nb.Nifti1Image, affine_source: str = "sform") -> tuple[nb.Nifti1Image, ConformInfo]:
    """Return ``img`` reoriented to RAS+ with float32 data and a single consistent affine."""
    affine = choose_affine(img, affine_source)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    data = data.astype(np.float32, copy=False)
    original = "".join(nb.aff2axcodes(affine))
    ornt = nb.orientations.io_orientation(affine)
    ras = nb.orientations.axcodes2ornt("RAS")
    transform = nb.orientations.ornt_transform(ornt, ras)
    data = nb.orientations.apply_orientation(data, transform)
    new_affine = affine @ nb.orientations.inv_ornt_aff(transform, img.shape[:3])
    out = nb.Nifti1Image(np.ascontiguousarray(data), new_affine)
    out.set_qform(new_affine, code=1)
    out.set_sform(new_affine, code=1)
    out.header.set_xyzt_units("mm")
    zooms = tuple(float(z) for z in np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)))
    info = ConformInfo(
        affine_source=affine_source,
        original_orientation=original,
        voxel_size=tuple(round(z, 4) for z in zooms),
        shape=tuple(int(s) for s in out.shape[:3]),
        anisotropic=bool(max(zooms) / min(zooms) > 1.01),
    )
    return out, info
