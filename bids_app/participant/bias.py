"""N4 bias-field correction (Tustison et al., 2010, IEEE TMI 29:1310) with antspyx.

The field is estimated inside a head mask (Otsu threshold of the smoothed image,
largest component, holes filled), so background noise does not drive the B-spline
fit, and on a shrunk grid (``shrink_factor``) for speed. The returned field is the
multiplicative bias (``corrected = image / field``), kept for the INU metrics of QC.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

#: N4 schedule: 4 fitting levels (the B-spline mesh doubles at each), 40/30/20/10 iterations
#: (antspyx default: 4 x 50). On ds000011 (1.5 T, 14 heads) three levels left most of the field
#: in the image (in-brain inu_range 0.08-0.15, below ABIDE's 1st percentile; WM median/SD 14);
#: the fourth level brings inu_range to 0.29-0.30 and the WM SNR to 17-18, ABIDE's medians, in
#: the same time. 4 x 50 iterations over-fits (inu_range 0.58-0.67, cjv worse).
N4_CONVERGENCE = {"iters": [40, 30, 20, 10], "tol": 1e-6}
#: N4 fits on a grid of about this spacing (mm): the shrink factor is this over the mean voxel size.
#: The B-spline mesh is set in physical space (its finest level spans ~25 mm for a 200 mm head), so
#: the working grid only sets how many samples fit it. 6 mm against 4 mm: the fields agree within
#: 1 % (SD 0.4 % in the brain of a 1 mm phantom, 0.7 % over a ds000011 head) in 40-50 % of the time
#: (ds000011 sub-01: 3.3 s vs 6.8 s; 1 mm phantom, 217x253x217 voxels: 5.2 s vs 12.2 s; 2 threads);
#: in-brain inu_range moves by at most 0.005 (sub-01 0.263 -> 0.265, sub-08 0.161 -> 0.156).
N4_WORKING_MM = 6.0


def head_mask(img: nb.Nifti1Image) -> nb.Nifti1Image:
    """Foreground (head) mask: Otsu threshold of the smoothed image, largest component, filled."""
    from skimage.filters import threshold_otsu

    data = np.asanyarray(img.dataobj).astype(np.float32)
    smooth = ndimage.gaussian_filter(data, 1.0)
    mask = smooth > threshold_otsu(smooth[smooth > 0] if (smooth > 0).any() else smooth) * 0.5
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = np.stack([ndimage.binary_fill_holes(mask[:, :, k]) for k in range(mask.shape[2])], axis=2)
    mask = ndimage.binary_fill_holes(mask)
    return nb.Nifti1Image(mask.astype(np.uint8), img.affine)


def n4(img: nb.Nifti1Image, mask: nb.Nifti1Image | None = None, shrink_factor: int | None = None,
       convergence: dict | None = None) -> tuple[nb.Nifti1Image, nb.Nifti1Image]:
    """Return (bias-corrected image, multiplicative bias field), both float32 on ``img``'s grid.

    ``shrink_factor`` defaults to a working grid of about :data:`N4_WORKING_MM` (6 for 1 mm
    input, 5 for ds000011's 1 x 1.33 x 1.33 mm, 3 for 2 mm).
    """
    import ants  # imported here: head_mask alone should not pay antspyx's import time

    from bids_app.participant.antsio import from_ants, to_ants

    mask = mask if mask is not None else head_mask(img)
    if shrink_factor is None:
        shrink_factor = max(1, int(round(N4_WORKING_MM / float(np.mean(img.header.get_zooms()[:3])))))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    offset = float(min(data.min(), 0.0))
    shifted = nb.Nifti1Image(data - offset + 1e-3, img.affine)  # N4 works in log space: keep > 0
    field = ants.n4_bias_field_correction(
        to_ants(shifted), mask=to_ants(mask, dtype=np.float32), shrink_factor=shrink_factor,
        convergence=convergence or N4_CONVERGENCE, return_bias_field=True,
    )
    bias = from_ants(field, img).get_fdata(dtype=np.float32)
    bias = np.where(bias > 0, bias, 1.0).astype(np.float32)
    corrected = (data - offset + 1e-3) / bias + offset
    return nb.Nifti1Image(corrected.astype(np.float32), img.affine), nb.Nifti1Image(bias, img.affine)
