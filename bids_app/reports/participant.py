"""The participant's self-contained HTML report (inline SVG, no external resources).

Sections: quality control (the QC verdict and its reasons, the classifier's probability of
acceptance, the image-quality metrics against the ABIDE reference sample, the background and
artifact masks of the IQMs), summary morphometrics, segmentation, normalization, bias field,
methods. The QC section reads ``*_desc-T1w_iqm.json`` and ``*_desc-T1w_qc.json``; outputs
written before QC existed give a report saying QC was not computed.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import jinja2
import nibabel as nb
import numpy as np
import pandas as pd

from bids_app import __version__
from bids_app.bids import derivatives as d
from bids_app.reports import figures
from bids_app.reports import qc_figures as qf

LOG = logging.getLogger("morphobids")
TEMPLATES = Path(__file__).parent / "templates"
QC_LEVELS = ("pass", "warn", "fail")
CLASSIFIER_NOTE = ("Probability that expert raters would accept the scan, from a classifier trained on the ABIDE "
                   "ratings of IQMs computed by MRIQC. MorphoBIDS computes the IQMs with MRIQC's definitions "
                   "(mriqc.qc.anatomical) but from its own segmentation and masks, so the probability is "
                   "indicative: read it together with the checks and the figures.")


def render(template_name: str, **context) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape())
    env.filters["num"] = qf.format_value
    return env.get_template(template_name).render(**context)


def read_json_object(path: Path) -> tuple[dict | None, str | None]:
    """(content, None) for a readable JSON object, (None, why) when the file is absent or unusable."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path.name} cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def qc_verdict(data: Mapping) -> dict:
    """Verdict, raised flags (warn/fail), passed checks and ``p_accept`` of a QC JSON, ready to display."""
    verdict = str(data.get("verdict", "")).strip().lower()
    flags = data.get("flags") if isinstance(data.get("flags"), list) else []
    raised, passed = [], []
    for flag in flags:
        if not isinstance(flag, dict):
            continue
        level = str(flag.get("level", "")).strip().lower()
        entry = {"check": str(flag.get("check", "?")), "level": level, "reason": str(flag.get("reason", "") or ""),
                 "details": {k: v for k, v in flag.items() if k not in ("check", "level", "reason")}}
        (raised if level in ("warn", "fail") else passed).append(entry)
    raised.sort(key=lambda f: (f["level"] != "fail", f["check"]))
    classifier = data.get("classifier") if isinstance(data.get("classifier"), dict) else {}
    p_accept = data.get("p_accept", classifier.get("p_accept"))
    try:
        p_accept = float(p_accept) if p_accept is not None else None
    except (TypeError, ValueError):
        p_accept = None
    about = []
    for key, value in classifier.items():
        if key == "p_accept" or value in (None, "", [], {}):
            continue
        text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else qf.format_value(value)
        about.append(f"{key.replace('_', ' ')}: {text}")
    notes = [str(n) for n in data.get("notes") or [] if n] if isinstance(data.get("notes"), list) else []
    return {"verdict": verdict if verdict in QC_LEVELS else "unknown", "raised": raised, "passed": passed,
            "p_accept": p_accept if p_accept is not None and np.isfinite(p_accept) else None,
            "classifier": "; ".join(about), "notes": notes}


def raw_t1w(out: d.Outputs) -> nb.Nifti1Image:
    """The conformed T1w before bias correction, rebuilt as ``preproc x biasfield`` (N4's model)."""
    preproc = nb.load(str(out.path("preproc_t1w")))
    data = preproc.get_fdata(dtype=np.float32)
    bias_path = out.path("biasfield")
    if bias_path.is_file():
        bias = nb.load(str(bias_path))
        if bias.shape[:3] == preproc.shape[:3]:
            data = data * bias.get_fdata(dtype=np.float32).reshape(data.shape)
    return nb.Nifti1Image(data, preproc.affine)


def background_figure(out: d.Outputs, qc_masks: Mapping[str, str | Path] | None = None) -> tuple[str | None, str]:
    """(SVG or None, note): the air and artifact masks over the T1w.

    ``qc_masks``: precomputed ``{"air": path, "artifacts": path}``; otherwise they are computed
    from the T1w, head mask and brain mask (:func:`bids_app.qc.masks.image_masks`).
    """
    try:
        t1w = raw_t1w(out)
        if qc_masks and {"air", "artifacts"} <= set(qc_masks):
            air, artifacts = qc_masks["air"], qc_masks["artifacts"]
        else:
            from bids_app.qc.masks import image_masks

            masks = image_masks(t1w, nb.load(str(out.path("head_mask"))), nb.load(str(out.path("brain_mask"))))
            air, artifacts = masks.air, masks.artifacts
        n_artifacts = int(np.count_nonzero(qf.mask_array(artifacts, t1w)))
        svg = qf.background_svg(t1w, air, artifacts)
    except (OSError, ValueError) as exc:
        LOG.warning("%s: background figure not drawn (%s).", out.prefix, exc)
        return None, f"The background figure could not be drawn: {exc}."
    note = (f"{n_artifacts} artifact voxel(s) in the background." if n_artifacts
            else "No artifact voxel in the background.")
    return svg, note


