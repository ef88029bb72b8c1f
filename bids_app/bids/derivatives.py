"""The one place that names every output file and writes it safely.

Names follow BIDS Derivatives (and sMRIPrep/MRIQC habits) from entities: an output
*kind* (e.g. ``"std_modulated"``) maps to an :class:`OutputSpec`; :class:`Outputs`
turns a kind plus the participant's entities into a path. Everything is written
atomically (temporary file in the same folder, then ``os.replace``), and never
inside the input dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bids_app import __version__
from bids_app.errors import OutputError, UsageError

PIPELINE_NAME = "MorphoBIDS"
BIDS_VERSION = "1.10.0"
#: Order of entities in file names (BIDS derivatives order; from/to/mode as sMRIPrep).
ENTITY_ORDER = ("sub", "ses", "atlas", "from", "to", "mode", "space", "res", "label", "desc")
#: Files BIDS cannot name yet; listed in the derivative's .bidsignore.
BIDSIGNORE = (
    "*.html",
    "**/figures",
    "logs/",
    "*_xfm.*",
    "*_morph.tsv",
    "*_morph.json",
    "*_morph.nii.gz",
    "*_iqm.json",
    "*_qc.json",
    "group",
)
TISSUES = {1: "GM", 2: "WM", 3: "CSF"}
TISSUE_NAMES = {"GM": "Gray matter", "WM": "White matter", "CSF": "Cerebrospinal fluid"}


@dataclass(frozen=True)
class OutputSpec:
    """Entities, suffix and extension of one kind of output (``{}`` fields are filled at call time)."""

    suffix: str
    extension: str = ".nii.gz"
    entities: tuple[tuple[str, str], ...] = ()
    datatype: str | None = "anat"
    description: str = ""


def _spec(suffix, extension=".nii.gz", datatype="anat", description="", **entities) -> OutputSpec:
    ents = tuple((("from" if k == "from_" else k), v) for k, v in entities.items())
    return OutputSpec(suffix, extension, ents, datatype, description)


#: Every participant-level output. Placeholders: {template}, {res}, {label}, {atlas}.
OUTPUTS: dict[str, OutputSpec] = {
    "preproc_t1w": _spec("T1w", desc="preproc", description="bias-corrected T1w, native space (RAS)"),
    "biasfield": _spec("T1w", desc="biasfield", description="N4 bias field estimate"),
    "brain_mask": _spec("mask", desc="brain", description="brain mask, native space"),
    "head_mask": _spec("mask", desc="head", description="head mask, native space"),
    "icv_mask": _spec("mask", desc="intracranial", description="intracranial mask (TIV), native space"),
    "dseg": _spec("dseg", description="tissue labels: 1 GM, 2 WM, 3 CSF"),
    "probseg": _spec("probseg", label="{label}", description="tissue probability map, native space"),
    "xfm_to_template": _spec("xfm", ".h5", from_="T1w", to="{template}", mode="image",
                             description="composite transform T1w -> template (ITK/ANTs HDF5)"),
    "xfm_from_template": _spec("xfm", ".h5", from_="{template}", to="T1w", mode="image",
                               description="composite transform template -> T1w (ITK/ANTs HDF5)"),
    "std_preproc_t1w": _spec("T1w", space="{template}", res="{res}", desc="preproc"),
    "std_brain_mask": _spec("mask", space="{template}", res="{res}", desc="brain"),
    "std_probseg": _spec("probseg", space="{template}", res="{res}", label="{label}"),
    "std_modulated": _spec("probseg", space="{template}", res="{res}", label="{label}", desc="modulated",
                           description="Jacobian-modulated tissue map (VBM input)"),
    "atlas_dseg": _spec("dseg", atlas="{atlas}", description="atlas labels in native space"),
    "atlas_morph": _spec("morph", ".tsv", atlas="{atlas}", description="ROI volumes (mL)"),
    "tissue_morph": _spec("morph", ".tsv", desc="tissue", description="TIV, tissue volumes, BPF"),
    "thickness": _spec("morph", desc="thickness", description="cortical thickness (mm; DiReCT), native space"),
    "iqms": _spec("iqm", ".json", desc="{contrast}", description="MRIQC-compatible image-quality metrics"),
    "qc": _spec("qc", ".json", desc="{contrast}", description="QC flags: pass/warn/fail with reasons"),
    "figure": _spec("{suffix}", ".svg", datatype="figures", desc="{desc}"),
}


#: Group-level outputs, relative to ``<output_dir>/group`` (a folder .bidsignore'd: BIDS has
#: no names yet for group tables and statistical maps; these follow BEP041's stat-/contrast-).
GROUP_OUTPUTS: dict[str, str] = {
    "morphometrics": "desc-morphometrics_group.tsv",
    "iqms": "desc-iqms_group.tsv",
    "qc": "desc-qc_group.tsv",
    "excluded": "desc-excluded_group.tsv",
    "roistats": "desc-roistats_group.tsv",
    "roi_manhattan": "figures/atlas-{atlas}_desc-{measure}_manhattan.svg",
    "roi_effectmap": "figures/atlas-{atlas}_desc-{measure}_effectmap.svg",
    "vbm_map": "vbm/space-{template}_res-{res}_contrast-{contrast}_{name}.nii.gz",
    "vbm_clusters": "vbm/space-{template}_res-{res}_contrast-{contrast}_desc-clusters_table.tsv",
    "vbm_summary": "vbm/space-{template}_res-{res}_contrast-{contrast}_desc-vbm_summary.json",
    "vbm_figure": "figures/contrast-{contrast}_desc-{name}_vbm.svg",
}


def group_path(output_dir: Path, kind: str, **fields: Any) -> Path:
    """Path of a group-level output ``kind`` (see :data:`GROUP_OUTPUTS`)."""
    try:
        pattern = GROUP_OUTPUTS[kind]
    except KeyError:
        raise KeyError(f"unknown group output {kind!r}; known: {sorted(GROUP_OUTPUTS)}") from None
    return Path(output_dir) / "group" / pattern.format(**{k: str(v) for k, v in fields.items()})


def group_report_path(output_dir: Path) -> Path:
    """The group HTML report, beside the participants' reports."""
    return Path(output_dir) / "group.html"


