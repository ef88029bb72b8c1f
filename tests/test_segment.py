"""Tissue segmentation: synthetic volumes (fast), the 1 mm demo phantoms and real scans (slow).

Fast tests use a small synthetic head (a WM core, a GM shell, a CSF shell) under a
smooth bias field and noise, with priors made by blurring and shifting its truth.
The ``slow`` tests run the participant chain (N4, registration, priors) on a 1 mm demo
phantom with ground truth, on ds000011 and on the stroke patient.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from bids_app.participant import segment as seg
from bids_app.participant.morphometry import tissue_volumes
from conftest import DS000011, STROKE, require

TEMPLATE = "MNI152NLin2009cAsym"
INTENSITY = {"GM": 0.62, "WM": 1.0, "CSF": 0.25}


# --------------------------------------------------------------------------- synthetic


def synthetic_head(shape=(56, 60, 52), noise=0.05, bias=0.3, seed=0, ventricle=False):
    """(T1w, brain mask, priors, true labels): nested ellipsoids WM < GM < CSF, smooth bias.

    The priors are the blurred truth, shifted by 2 voxels (an imperfect registration).
    ``ventricle=True`` puts a CSF ball inside the WM that the priors know nothing of.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((g - c) / (c * 0.9)) ** 2 for g, c in zip(grid, centre)))
    wobble = 0.04 * np.sin(grid[0] / 3.0) * np.cos(grid[1] / 4.0)  # folds, so GM is not a plain shell
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 3
    labels[r < 0.85 + wobble] = 1
    labels[r < 0.6 + wobble] = 2
    truth = labels.copy()
    if ventricle:
        truth[np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) < 6] = 3
    mean = np.zeros(shape, np.float32)
    for k, t in enumerate(seg.TISSUES, 1):
        mean[truth == k] = INTENSITY[t]
    mean = ndimage.gaussian_filter(mean, 0.6)  # partial volume at the boundaries
    field = 1 + bias * (grid[0] - centre[0]) / shape[0] + 0.5 * bias * np.cos(grid[2] / shape[2] * np.pi)
    data = mean * field + rng.normal(0, noise, shape)
    mask = labels > 0
    priors = {}
    for k, t in enumerate(seg.TISSUES, 1):
        p = ndimage.gaussian_filter((labels == k).astype(np.float32), 2.0)
        priors[t] = np.roll(p, 2, axis=0)
    total = sum(priors.values())
    affine = np.diag([1.2, 1.0, 1.1, 1.0])
    img = lambda a, dt=np.float32: nb.Nifti1Image(np.asarray(a, dt), affine)  # noqa: E731
    return (img(data), img(mask, np.uint8), {t: img(np.where(mask, p / np.maximum(total, 1e-6), 0))
                                              for t, p in priors.items()}, np.where(mask, truth, 0))


