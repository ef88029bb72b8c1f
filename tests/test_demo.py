"""The demo dataset (bids_app.demo): its building blocks, and the dataset against its own truth.

Unit tests of the pure field functions run in well under a second each. The dataset
tests share one 8-subject dataset at 2 mm, built once per session (the template
registration is most of its ~30-60 s) and marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_app.demo import __main__ as demo_cli
from bids_app.demo import fields, phantom
from bids_app.demo.build import GROUNDTRUTH, draw_participants, make_dataset, prepare_target, truth_paths
from bids_app.errors import OutputError, ResourceError

N_SUBJECTS = 8


# ------------------------------------------------------------------ pure functions


def _smooth_velocity(shape, amplitude, seed=0):
    rng = np.random.default_rng(seed)
    coeffs = fields.draw_velocity_coefficients(rng, 4)
    axes = [np.arange(n, dtype=float) for n in shape]
    v = fields.cosine_field(coeffs, axes, shape)
    return v * (amplitude / np.sqrt((v**2).sum(0)).max())


def test_exp_velocity_is_invertible_and_does_not_fold():
    v = _smooth_velocity((40, 44, 36), amplitude=6.0)
    fwd, inv = fields.exp_velocity(v), fields.exp_velocity(-v)
    roundtrip = fields.compose(fwd, inv)  # exp(v) o exp(-v) = identity
    inner = (slice(None),) + (slice(6, -6),) * 3
    assert np.abs(roundtrip[inner]).max() < 0.05
    assert fields.jacobian_determinant(fwd).min() > 0


def test_jacobian_of_a_linear_map():
    a = np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.1], [0.02, 0.0, 1.2]])
    grid = np.indices((10, 11, 12), dtype=float)
    u = np.einsum("ij,j...->i...", a - np.eye(3), grid)
    assert np.allclose(fields.jacobian_determinant(u), np.linalg.det(a), atol=1e-5)


def test_poisson_velocity_has_the_prescribed_divergence():
    f = np.zeros((32, 32, 32))
    f[10:14, 10:14, 10:14] = -1.0
    f[18:22, 18:22, 18:22] = 1.0
    f = ndimage.gaussian_filter(f, 2.0)
    v = fields.poisson_velocity(f)
    div = sum(np.gradient(v[d], axis=d) for d in range(3))
    inner = (slice(4, -4),) * 3
    assert np.corrcoef(div[inner].ravel(), f[inner].ravel())[0, 1] > 0.99
    assert np.abs(div[inner] - f[inner]).max() < 0.1 * np.abs(f).max()


def test_shrink_region_shrinks_a_ball_by_the_intended_fraction():
    grid = np.indices((48, 48, 48), dtype=float) - 23.5
    r = np.sqrt((grid**2).sum(0))
    ball = np.clip(8.5 - r, 0, 1).astype(np.float32)  # radius 8 voxels, partial-volume edge
    shell = ((r > 9) & (r < 13)).astype(np.float32)
    u, info = fields.shrink_region(ball, shell, 0.10, margin=8)
    assert abs(info["realised_fraction"] - 0.10) < 1e-3
    assert info["jacobian_min"] > 0
    points = fields.jittered_points(ball.shape, 4, seed=1)  # an independent measurement
    loss = 1 - fields.warped_volume(ball, points, u) / fields.warped_volume(ball, points)
    assert loss == pytest.approx(0.10, abs=0.005)
    # the shell takes up (about) the volume the ball lost
    lost = fields.warped_volume(ball, points) - fields.warped_volume(ball, points, u)
    gained = fields.warped_volume(shell, points, u) - fields.warped_volume(shell, points)
    assert gained == pytest.approx(lost, rel=0.3)


def test_rician_noise_has_the_recorded_sigma():
    rng = np.random.default_rng(3)
    img = np.zeros((60, 60, 60), np.float32)
    img[:, :, 30:] = 1000.0
    noisy = fields.add_rician_noise(img, 20.0, rng)
    assert fields.rayleigh_sigma(noisy[:, :, :30]) == pytest.approx(20.0, rel=0.01)  # air: Rayleigh
    assert noisy[:, :, 30:].std() == pytest.approx(20.0, rel=0.02)  # bright: ~Gaussian
    assert noisy.min() >= 0


def test_bias_field_ratio_and_resolution_independence():
    coeffs = fields.draw_bias_coefficients(np.random.default_rng(0))
    coeffs, offset = phantom._normalise_bias(coeffs, 1.3)
    x = (2 * (np.arange(24) + 0.5) / 24) - 1
    b = fields.bias_field(coeffs, (x, x, x), offset)
    inside = (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) <= 1
    assert b[inside].max() / b[inside].min() == pytest.approx(1.3, rel=1e-3)
    assert np.exp(np.log(b[inside]).mean()) == pytest.approx(1.0, abs=1e-3)
    # the same continuous field on another grid
    y = (2 * (np.arange(12) + 0.5) / 12) - 1
    assert fields.bias_field(coeffs, (y, y, y), offset)[3, 4, 5] == pytest.approx(
        float(fields.bias_field(coeffs, ([y[3]], [y[4]], [y[5]]), offset)[0, 0, 0]), rel=1e-6
    )


def test_participants_are_balanced_and_deterministic():
    rows = draw_participants(N_SUBJECTS, seed=0)
    assert rows == draw_participants(N_SUBJECTS, seed=0)
    assert rows != draw_participants(N_SUBJECTS, seed=1)
    table = pd.DataFrame(rows)
    assert list(table.participant_id) == [f"sub-{i:02d}" for i in range(1, 9)]
    assert table.group.value_counts().to_dict() == {"control": 4, "patient": 4}
    for _, group in table.groupby("group"):
        assert sorted(group.sex) == ["F", "F", "M", "M"]
    assert table.age.between(35, 80).all()


def test_make_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(OutputError):
        prepare_target(tmp_path / "x", force=False)
    assert demo_cli.main(["make", str(tmp_path / "x")]) == OutputError.exit_code
    assert (tmp_path / "x" / "file").read_text() == "keep me"
    prepare_target(tmp_path / "x", force=True)  # allowed with --force
    prepare_target(tmp_path / "new", force=False)  # absent is fine


def test_run_passes_exit_codes_through_and_stops_after_a_failed_participant_level(tmp_path, monkeypatch, capsys):
    import bids_app.cli

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text("{}")  # an existing dataset: not rebuilt
    calls = []

    def fake_main(argv):
        calls.append(argv)
        return 3 if argv[2] == "participant" else 0

    monkeypatch.setattr(bids_app.cli, "main", fake_main)
    args = ["run", "--bids-dir", str(bids), "--output-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w")]
    assert demo_cli.main(args) == 3
    assert calls == [[str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]]
    assert "no reports exist yet" in capsys.readouterr().out

    calls.clear()
    monkeypatch.setattr(bids_app.cli, "main", lambda argv: calls.append(argv) or 0)
    (tmp_path / "out").mkdir(parents=True)
    (tmp_path / "out" / "sub-01.html").write_text("<html/>")
    (tmp_path / "out" / "group.html").write_text("<html/>")
    assert demo_cli.main(args) == 0
    assert [c[2] for c in calls] == ["participant", "group"]
    assert calls[1][-2:] == ["--n-perm", "1000"]
    out = capsys.readouterr().out
    assert "sub-01.html" in out and "group.html" in out


# ------------------------------------------------------------------ the dataset


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The 8-subject demo at 2 mm (seed 0), built once per session."""
    root = tmp_path_factory.mktemp("demo") / "bids"
    try:
        # the head-space truth is reused from (and kept in) the default cache: see build.default_cache
        make_dataset(root, n_subjects=N_SUBJECTS, seed=0, resolution=2, log=lambda *a: None)
    except ResourceError as exc:
        pytest.skip(f"demo resources not available: {exc}")
    return root


