"""A synthetic participant-level derivative cohort with a known grey-matter loss.

The group level reads only derivatives (modulated GM maps, tissue and ROI tables,
IQM/QC JSONs) and ``participants.tsv``; this module writes them, named by
:mod:`bids_app.bids.derivatives`, without running the participant level. Each
participant's brain is the MNI152NLin2009cAsym template seen through a simple,
exactly known model:

- *head size*: native space is the template scaled isotropically, with a volume
  factor ``j`` (the Jacobian determinant of template -> native; TIV = ``j`` x the
  template brain-mask volume). Men are 4 % larger on average than women;
- *anatomical variability*: the GM prior times ``1 + sd * f``, with ``f`` a smooth
  Gaussian random field of unit variance (``fwhm_mm``), the way the residual
  variability of VBM data is modelled as a smooth field (Worsley et al., Hum Brain
  Mapp 1996, 4:58-73); WM and CSF share the rest of each voxel (GM + WM + CSF = 1
  inside the brain mask) in a proportion perturbed by a weaker field; GM declines by
  ``age_slope`` per year of age (relative, 0 at 55 years);
- *atrophy*: patients' GM is multiplied by ``1 - atrophy`` inside the AAL3 labels of
  ``region`` (default both precentral gyri, the motor-cortex pattern of ALS); the lost
  GM becomes CSF, so TIV is unchanged.

The outputs follow the participant level's definitions
(:mod:`bids_app.participant.morphometry`): the modulated GM map is the native GM
probability times ``j`` on the template grid (Good et al., NeuroImage 2001,
14:21-36), and the tissue and ROI tables are computed by the
project's own :func:`tissue_volumes` and :func:`roi_volumes` on the native grid (the
template arrays with voxels ``j**(1/3)`` times larger), so that every ROI ``gm_ml``
equals the sum of the modulated GM in the label times the template voxel volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from scipy import ndimage

from bids_app.bids import derivatives as d
from bids_app.errors import UsageError
from bids_app.participant.morphometry import data_dictionary, roi_volumes, tissue_volumes
from bids_app.resources import TEMPLATE, get_atlas, get_template

ATLASES = ("AAL3", "Mori")
TISSUES = ("GM", "WM", "CSF")
#: Mean volume factor (template -> native): TIV about 1450 mL for the 1887 mL template brain mask.
MEAN_JACOBIAN = 0.77
MODULATION_NOTE = "Jacobian determinant of the template-to-T1w mapping (tissue volume preserved)"

PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Unique participant identifier"},
    "age": {"Description": "Age at scan (drawn at random; grey matter declines slightly with it)", "Units": "year"},
    "sex": {"Description": "Sex (drawn at random; men have larger heads on average)",
            "Levels": {"M": "male", "F": "female"}},
    "group": {"Description": "Diagnostic group of the simulation",
              "Levels": {"control": "no atrophy", "patient": "grey matter of the planted region reduced"}},
}


def smooth_field(rng: np.random.Generator, shape: Sequence[int], voxel_mm: float, fwhm_mm: float) -> np.ndarray:
    """A smooth Gaussian random field of zero mean and unit SD on ``shape`` (float32).

    White noise on a grid of about 4 mm is smoothed with a Gaussian of ``fwhm_mm`` and
    interpolated (trilinear) to the full grid: the same field as smoothing at full
    resolution for kernels much wider than 4 mm, at a fraction of the cost.
    """
    step = max(1, int(round(4.0 / voxel_mm)))
    coarse = tuple(int(math.ceil(n / step)) + 1 for n in shape)
    sigma = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / (voxel_mm * step)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma, mode="wrap")
    for axis, n in enumerate(shape):
        field = _upsample(field, step, axis)[(slice(None),) * axis + (slice(0, n),)]
    field -= field.mean()
    field /= field.std()
    return field


def _upsample(values: np.ndarray, step: int, axis: int) -> np.ndarray:
    """Linear interpolation by an integer factor along ``axis`` (samples at multiples of ``step``)."""
    if step == 1:
        return values
    moved = np.moveaxis(values, axis, 0)
    fine = np.empty(((moved.shape[0] - 1) * step, *moved.shape[1:]), values.dtype)
    for r in range(step):
        w = np.float32(r / step)
        fine[r::step] = moved[:-1] * (1 - w) + moved[1:] * w
    return np.moveaxis(fine, 0, axis)


def tissue_maps(priors: dict[str, np.ndarray], brain: np.ndarray, gm_gain: np.ndarray, wm_gain: np.ndarray,
                csf_gain: np.ndarray, loss: np.ndarray | None) -> dict[str, np.ndarray]:
    """GM/WM/CSF probabilities of one participant on the template grid.

    GM is the prior times ``gm_gain`` (clipped to [0, 1]); WM and CSF (priors times their
    gains) share the rest of each brain voxel in proportion. ``loss`` (0-1, or None) is the
    fraction of GM removed and given to CSF. Every brain voxel sums to one.
    """
    gm = np.clip(priors["GM"] * gm_gain, 0.0, 1.0) * brain
    wm0 = np.clip(priors["WM"] * wm_gain, 0.0, None)
    csf0 = np.clip(priors["CSF"] * csf_gain, 0.0, None)
    rest = (1.0 - gm) * brain
    total = wm0 + csf0
    share = np.divide(wm0, total, out=np.zeros_like(total), where=total > 0)
    wm = rest * share
    csf = rest - wm
    if loss is not None:
        lost = gm * loss
        gm = gm - lost
        csf = csf + lost
    return {"GM": gm.astype(np.float32), "WM": wm.astype(np.float32), "CSF": csf.astype(np.float32)}


def _quality(rng: np.random.Generator, fail: bool) -> tuple[dict, dict]:
    """MRIQC-style IQMs and a QC verdict; failing scans get a high CJV and a low p_accept."""
    cjv = rng.normal(0.62, 0.04) if fail else rng.normal(0.42, 0.03)
    iqms = {
        "cjv": round(float(cjv), 4),
        "cnr": round(float(rng.normal(1.4 if fail else 2.6, 0.2)), 4),
        "efc": round(float(rng.normal(0.52, 0.03)), 4),
        "fber": round(float(rng.lognormal(7.5, 0.3)), 2),
        "snr_total": round(float(rng.normal(6.0 if fail else 11.0, 0.8)), 3),
        "wm2max": round(float(rng.normal(0.6, 0.05)), 4),
        "qi_1": round(float(abs(rng.normal(0.0, 0.002))), 5),
    }
    if fail:
        qc = {"verdict": "fail", "p_accept": round(float(rng.uniform(0.02, 0.2)), 3),
              "flags": [{"check": "cjv", "level": "fail",
                         "reason": f"CJV {iqms['cjv']:.2f} above 0.55 (motion or poor contrast)"}]}
    else:
        qc = {"verdict": "pass", "p_accept": round(float(rng.uniform(0.7, 0.99)), 3), "flags": []}
    return iqms, qc


def _participants(rng: np.random.Generator, n_per_group: int) -> pd.DataFrame:
    n = 2 * n_per_group
    group = np.array(["control"] * n_per_group + ["patient"] * n_per_group)[rng.permutation(n)]
    sex = np.array(["F", "M"] * n_per_group)[rng.permutation(n)]
    return pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(1, n + 1)],
                         "age": rng.integers(40, 76, n), "sex": sex, "group": group})


def _write_bids(bids: Path, participants: pd.DataFrame) -> None:
    bids.mkdir(parents=True, exist_ok=True)
    d.write_json(bids / "dataset_description.json", {
        "Name": "MorphoBIDS synthetic group cohort", "BIDSVersion": d.BIDS_VERSION, "DatasetType": "raw",
        "Authors": ["MorphoBIDS tests"]})
    d.write_tsv(bids / "participants.tsv", participants)
    d.write_json(bids / "participants.json", PARTICIPANTS_JSON)


@dataclass(frozen=True)
class _Grid:
    """Template arrays cropped to the box holding the brain mask and every atlas label."""

    shape: tuple[int, ...]  # full template grid
    affine: np.ndarray  # full template grid
    box: tuple[slice, ...]
    brain: np.ndarray
    priors: dict[str, np.ndarray]
    atlases: dict[str, np.ndarray]
    labels: dict[str, pd.DataFrame]

    @property
    def voxel_mm(self) -> float:
        return float(nb.affines.voxel_sizes(self.affine)[0])

    def full(self, values: np.ndarray) -> np.ndarray:
        """``values`` of the box placed on the full template grid (zeros elsewhere)."""
        out = np.zeros(self.shape, values.dtype)
        out[self.box] = values
        return out


def _load_grid(resolution: int) -> _Grid:
    """Brain mask, tissue priors and the AAL3/Mori labels of the template at ``resolution`` mm."""
    brain_img = nb.load(get_template(TEMPLATE, resolution, desc="brain", suffix="mask"))
    brain = np.asanyarray(brain_img.dataobj) > 0
    atlases = {name: get_atlas(name, TEMPLATE, resolution=resolution) for name in ATLASES}
    label_images = {name: np.asanyarray(nb.load(a.dseg).dataobj).astype(np.int16) for name, a in atlases.items()}
    inside = brain | np.logical_or.reduce([img > 0 for img in label_images.values()])
    box = ndimage.find_objects(inside.astype(np.int8))[0]
    priors = {t: np.asanyarray(nb.load(get_template(TEMPLATE, resolution, "probseg", label=t)).dataobj)[box]
              .astype(np.float32) for t in TISSUES}
    return _Grid(brain.shape, brain_img.affine, box, brain[box].astype(np.float32), priors,
                 {name: img[box] for name, img in label_images.items()},
                 {name: a.labels_table()[["index", "name"]] for name, a in atlases.items()})


def make_cohort(root: str | Path, n_per_group: int = 10, atrophy: float = 0.10, seed: int = 0,
                resolution: int = 2, region: Sequence[str] = ("Precentral_L", "Precentral_R"),
                sessions: bool | Sequence[str] = False, *, gm_sd: float = 0.07, fwhm_mm: float = 15.0,
                tissue_sd: float = 0.04, age_slope: float = -0.0015, head_sd: float = 0.07,
                rescan_sd: float = 0.01, n_fail: int = 2) -> dict:
    """Write a two-group derivative cohort under ``root``; return its paths and the truth.

    ``root/bids`` holds ``dataset_description.json``, ``participants.tsv`` (age, sex,
    group) and ``participants.json``; ``root/derivatives`` the participant-level outputs of
    ``2 * n_per_group`` participants (controls and patients in random order): the modulated
    GM map (``std_modulated``, template space, ``res-<resolution>``), the tissue table, the
    AAL3 and Mori ROI tables (with their JSON data dictionaries), IQM and QC JSONs
    (``n_fail`` scans fail QC; their maps are not degraded), and a placeholder
    ``preproc_t1w`` that marks the participant as processed. ``sessions`` (True: "a" and
    "b", or a list of labels) repeats each participant in every session, with an
    independent scan-rescan field of SD ``rescan_sd``. The same ``seed`` gives the same
    files.

    Returns a dict: ``bids_dir``, ``output_dir``, ``participants`` (DataFrame),
    ``patients``/``controls`` (participant ids), ``sessions`` (labels or ``[None]``),
    ``units`` (one dict per participant and session: ``participant_id``, ``session_id``,
    ``group``, ``jacobian``, ``modulated`` path), ``modulated`` (the paths in unit order),
    ``region`` (name -> AAL3 index), ``atrophy``, ``realised_loss`` (DataFrame: the GM
    fraction each patient unit lost per region, computed from the maps), ``roi_gm``
    (DataFrame of the AAL3 ``gm_ml`` of each unit, one column per region), ``qc_fail``
    (ids), ``template``, ``resolution``, ``atlases``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    bids, out = root / "bids", root / "derivatives"
    session_labels = (["a", "b"] if sessions is True else list(sessions)) if sessions else [None]
    grid = _load_grid(resolution)
    aal3 = grid.labels["AAL3"].set_index("name")["index"]
    unknown = [r for r in region if r not in aal3.index]
    if unknown:
        raise UsageError(f"region(s) {', '.join(unknown)} are not labels of the AAL3 atlas.",
                         "Use AAL3 region names such as Precentral_L (see the atlas's dseg.tsv).")
    region_index = {r: int(aal3[r]) for r in region}
    region_masks = {r: grid.atlases["AAL3"] == i for r, i in region_index.items()}
    loss = (atrophy * np.isin(grid.atlases["AAL3"], list(region_index.values()))).astype(np.float32)
    shape = grid.brain.shape

    participants = _participants(rng, n_per_group)
    _write_bids(bids, participants)
    d.init_derivatives(out, bids)
    n_units = len(participants) * len(session_labels)
    fail_units = set(rng.choice(n_units, size=min(n_fail, n_units), replace=False).tolist())

    units, losses, roi_gm, qc_fail = [], [], [], []
    for row in participants.itertuples(index=False):
        sex_factor = 1.04 if row.sex == "M" else 0.96
        jacobian = float(MEAN_JACOBIAN * sex_factor * math.exp(rng.normal(0.0, head_sd)))
        age_factor = 1.0 + age_slope * (row.age - 55)
        gm_gain = (1.0 + gm_sd * smooth_field(rng, shape, grid.voxel_mm, fwhm_mm)) * np.float32(age_factor)
        split = tissue_sd * smooth_field(rng, shape, grid.voxel_mm, fwhm_mm)  # WM/CSF balance of the rest
        patient = row.group == "patient"
        for session in session_labels:
            gain = gm_gain
            if session is not None:
                gain = gain * (1.0 + rescan_sd * smooth_field(rng, shape, grid.voxel_mm, fwhm_mm))
            maps = tissue_maps(grid.priors, grid.brain, gain, 1.0 + split, 1.0 - split, loss if patient else None)
            keys = {"participant_id": row.participant_id, "session_id": f"ses-{session}" if session else None}
            outputs = d.Outputs(out, row.participant_id.removeprefix("sub-"), session)
            written = _write_unit(out, outputs, maps, grid, jacobian, resolution)
            fail = len(units) in fail_units
            iqms, qc = _quality(rng, fail)
            d.write_json(outputs.path("iqms", contrast="T1w"), iqms)
            d.write_json(outputs.path("qc", contrast="T1w"), qc)
            if fail:
                qc_fail.append(row.participant_id)
            units.append({**keys, "group": row.group, "jacobian": jacobian, "modulated": written["modulated"]})
            roi_gm.append({**keys, **{r: written["roi_gm"][r] for r in region_index}})
            if patient:
                before = np.clip(grid.priors["GM"] * gain, 0.0, 1.0) * grid.brain
                losses.append({**keys, **{r: float(1.0 - maps["GM"][m].sum(dtype=np.float64)
                                                   / before[m].sum(dtype=np.float64))
                                          for r, m in region_masks.items()}})

    return {
        "bids_dir": bids,
        "output_dir": out,
        "participants": participants,
        "patients": participants.loc[participants["group"] == "patient", "participant_id"].tolist(),
        "controls": participants.loc[participants["group"] == "control", "participant_id"].tolist(),
        "sessions": session_labels,
        "units": units,
        "modulated": [u["modulated"] for u in units],
        "region": region_index,
        "atrophy": atrophy,
        "realised_loss": pd.DataFrame(losses),
        "roi_gm": pd.DataFrame(roi_gm),
        "qc_fail": qc_fail,
        "template": TEMPLATE,
        "resolution": resolution,
        "atlases": ATLASES,
    }


