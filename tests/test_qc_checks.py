"""Rule-based QC checks (bids_app.qc.checks): the untouched real scan passes, each controlled
degradation raises its own flag, header/processing rules and the ABIDE-derived thresholds."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_app.errors import InputDataError
from bids_app.qc import corrupt
from bids_app.qc.checks import (
    THRESHOLDS,
    QCContext,
    border_fractions,
    build_context,
    fov_metrics,
    run_checks,
    template_coverage,
)
from test_qc_iqms import Scan, abide, prepared_scan


@pytest.fixture(scope="session")
def scan(tmp_path_factory) -> Scan:
    return prepared_scan(tmp_path_factory)


def checks_of(scan: Scan, t1w: nb.Nifti1Image | None = None, iqms: dict | None = None, coverage: bool = True,
              **context) -> dict:
    """run_checks on a (degraded) scan: masks cut to its grid, FOV metrics, template coverage
    measured in native space on the uncut grid (the fraction of the template brain kept)."""
    t1w = scan.t1w if t1w is None else t1w
    iqms = scan.clean if iqms is None else iqms
    cut = {k: corrupt.crop_like(scan.derived[k], t1w) for k in ("head", "brain", "template_brain")}
    fov = fov_metrics(cut["brain"], cut["template_brain"])
    kept = (cut["template_brain"].get_fdata() > 0.5).sum() / (scan.derived["template_brain"].get_fdata() > 0.5).sum()
    ctx = build_context(t1w, cut["head"], cut["brain"], fov=fov, registration_similarity=0.8,
                        template_coverage=float(kept) if coverage else None, **context)
    return run_checks(iqms, ctx)


def flagged(result: dict) -> dict[str, str]:
    """check -> worst level among its flags."""
    out: dict[str, str] = {}
    for flag in result["flags"]:
        if out.get(flag["check"]) != "fail":
            out[flag["check"]] = flag["level"]
    return out


def test_untouched_scan_passes_but_for_its_2mm_voxels(scan):
    result = checks_of(scan)
    assert flagged(result) == {"voxel_size": "warn"}, result["flags"]
    assert "2.00, above the warning threshold 1.50" in result["flags"][0]["reason"]
    assert result["verdict"] == "warn"
    relaxed = run_checks(scan.clean, build_context(scan.t1w, scan.derived["head"], scan.derived["brain"]),
                         thresholds={"voxel_mm": (2.5, 3.0)})
    assert relaxed["verdict"] == "pass" and relaxed["flags"] == [] and relaxed["notes"] == []
    assert relaxed["thresholds"]["voxel_mm"] == [2.5, 3.0] and relaxed["thresholds"]["cjv"] == [0.764, 0.832]


@pytest.mark.parametrize("name,level,check,verdict", [
    ("noise", 0.10, "noise", "fail"),  # pumi: snr_wm 19.0 clean, 9.1 at 10 % noise
    ("noise", 0.15, "tissue_contrast", "fail"),  # pumi: cjv 0.32 clean, 0.65 at 0.10, 0.90 at 0.15
    ("blur", 5.0, "blurring", "fail"),
    ("ghosting", 0.10, "ghosting", "fail"),
    ("motion_ringing", 0.15, "ghosting", "fail"),
    ("crop_vertex", 10.0, "top_of_brain_cut", "fail"),
    ("crop_cerebellum", 20.0, "cerebellum_cut", "fail"),
])
def test_each_degradation_raises_its_flag(scan, name, level, check, verdict):
    """Crops change the field of view only: their checks take the untouched scan's IQMs."""
    if name.startswith("crop"):
        img, iqms = scan.degraded_image(name, level), scan.clean
    else:
        img, iqms = scan.degraded(name, level)
    result = checks_of(scan, img, iqms)
    flags = flagged(result)
    assert check in flags, result["flags"]
    assert result["verdict"] == verdict
    reason = next(f["reason"] for f in result["flags"] if f["check"] == check)
    assert "threshold" in reason and any(ch.isdigit() for ch in reason)


def test_mild_degradations_warn(scan):
    """A ghost of 5 % amplitude and 5 mm of brain cut off at the top only warn."""
    ghost = corrupt.ghosting(scan.t1w, 0.05, seed=1, axis=1)
    iqms = scan.iqms(ghost)
    assert 0.04 < iqms["gsr"] < 0.08
    assert flagged(checks_of(scan, ghost, iqms)).get("ghosting") == "warn"
    top = corrupt.crop_vertex(scan.t1w, 4.0, scan.derived["brain"])
    assert flagged(checks_of(scan, top))["top_of_brain_cut"] == "warn"


