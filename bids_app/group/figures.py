"""Figures of the ROI statistics (matplotlib/nilearn, SVG).

- :func:`manhattan_svg`: -log10(p) of every region of an atlas in label order,
  bars coloured by the sign of the effect, with the Bonferroni threshold
  (alpha / m) and the Benjamini-Hochberg threshold (the largest p whose
  adjusted q is <= alpha) as horizontal lines, the usual layout of
  region-wise association plots.
- :func:`effect_map_image` / :func:`effect_map_svg`: the effect size of every
  region painted on its voxels in the atlas' template space, drawn with
  nilearn's ``plot_stat_map`` over the template (nilearn's own MNI template when
  the embedded one is not available).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_app.bids import derivatives as d  # noqa: E402
from bids_app.errors import ResourceError, UsageError  # noqa: E402
from bids_app.reports.figures import figure_svg  # noqa: E402

ALPHA = 0.05
NEGATIVE, POSITIVE, MUTED = "#2166ac", "#b2182b", "#9e9e9e"


def _family(results: pd.DataFrame, atlas: str, measure: str) -> pd.DataFrame:
    rows = results[(results["atlas"] == atlas) & (results["measure"] == measure)]
    if rows.empty:
        pairs = sorted({f"{a}/{m}" for a, m in zip(results["atlas"], results["measure"], strict=True)})
        raise UsageError(f"no ROI results for atlas {atlas} and measure {measure}.",
                         f"Available: {', '.join(pairs)}.")
    return rows.sort_values("index")


def fdr_threshold(p: np.ndarray, q: np.ndarray, alpha: float = ALPHA) -> float | None:
    """The Benjamini-Hochberg p threshold: the largest p with q <= alpha (None when no region passes)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    passing = np.isfinite(p) & np.isfinite(q) & (q <= alpha)
    return float(p[passing].max()) if passing.any() else None




def _save(svg: str, path: str | Path | None) -> str:
    if path is not None:
        d.write_text(Path(path), svg)
    return svg


