"""Group level: collecting derivatives, QC exclusion, design, ROI statistics and their figures.

The cohort tests read the synthetic derivative cohort of :mod:`cohort` (fixture
``group_cohort``: 10 controls and 10 patients whose grey matter in AAL3
Precentral_L/R was reduced by 10 %, head size, age and anatomical variability as
in real data); the statistics are checked against the planted truth and against
independent computations (scipy's two-sample t test, a numpy least-squares GLM,
hand-computed Benjamini-Hochberg).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_app.errors import InputDataError, MissingInputError, UsageError
from bids_app.group import figures
from bids_app.group.collect import collect_group
from bids_app.group.design import build_design, covariate_table, covariates_for
from bids_app.group.exclusion import apply_exclusion
from bids_app.group.roi_stats import correct_pvalues, measure_label, roi_statistics, run_roi_analysis
from cohort import make_cohort

PRECENTRAL = ["Precentral_L", "Precentral_R"]


def _copy_tables(src: Path, dst: Path) -> Path:
    """The derivative tables (TSV/JSON) of ``src`` without the images, to be modified by a test."""
    shutil.copytree(src, dst, ignore=lambda folder, names: [n for n in names if n.endswith((".nii.gz", ".h5",
                                                                                          ".html", ".svg"))])
    return dst


@pytest.fixture(scope="module")
def cohort_dirs(group_cohort):
    """(output_dir, bids_dir) of the cohort (read only)."""
    return group_cohort["output_dir"], group_cohort["bids_dir"]


@pytest.fixture(scope="module")
def cohort_group(cohort_dirs):
    return collect_group(*cohort_dirs)


# --------------------------------------------------------------------------- collect


def test_collect_cohort_tables(group_cohort, cohort_dirs, cohort_group):
    out, _ = cohort_dirs
    n = len(group_cohort["participants"])
    morph = cohort_group.morphometrics
    assert n == 20 and len(morph) == n
    assert morph["participant_id"].tolist() == [f"sub-{i:02d}" for i in range(1, n + 1)]
    assert morph["session_id"].isna().all()
    assert cohort_group.skipped.empty
    n_aal3 = len(pd.read_csv(out / "sub-01/anat/sub-01_atlas-AAL3_morph.tsv", sep="\t"))
    n_mori = len(pd.read_csv(out / "sub-01/anat/sub-01_atlas-Mori_morph.tsv", sep="\t"))
    assert n_aal3 > 150 and n_mori > 100
    measures = ["volume_ml", "gm_ml", "wm_ml", "csf_ml"]
    assert set(cohort_group.rois["measure"]) == set(measures)
    assert morph.shape[1] == 2 + 7 + 4 * (n_aal3 + n_mori)  # ids, tissue keys (brain_ml too), ROIs
    for col in ("tiv_ml", "brain_ml", "gm_ml", "wm_ml", "csf_ml", "bpf", "gm_fraction", "AAL3_Precentral_L_gm_ml",
                "AAL3_Precentral_R_volume_ml", "Mori_Left_Precentral_Gyrus_gm_ml"):
        assert col in morph.columns
    # values are those of the participant tables, in the right rows (a patient's)
    patient = group_cohort["patients"][0]
    anat = out / patient / "anat"
    roi = pd.read_csv(anat / f"{patient}_atlas-AAL3_morph.tsv", sep="\t").set_index("name")
    tissue = pd.read_csv(anat / f"{patient}_desc-tissue_morph.tsv", sep="\t")
    row = morph.set_index("participant_id").loc[patient]
    assert row["AAL3_Precentral_R_gm_ml"] == pytest.approx(roi.loc["Precentral_R", "gm_ml"])
    assert row["AAL3_Frontal_Sup_2_L_volume_ml"] == pytest.approx(roi.loc["Frontal_Sup_2_L", "volume_ml"])
    assert row["tiv_ml"] == pytest.approx(tissue["tiv_ml"].iloc[0])
    # ... and those of the cohort's truth
    truth = group_cohort["roi_gm"].set_index("participant_id")
    assert np.allclose(morph.set_index("participant_id")[[f"AAL3_{r}_gm_ml" for r in PRECENTRAL]],
                       truth.loc[morph["participant_id"], PRECENTRAL])
    # IQMs and QC verdicts of every participant; the cohort's failed scans are marked
    assert len(cohort_group.iqms) == n and {"cjv", "snr_total"} <= set(cohort_group.iqms.columns)
    qc = cohort_group.qc.set_index("participant_id")
    assert sorted(qc.index[qc["verdict"] == "fail"]) == sorted(group_cohort["qc_fail"])
    assert qc.loc[group_cohort["qc_fail"], "reasons"].str.contains("cjv").all()
    # every column is described, ROI volumes in mL
    dictionary = cohort_group.dictionaries["morphometrics"]
    assert set(morph.columns) <= set(dictionary)
    assert dictionary["AAL3_Precentral_L_gm_ml"]["Units"] == "mL"
    assert "Precentral_L" in dictionary["AAL3_Precentral_L_gm_ml"]["Description"]


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_collect_reports_and_skips_bad_participants(group_cohort, tmp_path):
    out = _copy_tables(group_cohort["output_dir"], tmp_path / "out")
    n = len(group_cohort["participants"])
    (out / "sub-02/anat/sub-02_desc-tissue_morph.tsv").write_text("tiv_ml\tgm_ml\nnot\ta number\n")
    (out / "sub-03/anat/sub-03_atlas-AAL3_morph.tsv").unlink()
    for i in range(1, n + 1):
        anat = out / f"sub-{i:02d}/anat"
        _write_json(anat / f"sub-{i:02d}_desc-T1w_iqm.json",
                    {"cjv": 0.4 + i / 100, "snr_total": 10.0 + i, "bids_meta": {"x": 1}, "provenance": "t"})
        verdict = {4: "fail", 6: "warn"}.get(i, "pass")
        flags = [] if verdict == "pass" else [{"check": "ghosting", "level": verdict, "reason": "ghost ratio high"}]
        _write_json(anat / f"sub-{i:02d}_desc-T1w_qc.json", {"verdict": verdict, "flags": flags, "p_accept": i / 20})
    _write_json(out / "sub-08/anat/sub-08_desc-T1w_qc.json", "{not json")
    group = collect_group(out, None)
    assert group.skipped["participant_id"].tolist() == ["sub-02", "sub-03"]
    assert "non-numeric" in group.skipped["reason"].iloc[0]
    assert "atlas-AAL3" in group.skipped["reason"].iloc[1]
    assert len(group.morphometrics) == n - 2
    assert any("sub-02" in w for w in group.warnings) and any("sub-08" in w for w in group.warnings)
    assert list(group.iqms.columns) == ["participant_id", "session_id", "cjv", "snr_total"]
    assert group.iqms.set_index("participant_id").loc["sub-07", "snr_total"] == 17.0
    assert "Ganzetti" in group.dictionaries["iqms"]["cjv"]["Description"]
    qc = group.qc.set_index("participant_id")
    assert "sub-08" not in qc.index and len(qc) == n - 1
    assert qc.loc["sub-04", "verdict"] == "fail" and "ghosting (fail)" in qc.loc["sub-04", "reasons"]
    assert qc.loc["sub-06", "n_warn"] == 1 and qc.loc["sub-05", "p_accept"] == 0.25


def test_collect_sessions_and_session_covariates(tmp_path):
    cohort = make_cohort(tmp_path / "cohort", n_per_group=3, sessions=True, seed=1, n_fail=0)
    out, bids = cohort["output_dir"], cohort["bids_dir"]
    (bids / "sub-01").mkdir()
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-a\t60\nses-b\t62\n")
    group = collect_group(out, bids)
    assert len(group.morphometrics) == 12 and group.skipped.empty
    assert group.morphometrics["session_id"].tolist()[:2] == ["ses-a", "ses-b"]
    # the two sessions of a participant: same head (TIV), the same anatomy up to a 1 % rescan field
    morph = group.morphometrics.set_index(["participant_id", "session_id"])
    assert morph.loc[("sub-04", "ses-a"), "tiv_ml"] == pytest.approx(morph.loc[("sub-04", "ses-b"), "tiv_ml"])
    gm = morph["AAL3_Precentral_L_gm_ml"].unstack()
    assert np.all(np.abs(gm["ses-a"] / gm["ses-b"] - 1) < 0.02) and not np.allclose(gm["ses-a"], gm["ses-b"])
    cov = covariates_for(group)
    ages = cov.table.set_index(["participant_id", "session_id"])["age"]
    age_02 = cohort["participants"].set_index("participant_id").loc["sub-02", "age"]
    assert ages[("sub-01", "ses-a")] == 60 and ages[("sub-01", "ses-b")] == 62 and ages[("sub-02", "ses-b")] == age_02
    design = build_design(cov, "group + age")
    assert design.n == 12 and any("several sessions" in w for w in design.warnings)


def test_collect_thickness_tables(group_cohort, tmp_path):
    out = _copy_tables(group_cohort["output_dir"], tmp_path / "out")
    for i in range(1, len(group_cohort["participants"]) + 1):
        anat = out / f"sub-{i:02d}" / "anat"
        roi = pd.read_csv(anat / f"sub-{i:02d}_atlas-AAL3_morph.tsv", sep="\t")[["index", "name"]]
        roi["thickness_mm"] = 2.5 + i / 10
        roi.loc[roi["name"] == "Thal_VL_R", "thickness_mm"] = np.nan  # no cortex
        roi.to_csv(anat / f"sub-{i:02d}_atlas-AAL3_desc-thickness_morph.tsv", sep="\t", index=False, na_rep="n/a")
    group = collect_group(out)
    morph = group.morphometrics.set_index("participant_id")
    assert morph.loc["sub-03", "AAL3_Precentral_L_thickness_mm"] == pytest.approx(2.8)
    assert morph["AAL3_Thal_VL_R_thickness_mm"].isna().all()
    assert "AAL3_Precentral_L_gm_ml" in morph.columns  # the volume table is still there
    assert group.dictionaries["morphometrics"]["AAL3_Precentral_L_thickness_mm"]["Units"] == "mm"


def test_collect_without_outputs_is_an_error(tmp_path):
    with pytest.raises(MissingInputError, match="no usable participant morphometrics"):
        collect_group(tmp_path)


# --------------------------------------------------------------------------- exclusion


def test_exclusion_drops_fail_keeps_warn():
    table = pd.DataFrame({"participant_id": [f"sub-{i}" for i in "12345"], "session_id": [None] * 5,
                          "y": range(5)})
    qc = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3", "sub-4"], "session_id": [None] * 4,
                       "verdict": ["pass", "warn", "fail", "pass"],
                       "reasons": [None, "fov (warn): cropped", "motion (fail): ringing", None],
                       "p_accept": [0.9, 0.6, 0.1, 0.3]})
    kept, excluded = apply_exclusion(table, qc)
    assert kept["participant_id"].tolist() == ["sub-1", "sub-2", "sub-4", "sub-5"]
    assert excluded["participant_id"].tolist() == ["sub-3"]
    assert "fail" in excluded["reason"].iloc[0] and "ringing" in excluded["reason"].iloc[0]
    kept, excluded = apply_exclusion(table, qc, exclude_levels=("warn", "fail"), exclude_labels=["5"],
                                     min_p_accept=0.5)
    assert kept["participant_id"].tolist() == ["sub-1"]
    reasons = excluded.set_index("participant_id")["reason"]
    assert "p_accept 0.300 < 0.5" in reasons["sub-4"] and "user" in reasons["sub-5"]
    assert "QC verdict fail" in reasons["sub-3"] and "p_accept 0.100" in reasons["sub-3"]
    with pytest.raises(UsageError, match="unknown QC level"):
        apply_exclusion(table, qc, exclude_levels=("bad",))


# --------------------------------------------------------------------------- design + ROI statistics on the cohort


def test_cohort_default_model_and_precentral_atrophy(group_cohort, cohort_group):
    cov = covariates_for(cohort_group)
    results, designs = run_roi_analysis(cohort_group.morphometrics, cohort_group.rois, cov, atlases=["AAL3"])
    design = designs["gm_ml"]
    assert design.formula == "group + age + sex + tiv"
    assert design.contrast_name == "group[T.patient]"
    assert design.comparison["reference"] == "control"
    assert (design.comparison["n_level"], design.comparison["n_reference"]) == (10, 10)
    assert design.n == 20 and design.df_resid == 15
    rows = results.set_index("name")
    tested = results.dropna(subset=["p"])
    assert len(tested) > 150 and results["p_fdr"].max() <= 1
    loss = group_cohort["realised_loss"][PRECENTRAL].mean()  # GM fraction the patients lost (truth: 0.10)
    assert np.allclose(loss, group_cohort["atrophy"], atol=1e-4)
    for side in PRECENTRAL:
        r = rows.loc[side]
        # FDR over all AAL3 regions (the whole atlas is the family), patients smaller, large effect
        assert r["t"] < 0 and r["p_fdr"] < 0.05 and r["p_fdr"] >= r["p"], side
        assert r["cohen_d"] < -0.8, side
        # the covariate-adjusted difference recovers the planted loss: its error is sampling noise
        # with the model's standard error (about 1.3 % of the control mean here), so 3 SE
        se_percent = r["se"] * r["effect_percent"] / r["beta"]  # SE in % of the control mean
        assert se_percent < 2.5, side
        assert abs(r["effect_percent"] + 100 * loss[side]) < 3 * se_percent, side
    # whole atlas: the two precentral gyri are the strongest regions, other regions are not
    # FDR-significant beyond the 5 % of false discoveries the procedure allows
    assert set(tested.nsmallest(2, "p")["name"]) == set(PRECENTRAL)
    others = tested[(tested["p_fdr"] < 0.05) & ~tested["name"].isin(PRECENTRAL)]
    assert len(others) <= 1
    # a-priori family (motor cortex): both gyri survive FDR, with the same t
    focused, _ = run_roi_analysis(cohort_group.morphometrics, cohort_group.rois, cov, atlases=["AAL3"],
                                  regions=PRECENTRAL)
    assert len(focused) == 2 and (focused["p_fdr"] < 0.05).all()
    assert np.allclose(focused.set_index("name")["t"], rows.loc[PRECENTRAL, "t"])


def test_cohort_qc_exclusion_feeds_the_design(group_cohort, cohort_group):
    kept, excluded = apply_exclusion(cohort_group.morphometrics, cohort_group.qc)
    failed = sorted(group_cohort["qc_fail"])
    assert len(failed) == 2 and excluded["participant_id"].tolist() == failed
    assert excluded["reason"].str.contains("QC verdict fail").all()
    design = build_design(covariates_for(cohort_group, kept), "group + tiv")
    patients = sum(p in group_cohort["patients"] for p in failed)
    assert design.n == 18
    assert (design.comparison["n_level"], design.comparison["n_reference"]) == (10 - patients, 8 + patients)
    assert not set(failed) & set(design.rows["participant_id"])


# --------------------------------------------------------------------------- synthetic statistics


def _synthetic(tmp_path, n_per_group=6, seed=0, participants_rows=None):
    """Morphometrics for two groups with 3 ROIs and a participants.tsv; returns (morph, rois, bids_dir)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    ids = [f"sub-{i:02d}" for i in range(1, n + 1)]
    group = ["control"] * n_per_group + ["patient"] * n_per_group
    tiv = rng.normal(1400, 100, n)
    is_patient = np.array([g == "patient" for g in group])
    morph = pd.DataFrame({"participant_id": ids, "session_id": [None] * n, "tiv_ml": tiv})
    rois = []
    for k, (name, effect) in enumerate((("A", -1.0), ("B", 0.0), ("C", 0.5)), start=1):
        col = f"X_{name}_gm_ml"
        morph[col] = 10 + 0.004 * (tiv - 1400) + effect * is_patient + rng.normal(0, 0.6, n)
        rois.append({"column": col, "atlas": "X", "desc": None, "index": k, "name": name, "measure": "gm_ml"})
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    rows = participants_rows or [f"{p}\t{age}\t{sex}\t{g}" for p, age, sex, g in
                                 zip(ids, rng.integers(20, 80, n), ["M", "F"] * n_per_group, group, strict=True)]
    (bids / "participants.tsv").write_text("participant_id\tage\tsex\tgroup\n" + "\n".join(rows) + "\n")
    return morph, pd.DataFrame(rois), bids


