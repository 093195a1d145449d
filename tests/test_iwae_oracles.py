"""Importance-weighted bounds against exact likelihoods: a linear-Gaussian VAE set to
a pPCA, and a Gaussian mixture."""

import numpy as np

from lvmcore.models import IWAE
from lvmcore.testing.oracles import ppca_log_marginal, ppca_posterior

D, Z, SIGMA2 = 6, 2, 0.3


def _ppca(rng):
    # orthogonal columns make the exact posterior covariance diagonal, so a
    # mean-field q can equal it exactly
    q, _ = np.linalg.qr(rng.standard_normal((D, Z)))
    return q * np.array([2.0, 1.2]), rng.standard_normal(D)


def _linear_model(W, b, k, objective="iwae"):
    """IWAE with linear encoder and decoder (no hidden layers) and the pPCA's decoder."""
    m = IWAE(
        D,
        Z,
        hidden=(),
        likelihood="gaussian",
        decoder_variance=SIGMA2,
        k=k,
        objective=objective,
        dtype=np.float64,
    )
    m.decoder.params["W0"][...] = W.T
    m.decoder.params["b0"][...] = b
    return m


def _set_exact_posterior(m, W, b):
    M = W.T @ W + SIGMA2 * np.eye(Z)
    A = np.linalg.solve(M, W.T)  # (Z, D): mean = A (x - b)
    enc_W, enc_b = m.encoder.params["W0"], m.encoder.params["b0"]
    enc_W[...] = 0
    enc_W[:, :Z] = A.T
    enc_b[:Z] = -A @ b
    enc_b[Z:] = np.log(np.diag(SIGMA2 * np.linalg.inv(M)))


def test_exact_posterior_makes_every_importance_weight_equal_log_px(rng):
    W, b = _ppca(rng)
    x = rng.standard_normal((20, D)) * 2 + b
    m = _linear_model(W, b, k=7)
    _set_exact_posterior(m, W, b)
    mean, cov = ppca_posterior(x, W, b, SIGMA2)
    mu, logvar = m.encode(x)
    np.testing.assert_allclose(mu, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.exp(logvar), np.broadcast_to(np.diag(cov), mu.shape), rtol=1e-10)
    exact = ppca_log_marginal(x, W, b, SIGMA2)
    log_w = m.log_weights(x, m.draw_noise(rng, x.shape[0]))  # (7, 20)
    np.testing.assert_allclose(log_w, np.broadcast_to(exact, log_w.shape), rtol=1e-10)
    np.testing.assert_allclose(m.log_likelihood(x, rng, k=3), exact, rtol=1e-10)


def test_bounds_are_ordered_and_approach_log_px(rng):
    """L_1 <= L_5 <= L_50 <= log p(x), each E[L_K] estimated over 400 noise draws with
    its measured standard error; L_K approaches log p(x) as K grows."""
    W, b = _ppca(rng)
    x = rng.standard_normal((10, D)) + b
    m = _linear_model(W, b, k=1)
    _set_exact_posterior(m, W, b)
    # a deliberately poor posterior: means shrunk and variances inflated
    m.encoder.params["W0"][:, :Z] *= 0.6
    m.encoder.params["b0"][Z:] += 1.0
    exact = ppca_log_marginal(x, W, b, SIGMA2).mean()
    reps = 400
    est = {}
    for k in (1, 5, 50, 5000):
        mk = IWAE.from_config({**m.config(), "k": k})
        mk.load_parameters(m.parameters())
        draws = np.array(
            [
                mk.bound(x, np.random.default_rng([k, r])).mean()
                for r in range(reps if k < 5000 else 20)
            ]
        )
        est[k] = (draws.mean(), draws.std(ddof=1) / np.sqrt(draws.size))
    gaps = [exact - est[k][0] for k in (1, 5, 50, 5000)]
    for k1, k2 in [(1, 5), (5, 50), (50, 5000)]:
        (a, sa), (c, sc) = est[k1], est[k2]
        assert c - a > 4 * np.hypot(sa, sc), (k1, k2, est)
    mean50, se50 = est[50]
    assert mean50 < exact + 4 * se50
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > -4 * est[5000][1]
    assert gaps[3] < 0.05 * gaps[0]


def test_log_likelihood_converges_to_exact_marginal(rng):
    W, b = _ppca(rng)
    x = rng.standard_normal((8, D)) + b
    m = _linear_model(W, b, k=1)
    _set_exact_posterior(m, W, b)
    m.encoder.params["b0"][Z:] += 0.5  # q wider than the posterior: weights well behaved
    exact = ppca_log_marginal(x, W, b, SIGMA2)
    errs = []
    for k in (10, 100, 5000):
        runs = np.array(
            [m.log_likelihood(x, np.random.default_rng([k, r]), k=k) for r in range(10)]
        )
        errs.append(np.abs(runs.mean(axis=0) - exact).mean())
    assert errs[2] < errs[1] < errs[0]
    # at K = 5000 the estimate sits within 5 measured standard errors of log p(x)
    se = runs.std(axis=0, ddof=1) / np.sqrt(runs.shape[0])
    assert np.all(np.abs(runs.mean(axis=0) - exact) < 5 * se)
    assert errs[2] < 0.01


def test_gaussian_mixture_importance_estimate_converges():
    from lvmcore.testing.oracles import GMM, gmm_importance_log_marginal, gmm_log_marginal

    rng = np.random.default_rng(5)
    params = GMM(
        np.log(np.array([0.2, 0.5, 0.3])),
        rng.standard_normal((3, 4)) * 3,
        np.exp(rng.standard_normal((3, 4)) * 0.3),
    )
    x = rng.standard_normal((6, 4)) * 3
    exact = gmm_log_marginal(x, *params)
    uniform = np.full(3, -np.log(3))
    err = [
        np.abs(gmm_importance_log_marginal(x, params, uniform, k, rng) - exact).max()
        for k in (10, 10000)
    ]
    assert err[1] < err[0] and err[1] < 0.05