def quality_section(out: d.Outputs, qc_masks: Mapping[str, str | Path] | None = None,
                    background: bool = True) -> dict:
    """Context of the report's QC section from the participant's IQM and QC files."""
    from bids_app.group.collect import iqm_dictionary, iqm_values

    iqm_path, qc_path = out.path("iqms", contrast="T1w"), out.path("qc", contrast="T1w")
    iqm_data, iqm_error = read_json_object(iqm_path)
    qc_data, qc_error = read_json_object(qc_path)
    section = {"available": iqm_data is not None or qc_data is not None,
               "errors": [e for e in (iqm_error, qc_error) if e],
               "iqm_file": iqm_path.name, "qc_file": qc_path.name, "verdict": None, "iqms": [], "more_iqms": [],
               "classifier_note": CLASSIFIER_NOTE, "reference_note": qf.ABIDE_NOTE,
               "limits": qf.REPORT_PERCENTILES, "has_reference": False, "n_beyond": 0,
               "background_svg": None, "background_note": ""}
    if qc_data is not None:
        section["verdict"] = qc_verdict(qc_data)
    if iqm_data is not None:
        values = iqm_values(iqm_data)
        reference = qf.abide_reference()
        section["has_reference"] = bool(reference)
        rows = qf.iqm_rows(values, reference, iqm_dictionary(list(values)))
        section["iqms"] = [r for r in rows if r["headline"]]
        section["more_iqms"] = [r for r in rows if not r["headline"]]
        section["n_beyond"] = sum(r["flag"] is not None for r in rows)
    if section["available"] and background:
        section["background_svg"], section["background_note"] = background_figure(out, qc_masks)
    return section


def processing_figures(t1w, brain_mask, dseg, std_t1w, template_mask, biasfield, icv_mask=None) -> dict[str, str]:
    """The report's processing figures as SVG text: segmentation mosaic, normalization
    check and bias field (keys ``seg_svg``, ``norm_svg``, ``bias_svg``)."""
    return {"seg_svg": figures.segmentation_mosaic(t1w, brain_mask, dseg, icv_mask),
            "norm_svg": figures.normalization_check(std_t1w, template_mask),
            "bias_svg": figures.bias_field(biasfield, brain_mask)}


def _brain_extraction(out: d.Outputs) -> dict[str, str]:
    """The brain mask's method, as its sidecar records it (it differs between participants)."""
    sidecar = d.sidecar_path(out.path("brain_mask"))
    method = json.loads(sidecar.read_text()).get("Method") if sidecar.is_file() else None
    return {"brain extraction": method} if method else {}


def write_participant_report(output_dir: str, subject: str, session: str | None, template: str, res_label: str,
                             template_mask: str, methods: dict, source: str, warnings: list[str] | None = None,
                             *, qc_masks: Mapping[str, str | Path] | None = None,
                             draw_background: bool = True, svgs: Mapping[str, str] | None = None) -> str:
    """Build figures from the written derivatives and write ``sub-<label>[_ses-<label>].html``.

    ``qc_masks``: precomputed ``{"air": path, "artifacts": path}`` masks on the T1w grid for the
    background figure (computed from the derivatives when not given); ``draw_background=False``
    leaves that figure out. ``svgs``: figures already drawn by :func:`processing_figures`
    (the workflow draws them while other steps run); the rest are drawn here.
    """
    out = d.Outputs(Path(output_dir), subject, session)
    svgs = dict(svgs or {})
    if not {"seg_svg", "norm_svg", "bias_svg"} <= set(svgs):
        icv = out.path("icv_mask")
        svgs = processing_figures(out.path("preproc_t1w"), out.path("brain_mask"), out.path("dseg"),
                                  out.path("std_preproc_t1w", template=template, res=res_label), template_mask,
                                  out.path("biasfield"), icv if icv.is_file() else None)
    tissue = pd.read_csv(out.path("tissue_morph"), sep="\t").iloc[0]
    summary = [("TIV", f"{tissue['tiv_ml']:.0f} mL")]
    if "brain_ml" in tissue:
        summary.append(("Brain mask", f"{tissue['brain_ml']:.0f} mL"))
    summary += [("GM", f"{tissue['gm_ml']:.0f} mL"),
               ("WM", f"{tissue['wm_ml']:.0f} mL"), ("CSF", f"{tissue['csf_ml']:.0f} mL"),
               ("Brain parenchymal fraction", f"{tissue['bpf']:.3f}"),
               ("GM fraction of brain", f"{tissue['gm_fraction']:.3f}")]
    html = render(
        "participant.html",
        key=out.prefix, version=__version__, date=datetime.date.today().isoformat(), source=source,
        template=template, summary=summary, warnings=warnings or [],
        qc=quality_section(out, qc_masks, draw_background),
        seg_svg=svgs["seg_svg"], norm_svg=svgs["norm_svg"], bias_svg=svgs["bias_svg"],
        methods=sorted({**methods, **_brain_extraction(out)}.items()),
    )
    return str(d.write_text(out.report(), html))
