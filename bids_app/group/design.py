"""Design matrix and contrast of the group model, from participants.tsv and the derivatives.

Covariates come from the raw dataset's ``participants.tsv`` (read with
:func:`bids_app.bids.participants.read_participants`; its ``participants.json``
tells numeric columns, with ``Units``, from categorical ones, with ``Levels``),
from ``sub-<l>/sub-<l>_sessions.tsv`` when the derivatives have sessions (a
session value, e.g. age at scan, overrides the participant's), from the tissue
morphometrics (``tiv_ml``, alias ``tiv``; ``gm_ml``, ``bpf``...) and from the
MRIQC IQMs (``cjv``, ``snr_total``...).

The model is a patsy formula right-hand side (``group + age + sex + tiv``),
built with :func:`patsy.dmatrix` (treatment coding, the first level in sorted
order as reference: ``group[T.patient]`` is patient minus control). Default
model when none is given:

- ``group`` when participants.tsv has a ``group`` column with at least two
  levels, then ``age`` and ``sex`` when those columns exist (and vary), then
  ``tiv`` when the tested measure is a volume (``*_ml``): ROI volumes scale with
  head size, and TIV as a covariate is the usual adjustment (Barnes et al.,
  NeuroImage 2010, doi:10.1016/j.neuroimage.2010.06.025);
- otherwise ``age`` (plus ``sex`` and ``tiv`` by the same rules).

The default contrast is the group term (``group[T.<level>]``, two levels), else
``age``. A contrast is a column name, a variable with exactly one column
(``group``), a linear combination patsy can parse (``group[T.b] - group[T.c]``),
or a vector of weights (``"0 1 0 0"``).

Covariate values are never dropped silently: a missing or non-numeric value
in a column the model uses raises :class:`InputDataError` naming the rows.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import patsy

from bids_app.bids.participants import NA_VALUES, read_participants
from bids_app.errors import InputDataError, UsageError
from bids_app.group.collect import KEYS, GroupData

LOG = logging.getLogger("morphobids")

#: Columns treated as numeric even when participants.json says nothing.
NUMERIC_HINTS = frozenset({"age"})
#: Columns treated as categorical even when coded with numbers (e.g. group 0/1).
CATEGORICAL_HINTS = frozenset({"group", "sex", "site", "scanner", "diagnosis", "dx"})
#: Fewest participants per level of a factor that the contrast tests.
MIN_PER_GROUP = 3
TIV_ALIAS = "tiv"


@dataclass
class Covariates:
    """One row per unit (aligned with the morphometrics table), with where each column came from."""

    table: pd.DataFrame
    source: dict[str, str] = field(default_factory=dict)  # column -> file it came from
    numeric: set[str] = field(default_factory=set)  # columns declared numeric
    categorical: set[str] = field(default_factory=set)  # columns declared categorical
    warnings: list[str] = field(default_factory=list)


@dataclass
class Design:
    """The design of one group model: matrix (rows x columns), contrast and the rows used."""

    matrix: np.ndarray
    columns: list[str]
    contrast: np.ndarray
    contrast_name: str
    formula: str
    rows: pd.DataFrame  # participant_id, session_id, in matrix row order
    data: pd.DataFrame  # the covariates of those rows
    design_info: patsy.DesignInfo
    comparison: dict | None = None  # variable, level, reference, n_level, n_reference (level-vs-reference)
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def df_resid(self) -> int:
        return self.n - int(np.linalg.matrix_rank(self.matrix))


# --------------------------------------------------------------------------- covariates


def _label(participant_id: str) -> str:
    return str(participant_id).removeprefix("sub-")


def _participants_sidecar(bids_dir: Path) -> dict:
    path = bids_dir / "participants.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _sessions_table(bids_dir: Path, label: str) -> pd.DataFrame | None:
    """``sub-<l>_sessions.tsv`` indexed by ``ses-<s>`` (None when absent or unreadable)."""
    path = bids_dir / f"sub-{label}" / f"sub-{label}_sessions.tsv"
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, na_values=NA_VALUES, keep_default_na=False,
                            encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        LOG.warning("%s cannot be parsed; its session covariates are ignored.", path)
        return None
    if "session_id" not in table.columns:
        return None
    table["session_id"] = table["session_id"].str.strip()
    table["session_id"] = ["ses-" + s.removeprefix("ses-") for s in table["session_id"]]
    return table.drop_duplicates("session_id").set_index("session_id")


def _as_number_where_possible(values: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    if values.notna().any() and numeric.notna().sum() == values.notna().sum():
        return numeric
    return values


def covariate_table(morphometrics: pd.DataFrame, bids_dir: str | Path | None = None,
                    iqms: pd.DataFrame | None = None, roi_columns=()) -> Covariates:
    """Covariates for each row of ``morphometrics``: participants.tsv, sessions.tsv, tissue volumes, IQMs.

    ``roi_columns`` (``GroupData.rois["column"]``) are responses, not covariates,
    and are left out; every other morphometrics column (TIV, tissue volumes, BPF)
    is available. On a name clash the participants.tsv column wins (with a warning).
    """
    keys = morphometrics[KEYS].reset_index(drop=True)
    labels = sorted({_label(p) for p in keys["participant_id"]})
    out = keys.copy()
    cov = Covariates(out)
    if bids_dir is not None:
        bids_dir = Path(bids_dir)
        participants = read_participants(bids_dir)
        cov.warnings += participants.warnings
        unlisted = [label for label in labels if label not in participants.table.index]
        if unlisted and len(participants.table.columns):
            cov.warnings.append(f"{bids_dir / 'participants.tsv'} does not list "
                                f"{', '.join('sub-' + u for u in unlisted)}: their covariates are missing.")
        sidecar = _participants_sidecar(bids_dir)
        path = str(bids_dir / "participants.tsv")
        table = participants.table.reindex([_label(p) for p in keys["participant_id"]])
        for col in table.columns:
            values = table[col]
            if not pd.api.types.is_numeric_dtype(values):
                values = values.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
            out[col] = values.to_numpy()
            cov.source[col] = path
            meta = sidecar.get(col) if isinstance(sidecar.get(col), dict) else {}
            if "Levels" in meta:
                cov.categorical.add(col)
            elif "Units" in meta:
                cov.numeric.add(col)
        _merge_sessions(cov, bids_dir)
    responses = set(roi_columns)
    for col in [c for c in morphometrics.columns if c not in KEYS and c not in responses]:
        _add_derived(cov, col, morphometrics[col].to_numpy(), "morphometrics")
    if "tiv_ml" in morphometrics.columns:
        _add_derived(cov, TIV_ALIAS, morphometrics["tiv_ml"].to_numpy(), "morphometrics (tiv_ml)")
    if iqms is not None and len(iqms):
        merged = keys.merge(iqms, on=KEYS, how="left")
        for col in iqms.columns:
            if col not in KEYS:
                _add_derived(cov, col, merged[col].to_numpy(), "IQMs")
    for col in out.columns:
        if col not in KEYS and col not in cov.numeric and col in CATEGORICAL_HINTS | cov.categorical:
            cov.categorical.add(col)
            if pd.api.types.is_numeric_dtype(out[col]):
                out[col] = out[col].map(lambda v: None if pd.isna(v) else f"{v:g}")
    return cov


def covariates_for(group: GroupData, morphometrics: pd.DataFrame | None = None) -> Covariates:
    """:func:`covariate_table` for a collected group (``morphometrics``: e.g. the rows kept after exclusion)."""
    table = group.morphometrics if morphometrics is None else morphometrics
    return covariate_table(table, group.bids_dir, group.iqms, group.rois["column"])


def _add_derived(cov: Covariates, col: str, values, source: str) -> None:
    if col in cov.table.columns:
        if cov.source.get(col, "").endswith("participants.tsv"):
            cov.warnings.append(f"participants.tsv has a column {col!r}: it is used instead of the {source} value.")
        return
    cov.table[col] = values
    cov.source[col] = source
    cov.numeric.add(col)


def _merge_sessions(cov: Covariates, bids_dir: Path) -> None:
    """Session covariates (``sub-<l>_sessions.tsv``) for rows with a session; they override participants.tsv."""
    table = cov.table
    if table["session_id"].isna().all():
        return
    for pid in table["participant_id"].unique():
        sessions = _sessions_table(bids_dir, _label(pid))
        if sessions is None:
            continue
        rows = table.index[(table["participant_id"] == pid) & table["session_id"].notna()]
        for col in sessions.columns:
            if col not in table.columns:
                table[col] = pd.Series([None] * len(table), dtype=object)
                cov.source[col] = str(bids_dir / "sub-<label>" / "sub-<label>_sessions.tsv")
            table[col] = table[col].astype(object)
            for i in rows:
                value = sessions[col].get(table.at[i, "session_id"])
                if value is not None and not pd.isna(value):
                    table.at[i, col] = value
    for col in table.columns:
        if col not in KEYS and not pd.api.types.is_numeric_dtype(table[col]):
            table[col] = _as_number_where_possible(table[col])


# --------------------------------------------------------------------------- model


def _formula_variables(formula: str, columns) -> tuple[list[str], set[str]]:
    """Data columns a formula uses, and those used inside ``C(...)`` (categorical by request)."""
    try:
        desc = patsy.ModelDesc.from_formula(formula)
    except patsy.PatsyError as exc:
        raise UsageError(f"cannot parse the model {formula!r}: {exc}".replace("\n", " "),
                         "Write a patsy formula such as 'group + age + sex + tiv'.") from None
    if desc.lhs_termlist:
        raise UsageError(f"the model {formula!r} has a left-hand side.",
                         "Give only the right-hand side (e.g. 'group + age'); the ROI measures are the responses.")
    used, categorical = [], set()
    columns = set(columns)
    for term in desc.rhs_termlist:
        for factor in term.factors:
            names = _names_in(factor.code, columns)
            used += [n for n in names if n not in used]
            if factor.code.replace(" ", "").startswith("C("):
                categorical |= set(names)
    return used, categorical


def _names_in(code: str, columns: set[str]) -> list[str]:
    """Column names in a factor's code: bare names and ``Q("name")`` references."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in columns:
            names.append(node.id)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Q"
              and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in columns):
            names.append(node.args[0].value)
    return list(dict.fromkeys(names))


