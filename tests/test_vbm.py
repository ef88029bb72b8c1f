"""Group-level VBM: GLM, thresholds, permutation inference, cluster tables and figures.

Data: the synthetic derivative cohort of :mod:`cohort` (fixture ``group_cohort``: 10
controls, 10 patients whose grey matter in AAL3 Precentral_L/R was reduced by 10 %, with
head-size, age and smooth anatomical variability), modulated GM at 2 mm, analysed with
the usual VBM covariates (age, TIV). Parametric maps run at 2 mm; permutations (max-t
and TFCE) use a 4 mm copy (block means) and few permutations to stay fast.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from bids_app.errors import InputDataError, MissingInputError, MorphoBIDSError, ResourceError, UsageError
from bids_app.group import vbm as vbm_module
from bids_app.group.clusters import cluster_table, labels_at, load_atlas, nearest_label, table_sidecar
from bids_app.group.vbm import (
    partition_design,
    permutation_design,
    resolve_contrast,
    run_vbm,
    vbm_metadata,
    vbm_outputs,
)
from bids_app.group.vbm_figures import glass_brain_svg, vbm_figures

PRECENTRAL = {1: "Precentral_L", 2: "Precentral_R"}  # AAL3 indices
EXPECTED_OUTPUTS = {
    "desc-gm_mask", "stat-effect_statmap", "stat-t_statmap", "stat-z_statmap", "stat-z_desc-thresholded_statmap",
    "stat-tfce_statmap", "stat-logpFWE_desc-maxt_statmap", "stat-logpFWE_desc-tfce_statmap",
}
#: The project's permutation engine when it is installed (numba), else nilearn's.
FAST = "morphobids" if vbm_module._fast_backend() is not None else "nilearn"
N_PERM_TFCE_NILEARN = 20  # nilearn's TFCE costs ~0.5 s per permutation at 4 mm
N_PERM = 200  # p floor 1/201 < 0.05 / 10


def _resources():
    from bids_app.resources import get_atlas, get_template

    try:
        return get_atlas("AAL3", resolution=2), get_template(resolution=2, desc="brain", suffix="mask")
    except ResourceError as exc:
        pytest.skip(f"embedded resources not built: {exc}")


def _downsample(img: nb.Nifti1Image) -> nb.Nifti1Image:
    """2x2x2 block mean (a 4 mm map of the same template; density preserved)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    shape = [(n // 2) * 2 for n in data.shape]
    data = data[: shape[0], : shape[1], : shape[2]]
    data = data.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(1, 3, 5))
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    affine[:3, 3] += img.affine[:3, :3] @ [0.5, 0.5, 0.5]
    return nb.Nifti1Image(data, affine)


def _world(img: nb.Nifti1Image) -> np.ndarray:
    """World coordinates (mm) of every voxel of ``img``, shape (*img.shape, 3)."""
    ijk = np.indices(img.shape[:3]).reshape(3, -1).T
    return nb.affines.apply_affine(img.affine, ijk).reshape(*img.shape[:3], 3)


def _precentral_distance(img: nb.Nifti1Image) -> np.ndarray:
    """Distance (mm) of each voxel of ``img``'s grid from AAL3 Precentral_L/R (0 inside)."""
    labels, affine, _ = load_atlas("AAL3", resolution=2)
    outside = ~np.isin(labels, list(PRECENTRAL))
    distance = ndimage.distance_transform_edt(outside, sampling=nb.affines.voxel_sizes(affine))
    ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(affine), _world(img).reshape(-1, 3))).astype(int)
    ijk = np.clip(ijk, 0, np.array(labels.shape) - 1)
    return distance[tuple(ijk.T)].reshape(img.shape[:3])


