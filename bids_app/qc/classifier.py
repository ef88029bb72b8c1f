"""Accept/exclude prediction for a T1w from its image-quality metrics (IQMs).

The classifier follows MRIQC's (Esteban et al., PLoS ONE 2017, doi:10.1371/journal.pone.0184661):
a random forest on the raw IQMs of one scan, trained on the human-rated ABIDE table that
mriqc-learn 0.0.3 distributes (1101 scans, 17 sites; see :mod:`bids_app.qc.train` for the
labels, features, cross-validation and threshold). No site-wise normalisation is applied, so a
single new scan is scored as is.

The model ships as a NumPy archive read without pickle: the forest's node arrays (children,
split feature and threshold, P(accept) of each node), the feature order, the training medians
used to impute missing IQMs and the decision threshold. :func:`predict_accept` walks the trees
itself, exactly as scikit-learn's ``RandomForestClassifier.predict_proba`` does (inputs cast to
float32, ``x <= threshold`` goes left, leaf probabilities averaged over trees); the training
script checks that equality before it writes the file. The file therefore loads with any
scikit-learn version, or none.

``abide_percentile`` places one IQM value within ABIDE's distribution (the reference table of
percentiles written by the training script), for the reports.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Real
from pathlib import Path

import numpy as np

from bids_app.errors import InputDataError, ResourceError

#: Package folder holding the shipped model, its metrics and the ABIDE reference table.
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "qc"
MODEL_FILE = "qc_classifier_abide.npz"
METRICS_FILE = "qc_classifier_abide_metrics.json"
REFERENCE_FILE = "abide_iqm_reference.tsv"

#: Version of the archive layout written by :func:`save_model`.
FORMAT_VERSION = 1

#: Percentile levels of the reference table (columns ``min``, ``p01`` ... ``p99``, ``max``).
REFERENCE_LEVELS = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
REFERENCE_COLUMNS = ("min", "p01", "p05", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "max")

MODEL_DESCRIPTION = ("random forest (scikit-learn) trained on MRIQC IQM definitions "
                     "(ABIDE, mriqc-learn 0.0.3)")

_ARRAYS = ("left", "right", "feature", "node_threshold", "node_p_accept", "roots", "features", "medians",
           "decision_threshold", "format_version", "max_depth", "meta")


@dataclass(frozen=True)
class ForestModel:
    """A random forest as flat node arrays (all trees concatenated; leaves have ``left == -1``).

    ``roots``: index of each tree's first node; ``features``: IQM names in column order;
    ``medians``: training medians that replace missing IQMs; ``threshold``: P(accept) at or
    above which a scan is rated "accept".
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    node_threshold: np.ndarray
    node_p_accept: np.ndarray
    roots: np.ndarray
    features: tuple[str, ...]
    medians: np.ndarray
    threshold: float
    max_depth: int
    meta: dict = field(default_factory=dict)

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    def p_accept(self, X: np.ndarray) -> np.ndarray:
        """P(accept) of each row of ``X`` (columns in :attr:`features` order; NaN = missing)."""
        X = np.array(X, dtype=np.float64, ndmin=2)
        if X.shape[1] != len(self.features):
            raise ValueError(f"expected {len(self.features)} IQM columns, got {X.shape[1]}")
        X = np.where(np.isfinite(X), X, self.medians[None, :])
        return forest_p_accept(X, self.left, self.right, self.feature, self.node_threshold,
                               self.node_p_accept, self.roots, self.max_depth)


def forest_p_accept(X: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                    threshold: np.ndarray, p_accept: np.ndarray, roots: np.ndarray, max_depth: int) -> np.ndarray:
    """Mean leaf P(accept) over trees, walking all rows through all trees one level at a time.

    As scikit-learn's trees: the sample is compared in float32 (``x <= threshold`` goes left).
    """
    X32 = np.asarray(X, dtype=np.float32).astype(np.float64)
    node = np.repeat(roots[None, :], X32.shape[0], axis=0)
    rows = np.arange(X32.shape[0])[:, None]
    for _ in range(max_depth + 1):
        inner = left[node] >= 0
        if not inner.any():
            break
        values = X32[rows, np.where(inner, feature[node], 0)]
        step = np.where(values <= threshold[node], left[node], right[node])
        node = np.where(inner, step, node)
    return p_accept[node].mean(axis=1)


