"""Node functions of the participant workflow: file paths in, file paths out.

Each function is a thin wrapper that loads its inputs, calls the pure step
function from its module, and saves the result in the node's working folder
(nipype runs every node in its own folder, which is what makes reruns resume).
nipype re-executes these from source in a worker process, so every import is
inside the function.
"""

# ruff: noqa: PLC0415  (imports inside functions are required by nipype Function nodes)


def conform_node(in_file, affine_source):
    """Conform the T1w (RAS, chosen affine); returns (out_file, info_json)."""
    import json
    import os

    import nibabel as nb

    from bids_app.participant.conform import conform

    img, info = conform(nb.load(in_file), affine_source)
    out_file = os.path.abspath("conformed_T1w.nii")  # work file, read by four steps
    nb.save(img, out_file)
    info_json = os.path.abspath("conform.json")
    with open(info_json, "w") as fh:
        json.dump(info.sidecar(), fh)
    return out_file, info_json


def bias_node(in_file, prestripped):
    """N4 inside the head mask; returns (corrected, biasfield, head_mask).

    The corrected T1w and the field are work files read by most later steps: kept
    uncompressed (the sink compresses what it publishes)."""
    import os

    import nibabel as nb

    from bids_app.participant.bias import head_mask, n4
    from bids_app.participant.skullstrip import mask_from_stripped

    img = nb.load(in_file)
    mask = mask_from_stripped(img) if prestripped else head_mask(img)
    corrected, field = n4(img, mask)
    paths = [os.path.abspath(n) for n in ("corrected_T1w.nii", "biasfield.nii", "head_mask.nii.gz")]
    for image, path in zip((corrected, field, mask), paths):
        nb.save(image, path)
    return tuple(paths)


def detect_prestripped_node(in_file, mode):
    """Decide whether the input is already brain-extracted (``auto``) or take the user's word."""
    import nibabel as nb

    from bids_app.participant.skullstrip import is_brain_extracted

    if mode == "skip":
        return True
    if mode == "auto":
        return bool(is_brain_extracted(nb.load(in_file)))
    return False


def skullstrip_node(in_file, prestripped, mode, template_t1w, template_mask, nthreads):
    """Brain mask of the conformed T1w; returns (brain_mask, method).

    It runs on the image before N4, in parallel with it: deepbet's masks of the raw and
    of the N4-corrected image agree to Dice 0.998-0.999 (4 ds000011 heads, the 1 mm
    phantoms). For brain-extracted input the mask is the non-background of the input.
    """
    import os

    import nibabel as nb

    from bids_app.participant import skullstrip

    img = nb.load(in_file)
    if prestripped:
        mask, method = skullstrip.mask_from_stripped(img), "input already brain-extracted"
    elif mode == "ants":
        mask = skullstrip.template_mask(img, template_t1w, template_mask, nthreads=nthreads)
        method = "template-based (whole-head antspyx SyN to the template, its brain mask carried back)"
    else:
        mask, method = skullstrip.deepbet_mask(img, nthreads=nthreads), "deepbet"
    skullstrip.check_brain_volume(mask, method)
    path = os.path.abspath("brain_mask.nii.gz")
    nb.save(mask, path)
    return path, method


def register_node(in_file, brain_mask, template_brain, nthreads, seed):
    """Rigid -> affine -> SyN of the masked, N4-corrected T1w to the template brain;
    returns (to_template_h5, to_native_h5, similarity)."""
    import os

    import nibabel as nb
    import numpy as np

    from bids_app.participant.register import register_to_template

    img = nb.load(in_file)
    brain = img.get_fdata(dtype=np.float32) * (np.asanyarray(nb.load(brain_mask).dataobj) > 0)
    reg = register_to_template(nb.Nifti1Image(brain, img.affine), template_brain, os.getcwd(), nthreads=nthreads,
                               seed=seed)
    return str(reg.to_template), str(reg.to_native), float(reg.similarity)


def priors_node(reference, to_template, to_native, template_priors):
    """Template tissue priors carried to native space; returns [GM, WM, CSF] paths.

    Written uncompressed: they are work files only (segmentation and QC read them), and
    gzip would cost ~0.6 s per 1 mm map on the critical path."""
    import os

    import nibabel as nb

    from bids_app.participant.register import TemplateRegistration, to_native as warp

    reg = TemplateRegistration(to_template=to_template, to_native=to_native, similarity=float("nan"))
    ref = nb.load(reference)
    out = []
    for label, path in zip(("GM", "WM", "CSF"), template_priors):
        target = os.path.abspath(f"prior_{label}.nii")
        nb.save(warp(path, reg, ref, "linear"), target)
        out.append(target)
    return out


