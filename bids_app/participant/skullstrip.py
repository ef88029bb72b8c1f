"""Brain extraction: deepbet (Fisch et al., 2024, deep-learning BET; weights ship in its wheel),
a template-based antspyx fallback, detection of input that is already brain-extracted, and
the trim of the outer CSF that puts the mask's edge where the template's brain mask has it.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_app.arrays import bounding_box

#: An image is taken as already brain-extracted when its non-background volume is
#: brain-sized (a head with scalp and neck is 3-6 L) and the background is flat.
PRESTRIPPED_MAX_ML = 2300.0
PRESTRIPPED_MIN_ML = 500.0


def foreground_volume_ml(img: nb.Nifti1Image) -> float:
    """Volume (mL) of voxels above the image minimum (the flat background of stripped data)."""
    data = np.asanyarray(img.dataobj)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return float((data > data.min()).sum()) * voxel_ml


def is_brain_extracted(img: nb.Nifti1Image) -> bool:
    """True when ``img`` looks already skull-stripped: a brain-sized, flat-background foreground."""
    data = np.asanyarray(img.dataobj)
    background = data <= data.min()
    if background.mean() < 0.3:  # full FOV noise: a raw head scan
        return False
    return PRESTRIPPED_MIN_ML <= foreground_volume_ml(img) <= PRESTRIPPED_MAX_ML


#: Brain masks outside this range (mL) are not a human brain: the processing stops.
PLAUSIBLE_BRAIN_ML = (400.0, 2600.0)


def check_brain_volume(mask: nb.Nifti1Image, method: str) -> float:
    """Volume of ``mask`` in mL; raise ``ValueError`` when it cannot be a human brain."""
    volume = float((np.asanyarray(mask.dataobj) > 0).sum() * np.prod(mask.header.get_zooms()[:3]) / 1000)
    lo, hi = PLAUSIBLE_BRAIN_ML
    if not lo <= volume <= hi:
        raise ValueError(f"brain extraction ({method}) gave an implausible brain volume of {volume:.0f} mL "
                         f"(expected {lo:.0f}-{hi:.0f} mL): is this a T1w image of a human head? "
                         "Try --skull-strip ants, or --skull-strip skip for brain-extracted input.")
    return volume


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with holes filled."""
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def mask_from_stripped(img: nb.Nifti1Image) -> nb.Nifti1Image:
    """Brain mask of an already brain-extracted image: its non-background voxels."""
    data = np.asanyarray(img.dataobj)
    return nb.Nifti1Image(clean_mask(data > data.min()).astype(np.uint8), img.affine)


#: Outer CSF more than this far (mm) outside the template's brain mask is trimmed.
TRIM_MARGIN_MM = 1.0
TRIM_METHOD = (f"outer CSF (P(CSF) > 0.5) more than {TRIM_MARGIN_MM:g} mm outside the template's brain mask "
               "(carried by the normalization) removed")


def trim_outer_csf(mask: np.ndarray, csf: np.ndarray, template_brain: np.ndarray, zooms,
                   margin_mm: float = TRIM_MARGIN_MM) -> np.ndarray:
    """``mask`` without its CSF-dominant voxels (``csf`` > 0.5) that lie more than ``margin_mm``
    outside ``template_brain`` (the template's brain mask on the same grid); largest component,
    holes filled.

    deepbet's mask keeps about one voxel more of the CSF between the gyral crowns and the
    skull than the MNI152NLin2009cAsym brain mask does (+107 mL on the template head itself,
    Dice 0.970; ``bench/brain_mask.py``). Only voxels that the segmentation calls CSF and the
    template places outside the brain go: 27-55 mL per ds000011 head, of which 1.6-3.7 mL is
    grey matter by partial volume (0.3-0.5 % of the GM).
    """
    if not mask.any():
        return mask.astype(bool)
    sl = bounding_box(mask, margin=int(np.ceil(margin_mm / min(zooms))) + 1)
    outside = ndimage.distance_transform_edt(~template_brain[sl].astype(bool), sampling=zooms) > margin_mm
    trimmed = mask.astype(bool).copy()
    trimmed[sl] &= ~(outside & (csf[sl] > 0.5))
    return clean_mask(trimmed) if trimmed.any() else mask.astype(bool)


def deepbet_mask(img: nb.Nifti1Image, threshold: float = 0.5, nthreads: int | None = None) -> nb.Nifti1Image:
    """Brain mask from deepbet's two TorchScript models (bounding box, then mask), on CPU."""
    import torch
    from deepbet.bet import BrainExtraction

    if nthreads:
        torch.set_num_threads(int(nthreads))
    _, mask, _ = BrainExtraction(no_gpu=True).run(img, threshold=threshold)
    data = np.asanyarray(mask.dataobj).astype(bool)
    return nb.Nifti1Image(clean_mask(data).astype(np.uint8), img.affine)


def template_mask(img: nb.Nifti1Image, template_t1w, template_mask_img, seed: int = 1,
                  nthreads: int = 2) -> nb.Nifti1Image:
    """Template-based extraction: the whole-head template registered to the whole head of ``img``
    (:func:`~bids_app.participant.register.register_to_template`: rigid, affine, SyN on a 2 mm
    working grid) and the template brain mask carried across (linear, thresholded at 0.5).

    The mask follows the template's convention for the brain's outer edge, which leaves out
    more of the outer CSF than deepbet does, and it cuts into the cortex where the map is
    off: ~10 % smaller than deepbet's on three ds000011 heads (``bench/brain_mask.py --real``).
    """
    import tempfile

    from bids_app.participant.register import register_to_template, to_native

    with tempfile.TemporaryDirectory(prefix="morphobids-tplmask-") as tmp:
        reg = register_to_template(img, template_t1w, tmp, nthreads=nthreads, seed=seed)
        mask = to_native(template_mask_img, reg, img, "linear")
    data = np.asanyarray(mask.dataobj) > 0.5
    return nb.Nifti1Image(clean_mask(data).astype(np.uint8), img.affine)
