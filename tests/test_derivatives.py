"""Output naming, atomic writing, and the official validator's verdict on a produced derivative."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_app.bids import derivatives as d
from bids_app.bids.validator import run_validator
from bids_app.errors import UsageError

TEMPLATE = "MNI152NLin2009cAsym"


def test_names_follow_entity_order():
    out = d.Outputs(d.Path("/o"), "01", "pre")
    assert out.path("preproc_t1w").as_posix() == "/o/sub-01/ses-pre/anat/sub-01_ses-pre_desc-preproc_T1w.nii.gz"
    assert out.path("std_modulated", template=TEMPLATE, res="2", label="GM").name == (
        f"sub-01_ses-pre_space-{TEMPLATE}_res-2_label-GM_desc-modulated_probseg.nii.gz")
    assert out.path("xfm_to_template", template=TEMPLATE).name == (
        f"sub-01_ses-pre_from-T1w_to-{TEMPLATE}_mode-image_xfm.h5")
    assert out.path("atlas_dseg", atlas="AAL3").name == "sub-01_ses-pre_atlas-AAL3_dseg.nii.gz"
    assert out.path("figure", suffix="T1w", desc="brainmask").as_posix() == (
        "/o/sub-01/figures/sub-01_ses-pre_desc-brainmask_T1w.svg")
    assert d.Outputs(d.Path("/o"), "01").report().as_posix() == "/o/sub-01.html"
    assert d.sidecar_path(out.path("dseg")).name == "sub-01_ses-pre_dseg.json"


def test_missing_placeholder_and_unknown_kind_are_errors():
    out = d.Outputs(d.Path("/o"), "01")
    with pytest.raises(KeyError, match="needs the field 'label'"):
        out.path("probseg")
    with pytest.raises(KeyError, match="unknown output kind"):
        out.path("nonsense")


def test_sidecar_requires_bids_metadata():
    with pytest.raises(ValueError, match="SkullStripped"):
        d.sidecar("preproc_t1w", ["bids:raw:x"])
    with pytest.raises(ValueError, match="Resolution"):
        d.sidecar("std_brain_mask", ["bids:raw:x"])
    meta = d.sidecar("std_preproc_t1w", ["bids:raw:x"], skull_stripped=False, resolution_mm=2)
    assert meta["Resolution"] == {"2": "2 mm isotropic voxels, template grid"} and meta["SkullStripped"] is False


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"

    def boom(tmp):
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        d.atomic_write(target, boom)
    assert list(tmp_path.iterdir()) == []
    d.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_output_location_guard(tmp_path):
    with pytest.raises(UsageError):
        d.check_output_location(tmp_path, tmp_path / "derivatives")
    d.check_output_location(tmp_path / "bids", tmp_path / "out")


def _write_every_output(root, bids_dir, t1w_path, subject, session=None):
    """Write every participant-level output kind, with real image content derived from the input."""
    img = nb.as_closest_canonical(nb.load(t1w_path))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    mask = (data > np.percentile(data, 60)).astype(np.uint8)
    src = [d.bids_uri(t1w_path, bids_dir)]
    out = d.Outputs(root, subject, session)

    def nifti(kind, array, dtype=np.float32, skull_stripped=None, res=None, **fields):
        if res is not None:
            fields["res"] = d.resolution_label(res)
        path = out.path(kind, **fields)
        d.write_nifti(path, nb.Nifti1Image(array.astype(dtype), img.affine))
        d.write_json(d.sidecar_path(path), d.sidecar(kind, src, skull_stripped=skull_stripped, resolution_mm=res))

    nifti("preproc_t1w", data, skull_stripped=False)
    nifti("biasfield", np.ones_like(data), skull_stripped=False)
    nifti("brain_mask", mask, np.uint8)
    nifti("head_mask", mask, np.uint8)
    nifti("dseg", mask * 2, np.uint8)
    for label in ("GM", "WM", "CSF"):
        nifti("probseg", mask / 3.0, label=label)
        nifti("std_probseg", mask / 3.0, res=2, template=TEMPLATE, label=label)
    for label in ("GM", "WM"):
        nifti("std_modulated", mask / 3.0, res=2, template=TEMPLATE, label=label)
    nifti("std_preproc_t1w", data, skull_stripped=False, res=2, template=TEMPLATE)
    nifti("std_brain_mask", mask, np.uint8, res=2, template=TEMPLATE)
    nifti("atlas_dseg", mask, np.int16, atlas="AAL3")
    for kind in ("xfm_to_template", "xfm_from_template"):
        d.atomic_write(out.path(kind, template=TEMPLATE), lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n"))
    d.write_tsv(out.path("atlas_morph", atlas="AAL3"), pd.DataFrame({"index": [1], "name": ["x"], "volume_ml": [1.0]}))
    d.write_tsv(out.path("tissue_morph"), pd.DataFrame({"tiv_ml": [1500.0]}))
    d.write_json(out.path("iqms", contrast="T1w"), {"cjv": 0.4})
    d.write_json(out.path("qc", contrast="T1w"), {"verdict": "pass"})
    d.write_text(out.path("figure", suffix="T1w", desc="mosaic"), "<svg xmlns='http://www.w3.org/2000/svg'/>")
    d.write_text(out.report(), "<html></html>")


def test_produced_derivatives_pass_the_bids_validator(make_bids, pumi_t1w, tmp_path):
    bids = make_bids({"01": pumi_t1w, "02": pumi_t1w})
    root = tmp_path / "out"
    d.init_derivatives(root, bids)
    d.write_atlas_description(root, "AAL3", {"Description": "AAL3", "License": "see upstream"})
    d.write_atlas_labels(root, "AAL3", pd.DataFrame({"index": [1], "name": ["Precentral_L"]}))
    _write_every_output(root, bids, bids / "sub-01/anat/sub-01_T1w.nii.gz", "01")
    _write_every_output(root, bids, bids / "sub-02/anat/sub-02_T1w.nii.gz", "02", session="a")
    result = run_validator(root)
    assert result.ok, result.summary("error")
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "MorphoBIDS"
    assert description["SourceDatasets"][0]["URL"].startswith("file://")
    assert d.participants_with_outputs(root) == ["01", "02"]


def test_validator_catches_a_misnamed_output(tmp_path, pumi_t1w):
    """The validator test above can fail: an unknown suffix is an error."""
    root = tmp_path / "out"
    d.init_derivatives(root, None)
    bad = root / "sub-01" / "anat" / "sub-01_desc-preproc_T1weighted.nii.gz"
    d.write_nifti(bad, pumi_t1w)
    result = run_validator(root)
    assert not result.ok