def test_top_cut_is_not_called_a_cerebellum_cut(scan):
    """The template coverage drops for any cut; only an inferior one is named the cerebellum's."""
    result = checks_of(scan, scan.degraded_image("crop_vertex", 10.0))
    flags = flagged(result)
    assert flags["top_of_brain_cut"] == "fail" and "cerebellum_cut" not in flags
    assert "brain_outside_fov" in flags
    assert "superior border" in next(f["reason"] for f in result["flags"] if f["check"] == "brain_outside_fov")


def test_cerebellum_cut_seen_without_coverage(scan):
    """Without the template coverage, the template brain reaching the inferior border flags it."""
    img = scan.degraded_image("crop_cerebellum", 20.0)
    result = checks_of(scan, img, coverage=False)
    assert flagged(result)["cerebellum_cut"] == "fail"
    assert "inferior" in next(f["reason"] for f in result["flags"] if f["check"] == "cerebellum_cut")
    assert "cerebellum_cut" not in flagged(checks_of(scan, coverage=False))


def test_strong_bias_field_warns_only(scan):
    """inu_range beyond ABIDE's 99th percentile warns (N4 removed the field): measured on a
    field of strength 1.8 given to the IQMs as the bias-field estimate."""
    iqms = scan.with_field(1.8)
    assert iqms["inu_range"] > THRESHOLDS["inu_range"][0]
    result = checks_of(scan, iqms=iqms)
    assert flagged(result)["intensity_nonuniformity"] == "warn"


def test_header_checks():
    base = dict(shape=(176, 256, 256), brain_volume_ml=1300.0, registration_similarity=0.8)
    clean = run_checks({}, QCContext(voxel_sizes=(1.0, 1.0, 1.0), **base))
    assert clean["verdict"] == "pass", clean["flags"]
    thick = flagged(run_checks({}, QCContext(voxel_sizes=(0.9, 0.9, 5.0), **base)))
    assert thick == {"voxel_size": "fail", "anisotropy": "fail"}
    assert flagged(run_checks({}, QCContext(voxel_sizes=(1.0, 1.0, 2.4), **base))) == {
        "voxel_size": "warn", "anisotropy": "warn"}
    few = run_checks({}, QCContext(voxel_sizes=(0.9, 0.9, 1.0), shape=(256, 256, 24), brain_volume_ml=1300.0))
    assert flagged(few) == {"few_slices": "fail", "field_of_view_extent": "fail"}
    odd = run_checks({}, QCContext(voxel_sizes=(1.0, 1.0, 1.0), obliquity_deg=40.0,
                                   orientation_issue="sform and qform disagree by 3.2 mm", **base))
    assert flagged(odd) == {"obliquity": "warn", "orientation": "warn"}
    assert "3.2 mm" in odd["flags"][1]["reason"]


def test_obliquity_and_faces_from_the_affine():
    from bids_app.qc.checks import obliquity_deg

    angle = np.radians(20)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot * 2.0
    assert obliquity_deg(affine) == pytest.approx(20.0, abs=1e-6)
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 15:] = True  # touches the high end of the third axis
    assert border_fractions(mask, np.eye(4))["superior"] == pytest.approx(3 / 5)
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped = border_fractions(mask[::-1, ::-1, ::-1].copy(), np.diag([-1.0, -1.0, -1.0, 1.0]))
    assert flipped["superior"] == pytest.approx(3 / 5) and flipped["inferior"] == 0
    assert border_fractions(mask, las)["left"] == 0


def test_prestripped_and_defaced_input_give_notes_not_flags():
    iqms = {"gsr": 0.3, "qi_1": 0.2, "efc": 0.95, "cnr": 0.1, "cjv": 0.5}
    base = dict(voxel_sizes=(1.0, 1.0, 1.0), shape=(176, 256, 256), brain_volume_ml=1300.0)
    raw = run_checks(iqms, QCContext(**base))
    assert {"ghosting", "artifacts_in_background", "entropy_focus", "contrast_to_noise"} <= set(flagged(raw))
    stripped = run_checks(iqms, QCContext(prestripped=True, **base))
    assert stripped["verdict"] == "pass" and stripped["flags"] == []
    assert "already brain-extracted" in stripped["notes"][0] and "qi_1" in stripped["notes"][0]
    defaced = run_checks({"gsr": 0.01}, QCContext(defaced=True, **base))
    assert defaced["verdict"] == "pass" and "defaced" in defaced["notes"][0]


