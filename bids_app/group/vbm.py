"""Voxel-based morphometry (VBM) of Jacobian-modulated grey-matter maps in template space.

The analysis follows the classic SPM/CAT12 recipe (Ashburner & Friston 2000, NeuroImage
11:805-821; Good et al. 2001, NeuroImage 14:21-36), with nilearn as the engine:

1. **Smoothing** of each modulated GM map with an isotropic Gaussian (default FWHM 8 mm,
   as in CAT12's default; ``nilearn.image.smooth_img``).
2. **GM mask** by absolute threshold on the *mean* of the unsmoothed modulated GM maps
   (default 0.2, within CAT12/SPM's recommended 0.1-0.2). A mask from the group mean,
   rather than from each image, does not lose atrophied voxels of some participants
   (Ridgway et al. 2009, NeuroImage 44:99-111); voxels where any image is not finite are
   left out. A user mask can replace it.
3. **Mass-univariate GLM** with the caller's design (one row per image) and a t contrast
   (``nilearn.glm.second_level.SecondLevelModel``): effect, t and z maps. Parametric
   height control (FDR, FPR = uncorrected, or Bonferroni) with an optional cluster-extent
   threshold (``nilearn.glm.threshold_stats_img``), applied to the z map.
4. **Permutation inference** (optional, ``n_perm > 0``): family-wise error corrected
   p-values for the voxel-wise maximum t and for threshold-free cluster enhancement
   (TFCE, Smith & Nichols 2009, NeuroImage 44:83-98), written as -log10(p). The contrast is
   turned into one tested regressor plus nuisance regressors by the partitioning of
   Winkler et al. 2014 (NeuroImage 92:381-397, appendix A), so that the permutation t
   equals the GLM t for any estimable contrast; the null draws permute the tested
   regressor (Freedman & Lane 1983), or flip signs for a one-sample test
   (:func:`permutation_design`). The engine is pluggable (:func:`select_backend`): the
   default is ``nilearn.glm.second_level.non_parametric_inference``; "morphobids" is
   the project's faster engine (``bids_app.group.permutation``), which draws nilearn's
   random stream.

Direction of the test: the contrast tests ``c @ beta > 0``. With indicator columns
``control`` and ``patient`` (no separate intercept), ``"control - patient"`` tests
"patients have less GM than controls" (atrophy); ``"patient - control"`` (or the negated
vector) tests the opposite. With an intercept and a ``patient`` indicator, "patients <
controls" is ``"-patient"`` (weights ``[0, -1, ...]``); ``two_sided=True`` tests both at once (|t|, |z|; each tail then
gets half the error rate). The p-value floor of a permutation test is
``1 / (number of distinct relabellings)``: with 4 controls and 4 patients that is
1/70, whatever ``n_perm`` is; the summary records it.

Outputs are returned, not written; :func:`vbm_outputs` names them.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_app.errors import (
    EX_SOFTWARE,
    InputDataError,
    MissingInputError,
    MorphoBIDSError,
    UsageError,
)

LOG = logging.getLogger("morphobids")

HEIGHT_CONTROLS = ("fdr", "fpr", "bonferroni")
DEFAULT_ALPHA = {"fdr": 0.05, "fpr": 0.001, "bonferroni": 0.05}
BACKENDS = ("nilearn", "morphobids", "auto")
FAST_BACKEND = ("bids_app.group.permutation", "permuted_ols_tfce")

ImageLike = str | PathLike | nb.Nifti1Image
Backend = Callable[..., dict]


@dataclass
class VBMResult:
    """Everything :func:`run_vbm` computed; images share the grid of the inputs."""

    mask_img: nb.Nifti1Image
    effect_img: nb.Nifti1Image
    t_img: nb.Nifti1Image
    z_img: nb.Nifti1Image
    thresholded_img: nb.Nifti1Image  # z map, parametric height (+ extent) threshold applied
    threshold: float | None  # z height threshold (None: nothing can survive, e.g. FDR)
    contrast: np.ndarray
    design: pd.DataFrame
    tfce_img: nb.Nifti1Image | None = None
    logp_fwe_t_img: nb.Nifti1Image | None = None
    logp_fwe_tfce_img: nb.Nifti1Image | None = None
    summary: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def _name(image: ImageLike, i: int) -> str:
    return str(image) if not isinstance(image, nb.Nifti1Image) else f"image #{i + 1} (in memory)"


def _load(image: ImageLike, i: int) -> nb.Nifti1Image:
    if isinstance(image, nb.Nifti1Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise MissingInputError(f"VBM input not found: {path}.",
                                "Run the participant level for this participant, or drop it from the list.")
    try:
        img = nb.load(path)
        img.shape  # noqa: B018 - header must be readable
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(f"cannot read VBM input {path}: {exc}.",
                             "Re-run the participant level for this participant (the file is corrupt).") from exc
    return img


def _as_3d(img: nb.Nifti1Image, name: str) -> np.ndarray:
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"VBM input {name} is not a 3D image (shape {data.shape}).",
                             "Pass one modulated GM map (label-GM_desc-modulated_probseg) per participant.")
    return data


def load_images(images: Sequence[ImageLike]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stack the images as float32 ``(x, y, z, n)``; return it, the common affine and their names.

    Every image must be on the grid of the first one (same shape and affine), as the
    participant level writes them (``space-<template>_res-<r>``).
    """
    if len(images) == 0:
        raise UsageError("no images given to the VBM analysis.", "Pass one modulated GM map per participant.")
    names = [_name(im, i) for i, im in enumerate(images)]
    first = _load(images[0], 0)
    ref_data = _as_3d(first, names[0])
    affine = first.affine
    stack = np.empty(ref_data.shape + (len(images),), dtype=np.float32)
    stack[..., 0] = ref_data
    for i in range(1, len(images)):
        img = _load(images[i], i)
        data = _as_3d(img, names[i])
        if data.shape != ref_data.shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise InputDataError(
                f"VBM input {names[i]} is not on the grid of {names[0]} "
                f"(shape {data.shape} vs {ref_data.shape}).",
                "Use maps of one template space and resolution (space-<template>_res-<r>) for all participants.",
            )
        stack[..., i] = data
    return stack, affine, names


