"""Gaussian stochastic layers and the full-covariance Gaussian posterior.

Finite differences over every input and parameter (float64), exact identities (scipy's
multivariate normal, the pPCA posterior), float32, bad input, and the CuPy path through the
CUDA emulator's stand-in.
"""

import numpy as np
import pytest
from cuda_emu import fake_cupy
from scipy.stats import multivariate_normal

from lvmcore.distributions import DiagNormal
from lvmcore.nn import GaussianLayer
from lvmcore.nn.stochastic import (
    gaussian_log_prob_backward,
    gaussian_log_prob_forward,
    gaussian_rsample_backward,
    gaussian_rsample_dlogq_dz,
    gaussian_rsample_forward,
)
from lvmcore.ops.fullcov import (
    fullcov_cholesky_backward,
    fullcov_cholesky_forward,
    fullcov_log_prob_backward,
    fullcov_log_prob_forward,
    fullcov_raw_from_cholesky,
    fullcov_rsample_backward,
    fullcov_rsample_dlogq_dz,
    fullcov_rsample_forward,
    fullcov_tril_size,
)
from lvmcore.oracles.ppca import ppca_log_joint, ppca_log_marginal, ppca_posterior
from lvmcore.testing import check_vjp, gradcheck

# ------------------------------------------------------------------ Gaussian stochastic layer


@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_gaussian_layer_backward_every_parameter_and_input(rng, lead):
    layer = GaussianLayer((4, 6, 5, 3), "tanh", rng, dtype=np.float64)
    h = rng.standard_normal(lead + (4,))
    (mu, logvar), cache = layer.forward(h)
    assert mu.shape == logvar.shape == lead + (3,)
    Gm, Gl = rng.standard_normal(mu.shape), rng.standard_normal(mu.shape)
    layer.zero_grad()
    dh = layer.backward((Gm, Gl), cache)
    analytic = {k: g.copy() for k, g in layer.grads.items()}
    analytic["h"] = dh

    def loss():
        (m, lv), _ = layer.forward(h)
        return np.sum(m * Gm) + np.sum(lv * Gl)

    gradcheck(loss, {**layer.params, "h": h}, analytic)


def test_gaussian_layer_is_an_mlp_with_mu_then_logvar_heads(rng):
    layer = GaussianLayer((4, 3), "tanh", rng, dtype=np.float64)
    assert layer.params["W0"].shape == (4, 6)
    h = rng.standard_normal((5, 4))
    (mu, logvar), _ = layer.forward(h)
    y = h @ layer.params["W0"] + layer.params["b0"]
    np.testing.assert_array_equal(mu, y[:, :3])
    np.testing.assert_array_equal(logvar, y[:, 3:])
    _, cache = layer.forward(h)
    assert layer.backward((mu, logvar), cache, need_dh=False) is None


def test_gaussian_rsample_and_log_prob_backward(rng):
    mu, logvar = rng.standard_normal((3, 4)), 0.5 * rng.standard_normal((3, 4))
    eps = rng.standard_normal((2, 3, 4))
    check_vjp(
        gaussian_rsample_forward,
        gaussian_rsample_backward,
        [mu, logvar, eps],
        names=["mu", "logvar"],
        wrt=[0, 1],
    )
    z = rng.standard_normal((2, 3, 4))
    check_vjp(gaussian_log_prob_forward, gaussian_log_prob_backward, [z, mu, logvar])


def test_gaussian_rsample_log_q_is_the_density_and_dlogq_dz_its_gradient(rng):
    mu, logvar = rng.standard_normal((3, 4)), 0.5 * rng.standard_normal((3, 4))
    eps = rng.standard_normal((5, 3, 4))
    (z, log_q), cache = gaussian_rsample_forward(mu, logvar, eps)
    np.testing.assert_allclose(log_q, DiagNormal(mu, logvar).log_prob(z), rtol=1e-13)
    lp, c = gaussian_log_prob_forward(z, mu, logvar)
    dz, _, _ = gaussian_log_prob_backward(np.ones_like(lp), c)
    np.testing.assert_allclose(gaussian_rsample_dlogq_dz(cache), dz, rtol=1e-12)
    # None stands for a zero upstream gradient
    dmu, dlogvar = gaussian_rsample_backward((None, np.ones_like(log_q)), cache)
    np.testing.assert_array_equal(dmu, 0)
    np.testing.assert_allclose(dlogvar, -2.5)  # -1/2 per sample, 5 samples