def thin_cortex_head(shape=(64, 64, 56), seed=0):
    """(T1w, brain mask, priors, true labels) with a cortex like a real one at 1 mm: a GM
    ribbon ~3-4 voxels thick, folded, blurred by one voxel (partial volume on both its
    sides), noise 3 % of WM; priors as in :func:`synthetic_head`."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((g - c) / (c * 0.9)) ** 2 for g, c in zip(grid, centre)))
    folds = 0.08 * np.sin(grid[0] / 2.0) * np.cos(grid[1] / 2.5) * np.sin(grid[2] / 3.0 + 1)
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 3
    labels[r < 0.88 + folds] = 1
    labels[r < 0.76 + folds] = 2
    mean = np.zeros(shape, np.float32)
    for k, t in enumerate(seg.TISSUES, 1):
        mean[labels == k] = INTENSITY[t]
    data = ndimage.gaussian_filter(mean, 1.0) + rng.normal(0, 0.03, shape)
    mask = labels > 0
    priors = {t: np.roll(ndimage.gaussian_filter((labels == k).astype(np.float32), 2.0), 2, axis=0)
              for k, t in enumerate(seg.TISSUES, 1)}
    total = sum(priors.values())
    img = lambda a, dt=np.float32: nb.Nifti1Image(np.asarray(a, dt), np.eye(4))  # noqa: E731
    return (img(data), img(mask, np.uint8), {t: img(np.where(mask, p / np.maximum(total, 1e-6), 0))
                                              for t, p in priors.items()}, labels)


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def dices(dseg, truth) -> dict:
    labels = np.asanyarray(dseg.dataobj)
    return {t: dice(labels == k, truth == k) for k, t in enumerate(seg.TISSUES, 1)}


@pytest.fixture(scope="module")
def head():
    return synthetic_head()


def test_outputs_are_probabilities_and_labels_on_the_input_grid(head):
    t1w, mask, priors, truth = head
    probseg, dseg = seg.segment(t1w, mask, priors)
    m = np.asanyarray(mask.dataobj) > 0
    assert set(probseg) == set(seg.TISSUES)
    total = sum(p.get_fdata() for p in probseg.values())
    assert np.allclose(total[m], 1, atol=1e-5) and np.all(total[~m] == 0)
    for p in probseg.values():
        assert p.get_data_dtype() == np.float32 and np.allclose(p.affine, t1w.affine)
        assert p.get_fdata().min() >= 0 and p.get_fdata().max() <= 1 + 1e-6
    labels = np.asanyarray(dseg.dataobj)
    assert dseg.get_data_dtype() == np.uint8 and set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.array_equal(labels > 0, m)
    # dseg: MAP labels of the MRF model; probseg: partial-volume fractions; they mostly agree
    stack = np.stack([probseg[t].get_fdata() for t in seg.TISSUES])
    assert (labels[m] == stack.argmax(0)[m] + 1).mean() > 0.95


def test_recovers_the_synthetic_tissues_under_bias_and_noise(head):
    t1w, mask, priors, truth = head
    info = {}
    _, dseg = seg.segment(t1w, mask, priors, info=info)
    scores = dices(dseg, truth)
    assert min(scores.values()) > 0.9, scores
    assert info["means"]["CSF"] < info["means"]["GM"] < info["means"]["WM"] and info["t1_contrast"]
    assert info["bias_range"][1] / info["bias_range"][0] > 1.2  # the field was found


def test_partial_volume_maps_sum_to_the_true_volumes(head):
    """The image is a linear mix of tissue intensities, so the true volumes are the label counts."""
    t1w, mask, priors, truth = head
    probseg, _ = seg.segment(t1w, mask, priors)
    m = np.asanyarray(mask.dataobj) > 0
    for k, t in enumerate(seg.TISSUES, 1):
        assert probseg[t].get_fdata()[m].sum() == pytest.approx((truth == k).sum(), rel=0.03), t


def test_bias_estimation_is_what_copes_with_a_strong_field():
    t1w, mask, priors, truth = synthetic_head(bias=0.8, noise=0.03)
    with_bias = dices(seg.segment(t1w, mask, priors)[1], truth)
    without = dices(seg.segment(t1w, mask, priors, settings=seg.EMSettings(bias_fwhm_mm=0))[1], truth)
    assert with_bias["WM"] > 0.9 and with_bias["GM"] > 0.85, with_bias
    assert with_bias["GM"] > without["GM"] + 0.03, (with_bias, without)


def test_csf_the_priors_do_not_expect_is_found():
    """An enlarged ventricle (CSF where the priors say WM) is labelled CSF: the prior floor."""
    t1w, mask, priors, truth = synthetic_head(ventricle=True)
    _, dseg = seg.segment(t1w, mask, priors)
    labels = np.asanyarray(dseg.dataobj)
    centre = tuple(s // 2 for s in labels.shape)
    ball = np.zeros(labels.shape, bool)
    ball[tuple(slice(c - 3, c + 4) for c in centre)] = True
    assert (labels[ball] == 3).mean() > 0.95


def test_shared_variance_keeps_the_grey_white_boundary():
    """A thin, blurred cortex: with a variance per class, the GM class (which takes the
    partial-volume voxels towards WM and towards CSF) widens to ~4x the WM SD and its MAP
    decision eats ~10 % of the WM; the shared variance keeps both label volumes within 5 %."""
    t1w, mask, priors, truth = thin_cortex_head()
    m = truth > 0
    results = {}
    for shared in (True, False):
        info = {}
        settings = seg.EMSettings(shared_variance=shared)
        probseg, dseg = seg.segment(t1w, mask, priors, settings=settings, info=info)
        labels = np.asanyarray(dseg.dataobj)
        results[shared] = {"dice": dices(dseg, truth), "sds": info["sds"],
                           "labels": {t: (labels == k).sum() / (truth == k).sum() for k, t in enumerate(seg.TISSUES, 1)},
                           "volumes": {t: probseg[t].get_fdata()[m].sum() / (truth == k).sum()
                                       for k, t in enumerate(seg.TISSUES, 1)}}
    shared, separate = results[True], results[False]
    assert len(set(shared["sds"].values())) == 1
    assert separate["sds"]["GM"] > 2.5 * separate["sds"]["WM"], separate  # the failure mode is real
    assert separate["labels"]["WM"] < 0.93 and separate["labels"]["GM"] > 1.1, separate
    assert all(abs(v - 1) < 0.05 for v in shared["labels"].values()), shared
    assert all(abs(v - 1) < 0.05 for v in shared["volumes"].values()), shared
    assert shared["dice"]["GM"] > 0.93 and shared["dice"]["WM"] > 0.98, shared
    assert shared["dice"]["GM"] > separate["dice"]["GM"] + 0.04, (shared, separate)


def test_pure_class_fit_undoes_the_partial_volume_bias():
    """Pure tissues plus two-tissue mixtures (uniform fractions): the statistics of a
    three-class split pull the WM and CSF means towards GM and inflate the SD; the
    pure + mixed fit recovers the tissue intensities and the noise."""
    rng = np.random.default_rng(0)
    true, sd = np.array([INTENSITY[t] for t in seg.TISSUES]), 0.04
    values, labels = [], []
    for k in range(3):
        values.append(true[k] + rng.normal(0, sd, 20000))
        labels.append(np.full(20000, k))
    for a, b in seg.PAIRS:
        f = rng.uniform(0, 1, 8000)
        values.append(f * true[a] + (1 - f) * true[b] + rng.normal(0, sd, 8000))
        labels.append(np.where(f > 0.5, a, b))
    y, labels = np.concatenate(values).astype(np.float32), np.concatenate(labels)
    q = np.stack([labels == k for k in range(3)]).astype(np.float32)
    mean, var = seg.class_statistics(y, q, 0.0, shared=True)
    assert np.abs(mean - true).max() > 0.03 and np.sqrt(var[0]) > 2 * sd  # the three-class bias
    fitted, fitted_var = seg.fit_pure_classes(y, np.zeros((6, y.size), np.float32), mean, var, 5)
    assert np.abs(fitted - true).max() < 0.01, fitted
    assert abs(np.sqrt(fitted_var[0]) - sd) < 0.01, fitted_var


def test_scale_invariance(head):
    """Intensities in any unit (8-bit, float, 16-bit) give the same labels."""
    t1w, mask, priors, _ = head
    _, a = seg.segment(t1w, mask, priors)
    scaled = nb.Nifti1Image(t1w.get_fdata(dtype=np.float32) * 1234.5, t1w.affine)
    _, b = seg.segment(scaled, mask, priors)
    assert (np.asanyarray(a.dataobj) == np.asanyarray(b.dataobj)).mean() > 0.999


@pytest.mark.parametrize("problem", ["missing", "grid", "empty", "method"])
def test_bad_inputs_are_refused(head, problem):
    t1w, mask, priors, _ = head
    kwargs = {}
    if problem == "missing":
        priors = {k: v for k, v in priors.items() if k != "CSF"}
    elif problem == "grid":
        priors = {**priors, "GM": nb.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4))}
    elif problem == "empty":
        mask = nb.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine)
    else:
        kwargs["method"] = "fast"
    with pytest.raises(ValueError):
        seg.segment(t1w, mask, priors, **kwargs)


def test_atropos_method_leaves_no_temporary_files(head, tmp_path, monkeypatch):
    t1w, mask, priors, truth = head
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, dseg = seg.segment(t1w, mask, priors, method="atropos")
    assert list(tmp_path.iterdir()) == []
    assert tempfile.gettempdir() == str(tmp_path)
    assert min(dices(dseg, truth).values()) > 0.75


# --------------------------------------------------------------------------- the chain


def loaded(img) -> nb.Nifti1Image:
    return nb.Nifti1Image(np.asanyarray(img.dataobj).astype(np.float32), img.affine)


def native_priors(corrected: nb.Nifti1Image, mask: nb.Nifti1Image, work: Path) -> dict:
    """Template priors on ``corrected``'s grid through an antspyx affine registration of the
    template brain at 2 mm: fast, and a harder test than the workflow's SyN priors."""
    import ants

    from bids_app.participant.antsio import from_ants, to_ants
    from bids_app.resources import get_template

    brain = nb.Nifti1Image(corrected.get_fdata(dtype=np.float32) * (np.asanyarray(mask.dataobj) > 0),
                           corrected.affine)
    fixed = to_ants(brain)
    coarse = lambda im: ants.resample_image(im, (2, 2, 2), False, 0)  # noqa: E731
    moving = ants.image_read(str(get_template(TEMPLATE, 1, "T1w", desc="brain")))
    reg = ants.registration(coarse(fixed), coarse(moving), "Affine", random_seed=1, outprefix=str(work / "aff_"))
    priors = {}
    for t in seg.TISSUES:
        prior = ants.image_read(str(get_template(TEMPLATE, 1, "probseg", label=t)))
        priors[t] = from_ants(ants.apply_transforms(fixed, prior, reg["fwdtransforms"]), corrected)
    return priors