@pytest.fixture(scope="module")
def cohort(group_cohort):
    """Images, participants and the VBM design (control, patient, age, TIV; covariates z-scored)."""
    _resources()
    table = group_cohort["participants"]
    paths = group_cohort["modulated"]
    assert [p.name.split("_")[0] for p in paths] == list(table["participant_id"])
    out = group_cohort["output_dir"]
    tiv = [pd.read_csv(out / p / "anat" / f"{p}_desc-tissue_morph.tsv", sep="\t")["tiv_ml"].iloc[0]
           for p in table["participant_id"]]
    design = pd.get_dummies(table["group"]).astype(float)[["control", "patient"]]
    design["age"] = stats.zscore(table["age"].to_numpy(float))
    design["tiv"] = stats.zscore(np.asarray(tiv))
    design.index = table["participant_id"]
    images = [nb.load(p) for p in paths]
    images = [nb.Nifti1Image(np.asarray(i.dataobj, dtype=np.float32), i.affine) for i in images]
    return {"paths": paths, "table": table, "design": design, "images": images}


@pytest.fixture(scope="module")
def cohort_result(cohort):
    """Patients < controls on the 2 mm maps, parametric only (FPR 0.01, clusters >= 10 voxels)."""
    return run_vbm(cohort["paths"], cohort["design"], "control - patient", n_perm=0, height_control="fpr",
                   alpha=0.01, cluster_threshold=10)


@pytest.fixture(scope="module")
def precentral_2mm(cohort_result):
    atlas, _ = _resources()
    labels = np.asarray(nb.load(atlas.dseg).dataobj)
    assert labels.shape == cohort_result.mask_img.shape
    return np.isin(labels, list(PRECENTRAL))


# ----------------------------------------------------------------------------- cohort, parametric


def test_gm_mask_is_the_documented_rule_and_plausible(cohort, cohort_result):
    _, brain_mask = _resources()
    mask = np.asarray(cohort_result.mask_img.dataobj) > 0
    mean_gm = np.mean([np.asarray(i.dataobj, dtype=float) for i in cohort["images"]], axis=0)
    differ = mask != (mean_gm >= 0.2)
    assert np.all(np.abs(mean_gm[differ] - 0.2) < 1e-6)  # float32 rounding at the threshold only
    s = cohort_result.summary
    assert s["mask"]["voxels"] == mask.sum() and s["mask"]["threshold"] == 0.2
    assert 90_000 < mask.sum() < 180_000  # ~0.7-1.4 L at 2 mm
    assert s["mask"]["volume_ml"] == pytest.approx(mask.sum() * 8 / 1000)
    from bids_app.resources import get_template

    brain = np.asarray(nb.load(brain_mask).dataobj) > 0
    gm_prior = np.asarray(nb.load(get_template(resolution=2, label="GM")).dataobj)
    wm_prior = np.asarray(nb.load(get_template(resolution=2, label="WM")).dataobj)
    assert (mask & brain).sum() / mask.sum() > 0.97  # inside the template brain
    assert (mask & (gm_prior > 0.5)).sum() / (gm_prior > 0.5).sum() > 0.7  # covers the GM
    assert (mask & (wm_prior > 0.9)).sum() / (wm_prior > 0.9).sum() < 0.1  # not deep WM


def test_t_peak_is_the_glm_t_in_the_precentral_gyrus(cohort, cohort_result):
    import statsmodels.api as sm
    from nilearn.image import smooth_img

    s = cohort_result.summary
    mask = np.asarray(cohort_result.mask_img.dataobj) > 0
    t_map = cohort_result.t_img.get_fdata()
    assert s["peak"]["t"] == pytest.approx(t_map[mask].max(), rel=1e-5)
    xyz = np.array(s["peak"]["xyz_mm"])
    ijk = np.rint(nb.affines.apply_affine(np.linalg.inv(cohort_result.t_img.affine), xyz)).astype(int)
    assert t_map[tuple(ijk)] == pytest.approx(s["peak"]["t"], rel=1e-5)
    # the t equals statsmodels' OLS t of the smoothed values at that voxel (8 mm FWHM: a box of
    # +-12 voxels around it holds the whole kernel)
    lo = np.maximum(ijk - 12, 0)
    box = tuple(slice(a, a + 25) for a in lo)
    values = np.array([smooth_img(nb.Nifti1Image(np.asarray(img.dataobj)[box], img.affine), 8.0)
                       .get_fdata()[tuple(ijk - lo)] for img in cohort["images"]])
    test = sm.OLS(values, cohort["design"].to_numpy()).fit().t_test([1.0, -1.0, 0.0, 0.0])
    assert s["peak"]["t"] == pytest.approx(float(np.squeeze(test.tvalue)), rel=1e-3)
    assert s["peak"]["effect"] == pytest.approx(float(np.squeeze(test.effect)), rel=1e-3)
    assert s["degrees_of_freedom"] == 16 and s["peak"]["t"] > 5.0
    assert s["peak"]["z"] == pytest.approx(stats.norm.isf(stats.t.sf(s["peak"]["t"], 16)), rel=1e-3)
    # the atrophy was planted in AAL3 Precentral_L/R: the peak lies in or beside them
    label, distance = nearest_label(xyz, "AAL3", radius_mm=6.0)
    assert label in PRECENTRAL and distance <= 4.0


