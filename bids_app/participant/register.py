"""Nonlinear normalization of a brain-extracted T1w to a template brain with antspyx.

Three ANTs stages in one ``antsRegistration`` call (Avants et al., 2011, NeuroImage
54:2033, doi:10.1016/j.neuroimage.2010.09.025): rigid and affine with global
correlation, then symmetric diffeomorphic normalization, SyN (Avants et al., 2008,
Med Image Anal 12:26, doi:10.1016/j.media.2007.06.004), with local
cross-correlation, the metric that ranked SyN first for T1w-to-T1w in Klein et al.
(2009, NeuroImage 46:786, doi:10.1016/j.neuroimage.2008.12.037).

Speed (see ``bench/registration.py``): both images are first brought,
anti-aliased, to a 2 mm working grid; the template's domain is cropped to its
brain plus a margin; the linear stages run at 8 and 4 mm and SyN at 8 and 4 mm,
its field kept on the 2 mm grid. On a quiet 2-core machine this takes ~11 s for a
1 mm head, against ~60 s for ``ants.registration(fixed, moving, "SyN")`` at 1 mm,
with better accuracy on a phantom with known deformation. The transforms are
written as ITK composite HDF5 files (affine + displacement field), which apply
to grids of any resolution, e.g. the 1 mm template.

Conventions: ``to_template`` (``from-T1w_to-<tpl>``) is what
``ants.apply_transforms(fixed=<template grid>, moving=<T1w image>, ...)`` needs;
as a *point* map it takes template points to T1w points (ITK's pull-back
convention). ``to_native`` is the inverse. Images cross the nibabel (RAS) /
ANTs (LPS) boundary only through :mod:`bids_app.participant.antsio`.

Reproducibility: with ``--random-seed`` fixed, global correlation and CC give
bit-identical results for the same inputs and thread count; Mattes mutual
information does not (measured with antspyx 0.6.3, even on one thread), which is
why the linear stages use GC, as ANTs' own "repro" mode does.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ants
import nibabel as nb
import numpy as np

from bids_app.participant.antsio import from_ants, to_ants

#: interpolators accepted by :func:`to_template` / :func:`to_native` (names as in antsApplyTransforms)
INTERPOLATORS = ("linear", "nearestNeighbor", "genericLabel", "bSpline", "lanczosWindowedSinc", "gaussian")
_LABEL_INTERPOLATORS = ("nearestNeighbor", "genericLabel")


@dataclass(frozen=True)
class Schedule:
    """Parameters of the three stages (defaults: the schedule chosen with bench/registration.py).

    ``*_shrink`` are shrink factors of the working grid per pyramid level and
    ``*_sigmas`` the Gaussian smoothing (in working-grid voxels) per level. SyN's
    last level has no iterations: its field is only carried onto the 2 mm grid (CC
    at 2 mm costs ~7x the 4 mm level per iteration for a 0.01 gain in atlas Dice).
    A gradient step of 0.2 with 60/20 iterations matched 0.1 with 100/50 on the
    phantom and gave a higher similarity on real heads, in half the time. A CC radius of 1
    rather than 2 (a 3^3 rather than 5^3 window) took 11-12 s rather than 18 s, with AAL3
    Dice 0.941 vs 0.938 and TRE 0.50 vs 0.56 mm on the 1 mm phantom, and similarity
    0.82-0.85 vs 0.80-0.84 on three ds000011 heads.
    """

    working_mm: float = 2.0
    linear_metric: str = "GC"  # "GC" (global correlation: reproducible) or "MI" (Mattes, 32 bins: not bit-reproducible)
    linear_sampling: float = 0.25  # fraction of voxels sampled by the metric of the linear stages
    rigid_iterations: tuple[int, ...] = (500, 250)
    rigid_shrink: tuple[int, ...] = (4, 2)
    rigid_sigmas: tuple[float, ...] = (2, 1)
    affine_iterations: tuple[int, ...] = (500, 250)
    affine_shrink: tuple[int, ...] = (4, 2)
    affine_sigmas: tuple[float, ...] = (2, 1)
    syn_metric: str = "CC"  # "CC" (radius ``syn_radius``) or "MI" (32 bins)
    syn_radius: int = 1  # CC window 3^3 working voxels (12 mm at the 4 mm level); see below
    syn_iterations: tuple[int, ...] = (60, 20, 0)
    syn_shrink: tuple[int, ...] = (4, 2, 1)
    syn_sigmas: tuple[float, ...] = (2, 1, 0)
    syn_gradient_step: float = 0.2
    syn_flow_sigma: float = 3.0  # update-field smoothing (voxels)
    syn_total_sigma: float = 0.0  # total-field smoothing (voxels)
    convergence: tuple[float, int] = (1e-5, 10)  # threshold and window of ANTs' convergence test
    crop_margin_mm: float | None = 10.0  # working domain: template brain's bounding box + margin (None: whole grid)


DEFAULT_SCHEDULE = Schedule()


@dataclass
class TemplateRegistration:
    """Result of :func:`register_to_template`: paths on disk (picklable across nipype nodes).

    ``to_template``: composite HDF5, T1w -> template (use with
    ``ants.apply_transforms(fixed=template_grid, moving=native_img, transformlist=[str(to_template)])``);
    ``to_native``: composite HDF5, template -> T1w; ``similarity``: Pearson correlation of the
    warped subject brain with the template brain inside the template brain (QC, 1 = identical).
    """

    to_template: Path
    to_native: Path
    similarity: float
    template: str = ""
    parameters: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def template_name(path: Path | str) -> str:
    """TemplateFlow name from a file name (``tpl-<name>_...``), or the file's stem."""
    name = Path(path).name
    match = re.match(r"tpl-([A-Za-z0-9]+)", name)
    return match.group(1) if match else name.split(".")[0]


