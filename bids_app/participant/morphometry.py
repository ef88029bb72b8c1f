"""Morphometrics from tissue probability maps: TIV, tissue volumes, fractions, atlas ROI volumes.

All tissue volumes are *partial-volume weighted*: the sum over voxels of the tissue
probability times the voxel volume (the convention of SPM/CAT12 and FSL FAST's
``pve`` volumes; Ashburner & Friston, NeuroImage 2000, doi:10.1006/nimg.2000.0582).
Summing probabilities rather than counting hard labels keeps the volumes unbiased at
tissue boundaries and makes a uniform shrinkage of a region show up in proportion.

Total intracranial volume (TIV) is the volume of the intracranial mask
(:mod:`bids_app.participant.intracranial`): the brain mask grown out through the
extra-cerebral CSF to the inner table of the skull. The GM/WM/CSF volumes are those
inside the brain mask, which the segmentation fills completely (the probabilities sum
to one in it), so ``gm_ml + wm_ml + csf_ml`` is the brain-mask volume ``brain_ml``, and
``tiv_ml - brain_ml`` the extra-cerebral CSF outside it. For brain-extracted input the
intracranial mask is the template's, carried over by the normalization. Without an
intracranial mask (``icv_mask=None``) TIV falls back to the brain-mask volume.

Derived fractions:

- brain parenchymal fraction ``bpf = (GM + WM) / TIV`` (Rudick et al., Neurology 1999,
  doi:10.1212/WNL.53.8.1698, who divided by the volume inside the brain's outer contour;
  here the intracranial volume, so that a widening of the extra-cerebral CSF counts as
  atrophy too), a normalised measure of whole-brain atrophy;
- ``gm_fraction = GM / (GM + WM)``, the grey-matter share of the parenchyma.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pandas as pd

TISSUES = ("GM", "WM", "CSF")

#: Column order of the ROI table.
ROI_COLUMNS = ["index", "name", "voxels", "volume_ml", "gm_ml", "wm_ml", "csf_ml"]

#: Key order of the tissue table (one row per subject/session).
TISSUE_KEYS = ["tiv_ml", "brain_ml", "gm_ml", "wm_ml", "csf_ml", "bpf", "gm_fraction"]


def voxel_volume_ml(img: nb.spatialimages.SpatialImage) -> float:
    """Volume of one voxel in mL (|det| of the affine's 3x3 part, mm^3 / 1000)."""
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def _data(img: nb.spatialimages.SpatialImage, dtype=np.float64) -> np.ndarray:
    """Image data as ``dtype`` (scaling of integer-stored probabilities applied)."""
    return np.asanyarray(img.dataobj).astype(dtype, copy=False)


def _check_grid(reference: nb.spatialimages.SpatialImage, other: nb.spatialimages.SpatialImage, what: str) -> None:
    """Raise ``ValueError`` unless ``other`` is on ``reference``'s voxel grid."""
    if other.shape[:3] != reference.shape[:3] or not np.allclose(other.affine, reference.affine, atol=1e-3):
        raise ValueError(f"{what} is not on the grid of the tissue maps "
                         f"(shape {other.shape[:3]} vs {reference.shape[:3]}).")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def tissue_volumes(probseg: dict[str, nb.Nifti1Image], brain_mask: nb.Nifti1Image,
                   icv_mask: nb.Nifti1Image | None = None) -> dict[str, float]:
    """TIV, brain-mask volume, partial-volume GM/WM/CSF volumes (mL), brain parenchymal
    fraction and GM fraction.

    ``probseg`` maps "GM", "WM", "CSF" to probability images on the mask's grid;
    probabilities outside ``brain_mask`` are ignored. TIV is the volume of ``icv_mask``
    (the brain mask when it is None). Returns the keys of :data:`TISSUE_KEYS` (see the
    module docstring for the definitions).
    """
    mask = _data(brain_mask) > 0
    vox = voxel_volume_ml(brain_mask)
    volumes = {}
    for tissue in TISSUES:
        _check_grid(brain_mask, probseg[tissue], f"label-{tissue} probseg")
        volumes[tissue] = float(_data(probseg[tissue])[mask].sum()) * vox
    parenchyma = volumes["GM"] + volumes["WM"]
    brain = float(mask.sum()) * vox
    if icv_mask is None:
        tiv = brain
    else:
        _check_grid(brain_mask, icv_mask, "intracranial mask")
        tiv = float((_data(icv_mask) > 0).sum()) * vox
    return {
        "tiv_ml": tiv,
        "brain_ml": brain,
        "gm_ml": volumes["GM"],
        "wm_ml": volumes["WM"],
        "csf_ml": volumes["CSF"],
        "bpf": _ratio(parenchyma, tiv),
        "gm_fraction": _ratio(volumes["GM"], parenchyma),
    }


def roi_volumes(atlas_native: nb.Nifti1Image, labels: pd.DataFrame,
                probseg: dict[str, nb.Nifti1Image]) -> pd.DataFrame:
    """Per-ROI label volume and partial-volume GM/WM/CSF volumes inside it (one row per label).

    ``atlas_native`` is an integer label image on the tissue maps' grid (the atlas
    carried to native space with nearest-neighbour interpolation); ``labels`` has
    columns ``index`` and ``name``. Labels absent from the image get zero volumes.
    Columns: :data:`ROI_COLUMNS`.
    """
    reference = probseg["GM"]
    _check_grid(reference, atlas_native, "atlas")
    atlas = np.rint(np.nan_to_num(_data(atlas_native))).astype(np.int64)
    atlas[atlas < 0] = 0
    n_bins = max(int(atlas.max()), int(labels["index"].max()) if len(labels) else 0) + 1
    flat = atlas.ravel()
    vox = voxel_volume_ml(reference)
    counts = np.bincount(flat, minlength=n_bins)
    table = pd.DataFrame({"index": labels["index"].astype(int).to_numpy(),
                          "name": labels["name"].astype(str).to_numpy()})
    idx = table["index"].to_numpy()
    table["voxels"] = counts[idx].astype(np.int64)
    table["volume_ml"] = counts[idx] * vox
    for tissue in TISSUES:
        _check_grid(reference, probseg[tissue], f"label-{tissue} probseg")
        sums = np.bincount(flat, weights=_data(probseg[tissue]).ravel(), minlength=n_bins)
        table[f"{tissue.lower()}_ml"] = sums[idx] * vox
    return table[ROI_COLUMNS]


_TISSUE_DICTIONARY = {
    "tiv_ml": ("Total intracranial volume: volume of the intracranial mask (desc-intracranial_mask), the brain "
               "mask grown through the extra-cerebral CSF to the skull (for brain-extracted input: the template's "
               "intracranial mask carried over by the normalization; its sidecar says which)", "mL"),
    "brain_ml": ("Volume of the brain mask (desc-brain_mask; = GM + WM + CSF inside it)", "mL"),
    "gm_ml": ("Grey-matter volume: sum of the GM probability over the brain mask times the voxel volume", "mL"),
    "wm_ml": ("White-matter volume: sum of the WM probability over the brain mask times the voxel volume", "mL"),
    "csf_ml": ("Cerebrospinal-fluid volume: sum of the CSF probability over the brain mask times the voxel volume",
               "mL"),
    "bpf": ("Brain parenchymal fraction, (GM + WM) / TIV (Rudick et al., 1999); dimensionless, 0-1", None),
    "gm_fraction": ("Grey-matter fraction of the brain parenchyma, GM / (GM + WM); dimensionless, 0-1", None),
}

_ROI_DICTIONARY = {
    "index": ("Label value of the region in the atlas image (atlas-<A>_dseg.nii.gz)", None),
    "name": ("Name of the region in the atlas label table", None),
    "voxels": ("Number of native-space voxels carrying this label", "voxel"),
    "volume_ml": ("Volume of the region (voxels times voxel volume), all tissues", "mL"),
    "gm_ml": ("Grey-matter volume in the region: sum of the GM probability over its voxels times the voxel volume",
              "mL"),
    "wm_ml": ("White-matter volume in the region: sum of the WM probability over its voxels times the voxel volume",
              "mL"),
    "csf_ml": ("CSF volume in the region: sum of the CSF probability over its voxels times the voxel volume", "mL"),
}

_THICKNESS_DICTIONARY = {
    "thickness_mm": ("Mean cortical thickness (DiReCT) over the region's cortical voxels; n/a without cortex",
                     "mm"),
}


def data_dictionary(kind: str, thickness: bool = False) -> dict:
    """BIDS data dictionary (the JSON sidecar of a TSV) for ``kind`` "tissue" or "roi".

    Each column maps to ``{"Description": ..., "Units": ...}`` (no Units for labels);
    ``thickness`` adds the ROI table's ``thickness_mm`` column (``--cortical-thickness``).
    """
    entries = {"tissue": _TISSUE_DICTIONARY, "roi": _ROI_DICTIONARY}.get(kind)
    if entries is not None and kind == "roi" and thickness:
        entries = {**entries, **_THICKNESS_DICTIONARY}
    if entries is None:
        raise ValueError(f"Unknown table kind {kind!r}: use 'tissue' or 'roi'.")
    out = {}
    for column, (description, units) in entries.items():
        out[column] = {"Description": description}
        if units is not None:
            out[column]["Units"] = units
    return out
