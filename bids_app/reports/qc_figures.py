"""Quality-control tables and figures of the reports (matplotlib/nilearn, inline SVG).

- Where a participant's image-quality metrics (IQMs, MRIQC key names; Esteban et al., PLoS ONE
  2017, doi:10.1371/journal.pone.0184661) lie against the ABIDE reference sample that MRIQC's
  classifier was trained on (1101 T1w scans of 17 sites; the percentile table that
  :mod:`bids_app.qc.classifier` ships): :func:`abide_percentile`, :func:`iqm_rows`.
- Cohort outliers of the key IQMs by Tukey's fences (1.5 interquartile ranges beyond the
  quartiles; Tukey, Exploratory Data Analysis, 1977) or beyond ABIDE's 1st/99th percentile:
  :func:`iqm_outliers`.
- Strip and box plots of a table's columns, optionally by group, with marked points:
  :func:`distribution_svg`.
- The background ("hat") air mask and artifact mask of Mortamet et al. (MRM 2009,
  doi:10.1002/mrm.21992) over the T1w, in a window that shows the background noise:
  :func:`background_svg`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from bids_app.reports.figures import display_svg, figure_svg  # noqa: E402

#: The IQMs a reviewer looks at first (MRIQC's summary set for T1w).
KEY_IQMS = ("cjv", "cnr", "snr_total", "efc", "fber", "qi_1", "inu_range", "fwhm_avg")

#: IQMs of the participant table shown before the full list.
HEADLINE_IQMS = ("cjv", "cnr", "snr_total", "snrd_total", "efc", "fber", "qi_1", "qi_2", "inu_range", "inu_med",
                 "wm2max", "fwhm_avg", "gsr", "icvs_gm", "icvs_wm", "icvs_csf", "rpve_gm", "rpve_wm",
                 "tpm_overlap_gm", "tpm_overlap_wm", "tpm_overlap_csf")

#: Direction in which an IQM indicates better quality (MRIQC documentation).
BETTER = {"cjv": "lower", "cnr": "higher", "snr_total": "higher", "snr_gm": "higher", "snr_wm": "higher",
          "snr_csf": "higher", "snrd_total": "higher", "snrd_gm": "higher", "snrd_wm": "higher",
          "snrd_csf": "higher", "efc": "lower", "fber": "higher", "qi_1": "lower", "qi_2": "lower",
          "inu_range": "lower", "fwhm_avg": "lower", "fwhm_x": "lower", "fwhm_y": "lower", "fwhm_z": "lower",
          "gsr": "lower", "rpve_gm": "lower", "rpve_wm": "lower", "rpve_csf": "lower",
          "tpm_overlap_gm": "higher", "tpm_overlap_wm": "higher", "tpm_overlap_csf": "higher"}

#: Percentiles of the reference beyond which a participant's IQM is highlighted.
REPORT_PERCENTILES = (5.0, 95.0)
#: Percentiles of the reference beyond which a scan is a cohort outlier.
OUTLIER_PERCENTILES = (1.0, 99.0)
TUKEY_K = 1.5
#: Points outside the fences, marked in the figures.
MARK = "#c62828"

ABIDE_NOTE = ("ABIDE: 1101 T1w scans of 17 sites rated by experts, IQMs computed by MRIQC (mriqc-learn's "
              "table; percentiles interpolated between the reference table's 1st to 99th percentiles). MorphoBIDS "
              "computes the same metrics from its own segmentation and masks, so percentiles place a value "
              "approximately, not exactly.")


# --------------------------------------------------------------------------- reference sample


def abide_reference() -> dict[str, np.ndarray] | None:
    """{IQM: its ABIDE values at :data:`bids_app.qc.classifier.REFERENCE_LEVELS` percentiles}, the
    table shipped with the QC classifier; None when it is not installed."""
    from bids_app.errors import ResourceError
    from bids_app.qc import classifier

    try:
        return classifier.abide_reference()
    except ResourceError:
        return None


def abide_percentile(key: str, value: float, reference: Mapping[str, np.ndarray] | None = None) -> float:
    """Percentile of ``value`` among ABIDE's values of IQM ``key`` (interpolated between the table's
    percentiles, :func:`bids_app.qc.classifier.percentile_from_knots`); NaN when unknown there."""
    from bids_app.qc.classifier import percentile_from_knots

    reference = abide_reference() if reference is None else reference
    if not reference or key not in reference or value is None or not np.isfinite(float(value)):
        return float("nan")
    return percentile_from_knots(float(value), reference[key])


def abide_limits(key: str, percentiles: tuple[float, float] = (1.0, 99.0),
                 reference: Mapping[str, np.ndarray] | None = None) -> tuple[float, float] | None:
    """ABIDE's values of IQM ``key`` at two percentiles (e.g. the 1st and 99th); None when unknown."""
    from bids_app.qc.classifier import REFERENCE_LEVELS

    reference = abide_reference() if reference is None else reference
    if not reference or key not in reference:
        return None
    knots = np.asarray(reference[key], dtype=float)
    low, high = np.interp(percentiles, REFERENCE_LEVELS, knots)
    return float(low), float(high)


