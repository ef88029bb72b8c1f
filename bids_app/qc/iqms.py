"""MRIQC-compatible image-quality metrics (IQMs) of a T1w (Esteban et al., PLoS ONE 2017,
doi:10.1371/journal.pone.0184661), under MRIQC's key names, plus a ghost-to-signal ratio.

Every metric that ``mriqc.qc.anatomical`` implements is computed by it (snr, snr_dietrich, cnr,
cjv, fber, efc, wm2max, art_qi1, art_qi2, volume_fraction, rpve), from tissue statistics
computed here (:func:`tissue_summary`) under the convention of the MRIQC releases that rated
ABIDE and DS030, the tables our classifier and percentiles come from. This module prepares
the inputs as MRIQC's ``StructuralQC`` does, from the outputs of our participant steps:

- the intensity-non-uniformity (INU) corrected T1w, rescaled so that the median of the eroded
  white matter (WM fraction > 0.9) is 1000 (MRIQC's ``Harmonize``), for all intensity statistics;
- the conformed, uncorrected T1w for the background masks, QI2 and the smoothness;
- our partial-volume tissue maps (``probseg``) for FSL FAST's ``pve`` maps, the air mask of
  :mod:`bids_app.qc.masks` as the background class, our head mask, the N4 bias field.

Where MRIQC calls other tools:

- ``fwhm_*``: AFNI ``3dFWHMx -ShowMeClassicFWHM`` (Forman et al., MRM 1995,
  doi:10.1002/mrm.1910330508): per axis, the variance of first differences between neighbour
  voxels inside the brain mask against twice the variance of the voxels gives the lag-one
  correlation ``r``, and a Gaussian kernel with that correlation has
  ``FWHM = sqrt(-2 ln 2 / ln r)`` voxels (:func:`estimate_fwhm`). Reported, as MRIQC 24 does,
  in voxels (mm / spacing); ``fwhm_avg`` is the mean of the three axes.
- ``inu_med``, ``inu_range``: median and 95th-5th percentile range of the N4 bias field over
  the brain (as MRIQC's ``StructuralQC``).
- ``tpm_overlap_*``: fuzzy Jaccard overlap, sum of minima over sum of maxima, of our tissue
  maps with the template's tissue priors carried to native space.

Extensions (not MRIQC keys): ``gsr`` and ``gsr_{x,y,z}``, the ghost-to-signal ratio along the
phase-encoding axis (:func:`compute_ghost_ratio`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_app.arrays import bounding_box
from bids_app.errors import InputDataError
from bids_app.qc.masks import BackgroundMasks, background_masks, box_dilate, voxel_sizes

#: MRIQC's labels of the three brain tissues, in FSL FAST's order (csf, gm, wm).
TISSUE_KEYS = {"csf": "CSF", "gm": "GM", "wm": "WM"}

#: Which image each metric is computed on (MRIQC 24 conventions).
METRIC_IMAGE = {
    "summary_*": "INU-corrected T1w, WM median scaled to 1000; pure tissue (fraction > 0.85, eroded), air mask for bg",
    "snr_*": "INU-corrected, scaled T1w (pure-tissue median / SD)",
    "snrd_*": "INU-corrected, scaled T1w (tissue median / air MAD)",
    "cnr": "INU-corrected, scaled T1w (WM, GM and air statistics)",
    "cjv": "INU-corrected, scaled T1w (WM and GM median and MAD)",
    "efc": "INU-corrected, scaled T1w, without zero-filled regions",
    "fber": "INU-corrected, scaled T1w: head mask vs. outside (without zero-filled regions)",
    "wm2max": "INU-corrected, scaled T1w",
    "qi_1": "conformed T1w (artifact voxels in the hat mask)",
    "qi_2": "conformed T1w in the hat mask (chi-square fit of the noise)",
    "fwhm_*": "conformed T1w inside the brain mask (AFNI 3dFWHMx classic estimator), in voxels",
    "inu_*": "N4 bias field inside the brain (dseg > 0)",
    "icvs_*": "tissue partial-volume maps (probseg)",
    "rpve_*": "tissue partial-volume maps (probseg)",
    "tpm_overlap_*": "tissue maps vs. template tissue priors in native space",
    "size_*, spacing_*": "conformed T1w header",
    "gsr, gsr_*": "conformed T1w: N/2-shifted head mask outside the head vs. the head",
}

#: A voxel counts as pure tissue for the summary statistics above this fraction (MRIQC <= 23).
PURE_TISSUE = 0.85

#: Fewest voxels an eroded tissue mask may keep before the un-eroded one is used instead.
MIN_TISSUE_VOXELS = 1000

#: The INU-corrected T1w is scaled so that the median of its eroded white matter is this.
HARMONIZED_WM = 1000.0

#: Voxels with a WM fraction above this (then eroded) define the white matter of the scaling.
WM_THRESHOLD = 0.9

#: ``art_qi2`` fits its kernel density and chi-square model to this many background voxels
#: (MRIQC: 300000). Its KDE costs ~0.1 ms per voxel: 300000 take 30 s, 20000 take 1.5-2 s; on
#: pumi-minitest and ds000011 sub-01 qi_2 moved by at most 0.0006 (0.0007 -> 0.0008 and
#: 0.0012 -> 0.0018), well inside ABIDE's interquartile range (0.0015-0.0079).
QI2_MAX_VOXELS = 20000

#: The head mask is grown by this much (mm) before looking for ghosts outside it.
GHOST_MARGIN_MM = 4.0


# ------------------------------------------------------------------------------ loading


def _load(path, what: str) -> nb.Nifti1Image:
    if path is None:
        raise InputDataError(f"QC needs the {what}, but no file was given.", "Pass the path of the step's output.")
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"QC input not found: {path} ({what}).", "Re-run the participant step that writes it.")
    try:
        return nb.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputDataError(f"QC input {path} ({what}) is not a readable NIfTI image: {exc}.",
                             "Re-run the participant step that writes it.") from exc


def _as_image(source, what: str) -> nb.Nifti1Image:
    """``source`` itself when it is an image, else the image loaded from that path."""
    return source if isinstance(source, nb.Nifti1Image) else _load(source, what)


def _on_grid(img: nb.Nifti1Image, reference: nb.Nifti1Image, path, what: str) -> np.ndarray:
    """Data of ``img`` as float32, after checking it shares ``reference``'s voxel grid."""
    if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, atol=1e-3):
        name = path if isinstance(path, (str, Path)) else "(in-memory image)"
        raise InputDataError(f"QC input {name} ({what}) is not on the T1w grid "
                             f"(shape {img.shape[:3]} vs {reference.shape[:3]}).",
                             "Give images from the same participant run, all in native T1w space.")
    data = np.asanyarray(img.dataobj)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    floating = data.dtype.kind == "f"
    data = data.astype(np.float32, copy=False)
    return np.nan_to_num(data, copy=False) if floating else data