def test_two_group_t_matches_scipy_ttest(tmp_path):
    morph, rois, bids = _synthetic(tmp_path, n_per_group=7, seed=3)
    cov = covariate_table(morph, bids, None, rois["column"])
    design = build_design(cov, "group")
    results = roi_statistics(morph, rois, design, ["gm_ml"]).set_index("name")
    patient = morph["participant_id"].isin([f"sub-{i:02d}" for i in range(8, 15)]).to_numpy()
    for name in ("A", "B", "C"):
        y = morph[f"X_{name}_gm_ml"].to_numpy()
        ref = stats.ttest_ind(y[patient], y[~patient], equal_var=True)
        assert results.loc[name, "t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert results.loc[name, "p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert results.loc[name, "beta"] == pytest.approx(y[patient].mean() - y[~patient].mean(), rel=1e-9)
        pooled = np.sqrt((y[patient].var(ddof=1) + y[~patient].var(ddof=1)) / 2)  # equal group sizes
        assert results.loc[name, "cohen_d"] == pytest.approx((y[patient].mean() - y[~patient].mean()) / pooled,
                                                             rel=1e-9)
        assert results.loc[name, "df"] == 12


def test_covariate_model_matches_numpy_glm(tmp_path):
    morph, rois, bids = _synthetic(tmp_path, n_per_group=10, seed=5)
    cov = covariate_table(morph, bids, None, rois["column"])
    design = build_design(cov)  # default: group + age + sex + tiv
    assert design.formula == "group + age + sex + tiv"
    results = roi_statistics(morph, rois, design, ["gm_ml"]).set_index("name")
    x = np.column_stack([np.ones(20), (cov.table["group"] == "patient").astype(float),
                         (cov.table["sex"] == "M").astype(float), cov.table["age"].astype(float),
                         morph["tiv_ml"]])
    c = np.array([0, 1.0, 0, 0, 0])
    xtx_inv = np.linalg.inv(x.T @ x)
    for name in ("A", "B", "C"):
        y = morph[f"X_{name}_gm_ml"].to_numpy()
        b = xtx_inv @ x.T @ y
        resid = y - x @ b
        se = np.sqrt(resid @ resid / 15 * (c @ xtx_inv @ c))
        t = c @ b / se
        assert results.loc[name, "t"] == pytest.approx(t, rel=1e-8)
        assert results.loc[name, "p"] == pytest.approx(2 * stats.t.sf(abs(t), 15), rel=1e-8)
        assert results.loc[name, "partial_eta2"] == pytest.approx(t * t / (t * t + 15), rel=1e-8)
    assert results.loc["A", "t"] < -3 and results.loc["A", "p_fdr"] < 0.05  # the simulated effect is found


def test_fdr_and_bonferroni_on_known_p():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    q, bonf = correct_pvalues(p)
    np.testing.assert_allclose(q[:4], [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(bonf[:4], [0.04, 0.16, 0.12, 0.02])
    assert np.isnan(q[4]) and np.isnan(bonf[4])
    assert measure_label("gm_ml") == "GM" and measure_label("thickness_mm") == "thicknessmm"


def test_continuous_contrast_and_vector(tmp_path):
    morph, rois, bids = _synthetic(tmp_path, seed=1)
    cov = covariate_table(morph, bids, None, rois["column"])
    by_name = build_design(cov, "age + tiv", contrast="age")
    by_vector = build_design(cov, "age + tiv", contrast="0 1 0")
    assert by_name.comparison is None and np.array_equal(by_name.contrast, by_vector.contrast)
    results = roi_statistics(morph, rois, by_name, ["gm_ml"])
    assert results["cohen_d"].isna().all() and results["partial_eta2"].between(0, 1).all()


# --------------------------------------------------------------------------- errors


def test_bad_covariates_list_the_rows(tmp_path):
    morph, rois, bids = _synthetic(tmp_path, n_per_group=4)
    rows = (bids / "participants.tsv").read_text().splitlines()
    rows[3] = "sub-03\tabc\tF\tcontrol"
    rows[5] = "sub-05\tn/a\tF\tcontrol"
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    cov = covariate_table(morph, bids, None, rois["column"])
    with pytest.raises(InputDataError) as err:
        build_design(cov, "group + age")
    message = str(err.value)
    assert "participants.tsv" in message and "sub-03 age='abc'" in message and "sub-05 age=n/a" in message
    assert "sub-01" not in message
    build_design(cov, "group")  # age not in the model: fine


def test_missing_group_value_is_an_error(tmp_path):
    morph, rois, bids = _synthetic(tmp_path, n_per_group=4)
    text = (bids / "participants.tsv").read_text().replace("\tpatient\n", "\tn/a\n", 1)
    (bids / "participants.tsv").write_text(text)
    cov = covariate_table(morph, bids, None, rois["column"])
    with pytest.raises(InputDataError, match=r"sub-05 group=n/a"):
        build_design(cov)


def test_unknown_contrast_lists_columns(tmp_path):
    morph, rois, bids = _synthetic(tmp_path)
    cov = covariate_table(morph, bids, None, rois["column"])
    with pytest.raises(UsageError) as err:
        build_design(cov, "group + age", contrast="group[T.patients]")
    assert "Intercept, group[T.patient], age" in str(err.value)
    with pytest.raises(UsageError, match="3 columns"):
        build_design(cov, "group + age", contrast="0 1")
    with pytest.raises(UsageError, match="Covariates available"):
        build_design(cov, "diagnosis + age")


def test_too_few_participants(tmp_path):
    morph, rois, bids = _synthetic(tmp_path, n_per_group=3)
    cov = covariate_table(morph.iloc[:5], bids, None, rois["column"])
    with pytest.raises(InputDataError, match="at least 7 are needed"):
        build_design(cov)  # 5 rows, 5 columns
    cov = covariate_table(morph.iloc[:5], bids, None, rois["column"])
    with pytest.raises(InputDataError, match=r"patient \(n=2\)"):
        build_design(cov, "group")


def test_constant_covariate_is_reported(tmp_path):
    morph, rois, bids = _synthetic(tmp_path)
    morph["tiv_ml"] = 1500.0
    cov = covariate_table(morph, bids, None, rois["column"])
    with pytest.raises(InputDataError, match="rank deficient: tiv"):
        build_design(cov, "group + tiv")
    assert build_design(cov).formula == "group + age + sex"  # left out of the default, with a warning


# --------------------------------------------------------------------------- figures


def test_figures(cohort_dirs, cohort_group, tmp_path):
    _, bids = cohort_dirs
    cov = covariate_table(cohort_group.morphometrics, bids, None, cohort_group.rois["column"])
    results, _ = run_roi_analysis(cohort_group.morphometrics, cohort_group.rois, cov, atlases=["AAL3"])
    svg = figures.manhattan_svg(results, "AAL3", "gm_ml", path=tmp_path / "manhattan.svg")
    assert svg.startswith("<svg") and (tmp_path / "manhattan.svg").read_text() == svg
    assert "Bonferroni" in svg and "Precentral_R" in svg
    p = np.array([0.001, 0.2, 0.01, np.nan])
    q, _ = correct_pvalues(p)
    assert figures.fdr_threshold(p, q) == 0.01 and figures.fdr_threshold(p, np.ones(4)) is None
    img = figures.effect_map_image(results, "AAL3", "gm_ml")
    from bids_app.resources import get_atlas

    labels = np.asanyarray(nb.load(get_atlas("AAL3", resolution=2).dseg).dataobj)
    rows = results.set_index("index")
    data = np.asanyarray(img.dataobj)
    assert np.allclose(data[labels == 2], rows.loc[2, "cohen_d"])  # Precentral_R
    assert np.all(data[labels == 0] == 0)
    svg = figures.effect_map_svg(results, "AAL3", "gm_ml")
    assert svg.startswith("<svg") and "Cohen" in svg