def set_itk_threads(nthreads: int) -> None:
    """Ask ITK (inside antspyx) for ``nthreads`` threads.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when a process first
    runs a multithreaded filter; later changes in the same process are ignored.
    Workflow nodes run in their own processes, so setting it here (or in the
    node's environment) before any ANTs call is what bounds the threads.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(nthreads)))


def resample_to(image: "ants.ANTsImage", mm: float) -> "ants.ANTsImage":
    """``image`` on an isotropic ``mm`` grid, low-pass filtered first when it gets coarser.

    The Gaussian has the FWHM that turns each native voxel's extent into ``mm``
    (``sigma = sqrt(mm^2 - s^2) / 2.355`` per axis), the usual anti-aliasing rule.
    """
    spacing = np.asarray(image.spacing, dtype=float)
    if np.allclose(spacing, mm, atol=1e-3):
        return image
    sigma = np.sqrt(np.clip(mm**2 - spacing**2, 0.0, None)) / 2.3548
    smooth = ants.smooth_image(image, sigma.tolist(), sigma_in_physical_coordinates=True) if sigma.max() > 0 else image
    return ants.resample_image(smooth, (mm, mm, mm), use_voxels=False, interp_type=0)


def _levels(values) -> str:
    return "x".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)


def _stages(fixed: str, moving: str, schedule: Schedule) -> list[str]:
    """antsRegistration arguments of the rigid, affine and SyN stages."""
    s = schedule
    conv = f"{s.convergence[0]},{s.convergence[1]}"
    bins = 32 if s.linear_metric.upper() == "MI" else 1
    linear_metric = f"{s.linear_metric}[{fixed},{moving},1,{bins},Regular,{s.linear_sampling}]"
    if s.syn_metric.upper() == "CC":
        syn_metric = f"CC[{fixed},{moving},1,{s.syn_radius}]"
    else:
        syn_metric = f"MI[{fixed},{moving},1,32]"
    args = []
    for kind, iterations, shrink, sigmas in (("Rigid[0.1]", s.rigid_iterations, s.rigid_shrink, s.rigid_sigmas),
                                             ("Affine[0.1]", s.affine_iterations, s.affine_shrink, s.affine_sigmas)):
        if iterations:
            args += ["--metric", linear_metric, "--transform", kind,
                     "--convergence", f"[{_levels(iterations)},{conv}]",
                     "--shrink-factors", _levels(shrink), "--smoothing-sigmas", _levels(sigmas) + "vox"]
    if s.syn_iterations:
        args += ["--metric", syn_metric,
                 "--transform", f"SyN[{s.syn_gradient_step},{s.syn_flow_sigma},{s.syn_total_sigma}]",
                 "--convergence", f"[{_levels(s.syn_iterations)},{conv}]",
                 "--shrink-factors", _levels(s.syn_shrink),
                 "--smoothing-sigmas", _levels(s.syn_sigmas) + "vox"]
    return args


def working_domain(template: "ants.ANTsImage", schedule: Schedule) -> tuple["ants.ANTsImage", "ants.ANTsImage"]:
    """The fixed image of the registration and its brain mask, on the working grid.

    SyN's cost grows with the voxels of the fixed (virtual) domain, most of which are
    air around a brain-extracted template, so the domain is cropped to the brain's
    box plus ``crop_margin_mm`` (a third fewer voxels at 10 mm). Outside the box the
    map is the affine alone; the composed field shows no jump across the box's
    faces, as SyN's field has decayed there. The brain is where the template exceeds
    1 % of its maximum (the anti-aliased copy has a faint halo).
    """
    fixed = resample_to(template, schedule.working_mm)
    brain = ants.threshold_image(fixed, 0.01 * float(fixed.max()), float(fixed.max()) + 1.0)
    if schedule.crop_margin_mm is not None:
        box = ants.iMath(brain, "MD", int(np.ceil(schedule.crop_margin_mm / schedule.working_mm)))
        fixed, brain = ants.crop_image(fixed, box), ants.crop_image(brain, box)
    return fixed, brain


def _run_ants_registration(fixed, moving, prefix: str, schedule: Schedule, seed: int):
    """One antsRegistration call; returns the moving image warped onto ``fixed``'s grid."""
    warped, inverse_warped = fixed.clone(), moving.clone()
    f, m = ants.internal.get_pointer_string(fixed), ants.internal.get_pointer_string(moving)
    args = (["--dimensionality", "3", "--float", "1",
             "--initial-moving-transform", f"[{f},{m},1]"]  # align the centres of mass
            + _stages(f, m, schedule)
            + ["--use-histogram-matching", "0", "--winsorize-image-intensities", "[0.005,0.995]",
               "--collapse-output-transforms", "1", "--write-composite-transform", "1",
               "--random-seed", str(int(seed)),
               "--output", f"[{prefix},{ants.internal.get_pointer_string(warped)},"
                           f"{ants.internal.get_pointer_string(inverse_warped)}]"])
    code = ants.internal.get_lib_fn("antsRegistration")(ants.internal.process_arguments(args))
    if code != 0:
        raise RuntimeError(f"antsRegistration failed with exit code {code}")
    return warped