def check_design(design: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """Validate the design: one numeric, finite row per image, full column rank, an intercept.

    Boolean columns (e.g. from ``pandas.get_dummies``) become 0/1 floats.
    """
    if not isinstance(design, pd.DataFrame):
        raise UsageError("the VBM design must be a pandas DataFrame (columns = regressors).",
                         "Build it from participants.tsv, one row per image, in the same order.")
    if len(design) != n_images:
        raise InputDataError(f"the VBM design has {len(design)} rows but {n_images} images were given.",
                             "Give one design row per image, in the same order.")
    if design.shape[1] == 0:
        raise UsageError("the VBM design has no columns.", "Add at least a group or intercept column.")
    if n_images <= design.shape[1]:
        raise InputDataError(f"{n_images} images cannot fit a design of {design.shape[1]} columns "
                             "(no degrees of freedom left).", "Add participants or drop covariates.")
    out = design.copy()
    for col in out.columns:
        if out[col].dtype == bool:
            out[col] = out[col].astype(float)
        if not pd.api.types.is_numeric_dtype(out[col]):
            raise InputDataError(f"design column {col!r} is not numeric.",
                                 "Encode categorical variables as indicator (dummy) columns.")
    out = out.astype(float)
    bad = out.index[~np.isfinite(out.to_numpy()).all(axis=1)].tolist()
    if bad:
        raise InputDataError(f"the VBM design has missing or infinite values in rows {bad[:5]}.",
                             "Fill in participants.tsv or exclude those participants.")
    x = out.to_numpy()
    rank = np.linalg.matrix_rank(x)
    if rank < x.shape[1]:
        raise InputDataError(
            f"the VBM design is rank deficient (rank {rank} < {x.shape[1]} columns: {list(out.columns)}).",
            "Drop collinear columns (e.g. an intercept next to a full set of group indicators, "
            "or a covariate that is constant in this sample).")
    ones = np.ones(len(x))
    residual = ones - x @ np.linalg.lstsq(x, ones, rcond=None)[0]
    if np.abs(residual).max() > 1e-6:
        raise UsageError("the VBM design has no intercept (no combination of columns is constant).",
                         "Add a column of ones, or one indicator column per group.")
    return out


def resolve_contrast(contrast, columns: Sequence[str]) -> np.ndarray:
    """Contrast vector from a vector, a column name or an expression such as ``"control - patient"``."""
    columns = [str(c) for c in columns]
    if isinstance(contrast, str):
        if contrast in columns:
            vector = np.asarray([float(c == contrast) for c in columns])
        else:
            from nilearn.glm import expression_to_contrast_vector

            try:
                vector = np.asarray(expression_to_contrast_vector(contrast, columns), dtype=float)
            except Exception as exc:
                raise UsageError(f"cannot read the contrast {contrast!r} ({exc}).",
                                 f"Use design column names: {columns}.") from exc
    else:
        vector = np.asarray(contrast, dtype=float).ravel()
        if vector.size != len(columns):
            raise UsageError(f"the contrast has {vector.size} weights but the design has {len(columns)} columns.",
                             f"Give one weight per column of {columns}.")
    if not np.isfinite(vector).all() or not np.any(vector):
        raise UsageError(f"the contrast {contrast!r} is empty or not finite.", "Give non-zero weights.")
    return vector


def partition_design(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``x`` into a tested regressor and nuisance regressors for contrast ``c``.

    Winkler et al. 2014, appendix A: with ``Q = pinv(x'x)``, the tested regressor
    ``x Q c (c'Qc)^-1`` has coefficient ``c'beta``; the nuisance space is ``x`` times a basis
    of the null space of ``c'``. Together they span the column space of ``x``, so the
    t statistic of the tested regressor equals the GLM t of the contrast.
    """
    q = np.linalg.pinv(x.T @ x)
    tested = x @ q @ c / float(c @ q @ c)
    _, _, vt = np.linalg.svd(c[None, :])
    nuisance = x @ vt[1:].T
    return tested, nuisance


def _basis(matrix: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the columns of ``matrix`` (SVD; null directions dropped)."""
    if matrix.shape[1] == 0:
        return matrix
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    return u[:, s > tol * max(1.0, float(s.max()))]


def permutation_design(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, str]:
    """Design, contrast, intercept flag and scheme handed to the permutation engine.

    The columns are the tested regressor of :func:`partition_design` then its nuisance.
    When the nuisance spans the constant (group comparisons, regressions with an
    intercept), the nuisance is centred and the engine is asked to add the intercept
    itself (``model_intercept=True``): nilearn's rule then permutes the tested regressor
    (Freedman & Lane 1983) instead of flipping signs, which it does whenever the
    nuisance holds a constant column. A constant tested regressor (one-sample test)
    is tested by sign flipping (Winkler et al. 2014).
    """
    tested, nuisance = partition_design(x, c)
    ones = np.ones(len(tested))
    basis = _basis(nuisance)
    if np.linalg.norm(ones - basis @ (basis.T @ ones)) < 1e-8 * math.sqrt(len(ones)):
        nuisance, model_intercept = _basis(nuisance - nuisance.mean(axis=0)), True
    else:
        model_intercept = False
    constant = np.ptp(tested) <= 1e-12 * max(1.0, float(np.abs(tested).max()))
    design = np.column_stack([tested, nuisance])
    contrast = np.zeros(design.shape[1])
    contrast[0] = 1.0
    return design, contrast, model_intercept, "flip" if constant else "permute"


def distinct_relabellings(tested: np.ndarray, scheme: str = "permute") -> float:
    """Distinct null draws: permutations of the tested regressor (n! / prod m_k!), or 2^n sign flips."""
    if scheme == "flip":
        return float(2 ** len(tested))
    _, counts = np.unique(np.round(tested, 10), return_counts=True)
    log_n = math.lgamma(len(tested) + 1) - sum(math.lgamma(m + 1) for m in counts)
    return float(round(math.exp(log_n))) if log_n < 36 else float(math.exp(min(log_n, 700.0)))


# ----------------------------------------------------------------------------- steps


def smooth(stack: np.ndarray, affine: np.ndarray, fwhm: float | None) -> np.ndarray:
    """Gaussian smoothing of each volume (FWHM in mm), in place; non-finite values become 0."""
    from nilearn.image import smooth_img

    np.nan_to_num(stack, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if not fwhm:
        return stack
    for i in range(stack.shape[3]):
        stack[..., i] = smooth_img(nb.Nifti1Image(stack[..., i], affine), fwhm).get_fdata(dtype=np.float32)
    return stack


def gm_mask(mean_gm: np.ndarray, finite: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels whose mean modulated GM reaches ``threshold`` and where every image is finite."""
    return (mean_gm >= threshold) & finite


def analysis_mask(stack: np.ndarray, affine: np.ndarray, mask_img: ImageLike | None,
                  threshold: float) -> tuple[np.ndarray, str]:
    """The GM mask (:func:`gm_mask`) or the user's mask, restricted to voxels finite in every image."""
    finite = np.isfinite(stack).all(axis=3)
    if mask_img is not None:
        user = _load(mask_img, 0)
        mask = np.asarray(user.dataobj) > 0
        if mask.shape != finite.shape or not np.allclose(user.affine, affine, atol=1e-3):
            raise InputDataError(f"the VBM mask {_name(mask_img, 0)} is not on the grid of the images.",
                                 "Resample the mask to the images' template grid.")
        mask &= finite
        rule = f"user mask {_name(mask_img, 0)} (and finite in every image)"
    else:
        with np.errstate(invalid="ignore"):
            mean_gm = np.where(finite, stack.mean(axis=3), 0.0)
        mask = gm_mask(mean_gm, finite, threshold)
        rule = f"mean unsmoothed modulated GM >= {threshold:g} and finite in every image"
    if mask.sum() < 2:
        raise InputDataError(f"the VBM mask is empty ({rule}).",
                             "Check that the inputs are modulated GM maps, or lower mask_threshold.")
    return mask, rule


def _image(values: np.ndarray, mask: np.ndarray, affine: np.ndarray, dtype=np.float32) -> nb.Nifti1Image:
    data = np.zeros(mask.shape, dtype=dtype)
    data[mask] = values
    img = nb.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    return img


def _fit_glm(smoothed: np.ndarray, affine, mask_img, design: pd.DataFrame, contrast: np.ndarray) -> dict:
    from nilearn.glm.second_level import SecondLevelModel

    model = SecondLevelModel(mask_img=mask_img, smoothing_fwhm=None, minimize_memory=True, reports=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(nb.Nifti1Image(smoothed, affine), design_matrix=design.reset_index(drop=True))
        return model.compute_contrast(contrast, second_level_stat_type="t", output_type="all")


def _parametric_threshold(z_img, mask_img, height_control: str, alpha: float, cluster_threshold: int,
                          two_sided: bool) -> tuple[nb.Nifti1Image, float | None]:
    from nilearn.glm import threshold_stats_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        img, thr = threshold_stats_img(z_img, mask_img=mask_img, alpha=alpha, height_control=height_control,
                                       cluster_threshold=cluster_threshold, two_sided=two_sided)
    thr = float(thr)
    return img, (thr if np.isfinite(thr) else None)


def _nilearn_backend(design, contrast, data, *, mask_img, n_perm, two_sided, random_state, n_jobs, tfce,
                     model_intercept=True):
    """nilearn's ``non_parametric_inference``; ``data`` (n, v) on ``mask_img``, arrays back on the mask."""
    from nilearn.glm.second_level import non_parametric_inference
    from nilearn.image import iter_img
    from nilearn.maskers import NiftiMasker

    frame = pd.DataFrame(np.asarray(design, float), columns=[f"x{i}" for i in range(design.shape[1])])
    masker = NiftiMasker(mask_img=mask_img, standardize=None).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = non_parametric_inference(
            list(iter_img(masker.inverse_transform(data))), design_matrix=frame,
            second_level_contrast=list(np.asarray(contrast, float)), mask=mask_img, smoothing_fwhm=None,
            model_intercept=model_intercept, n_perm=n_perm, two_sided_test=two_sided, random_state=random_state,
            n_jobs=n_jobs, tfce=tfce, threshold=None)
    if not isinstance(out, dict):
        out = {"logp_max_t": out}
    return {key: masker.transform(img).ravel() for key, img in out.items()}


def _fast_backend() -> Backend | None:
    try:
        module = importlib.import_module(FAST_BACKEND[0])
    except ModuleNotFoundError:
        return None
    return getattr(module, FAST_BACKEND[1], None)


def select_backend(backend: str | Backend | None) -> tuple[str, Backend]:
    """The permutation engine: ``None``/"nilearn", "morphobids" (the fast exact engine), "auto", a callable.

    A callable is called as ``backend(design, contrast, data, mask=<3D bool array>,
    mask_img=<NIfTI mask>, affine=..., n_perm=..., two_sided=..., random_state=...,
    n_jobs=..., tfce=..., model_intercept=..., scheme=...)`` with only the keywords its
    signature accepts (all of them when it takes ``**kwargs``). ``design`` ``(n, p)`` and
    ``contrast`` ``(p,)`` come from :func:`permutation_design` (tested regressor first,
    contrast ``(1, 0, ..., 0)``), in nilearn's convention: tested = ``design @ contrast``,
    nuisance = the unweighted columns, plus an intercept when ``model_intercept``;
    ``data`` is ``(n, v)`` with ``v`` the mask voxels in C order. It returns a dict with
    ``t`` and ``p_fwe_t`` (and ``tfce``, ``p_fwe_tfce`` when TFCE is asked), arrays of
    length ``v``; ``logp_fwe_*`` (-log10 p) or nilearn's ``logp_max_*`` keys are accepted
    too. A returned ``t`` must match the GLM's t (the model is the same).
    """
    if callable(backend):
        return getattr(backend, "__qualname__", repr(backend)), backend
    choice = (backend or "nilearn").lower()
    if choice not in BACKENDS:
        raise UsageError(f"unknown permutation backend {backend!r}.", f"Choose one of {BACKENDS} or a callable.")
    if choice in ("morphobids", "auto"):
        fast = _fast_backend()
        if fast is not None:
            return ".".join(FAST_BACKEND), fast
        if choice == "morphobids":
            raise UsageError("the fast permutation engine (bids_app.group.permutation) is not available.",
                             "Use permutation_backend='nilearn'.")
    return "nilearn.glm.second_level.non_parametric_inference", _nilearn_backend


def _call_backend(fn: Backend, design, contrast, data, **options) -> dict:
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if takes_all or k in params}
    if options.get("tfce") and not ({"mask", "mask_img"} & set(kwargs)):
        raise UsageError("the permutation backend takes no mask, so it cannot compute TFCE.",
                         "Give a backend with a `mask` keyword, or tfce=False.")
    return fn(design, contrast, data, **kwargs)


def _logp(out: dict, kind: str, n_voxels: int) -> np.ndarray | None:
    """-log10 FWE p-values of ``kind`` ("t" or "tfce") from a backend's output."""
    for key, to_logp in ((f"logp_fwe_{kind}", False), (f"logp_max_{kind}", False), (f"p_fwe_{kind}", True)):
        if key in out and out[key] is not None:
            values = np.asarray(out[key], dtype=float).ravel()
            if values.size != n_voxels:
                raise MorphoBIDSError(f"permutation backend returned {values.size} values for {key}, "
                                      f"expected {n_voxels}.", "Report this as a bug.", exit_code=EX_SOFTWARE)
            return -np.log10(np.clip(values, 1e-300, 1.0)) if to_logp else values
    return None


def _permutation_inference(backend_name: str, backend: Backend, x: np.ndarray, c: np.ndarray,
                           smoothed: np.ndarray, mask: np.ndarray, mask_nii: nb.Nifti1Image, t_vals: np.ndarray, *,
                           n_perm: int, tfce: bool, two_sided: bool, fwe_alpha: float, random_state,
                           n_jobs: int) -> tuple[dict[str, nb.Nifti1Image], dict]:
    """Run the permutation engine on the masked smoothed data; -log10 p FWE images and a summary."""
    design, contrast, model_intercept, scheme = permutation_design(x, c)
    relabellings = distinct_relabellings(design[:, 0], scheme)
    if n_perm + 1 > relabellings:
        LOG.warning("only %d distinct relabellings exist for this design: permutation p-values cannot go "
                    "below 1/%d, whatever n_perm (%d).", round(relabellings), round(relabellings), n_perm)
    if tfce and backend is _nilearn_backend and n_perm > 100:
        LOG.warning("nilearn's TFCE permutations are slow (about 6 s per permutation for 130k voxels at 2 mm on "
                    "one core): %d permutations may take hours; permutation_backend='morphobids' is faster.", n_perm)
    affine = mask_nii.affine
    data = smoothed[mask].T  # (n, v), C order of the mask
    out = _call_backend(backend, design, contrast, data, mask=mask, mask_img=mask_nii, affine=affine,
                        n_perm=n_perm, two_sided=two_sided, random_state=random_state, n_jobs=n_jobs, tfce=tfce,
                        model_intercept=model_intercept, scheme=scheme)
    v = int(mask.sum())
    logp_t, logp_tfce = _logp(out, "t", v), (_logp(out, "tfce", v) if tfce else None)
    if logp_t is None or (tfce and logp_tfce is None):
        raise MorphoBIDSError(f"permutation backend {backend_name} returned no FWE p-values (keys: {sorted(out)}).",
                              "Report this as a bug.", exit_code=EX_SOFTWARE)
    images = {"logp_fwe_t_img": _image(logp_t, mask, affine)}
    if tfce:
        images["logp_fwe_tfce_img"] = _image(logp_tfce, mask, affine)
        if out.get("tfce") is not None:
            images["tfce_img"] = _image(np.asarray(out["tfce"], dtype=np.float32).ravel(), mask, affine)
    perm_t = out.get("t")
    t_difference = None
    if perm_t is not None:
        t_difference = float(np.abs(np.asarray(perm_t, float).ravel() - t_vals).max())
        if t_difference > 1e-3 * max(1.0, float(np.abs(t_vals).max())):
            raise MorphoBIDSError(f"permutation backend {backend_name} computed a t map that differs from the GLM's "
                                  f"by up to {t_difference:.3g}: it does not fit the same model.",
                                  "Check that the backend follows nilearn's design convention (see select_backend).",
                                  exit_code=EX_SOFTWARE)
    level = -math.log10(fwe_alpha)
    summary = {
        "backend": backend_name,
        "n_perm": n_perm,
        "tfce": tfce,
        "scheme": "sign flips" if scheme == "flip" else "permutations (Freedman-Lane)",
        "random_state": random_state,
        "distinct_relabellings": relabellings,
        "p_floor": 1.0 / min(relabellings, n_perm + 1),
        "fwe_alpha": fwe_alpha,
        "min_p_fwe_t": float(10 ** -logp_t.max()),
        "n_fwe_voxels_t": int((logp_t > level).sum()),
        "min_p_fwe_tfce": float(10 ** -logp_tfce.max()) if tfce else None,
        "n_fwe_voxels_tfce": int((logp_tfce > level).sum()) if tfce else None,
        "max_abs_t_difference_vs_glm": t_difference,
    }
    return images, summary


# ----------------------------------------------------------------------------- main


def run_vbm(
    images: Sequence[ImageLike],
    design: pd.DataFrame,
    contrast,
    *,
    smoothing_fwhm: float | None = 8.0,
    mask_threshold: float = 0.2,
    mask_img: ImageLike | None = None,
    height_control: str = "fdr",
    alpha: float | None = None,
    cluster_threshold: int = 0,
    two_sided: bool = False,
    n_perm: int = 5000,
    tfce: bool = True,
    fwe_alpha: float = 0.05,
    permutation_backend: str | Backend | None = None,
    n_jobs: int = 1,
    random_state: int | None = None,
) -> VBMResult:
    """Voxel-wise GLM of modulated GM maps with parametric and permutation inference.

    Parameters
    ----------
    images : one ``*_label-GM_desc-modulated_probseg.nii.gz`` per participant (paths or
        images), all on one template grid.
    design : regressors as columns, one row per image in the same order; must contain an
        intercept or one indicator per group.
    contrast : vector (one weight per column), a column name, or an expression of column
        names (``"control - patient"``). Tests ``contrast @ beta > 0`` (see module doc for
        the opposite direction and ``two_sided``).
    smoothing_fwhm : Gaussian kernel FWHM in mm (``None``/0: no smoothing).
    mask_threshold : absolute threshold on the mean unsmoothed modulated GM (0.1-0.2 as in
        SPM/CAT12); ignored when ``mask_img`` is given.
    height_control, alpha : parametric voxel threshold of the z map: ``"fdr"`` (q, default
        0.05), ``"fpr"`` (uncorrected p, default 0.001) or ``"bonferroni"`` (default 0.05).
    cluster_threshold : minimum cluster size in voxels for the thresholded map.
    n_perm : permutations (0: none); ``tfce`` adds TFCE to the voxel-wise max-t.
    fwe_alpha : FWE level used to count significant voxels in the summary.
    permutation_backend : see :func:`select_backend`.
    """
    timing = {}
    start = time.perf_counter()
    height_control = str(height_control).lower()
    if height_control not in HEIGHT_CONTROLS:
        raise UsageError(f"unknown height control {height_control!r}.", f"Choose one of {HEIGHT_CONTROLS}.")
    alpha = DEFAULT_ALPHA[height_control] if alpha is None else float(alpha)
    if not 0 < alpha < 1 or not 0 < fwe_alpha < 1:
        raise UsageError(f"alpha must lie in (0, 1), got {alpha} / {fwe_alpha}.", "Use e.g. 0.05 or 0.001.")
    if n_perm < 0 or cluster_threshold < 0:
        raise UsageError("n_perm and cluster_threshold must not be negative.", "Use 0 to disable them.")
    backend_name, backend = select_backend(permutation_backend) if n_perm else ("none", None)

    design = check_design(design, len(images))
    c = resolve_contrast(contrast, list(design.columns))
    stack, affine, names = load_images(images)
    mask, mask_rule = analysis_mask(stack, affine, mask_img, mask_threshold)
    smoothed = smooth(stack, affine, smoothing_fwhm)
    del stack
    mask_nii = _image(np.ones(int(mask.sum()), np.uint8), mask, affine, np.uint8)
    timing["load_smooth_mask"] = time.perf_counter() - start

    tic = time.perf_counter()
    glm = _fit_glm(smoothed, affine, mask_nii, design, c)
    t_vals = glm["stat"].get_fdata(dtype=np.float32)[mask]
    z_vals = glm["z_score"].get_fdata(dtype=np.float32)[mask]
    effect_vals = glm["effect_size"].get_fdata(dtype=np.float32)[mask]
    t_img, z_img = _image(t_vals, mask, affine), _image(z_vals, mask, affine)
    thresholded, z_threshold = _parametric_threshold(z_img, mask_nii, height_control, alpha, cluster_threshold,
                                                     two_sided)
    timing["glm"] = time.perf_counter() - tic

    x = design.to_numpy()
    n, p = x.shape
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    peak = int(np.argmax(np.abs(t_vals) if two_sided else t_vals))
    peak_xyz = nb.affines.apply_affine(affine, np.argwhere(mask)[peak])
    supra = np.asarray(thresholded.dataobj)[mask] != 0
    summary = {
        "n_participants": n,
        "inputs": names,
        "design_columns": [str(col) for col in design.columns],
        "contrast": [float(v) for v in c],
        "contrast_expression": contrast if isinstance(contrast, str) else None,
        "two_sided": bool(two_sided),
        "degrees_of_freedom": int(n - p),
        "smoothing_fwhm_mm": float(smoothing_fwhm or 0.0),
        "voxel_size_mm": [float(v) for v in nb.affines.voxel_sizes(affine)],
        "mask": {"rule": mask_rule, "threshold": None if mask_img is not None else float(mask_threshold),
                 "voxels": int(mask.sum()), "volume_ml": float(mask.sum() * voxel_volume / 1000.0)},
        "height_control": height_control,
        "alpha": alpha,
        "cluster_threshold_voxels": int(cluster_threshold),
        "z_threshold": z_threshold,
        "n_suprathreshold_voxels": int(supra.sum()),
        "peak": {"t": float(t_vals[peak]), "z": float(z_vals[peak]), "effect": float(effect_vals[peak]),
                 "xyz_mm": [float(v) for v in peak_xyz]},
    }

    result = VBMResult(mask_nii, _image(effect_vals, mask, affine), t_img, z_img, thresholded, z_threshold, c,
                       design, summary=summary)
    if n_perm:
        tic = time.perf_counter()
        perm_images, summary["permutation"] = _permutation_inference(
            backend_name, backend, x, c, smoothed, mask, mask_nii, t_vals, n_perm=int(n_perm), tfce=bool(tfce),
            two_sided=bool(two_sided), fwe_alpha=fwe_alpha, random_state=random_state, n_jobs=int(n_jobs))
        for attr, img in perm_images.items():
            setattr(result, attr, img)
        timing["permutation"] = time.perf_counter() - tic
    timing["total"] = time.perf_counter() - start
    summary["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    return result


# ----------------------------------------------------------------------------- outputs

#: Output name (BIDS-StatsModels-like entities + suffix) -> VBMResult attribute and description.
OUTPUTS = {
    "desc-gm_mask": ("mask_img", "Analysis mask: {mask}."),
    "stat-effect_statmap": ("effect_img", "Contrast estimate (modulated GM units, i.e. mL of GM per mL of template)."),
    "stat-t_statmap": ("t_img", "t statistic of the contrast (df = {df})."),
    "stat-z_statmap": ("z_img", "z score equivalent of the t statistic."),
    "stat-z_desc-thresholded_statmap": ("thresholded_img",
                                        "z map thresholded at {height} (z > {z}), clusters >= {k} voxels."),
    "stat-tfce_statmap": ("tfce_img", "Threshold-free cluster enhancement of the t map (Smith & Nichols 2009)."),
    "stat-logpFWE_desc-maxt_statmap": ("logp_fwe_t_img",
                                       "-log10 FWE-corrected p of the voxel-wise maximum t ({n_perm} permutations)."),
    "stat-logpFWE_desc-tfce_statmap": ("logp_fwe_tfce_img",
                                       "-log10 FWE-corrected p of TFCE ({n_perm} permutations)."),
}


def vbm_outputs(result: VBMResult) -> dict[str, nb.Nifti1Image]:
    """The result's images by output name (only those computed), e.g. ``stat-t_statmap``."""
    images = {name: getattr(result, attr) for name, (attr, _) in OUTPUTS.items()}
    return {name: img for name, img in images.items() if img is not None}


def vbm_metadata(result: VBMResult) -> dict[str, dict]:
    """Sidecar fields for each output of :func:`vbm_outputs` (Description, contrast, thresholds)."""
    s = result.summary
    perm = s.get("permutation", {})
    fill = {
        "mask": s["mask"]["rule"], "df": s["degrees_of_freedom"],
        "height": f"{s['height_control'].upper()} {s['alpha']:g}" + (" (two-sided)" if s["two_sided"] else ""),
        "z": "none" if s["z_threshold"] is None else f"{s['z_threshold']:.3f}",
        "k": s["cluster_threshold_voxels"], "n_perm": perm.get("n_perm", 0),
    }
    common = {"Contrast": s["contrast"], "DesignColumns": s["design_columns"],
              "SmoothingFWHM": s["smoothing_fwhm_mm"], "TwoSided": s["two_sided"]}
    out = {}
    for name in vbm_outputs(result):
        attr, text = OUTPUTS[name]
        meta = {"Description": text.format(**fill), **common}
        if "logpFWE" in name or name == "stat-tfce_statmap":
            meta.update({"PermutationBackend": perm.get("backend"), "NumberOfPermutations": perm.get("n_perm"),
                         "PValueFloor": perm.get("p_floor")})
        out[name] = meta
    return out