def _expects_number(col: str, values: pd.Series, cov: Covariates) -> bool:
    if col in cov.categorical:
        return False
    if col in cov.numeric or col in NUMERIC_HINTS:
        return True
    present = values.dropna()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().mean() > 0.5


def _where(cov: Covariates, cols) -> str:
    files = sorted({cov.source.get(c, "the covariate table") for c in cols})
    return ", ".join(files)


def check_covariates(cov: Covariates, variables: list[str], categorical: set[str], formula: str) -> pd.DataFrame:
    """The covariate columns ``variables`` ready for patsy, or :class:`InputDataError` listing bad cells."""
    table = cov.table
    data = table[KEYS].copy()
    problems = []
    for col in variables:
        values = table[col]
        missing = values.isna()
        for i in np.flatnonzero(missing.to_numpy()):
            problems.append((table.index[i], col, "n/a (missing)"))
        if col not in categorical and not pd.api.types.is_numeric_dtype(values) and \
                _expects_number(col, values, cov):
            numeric = pd.to_numeric(values, errors="coerce")
            for i in np.flatnonzero((numeric.isna() & ~missing).to_numpy()):
                problems.append((table.index[i], col, f"{values.iloc[i]!r} (not a number)"))
            values = numeric
        elif col in categorical or not pd.api.types.is_numeric_dtype(values):
            values = values.astype(object).where(~missing, None)
        data[col] = values.to_numpy()
    if problems:
        cells = "; ".join(f"{_unit(table, i)} {col}={text}" for i, col, text in problems)
        bad_rows = sorted({_unit(table, i) for i, _, _ in problems})
        raise InputDataError(
            f"{_where(cov, [c for _, c, _ in problems])}: unusable covariate values for the model {formula!r}: "
            f"{cells}.",
            f"Correct these cells, exclude {', '.join(bad_rows)} (--exclude), or leave the column(s) "
            f"{', '.join(sorted({c for _, c, _ in problems}))} out of --model.",
        )
    return data