def test_parametric_threshold_height_and_extent(cohort_result):
    s = cohort_result.summary
    assert s["height_control"] == "fpr" and s["alpha"] == 0.01 and s["cluster_threshold_voxels"] == 10
    assert cohort_result.threshold == pytest.approx(stats.norm.isf(0.01))  # one-sided
    assert s["z_threshold"] == cohort_result.threshold
    z = cohort_result.z_img.get_fdata()
    kept = cohort_result.thresholded_img.get_fdata() != 0
    assert kept.sum() == s["n_suprathreshold_voxels"] > 0
    assert np.all(z[kept] > cohort_result.threshold)
    labels, n = ndimage.label(z > cohort_result.threshold)
    sizes = ndimage.sum(np.ones_like(z), labels, range(1, n + 1))
    big = np.isin(labels, np.flatnonzero(sizes >= 10) + 1)
    assert np.array_equal(kept, big)  # exactly the clusters of >= 10 voxels survive


def test_cluster_table_peaks_sizes_and_precentral_labels(cohort_result, precentral_2mm):
    table = cluster_table(cohort_result.thresholded_img, cohort_result.threshold,
                          extra_maps={"t": cohort_result.t_img})
    peaks = table[table["peak"]]
    assert len(peaks) >= 3 and list(peaks["cluster_id"].iloc[:3]) == ["1", "2", "3"]
    top = peaks.iloc[0]
    assert [top["x"], top["y"], top["z"]] == cohort_result.summary["peak"]["xyz_mm"]
    assert top["peak_stat"] == pytest.approx(cohort_result.summary["peak"]["z"], rel=1e-5)
    assert top["t"] == pytest.approx(cohort_result.summary["peak"]["t"], rel=1e-5)
    assert (peaks["size_voxels"] >= 10).all()
    assert np.allclose(peaks["size_mm3"], peaks["size_voxels"] * 8.0)
    assert peaks["size_voxels"].sum() == cohort_result.summary["n_suprathreshold_voxels"]
    # atlas labels at the peak agree with the atlas image on the analysis grid
    for _, row in peaks.iterrows():
        ijk = tuple(np.rint(nb.affines.apply_affine(np.linalg.inv(cohort_result.t_img.affine),
                                                    [row["x"], row["y"], row["z"]])).astype(int))
        assert (row["AAL3"] in PRECENTRAL.values()) == bool(precentral_2mm[ijk])
    assert top["AAL3"] in PRECENTRAL.values() and top["AAL3_distance_mm"] == 0.0
    # both gyri are found, and the clusters that lie mostly in them hold most suprathreshold voxels
    main = peaks["AAL3_cluster"].str.split(" ").str[0]
    assert main.iloc[0] in PRECENTRAL.values() and set(PRECENTRAL.values()) <= set(main)
    assert peaks.loc[main.isin(PRECENTRAL.values()), "size_voxels"].sum() > 0.6 * peaks["size_voxels"].sum()
    assert set(table_sidecar(table)) == set(table.columns)


