"""Product of Gaussian experts: closed form against densities, gradients, missing modalities."""

import numpy as np
import pytest

from lvmcore.ops.poe import poe_backward, poe_forward
from lvmcore.testing import check_vjp


def _experts(rng, M=3, B=4, Z=2):
    return rng.standard_normal((M, B, Z)), 0.7 * rng.standard_normal((M, B, Z))


def _mask(rng, M, B, prior_expert):
    mask = rng.random((M, B)) < 0.6
    if not prior_expert:
        mask[0, ~mask.any(axis=0)] = True
    return mask


@pytest.mark.parametrize("prior_expert", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_poe_backward_by_central_differences(rng, prior_expert, masked):
    mu, logvar = _experts(rng)
    mask = _mask(rng, 3, 4, prior_expert) if masked else None

    def fwd(mu, logvar):
        return poe_forward(mu, logvar, mask, prior_expert)

    check_vjp(fwd, poe_backward, [mu, logvar], names=["mu", "logvar"])


def test_missing_expert_gets_exactly_zero_gradient(rng):
    mu, logvar = _experts(rng)
    mask = np.ones((3, 4), dtype=bool)
    mask[1, 2] = mask[2, 0] = False
    _, cache = poe_forward(mu, logvar, mask)
    dmu, dlogvar = poe_backward((rng.standard_normal((4, 2)), rng.standard_normal((4, 2))), cache)
    for m, b in ((1, 2), (2, 0)):
        assert np.all(dmu[m, b] == 0) and np.all(dlogvar[m, b] == 0)
    assert np.all(dmu[mask] != 0) and np.all(dlogvar[mask] != 0)


def test_missing_expert_values_do_not_matter(rng):
    mu, logvar = _experts(rng)
    mask = np.array([[True] * 4, [False, True, False, True], [True] * 4])
    out1, _ = poe_forward(mu, logvar, mask)
    mu2, logvar2 = mu.copy(), logvar.copy()
    mu2[~mask], logvar2[~mask] = 123.0, -50.0
    out2, _ = poe_forward(mu2, logvar2, mask)
    for a, b in zip(out1, out2):
        np.testing.assert_array_equal(a, b)


def test_poe_equals_direct_precision_formula(rng):
    mu, logvar = _experts(rng, M=4, B=5, Z=3)
    mask = _mask(rng, 4, 5, True)
    (mu_out, logvar_out), _ = poe_forward(mu, logvar, mask)
    prec = np.exp(-logvar) * mask[:, :, None]
    T = 1.0 + prec.sum(axis=0)
    np.testing.assert_allclose(logvar_out, -np.log(T), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(mu_out, (prec * mu).sum(axis=0) / T, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_equals_the_normalized_product_of_densities_in_1d(rng, prior_expert):
    """Multiply the experts' densities on a fine grid and read off the mean and variance."""
    mus = np.array([0.8, -1.3, 2.0])
    logvars = np.array([0.3, -0.9, 1.1])
    x = np.linspace(-15.0, 15.0, 600_001)
    log_density = np.zeros_like(x)
    for m, v in zip(mus, logvars):
        log_density += -0.5 * (x - m) ** 2 / np.exp(v)
    if prior_expert:
        log_density += -0.5 * x**2
    p = np.exp(log_density - log_density.max())
    p /= np.trapezoid(p, x)
    mean = np.trapezoid(x * p, x)
    var = np.trapezoid((x - mean) ** 2 * p, x)
    (mu_out, logvar_out), _ = poe_forward(
        mus[:, None, None], logvars[:, None, None], prior_expert=prior_expert
    )
    np.testing.assert_allclose(mu_out[0, 0], mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.exp(logvar_out[0, 0]), var, rtol=1e-9)


def test_one_expert_without_prior_is_that_expert(rng):
    mu, logvar = _experts(rng, M=1)
    (mu_out, logvar_out), cache = poe_forward(mu, logvar, prior_expert=False)
    np.testing.assert_array_equal(mu_out, mu[0])
    np.testing.assert_array_equal(logvar_out, logvar[0])
    d = (rng.standard_normal((4, 2)), rng.standard_normal((4, 2)))
    dmu, dlogvar = poe_backward(d, cache)
    np.testing.assert_array_equal(dmu[0], d[0])
    np.testing.assert_array_equal(dlogvar[0], d[1])


def test_one_present_expert_among_several_is_that_expert(rng):
    mu, logvar = _experts(rng)
    mask = np.zeros((3, 4), dtype=bool)
    mask[1] = True
    (mu_out, logvar_out), _ = poe_forward(mu, logvar, mask, prior_expert=False)
    np.testing.assert_array_equal(mu_out, mu[1])
    np.testing.assert_array_equal(logvar_out, logvar[1])


def test_no_modality_present_gives_the_prior(rng):
    mu, logvar = _experts(rng)
    (mu_out, logvar_out), cache = poe_forward(mu, logvar, np.zeros((3, 4), dtype=bool))
    assert np.all(mu_out == 0) and np.all(logvar_out == 0)
    dmu, dlogvar = poe_backward((np.ones((4, 2)), np.ones((4, 2))), cache)
    assert not dmu.any() and not dlogvar.any()


def test_extreme_precisions_stay_finite_and_exact(rng):
    mu = np.array([[[1.5, -2.0]], [[0.3, 0.4]]])  # (M=2, B=1, Z=2)
    logvar = np.array([[[-300.0, 300.0]], [[0.0, 0.0]]])
    (mu_out, logvar_out), cache = poe_forward(mu, logvar)
    assert np.all(np.isfinite(mu_out)) and np.all(np.isfinite(logvar_out))
    np.testing.assert_allclose(mu_out[0, 0], 1.5, rtol=1e-12)  # the sharp expert wins
    np.testing.assert_allclose(logvar_out[0, 0], -300.0, rtol=1e-12)
    np.testing.assert_allclose(mu_out[0, 1], 0.4 / 2, rtol=1e-12)  # the flat expert drops out
    np.testing.assert_allclose(logvar_out[0, 1], -np.log(2.0), rtol=1e-12)
    dmu, dlogvar = poe_backward((np.ones((1, 2)), np.ones((1, 2))), cache)
    assert np.all(np.isfinite(dmu)) and np.all(np.isfinite(dlogvar))


def test_float32_matches_float64_and_lists_equal_stacks(rng):
    mu, logvar = _experts(rng)
    (m64, v64), _ = poe_forward(mu, logvar)
    (m32, v32), c32 = poe_forward(mu.astype(np.float32), logvar.astype(np.float32))
    assert m32.dtype == v32.dtype == np.float32
    np.testing.assert_allclose(m32, m64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v32, v64, rtol=1e-5, atol=1e-6)
    dmu, dlogvar = poe_backward((np.ones((4, 2), np.float32), None), c32)
    assert dmu.dtype == dlogvar.dtype == np.float32
    (ml, vl), _ = poe_forward(list(mu), list(logvar))
    np.testing.assert_array_equal(ml, m64)
    np.testing.assert_array_equal(vl, v64)


def test_poe_rejects_bad_input(rng):
    mu, logvar = _experts(rng)
    with pytest.raises(ValueError, match=r"poe_forward: expected mu\[1\] to have the shape of"):
        poe_forward([mu[0], mu[1][:, :1], mu[2]], list(logvar))
    with pytest.raises(ValueError, match="poe_forward: expected logvar to have mu's shape"):
        poe_forward(mu, logvar[:, :, :1])
    with pytest.raises(ValueError, match=r"poe_forward: expected mask to have shape \(3, 4\)"):
        poe_forward(mu, logvar, np.ones((3, 5), dtype=bool))
    with pytest.raises(TypeError, match="poe_forward: expected mask to have dtype bool"):
        poe_forward(mu, logvar, np.ones((3, 4)))
    with pytest.raises(ValueError, match="poe_forward: expected mask to mark at least one"):
        poe_forward(mu, logvar, np.zeros((3, 4), dtype=bool), prior_expert=False)
    bad = logvar.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="poe_forward: expected logvar to contain no NaN"):
        poe_forward(mu, bad)
    with pytest.raises(TypeError, match="poe_forward: expected mu, logvar to share one dtype"):
        poe_forward(mu, logvar.astype(np.float32))
    with pytest.raises(ValueError, match="poe_forward: expected mu to have 3 dimensions"):
        poe_forward(mu[0], logvar[0])
    with pytest.raises(ValueError, match="poe_forward: expected mu to hold at least one expert"):
        poe_forward(mu[:0], logvar[:0])
    _, cache = poe_forward(mu, logvar)
    with pytest.raises(ValueError, match="poe_backward: expected dmu_out to have shape"):
        poe_backward((np.ones((4, 3)), None), cache)
