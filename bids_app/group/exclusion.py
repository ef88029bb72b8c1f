"""QC-based exclusion of participants before group statistics.

The default follows MRIQC's three-level rating (Esteban et al., PLoS ONE 2017,
doi:10.1371/journal.pone.0184661): scans rated ``fail`` are excluded, ``warn``
scans are kept (they are listed in the QC table for the user to review). Users
may also exclude by label and by the quality classifier's probability of
acceptance ``p_accept``. Units without a QC record are kept (and counted in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd

from bids_app.errors import UsageError
from bids_app.group.collect import KEYS, QC_LEVELS

LOG = logging.getLogger("morphobids")

EXCLUDED_COLUMNS = [*KEYS, "reason"]


def _unit_names(table: pd.DataFrame) -> pd.Series:
    """``sub-<l>`` or ``sub-<l>_ses-<s>`` for each row."""
    ses = table["session_id"] if "session_id" in table else pd.Series(None, index=table.index)
    return pd.Series([p if pd.isna(s) or s is None else f"{p}_{s}" for p, s in zip(table["participant_id"], ses,
                                                                                   strict=True)],
                     index=table.index)


def _label_matches(table: pd.DataFrame, labels: Iterable[str]) -> tuple[pd.Series, list[str]]:
    """Rows named by ``labels`` (``01``, ``sub-01`` or ``sub-01_ses-a``) and the labels that matched nothing."""
    hit = pd.Series(False, index=table.index)
    units = _unit_names(table)
    unmatched = []
    for raw in labels:
        label = str(raw).strip()
        label = label if label.startswith("sub-") else f"sub-{label}"
        rows = (table["participant_id"] == label) | (units == label)
        if not rows.any():
            unmatched.append(str(raw))
        hit |= rows
    return hit, unmatched


def apply_exclusion(table: pd.DataFrame, qc: pd.DataFrame | None, exclude_levels: Iterable[str] = ("fail",),
                    exclude_labels: Iterable[str] = (), min_p_accept: float | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``table`` (keyed by participant_id/session_id) into kept rows and excluded rows.

    A row is excluded when its QC ``verdict`` is in ``exclude_levels``, when its
    label is in ``exclude_labels``, or when ``p_accept < min_p_accept``. Returns
    ``(kept, excluded)``; ``excluded`` has ``participant_id``, ``session_id`` and
    ``reason`` (every reason that applies, joined by ``"; "``).
    """
    levels = [str(v).strip().lower() for v in exclude_levels]
    unknown = sorted(set(levels) - set(QC_LEVELS))
    if unknown:
        raise UsageError(f"unknown QC level(s) to exclude: {', '.join(unknown)}.",
                         f"Use one or more of: {', '.join(QC_LEVELS)}.")
    if min_p_accept is not None and not 0.0 <= float(min_p_accept) <= 1.0:
        raise UsageError(f"minimum p_accept {min_p_accept} is not a probability.", "Give a value between 0 and 1.")
    qc = qc if qc is not None else pd.DataFrame(columns=[*KEYS, "verdict", "reasons", "p_accept"])
    merged = table[KEYS].merge(qc, on=KEYS, how="left", validate="one_to_one") if len(qc) else \
        table[KEYS].assign(verdict=None, reasons=None, p_accept=float("nan"))
    merged.index = table.index
    reasons: list[list[str]] = [[] for _ in range(len(table))]

    def add(mask: pd.Series, text) -> None:
        for i, flag in enumerate(mask.to_numpy()):
            if flag:
                reasons[i].append(text(i) if callable(text) else text)

    verdicts = merged["verdict"].astype(object).where(merged["verdict"].notna(), None)
    add(verdicts.isin(levels), lambda i: f"QC verdict {verdicts.iloc[i]}"
        + (f" ({merged['reasons'].iloc[i]})" if isinstance(merged["reasons"].iloc[i], str) else ""))
    if min_p_accept is not None:
        p = pd.to_numeric(merged["p_accept"], errors="coerce")
        add(p < float(min_p_accept), lambda i: f"p_accept {p.iloc[i]:.3f} < {float(min_p_accept):g}")
    hit, unmatched = _label_matches(table, exclude_labels)
    add(hit, "excluded by the user")
    if unmatched:
        LOG.warning("--exclude: no participant matches %s.", ", ".join(unmatched))
    no_qc = int(verdicts.isna().sum())
    if no_qc and len(qc):
        LOG.warning("%d participant(s) have no QC verdict and are kept.", no_qc)
    drop = pd.Series([bool(r) for r in reasons], index=table.index)
    excluded = table.loc[drop, KEYS].copy()
    excluded["reason"] = ["; ".join(r) for r in reasons if r]
    kept = table.loc[~drop].reset_index(drop=True)
    for row in excluded.itertuples(index=False):
        LOG.info("excluded %s: %s", row.participant_id, row.reason)
    return kept, excluded.reset_index(drop=True)[EXCLUDED_COLUMNS]
