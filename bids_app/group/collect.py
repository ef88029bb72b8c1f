"""Collect the participant-level derivatives of ``output_dir`` into group tables.

Reads only derivatives (the raw data need not be present), one *unit* per
participant and session (``sub-<l>[/ses-<s>]/anat``):

- ``*_desc-tissue_morph.tsv`` (TIV, GM/WM/CSF volumes, BPF, GM fraction) and any
  other one-row ``*_desc-<d>_morph.tsv`` (e.g. a global mean thickness);
- ``*_atlas-<A>[_desc-<d>]_{morph,thickness}.tsv`` ROI tables (``index``, ``name``
  and numeric measure columns such as ``volume_ml``, ``gm_ml`` or a thickness);
- ``*_desc-T1w_iqm.json`` (MRIQC image-quality metrics) and
  ``*_desc-T1w_qc.json`` (verdict, flags, ``p_accept``).

The morphometrics table is *wide*, one row per unit, as MRIQC's group tables and
FreeSurfer's ``asegstats2table`` are. ROI columns are named
``<atlas>_<region>_<measure>``: the atlas name, the region name with every run of
characters other than letters and digits replaced by ``_`` (``Left Cingulate
Gyrus`` -> ``Left_Cingulate_Gyrus``; ``_<index>`` is appended when two names of
one atlas would collide) and the measure column of the participant table, e.g.
``AAL3_Precentral_L_gm_ml``. :attr:`GroupData.rois` maps every ROI column back
to its atlas, label index, region name and measure.

A unit whose tissue table or one of the common ROI tables is missing or corrupt
is skipped and reported (:attr:`GroupData.skipped`), never a crash.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_app.bids import derivatives as d
from bids_app.errors import MissingInputError

LOG = logging.getLogger("morphobids")

KEYS = ["participant_id", "session_id"]
QC_LEVELS = ("pass", "warn", "fail")
#: ROI table columns that are identifiers or redundant counts, not measures.
ROI_ID_COLUMNS = ("index", "name", "voxels", "abbreviation", "long_name")

_ROI_FILE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_atlas-(?P<atlas>[A-Za-z0-9]+)"
    r"(?:_desc-(?P<desc>[A-Za-z0-9]+))?_(?P<suffix>morph|thickness)\.tsv$"
)
_UNIT_PATTERNS = ("*_morph.tsv", "*_thickness.tsv", "*_iqm.json", "*_qc.json")
_GLOBAL_FILE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_desc-(?P<desc>[A-Za-z0-9]+)_morph\.tsv$"
)


@dataclass
class GroupData:
    """Group tables (pandas), their BIDS data dictionaries, and what was skipped.

    ``morphometrics``, ``iqms`` and ``qc`` have one row per unit with the keys
    ``participant_id`` (``sub-<l>``) and ``session_id`` (``ses-<s>`` or missing).
    ``rois`` maps ROI columns to ``atlas``, ``desc`` (of the ROI table; ``""`` when none),
    ``index``, ``name``, ``measure``.
    ``dictionaries`` holds the JSON sidecar (column -> Description/Units) of
    each table; ``skipped`` lists units left out, with the reason. Covariates
    are read from ``bids_dir`` by :func:`bids_app.group.design.covariates_for`.
    """

    morphometrics: pd.DataFrame
    iqms: pd.DataFrame
    qc: pd.DataFrame
    rois: pd.DataFrame
    dictionaries: dict[str, dict] = field(default_factory=dict)
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*KEYS, "reason"]))
    warnings: list[str] = field(default_factory=list)
    bids_dir: Path | None = None  # where participants.tsv (the covariates) is read from

    @property
    def atlases(self) -> list[str]:
        return sorted(self.rois["atlas"].unique()) if len(self.rois) else []

    @property
    def measures(self) -> list[str]:
        return sorted(self.rois["measure"].unique()) if len(self.rois) else []


@dataclass
class _Unit:
    subject: str
    session: str | None
    folder: Path

    @property
    def keys(self) -> dict:
        return {"participant_id": f"sub-{self.subject}",
                "session_id": f"ses-{self.session}" if self.session else None}

    @property
    def outputs(self) -> d.Outputs:
        return d.Outputs(self.folder.parents[1 if self.session is None else 2], self.subject, self.session)


class _Corrupt(Exception):
    """A derivative file that exists but cannot be used (message says why)."""


# --------------------------------------------------------------------------- discovery


def find_units(output_dir: Path) -> list[_Unit]:
    """Every ``sub-<l>[/ses-<s>]/anat`` folder of ``output_dir`` that holds group-level inputs."""
    units = []
    for sub in sorted(Path(output_dir).glob("sub-*")):
        if not sub.is_dir():
            continue
        label = sub.name[4:]
        candidates = [(None, sub / "anat")] + [(ses.name[4:], ses / "anat") for ses in sorted(sub.glob("ses-*"))]
        for session, anat in candidates:
            if anat.is_dir() and any(any(anat.glob(p)) for p in _UNIT_PATTERNS):
                units.append(_Unit(label, session, anat))
    return units


def sanitize(name: str) -> str:
    """A region name as a column-name part: runs of non-alphanumerics -> ``_``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_") or "unnamed"


