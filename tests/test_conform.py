"""Conform: RAS reorientation without resampling, world coordinates preserved."""

from __future__ import annotations

import nibabel as nb
import numpy as np

from bids_app.participant.conform import conform

from conftest import DS000011, require


def test_real_las_anisotropic_scan_becomes_ras_without_resampling():
    img = nb.load(require(DS000011) / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    out, info = conform(img, "sform" if img.header["sform_code"] > 0 else "qform")
    assert nb.aff2axcodes(out.affine) == ("R", "A", "S")
    assert info.anisotropic and sorted(info.voxel_size) == sorted(round(float(z), 4) for z in img.header.get_zooms())
    assert info.original_orientation != "RAS"
    # the same world point holds the same intensity before and after
    src = np.asanyarray(img.dataobj).astype(np.float32)
    ijk = np.array([40, 100, 90])
    world = img.affine @ np.r_[ijk, 1]
    ijk_out = np.rint(np.linalg.inv(out.affine) @ world)[:3].astype(int)
    assert src[tuple(ijk)] == out.get_fdata()[tuple(ijk_out)]
    assert sorted(out.shape) == sorted(img.shape[:3]) and out.get_data_dtype() == np.float32
    assert np.allclose(out.get_qform(), out.get_sform())