def test_processing_checks():
    base = dict(voxel_sizes=(1.0, 1.0, 1.0), shape=(176, 256, 256))
    iqms = {"icvs_csf": 0.2, "icvs_gm": 0.45, "icvs_wm": 0.35}
    good = QCContext(brain_volume_ml=1300.0, registration_similarity=0.82, **base)
    assert run_checks(iqms, good)["verdict"] == "pass"
    small = flagged(run_checks(iqms, QCContext(brain_volume_ml=350.0, **base)))
    assert small == {"brain_volume": "fail"}
    assert flagged(run_checks(iqms, QCContext(brain_volume_ml=2100.0, **base))) == {"brain_volume": "warn"}
    assert flagged(run_checks(iqms, QCContext(registration_similarity=0.6, **base))) == {"normalization": "warn"}
    assert flagged(run_checks(iqms, QCContext(registration_similarity=0.3, fov={"template_dice": 0.6}, **base))) == {
        "normalization": "fail", "template_overlap": "fail"}
    atrophy = run_checks({"icvs_csf": 0.36, "icvs_gm": 0.36, "icvs_wm": 0.28}, QCContext(**base))
    assert flagged(atrophy) == {"tissue_fractions": "warn"} and len(atrophy["flags"]) == 2
    broken = run_checks(iqms, QCContext(tissue_fractions={"GM": 0.9, "WM": 0.05, "CSF": 0.05}, **base))
    assert flagged(broken) == {"tissue_fractions": "fail"}


def test_thresholds_are_the_stated_abide_percentiles():
    table = abide()
    q = lambda key, p: float(table[key].quantile(p))  # noqa: E731
    expected = {
        "cjv": (q("cjv", 0.99), q("cjv", 0.995)), "cnr": (q("cnr", 0.05), q("cnr", 0.01)),
        "snr_wm": (q("snr_wm", 0.05), q("snr_wm", 0.01)),
        "efc": (q("efc", 0.99), q("efc", 0.995)), "qi_1": (q("qi_1", 0.99), q("qi_1", 0.995)),
        "icvs_csf": (q("icvs_csf", 0.005), q("icvs_csf", 0.995)), "icvs_gm": (q("icvs_gm", 0.005), q("icvs_gm", 0.995)),
        "icvs_wm": (q("icvs_wm", 0.005), q("icvs_wm", 0.995)),
    }
    for key, (a, b) in expected.items():
        assert THRESHOLDS[key] == pytest.approx((a, b), rel=0.01, abs=2e-4), key
    assert THRESHOLDS["inu_range"][0] == pytest.approx(q("inu_range", 0.99), rel=0.01)
    assert THRESHOLDS["fwhm_mm"][0] == pytest.approx(q("fwhm_avg", 0.99), rel=0.01)
    # below the cnr warning threshold, raters excluded scans 2.5 times as often as overall
    raters = table[["rater_1", "rater_2", "rater_3"]]
    excluded = (raters == -1).sum(axis=1) >= 2
    assert excluded[table["cnr"] < THRESHOLDS["cnr"][0]].mean() > 2 * excluded.mean()
    # below the snr_wm warning threshold, 89 % were excluded (13.5 % overall)
    assert excluded[table["snr_wm"] < THRESHOLDS["snr_wm"][0]].mean() > 0.8


def test_template_coverage_and_fov_inputs(scan, tmp_path):
    affine = np.eye(4)
    brain = np.zeros((30, 30, 30), np.uint8)
    brain[5:25, 5:25, 5:25] = 1
    fov = np.zeros_like(brain)
    fov[:, :, 10:] = 1
    cover = template_coverage(nb.Nifti1Image(fov, affine), nb.Nifti1Image(brain, affine))
    assert cover == pytest.approx(15 / 20)
    with pytest.raises(InputDataError, match="not found"):
        fov_metrics(tmp_path / "nothing.nii.gz")
    with pytest.raises(InputDataError, match="not on the T1w grid"):
        fov_metrics(scan.derived["brain"], nb.Nifti1Image(brain, affine))
    clean = fov_metrics(scan.derived["brain"], scan.derived["template_brain"])
    assert max(v for k, v in clean.items() if "border" in k) == 0 and clean["template_dice"] > 0.85
