"""Find the anatomical inputs of each participant and session with pybids.

Policy for several images of one contrast in a session (several ``run-``, ``acq-``
or ``rec-`` variants): one image is processed per session and contrast, chosen by
a documented rule — the highest resolution (smallest voxel volume), then the
largest field of view, then the highest run number (a repeated run is usually the
one the operator accepted), then the file name. The others are logged and listed
in the outputs' provenance, never silently dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_app.errors import InputDataError, UsageError

CONTRASTS = ("T1w", "T2w", "FLAIR")
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class SessionInputs:
    """The anatomical images chosen for one participant/session."""

    subject: str
    session: str | None
    images: dict[str, Path] = field(default_factory=dict)  # contrast -> chosen file
    alternatives: dict[str, list[Path]] = field(default_factory=dict)  # contrast -> not chosen
    affine_source: str = "sform"  # which header transform of the T1w to trust (set by the image checks)

    @property
    def key(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def t1w(self) -> Path | None:
        return self.images.get("T1w")


def clean_label(label: str, prefix: str) -> str:
    """Strip ``sub-``/``ses-`` and reject labels that are not BIDS labels (alphanumeric)."""
    raw = label
    label = label.strip()
    if label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1:]
    if not LABEL_RE.match(label):
        raise UsageError(
            f"invalid {prefix} label {raw!r}: BIDS labels contain only letters and digits "
            "(no '/', '..', '_', '-' or whitespace).",
            f"Use e.g. --{'participant' if prefix == 'sub' else 'session'}_label 01.",
        )
    return label


def load_layout(bids_dir: Path, database_dir: Path | None = None):
    """Index ``bids_dir`` with pybids (no validation here: that is the validator's job)."""
    from bids import BIDSLayout  # slow import, only when needed

    kwargs = {}
    if database_dir is not None:
        database_dir.mkdir(parents=True, exist_ok=True)
        kwargs["database_path"] = str(database_dir)
    try:
        return BIDSLayout(str(bids_dir), validate=False, **kwargs)
    except Exception as exc:  # pybids raises many types for malformed datasets
        raise InputDataError(f"{bids_dir}: pybids cannot index the dataset ({exc}).",
                             "Check dataset_description.json and the sidecar JSON files.") from None


def select_subjects(available: list[str], requested: list[str] | None) -> list[str]:
    """Validate requested participant labels against those in the dataset."""
    if not available:
        raise InputDataError("the dataset has no sub-<label> folders.", "Is bids_dir the root of a BIDS dataset?")
    if not requested:
        return sorted(available)
    labels = [clean_label(lab, "sub") for lab in requested]
    unknown = [lab for lab in labels if lab not in available]
    if unknown:
        shown = ", ".join(sorted(available)[:30]) + (" ..." if len(available) > 30 else "")
        raise UsageError(
            f"participant(s) {', '.join(unknown)} not found in the dataset.",
            f"Available participant labels: {shown}.",
        )
    return sorted(dict.fromkeys(labels))


def _rank_key(path: Path, run) -> tuple:
    """Sort key implementing the selection rule (best first)."""
    try:
        img = nb.load(str(path))
        voxel_volume = float(np.prod(img.header.get_zooms()[:3]))
        fov = float(np.prod(np.array(img.shape[:3]) * np.array(img.header.get_zooms()[:3])))
    except Exception:  # unreadable files rank last; the image checks report them
        voxel_volume, fov = np.inf, 0.0
    return (round(voxel_volume, 3), -round(fov, -2), -(int(run) if run is not None else 0), path.name)


def choose_image(files: list) -> tuple[Path, list[Path]]:
    """Apply the selection rule to pybids files of one contrast; return (chosen, others)."""
    ranked = sorted(files, key=lambda f: _rank_key(Path(f.path), f.entities.get("run")))
    return Path(ranked[0].path), [Path(f.path) for f in ranked[1:]]


def collect_inputs(layout, subjects: list[str], sessions: list[str] | None = None) -> list[SessionInputs]:
    """One :class:`SessionInputs` per participant and session (T1w may be missing: caller decides)."""
    sessions = [clean_label(s, "ses") for s in sessions] if sessions else None
    found: list[SessionInputs] = []
    for sub in subjects:
        sub_sessions = layout.get_sessions(subject=sub) or [None]
        if sessions:
            sub_sessions = [s for s in sub_sessions if s in sessions]
            if not sub_sessions:
                continue
        for ses in sub_sessions:
            inputs = SessionInputs(sub, ses)
            query = {"subject": sub, "datatype": "anat", "extension": [".nii", ".nii.gz"]}
            if ses is not None:
                query["session"] = ses
            for contrast in CONTRASTS:
                files = [f for f in layout.get(suffix=contrast, **query) if "space" not in f.entities]
                if not files:
                    continue
                chosen, others = choose_image(files)
                inputs.images[contrast] = chosen
                if others:
                    inputs.alternatives[contrast] = others
            found.append(inputs)
    if sessions and not found:
        raise UsageError(f"session(s) {', '.join(sessions)} not found for the selected participants.",
                         "Check --session_label against the ses-<label> folders.")
    return found


def check_bids_root(bids_dir: Path) -> None:
    """Fail clearly when ``bids_dir`` is missing or not a BIDS dataset root."""
    if not bids_dir.exists():
        raise UsageError(f"bids_dir {bids_dir} does not exist.", "Check the path (and the -v bind mount in Docker).")
    if not bids_dir.is_dir():
        raise UsageError(f"bids_dir {bids_dir} is not a directory.", "Give the root folder of a BIDS dataset.")
    if not os.access(bids_dir, os.R_OK | os.X_OK):
        raise UsageError(f"bids_dir {bids_dir} is not readable by this user.",
                         "Fix its permissions (in Docker/Singularity, check the bind mount and the user id).")
    if not (bids_dir / "dataset_description.json").exists():
        raise InputDataError(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json.",
            "Point bids_dir at the dataset root (the folder holding dataset_description.json and sub-*/).",
        )

