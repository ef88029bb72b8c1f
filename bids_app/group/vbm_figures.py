"""VBM report figures as inline SVG: glass brain and slices of a thresholded statistical map.

``nilearn.plotting.plot_glass_brain`` (maximum-intensity projections, the SPM "glass
brain") and ``plot_stat_map`` over the template brain, centred on the peak. Maps with no
suprathreshold voxel still give a figure (the empty glass brain, titled so).
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from nilearn import plotting  # noqa: E402

from bids_app.errors import ResourceError  # noqa: E402
from bids_app.reports.figures import display_svg  # noqa: E402




def _load(img) -> nb.Nifti1Image:
    return img if isinstance(img, nb.Nifti1Image) else nb.load(img)


def _suprathreshold(img: nb.Nifti1Image, threshold: float, two_sided: bool) -> np.ndarray:
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=float))
    return (np.abs(data) > threshold) if two_sided else (data > threshold)


def _title(title: str | None, empty: bool) -> str | None:
    if not empty:
        return title
    return f"{title}: no suprathreshold voxel" if title else "no suprathreshold voxel"


def background(template: str = "MNI152NLin2009cAsym", resolution: int = 1) -> nb.Nifti1Image | str:
    """The template brain (bids_app.resources) as background; nilearn's MNI152 when it is not built."""
    from bids_app.resources import get_template

    try:
        return nb.load(get_template(template, resolution, desc="brain"))
    except ResourceError:
        return "MNI152"  # nilearn's shipped template (same space family, no download)


def glass_brain_svg(stat_img, threshold: float, *, two_sided: bool = False, title: str | None = None,
                    vmax: float | None = None, colorbar: bool = True) -> str:
    """Glass brain (sagittal, coronal, axial MIPs) of ``stat_img`` above ``threshold``.

    One-sided maps are drawn in a sequential colour map from ``threshold`` up; two-sided
    maps in a diverging one (negative values blue).
    """
    img = _load(stat_img)
    empty = not _suprathreshold(img, threshold, two_sided).any()
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=float))
    peak = float(np.abs(data).max()) if two_sided else float(max(data.max(), 0.0))
    vmax = vmax if vmax is not None else max(peak, threshold * 1.01, 1e-6)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="empty mask")
        display = plotting.plot_glass_brain(
            img, threshold=threshold, display_mode="lyrz", colorbar=colorbar and not empty,
            plot_abs=False, cmap="RdBu_r" if two_sided else "hot", vmax=vmax,
            vmin=-vmax if two_sided else threshold, symmetric_cbar=two_sided, title=_title(title, empty),
            black_bg=False, annotate=True)
    return display_svg(display, facecolor=None)


def stat_map_svg(stat_img, threshold: float, *, two_sided: bool = False, title: str | None = None,
                 cut_coords=None, bg_img=None, display_mode: str = "ortho") -> str:
    """Slices of ``stat_img`` above ``threshold`` over the template brain, through the peak by default.

    ``display_mode="z"`` (or "x", "y") gives a row of 7 slices spanning the suprathreshold
    voxels instead of the orthogonal view.
    """
    img = _load(stat_img)
    supra = _suprathreshold(img, threshold, two_sided)
    empty = not supra.any()
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=float))
    score = np.abs(data) if two_sided else data
    if cut_coords is None and not empty:
        peak = np.unravel_index(int(np.argmax(np.where(supra, score, -np.inf))), data.shape)
        xyz = nb.affines.apply_affine(img.affine, peak)
        if display_mode == "ortho":
            cut_coords = tuple(float(v) for v in xyz)
        else:
            axis = "xyz".index(display_mode)
            world = nb.affines.apply_affine(img.affine, np.argwhere(supra))[:, axis]
            cut_coords = list(np.linspace(world.min(), world.max(), 7)) if np.ptp(world) > 0 else [float(xyz[axis])]
    vmax = max(float(score.max()), threshold * 1.01, 1e-6)
    if cut_coords is None:  # nothing above threshold: central ortho view, or 7 evenly spread slices
        cut_coords = (0.0, -18.0, 18.0) if display_mode == "ortho" else 7
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="empty mask")
        display = plotting.plot_stat_map(
            img, bg_img=bg_img if bg_img is not None else background(), threshold=threshold,
            display_mode=display_mode, cut_coords=cut_coords, colorbar=not empty,
            cmap="RdBu_r" if two_sided else "hot", vmax=vmax, symmetric_cbar=two_sided,
            title=_title(title, empty), black_bg=True, draw_cross=False, annotate=True, dim=-0.3)
    return display_svg(display, facecolor=None)


def vbm_figures(result, *, fwe_alpha: float = 0.05) -> dict[str, str]:
    """Figures of a :class:`bids_app.group.vbm.VBMResult` by name (SVG strings).

    ``glassbrain`` and ``slices``: the parametric thresholded z map (its height threshold,
    or +inf when nothing can survive); with permutations, ``glassbrain_tfce`` /
    ``glassbrain_maxt``: -log10 p FWE above -log10(``fwe_alpha``).
    """
    s = result.summary
    two_sided = bool(s.get("two_sided"))
    threshold = result.threshold if result.threshold is not None else float("inf")
    label = f"z, {s['height_control'].upper()} {s['alpha']:g}"
    z_thr = threshold if np.isfinite(threshold) else 1e9
    figures = {
        "glassbrain": glass_brain_svg(result.thresholded_img, z_thr, two_sided=two_sided, title=label),
        "slices": stat_map_svg(result.thresholded_img, z_thr, two_sided=two_sided, title=label),
    }
    level = -np.log10(fwe_alpha)
    for name, img in (("tfce", result.logp_fwe_tfce_img), ("maxt", result.logp_fwe_t_img)):
        if img is not None:
            figures[f"glassbrain_{name}"] = glass_brain_svg(
                img, level, title=f"-log10 p FWE ({'TFCE' if name == 'tfce' else 'max t'}) > {level:.2f}")
    return figures