def correlation_in_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (normalized cross-correlation)."""
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


# -------------------------------------------------------------------------------- API


def register_to_template(t1w_brain: nb.Nifti1Image, template_brain: Path, out_dir: Path, nthreads: int = 2,
                         seed: int = 1, schedule: Schedule = DEFAULT_SCHEDULE) -> TemplateRegistration:
    """Register a brain-extracted, bias-corrected T1w to ``template_brain`` (rigid, affine, SyN).

    The template-based brain extraction passes a whole head and the whole-head template
    instead (:func:`bids_app.participant.skullstrip.template_mask`).

    Writes ``from-T1w_to-<tpl>_mode-image_xfm.h5`` and ``from-<tpl>_to-T1w_mode-image_xfm.h5``
    (ITK composite transforms) into ``out_dir`` and returns their paths with the QC similarity.
    """
    set_itk_threads(nthreads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tpl = template_name(template_brain)
    fixed, brain = working_domain(ants.image_read(str(template_brain), pixeltype="float"), schedule)
    moving = resample_to(to_ants(t1w_brain), schedule.working_mm)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".antsreg-") as tmp:
        prefix = str(Path(tmp) / "reg_")
        warped = _run_ants_registration(fixed, moving, prefix, schedule, seed)
        forward = out_dir / f"from-T1w_to-{tpl}_mode-image_xfm.h5"
        inverse = out_dir / f"from-{tpl}_to-T1w_mode-image_xfm.h5"
        shutil.move(prefix + "Composite.h5", forward)
        shutil.move(prefix + "InverseComposite.h5", inverse)
    similarity = correlation_in_mask(warped.numpy(), fixed.numpy(), brain.numpy() > 0)
    return TemplateRegistration(forward, inverse, similarity, tpl,
                                {"seed": int(seed), "nthreads": int(nthreads), **asdict(schedule)})


def _as_nifti(img: nb.Nifti1Image | Path | str) -> nb.Nifti1Image:
    return nb.load(str(img)) if isinstance(img, (str, Path)) else img


def _apply(img, reference, transform: Path, interpolation: str) -> nb.Nifti1Image:
    """Resample ``img`` onto ``reference``'s grid through one composite transform."""
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {INTERPOLATORS}, not {interpolation!r}")
    moving_nii = _as_nifti(img)
    reference_nii = _as_nifti(reference)
    out = ants.apply_transforms(fixed=to_ants(reference_nii), moving=to_ants(moving_nii),
                                transformlist=[str(transform)], interpolator=interpolation,
                                singleprecision=True)
    if interpolation in _LABEL_INTERPOLATORS:
        dtype = moving_nii.get_data_dtype() if moving_nii.get_data_dtype().kind in "iu" else np.int32
        data = np.rint(out.numpy()).astype(dtype)
        result = nb.Nifti1Image(data, reference_nii.affine)
        result.set_data_dtype(dtype)
        return result
    return from_ants(out, like=reference_nii)


