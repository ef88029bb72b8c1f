"""Intracranial volume: the brain mask grown out through the extra-cerebral CSF.

A brain-extraction mask (deepbet) follows the surface of the brain; the subarachnoid
CSF between the gyral crowns and the inner table of the skull lies outside it, and that
layer is 1-4 mm thick in young adults and thicker with atrophy. Taking the mask volume
as total intracranial volume (TIV) therefore reads 10-15 % low, and lower still the
more the brain has shrunk - the opposite of what a head-size covariate should do.

Method: starting from the brain mask, a geodesic (conditional) dilation adds, one voxel
layer at a time and up to :data:`MAX_GROWTH_MM`, the neighbouring voxels whose
intensity in the bias-corrected T1w is CSF-like: above the midpoint between the dark
level of cortical bone / air and the CSF mean, and below the midpoint between the CSF
and GM means. On a T1w the inner table of the skull is darker than CSF and the marrow
and scalp are brighter than it, so the growth stops at the skull. The class means come
from the subject's own segmentation in a shell just inside the mask surface (so a
residual bias field across the head does not shift them), the dark level from the
darkest voxels of the head just outside the mask. The volume is the subject's own
cavity, measured in native space; FreeSurfer's eTIV instead scales an atlas volume by
the determinant of the affine to the atlas (Buckner et al., NeuroImage 2004,
doi:10.1016/j.neuroimage.2004.06.018).

Input that is already skull-stripped has nothing outside its mask to grow into. Its
intracranial mask is instead the template's, carried over: the same growth run on the
template head (:func:`template_intracranial_mask`) and pulled back to the T1w through the
inverse of the subject's normalization (:func:`registered_intracranial_mask`), united with
the brain mask. This is an atlas-based estimate in the spirit of eTIV (Buckner et al.,
2004), with the nonlinear map instead of the affine determinant. On the 14 full heads of
ds000011 it agrees with the grown mask: ratio 1.007 +/- 0.029 (mean +/- SD), r = 0.96
(``bench/intracranial.py``).
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_app.arrays import bounding_box

#: Furthest the intracranial mask may reach beyond the brain mask (mm).
MAX_GROWTH_MM = 10.0
#: Depth of the shell inside the brain mask whose CSF/GM voxels set the intensity window (mm).
SHELL_MM = 6.0
#: A tissue class needs this probability to count as pure in the shell statistics.
PURE = 0.9

#: One-line descriptions for sidecars and reports: full heads, and brain-extracted input.
METHOD_GROWN = (f"brain mask grown (geodesic dilation, up to {MAX_GROWTH_MM:g} mm) through voxels of CSF-like "
                "intensity until the skull; window from the subject's CSF/GM means and the dark bone/air level")
METHOD_REGISTERED = ("input already brain-extracted: the template's intracranial mask (the same growth on the "
                     "template head) carried to the T1w through the inverse normalization, united with the brain mask")
METHOD = f"{METHOD_GROWN}; for {METHOD_REGISTERED}"


def intensity_window(t1w: np.ndarray, brain: np.ndarray, csf: np.ndarray, gm: np.ndarray,
                     zooms) -> tuple[float, float]:
    """(low, high) intensities of extra-cerebral CSF in ``t1w``.

    ``low`` is halfway between the dark level (5th percentile of the voxels within
    :data:`MAX_GROWTH_MM` outside the mask: bone, air, the dark CSF band) and the CSF
    mean; ``high`` is halfway between the CSF and GM means. The means are those of pure
    CSF and GM voxels in a :data:`SHELL_MM` shell inside the mask surface.
    """
    inside = ndimage.distance_transform_edt(brain, sampling=zooms)
    shell = brain & (inside <= SHELL_MM)
    pure_csf, pure_gm = shell & (csf >= PURE), shell & (gm >= PURE)
    if pure_csf.sum() < 50 or pure_gm.sum() < 50:  # too few pure voxels: use the whole mask
        pure_csf, pure_gm = brain & (csf >= PURE), brain & (gm >= PURE)
    if pure_csf.sum() < 50 or pure_gm.sum() < 50:
        raise ValueError("too few pure CSF or GM voxels to set the intracranial intensity window")
    mu_csf, mu_gm = float(np.median(t1w[pure_csf])), float(np.median(t1w[pure_gm]))
    outside = ndimage.distance_transform_edt(~brain, sampling=zooms)
    near = ~brain & (outside <= MAX_GROWTH_MM)
    dark = float(np.percentile(t1w[near], 5)) if near.any() else 0.0
    return (dark + mu_csf) / 2, (mu_csf + mu_gm) / 2


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def intracranial_mask(t1w: nb.Nifti1Image, brain_mask: nb.Nifti1Image, csf: nb.Nifti1Image,
                      gm: nb.Nifti1Image, prestripped: bool = False) -> nb.Nifti1Image:
    """Intracranial mask (uint8) on the T1w grid; see the module docstring for the method.

    ``t1w`` is the bias-corrected image; ``csf`` and ``gm`` are the tissue probability
    maps inside ``brain_mask``. With ``prestripped`` the brain mask is returned as is.
    """
    brain_full = np.asanyarray(brain_mask.dataobj) > 0
    if prestripped or not brain_full.any():
        return nb.Nifti1Image(brain_full.astype(np.uint8), brain_mask.affine)
    zooms = np.sqrt((t1w.affine[:3, :3] ** 2).sum(axis=0))
    margin = int(np.ceil(MAX_GROWTH_MM / zooms.min())) + 2
    sl = bounding_box(brain_full, margin=margin)
    brain = brain_full[sl]
    data = ndimage.gaussian_filter(np.asanyarray(t1w.dataobj)[sl].astype(np.float32), 0.7)
    low, high = intensity_window(data, brain, np.asanyarray(csf.dataobj)[sl], np.asanyarray(gm.dataobj)[sl],
                                 zooms)
    reach = ndimage.distance_transform_edt(~brain, sampling=zooms) <= MAX_GROWTH_MM
    allowed = brain | (reach & (data > low) & (data < high))
    steps = int(np.ceil(MAX_GROWTH_MM / zooms.min()))
    six = ndimage.generate_binary_structure(3, 1)
    grown = ndimage.binary_dilation(brain, structure=six, iterations=steps, mask=allowed)
    # regularise: an opening cuts the threads that noise lets through into bone and
    # sinuses, a closing smooths the surface; the brain mask is always inside
    ball = ndimage.iterate_structure(six, 2)
    grown = ndimage.binary_opening(grown, structure=ball) | brain
    grown = ndimage.binary_closing(grown, structure=ball, border_value=0) | brain
    grown = ndimage.binary_fill_holes(_largest_component(grown))
    out = np.zeros(brain_full.shape, np.uint8)
    out[sl] = grown
    return nb.Nifti1Image(out, brain_mask.affine)


def template_intracranial_mask(template_t1w, template_mask, template_csf, template_gm) -> nb.Nifti1Image:
    """Intracranial mask of a whole-head template (file paths or images): :func:`intracranial_mask`
    run on the template T1w with its brain mask and its CSF/GM probability maps."""
    load = lambda x: nb.load(str(x)) if not isinstance(x, nb.Nifti1Image) else x  # noqa: E731
    return intracranial_mask(load(template_t1w), load(template_mask), load(template_csf), load(template_gm))


def registered_intracranial_mask(template_icv: nb.Nifti1Image, reg, brain_mask: nb.Nifti1Image) -> nb.Nifti1Image:
    """The template's intracranial mask on the T1w grid of ``brain_mask`` (uint8).

    ``reg`` is the subject's :class:`~bids_app.participant.register.TemplateRegistration`;
    the mask is resampled linearly through ``reg.to_native``, thresholded at 0.5, united
    with the brain mask (the cavity holds the brain) and its holes filled.
    """
    from bids_app.participant.register import to_native

    pulled = np.asanyarray(to_native(template_icv, reg, brain_mask, "linear").dataobj) > 0.5
    brain = np.asanyarray(brain_mask.dataobj) > 0
    cavity = ndimage.binary_fill_holes(_largest_component(pulled | brain))
    return nb.Nifti1Image(cavity.astype(np.uint8), brain_mask.affine)