def test_labels_and_nearest_label_lookup():
    _resources()
    # (-38, -20, 56): hand knob of the left precentral gyrus; (500, 0, 0): outside the atlas
    assert list(labels_at(np.array([[-38.0, -20.0, 56.0], [500.0, 0, 0]]), "AAL3")) == [1, 0]
    label, distance = nearest_label([-38.0, -20.0, 56.0], "AAL3")
    assert (label, distance) == (1, 0.0)
    assert nearest_label([500.0, 0.0, 0.0], "AAL3")[0] == 0


# ----------------------------------------------------------------------------- cohort, permutations (4 mm)


@pytest.fixture(scope="module")
def cohort_4mm(cohort):
    return [_downsample(i) for i in cohort["images"]]


@pytest.fixture(scope="module")
def cohort_tfce(cohort, cohort_4mm):
    """nilearn's max-t and TFCE permutations (few: nilearn's TFCE is slow)."""
    return run_vbm(cohort_4mm, cohort["design"], "control - patient", n_perm=N_PERM_TFCE_NILEARN, tfce=True,
                   random_state=0, permutation_backend="nilearn")


@pytest.fixture(scope="module")
def planted(cohort, cohort_4mm):
    """Patients < controls with the fast engine, enough permutations for p_FWE < 0.05."""
    return run_vbm(cohort_4mm, cohort["design"], "control - patient", n_perm=N_PERM, tfce=True, random_state=0,
                   permutation_backend=FAST)


@pytest.mark.slow
def test_tfce_and_max_t_permutation_outputs(cohort_tfce):
    _resources()
    result = cohort_tfce
    n = N_PERM_TFCE_NILEARN
    perm = result.summary["permutation"]
    assert perm["n_perm"] == n and perm["tfce"] and perm["p_floor"] == pytest.approx(1 / (n + 1))
    # the tested regressor of the partitioned design is orthogonal to age and TIV, hence 20 distinct
    # values: every one of the 20! permutations is a distinct relabelling
    assert perm["distinct_relabellings"] == pytest.approx(math.factorial(20), rel=1e-9)
    # the partitioned design gives the permutation engine the GLM's t exactly
    assert perm["max_abs_t_difference_vs_glm"] < 1e-3
    mask = np.asarray(result.mask_img.dataobj) > 0
    for img in (result.logp_fwe_t_img, result.logp_fwe_tfce_img):
        data = img.get_fdata()
        assert np.all(data[~mask] == 0) and data.min() >= 0 and data.max() <= math.log10(n + 1) + 1e-9
    assert perm["min_p_fwe_t"] == pytest.approx(10 ** -result.logp_fwe_t_img.get_fdata().max())
    # FWE p of max-t is monotone in t: a higher t never has a larger p
    t = result.t_img.get_fdata()[mask]
    logp = result.logp_fwe_t_img.get_fdata()[mask]
    order = np.argsort(t)
    assert np.all(np.diff(logp[order]) >= -1e-9)
    # TFCE is largest in the precentral gyri, where the atrophy is
    tfce = result.tfce_img.get_fdata()
    peak = nb.affines.apply_affine(result.tfce_img.affine, np.unravel_index(np.argmax(tfce), tfce.shape))
    assert nearest_label(peak, "AAL3", radius_mm=6.0)[0] in PRECENTRAL
    outputs = vbm_outputs(result)
    assert set(outputs) == EXPECTED_OUTPUTS
    assert all(o.shape == result.mask_img.shape for o in outputs.values())
    meta = vbm_metadata(result)
    assert set(meta) == EXPECTED_OUTPUTS and f"{n} permutations" in meta["stat-logpFWE_desc-tfce_statmap"]["Description"]


@pytest.mark.slow
def test_fast_backend_reproduces_nilearn(cohort, cohort_4mm, cohort_tfce):
    """The project's permutation engine draws nilearn's random stream: same FWE p-values."""
    if vbm_module._fast_backend() is None:
        pytest.skip("bids_app.group.permutation is not available")
    fast = run_vbm(cohort_4mm, cohort["design"], "control - patient", n_perm=N_PERM_TFCE_NILEARN, tfce=True,
                   random_state=0, permutation_backend="morphobids")
    assert fast.summary["permutation"]["backend"].startswith("bids_app.group.permutation")
    for attr in ("logp_fwe_t_img", "logp_fwe_tfce_img"):
        assert np.allclose(getattr(fast, attr).get_fdata(), getattr(cohort_tfce, attr).get_fdata(), atol=1e-6)
    tfce_fast, tfce_ref = fast.tfce_img.get_fdata(), cohort_tfce.tfce_img.get_fdata()
    assert np.allclose(tfce_fast, tfce_ref, rtol=1e-4, atol=1e-3 * tfce_ref.max())


