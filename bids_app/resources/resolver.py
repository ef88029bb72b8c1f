"""Find templates, tissue priors and atlases by their TemplateFlow file names, offline.

Two roots are searched, in order, for ``tpl-<template>/<TemplateFlow file name>``:

1. ``$TEMPLATEFLOW_HOME`` (a real TemplateFlow tree, e.g. fetched when the Docker
   image was built);
2. the embedded defaults built by ``python -m bids_app.resources build`` into
   ``$MORPHOBIDS_RESOURCES``, else ``<sys.prefix>/share/morphobids/templateflow``.

TemplateFlow's own API is not used: ``templateflow.api.get`` downloads missing
files. Empty files (TemplateFlow's skeleton placeholders) and broken links do not
count as present. Nothing here writes anywhere or opens a network connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ResourceError
from . import catalog

ENV_EMBEDDED = "MORPHOBIDS_RESOURCES"
ENV_TEMPLATEFLOW = "TEMPLATEFLOW_HOME"
MANIFEST = "resources.json"
BUILD_HINT = (
    "Run `make resources` (or `python -m bids_app.resources build`) to build the embedded defaults, "
    "or set TEMPLATEFLOW_HOME to a TemplateFlow folder that holds {where}."
)
_ENTITY = re.compile(r"^[A-Za-z0-9]+$")


def embedded_dir() -> Path:
    """Root of the embedded TemplateFlow-style tree (it may not be built yet)."""
    env = os.environ.get(ENV_EMBEDDED, "").strip()
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "morphobids" / "templateflow"


def templateflow_home() -> Path | None:
    """``$TEMPLATEFLOW_HOME`` when set (TemplateFlow's default under $HOME is not consulted)."""
    env = os.environ.get(ENV_TEMPLATEFLOW, "").strip()
    return Path(env).expanduser() if env else None


def _roots() -> list[tuple[str, Path]]:
    roots = [("embedded", embedded_dir())]
    home = templateflow_home()
    return [("templateflow", home), *roots] if home else roots


def _usable(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _entity(value, what: str) -> str:
    value = str(value)
    if not _ENTITY.match(value):
        raise ValueError(f"{what} must be alphanumeric (a TemplateFlow entity value), got {value!r}")
    return value


def _res_values(resolution) -> tuple[str, ...]:
    """TemplateFlow spells resolutions ``res-01`` (most templates) or ``res-1``."""
    text = str(resolution).strip().lower().removesuffix("mm")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"resolution must be a positive integer (1 = 1 mm, 2 = 2 mm), got {resolution!r}")
    number = int(text)
    return tuple(dict.fromkeys((f"{number:02d}", str(number))))


def filename(template: str, suffix: str, ext: str = ".nii.gz", *, res: str | None = None,
             atlas: str | None = None, label: str | None = None, desc: str | None = None) -> str:
    """A TemplateFlow file name: ``tpl-<t>[_res-][_atlas-][_label-][_desc-]_<suffix><ext>``."""
    parts = [f"tpl-{template}"]
    for key, value in (("res", res), ("atlas", atlas), ("label", label), ("desc", desc)):
        if value is not None:
            parts.append(f"{key}-{value}")
    return "_".join(parts) + f"_{suffix}{ext}"


def _find(template: str, names: list[str], roots=None) -> tuple[str, Path] | None:
    for origin, root in roots or _roots():
        for name in names:
            path = root / f"tpl-{template}" / name
            if _usable(path):
                return origin, path
    return None


def _searched(template: str, name: str) -> str:
    return ", ".join(f"{origin}: {root / f'tpl-{template}' / name}" for origin, root in _roots())


def _missing(what: str, template: str, name: str, resolution) -> ResourceError:
    where = f"tpl-{template}/{name}"
    if template != catalog.TEMPLATE or int(_res_values(resolution)[0]) not in catalog.RESOLUTIONS:
        hint = (f"The embedded defaults cover only {catalog.TEMPLATE} at resolutions "
                f"{', '.join(map(str, catalog.RESOLUTIONS))}: set TEMPLATEFLOW_HOME to a TemplateFlow folder "
                f"that holds {where}.")
        return ResourceError(f"{what} not found: {name} (searched {_searched(template, name)}).", hint)
    built = (embedded_dir() / MANIFEST).is_file()
    state = "" if built else f" The embedded resources are not built ({embedded_dir()} has no {MANIFEST})."
    return ResourceError(
        f"{what} not found: {name} (searched {_searched(template, name)}).{state}",
        BUILD_HINT.format(where=where),
    )


def get_template(template: str = catalog.TEMPLATE, resolution=1, suffix: str = "T1w",
                 desc: str | None = None, label: str | None = None) -> Path:
    """Path of a template image, e.g. ``tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz``.

    ``suffix="T1w"``: whole head; ``desc="brain"``: brain-extracted; ``desc="brain",
    suffix="mask"``: brain mask; ``label="GM"|"WM"|"CSF"``: tissue prior
    (``probseg``, float 0-1; given a label, the default suffix becomes ``probseg``).
    Raises :class:`ResourceError` naming the file when it is nowhere to be found.
    """
    template = _entity(template, "template")
    suffix = _entity(suffix, "suffix")
    desc = _entity(desc, "desc") if desc is not None else None
    label = _entity(label, "label") if label is not None else None
    if label is not None and suffix == "T1w":
        suffix = "probseg"
    names = [filename(template, suffix, res=res, label=label, desc=desc) for res in _res_values(resolution)]
    found = _find(template, names)
    if found is None:
        raise _missing("Template file", template, names[0], resolution)
    return found[1]


@dataclass(frozen=True)
class Atlas:
    """A discrete atlas in template space: label image, label table and its terms of use."""

    name: str
    dseg: Path
    labels: Path  # TSV with columns index, name (BIDS dseg.tsv style)
    source: str
    licence: str
    citation: str
    description: str

    def labels_table(self):
        """The label table as a pandas DataFrame with (at least) integer ``index`` and str ``name``."""
        import pandas as pd

        table = pd.read_csv(self.labels, sep="\t")
        if not {"index", "name"} <= set(table.columns):
            table = pd.read_csv(self.labels, sep="\t", header=None)
            table = table.rename(columns={0: "index", 1: "name"})
        table["index"] = table["index"].astype(int)
        table["name"] = table["name"].astype(str).str.strip()
        return table


def available_atlases() -> list[str]:
    """Names accepted by :func:`get_atlas` for the embedded defaults (catalogue order)."""
    return [spec.name for spec in catalog.ATLASES]


def _atlas_names(template: str, atlas: str, desc: str | None, resolution) -> tuple[list[str], list[str]]:
    res_values = _res_values(resolution)
    dseg = [filename(template, "dseg", res=res, atlas=atlas, desc=desc) for res in res_values]
    tsv = [filename(template, "dseg", ".tsv", res=res, atlas=atlas, desc=desc) for res in res_values]
    tsv.append(filename(template, "dseg", ".tsv", atlas=atlas, desc=desc))
    if desc is not None:
        tsv.append(filename(template, "dseg", ".tsv", atlas=atlas))
    return dseg, tsv


def get_atlas(name: str, template: str = catalog.TEMPLATE, resolution=1) -> Atlas:
    """The atlas ``name`` (case-insensitive; see :func:`available_atlases`) on ``template``.

    Image and label table come from the same root (TemplateFlow first). Names not in
    the catalogue are looked up as ``atlas-<name>`` in ``$TEMPLATEFLOW_HOME`` only.
    """
    template = _entity(template, "template")
    spec = catalog.atlas_spec(name)
    if spec is None and not _ENTITY.match(str(name)):
        raise _unknown_atlas(name)
    atlas, desc = (spec.atlas, spec.desc) if spec else (str(name), None)
    dseg_names, tsv_names = _atlas_names(template, atlas, desc, resolution)
    for origin, root in _roots():
        dseg = _find(template, dseg_names, [(origin, root)])
        tsv = _find(template, tsv_names, [(origin, root)])
        if dseg and tsv:
            return _atlas_record(spec, str(name), origin, dseg[1], tsv[1])
    if spec is None:
        raise _unknown_atlas(name)
    table = filename(template, "dseg", ".tsv", atlas=atlas, desc=desc)
    raise _missing(f"Atlas {spec.name}", template, f"{dseg_names[0]} (and {table})", resolution)


def _unknown_atlas(name) -> ResourceError:
    return ResourceError(
        f"Unknown atlas {name!r}: not in the embedded catalogue and not found in TEMPLATEFLOW_HOME.",
        "Choose one of: " + ", ".join(available_atlases())
        + "; or set TEMPLATEFLOW_HOME to a TemplateFlow folder holding tpl-<template>/tpl-<template>_res-01_atlas-"
        f"{name}_dseg.nii.gz and its _dseg.tsv.",
    )


def _atlas_record(spec, name: str, origin: str, dseg: Path, tsv: Path) -> Atlas:
    sidecar = _read_json(tsv.with_suffix(".json"))
    if origin == "templateflow":
        source = f"TemplateFlow ({dseg.parent})"
    else:
        source = sidecar.get("Source") or "embedded default"
    if spec is not None:
        return Atlas(spec.name, dseg, tsv, source, spec.licence, spec.citation, spec.description)
    licence = sidecar.get("License") or "see upstream (TemplateFlow template_description.json)"
    citation = str(sidecar.get("ReferencesAndLinks", ""))
    return Atlas(name, dseg, tsv, source, licence, citation, sidecar.get("Description", name))


def _catalog_licence(path: Path) -> str | None:
    """Catalogue licence for a TemplateFlow file of the embedded template or one of its atlases."""
    match = re.search(r"_atlas-([A-Za-z0-9]+)(?:_.*?desc-([A-Za-z0-9]+))?", path.name)
    if match:
        for spec in catalog.ATLASES:
            if spec.atlas == match.group(1) and spec.desc in (None, match.group(2)):
                return spec.licence
        return None
    return catalog.MNI_LICENCE if path.parent.name == f"tpl-{catalog.TEMPLATE}" else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_manifest(root: Path | None = None) -> dict:
    """The embedded tree's provenance manifest (empty when not built)."""
    return _read_json((root or embedded_dir()) / MANIFEST)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (cached while the file's size and mtime are unchanged)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str | None:
    for base in {Path(os.path.abspath(root)), root.resolve()}:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    return None


def resource_provenance(path) -> dict:
    """Where a resolved resource file came from: source package/version/path, sha256, licence.

    For embedded files this is the build manifest entry; for TemplateFlow files the
    catalogue's licence or the template's ``template_description.json`` one. Always
    includes ``file``, ``path`` and ``origin``, and ``sha256`` of the file as it is now.
    """
    path = Path(os.path.abspath(path))
    info = {"file": path.name, "path": str(path), "origin": "unknown"}
    for origin, root in _roots():
        rel = _relative(path, root)
        if rel is None:
            continue
        info["origin"] = origin
        if origin == "embedded":
            info.update(read_manifest(root).get("files", {}).get(rel, {}))
        else:
            tpl = _read_json(path.parent / "template_description.json")
            info["source"] = f"TemplateFlow ({root})"
            licence = _catalog_licence(path) or tpl.get("License") or tpl.get("Licence")
            if licence:
                info["licence"] = licence
        break
    if _usable(path):
        info["sha256"] = sha256(path)
    return info