def _unit(table: pd.DataFrame, i) -> str:
    pid, ses = table.at[i, "participant_id"], table.at[i, "session_id"]
    return pid if ses is None or pd.isna(ses) else f"{pid}_{ses}"


def _usable(cov: Covariates, col: str) -> bool:
    """A column exists, has values, and varies (constant columns cannot enter a model with an intercept)."""
    if col not in cov.table.columns:
        return False
    values = cov.table[col].dropna()
    if values.empty:
        return False
    if values.nunique() < 2:
        cov.warnings.append(f"{col} is the same for every participant: left out of the default model.")
        return False
    return True


def default_model(cov: Covariates, measure: str = "gm_ml") -> str:
    """The documented default: group (+ age + sex) (+ tiv for volumes), else age (+ sex) (+ tiv)."""
    terms = []
    if _usable(cov, "group"):
        terms.append("group")
    elif "age" not in cov.table.columns or cov.table["age"].isna().all():
        raise UsageError(
            "no default group model: participants.tsv has neither a 'group' column with two or more levels "
            "nor an 'age' column.",
            "Add a group (or age) column to participants.tsv, or give --model (e.g. --model 'diagnosis + age').",
        )
    terms += [c for c in ("age", "sex") if c in cov.table.columns and cov.table[c].notna().any() and _usable(cov, c)]
    if measure.endswith("_ml") and _usable(cov, TIV_ALIAS):
        terms.append(TIV_ALIAS)
    return " + ".join(terms)


