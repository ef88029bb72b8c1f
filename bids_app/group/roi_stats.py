"""ROI-wise general linear model: one OLS per region, a t contrast, effect sizes, FDR and Bonferroni.

For every region of an atlas and a measure, ``y = X b + e`` is fitted by ordinary
least squares with statsmodels (``sm.OLS``) on the group design, and the contrast
``c'b`` is tested with a t test on the residual degrees of freedom. Effect sizes:

- ``partial_eta2 = t^2 / (t^2 + df)``, the share of the residual variance the
  contrast explains (any one-degree-of-freedom contrast);
- Cohen's ``d = t * sqrt(1/n1 + 1/n2)`` when the contrast is one level of a
  factor against its reference (e.g. ``group[T.patient]``): the covariate-adjusted
  standardized mean difference (Rosenthal 1994; Nakagawa & Cuthill, Biol Rev 2007,
  doi:10.1111/j.1469-185X.2007.00027.x). Negative when the level is smaller;
- ``effect_percent = 100 * b / mean(reference group)``: the adjusted difference as
  a percentage of the reference group's mean.

Multiple comparisons are corrected across the regions of one atlas and one
measure (the family), with Benjamini-Hochberg FDR (Benjamini & Hochberg, JRSS-B
1995) and Bonferroni (statsmodels ``multipletests``). An a-priori hypothesis may
restrict the family to named regions (``regions=["Precentral_L", "Precentral_R"]``):
the correction then counts only those, as in a hypothesis-driven ROI analysis. Regions whose values are
missing or constant across participants are listed but not tested (``p`` n/a) and
do not count in the family.

The default measure is the regional grey-matter volume ``gm_ml`` (partial-volume
weighted, mL), the usual target of ROI morphometry of atrophy; ``volume_ml`` (all
tissues), ``wm_ml``, ``csf_ml`` and any other measure of the ROI tables (e.g. a
thickness) can be tested instead or as well.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from bids_app.errors import UsageError
from bids_app.group.collect import KEYS, sanitize
from bids_app.group.design import Covariates, Design, build_design

LOG = logging.getLogger("morphobids")

DEFAULT_MEASURES = ("gm_ml",)
ALPHA = 0.05
RESULT_COLUMNS = ["atlas", "measure", "index", "name", "column", "n", "df", "beta", "se", "t", "p", "p_fdr",
                  "p_bonferroni", "cohen_d", "partial_eta2", "effect_percent", "mean"]


_MEASURE_LABELS = {"gm_ml": "GM", "wm_ml": "WM", "csf_ml": "CSF", "volume_ml": "volume"}


def measure_label(measure: str) -> str:
    """A measure as a BIDS entity value for output names: ``gm_ml`` -> ``GM``, ``thickness_mm`` -> ``thicknessmm``."""
    return _MEASURE_LABELS.get(measure) or "".join(ch for ch in measure if ch.isalnum())


def correct_pvalues(p: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg adjusted p (q) and Bonferroni adjusted p; NaN entries stay NaN and are not counted."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    bonf = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        q[tested] = multipletests(p[tested], alpha=alpha, method="fdr_bh")[1]
        bonf[tested] = multipletests(p[tested], alpha=alpha, method="bonferroni")[1]
    return q, bonf


def cohens_d(t: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Standardized mean difference from a two-group t statistic: ``t * sqrt(1/n1 + 1/n2)``."""
    return np.asarray(t, dtype=float) * np.sqrt(1.0 / n1 + 1.0 / n2)


def partial_eta_squared(t: np.ndarray, df: float) -> np.ndarray:
    """Partial eta squared of a one-degree-of-freedom contrast: ``t^2 / (t^2 + df)``."""
    t2 = np.square(np.asarray(t, dtype=float))
    return t2 / (t2 + df)


def fit_contrast(y: np.ndarray, design: Design) -> dict:
    """OLS of ``y`` on the design and the t test of its contrast: beta (c'b), se, t, p, df."""
    result = sm.OLS(np.asarray(y, dtype=float), design.matrix).fit()
    test = result.t_test(design.contrast.reshape(1, -1))
    return {"beta": float(np.squeeze(test.effect)), "se": float(np.squeeze(test.sd)),
            "t": float(np.squeeze(test.tvalue)), "p": float(np.squeeze(test.pvalue)), "df": float(result.df_resid)}