def forest_from_sklearn(forest, features, medians, threshold: float, meta: dict | None = None) -> ForestModel:
    """Flatten a fitted scikit-learn ``RandomForestClassifier`` whose class 1 is "accept"."""
    classes = list(getattr(forest, "classes_", []))
    if classes != [0, 1]:
        raise ValueError(f"the forest must be fitted on labels 0 (exclude) / 1 (accept), got {classes}")
    lefts, rights, feats, thresholds, probs, roots = [], [], [], [], [], []
    offset, depth = 0, 0
    for estimator in forest.estimators_:
        tree = estimator.tree_
        is_leaf = tree.children_left < 0
        lefts.append(np.where(is_leaf, -1, tree.children_left + offset))
        rights.append(np.where(is_leaf, -1, tree.children_right + offset))
        feats.append(np.where(is_leaf, -1, tree.feature))
        thresholds.append(np.where(is_leaf, 0.0, tree.threshold))
        value = tree.value[:, 0, :].astype(np.float64)
        probs.append(value[:, 1] / value.sum(axis=1))
        roots.append(offset)
        offset += tree.node_count
        depth = max(depth, int(tree.max_depth))
    return ForestModel(
        left=np.concatenate(lefts).astype(np.int32), right=np.concatenate(rights).astype(np.int32),
        feature=np.concatenate(feats).astype(np.int16), node_threshold=np.concatenate(thresholds),
        node_p_accept=np.concatenate(probs), roots=np.asarray(roots, dtype=np.int32),
        features=tuple(features), medians=np.asarray(medians, dtype=np.float64), threshold=float(threshold),
        max_depth=depth, meta=dict(meta or {}),
    )


def save_model(model: ForestModel, path: Path) -> Path:
    """Write ``model`` as a compressed NumPy archive (no pickled objects), atomically."""
    from bids_app.bids.derivatives import atomic_write

    arrays = {
        "left": model.left, "right": model.right, "feature": model.feature,
        "node_threshold": model.node_threshold, "node_p_accept": model.node_p_accept, "roots": model.roots,
        "features": np.asarray(model.features, dtype=str), "medians": model.medians,
        "decision_threshold": np.float64(model.threshold), "format_version": np.int64(FORMAT_VERSION),
        "max_depth": np.int64(model.max_depth), "meta": np.asarray(json.dumps(model.meta, sort_keys=True)),
    }

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return atomic_write(Path(path), _write)


def _fix_hint() -> str:
    return ("Reinstall MorphoBIDS (the file ships in bids_app/data/qc/) or rebuild it with "
            "`python -m bids_app.qc.train`.")


def read_model(path: Path) -> ForestModel:
    """Read a model archive written by :func:`save_model`; problems raise :class:`ResourceError`."""
    path = Path(path)
    if not path.is_file():
        raise ResourceError(f"QC classifier model not found: {path}.", _fix_hint())
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _ARRAYS if key not in archive.files]
            if missing:
                raise ResourceError(f"QC classifier model {path} lacks {', '.join(missing)}.", _fix_hint())
            data = {key: archive[key] for key in _ARRAYS}
    except ResourceError:
        raise
    except Exception as exc:  # zipfile/NumPy raise several types for damaged archives
        raise ResourceError(f"QC classifier model {path} is unreadable ({exc}).", _fix_hint()) from exc
    version = int(data["format_version"])
    if version != FORMAT_VERSION:
        raise ResourceError(f"QC classifier model {path} has format {version}; this MorphoBIDS reads "
                            f"format {FORMAT_VERSION}.", _fix_hint())
    return ForestModel(
        left=data["left"].astype(np.int64), right=data["right"].astype(np.int64),
        feature=data["feature"].astype(np.int64), node_threshold=data["node_threshold"],
        node_p_accept=data["node_p_accept"], roots=data["roots"].astype(np.int64),
        features=tuple(str(name) for name in data["features"]), medians=data["medians"],
        threshold=float(data["decision_threshold"]), max_depth=int(data["max_depth"]),
        meta=json.loads(str(data["meta"])),
    )


@lru_cache(maxsize=4)
def _cached_model(path: str) -> ForestModel:
    return read_model(Path(path))


def load_model(path: Path | str | None = None) -> ForestModel:
    """The QC classifier: the shipped one (offline, from the package data) or ``path``."""
    return _cached_model(str(Path(path) if path is not None else DATA_DIR / MODEL_FILE))