def corrected_t1w(img: nb.Nifti1Image, mask: nb.Nifti1Image | None = None) -> nb.Nifti1Image:
    from bids_app.participant.bias import n4

    return n4(loaded(img), mask)[0]


# --------------------------------------------------------------------------- demo phantom


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 2-subject demo at 1 mm (one control, one patient) with its ground truth."""
    from bids_app.demo.build import make_dataset
    from bids_app.errors import ResourceError

    root = tmp_path_factory.mktemp("demo1mm") / "bids"
    try:
        summary = make_dataset(root, n_subjects=2, seed=0, resolution=1, log=lambda *a: None)
    except ResourceError as exc:
        pytest.skip(f"demo resources not available: {exc}")
    patient = next(p for p in summary["participants"] if p["group"] == "patient")
    return root, patient["participant_id"][4:], summary


@pytest.fixture(scope="module")
def patient_segmentation(demo, tmp_path_factory):
    """The patient's N4-corrected T1w, true mask, priors and segmentation."""
    from bids_app.demo.build import GROUNDTRUTH, truth_paths

    root, label, _ = demo
    truth = truth_paths(root / GROUNDTRUTH, label)
    t1w = corrected_t1w(nb.load(root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"))
    mask = nb.Nifti1Image((np.asanyarray(nb.load(truth["brain"]).dataobj) > 0).astype(np.uint8), t1w.affine)
    priors = native_priors(t1w, mask, tmp_path_factory.mktemp("reg"))
    probseg, dseg = seg.segment(t1w, mask, priors)
    return {"t1w": t1w, "mask": mask, "priors": priors, "probseg": probseg, "dseg": dseg, "truth": truth}


@pytest.mark.slow
def test_demo_phantom_dice(patient_segmentation):
    s = patient_segmentation
    scores = dices(s["dseg"], np.asanyarray(nb.load(s["truth"]["dseg"]).dataobj))
    assert scores["GM"] >= 0.85 and scores["WM"] >= 0.90, scores


@pytest.mark.slow
def test_demo_precentral_atrophy_is_measured(demo, patient_segmentation):
    """The patient's precentral GM, against the same subject rendered without atrophy (same
    priors: the registration is the patient's), is 7-13 % smaller, as the truth says ~10 %."""
    from bids_app.demo.truth import regenerate_subject

    root, label, summary = demo
    s = patient_segmentation
    arrays, _ = regenerate_subject(root, label, atrophy=False)
    affine = s["t1w"].affine
    base_t1w = corrected_t1w(nb.Nifti1Image(arrays["T1w"], affine))
    base_mask = nb.Nifti1Image(arrays["brain"].astype(np.uint8), affine)
    base_probseg, _ = seg.segment(base_t1w, base_mask, s["priors"])
    region = np.asanyarray(nb.load(s["truth"]["precentral"]).dataobj) > 0
    after = float(s["probseg"]["GM"].get_fdata()[region].sum())
    before = float(base_probseg["GM"].get_fdata()[arrays["precentral"] > 0].sum())
    measured = 1 - after / before
    expected = summary["atrophy"]["patients"][f"sub-{label}"]["Precentral_in_label"]
    assert 0.07 <= measured <= 0.13, (measured, expected)
    assert abs(measured - expected) < 0.03, (measured, expected)


# --------------------------------------------------------------------------- real data


def real_volumes(path: Path, work: Path) -> dict:
    """The participant chain on a real T1w: conform, mask, N4, priors, segmentation, volumes."""
    from bids_app.participant.bias import head_mask
    from bids_app.participant.conform import conform
    from bids_app.participant.skullstrip import deepbet_mask, is_brain_extracted, mask_from_stripped

    img, _ = conform(nb.load(path))
    stripped = is_brain_extracted(img)
    mask = mask_from_stripped(img) if stripped else deepbet_mask(img, nthreads=2)
    t1w = corrected_t1w(img, mask if stripped else head_mask(img))
    probseg, _ = seg.segment(t1w, mask, native_priors(t1w, mask, work))
    return tissue_volumes(probseg, mask)


@pytest.mark.slow
@pytest.mark.parametrize("subject", ["01", "08"])
def test_real_ds000011_volumes_are_plausible(subject, tmp_path):
    path = require(DS000011) / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"
    vol = real_volumes(path, tmp_path)
    assert 1100 <= vol["tiv_ml"] <= 2000, vol
    assert 0.35 <= vol["gm_fraction"] <= 0.60, vol
    assert 0.7 <= vol["bpf"] <= 0.95, vol


@pytest.mark.slow
def test_stroke_patient_is_segmented_plausibly(tmp_path):
    """Pre-stripped, 8-bit, with a chronic lesion: runs, and gives adult-brain fractions."""
    path = require(STROKE) / "sub-stroke01" / "anat" / "sub-stroke01_T1w.nii.gz"
    vol = real_volumes(path, tmp_path)
    assert 900 <= vol["tiv_ml"] <= 2000, vol
    assert 0.35 <= vol["gm_fraction"] <= 0.65, vol
    assert 0.65 <= vol["bpf"] <= 0.95, vol
