"""TFCE and permutation inference checked against nilearn on the same inputs.

nilearn's ``calculate_tfce``, ``permuted_ols`` and ``non_parametric_inference`` are
the references: maps must agree to rounding error and, with the same seed and
chunking, so must the permutation null distributions and FWE p-values.
"""

from __future__ import annotations

import warnings

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.second_level import non_parametric_inference
from nilearn.maskers import NiftiMasker
from nilearn.mass_univariate import permuted_ols
from nilearn.mass_univariate._utils import calculate_tfce
from scipy import ndimage, stats

from bids_app.errors import InputDataError, UsageError
from bids_app.group.permutation import chunk_sizes, fwe_pvalues, permutation_stream, permuted_ols_tfce
from bids_app.group.tfce import VoxelGraph, max_tfce_batch, tfce, tfce_values

RTOL = 1e-6
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def smooth_field(rng, shape, sigma) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma) if sigma else rng.standard_normal(shape)
    return field / field.std()


def blob_mask(rng, shape=(20, 20, 20)) -> np.ndarray:
    """An irregular mask (several components, holes) inside the grid."""
    mask = np.zeros(shape, bool)
    inner = tuple(slice(2, s - 2) for s in shape)
    mask[inner] = ndimage.gaussian_filter(rng.standard_normal(mask[inner].shape), 2) > -0.03
    return mask


def nilearn_tfce(values, mask=None, connectivity=1, **kw) -> np.ndarray:
    values = values * mask if mask is not None else values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculate_tfce(values[..., None].astype(float), ndimage.generate_binary_structure(3, connectivity),
                              **kw)[..., 0]


def assert_same_map(got, ref):
    assert np.array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=0)


# ------------------------------------------------------------------------- TFCE


@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("shape,sigma", [((20, 20, 20), 2.0), ((15, 17, 13), 1.0), ((9, 11, 10), 0.0)])
def test_tfce_equals_nilearn_on_random_fields(shape, sigma, connectivity, two_sided):
    rng = np.random.default_rng(sum(shape) + connectivity)
    field = 2.5 * smooth_field(rng, shape, sigma)
    mask = blob_mask(rng, shape)
    ref = nilearn_tfce(field, mask, connectivity, two_sided_test=two_sided)
    got = tfce(field, mask, connectivity={1: 6, 2: 18, 3: 26}[connectivity], two_sided=two_sided)
    assert np.abs(ref).max() > 100  # clusters of many voxels, not a trivial map
    assert_same_map(got, ref)


@pytest.mark.parametrize("kw", [dict(E=0.66, H=1.0), dict(E=1.0, H=3, two_sided=False), dict(dh=0.1),
                                dict(dh=0.001), dict(dh=1.0)])