def _write_unit(out: Path, outputs: d.Outputs, maps: dict[str, np.ndarray], grid: _Grid, jacobian: float,
                resolution: int) -> dict:
    """Write one unit's derivatives; return the modulated map path and the AAL3 ``gm_ml`` by region name."""
    native_affine = grid.affine.copy()
    native_affine[:3, :3] *= jacobian ** (1.0 / 3.0)

    preproc = outputs.path("preproc_t1w")
    d.write_nifti(preproc, nb.Nifti1Image(np.zeros((2, 2, 2), np.int16), native_affine))
    d.write_json(d.sidecar_path(preproc), d.sidecar(
        "preproc_t1w", ["bids:raw:synthetic"], skull_stripped=False,
        Description="Placeholder of a synthetic participant (the group level reads only its presence)."))
    sources = [d.bids_uri(preproc, out, "morphobids")]

    modulated = outputs.path("std_modulated", template=TEMPLATE, res=d.resolution_label(resolution), label="GM")
    img = nb.Nifti1Image(grid.full(maps["GM"] * np.float32(jacobian)), grid.affine)
    img.header.set_xyzt_units("mm")
    d.write_nifti(modulated, img)
    d.write_json(d.sidecar_path(modulated), d.sidecar("std_modulated", sources, resolution_mm=resolution,
                                                      Modulation=MODULATION_NOTE))

    # native space = the (cropped) template grid with voxels jacobian**(1/3) times larger
    native = {t: nb.Nifti1Image(maps[t], native_affine) for t in TISSUES}
    tissue = tissue_volumes(native, nb.Nifti1Image(grid.brain.astype(np.uint8), native_affine))
    path = d.write_tsv(outputs.path("tissue_morph"), pd.DataFrame([tissue]))
    d.write_json(d.sidecar_path(path), {**data_dictionary("tissue"), "Sources": sources})
    roi_gm = {}
    for name, labels in grid.labels.items():
        table = roi_volumes(nb.Nifti1Image(grid.atlases[name], native_affine), labels, native)
        path = d.write_tsv(outputs.path("atlas_morph", atlas=name), table)
        columns = {k: v for k, v in data_dictionary("roi").items() if k in table.columns}
        d.write_json(d.sidecar_path(path), {**columns, "Sources": sources, "Atlas": name})
        if name == "AAL3":
            roi_gm = table.set_index("name")["gm_ml"].to_dict()
    return {"modulated": modulated, "roi_gm": roi_gm}


