"""One phantom subject: its parameters, its pull-back map and its images.

Every subject is the head of :mod:`.head` seen through a known chain of maps
(subject voxel -> head voxel), applied by backward warping:

1. pose: a similarity (rotation of a few degrees, translation of a few mm, head
   size scaled by a few %), about the brain's centre;
2. shape: a smooth random diffeomorphism (cosine-series stationary velocity field,
   :func:`.fields.make_displacement_field`), a few mm;
3. patients only: the atrophy map of the head (:func:`atrophy_field`), which
   shrinks the grey matter of each precentral gyrus by a known fraction.

The image is then scaled by a global gain and a smooth bias field and given Rician
noise of known sigma. The truth maps (brain mask, tissue partial volumes, hard
tissue labels, precentral labels) follow the same maps, so they are exact for the
image up to interpolation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import fields
from .head import HeadTruth

#: ranges the subject parameters are drawn from (uniform unless noted)
PARAMETER_RANGES = {
    "rotation_deg": 4.0,  # each axis in [-4, 4]
    "translation_mm": 4.0,  # each axis in [-4, 4]
    "scale": (0.97, 1.03),  # linear head-size factor (log-uniform)
    "max_velocity_mm": (2.5, 4.0),  # peak of the shape velocity field
    "velocity_frequencies": 5,  # cosine terms 0..4 per axis
    "bias_ratio": (1.2, 1.45),  # max/min of the bias field inside the field of view's ellipsoid
    "gain": (0.8, 1.25),  # global intensity scale (log-uniform)
    "noise_fraction": (0.015, 0.04),  # Rician sigma / white-matter intensity (after gain)
}
#: coarse grid of the shape field, in head voxels (1.5 mm -> 6 mm) and its margin
VELOCITY_STEP = 4
VELOCITY_MARGIN = 16
#: intended relative GM loss of each precentral gyrus in patients
ATROPHY_FRACTION = 0.10
#: CSF within this distance of the region grows by what the region loses
ATROPHY_SINK_MM = 6.0


@dataclass
class SubjectSpec:
    """Everything needed to regenerate one subject exactly (JSON-serialisable)."""

    label: str
    group: str
    age: int
    sex: str
    index: int
    atrophy: bool
    rotation_deg: list[float]
    translation_mm: list[float]
    scale: float
    velocity_coefficients: list  # (3, K, K, K), head-voxel units, already scaled
    max_velocity_mm: float
    bias_coefficients: list  # (D+1,)^3 Legendre coefficients of log bias, already scaled
    bias_log_offset: float
    bias_ratio: float
    gain: float
    noise_fraction: float
    noise_sigma: float
    noise_seed: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SubjectSpec:
        return cls(**data)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` and ``affine`` (voxel -> world mm), plus voxel -> head voxel."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    to_head: np.ndarray  # 4x4, subject voxel -> head voxel
    head_shape: tuple[int, int, int]  # the head grid, whose box is the field of view

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def subject_grid(truth: HeadTruth, resolution: float) -> Grid:
    """Grid of ``resolution`` mm covering the head's field of view, same axes as the head.

    The head is stored LAS; so are the phantoms (as many scanners' NIfTI exports are).
    """
    zoom = float(np.sqrt((truth.affine[:3, :3] ** 2).sum(0))[0])
    ratio = float(resolution) / zoom
    shape = tuple(int(round(n / ratio)) for n in truth.shape)
    to_head = np.diag([ratio, ratio, ratio, 1.0])
    to_head[:3, 3] = -0.5 + 0.5 * ratio
    return Grid(shape, truth.affine @ to_head, to_head, tuple(truth.shape))


# ---------------------------------------------------------------------------- parameters


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def velocity_axes(head_shape) -> list[np.ndarray]:
    """Coordinates (head voxels) of the coarse grid the shape field is computed on."""
    return [np.arange(-VELOCITY_MARGIN, n + VELOCITY_MARGIN + 1, VELOCITY_STEP, dtype=np.float64) for n in head_shape]


def draw_subject(
    rng: np.random.Generator, label: str, group: str, age: int, sex: str, index: int, truth: HeadTruth, noise_seed: int
) -> SubjectSpec:
    """Draw one subject's pose, shape, bias, gain and noise from :data:`PARAMETER_RANGES`."""
    r = PARAMETER_RANGES
    zoom = float(np.sqrt((truth.affine[:3, :3] ** 2).sum(0))[0])
    rotation = rng.uniform(-r["rotation_deg"], r["rotation_deg"], 3)
    translation = rng.uniform(-r["translation_mm"], r["translation_mm"], 3)
    scale = _log_uniform(rng, *r["scale"])
    coeffs = fields.draw_velocity_coefficients(rng, r["velocity_frequencies"])
    max_velocity_mm = float(rng.uniform(*r["max_velocity_mm"]))
    v = fields.cosine_field(coeffs, velocity_axes(truth.shape), truth.shape)
    coeffs = coeffs * (max_velocity_mm / zoom) / float(np.sqrt((v**2).sum(0)).max())
    bias_coeffs = fields.draw_bias_coefficients(rng)
    bias_ratio = float(rng.uniform(*r["bias_ratio"]))
    bias_coeffs, bias_offset = _normalise_bias(bias_coeffs, bias_ratio)
    gain = _log_uniform(rng, *r["gain"])
    noise_fraction = float(rng.uniform(*r["noise_fraction"]))
    sigma = noise_fraction * gain * float(truth.info["wm_intensity"])
    return SubjectSpec(
        label=label, group=group, age=int(age), sex=sex, index=int(index), atrophy=group == "patient",
        rotation_deg=rotation.tolist(), translation_mm=translation.tolist(), scale=scale,
        velocity_coefficients=coeffs.tolist(), max_velocity_mm=max_velocity_mm,
        bias_coefficients=bias_coeffs.tolist(), bias_log_offset=bias_offset, bias_ratio=bias_ratio,
        gain=gain, noise_fraction=noise_fraction, noise_sigma=sigma, noise_seed=int(noise_seed),
    )


def _normalise_bias(coeffs: np.ndarray, ratio: float, n: int = 24) -> tuple[np.ndarray, float]:
    """Scale log-bias coefficients so max/min = ``ratio`` and the mean log is 0 in the FOV ellipsoid."""
    x = (2.0 * (np.arange(n) + 0.5) / n) - 1.0
    log_b = np.log(fields.bias_field(coeffs, (x, x, x)))
    inside = (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) <= 1.0
    spread = float(log_b[inside].max() - log_b[inside].min())
    factor = np.log(ratio) / spread
    offset = -float(log_b[inside].mean()) * factor
    return coeffs * factor, offset


# ---------------------------------------------------------------------------- maps


def pose_matrix(spec: SubjectSpec, truth: HeadTruth) -> np.ndarray:
    """4x4 world map head -> subject (the similarity), about the brain's centre of mass."""
    centre_vox = np.array(ndimage.center_of_mass(truth.brain_mask))
    centre = (truth.affine @ np.append(centre_vox, 1.0))[:3]
    return fields.similarity_matrix(spec.rotation_deg, spec.translation_mm, spec.scale, centre)


def shape_displacement(spec: SubjectSpec, truth: HeadTruth) -> tuple[np.ndarray, np.ndarray]:
    """Pull-back displacement of the subject's shape change (head voxels) on its coarse grid; Jacobian."""
    axes = velocity_axes(truth.shape)
    u, _, _ = fields.make_displacement_field(np.asarray(spec.velocity_coefficients), axes, truth.shape, VELOCITY_STEP)
    return u, fields.jacobian_determinant(u, (VELOCITY_STEP,) * 3)


def atrophy_field(truth: HeadTruth, fraction: float = ATROPHY_FRACTION) -> tuple[np.ndarray, dict]:
    """Pull-back displacement (head voxels) shrinking the GM of each precentral gyrus by ``fraction``.

    The left and right gyri are calibrated separately (:func:`.fields.shrink_region`)
    and the two maps composed; the CSF within :data:`ATROPHY_SINK_MM` of each gyrus
    (weighted by ``1 - GM``) takes up the lost volume.
    """
    zoom = float(np.sqrt((truth.affine[:3, :3] ** 2).sum(0))[0])
    sink_all = truth.csf * (1.0 - truth.gm) * truth.brain_mask
    total = np.zeros((3,) + truth.shape, dtype=np.float32)
    info = {"intended_fraction": fraction, "sink_mm": ATROPHY_SINK_MM, "sides": {}}
    for value, name in ((1, "Precentral_L"), (2, "Precentral_R")):
        density = truth.gm * (truth.parcels == value)
        near = ndimage.distance_transform_edt(density < 0.5) * zoom <= ATROPHY_SINK_MM
        u, side = fields.shrink_region(density, sink_all * near, fraction)
        total = u if not total.any() else fields.compose(u, total)
        info["sides"][name] = side
    points = fields.jittered_points(truth.shape, 4)
    for value, name in ((1, "Precentral_L"), (2, "Precentral_R")):
        density = truth.gm * (truth.parcels == value)
        after = fields.warped_volume(density, points, total)
        info["sides"][name]["realised_fraction_composed"] = 1.0 - after / fields.warped_volume(density, points)
    jac = fields.jacobian_determinant(total)
    info["jacobian_min"], info["jacobian_max"] = float(jac.min()), float(jac.max())
    info["max_displacement_mm"] = float(np.sqrt((total**2).sum(0)).max()) * zoom
    return total, info


ATROPHY_FILE = "head_desc-atrophy_displacement.nii.gz"
ATROPHY_INFO = "head_atrophy.json"
#: bump when atrophy_field would change for the same head truth
ATROPHY_VERSION = "2"


def atrophy_key(truth: HeadTruth) -> str:
    return f"{truth.info.get('key')}-{ATROPHY_VERSION}-{ATROPHY_FRACTION}-{ATROPHY_SINK_MM}"


def cached_atrophy_field(truth: HeadTruth, folder: Path | None) -> tuple[np.ndarray, dict]:
    """:func:`atrophy_field`, kept in ``folder`` (the head-truth folder) for the next build."""
    if folder is not None and (folder / ATROPHY_INFO).is_file():
        info = json.loads((folder / ATROPHY_INFO).read_text())
        if info.get("key") == atrophy_key(truth) and (folder / ATROPHY_FILE).is_file():
            data = np.asarray(nib.load(folder / ATROPHY_FILE).dataobj, dtype=np.float32)
            return np.ascontiguousarray(np.moveaxis(data, -1, 0)), info["info"]
    field_, info = atrophy_field(truth)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(np.moveaxis(field_, 0, -1), truth.affine)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, folder / ATROPHY_FILE)
        (folder / ATROPHY_INFO).write_text(json.dumps({"key": atrophy_key(truth), "info": info}, indent=2) + "\n")
    return field_, info


