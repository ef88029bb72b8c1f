"""Everything the participant level checks before processing anyone.

Order matters: cheap, global checks first (paths, output location, permissions),
then the BIDS validator, then per-participant discovery and image checks. Global
problems raise; per-participant problems are collected so that one bad
participant does not stop the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bids_app.bids import derivatives, image_checks, layout, participants, validator
from bids_app.config import Settings
from bids_app.errors import InputDataError, MorphoBIDSError, ResourceError, UsageError

LOG = logging.getLogger("morphobids")


@dataclass
class CheckedInputs:
    """Sessions ready to process, sessions that failed (key -> reason), participants table."""

    ready: list[layout.SessionInputs] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    participants: participants.Participants | None = None
    reports: dict[str, image_checks.ImageReport] = field(default_factory=dict)
    resources: dict[str, object] = field(default_factory=dict)


def check_paths(settings: Settings) -> None:
    """bids_dir is a BIDS root; output_dir is outside it and writable; work_dir is writable."""
    layout.check_bids_root(settings.bids_dir)
    derivatives.check_output_location(settings.bids_dir, settings.output_dir)
    derivatives.check_output_location(settings.bids_dir, settings.work_dir)
    derivatives.ensure_writable(settings.output_dir, "output_dir")
    derivatives.ensure_writable(settings.work_dir, "work_dir (-w)")


def check_resources(settings: Settings) -> dict[str, object]:
    """Resolve the template, priors and atlases the run needs, before any work starts.

    An unknown atlas name is a usage error (exit 64) listing the choices; a known
    resource that is not available offline is a :class:`ResourceError` (exit 69).
    """
    from bids_app import resources

    if not settings.atlases:
        settings.atlases = list(resources.DEFAULT_ATLASES)
    found: dict[str, object] = {}
    res = int(settings.output_resolution)
    for resolution in sorted({1, res}):
        found[f"T1w-res{resolution}"] = resources.get_template(settings.template, resolution, "T1w")
        found[f"brain-res{resolution}"] = resources.get_template(settings.template, resolution, "T1w", desc="brain")
        found[f"mask-res{resolution}"] = resources.get_template(settings.template, resolution, "mask", desc="brain")
        for label in ("GM", "WM", "CSF"):
            found[f"{label}-res{resolution}"] = resources.get_template(
                settings.template, resolution, "probseg", label=label)
    known = {a.lower(): a for a in resources.available_atlases()}
    for name in settings.atlases:
        try:
            found[f"atlas-{name}"] = resources.get_atlas(name, settings.template)
        except ResourceError:
            if name.lower() not in known:
                raise UsageError(f"unknown atlas {name!r} (--atlas).",
                                 f"Choose from: {', '.join(sorted(known.values()))}.") from None
            raise
    return found


def check_session(inputs: layout.SessionInputs, affine_source: str) -> dict[str, image_checks.ImageReport]:
    """Check the images of one session; a bad T1w raises, a bad T2w/FLAIR is dropped with a warning."""
    if inputs.t1w is None:
        raise InputDataError(
            f"{inputs.key}: no T1w image found (looked for anat/{inputs.key}[_acq-*][_run-*]_T1w.nii[.gz]).",
            "Add the T1w, or exclude this participant with --participant_label.",
        )
    reports = {}
    for contrast, path in list(inputs.images.items()):
        try:
            reports[contrast] = image_checks.check_image(path, affine_source)
        except InputDataError as exc:
            if contrast == "T1w":
                raise
            LOG.warning("%s: %s is unusable and will be ignored: %s", inputs.key, contrast, exc)
            del inputs.images[contrast]
            continue
        for message in reports[contrast].warnings:
            LOG.warning("%s: %s", path.name, message)
    if "T1w" in reports:
        inputs.affine_source = reports["T1w"].affine_source
    for contrast, others in inputs.alternatives.items():
        LOG.info("%s: %d other %s image(s) not used (selection rule: highest resolution, largest field of "
                 "view, last run): %s -> using %s", inputs.key, len(others), contrast,
                 ", ".join(p.name for p in others), inputs.images.get(contrast, "none").name
                 if contrast in inputs.images else "none")
    return reports


def prepare_participant_inputs(settings: Settings) -> CheckedInputs:
    """Run every input check of the participant level."""
    check_paths(settings)
    found = check_resources(settings)
    if settings.skip_bids_validator:
        LOG.info("BIDS validation skipped (--skip_bids_validator).")
    else:
        validator.validate_or_fail(settings.bids_dir, LOG)
    lay = layout.load_layout(settings.bids_dir, settings.bids_database_dir)
    subjects = layout.select_subjects(sorted(lay.get_subjects()), settings.participant_label)
    table = participants.read_participants(settings.bids_dir, sorted(lay.get_subjects()))
    for message in table.warnings:
        LOG.warning("%s", message)
    checked = CheckedInputs(participants=table, resources=found)
    for inputs in layout.collect_inputs(lay, subjects, settings.session_label):
        try:
            reports = check_session(inputs, settings.affine_source)
        except MorphoBIDSError as exc:
            checked.failed[inputs.key] = str(exc)
            LOG.error("%s", exc)
            continue
        checked.ready.append(inputs)
        checked.reports.update({f"{inputs.key}:{c}": r for c, r in reports.items()})
    return checked
