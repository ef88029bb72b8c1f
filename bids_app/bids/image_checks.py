"""Sanity checks on input NIfTI images, before any processing.

Each check turns a failure mode seen in real datasets (0-byte or truncated files,
mislabelled compression, header-only files, wrong dimensionality, non-finite voxels,
absurd voxel sizes, qform/sform disagreement) into an :class:`InputDataError` whose
message names the file, the problem and the fix. Warnings (not errors) are
returned as strings so the caller can log and record them.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_app.errors import InputDataError

#: Voxel sizes outside (0, MAX_VOXEL_MM] are rejected as absurd.
MAX_VOXEL_MM = 10.0
#: qform and sform may disagree by at most this much (mm, at any corner of the volume).
MAX_QFORM_SFORM_MM = 1.0
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ImageReport:
    """What the checks learned about one image; ``warnings`` are non-fatal findings."""

    path: Path
    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    affine_source: str
    qform_sform_mm: float | None
    warnings: list[str] = field(default_factory=list)


def _short(exc: Exception) -> str:
    """First line of an exception message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _fail(path: Path, problem: str, fix: str) -> InputDataError:
    return InputDataError(f"{path}: {problem}.", fix)


def check_file_format(path: Path) -> None:
    """Reject empty files and ``.gz`` files that are not gzip-compressed."""
    if not path.exists():
        raise _fail(path, "file does not exist (broken link?)", "Restore the file or remove it from the dataset.")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "file is empty (0 bytes)", "Re-export or re-copy the image from the scanner data.")
    if path.name.endswith(".gz"):
        with path.open("rb") as fh:
            magic = fh.read(2)
        if magic != GZIP_MAGIC:
            raise _fail(
                path,
                "has a .gz extension but is not gzip-compressed",
                "Compress it (`gzip FILE.nii`) or rename it to .nii.",
            )


def load_header(path: Path) -> nb.Nifti1Image:
    """Load the NIfTI header, turning nibabel's low-level errors into a clear message."""
    try:
        img = nb.load(str(path))
    except nb.filebasedimages.ImageFileError as exc:
        raise _fail(path, f"is not a NIfTI image ({exc})", "Convert it to NIfTI-1 (.nii.gz), e.g. with dcm2niix.") from None
    except (EOFError, OSError, ValueError, zlib.error, nb.spatialimages.HeaderDataError) as exc:
        raise _fail(
            path, f"cannot be read as NIfTI: the file is truncated or holds only a header ({_short(exc)})",
            "The file is corrupt: re-copy or re-convert it.",
        ) from None
    if not isinstance(img, (nb.Nifti1Image, nb.Nifti2Image)):
        raise _fail(path, f"is a {type(img).__name__}, not NIfTI", "Convert it to NIfTI (.nii.gz).")
    return img


def check_dimensions(path: Path, img: nb.Nifti1Image) -> tuple[int, ...]:
    """Require a 3-D volume (a trailing singleton 4th dimension is accepted)."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise _fail(path, f"is not a 3-D volume (shape {shape})", "Provide a 3-D anatomical image, not a single slice.")
    if len(shape) > 3:
        raise _fail(
            path,
            f"is {len(shape)}-D (shape {shape}) where a 3-D anatomical image is expected",
            "Split the volumes (e.g. `fslsplit`) and keep one per run-<index> file, or average them.",
        )
    return shape


def raw_pixdim(path: Path) -> tuple[float, ...]:
    """Voxel sizes as stored on disk (nibabel silently replaces 0 by 1 when loading)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read(540)
    header_class = nb.Nifti2Header if len(raw) >= 540 and int.from_bytes(raw[:4], "little") == 540 else nb.Nifti1Header
    try:
        header = header_class.from_fileobj(io.BytesIO(raw), check=False)
    except Exception:  # unusual headers: fall back to what nibabel loaded
        return ()
    return tuple(float(z) for z in header["pixdim"][1:4])


