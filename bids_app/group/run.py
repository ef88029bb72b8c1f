"""Group level: statistics over the participants' derivatives in output_dir."""

from __future__ import annotations

import logging

from bids_app.bids.derivatives import participants_with_outputs
from bids_app.config import Settings
from bids_app.errors import EX_OK, MissingInputError

LOG = logging.getLogger("morphobids")


def run_group_level(settings: Settings) -> int:
    out = settings.output_dir
    subjects = participants_with_outputs(out) if out.is_dir() else []
    if not subjects:
        raise MissingInputError(
            f"no participant-level outputs in {out}: the group level reads them.",
            "Run the participant level first: run.py bids_dir output_dir participant.",
        )
    LOG.info("found participant outputs for %d participant(s).", len(subjects))
    LOG.warning("group-level analysis is not implemented yet in MorphoBIDS %s: nothing was written.",
                __import__("bids_app").__version__)
    return EX_OK
