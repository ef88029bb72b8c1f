"""Report figures (nilearn/matplotlib, SVG): what a reviewer looks at to trust a participant's outputs."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from nilearn import plotting  # noqa: E402


def figure_svg(fig, facecolor: str | None = None) -> str:
    """A matplotlib figure as an inline ``<svg>`` string (the figure is closed)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", **({"facecolor": facecolor} if facecolor else {}))
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def display_svg(display, facecolor: str | None = "black") -> str:
    """A nilearn display as an inline ``<svg>`` string (the display is closed)."""
    svg = figure_svg(display.frame_axes.figure, facecolor)
    display.close()
    plt.close("all")
    return svg





def _cuts(img: nb.Nifti1Image, mask: nb.Nifti1Image, axis: str, n: int = 7) -> list[float]:
    """``n`` world coordinates along ``axis`` spanning the mask's extent (10-90 %)."""
    data = np.asanyarray(mask.dataobj) > 0
    ijk = np.argwhere(data)
    world = nb.affines.apply_affine(mask.affine, ijk)
    k = "xyz".index(axis)
    lo, hi = np.percentile(world[:, k], [12, 88])
    return list(np.linspace(lo, hi, n))


def segmentation_mosaic(t1w, brain_mask, dseg, icv_mask=None) -> str:
    """T1w with the brain-mask outline (red), GM/WM borders (green/blue) and, when given, the
    intracranial mask (yellow): axial + sagittal rows."""
    t1w, brain_mask, dseg = (nb.load(str(x)) if not isinstance(x, nb.Nifti1Image) else x
                             for x in (t1w, brain_mask, dseg))
    labels = np.asanyarray(dseg.dataobj)
    gm = nb.Nifti1Image((labels == 1).astype(np.uint8), dseg.affine)
    wm = nb.Nifti1Image((labels == 2).astype(np.uint8), dseg.affine)
    svgs = []
    for axis in ("z", "x"):
        display = plotting.plot_anat(t1w, display_mode=axis, cut_coords=_cuts(t1w, brain_mask, axis),
                                     dim=-0.3, annotate=False, draw_cross=False, black_bg=True)
        if icv_mask is not None:
            display.add_contours(icv_mask, levels=[0.5], colors="yellow", linewidths=0.6)
        display.add_contours(brain_mask, levels=[0.5], colors="r", linewidths=0.8)
        display.add_contours(gm, levels=[0.5], colors="lime", linewidths=0.4)
        display.add_contours(wm, levels=[0.5], colors="deepskyblue", linewidths=0.4)
        svgs.append(display_svg(display))
    return "\n".join(svgs)


def normalization_check(std_t1w, template_mask) -> str:
    """The subject in template space with the template brain outline on top."""
    std_t1w = nb.load(str(std_t1w)) if not isinstance(std_t1w, nb.Nifti1Image) else std_t1w
    mask = nb.load(str(template_mask)) if not isinstance(template_mask, nb.Nifti1Image) else template_mask
    display = plotting.plot_anat(std_t1w, display_mode="ortho", cut_coords=(0, -18, 18), dim=-0.3,
                                 annotate=True, draw_cross=False, black_bg=True)
    display.add_contours(mask, levels=[0.5], colors="orange", linewidths=1.0)
    return display_svg(display)


def bias_field(field, brain_mask) -> str:
    """The N4 bias field (multiplicative), scaled to its median inside the brain."""
    field = nb.load(str(field)) if not isinstance(field, nb.Nifti1Image) else field
    mask = nb.load(str(brain_mask)) if not isinstance(brain_mask, nb.Nifti1Image) else brain_mask
    data = field.get_fdata()
    inside = np.asanyarray(mask.dataobj) > 0
    scaled = nb.Nifti1Image((data / np.median(data[inside])).astype(np.float32), field.affine)
    display = plotting.plot_img(scaled, display_mode="z", cut_coords=_cuts(field, mask, "z", 5), cmap="coolwarm",
                                vmin=0.7, vmax=1.3, colorbar=True, black_bg=True, annotate=False, draw_cross=False)
    return display_svg(display)
