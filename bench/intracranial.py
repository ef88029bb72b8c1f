"""Compare the two intracranial-volume estimates on processed participants.

For each participant of a finished ``run.py ... participant`` (its output folder and work
folder), this prints the TIV the pipeline reported (``tiv_ml``: for a full head, the
brain mask grown to the skull; for brain-extracted input, the template's cavity carried
over) next to the template-based estimate (:func:`bids_app.participant.intracranial.
registered_intracranial_mask`, the template's intracranial mask carried to the T1w
through the participant's own inverse normalization), and their ratio. On full heads the
two are independent: one follows the subject's own CSF/bone contrast, the other only the
registration. A ratio far from 1 points at a leak of the growth into bone or sinus, or at
a poor registration.

    .venv/bin/python bench/intracranial.py --out OUT --work WORK [--template MNI152NLin2009cAsym]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_app.participant.intracranial import registered_intracranial_mask, template_intracranial_mask
from bids_app.participant.register import TemplateRegistration
from bids_app.resources import get_template


def template_cavity(template: str) -> nb.Nifti1Image:
    """The template head's intracranial mask (1 mm), by the same growth as for subjects."""
    return template_intracranial_mask(get_template(template, 1, "T1w"),
                                      get_template(template, 1, "mask", desc="brain"),
                                      get_template(template, 1, label="CSF"), get_template(template, 1, label="GM"))


def compare(out: Path, work: Path, template: str) -> pd.DataFrame:
    cavity = template_cavity(template)
    rows = []
    for session_wf in sorted((work / "morphobids_wf").glob("sub_*_wf")):
        key = session_wf.name[len("sub_"):-len("_wf")]
        subject = re.sub(r"_ses_.*", "", key)
        tables = sorted(out.glob(f"sub-{subject}/**/anat/*desc-tissue_morph.tsv"))
        if not tables:
            continue
        tissue = pd.read_csv(tables[0], sep="\t").iloc[0]
        reg_dir = session_wf / "register"
        reg = TemplateRegistration(to_template=next(reg_dir.glob("from-T1w_to-*.h5")),
                                   to_native=next(reg_dir.glob(f"from-{template}_to-T1w*.h5")), similarity=float("nan"))
        brain = nb.load(session_wf / "skullstrip" / "brain_mask.nii.gz")
        carried = registered_intracranial_mask(cavity, reg, brain)
        voxel_ml = float(np.prod(brain.header.get_zooms()[:3])) / 1000
        carried_ml = float(np.asanyarray(carried.dataobj).sum()) * voxel_ml
        rows.append({"participant": f"sub-{key}", "tiv_ml": tissue["tiv_ml"], "brain_ml": tissue["brain_ml"],
                     "template_based_ml": carried_ml, "ratio": carried_ml / tissue["tiv_ml"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder of the participant level")
    parser.add_argument("--work", type=Path, required=True, help="its work folder (-w)")
    parser.add_argument("--template", default="MNI152NLin2009cAsym")
    args = parser.parse_args()
    table = compare(args.out, args.work, args.template)
    print(table.round(3).to_string(index=False))
    if len(table) > 1:
        print(f"ratio template-based / reported: mean {table.ratio.mean():.3f}, SD {table.ratio.std():.3f}, "
              f"r = {np.corrcoef(table.tiv_ml, table.template_based_ml)[0, 1]:.2f} (n = {len(table)})")


if __name__ == "__main__":
    main()
