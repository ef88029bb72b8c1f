"""Intracranial volume on a synthetic layered head with a known cavity."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_app.participant.intracranial import (intensity_window, intracranial_mask, registered_intracranial_mask,
                                               template_intracranial_mask)
from bids_app.participant.register import TemplateRegistration

CAVITY_MM = 53.0  # inner surface of the skull: the truth


def _head(brain_mm: float, seed: int = 0, scale: float = 1.0):
    """Concentric head on a 1 mm grid: WM, GM, CSF (inside the brain mask out to ``brain_mm``),
    extra-cerebral CSF to :data:`CAVITY_MM`, inner table, marrow, outer table, scalp, air; noise SD 3.
    ``scale`` shrinks every radius by that factor (a smaller head on the same grid)."""
    n = 130
    r = np.linalg.norm(np.indices((n, n, n)) - (n - 1) / 2, axis=0) / scale
    layers = [(brain_mm - 8, 100.0), (brain_mm - 3, 60.0), (CAVITY_MM, 30.0), (CAVITY_MM + 2, 5.0),
              (CAVITY_MM + 5, 120.0), (CAVITY_MM + 6, 5.0), (CAVITY_MM + 10, 110.0)]
    img = np.full(r.shape, 2.0)
    for radius, value in reversed(layers):
        img[r < radius] = value
    img += np.random.default_rng(seed).normal(0, 3, img.shape)
    brain = r < brain_mm
    gm = ((r >= brain_mm - 8) & (r < brain_mm - 3)).astype(np.float32)
    csf = ((r >= brain_mm - 3) & brain).astype(np.float32)
    affine = np.eye(4)
    as_img = lambda a: nb.Nifti1Image(a, affine)  # noqa: E731
    return as_img(img.astype(np.float32)), as_img(brain.astype(np.uint8)), as_img(csf), as_img(gm)


def _volume_ml(img) -> float:
    return float((np.asarray(img.dataobj) > 0).sum()) / 1000


def test_cavity_volume_is_recovered_and_does_not_follow_the_brain():
    truth_ml = 4 / 3 * np.pi * CAVITY_MM ** 3 / 1000
    for brain_mm in (51.0, 46.0):  # a brain that fills the cavity, and an atrophied one (7 mm of CSF)
        t1w, brain, csf, gm = _head(brain_mm)
        icv = intracranial_mask(t1w, brain, csf, gm)
        got = _volume_ml(icv)
        # the brain mask alone reads 12 % / 34 % low; the cavity must come out within 3 %
        assert _volume_ml(brain) < 0.9 * truth_ml
        assert got == pytest.approx(truth_ml, rel=0.03), (brain_mm, got, truth_ml)
        # it never crosses the bone into the marrow or scalp
        r = np.linalg.norm(np.indices(t1w.shape) - (t1w.shape[0] - 1) / 2, axis=0)
        assert not (np.asarray(icv.dataobj)[r >= CAVITY_MM + 2]).any()


def test_window_lies_between_bone_and_grey_matter():
    t1w, brain, csf, gm = _head(51.0)
    zooms = np.ones(3)
    low, high = intensity_window(np.asarray(t1w.dataobj), np.asarray(brain.dataobj) > 0, np.asarray(csf.dataobj),
                                 np.asarray(gm.dataobj), zooms)
    assert 5 < low < 30 < high < 60, (low, high)


def test_prestripped_input_keeps_its_mask():
    t1w, brain, csf, gm = _head(51.0)
    icv = intracranial_mask(t1w, brain, csf, gm, prestripped=True)
    assert np.array_equal(np.asarray(icv.dataobj) > 0, np.asarray(brain.dataobj) > 0)


def _scaling_registration(tmp_path, scale: float, shape) -> TemplateRegistration:
    """Exact ITK affine transforms between a template head and the same head shrunk by ``scale``
    about the grid centre (identity affine: RAS mm = voxel index; ITK works in LPS)."""
    import ants

    centre = (np.array(shape) - 1) / 2 * np.array([-1, -1, 1])  # LPS
    paths = []
    for name, factor in (("to_template", scale), ("to_native", 1 / scale)):
        # as a point map, to_native takes T1w points to template points (ITK's pull-back)
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                        matrix=np.eye(3) * factor, center=list(centre))
        paths.append(tmp_path / f"{name}.mat")
        ants.write_transform(tx, str(paths[-1]))
    return TemplateRegistration(to_template=paths[0], to_native=paths[1], similarity=1.0)


def test_prestripped_cavity_comes_from_the_template(tmp_path):
    """Brain-extracted input: the template's cavity, carried through the registration, gives the
    subject's cavity (here a head 0.9x the template's, so 0.729x its volume)."""
    scale = 0.9
    template = _head(46.0)  # a template with 7 mm of extra-cerebral CSF
    subject_t1w, subject_brain, _, _ = _head(46.0, seed=1, scale=scale)
    reg = _scaling_registration(tmp_path, scale, subject_t1w.shape)
    # the transform is the one that relates the two heads: the template brain lands on the subject's
    from bids_app.participant.register import to_native

    moved = np.asarray(to_native(template[1], reg, subject_brain, "linear").dataobj) > 0.5
    brain = np.asarray(subject_brain.dataobj) > 0
    assert 2 * (moved & brain).sum() / (moved.sum() + brain.sum()) > 0.98
    tpl_icv = template_intracranial_mask(*(template[k] for k in (0, 1, 2, 3)))
    icv = registered_intracranial_mask(tpl_icv, reg, subject_brain)
    truth_ml = 4 / 3 * np.pi * (CAVITY_MM * scale) ** 3 / 1000
    assert _volume_ml(subject_brain) < 0.75 * truth_ml  # the brain mask alone reads 30 % low
    assert _volume_ml(icv) == pytest.approx(truth_ml, rel=0.03)
    assert (np.asarray(icv.dataobj)[brain] > 0).all()
