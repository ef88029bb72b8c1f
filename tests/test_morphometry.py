"""Morphometry on tiny arrays whose volumes are known exactly."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_app.participant.morphometry import (
    ROI_COLUMNS,
    TISSUE_KEYS,
    data_dictionary,
    roi_volumes,
    tissue_volumes,
    voxel_volume_ml,
)

#: 2 x 2 x 2.5 mm voxels = 10 mm^3 = 0.01 mL, with an oblique rotation (det unchanged)
ZOOMS = (2.0, 2.0, 2.5)


def _affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(ZOOMS)
    affine[:3, 3] = [-10, 5, 3]
    return affine


def _img(data, dtype=np.float32) -> nb.Nifti1Image:
    return nb.Nifti1Image(np.asarray(data, dtype=dtype), _affine())


@pytest.fixture
def phantom():
    """A 6x5x4 grid: mask = first 5 columns of x; GM/WM/CSF set per region, with partial volumes."""
    shape = (6, 5, 4)
    mask = np.zeros(shape, bool)
    mask[:5] = True  # 5*5*4 = 100 voxels = 1.0 mL
    gm = np.zeros(shape)
    wm = np.zeros(shape)
    csf = np.zeros(shape)
    gm[0:2] = 1.0  # 40 voxels of pure GM
    wm[2:4] = 1.0  # 40 voxels of pure WM
    gm[4], csf[4] = 0.25, 0.75  # 20 voxels of mixed GM/CSF: 5 GM-voxel, 15 CSF-voxel equivalents
    gm[5] = 1.0  # outside the mask: must be ignored
    probseg = {"GM": _img(gm), "WM": _img(wm), "CSF": _img(csf)}
    return probseg, _img(mask, np.uint8)


def test_voxel_volume_of_oblique_anisotropic_grid():
    assert voxel_volume_ml(_img(np.zeros((2, 2, 2)))) == pytest.approx(0.01)


def test_tissue_volumes_exact(phantom):
    probseg, mask = phantom
    vol = tissue_volumes(probseg, mask)
    assert list(vol) == TISSUE_KEYS
    assert vol["tiv_ml"] == pytest.approx(1.0)
    assert vol["gm_ml"] == pytest.approx(0.45)
    assert vol["wm_ml"] == pytest.approx(0.40)
    assert vol["csf_ml"] == pytest.approx(0.15)
    assert vol["gm_ml"] + vol["wm_ml"] + vol["csf_ml"] == pytest.approx(vol["tiv_ml"])
    assert vol["bpf"] == pytest.approx(0.85)
    assert vol["gm_fraction"] == pytest.approx(0.45 / 0.85)
    assert vol["brain_ml"] == pytest.approx(1.0)


def test_tiv_is_the_intracranial_mask(phantom):
    """With an intracranial mask, TIV is its volume; tissue volumes stay those of the brain mask."""
    probseg, mask = phantom
    vol = tissue_volumes(probseg, mask, _img(np.ones((6, 5, 4)), np.uint8))  # 120 voxels = 1.2 mL
    assert vol["tiv_ml"] == pytest.approx(1.2) and vol["brain_ml"] == pytest.approx(1.0)
    assert vol["gm_ml"] == pytest.approx(0.45) and vol["csf_ml"] == pytest.approx(0.15)
    assert vol["bpf"] == pytest.approx(0.85 / 1.2)
    with pytest.raises(ValueError, match="intracranial mask"):
        tissue_volumes(probseg, mask, nb.Nifti1Image(np.ones((6, 5, 4), np.uint8), np.eye(4)))


def test_tissue_volumes_reads_scaled_integer_probseg(phantom):
    """uint8 maps with a 1/255 scale factor (as the demo truth stores them) give the same volumes."""
    probseg, mask = phantom
    stored = {}
    for key, img in probseg.items():
        stored[key] = nb.Nifti1Image(np.rint(img.get_fdata() * 255).astype(np.uint8), img.affine)
        stored[key].header.set_slope_inter(1 / 255, 0)
        stored[key] = nb.Nifti1Image.from_bytes(stored[key].to_bytes())
    vol = tissue_volumes(stored, mask)
    assert vol["gm_ml"] == pytest.approx(0.45, abs=2e-4)
    assert vol["csf_ml"] == pytest.approx(0.15, abs=2e-4)


def test_empty_mask_gives_nan_fractions(phantom):
    probseg, mask = phantom
    vol = tissue_volumes(probseg, _img(np.zeros(mask.shape), np.uint8))
    assert vol["tiv_ml"] == 0 and np.isnan(vol["bpf"]) and np.isnan(vol["gm_fraction"])


def test_grid_mismatch_is_an_error(phantom):
    probseg, mask = phantom
    wrong = nb.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="grid"):
        tissue_volumes(probseg, wrong)


def test_roi_volumes_exact(phantom):
    probseg, _ = phantom
    atlas = np.zeros(probseg["GM"].shape, np.int16)
    atlas[0] = 3  # 20 voxels, pure GM
    atlas[3:5] = 7  # 40 voxels: 20 pure WM + 20 mixed GM/CSF
    labels = pd.DataFrame({"index": [3, 7, 9], "name": ["A", "B", "absent"], "extra": [0, 0, 0]})
    table = roi_volumes(_img(atlas, np.int16), labels, probseg)
    assert list(table.columns) == ROI_COLUMNS
    rows = table.set_index("name")
    assert rows.loc["A", "voxels"] == 20 and rows.loc["A", "volume_ml"] == pytest.approx(0.20)
    assert rows.loc["A", "gm_ml"] == pytest.approx(0.20) and rows.loc["A", "wm_ml"] == pytest.approx(0.0)
    assert rows.loc["B", "voxels"] == 40 and rows.loc["B", "volume_ml"] == pytest.approx(0.40)
    assert rows.loc["B", "gm_ml"] == pytest.approx(0.05)
    assert rows.loc["B", "wm_ml"] == pytest.approx(0.20)
    assert rows.loc["B", "csf_ml"] == pytest.approx(0.15)
    assert rows.loc["absent", "voxels"] == 0 and rows.loc["absent", "gm_ml"] == 0
    assert table["index"].tolist() == [3, 7, 9]


def test_roi_volumes_ignores_labels_not_in_table(phantom):
    probseg, _ = phantom
    atlas = np.full(probseg["GM"].shape, 50, np.int16)
    table = roi_volumes(_img(atlas, np.int16), pd.DataFrame({"index": [1], "name": ["x"]}), probseg)
    assert len(table) == 1 and table.loc[0, "voxels"] == 0


@pytest.mark.parametrize("kind, columns", [("tissue", TISSUE_KEYS), ("roi", ROI_COLUMNS)])
def test_data_dictionary_covers_every_column(kind, columns):
    dictionary = data_dictionary(kind)
    assert list(dictionary) == columns
    for column, entry in dictionary.items():
        assert entry["Description"]
        if column.endswith("_ml"):
            assert entry["Units"] == "mL"
    json.dumps(dictionary)


def test_data_dictionary_unknown_kind():
    with pytest.raises(ValueError, match="tissue"):
        data_dictionary("thickness")
