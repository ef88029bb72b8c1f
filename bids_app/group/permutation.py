"""Voxel-wise OLS with permutation inference: max-t and TFCE family-wise error rates.

The model and permutation scheme are those of nilearn's
``nilearn.mass_univariate.permuted_ols`` (as called by
``non_parametric_inference``), so results can be checked against it:

- the tested regressor is ``x = X c``; the nuisance ``Z`` holds the design columns
  the contrast does not weight, plus an intercept when none is there;
- data and ``x`` are residualised on ``Z`` (orthonormal basis) and normalised; the
  t statistic of ``x`` in ``[x, Z]`` is ``beta * sqrt((dof - 1) / rss)`` with
  ``dof = n - rank(Z)``;
- null draws follow Freedman & Lane (1983): the rows of ``[x_r, Z]`` are permuted
  jointly (the same as permuting the residuals of the reduced model). When ``x`` is
  constant (one-sample test), or ``Z`` already holds an intercept column, nilearn
  flips the signs of the residualised data instead (valid under symmetric errors,
  Winkler et al. 2014, NeuroImage 92:381-397); ``scheme="auto"`` keeps that rule;
- FWE p-values come from the maximum statistic over the mask (Nichols & Holmes
  2002): ``(1 + #{null max >= observed}) / (1 + n_perm)``; TFCE (Smith & Nichols
  2009) uses :mod:`bids_app.group.tfce`.

The random stream reproduces nilearn's: ``random_state`` seeds one draw per chunk of
permutations (nilearn makes one chunk per job), each chunk draws its own
``RandomState`` and composes its permutations (or sign flips) cumulatively. With
the same ``random_state`` and ``n_chunks`` equal to nilearn's ``n_jobs``, the null
distributions are nilearn's to rounding error.

Speed comes from batching: the t maps of a batch of permutations are one matrix
product ``A @ Y`` (BLAS), then t, exceedance counts and the per-map maxima are fused
in one compiled pass, and the TFCE of each map is scored in parallel threads.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numba
import numpy as np
from sklearn.utils import check_random_state
from threadpoolctl import ThreadpoolController

from ..errors import InputDataError, UsageError
from .tfce import VoxelGraph, jit, max_tfce_batch, tfce_values

LOG = logging.getLogger("morphobids")

SCHEMES = ("auto", "permute", "flip")
_BATCH_BYTES = 128 * 2**20  # memory for the products of the batches in flight
_ZERO_VARIANCE = 1e-10  # residual norm / data norm below which a voxel is constant


# --------------------------------------------------------------------------- model


def split_design(design: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Tested regressor ``X c`` and nuisance (the columns ``c`` does not weight), as nilearn does."""
    design = np.asarray(design, dtype=np.float64)
    contrast = np.asarray(contrast, dtype=np.float64).ravel()
    if design.ndim != 2 or not np.all(np.isfinite(design)):
        raise InputDataError(f"the design matrix must be a finite 2-D array, got shape {design.shape}.",
                             "Check the covariates for missing values (n/a) and encode categories as numbers.")
    if contrast.shape != (design.shape[1],) or not np.any(contrast):
        raise UsageError(f"the contrast {contrast.tolist()} does not fit a design of {design.shape[1]} columns.",
                         "Give one non-zero weight vector with one weight per design column.")
    nuisance = design[:, contrast == 0]
    return design @ contrast, (nuisance if nuisance.shape[1] else None)


def nilearn_model(tested: np.ndarray, nuisance: np.ndarray | None,
                  model_intercept: bool = True) -> tuple[np.ndarray | None, bool]:
    """Nuisance after nilearn's intercept rules, and whether nilearn flips signs.

    Constant nuisance columns are dropped when they would duplicate an intercept; an
    intercept is added unless the tested regressor or the nuisance already is one;
    sign flipping is chosen when either holds the (single) intercept.
    """
    flip = np.unique(tested).size == 1
    if nuisance is not None:
        constants = [j for j in range(nuisance.shape[1]) if np.unique(nuisance[:, j]).size == 1]
        if (flip and len(constants) == 1) or len(constants) > 1:
            nuisance = np.delete(nuisance, constants, axis=1)
            model_intercept = True
            nuisance = nuisance if nuisance.size else None
        if not flip and len(constants) == 1:
            flip = True
    if model_intercept and not flip:
        ones = np.ones((len(tested), 1))
        nuisance = ones if nuisance is None else np.hstack([nuisance, ones])
    return nuisance, flip