# --------------------------------------------------------------------------- one participant's outputs

#: Bias field of :func:`make_participant_outputs`: SD (relative) and smoothness (FWHM, mm).
BIAS_SD = 0.05
BIAS_FWHM_MM = 80.0


def abide_medians() -> dict[str, float]:
    """ABIDE's median of every MRIQC IQM (``p50`` of the table shipped with the QC classifier,
    computed from mriqc-learn's 1101 ABIDE scans)."""
    from bids_app.errors import ResourceError
    from bids_app.qc.classifier import DATA_DIR, REFERENCE_FILE

    path = DATA_DIR / REFERENCE_FILE
    try:
        table = pd.read_csv(path, sep="\t")
    except OSError as exc:
        raise ResourceError(f"The ABIDE IQM reference table {path} cannot be read ({exc}).",
                            "Reinstall MorphoBIDS (bids_app/data/qc ships with the package).") from None
    return {str(k): float(v) for k, v in zip(table["iqm"], table["p50"], strict=True)}


def _project_qc(iqms: dict, t1w: nb.Nifti1Image, head: nb.Nifti1Image, brain_path: Path,
                template_mask: Path) -> dict:
    """The participant level's QC JSON (:func:`bids_app.qc.assess.assess_t1w`'s ``qc``) for a T1w
    that *is* the template: identity normalization (similarity 1, full coverage, the template
    brain mask as its own native-space template mask)."""
    from bids_app.qc.checks import build_context, fov_metrics, run_checks
    from bids_app.qc.classifier import predict_accept

    context = build_context(t1w, head, nb.load(brain_path), registration_similarity=1.0, template_coverage=1.0,
                            fov=fov_metrics(brain_path, template_mask))
    checks = run_checks(iqms, context)
    classifier = predict_accept(iqms)
    return {"verdict": checks["verdict"], "flags": checks["flags"], "notes": checks["notes"],
            "p_accept": classifier["p_accept"], "classifier": classifier, "context": context.as_dict(),
            "thresholds": checks["thresholds"]}