def test_planted_atrophy_detected_at_fwe_005(cohort, cohort_4mm, planted):
    """The 10 % precentral loss survives FWE correction (max-t and TFCE), there and nowhere else."""
    result = planted
    perm = result.summary["permutation"]
    assert perm["p_floor"] == pytest.approx(1 / (N_PERM + 1))
    level = -math.log10(0.05)
    distance = _precentral_distance(result.t_img)
    for kind in ("t", "tfce"):
        assert perm[f"min_p_fwe_{kind}"] < 0.05 and perm[f"n_fwe_voxels_{kind}"] > 0, kind
        significant = getattr(result, f"logp_fwe_{kind}_img").get_fdata() > level
        assert (distance[significant] <= 8.0).mean() >= 0.9, kind  # in the gyri or within one FWHM
    label, gap = nearest_label(result.summary["peak"]["xyz_mm"], "AAL3", radius_mm=6.0)
    assert label in PRECENTRAL and gap <= 4.0
    # the opposite direction finds nothing there; two-sided finds it again
    opposite = run_vbm(cohort_4mm, cohort["design"], "patient - control", n_perm=N_PERM, tfce=False,
                       random_state=0, permutation_backend=FAST)
    assert not np.any((opposite.logp_fwe_t_img.get_fdata() > level) & (distance <= 8.0))
    assert np.allclose(opposite.t_img.get_fdata(), -result.t_img.get_fdata(), atol=1e-4)
    both = run_vbm(cohort_4mm, cohort["design"], "patient - control", two_sided=True, n_perm=N_PERM, tfce=False,
                   random_state=0, permutation_backend=FAST)
    assert both.summary["permutation"]["min_p_fwe_t"] < 0.05


def test_null_relabelling_has_no_precentral_effect(cohort, cohort_4mm, planted):
    """Labels shuffled to be balanced (5 controls + 5 patients per arm): no effect, no FWE finding."""
    table = cohort["table"]
    arm = np.zeros(len(table), bool)
    for group in ("control", "patient"):
        arm[np.flatnonzero(table["group"].to_numpy() == group)[:5]] = True
    null = cohort["design"].copy()
    null["control"], null["patient"] = arm.astype(float), (~arm).astype(float)
    assert pd.crosstab(table["group"].to_numpy(), arm).to_numpy().tolist() == [[5, 5], [5, 5]]
    result = run_vbm(cohort_4mm, null, "control - patient", n_perm=N_PERM, tfce=True, random_state=0,
                     permutation_backend=FAST)
    inside = (_precentral_distance(result.t_img) == 0) & (np.asarray(result.mask_img.dataobj) > 0)
    real_t, null_t = planted.t_img.get_fdata()[inside], result.t_img.get_fdata()[inside]
    assert real_t.mean() > 2.0 and abs(null_t.mean()) < 0.5
    assert (real_t > 2).mean() > 0.5 and (null_t > 2).mean() < 0.05
    assert real_t.max() - null_t.max() > 2.0
    perm = result.summary["permutation"]
    assert perm["n_fwe_voxels_t"] == 0 and perm["n_fwe_voxels_tfce"] == 0
    assert perm["p_floor"] == pytest.approx(1 / (N_PERM + 1))
    logp = result.logp_fwe_t_img.get_fdata()
    assert logp.min() >= 0 and logp.max() <= math.log10(N_PERM + 1) + 1e-9


# ----------------------------------------------------------------------------- API pieces