def label_of(text: str) -> str:
    """A BIDS label (letters and digits only) from free text, e.g. ``group[T.patient]`` -> ``groupTpatient``."""
    import re

    return re.sub(r"[^A-Za-z0-9]", "", text) or "contrast"


def entity_name(entities: dict[str, str | None], suffix: str, extension: str) -> str:
    """``sub-01_ses-a_space-X_desc-y_suffix.ext`` from an entity dict (None values dropped)."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


@dataclass(frozen=True)
class Outputs:
    """Output paths of one participant (and session) inside the derivative dataset ``root``."""

    root: Path
    subject: str
    session: str | None = None

    @property
    def prefix(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def folder(self, datatype: str | None = "anat") -> Path:
        base = self.root / f"sub-{self.subject}"
        if datatype == "figures":
            return base / "figures"
        if self.session:
            base = base / f"ses-{self.session}"
        return base / datatype if datatype else base

    def path(self, kind: str, **fields: Any) -> Path:
        """Path of output ``kind``; ``fields`` fill its placeholders (template, res, label, atlas...)."""
        try:
            spec = OUTPUTS[kind]
        except KeyError:
            raise KeyError(f"unknown output kind {kind!r}; known: {sorted(OUTPUTS)}") from None
        fill = {k: str(v) for k, v in fields.items()}
        try:
            entities = {k: v.format(**fill) for k, v in spec.entities}
            suffix = spec.suffix.format(**fill)
        except KeyError as exc:
            raise KeyError(f"output {kind!r} needs the field {exc}") from None
        entities = {"sub": self.subject, "ses": self.session, **entities}
        return self.folder(spec.datatype) / entity_name(entities, suffix, spec.extension)

    def report(self) -> Path:
        """The participant's HTML report, at the dataset root as fMRIPrep/sMRIPrep do."""
        return self.root / f"{self.prefix}.html"


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a data file (``x.nii.gz`` -> ``x.json``)."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".tsv", ".h5", ".svg"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def resolution_label(mm: float) -> str:
    """BIDS ``res-`` label of an isotropic voxel size: 1 -> ``1``, 1.5 -> ``1p5``."""
    return f"{mm:g}".replace(".", "p")


def bids_uri(path: Path, dataset_root: Path, name: str = "raw") -> str:
    """``bids:<name>:<relative path>`` as BIDS Sources expect."""
    return f"bids:{name}:{Path(path).resolve().relative_to(Path(dataset_root).resolve()).as_posix()}"


# --------------------------------------------------------------------------- writing


def check_output_location(bids_dir: Path, output_dir: Path) -> None:
    """Refuse an output_dir equal to or inside bids_dir (the input stays read-only)."""
    bids = bids_dir.resolve()
    out = output_dir.resolve()
    if out == bids or bids in out.parents:
        raise UsageError(
            f"output_dir {output_dir} is {'bids_dir itself' if out == bids else 'inside bids_dir'}: "
            "MorphoBIDS never writes into the input dataset.",
            "Choose an output folder outside bids_dir (e.g. a sibling folder, or bids_dir/../derivatives/morphobids).",
        )