# --------------------------------------------------------------------------- readers


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _Corrupt(f"{path.name} cannot be read ({type(exc).__name__}: {exc})") from None
    if table.empty:
        raise _Corrupt(f"{path.name} has no rows")
    return table


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _Corrupt(f"{path.name} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise _Corrupt(f"{path.name} is not a JSON object")
    return data


def _numeric_row(table: pd.DataFrame, path: Path) -> dict[str, float]:
    """The single row of a one-row table, every column numeric."""
    if len(table) != 1:
        raise _Corrupt(f"{path.name} has {len(table)} rows (expected 1)")
    values = pd.to_numeric(table.iloc[0], errors="coerce")
    bad = [c for c in table.columns if pd.isna(values[c]) and not pd.isna(table.iloc[0][c])]
    if bad:
        raise _Corrupt(f"{path.name} has non-numeric values in {', '.join(bad)}")
    return {str(k): float(v) for k, v in values.items()}


def read_tissue_table(path: Path) -> dict[str, float]:
    """Tissue morphometrics of one unit (``tiv_ml`` must be present and positive)."""
    from bids_app.participant.morphometry import TISSUE_KEYS

    row = _numeric_row(_read_tsv(path), path)
    missing = [k for k in TISSUE_KEYS if k not in row]
    if missing:
        raise _Corrupt(f"{path.name} lacks column(s) {', '.join(missing)}")
    if not row["tiv_ml"] > 0:
        raise _Corrupt(f"{path.name} has tiv_ml = {row['tiv_ml']} (must be > 0)")
    return row


def read_roi_table(path: Path) -> pd.DataFrame:
    """One ROI table: integer ``index``, str ``name`` and numeric measure columns."""
    table = _read_tsv(path)
    if not {"index", "name"} <= set(table.columns):
        raise _Corrupt(f"{path.name} lacks the index/name columns")
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or index.duplicated().any():
        raise _Corrupt(f"{path.name} has missing, non-integer or repeated label indices")
    table["index"] = index.astype(int)
    table["name"] = table["name"].astype(str).str.strip()
    for col in measure_columns(table):
        values = pd.to_numeric(table[col], errors="coerce")
        if (values.isna() & table[col].notna()).any():
            raise _Corrupt(f"{path.name} has non-numeric values in column {col}")
        table[col] = values.astype(float)
    return table


def measure_columns(table: pd.DataFrame) -> list[str]:
    """Measure columns of an ROI table: everything but identifiers and voxel counts."""
    return [str(c) for c in table.columns if c not in ROI_ID_COLUMNS]


def iqm_values(data: dict) -> dict[str, float]:
    """Top-level numeric entries of an IQM JSON (MRIQC keys); metadata (dicts, lists, text) is left out."""
    return {k: float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def qc_record(data: dict, path: Path) -> dict:
    """Verdict, joined reasons, flag counts and ``p_accept`` of a QC JSON."""
    verdict = str(data.get("verdict", "")).strip().lower()
    if verdict not in QC_LEVELS:
        raise _Corrupt(f"{path.name} has verdict {data.get('verdict')!r} (expected one of {', '.join(QC_LEVELS)})")
    flags = data.get("flags") or []
    if not isinstance(flags, list):
        raise _Corrupt(f"{path.name}: 'flags' is not a list")
    raised = [f for f in flags if isinstance(f, dict) and str(f.get("level", "")).lower() in ("warn", "fail")]
    reasons = "; ".join(f"{f.get('check', '?')} ({str(f.get('level')).lower()}): {f.get('reason', '')}".strip()
                        for f in raised)
    p_accept = data.get("p_accept")
    try:
        p_accept = float(p_accept) if p_accept is not None else np.nan
    except (TypeError, ValueError):
        raise _Corrupt(f"{path.name} has p_accept {p_accept!r} (expected a number)") from None
    return {"verdict": verdict, "reasons": reasons or None,
            "n_warn": sum(str(f.get("level")).lower() == "warn" for f in raised),
            "n_fail": sum(str(f.get("level")).lower() == "fail" for f in raised),
            "p_accept": p_accept}


# --------------------------------------------------------------------------- assembling


def _roi_files(unit: _Unit) -> dict[tuple[str, str | None], Path]:
    """ROI tables of a unit keyed by (atlas, desc)."""
    found = {}
    for path in sorted(unit.folder.glob(f"{unit.outputs.prefix}_atlas-*.tsv")):
        match = _ROI_FILE.match(path.name)
        if match and match["sub"] == unit.subject and match["ses"] == unit.session:
            found[(match["atlas"], match["desc"])] = path
    return found


def _global_files(unit: _Unit) -> dict[str, Path]:
    """One-row ``desc-<d>_morph.tsv`` tables other than the tissue table, keyed by desc."""
    found = {}
    for path in sorted(unit.folder.glob(f"{unit.outputs.prefix}_desc-*_morph.tsv")):
        match = _GLOBAL_FILE.match(path.name)
        if match and match["desc"] != "tissue" and match["sub"] == unit.subject and match["ses"] == unit.session:
            found[match["desc"]] = path
    return found


def _common(counts: dict, n_units: int, what: str, warnings: list[str]) -> list:
    """Keys present in more than half of the units; the others are dropped with a warning."""
    keep = [k for k, n in counts.items() if n * 2 > n_units]
    dropped = [k for k in counts if k not in keep]
    if dropped:
        warnings.append(f"{what} {', '.join(map(_key_text, dropped))} exist for too few participants "
                        f"(half or fewer of {n_units}) and are left out of the group tables.")
    return keep


def _key_text(key) -> str:
    if isinstance(key, tuple):
        return f"atlas-{key[0]}" + (f"_desc-{key[1]}" if key[1] else "")
    return f"desc-{key}"


def _roi_column_names(tables: dict[tuple, pd.DataFrame]) -> pd.DataFrame:
    """Column-name map (atlas, desc, index, name, measure, column) over all tables of the group."""
    rows = []
    measures_per_atlas: dict[str, list[str]] = {}
    for (atlas, _desc), table in tables.items():
        for m in measure_columns(table):
            measures_per_atlas.setdefault(atlas, []).append(m)
    for (atlas, desc), table in sorted(tables.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        regions = table[["index", "name"]].drop_duplicates("index").sort_values("index")
        stems = [sanitize(n) for n in regions["name"]]
        clash = {s for s in stems if stems.count(s) > 1}
        stems = [f"{s}_{i}" if s in clash else s for s, i in zip(stems, regions["index"], strict=True)]
        for m in measure_columns(table):
            measure = f"{desc}_{m}" if desc and measures_per_atlas[atlas].count(m) > 1 else m
            for (index, name), stem in zip(regions.itertuples(index=False, name=None), stems, strict=True):
                rows.append({"column": f"{atlas}_{stem}_{measure}", "atlas": atlas, "desc": desc or "",
                             "index": int(index), "name": name, "measure": measure, "source_column": m})
    return pd.DataFrame(rows, columns=["column", "atlas", "desc", "index", "name", "measure", "source_column"])


def _unit_morphometrics(unit: _Unit, atlases: list, globals_: list) -> tuple[dict, dict]:
    """Tissue row, global rows and ROI tables of a unit; raises :class:`_Corrupt`."""
    tissue_path = unit.outputs.path("tissue_morph")
    if not tissue_path.is_file():
        raise _Corrupt(f"{tissue_path.name} is missing")
    row = read_tissue_table(tissue_path)
    files = _roi_files(unit)
    tables = {}
    for key in atlases:
        if key not in files:
            raise _Corrupt(f"the {_key_text(key)} ROI table is missing")
        tables[key] = read_roi_table(files[key])
    global_files = _global_files(unit)
    for desc in globals_:
        if desc not in global_files:
            raise _Corrupt(f"the desc-{desc} morphometrics table is missing")
        for k, v in _numeric_row(_read_tsv(global_files[desc]), global_files[desc]).items():
            row[k if k not in row else f"{desc}_{k}"] = v
    return row, tables


def collect_group(output_dir: str | Path, bids_dir: str | Path | None = None) -> GroupData:
    """Gather every unit's morphometrics, IQMs and QC verdict from ``output_dir``.

    ``bids_dir`` (it may hold only ``participants.tsv``) is recorded for the
    design step, which reads the covariates from it. Raises
    :class:`MissingInputError` when no unit has usable morphometrics.
    """
    output_dir = Path(output_dir)
    units = find_units(output_dir) if output_dir.is_dir() else []
    warnings: list[str] = []
    skipped: list[dict] = []
    atlas_counts: dict = {}
    global_counts: dict = {}
    for unit in units:
        for key in _roi_files(unit):
            atlas_counts[key] = atlas_counts.get(key, 0) + 1
        for key in _global_files(unit):
            global_counts[key] = global_counts.get(key, 0) + 1
    atlases = _common(atlas_counts, len(units), "ROI tables", warnings)
    globals_ = _common(global_counts, len(units), "morphometrics tables", warnings)

    rows, roi_tables, first_tables = [], [], {}
    for unit in units:
        try:
            row, tables = _unit_morphometrics(unit, atlases, globals_)
        except _Corrupt as exc:
            skipped.append({**unit.keys, "reason": str(exc)})
            continue
        rows.append({**unit.keys, **row})
        roi_tables.append(tables)
        for key, table in tables.items():
            first_tables.setdefault(key, table)
    if not rows:
        detail = "; ".join(f"{s['participant_id']}: {s['reason']}" for s in skipped[:5])
        raise MissingInputError(
            f"no usable participant morphometrics in {output_dir}" + (f" ({detail})" if detail else "") + ".",
            "Run the participant level first (run.py bids_dir output_dir participant) and check its log.",
        )
    rois = _roi_column_names(first_tables)
    morph = _morphometrics_table(rows, roi_tables, rois)
    iqms, qc = _quality_tables(units, warnings)
    for s in skipped:
        warnings.append(f"{s['participant_id']}{'/' + s['session_id'] if s['session_id'] else ''} is left out of "
                        f"the group analysis: {s['reason']}.")
    for message in warnings:
        LOG.warning(message)
    dictionaries = {
        "morphometrics": morphometrics_dictionary(morph, rois, units),
        "iqms": iqm_dictionary(list(iqms.columns)),
        "qc": dict(QC_DICTIONARY),
    }
    return GroupData(morph, iqms, qc, rois.drop(columns="source_column"), dictionaries,
                     pd.DataFrame(skipped, columns=[*KEYS, "reason"]), warnings,
                     Path(bids_dir) if bids_dir is not None else None)


def _morphometrics_table(rows: list[dict], roi_tables: list[dict], rois: pd.DataFrame) -> pd.DataFrame:
    """Wide table: keys, tissue/global columns, then ROI columns in atlas/measure/index order."""
    base = pd.DataFrame(rows)
    blocks = []
    for (atlas, desc), spec in rois.groupby(["atlas", "desc"], sort=True):
        key = (atlas, desc or None)
        values = np.full((len(rows), len(spec)), np.nan)
        for i, tables in enumerate(roi_tables):
            table = tables[key].set_index("index")
            for source, where in spec.groupby("source_column").indices.items():
                values[i, where] = table[source].reindex(spec["index"].to_numpy()[where]).to_numpy(dtype=float)
        blocks.append(pd.DataFrame(values, columns=spec["column"].tolist()))
    table = pd.concat([base, *blocks], axis=1)
    return table.sort_values(KEYS, na_position="first").reset_index(drop=True)


def _quality_tables(units: list[_Unit], warnings: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """IQM and QC tables (units without the file are absent; corrupt files are reported)."""
    iqm_rows, qc_rows, no_iqm, no_qc = [], [], [], []
    for unit in units:
        iqm_path = unit.outputs.path("iqms", contrast="T1w")
        qc_path = unit.outputs.path("qc", contrast="T1w")
        for path, rows, absent, reader in ((iqm_path, iqm_rows, no_iqm, lambda p: iqm_values(_read_json(p))),
                                           (qc_path, qc_rows, no_qc, lambda p: qc_record(_read_json(p), p))):
            if not path.is_file():
                absent.append(unit.keys["participant_id"])
                continue
            try:
                rows.append({**unit.keys, **reader(path)})
            except _Corrupt as exc:
                warnings.append(f"{unit.keys['participant_id']}: {exc}; left out of the "
                                f"{'IQM' if rows is iqm_rows else 'QC'} table.")
    for what, rows, absent in (("IQM", iqm_rows, no_iqm), ("QC", qc_rows, no_qc)):
        if rows and absent:
            warnings.append(f"no {what} file for {', '.join(sorted(set(absent)))}.")
    iqms = pd.DataFrame(iqm_rows, columns=KEYS if not iqm_rows else None)
    qc = pd.DataFrame(qc_rows, columns=[*KEYS, "verdict", "reasons", "n_warn", "n_fail", "p_accept"])
    iqms, qc = (t.sort_values(KEYS, na_position="first", ignore_index=True) if len(t) else t for t in (iqms, qc))
    return iqms, qc


# --------------------------------------------------------------------------- data dictionaries

KEY_DICTIONARY = {
    "participant_id": {"Description": "Participant label (sub-<label>)"},
    "session_id": {"Description": "Session label (ses-<label>); n/a for datasets without sessions"},
}

QC_DICTIONARY = {
    **KEY_DICTIONARY,
    "verdict": {"Description": "Overall QC verdict of the participant's T1w",
                "Levels": {"pass": "no check raised a flag", "warn": "at least one warning, no failure",
                           "fail": "at least one check failed"}},
    "reasons": {"Description": "Checks that raised a warning or failure, 'check (level): reason', joined by '; '"},
    "n_warn": {"Description": "Number of checks at level warn"},
    "n_fail": {"Description": "Number of checks at level fail"},
    "p_accept": {"Description": "Probability that the scan would be rated acceptable by the quality classifier "
                                "(0-1)"},
}


#: Descriptions of ROI measures that participant tables may add (used when their sidecar lacks them).
ROI_EXTRA_DICTIONARY = {
    "thickness_mm": {"Description": "Mean cortical thickness (DiReCT) over the region's cortical voxels",
                     "Units": "mm"},
}


def _first_sidecar(paths) -> dict:
    """The first readable JSON sidecar of the data files ``paths`` (``{}`` when none is)."""
    for data_path in paths:
        if data_path is None:
            continue
        path = d.sidecar_path(data_path)
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    return data
            except (OSError, ValueError):
                continue
    return {}


def morphometrics_dictionary(table: pd.DataFrame, rois: pd.DataFrame, units: list[_Unit]) -> dict:
    """Description/Units of every morphometrics column (participant sidecars, else the built-in ones)."""
    from bids_app.participant.morphometry import data_dictionary

    tissue = {**data_dictionary("tissue"), **_first_sidecar(u.outputs.path("tissue_morph") for u in units)}
    roi_defaults = {**data_dictionary("roi"), **ROI_EXTRA_DICTIONARY}
    out: dict = dict(KEY_DICTIONARY)
    for col in table.columns:
        if col in tissue and isinstance(tissue[col], dict):
            out[col] = tissue[col]
    by_key = {}
    for atlas, desc in rois[["atlas", "desc"]].drop_duplicates().itertuples(index=False, name=None):
        sidecar = _first_sidecar(_roi_files(u).get((atlas, desc or None)) for u in units)
        by_key[(atlas, desc)] = {**roi_defaults, **{k: v for k, v in sidecar.items() if isinstance(v, dict)}}
    for row in rois.itertuples(index=False):
        meta = by_key[(row.atlas, row.desc)].get(row.source_column, {})
        entry = {"Description": f"{meta.get('Description', row.source_column)}; region {row.name} "
                                f"(label {row.index}) of atlas {row.atlas}"}
        if "Units" in meta:
            entry["Units"] = meta["Units"]
        out[row.column] = entry
    for col in table.columns:
        out.setdefault(col, {"Description": f"Participant-level morphometric {col}"})
    return out


#: MRIQC image-quality metrics (Esteban et al., PLoS ONE 2017, doi:10.1371/journal.pone.0184661).
_IQM_PATTERNS = [
    (r"cjv", "Coefficient of joint variation of GM and WM intensities (Ganzetti et al. 2016); lower is better", None),
    (r"cnr", "Contrast-to-noise ratio of GM and WM (Magnotta & Friedman 2006); higher is better", None),
    (r"efc", "Entropy-focus criterion: ghosting and blurring from motion (Atkinson et al. 1997); lower is better",
     None),
    (r"fber", "Foreground-background energy ratio (Shehzad et al. 2015); higher is better", None),
    (r"fwhm_(x|y|z|avg)", "Full width at half maximum of the image smoothness, axis {0} (in voxels, as MRIQC 24)",
     "voxel"),
    (r"icvs_(csf|gm|wm)", "Intracranial volume fraction of {0}", None),
    (r"inu_(med|range)", "Intensity non-uniformity (bias field): {0} of the field", None),
    (r"qi_1", "Mortamet's quality index 1: fraction of background voxels with artefactual intensity", None),
    (r"qi_2", "Mortamet's quality index 2: goodness of fit of the background noise distribution", None),
    (r"rpve_(csf|gm|wm)", "Residual partial-volume effect of {0}", None),
    (r"size_(x|y|z)", "Image size along axis {0}", "voxel"),
    (r"spacing_(x|y|z)", "Voxel size along axis {0}", "mm"),
    (r"snr_(csf|gm|wm|total)", "Signal-to-noise ratio in {0}", None),
    (r"snrd_(csf|gm|wm|total)", "Signal-to-noise ratio in {0}, noise from the background (Dietrich et al. 2007)",
     None),
    (r"summary_(bg|csf|gm|wm)_(\w+)", "Intensity summary statistic '{1}' in {0}", None),
    (r"tpm_overlap_(csf|gm|wm)", "Overlap of the {0} segmentation with the template's tissue probability map",
     None),
    (r"wm2max", "Median WM intensity over the 95th percentile of the full intensity distribution", None),
    (r"gsr", "Ghost-to-signal ratio along the phase-encoding axis (MorphoBIDS extension)", None),
    (r"gsr_(x|y|z)", "Ghost-to-signal ratio along axis {0} (MorphoBIDS extension)", None),
]


def iqm_dictionary(columns: list[str]) -> dict:
    """Description (and Units) of MRIQC IQM columns; unknown names get a generic entry."""
    out: dict = {}
    for col in columns:
        if col in KEY_DICTIONARY:
            out[col] = KEY_DICTIONARY[col]
            continue
        for pattern, text, units in _IQM_PATTERNS:
            match = re.fullmatch(pattern, col)
            if match:
                out[col] = {"Description": text.format(*match.groups())}
                if units:
                    out[col]["Units"] = units
                break
        else:
            out[col] = {"Description": f"Image-quality metric {col} (MRIQC naming)"}
    return out