def to_template(img: nb.Nifti1Image, reg: TemplateRegistration, reference: nb.Nifti1Image | Path,
                interpolation: str = "linear") -> nb.Nifti1Image:
    """Native-space ``img`` resampled onto the template grid ``reference`` (any resolution)."""
    return _apply(img, reference, reg.to_template, interpolation)


def to_native(img: nb.Nifti1Image | Path, reg: TemplateRegistration, reference: nb.Nifti1Image,
              interpolation: str = "linear") -> nb.Nifti1Image:
    """Template-space ``img`` (e.g. an atlas: ``interpolation="genericLabel"``) onto the T1w grid."""
    return _apply(img, reference, reg.to_native, interpolation)


# ----------------------------------------------------------------- label images, fast


def native_coordinates(reg: TemplateRegistration, reference: nb.Nifti1Image, grid: nb.Nifti1Image) -> np.ndarray:
    """For each voxel of ``reference`` (T1w grid): its continuous voxel index on ``grid`` (template).

    Three linear resamplings of ``grid``'s index images through ``to_native``; a linear
    interpolator reproduces a linear function exactly, so these are the transform's own
    sampling points. Voxels that map outside ``grid`` get -1. Shape (3, *reference.shape).
    """
    index = np.indices(grid.shape[:3], dtype=np.float32) + 1.0  # 0 is what ANTs gives outside
    coords = [np.asanyarray(to_native(nb.Nifti1Image(index[axis], grid.affine), reg, reference).dataobj)
              for axis in range(3)]
    return np.stack(coords).astype(np.float32) - 1.0


def label_vote(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Resample an integer label image at continuous voxel ``coords`` by trilinear label voting.

    Each of the 8 neighbours of a point votes for its label with its trilinear weight;
    the label with the most weight wins (ties: the neighbour visited first). This is
    ITK's ``LabelImageGenericInterpolateImageFunction`` (antsApplyTransforms
    ``genericLabel``: per-label linear interpolation, then the maximum), computed in one
    pass over the neighbours instead of once per label: 5-10x faster for atlases with
    100+ labels. Points outside the image (any coordinate < -0.5 or > size - 0.5) get 0.
    """
    shape = np.asarray(labels.shape)
    out = np.zeros(coords.shape[1:], dtype=labels.dtype)
    inside = np.all((coords >= -0.5) & (coords <= (shape - 0.5)[:, None, None, None]), axis=0)
    nonzero = np.argwhere(labels != 0)
    if nonzero.size == 0:
        return out
    lo, hi = nonzero.min(axis=0) - 1, nonzero.max(axis=0) + 1
    inside &= np.all((coords >= lo[:, None, None, None]) & (coords <= hi[:, None, None, None]), axis=0)
    points = coords[:, inside]
    base = np.floor(points).astype(np.int64)
    frac = points - base
    corner_labels, corner_weights = [], []
    for offset in np.ndindex(2, 2, 2):
        index = tuple(np.clip(base[d] + offset[d], 0, shape[d] - 1) for d in range(3))
        corner_labels.append(labels[index])
        weight = np.ones(points.shape[1], dtype=np.float32)
        for d in range(3):
            weight *= frac[d] if offset[d] else 1.0 - frac[d]
        corner_weights.append(weight)
    corner_labels, corner_weights = np.stack(corner_labels), np.stack(corner_weights)
    result = corner_labels[0].copy()
    mixed = np.flatnonzero((corner_labels != corner_labels[0]).any(axis=0))  # most points: one label
    cl, cw = corner_labels[:, mixed], corner_weights[:, mixed]
    score = np.stack([(cw * (cl == cl[a])).sum(axis=0) for a in range(8)])
    result[mixed] = cl[np.argmax(score, axis=0), np.arange(mixed.size)]
    out[inside] = result
    return out


def labels_to_native(label_imgs: list[nb.Nifti1Image | Path | str], reg: TemplateRegistration,
                     reference: nb.Nifti1Image) -> list[nb.Nifti1Image]:
    """Template-space label images (atlases) on the T1w grid, ``genericLabel`` interpolation.

    The sampling points are computed once per template grid and shared by all images
    (:func:`native_coordinates`), then each image is resampled by :func:`label_vote`.
    """
    grids: dict = {}
    out = []
    for item in label_imgs:
        img = _as_nifti(item)
        key = (img.shape[:3], np.round(img.affine, 4).tobytes())
        if key not in grids:
            grids[key] = native_coordinates(reg, reference, img)
        data = np.rint(np.asanyarray(img.dataobj)).astype(np.int32)
        dtype = img.get_data_dtype() if img.get_data_dtype().kind in "iu" else np.dtype(np.int32)
        result = nb.Nifti1Image(label_vote(data, grids[key]).astype(dtype), reference.affine)
        result.set_data_dtype(dtype)
        out.append(result)
    return out