def check_voxel_sizes(path: Path, img: nb.Nifti1Image) -> tuple[float, ...]:
    """Reject voxel sizes that are zero, negative, non-finite or larger than 10 mm."""
    zooms = raw_pixdim(path) or tuple(float(z) for z in img.header.get_zooms()[:3])
    bad = [z for z in zooms if not np.isfinite(z) or z <= 0 or z > MAX_VOXEL_MM]
    if bad:
        sizes = " x ".join(f"{z:g}" for z in zooms)
        raise _fail(
            path,
            f"has absurd voxel sizes ({sizes} mm; each must be > 0 and <= {MAX_VOXEL_MM:g} mm)",
            "Fix pixdim in the header (re-convert with dcm2niix).",
        )
    return zooms


def qform_sform_distance(img: nb.Nifti1Image) -> float | None:
    """Largest distance (mm) between the qform and sform images of the volume's corners.

    Returns ``None`` when either transform is unset (code 0).
    """
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    if not qcode or not scode or qform is None or sform is None:
        return None
    dims = np.array(img.shape[:3]) - 1
    corners = np.array([[i, j, k, 1] for i in (0, dims[0]) for j in (0, dims[1]) for k in (0, dims[2])]).T
    return float(np.max(np.linalg.norm((qform @ corners - sform @ corners)[:3], axis=0)))


def check_orientation(path: Path, img: nb.Nifti1Image, affine_source: str = "strict") -> tuple[str, float | None, list[str]]:
    """Decide which affine to trust.

    Rule: a valid sform is preferred (it is what most tools write last); when both
    are set and disagree by more than 1 mm the input is ambiguous and, under the
    default ``strict`` policy, rejected. ``affine_source='sform'`` or ``'qform'``
    accepts it, with a warning, using the named transform.
    """
    warnings: list[str] = []
    qcode = int(img.header["qform_code"])
    scode = int(img.header["sform_code"])
    dist = qform_sform_distance(img)
    if dist is not None and dist > MAX_QFORM_SFORM_MM:
        if affine_source == "strict":
            raise _fail(
                path,
                f"qform and sform disagree by {dist:.1f} mm (more than {MAX_QFORM_SFORM_MM:g} mm)",
                "Fix the header (e.g. nibabel: img.set_qform(img.get_sform())) or rerun with "
                "--affine-source sform (or qform) to choose one.",
            )
        warnings.append(
            f"qform and sform disagree by {dist:.1f} mm; using the {affine_source} as requested (--affine-source)."
        )
        return affine_source, dist, warnings
    if scode > 0:
        source = "sform"
    elif qcode > 0:
        source = "qform"
    else:
        source = "none"
        warnings.append("neither qform nor sform is set: orientation is a guess (LAS by NIfTI convention).")
    if affine_source in ("sform", "qform") and affine_source != source and source != "none":
        source = affine_source
    return source, dist, warnings


def check_voxel_values(path: Path, img: nb.Nifti1Image) -> list[str]:
    """Read the data: catches truncated and header-only files, NaN/Inf and empty images."""
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise _fail(
            path,
            f"image data cannot be read: the file is truncated or holds only a header ({_short(exc)})",
            "Re-copy or re-convert the image.",
        ) from None
    if data.size == 0:
        raise _fail(path, "holds no voxel data", "Re-convert the image.")
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - finite.sum())
        raise _fail(
            path,
            f"contains {n_bad} NaN/Inf voxel(s)",
            "Replace them (e.g. with 0: `fslmaths in -nan out`) or re-convert the image.",
        )
    warnings = []
    if float(data.max()) == float(data.min()):
        raise _fail(path, "is constant (every voxel has the same value)", "Re-convert the image.")
    if data.min() < 0 and np.mean(data < 0) > 0.2:
        warnings.append("more than 20% of voxels are negative: is this a T1w magnitude image?")
    return warnings


def check_image(path: str | Path, affine_source: str = "strict") -> ImageReport:
    """Run every check on ``path``; raise :class:`InputDataError` on the first failure."""
    path = Path(path)
    check_file_format(path)
    img = load_header(path)
    shape = check_dimensions(path, img)
    zooms = check_voxel_sizes(path, img)
    source, dist, warnings = check_orientation(path, img, affine_source)
    warnings += check_voxel_values(path, img)
    return ImageReport(path, shape, zooms, source, dist, warnings)