def _responses(morphometrics: pd.DataFrame, design: Design, columns: list[str]) -> pd.DataFrame:
    """Response columns in the design's row order (every design row must have a morphometrics row)."""
    keyed = morphometrics.assign(session_id=morphometrics["session_id"].astype(object))
    rows = design.rows.assign(session_id=design.rows["session_id"].astype(object))
    aligned = rows.merge(keyed[[*KEYS, *columns]], on=KEYS, how="left", validate="one_to_one", indicator=True)
    if (aligned["_merge"] != "both").any():
        missing = aligned.loc[aligned["_merge"] != "both", "participant_id"].tolist()
        raise ValueError(f"design rows without morphometrics: {missing}")
    return aligned[columns]


def roi_statistics(morphometrics: pd.DataFrame, rois: pd.DataFrame, design: Design,
                   measures=DEFAULT_MEASURES, atlases=None, alpha: float = ALPHA, regions=None) -> pd.DataFrame:
    """One row per region, atlas and measure: OLS contrast, effect sizes, FDR and Bonferroni p.

    ``rois`` is :attr:`GroupData.rois` (column, atlas, index, name, measure);
    ``regions`` optionally restricts the tested family to a-priori regions.
    Columns: :data:`RESULT_COLUMNS`; the model, contrast and comparison are in ``.attrs``.
    """
    selected = select_rois(rois, measures, atlases, regions)
    y_all = _responses(morphometrics, design, selected["column"].tolist())
    comparison = design.comparison
    reference_rows = None
    if comparison:
        reference_rows = (design.data[comparison["variable"]].astype(str) == comparison["reference"]).to_numpy()
    frames = []
    for (atlas, measure), family in selected.groupby(["atlas", "measure"], sort=True):
        records = []
        for roi in family.itertuples(index=False):
            y = y_all[roi.column].to_numpy(dtype=float)
            record = {"atlas": atlas, "measure": measure, "index": roi.index, "name": roi.name,
                      "column": roi.column, "n": design.n, "mean": float(np.nanmean(y)) if np.isfinite(y).any()
                      else np.nan}
            if np.isfinite(y).all() and np.ptp(y) > 0:
                record.update(fit_contrast(y, design))
                if reference_rows is not None and reference_rows.any():
                    ref_mean = float(y[reference_rows].mean())
                    record["effect_percent"] = 100.0 * record["beta"] / ref_mean if ref_mean else np.nan
            records.append(record)
        frame = pd.DataFrame(records).reindex(columns=RESULT_COLUMNS)
        frame["p_fdr"], frame["p_bonferroni"] = correct_pvalues(frame["p"].to_numpy(dtype=float), alpha)
        frame["partial_eta2"] = partial_eta_squared(frame["t"].to_numpy(dtype=float), design.df_resid)
        if comparison:
            frame["cohen_d"] = cohens_d(frame["t"].to_numpy(dtype=float), comparison["n_level"],
                                        comparison["n_reference"])
        untested = int(frame["p"].isna().sum())
        if untested:
            LOG.info("%s %s: %d region(s) with missing or constant values were not tested.", atlas, measure,
                     untested)
        frames.append(frame)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)
    results.attrs.update(model_description(design, alpha))
    results.attrs["Regions"] = sorted(selected["name"].unique()) if regions else "all regions of each atlas"
    return results


def select_rois(rois: pd.DataFrame, measures=DEFAULT_MEASURES, atlases=None, regions=None) -> pd.DataFrame:
    """The ROI columns of the requested measures, atlases and regions, or :class:`UsageError` naming the choices.

    Regions match the region name or its column form, case-insensitively
    (``Precentral_L``, ``left precentral gyrus``); atlases without any of them drop out.
    """
    measures = [measures] if isinstance(measures, str) else list(measures)
    unknown = [m for m in measures if m not in set(rois["measure"])]
    if unknown:
        raise UsageError(f"unknown ROI measure(s) {', '.join(unknown)}.",
                         f"Choose from: {', '.join(sorted(set(rois['measure'])))}.")
    selected = rois[rois["measure"].isin(measures)]
    if atlases:
        atlases = [atlases] if isinstance(atlases, str) else list(atlases)
        known = {a.lower(): a for a in rois["atlas"].unique()}
        missing = [a for a in atlases if a.lower() not in known]
        if missing:
            raise UsageError(f"no ROI tables for atlas(es) {', '.join(missing)} in the derivatives.",
                             f"Choose from: {', '.join(sorted(known.values()))}.")
        selected = selected[selected["atlas"].isin([known[a.lower()] for a in atlases])]
    if regions:
        regions = [regions] if isinstance(regions, str) else list(regions)
        wanted = {sanitize(r).lower(): r for r in regions}
        keys = selected["name"].map(lambda n: sanitize(n).lower())
        missing = [r for k, r in wanted.items() if k not in set(keys)]
        if missing:
            examples = ", ".join(selected["name"].drop_duplicates().head(8))
            raise UsageError(f"unknown region(s) {', '.join(missing)} in the selected atlases.",
                             f"Use region names of the atlas label tables (e.g. {examples}).")
        selected = selected[keys.isin(set(wanted))]
    return selected


