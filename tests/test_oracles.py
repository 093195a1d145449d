"""Exact oracles (lvmcore.testing.oracles): PPCA and diagonal Gaussian mixtures.

Each closed form is checked against an independent computation (SciPy densities, brute-force
Gaussian conditioning, Bayes' rule), the fitters against their defining properties, and the
importance estimator against the exact marginal with a tolerance taken from its own measured
standard error.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from lvmcore.exceptions import InvalidParameterError
from lvmcore.testing.oracles import (
    GMM,
    PPCA,
    gmm_fit_em,
    gmm_importance_log_marginal,
    gmm_log_joint,
    gmm_log_marginal,
    gmm_log_posterior,
    gmm_posterior,
    gmm_sample,
    ppca_fit,
    ppca_log_joint,
    ppca_log_marginal,
    ppca_posterior,
    ppca_sample,
)


def make_ppca(rng, D, Z, sigma2=0.3):
    return PPCA(W=rng.standard_normal((D, Z)), b=rng.standard_normal(D), sigma2=sigma2)


def make_gmm(rng, C, D, spread=3.0):
    log_pi = np.log(rng.dirichlet(np.full(C, 5.0)))
    means = spread * rng.standard_normal((C, D))
    variances = rng.uniform(0.3, 1.5, size=(C, D))
    return GMM(log_pi, means, variances)


# ---------------------------------------------------------------------------------------------
# PPCA


@pytest.mark.parametrize("B, D, Z", [(1, 4, 1), (7, 5, 2), (6, 3, 3), (4, 10, 4)])
@pytest.mark.parametrize("sigma2", [1e-3, 0.5, 4.0])
def test_ppca_log_marginal_matches_scipy(B, D, Z, sigma2):
    rng = np.random.default_rng(0)
    W, b, _ = make_ppca(rng, D, Z)
    x = rng.standard_normal((B, D)) * 2.0 + b
    want = multivariate_normal(mean=b, cov=W @ W.T + sigma2 * np.eye(D)).logpdf(x)
    got = ppca_log_marginal(x, W, b, sigma2)
    assert got.shape == (B,)
    assert_allclose(got, np.atleast_1d(want), rtol=1e-10)


def test_ppca_log_marginal_float32_input_computes_in_float64():
    rng = np.random.default_rng(1)
    W, b, sigma2 = make_ppca(rng, 5, 2)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    got = ppca_log_marginal(x, W.astype(np.float32), b.astype(np.float32), sigma2)
    W32, b32 = W.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    want = multivariate_normal(mean=b32, cov=W32 @ W32.T + sigma2 * np.eye(5)).logpdf(
        x.astype(np.float64)
    )
    assert got.dtype == np.float64
    assert_allclose(got, want, rtol=1e-10)


def test_ppca_log_marginal_is_accurate_when_noise_is_tiny():
    # sigma2 = 1e-12 makes C nearly singular (SciPy's multivariate_normal rejects it); the
    # Woodbury form with a non-negative quadratic stays accurate against 60-digit arithmetic.
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    rng = np.random.default_rng(8)
    D, Z, sigma2 = 6, 2, 1e-12
    W, b, _ = make_ppca(rng, D, Z)
    x = b + rng.standard_normal((3, Z)) @ W.T + np.sqrt(sigma2) * rng.standard_normal((3, D))
    C = mp.matrix(W.tolist()) * mp.matrix(W.T.tolist()) + mp.mpf(sigma2) * mp.eye(D)
    want = []
    for row in x - b:
        r = mp.matrix(row.tolist())
        quad = (r.T * mp.lu_solve(C, r))[0]
        want.append(float(-0.5 * (D * mp.log(2 * mp.pi) + mp.log(mp.det(C)) + quad)))
    assert_allclose(ppca_log_marginal(x, W, b, sigma2), want, rtol=1e-9)


@pytest.mark.parametrize("D, Z", [(5, 2), (3, 3), (8, 1)])
def test_ppca_posterior_matches_gaussian_conditioning(D, Z):
    rng = np.random.default_rng(2)
    W, b, sigma2 = make_ppca(rng, D, Z)
    x = rng.standard_normal((6, D))
    # Joint of (z, x) is Gaussian: cov(z) = I, cov(z, x) = W^T, cov(x) = W W^T + sigma2 I.
    Cx = W @ W.T + sigma2 * np.eye(D)
    want_mean = np.linalg.solve(Cx, (x - b).T).T @ W  # W^T Cx^-1 (x - b)
    want_cov = np.eye(Z) - W.T @ np.linalg.solve(Cx, W)
    mean, cov = ppca_posterior(x, W, b, sigma2)
    assert mean.shape == (6, Z) and cov.shape == (Z, Z)
    assert_allclose(mean, want_mean, rtol=1e-10, atol=1e-12)
    assert_allclose(cov, want_cov, rtol=1e-10, atol=1e-12)
    assert_allclose(cov, cov.T, rtol=0, atol=0)


def test_ppca_bayes_identity_for_random_z():
    rng = np.random.default_rng(3)
    D, Z, B, K = 6, 3, 5, 4
    W, b, sigma2 = make_ppca(rng, D, Z)
    x = rng.standard_normal((B, D)) + b
    z = 2.0 * rng.standard_normal((K, B, Z))
    mean, cov = ppca_posterior(x, W, b, sigma2)
    log_post = np.stack(
        [[multivariate_normal(mean[i], cov).logpdf(z[k, i]) for i in range(B)] for k in range(K)]
    )  # (K, B)
    log_px = ppca_log_marginal(x, W, b, sigma2)
    assert_allclose(
        ppca_log_joint(x, z, W, b, sigma2) - log_post, np.broadcast_to(log_px, (K, B)), rtol=1e-10
    )


def test_ppca_log_joint_shapes_agree():
    rng = np.random.default_rng(4)
    W, b, sigma2 = make_ppca(rng, 4, 2)
    x = rng.standard_normal((3, 4))
    z = rng.standard_normal((5, 3, 2))
    many = ppca_log_joint(x, z, W, b, sigma2)
    assert many.shape == (5, 3)
    assert_allclose(many[2], ppca_log_joint(x, z[2], W, b, sigma2), rtol=1e-14)
    want = multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z[1, 0]) + multivariate_normal(
        W @ z[1, 0] + b, sigma2 * np.eye(4)
    ).logpdf(x[0])
    assert_allclose(many[1, 0], want, rtol=1e-12)


def test_ppca_importance_weights_with_exact_posterior_are_constant():
    # The use this oracle exists for: q = p(z|x) gives log w = log p(x) for every sample.
    rng = np.random.default_rng(5)
    W, b, sigma2 = make_ppca(rng, 5, 2)
    x = rng.standard_normal((4, 5))
    mean, cov = ppca_posterior(x, W, b, sigma2)
    L = np.linalg.cholesky(cov)
    z = mean + rng.standard_normal((64, 4, 2)) @ L.T  # (K, B, Z)
    log_q = np.stack([multivariate_normal(mean[i], cov).logpdf(z[:, i]) for i in range(4)], 1)
    log_w = ppca_log_joint(x, z, W, b, sigma2) - log_q
    assert_allclose(
        log_w, np.broadcast_to(ppca_log_marginal(x, W, b, sigma2), log_w.shape), rtol=1e-10
    )


def test_ppca_fit_recovers_parameters_and_maximizes_likelihood():
    rng = np.random.default_rng(6)
    D, Z, N = 6, 2, 20_000
    true = make_ppca(rng, D, Z, sigma2=0.25)
    x, z = ppca_sample(rng, true, N)
    assert x.shape == (N, D) and z.shape == (N, Z)
    fit = ppca_fit(x, Z)
    assert fit.W.shape == (D, Z) and fit.b.shape == (D,) and isinstance(fit.sigma2, float)

    # Tolerances from the sampling error of Gaussian moments: sd(mean_i) = sqrt(C_ii / N),
    # sd(S_ij) = sqrt((C_ii C_jj + C_ij^2) / N); 6 sd per entry.
    C = true.W @ true.W.T + true.sigma2 * np.eye(D)
    d = np.diag(C)
    assert np.all(np.abs(fit.b - true.b) <= 6 * np.sqrt(d / N))
    cov_sd = np.sqrt((np.outer(d, d) + C**2) / N)
    assert np.all(np.abs(fit.W @ fit.W.T + fit.sigma2 * np.eye(D) - C) <= 6 * cov_sd)
    # W W^T is identified only up to the noise split; sigma2 is a mean of D - Z eigenvalues.
    assert np.all(
        np.abs(fit.W @ fit.W.T - true.W @ true.W.T) <= 6 * cov_sd + 6 * true.sigma2 * np.sqrt(2 / N)
    )
    assert abs(fit.sigma2 - true.sigma2) <= 6 * true.sigma2 * np.sqrt(2 / (N * (D - Z)))

    ll_fit = ppca_log_marginal(x, *fit).sum()
    ll_true = ppca_log_marginal(x, *true).sum()
    assert ll_fit >= ll_true
    # The maximum has a closed form in the eigenvalues of the ML covariance (Tipping & Bishop).
    lam = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    ll_max = (
        -0.5
        * N
        * (D * np.log(2 * np.pi) + np.log(lam[:Z]).sum() + (D - Z) * np.log(fit.sigma2) + D)
    )
    assert_allclose(ll_fit, ll_max, rtol=1e-10)
    # Columns are orthogonal (R = I) with a fixed sign.
    gram = fit.W.T @ fit.W
    assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-10)


def test_ppca_fit_is_a_stationary_point_under_rotation_and_perturbation():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 4))
    fit = ppca_fit(x, 2)
    ll = ppca_log_marginal(x, *fit).sum()
    theta = 0.7
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert_allclose(ppca_log_marginal(x, fit.W @ R, fit.b, fit.sigma2).sum(), ll, rtol=1e-12)
    for _ in range(5):
        dW = 1e-3 * rng.standard_normal(fit.W.shape)
        assert ppca_log_marginal(x, fit.W + dW, fit.b, fit.sigma2 * 1.001).sum() <= ll


# ---------------------------------------------------------------------------------------------
# GMM


def brute_force_gmm_log_joint(x, params):
    return np.stack(
        [lp + multivariate_normal(m, np.diag(v)).logpdf(x) for lp, m, v in zip(*params)], axis=-1
    )  # (B, C)


@pytest.mark.parametrize("B, C, D", [(1, 1, 1), (9, 3, 2), (5, 4, 6)])
def test_gmm_log_marginal_and_posterior_match_brute_force(B, C, D):
    rng = np.random.default_rng(10)
    params = make_gmm(rng, C, D)
    x = rng.standard_normal((B, D)) * 3.0
    lj = brute_force_gmm_log_joint(x, params).reshape(B, C)
    want = np.log(np.exp(lj).sum(axis=1))  # direct sum of densities
    assert_allclose(gmm_log_joint(x, *params), lj, rtol=1e-10)
    assert_allclose(gmm_log_marginal(x, *params), want, rtol=1e-10)
    resp = gmm_posterior(x, *params)
    assert_allclose(resp, np.exp(lj) / np.exp(lj).sum(axis=1, keepdims=True), rtol=1e-10)
    assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-12)
    assert_allclose(np.exp(gmm_log_posterior(x, *params)), resp, rtol=1e-12)


def test_gmm_log_marginal_is_finite_far_from_every_mean():
    # Every density underflows to 0 here; the log-sum-exp must not.
    params = GMM(np.log([0.25, 0.75]), np.array([[0.0], [1.0]]), np.array([[1.0], [1.0]]))
    x = np.array([[60.0]])
    with np.errstate(divide="ignore"):
        assert np.log(np.exp(brute_force_gmm_log_joint(x, params)).sum()) == -np.inf
    lj = -0.5 * (np.log(2 * np.pi) + (x[0, 0] - params.means[:, 0]) ** 2) + params.log_pi
    assert_allclose(gmm_log_marginal(x, *params), [logsumexp(lj)], rtol=1e-14)
    assert_allclose(gmm_posterior(x, *params), [[0.0, 1.0]], atol=1e-20)


def test_gmm_zero_weight_component():
    params = GMM(np.array([0.0, -np.inf]), np.array([[0.0], [5.0]]), np.ones((2, 1)))
    x = np.array([[5.0], [0.0]])
    want = multivariate_normal(0.0, 1.0).logpdf(x[:, 0])
    assert_allclose(gmm_log_marginal(x, *params), want, rtol=1e-12)
    assert np.all(gmm_posterior(x, *params)[:, 1] == 0.0)
    _, c = gmm_sample(np.random.default_rng(11), params, 200)
    assert np.all(c == 0)


def test_gmm_sample_moments():
    rng = np.random.default_rng(12)
    params = make_gmm(rng, 3, 2)
    n = 40_000
    x, c = gmm_sample(rng, params, n)
    assert x.shape == (n, 2) and c.shape == (n,)
    pi = np.exp(params.log_pi)
    freq = np.bincount(c, minlength=3) / n
    assert np.all(np.abs(freq - pi) <= 5 * np.sqrt(pi * (1 - pi) / n))
    for k in range(3):
        xk = x[c == k]
        assert np.all(
            np.abs(xk.mean(0) - params.means[k]) <= 5 * np.sqrt(params.variances[k] / len(xk))
        )


def well_separated_gmm():
    return GMM(
        np.log([0.2, 0.3, 0.5]),
        np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, -1.0]]),
        np.array([[1.0, 0.5], [0.6, 1.2], [0.8, 0.8]]),
    )


def test_gmm_fit_em_is_monotone_and_recovers_components():
    rng = np.random.default_rng(13)
    true = well_separated_gmm()
    n = 3000
    x, _ = gmm_sample(rng, true, n)
    fit, history = gmm_fit_em(x, 3, rng)
    assert history.ndim == 1 and len(history) >= 2
    assert np.all(np.diff(history) >= 0.0)
    assert_allclose(history[-1], gmm_log_marginal(x, *fit).mean(), rtol=1e-12)
    assert_allclose(logsumexp(fit.log_pi), 0.0, atol=1e-12)

    # Match components up to permutation by mean distance.
    cost = ((true.means[:, None, :] - fit.means[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]
    pi, n_k = np.exp(true.log_pi), np.exp(true.log_pi) * n
    # Well separated, so each component's estimates have (nearly) their single-Gaussian
    # sampling error; 6 sd.
    assert np.all(np.abs(np.exp(fit.log_pi[perm]) - pi) <= 6 * np.sqrt(pi * (1 - pi) / n))
    assert np.all(
        np.abs(fit.means[perm] - true.means) <= 6 * np.sqrt(true.variances / n_k[:, None])
    )
    assert np.all(
        np.abs(fit.variances[perm] - true.variances)
        <= 6 * true.variances * np.sqrt(2 / n_k[:, None])
    )
    # Near the global optimum, so at least as likely as the truth on the same data.
    assert history[-1] >= gmm_log_marginal(x, *true).mean()


def test_gmm_fit_em_variance_floor_bounds_collapse():
    rng = np.random.default_rng(14)
    x = np.concatenate([np.zeros((50, 2)), rng.standard_normal((200, 2)) + 8.0])
    fit, history = gmm_fit_em(x, 2, rng, reg=1e-3)
    assert np.all(np.diff(history) >= 0.0)
    assert np.all(np.isfinite(history))
    assert np.all(fit.variances >= 1e-3)
    assert_allclose(np.sort(fit.variances.min(axis=1))[0], 1e-3)  # the collapsed component


def test_gmm_fit_em_is_deterministic_given_rng():
    x, _ = gmm_sample(np.random.default_rng(15), well_separated_gmm(), 300)
    a, ha = gmm_fit_em(x, 3, np.random.default_rng(16), n_iter=20)
    b, hb = gmm_fit_em(x, 3, np.random.default_rng(16), n_iter=20)
    assert_allclose(ha, hb, rtol=0)
    for u, v in zip(a, b):
        assert_allclose(u, v, rtol=0)
    assert len(ha) <= 21


def log_standard_error(log_w):
    """Delta-method sd of log mean(w) over axis 0, computed from the measured weights."""
    w = np.exp(log_w - log_w.max(axis=0))  # (K, B), scale-free
    K = log_w.shape[0]
    return w.std(axis=0, ddof=1) / (np.sqrt(K) * w.mean(axis=0))


def test_gmm_importance_estimate_converges_within_standard_error():
    rng = np.random.default_rng(17)
    params = make_gmm(rng, 3, 2, spread=1.5)
    x, _ = gmm_sample(rng, params, 100)
    exact = gmm_log_marginal(x, *params)
    # Defensive proposal, half uniform and half posterior: weights are bounded by 2 p(x),
    # so the measured standard error is a reliable yardstick even at moderate K.
    log_q = np.logaddexp(np.log(0.5) - np.log(3), np.log(0.5) + gmm_log_posterior(x, *params))
    rms = {}
    for K in (100, 1_000, 10_000):
        est, log_w = gmm_importance_log_marginal(x, params, log_q, K, rng, return_log_weights=True)
        assert est.shape == (100,) and log_w.shape == (K, 100)
        assert_allclose(est, logsumexp(log_w, axis=0) - np.log(K), rtol=1e-14)
        se = log_standard_error(log_w)
        z = (est - exact) / se
        assert 0.6 < np.sqrt(np.mean(z**2)) < 1.5  # errors are O(se)
        if K >= 1_000:  # the delta method's normal tail is only trusted once K is large
            assert np.max(np.abs(z)) < 5.0
        rms[K] = np.sqrt(np.mean((est - exact) ** 2))
    # sd falls as 1/sqrt(K): a factor 10 from K = 100 to 10 000; allow 5.
    assert rms[10_000] < rms[1_000] < rms[100]
    assert rms[10_000] < rms[100] / 5


def test_gmm_importance_estimate_with_uniform_proposal():
    rng = np.random.default_rng(18)
    params = make_gmm(rng, 4, 2, spread=1.0)
    x, _ = gmm_sample(rng, params, 20)
    est, log_w = gmm_importance_log_marginal(
        x, params, np.full(4, -np.log(4)), 20_000, rng, return_log_weights=True
    )
    exact = gmm_log_marginal(x, *params)
    assert np.all(np.abs(est - exact) < 5 * log_standard_error(log_w))


@pytest.mark.parametrize("K", [1, 7, 256])
def test_gmm_importance_estimate_is_exact_with_posterior_proposal(K):
    rng = np.random.default_rng(19)
    params = make_gmm(rng, 3, 2)
    x, _ = gmm_sample(rng, params, 30)
    exact = gmm_log_marginal(x, *params)
    est, log_w = gmm_importance_log_marginal(
        x, params, gmm_log_posterior(x, *params), K, rng, return_log_weights=True
    )
    assert_allclose(log_w, np.broadcast_to(exact, (K, 30)), rtol=1e-12)
    assert_allclose(est, exact, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# validation at the public boundary


def test_ppca_rejects_bad_input():
    rng = np.random.default_rng(20)
    W, b, sigma2 = make_ppca(rng, 5, 2)
    x = rng.standard_normal((3, 5))
    with pytest.raises(
        ValueError,
        match=r"ppca_log_marginal: expected x.shape\[1\] == "
        r"W.shape\[0\] \(5\), got x of shape \(3, 4\)",
    ):
        ppca_log_marginal(x[:, :4], W, b, sigma2)
    with pytest.raises(ValueError, match=r"expected b.shape\[0\] == W.shape\[0\] \(5\)"):
        ppca_posterior(x, W, b[:4], sigma2)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(
            InvalidParameterError,
            match=r"The 'sigma2' parameter of ppca_log_marginal must be a "
            r"float in \(0\.0, inf\)",
        ):
            ppca_log_marginal(x, W, b, bad)
    x_nan = x.copy()
    x_nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"ppca_log_marginal: expected x to contain no NaN"):
        ppca_log_marginal(x_nan, W, b, sigma2)
    with pytest.raises(TypeError, match=r"expected x to be a numpy.ndarray"):
        ppca_log_marginal(x.tolist(), W, b, sigma2)
    with pytest.raises(TypeError, match=r"expected x to have dtype float32 or float64"):
        ppca_log_marginal(x.astype(np.int64), W, b, sigma2)
    with pytest.raises(ValueError, match=r"ppca_log_joint: expected z to have shape \(K, 3, 2\)"):
        ppca_log_joint(x, rng.standard_normal((4, 3, 3)), W, b, sigma2)
    with pytest.raises(
        InvalidParameterError, match=r"The 'Z' parameter of ppca_fit must be an int in \[1, 4\]"
    ):
        ppca_fit(x, 5)
    for degenerate in (np.ones((10, 3)), rng.standard_normal((3, 5))):  # rank 0; rank 2 = Z
        with pytest.raises(
            ValueError,
            match=r"ppca_fit: expected the data covariance to have "
            r"positive variance outside its top Z=2",
        ):
            ppca_fit(degenerate, 2)
    with pytest.raises(
        TypeError,
        match=r"ppca_sample: expected rng to be a "
        r"numpy.random.Generator, got int",
    ):
        ppca_sample(0, PPCA(W, b, sigma2), 3)
    with pytest.raises(TypeError, match=r"ppca_sample: expected model to be a PPCA, got tuple"):
        ppca_sample(rng, (W, b, sigma2), 3)
    with pytest.raises(InvalidParameterError, match=r"The 'n' parameter of ppca_sample"):
        ppca_sample(rng, PPCA(W, b, sigma2), 0)


def test_gmm_rejects_bad_input():
    rng = np.random.default_rng(21)
    params = make_gmm(rng, 3, 2)
    x = rng.standard_normal((4, 2))
    with pytest.raises(
        ValueError,
        match=r"gmm_log_marginal: expected x.shape\[1\] == "
        r"means.shape\[1\] \(2\), got x of shape \(4, 3\)",
    ):
        gmm_log_marginal(np.ones((4, 3)), *params)
    bad_var = params.variances.copy()
    bad_var[1, 0] = 0.0
    with pytest.raises(
        ValueError,
        match=r"gmm_posterior: expected variances to be positive, "
        r"got 1 entries <= 0",
    ):
        gmm_posterior(x, params.log_pi, params.means, bad_var)
    with pytest.raises(ValueError, match=r"expected variances to have the shape of means"):
        gmm_log_marginal(x, params.log_pi, params.means, params.variances[:, :1])
    with pytest.raises(ValueError, match=r"expected log_pi to be normalized"):
        gmm_log_marginal(x, params.log_pi + 0.1, params.means, params.variances)
    with pytest.raises(ValueError, match=r"expected log_pi to contain no NaN"):
        gmm_log_marginal(x, np.array([np.nan, 0.0, 0.0]), params.means, params.variances)
    with pytest.raises(
        ValueError,
        match=r"expected means to have shape \(C, D\) with "
        r"C == log_pi.shape\[0\] \(3\)",
    ):
        gmm_log_marginal(x, params.log_pi, params.means[:2], params.variances)
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"gmm_fit_em: expected x to contain no NaN"):
        gmm_fit_em(x_nan, 2, rng)
    with pytest.raises(
        InvalidParameterError, match=r"The 'C' parameter of gmm_fit_em must be an int in \[1, 4\]"
    ):
        gmm_fit_em(x, 5, rng)
    with pytest.raises(InvalidParameterError, match=r"The 'reg' parameter of gmm_fit_em"):
        gmm_fit_em(x, 2, rng, reg=0.0)
    with pytest.raises(
        TypeError,
        match=r"gmm_fit_em: expected rng to be a "
        r"numpy.random.Generator",
    ):
        gmm_fit_em(x, 2, 42)
    with pytest.raises(TypeError, match=r"gmm_sample: expected params to be a GMM"):
        gmm_sample(rng, tuple(params), 5)
    with pytest.raises(
        ValueError,
        match=r"gmm_importance_log_marginal: expected "
        r"proposal_log_probs to have shape \(3,\) or \(4, 3\)",
    ):
        gmm_importance_log_marginal(x, params, np.full(2, -np.log(2)), 10, rng)
    with pytest.raises(ValueError, match=r"expected proposal_log_probs to be normalized"):
        gmm_importance_log_marginal(x, params, np.zeros(3), 10, rng)
    with pytest.raises(
        InvalidParameterError, match=r"The 'K' parameter of gmm_importance_log_marginal"
    ):
        gmm_importance_log_marginal(x, params, np.full(3, -np.log(3)), 0, rng)
