"""Participant level: check inputs, then process each participant/session."""

from __future__ import annotations

import logging

from bids_app.bids.inputs import prepare_participant_inputs
from bids_app.config import Settings
from bids_app.errors import EX_DATAERR, EX_OK, EX_PARTIAL

LOG = logging.getLogger("morphobids")


def summarize(n_ready: int, failed: dict[str, str]) -> int:
    """Log which sessions failed and why; the exit code says whether any succeeded."""
    if not failed:
        return EX_OK
    LOG.error("%d of %d participant session(s) failed:", len(failed), len(failed) + n_ready)
    for key, reason in failed.items():
        LOG.error("  %s: %s", key, reason)
    return EX_PARTIAL if n_ready else EX_DATAERR


def run_participant_level(settings: Settings) -> int:
    checked = prepare_participant_inputs(settings)
    keys = ", ".join(s.key for s in checked.ready) or "none"
    LOG.info("inputs checked: %d session(s) ready (%s).", len(checked.ready), keys)
    if checked.ready:
        LOG.warning(
            "participant-level processing is not implemented yet in MorphoBIDS %s: the inputs above were "
            "checked and nothing was written to %s.", __import__("bids_app").__version__, settings.output_dir)
    return summarize(len(checked.ready), checked.failed)
