"""One T1w's quality assessment: IQMs, rule-based checks and the classifier, from the
participant level's intermediate files (the step the workflow's ``qc`` node runs)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np

TISSUES = ("GM", "WM", "CSF")


def phase_encoding_direction(source_t1w: str | Path) -> str | None:
    """``PhaseEncodingDirection`` of the raw T1w's JSON sidecar, when there is one."""
    path = Path(source_t1w)
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json").replace(".nii", ".json"))
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8-sig")).get("PhaseEncodingDirection")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def assess_t1w(t1w, corrected, head_mask, brain_mask, probseg: list, dseg, biasfield, priors: list,
               registration, template_mask, prestripped: bool, source_t1w=None,
               original_orientation: str | None = None) -> tuple[dict, dict]:
    """``(iqms, qc)`` of a conformed T1w.

    ``registration``: a :class:`~bids_app.participant.register.TemplateRegistration`, used
    to carry the template brain mask to native space (field-of-view checks) and the
    image's field of view to the template (coverage); ``priors``: template tissue priors
    on the T1w grid (``tpm_overlap_*``). ``qc`` holds the verdict, flags, notes, the
    checks' context and thresholds, and the classifier's P(accept) (top-level
    ``p_accept``, as the group level reads it).
    """
    from bids_app.participant.register import to_native, to_template
    from bids_app.qc.checks import build_context, fov_metrics, run_checks, template_coverage
    from bids_app.qc.classifier import predict_accept
    from bids_app.qc.iqms import compute_iqms

    ref = nb.load(str(t1w))
    tpl_mask = nb.load(str(template_mask))
    tpl_native = to_native(tpl_mask, registration, ref, "linear")
    ones = nb.Nifti1Image(np.ones(ref.shape[:3], np.float32), ref.affine)
    coverage = template_coverage(to_template(ones, registration, tpl_mask, "linear"), tpl_mask)

    iqms = compute_iqms(t1w, head_mask, brain_mask, dict(zip(TISSUES, probseg)), dseg, biasfield,
                        dict(zip(TISSUES, priors)), inu_corrected_path=corrected,
                        pe_direction=phase_encoding_direction(source_t1w) if source_t1w else None,
                        orientation=original_orientation)
    context = build_context(ref, nb.load(str(head_mask)), nb.load(str(brain_mask)), prestripped=bool(prestripped),
                            registration_similarity=float(registration.similarity), template_coverage=coverage,
                            fov=fov_metrics(brain_mask, tpl_native))
    checks = run_checks(iqms, context)
    classifier = predict_accept(iqms)
    qc = {"verdict": checks["verdict"], "flags": checks["flags"], "notes": checks.get("notes", []),
          "p_accept": classifier["p_accept"], "classifier": classifier, "context": context.as_dict(),
          "thresholds": checks["thresholds"]}
    return iqms, qc
