"""Background masks for the image-quality metrics: air ("hat"), artifacts, empty (zero-filled) regions.

The air mask follows Mortamet et al. (MRM 2009, doi:10.1002/mrm.21992) as MRIQC uses it: the
background *above the nasion-occipital plane* (the "hat"), where no anatomy of the face, neck or
shoulders and no flow artifacts of the neck vessels are expected, so what is there is noise plus
whatever the acquisition spread into the air (ghosts, ringing, wrap-around). MRIQC finds the plane
from the glabella and inion of the template (both at MNI z = -14 mm) through the individual-to-MNI
affine; here the plane is placed at the same height relative to the brain's superior-inferior
extent (:data:`PLANE_FRACTION`, measured on the MNI152NLin2009cAsym brain mask), which needs no
registration.

Artifact voxels are hat voxels brighter than ``zscore`` robust standard deviations of the
background noise, away from the head (Mortamet's step 1 for QI1), cleaned by a 6-connected
opening so that isolated noise spikes are not counted. The noise level is the Rayleigh sigma of
the darker half of the background (:func:`rayleigh_sigma`), not MRIQC's MAD of the positive
background, which collapses on integer backgrounds of one or two units and is swept along when
ghosts fill much of the hat.

Zero-filled regions ("rotation mask" in MRIQC: padding after reorientation, defacing, cropping)
carry no noise measurement and are left out of the air.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nb
import numpy as np
from scipy import ndimage

#: Height of the nasion-occipital plane below the top of the brain, as a fraction of the brain's
#: superior-inferior extent: the glabella/inion level (MNI z = -14 mm) in the MNI152NLin2009cAsym
#: brain mask, which spans z = -72 to +82 mm, is (82 + 14) / 154 = 0.62 of the way down.
PLANE_FRACTION = 0.62

#: Artifact threshold in robust standard deviations of the background (MRIQC's default, 10).
ARTIFACT_ZSCORE = 10.0

#: The normalised median absolute deviation of Rayleigh noise of unit sigma (1.4826 x MAD;
#: numerically 0.6658): MRIQC's robust SD of the background, which ``ARTIFACT_ZSCORE`` multiplies.
RAYLEIGH_MAD = 0.6658

#: Hat voxels closer to the head than this fraction of the largest head distance are never
#: artifacts (MRIQC's 0.10): they hold the blurred edge of the scalp.
ARTIFACT_MIN_DISTANCE = 0.10

#: Zero-valued regions smaller than this (mL) are noise that happened to be zero, not padding.
EMPTY_MIN_ML = 2.0

#: A zero-filled region in front of and below the brain larger than this (mL) means defacing.
DEFACED_MIN_ML = 20.0


@dataclass(frozen=True)
class BackgroundMasks:
    """Boolean masks on the T1w grid.

    ``hat``: air above the nasion-occipital plane, outside the head and the empty regions;
    ``artifacts``: hat voxels holding artifactual signal; ``air``: ``hat`` without ``artifacts``
    (MRIQC's ``airmask``, the background of ``summary_bg_*``, ``snrd_*``, ``cnr``);
    ``empty``: zero-filled regions (MRIQC's ``rotmask``).
    """

    hat: np.ndarray
    artifacts: np.ndarray
    air: np.ndarray
    empty: np.ndarray


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) from an affine."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def superior_axis(affine: np.ndarray) -> tuple[int, int]:
    """(voxel axis closest to the superior direction, +1 if indices increase upwards else -1)."""
    directions = np.asarray(affine)[:3, :3] / voxel_sizes(affine)
    axis = int(np.argmax(np.abs(directions[2])))
    return axis, int(np.sign(directions[2, axis]))


def box_dilate(mask: np.ndarray, radius) -> np.ndarray:
    """Dilation by a box of half-widths ``radius`` (voxels per axis), as separable maximum filters."""
    size = tuple(2 * int(r) + 1 for r in np.broadcast_to(radius, (3,)))
    return ndimage.maximum_filter(mask.astype(np.uint8), size=size, mode="constant", cval=0) > 0


def box_open(mask: np.ndarray) -> np.ndarray:
    """Opening by a 3x3x3 box (separable minimum then maximum filter); outside the grid counts as set."""
    eroded = ndimage.minimum_filter(mask.astype(np.uint8), size=3, mode="constant", cval=1)
    return ndimage.maximum_filter(eroded, size=3, mode="constant", cval=0) > 0


def empty_mask(data: np.ndarray, zooms) -> np.ndarray:
    """Zero-filled regions: connected voxels ``<= 0`` surviving a 3x3x3 opening, at least
    :data:`EMPTY_MIN_ML` each (padding from reorientation, defacing, cropping)."""
    mask = box_open(data <= 0)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    min_voxels = EMPTY_MIN_ML * 1000.0 / float(np.prod(zooms))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def plane_index(brain: np.ndarray, affine: np.ndarray) -> tuple[int, int, int]:
    """(superior axis, its direction, index of the nasion-occipital plane along it) from the brain mask."""
    axis, sign = superior_axis(affine)
    present = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
    if present.size == 0:
        raise ValueError("The brain mask is empty.")
    top, bottom = (present[-1], present[0]) if sign > 0 else (present[0], present[-1])
    return axis, sign, int(round(top + (bottom - top) * PLANE_FRACTION))


def hat_mask(head: np.ndarray, brain: np.ndarray, affine: np.ndarray, empty: np.ndarray | None = None) -> np.ndarray:
    """Air above the nasion-occipital plane, outside ``head`` and outside ``empty``."""
    axis, sign, plane = plane_index(brain, affine)
    above = np.zeros(head.shape, bool)
    index = [slice(None)] * 3
    index[axis] = slice(plane, None) if sign > 0 else slice(0, plane + 1)
    above[tuple(index)] = True
    hat = above & ~head
    if empty is not None:
        hat &= ~empty
    return hat


def rayleigh_sigma(values: np.ndarray, keep: float = 0.5) -> float:
    """Noise SD of a magnitude (Rayleigh) background from the mean square of its lowest ``keep``
    fraction: if ``x`` is Rayleigh(sigma), ``x**2 / sigma**2`` is exponential with mean 2, whose
    mean below its ``keep`` quantile ``t = -2 ln(1 - keep)`` is ``2 - t (1 - keep) / keep``.

    Trimming makes it robust to artifacts in up to ``1 - keep`` of the voxels; unlike the median
    absolute deviation it does not collapse on integer-valued backgrounds of one or two units
    (the median of the positive values and its MAD then jump with the quantisation).
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return 0.0
    cut = np.quantile(values, keep)
    low = values[values <= cut]
    t = -2.0 * np.log(1.0 - keep)
    expected = 2.0 - t * (1.0 - keep) / keep
    return float(np.sqrt(np.mean(low * low) / expected))


def distance_to(mask: np.ndarray, zooms, step_mm: float = 3.0) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to ``mask``, computed on a grid coarsened to about
    ``step_mm`` (block maximum of the mask) and read back at the fine voxels: at most about one
    coarse voxel shorter than the exact distance, at a tenth of the cost for 1 mm data."""
    zooms = np.asarray(zooms, float)
    factor = np.maximum(1, np.rint(step_mm / zooms)).astype(int)
    if np.all(factor == 1):
        return ndimage.distance_transform_edt(~mask, sampling=zooms)
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factor)]
    padded = np.pad(mask, pad)
    coarse_shape = [n // f for n, f in zip(padded.shape, factor)]
    blocks = padded.reshape(coarse_shape[0], factor[0], coarse_shape[1], factor[1], coarse_shape[2], factor[2])
    coarse = ndimage.distance_transform_edt(~blocks.any(axis=(1, 3, 5)), sampling=zooms * factor)
    for axis, f in enumerate(factor):
        coarse = np.repeat(coarse, f, axis=axis)
    return coarse[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def artifact_mask(data: np.ndarray, hat: np.ndarray, head: np.ndarray, zooms,
                  zscore: float = ARTIFACT_ZSCORE, min_distance: float = ARTIFACT_MIN_DISTANCE) -> np.ndarray:
    """Hat voxels brighter than ``zscore`` robust SDs of the background noise, away from the head.

    As Mortamet et al. (2009) and MRIQC's ``artifact_mask``: voxels within ``min_distance`` (a
    fraction of the largest head distance in the hat) of the head are left out, the rest is
    thresholded, and a 6-connected opening removes single-voxel detections. MRIQC's robust SD,
    the MAD of the positive background, is replaced by its expected value under Rayleigh noise,
    ``RAYLEIGH_MAD`` x :func:`rayleigh_sigma` of the eligible voxels, which stays meaningful on
    quantised backgrounds (see :func:`rayleigh_sigma`).
    """
    none = np.zeros(data.shape, bool)
    if hat.sum() < 10:
        return none
    distance = distance_to(head, zooms)
    eligible = hat & (distance >= min_distance * distance[hat].max())
    values = data[eligible]
    if values.size < 10:
        return none
    spread = RAYLEIGH_MAD * rayleigh_sigma(values)
    if spread <= 0:
        return none
    candidate = eligible & (data > zscore * spread)
    return ndimage.binary_opening(candidate, structure=ndimage.generate_binary_structure(3, 1))


def background_masks(data: np.ndarray, head: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                     zscore: float = ARTIFACT_ZSCORE) -> BackgroundMasks:
    """Hat, artifact, air and empty masks of a conformed (not bias-corrected) T1w ``data``
    with boolean ``head`` and ``brain`` masks on its grid."""
    data = np.nan_to_num(np.asarray(data, dtype=np.float32))
    head, brain = np.asarray(head, bool), np.asarray(brain, bool)
    zooms = voxel_sizes(affine)
    empty = empty_mask(data, zooms) & ~head
    hat = hat_mask(head, brain, affine, empty)
    artifacts = artifact_mask(data, hat, head, zooms, zscore=zscore)
    return BackgroundMasks(hat=hat, artifacts=artifacts, air=hat & ~artifacts, empty=empty)


def image_masks(t1w: nb.Nifti1Image, head_mask: nb.Nifti1Image, brain_mask: nb.Nifti1Image,
                zscore: float = ARTIFACT_ZSCORE) -> BackgroundMasks:
    """:func:`background_masks` of images (all on the T1w grid)."""
    return background_masks(np.asanyarray(t1w.dataobj), np.asanyarray(head_mask.dataobj) > 0,
                            np.asanyarray(brain_mask.dataobj) > 0, t1w.affine, zscore)


def defaced_volume_ml(empty: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> float:
    """Volume (mL) of zero-filled voxels in front of the brain's centre and below the nasion-occipital
    plane: where defacing removes the face. Raw scanner images have noise there, never exact zeros."""
    axis, sign, plane = plane_index(brain, affine)
    directions = np.asarray(affine)[:3, :3] / voxel_sizes(affine)
    ap_axis = int(np.argmax(np.abs(directions[1])))
    ap_sign = int(np.sign(directions[1, ap_axis]))
    centre = int(round(np.mean(np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != ap_axis)))[0])))
    index = [slice(None)] * 3
    index[axis] = slice(0, plane) if sign > 0 else slice(plane + 1, None)
    index[ap_axis] = slice(centre, None) if ap_sign > 0 else slice(0, centre + 1)
    region = np.zeros(empty.shape, bool)
    region[tuple(index)] = True
    return float((empty & region).sum() * np.prod(voxel_sizes(affine)) / 1000.0)


def looks_defaced(data: np.ndarray, head: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> bool:
    """Guess whether the face was removed: a zero-filled region of more than :data:`DEFACED_MIN_ML`
    in front of and below the brain (see :func:`defaced_volume_ml`)."""
    data = np.nan_to_num(np.asarray(data, dtype=np.float32))
    empty = empty_mask(data, voxel_sizes(affine)) & ~np.asarray(head, bool)
    return defaced_volume_ml(empty, np.asarray(brain, bool), affine) > DEFACED_MIN_ML
