"""Bad input gets a one-line error naming the problem and the fix, and the right exit code."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_app.cli import main
from bids_app.errors import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_PARTIAL, EX_UNAVAILABLE, EX_USAGE

from conftest import PUMI, ROOT, require


def run_cli(capsys, *args):
    """Run the CLI in-process; return (exit code, stderr)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def participant(capsys, bids_dir, out, *extra):
    return run_cli(capsys, bids_dir, out, "participant", "-w", out.parent / "work", "--skip_bids_validator", "--dry-run",
                   *extra)


# --------------------------------------------------------------------- paths and labels


def test_bids_dir_missing(capsys, tmp_path):
    code, err = run_cli(capsys, tmp_path / "nope", tmp_path / "out", "participant")
    assert code == EX_USAGE
    assert "does not exist" in err and "nope" in err


def test_not_a_bids_dataset(capsys, tmp_path):
    (tmp_path / "data" / "sub-01").mkdir(parents=True)
    code, err = run_cli(capsys, tmp_path / "data", tmp_path / "out", "participant")
    assert code == EX_DATAERR
    assert "not a BIDS dataset" in err and "dataset_description.json" in err


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_dir_equal_or_inside_bids_dir(capsys, make_bids, where):
    bids = make_bids()
    out = bids if where == "same" else bids / "derivatives" / "morphobids"
    code, err = run_cli(capsys, bids, out, "participant", "--skip_bids_validator")
    assert code == EX_USAGE
    assert "never writes into the input dataset" in err
    assert not (bids / "derivatives").exists()


def test_output_dir_not_writable_not_a_directory(capsys, make_bids, tmp_path):
    bids = make_bids()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, err = run_cli(capsys, bids, blocker / "out", "participant", "--skip_bids_validator", "-w", tmp_path / "w")
    assert code == EX_CANTCREAT
    assert "not writable" in err and "afile/out" in err


def test_output_dir_not_writable_permissions(make_bids, tmp_path):
    """A read-only output folder, checked as an unprivileged user (root ignores permissions)."""
    bids = make_bids()
    tmp_path = Path(tempfile.mkdtemp(prefix="morphobids-ro-", dir="/tmp"))
    shutil.copytree(bids, tmp_path / "bids")
    bids = tmp_path / "bids"
    ro = tmp_path / "ro"
    ro.mkdir()
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    ro.chmod(0o555)
    cmd = [sys.executable, str(ROOT / "run.py"), str(bids), str(ro), "participant", "--skip_bids_validator",
           "-w", str(tmp_path / "w")]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root and setpriv is unavailable to drop privileges")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
    if "Permission denied" in proc.stderr and "not writable" not in proc.stderr:
        pytest.skip(f"the unprivileged user cannot run the test environment: {proc.stderr[-200:]}")
    assert proc.returncode == EX_CANTCREAT, proc.stderr
    assert "output_dir" in proc.stderr and "not writable" in proc.stderr


def test_unknown_participant_lists_available(capsys, make_bids, pumi_t1w, tmp_path):
    bids = make_bids({"01": pumi_t1w, "02": pumi_t1w})
    code, err = participant(capsys, bids, tmp_path / "out", "--participant_label", "sub-07")
    assert code == EX_USAGE
    assert "07 not found" in err and "01, 02" in err


@pytest.mark.parametrize("label", ["../01", "a/b", "01 02", "..", "sub-0_1"])
def test_invalid_participant_label(capsys, make_bids, tmp_path, label):
    bids = make_bids()
    code, err = participant(capsys, bids, tmp_path / "out", "--participant_label", label)
    assert code == EX_USAGE
    assert "invalid sub label" in err and "letters and digits" in err


def test_participant_label_with_or_without_prefix(capsys, make_bids, pumi_t1w, tmp_path):
    bids = make_bids({"01": pumi_t1w, "02": pumi_t1w})
    code, err = participant(capsys, bids, tmp_path / "out", "--participant_label", "sub-01", "02")
    assert code == 0
    assert "2 session(s) ready (sub-01, sub-02)" in err


def test_participant_without_t1w(capsys, make_bids, tmp_path):
    bids = make_bids({"01": None})
    code, err = participant(capsys, bids, tmp_path / "out")
    assert code == EX_DATAERR
    assert "sub-01: no T1w image found" in err


def test_one_bad_participant_does_not_sink_the_others(capsys, make_bids, pumi_t1w, tmp_path):
    bids = make_bids({"01": pumi_t1w, "02": lambda p: p.write_bytes(b""), "03": pumi_t1w})
    code, err = participant(capsys, bids, tmp_path / "out")
    assert code == EX_PARTIAL
    assert "2 session(s) ready (sub-01, sub-03)" in err
    assert "1 of 3 participant session(s) failed" in err and "sub-02_T1w.nii.gz: file is empty" in err


def test_group_before_participant(capsys, make_bids, tmp_path):
    bids = make_bids()
    code, err = run_cli(capsys, bids, tmp_path / "out", "group")
    assert code == EX_NOINPUT
    assert "no participant-level outputs" in err and "participant level first" in err


def test_argparse_errors_exit_64(capsys, tmp_path):
    code, err = run_cli(capsys, tmp_path, tmp_path / "o", "everything")
    assert code == EX_USAGE and "invalid choice" in err
    code, err = run_cli(capsys, tmp_path, tmp_path / "o", "participant", "--nprocs", "0")
    assert code == EX_USAGE and "at least 1" in err