def _as_number(value) -> float:
    """``value`` as a finite float, or NaN when it is missing, not finite or not a number."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (Real, np.number)):
        return float(value) if math.isfinite(float(value)) else math.nan
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return math.nan
        return number if math.isfinite(number) else math.nan
    return math.nan


def iqm_vector(iqms: dict, features) -> tuple[np.ndarray, list[str]]:
    """The model's feature row from an IQM dict (MRIQC key names) and the names missing from it.

    Keys the model does not use are ignored; missing, ``None``, non-numeric or non-finite
    values are NaN (imputed later with the training median).
    """
    row = np.array([_as_number(iqms.get(name)) for name in features], dtype=np.float64)
    missing = [name for name, value in zip(features, row) if not np.isfinite(value)]
    return row, missing


def predict_accept(iqms: dict, model: ForestModel | None = None) -> dict:
    """P(accept) of one T1w from its IQMs, with the rating at the model's threshold.

    Returns ``{"p_accept", "threshold", "rating" ("accept" | "exclude"), "model",
    "missing_features"}``; each missing IQM is replaced by its ABIDE training median and
    listed. Raises :class:`InputDataError` when none of the model's IQMs is given.
    """
    if not isinstance(iqms, dict):
        raise InputDataError(f"IQMs must be a mapping of MRIQC names to numbers, got {type(iqms).__name__}.",
                             "Pass the dict that bids_app.qc.iqms.compute_iqms returns.")
    model = model or load_model()
    row, missing = iqm_vector(iqms, model.features)
    if len(missing) == len(model.features):
        raise InputDataError("None of the IQMs the QC classifier needs was given "
                             f"(it expects MRIQC names such as {', '.join(model.features[:4])}).",
                             "Compute the IQMs with bids_app.qc.iqms.compute_iqms first.")
    p_accept = float(model.p_accept(row[None, :])[0])
    return {
        "p_accept": p_accept,
        "threshold": model.threshold,
        "rating": "accept" if p_accept >= model.threshold else "exclude",
        "model": model.meta.get("description", MODEL_DESCRIPTION),
        "missing_features": missing,
    }


@lru_cache(maxsize=4)
def _reference(path: str) -> dict[str, np.ndarray]:
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise ResourceError(f"ABIDE IQM reference table not found: {file}.", _fix_hint())
    table = pd.read_csv(file, sep="\t")
    absent = [column for column in ("iqm",) + REFERENCE_COLUMNS if column not in table.columns]
    if absent:
        raise ResourceError(f"ABIDE IQM reference table {file} lacks columns {', '.join(absent)}.", _fix_hint())
    return {str(row["iqm"]): np.array([row[c] for c in REFERENCE_COLUMNS], dtype=np.float64)
            for _, row in table.iterrows()}


def abide_reference(path: Path | str | None = None) -> dict[str, np.ndarray]:
    """{IQM name: its ABIDE values at :data:`REFERENCE_LEVELS` percentiles (min ... max)}."""
    return _reference(str(Path(path) if path is not None else DATA_DIR / REFERENCE_FILE))


def percentile_from_knots(value: float, knots: np.ndarray, levels=REFERENCE_LEVELS) -> float:
    """Percentile of ``value`` in a distribution known at a few percentile ``levels``.

    Linear between knots; below the minimum 0, above the maximum 100. A value equal to several
    tied knots (a point mass, e.g. the many zeros of ``qi_1``) gets its mid-rank: the mean of
    the estimated shares below it and at-or-below it, each taken midway between the levels
    that bound it.
    """
    knots = np.asarray(knots, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if value < knots[0]:
        return 0.0
    if value > knots[-1]:
        return 100.0
    tied = np.flatnonzero(knots == value)
    if tied.size == 1:
        return float(levels[tied[0]])
    if tied.size > 1:
        first, last = tied[0], tied[-1]
        below = 0.0 if first == 0 else 0.5 * (levels[first - 1] + levels[first])
        at_or_below = 100.0 if last == len(knots) - 1 else 0.5 * (levels[last] + levels[last + 1])
        return float(0.5 * (below + at_or_below))
    upper = int(np.searchsorted(knots, value, side="right"))
    lo, hi = knots[upper - 1], knots[upper]
    return float(levels[upper - 1] + (levels[upper] - levels[upper - 1]) * (value - lo) / (hi - lo))


def abide_percentile(name: str, value: float) -> float:
    """Where ``value`` of IQM ``name`` lies among ABIDE's 1101 scans, as a percentile (0-100).

    Interpolated in the shipped reference table (min, 1st ... 99th percentile, max), which is
    within a few points of the exact rank (mean error about 1 point on ABIDE's own values); NaN
    for a missing or non-finite value. An IQM that ABIDE does not have raises :class:`InputDataError`.
    """
    reference = abide_reference()
    if name not in reference:
        raise InputDataError(f"No ABIDE reference for IQM {name!r}.",
                             f"Use one of the MRIQC names in {DATA_DIR / REFERENCE_FILE}.")
    number = _as_number(value)
    if not np.isfinite(number):
        return math.nan
    return percentile_from_knots(number, reference[name])