def segment_node(in_file, brain_mask, priors, nthreads):
    """Tissue segmentation (prior-guided EM, see segment.py); returns ([GM, WM, CSF] probseg paths, dseg path)."""
    import os

    import nibabel as nb

    from bids_app.participant.segment import segment

    prior_imgs = {label: nb.load(p) for label, p in zip(("GM", "WM", "CSF"), priors)}
    probseg, dseg = segment(nb.load(in_file), nb.load(brain_mask), prior_imgs, nthreads=nthreads)
    out = []
    for label in ("GM", "WM", "CSF"):
        path = os.path.abspath(f"probseg_{label}.nii.gz")
        nb.save(probseg[label], path)
        out.append(path)
    dseg_path = os.path.abspath("dseg.nii.gz")
    nb.save(dseg, dseg_path)
    return out, dseg_path


def trim_mask_node(brain_mask, method, prestripped, probseg, dseg, to_template, to_native, template_mask):
    """The brain mask without the outer CSF beyond the template's brain edge
    (:func:`~bids_app.participant.skullstrip.trim_outer_csf`), and the tissue maps and labels
    cut to it; returns (brain_mask, method, probseg, dseg). Input that came brain-extracted
    keeps its own mask."""
    import os

    import nibabel as nb
    import numpy as np

    from bids_app.participant import skullstrip
    from bids_app.participant.register import TemplateRegistration, to_native as warp

    if prestripped:
        return brain_mask, method, probseg, dseg
    mask_img = nb.load(brain_mask)
    mask = np.asanyarray(mask_img.dataobj) > 0
    reg = TemplateRegistration(to_template=to_template, to_native=to_native, similarity=float("nan"))
    template_brain = warp(template_mask, reg, mask_img, "linear").get_fdata() > 0.5
    csf = np.asanyarray(nb.load(probseg[2]).dataobj)
    trimmed = skullstrip.trim_outer_csf(mask, csf, template_brain, mask_img.header.get_zooms()[:3])

    def save(name, img, data):
        path = os.path.abspath(name)
        out = nb.Nifti1Image(data.astype(img.get_data_dtype()), img.affine, img.header)
        nb.save(out, path)
        return path

    # work files, uncompressed: the sink compresses what it publishes
    maps = [save(f"probseg_{label}.nii", img, np.asanyarray(img.dataobj) * trimmed)
            for label, img in zip(("GM", "WM", "CSF"), map(nb.load, probseg))]
    labels = nb.load(dseg)
    return (save("brain_mask.nii", mask_img, trimmed), f"{method}; {skullstrip.TRIM_METHOD}", maps,
            save("dseg.nii", labels, np.asanyarray(labels.dataobj) * trimmed))


def template_space_node(preproc, brain_mask, probseg, to_template, to_native, reference):
    """Template-space T1w, mask, tissue maps and modulated GM/WM; returns a dict of paths."""
    import os

    import nibabel as nb
    import numpy as np

    from bids_app.participant.modulate import modulate_maps
    from bids_app.participant.register import TemplateRegistration, to_template as warp

    reg = TemplateRegistration(to_template=to_template, to_native=to_native, similarity=float("nan"))
    ref = nb.load(reference)
    out = {}

    def save(key, img, dtype=np.float32):
        path = os.path.abspath(f"std_{key}.nii.gz")
        nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj).astype(dtype), img.affine), path)
        out[key] = path

    save("preproc_t1w", warp(nb.load(preproc), reg, ref, "linear"))
    mask = warp(nb.load(brain_mask), reg, ref, "linear")
    save("brain_mask", nb.Nifti1Image((mask.get_fdata() > 0.5).astype(np.uint8), mask.affine), np.uint8)
    natives = {label: nb.load(path) for label, path in zip(("GM", "WM", "CSF"), probseg)}
    for label, native in natives.items():
        save(f"probseg_{label}", warp(native, reg, ref, "linear"))
    for label, img in modulate_maps({k: natives[k] for k in ("GM", "WM")}, reg, ref).items():
        save(f"modulated_{label}", img)
    return out


def atlas_node(reference, to_template, to_native, atlas_names, template):
    """Atlases carried to native space (generic-label interpolation); returns {name: path}."""
    import os

    import nibabel as nb
    import numpy as np

    from bids_app.participant.register import TemplateRegistration, labels_to_native
    from bids_app.resources import get_atlas

    reg = TemplateRegistration(to_template=to_template, to_native=to_native, similarity=float("nan"))
    warped = labels_to_native([get_atlas(name, template).dseg for name in atlas_names], reg, nb.load(reference))
    out = {}
    for name, img in zip(atlas_names, warped):
        path = os.path.abspath(f"atlas_{name}.nii.gz")
        nb.save(nb.Nifti1Image(np.rint(img.get_fdata()).astype(np.int16), img.affine), path)
        out[name] = path
    return out


