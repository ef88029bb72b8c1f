"""Image-quality metrics (bids_app.qc.iqms, masks, corrupt) on a real 2 mm head.

The scan (pumi-minitest, 96x128x128 at 2 mm) goes once through a fast version of the participant
chain - conform, N4 (coarse schedule), deepbet, an affine template registration for the tissue
priors and the template brain, the EM segmentation - and every test then degrades it in a
controlled way (bids_app.qc.corrupt) and checks that each metric moves the right way. The
chain is shared with test_qc_checks.py through :func:`prepared_scan`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_app.errors import InputDataError
from bids_app.qc import corrupt
from bids_app.qc.iqms import (
    candidate_ghost_axes,
    compute_ghost_ratio,
    compute_iqms,
    estimate_fwhm,
    phase_encoding_axis,
    tissue_summary,
)
from bids_app.qc.masks import image_masks, looks_defaced, rayleigh_sigma
from conftest import PUMI, require

TEMPLATE = "MNI152NLin2009cAsym"
TISSUES = ("GM", "WM", "CSF")
#: A quick N4 for 2 mm data (the pipeline's default schedule takes 5-40 s here).
FAST_N4 = {"shrink_factor": 4, "convergence": {"iters": [50, 50], "tol": 1e-7}}


def abide() -> pd.DataFrame:
    """mriqc-learn's ABIDE IQM table (1101 rated T1w scans)."""
    import mriqc_learn

    return pd.read_csv(Path(mriqc_learn.__file__).parent / "datasets" / "abide.tsv", sep="\t")


# ----------------------------------------------------------------------------- the shared scan


@dataclass
class Scan:
    """A processed real scan: the conformed T1w and its derivatives, as images and files."""

    folder: Path
    t1w: nb.Nifti1Image
    derived: dict[str, nb.Nifti1Image]  # head, brain, bias, dseg, GM/WM/CSF, tpm_*, template_brain
    _clean: dict = field(default_factory=dict)
    _cases: dict = field(default_factory=dict)
    _count: int = 0

    def files(self, t1w: nb.Nifti1Image | None = None, **overrides: nb.Nifti1Image) -> dict[str, Path]:
        """Write the (possibly degraded) T1w and the derivatives cut to its grid; return paths."""
        t1w = self.t1w if t1w is None else t1w
        self._count += 1
        folder = self.folder / f"case{self._count:03d}"
        folder.mkdir()
        paths = {"t1w": folder / "t1w.nii"}
        nb.save(t1w, paths["t1w"])
        same_grid = t1w.shape == self.t1w.shape and np.allclose(t1w.affine, self.t1w.affine)
        for key, img in {**self.derived, **overrides}.items():
            if not same_grid and key not in overrides:
                img = corrupt.crop_like(img, t1w)
            paths[key] = folder / f"{key}.nii"
            nb.save(img, paths[key])
        return paths

    def iqms(self, t1w: nb.Nifti1Image | None = None, **overrides) -> dict:
        p = self.files(t1w, **overrides)
        return compute_iqms(p["t1w"], p["head"], p["brain"], {t: p[t] for t in TISSUES}, p["dseg"], p["bias"],
                            {t: p[f"tpm_{t}"] for t in TISSUES})

    @property
    def clean(self) -> dict:
        if not self._clean:
            self._clean.update(self.iqms())
        return self._clean

    def degraded_image(self, name: str, level: float) -> nb.Nifti1Image:
        """The T1w degraded by one of :data:`DEGRADATIONS`, made once per session."""
        key = ("image", name, level)
        if key not in self._cases:
            self._cases[key] = DEGRADATIONS[name](self, level)
        return self._cases[key]

    def degraded(self, name: str, level: float) -> tuple[nb.Nifti1Image, dict]:
        """(degraded T1w, its IQMs), computed once per session."""
        key = ("iqms", name, level)
        if key not in self._cases:
            self._cases[key] = self.iqms(self.degraded_image(name, level))
        return self.degraded_image(name, level), self._cases[key]

    def with_field(self, strength: float) -> dict:
        """IQMs when the bias-field estimate is the scan's N4 field times a known field of
        ``strength`` (:func:`bids_app.qc.corrupt.bias_field`, seed 2), computed once."""
        key = ("field", strength)
        if key not in self._cases:
            field = corrupt.bias_field(self.t1w.shape, strength, seed=2)
            bias = nb.Nifti1Image(self.derived["bias"].get_fdata(dtype=np.float32) * field, self.t1w.affine)
            self._cases[key] = self.iqms(bias=bias)
        return self._cases[key]

    def mask(self, key: str) -> np.ndarray:
        return np.asanyarray(self.derived[key].dataobj) > 0.5