# --------------------------------------------------------------------------- tables


def format_value(value) -> str:
    """A number for a table cell: 4 significant digits, integers as integers, n/a for NaN/None."""
    if value is None:
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return "n/a"
    if number.is_integer() and abs(number) < 1e7:
        return str(int(number))
    return f"{number:.4g}"


def iqm_rows(iqms: Mapping[str, float], reference: Mapping[str, np.ndarray] | None = None,
             descriptions: Mapping[str, dict] | None = None,
             limits: tuple[float, float] = REPORT_PERCENTILES) -> list[dict]:
    """One row per IQM: ``name``, ``value``, ``text``, ``percentile``, ``flag`` ("low"/"high" beyond
    ``limits``, else None), ``concern`` (the flag points to worse quality), ``better``, ``description``.

    Headline IQMs (:data:`HEADLINE_IQMS`) come first, in that order, then the others sorted by name;
    ``headline`` tells which group a row belongs to.
    """
    reference = abide_reference() if reference is None else reference
    descriptions = descriptions or {}
    order = [k for k in HEADLINE_IQMS if k in iqms] + sorted(k for k in iqms if k not in HEADLINE_IQMS)
    rows = []
    for key in order:
        value = float(iqms[key])
        pct = abide_percentile(key, value, reference) if reference else float("nan")
        flag = None
        if np.isfinite(pct):
            flag = "low" if pct < limits[0] else "high" if pct > limits[1] else None
        better = BETTER.get(key)
        concern = flag is not None and better is not None and \
            ((flag == "low" and better == "higher") or (flag == "high" and better == "lower"))
        rows.append({"name": key, "value": value, "text": format_value(value),
                     "percentile": pct if np.isfinite(pct) else None, "flag": flag, "concern": concern,
                     "better": better, "headline": key in HEADLINE_IQMS,
                     "description": (descriptions.get(key) or {}).get("Description", "")})
    return rows


