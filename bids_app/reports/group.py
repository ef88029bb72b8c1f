"""The group-level HTML report (self-contained: inline CSS and SVG, no script, no network).

Sections: cohort (N per group, age, sex), exclusions with their reasons, quality control (QC
verdicts, the scans flagged and why, distributions of the key IQMs with outliers by Tukey's
fences or ABIDE's 1st/99th percentile), morphometrics by group (TIV, GM, WM, BPF), ROI
statistics (top regions with FDR/Bonferroni marks, Manhattan plot, effect map), VBM (glass
brain, slices, cluster table), and the exact model, contrast, n, df, smoothing, permutations,
settings and software versions. A section whose inputs do not exist (no QC files, VBM not
run) says so instead of failing.
"""

from __future__ import annotations

import datetime
import logging
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app import __version__
from bids_app.bids import derivatives as d
from bids_app.errors import MorphoBIDSError
from bids_app.reports import qc_figures as qf
from bids_app.reports.participant import render

LOG = logging.getLogger("morphobids")
KEYS = ["participant_id", "session_id"]
REPORT_NAME = "group.html"
#: Morphometrics shown by group: column -> panel title.
MORPH_COLUMNS = {"tiv_ml": "TIV (mL)", "gm_ml": "GM (mL)", "wm_ml": "WM (mL)", "bpf": "Brain parenchymal fraction"}
#: Distributions (Python package name -> label) whose versions the report lists.
SOFTWARE = {"nilearn": "nilearn", "statsmodels": "statsmodels", "antspyx": "antspyx", "numpy": "numpy",
            "scipy": "scipy", "pandas": "pandas", "nibabel": "nibabel", "scikit-learn": "scikit-learn",
            "mriqc": "mriqc (qc.anatomical)", "matplotlib": "matplotlib"}
TOP_ROWS = 15
MAX_CLUSTER_ROWS = 25


# --------------------------------------------------------------------------- pure helpers


def unit_name(participant_id, session_id=None) -> str:
    """``sub-01`` or ``sub-01_ses-a``."""
    missing = session_id is None or (not isinstance(session_id, str) and pd.isna(session_id))
    return str(participant_id) if missing else f"{participant_id}_{session_id}"