# --------------------------------------------------------------------------- contrast


def _parse_numbers(spec) -> np.ndarray | None:
    if isinstance(spec, (list, tuple, np.ndarray)):
        try:
            return np.asarray(spec, dtype=float)
        except (TypeError, ValueError):
            raise UsageError(f"contrast {spec!r} is not a list of numbers.", "Give numbers, e.g. 0 1 0 0.") from None
    parts = [p for p in re.split(r"[,\s;]+", str(spec).strip().strip("[]()")) if p]
    try:
        return np.asarray([float(p) for p in parts], dtype=float) if parts else None
    except ValueError:
        return None


def parse_contrast(spec, design_info: patsy.DesignInfo) -> tuple[np.ndarray, str]:
    """Contrast weights (one per design column) and a readable name, from ``spec`` (see module docstring)."""
    columns = list(design_info.column_names)
    hint = f"Available design columns: {', '.join(columns)}."
    vector = _parse_numbers(spec)
    if vector is not None:
        if vector.shape != (len(columns),):
            raise UsageError(f"contrast {spec!r} has {vector.size} weight(s) but the design has {len(columns)} "
                             f"columns ({', '.join(columns)}).", "Give one weight per column, in that order.")
        name = " + ".join(f"{w:g}*{c}" for w, c in zip(vector, columns, strict=True) if w)
    else:
        text = str(spec).strip()
        matches = [c for c in columns if c == text] or [c for c in columns if c.startswith(f"{text}[")]
        if len(matches) == 1:
            vector = np.asarray([float(c == matches[0]) for c in columns])
            name = matches[0]
        elif len(matches) > 1:
            raise UsageError(f"contrast {text!r} is ambiguous: the term has columns {', '.join(matches)}.",
                             f"Name one column, e.g. --contrast '{matches[0]}'. {hint}")
        else:
            try:
                constraint = design_info.linear_constraint(text)
            except (patsy.PatsyError, ValueError, KeyError):
                raise UsageError(f"unknown contrast {text!r}: no such design column.", hint) from None
            if constraint.coefs.shape[0] != 1:
                raise UsageError(f"contrast {text!r} has {constraint.coefs.shape[0]} rows; only one-row "
                                 "(t) contrasts are supported.", hint)
            vector, name = constraint.coefs[0].astype(float), text
    if not np.any(vector):
        raise UsageError(f"contrast {spec!r} has only zero weights.", hint)
    return vector, name


def default_contrast(design_info: patsy.DesignInfo) -> str:
    """The group column when the group factor has one coded column, else ``age``."""
    columns = list(design_info.column_names)
    group = [c for c in columns if re.match(r"^(C\(\s*)?group\b.*\[", c)]
    if len(group) == 1:
        return group[0]
    if len(group) > 1:
        raise UsageError(f"group has {len(group) + 1} levels: the default contrast is ambiguous.",
                         f"Give --contrast, one of {', '.join(group)} (or a vector of {len(columns)} weights).")
    if "age" in columns:
        return "age"
    raise UsageError("no default contrast: the model has neither a two-level group nor age.",
                     f"Give --contrast, one of {', '.join(columns)}.")


def two_level_comparison(design_info: patsy.DesignInfo, vector: np.ndarray, data: pd.DataFrame) -> dict | None:
    """When the contrast is one treatment-coded level of a factor versus its reference: the levels and sizes."""
    nonzero = np.flatnonzero(vector)
    if len(nonzero) != 1 or abs(vector[nonzero[0]]) != 1:
        return None
    column = design_info.column_names[nonzero[0]]
    for term, subterms in design_info.term_codings.items():
        span = design_info.term_slices[term]
        if not span.start <= nonzero[0] < span.stop or len(term.factors) != 1 or len(subterms) != 1:
            continue
        factor = term.factors[0]
        info = design_info.factor_infos[factor]
        matrix = subterms[0].contrast_matrices.get(factor)
        if info.type != "categorical" or matrix is None:
            return None
        coding = matrix.matrix[:, nonzero[0] - span.start]
        reference = [i for i in range(len(info.categories)) if not np.any(matrix.matrix[i])]
        if sorted(np.unique(coding)) != [0.0, 1.0] or coding.sum() != 1 or len(reference) != 1:
            return None
        level, ref = info.categories[int(np.argmax(coding))], info.categories[reference[0]]
        names = _names_in(factor.code, set(data.columns))
        if len(names) != 1:
            return None
        values = data[names[0]].astype(str)
        n_level, n_ref = int((values == str(level)).sum()), int((values == str(ref)).sum())
        sign = 1 if vector[nonzero[0]] > 0 else -1
        if sign < 0:
            level, ref, n_level, n_ref = ref, level, n_ref, n_level
        return {"factor": factor.name(), "variable": names[0], "column": column, "level": str(level),
                "reference": str(ref), "n_level": n_level, "n_reference": n_ref}
    return None


