"""Ground truth in the space of the real head, computed once per dataset.

The anatomy of every phantom is the ROBEX head (:mod:`.sources`) moved by a known
map, so its truth is made once, on the head's own 1.5 mm grid:

1. air suppression: the head's background noise is removed (smooth head mask), so
   that the air of every phantom carries exactly the noise added later;
2. the MNI152NLin2009cAsym brain is registered to the head brain (antspyx SyN;
   Avants et al., Med Image Anal 2008, doi:10.1016/j.media.2007.06.004) at 2 mm,
   the costly step;
3. the head's own tissue maps: N4 (Tustison et al., IEEE TMI 2010,
   doi:10.1109/TMI.2010.2046908), then Atropos three-class segmentation inside
   ROBEX's brain mask with the template's GM/WM/CSF priors carried over (Avants et
   al., Neuroinformatics 2011, doi:10.1007/s12021-011-9109-y): partial-volume maps
   that follow this head's folds, not a population average;
4. AAL3 labels carried over by the same transforms (nearest neighbour), then
   extended over the brain to the nearest label within a few millimetres (a
   Voronoi fill, so every bit of this head's cortex belongs to a gyrus); the atrophy
   region is the GM of Precentral_L and Precentral_R.

:func:`head_truth` caches the result in a folder (the dataset's
``derivatives/groundtruth/head``), keyed by a hash of everything it depends on.

Reproducibility: antspyx 0.6.3 ignores a ``random_seed=`` argument to
``ants.registration`` (the seed is read from ``ants.config._random_seed``), and
ITK's multi-threaded metrics sum in a scheduling-dependent order, so two runs
differ slightly. The head truth is therefore built in a child process with one
ITK thread, the registration seeded through ``ants.config`` and Atropos with a
constant seed (``r=0``): two builds give identical arrays.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import sources

#: bump when the head-space truth would change for the same inputs
HEAD_TRUTH_VERSION = "3"
REGISTRATION = {
    "type_of_transform": "SyN",
    "resolution_mm": 2.0,
    "fixed": "head T1w x ROBEX brain mask",
    "moving": "template T1w x template brain mask",
}
ATROPOS = {"m": "[0.1,1x1x1]", "c": "[3,0]", "priorweight": 0.25, "r": 0}  # r=0: constant seed
#: voxels of the brain this far (mm) from any atlas label keep label 0 (deep white matter)
LABEL_FILL_MM = 5.0

_FILES = {
    "t1w": ("head_desc-airfree_T1w.nii.gz", np.float32),
    "head_mask": ("head_desc-head_mask.nii.gz", np.uint8),
    "brain_mask": ("head_desc-brain_mask.nii.gz", np.uint8),
    "gm": ("head_label-GM_probseg.nii.gz", np.float32),
    "wm": ("head_label-WM_probseg.nii.gz", np.float32),
    "csf": ("head_label-CSF_probseg.nii.gz", np.float32),
    "parcels": ("head_desc-precentral_dseg.nii.gz", np.uint8),
}
INFO_FILE = "head_truth.json"


@dataclass
class HeadTruth:
    """Truth on the head grid. ``parcels``: 1 = Precentral_L, 2 = Precentral_R."""

    affine: np.ndarray
    t1w: np.ndarray
    head_mask: np.ndarray
    brain_mask: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    parcels: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1w.shape)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def region(self) -> np.ndarray:
        """GM partial volume of the atrophy region (precentral gyri)."""
        return self.gm * (self.parcels > 0)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for key, (name, dtype) in _FILES.items():
            save_nifti(np.asarray(getattr(self, key)).astype(dtype), self.affine, folder / name)
        (folder / INFO_FILE).write_text(json.dumps(self.info, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> HeadTruth:
        info = json.loads((folder / INFO_FILE).read_text())
        arrays, affine = {}, None
        for key, (name, dtype) in _FILES.items():
            img = nib.load(folder / name)
            arrays[key] = np.asarray(img.dataobj).astype(dtype)
            affine = img.affine
        for key in ("head_mask", "brain_mask"):
            arrays[key] = arrays[key] > 0
        return cls(affine=affine, info=info, **arrays)


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, slope: float | None = None) -> None:
    """Write a 3-D image with qform = sform = ``affine`` (code 1, scanner) and mm units."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)


# ------------------------------------------------------------------------------- steps


def suppress_air(image: np.ndarray, zooms) -> tuple[np.ndarray, np.ndarray]:
    """Remove background noise: ``image * smooth(head_mask)`` and the head mask.

    The head is the largest bright connected component (threshold: 4x the Rayleigh
    noise level of the darkest corner blocks, at least 5 % of the 99th percentile),
    closed and hole-filled, then grown by 3 mm; the mask is smoothed (sigma 1.5 mm)
    before multiplying so the head's edge stays soft.
    """
    img = np.asarray(image, dtype=np.float32)
    vox = np.asarray(zooms, dtype=float)
    corners = np.concatenate([c.ravel() for c in _corner_blocks(img, 8)])
    noise = float(np.sqrt(np.mean(corners.astype(np.float64) ** 2) / 2.0))
    threshold = max(4.0 * noise, 0.05 * float(np.percentile(img, 99)))
    smooth = ndimage.gaussian_filter(img, 1.0 / vox)
    lab, n = ndimage.label(smooth > threshold)
    if n == 0:
        raise ValueError("no head found above the noise")
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    mask = lab == (int(np.argmax(sizes)) + 1)
    ball = _ball(3.0, vox)
    mask = ndimage.binary_closing(mask, ball, iterations=2, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):  # fill cavities open to the edge of the field of view slice by slice
        mask = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=axis)
    mask = ndimage.binary_dilation(mask, ball)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.5 / vox)
    return (img * soft).astype(np.float32), mask