def model_description(design: Design, alpha: float = ALPHA) -> dict:
    """Model, contrast and comparison of a result table (for its JSON sidecar)."""
    info = {
        "Model": design.formula,
        "DesignColumns": design.columns,
        "Contrast": design.contrast_name,
        "ContrastVector": [float(v) for v in design.contrast],
        "N": design.n,
        "DegreesOfFreedom": design.df_resid,
        "Alpha": alpha,
        "Estimator": "ordinary least squares per region (statsmodels OLS), two-sided t test of the contrast",
        "MultipleComparisons": "Benjamini-Hochberg FDR and Bonferroni across the regions of one atlas and measure",
        "Participants": [p if pd.isna(s) or s is None else f"{p}_{s}"
                         for p, s in zip(design.rows["participant_id"], design.rows["session_id"], strict=True)],
    }
    if design.comparison:
        c = design.comparison
        info["Comparison"] = {"Variable": c["variable"], "Level": c["level"], "Reference": c["reference"],
                              "NLevel": c["n_level"], "NReference": c["n_reference"]}
    return info


def results_dictionary(units: str = "mL") -> dict:
    """BIDS data dictionary of the ROI statistics table."""
    return {
        "atlas": {"Description": "Atlas of the region"},
        "measure": {"Description": "Participant-level measure tested (column of the ROI tables)"},
        "index": {"Description": "Label value of the region in the atlas"},
        "name": {"Description": "Region name"},
        "column": {"Description": "Column of the group morphometrics table holding the measure"},
        "n": {"Description": "Number of participants (rows) in the model"},
        "df": {"Description": "Residual degrees of freedom"},
        "beta": {"Description": "Contrast estimate c'b (covariate-adjusted difference or slope)",
                 "Units": f"{units} per unit of the contrast"},
        "se": {"Description": "Standard error of the contrast estimate", "Units": f"{units} per unit of the contrast"},
        "t": {"Description": "t statistic of the contrast"},
        "p": {"Description": "Two-sided p value (uncorrected)"},
        "p_fdr": {"Description": "Benjamini-Hochberg FDR-adjusted p value (q) across the regions of the atlas and "
                               "measure"},
        "p_bonferroni": {"Description": "Bonferroni-adjusted p value across the regions of the atlas and measure"},
        "cohen_d": {"Description": "Cohen's d of the level-versus-reference contrast, t*sqrt(1/n1+1/n2) "
                                   "(n/a for other contrasts)"},
        "partial_eta2": {"Description": "Partial eta squared of the contrast, t^2/(t^2+df)"},
        "effect_percent": {"Description": "Contrast estimate as a percentage of the reference group's mean "
                                          "(n/a for other contrasts)", "Units": "%"},
        "mean": {"Description": "Mean of the measure over the participants in the model", "Units": units},
    }


def run_roi_analysis(morphometrics: pd.DataFrame, rois: pd.DataFrame, covariates: Covariates,
                     model: str | None = None, contrast=None, measures=DEFAULT_MEASURES, atlases=None,
                     alpha: float = ALPHA, regions=None) -> tuple[pd.DataFrame, dict[str, Design]]:
    """Designs and ROI statistics for each measure (the default model depends on the measure: TIV for volumes).

    ``covariates`` must have one row per ``morphometrics`` row (see
    :func:`bids_app.group.design.covariate_table`). Returns the concatenated
    results and the design used for each measure.
    """
    measures = [measures] if isinstance(measures, str) else list(measures)
    select_rois(rois, measures, atlases, regions)
    designs, frames = {}, []
    for measure in measures:
        design = build_design(covariates, model, contrast, measure=measure)
        designs[measure] = design
        frames.append(roi_statistics(morphometrics, rois, design, [measure], atlases, alpha, regions))
    results = pd.concat(frames, ignore_index=True)
    results.attrs.update(frames[0].attrs)
    if len({d.formula for d in designs.values()}) > 1:
        results.attrs["Model"] = {m: d.formula for m, d in designs.items()}
    return results, designs
