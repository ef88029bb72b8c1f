"""Brain extraction: deepbet (Fisch et al., 2024, deep-learning BET; weights ship in its wheel),
a template-based antspyx fallback, and detection of input that is already brain-extracted.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

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


def deepbet_mask(img: nb.Nifti1Image, threshold: float = 0.5, nthreads: int | None = None) -> nb.Nifti1Image:
    """Brain mask from deepbet's two TorchScript models (bounding box, then mask), on CPU."""
    import torch
    from deepbet.bet import BrainExtraction

    if nthreads:
        torch.set_num_threads(int(nthreads))
    _, mask, _ = BrainExtraction(no_gpu=True).run(img, threshold=threshold)
    data = np.asanyarray(mask.dataobj).astype(bool)
    return nb.Nifti1Image(clean_mask(data).astype(np.uint8), img.affine)


def template_mask(img: nb.Nifti1Image, template_t1w, template_mask_img, seed: int = 1) -> nb.Nifti1Image:
    """Template-based extraction: register the template head to ``img`` (affine + SyN at 2 mm)
    with antspyx and carry the template brain mask across (nearest neighbour after 0.5 threshold).
    """
    import ants

    from bids_app.participant.antsio import from_ants, to_ants

    fixed = to_ants(img)
    moving = ants.image_read(str(template_t1w))
    fixed_lo = ants.resample_image(fixed, (2, 2, 2), False, 0)
    moving_lo = ants.resample_image(moving, (2, 2, 2), False, 0)
    reg = ants.registration(fixed_lo, moving_lo, "SyN", aff_metric="mattes", syn_metric="CC", syn_sampling=2,
                            reg_iterations=(40, 20, 0), random_seed=seed)
    mask = ants.apply_transforms(fixed, ants.image_read(str(template_mask_img)), reg["fwdtransforms"],
                                 interpolator="linear")
    data = from_ants(mask, img).get_fdata() > 0.5
    return nb.Nifti1Image(clean_mask(data).astype(np.uint8), img.affine)