def _fast_n4(img: nb.Nifti1Image, head: nb.Nifti1Image) -> nb.Nifti1Image:
    from bids_app.participant.bias import n4

    return n4(img, head, **FAST_N4)[1]


def _prepare(folder: Path) -> Scan:
    """conform -> head mask, fast N4 -> deepbet -> affine priors -> EM segmentation (2 mm)."""
    import ants

    from bids_app.participant.antsio import from_ants, to_ants
    from bids_app.participant.bias import head_mask
    from bids_app.participant.conform import conform
    from bids_app.participant.segment import segment
    from bids_app.participant.skullstrip import deepbet_mask
    from bids_app.resources import get_template

    t1w, _ = conform(nb.load(require(PUMI) / "sub-001" / "anat" / "sub-001_T1w.nii.gz"))
    t1w = nb.Nifti1Image(t1w.get_fdata(dtype=np.float32), t1w.affine)
    head = head_mask(t1w)
    bias = _fast_n4(t1w, head)
    corrected = nb.Nifti1Image(t1w.get_fdata(dtype=np.float32) / bias.get_fdata(dtype=np.float32), t1w.affine)
    brain = deepbet_mask(corrected, nthreads=2)
    fixed = to_ants(nb.Nifti1Image(corrected.get_fdata(dtype=np.float32) * (brain.get_fdata() > 0), t1w.affine))
    moving = ants.resample_image(ants.image_read(str(get_template(TEMPLATE, 1, "T1w", desc="brain"))), (2, 2, 2),
                                 False, 0)
    reg = ants.registration(fixed, moving, "AffineFast", random_seed=1, outprefix=str(folder / "affine_"))

    def warp(path) -> nb.Nifti1Image:
        out = ants.apply_transforms(fixed, ants.image_read(str(path)), reg["fwdtransforms"], interpolator="linear")
        return from_ants(out, t1w)

    priors = {t: warp(get_template(TEMPLATE, 1, "probseg", label=t)) for t in TISSUES}
    probseg, dseg = segment(corrected, brain, priors)
    derived = {"head": head, "brain": brain, "bias": bias, "dseg": dseg, "template_brain":
               warp(get_template(TEMPLATE, 1, "mask", desc="brain")),
               **probseg, **{f"tpm_{t}": img for t, img in priors.items()}}
    return Scan(folder=folder, t1w=t1w, derived=derived)


#: Degradations shared by the IQM and check tests: name -> f(scan, level) -> image.
DEGRADATIONS = {
    "noise": lambda scan, level: corrupt.add_noise(scan.t1w, level, seed=1, wm_mask=wm_mask(scan)),
    "blur": lambda scan, level: corrupt.blur(scan.t1w, level),
    "ghosting": lambda scan, level: corrupt.ghosting(scan.t1w, level, seed=1, axis=1),
    "motion_ringing": lambda scan, level: corrupt.motion_ringing(scan.t1w, level, seed=1),
    "crop_vertex": lambda scan, level: corrupt.crop_vertex(scan.t1w, level, scan.derived["brain"]),
    "crop_cerebellum": lambda scan, level: corrupt.crop_cerebellum(scan.t1w, level, scan.derived["brain"]),
}

_CACHE: dict[str, Scan] = {}