# ------------------------------------------------------------------------------ metrics


def erode18(mask: np.ndarray) -> np.ndarray:
    """One binary erosion by the 18-connected 3x3x3 element, computed in the mask's bounding box."""
    eroded = np.zeros_like(mask, dtype=bool)
    if not mask.any():
        return eroded
    box = bounding_box(mask, 1)
    eroded[box] = ndimage.binary_erosion(mask[box], structure=ndimage.generate_binary_structure(3, 2))
    return eroded


def harmonize(corrected: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """INU-corrected data scaled to a WM median of :data:`HARMONIZED_WM`, negatives set to 0
    (MRIQC's ``Harmonize``: WM fraction > 0.9, eroded with an 18-connected element)."""
    core = wm > WM_THRESHOLD
    if not core.any():
        raise InputDataError("The white-matter map has no voxel above 0.9: the tissue segmentation failed.",
                             "Check the brain mask and the segmentation of this participant.")
    eroded = erode18(core)
    values = corrected[eroded] if eroded.sum() >= 10 else corrected[core]
    out = corrected * np.float32(HARMONIZED_WM / float(np.median(values)))
    out[out < 0] = 0
    return out


def estimate_fwhm(data: np.ndarray, mask: np.ndarray, zooms) -> np.ndarray:
    """Smoothness (FWHM, mm) along each voxel axis, AFNI 3dFWHMx's classic estimator.

    For each axis, ``r = 1 - var(x[i+1] - x[i]) / (2 var(x))`` over neighbour pairs inside
    ``mask`` is the lag-one autocorrelation; a Gaussian kernel of SD ``s`` voxels gives
    ``r = exp(-1 / (4 s^2))``, hence ``FWHM = sqrt(8 ln 2) s = sqrt(-2 ln 2 / ln r)`` voxels.
    An axis whose ``r`` is not in (0, 1) gives NaN.
    """
    data = np.asarray(data, dtype=np.float64)
    mask = np.asarray(mask, bool)
    values = data[mask]
    if values.size < 2:
        return np.full(3, np.nan)
    variance = values.var()
    out = np.full(3, np.nan)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        pairs = mask[tuple(lo)] & mask[tuple(hi)]
        if not pairs.any() or variance <= 0:
            continue
        diff = (data[tuple(hi)] - data[tuple(lo)])[pairs]
        r = 1.0 - 0.5 * float(np.mean(diff * diff)) / variance
        if 0.0 < r < 1.0:
            out[axis] = np.sqrt(-2.0 * np.log(2.0) / np.log(r)) * float(zooms[axis])
    return out


def fuzzy_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Fuzzy Jaccard index of two probability maps: sum(min) / sum(max)."""
    a = np.clip(np.asarray(a, np.float32), 0, None)
    b = np.clip(np.asarray(b, np.float32), 0, None)
    support = (a > 0) | (b > 0)
    a, b = a[support], b[support]
    den = np.maximum(a, b).sum(dtype=np.float64)
    return float(np.minimum(a, b).sum(dtype=np.float64) / den) if den > 0 else float("nan")


def inu_metrics(bias: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """``inu_med`` and ``inu_range`` (95th - 5th percentile) of the bias field inside ``brain``."""
    values = bias[brain]
    if values.size == 0:
        return {"inu_med": float("nan"), "inu_range": float("nan")}
    p05, med, p95 = np.percentile(values, [5, 50, 95])
    return {"inu_med": float(med), "inu_range": float(abs(p95 - p05))}


def tissue_mask(fraction: np.ndarray, erode: bool = True) -> np.ndarray:
    """Pure-tissue voxels of a partial-volume map: fraction above :data:`PURE_TISSUE`, eroded
    once by the 18-connected 3x3x3 element. The erosion is skipped when it would leave fewer
    than :data:`MIN_TISSUE_VOXELS` (thin classes on coarse grids)."""
    mask = fraction > PURE_TISSUE
    if not erode:
        return mask
    eroded = erode18(mask)
    return eroded if eroded.sum() >= MIN_TISSUE_VOXELS else mask


def summary_of(values: np.ndarray) -> dict[str, float]:
    """mean, median, p95, p05, kurtosis (Fisher), stdv, MAD (normalised, about the median), n."""
    from scipy.stats import kurtosis
    from statsmodels.robust.scale import mad

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(("mean", "median", "p95", "p05", "k", "stdv", "mad"), float("nan")) | {"n": 0.0}
    p05, median, p95 = np.percentile(values, [5, 50, 95])
    return {"mean": float(values.mean()), "median": float(median), "p95": float(p95), "p05": float(p05),
            "k": float(kurtosis(values)), "stdv": float(values.std()), "mad": float(mad(values, center=median)),
            "n": float(values.size)}


def tissue_summary(data: np.ndarray, fractions: dict[str, np.ndarray],
                   background: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Summary statistics of each tissue's pure voxels (:func:`tissue_mask`) and of the
    background mask (``"bg"``, not eroded), under the convention of the MRIQC releases that
    produced the ABIDE and DS030 rating tables (pve > 0.85, eroded; unweighted statistics).

    MRIQC 24 instead weights every voxel by its partial-volume fraction. Boundary voxels then
    widen each tissue's distribution (on ds000011 snr_wm falls from ~14 to ~8), so the
    metrics leave the range of the tables that the classifier and the reports' percentiles
    are built from."""
    out = {label: summary_of(data[tissue_mask(fraction)]) for label, fraction in fractions.items()}
    if background is not None:
        out["bg"] = summary_of(data[background])
    return out


@contextlib.contextmanager
def _mriqc_runtime():
    """Let the ``mriqc.qc.anatomical`` functions run outside MRIQC, without side effects.

    ``art_qi2`` imports nireports' plotting at call time (even with ``save_plot=False``),
    writes ``error.svg`` in the working directory and reseeds numpy's global generator;
    ``snr_dietrich`` logs through MRIQC's configured logger. Inside this block: a stand-in
    for the plotting module when nireports is absent (never called with ``save_plot=False``),
    a temporary working directory, the caller's random state restored, a logger for MRIQC.
    """
    from mriqc import config

    stubs = []
    try:
        import nireports.reportlets.nuisance  # noqa: F401
    except ImportError:
        for name in ("nireports", "nireports.reportlets", "nireports.reportlets.nuisance"):
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                stubs.append(name)
        sys.modules["nireports.reportlets.nuisance"].plot_qi2 = lambda *args, **kwargs: None
    logger_missing = config.loggers.interface is None
    if logger_missing:
        config.loggers.interface = logging.getLogger("bids_app.qc.mriqc")
    state = np.random.get_state()
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory(prefix="morphobids-qc-") as tmp:
            os.chdir(tmp)
            try:
                yield
            finally:
                os.chdir(cwd)
    finally:
        np.random.set_state(state)
        if logger_missing:
            config.loggers.interface = None
        for name in stubs:
            sys.modules.pop(name, None)


def _flatten(prefix: str, values: dict) -> dict[str, float]:
    return {f"{prefix}_{key}": float(value) for key, value in values.items()}


def intensity_metrics(data: np.ndarray, pvms: dict[str, np.ndarray], masks: BackgroundMasks,
                      head: np.ndarray) -> dict[str, float]:
    """summary, snr, snrd, cnr, cjv, fber, efc, wm2max, qi_1 on the harmonized INU-corrected data
    (``pvms``: "csf", "gm", "wm" partial-volume maps), as MRIQC's ``StructuralQC``."""
    from mriqc.qc import anatomical as mq

    stats = tissue_summary(data, pvms, background=masks.air)
    out: dict[str, float] = {}
    for label in ("bg", "csf", "gm", "wm"):
        out.update(_flatten(f"summary_{label}", stats[label]))
    snr = {t: mq.snr(stats[t]["median"], stats[t]["stdv"], stats[t]["n"]) for t in ("csf", "wm", "gm")}
    snr["total"] = float(np.mean(list(snr.values())))
    snrd = {t: mq.snr_dietrich(stats[t]["median"], mad_air=stats["bg"]["mad"], sigma_air=stats["bg"]["stdv"])
            for t in ("csf", "wm", "gm")}
    snrd["total"] = float(np.mean(list(snrd.values())))
    out.update(_flatten("snr", snr))
    out.update(_flatten("snrd", snrd))
    wm, gm, bg = stats["wm"], stats["gm"], stats["bg"]
    out["cnr"] = mq.cnr(wm["median"], gm["median"], bg["stdv"], wm["stdv"], gm["stdv"])
    out["cjv"] = mq.cjv(wm["median"], gm["median"], wm["mad"], gm["mad"])
    empty = masks.empty.astype(np.uint8)
    out["fber"] = float(mq.fber(data, head.astype(np.uint8), empty))
    out["efc"] = float(mq.efc(data, empty))
    out["wm2max"] = mq.wm2max(data, wm["median"])
    out["qi_1"] = mq.art_qi1(masks.air, masks.artifacts)
    return out


def tissue_metrics(pvms: dict[str, np.ndarray], dseg: np.ndarray) -> dict[str, float]:
    """icvs_* (``volume_fraction``) and rpve_* (``rpve``) from the partial-volume maps."""
    from mriqc.qc import anatomical as mq

    ordered = [pvms[t] for t in ("csf", "gm", "wm")]  # FSL FAST order, as mriqc indexes them
    out = _flatten("icvs", mq.volume_fraction(ordered))
    out.update(_flatten("rpve", mq.rpve([p.copy() for p in ordered], dseg)))  # rpve edits its input
    return out


def fwhm_metrics(raw: np.ndarray, brain: np.ndarray, zooms) -> dict[str, float]:
    """fwhm_{x,y,z,avg} in voxels, as MRIQC 24 reports AFNI's estimate (mm / spacing)."""
    fwhm = estimate_fwhm(raw, brain, zooms) / np.asarray(zooms, float)
    return {"fwhm_x": float(fwhm[0]), "fwhm_y": float(fwhm[1]), "fwhm_z": float(fwhm[2]),
            "fwhm_avg": float(np.mean(fwhm))}


# ------------------------------------------------------------------------------ ghosts


def phase_encoding_axis(direction: str, orientation: str | None = None) -> int:
    """Axis (0, 1, 2 of the RAS-conformed image) of a BIDS ``PhaseEncodingDirection``.

    ``direction`` ("i", "j-", ...) refers to the voxel axes of the original image, whose
    orientation codes (e.g. "LAS", "PSR", as ``nibabel.aff2axcodes`` gives and
    :class:`bids_app.participant.conform.ConformInfo` records) map them to the x, y, z
    axes of the conformed image; without ``orientation`` the image is taken as already RAS.
    """
    letter = str(direction).strip().rstrip("-")
    if letter not in ("i", "j", "k"):
        raise InputDataError(f"Unknown PhaseEncodingDirection {direction!r}.",
                             "Use one of i, i-, j, j-, k, k- in the T1w sidecar.")
    axis = "ijk".index(letter)
    if orientation is None:
        return axis
    code = str(orientation)[axis].upper()
    for ras_axis, pair in enumerate(("LR", "PA", "IS")):
        if code in pair:
            return ras_axis
    raise InputDataError(f"Unknown orientation code {orientation!r}.", "Give three of L/R, A/P, I/S, e.g. 'LAS'.")


def candidate_ghost_axes(zooms) -> list[int]:
    """Axes to search for ghosts when the phase-encoding axis is unknown: the in-plane axes.

    The slice axis of a 2D stack is the axis whose spacing differs from the other two (which
    are equal in-plane); a 3D acquisition (all spacings equal, or all different) phase-encodes
    along two axes that the header does not name, so all three are searched.
    """
    z = np.asarray(zooms, float)
    for axis in range(3):
        others = [z[a] for a in range(3) if a != axis]
        if abs(others[0] - others[1]) <= 0.01 * others[0] and abs(z[axis] - others[0]) > 0.01 * others[0]:
            return [a for a in range(3) if a != axis]
    return [0, 1, 2]


def ghost_ratio_along(data: np.ndarray, head: np.ndarray, outside: np.ndarray, axis: int) -> float:
    """Ghost-to-signal ratio along one axis (Giannelli et al., J Appl Clin Med Phys 2010,
    doi:10.1120/jacmp.v11i4.3237, as MRIQC's functional ``gsr``).

    The ghost region is the head mask shifted circularly by N/2 along ``axis``, within
    ``outside`` (the air: outside the head grown by :data:`GHOST_MARGIN_MM`, since the scalp's
    blurred edge is no ghost); the rest of ``outside`` is the reference background. Returns
    (mean ghost - mean background) / mean head signal, or NaN when the shifted head lands
    (nearly) nowhere outside the head.
    """
    shifted = np.roll(head, head.shape[axis] // 2, axis=axis)
    ghost = shifted & outside
    background = outside & ~shifted
    if ghost.sum() < 10 or background.sum() < 10:
        return float("nan")
    signal = float(data[head].mean())
    if signal <= 0:
        return float("nan")
    return float((data[ghost].mean() - data[background].mean()) / signal)


def ghost_ratios(data: np.ndarray, head: np.ndarray, zooms, axes, exclude: np.ndarray | None = None) -> dict:
    """``gsr_<axis>`` for each of ``axes`` and ``gsr``, their maximum (see :func:`ghost_ratio_along`)."""
    margin = np.maximum(1, np.rint(GHOST_MARGIN_MM / np.asarray(zooms, float))).astype(int)
    outside = ~box_dilate(head, margin)
    if exclude is not None:
        outside &= ~exclude
    out = {f"gsr_{'xyz'[a]}": ghost_ratio_along(data, head, outside, a) for a in axes}
    values = [v for v in out.values() if np.isfinite(v)]
    out["gsr"] = float(max(values)) if values else float("nan")
    return out


def compute_ghost_ratio(t1w: nb.Nifti1Image | str | Path, head_mask: nb.Nifti1Image | str | Path,
                        pe_direction: str | None = None, orientation: str | None = None,
                        exclude: np.ndarray | None = None) -> dict[str, float]:
    """Ghost-to-signal ratio of a conformed T1w: ``gsr_<axis>`` for each axis searched and ``gsr``.

    With a ``PhaseEncodingDirection`` (and the original orientation, see
    :func:`phase_encoding_axis`) only that axis is measured; otherwise the in-plane axes
    (:func:`candidate_ghost_axes`) are, and ``gsr`` is their maximum. ``exclude``: voxels to
    leave out of both ghost and background (zero-filled regions).
    """
    img = _as_image(t1w, "conformed T1w")
    data = _on_grid(img, img, t1w, "conformed T1w")
    head = _on_grid(_as_image(head_mask, "head mask"), img, head_mask, "head mask") > 0
    zooms = voxel_sizes(img.affine)
    axes = [phase_encoding_axis(pe_direction, orientation)] if pe_direction else candidate_ghost_axes(zooms)
    return ghost_ratios(data, head, zooms, axes, exclude)


# ------------------------------------------------------------------------------ API


@dataclass(frozen=True)
class QCInputs:
    """The arrays the IQMs need, all on the conformed T1w grid (see :func:`load_inputs`)."""

    affine: np.ndarray
    raw: np.ndarray  # conformed T1w, not bias-corrected
    corrected: np.ndarray  # INU-corrected T1w
    bias: np.ndarray  # multiplicative N4 field
    head: np.ndarray
    brain: np.ndarray
    pvms: dict[str, np.ndarray]  # "csf", "gm", "wm" partial-volume maps
    dseg: np.ndarray
    priors: dict[str, np.ndarray] | None = None  # "csf", "gm", "wm" template priors in native space


def load_inputs(t1w_path, head_mask_path, brain_mask_path, probseg_paths: dict[str, str], dseg_path,
                biasfield_path, template_tpms_native: dict | None = None,
                inu_corrected_path=None) -> QCInputs:
    """Read and check the inputs of :func:`compute_iqms` (all must share the T1w grid)."""
    t1w = _load(t1w_path, "conformed T1w")
    raw = _on_grid(t1w, t1w, t1w_path, "conformed T1w")
    if not np.any(raw > 0):
        raise InputDataError(f"The T1w {t1w_path} has no positive intensity.", "Check the input image.")

    def grid(source, what: str) -> np.ndarray:
        return _on_grid(_as_image(source, what), t1w, source, what)

    head = grid(head_mask_path, "head mask") > 0
    brain = grid(brain_mask_path, "brain mask") > 0
    if head.sum() < 100 or brain.sum() < 100:
        raise InputDataError(f"The head mask {head_mask_path} or brain mask {brain_mask_path} is (nearly) empty.",
                             "Re-run bias correction and brain extraction for this participant.")
    missing = [t for t in TISSUE_KEYS.values() if t not in probseg_paths]
    if missing:
        raise InputDataError(f"QC needs GM, WM and CSF tissue maps; missing {', '.join(missing)}.",
                             "Pass probseg_paths with GM, WM and CSF.")
    pvms = {key: np.clip(grid(probseg_paths[label], f"{label} probseg"), 0, 1) for key, label in TISSUE_KEYS.items()}
    bias = grid(biasfield_path, "bias field")
    if inu_corrected_path is not None:
        corrected = grid(inu_corrected_path, "INU-corrected T1w")
    else:
        corrected = raw / np.where(bias > 0, bias, 1.0).astype(np.float32)
    priors = None
    if template_tpms_native:
        priors = {key: grid(template_tpms_native.get(label), f"template {label} prior")
                  for key, label in TISSUE_KEYS.items()}
    return QCInputs(affine=t1w.affine, raw=raw, corrected=corrected, bias=bias, head=head, brain=brain, pvms=pvms,
                    dseg=grid(dseg_path, "dseg").astype(np.uint8), priors=priors)


def iqms_of(inputs: QCInputs, pe_direction: str | None = None, orientation: str | None = None) -> dict[str, float]:
    """All IQMs from loaded inputs (see :func:`compute_iqms`)."""
    from mriqc.qc.anatomical import art_qi2

    zooms = voxel_sizes(inputs.affine)
    masks = background_masks(inputs.raw, inputs.head, inputs.brain, inputs.affine)
    data = harmonize(inputs.corrected, inputs.pvms["wm"])
    with _mriqc_runtime():
        iqms = intensity_metrics(data, inputs.pvms, masks, inputs.head)
        qi2, _ = art_qi2(inputs.raw, masks.hat, max_voxels=QI2_MAX_VOXELS, save_plot=False)
    iqms["qi_2"] = float(qi2)
    iqms.update(fwhm_metrics(inputs.raw, inputs.brain, zooms))
    iqms.update(tissue_metrics(inputs.pvms, inputs.dseg))
    iqms.update(inu_metrics(inputs.bias, inputs.dseg > 0))
    if inputs.priors is not None:
        iqms.update({f"tpm_overlap_{k}": fuzzy_overlap(inputs.pvms[k], inputs.priors[k]) for k in TISSUE_KEYS})
    iqms.update({f"size_{a}": int(n) for a, n in zip("xyz", inputs.raw.shape)})
    iqms.update({f"spacing_{a}": float(z) for a, z in zip("xyz", zooms)})
    axes = [phase_encoding_axis(pe_direction, orientation)] if pe_direction else candidate_ghost_axes(zooms)
    iqms.update(ghost_ratios(inputs.raw, inputs.head, zooms, axes, exclude=masks.empty))
    return dict(sorted(iqms.items()))


def compute_iqms(t1w_path, head_mask_path, brain_mask_path, probseg_paths: dict[str, str], dseg_path,
                 biasfield_path, template_tpms_native: dict | None = None, *, inu_corrected_path=None,
                 pe_direction: str | None = None, orientation: str | None = None) -> dict[str, float]:
    """All IQMs of one T1w under MRIQC's key names (see the module docstring and :data:`METRIC_IMAGE`).

    ``t1w_path``: the conformed T1w before bias correction; ``probseg_paths``: {"GM", "WM",
    "CSF"} partial-volume maps; ``dseg_path``: hard labels (brain where > 0);
    ``biasfield_path``: the multiplicative N4 field; ``template_tpms_native``: {"GM", "WM",
    "CSF"} template priors on the T1w grid, paths or images (adds ``tpm_overlap_*``);
    ``inu_corrected_path``: the N4-corrected T1w (default: T1w / field); ``pe_direction``,
    ``orientation``: see :func:`compute_ghost_ratio`. Raises :class:`InputDataError` for a
    missing, unreadable or misaligned input.
    """
    inputs = load_inputs(t1w_path, head_mask_path, brain_mask_path, probseg_paths, dseg_path, biasfield_path,
                         template_tpms_native, inu_corrected_path)
    return iqms_of(inputs, pe_direction, orientation)
