"""Threshold-free cluster enhancement (TFCE), exact and fast.

TFCE (Smith & Nichols 2009, NeuroImage 44:83-98) scores each voxel ``v`` by

    TFCE(v) = sum_k  e_k(v)^E * h_k^H

over a ladder of heights ``h_1 < ... < h_K``, where ``e_k(v)`` is the number of
voxels in the connected cluster holding ``v`` once the map is thresholded at
``h_k``. The definition here is the one of nilearn's
``nilearn.mass_univariate._utils.calculate_tfce`` (itself modelled on fslmaths):

- the ladder is ``linspace(0, max, K + 1)[1:]`` with ``max = max |stat|``
  (two-sided) or ``max stat`` (one-sided), and ``K = 100`` steps (``dh="auto"``)
  or ``round(max / dh)`` clipped to [10, 1000];
- like fslmaths, the score is *not* multiplied by ``dh``;
- a voxel is above height ``h`` when ``stat >= h``; two-sided maps score the
  positive and the negative part separately on the same ladder, negative
  clusters getting negative TFCE;
- clusters are face-connected (6-connectivity) unless told otherwise.

Instead of labelling the map once per height (nilearn: up to 200 labellings of
the whole grid), the clusters of all heights are read from one component tree
(max-tree; Salembier et al. 1998, IEEE TIP 7:555-570) of the ladder levels, built
by the linear-time flooding of Nister & Stewenius (2008, ECCV, "Linear time
maximally stable extremal regions"). A tree node is a cluster over a range of
heights; its score is its parent's plus ``area^E * sum h^H`` over that range, and a
voxel's TFCE is the score of the node it tops. The cost is O(V * connectivity) per
map, with mostly local memory access. Kernels are compiled with numba;
:func:`max_tfce_batch` scores many maps (permutations) on parallel threads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

from ..errors import InputDataError

AUTO_STEPS = 100
MIN_STEPS = 10
MAX_STEPS = 1000


# --------------------------------------------------------------------------- graph


def structure(connectivity: int | np.ndarray = 6) -> np.ndarray:
    """The 3x3x3 boolean neighbourhood: 6 (faces), 18 (edges), 26 (corners) or an explicit array."""
    if isinstance(connectivity, (int, np.integer)) and not isinstance(connectivity, bool):
        rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
        if rank is None:
            raise InputDataError(f"connectivity must be 6, 18 or 26, got {connectivity}.",
                                 "Use 6 (nilearn's and FSL's default) or pass a 3x3x3 boolean array.")
        return ndimage.generate_binary_structure(3, rank)
    struct = np.asarray(connectivity).astype(bool)
    if struct.shape != (3, 3, 3) or not np.array_equal(struct, struct[::-1, ::-1, ::-1]):
        raise InputDataError("connectivity array must be a 3x3x3 boolean array symmetric about its centre.",
                             "Use scipy.ndimage.generate_binary_structure(3, 1) or an integer 6/18/26.")
    return struct


def _offsets(struct: np.ndarray) -> np.ndarray:
    """Neighbour offsets of a 3x3x3 structure, centre excluded, shape (k, 3)."""
    off = np.argwhere(struct) - 1
    return off[np.any(off != 0, axis=1)]


@dataclass(frozen=True, eq=False)
class VoxelGraph:
    """In-mask voxels of a 3-D grid and their in-mask neighbours.

    ``ijk`` (V, 3) gives the voxel coordinates in the order of the data columns;
    ``neighbours`` (V, k) holds the row indices of each voxel's in-mask neighbours,
    padded at the end with -1.
    """

    shape: tuple[int, int, int]
    ijk: np.ndarray
    neighbours: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.ijk.shape[0])

    @classmethod
    def from_mask(cls, mask, connectivity: int | np.ndarray = 6) -> VoxelGraph:
        """Graph of the non-zero voxels of a 3-D mask (array or image), in C order like ``data[mask]``."""
        mask = np.asanyarray(getattr(mask, "dataobj", mask))
        if mask.ndim != 3:
            raise InputDataError(f"the mask must be 3-D, got shape {mask.shape}.",
                                 "Pass a 3-D brain or grey-matter mask image.")
        return cls.from_ijk(np.argwhere(mask != 0), mask.shape, connectivity)

    @classmethod
    def from_ijk(cls, ijk, shape, connectivity: int | np.ndarray = 6) -> VoxelGraph:
        """Graph of the voxels at integer coordinates ``ijk`` (V, 3) of a grid of ``shape``."""
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or np.any(ijk < 0) or np.any(ijk >= np.array(shape)):
            raise InputDataError(f"voxel coordinates fall outside the grid of shape {shape}.",
                                 "Give (V, 3) indices inside the 3-D grid.")
        index = np.full(tuple(s + 2 for s in shape), -1, dtype=np.int64)
        index[ijk[:, 0] + 1, ijk[:, 1] + 1, ijk[:, 2] + 1] = np.arange(len(ijk))
        if np.count_nonzero(index >= 0) != len(ijk):
            raise InputDataError("voxel coordinates are repeated.", "Give each voxel once.")
        off = _offsets(structure(connectivity))
        table = np.stack([index[ijk[:, 0] + 1 + di, ijk[:, 1] + 1 + dj, ijk[:, 2] + 1 + dk]
                          for di, dj, dk in off], axis=1) if len(off) else np.empty((len(ijk), 0), np.int64)
        table = -np.sort(-table, axis=1)  # valid indices first, -1 padding last
        return cls(shape, ijk, np.ascontiguousarray(table, dtype=np.int32))

    def to_volume(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Scatter per-voxel ``values`` (V,) back into a 3-D array."""
        out = np.full(self.shape, fill, dtype=np.result_type(values, np.float64))
        out[tuple(self.ijk.T)] = values
        return out