def prepared_scan(tmp_path_factory) -> Scan:
    """The processed pumi-minitest scan, computed once per test session."""
    if "scan" not in _CACHE:
        _CACHE["scan"] = _prepare(tmp_path_factory.mktemp("qc-scan"))
    return _CACHE["scan"]


@pytest.fixture(scope="session")
def scan(tmp_path_factory) -> Scan:
    return prepared_scan(tmp_path_factory)


def wm_mask(scan: Scan) -> nb.Nifti1Image:
    return nb.Nifti1Image((scan.derived["WM"].get_fdata() > 0.9).astype(np.uint8), scan.t1w.affine)


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("zooms,fwhm_mm", [((1.0, 1.0, 1.0), 3.0), ((1.0, 1.5, 2.0), 5.0), ((2.0, 2.0, 2.0), 6.0)])
def test_fwhm_recovers_known_gaussian_smoothing(zooms, fwhm_mm):
    """White noise smoothed by a Gaussian of known FWHM: the AFNI-style estimate is within 10 %."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    noise = rng.normal(size=(72, 72, 72))
    sigma_vox = fwhm_mm / np.sqrt(8 * np.log(2)) / np.asarray(zooms)
    smooth = ndimage.gaussian_filter(noise, sigma_vox, mode="wrap")
    mask = np.zeros(smooth.shape, bool)
    mask[8:-8, 8:-8, 8:-8] = True
    estimate = estimate_fwhm(smooth, mask, zooms)
    assert np.all(np.abs(estimate / fwhm_mm - 1) < 0.10), estimate
    assert np.all(np.isnan(estimate_fwhm(np.ones((8, 8, 8)), np.ones((8, 8, 8), bool), zooms)))  # no variance


def test_phase_encoding_axis_follows_original_orientation():
    assert phase_encoding_axis("j") == 1
    assert phase_encoding_axis("i-", "LAS") == 0
    assert phase_encoding_axis("j", "PSR") == 2  # original axis j runs S -> RAS z
    assert phase_encoding_axis("k-", "ASL") == 0
    with pytest.raises(InputDataError, match="PhaseEncodingDirection"):
        phase_encoding_axis("y")


def test_ghost_search_axes():
    assert candidate_ghost_axes((1.0, 1.0, 1.0)) == [0, 1, 2]
    assert candidate_ghost_axes((0.9, 0.9, 4.0)) == [0, 1]  # 2D stack: slices along z
    assert candidate_ghost_axes((1.0, 1.333, 1.333)) == [1, 2]  # ds000011: sagittal 3D, 1 mm partitions


def test_rayleigh_sigma_is_robust_to_quantisation_and_outliers():
    rng = np.random.default_rng(3)
    x = rng.rayleigh(2.0, 200_000)
    assert rayleigh_sigma(x) == pytest.approx(2.0, rel=0.02)
    assert rayleigh_sigma(np.round(x)) == pytest.approx(2.0, rel=0.1)  # integer-valued background
    contaminated = np.concatenate([x, rng.uniform(50, 100, 40_000)])  # 17 % artifacts
    assert rayleigh_sigma(contaminated) == pytest.approx(2.0, rel=0.15)


# ----------------------------------------------------------------------------- the clean scan


def test_clean_scan_iqms_in_abide_range(scan):
    """Each metric that does not depend on grid size, resolution or the segmentation method
    lies within ABIDE's 0.5-99.5th percentiles. Left out: fber and efc (background energy and
    entropy of the whole grid: they follow the field of view; efc is 0.48 here, 0.48-0.62 in
    MRIQC's DS030 table, 0.56-0.89 in ABIDE), rpve_* (counts the empty grid, so it scales with
    the FOV), fwhm_* (voxels: 2 mm here, ~1 mm in ABIDE), tpm_overlap_csf and wm2max
    (tissue-map definitions differ from FSL FAST's), snrd_* (a quantised background of 1-2
    units), inu_range (this fixture's 2-level N4 is a quick one), size/spacing."""
    table = abide()
    iqms = scan.clean
    keys = ["cjv", "cnr", "qi_1", "qi_2", "snr_total", "snr_gm", "snr_wm", "snr_csf", "icvs_csf", "icvs_gm", "icvs_wm",
            "inu_med", "tpm_overlap_gm", "tpm_overlap_wm"]
    for key in keys:
        lo, hi = table[key].quantile([0.005, 0.995])
        assert lo <= iqms[key] <= hi, f"{key}={iqms[key]:.4g} outside ABIDE [{lo:.4g}, {hi:.4g}]"
    expected = {f"summary_{t}_{s}" for t in ("bg", "csf", "gm", "wm")
                for s in ("mean", "median", "stdv", "mad", "k", "p05", "p95", "n")}
    expected |= {"fwhm_x", "fwhm_y", "fwhm_z", "fwhm_avg", "snrd_total", "rpve_gm", "fber", "wm2max",
                 "size_x", "spacing_z", "tpm_overlap_csf", "gsr"}
    assert expected <= set(iqms)
    assert set(table.columns) - {"subject_id", "site", "rater_1", "rater_2", "rater_3"} <= set(iqms)
    assert iqms["spacing_x"] == 2.0 and iqms["size_y"] == 128
    assert 0.95 < iqms["inu_med"] < 1.05 and iqms["gsr"] < 0.03


def test_tissue_summary_reads_pure_tissue_only():
    """A WM ball (1000 + N(0, 20)) in a GM shell (600) with a 2-voxel partial-volume rim: the
    pure-tissue statistics recover the WM noise; weighting every voxel by its fraction (MRIQC
    24) lets the rim's mixed intensities triple the SD."""
    from mriqc.qc.anatomical import summary_stats

    rng = np.random.default_rng(0)
    r = np.linalg.norm(np.indices((64, 64, 64)) - 31.5, axis=0)
    wm = np.clip((22 - r) / 2 + 0.5, 0, 1).astype(np.float32)  # fraction 1 inside r=21, 0 beyond r=23
    gm = np.clip(1 - wm, 0, 1) * (r < 29)
    data = 1000 * wm + 600 * gm + rng.normal(0, 20, r.shape)
    ours = tissue_summary(data, {"wm": wm, "gm": gm.astype(np.float32)}, background=r > 31)
    assert ours["wm"]["stdv"] == pytest.approx(20, rel=0.05)
    assert ours["wm"]["median"] == pytest.approx(1000, abs=2)
    assert ours["gm"]["median"] == pytest.approx(600, abs=2)
    assert ours["wm"]["n"] < (wm > 0.85).sum()  # eroded
    assert ours["bg"]["n"] == (r > 31).sum()
    weighted = summary_stats(data, {"wm": wm})["wm"]["stdv"]
    assert weighted > 2.5 * ours["wm"]["stdv"]
    thin = tissue_summary(data, {"shell": ((r > 20) & (r < 21.5)).astype(np.float32)})["shell"]
    assert thin["n"] == ((r > 20) & (r < 21.5)).sum()  # erosion would empty it: kept whole


def test_background_masks_on_the_real_scan(scan):
    m = image_masks(scan.t1w, scan.derived["head"], scan.derived["brain"])
    zooms_ml = 8 / 1000
    assert not (m.hat & scan.mask("head")).any() and not (m.air & m.artifacts).any()
    assert 1000 < m.hat.sum() * zooms_ml < 6000  # air above the nasion-occipital plane (mL)
    assert m.artifacts.sum() / m.hat.sum() < 0.005
    # nothing of the hat lies below the top of the cerebellum / orbits level
    z_hat = np.nonzero(m.hat)[2].min()
    z_brain = np.nonzero(scan.mask("brain"))[2]
    assert z_brain.min() + 0.3 * np.ptp(z_brain) < z_hat < z_brain.max()
    assert not looks_defaced(scan.t1w.get_fdata(), scan.mask("head"), scan.mask("brain"), scan.t1w.affine)


def test_defacing_is_detected(scan):
    """Zeroing the face (front of the head, below the orbits) makes the scan look defaced."""
    data = scan.t1w.get_fdata(dtype=np.float32).copy()
    brain = scan.mask("brain")
    ys, zs = np.nonzero(brain.any(axis=0))
    data[:, int(np.percentile(ys, 60)):, : int(zs.min() + 0.4 * np.ptp(zs))] = 0
    assert looks_defaced(data, scan.mask("head") & (data > 0), brain, scan.t1w.affine)


# ----------------------------------------------------------------------------- degradations


def test_classifier_accepts_the_clean_scan_and_rejects_strong_noise(scan):
    """Our IQMs follow the conventions of the table the classifier learnt from: the untouched
    real scan is rated accept (P 0.86 when written) and 10 % noise (snr_total 5.8, cjv 0.65)
    exclude (0.32). With fraction-weighted tissue statistics (MRIQC 24) and a 3-level N4, the
    14 clean ds000011 heads were all rated exclude (0.38-0.50)."""
    from bids_app.qc.classifier import predict_accept

    clean = predict_accept(scan.clean)
    assert clean["rating"] == "accept" and clean["p_accept"] > 0.7, clean
    noisy = predict_accept(scan.degraded("noise", 0.10)[1])
    assert noisy["rating"] == "exclude" and noisy["p_accept"] < clean["p_accept"] - 0.3, noisy


def test_noise_lowers_snr_and_cnr(scan):
    clean = scan.clean
    mild, strong = (scan.degraded("noise", level)[1] for level in (0.04, 0.10))
    for key in ("snr_total", "snr_wm", "cnr", "snrd_total"):
        assert clean[key] > mild[key] > strong[key], key
    assert clean["cjv"] < mild["cjv"] < strong["cjv"]
    assert strong["cnr"] < 0.7 * clean["cnr"]


def test_bias_field_raises_inu_range(scan):
    """The IQM reads the field it is given; and N4 on a biased scan returns a stronger field."""
    ranges = [scan.clean["inu_range"]] + [scan.with_field(strength)["inu_range"] for strength in (0.6, 1.8)]
    assert ranges[0] < ranges[1] < ranges[2]
    assert ranges[2] - ranges[0] > 0.5
    biased = corrupt.add_bias(scan.t1w, 1.0, seed=2)
    estimated = _fast_n4(biased, scan.derived["head"])
    assert scan.iqms(biased, bias=estimated)["inu_range"] > 1.5 * scan.clean["inu_range"]


def test_blur_raises_fwhm(scan):
    fwhm = [scan.clean["fwhm_avg"]] + [scan.degraded("blur", mm)[1]["fwhm_avg"] for mm in (3.0, 5.0)]
    assert fwhm[0] < fwhm[1] < fwhm[2]
    assert fwhm[2] > 1.5 * fwhm[0]


def test_ghosting_raises_ghost_ratio_and_qi1(scan):
    ghosted, iqms = scan.degraded("ghosting", 0.10)
    assert iqms["gsr_y"] == iqms["gsr"] and iqms["gsr"] > scan.clean["gsr"] + 0.05
    assert iqms["qi_1"] > 10 * max(scan.clean["qi_1"], 0.005)
    # with the phase-encoding direction known, only that axis is measured
    files = scan.files(ghosted)
    known = compute_ghost_ratio(files["t1w"], files["head"], pe_direction="j", orientation="RAS")
    assert set(known) == {"gsr_y", "gsr"} and known["gsr"] == pytest.approx(iqms["gsr_y"], abs=0.005)


def test_motion_ringing_degrades_contrast_and_background(scan):
    iqms = scan.degraded("motion_ringing", 0.15)[1]
    clean = scan.clean
    assert iqms["cjv"] > clean["cjv"] * 1.2
    assert iqms["gsr"] > clean["gsr"] + 0.05
    assert iqms["efc"] > clean["efc"]
    assert iqms["snr_total"] < clean["snr_total"]


# ----------------------------------------------------------------------------- corruptions, errors


def test_corruptions_are_pure_and_seeded(scan):
    before = scan.t1w.get_fdata().copy()
    a = corrupt.add_noise(scan.t1w, 0.05, seed=4).get_fdata()
    b = corrupt.add_noise(scan.t1w, 0.05, seed=4).get_fdata()
    c = corrupt.add_noise(scan.t1w, 0.05, seed=5).get_fdata()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(before, scan.t1w.get_fdata())
    field = corrupt.bias_field((40, 50, 60), 0.6, seed=1)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in field.shape], indexing="ij")
    inside = field[x**2 + y**2 + z**2 <= 1]
    assert inside.max() / inside.min() == pytest.approx(1.3 / 0.7, rel=1e-3)


