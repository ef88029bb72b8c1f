"""The participant level end to end on a real scan: outputs, validator, resume, failure isolation."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_app.bids import derivatives as d
from bids_app.bids.validator import run_validator
from bids_app.cli import main
from bids_app.errors import EX_PARTIAL
from conftest import STROKE, require

TEMPLATE = "MNI152NLin2009cAsym"
RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def _noise_head(path):
    """A tiny pure-noise 'T1w': passes the input checks, cannot be processed."""
    rng = np.random.default_rng(0)
    nb.save(nb.Nifti1Image(rng.random((12, 12, 12)).astype(np.float32) * 100, np.diag([2, 2, 2, 1.0])), path)


def _run_and_kill(args, after: str, timeout: float = 900) -> str:
    """Start run.py in its own process group; SIGKILL the whole group once ``after`` is logged."""
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    lines, deadline = [], time.time() + timeout
    try:
        for line in proc.stderr:
            lines.append(line)
            if after in line or time.time() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = "".join(lines)
    assert after in log, log[-3000:]
    return log


def _digest(root, names):
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


@pytest.mark.slow
def test_participant_level_end_to_end(make_bids, pumi_t1w, tmp_path, capsys):
    # a healthy head, a pure-noise image, and a brain-extracted stroke patient with a lesion
    stroke = nb.load(next(require(STROKE).glob("sub-*/anat/*_T1w.nii.gz")))
    bids = make_bids({"01": pumi_t1w, "02": _noise_head, "03": stroke})
    out, work = tmp_path / "out", tmp_path / "work"
    args = [str(bids), str(out), "participant", "-w", str(work), "--skip_bids_validator", "--nprocs", "2"]
    # a crash (kill -9 of the whole process group) once normalization has finished ...
    _run_and_kill(args, "[sub_01] register done")
    assert not (out / "sub-01" / "anat").exists(), "derivatives appear only once a participant completes"
    # ... and the rerun resumes: finished steps come from the work folder
    code = main(args)
    err = capsys.readouterr().err
    assert "[sub_01] bias done (cached)" in err and "[sub_01] register done (cached)" in err, err
    # one failing participant does not sink the other; the summary says which and where
    assert code == EX_PARTIAL, err
    assert "1 of 3 participant session(s) failed" in err and "sub-02: step" in err
    assert not (out / "sub-02").exists()

    o = d.Outputs(out, "01")
    expected = [o.path("preproc_t1w"), o.path("brain_mask"), o.path("dseg"), o.path("biasfield"),
                o.path("xfm_to_template", template=TEMPLATE), o.path("xfm_from_template", template=TEMPLATE),
                o.path("tissue_morph"), o.path("atlas_morph", atlas="AAL3"), o.path("atlas_morph", atlas="Mori"),
                o.report()]
    expected += [o.path("probseg", label=t) for t in ("GM", "WM", "CSF")]
    expected += [o.path("std_modulated", template=TEMPLATE, res="2", label=t) for t in ("GM", "WM")]
    missing = [p for p in expected if not p.exists()]
    assert not missing

    # the official validator accepts the derivative dataset
    result = run_validator(out)
    assert result.ok, result.summary()

    # plausible morphometrics for a healthy adult; modulation preserves GM volume within 2 %
    tissue = pd.read_csv(o.path("tissue_morph"), sep="\t").iloc[0]
    assert 1100 < tissue["tiv_ml"] < 2000 and 0.35 < tissue["gm_fraction"] < 0.60
    gm = nb.load(o.path("probseg", label="GM"))
    mod = nb.load(o.path("std_modulated", template=TEMPLATE, res="2", label="GM"))
    native_ml = gm.get_fdata().sum() * np.prod(gm.header.get_zooms()[:3]) / 1000
    template_ml = mod.get_fdata().sum() * np.prod(mod.header.get_zooms()[:3]) / 1000
    assert abs(template_ml / native_ml - 1) < 0.02
    assert abs(native_ml - tissue["gm_ml"]) < 1e-3
    # the stroke patient's own brain mask is kept (no second stripping) and its tissues are plausible
    s3 = d.Outputs(out, "03")
    meta = json.loads(d.sidecar_path(s3.path("brain_mask")).read_text())
    assert meta["Method"] == "input already brain-extracted"
    raw_brain_ml = (np.asanyarray(stroke.dataobj) > 0).sum() * np.prod(stroke.header.get_zooms()[:3]) / 1000
    stroke_tissue = pd.read_csv(s3.path("tissue_morph"), sep="\t").iloc[0]
    assert abs(stroke_tissue["brain_ml"] / raw_brain_ml - 1) < 0.02
    # its TIV comes from the template's cavity through the registration: beyond the brain mask by
    # the extra-cerebral CSF (ds000011 full heads: brain mask 83-93 % of TIV), an adult's volume
    assert 1100 < stroke_tissue["tiv_ml"] < 2000
    assert 1.03 < stroke_tissue["tiv_ml"] / stroke_tissue["brain_ml"] < 1.25
    icv_meta = json.loads(d.sidecar_path(s3.path("icv_mask")).read_text())
    assert icv_meta["Method"].startswith("input already brain-extracted: the template's intracranial mask")
    assert 0.35 < stroke_tissue["gm_fraction"] < 0.65
    # precentral gyrus ROI present in the default atlas table
    roi = pd.read_csv(o.path("atlas_morph", atlas="AAL3"), sep="\t").set_index("name")
    assert roi.loc["Precentral_L", "gm_ml"] > 5 and roi.loc["Precentral_R", "gm_ml"] > 5
    # the report is self-contained
    html = o.report().read_text()
    assert "<svg" in html and "src=\"http" not in html and "href=\"http" not in html

    # a second rerun reuses every step and ends with the same outputs
    names = [p.relative_to(out) for p in expected if p.suffix != ".html"]
    before = _digest(out, names)
    assert main(args) == EX_PARTIAL
    err = capsys.readouterr().err
    assert "[sub_01] register done (cached)" in err
    assert _digest(out, names) == before