def ensure_writable(folder: Path, what: str = "output_dir") -> None:
    """Create ``folder`` if needed and prove it is writable, or raise :class:`OutputError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"{what} {folder} is not writable ({exc.strerror or exc}).",
            "Choose a folder you can write to, or fix its permissions (in Docker, mount it without :ro).",
        ) from None


def atomic_write(path: Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename onto ``path``: readers never see partial files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_nifti(path: Path, img) -> Path:
    import nibabel as nb

    return atomic_write(path, lambda tmp: nb.save(img, str(tmp)))


def write_tsv(path: Path, frame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a"))


def sidecar(kind: str, sources: list[str], skull_stripped: bool | None = None, resolution_mm: float | None = None,
            **fields: Any) -> dict:
    """Sidecar of an output: Sources, software, the metadata BIDS requires for ``kind``, then ``fields``.

    BIDS requires ``SkullStripped`` for preprocessed T1w images and ``Resolution``
    for files carrying the ``res-`` entity; forgetting either is a validator error.
    """
    spec = OUTPUTS[kind]
    meta: dict[str, Any] = {"Sources": list(sources), "GeneratedBy": [generated_by()]}
    if spec.suffix == "T1w" and spec.extension.startswith(".nii"):
        if skull_stripped is None:
            raise ValueError(f"output {kind!r} needs skull_stripped=True/False (SkullStripped is required)")
        meta["SkullStripped"] = bool(skull_stripped)
    if any(k == "res" for k, _ in spec.entities):
        if resolution_mm is None:
            raise ValueError(f"output {kind!r} needs resolution_mm (Resolution is required with res-)")
        label = resolution_label(resolution_mm)
        meta["Resolution"] = {label: f"{resolution_mm:g} mm isotropic voxels, template grid"}
    if spec.description:
        meta["Description"] = spec.description[0].upper() + spec.description[1:] + "."
    meta.update(fields)
    return meta


def write_atlas_description(output_dir: Path, atlas: str, metadata: dict) -> Path:
    """``atlas-<name>_description.json`` at the dataset root: source, licence and citation of an atlas."""
    return write_json(Path(output_dir) / f"atlas-{atlas}_description.json", {"Name": atlas, **metadata})


def write_atlas_labels(output_dir: Path, atlas: str, labels) -> Path:
    """``atlas-<name>_dseg.tsv`` at the dataset root (index, name) for the atlas dseg files."""
    return write_tsv(Path(output_dir) / f"atlas-{atlas}_dseg.tsv", labels)


def generated_by() -> dict:
    """The ``GeneratedBy`` entry: name, version, and the container when running in one."""
    entry: dict[str, Any] = {"Name": PIPELINE_NAME, "Version": __version__}
    image = os.environ.get("MORPHOBIDS_CONTAINER_IMAGE")
    if image:
        entry["Container"] = {"Type": os.environ.get("MORPHOBIDS_CONTAINER_TYPE", "docker"), "Tag": image}
    return entry


def dataset_description(source: Path | None = None) -> dict:
    """``dataset_description.json`` of the derivative dataset."""
    desc: dict[str, Any] = {
        "Name": "MorphoBIDS derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by()],
        "License": "The derivatives inherit the licence of the source dataset; atlas labels keep their "
                   "upstream licences (see atlas-*_description.json).",
        "HowToAcknowledge": "Cite MorphoBIDS and the tools listed in GeneratedBy and in each sidecar.",
    }
    if source is not None:
        entry: dict[str, Any] = {"URL": Path(source).resolve().as_uri()}
        src_desc = Path(source) / "dataset_description.json"
        try:
            src = json.loads(src_desc.read_text(encoding="utf-8-sig"))
            if isinstance(src.get("DatasetDOI"), str):
                entry["DOI"] = src["DatasetDOI"]
        except (OSError, ValueError):
            pass
        desc["SourceDatasets"] = [entry]
        desc["DatasetLinks"] = {"raw": Path(source).resolve().as_uri()}
    return desc


def init_derivatives(output_dir: Path, bids_dir: Path | None) -> None:
    """Write the dataset-level files (description, .bidsignore, tissue dseg.tsv) if absent or stale."""
    write_json(output_dir / "dataset_description.json", dataset_description(bids_dir))
    write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
    rows = ["index\tname\tabbreviation"] + [f"{i}\t{TISSUE_NAMES[n]}\t{n}" for i, n in TISSUES.items()]
    write_text(output_dir / "dseg.tsv", "\n".join(rows) + "\n")


def participants_with_outputs(output_dir: Path) -> list[str]:
    """Labels of participants that have a finished native-space preprocessed T1w."""
    labels = []
    for folder in sorted(output_dir.glob("sub-*")):
        if folder.is_dir() and any(folder.rglob("*_desc-preproc_T1w.nii.gz")):
            labels.append(folder.name[4:])
    return labels
