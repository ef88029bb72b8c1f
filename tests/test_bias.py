"""N4 removes a known multiplicative bias field from a real scan."""

from __future__ import annotations

import nibabel as nb
import numpy as np

from bids_app.participant.antsio import affine_of, from_ants, to_ants
from bids_app.participant.bias import head_mask, n4
from bids_app.participant.conform import conform


def test_ants_roundtrip_keeps_world_mapping(pumi_t1w):
    img, _ = conform(pumi_t1w)
    back = to_ants(img)
    assert np.allclose(affine_of(back), img.affine, atol=1e-4)
    assert np.array_equal(from_ants(back).get_fdata(), img.get_fdata())


def test_n4_recovers_a_known_bias_field(pumi_t1w):
    img, _ = conform(pumi_t1w)
    data = img.get_fdata(dtype=np.float32)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, s) for s in data.shape], indexing="ij")
    true_bias = np.exp(0.35 * i + 0.25 * k - 0.2 * j * k).astype(np.float32)  # up to ~2x across the head
    biased = nb.Nifti1Image(data * true_bias, img.affine)
    mask = head_mask(biased).get_fdata() > 0
    assert 0.1 < mask.mean() < 0.6
    corrected, field = n4(biased)
    own_corrected, own_field = n4(img)  # the scan has its own bias: compare the fields' ratio with the injected one
    est = field.get_fdata()[mask] / own_field.get_fdata()[mask]
    # the field is known up to a global scale: compare log fields after removing their means
    log_true, log_est = np.log(true_bias[mask]), np.log(est)
    r = np.corrcoef(log_true, log_est)[0, 1]
    resid = (log_true - log_true.mean()) - (log_est - log_est.mean())
    assert r > 0.9, r
    assert np.std(resid) < 0.5 * np.std(log_true)
    # corrected(biased) is close to corrected(original); biased is not (scale-free comparison)
    reference = own_corrected.get_fdata()[mask]
    reference = reference / np.median(reference)

    def distance(a):
        a = a[mask] / np.median(a[mask])
        return np.median(np.abs(a - reference))

    assert distance(corrected.get_fdata()) < 0.5 * distance(biased.get_fdata())