def make_participant_outputs(output_dir: str | Path, label: str, template: str = TEMPLATE, res: int = 2,
                             qc: dict | None = None, *, iqms: dict | None = None, session: str | None = None,
                             seed: int = 0) -> dict:
    """Write the participant-level outputs a participant report reads, for a participant whose
    T1w is the template itself (``res`` mm grid).

    Native space is the template grid, so every figure of the report is drawn from real
    anatomy: ``preproc_t1w`` is the template's whole-head T1w (not skull-stripped), the
    ``biasfield`` a smooth multiplicative field of mean 1 (SD :data:`BIAS_SD`, FWHM
    :data:`BIAS_FWHM_MM`; the raw T1w is ``preproc x biasfield`` as N4 models it),
    ``head_mask`` the project's N4 head mask of the raw T1w, ``brain_mask`` the template's,
    ``probseg`` the template's tissue priors inside it, ``dseg`` their argmax (1 GM, 2 WM,
    3 CSF), ``std_preproc_t1w`` the template T1w, ``tissue_morph`` the project's
    :func:`tissue_volumes` of the probseg. The IQMs (MRIQC names) are those of a typical
    ABIDE scan, ABIDE's medians (:func:`abide_medians`; not measured on the noise-free
    template, whose metrics no scanner produces), updated with the given ``iqms``. ``qc``
    is written as given; by default it is what the participant level writes: the project's
    rule-based checks and classifier on those IQMs and the image (at 2 mm the voxel-size
    check warns). The dataset-level files are written when ``output_dir`` has none.

    Returns a dict: ``outputs`` (:class:`Outputs`), ``paths`` (kind -> path; ``probseg``
    -> {tissue: path}), ``iqms``, ``qc``, ``tissue`` (the table's row), ``template``,
    ``res`` (label), ``template_mask`` (path), ``source`` (the raw T1w's BIDS path).
    """
    from bids_app.participant.bias import head_mask

    output_dir = Path(output_dir)
    if not (output_dir / "dataset_description.json").is_file():
        d.init_derivatives(output_dir, None)
    outputs = d.Outputs(output_dir, label, session)
    res_label = d.resolution_label(res)
    source = f"{outputs.prefix.replace('_', '/')}/anat/{outputs.prefix}_T1w.nii.gz"
    sources = [f"bids:raw:{source}"]

    t1w_img = nb.load(get_template(template, res))
    mask_path = get_template(template, res, suffix="mask", desc="brain")
    mask_img = nb.load(mask_path)
    affine = t1w_img.affine
    t1w = np.asanyarray(t1w_img.dataobj).astype(np.float32)
    brain = np.asanyarray(mask_img.dataobj) > 0
    priors = {t: np.asanyarray(nb.load(get_template(template, res, label=t)).dataobj).astype(np.float32) * brain
              for t in TISSUES}
    labels = (np.argmax(np.stack([priors[t] for t in TISSUES]), axis=0) + 1).astype(np.uint8) * brain
    voxel_mm = float(nb.affines.voxel_sizes(affine)[0])
    field = 1.0 + np.float32(BIAS_SD) * smooth_field(np.random.default_rng(seed), t1w.shape, voxel_mm, BIAS_FWHM_MM)
    head = head_mask(nb.Nifti1Image(t1w * field, affine))

    def image(values: np.ndarray, dtype) -> nb.Nifti1Image:
        img = nb.Nifti1Image(values.astype(dtype), affine)
        img.header.set_xyzt_units("mm")
        return img

    paths: dict = {}

    def save(kind: str, img: nb.Nifti1Image, fields: dict | None = None, **meta) -> Path:
        path = d.write_nifti(outputs.path(kind, **(fields or {})), img)
        d.write_json(d.sidecar_path(path), d.sidecar(kind, sources, **meta))
        return path

    paths["preproc_t1w"] = save("preproc_t1w", image(t1w, np.float32), skull_stripped=False,
                                Description=f"The {template} T1w template used as a participant's T1w.")
    paths["biasfield"] = save("biasfield", image(field, np.float32), skull_stripped=False)
    paths["head_mask"] = save("head_mask", image(np.asanyarray(head.dataobj), np.uint8))
    paths["brain_mask"] = save("brain_mask", image(brain, np.uint8))
    paths["dseg"] = save("dseg", image(labels, np.uint8))
    paths["probseg"] = {t: save("probseg", image(priors[t], np.float32), {"label": t}) for t in TISSUES}
    paths["std_preproc_t1w"] = save("std_preproc_t1w", image(t1w, np.float32), {"template": template, "res": res_label},
                                    skull_stripped=False, resolution_mm=res)

    native = {t: image(priors[t], np.float32) for t in TISSUES}
    tissue = tissue_volumes(native, image(brain, np.uint8))
    paths["tissue_morph"] = d.write_tsv(outputs.path("tissue_morph"), pd.DataFrame([tissue]))
    d.write_json(d.sidecar_path(paths["tissue_morph"]),
                 {**data_dictionary("tissue"), "Sources": [d.bids_uri(paths["preproc_t1w"], output_dir, "morphobids")]})

    values = abide_medians()
    values.update(iqms or {})
    quality = dict(qc) if qc is not None else _project_qc(values, nb.Nifti1Image(t1w * field, affine), head,
                                                           paths["brain_mask"], mask_path)
    paths["iqms"] = d.write_json(outputs.path("iqms", contrast="T1w"), values)
    paths["qc"] = d.write_json(outputs.path("qc", contrast="T1w"), quality)
    return {"outputs": outputs, "paths": paths, "iqms": values, "qc": quality, "tissue": tissue,
            "template": template, "res": res_label, "template_mask": mask_path, "source": source}