def test_crops_keep_world_positions(scan):
    cropped = corrupt.crop_vertex(scan.t1w, 10, scan.derived["brain"])
    brain = corrupt.crop_like(scan.derived["brain"], cropped)
    assert cropped.shape[2] < scan.t1w.shape[2] and brain.shape == cropped.shape
    assert np.allclose(cropped.affine, brain.affine)
    top = np.nonzero(scan.mask("brain").any(axis=(0, 1)))[0].max()
    assert cropped.shape[2] == top + 1 - 5  # 10 mm = 5 slices of the brain's top removed
    world = cropped.affine @ [10, 20, 30, 1]
    original = np.linalg.solve(scan.t1w.affine, world)[:3]
    assert np.allclose(cropped.get_fdata()[10, 20, 30], scan.t1w.get_fdata()[tuple(np.rint(original).astype(int))])
    low = corrupt.crop_cerebellum(scan.t1w, 20, scan.derived["brain"])
    bottom = np.nonzero(scan.mask("brain").any(axis=(0, 1)))[0].min()
    assert low.shape[2] == scan.t1w.shape[2] - (bottom + 10)


def test_bad_inputs_raise_input_data_error(scan, tmp_path):
    files = scan.files()
    tissues = {t: files[t] for t in TISSUES}
    with pytest.raises(InputDataError, match="not found"):
        compute_iqms(files["t1w"], tmp_path / "missing.nii.gz", files["brain"], tissues, files["dseg"], files["bias"])
    moved = scan.t1w.affine.copy()
    moved[:3, 3] += 4
    nb.save(nb.Nifti1Image(scan.derived["brain"].get_fdata(), moved), tmp_path / "moved.nii")
    with pytest.raises(InputDataError, match="not on the T1w grid"):
        compute_iqms(files["t1w"], files["head"], tmp_path / "moved.nii", tissues, files["dseg"], files["bias"])
    with pytest.raises(InputDataError, match="missing CSF"):
        compute_iqms(files["t1w"], files["head"], files["brain"], {t: files[t] for t in ("GM", "WM")},
                     files["dseg"], files["bias"])


def test_mriqc_calls_leave_no_trace(tmp_path, monkeypatch):
    """art_qi2 writes error.svg in the working directory, reseeds numpy and needs nireports;
    snr_dietrich logs through MRIQC's configured logger: none of it leaks out of our wrapper."""
    from mriqc import config
    from mriqc.qc.anatomical import art_qi2, snr_dietrich

    from bids_app.qc.iqms import _mriqc_runtime

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.rayleigh(3.0, (40, 40, 40))
    np.random.seed(12)
    state = np.random.get_state()[1].copy()
    modules = set(sys.modules)
    with _mriqc_runtime():
        qi2, _ = art_qi2(data, np.ones(data.shape, bool), max_voxels=5000, save_plot=False)
        assert snr_dietrich(100.0, mad_air=0.0, sigma_air=2.0) == pytest.approx(100 * 0.6551364 / 2.0)
    assert 0 <= qi2 < 0.05
    assert os.getcwd() == str(tmp_path) and not list(tmp_path.iterdir())
    assert np.array_equal(np.random.get_state()[1], state)
    assert not {m for m in set(sys.modules) - modules if m.startswith("nireports")}
    assert config.loggers.interface is None