def test_two_stochastic_layers_chain_as_inference_and_generative_steps(rng):
    """q(z1|x) q(z2|z1) and p(z1|z2): one loss through both layers of each kind."""
    q1 = GaussianLayer((6, 5, 4), "tanh", rng, dtype=np.float64)
    q2 = GaussianLayer((4, 5, 2), "tanh", rng, dtype=np.float64)
    p1 = GaussianLayer((2, 5, 4), "tanh", rng, dtype=np.float64)
    x = rng.standard_normal((3, 6))
    e1, e2 = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 2))
    G = rng.standard_normal((2, 3, 2))

    def forward():
        (m1, v1), c1 = q1.forward(x)
        (z1, lq1), s1 = gaussian_rsample_forward(m1, v1, e1)  # (K, B, 4)
        (m2, v2), c2 = q2.forward(z1)  # per sample: (K, B, 2)
        (z2, lq2), s2 = gaussian_rsample_forward(m2, v2, e2)
        (pm, pv), c3 = p1.forward(z2)  # p(z1 | z2): (K, B, 4)
        lp, s3 = gaussian_log_prob_forward(z1, pm, pv)
        loss = np.sum(G * z2) + np.sum(lq1 + lq2 - lp)
        return loss, (c1, s1, c2, s2, c3, s3, lq1)

    for m in (q1, q2, p1):
        m.zero_grad()
    _, (c1, s1, c2, s2, c3, s3, lq1) = forward()
    ones = np.ones_like(lq1)
    dz1_p, dpm, dpv = gaussian_log_prob_backward(-ones, s3)
    dz2 = G + p1.backward((dpm, dpv), c3)
    dm2, dv2 = gaussian_rsample_backward((dz2, ones), s2)
    dz1 = dz1_p + q2.backward((dm2, dv2), c2)
    dm1, dv1 = gaussian_rsample_backward((dz1, ones), s1)
    dx = q1.backward((dm1, dv1), c1)
    inputs, analytic = {"x": x}, {"x": dx}
    for name, m in (("q1", q1), ("q2", q2), ("p1", p1)):
        for k in m.params:
            inputs[f"{name}.{k}"] = m.params[k]
            analytic[f"{name}.{k}"] = m.grads[k].copy()
    gradcheck(lambda: forward()[0], inputs, analytic)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_blocks_keep_the_dtype(rng, dtype):
    layer = GaussianLayer((4, 5, 3), "relu", np.random.default_rng(0), dtype=dtype)
    h = rng.standard_normal((2, 4)).astype(dtype)
    (mu, logvar), cache = layer.forward(h)
    (z, log_q), sc = gaussian_rsample_forward(
        mu, logvar, rng.standard_normal((3, 2, 3)).astype(dtype)
    )
    dmu, dlogvar = gaussian_rsample_backward((z, log_q), sc)
    dh = layer.backward((dmu, dlogvar), cache)
    for a in (mu, logvar, z, log_q, dmu, dlogvar, dh, *layer.grads.values()):
        assert a.dtype == dtype


