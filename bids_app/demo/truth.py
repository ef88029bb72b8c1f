"""Read the demo's ground truth back, and regenerate any subject from its parameters.

For scoring a pipeline, the NIfTI maps under ``derivatives/groundtruth`` are enough;
these helpers rebuild what is recorded only as parameters (the deformation), e.g.
to check a registration against the true map or to render a patient without
atrophy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import phantom
from .build import GROUNDTRUTH, t1w_path, truth_paths
from .head import HeadTruth, save_nifti


def load_summary(bids_dir: Path) -> dict:
    """``groundtruth.json`` of a demo dataset."""
    return json.loads((Path(bids_dir) / GROUNDTRUTH / "groundtruth.json").read_text())


def load_spec(bids_dir: Path, label: str) -> phantom.SubjectSpec:
    """The parameters of subject ``label`` (e.g. ``"01"``)."""
    record = json.loads(truth_paths(Path(bids_dir) / GROUNDTRUTH, label)["json"].read_text())
    return phantom.SubjectSpec.from_dict(record["parameters"])


def load_head_truth(bids_dir: Path) -> HeadTruth:
    """The head-space truth every subject derives from."""
    return HeadTruth.load(Path(bids_dir) / GROUNDTRUTH / "head")


def subject_grid(bids_dir: Path, truth: HeadTruth | None = None) -> phantom.Grid:
    truth = truth or load_head_truth(bids_dir)
    return phantom.subject_grid(truth, load_summary(bids_dir)["generator"]["resolution"])


def regenerate_subject(bids_dir: Path, label: str, atrophy: bool | None = None, truth: HeadTruth | None = None,
                       atrophy_map: np.ndarray | None = None) -> tuple[dict, dict]:
    """Render subject ``label`` again from its recorded parameters: ``(arrays, info)``.

    ``atrophy=False`` renders a patient without atrophy (its baseline); ``None`` keeps
    the subject's group. Identical to the written files for the same software.
    """
    truth = truth or load_head_truth(bids_dir)
    spec = load_spec(bids_dir, label)
    if atrophy is not None:
        spec.atrophy = bool(atrophy)
    if spec.atrophy and atrophy_map is None:
        atrophy_map, _ = phantom.atrophy_field(truth)
    return phantom.render_subject(spec, truth, subject_grid(bids_dir, truth), atrophy_map)


def add_baseline_subject(bids_dir: Path, patient: str, label: str, truth_dir: Path) -> Path:
    """Add ``sub-<label>``: patient ``patient`` rendered without atrophy, everything else
    identical (a control for a measured atrophy), listed in participants.tsv; its truth maps
    (brain, dseg, GM, precentral; raw grid) go to ``truth_dir``, which is returned."""
    import nibabel as nb

    arrays, _ = regenerate_subject(bids_dir, patient, atrophy=False)
    affine = nb.load(t1w_path(bids_dir, patient)).affine
    t1w_path(bids_dir, label).parent.mkdir(parents=True)
    save_nifti(arrays["T1w"], affine, t1w_path(bids_dir, label))
    table = bids_dir / "participants.tsv"
    table.write_text(table.read_text() + f"sub-{label}\tn/a\tn/a\tcontrol\n")
    truth_dir.mkdir(parents=True, exist_ok=True)
    for key in ("brain", "dseg", "precentral"):
        save_nifti(arrays[key].astype(np.uint8), affine, truth_dir / f"{key}.nii.gz")
    save_nifti(arrays["GM"], affine, truth_dir / "GM.nii.gz", slope=1 / 255)
    return truth_dir


def pullback_map(bids_dir: Path, label: str, truth: HeadTruth | None = None,
                 atrophy_map: np.ndarray | None = None) -> tuple[np.ndarray, phantom.Grid]:
    """Head-voxel coordinates sampled by every voxel of subject ``label`` (the true map), and the grid."""
    truth = truth or load_head_truth(bids_dir)
    spec = load_spec(bids_dir, label)
    grid = subject_grid(bids_dir, truth)
    if spec.atrophy and atrophy_map is None:
        atrophy_map, _ = phantom.atrophy_field(truth)
    q0, q1 = phantom.pullback_coordinates(spec, truth, grid, atrophy_map if spec.atrophy else None)
    return (q1 if q1 is not None else q0), grid