def _corner_blocks(img: np.ndarray, n: int):
    for i in (slice(0, n), slice(-n, None)):
        for j in (slice(0, n), slice(-n, None)):
            for k in (slice(0, n), slice(-n, None)):
                yield img[i, j, k]


def _ball(radius_mm: float, zooms) -> np.ndarray:
    r = np.ceil(radius_mm / np.asarray(zooms)).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * z / radius_mm) ** 2 for g, z in zip(grid, zooms, strict=True)) <= 1.0


def _to_ants(data: np.ndarray, affine: np.ndarray):
    import ants

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    return ants.from_nibabel_nifti(img)


def _load_ants(path: Path, mask=None):
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    if mask is not None:
        data = data * mask
    return _to_ants(data, img.affine)


def register_template(head_brain, template: dict[str, Path], seed: int, folder: Path) -> list[str]:
    """SyN-register the template brain to the head brain at 2 mm; transform files in ``folder``.

    Returns the forward transform list for :func:`ants.apply_transforms` (template ->
    head: ``fixed`` = head). Deterministic for a given ``seed`` and thread count.
    """
    import ants

    mask = np.asarray(nib.load(template["mask"]).dataobj) > 0
    moving = _load_ants(template["T1w"], mask)
    res = (REGISTRATION["resolution_mm"],) * 3
    fixed2 = ants.resample_image(head_brain, res, use_voxels=False, interp_type=0)
    moving2 = ants.resample_image(moving, res, use_voxels=False, interp_type=0)
    previous = ants.config._random_seed
    ants.config._random_seed = int(seed) + 1  # passed on as --random-seed; kept positive
    try:
        reg = ants.registration(
            fixed2, moving2, REGISTRATION["type_of_transform"], outprefix=str(folder / "tpl2head_"), verbose=False
        )
    finally:
        ants.config._random_seed = previous
    return list(reg["fwdtransforms"])


def segment_tissues(head, brain_mask: np.ndarray, affine, priors: list) -> tuple[np.ndarray, ...]:
    """N4 then Atropos (3 classes, prior-initialised) inside ``brain_mask``: GM, WM, CSF maps."""
    import ants

    mask = _to_ants(brain_mask.astype(np.float32), affine)
    corrected = ants.n4_bias_field_correction(head, mask=mask, shrink_factor=4)
    from bids_app.participant.antsio import private_tempdir

    with private_tempdir():  # antspyx leaves its posteriors in the temporary folder
        seg = ants.atropos(a=corrected, x=mask, i=priors, **ATROPOS)
    csf, gm, wm = (p.numpy().astype(np.float32) for p in seg["probabilityimages"])  # prior order
    return gm * brain_mask, wm * brain_mask, csf * brain_mask


def fill_labels(labels: np.ndarray, within: np.ndarray, max_distance_vox: float) -> np.ndarray:
    """Give every voxel of ``within`` the nearest non-zero label, up to ``max_distance_vox`` away."""
    dist, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    filled = labels[tuple(idx)]
    return np.where(within & (dist <= max_distance_vox), filled, 0).astype(labels.dtype)