def test_tfce_parameters_equal_nilearn(kw):
    field = 3 * smooth_field(np.random.default_rng(5), (14, 12, 13), 1.5)
    nk = {("two_sided_test" if k == "two_sided" else k): v for k, v in kw.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step counts clipped to [10, 1000]
        got = tfce(field, **kw)
    assert_same_map(got, nilearn_tfce(field, **nk))


def test_tfce_edge_cases_equal_nilearn():
    rng = np.random.default_rng(11)
    field = smooth_field(rng, (12, 12, 12), 1.5)
    negative = -np.abs(field) - 0.1
    ties = np.round(field * 2) / 2  # many voxels exactly on the heights
    single = np.zeros((5, 5, 5))
    single[2, 2, 2] = 3.0
    cases = [(negative, True), (negative, False), (ties, True), (ties, False), (single, True),
             (-single, True), (single, False), (np.zeros((4, 4, 4)), True), (np.full((4, 4, 4), 2.0), True)]
    for values, two_sided in cases:
        assert_same_map(tfce(values, two_sided=two_sided), nilearn_tfce(values, two_sided_test=two_sided))
    # a negative map scores as the mirror of its positive
    np.testing.assert_allclose(tfce(negative), -tfce(-negative), rtol=1e-12)
    assert not tfce(negative, two_sided=False).any()


def test_tfce_definition_by_hand():
    """Two adjacent voxels (2, 1): heights up to 1 see a cluster of 2, above 1 a cluster of 1."""
    values = np.zeros((3, 3, 3))
    values[1, 1, 1], values[1, 1, 2] = 2.0, 1.0
    heights = np.linspace(0, 2, 101)[1:]
    low, high = heights[heights <= 1], heights[heights > 1]
    expected_peak = np.sqrt(2) * np.sum(low ** 2) + np.sum(high ** 2)
    expected_side = np.sqrt(2) * np.sum(low ** 2)
    got = tfce(values)
    assert got[1, 1, 1] == pytest.approx(expected_peak, rel=1e-12)
    assert got[1, 1, 2] == pytest.approx(expected_side, rel=1e-12)
    assert np.count_nonzero(got) == 2


def test_batch_maxima_equal_single_maps():
    rng = np.random.default_rng(2)
    mask = blob_mask(rng)
    graph = VoxelGraph.from_mask(mask)
    maps = np.stack([3 * smooth_field(rng, mask.shape, 1.5)[mask] for _ in range(6)])
    for two_sided in (True, False):
        single = [np.abs(tfce_values(m, graph, two_sided=two_sided)).max() for m in maps]
        for parallel in (False, True):
            np.testing.assert_allclose(max_tfce_batch(maps, graph, two_sided=two_sided, parallel=parallel), single,
                                       rtol=1e-12)


def test_tfce_rejects_bad_input():
    with pytest.raises(InputDataError, match="non-finite"):
        tfce(np.full((3, 3, 3), np.nan))
    with pytest.raises(InputDataError, match="3-D"):
        tfce(np.zeros((3, 3)))
    with pytest.raises(InputDataError, match="connectivity"):
        tfce(np.zeros((3, 3, 3)), connectivity=8)
    with pytest.raises(InputDataError, match="mask shape"):
        tfce(np.zeros((3, 3, 3)), np.ones((4, 4, 4)))


# ------------------------------------------------------------------ permutations


@pytest.fixture(scope="module")
def vbm_like():
    """20 subjects x 20^3 grid, irregular mask, smooth maps, a group effect in a cube."""
    rng = np.random.default_rng(3)
    mask = blob_mask(rng)
    n = 20
    maps = np.stack([smooth_field(rng, mask.shape, 1.5) for _ in range(n)])
    group = np.repeat([0.0, 1.0], n // 2)
    maps[group == 1, 5:10, 5:10, 5:10] += 0.8
    return dict(mask=mask, maps=maps, data=maps[:, mask], group=group, age=rng.normal(50, 10, n), n=n)


def nilearn_permuted(d, tested, confounds, **kw):
    masker = NiftiMasker(nb.Nifti1Image(d["mask"].astype(np.uint8), AFFINE)).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return permuted_ols(tested, d["data"], confounding_vars=confounds, masker=masker, tfce=True, **kw)


@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("case", ["group+age", "intercept+group+age", "one-sample", "group-difference"])
def test_permutations_equal_nilearn_permuted_ols(vbm_like, case, two_sided):
    d = vbm_like
    n, group, age = d["n"], d["group"], d["age"]
    design, contrast, confounds, scheme = {
        "group+age": (np.c_[group, age], [1, 0], age[:, None], "permute"),
        "intercept+group+age": (np.c_[np.ones(n), group, age], [0, 1, 0], np.c_[np.ones(n), age], "flip"),
        "one-sample": (np.ones((n, 1)), [1], None, "flip"),
        "group-difference": (np.c_[group, 1 - group], [1, -1], None, "permute"),
    }[case]
    kw = dict(n_perm=20, two_sided=two_sided, random_state=7, n_jobs=1)
    ref = nilearn_permuted(d, design @ np.asarray(contrast, float), confounds, n_perm=20,
                           two_sided_test=two_sided, random_state=7, n_jobs=1)
    got = permuted_ols_tfce(design, contrast, d["data"], d["mask"], **kw)
    assert got["scheme"] == scheme
    np.testing.assert_allclose(got["t"], ref["t"][0], rtol=RTOL)
    np.testing.assert_allclose(got["tfce"], ref["tfce"][0], rtol=RTOL)
    np.testing.assert_allclose(got["null_max_t"], ref["h0_max_t"][0], rtol=RTOL)
    np.testing.assert_allclose(got["null_max_tfce"], ref["h0_max_tfce"][0], rtol=RTOL)
    np.testing.assert_allclose(got["p_fwe_t"], 10 ** -ref["logp_max_t"][0], rtol=1e-9)
    np.testing.assert_allclose(got["p_fwe_tfce"], 10 ** -ref["logp_max_tfce"][0], rtol=1e-9)


@pytest.fixture(scope="module")
def nilearn_second_level(vbm_like):
    """nilearn's non_parametric_inference (one-sided, its default) on images; 2 chunks."""
    d = vbm_like
    imgs = [nb.Nifti1Image(m, AFFINE) for m in d["maps"]]
    design = pd.DataFrame({"intercept": np.ones(d["n"]), "group": d["group"], "age": d["age"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = non_parametric_inference(imgs, design_matrix=design, second_level_contrast=[0, 1, 0],
                                       mask=nb.Nifti1Image(d["mask"].astype(np.uint8), AFFINE), n_perm=100,
                                       tfce=True, random_state=0, n_jobs=1)
    return design.to_numpy(), {k: img.get_fdata()[d["mask"]] for k, img in out.items()}


def test_maps_and_pvalues_equal_non_parametric_inference(vbm_like, nilearn_second_level):
    design, ref = nilearn_second_level
    got = permuted_ols_tfce(design, [0, 1, 0], vbm_like["data"], vbm_like["mask"], n_perm=100, two_sided=False,
                            random_state=0, n_jobs=2, n_chunks=1)
    np.testing.assert_allclose(got["t"], ref["t"], rtol=RTOL)
    np.testing.assert_allclose(got["tfce"], ref["tfce"], rtol=RTOL)
    np.testing.assert_allclose(got["p_fwe_t"], 10 ** -ref["logp_max_t"], rtol=1e-6)
    np.testing.assert_allclose(got["p_fwe_tfce"], 10 ** -ref["logp_max_tfce"], rtol=1e-6)


def test_pvalues_agree_within_monte_carlo_error(vbm_like, nilearn_second_level):
    """Another seed and 20x more draws: p-values within binomial error of nilearn's 100 draws."""
    design, ref = nilearn_second_level
    got = permuted_ols_tfce(design, [0, 1, 0], vbm_like["data"], vbm_like["mask"], n_perm=2000,
                            two_sided=False, random_state=123, n_jobs=2)
    for ours, theirs in ((got["p_fwe_tfce"], 10 ** -ref["logp_max_tfce"]), (got["p_fwe_t"], 10 ** -ref["logp_max_t"])):
        sd = np.sqrt(ours * (1 - ours) / 100) + np.sqrt(ours * (1 - ours) / 2000)
        assert np.all(np.abs(ours - theirs) <= 4 * sd + 0.02)
    # the max-TFCE null of 2000 draws and nilearn's 100 come from one distribution
    null = permuted_ols_tfce(design, [0, 1, 0], vbm_like["data"], vbm_like["mask"], n_perm=100, two_sided=False,
                             random_state=0, n_jobs=1)["null_max_tfce"]
    assert stats.ks_2samp(got["null_max_tfce"], null).pvalue > 1e-3


def _groups_data(seed, effect, n=24, shape=(16, 16, 16)):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    maps = np.stack([smooth_field(rng, shape, 1.5) for _ in range(n)])
    group = np.repeat([0.0, 1.0], n // 2)
    blob = np.zeros(shape, bool)
    blob[4:9, 4:9, 4:9] = True
    maps[group == 1] += effect * blob
    design = np.c_[np.ones(n), group, rng.normal(size=n)]
    return design, maps[:, mask], mask, blob[mask]


def test_planted_effect_is_detected():
    design, data, mask, blob = _groups_data(0, effect=2.0)
    out = permuted_ols_tfce(design, [0, 1, 0], data, mask, n_perm=500, random_state=1, n_jobs=2)
    hits = out["p_fwe_tfce"] < 0.05
    assert hits[blob].mean() > 0.5  # most of the effect is found
    assert hits[~blob].mean() < 0.05  # little spills out (TFCE spreads at most a few voxels)
    assert out["p_fwe_tfce"][blob].min() <= 2 / 501


def test_null_data_keep_the_familywise_error_rate():
    """20 null datasets: TFCE-FWE < 0.05 anywhere in at most 4 (binomial(20, 0.05): P(>4) = 0.003)."""
    detections = 0
    for seed in range(20):
        design, data, mask, _ = _groups_data(100 + seed, effect=0.0, n=16, shape=(12, 12, 12))
        out = permuted_ols_tfce(design, [0, 1, 0], data, mask, n_perm=100, random_state=seed, n_jobs=2)
        detections += bool(out["p_fwe_tfce"].min() < 0.05)
        assert 0 < out["p_unc"].min() and out["p_unc"].max() <= 1
    assert detections <= 4


def test_stream_chunks_and_pvalues():
    assert chunk_sizes(10, 3) == [3, 3, 4] and chunk_sizes(2, 4) == [1, 1]
    order, signs = permutation_stream(8, 5, flip=False, random_state=0, n_chunks=2)
    assert all(sorted(row) == list(range(8)) for row in order) and np.all(signs == 1)
    order, signs = permutation_stream(8, 5, flip=True, random_state=0)
    assert np.all(order == np.arange(8)) and set(np.unique(signs)) == {-1.0, 1.0}
    np.testing.assert_allclose(fwe_pvalues(np.array([0.5, 2.0, 9.0]), np.array([1.0, 2.0, 3.0])), [1, 0.75, 0.25])


def test_permutation_rejects_bad_input(vbm_like):
    d = vbm_like
    design = np.c_[np.ones(d["n"]), d["group"]]
    with pytest.raises(InputDataError, match="do not match"):
        permuted_ols_tfce(design, [0, 1], d["data"][:, :-1], d["mask"], n_perm=0)
    with pytest.raises(UsageError, match="contrast"):
        permuted_ols_tfce(design, [0, 1, 0], d["data"], d["mask"], n_perm=0)
    with pytest.raises(UsageError, match="not estimable"):
        permuted_ols_tfce(np.c_[design, d["group"]], [0, 0, 1], d["data"], d["mask"], n_perm=0)
    bad = d["data"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputDataError, match="non-finite"):
        permuted_ols_tfce(design, [0, 1], bad, d["mask"], n_perm=0)


def test_max_t_only(vbm_like):
    d = vbm_like
    design = np.c_[np.ones(d["n"]), d["group"]]
    full = permuted_ols_tfce(design, [0, 1], d["data"], d["mask"], n_perm=30, random_state=4)
    fast = permuted_ols_tfce(design, [0, 1], d["data"], d["mask"], n_perm=30, random_state=4, tfce=False)
    assert "tfce" not in fast and "p_fwe_tfce" not in fast
    np.testing.assert_array_equal(fast["null_max_t"], full["null_max_t"])
    np.testing.assert_array_equal(fast["p_unc"], full["p_unc"])


def test_constant_voxels_score_zero(vbm_like):
    d = vbm_like
    data = d["data"].copy()
    data[:, :5] = 0.3
    out = permuted_ols_tfce(np.c_[np.ones(d["n"]), d["group"]], [0, 1], data, d["mask"], n_perm=20, random_state=0)
    assert np.all(out["t"][:5] == 0) and np.all(out["p_unc"][:5] == 1)