# --------------------------------------------------------------------- corrupt images


def _zero_bytes(path):
    path.write_bytes(b"")


def _truncated(img):
    def write(path):
        nb.save(img, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])

    return write


def _not_gzip(img):
    def write(path):
        plain = path.with_name("plain.nii")
        nb.save(img, plain)
        path.write_bytes(plain.read_bytes())
        plain.unlink()

    return write


def _header_only(img):
    def write(path):
        plain = path.with_name("plain.nii")
        nb.save(img, plain)
        with gzip.open(path, "wb") as fh:
            fh.write(plain.read_bytes()[:352])
        plain.unlink()

    return write


def _with(img, data=None, zooms=None):
    data = np.asanyarray(img.dataobj) if data is None else data
    out = nb.Nifti1Image(data, img.affine)
    if zooms is not None:  # written raw: nibabel's set_zooms refuses negative sizes
        out.header["pixdim"][1:4] = zooms
    return out


def _nan(img):
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    return _with(img, data)


def _qform_sform(img):
    out = _with(img)
    shifted = img.affine.copy()
    shifted[:3, 3] += [3.0, 0, 0]
    out.set_qform(shifted, code=1)
    out.set_sform(img.affine, code=1)
    return out


CORRUPT = {
    "empty": (lambda img: _zero_bytes, "file is empty (0 bytes)"),
    "truncated": (_truncated, "truncated"),
    "not-gzip": (_not_gzip, "not gzip-compressed"),
    "header-only": (_header_only, "holds only a header"),
    "2d": (lambda img: _with(img, np.asanyarray(img.dataobj)[:, :, 60]), "not a 3-D volume"),
    "4d": (lambda img: _with(img, np.stack([np.asanyarray(img.dataobj)] * 3, -1)), "is 4-D"),
    "nan-inf": (_nan, "2 NaN/Inf voxel(s)"),
    "voxel-zero": (lambda img: _with(img, zooms=(0.0, 2.0, 2.0)), "absurd voxel sizes"),
    "voxel-negative": (lambda img: _with(img, zooms=(-2.0, 2.0, 2.0)), "absurd voxel sizes"),
    "voxel-huge": (lambda img: _with(img, zooms=(2.0, 2.0, 12.0)), "absurd voxel sizes"),
    "qform-sform": (_qform_sform, "qform and sform disagree by 3.0 mm"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_t1w(capsys, make_bids, pumi_t1w, tmp_path, case):
    make, expected = CORRUPT[case]
    content = make(pumi_t1w)
    bids = make_bids({"01": content})
    code, err = participant(capsys, bids, tmp_path / "out")
    assert code == EX_DATAERR, err
    assert "sub-01_T1w.nii.gz" in err and expected in err, err
    assert not list((tmp_path / "out").glob("sub-*"))


def test_qform_sform_disagreement_can_be_overridden(capsys, make_bids, pumi_t1w, tmp_path):
    bids = make_bids({"01": _qform_sform(pumi_t1w)})
    code, err = participant(capsys, bids, tmp_path / "out", "--affine-source", "sform")
    assert code == 0
    assert "disagree by 3.0 mm; using the sform" in err


# --------------------------------------------------------------------- validator and real data


def test_validator_errors_stop_the_run_with_a_summary(capsys, copy_dataset, tmp_path):
    bids = copy_dataset(PUMI)
    code, err = run_cli(capsys, bids, tmp_path / "out", "participant", "-w", tmp_path / "w")
    assert code == EX_DATAERR
    assert "BIDS validator found 1 error(s)" in err
    assert "SourceDatasets" in err and "--skip_bids_validator" in err


def test_skip_validator_runs_real_dataset(capsys, tmp_path):
    code, err = run_cli(capsys, require(PUMI), tmp_path / "out", "participant", "-w", tmp_path / "w",
                        "--skip_bids_validator", "--dry-run")
    assert code == 0
    assert "1 session(s) ready (sub-001)" in err
    assert "nothing processed" in err and not (tmp_path / "out" / "sub-001").exists()


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    """The real entry point (run.py) prints one line and exits 64, no traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), str(tmp_path / "missing"), str(tmp_path / "o"),
                           "participant"], capture_output=True, text=True)
    assert proc.returncode == EX_USAGE
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("morphobids: error: bids_dir")


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert "MorphoBIDS" in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("BIDS input", "Performance", "Workflow", "Other", "participant  per subject", "group        over"):
        assert group in out


# --------------------------------------------------------------------- resources


def test_unknown_atlas_is_a_usage_error(capsys, make_bids, tmp_path):
    code, err = participant(capsys, make_bids(), tmp_path / "out", "--atlas", "AAL3", "Brodmann")
    assert code == EX_USAGE
    assert "unknown atlas 'Brodmann'" in err and "AAL3" in err and "Mori" in err


def test_missing_resource_names_the_file(capsys, make_bids, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHOBIDS_RESOURCES", str(tmp_path / "empty"))
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    code, err = participant(capsys, make_bids(), tmp_path / "out")
    assert code == EX_UNAVAILABLE
    assert "tpl-MNI152NLin2009cAsym" in err and "bids_app.resources build" in err


def test_unknown_template_is_a_missing_resource(capsys, make_bids, tmp_path):
    code, err = participant(capsys, make_bids(), tmp_path / "out", "--template", "MNIColin27")
    assert code == EX_UNAVAILABLE
    assert "tpl-MNIColin27" in err and "TEMPLATEFLOW_HOME" in err