def qc_node(t1w, corrected, head_mask, brain_mask, probseg, dseg, biasfield, priors, to_template, to_native,
            similarity, template_mask, prestripped, conform_json, source):
    """IQMs, QC checks and classifier; returns (iqm_json, qc_json)."""
    import json
    import os

    from bids_app.participant.register import TemplateRegistration
    from bids_app.qc.assess import assess_t1w

    reg = TemplateRegistration(to_template=to_template, to_native=to_native, similarity=float(similarity))
    with open(conform_json) as fh:
        orientation = json.load(fh).get("OriginalOrientation")
    iqms, qc = assess_t1w(t1w, corrected, head_mask, brain_mask, probseg, dseg, biasfield, priors, reg,
                          template_mask, prestripped, source, orientation)
    paths = os.path.abspath("iqm.json"), os.path.abspath("qc.json")
    for data, path in zip((iqms, qc), paths):
        with open(path, "w") as fh:
            json.dump(data, fh, indent=2, default=float)
    return paths


def thickness_node(dseg, probseg, nthreads):
    """DiReCT cortical thickness map (mm) in native space."""
    import os

    import nibabel as nb

    from bids_app.participant.thickness import cortical_thickness

    img = cortical_thickness(nb.load(dseg), nb.load(probseg[0]), nb.load(probseg[1]), nthreads=nthreads)
    path = os.path.abspath("thickness.nii.gz")
    nb.save(img, path)
    return path


def morphometry_node(t1w, brain_mask, probseg, extraction_mask, extraction_probseg, atlases, template, prestripped,
                     to_template, to_native, template_head, thickness=None):
    """Intracranial mask, tissue volumes and atlas ROI volumes (+ mean ROI thickness);
    returns (icv_mask, tissue_tsv, {atlas: tsv}).

    The intracranial mask grows from the brain-extraction mask and its tissue maps
    (``extraction_*``, before ``trim_mask``), whose outer edge it was tuned on; the volumes
    come from the final ``brain_mask`` and ``probseg``. ``template_head``: template T1w,
    brain mask, GM and CSF maps (paths), for the intracranial mask of brain-extracted input
    (see intracranial.py)."""
    import os

    import nibabel as nb
    import pandas as pd

    from bids_app.participant import intracranial
    from bids_app.participant.morphometry import roi_volumes, tissue_volumes
    from bids_app.resources import get_atlas

    prob = {label: nb.load(p) for label, p in zip(("GM", "WM", "CSF"), probseg)}
    mask = nb.load(brain_mask)
    if prestripped:  # (register imports antspyx: only here)
        from bids_app.participant.register import TemplateRegistration

        tpl = template_head
        tpl_icv = intracranial.template_intracranial_mask(tpl["T1w"], tpl["mask"], tpl["CSF"], tpl["GM"])
        reg = TemplateRegistration(to_template=to_template, to_native=to_native, similarity=float("nan"))
        icv = intracranial.registered_intracranial_mask(tpl_icv, reg, mask)
    else:
        grown_from = {label: nb.load(p) for label, p in zip(("GM", "WM", "CSF"), extraction_probseg)}
        icv = intracranial.intracranial_mask(nb.load(t1w), nb.load(extraction_mask), grown_from["CSF"],
                                             grown_from["GM"])
    icv_mask = os.path.abspath("intracranial_mask.nii.gz")
    icv.to_filename(icv_mask)
    tissue = tissue_volumes(prob, mask, icv)
    tissue_tsv = os.path.abspath("tissue_morph.tsv")
    pd.DataFrame([tissue]).to_csv(tissue_tsv, sep="\t", index=False)
    thick = nb.load(thickness) if thickness else None
    if thick is not None:  # thickness.py imports antspyx (~2 s): only when it is needed
        from bids_app.participant.thickness import roi_thickness
    out = {}
    for name, path in atlases.items():
        labels = get_atlas(name, template).labels_table()
        table = roi_volumes(nb.load(path), labels, prob)
        if thick is not None:
            table["thickness_mm"] = roi_thickness(nb.load(path), labels, thick).to_numpy()
        out[name] = os.path.abspath(f"atlas_{name}_morph.tsv")
        table.to_csv(out[name], sep="\t", index=False, na_rep="n/a")
    return icv_mask, tissue_tsv, out
