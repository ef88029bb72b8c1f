"""The participant's self-contained HTML report (inline SVG, no external resources)."""

from __future__ import annotations

import datetime
from pathlib import Path

import jinja2
import pandas as pd

from bids_app import __version__
from bids_app.bids import derivatives as d
from bids_app.reports import figures

TEMPLATES = Path(__file__).parent / "templates"


def render(template_name: str, **context) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape())
    return env.get_template(template_name).render(**context)


def write_participant_report(output_dir: str, subject: str, session: str | None, template: str, res_label: str,
                             template_mask: str, methods: dict, source: str, warnings: list[str] | None = None) -> str:
    """Build figures from the written derivatives and write ``sub-<label>[_ses-<label>].html``."""
    out = d.Outputs(Path(output_dir), subject, session)
    tissue = pd.read_csv(out.path("tissue_morph"), sep="\t").iloc[0]
    summary = [("TIV", f"{tissue['tiv_ml']:.0f} mL"), ("GM", f"{tissue['gm_ml']:.0f} mL"),
               ("WM", f"{tissue['wm_ml']:.0f} mL"), ("CSF", f"{tissue['csf_ml']:.0f} mL"),
               ("Brain parenchymal fraction", f"{tissue['bpf']:.3f}"),
               ("GM fraction of brain", f"{tissue['gm_fraction']:.3f}")]
    html = render(
        "participant.html",
        key=out.prefix, version=__version__, date=datetime.date.today().isoformat(), source=source,
        template=template, summary=summary, warnings=warnings or [],
        seg_svg=figures.segmentation_mosaic(out.path("preproc_t1w"), out.path("brain_mask"), out.path("dseg")),
        norm_svg=figures.normalization_check(out.path("std_preproc_t1w", template=template, res=res_label),
                                             template_mask),
        bias_svg=figures.bias_field(out.path("biasfield"), out.path("brain_mask")),
        methods=sorted(methods.items()),
    )
    return str(d.write_text(out.report(), html))