def test_partition_design_keeps_the_contrast_estimate():
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(15), rng.integers(0, 2, 15), rng.normal(size=15)])
    c = np.array([0.0, 1.0, -0.5])
    y = rng.normal(size=15)
    tested, nuisance = partition_design(x, c)
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    gamma = np.linalg.lstsq(np.column_stack([tested, nuisance]), y, rcond=None)[0]
    assert gamma[0] == pytest.approx(c @ beta)
    assert np.linalg.matrix_rank(np.column_stack([tested, nuisance, x])) == 3  # same column space


def test_resolve_contrast_forms():
    cols = ["control", "patient", "age"]
    assert resolve_contrast("control - patient", cols).tolist() == [1, -1, 0]
    assert resolve_contrast("age", cols).tolist() == [0, 0, 1]
    assert resolve_contrast([0, 1, 0], cols).tolist() == [0, 1, 0]
    for bad in ("nosuch - patient", [1, -1], [0, 0, 0]):
        with pytest.raises(UsageError):
            resolve_contrast(bad, cols)


def _small_images(n=6, shape=(12, 12, 12)):
    rng = np.random.default_rng(0)
    return [nb.Nifti1Image(rng.uniform(0.3, 0.8, shape).astype(np.float32), np.diag([4.0, 4, 4, 1]))
            for _ in range(n)]


def _ols_t(design, contrast, data, model_intercept):
    """Reference t of ``design @ contrast`` with the other columns (+ intercept) as nuisance."""
    x = np.column_stack([design, np.ones(len(design))]) if model_intercept else design
    c = np.append(contrast, 0.0) if model_intercept else contrast
    beta, rss = np.linalg.lstsq(x, data, rcond=None)[:2]
    dof = len(x) - np.linalg.matrix_rank(x)
    return (c @ beta) / np.sqrt(rss / dof * (c @ np.linalg.pinv(x.T @ x) @ c))


def test_pluggable_backend_gets_nilearn_convention_and_its_p_values_are_mapped():
    images = _small_images()
    rng = np.random.default_rng(3)
    design = pd.DataFrame({"intercept": 1.0, "group": [0.0, 1, 0, 1, 1, 0], "age": rng.normal(50, 8, 6)})
    seen = {}

    def backend(design, contrast, data, *, mask, n_perm, tfce, model_intercept, scheme):  # no n_jobs etc.
        seen.update(design=design, contrast=contrast, data=data, mask=mask, n_perm=n_perm, tfce=tfce,
                    model_intercept=model_intercept, scheme=scheme)
        v = data.shape[1]
        return {"t": _ols_t(design, contrast, data, model_intercept), "p_fwe_t": np.full(v, 0.5),
                "tfce": np.ones(v), "p_fwe_tfce": np.full(v, 0.01)}

    result = run_vbm(images, design, "group", smoothing_fwhm=None, n_perm=20, permutation_backend=backend)
    mask = np.asarray(result.mask_img.dataobj) > 0
    assert seen["mask"].shape == mask.shape and np.array_equal(seen["mask"], mask)
    assert seen["data"].shape == (6, mask.sum()) and np.allclose(seen["data"][2], np.asarray(images[2].dataobj)[mask])
    assert seen["n_perm"] == 20 and seen["tfce"] and seen["model_intercept"] and seen["scheme"] == "permute"
    # tested regressor first, nuisance centred (the engine adds the intercept): no constant column to trip
    # nilearn's sign-flipping rule, and the backend's t is the GLM's t
    assert seen["contrast"].tolist() == [1.0, 0.0] and seen["design"].shape == (6, 2)
    assert np.allclose(seen["design"][:, 1:].sum(axis=0), 0.0)
    assert result.summary["permutation"]["max_abs_t_difference_vs_glm"] < 1e-4
    assert np.allclose(result.logp_fwe_t_img.get_fdata()[mask], math.log10(2))
    assert np.allclose(result.logp_fwe_tfce_img.get_fdata()[mask], 2.0)
    assert np.all(result.logp_fwe_tfce_img.get_fdata()[~mask] == 0)
    assert result.summary["permutation"]["n_fwe_voxels_tfce"] == mask.sum()

    def wrong_model(design, contrast, data, **kwargs):  # forgets the nuisance and the intercept
        return {"t": _ols_t(design[:, :1], contrast[:1], data, False), "p_fwe_t": np.ones(data.shape[1])}

    with pytest.raises(MorphoBIDSError, match="differs from the GLM"):
        run_vbm(images, design, "group", n_perm=10, tfce=False, permutation_backend=wrong_model)

    def no_mask(design, contrast, data, n_perm):
        return {}

    with pytest.raises(UsageError, match="TFCE"):
        run_vbm(images, design, "group", n_perm=10, permutation_backend=no_mask)
    if vbm_module._fast_backend() is None:
        with pytest.raises(UsageError, match="not available"):
            run_vbm(images, design, "group", n_perm=10, permutation_backend="morphobids")


