"""Rule-based QC of a processed T1w: explicit pass / warn / fail flags with reasons.

:func:`run_checks` turns the IQMs (:mod:`bids_app.qc.iqms`) and a :class:`QCContext` (header
facts, brain-extraction, registration and segmentation figures, field-of-view metrics from
:func:`fov_metrics`) into a verdict. Four groups of checks:

- **artifacts** (motion, ghosting, noise, blurring, non-uniformity): ``gsr``, ``qi_1``, ``efc``,
  ``cjv``, ``cnr``, ``snr_wm``, the FWHM in mm and ``inu_range``;
- **field of view**: brain-mask voxels in the outer slab of each face (top of the brain cut),
  coverage of the template brain after normalization (cerebellum cut);
- **acquisition / header**: voxel size, anisotropy, slice count and extent, orientation;
  pre-stripped or defaced input turns the background-based metrics into notes instead of flags;
- **processing**: brain volume, normalization similarity and template overlap, tissue fractions.

Thresholds (:data:`THRESHOLDS`) come from the distribution of the MRIQC IQMs of ABIDE (1101
T1w scans of 17 sites, mriqc-learn's ``abide.tsv``; Esteban et al., PLoS ONE 2017): a *warn*
beyond the 99th percentile, a *fail* beyond the 99.5th, i.e. values rarer than 1 in 100 and 1
in 200 scans of a multi-site research cohort. Only the far tails are used because the ABIDE
tails of cjv, efc and qi_1 are mostly site effects, not rated quality: CALTECH's median cjv is
0.69 (above the 95th percentile) with no scan excluded, and the ABIDE scans that at least two
of three raters excluded (13.5 %) are not over-represented above the 95th percentile of cjv,
efc or qi_1. They are over-represented in the low tail of cnr (34 % below its 5th percentile),
which therefore warns already there, and even more in the low tail of snr_wm: 89 % of the
scans below its 5th percentile (55 scans, 7 sites) and all 11 below its 1st were excluded, so
it warns at the 5th and fails at the 1st. The SNR thresholds assume ABIDE's ~1 mm voxels: the
SNR of a voxel scales with its volume, so sub-millimetre scans score lower. Metrics ABIDE does not hold (ghost ratio, FWHM in mm,
field of view, processing figures) are set from clean real scans (ds000011, pumi-minitest)
and the controlled degradations of ``bench/qc.py``; each constant's comment gives the figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_app.errors import InputDataError
from bids_app.qc.masks import looks_defaced, voxel_sizes

# ABIDE percentiles (n = 1101) of the metrics used below, computed with pandas' quantile:
#   cjv        p95 0.611  p99 0.764  p99.5 0.832
#   cnr        p0.5 0.453 p1 0.560   p5 1.307
#   snr_wm     p1 9.899   p5 11.829  (pure, eroded WM; clean ds000011 12.4-19.0, pumi 19.0)
#   efc        p95 0.865  p99 0.887  p99.5 0.894
#   qi_1       p95 0.0027 p99 0.0257 p99.5 0.0521
#   fwhm_avg   p95 5.84   p99 6.14   p99.5 6.31   (spacing ~1 mm: voxels ~ mm)
#   inu_range  p95 0.583  p99 0.714  p99.5 0.759
#   icvs_csf   p0.5 0.125 p99.5 0.299; icvs_gm p0.5 0.349 p99.5 0.536; icvs_wm p0.5 0.305 p99.5 0.442

#: Check thresholds: ``(warn, fail)``; the direction is given by each check.
THRESHOLDS: dict[str, tuple[float, float | None]] = {
    # artifacts
    "cjv": (0.764, 0.832),  # ABIDE p99, p99.5; clean ds000011 0.30-0.40, pumi 0.32
    "cnr": (1.307, 0.560),  # below ABIDE p5, p1 (its low tail is long: warn already at p5)
    # below ABIDE p5, p1; pumi with Rician noise of 4 / 7 / 10 / 15 % of WM: 15.4 / 11.7 / 9.1 / 6.6
    "snr_wm": (11.829, 9.899),
    "efc": (0.887, 0.894),  # ABIDE p99, p99.5 (depends on the field of view: large FOVs score higher)
    "qi_1": (0.0257, 0.0521),  # ABIDE p99, p99.5; clean ds000011/pumi 0.0015-0.0022
    # ghost-to-signal ratio: clean ds000011 (14) and pumi 0.006-0.024; an added N/2 ghost of
    # 5 % amplitude gives 0.05-0.06, of 10 % 0.10
    "gsr": (0.04, 0.08),
    # smoothness in mm (mean over axes of FWHM x spacing): ABIDE p99 6.1; clean ds000011 4.8,
    # pumi (2 mm) 4.9; 3 mm extra Gaussian blur gives 8.5 on pumi
    "fwhm_mm": (6.14, 7.5),
    # ABIDE p99; a warning at most, since N4 corrected the field (clean ds000011: 0.17-0.30)
    "inu_range": (0.714, None),
    # field of view: fraction of the brain mask in the outer slab of a face. Clean: 0; 5 mm
    # of brain cut at the top: 0.007-0.008, 10 mm: 0.012-0.015
    "border_fraction": (0.002, 0.01),
    # template brain (carried to native space) in the inferior slab: cerebellum cut; 10 mm
    # cut: 0.007, 20 mm: 0.009-0.012
    "template_border_fraction": (0.002, 0.005),
    # fraction of the template brain inside the field of view: 10 mm of cerebellum cut: 0.988-0.996
    "template_coverage": (0.995, 0.98),
    # acquisition
    "voxel_mm": (1.5, 3.0),  # largest voxel edge: cortex is 2-3 mm thick
    "anisotropy": (2.0, 4.0),  # largest / smallest voxel edge
    "slices": (60, 30),  # fewest slices along any axis
    "extent_mm": (150.0, 120.0),  # smallest field-of-view extent: an adult brain is 120-170 mm
    "obliquity_deg": (30.0, 60.0),  # angle of the voxel grid to the scanner axes
    # processing
    "brain_volume_low_ml": (900.0, 400.0),  # fail bounds = skullstrip.PLAUSIBLE_BRAIN_ML
    "brain_volume_high_ml": (2000.0, 2600.0),
    "similarity": (0.7, 0.5),  # SyN on ds000011 sub-01: 0.82; affine only: 0.66
    "template_dice": (0.85, 0.7),  # brain mask vs. template brain in native space: 0.96 measured
    "icvs_csf": (0.125, 0.299),  # ABIDE p0.5 .. p99.5 (warn outside)
    "icvs_gm": (0.349, 0.536),
    "icvs_wm": (0.305, 0.442),
    "icvs_fail": (0.05, 0.75),  # any tissue fraction outside: the segmentation failed
}

#: IQMs that describe the background and mean nothing without one (pre-stripped input) or
#: are biased where it was zeroed (defaced input).
BACKGROUND_IQMS = ("snrd_*", "cnr", "fber", "efc", "qi_1", "qi_2", "gsr", "summary_bg_*")

#: Faces of the field of view by (RAS axis, end): 0 = low index, 1 = high index after conforming.
FACE_NAMES = {(0, 0): "left", (0, 1): "right", (1, 0): "posterior", (1, 1): "anterior",
              (2, 0): "inferior", (2, 1): "superior"}

#: Thickness (mm) of the outer slab of each face in :func:`fov_metrics`.
BORDER_SLAB_MM = 3.0


@dataclass(frozen=True)
class QCContext:
    """What the checks need besides the IQMs. Build it with :func:`build_context`.

    ``voxel_sizes`` (mm) and ``shape`` of the conformed T1w; ``prestripped``: the input was
    already brain-extracted; ``defaced``: the face was removed (guessed by
    :func:`bids_app.qc.masks.looks_defaced`); ``obliquity_deg``: angle of the voxel grid to the
    scanner axes; ``orientation_issue``: a header problem found by the input checks (e.g. sform
    and qform disagree), or None; ``brain_volume_ml``: volume of the brain mask;
    ``registration_similarity``: correlation of the normalized brain with the template
    (:func:`bids_app.participant.register.register_to_template`); ``tissue_fractions``: GM/WM/CSF
    fractions of the brain (default: the IQMs' ``icvs_*``); ``template_coverage``: fraction of
    the template brain inside the field of view (:func:`template_coverage`); ``fov``: output of
    :func:`fov_metrics`. Unknown figures are None and their checks are skipped.
    """

    voxel_sizes: tuple[float, float, float]
    shape: tuple[int, int, int]
    prestripped: bool = False
    defaced: bool = False
    obliquity_deg: float = 0.0
    orientation_issue: str | None = None
    brain_volume_ml: float | None = None
    registration_similarity: float | None = None
    tissue_fractions: dict[str, float] | None = None
    template_coverage: float | None = None
    fov: dict[str, float] | None = field(default=None)

    def as_dict(self) -> dict:
        return asdict(self)


def _mask(source, what: str) -> nb.Nifti1Image:
    if isinstance(source, nb.Nifti1Image):
        return source
    path = Path(source)
    if not path.is_file():
        raise InputDataError(f"QC input not found: {path} ({what}).", "Re-run the participant step that writes it.")
    return nb.load(str(path))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its closest scanner axis."""
    directions = np.abs(np.asarray(affine)[:3, :3] / voxel_sizes(affine))
    return float(np.degrees(np.arccos(np.clip(directions.max(axis=0), -1, 1))).max())


def build_context(t1w: nb.Nifti1Image, head_mask: nb.Nifti1Image, brain_mask: nb.Nifti1Image, *,
                  prestripped: bool = False, orientation_issue: str | None = None,
                  registration_similarity: float | None = None, tissue_fractions: dict | None = None,
                  template_coverage: float | None = None, fov: dict | None = None) -> QCContext:
    """A :class:`QCContext` with the header facts, the defacing guess and the brain volume
    computed from the conformed T1w and its masks; the other fields as given."""
    zooms = voxel_sizes(t1w.affine)
    head = np.asanyarray(head_mask.dataobj) > 0
    brain = np.asanyarray(brain_mask.dataobj) > 0
    defaced = (not prestripped) and looks_defaced(np.asanyarray(t1w.dataobj), head, brain, t1w.affine)
    return QCContext(
        voxel_sizes=tuple(round(float(z), 4) for z in zooms), shape=tuple(int(n) for n in t1w.shape[:3]),
        prestripped=bool(prestripped), defaced=bool(defaced), obliquity_deg=round(obliquity_deg(t1w.affine), 2),
        orientation_issue=orientation_issue, brain_volume_ml=float(brain.sum() * np.prod(zooms) / 1000.0),
        registration_similarity=registration_similarity, tissue_fractions=tissue_fractions,
        template_coverage=template_coverage, fov=fov)


# ------------------------------------------------------------------------------ field of view


def _face_names(affine: np.ndarray) -> dict[tuple[int, int], str]:
    """Face names of the voxel grid: (axis, 0 | 1) -> 'left', 'superior', ..."""
    directions = np.asarray(affine)[:3, :3] / voxel_sizes(affine)
    names = {}
    for axis in range(3):
        world = int(np.argmax(np.abs(directions[:, axis])))
        positive = directions[world, axis] > 0
        names[(axis, 1 if positive else 0)] = FACE_NAMES[(world, 1)]
        names[(axis, 0 if positive else 1)] = FACE_NAMES[(world, 0)]
    return names


def border_fractions(mask: np.ndarray, affine: np.ndarray, slab_mm: float = BORDER_SLAB_MM) -> dict[str, float]:
    """Fraction of ``mask``'s voxels in the outer ``slab_mm`` of each face, keyed by face name."""
    zooms = voxel_sizes(affine)
    total = float(mask.sum())
    out = {}
    for (axis, end), name in _face_names(affine).items():
        n = max(1, int(round(slab_mm / zooms[axis])))
        index = [slice(None)] * 3
        index[axis] = slice(0, n) if end == 0 else slice(mask.shape[axis] - n, None)
        out[name] = float(mask[tuple(index)].sum()) / total if total else float("nan")
    return out


def fov_metrics(brain_mask_path, template_brain_in_native_path=None) -> dict[str, float]:
    """Field-of-view figures of a brain mask on the conformed T1w grid.

    ``border_<face>``: fraction of the brain mask in the outer :data:`BORDER_SLAB_MM` of each
    face (left, right, posterior, anterior, inferior, superior); with the template brain mask
    carried to native space (threshold 0.5): ``template_border_<face>`` the same for it, which
    reaches the inferior face when the cerebellum is cut (the subject's own mask stops where the
    image does), and ``template_dice``, its Dice overlap with the brain mask.
    """
    brain_img = _mask(brain_mask_path, "brain mask")
    brain = np.asanyarray(brain_img.dataobj) > 0
    if not brain.any():
        raise InputDataError(f"The brain mask {brain_mask_path} is empty.", "Re-run brain extraction.")
    out = {f"border_{k}": v for k, v in border_fractions(brain, brain_img.affine).items()}
    if template_brain_in_native_path is not None:
        tpl_img = _mask(template_brain_in_native_path, "template brain mask in native space")
        if tpl_img.shape[:3] != brain.shape:
            raise InputDataError(f"The template brain mask {template_brain_in_native_path} is not on the T1w grid.",
                                 "Carry it to native space with the T1w as reference.")
        tpl = np.asanyarray(tpl_img.dataobj) > 0.5
        out.update({f"template_border_{k}": v for k, v in border_fractions(tpl, brain_img.affine).items()})
        out["template_dice"] = float(2 * (tpl & brain).sum() / max(tpl.sum() + brain.sum(), 1))
    return out


def template_coverage(fov_in_template: nb.Nifti1Image, template_brain_mask: nb.Nifti1Image) -> float:
    """Fraction of the template brain mask inside the subject's field of view: ``fov_in_template``
    is a native image of ones carried to the template grid (linear interpolation, zero outside)."""
    fov = np.asanyarray(fov_in_template.dataobj) > 0.5
    brain = np.asanyarray(template_brain_mask.dataobj) > 0.5
    if fov.shape != brain.shape:
        raise InputDataError("The field-of-view image is not on the template grid.",
                             "Resample it with the template brain mask as reference.")
    return float((fov & brain).sum() / max(brain.sum(), 1))


# ------------------------------------------------------------------------------ checks


class _Flags:
    """Collects flags and notes."""

    def __init__(self):
        self.flags: list[dict] = []
        self.notes: list[str] = []

    def add(self, check: str, level: str, reason: str) -> None:
        self.flags.append({"check": check, "level": level, "reason": reason})

    def high(self, check: str, value, limits: tuple[float, float], what: str, fmt: str = ".3f") -> None:
        """Flag ``value`` above the warn / fail limits."""
        if value is None or not np.isfinite(value):
            return
        warn, fail = limits
        if fail is not None and value > fail:
            self.add(check, "fail", f"{what} is {value:{fmt}}, above the fail threshold {fail:{fmt}}.")
        elif value > warn:
            self.add(check, "warn", f"{what} is {value:{fmt}}, above the warning threshold {warn:{fmt}}.")

    def low(self, check: str, value, limits: tuple[float, float], what: str, fmt: str = ".3f") -> None:
        """Flag ``value`` below the warn / fail limits."""
        if value is None or not np.isfinite(value):
            return
        warn, fail = limits
        if value < fail:
            self.add(check, "fail", f"{what} is {value:{fmt}}, below the fail threshold {fail:{fmt}}.")
        elif value < warn:
            self.add(check, "warn", f"{what} is {value:{fmt}}, below the warning threshold {warn:{fmt}}.")


def _get(iqms: dict, key: str):
    value = iqms.get(key)
    return None if value is None else float(value)


def fwhm_mm(iqms: dict) -> float | None:
    """Mean smoothness in mm: MRIQC's per-axis FWHM (voxels) times the spacing, averaged."""
    try:
        return float(np.mean([iqms[f"fwhm_{a}"] * iqms[f"spacing_{a}"] for a in "xyz"]))
    except KeyError:
        return None


def artifact_checks(iqms: dict, ctx: QCContext, out: _Flags, t=THRESHOLDS) -> None:
    """Motion, ghosting, noise, blurring and non-uniformity."""
    background = not ctx.prestripped
    if background:
        out.high("ghosting", _get(iqms, "gsr"), t["gsr"], "The ghost-to-signal ratio (gsr)")
        out.high("artifacts_in_background", _get(iqms, "qi_1"), t["qi_1"],
                 "The fraction of artifactual background voxels (qi_1)", ".4f")
        out.high("entropy_focus", _get(iqms, "efc"), t["efc"], "The entropy focus criterion (efc)")
        out.low("contrast_to_noise", _get(iqms, "cnr"), t["cnr"], "The GM/WM contrast-to-noise ratio (cnr)")
    else:
        out.notes.append("Input was already brain-extracted: background metrics (" + ", ".join(BACKGROUND_IQMS)
                         + ") are not meaningful and were not checked.")
    out.high("tissue_contrast", _get(iqms, "cjv"), t["cjv"], "The coefficient of joint variation of GM and WM (cjv)")
    out.low("noise", _get(iqms, "snr_wm"), t["snr_wm"], "The white-matter signal-to-noise ratio (snr_wm)", ".2f")
    out.high("blurring", fwhm_mm(iqms), t["fwhm_mm"], "The image smoothness (mean FWHM, mm)", ".2f")
    out.high("intensity_nonuniformity", _get(iqms, "inu_range"), t["inu_range"],
             "The bias-field range (inu_range; N4 corrected it, check the segmentation)")
    if ctx.defaced and background:
        out.notes.append("Input looks defaced: background metrics (" + ", ".join(BACKGROUND_IQMS)
                         + ") are measured on a partly zeroed background and may be biased.")


def fov_checks(ctx: QCContext, out: _Flags, t=THRESHOLDS) -> None:
    """Brain cut by the field of view (top of the head, sides) and cerebellum coverage."""
    fov = ctx.fov or {}
    for face in ("superior", "left", "right", "anterior", "posterior"):
        value = fov.get(f"border_{face}")
        check = "top_of_brain_cut" if face == "superior" else f"brain_at_{face}_border"
        out.high(check, value, t["border_fraction"],
                 f"The fraction of the brain mask within {BORDER_SLAB_MM:g} mm of the {face} image border", ".4f")
    inferior = fov.get("template_border_inferior")
    if ctx.template_coverage is not None:
        # template brain missing from the field of view: the cerebellum when the template
        # reaches the inferior border (or nothing says where), else somewhere else
        touched = [f for f in FACE_NAMES.values() if fov.get(f"template_border_{f}", 0) > 0]
        below = inferior is None or inferior > 0
        out.low("cerebellum_cut" if below else "brain_outside_fov", ctx.template_coverage, t["template_coverage"],
                "The fraction of the template brain inside the field of view"
                + (f" (it reaches the {', '.join(touched)} border)" if touched else ""), ".4f")
    elif inferior is not None:
        out.high("cerebellum_cut", inferior, t["template_border_fraction"],
                 f"The fraction of the normalized template brain within {BORDER_SLAB_MM:g} mm of the inferior "
                 "image border", ".4f")


def acquisition_checks(ctx: QCContext, out: _Flags, t=THRESHOLDS) -> None:
    """Voxel size, anisotropy, slices, field-of-view extent, orientation."""
    zooms = np.asarray(ctx.voxel_sizes, float)
    out.high("voxel_size", float(zooms.max()), t["voxel_mm"], "The largest voxel edge (mm)", ".2f")
    out.high("anisotropy", float(zooms.max() / zooms.min()), t["anisotropy"], "The voxel anisotropy (max/min edge)",
             ".2f")
    out.low("few_slices", float(min(ctx.shape)), t["slices"], "The smallest number of slices along an axis", ".0f")
    out.low("field_of_view_extent", float((zooms * np.asarray(ctx.shape)).min()), t["extent_mm"],
            "The smallest field-of-view extent (mm)", ".0f")
    out.high("obliquity", ctx.obliquity_deg, t["obliquity_deg"],
             "The angle of the voxel grid to the scanner axes (deg)", ".1f")
    if ctx.orientation_issue:
        out.add("orientation", "warn", f"Header orientation problem: {ctx.orientation_issue}")


def processing_checks(iqms: dict, ctx: QCContext, out: _Flags, t=THRESHOLDS) -> None:
    """Brain volume, normalization, tissue fractions."""
    volume = ctx.brain_volume_ml
    if volume is not None:
        out.low("brain_volume", volume, t["brain_volume_low_ml"], "The brain-mask volume (mL)", ".0f")
        out.high("brain_volume", volume, t["brain_volume_high_ml"], "The brain-mask volume (mL)", ".0f")
    out.low("normalization", ctx.registration_similarity, t["similarity"],
            "The correlation of the normalized brain with the template")
    out.low("template_overlap", (ctx.fov or {}).get("template_dice"), t["template_dice"],
            "The Dice overlap of the brain mask with the template brain in native space")
    fractions = ctx.tissue_fractions or {k.upper(): iqms[f"icvs_{k}"] for k in ("csf", "gm", "wm")
                                         if f"icvs_{k}" in iqms}
    lo_fail, hi_fail = t["icvs_fail"]
    for tissue, value in fractions.items():
        key = f"icvs_{tissue.lower()}"
        if value is None or key not in t or not np.isfinite(value):
            continue
        lo, hi = t[key]
        if not lo_fail <= value <= hi_fail:
            out.add("tissue_fractions", "fail",
                    f"The {tissue} fraction of the brain is {value:.3f}, outside {lo_fail:.2f}-{hi_fail:.2f}: "
                    "the segmentation failed.")
        elif not lo <= value <= hi:
            out.add("tissue_fractions", "warn",
                    f"The {tissue} fraction of the brain is {value:.3f}, outside the ABIDE range "
                    f"{lo:.3f}-{hi:.3f} (expected with atrophy or in children).")


def run_checks(iqms: dict, context: QCContext | dict, thresholds: dict | None = None) -> dict:
    """Verdict, flags and thresholds of one T1w.

    Returns ``{"verdict": "pass" | "warn" | "fail", "flags": [{"check", "level", "reason"}],
    "notes": [...], "thresholds": {...}}``: the verdict is the worst flag's level (``pass``
    without flags); notes (pre-stripped or defaced input) never change it. ``thresholds``
    overrides entries of :data:`THRESHOLDS`.
    """
    ctx = context if isinstance(context, QCContext) else QCContext(**context)
    t = {**THRESHOLDS, **(thresholds or {})}
    out = _Flags()
    artifact_checks(iqms, ctx, out, t)
    fov_checks(ctx, out, t)
    acquisition_checks(ctx, out, t)
    processing_checks(iqms, ctx, out, t)
    levels = {flag["level"] for flag in out.flags}
    verdict = "fail" if "fail" in levels else "warn" if "warn" in levels else "pass"
    return {"verdict": verdict, "flags": out.flags, "notes": out.notes,
            "thresholds": {k: list(v) for k, v in t.items()}}