def pullback_coordinates(
    spec: SubjectSpec, truth: HeadTruth, grid: Grid, atrophy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Head-voxel coordinates sampled by each subject voxel: (without atrophy, with atrophy).

    The second item is None when ``atrophy`` is None (controls).
    """
    to_head_world = np.linalg.inv(pose_matrix(spec, truth))  # subject world -> head world
    vox = np.linalg.inv(truth.affine) @ to_head_world @ grid.affine  # subject voxel -> head voxel
    idx = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    q = (vox[:3, :3].astype(np.float32) @ idx + vox[:3, 3:4].astype(np.float32)).reshape((3,) + grid.shape)
    del idx
    u, _ = shape_displacement(spec, truth)
    qc = (q + VELOCITY_MARGIN) / VELOCITY_STEP  # coarse-grid coordinates
    q += np.stack([fields.sample(u[c], qc) for c in range(3)])
    del qc
    if atrophy is None:
        return q, None
    return q, q + fields.sample_within(atrophy, q)


def shape_jacobian_range(spec: SubjectSpec, truth: HeadTruth) -> tuple[float, float]:
    """Smallest and largest Jacobian determinant of the subject's shape map (on its grid)."""
    _, jac = shape_displacement(spec, truth)
    return float(jac.min()), float(jac.max())


def bias_on_grid(spec: SubjectSpec, grid: Grid) -> np.ndarray:
    """The subject's bias field on ``grid``; defined over the head's field of view (scanner-fixed)."""
    axes = [
        2.0 * (grid.to_head[d, d] * np.arange(grid.shape[d]) + grid.to_head[d, 3] + 0.5) / grid.head_shape[d] - 1.0
        for d in range(3)
    ]
    return fields.bias_field(np.asarray(spec.bias_coefficients), axes, spec.bias_log_offset)


# ---------------------------------------------------------------------------- images


def quantise(p: np.ndarray) -> np.ndarray:
    """Partial volumes 0..1 -> uint8 0..255 (stored with scl_slope 1/255)."""
    return np.clip(np.rint(np.asarray(p) * 255.0), 0, 255).astype(np.uint8)


def hard_labels(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """1 GM, 2 WM, 3 CSF where the brain mask is set (largest partial volume), else 0."""
    stack = np.stack([gm, wm, csf])
    lab = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    return np.where(brain & (stack.sum(0) > 0), lab, 0).astype(np.uint8)


REGIONS = ((1, "Precentral_L"), (2, "Precentral_R"))


def render_subject(spec: SubjectSpec, truth: HeadTruth, grid: Grid, atrophy: np.ndarray | None) -> tuple[dict, dict]:
    """Images and truth maps of one subject on ``grid``, and a summary of what was done.

    Returns ``(arrays, info)``. Arrays: ``T1w`` (int16); ``bias`` (float32);
    ``brain``, ``head`` (bool); ``GM``, ``WM``, ``CSF`` and the GM of each precentral
    gyrus ``Precentral_L``, ``Precentral_R`` (uint8 partial volumes x 255); ``dseg``
    (1 GM, 2 WM, 3 CSF) and ``precentral`` (1 left, 2 right) hard labels (uint8).
    ``info`` holds tissue volumes (ml) and, for patients, the realised atrophy measured
    against the same subject rendered without it.
    """
    q0, q1 = pullback_coordinates(spec, truth, grid, atrophy if spec.atrophy else None)
    q = q1 if q1 is not None else q0
    arrays: dict[str, np.ndarray] = {}
    in_brain = fields.box_selection(q, truth.brain_mask)
    for key in ("GM", "WM", "CSF"):
        arrays[key] = quantise(fields.sample_within(getattr(truth, key.lower()), q, inside=in_brain))
    arrays["brain"] = fields.sample_within(truth.brain_mask.astype(np.float32), q, inside=in_brain) >= 0.5
    del in_brain
    in_region = fields.box_selection(q, truth.parcels)
    for value, name in REGIONS:
        arrays[name] = quantise(fields.sample_within(truth.gm * (truth.parcels == value), q, inside=in_region))
    arrays["precentral"] = fields.sample_within(truth.parcels, q, order=0, inside=in_region).astype(np.uint8)
    del in_region
    arrays["head"] = fields.sample(truth.head_mask.astype(np.uint8), q, order=0, mode="constant") > 0
    arrays["dseg"] = hard_labels(arrays["GM"], arrays["WM"], arrays["CSF"], arrays["brain"])
    anatomy = np.clip(fields.sample(truth.t1w, q, order=3, mode="constant"), 0, None)
    arrays["bias"] = bias_on_grid(spec, grid)
    signal = fields.apply_bias(anatomy * np.float32(spec.gain), arrays["bias"])
    del anatomy
    noisy = fields.add_rician_noise(signal, spec.noise_sigma, np.random.default_rng(spec.noise_seed))
    del signal
    arrays["T1w"] = np.clip(np.rint(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)
    del noisy

    vml = grid.voxel_ml

    def ml(pv: np.ndarray, where=None) -> float:
        pv = pv if where is None else pv[where]
        return float(pv.sum(dtype=np.float64)) / 255.0 * vml

    volumes = {key: ml(arrays[key]) for key in ("GM", "WM", "CSF")}
    volumes["brain_mask"] = float(arrays["brain"].sum()) * vml
    for value, name in REGIONS:
        volumes[f"{name}_GM"] = ml(arrays[name])
        volumes[f"{name}_GM_in_label"] = ml(arrays["GM"], arrays["precentral"] == value)
    info: dict = {"volumes_ml": volumes}
    info["shape_jacobian_min"], info["shape_jacobian_max"] = shape_jacobian_range(spec, truth)
    if q1 is not None:
        # the same subject rendered without atrophy: the baseline of the realised change
        base = {}
        in_region = fields.box_selection(q0, truth.parcels)
        gm0 = quantise(fields.sample_within(truth.gm, q0, inside=in_region))
        lab0 = fields.sample_within(truth.parcels, q0, order=0, inside=in_region)
        for value, name in REGIONS:
            region0 = fields.sample_within(truth.gm * (truth.parcels == value), q0, inside=in_region)
            base[f"{name}_GM"] = ml(quantise(region0))
            base[f"{name}_GM_in_label"] = ml(gm0, lab0 == value)
        info["baseline_ml"] = base
        info["realised_fraction"] = _fractions(volumes, base)
    else:
        info["realised_fraction"] = _fractions(volumes, volumes)
    return arrays, info


def _fractions(after: dict, before: dict) -> dict:
    """Relative loss ``1 - after/before`` of each gyrus and both (region GM and GM-in-label)."""
    out = {}
    for suffix, tag in (("_GM", ""), ("_GM_in_label", "_in_label")):
        b = {name: before[f"{name}{suffix}"] for _, name in REGIONS}
        a = {name: after[f"{name}{suffix}"] for _, name in REGIONS}
        for name in b:
            out[f"{name}{tag}"] = 1.0 - a[name] / b[name]
        out[f"Precentral{tag}"] = 1.0 - sum(a.values()) / sum(b.values())
    return out


def total_jacobian(q: np.ndarray, grid: Grid, truth: HeadTruth) -> np.ndarray:
    """Jacobian determinant of the whole pull-back map (subject mm -> head mm) on ``grid``.

    ``q`` are the head-voxel coordinates from :func:`pullback_coordinates`. Values
    near ``1 / scale**3``; positive everywhere for a map that folds nowhere.
    """
    u = q - np.indices(grid.shape, dtype=np.float32)
    det = fields.jacobian_determinant(u)
    return det * float(abs(np.linalg.det(truth.affine[:3, :3])) / abs(np.linalg.det(grid.affine[:3, :3])))