@pytest.fixture(scope="session")
def summary(demo_dir) -> dict:
    return json.loads((demo_dir / GROUNDTRUTH / "groundtruth.json").read_text())


@pytest.fixture(scope="session")
def head(demo_dir):
    from bids_app.demo.truth import load_head_truth

    return load_head_truth(demo_dir)


@pytest.fixture(scope="session")
def atrophy_map(demo_dir, head):
    return phantom.cached_atrophy_field(head, demo_dir / GROUNDTRUTH / "head")[0]


def _truth(demo_dir, label, key):
    return nb.load(truth_paths(demo_dir / GROUNDTRUTH, label)[key])


def _labels(summary):
    return [p["participant_id"][4:] for p in summary["participants"]]


def _one_per_group(summary):
    """The first control and the first patient (for the checks that re-render a subject)."""
    return [next(p for p in summary["participants"] if p["group"] == g) for g in ("control", "patient")]


@pytest.mark.slow
def test_dataset_structure(demo_dir, summary):
    table = pd.read_csv(demo_dir / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "age", "sex", "group"]
    assert table.group.value_counts().to_dict() == {"control": 4, "patient": 4}
    sidecar = json.loads((demo_dir / "participants.json").read_text())
    assert set(sidecar["group"]["Levels"]) == {"control", "patient"}
    assert set(sidecar["sex"]["Levels"]) == {"M", "F"}
    description = json.loads((demo_dir / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0" and description["DatasetType"] == "raw"
    assert "ROBEX" in description["Acknowledgements"]
    for name in ("README.md", "CHANGES"):
        assert (demo_dir / name).read_text().strip()
    gt_desc = json.loads((demo_dir / GROUNDTRUTH / "dataset_description.json").read_text())
    assert gt_desc["DatasetType"] == "derivative"
    grid = np.array(summary["grid"]["affine"])
    for label in _labels(summary):
        img = nb.load(demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz")
        assert img.get_data_dtype() == np.int16
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(img.affine, grid) and np.allclose(img.get_qform(), grid)
        assert nb.aff2axcodes(img.affine) == ("L", "A", "S")
        assert img.header.get_zooms() == (2.0, 2.0, 2.0)
        assert (demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.json").is_file()
        for key, path in truth_paths(demo_dir / GROUNDTRUTH, label).items():
            assert path.is_file(), path
            if key not in ("json", "bias"):
                assert nb.load(path).shape == img.shape


def _validator() -> str | None:
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).with_name("bids-validator-deno"))
    return exe if Path(exe).exists() else None


@pytest.mark.slow
@pytest.mark.parametrize("which", ["raw", "groundtruth"])
def test_bids_validator_reports_no_errors(demo_dir, which):
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno not installed")
    target = demo_dir if which == "raw" else demo_dir / GROUNDTRUTH
    proc = subprocess.run([exe, "--format", "json", str(target)], capture_output=True, text=True, timeout=300)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    assert errors == []


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MORPHOBIDS_TEST_DEMO_REPRO") != "1",
    reason="rebuilds the head-space truth (~30-60 s); opt in with MORPHOBIDS_TEST_DEMO_REPRO=1",
)
def test_head_space_truth_is_reproducible(head, tmp_path):
    from bids_app.demo.head import HeadTruth, build_in_child

    build_in_child(0, tmp_path / "head")
    again = HeadTruth.load(tmp_path / "head")
    assert again.info["key"] == head.info["key"]
    for key in ("t1w", "brain_mask", "head_mask", "gm", "wm", "csf", "parcels"):
        assert np.array_equal(getattr(again, key), getattr(head, key)), key


@pytest.mark.slow
def test_same_seed_gives_identical_images(demo_dir, head, atrophy_map, summary):
    from bids_app.demo.build import subject_specs
    from bids_app.demo.truth import load_spec, regenerate_subject

    specs = subject_specs(draw_participants(N_SUBJECTS, 0), head, 0)
    for spec in specs:
        assert spec.to_dict() == load_spec(demo_dir, spec.label).to_dict()
    for label in ("01", next(p["participant_id"][4:] for p in summary["participants"] if p["group"] == "patient")):
        arrays, _ = regenerate_subject(demo_dir, label, truth=head, atrophy_map=atrophy_map)
        t1w = np.asanyarray(nb.load(demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz").dataobj)
        assert np.array_equal(arrays["T1w"], t1w)
        assert np.array_equal(arrays["GM"], np.asanyarray(_truth(demo_dir, label, "GM").dataobj.get_unscaled()))
        assert np.array_equal(arrays["precentral"], np.asanyarray(_truth(demo_dir, label, "precentral").dataobj))


@pytest.mark.slow
def test_deformations_do_not_fold(demo_dir, head, atrophy_map, summary):
    from bids_app.demo.truth import pullback_map

    assert summary["atrophy"]["head_space"]["jacobian_min"] > 0
    for p in summary["participants"]:
        record = json.loads(truth_paths(demo_dir / GROUNDTRUTH, p["participant_id"][4:])["json"].read_text())
        assert record["shape_jacobian_min"] > 0
    for p in _one_per_group(summary):  # the whole map, composed, at every voxel
        label = p["participant_id"][4:]
        q, grid = pullback_map(demo_dir, label, truth=head, atrophy_map=atrophy_map)
        jac = phantom.total_jacobian(q, grid, head)[1:-1, 1:-1, 1:-1]
        assert jac.min() > 0, label
        # on average the map only rescales by the head size
        assert np.median(jac) == pytest.approx(p["scale"] ** -3, rel=0.05)


def _region_ml(demo_dir, label):
    return sum(
        float(_truth(demo_dir, label, side).get_fdata(dtype=np.float64).sum())
        * float(np.prod(_truth(demo_dir, label, side).header.get_zooms())) / 1000.0
        for side in ("Precentral_L", "Precentral_R")
    )


@pytest.mark.slow
def test_patients_lose_ten_percent_of_precentral_grey_matter(demo_dir, head, atrophy_map, summary):
    assert summary["atrophy"]["intended_fraction"] == 0.10
    patients = [p for p in summary["participants"] if p["group"] == "patient"]
    assert len(patients) == 4
    for p in patients:
        label = p["participant_id"][4:]
        after = _region_ml(demo_dir, label)  # counted from the recorded partial-volume maps
        base = summary["atrophy"]["patients_baseline_ml"][p["participant_id"]]
        before = base["Precentral_L_GM"] + base["Precentral_R_GM"]
        realised = 1 - after / before
        assert 0.09 <= realised <= 0.11, (label, realised)
        assert realised == pytest.approx(p["realised_fraction"]["Precentral"], abs=1e-4)
    # the baseline is that subject rendered without atrophy
    from bids_app.demo.truth import regenerate_subject

    label = patients[0]["participant_id"][4:]
    twin, _ = regenerate_subject(demo_dir, label, atrophy=False, truth=head)
    twin_ml = sum(float(twin[s].sum(dtype=np.float64)) for s in ("Precentral_L", "Precentral_R")) / 255 * 8 / 1000
    base = summary["atrophy"]["patients_baseline_ml"][patients[0]["participant_id"]]
    assert twin_ml == pytest.approx(base["Precentral_L_GM"] + base["Precentral_R_GM"], rel=1e-6)


@pytest.mark.slow
def test_controls_have_no_atrophy_and_groups_differ_by_ten_percent(demo_dir, summary):
    ratio = {}
    for p in summary["participants"]:
        label = p["participant_id"][4:]
        spec = json.loads(truth_paths(demo_dir / GROUNDTRUTH, label)["json"].read_text())["parameters"]
        assert spec["atrophy"] == (p["group"] == "patient")
        if p["group"] == "control":
            assert p["realised_fraction"]["Precentral"] == 0.0
        brain = _truth(demo_dir, label, "brain").get_fdata().sum() * 8 / 1000
        ratio[label] = (_region_ml(demo_dir, label) / brain, p["group"])
    head_ratio = summary["head_truth"]["volumes_ml"]
    head_ratio = (head_ratio["Precentral_L_GM"] + head_ratio["Precentral_R_GM"]) / head_ratio["brain_mask"]
    controls = [r for r, g in ratio.values() if g == "control"]
    patients = [r for r, g in ratio.values() if g == "patient"]
    assert all(abs(r / head_ratio - 1) < 0.04 for r in controls)  # only the smooth shape change varies it
    assert 1 - np.mean(patients) / np.mean(controls) == pytest.approx(0.10, abs=0.02)


@pytest.mark.slow
def test_noise_and_bias_are_recorded_and_applied(demo_dir, head, atrophy_map, summary):
    from bids_app.demo.truth import load_spec, pullback_map

    coarse = phantom.subject_grid(head, 4.0)
    sigmas = []
    for p in summary["participants"]:
        label = p["participant_id"][4:]
        spec = load_spec(demo_dir, label)
        t1w = nb.load(demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz").get_fdata()
        # noise: the air (beyond the head) is pure Rician noise -> Rayleigh with the recorded sigma
        air = ~ndimage.binary_dilation(_truth(demo_dir, label, "head").get_fdata() > 0, iterations=3)
        assert air.mean() > 0.2
        assert fields.rayleigh_sigma(t1w[air]) == pytest.approx(spec.noise_sigma, rel=0.03)
        sigmas.append(spec.noise_sigma)
    assert max(sigmas) / min(sigmas) > 1.3  # the subjects differ in noise level
    for p in _one_per_group(summary):
        label = p["participant_id"][4:]
        spec = load_spec(demo_dir, label)
        t1w = nb.load(demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz").get_fdata()
        # bias: the stored 4 mm field is the recorded one ...
        stored = _truth(demo_dir, label, "bias")
        assert np.allclose(stored.affine, coarse.affine)
        assert np.allclose(stored.get_fdata(), phantom.bias_on_grid(spec, coarse), rtol=1e-5)
        # ... and it is what divides the image by the noise-free anatomy (in bright white matter)
        q, grid = pullback_map(demo_dir, label, truth=head, atrophy_map=atrophy_map)
        anatomy = spec.gain * fields.sample(head.t1w, q, order=3, mode="constant")
        bias = phantom.bias_on_grid(spec, grid)
        wm = (_truth(demo_dir, label, "dseg").get_fdata() == 2) & (anatomy > 20 * spec.noise_sigma)
        ratio = t1w[wm] / anatomy[wm]
        assert np.median(ratio / bias[wm]) == pytest.approx(1.0, abs=0.01)
        slope = np.polyfit(np.log(bias[wm]), np.log(ratio), 1)[0]
        assert slope == pytest.approx(1.0, abs=0.1)
        assert bias.max() / bias.min() >= 0.98 * spec.bias_ratio  # the ratio holds in the FOV's inscribed ellipsoid
