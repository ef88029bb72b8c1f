"""Participant level: check inputs, run the workflow of every participant/session, summarise."""

from __future__ import annotations

import logging
import os
import time

from bids_app.bids import derivatives
from bids_app.bids.inputs import prepare_participant_inputs
from bids_app.config import Settings
from bids_app.errors import EX_DATAERR, EX_OK, EX_PARTIAL

LOG = logging.getLogger("morphobids")


def summarize(succeeded: list[str], failed: dict[str, str]) -> int:
    """Log which sessions failed and why; the exit code says whether any succeeded."""
    if not failed:
        return EX_OK
    LOG.error("%d of %d participant session(s) failed:", len(failed), len(failed) + len(succeeded))
    for key, reason in failed.items():
        LOG.error("  %s: %s", key, reason)
    return EX_PARTIAL if succeeded else EX_DATAERR


def run_participant_level(settings: Settings) -> int:
    checked = prepare_participant_inputs(settings)
    keys = ", ".join(s.key for s in checked.ready) or "none"
    LOG.info("inputs checked: %d session(s) ready (%s).", len(checked.ready), keys)
    if settings.dry_run or not checked.ready:
        if settings.dry_run:
            LOG.info("--dry-run: nothing processed, nothing written.")
        return summarize([s.key for s in checked.ready], checked.failed)
    # heavy libraries are imported only when there is work to do
    from bids_app.participant.outputs import write_atlas_metadata
    from bids_app.participant.workflow import run_workflows

    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(settings.omp_nthreads))
    derivatives.init_derivatives(settings.output_dir, settings.bids_dir)
    write_atlas_metadata(settings.output_dir, settings.atlases, settings.template)
    started = time.time()
    succeeded, failed, timings = run_workflows(checked.ready, settings, checked.resources)
    for key in succeeded:
        LOG.info("%s: done -> %s", key, settings.output_dir / f"sub-{key.split('_')[0][4:]}")
    LOG.info("participant level finished in %.0f s: %d succeeded, %d failed.", time.time() - started,
             len(succeeded), len(failed) + len(checked.failed))
    return summarize(succeeded, {**checked.failed, **failed})
