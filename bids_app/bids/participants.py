"""Read ``participants.tsv`` robustly.

Real files carry a UTF-8 byte-order mark, ``n/a`` and empty cells, sex coded as
M/F, m/f, male/female or 1/2, extra columns, and subjects that are listed but
absent from the dataset (or present but not listed). All of these are accepted;
inconsistencies are returned as warnings rather than errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bids_app.errors import InputDataError

NA_VALUES = ["n/a", "N/A", "NA", "na", "", "nan", "NaN", "-", "?"]
_SEX_CODES = {
    "m": "M", "male": "M", "man": "M",
    "f": "F", "female": "F", "woman": "F",
    "o": "O", "other": "O",
}


@dataclass
class Participants:
    """The participants table indexed by label (without ``sub-``), plus warnings."""

    table: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    def row(self, label: str) -> dict:
        """Column values for one participant (empty dict when not listed)."""
        if label not in self.table.index:
            return {}
        return {k: (None if pd.isna(v) else v) for k, v in self.table.loc[label].items()}


def normalize_sex(value) -> str | None:
    """Map the usual encodings of sex to BIDS's ``M``/``F``/``O``; unknown -> ``None``."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return _SEX_CODES.get(str(value).strip().lower())


def read_participants(bids_dir: str | Path, present: list[str] | None = None) -> Participants:
    """Read ``participants.tsv`` from ``bids_dir``.

    ``present`` lists the participant labels found in the dataset; listed-but-absent
    and present-but-unlisted participants produce warnings. A missing file yields an
    empty table (with a warning when participants exist), never an error; an
    unreadable one raises :class:`InputDataError`.
    """
    path = Path(bids_dir) / "participants.tsv"
    present = sorted(present or [])
    warnings: list[str] = []
    if not path.exists():
        if present:
            warnings.append(f"{path} is missing: covariates (age, sex, group) are unavailable.")
        table = pd.DataFrame(index=pd.Index(present, name="participant_id"))
        return Participants(table, warnings)
    try:
        table = pd.read_csv(
            path, sep="\t", dtype=str, na_values=NA_VALUES, keep_default_na=False, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputDataError(
            f"{path}: cannot be parsed as a tab-separated table ({exc}).",
            "Save it as UTF-8 text with tab separators and one header row.",
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    if "participant_id" not in table.columns:
        raise InputDataError(
            f"{path}: has no 'participant_id' column (columns: {', '.join(table.columns)}).",
            "Name the first column participant_id, with values like sub-01.",
        )
    table = table.dropna(subset=["participant_id"])
    table["participant_id"] = table["participant_id"].str.strip().str.removeprefix("sub-")
    for col in table.columns:
        if col != "participant_id" and not pd.api.types.is_numeric_dtype(table[col]):
            table[col] = table[col].str.strip()
    duplicated = table["participant_id"][table["participant_id"].duplicated()].tolist()
    if duplicated:
        warnings.append(f"{path}: duplicate rows for {', '.join('sub-' + d for d in duplicated)}; keeping the first.")
        table = table.drop_duplicates("participant_id")
    table = table.set_index("participant_id")
    for col in table.columns:
        numeric = pd.to_numeric(table[col], errors="coerce")
        if table[col].notna().any() and numeric.notna().sum() == table[col].notna().sum():
            table[col] = numeric
    if "sex" in table.columns:
        raw = table["sex"]
        table["sex"] = raw.map(normalize_sex)
        unknown = sorted({str(v) for v, n in zip(raw, table["sex"]) if n is None and not pd.isna(v)})
        if unknown:
            warnings.append(f"{path}: unrecognised sex value(s) {unknown}; treated as missing.")
    if present:
        listed = set(table.index)
        absent = sorted(listed - set(present))
        unlisted = sorted(set(present) - listed)
        if absent:
            warnings.append(f"{path}: lists participants with no data: {', '.join('sub-' + a for a in absent)}.")
        if unlisted:
            warnings.append(f"{path}: does not list {', '.join('sub-' + u for u in unlisted)}.")
    return Participants(table, warnings)