def ordinal(number: float) -> str:
    """``1`` -> "1st", ``2`` -> "2nd", ``99`` -> "99th", ``2.5`` -> "2.5th"."""
    if not float(number).is_integer():
        return f"{number:g}th"
    n = int(number)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def tukey_fences(values: np.ndarray, k: float = TUKEY_K) -> tuple[float, float]:
    """(Q1 - k IQR, Q3 + k IQR) of the finite values; (-inf, inf) with fewer than 4 values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 4:
        return -np.inf, np.inf
    q1, q3 = np.percentile(values, [25, 75])
    return float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def iqm_outliers(table: pd.DataFrame, keys: Sequence[str] = KEY_IQMS,
                 reference: Mapping[str, np.ndarray] | None = None,
                 k: float = TUKEY_K, percentiles: tuple[float, float] = OUTLIER_PERCENTILES) -> pd.DataFrame:
    """Scans whose IQM lies beyond Tukey's fences of the cohort or beyond ABIDE's percentiles.

    ``table`` has one row per scan (``participant_id``, ``session_id``, IQM columns). Returns one row
    per scan and IQM: ``participant_id``, ``session_id``, ``iqm``, ``value``, ``row`` (index in
    ``table``), ``rule`` (the rules that apply, joined by "; ").
    """
    reference = abide_reference() if reference is None else reference
    columns = ["participant_id", "session_id", "iqm", "value", "row", "rule"]
    rows = []
    for key in keys:
        if key not in table.columns:
            continue
        values = pd.to_numeric(table[key], errors="coerce").to_numpy(dtype=float)
        lo, hi = tukey_fences(values, k)
        limits = abide_limits(key, percentiles, reference) if reference else None
        ref_lo, ref_hi = limits if limits is not None else (-np.inf, np.inf)
        for i, v in enumerate(values):
            if not np.isfinite(v):
                continue
            rules = []
            if v < lo or v > hi:
                rules.append(f"{'below' if v < lo else 'above'} the cohort's Tukey fence "
                             f"({format_value(lo if v < lo else hi)}; {k:g} IQR)")
            if v < ref_lo or v > ref_hi:
                which = ordinal(percentiles[0] if v < ref_lo else percentiles[1])
                rules.append(f"{'below' if v < ref_lo else 'above'} ABIDE's {which} percentile "
                             f"({format_value(ref_lo if v < ref_lo else ref_hi)})")
            if rules:
                session = table["session_id"].iloc[i] if "session_id" in table.columns else None
                rows.append({"participant_id": table["participant_id"].iloc[i],
                             "session_id": None if session is None or pd.isna(session) else session,
                             "iqm": key, "value": float(v), "row": int(i), "rule": "; ".join(rules)})
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- figures




def unit_labels(table: pd.DataFrame) -> list[str]:
    """``sub-01`` or ``sub-01_ses-a`` for each row of a table keyed by participant_id/session_id."""
    sessions = table["session_id"] if "session_id" in table.columns else [None] * len(table)
    return [str(p) if s is None or (not isinstance(s, str) and pd.isna(s)) else f"{p}_{s}"
            for p, s in zip(table["participant_id"], sessions, strict=True)]


def distribution_svg(table: pd.DataFrame, columns: Sequence[str], *, by: str | None = None,
                     marked: Mapping[str, Sequence[int]] | None = None,
                     bands: Mapping[str, tuple[float, float]] | None = None, band_label: str = "",
                     titles: Mapping[str, str] | None = None, ncols: int = 4, seed: int = 0) -> str:
    """Box plot with every value as a jittered point, one panel per column of ``table``.

    ``by``: a column whose levels give one box each (else one box of all rows). ``marked``:
    column -> row positions drawn in red and labelled with the unit (``participant_id``).
    ``bands``: column -> (low, high) reference limits drawn as dashed lines (e.g. ABIDE's
    1st/99th percentiles), noted at the panel's edge when outside the plotted range.
    """
    columns = [c for c in columns if c in table.columns]
    if not columns:
        raise ValueError("none of the requested columns is in the table")
    marked = {k: set(v) for k, v in (marked or {}).items()}
    titles = titles or {}
    labels = unit_labels(table) if "participant_id" in table.columns else [str(i) for i in range(len(table))]
    levels = sorted(table[by].dropna().astype(str).unique()) if by and by in table.columns else [None]
    ncols = max(1, min(ncols, len(columns)))
    nrows = math.ceil(len(columns) / ncols)
    width = max(1.2 * len(levels), 2.4)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 0.6, 2.7 * nrows), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, column in zip(axes.ravel(), columns, strict=False):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        groups = [np.arange(len(table))] if levels == [None] else \
            [np.flatnonzero(table[by].astype(str).to_numpy() == level) for level in levels]
        data = [values[g][np.isfinite(values[g])] for g in groups]
        ax.boxplot([d if d.size else [np.nan] for d in data], positions=range(len(groups)), widths=0.5,
                   showfliers=False, medianprops={"color": "#333"}, boxprops={"color": "#777"},
                   whiskerprops={"color": "#777"}, capprops={"color": "#777"})
        for x, rows in enumerate(groups):
            finite = rows[np.isfinite(values[rows])]
            jitter = rng.uniform(-0.15, 0.15, size=finite.size)
            hit = np.array([r in marked.get(column, set()) for r in finite], dtype=bool)
            ax.scatter(x + jitter[~hit], values[finite[~hit]], s=14, color="#1f77b4", alpha=0.8, zorder=3)
            ax.scatter(x + jitter[hit], values[finite[hit]], s=30, color=MARK, marker="D", zorder=4)
            for j, r in zip(jitter[hit], finite[hit], strict=True):
                ax.annotate(labels[r], (x + j, values[r]), xytext=(4, 2), textcoords="offset points", fontsize=6,
                            color=MARK)
        finite_all = values[np.isfinite(values)]
        if finite_all.size:
            lo, hi = float(finite_all.min()), float(finite_all.max())
            pad = 0.12 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        band = (bands or {}).get(column)
        if band is not None:
            ymin, ymax = ax.get_ylim()
            for edge, limit in zip(("low", "high"), band, strict=True):
                if not np.isfinite(limit):
                    continue
                if ymin <= limit <= ymax:
                    ax.axhline(limit, color="#888", linestyle="--", linewidth=0.8)
                else:
                    where = 0.02 if limit < ymin else 0.92
                    ax.text(0.98, where, f"{band_label} {edge}: {format_value(limit)}", transform=ax.transAxes,
                            ha="right", fontsize=6, color="#666")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([lvl if lvl is not None else f"all (n={len(table)})" for lvl in levels], fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(titles.get(column, column), fontsize=9, pad=12)
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.get_offset_text().set_fontsize(7)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes.ravel()[len(columns):]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_svg(fig)


def _image(source) -> nb.Nifti1Image:
    return source if isinstance(source, nb.Nifti1Image) else nb.load(str(source))


def mask_array(source, reference: nb.Nifti1Image) -> np.ndarray:
    if isinstance(source, np.ndarray):
        data = source
    else:
        img = _image(source)
        if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, atol=1e-3):
            raise ValueError(f"mask {source} is not on the T1w grid")
        data = np.asanyarray(img.dataobj)
    return np.asarray(data).reshape(reference.shape[:3]) > 0


def background_svg(t1w, air, artifacts, n_cuts: int = 6) -> str:
    """Sagittal slices of the T1w in a noise window (the head saturates, the background noise shows),
    with the air mask in translucent blue and the artifact mask in red.

    ``t1w``: the uncorrected T1w (image or path); ``air`` / ``artifacts``: boolean arrays on its
    grid or mask images/paths (e.g. from :func:`bids_app.qc.masks.image_masks`).
    """
    from nilearn import plotting

    img = _image(t1w)
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32)).reshape(img.shape[:3])
    air_mask = mask_array(air, img)
    artifact_mask = mask_array(artifacts, img)
    background = data[air_mask | artifact_mask]
    noise = float(np.percentile(background[background > 0], 99)) if np.any(background > 0) else 0.0
    foreground = float(np.percentile(data[data > 0], 99)) if np.any(data > 0) else 1.0
    vmax = min(max(4.0 * noise, 1e-6), foreground)  # noise window: ~4x the background's 99th percentile
    clipped = nb.Nifti1Image(np.clip(data, 0, vmax), img.affine)
    affine = img.affine
    xs = nb.affines.apply_affine(affine, np.argwhere(data > vmax))[:, 0] if np.any(data > vmax) else np.zeros(1)
    lo, hi = np.percentile(xs, [20, 80])
    cuts = list(np.linspace(lo, hi, n_cuts))
    if artifact_mask.any():  # make sure one slice goes through the densest artifact plane
        world_x = np.round(nb.affines.apply_affine(affine, np.argwhere(artifact_mask))[:, 0])
        planes, counts = np.unique(world_x, return_counts=True)
        x = float(planes[np.argmax(counts)])
        cuts[int(np.argmin(np.abs(np.asarray(cuts) - x)))] = x
        cuts.sort()
    display = plotting.plot_anat(clipped, display_mode="x", cut_coords=cuts,
                                 vmin=0, vmax=vmax, dim=0, annotate=True, draw_cross=False, black_bg=True,
                                 cmap="gray")
    air_img = nb.Nifti1Image(air_mask.astype(np.float32), affine)
    art_img = nb.Nifti1Image(artifact_mask.astype(np.float32), affine)
    display.add_overlay(air_img, cmap=ListedColormap(["#2f7fff"]), threshold=0.5, transparency=0.4, vmin=0.5,
                        vmax=1)
    if artifact_mask.any():
        display.add_overlay(art_img, cmap=ListedColormap(["#ff2020"]), threshold=0.5, transparency=0.9, vmin=0.5,
                            vmax=1)
    return display_svg(display)