# --------------------------------------------------------------------------- heights


def n_steps(max_score: float, dh: float | str = "auto") -> int:
    """Number of heights in the ladder: 100 for ``"auto"``, else ``round(max / dh)`` clipped to [10, 1000]."""
    if dh == "auto":
        steps = AUTO_STEPS
    else:
        if not float(dh) > 0:
            raise InputDataError(f"the TFCE step dh must be positive or 'auto', got {dh!r}.",
                                 "Use dh='auto' (100 steps, as fslmaths) or e.g. 0.1 for t maps.")
        steps = round(float(max_score) / float(dh))
    return int(min(max(steps, MIN_STEPS), MAX_STEPS))


def thresholds(max_score: float, dh: float | str = "auto") -> np.ndarray:
    """The heights ``linspace(0, max, K + 1)[1:]`` of the TFCE ladder."""
    return np.linspace(0, max_score, n_steps(max_score, dh) + 1)[1:]


def _warn_steps(max_scores: np.ndarray, dh: float | str) -> None:
    if dh == "auto" or not len(max_scores):
        return
    raw = np.round(np.asarray(max_scores, dtype=float) / float(dh))
    if np.any(raw < MIN_STEPS) or np.any(raw > MAX_STEPS):
        warnings.warn(f"TFCE step dh={dh} gives {int(raw.min())}-{int(raw.max())} heights: clipped to "
                      f"[{MIN_STEPS}, {MAX_STEPS}].", stacklevel=3)


def _max_score(values: np.ndarray, two_sided: bool) -> float:
    return float(np.max(np.abs(values)) if two_sided else np.max(values)) if values.size else 0.0


# --------------------------------------------------------------------------- kernels


def jit(**options):
    """``numba.njit`` caching compiled code on disk when a cache location is writable.

    Read-only installs without a writable ``$HOME`` (containers) compile at first use
    instead (a few seconds); ``NUMBA_CACHE_DIR`` points numba at a writable cache.
    """
    def wrap(func):
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError:  # numba found no writable cache location
            return numba.njit(**options)(func)
    return wrap