def orthonormal_basis(matrix: np.ndarray | None, n_rows: int, tol: float = 1e-12) -> np.ndarray:
    """Orthonormal basis (n, rank) of the columns of ``matrix`` (SVD; rank-deficient columns dropped)."""
    if matrix is None:
        return np.zeros((n_rows, 0))
    u, s, _ = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    return np.ascontiguousarray(u[:, s > tol])


def residualise(values: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns of ``values`` minus their projection on ``basis``, scaled to unit norm.

    Returns the scaled residuals and a mask of columns that are (numerically)
    constant in the span of ``basis``; those are set to 0.
    """
    norms = np.linalg.norm(values, axis=0)
    resid = values - basis @ (basis.T @ values)
    rnorm = np.linalg.norm(resid, axis=0)
    flat = rnorm <= _ZERO_VARIANCE * np.where(norms > 0, norms, 1.0)
    resid /= np.where(flat, 1.0, rnorm)
    resid[:, flat] = 0.0
    return resid, flat


# --------------------------------------------------------------------------- stream


def chunk_sizes(n_perm: int, n_chunks: int) -> list[int]:
    """Permutations per chunk as nilearn splits them across its jobs."""
    if n_perm <= n_chunks:
        return [1] * n_perm
    sizes = [n_perm // n_chunks] * n_chunks
    sizes[-1] += n_perm % n_chunks
    return sizes


def permutation_stream(n_samples: int, n_perm: int, flip: bool, random_state=None,
                       n_chunks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Row orders (n_perm, n) and signs (n_perm, n) of each null draw, in nilearn's sequence."""
    rng = check_random_state(random_state)
    order = np.empty((n_perm, n_samples), dtype=np.int64)
    signs = np.ones((n_perm, n_samples))
    row = 0
    for size in chunk_sizes(n_perm, n_chunks):
        chunk_rng = check_random_state(rng.randint(1, np.iinfo(np.int32).max - 1))
        current = np.arange(n_samples)
        sign = np.ones(n_samples)
        for _ in range(size):
            if flip:
                sign = sign * (chunk_rng.randint(2, size=(n_samples, 1)) * 2 - 1).ravel()
            else:
                current = current[chunk_rng.permutation(n_samples)]
            order[row], signs[row] = current, sign
            row += 1
    return order, signs


# --------------------------------------------------------------------------- kernels


@jit(nogil=True)
def _t_kernel(products, n_rows, scale, observed, two_sided, t_out, exceed):  # pragma: no cover - compiled
    best = np.empty(t_out.shape[0])
    for b in range(t_out.shape[0]):
        r0 = b * n_rows
        top = -np.inf
        for v in range(t_out.shape[1]):
            beta = products[r0, v]
            a2 = 0.0
            for j in range(1, n_rows):
                a2 += products[r0 + j, v] ** 2
            t = beta * np.sqrt(scale / (1.0 - a2 - beta * beta))
            t_out[b, v] = t
            stat = abs(t) if two_sided else t
            if stat >= observed[v]:
                exceed[v] += 1
            if stat > top:
                top = stat
        best[b] = top
    return best


def _t_batch(products, n_rows, dof, observed, two_sided, t_out, exceed) -> np.ndarray:
    """t maps of a batch from ``products`` (B * n_rows, V), with exceedance counts and maxima.

    Row ``b * n_rows`` holds ``x_b . y`` and the next ``n_rows - 1`` rows ``Z_b . y``;
    ``t = beta * sqrt((dof - 1) / (1 - |Z_b . y|^2 - beta^2))`` (unit-norm y, orthonormal
    ``[x_b, Z_b]``, as nilearn's t formula). ``exceed[v]`` counts maps whose statistic
    reaches ``observed[v]``; returns each map's maximum statistic.
    """
    return _t_kernel(products, n_rows, dof - 1.0, observed, bool(two_sided), t_out, exceed)


def _null_draws(y_r, design_rows, order, signs, dof, stat_obs, two_sided, graph, n_threads, step,
                tfce_kw) -> tuple:
    """Max-t, max-TFCE (``tfce_kw``: its parameters; None: skipped) and per-voxel exceedance counts.

    Batches of ``step`` draws are shared among ``n_threads`` worker threads; each runs
    its batch alone (one-thread BLAS product, compiled kernels without the GIL), so
    workers never wait for one another.
    """
    n_perm, n_samples = order.shape
    rows = design_rows.shape[0]
    null_t, null_tfce = np.empty(n_perm), np.empty(n_perm)
    batches = iter([(lo, min(lo + step, n_perm)) for lo in range(0, n_perm, step)])
    lock = threading.Lock()

    def worker() -> np.ndarray:
        exceed = np.zeros(graph.n_voxels, np.int64)
        maps = np.empty((step, graph.n_voxels))
        while True:
            with lock:
                batch = next(batches, None)
            if batch is None:
                return exceed
            lo, hi = batch
            # row b * rows + j: design row j of draw b, its rows reordered and signed
            a = (design_rows[:, order[lo:hi]] * signs[None, lo:hi]).transpose(1, 0, 2).reshape(-1, n_samples)
            block = maps[: hi - lo]
            null_t[lo:hi] = _t_batch(a @ y_r, rows, dof, stat_obs, two_sided, block, exceed)
            if tfce_kw is not None:
                null_tfce[lo:hi] = max_tfce_batch(block, graph, parallel=False, **tfce_kw)

    if n_threads == 1:
        counts = [worker()]
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            counts = [job.result() for job in [pool.submit(worker) for _ in range(n_threads)]]
    return null_t, null_tfce, np.sum(counts, axis=0)


# --------------------------------------------------------------------------- API


def fwe_pvalues(observed: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """Max-statistic FWE p-values ``(1 + #{null >= obs}) / (1 + n)`` (Nichols & Holmes 2002)."""
    null = np.sort(np.asarray(null_max, dtype=np.float64))
    below = np.searchsorted(null, observed, side="left")
    return (len(null) + 1 - below) / (len(null) + 1.0)


def _graph(mask, connectivity) -> VoxelGraph:
    if isinstance(mask, VoxelGraph):
        return mask
    mask = np.asanyarray(getattr(mask, "dataobj", mask))
    if mask.ndim == 2 and mask.shape[1] == 3 and np.issubdtype(mask.dtype, np.integer):
        raise UsageError("voxel coordinates need a grid shape.", "Pass VoxelGraph.from_ijk(ijk, shape) as mask.")
    return VoxelGraph.from_mask(mask, connectivity)


def _n_threads(n_jobs: int) -> int:
    cores = numba.config.NUMBA_NUM_THREADS
    if n_jobs == 0:
        raise UsageError("n_jobs must not be 0.", "Use a positive number of threads, or -1 for all cores.")
    return max(1, min(cores, n_jobs if n_jobs > 0 else cores + 1 + n_jobs))


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """The BLAS/OpenMP thread pools of this process (scanning them takes ~0.1 s: once)."""
    return ThreadpoolController()


@contextmanager
def _threads(n: int):
    """Limit BLAS and numba to ``n`` threads for the duration."""
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with _blas().limit(limits=n):
            yield
    finally:
        numba.set_num_threads(before)


def permuted_ols_tfce(design: np.ndarray, contrast: np.ndarray, data: np.ndarray, mask,
                      n_perm: int = 5000, two_sided: bool = True, random_state=None, n_jobs: int = 1, *,
                      tfce: bool = True, model_intercept: bool = True, scheme: str = "auto", E: float = 0.5, H: float = 2,
                      dh: float | str = "auto", connectivity: int | np.ndarray = 6,
                      batch_size: int | None = None, n_chunks: int | None = None) -> dict[str, Any]:
    """Permutation test of ``contrast`` on voxel-wise OLS, with max-t and max-TFCE FWE correction.

    Parameters
    ----------
    design : (n, p) design matrix (subjects by regressors).
    contrast : (p,) weights; the tested regressor is ``design @ contrast`` and the
        columns with zero weight are nuisance (as nilearn's ``non_parametric_inference``).
    data : (n, V) values of the V in-mask voxels, in the mask's C order (``img[mask]``).
    mask : 3-D mask (array or image) or a :class:`~bids_app.group.tfce.VoxelGraph`.
    n_perm : number of null draws (0: observed maps only).
    two_sided : test both signs (|t|, |TFCE|) or only positive effects.
    random_state, n_chunks : seed and chunking of the random stream (see module
        docstring); ``n_chunks`` defaults to ``n_jobs``, which matches nilearn.
    n_jobs : threads (BLAS and numba); -1 for all cores.
    tfce : also score TFCE (False: max-t inference only, the ``*tfce`` keys are left out).
    scheme : "auto" (nilearn's rule), "permute" (Freedman-Lane) or "flip" (sign flips).
    E, H, dh, connectivity : TFCE parameters (nilearn's defaults).

    Returns
    -------
    dict with ``t``, ``tfce``, ``p_fwe_t``, ``p_fwe_tfce``, ``p_unc`` (V,) arrays (``p_unc``:
    per-voxel permutation p of t, ``(1 + #{null >= observed}) / (1 + n_perm)``),
    ``null_max_t`` and ``null_max_tfce`` (n_perm,) in draw order, ``scheme`` and ``dof``.
    """
    started = time.perf_counter()
    if scheme not in SCHEMES:
        raise UsageError(f"unknown permutation scheme {scheme!r}.", f"Use one of {', '.join(SCHEMES)}.")
    if int(n_perm) < 0:
        raise UsageError(f"n_perm must be >= 0, got {n_perm}.", "Use e.g. 5000 permutations.")
    n_perm = int(n_perm)
    graph = _graph(mask, connectivity)
    tested, nuisance = split_design(design, contrast)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape != (len(tested), graph.n_voxels):
        raise InputDataError(f"data of shape {data.shape} do not match {len(tested)} design rows and "
                             f"{graph.n_voxels} mask voxels.", "Pass one row per subject and one column per "
                             "in-mask voxel, in the mask's C order (img[mask]).")
    if not np.all(np.isfinite(data)):
        raise InputDataError(f"the data hold {int(np.count_nonzero(~np.isfinite(data)))} non-finite values.",
                             "Restrict the mask to voxels where every subject's map is finite.")
    nuisance, flip = nilearn_model(tested, nuisance, model_intercept)
    flip = flip if scheme == "auto" else scheme == "flip"
    n_samples = len(tested)
    basis = orthonormal_basis(nuisance, n_samples)
    dof = n_samples - basis.shape[1]
    if dof - 1 < 1:
        raise InputDataError(f"{n_samples} subjects leave no degrees of freedom for {basis.shape[1] + 1} "
                             "regressors.", "Add subjects or remove covariates.")
    x_r, flat_x = residualise(tested[:, None], basis)
    if flat_x[0]:
        raise UsageError("the contrast is not estimable: the tested regressor is a combination of the "
                         "nuisance columns.", "Check the contrast weights against the design columns.")
    y_r, flat = residualise(np.asarray(data, dtype=np.float64), basis)
    if flat.any():
        LOG.warning("%d voxel(s) are constant across subjects: their t and TFCE are set to 0.", int(flat.sum()))
    y_r = np.ascontiguousarray(y_r)
    x_r = x_r[:, 0]
    n_threads = _n_threads(n_jobs)
    rows = 1 + basis.shape[1]
    design_rows = np.vstack([x_r, basis.T])  # (rows, n)

    with _threads(n_threads):
        t_obs = np.empty((1, graph.n_voxels))
        _t_batch(design_rows @ y_r, rows, dof, np.full(graph.n_voxels, np.inf), two_sided, t_obs,
                 np.zeros(graph.n_voxels, np.int64))
        t_obs = t_obs[0]
    out: dict[str, Any] = {"t": t_obs, "scheme": "flip" if flip else "permute", "dof": dof}
    if tfce:
        out["tfce"] = tfce_values(t_obs, graph, E=E, H=H, dh=dh, two_sided=two_sided)
    if n_perm == 0:
        return out
    order, signs = permutation_stream(n_samples, n_perm, flip, random_state, n_chunks or n_threads)
    stat_obs = np.abs(t_obs) if two_sided else t_obs
    step = batch_size or max(1, min(64, _BATCH_BYTES // (n_threads * 8 * rows * max(graph.n_voxels, 1))))
    with _threads(1):  # the workers are the parallelism
        null_t, null_tfce, exceed = _null_draws(y_r, design_rows, order, signs, dof, stat_obs, two_sided, graph,
                                                n_threads, step,
                                                dict(E=E, H=H, dh=dh, two_sided=two_sided) if tfce else None)
    out.update(p_fwe_t=fwe_pvalues(stat_obs, null_t), p_unc=(1.0 + exceed) / (n_perm + 1.0), null_max_t=null_t)
    if tfce:
        out.update(p_fwe_tfce=fwe_pvalues(np.abs(out["tfce"]), null_tfce), null_max_tfce=null_tfce)
    LOG.info("%d %s draws on %d voxels x %d subjects in %.1f s (%d threads).", n_perm, out["scheme"],
             graph.n_voxels, n_samples, time.perf_counter() - started, n_threads)
    return out


__all__ = ["chunk_sizes", "fwe_pvalues", "nilearn_model", "orthonormal_basis", "permutation_stream",
           "permuted_ols_tfce", "residualise", "split_design"]