def test_gaussian_blocks_reject_bad_input(rng):
    layer = GaussianLayer((4, 5, 3), "tanh", rng, dtype=np.float64)
    with pytest.raises(
        ValueError,
        match=r"GaussianLayer.forward: expected h.shape\[-1\] == 4, "
        r"got h of shape \(2, 5\). The layer sizes do not chain",
    ):
        layer.forward(rng.standard_normal((2, 5)))
    bad = rng.standard_normal((2, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="GaussianLayer.forward: expected h to contain no NaN"):
        layer.forward(bad)
    with pytest.raises(TypeError, match="GaussianLayer.forward: expected h to have dtype float64"):
        layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="GaussianLayer: expected sizes to list at least"):
        GaussianLayer((4,), "tanh", rng)
    mu, logvar = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(ValueError, match="gaussian_rsample_forward: expected eps to have shape"):
        gaussian_rsample_forward(mu, logvar, np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match="expected mu and logvar to have the same shape"):
        gaussian_rsample_forward(mu, np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="gaussian_rsample_forward: expected logvar to contain no"):
        gaussian_rsample_forward(mu, np.full((2, 3), np.inf), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="gaussian_log_prob_forward: expected z to have dtype"):
        gaussian_log_prob_forward(np.zeros((2, 3), np.float32), mu, logvar)


# ------------------------------------------------------------------ full covariance


def _fullcov_inputs(rng, Z=3, B=2, K=4):
    T = fullcov_tril_size(Z)
    return (
        rng.standard_normal((B, Z)),
        0.5 * rng.standard_normal((B, T)),
        rng.standard_normal((K, B, Z)),
    )


def test_cholesky_layout_exp_diagonal_and_inverse(rng):
    l_raw = rng.standard_normal((2, 6))
    L, cache = fullcov_cholesky_forward(l_raw)
    r, c = np.tril_indices(3)
    np.testing.assert_array_equal(L[:, r[r != c], c[r != c]], l_raw[:, [1, 3, 4]])
    np.testing.assert_allclose(np.diagonal(L, axis1=1, axis2=2), np.exp(l_raw[:, [0, 2, 5]]))
    assert np.all(np.triu(L, 1) == 0)
    np.testing.assert_allclose(fullcov_raw_from_cholesky(L), l_raw, rtol=1e-14)
    check_vjp(fullcov_cholesky_forward, fullcov_cholesky_backward, [l_raw])


@pytest.mark.parametrize("K", [None, 1, 4])
def test_fullcov_rsample_backward(rng, K):
    mu, l_raw, eps = _fullcov_inputs(rng, K=K or 1)
    eps = eps[0] if K is None else eps
    check_vjp(
        fullcov_rsample_forward,
        fullcov_rsample_backward,
        [mu, l_raw, eps],
        names=["mu", "l_raw"],
        wrt=[0, 1],
    )


def test_fullcov_log_prob_backward(rng):
    mu, l_raw, z = _fullcov_inputs(rng)
    check_vjp(
        fullcov_log_prob_forward,
        fullcov_log_prob_backward,
        [z, mu, l_raw],
        names=["z", "mu", "l_raw"],
    )


def test_fullcov_log_q_equals_scipy_multivariate_normal(rng):
    mu, l_raw, eps = _fullcov_inputs(rng, Z=4, B=3, K=5)
    (z, log_q), cache = fullcov_rsample_forward(mu, l_raw, eps)
    L, _ = fullcov_cholesky_forward(l_raw)
    lp, _ = fullcov_log_prob_forward(z, mu, l_raw)
    for b in range(3):
        ref = multivariate_normal(mu[b], L[b] @ L[b].T).logpdf(z[:, b])
        np.testing.assert_allclose(log_q[:, b], ref, rtol=1e-12)
        np.testing.assert_allclose(lp[:, b], ref, rtol=1e-12)
        np.testing.assert_allclose(z[:, b], mu[b] + eps[:, b] @ L[b].T, rtol=1e-13)


def test_fullcov_dlogq_dz_is_the_held_fixed_gradient(rng):
    mu, l_raw, eps = _fullcov_inputs(rng)
    (z, log_q), cache = fullcov_rsample_forward(mu, l_raw, eps)
    _, c = fullcov_log_prob_forward(z, mu, l_raw)
    dz, _, _ = fullcov_log_prob_backward(np.ones_like(log_q), c)
    np.testing.assert_allclose(fullcov_rsample_dlogq_dz(cache), dz, rtol=1e-12)
    zz = z.copy()
    gradcheck(
        lambda: fullcov_log_prob_forward(zz, mu, l_raw)[0].sum(),
        {"z": zz},
        {"z": fullcov_rsample_dlogq_dz(cache)},
    )


