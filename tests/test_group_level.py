"""``run.py bids_dir out group`` end to end on a synthetic derivative cohort with known atrophy.

20 participants (tests/cohort.py): 10 patients lose 10 % of the grey matter of both
precentral gyri; two scans carry a QC ``fail``. The group level must exclude those two,
find both gyri by ROI statistics at FDR < 0.05 over all AAL3 regions, put the VBM peak in
a precentral gyrus with an FWE-significant TFCE, and write its tables, maps and report.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_app.bids import derivatives as d
from bids_app.bids.validator import run_validator
from bids_app.cli import main
from bids_app.group.clusters import labels_at
from bids_app.resources import get_atlas

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def group_run(group_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "derivatives"
    shutil.copytree(group_cohort["output_dir"], out)
    code = main([str(group_cohort["bids_dir"]), str(out), "group", "--n-perm", "200", "--nprocs", "2",
                 "--smoothing-fwhm", "6", "-w", str(out.parent / "work")])
    return {"code": code, "out": out, **group_cohort}


def test_group_level_exits_cleanly_and_writes_everything(group_run):
    out = group_run["out"]
    assert group_run["code"] == 0
    for kind in ("morphometrics", "iqms", "qc", "excluded", "roistats"):
        assert d.group_path(out, kind).is_file(), kind
        assert d.sidecar_path(d.group_path(out, kind)).is_file(), kind
    assert d.group_report_path(out).is_file()
    html = d.group_report_path(out).read_text()
    assert "Precentral_L" in html and "group + age + sex + tiv" in html
    assert 'src="http' not in html and 'href="http' not in html
    # the derivative dataset, group outputs included, still passes the official validator
    result = run_validator(out)
    assert result.ok, result.summary()


def test_qc_failures_are_excluded(group_run):
    excluded = pd.read_csv(d.group_path(group_run["out"], "excluded"), sep="\t")
    assert sorted(excluded["participant_id"]) == sorted(group_run["qc_fail"])
    assert excluded["reason"].str.contains("fail").all()


def test_roi_statistics_find_the_shrunk_gyri(group_run):
    stats = pd.read_csv(d.group_path(group_run["out"], "roistats"), sep="\t")
    aal = stats[(stats["atlas"] == "AAL3") & (stats["measure"] == "gm_ml")].set_index("name")
    for gyrus in ("Precentral_L", "Precentral_R"):
        row = aal.loc[gyrus]
        assert row["p_fdr"] < 0.05 and row["t"] < 0, row
    # nothing else survives FDR in a cohort where nothing else differs (a false-positive check)
    assert set(aal.index[aal["p_fdr"] < 0.05]) <= {"Precentral_L", "Precentral_R"}


def test_vbm_peak_is_in_the_precentral_gyrus_and_survives_fwe(group_run):
    out, tpl = group_run["out"], group_run["template"]
    fields = {"template": tpl, "res": 2, "contrast": "groupTpatient"}
    t_img = nb.load(d.group_path(out, "vbm_map", name="stat-t_statmap", **fields))
    t = np.asanyarray(t_img.dataobj)
    peak = np.unravel_index(np.argmin(t), t.shape)  # patients < controls: negative t
    xyz = nb.affines.apply_affine(t_img.affine, peak)
    names = get_atlas("AAL3", tpl).labels_table().set_index("index")["name"]
    assert names[int(labels_at(np.array([xyz]), "AAL3", tpl)[0])] in ("Precentral_L", "Precentral_R")
    logp = np.asanyarray(nb.load(d.group_path(out, "vbm_map", name="stat-logpFWE_desc-tfce_statmap",
                                              **fields)).dataobj)
    assert logp.max() > -np.log10(0.05)
    summary = json.loads(d.group_path(out, "vbm_summary", **fields).read_text())
    assert summary["permutation"]["n_perm"] == 200
