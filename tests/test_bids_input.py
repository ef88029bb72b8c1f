"""BIDS input: participants.tsv quirks, T1w discovery with sessions/runs, the selection rule."""

from __future__ import annotations

import logging

import nibabel as nb
import numpy as np
import pytest

from bids_app.bids import layout, participants
from bids_app.bids.validator import parse_report, run_validator
from bids_app.errors import InputDataError, UsageError

from conftest import DS000011, PUMI, STROKE, require, write_dataset_description


def _tsv(tmp_path, text: str, bom: bool = False):
    data = text.encode("utf-8")
    (tmp_path / "participants.tsv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return tmp_path


def test_participants_bom_na_sex_codes_extra_columns(tmp_path):
    _tsv(tmp_path, "participant_id\tage\tsex\tgroup\thandedness\n"
                   "sub-01\t23\tm\tcontrol\tR\n"
                   "sub-02\tn/a\tFemale\tpatient\tn/a\n"
                   "03\t41\tMALE\tpatient\tL\n"
                   "sub-04\t35\tf\tcontrol\t\n", bom=True)
    p = participants.read_participants(tmp_path, ["01", "02", "03", "04"])
    assert list(p.table.index) == ["01", "02", "03", "04"]
    assert p.table["sex"].tolist() == ["M", "F", "M", "F"]
    assert p.table["age"].dtype.kind == "f" and np.isnan(p.table.loc["02", "age"])
    assert p.row("02")["handedness"] is None and p.row("03")["group"] == "patient"
    assert p.warnings == []


def test_participants_listed_absent_and_present_unlisted(tmp_path):
    _tsv(tmp_path, "participant_id\tage\nsub-01\t20\nsub-09\t30\n")
    p = participants.read_participants(tmp_path, ["01", "02"])
    text = " ".join(p.warnings)
    assert "lists participants with no data: sub-09" in text
    assert "does not list sub-02" in text
    assert p.row("02") == {}


def test_participants_missing_file_and_unknown_sex(tmp_path):
    p = participants.read_participants(tmp_path, ["01"])
    assert "participants.tsv is missing" in p.warnings[0] and list(p.table.index) == ["01"]
    _tsv(tmp_path, "participant_id\tsex\nsub-01\tX\nsub-02\t\n")
    p = participants.read_participants(tmp_path, ["01", "02"])
    assert "unrecognised sex value(s) ['X']" in p.warnings[0]


def test_participants_without_id_column(tmp_path):
    _tsv(tmp_path, "subject\tage\n01\t20\n")
    with pytest.raises(InputDataError, match="no 'participant_id' column"):
        participants.read_participants(tmp_path, ["01"])


def test_real_participants_tables():
    p = participants.read_participants(require(DS000011), [f"{i:02d}" for i in range(1, 15)])
    assert len(p.table) == 14 and set(p.table["sex"].dropna()) <= {"M", "F"}
    assert p.table["age"].between(18, 40).all()
    p = participants.read_participants(require(PUMI), ["001"])
    assert p.row("001")["sex"] == "F"


def _save(img, path, zoom=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    out = nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    if zoom:
        out.header.set_zooms(zoom)
    nb.save(out, path)


def test_sessions_runs_and_selection_rule(tmp_path, pumi_t1w, caplog):
    root = tmp_path / "bids"
    write_dataset_description(root)
    a = root / "sub-01" / "ses-a" / "anat"
    _save(pumi_t1w, a / "sub-01_ses-a_run-1_T1w.nii.gz")
    _save(pumi_t1w, a / "sub-01_ses-a_run-2_T1w.nii.gz")
    _save(pumi_t1w, a / "sub-01_ses-a_acq-hires_T1w.nii.gz", zoom=(1.0, 1.0, 1.0))
    _save(pumi_t1w, a / "sub-01_ses-a_FLAIR.nii.gz")
    _save(pumi_t1w, root / "sub-01" / "ses-b" / "anat" / "sub-01_ses-b_run-1_T1w.nii.gz")
    _save(pumi_t1w, root / "sub-01" / "ses-b" / "anat" / "sub-01_ses-b_run-2_T1w.nii.gz")
    lay = layout.load_layout(root)
    found = {s.key: s for s in layout.collect_inputs(lay, ["01"])}
    assert sorted(found) == ["sub-01_ses-a", "sub-01_ses-b"]
    assert found["sub-01_ses-a"].t1w.name == "sub-01_ses-a_acq-hires_T1w.nii.gz"  # highest resolution wins
    assert found["sub-01_ses-a"].images["FLAIR"].name == "sub-01_ses-a_FLAIR.nii.gz"
    assert found["sub-01_ses-b"].t1w.name == "sub-01_ses-b_run-2_T1w.nii.gz"  # then the last run
    assert len(found["sub-01_ses-a"].alternatives["T1w"]) == 2
    only_b = layout.collect_inputs(lay, ["01"], ["ses-b"])
    assert [s.key for s in only_b] == ["sub-01_ses-b"]
    with pytest.raises(UsageError, match="session"):
        layout.collect_inputs(lay, ["01"], ["c"])


def test_multicontrast_real_data():
    lay = layout.load_layout(require(STROKE))
    (inputs,) = layout.collect_inputs(lay, sorted(lay.get_subjects()))
    assert set(inputs.images) == {"T1w", "T2w", "FLAIR"}


def test_label_cleaning():
    assert layout.clean_label("sub-01", "sub") == "01" and layout.clean_label("01", "sub") == "01"
    for bad in ("0/1", "..", " 01 02", "01_a", ""):
        with pytest.raises(UsageError):
            layout.clean_label(bad, "sub")


def test_validator_report_parsing_and_real_verdicts(copy_dataset):
    report = {"issues": {"issues": [
        {"code": "A", "severity": "error", "location": "/x.json", "subCode": "Key", "issueMessage": "must be array\n.."},
        {"code": "A", "severity": "error", "location": "/y.json"},
        {"code": "B", "severity": "warning", "location": "/z"},
    ]}}
    result = parse_report(report)
    assert not result.ok and len(result.errors["A"]) == 2
    assert "A: /x.json (Key must be array) and 1 more" in result.summary()
    assert not run_validator(copy_dataset(PUMI)).ok
    stroke = run_validator(copy_dataset(STROKE))
    assert stroke.ok and stroke.warnings