@jit(nogil=True)
def _tags(values, thr, n_lev, two_sided, tag):  # pragma: no cover - compiled
    """Per voxel ``2 * level + negative``: ``level`` is the highest ladder index the voxel
    reaches, ``negative`` its side in a two-sided map; -1 for voxels below the ladder."""
    top = thr[n_lev - 1]
    for v in range(values.shape[0]):
        x = values[v]
        neg = 0
        if two_sided and x < 0:
            x = -x
            neg = 1
        tag[v] = -1
        if top > 0:
            if x >= thr[0]:
                # the ladder is evenly spaced: guess, then settle on exact comparisons
                k = min(max(int(x / thr[0]) - 1, 0), n_lev - 1)
                while k < n_lev - 1 and thr[k + 1] <= x:
                    k += 1
                while thr[k] > x:
                    k -= 1
                tag[v] = 2 * k + neg
        elif top < 0 and not two_sided:
            # one-sided map with no positive value: the ladder descends, so only the
            # first height removes voxels (nilearn zeroes values below each height in turn)
            if x != 0 and x >= thr[0]:
                tag[v] = 2 * (n_lev - 1)


@jit(nogil=True)
def _score(tag, neighbours, cum, n_lev, power, out, want_map):  # pragma: no cover - compiled
    """TFCE from voxel tags (see :func:`_tags`) by flooding the component tree; returns max |TFCE|.

    ``cum[k]`` is ``sum_{i<=k} h_i^H`` and ``power[n]`` is ``n^E``. With ``want_map``,
    ``out`` receives the signed score of every voxel (0 below the ladder).

    Each connected region of one side is flooded from any voxel (Nister & Stewenius
    2008): the walk climbs at once to any higher neighbour, keeps the others on a
    boundary heap (one list per level) and always resumes from the highest level,
    so each tree node (a cluster at a height) is closed as soon as the walk drops
    below it. A node's score is its parent's plus ``area^E * sum of h^H`` over the
    heights where it is the cluster; a voxel's score is that of its own node.
    """
    n_vox = tag.shape[0]
    n_nb = neighbours.shape[1]
    visited = np.zeros(n_vox, np.uint8)
    node_of = np.empty(n_vox if want_map else 0, np.int32)
    # component-tree nodes
    nlevel = np.empty(n_vox, np.int32)
    narea = np.empty(n_vox, np.int64)
    nparent = np.empty(n_vox, np.int32)
    n_nodes = 0
    # boundary heap: one LIFO list per level
    head = np.full(n_lev, -1, np.int32)
    nxt = np.empty(2 * n_vox + 1, np.int32)
    item = np.empty(2 * n_vox + 1, np.int32)
    stack = np.empty(n_lev + 1, np.int32)
    for s in range(n_vox):
        if tag[s] < 0 or visited[s]:
            continue
        n_free = 0
        visited[s] = 1
        cur = s
        lc = tag[s] >> 1
        grp = tag[s] & 1
        nlevel[n_nodes] = lc
        narea[n_nodes] = 0
        nparent[n_nodes] = -1
        stack[0] = n_nodes
        depth = 1
        n_nodes += 1
        hp = -1
        while True:
            # explore neighbours, descending at once to any higher one
            j = 0
            while j < n_nb:
                u = neighbours[cur, j]
                if u < 0:
                    break
                j += 1
                tu = tag[u]
                if tu < 0 or visited[u] or (tu & 1) != grp:
                    continue
                visited[u] = 1
                lu = tu >> 1
                if lu <= lc:
                    item[n_free] = u
                    nxt[n_free] = head[lu]
                    head[lu] = n_free
                    n_free += 1
                    if lu > hp:
                        hp = lu
                else:
                    item[n_free] = cur  # come back to it later
                    nxt[n_free] = head[lc]
                    head[lc] = n_free
                    n_free += 1
                    if lc > hp:
                        hp = lc
                    cur = u
                    lc = lu
                    nlevel[n_nodes] = lu
                    narea[n_nodes] = 0
                    nparent[n_nodes] = -1
                    stack[depth] = n_nodes
                    depth += 1
                    n_nodes += 1
                    j = 0
            top = stack[depth - 1]
            narea[top] += 1
            if want_map:
                node_of[cur] = top
            # next voxel: the highest level on the boundary
            while hp >= 0 and head[hp] < 0:
                hp -= 1
            if hp < 0:
                break
            slot = head[hp]
            head[hp] = nxt[slot]
            cur = item[slot]
            lc = hp
            # close the components above the new level
            while nlevel[stack[depth - 1]] > lc:
                n = stack[depth - 1]
                depth -= 1
                if depth > 0 and nlevel[stack[depth - 1]] >= lc:
                    m = stack[depth - 1]
                    nparent[n] = m
                    narea[m] += narea[n]
                else:
                    m = n_nodes
                    n_nodes += 1
                    nlevel[m] = lc
                    narea[m] = narea[n]
                    nparent[m] = -1
                    nparent[n] = m
                    stack[depth] = m
                    depth += 1
        while depth > 1:
            n = stack[depth - 1]
            depth -= 1
            m = stack[depth - 1]
            nparent[n] = m
            narea[m] += narea[n]
    # scores, parents (lower levels) first
    start = np.zeros(n_lev + 1, np.int64)
    for i in range(n_nodes):
        start[nlevel[i] + 1] += 1
    for k in range(n_lev):
        start[k + 1] += start[k]
    order = np.empty(n_nodes, np.int32)
    for i in range(n_nodes):
        order[start[nlevel[i]]] = i
        start[nlevel[i]] += 1
    score = np.empty(n_nodes, np.float64)
    best = 0.0
    for i in range(n_nodes):
        n = order[i]
        p = nparent[n]
        if p < 0:
            score_n = power[narea[n]] * cum[nlevel[n]]
        else:
            score_n = score[p] + power[narea[n]] * (cum[nlevel[n]] - cum[nlevel[p]])
        score[n] = score_n
        if score_n > best:
            best = score_n
    if want_map:
        for v in range(n_vox):
            if tag[v] < 0:
                out[v] = 0.0
            else:
                score_n = score[node_of[v]]
                out[v] = -score_n if tag[v] & 1 else score_n
    return best