def manhattan_figure(results: pd.DataFrame, atlas: str, measure: str, alpha: float = ALPHA, n_labels: int = 8):
    """The -log10(p) bar plot of one atlas and measure as a matplotlib figure."""
    rows = _family(results, atlas, measure)
    p = rows["p"].to_numpy(dtype=float)
    t = rows["t"].to_numpy(dtype=float)
    tested = np.isfinite(p)
    height = np.where(tested, -np.log10(np.clip(p, 1e-300, 1.0)), 0.0)
    colors = np.where(~tested, MUTED, np.where(t < 0, NEGATIVE, POSITIVE))
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, min(18.0, 0.06 * len(rows) + 4)), 3.6))
    ax.bar(x, height, color=colors, width=0.8, linewidth=0)
    m = int(tested.sum())
    if m:
        bonferroni = -np.log10(alpha / m)
        ax.axhline(bonferroni, color="black", linestyle="--", linewidth=1,
                   label=f"Bonferroni p < {alpha:g}/{m}")
    threshold = fdr_threshold(p, rows["p_fdr"].to_numpy(dtype=float), alpha)
    if threshold is not None:
        ax.axhline(-np.log10(threshold), color="darkorange", linestyle="-", linewidth=1,
                   label=f"FDR q < {alpha:g} (p <= {threshold:.2g})")
    else:
        ax.plot([], [], color="darkorange", label=f"FDR q < {alpha:g}: no region")
    order = np.argsort(np.where(tested, p, np.inf))[:min(n_labels, m)]
    for i in order:
        ax.annotate(str(rows["name"].iloc[i]), (x[i], height[i]), xytext=(0, 3), textcoords="offset points",
                    rotation=60, fontsize=7, ha="left", va="bottom")
    ax.set_xlim(-1, len(rows))
    ax.set_ylim(0, max(height.max(initial=0), -np.log10(alpha / max(m, 1))) * 1.35 + 0.1)
    ax.set_xticks([])
    ax.set_xlabel(f"{atlas} regions (label order); blue: negative effect, red: positive")
    ax.set_ylabel("-log10(p)")
    contrast = results.attrs.get("Contrast", "")
    ax.set_title(f"{atlas} {measure}: {contrast}".strip(), fontsize=10)
    ax.legend(loc="upper right", fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def manhattan_svg(results: pd.DataFrame, atlas: str, measure: str, alpha: float = ALPHA,
                  path: str | Path | None = None) -> str:
    """SVG text of :func:`manhattan_figure` (also written atomically to ``path`` when given)."""
    return _save(figure_svg(manhattan_figure(results, atlas, measure, alpha)), path)


def _effect_column(rows: pd.DataFrame, value: str | None) -> str:
    if value is not None:
        if value not in rows.columns:
            raise UsageError(f"no column {value!r} in the ROI results.", "Use cohen_d, t, beta or partial_eta2.")
        return value
    return "cohen_d" if np.isfinite(rows["cohen_d"].to_numpy(dtype=float)).any() else "t"


def effect_map_image(results: pd.DataFrame, atlas: str, measure: str, value: str | None = None,
                     template: str | None = None, resolution: int = 2, alpha: float | None = None
                     ) -> nb.Nifti1Image:
    """The atlas' label image in template space with each region's voxels set to its ``value``.

    ``value`` defaults to ``cohen_d`` (``t`` when the contrast has no Cohen's d).
    With ``alpha``, regions with FDR q >= alpha are set to 0. Untested regions are 0.
    """
    from bids_app.resources import TEMPLATE, get_atlas

    rows = _family(results, atlas, measure)
    column = _effect_column(rows, value)
    dseg = nb.load(get_atlas(atlas, template or TEMPLATE, resolution).dseg)
    labels = np.rint(np.asanyarray(dseg.dataobj)).astype(np.int64)
    labels[labels < 0] = 0
    values = rows[column].to_numpy(dtype=float)
    if alpha is not None:
        values = np.where(rows["p_fdr"].to_numpy(dtype=float) < alpha, values, 0.0)
    lookup = np.zeros(max(int(labels.max()), int(rows["index"].max())) + 1, dtype=np.float32)
    lookup[rows["index"].to_numpy(dtype=int)] = np.nan_to_num(values, nan=0.0)
    img = nb.Nifti1Image(lookup[labels], dseg.affine)
    img.header.set_xyzt_units("mm")
    return img


def effect_map_svg(results: pd.DataFrame, atlas: str, measure: str, value: str | None = None,
                   template: str | None = None, resolution: int = 2, alpha: float | None = None,
                   path: str | Path | None = None) -> str:
    """Axial slices of :func:`effect_map_image` over the template brain (diverging colours, symmetric scale)."""
    from nilearn import plotting

    from bids_app.resources import TEMPLATE, get_template

    rows = _family(results, atlas, measure)
    column = _effect_column(rows, value)
    img = effect_map_image(results, atlas, measure, column, template, resolution, alpha)
    data = np.asanyarray(img.dataobj)
    vmax = float(np.abs(data).max()) or 1.0
    try:
        background = str(get_template(template or TEMPLATE, resolution, desc="brain"))
    except ResourceError:
        background = "MNI152"  # nilearn's bundled template
    label = {"cohen_d": "Cohen's d", "t": "t", "beta": "contrast estimate",
             "partial_eta2": "partial eta^2"}.get(column, column)
    display = plotting.plot_stat_map(
        img, bg_img=background, display_mode="z", cut_coords=[-30, -10, 10, 30, 50, 65], cmap="RdBu_r",
        vmax=vmax, symmetric_cbar=True, colorbar=True, annotate=False, draw_cross=False, black_bg=False,
        title=f"{atlas} {measure}: {label}" + (f" (FDR q < {alpha:g})" if alpha is not None else ""),
    )
    fig = display.frame_axes.figure
    svg = figure_svg(fig)
    display.close()
    return _save(svg, path)