def software_versions() -> list[tuple[str, str]]:
    """(name, version) of MorphoBIDS, Python and the libraries of the analysis ("not installed" when absent)."""
    rows = [("MorphoBIDS", __version__), ("Python", platform.python_version())]
    for dist, label in SOFTWARE.items():
        try:
            rows.append((label, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            rows.append((label, "not installed"))
    return rows


def _mean_sd(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def cohort_summary(table: pd.DataFrame, by: str | None = None) -> list[dict]:
    """One row per level of ``by`` (then ``all``): ``level``, ``n``, ``age`` (mean ± SD), ``sex`` (counts).

    ``table`` has one row per included scan; ``age`` and ``sex`` columns are used when present.
    """
    groups: list[tuple[str, pd.DataFrame]] = []
    if by and by in table.columns:
        for level, rows in table.groupby(table[by].astype(str), sort=True):
            groups.append((str(level), rows))
    groups.append(("all", table))
    out = []
    for level, rows in groups:
        entry = {"level": level, "n": int(len(rows)), "participants": int(rows["participant_id"].nunique())
                 if "participant_id" in rows else int(len(rows)),
                 "age": _mean_sd(rows["age"]) if "age" in rows.columns else "n/a", "sex": "n/a"}
        if "sex" in rows.columns:
            counts = rows["sex"].astype(object).where(rows["sex"].notna(), "n/a").astype(str).value_counts()
            entry["sex"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        out.append(entry)
    return out


def significance_marks(p_fdr: float, p_bonferroni: float, alpha: float) -> str:
    """"FDR" and/or "Bonf." for a region whose adjusted p values pass ``alpha``."""
    marks = []
    if np.isfinite(p_fdr) and p_fdr < alpha:
        marks.append("FDR")
    if np.isfinite(p_bonferroni) and p_bonferroni < alpha:
        marks.append("Bonf.")
    return " ".join(marks)


def roi_top_rows(family: pd.DataFrame, alpha: float, n: int = TOP_ROWS) -> list[dict]:
    """The ``n`` regions of one atlas/measure with the smallest p, with display strings and marks."""
    tested = family[np.isfinite(pd.to_numeric(family["p"], errors="coerce"))].sort_values("p", kind="stable")
    rows = []
    for rank, r in enumerate(tested.head(n).itertuples(index=False), start=1):
        rows.append({"rank": rank, "name": r.name, "index": int(r.index), "beta": qf.format_value(r.beta),
                     "t": f"{r.t:.2f}", "p": f"{r.p:.2g}", "p_fdr": f"{r.p_fdr:.2g}",
                     "p_bonferroni": f"{r.p_bonferroni:.2g}",
                     "cohen_d": f"{r.cohen_d:.2f}" if np.isfinite(r.cohen_d) else "n/a",
                     "effect_percent": f"{r.effect_percent:+.1f}" if np.isfinite(r.effect_percent) else "n/a",
                     "marks": significance_marks(r.p_fdr, r.p_bonferroni, alpha)})
    return rows


def table_rows(frame: pd.DataFrame, columns: Sequence[str] | None = None, limit: int | None = None) -> dict:
    """``{"columns": [...], "rows": [[text, ...], ...]}`` of a frame for a generic HTML table."""
    columns = [c for c in (columns or frame.columns) if c in frame.columns]
    shown = frame if limit is None else frame.head(limit)
    rows = [[qf.format_value(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
             else ("n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
             for v in record] for record in shown[columns].itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows, "total": int(len(frame))}


def _settings_text(value) -> str:
    if isinstance(value, (list, tuple, set)):
        return ", ".join(map(str, value)) if value else "none"
    if value is None:
        return "default"
    return str(value)


# --------------------------------------------------------------------------- sections


def _included(group, designs: Mapping, excluded: pd.DataFrame | None) -> pd.DataFrame:
    """Keys of the scans in the analysis: the design rows, else the morphometrics minus exclusions."""
    if designs:
        return next(iter(designs.values())).rows[KEYS].reset_index(drop=True)
    keys = group.morphometrics[KEYS]
    if excluded is not None and len(excluded):
        dropped = set(zip(excluded["participant_id"], excluded["session_id"].astype(object), strict=True))
        keep = [(p, s) not in dropped for p, s in zip(keys["participant_id"], keys["session_id"].astype(object),
                                                       strict=True)]
        keys = keys[keep]
    return keys.reset_index(drop=True)


def _merge(keys: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s rows for ``keys`` (session ids compared as objects, missing as missing)."""
    left = keys.assign(session_id=keys["session_id"].astype(object).where(keys["session_id"].notna(), None))
    right = table.assign(session_id=table["session_id"].astype(object).where(table["session_id"].notna(), None))
    right = right.drop_duplicates(KEYS)
    return left.merge(right, on=KEYS, how="left")


def _covariates(group, keys: pd.DataFrame, designs: Mapping) -> tuple[pd.DataFrame, list[str]]:
    """Covariates (participants.tsv, sessions, tissue volumes) of the included scans."""
    notes = []
    try:
        from bids_app.group.design import covariates_for

        table = covariates_for(group).table
    except (MorphoBIDSError, OSError, ValueError) as exc:
        notes.append(f"participants.tsv could not be read for the cohort summary ({exc}).")
        table = next(iter(designs.values())).data if designs else group.morphometrics[KEYS]
    return _merge(keys, table), notes


def _group_variable(designs: Mapping, table: pd.DataFrame) -> str | None:
    for design in designs.values():
        if design.comparison:
            return design.comparison["variable"]
    return "group" if "group" in table.columns and table["group"].nunique() > 1 else None


def cohort_section(group, designs: Mapping, excluded: pd.DataFrame | None) -> dict:
    keys = _included(group, designs, excluded)
    table, notes = _covariates(group, keys, designs)
    by = _group_variable(designs, table)
    return {"rows": cohort_summary(table, by), "by": by, "notes": notes, "table": table,
            "n_total": int(len(group.morphometrics) + len(group.skipped))}


def exclusion_section(group, excluded: pd.DataFrame | None) -> dict:
    rows = []
    for r in (excluded if excluded is not None else pd.DataFrame(columns=[*KEYS, "reason"])).itertuples(index=False):
        rows.append({"unit": unit_name(r.participant_id, r.session_id), "reason": r.reason, "stage": "exclusion"})
    for r in group.skipped.itertuples(index=False):
        rows.append({"unit": unit_name(r.participant_id, r.session_id), "reason": r.reason,
                     "stage": "missing or unreadable derivatives"})
    return {"rows": rows}


def qc_section(group, excluded: pd.DataFrame | None) -> dict:
    """QC verdict counts, flagged scans, key-IQM distributions and outliers."""
    excluded_units = set() if excluded is None else {unit_name(p, s) for p, s in
                                                     zip(excluded["participant_id"], excluded["session_id"],
                                                         strict=True)}
    section: dict = {"has_qc": len(group.qc) > 0, "has_iqms": len(group.iqms) > 0 and
                     any(k in group.iqms.columns for k in qf.KEY_IQMS), "counts": [], "flagged": [],
                     "outliers": [], "figure": None, "reference_note": qf.ABIDE_NOTE, "keys": list(qf.KEY_IQMS)}
    if section["has_qc"]:
        qc = group.qc
        section["counts"] = [(level, int((qc["verdict"] == level).sum())) for level in ("pass", "warn", "fail")]
        for r in qc[qc["verdict"].isin(["warn", "fail"])].itertuples(index=False):
            unit = unit_name(r.participant_id, r.session_id)
            section["flagged"].append({"unit": unit, "verdict": r.verdict,
                                       "reasons": r.reasons if isinstance(r.reasons, str) else "",
                                       "p_accept": f"{r.p_accept:.2f}" if np.isfinite(r.p_accept) else "n/a",
                                       "excluded": unit in excluded_units})
        rated = {unit_name(p, s) for p, s in zip(qc["participant_id"], qc["session_id"], strict=True)}
        section["no_qc"] = sorted({unit_name(p, s) for p, s in zip(group.morphometrics["participant_id"],
                                                                    group.morphometrics["session_id"], strict=True)}
                                  - rated)
    if section["has_iqms"]:
        iqms = group.iqms.reset_index(drop=True)
        reference = qf.abide_reference()
        outliers = qf.iqm_outliers(iqms, qf.KEY_IQMS, reference)
        marked = {key: rows["row"].tolist() for key, rows in outliers.groupby("iqm")}
        bands = {key: qf.abide_limits(key, qf.OUTLIER_PERCENTILES, reference) for key in qf.KEY_IQMS
                 if reference and key in reference}
        titles = {k: f"{k} ({qf.BETTER[k]} is better)" if k in qf.BETTER else k for k in qf.KEY_IQMS}
        section["figure"] = qf.distribution_svg(iqms, qf.KEY_IQMS, marked=marked, bands=bands,
                                                band_label="ABIDE pct", titles=titles)
        section["outliers"] = [{"unit": unit_name(r.participant_id, r.session_id), "iqm": r.iqm,
                                "value": qf.format_value(r.value), "rule": r.rule}
                               for r in outliers.itertuples(index=False)]
        section["n_iqm"] = int(len(iqms))
        section["has_reference"] = bool(reference)
    return section


def morphometry_section(group, cohort: dict) -> dict:
    keys = cohort["table"][KEYS]
    columns = [c for c in MORPH_COLUMNS if c in group.morphometrics.columns]
    if not columns or keys.empty:
        return {"figure": None, "rows": [], "columns": []}
    table = _merge(keys, group.morphometrics[[*KEYS, *columns]])
    by = cohort["by"]
    if by:
        table[by] = cohort["table"][by].to_numpy()
    figure = qf.distribution_svg(table, columns, by=by, titles=MORPH_COLUMNS)
    rows = []
    levels = [(str(level), rows_) for level, rows_ in table.groupby(table[by].astype(str))] if by else []
    for level, rows_ in [*levels, ("all", table)]:
        rows.append({"level": level, "n": int(len(rows_)),
                     "values": [_mean_sd(rows_[c]) if c != "bpf" else _mean_sd_precise(rows_[c]) for c in columns]})
    return {"figure": figure, "rows": rows, "columns": [MORPH_COLUMNS[c] for c in columns], "by": by}


def _mean_sd_precise(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "n/a"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.iloc[0]:.3f}"


def _figure(what: str, draw) -> tuple[str | None, str | None]:
    """(SVG, None) or (None, why) when a figure needs a resource that is not available."""
    try:
        return draw(), None
    except (MorphoBIDSError, OSError) as exc:
        LOG.warning("group report: %s not drawn (%s).", what, exc)
        return None, f"{what} not available: {exc}"


def roi_section(roi_results: pd.DataFrame | None, designs: Mapping, alpha: float, resolution: int,
                template: str | None = None, figures: Mapping | None = None) -> dict:
    """Per atlas and measure: counts, top rows, Manhattan plot and effect map.

    ``figures``: SVGs already drawn, ``{(atlas, measure): {"manhattan": svg, "effectmap": svg}}``;
    the missing ones are drawn here.
    """
    from bids_app.group import figures as gf

    if roi_results is None or len(roi_results) == 0:
        return {"families": []}
    families = []
    for (atlas, measure), family in roi_results.groupby(["atlas", "measure"], sort=True):
        p = pd.to_numeric(family["p"], errors="coerce")
        given = (figures or {}).get((atlas, measure), {})
        manhattan, manhattan_note = (given["manhattan"], None) if given.get("manhattan") else _figure(
            "Manhattan plot", lambda a=atlas, m=measure: gf.manhattan_svg(roi_results, a, m, alpha))
        effect, effect_note = (given["effectmap"], None) if given.get("effectmap") else _figure(
            "effect map", lambda a=atlas, m=measure: gf.effect_map_svg(roi_results, a, m, template=template,
                                                                       resolution=resolution))
        design = designs.get(measure)
        families.append({
            "atlas": atlas, "measure": measure, "n_regions": int(len(family)), "n_tested": int(p.notna().sum()),
            "n_fdr": int((pd.to_numeric(family["p_fdr"], errors="coerce") < alpha).sum()),
            "n_bonferroni": int((pd.to_numeric(family["p_bonferroni"], errors="coerce") < alpha).sum()),
            "rows": roi_top_rows(family, alpha), "manhattan": manhattan, "effect": effect,
            "notes": [n for n in (manhattan_note, effect_note) if n],
            "formula": design.formula if design is not None else roi_results.attrs.get("Model"),
            "contrast": design.contrast_name if design is not None else roi_results.attrs.get("Contrast"),
            "has_d": bool(np.isfinite(pd.to_numeric(family["cohen_d"], errors="coerce")).any()),
        })
    return {"families": families}


def vbm_section(vbm, clusters: pd.DataFrame | None, settings: Mapping) -> dict:
    if vbm is None:
        reason = ("disabled (--no-vbm)" if settings.get("vbm") is False
                  else "not run (no modulated GM maps, or the ROI analysis only was requested)")
        return {"available": False, "reason": reason}
    from bids_app.group.vbm_figures import vbm_figures

    s = vbm.summary
    perm = s.get("permutation") or {}
    figures, note = _figure("VBM figures", lambda: vbm_figures(vbm, fwe_alpha=perm.get("fwe_alpha", 0.05)))
    titles = {"glassbrain": "Glass brain of the thresholded z map", "slices": "Slices through the peak",
              "glassbrain_tfce": "TFCE, FWE-corrected (permutations)",
              "glassbrain_maxt": "Voxel-wise max-t, FWE-corrected (permutations)"}
    peak = s.get("peak") or {}
    threshold = s.get("z_threshold")
    rows = [
        ("Participants (images)", s.get("n_participants")),
        ("Design columns", ", ".join(s.get("design_columns", []))),
        ("Contrast", s.get("contrast_expression") or ", ".join(qf.format_value(v) for v in s.get("contrast", []))),
        ("Test", "two-sided" if s.get("two_sided") else "one-sided (contrast > 0)"),
        ("Degrees of freedom", s.get("degrees_of_freedom")),
        ("Smoothing", f"{qf.format_value(s.get('smoothing_fwhm_mm'))} mm FWHM"),
        ("Voxel size", " x ".join(qf.format_value(v) for v in s.get("voxel_size_mm", [])) + " mm"),
        ("Mask", f"{(s.get('mask') or {}).get('rule', 'n/a')}: {(s.get('mask') or {}).get('voxels', 'n/a')} voxels"),
        ("Height threshold", f"{str(s.get('height_control', '')).upper()} {qf.format_value(s.get('alpha'))}"
         + (f" (z > {threshold:.2f})" if threshold is not None else " (no voxel can pass)")),
        ("Cluster extent", f"{s.get('cluster_threshold_voxels', 0)} voxels"),
        ("Suprathreshold voxels", s.get("n_suprathreshold_voxels")),
        ("Peak", f"t = {qf.format_value(peak.get('t'))}, z = {qf.format_value(peak.get('z'))} at "
                 f"({', '.join(qf.format_value(v) for v in peak.get('xyz_mm', []))}) mm" if peak else "n/a"),
    ]
    if perm:
        rows += [("Permutations", f"{perm.get('n_perm')} ({perm.get('scheme')}; {perm.get('backend')})"),
                 ("TFCE", "yes" if perm.get("tfce") else "no"),
                 ("Smallest attainable p", qf.format_value(perm.get("p_floor"))),
                 ("Min p FWE (max t)", f"{qf.format_value(perm.get('min_p_fwe_t'))}; "
                                       f"{perm.get('n_fwe_voxels_t')} voxel(s) below {perm.get('fwe_alpha')}")]
        if perm.get("tfce"):
            rows.append(("Min p FWE (TFCE)", f"{qf.format_value(perm.get('min_p_fwe_tfce'))}; "
                                             f"{perm.get('n_fwe_voxels_tfce')} voxel(s) below {perm.get('fwe_alpha')}"))
    else:
        rows.append(("Permutations", "none (parametric inference only)"))
    cluster_table = None
    if clusters is not None:
        cluster_table = table_rows(clusters, limit=MAX_CLUSTER_ROWS)
    return {"available": True, "rows": [(k, "n/a" if v is None else v) for k, v in rows],
            "figures": [(titles.get(k, k), svg) for k, svg in (figures or {}).items()], "note": note,
            "clusters": cluster_table}


def model_section(designs: Mapping, settings: Mapping, vbm) -> dict:
    models = []
    for measure, design in designs.items():
        comparison = design.comparison
        models.append({
            "measure": measure, "formula": design.formula, "columns": ", ".join(design.columns),
            "contrast": design.contrast_name,
            "vector": "[" + ", ".join(qf.format_value(v) for v in design.contrast) + "]",
            "n": design.n, "df": design.df_resid,
            "comparison": (f"{comparison['level']} (n={comparison['n_level']}) vs {comparison['reference']} "
                           f"(n={comparison['n_reference']})") if comparison else "n/a",
        })
    s = vbm.summary if vbm is not None else {}
    perm = s.get("permutation") or {}
    inference = {
        "smoothing": f"{qf.format_value(s['smoothing_fwhm_mm'])} mm FWHM" if s else
        (f"{qf.format_value(settings['smoothing_fwhm'])} mm FWHM (VBM not run)" if "smoothing_fwhm" in settings
         else "n/a (VBM not run)"),
        "permutations": (f"{perm['n_perm']}" + (" with TFCE" if perm.get("tfce") else " (max t)")) if perm else
        ("none" if s else "n/a (VBM not run)"),
        "random_seed": settings.get("random_seed", "n/a"),
    }
    settings_rows = [(str(k), _settings_text(v)) for k, v in sorted(settings.items(), key=lambda kv: str(kv[0]))]
    return {"models": models, "inference": inference, "settings": settings_rows, "software": software_versions()}


# --------------------------------------------------------------------------- report


def write_group_report(output_dir, *, group, excluded: pd.DataFrame | None, roi_results: pd.DataFrame | None,
                       designs: Mapping | None, vbm=None, clusters: pd.DataFrame | None = None,
                       settings: Mapping, warnings: Sequence[str], roi_figures: Mapping | None = None) -> Path:
    """Write ``<output_dir>/group.html`` (atomically) and return its path.

    ``group``: :class:`bids_app.group.collect.GroupData`; ``excluded``: the rows
    :func:`bids_app.group.exclusion.apply_exclusion` left out (``participant_id``,
    ``session_id``, ``reason``); ``roi_results`` / ``designs``: from
    :func:`bids_app.group.roi_stats.run_roi_analysis` (measure -> Design); ``vbm``: a
    :class:`bids_app.group.vbm.VBMResult` or None; ``clusters``: its cluster table or None;
    ``settings``: the group-level options (alpha, smoothing_fwhm, n_perm, tfce, vbm,
    output_resolution, template...); ``warnings``: messages to show at the top; ``roi_figures``:
    ROI SVGs already drawn, ``{(atlas, measure): {"manhattan": svg, "effectmap": svg}}`` (the
    others are drawn here).
    """
    designs = dict(designs or {})
    alpha = float(settings.get("alpha", 0.05))
    resolution = int(float(settings.get("output_resolution", 2)))
    cohort = cohort_section(group, designs, excluded)
    html = render(
        "group.html",
        version=__version__, date=datetime.date.today().isoformat(), output_dir=str(output_dir), alpha=alpha,
        warnings=list(dict.fromkeys([*warnings, *getattr(group, "warnings", []), *cohort["notes"]])),
        cohort=cohort, exclusions=exclusion_section(group, excluded), qc=qc_section(group, excluded),
        morph=morphometry_section(group, cohort),
        roi=roi_section(roi_results, designs, alpha, resolution, settings.get("template"), roi_figures),
        vbm=vbm_section(vbm, clusters, settings), model=model_section(designs, settings, vbm),
    )
    return d.write_text(Path(output_dir) / REPORT_NAME, html)