@jit(nogil=True)
def _tfce_one(values, thr, cum, n_lev, two_sided, neighbours, power, out, want_map):  # pragma: no cover
    tag = np.empty(values.shape[0], np.int16)
    _tags(values, thr, n_lev, two_sided, tag)
    return _score(tag, neighbours, cum, n_lev, power, out, want_map)


@jit(parallel=True)
def _tfce_rows_max_parallel(stats, thr, cum, n_lev, two_sided, neighbours, power):  # pragma: no cover
    best = np.empty(stats.shape[0], np.float64)
    out = np.empty(0, np.float64)
    for b in numba.prange(stats.shape[0]):
        best[b] = _tfce_one(stats[b], thr[b], cum[b], n_lev[b], two_sided, neighbours, power, out, False)
    return best


@jit(nogil=True)
def _tfce_rows_max_serial(stats, thr, cum, n_lev, two_sided, neighbours, power):  # pragma: no cover
    best = np.empty(stats.shape[0], np.float64)
    out = np.empty(0, np.float64)
    for b in range(stats.shape[0]):
        best[b] = _tfce_one(stats[b], thr[b], cum[b], n_lev[b], two_sided, neighbours, power, out, False)
    return best


#: below this many voxel-maps a batch runs in one thread (thread start-up would dominate)
PARALLEL_MIN_WORK = 1_000_000


# --------------------------------------------------------------------------- API