def truth_key(head: sources.SourceHead, template: dict[str, Path], atlas: Path, seed: int) -> str:
    """Hash of everything the head truth depends on (inputs, settings, versions)."""
    parts = {
        "version": HEAD_TRUTH_VERSION,
        "head": head.sha256,
        "template": {k: sources.sha256_file(p) for k, p in sorted(template.items())},
        "atlas": sources.sha256_file(atlas),
        "seed": int(seed),
        "registration": REGISTRATION,
        "atropos": ATROPOS,
        "fill_mm": LABEL_FILL_MM,
        "antspyx": _version("antspyx"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def build_head_truth(seed: int = 0, head: sources.SourceHead | None = None) -> HeadTruth:
    """Compute the head-space truth (about 20-40 s on 2 cores; see module docstring)."""
    import ants

    head = head or sources.load_source_head()
    template = sources.template_files()
    atlas_path, label_index, atlas_meta = sources.atlas_files()
    t1w, head_mask = suppress_air(head.image, head.zooms)
    brain_mask = head.brain_mask & head_mask
    head_brain = _to_ants(head.image * brain_mask, head.affine)
    with tempfile.TemporaryDirectory(prefix="morphobids-demo-") as tmp:
        transforms = register_template(head_brain, template, seed, Path(tmp))
        priors = [
            ants.apply_transforms(head_brain, _load_ants(template[t]), transforms, interpolator="linear")
            for t in ("CSF", "GM", "WM")
        ]
        atlas = ants.apply_transforms(head_brain, _load_ants(atlas_path), transforms, interpolator="nearestNeighbor")
    gm, wm, csf = segment_tissues(head_brain, brain_mask, head.affine, priors)
    aal = np.rint(atlas.numpy()).astype(np.int32)
    fill = LABEL_FILL_MM / min(head.zooms)
    parcels_all = fill_labels(aal, brain_mask, fill)
    parcels = np.zeros(aal.shape, np.uint8)
    for value, name in enumerate(sources.REGION_LABELS, start=1):
        parcels[parcels_all == label_index[name]] = value
    vox_ml = float(abs(np.linalg.det(head.affine[:3, :3]))) / 1000.0
    wm_core = wm > 0.9
    info = {
        "key": truth_key(head, template, atlas_path, seed),
        "seed": int(seed),
        "source": {
            "file": f"{head.package}=={head.version}: {head.path.relative_to(head.path.parents[3]).as_posix()}",
            "sha256": head.sha256,
            "citation": sources.ROBEX_CITATION,
            "licence": sources.ROBEX_LICENCE,
            "shape": list(head.image.shape),
            "zooms_mm": list(head.zooms),
            "noise_sigma": _rayleigh_from_air(head.image, head_mask),
        },
        "template": {k: {"file": p.name, "sha256": sources.sha256_file(p)} for k, p in template.items()},
        "atlas": {
            **atlas_meta, "file": atlas_path.name, "sha256": sources.sha256_file(atlas_path),
            "region_labels": list(sources.REGION_LABELS),
        },
        "registration": REGISTRATION,
        "atropos": ATROPOS,
        "label_fill_mm": LABEL_FILL_MM,
        "wm_intensity": float(np.median(t1w[wm_core])) if wm_core.any() else float(np.percentile(t1w[brain_mask], 90)),
        "volumes_ml": {
            "GM": float(gm.sum()) * vox_ml,
            "WM": float(wm.sum()) * vox_ml,
            "CSF": float(csf.sum()) * vox_ml,
            "brain_mask": float(brain_mask.sum()) * vox_ml,
            "Precentral_L_GM": float(gm[parcels == 1].sum()) * vox_ml,
            "Precentral_R_GM": float(gm[parcels == 2].sum()) * vox_ml,
        },
    }
    return HeadTruth(head.affine.copy(), t1w, head_mask, brain_mask, gm, wm, csf, parcels, info)


def _rayleigh_from_air(image: np.ndarray, head_mask: np.ndarray) -> float:
    air = ~ndimage.binary_dilation(head_mask, iterations=4)
    return float(np.sqrt(np.mean(image[air].astype(np.float64) ** 2) / 2.0)) if air.any() else float("nan")


def expected_key(seed: int) -> str:
    """The :func:`truth_key` the current inputs give (cheap: hashes a few files)."""
    return truth_key(sources.load_source_head(), sources.template_files(), sources.atlas_files()[0], seed)


def cached_key(folder: Path) -> str | None:
    """Key of the head truth saved in ``folder``, or None."""
    try:
        return json.loads((Path(folder) / INFO_FILE).read_text()).get("key")
    except (OSError, ValueError):
        return None


def head_truth(seed: int = 0, cache: Path | None = None, log=print) -> HeadTruth:
    """The head truth, from ``cache`` when its key matches, else built (and saved there)."""
    if cache is not None and cached_key(cache) is not None and cached_key(cache) == expected_key(seed):
        try:
            truth = HeadTruth.load(cache)
            log(f"head-space truth: reusing {cache}")
            return truth
        except (OSError, ValueError, KeyError):
            pass
    log("head-space truth: registering the template to the head and segmenting it (once) ...")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="morphobids-demo-head-") as tmp:
        folder = Path(tmp) / "head"
        build_in_child(seed, folder)
        truth = HeadTruth.load(folder)
        if cache is not None:
            staging = cache.with_name(cache.name + f".tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(folder, staging)
            shutil.rmtree(cache, ignore_errors=True)
            staging.rename(cache)
    log(f"head-space truth: done in {time.perf_counter() - t0:.0f} s")
    return truth


_CHILD = "import sys; from bids_app.demo.head import _build_and_save; _build_and_save(int(sys.argv[1]), sys.argv[2])"


def _build_and_save(seed: int, folder: str) -> None:
    """Child-process entry: build and save (the parent set one ITK thread in its environment)."""
    build_head_truth(seed).save(Path(folder))


def build_in_child(seed: int, folder: Path) -> None:
    """Run :func:`build_head_truth` in a fresh interpreter with one ITK thread; save it to ``folder``.

    A fresh process, because ITK reads its thread count once, when it starts: the
    caller's own ITK (e.g. the app's registration, run after ``demo run`` made the
    dataset) keeps all its threads.
    """
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(int(seed)), str(folder)],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"building the demo's head-space truth failed (exit {proc.returncode}):\n{tail}")