def test_fullcov_with_a_diagonal_factor_is_the_diagonal_posterior(rng):
    mu, logvar = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    eps = rng.standard_normal((4, 2, 3))
    l_raw = np.zeros((2, 6))
    l_raw[:, [0, 2, 5]] = 0.5 * logvar
    (z, log_q), _ = fullcov_rsample_forward(mu, l_raw, eps)
    (z_d, log_q_d), _ = gaussian_rsample_forward(mu, logvar, eps)
    np.testing.assert_allclose(z, z_d, rtol=1e-14)
    np.testing.assert_allclose(log_q, log_q_d, rtol=1e-14)


def test_fullcov_exact_ppca_posterior_makes_every_log_weight_log_px(rng):
    """log p(x, z) - log q(z | x) = log p(x) for every z when q is the exact posterior."""
    D, Z, B, K = 6, 3, 4, 50
    W, b, sigma2 = rng.standard_normal((D, Z)), rng.standard_normal(D), 0.3
    x = rng.standard_normal((B, D)) * 2
    mean, cov = ppca_posterior(x, W, b, sigma2)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.max(np.abs(corr - np.eye(Z))) > 0.1  # correlated latents
    l_raw = np.broadcast_to(fullcov_raw_from_cholesky(np.linalg.cholesky(cov)), (B, 6)).copy()
    log_px = ppca_log_marginal(x, W, b, sigma2)
    (z, log_q), _ = fullcov_rsample_forward(mean, l_raw, rng.standard_normal((K, B, Z)))
    np.testing.assert_allclose(
        ppca_log_joint(x, z, W, b, sigma2) - log_q, log_px + 0 * log_q, rtol=1e-11
    )
    z_any = 5 * rng.standard_normal((K, B, Z))  # far from the posterior too
    lq_any, _ = fullcov_log_prob_forward(z_any, mean, l_raw)
    np.testing.assert_allclose(
        ppca_log_joint(x, z_any, W, b, sigma2) - lq_any, log_px + 0 * lq_any, rtol=1e-11
    )


def test_fullcov_float32_matches_float64(rng):
    mu, l_raw, eps = _fullcov_inputs(rng)
    (z64, lq64), c64 = fullcov_rsample_forward(mu, l_raw, eps)
    f = np.float32
    (z32, lq32), c32 = fullcov_rsample_forward(mu.astype(f), l_raw.astype(f), eps.astype(f))
    assert z32.dtype == lq32.dtype == f
    np.testing.assert_allclose(z32, z64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lq32, lq64, rtol=1e-5, atol=1e-5)
    g64 = fullcov_rsample_backward((z64, lq64), c64)
    g32 = fullcov_rsample_backward((z32, lq32), c32)
    for a, b in zip(g32, g64):
        assert a.dtype == f
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    d32 = fullcov_rsample_dlogq_dz(c32)
    assert d32.dtype == f
    np.testing.assert_allclose(d32, fullcov_rsample_dlogq_dz(c64), rtol=1e-4, atol=1e-5)
    lp32, lc32 = fullcov_log_prob_forward(z32, mu.astype(f), l_raw.astype(f))
    assert lp32.dtype == f and all(g.dtype == f for g in fullcov_log_prob_backward(lp32, lc32))


