"""QC classifier: the shipped model, its cross-validation record, DS030 and reproducible training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bids_app.errors import InputDataError, ResourceError
from bids_app.qc import classifier as qc
from bids_app.qc import train

# Measured with the shipped model (python -m bids_app.qc.train, seed 20170925): ABIDE
# leave-one-site-out pooled AUC 0.890, mean over sites 0.888, pooled balanced accuracy 0.821;
# trained on ABIDE, tested on DS030 (exclude vs rest): AUC 0.729.
CV_POOLED_AUC_FLOOR = 0.85
CV_SITE_AUC_FLOOR = 0.84
CV_POOLED_BA_FLOOR = 0.77
DS030_AUC_FLOOR = 0.729 - 0.05


@pytest.fixture(scope="module")
def model() -> qc.ForestModel:
    return qc.load_model()


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((qc.DATA_DIR / qc.METRICS_FILE).read_text())


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return {name: train.read_table(path) for name, path in train.mriqc_learn_tables().items()}


def reference_vector(column: str) -> dict[str, float]:
    """Every ABIDE IQM at one column of the reference table (e.g. its median, "p50")."""
    index = qc.REFERENCE_COLUMNS.index(column)
    return {name: float(knots[index]) for name, knots in qc.abide_reference().items()}


def test_model_loads_offline(model, metrics):
    assert model.n_trees == 400
    assert len(model.features) == len(metrics["features"]) == 58
    assert list(model.features) == metrics["features"]
    assert {"cjv", "cnr", "efc", "qi_1", "snr_wm", "snrd_total", "fwhm_avg", "tpm_overlap_gm"} <= set(model.features)
    assert not any(f.startswith(("size_", "spacing_")) or f.endswith("_n") for f in model.features)
    assert 0.0 < model.threshold < 1.0
    assert model.threshold == pytest.approx(metrics["threshold"]["p_accept"])
    assert model.medians.shape == (58,) and np.all(np.isfinite(model.medians))
    assert "ABIDE, mriqc-learn 0.0.3" in model.meta["description"]


def test_metrics_record_cv_and_provenance(metrics):
    cv = metrics["cv_abide"]
    assert len(cv["per_site"]) == 17
    assert sum(row["n"] for row in cv["per_site"]) == 1101
    assert cv["pooled"]["auc"] >= CV_POOLED_AUC_FLOOR
    assert cv["site_auc"]["mean"] >= CV_SITE_AUC_FLOOR
    assert cv["pooled"]["balanced_accuracy"] >= CV_POOLED_BA_FLOOR
    assert metrics["test_ds030"]["exclude_vs_rest"]["all"]["n"] == 265
    data = metrics["training_data"]
    assert data["version"] == "0.0.3" and data["licence"] == "Apache-2.0"
    assert "Esteban" in data["citation"] and "10.1371/journal.pone.0184661" in data["citation"]
    assert len(data["files"]["abide"]["sha256"]) == 64


def test_ds030_ratings_are_separated(model, metrics, tables):
    ds030 = tables["ds030"]
    p_accept = np.array([qc.predict_accept(row, model)["p_accept"] for row in ds030.to_dict("records")])
    excluded = (ds030["rater_1"] == -1).to_numpy()
    auc = roc_auc_score(~excluded, p_accept)
    assert auc >= DS030_AUC_FLOOR
    assert auc == pytest.approx(metrics["test_ds030"]["exclude_vs_rest"]["all"]["auc"], abs=1e-9)
    assert p_accept[excluded].mean() < p_accept[(ds030["rater_1"] == 1).to_numpy()].mean() - 0.1


def test_bad_iqms_score_below_abide_median(model):
    median = reference_vector("p50")
    good = qc.predict_accept(median, model)
    assert good["rating"] == "accept" and good["missing_features"] == []

    bad = dict(median)
    for name in median:
        if name == "cnr" or name.startswith(("snr_", "snrd_")):
            bad[name] = qc.abide_reference()[name][qc.REFERENCE_COLUMNS.index("p01")]
        if name in ("cjv", "efc", "qi_1"):
            bad[name] = qc.abide_reference()[name][qc.REFERENCE_COLUMNS.index("p99")]
    assert qc.predict_accept(bad, model)["p_accept"] < good["p_accept"] - 0.15

    worst = dict(median)  # every IQM with a documented direction at ABIDE's worst 1 %
    for name in model.features:
        direction = train.quality_direction(name)
        if direction:
            worst[name] = qc.abide_reference()[name][qc.REFERENCE_COLUMNS.index("p01" if direction > 0 else "p99")]
    assert qc.predict_accept(worst, model)["rating"] == "exclude"


@pytest.mark.parametrize("name, direction", [("snr_wm", 1), ("cnr", 1), ("cjv", -1), ("efc", -1), ("fwhm_avg", -1)])
def test_p_accept_follows_the_quality_direction(model, name, direction):
    median = reference_vector("p50")
    knots = qc.abide_reference()[name]
    p = [qc.predict_accept({**median, name: v}, model)["p_accept"] for v in np.linspace(knots[0], knots[-1], 25)]
    steps = np.diff(p) * direction
    assert np.all(steps >= -1e-12) and steps.sum() > 0


def test_missing_features_are_imputed_and_listed(model):
    median = reference_vector("p50")
    partial = {k: v for k, v in median.items() if not k.startswith("tpm_overlap_")}
    partial.update(qi_2=None, cnr=float("nan"), efc="n/a", gsr=0.01)  # gsr: not a model feature
    out = qc.predict_accept(partial, model)
    expected = [f for f in model.features if f.startswith("tpm_overlap_") or f in ("qi_2", "cnr", "efc")]
    assert out["missing_features"] == expected
    filled = dict(partial, **{f: model.medians[model.features.index(f)] for f in expected})
    assert out["p_accept"] == pytest.approx(qc.predict_accept(filled, model)["p_accept"], abs=1e-12)
    with pytest.raises(InputDataError, match="None of the IQMs"):
        qc.predict_accept({"gsr": 0.1}, model)


def test_exported_forest_equals_scikit_learn(tables):
    abide, ds030 = tables["abide"].sample(200, random_state=0), tables["ds030"]
    features, _ = train.select_features(train.iqm_columns(abide))
    pipeline = train.make_pipeline(features, seed=1, n_estimators=20, n_jobs=1)
    pipeline.fit(abide[features].to_numpy(float), train.abide_labels(abide))
    model = qc.forest_from_sklearn(pipeline.named_steps["forest"], features,
                                   pipeline.named_steps["impute"].statistics_, 0.5)
    X = ds030[features].to_numpy(float)
    X[::3, ::5] = np.nan  # imputed by both with the training medians
    assert np.max(np.abs(model.p_accept(X) - pipeline.predict_proba(X)[:, 1])) < 1e-12


def test_training_is_reproducible(tmp_path, tables):
    args = ["--subsample", "250", "--n-estimators", "30"]
    first = train.main(["--out", str(tmp_path / "a"), *args])
    second = train.main(["--out", str(tmp_path / "b"), *args])
    other = train.main(["--out", str(tmp_path / "c"), *args, "--seed", "7"])
    X = tables["ds030"][first["features"]].to_numpy(float)
    p = {k: qc.read_model(tmp_path / k / qc.MODEL_FILE).p_accept(X) for k in "abc"}
    assert np.array_equal(p["a"], p["b"])
    assert not np.array_equal(p["a"], p["c"])
    assert first["cv_abide"] == second["cv_abide"] and first["threshold"] == second["threshold"]
    reference = pd.read_csv(tmp_path / "a" / qc.REFERENCE_FILE, sep="\t")
    assert list(reference.columns) == ["iqm", "n", "mean", "sd", *qc.REFERENCE_COLUMNS]
    assert (reference["n"] == 250).all()


def test_abide_percentile(tables):
    abide = tables["abide"]
    cnr = abide["cnr"].to_numpy(float)
    assert qc.abide_percentile("cnr", float(np.median(cnr))) == pytest.approx(50.0)
    assert qc.abide_percentile("cnr", cnr.min() - 1) == 0.0
    assert qc.abide_percentile("cnr", cnr.max() + 1) == 100.0
    for value in np.percentile(cnr, [3, 17, 40, 66, 88, 97]):
        exact = 50.0 * (np.mean(cnr < value) + np.mean(cnr <= value))
        assert qc.abide_percentile("cnr", float(value)) == pytest.approx(exact, abs=3.0)
    assert np.isnan(qc.abide_percentile("efc", None))
    with pytest.raises(InputDataError, match="No ABIDE reference"):
        qc.abide_percentile("gsr", 0.1)


def test_percentile_of_tied_knots_is_mid_rank():
    levels = (0, 25, 50, 75, 100)
    assert qc.percentile_from_knots(0.0, [0, 0, 0, 1, 2], levels) == pytest.approx((0 + 62.5) / 2)
    assert qc.percentile_from_knots(1.5, [0, 0, 0, 1, 2], levels) == pytest.approx(87.5)


def test_missing_or_damaged_model_raises_resource_error(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(ResourceError, match="absent.npz") as info:
        qc.load_model(missing)
    assert info.value.exit_code == 69 and "bids_app.qc.train" in str(info.value)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"not a zip archive")
    with pytest.raises(ResourceError, match="damaged.npz"):
        qc.read_model(damaged)
    with pytest.raises(ResourceError, match="reference"):
        qc.abide_reference(tmp_path / "absent.tsv")


def test_missing_training_tables_raise_resource_error(monkeypatch):
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ResourceError, match="mriqc-learn"):
        train.mriqc_learn_tables()


def test_train_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "bids_app.qc.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--subsample" in result.stdout