def _ladder(max_scores: np.ndarray, dh, H: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heights, cumulative ``h^H`` and ladder lengths for each map (rows padded with +inf)."""
    _warn_steps(max_scores, dh)
    ladders = [thresholds(m, dh) for m in max_scores]
    n_lev = np.array([len(t) for t in ladders], dtype=np.int64)
    width = int(n_lev.max()) if len(n_lev) else 1
    thr = np.full((len(ladders), width), np.inf)
    cum = np.zeros((len(ladders), width))
    with np.errstate(invalid="ignore"):
        for i, t in enumerate(ladders):
            thr[i, :len(t)] = t
            cum[i, :len(t)] = np.cumsum(t ** H)
    return thr, cum, n_lev


def _powers(n_voxels: int, E: float) -> np.ndarray:
    """Cluster-extent weights ``n^E`` for n = 0..n_voxels (as numpy computes ``counts ** E``)."""
    return np.arange(n_voxels + 1, dtype=np.int64) ** float(E)


def _check_values(values: np.ndarray, what: str) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputDataError(f"the {what} has {int(np.count_nonzero(~np.isfinite(values)))} non-finite values "
                             "inside the mask.", "Exclude those voxels from the mask or set them to 0.")
    return values


def tfce_values(values: np.ndarray, graph: VoxelGraph, E: float = 0.5, H: float = 2,
                dh: float | str = "auto", two_sided: bool = True) -> np.ndarray:
    """TFCE of in-mask statistics ``values`` (V,) on ``graph``; same order, signed."""
    values = _check_values(values, "statistic map")
    if values.shape != (graph.n_voxels,):
        raise InputDataError(f"the statistic has {values.size} values for a mask of {graph.n_voxels} voxels.",
                             "Pass one value per in-mask voxel, in the mask's C order.")
    out = np.zeros(graph.n_voxels)
    if graph.n_voxels:
        thr, cum, n_lev = _ladder(np.array([_max_score(values, two_sided)]), dh, H)
        _tfce_one(values, thr[0], cum[0], int(n_lev[0]), bool(two_sided), graph.neighbours, _powers(graph.n_voxels, E),
                  out, True)
    return out


def tfce(stat_3d: np.ndarray, mask=None, E: float = 0.5, H: float = 2, dh: float | str = "auto",
         connectivity: int | np.ndarray = 6, two_sided: bool = True) -> np.ndarray:
    """TFCE of a 3-D statistic map (Smith & Nichols 2009), as nilearn's ``calculate_tfce``.

    Voxels outside ``mask`` (default: the whole grid) count as 0. Returns a 3-D array,
    positive for positive clusters and negative for negative ones (two-sided).
    """
    stat_3d = np.asanyarray(stat_3d)
    if stat_3d.ndim != 3:
        raise InputDataError(f"the statistic map must be 3-D, got shape {stat_3d.shape}.",
                             "Pass one 3-D map at a time.")
    if mask is None:
        mask = np.ones(stat_3d.shape, dtype=bool)
    mask = np.asanyarray(getattr(mask, "dataobj", mask)) != 0
    if mask.shape != stat_3d.shape:
        raise InputDataError(f"mask shape {mask.shape} differs from the map's {stat_3d.shape}.",
                             "Resample the mask to the statistic map's grid.")
    graph = VoxelGraph.from_mask(mask, connectivity)
    values = tfce_values(stat_3d[mask], graph, E=E, H=H, dh=dh, two_sided=two_sided)
    return graph.to_volume(values)


def max_tfce_batch(stats: np.ndarray, graph: VoxelGraph, E: float = 0.5, H: float = 2,
                   dh: float | str = "auto", two_sided: bool = True, parallel: bool | None = None) -> np.ndarray:
    """Max |TFCE| of each row of ``stats`` (B, V).

    ``parallel``: spread the rows over numba's threads (default: for large batches
    when numba has more than one thread); ``False`` keeps to the calling thread.
    """
    stats = _check_values(stats, "statistic maps")
    if stats.ndim != 2 or stats.shape[1] != graph.n_voxels:
        raise InputDataError(f"statistic maps of shape {stats.shape} do not match a mask of {graph.n_voxels} "
                             "voxels.", "Pass an array of shape (n_maps, n_voxels).")
    if stats.shape[0] == 0 or graph.n_voxels == 0:
        return np.zeros(stats.shape[0])
    maxima = np.abs(stats).max(axis=1) if two_sided else stats.max(axis=1)
    thr, cum, n_lev = _ladder(maxima, dh, H)
    if parallel is None:
        parallel = stats.size >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1
    kernel = _tfce_rows_max_parallel if parallel else _tfce_rows_max_serial
    return kernel(stats, thr, cum, n_lev, bool(two_sided), graph.neighbours, _powers(graph.n_voxels, E))