def test_fullcov_rejects_bad_input(rng):
    L = np.array([[1.0, 0.0], [0.5, -0.2]])
    with pytest.raises(
        ValueError,
        match="fullcov_raw_from_cholesky: expected L to have a "
        "positive diagonal .* got 1 non-positive diagonal entries, e.g. -0.2",
    ):
        fullcov_raw_from_cholesky(L)
    with pytest.raises(ValueError, match="positive diagonal"):
        fullcov_raw_from_cholesky(np.array([[0.0, 0.0], [0.5, 1.0]]))
    with pytest.raises(
        ValueError, match="fullcov_raw_from_cholesky: expected L to be lower triangular"
    ):
        fullcov_raw_from_cholesky(np.array([[1.0, 0.3], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"expected L to have shape \(..., Z, Z\)"):
        fullcov_raw_from_cholesky(np.ones((2, 3)))
    with pytest.raises(ValueError, match="fullcov_raw_from_cholesky: expected L to contain no"):
        fullcov_raw_from_cholesky(np.array([[np.nan, 0.0], [0.5, 1.0]]))
    mu, l_raw, eps = _fullcov_inputs(rng)
    with pytest.raises(
        ValueError,
        match=r"fullcov_rsample_forward: expected l_raw to have shape "
        r"\(2, 6\)",
    ):
        fullcov_rsample_forward(mu, l_raw[:, :5], eps)
    with pytest.raises(ValueError, match="fullcov_rsample_forward: expected eps to have shape"):
        fullcov_rsample_forward(mu, l_raw, eps[..., :2])
    bad = l_raw.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="fullcov_rsample_forward: expected l_raw to contain no"):
        fullcov_rsample_forward(mu, bad, eps)
    with pytest.raises(TypeError, match="expected mu, l_raw to share one dtype"):
        fullcov_rsample_forward(mu, l_raw.astype(np.float32), eps)
    with pytest.raises(
        ValueError,
        match=r"fullcov_cholesky_forward: expected l_raw.shape\[-1\] "
        r"to be Z \(Z \+ 1\) / 2",
    ):
        fullcov_cholesky_forward(np.zeros(5))
    (z, log_q), cache = fullcov_rsample_forward(mu, l_raw, eps)
    with pytest.raises(ValueError, match="fullcov_rsample_backward: expected dlog_q to have"):
        fullcov_rsample_backward((z, log_q[0]), cache)


# ------------------------------------------------------------------ device (CuPy) path


def test_blocks_on_device_arrays_match_the_host():
    """Through the emulator's CuPy stand-in: no host copy anywhere, same numbers."""
    rng = np.random.default_rng(5)
    mu, l_raw, eps = _fullcov_inputs(rng)
    h = rng.standard_normal((2, 4))
    layer = GaussianLayer((4, 5, 3), "tanh", np.random.default_rng(0), dtype=np.float64)
    (m, v), lc = layer.forward(h)
    dh = layer.backward((m, v), lc)
    (z, lq), c = fullcov_rsample_forward(mu, l_raw, eps)
    g_host = (*fullcov_rsample_backward((z, lq), c), fullcov_rsample_dlogq_dz(c))
    lp, pc = fullcov_log_prob_forward(z, mu, l_raw)
    p_host = fullcov_log_prob_backward(lp, pc)
    with fake_cupy.installed() as cp:
        layer.to(cp)
        (m2, v2), lc2 = layer.forward(cp.asarray(h))
        np.testing.assert_allclose(cp.asnumpy(layer.backward((m2, v2), lc2)), dh, rtol=1e-13)
        dmu, dl, de = (cp.asarray(a) for a in (mu, l_raw, eps))
        (z2, lq2), c2 = fullcov_rsample_forward(dmu, dl, de)
        assert type(z2) is cp.ndarray
        g_dev = (*fullcov_rsample_backward((z2, lq2), c2), fullcov_rsample_dlogq_dz(c2))
        lp2, pc2 = fullcov_log_prob_forward(z2, dmu, dl)
        p_dev = fullcov_log_prob_backward(lp2, pc2)
        for a, b in zip((*g_dev, *p_dev), (*g_host, *p_host)):
            np.testing.assert_allclose(cp.asnumpy(a), b, rtol=1e-12, atol=1e-14)
        L2, _ = fullcov_cholesky_forward(dl)
        np.testing.assert_allclose(cp.asnumpy(fullcov_raw_from_cholesky(L2)), l_raw, rtol=1e-13)
        with pytest.raises(TypeError, match="expected all arrays on one device"):
            fullcov_rsample_forward(dmu, l_raw, de)
