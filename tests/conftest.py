"""Shared fixtures: paths to the real test data and small BIDS datasets built from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PUMI = SHARED_DATA / "pumi-minitest"
DS000011 = SHARED_DATA / "ds000011"
STROKE = SHARED_DATA / "stroke-multicontrast"


def require(path: Path) -> Path:
    """Skip (never fail) when the shared real data is not beside the project."""
    if not path.exists():
        pytest.skip(f"real test data not available: {path} (see shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def pumi_t1w() -> nb.Nifti1Image:
    """The real 2 mm T1w of pumi-minitest (96x128x128), loaded once."""
    path = require(PUMI) / "sub-001" / "anat" / "sub-001_T1w.nii.gz"
    img = nb.load(path)
    return nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)


def write_dataset_description(root: Path, name: str = "test") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["MorphoBIDS tests"]})
    )


@pytest.fixture
def make_bids(tmp_path, pumi_t1w):
    """Build a small BIDS dataset: ``make_bids({"01": img_or_writer, ...})`` -> bids_dir.

    Each value is a nibabel image (saved as the T1w), a callable ``f(path)`` that
    writes the file itself (for corrupt files), or ``None`` (no T1w at all).
    """

    def _make(subjects: dict | None = None, name: str = "bids") -> Path:
        root = tmp_path / name
        write_dataset_description(root)
        subjects = subjects if subjects is not None else {"01": pumi_t1w}
        rows = ["participant_id\tage\tsex"]
        for i, (label, content) in enumerate(subjects.items()):
            anat = root / f"sub-{label}" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            rows.append(f"sub-{label}\t{20 + i}\t{'M' if i % 2 else 'F'}")
            target = anat / f"sub-{label}_T1w.nii.gz"
            if content is None:
                nb.save(pumi_t1w, anat / f"sub-{label}_inplaneT2.nii.gz")
            elif callable(content):
                content(target)
            else:
                nb.save(content, target)
        (root / "participants.tsv").write_text("\n".join(rows) + "\n")
        (root / "README").write_text("Test dataset built from pumi-minitest.\n")
        return root

    return _make


@pytest.fixture
def copy_dataset(tmp_path):
    """Copy a real dataset into tmp (tests never modify ../shared/data)."""

    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copytree(require(src), dst)
        return dst

    return _copy


@pytest.fixture(scope="session")
def group_cohort(tmp_path_factory) -> dict:
    """Synthetic participant-level derivatives for the group level (:func:`cohort.make_cohort`, defaults).

    20 participants (10 controls, 10 patients with 10 % less grey matter in AAL3
    Precentral_L/R), 2 mm template space; built once per session. Tests must not modify
    it: copy ``output_dir`` first (see test_group_stats.py).
    """
    from bids_app.errors import ResourceError
    from cohort import make_cohort

    try:
        return make_cohort(tmp_path_factory.mktemp("cohort"))
    except ResourceError as exc:
        pytest.skip(f"embedded resources not built: {exc}")