# --------------------------------------------------------------------------- design


def _redundant_columns(matrix: np.ndarray, columns: list[str]) -> list[str]:
    """Columns that are linear combinations of the columns before them (design order)."""
    scale = np.abs(matrix).max(axis=0)
    scaled = matrix / np.where(scale > 0, scale, 1.0)
    redundant, kept = [], []
    for j, name in enumerate(columns):
        if np.linalg.matrix_rank(scaled[:, kept + [j]]) <= len(kept):
            redundant.append(name)
        else:
            kept.append(j)
    return redundant


def build_design(cov: Covariates, model: str | None = None, contrast=None, measure: str = "gm_ml",
                 min_per_group: int = MIN_PER_GROUP) -> Design:
    """The design matrix of ``model`` (default: :func:`default_model`) over every row of ``cov``.

    Raises :class:`InputDataError` for missing/non-numeric covariates (naming the
    rows), too few participants (``n <= p + 1``, or fewer than ``min_per_group``
    in a level of the tested factor) or a rank-deficient design, and
    :class:`UsageError` for a bad formula or an unknown contrast.
    """
    formula = model.strip() if model and model.strip() else default_model(cov, measure)
    formula = formula[1:].strip() if formula.startswith("~") else formula
    variables, categorical = _formula_variables(formula, cov.table.columns)
    data = check_covariates(cov, variables, categorical | (set(variables) & cov.categorical), formula)
    try:
        matrix = patsy.dmatrix(formula, data, NA_action="raise", return_type="dataframe")
    except patsy.PatsyError as exc:
        available = [c for c in cov.table.columns if c not in KEYS]
        raise UsageError(f"cannot build the model {formula!r}: {str(exc).splitlines()[0]}.",
                         f"Covariates available: {', '.join(available)}.") from None
    info = matrix.design_info
    columns = list(info.column_names)
    x = matrix.to_numpy(dtype=float)
    vector, name = parse_contrast(contrast if contrast is not None else default_contrast(info), info)
    n, p = x.shape
    if n <= p + 1:
        raise InputDataError(
            f"{n} participant(s) for the model {formula!r} with {p} design columns ({', '.join(columns)}): "
            f"at least {p + 2} are needed.",
            "Add participants or simplify the model (fewer covariates).",
        )
    redundant = _redundant_columns(x, columns)
    if redundant:
        raise InputDataError(
            f"the design of {formula!r} is rank deficient: {', '.join(redundant)} is a linear combination of the "
            "other columns (a covariate constant across participants, or duplicating another).",
            "Remove the redundant covariate from --model.",
        )
    _check_group_sizes(info, vector, data, min_per_group, formula)
    design = Design(x, columns, vector, name, formula, data[KEYS].reset_index(drop=True),
                    data.reset_index(drop=True), info, two_level_comparison(info, vector, data),
                    list(cov.warnings))
    repeated = data["participant_id"].duplicated().sum()
    if repeated:
        design.warnings.append(f"{repeated} participant(s) contribute several sessions: the OLS treats sessions as "
                               "independent observations.")
    for message in design.warnings:
        LOG.warning(message)
    return design


def _check_group_sizes(info: patsy.DesignInfo, vector: np.ndarray, data: pd.DataFrame, minimum: int,
                       formula: str) -> None:
    """Every level of a categorical factor the contrast weighs needs ``minimum`` participants."""
    for term in info.terms:
        span = info.term_slices[term]
        if not np.any(vector[span]):
            continue
        for factor in term.factors:
            fi = info.factor_infos[factor]
            if fi.type != "categorical":
                continue
            names = _names_in(factor.code, set(data.columns))
            if len(names) != 1:
                continue
            counts = data[names[0]].astype(str).value_counts()
            small = {str(level): int(counts.get(str(level), 0)) for level in fi.categories
                     if counts.get(str(level), 0) < minimum}
            if small:
                raise InputDataError(
                    f"too few participants in {names[0]} level(s) "
                    f"{', '.join(f'{k} (n={v})' for k, v in small.items())} for the model {formula!r}: at least "
                    f"{minimum} per level are needed.",
                    "Add participants, merge levels, or test another contrast.",
                )
