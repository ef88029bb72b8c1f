"""Copy a finished participant's results from the work folder into the derivative dataset.

Runs last, once every step of the participant has succeeded, so derivatives appear
only for complete participants. Names come from :mod:`bids_app.bids.derivatives`;
each file is written atomically, with a sidecar recording Sources and parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_app.bids import derivatives as d
from bids_app.participant import intracranial

TISSUE_LABELS = ("GM", "WM", "CSF")


def _copy(src: str | Path, dst: Path) -> Path:
    return d.atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _image(src: str | Path, dst: Path, dtype=None) -> Path:
    """Save ``src`` at ``dst``: a copy, or a rewrite that casts the data type (e.g. masks to
    uint8) or compresses a work file kept as ``.nii`` for speed."""
    if dtype is None and str(src).endswith(".nii.gz") == str(dst).endswith(".nii.gz"):
        return _copy(src, dst)
    img = nb.load(str(src))
    data = np.asanyarray(img.dataobj)
    out = nb.Nifti1Image(data.astype(dtype) if dtype is not None else data, img.affine)
    out.header.set_xyzt_units("mm")
    return d.write_nifti(dst, out)


def write_participant_outputs(output_dir: str, bids_dir: str, subject: str, session: str | None,
                              source_t1w: str, work: dict, params: dict) -> list[str]:
    """Write every participant-level derivative from the ``work`` paths; return the written paths."""
    out = d.Outputs(Path(output_dir), subject, session)
    raw = [d.bids_uri(Path(source_t1w), Path(bids_dir))]
    tpl, res_mm = params["template"], float(params["output_resolution"])
    res = d.resolution_label(res_mm)
    prestripped = bool(work["prestripped"])
    conform_info = json.loads(Path(work["conform_json"]).read_text())
    written: list[Path] = []

    def sidecar_for(path: Path, kind: str, sources, **fields):
        meta = d.sidecar(kind, sources, skull_stripped=prestripped,
                         resolution_mm=res_mm if kind.startswith("std_") else None, **fields)
        written.append(d.write_json(d.sidecar_path(path), meta))

    def native(kind, src, sources, dtype=None, **fields):
        path = _image(src, out.path(kind, **{k: v for k, v in fields.items() if k in ("label", "atlas")}), dtype)
        written.append(path)
        sidecar_for(path, kind, sources, **{k: v for k, v in fields.items() if k not in ("label", "atlas")})
        return path

    preproc = native("preproc_t1w", work["preproc"], raw, BiasCorrection=params["bias"], **conform_info)
    pre_uri = [d.bids_uri(preproc, Path(output_dir), "morphobids")]
    native("biasfield", work["biasfield"], raw, Description="N4 multiplicative bias field (input / field).")
    native("head_mask", work["head_mask"], raw, np.uint8, Description="Head (foreground) mask used for N4.")
    native("brain_mask", work["brain_mask"], raw, np.uint8, Type="Brain", Method=work["skullstrip_method"])
    if work.get("icv_mask"):
        icv_method = intracranial.METHOD_REGISTERED if prestripped else intracranial.METHOD_GROWN
        native("icv_mask", work["icv_mask"], pre_uri, np.uint8, Type="ROI", Method=icv_method,
               Description="Intracranial cavity: the volume reported as tiv_ml.")
    native("dseg", work["dseg"], pre_uri, np.uint8, Method=params["segmentation"])
    for label, src in zip(TISSUE_LABELS, work["probseg"]):
        native("probseg", src, pre_uri, label=label, Method=params["segmentation"])

    for kind, src in (("xfm_to_template", work["to_template"]), ("xfm_from_template", work["to_native"])):
        path = _copy(src, out.path(kind, template=tpl))
        written.append(path)
        written.append(d.write_json(d.sidecar_path(path), {
            "Sources": pre_uri, "Software": "ANTs via antspyx", "Method": params["registration"],
            "Similarity": work["similarity"], "GeneratedBy": [d.generated_by()]}))

    std = work["std"]
    std_files = [("std_preproc_t1w", std["preproc_t1w"], {}, None),
                 ("std_brain_mask", std["brain_mask"], {}, np.uint8)]
    std_files += [("std_probseg", std[f"probseg_{t}"], {"label": t}, None) for t in TISSUE_LABELS]
    std_files += [("std_modulated", std[f"modulated_{t}"], {"label": t}, None) for t in ("GM", "WM")]
    for kind, src, fields, dtype in std_files:
        path = _image(src, out.path(kind, template=tpl, res=res, **fields), dtype)
        written.append(path)
        extra = {"Modulation": "Jacobian determinant of the template-to-T1w mapping (tissue volume preserved)"} \
            if kind == "std_modulated" else {}
        sidecar_for(path, kind, pre_uri + [d.bids_uri(out.path("xfm_to_template", template=tpl), Path(output_dir),
                                                      "morphobids")], **extra)

    for name, src in work["atlases"].items():
        native("atlas_dseg", src, pre_uri, np.int16, atlas=name, Atlas=name)
    if work.get("thickness"):
        native("thickness", work["thickness"], pre_uri, Units="mm", Method=params["thickness"])
    written += _write_tables(out, work, pre_uri)
    for kind, key in (("iqms", "iqm_json"), ("qc", "qc_json")):
        if work.get(key):
            data = json.loads(Path(work[key]).read_text())
            written.append(d.write_json(out.path(kind, contrast="T1w"), {**data, "Sources": raw + pre_uri}))
    return [str(p) for p in written]


def _write_tables(out: d.Outputs, work: dict, sources: list[str]) -> list[Path]:
    """Tissue and ROI volume tables, each with its JSON data dictionary."""
    from bids_app.participant.morphometry import data_dictionary

    written = []
    tissue = pd.read_csv(work["tissue_tsv"], sep="\t")
    path = d.write_tsv(out.path("tissue_morph"), tissue)
    written += [path, d.write_json(d.sidecar_path(path), {**data_dictionary("tissue"), "Sources": sources})]
    for name, src in work["atlas_tsv"].items():
        table = pd.read_csv(src, sep="\t")
        path = d.write_tsv(out.path("atlas_morph", atlas=name), table)
        columns = data_dictionary("roi", thickness="thickness_mm" in table.columns)
        written += [path, d.write_json(d.sidecar_path(path), {**columns, "Sources": sources,
                                                               "Atlas": name})]
    return written


def write_atlas_metadata(output_dir: Path, atlas_names: list[str], template: str) -> None:
    """Dataset-level ``atlas-<name>_description.json`` and ``atlas-<name>_dseg.tsv`` for each atlas."""
    from bids_app.resources import get_atlas, resource_provenance

    for name in atlas_names:
        atlas = get_atlas(name, template)
        d.write_atlas_description(output_dir, name, {
            "Description": atlas.description, "Source": atlas.source, "License": atlas.licence,
            "Citation": atlas.citation, "SpatialReference": template,
            "Provenance": resource_provenance(atlas.dseg)})
        d.write_atlas_labels(output_dir, name, atlas.labels_table())