def test_permutation_design_schemes():
    two_groups = np.array([[1.0, 0]] * 4 + [[0.0, 1]] * 4)
    design, contrast, intercept, scheme = permutation_design(two_groups, np.array([1.0, -1]))
    assert design.shape == (8, 1) and intercept and scheme == "permute"
    assert design[:, 0].tolist() == [0.5] * 4 + [-0.5] * 4
    one_sample = np.ones((6, 1))
    design, _, intercept, scheme = permutation_design(one_sample, np.array([1.0]))
    assert np.allclose(design[:, 0], 1.0) and not intercept and scheme == "flip"


def test_bad_inputs_raise_project_errors(tmp_path):
    images = _small_images()
    design = pd.DataFrame({"control": [1.0, 1, 1, 0, 0, 0], "patient": [0.0, 0, 0, 1, 1, 1]})
    with pytest.raises(InputDataError, match="6 rows but 5 images"):
        run_vbm(images[:5], design, "control - patient", n_perm=0)
    with pytest.raises(InputDataError, match="rank deficient"):
        run_vbm(images, design.assign(intercept=1.0), "control - patient", n_perm=0)
    with pytest.raises(UsageError, match="no intercept"):
        run_vbm(images, pd.DataFrame({"age": np.arange(1.0, 7.0)}), "age", n_perm=0)
    with pytest.raises(InputDataError, match="not numeric"):
        run_vbm(images, design.assign(sex=list("MFMFMF")), "control - patient", n_perm=0)
    with pytest.raises(UsageError, match="height control"):
        run_vbm(images, design, "control - patient", height_control="fwe", n_perm=0)
    odd = list(images)
    odd[3] = nb.Nifti1Image(np.ones((10, 12, 12), np.float32), images[0].affine)
    with pytest.raises(InputDataError, match="not on the grid"):
        run_vbm(odd, design, "control - patient", n_perm=0)
    missing = [tmp_path / f"sub-{i}_label-GM_desc-modulated_probseg.nii.gz" for i in range(6)]
    with pytest.raises(MissingInputError, match="sub-0_label-GM"):
        run_vbm(missing, design, "control - patient", n_perm=0)
    with pytest.raises(InputDataError, match="mask is empty"):
        run_vbm(images, design, "control - patient", mask_threshold=5.0, n_perm=0)


def test_figures_are_svg(cohort_result):
    figures = vbm_figures(cohort_result)
    assert set(figures) == {"glassbrain", "slices"}
    for svg in figures.values():
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
    empty = glass_brain_svg(cohort_result.z_img, 100.0, title="z")
    assert ET.fromstring(empty).tag.endswith("svg")
    # the suprathreshold blobs are drawn (opaque coloured pixels in the projections), none when nothing survives
    drawn = glass_brain_svg(cohort_result.thresholded_img, cohort_result.threshold, colorbar=False)
    assert _opaque_pixels(drawn) > 20 and _opaque_pixels(empty) == 0


def _opaque_pixels(svg: str) -> int:
    import base64
    import io
    import re

    import matplotlib.image as mpimg

    total = 0
    for payload in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=\s]+)", svg):
        rgba = mpimg.imread(io.BytesIO(base64.b64decode(payload)), format="png")
        if rgba.ndim == 3 and rgba.shape[2] == 4:
            total += int((rgba[..., 3] > 0.5).sum())
    return total
