"""Train the QC classifier on MRIQC's human-rated IQM tables and write it to the package data.

Run ``python -m bids_app.qc.train`` (about two minutes on two cores); it is seeded, so a rerun
gives the same model. Data: the ABIDE (1101 T1w, 17 sites) and DS030 (265 T1w, 2 sites) IQM
tables that mriqc-learn 0.0.3 (Apache-2.0) distributes, computed by MRIQC and rated by experts
(Esteban et al., PLoS ONE 2017, doi:10.1371/journal.pone.0184661). mriqc-learn's pickled model is
not used; only its TSV files are read.

Choices (the metrics file records them with the results):

- **Labels.** ABIDE has three rating columns (-1 exclude, 0 doubtful, 1 accept): ``rater_1``
  and ``rater_2`` each rated about 600 scans (about 100 in common), ``rater_3`` rated all 1101.
  We train on ``rater_3``, as mriqc-learn's own training script does, because one rater across
  all 17 sites keeps the criterion the same at every site, which leave-one-site-out evaluation
  needs. Binarisation: accept (1) vs exclude or doubtful (0), as mriqc-learn does; only 17
  scans are doubtful. DS030 has one rater, who marked 145 of 265 scans doubtful; it is scored
  as exclude vs accept-or-doubtful (MRIQC 2017's binarisation, ``rating >= 0`` accept) and, as
  a second figure, accept vs doubtful-or-exclude.
- **Features.** Every MRIQC T1w IQM of the tables except ``size_*`` and ``spacing_*`` (the
  acquisition grid: a site signature, not quality; MRIQC drops them too) and ``summary_*_n``
  (voxel counts, which scale with the resolution and field of view). Raw values, no site-wise
  normalisation, so that one new scan can be scored.
- **Model.** scikit-learn ``RandomForestClassifier`` with mriqc-learn's production settings
  (400 trees, depth 10, leaves of 10 or more, sqrt features), balanced class weights, and
  monotonic constraints from MRIQC's documentation of each IQM ("lower is better" for cjv, efc,
  qi_1, qi_2, inu_range, fwhm_*, rpve_*; "higher is better" for cnr, fber, snr_*, snrd_*,
  tpm_overlap_*), which keep P(accept) from rising as a scan gets noisier or blurrier.
- **Evaluation.** Leave-one-site-out cross-validation on ABIDE (AUC and balanced accuracy per
  site, mean +- SD over sites with both classes, and pooled over all out-of-site predictions),
  and the model trained on all of ABIDE tested on DS030 (never used for any choice).
- **Threshold.** The P(accept) that maximises the balanced accuracy of the pooled
  out-of-site predictions (Youden's J), i.e. chosen for sites the model has not seen. The
  per-site balanced accuracies use a threshold chosen the same way on the other 16 sites.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app.bids.derivatives import write_json, write_tsv
from bids_app.errors import ResourceError
from bids_app.qc.classifier import (
    DATA_DIR,
    METRICS_FILE,
    MODEL_DESCRIPTION,
    MODEL_FILE,
    REFERENCE_COLUMNS,
    REFERENCE_FILE,
    REFERENCE_LEVELS,
    ForestModel,
    forest_from_sklearn,
    save_model,
)

SEED = 20170925  # publication date of Esteban et al. 2017
FIRST_IQM = "cjv"  # the IQM columns of mriqc-learn's tables start here
MRIQC_LEARN_VERSION = "0.0.3"
CITATION = ("Esteban O, Birman D, Schaer M, Koyejo OO, Poldrack RA, Gorgolewski KJ (2017). MRIQC: Advancing "
            "the automatic prediction of image quality in MRI from unseen sites. PLoS ONE 12(9): e0184661. "
            "doi:10.1371/journal.pone.0184661")

#: Direction of quality along each IQM, from MRIQC's documentation (mriqc.qc.anatomical):
#: -1 lower is better, +1 higher is better; IQMs not listed have no monotone constraint.
LOWER_IS_BETTER = ("cjv", "efc", "qi_1", "qi_2", "inu_range", "fwhm_", "rpve_")
HIGHER_IS_BETTER = ("cnr", "fber", "snr_", "snrd_", "tpm_overlap_")

#: Random-forest settings of mriqc-learn 0.0.3's production pipeline, plus balanced weights.
FOREST_PARAMS = {"n_estimators": 400, "max_depth": 10, "min_samples_split": 10, "min_samples_leaf": 10,
                 "max_features": "sqrt", "bootstrap": True, "class_weight": "balanced_subsample"}


# ----------------------------------------------------------------------------- data


def mriqc_learn_tables() -> dict[str, Path]:
    """Paths of mriqc-learn's ``abide.tsv`` and ``ds030.tsv`` (the package is not imported)."""
    spec = importlib.util.find_spec("mriqc_learn")
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError("The QC training data (mriqc-learn's IQM tables) are not installed.",
                            f"pip install mriqc-learn=={MRIQC_LEARN_VERSION}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets"
    tables = {name: folder / f"{name}.tsv" for name in ("abide", "ds030")}
    for path in tables.values():
        if not path.is_file():
            raise ResourceError(f"QC training table not found: {path}.",
                                f"pip install --force-reinstall mriqc-learn=={MRIQC_LEARN_VERSION}")
    return tables


def read_table(path: Path) -> pd.DataFrame:
    """An mriqc-learn TSV (``n/a`` = not rated); raises :class:`ResourceError` when unusable."""
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except Exception as exc:
        raise ResourceError(f"QC training table {path} is unreadable ({exc}).",
                            f"pip install --force-reinstall mriqc-learn=={MRIQC_LEARN_VERSION}") from exc
    if FIRST_IQM not in table.columns or "site" not in table.columns:
        raise ResourceError(f"QC training table {path} has no 'site' or '{FIRST_IQM}' column.",
                            f"Use the tables of mriqc-learn=={MRIQC_LEARN_VERSION}.")
    return table


def iqm_columns(table: pd.DataFrame) -> list[str]:
    """All IQM columns (from ``cjv`` on, as mriqc-learn's loader splits them)."""
    return list(table.columns[table.columns.get_loc(FIRST_IQM):])


def select_features(iqms: list[str]) -> tuple[list[str], dict[str, str]]:
    """Model features, and the IQMs left out with the reason."""
    dropped = {}
    for name in iqms:
        if name.startswith(("size_", "spacing_")):
            dropped[name] = "acquisition grid: identifies the site, not the quality (dropped by MRIQC too)"
        elif name.startswith("summary_") and name.endswith("_n"):
            dropped[name] = "voxel count: scales with resolution and field of view"
    return [name for name in iqms if name not in dropped], dropped


def quality_direction(name: str) -> int:
    """+1 when a higher value means better quality, -1 when lower does, 0 when neither."""
    if name.startswith(LOWER_IS_BETTER):
        return -1
    if name.startswith(HIGHER_IS_BETTER):
        return 1
    return 0


def abide_labels(table: pd.DataFrame) -> np.ndarray:
    """1 = accept, 0 = exclude or doubtful, from ``rater_3`` (who rated every ABIDE scan)."""
    return (table["rater_3"] == 1).astype(int).to_numpy()


def ds030_labels(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """DS030's single rater, binarised both ways (1 = accept)."""
    return {"exclude_vs_rest": (table["rater_1"] >= 0).astype(int).to_numpy(),
            "accept_vs_rest": (table["rater_1"] == 1).astype(int).to_numpy()}


# ----------------------------------------------------------------------------- model


def make_pipeline(features: list[str], seed: int, n_estimators: int, n_jobs: int):
    """Median imputation then a monotone-constrained random forest (see the module docstring)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    params = dict(FOREST_PARAMS, n_estimators=n_estimators)
    forest = RandomForestClassifier(**params, monotonic_cst=[quality_direction(f) for f in features],
                                    random_state=seed, n_jobs=n_jobs)
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("forest", forest)])


def best_threshold(y: np.ndarray, p_accept: np.ndarray) -> float:
    """P(accept) cut that maximises balanced accuracy (Youden's J), midway between two scores."""
    from sklearn.metrics import roc_curve

    fpr, tpr, cuts = roc_curve(y, p_accept, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    upper = min(float(cuts[best]), 1.0)
    lower = float(cuts[best + 1]) if best + 1 < len(cuts) else upper
    return 0.5 * (upper + lower)


def scores(y: np.ndarray, p_accept: np.ndarray, threshold: float) -> dict:
    """AUC, balanced accuracy, accuracy and each class's recall (accept when P >= threshold);
    None where a class is absent."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    both = len(np.unique(y)) == 2
    accept = p_accept >= threshold

    def recall(label: int, predicted: np.ndarray) -> float | None:
        return float(np.mean(predicted[y == label])) if (y == label).any() else None

    return {"n": int(len(y)), "n_exclude": int((y == 0).sum()),
            "auc": float(roc_auc_score(y, p_accept)) if both else None,
            "balanced_accuracy": float(balanced_accuracy_score(y, accept)) if both else None,
            "accuracy": float(np.mean(accept == (y == 1))),
            "exclude_recall": recall(0, ~accept), "accept_recall": recall(1, accept)}


def _summary(values: list) -> dict:
    values = [v for v in values if v is not None]
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)), "n_sites": len(values)}


def leave_one_site_out(make, X: np.ndarray, y: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """Out-of-site P(accept) of every scan: each site predicted by a model trained on the others."""
    p_accept = np.empty(len(y))
    for site in np.unique(sites):
        test = sites == site
        p_accept[test] = make().fit(X[~test], y[~test]).predict_proba(X[test])[:, 1]
    return p_accept


def cv_report(y: np.ndarray, p_accept: np.ndarray, sites: np.ndarray, threshold: float) -> dict:
    """Per-site and pooled figures of the leave-one-site-out predictions.

    Each site's balanced accuracy uses the threshold chosen on the other sites' predictions
    (``threshold_from_other_sites``), so no site's labels choose its own cut.
    """
    per_site = []
    for site in np.unique(sites):
        here = sites == site
        cut = best_threshold(y[~here], p_accept[~here])
        row = {"site": str(site), **scores(y[here], p_accept[here], cut), "threshold_from_other_sites": cut}
        per_site.append(row)
    return {
        "scheme": "leave-one-site-out over the 17 ABIDE sites",
        "per_site": per_site,
        "site_auc": _summary([r["auc"] for r in per_site]),
        "site_balanced_accuracy": _summary([r["balanced_accuracy"] for r in per_site]),
        "pooled": scores(y, p_accept, threshold),
        "pooled_threshold": threshold,
    }


def external_report(y_by_binarisation: dict[str, np.ndarray], p_accept: np.ndarray, sites: np.ndarray,
                    threshold: float) -> dict:
    """Figures on an unseen dataset for each binarisation of its ratings, overall and per site."""
    out = {}
    for name, y in y_by_binarisation.items():
        out[name] = {"all": scores(y, p_accept, threshold),
                     "per_site": {str(s): scores(y[sites == s], p_accept[sites == s], threshold)
                                  for s in np.unique(sites)}}
    return out


def reference_table(table: pd.DataFrame, iqms: list[str]) -> pd.DataFrame:
    """Per IQM: n, mean, SD and the values at :data:`REFERENCE_LEVELS` percentiles (ABIDE)."""
    rows = []
    for name in iqms:
        values = table[name].astype(float).dropna().to_numpy()
        knots = np.percentile(values, REFERENCE_LEVELS)
        rows.append({"iqm": name, "n": int(values.size), "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)), **dict(zip(REFERENCE_COLUMNS, map(float, knots)))})
    return pd.DataFrame(rows)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def exported_model(pipeline, features: list[str], threshold: float, meta: dict,
                   checks: list[np.ndarray]) -> ForestModel:
    """The fitted pipeline as a :class:`ForestModel`, verified to give scikit-learn's P(accept)."""
    medians = pipeline.named_steps["impute"].statistics_
    model = forest_from_sklearn(pipeline.named_steps["forest"], features, medians, threshold, meta)
    for X in checks:
        gap = float(np.max(np.abs(model.p_accept(X) - pipeline.predict_proba(X)[:, 1])))
        if gap > 1e-9:
            raise RuntimeError(f"exported forest differs from scikit-learn by {gap:.3g}")
    return model


# ----------------------------------------------------------------------------- main


def train(out_dir: Path = DATA_DIR, subsample: int | None = None, n_estimators: int = FOREST_PARAMS["n_estimators"],
          seed: int = SEED, n_jobs: int = 1, tables: dict[str, Path] | None = None) -> dict:
    """Cross-validate, fit on all (or ``subsample`` random) ABIDE scans, test on DS030, write files.

    Writes :data:`MODEL_FILE`, :data:`METRICS_FILE` and :data:`REFERENCE_FILE` to ``out_dir``
    and returns the metrics.
    """
    import sklearn

    start = time.perf_counter()
    tables = tables or mriqc_learn_tables()
    abide, ds030 = read_table(tables["abide"]), read_table(tables["ds030"])
    if subsample:
        abide = abide.sample(n=min(subsample, len(abide)), random_state=seed).sort_index()
    features, dropped = select_features(iqm_columns(abide))
    X, y, sites = abide[features].to_numpy(float), abide_labels(abide), abide["site"].to_numpy(str)
    X_ds030 = ds030[features].to_numpy(float)

    def make():
        return make_pipeline(features, seed, n_estimators, n_jobs)

    p_cv = leave_one_site_out(make, X, y, sites)
    threshold = best_threshold(y, p_cv)
    cv_seconds = time.perf_counter() - start

    fit_start = time.perf_counter()
    pipeline = make().fit(X, y)
    fit_seconds = time.perf_counter() - fit_start
    p_ds030 = pipeline.predict_proba(X_ds030)[:, 1]

    description = MODEL_DESCRIPTION.replace("(scikit-learn)", f"(scikit-learn {sklearn.__version__})")
    meta = {"description": description, "sklearn_version": sklearn.__version__, "seed": seed,
            "n_training_scans": int(len(y)), "training_data": f"mriqc-learn {MRIQC_LEARN_VERSION} abide.tsv"}
    model = exported_model(pipeline, features, threshold, meta, [X, X_ds030])
    importances = pipeline.named_steps["forest"].feature_importances_
    metrics = {
        "model": {
            "description": description, "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": dict(FOREST_PARAMS, n_estimators=n_estimators, random_state=seed),
            "monotonic_cst": {f: quality_direction(f) for f in features if quality_direction(f)},
            "imputation": "missing IQMs replaced by the ABIDE training median",
            "site_normalisation": "none (raw IQMs; a single new scan has no site batch)",
            "sklearn_version": sklearn.__version__, "file": MODEL_FILE,
            "format": "NumPy .npz of the forest's node arrays, read without pickle (bids_app.qc.classifier)",
        },
        "features": features,
        "dropped_features": dropped,
        "feature_importance_top15": dict(sorted(zip(features, map(float, importances)),
                                                key=lambda kv: -kv[1])[:15]),
        "labels": {
            "abide": "rater_3 (rated all scans): 1 accept -> accept; 0 doubtful and -1 exclude -> exclude",
            "ds030": {"exclude_vs_rest": "rater_1: -1 exclude -> exclude; 0 doubtful and 1 accept -> accept "
                                         "(MRIQC 2017 binarisation)",
                      "accept_vs_rest": "rater_1: 1 accept -> accept; 0 doubtful and -1 exclude -> exclude"},
            "abide_accept_fraction": float(y.mean()),
        },
        "threshold": {"p_accept": threshold, "rule": "accept when P(accept) >= threshold; threshold maximises "
                      "the balanced accuracy of the pooled leave-one-site-out predictions on ABIDE"},
        "cv_abide": cv_report(y, p_cv, sites, threshold),
        "test_ds030": external_report(ds030_labels(ds030), p_ds030, ds030["site"].to_numpy(str), threshold),
        "training_data": {
            "package": "mriqc-learn", "version": importlib.metadata.version("mriqc-learn"), "licence": "Apache-2.0",
            "citation": CITATION,
            "files": {name: {"path": f"mriqc_learn/datasets/{Path(path).name}", "sha256": _sha256(path)}
                      for name, path in tables.items()},
            "abide_scans_used": int(len(y)), "abide_sites": int(len(np.unique(sites))),
            "ds030_scans": int(len(ds030)),
            "images": "IQMs computed by MRIQC on ABIDE I and OpenNeuro ds000030 T1w images, which keep "
                      "their own terms (see upstream)",
        },
        "subsample": subsample,
        "timing_s": {"cross_validation": round(cv_seconds, 1), "final_fit": round(fit_seconds, 1),
                     "total": round(time.perf_counter() - start, 1), "n_jobs": n_jobs},
    }
    out_dir = Path(out_dir)
    save_model(model, out_dir / MODEL_FILE)
    write_tsv(out_dir / REFERENCE_FILE, reference_table(abide, iqm_columns(abide)))
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bids_app.qc.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the package data)")
    parser.add_argument("--subsample", type=int, default=None, help="train on this many random ABIDE scans")
    parser.add_argument("--n-estimators", type=int, default=FOREST_PARAMS["n_estimators"])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--n-jobs", type=int, default=1, help="trees fitted in parallel (results do not change)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    metrics = train(args.out, args.subsample, args.n_estimators, args.seed, args.n_jobs)
    cv = metrics["cv_abide"]
    ds = metrics["test_ds030"]["exclude_vs_rest"]["all"]
    print(f"ABIDE leave-one-site-out: AUC {cv['site_auc']['mean']:.3f} +- {cv['site_auc']['sd']:.3f} over sites, "
          f"pooled {cv['pooled']['auc']:.3f}; balanced accuracy pooled {cv['pooled']['balanced_accuracy']:.3f}")
    print(f"DS030 (exclude vs rest): AUC {ds['auc']:.3f}, balanced accuracy {ds['balanced_accuracy']:.3f}; "
          f"threshold P(accept) >= {metrics['threshold']['p_accept']:.3f}; {metrics['timing_s']['total']} s")
    print(f"written to {args.out}")
    return metrics


if __name__ == "__main__":
    main()
