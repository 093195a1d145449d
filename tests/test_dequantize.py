"""Dequantization: the logistic density and the logit-normal q(u|x) by finite differences and
scipy, and the bounds below the exact discrete log-likelihood of a small enumerable model."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import logsumexp

from lvmcore import InvalidParameterError
from lvmcore.dequantize import (
    VariationalDequantizer,
    bits_per_dim,
    dequantized_log_weight,
    logit_normal_backward,
    logit_normal_forward,
    uniform_dequantize,
)
from lvmcore.losses import logistic_nll_backward, logistic_nll_forward
from lvmcore.testing import check_vjp, gradcheck

# ------------------------------------------------------------------ the logistic density


@pytest.mark.parametrize("scale_shape", ["vector", "full"])
def test_logistic_nll_backward_every_argument(rng, scale_shape):
    mean = rng.standard_normal((3, 4))
    log_scale = 0.3 * rng.standard_normal((4,) if scale_shape == "vector" else (3, 4))
    x = rng.standard_normal((2, 3, 4))  # a leading sample axis, broadcast against mean
    check_vjp(
        logistic_nll_forward,
        logistic_nll_backward,
        [mean, log_scale, x],
        names=["mean", "log_scale", "x"],
    )


def test_logistic_nll_is_scipys(rng):
    mean, log_scale = rng.standard_normal((5, 3)), rng.standard_normal(3)
    x = 4 * rng.standard_normal((5, 3))
    want = -stats.logistic(mean, np.exp(log_scale)).logpdf(x).sum(axis=1)
    np.testing.assert_allclose(logistic_nll_forward(mean, log_scale, x)[0], want, rtol=1e-12)
    far = logistic_nll_forward(np.zeros((1, 1)), np.zeros(1), np.array([[-800.0]]))[0]
    np.testing.assert_allclose(far, [800.0 + 2 * np.log1p(np.exp(-800.0))], rtol=1e-15)


# ------------------------------------------------------------------ the logit-normal q(u | x)


def test_logit_normal_backward(rng):
    mu, logvar = rng.standard_normal((3, 4)), 0.4 * rng.standard_normal((3, 4))
    eps = rng.standard_normal((2, 3, 4))
    check_vjp(
        logit_normal_forward,
        logit_normal_backward,
        [mu, logvar, eps],
        names=["mu", "logvar"],
        wrt=[0, 1],
    )


def test_logit_normal_density_is_the_change_of_variables_and_integrates_to_one(rng):
    mu, logvar = np.array([[0.7, -1.2]]), np.array([[0.3, -0.5]])
    eps = rng.standard_normal((6, 1, 2))
    (u, log_q), _ = logit_normal_forward(mu, logvar, eps)
    sd = np.exp(0.5 * logvar)
    s = np.log(u) - np.log1p(-u)
    want = (stats.norm(mu, sd).logpdf(s) - np.log(u * (1 - u))).sum(axis=-1)
    np.testing.assert_allclose(log_q, want, rtol=1e-10)

    def q1(v):
        (_, lq), _ = logit_normal_forward(mu[:, :1], logvar[:, :1], np.array([[[v]]]))
        return float(lq[0, 0])

    def density(t):  # integrate q over (0, 1) in u = sigmoid(s)
        e = (math.log(t) - math.log1p(-t) - mu[0, 0]) / sd[0, 0]
        return math.exp(q1(e))

    total, _ = integrate.quad(density, 0, 1, limit=200)
    np.testing.assert_allclose(total, 1.0, rtol=1e-7)


def test_logit_normal_is_finite_where_u_rounds_to_one():
    mu, logvar = np.array([[40.0]], np.float32), np.zeros((1, 1), np.float32)
    (u, log_q), c = logit_normal_forward(mu, logvar, np.zeros((1, 1, 1), np.float32))
    assert u[0, 0, 0] == 1.0 and np.isfinite(log_q).all()
    dmu, dlv = logit_normal_backward((np.ones_like(u), np.ones((1, 1), np.float32)), c)
    assert np.isfinite(dmu).all() and np.isfinite(dlv).all()
    np.testing.assert_allclose(
        log_q, -0.5 * np.log(2 * np.pi) + 40.0 + 2 * np.log1p(np.exp(-40.0)), rtol=1e-6
    )


def test_variational_dequantizer_backward_every_parameter(rng):
    L, D = 5, 3
    deq = VariationalDequantizer((D, 6, D), L, "tanh", rng, dtype=np.float64)
    x = rng.integers(0, L, (4, D))
    eps = rng.standard_normal((2, 4, D))
    (y, log_q), cache = deq.forward(x, eps)
    assert y.shape == (2, 4, D) and log_q.shape == (2, 4)
    assert np.all((y >= x / L) & (y <= (x + 1) / L))
    Gy, Gq = rng.standard_normal(y.shape), rng.standard_normal(log_q.shape)
    deq.zero_grad()
    assert deq.backward((Gy, Gq), cache) is None

    def loss():
        (y2, lq2), _ = deq.forward(x, eps)
        return np.sum(y2 * Gy) + np.sum(lq2 * Gq)

    gradcheck(loss, deq.params, {k: g.copy() for k, g in deq.grads.items()})


def test_uniform_dequantize(rng):
    x = rng.integers(0, 4, (3, 2))
    u = rng.random((5, 3, 2))
    y, log_det = uniform_dequantize(x, u, 4)
    np.testing.assert_allclose(y, (x + u) / 4, rtol=1e-15)
    assert log_det == pytest.approx(-2 * math.log(4))
    y32, _ = uniform_dequantize(x, u.astype(np.float32), 4)
    assert y32.dtype == np.float32


# ------------------------------------------------------------------ the bounds are bounds


class _TwoClusterModel:
    """p_y(y) = sum_k pi_k prod_d Logistic(y_d; m_kd, s_kd): a latent-variable model with a
    binary latent, whose discrete likelihood P(x) of each cell is exact by logistic CDFs."""

    def __init__(self, rng, D, L):
        self.D, self.L = D, L
        self.log_pi = np.log([0.35, 0.65])
        self.m = rng.random((2, D))
        self.log_s = np.log(0.06 + 0.04 * rng.random((2, D)))  # sharp inside a cell of 1/L

    def log_p_y(self, y):
        """(log p_y (*S, B), d log p_y / dy (*S, B, D))."""
        parts, caches = [], []
        for k in range(2):
            nll, c = logistic_nll_forward(self.m[k], self.log_s[k], y)
            parts.append(self.log_pi[k] - nll)
            caches.append(c)
        parts = np.stack(parts, -1)
        lp = logsumexp(parts, axis=-1)
        r = np.exp(parts - lp[..., None])  # responsibilities
        dy = -sum(logistic_nll_backward(r[..., k], caches[k])[2] for k in range(2))
        return lp, dy

    def exact_log_px(self, x):
        lo, hi = x / self.L, (x + 1) / self.L  # the cell of x in y's scale
        s = np.exp(self.log_s)
        cell = [
            np.log(
                stats.logistic.cdf(hi, self.m[k], s[k]) - stats.logistic.cdf(lo, self.m[k], s[k])
            ).sum(-1)
            for k in range(2)
        ]
        return logsumexp(np.stack(cell, -1) + self.log_pi, axis=-1)


def test_dequantized_bounds_lie_below_the_exact_discrete_log_likelihood():
    rng = np.random.default_rng(41)
    D, L, S = 2, 4, 4000
    model = _TwoClusterModel(rng, D, L)
    x = np.array(list(itertools.product(range(L), repeat=D)))  # every discrete point (16, 2)
    exact = model.exact_log_px(x)
    assert np.exp(exact).sum() < 1  # the density also has mass outside [0, 1)^D

    def report(log_w):
        b = log_w.mean(axis=0)
        return b, log_w.std(axis=0) / np.sqrt(S)

    # uniform dequantization: q = U[0, 1)^D
    y, log_det = uniform_dequantize(x, rng.random((S, *x.shape)), L)
    b_unif, se_unif = report(dequantized_log_weight(model.log_p_y(y)[0], D, L))
    assert np.all(b_unif < exact + 3 * se_unif)
    assert np.all(b_unif + 5 * se_unif < exact)  # below, not merely within noise

    # variational dequantization, a logit-normal q(u | x) per point, fitted by gradient
    # ascent on one set of noise and evaluated on fresh noise
    mu, logvar = np.zeros(x.shape), np.zeros(x.shape)
    eps_fit = rng.standard_normal((256, *x.shape))
    for _ in range(300):
        (u, log_q), c = logit_normal_forward(mu, logvar, eps_fit)
        _, dlogp_dy = model.log_p_y((x + u) / L)
        w = np.full(log_q.shape, 1.0 / len(eps_fit))
        dmu, dlv = logit_normal_backward((w[..., None] * dlogp_dy / L, -w), c)
        mu, logvar = mu + 0.5 * dmu, logvar + 0.5 * dlv
    (u, log_q), _ = logit_normal_forward(mu, logvar, rng.standard_normal((S, *x.shape)))
    log_w = dequantized_log_weight(model.log_p_y((x + u) / L)[0], D, L, log_q)
    b_var, se_var = report(log_w)
    assert np.all(b_var < exact + 3 * se_var)
    assert np.all(b_var > b_unif)  # the learned q tightens every point's bound
    assert np.mean(exact - b_var) < 0.5 * np.mean(exact - b_unif)

    # in bits per dimension, the bounds cost more bits than the exact likelihood
    exact_bpd = bits_per_dim(exact, D)
    assert np.all(bits_per_dim(b_unif, D) > exact_bpd)
    np.testing.assert_allclose(exact_bpd, -exact / (D * math.log(2)), rtol=1e-15)


def test_uniform_bound_is_exact_for_a_density_flat_on_every_cell():
    """Equality in Jensen when p is constant on the cell: here the uniform density on [0, 1)^D
    gives log P(x) = -D log L exactly, for every noise draw."""
    rng = np.random.default_rng(2)
    D, L = 3, 5
    x = rng.integers(0, L, (4, D))
    y, log_det = uniform_dequantize(x, rng.random((7, 4, D)), L)
    log_w = dequantized_log_weight(np.zeros(y.shape[:-1]), D, L)  # log p_y = 0 on [0, 1)^D
    np.testing.assert_allclose(log_w, -D * math.log(L), rtol=1e-15)
    np.testing.assert_allclose(bits_per_dim(log_w, D), math.log2(L), rtol=1e-15)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "x, match",
    [
        (np.array([[0.5, 1.0]]), "non-integer values"),
        (np.array([[0, 4]]), r"levels in \[0, 4\)"),
        (np.array([[-1, 0]]), r"levels in \[0, 4\)"),
    ],
)
def test_bad_levels_name_x(rng, x, match):
    with pytest.raises(ValueError, match=f"uniform_dequantize: expected x .*{match}"):
        uniform_dequantize(x, rng.random((1, 2)), 4)
    deq = VariationalDequantizer((2, 2), 4, "tanh", rng, dtype=np.float64)
    with pytest.raises(ValueError, match=f"VariationalDequantizer.forward: expected x .*{match}"):
        deq.forward(x, rng.standard_normal((1, 1, 2)))


def test_bad_noise_and_hyper_parameters(rng):
    x = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match=r"expected u to lie in \[0, 1\)"):
        uniform_dequantize(x, np.ones((2, 3)), 4)
    with pytest.raises(ValueError, match=r"expected u of shape \(\*S, 2, 3\)"):
        uniform_dequantize(x, np.zeros((2, 2)), 4)
    with pytest.raises(InvalidParameterError, match="'levels' parameter of uniform_dequantize"):
        uniform_dequantize(x, np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="VariationalDequantizer: expected sizes to start and end"):
        VariationalDequantizer((3, 4, 2), 4, "tanh", rng)
    with pytest.raises(ValueError, match="dequantized_log_weight: expected log_q to have"):
        dequantized_log_weight(np.zeros((2, 3)), 3, 4, np.zeros(3))
    with pytest.raises(ValueError, match="logistic_nll_forward: expected mean, log_scale and x"):
        logistic_nll_forward(np.zeros((2, 3)), np.zeros(3), np.zeros((2, 4)))


def test_float32_matches_float64(rng):
    L, D = 4, 3
    x = rng.integers(0, L, (5, D))
    eps = rng.standard_normal((2, 5, D))
    G = rng.standard_normal((2, 5))
    out = {}
    for dtype in (np.float64, np.float32):
        deq = VariationalDequantizer((D, 4, D), L, "tanh", np.random.default_rng(1), dtype=dtype)
        (y, log_q), c = deq.forward(x, eps.astype(dtype))
        nll, lc = logistic_nll_forward(np.full(D, 0.5, dtype), np.full(D, -1.0, dtype), y)
        deq.backward((logistic_nll_backward(G.astype(dtype), lc)[2], G.astype(dtype)), c)
        out[dtype] = (y, log_q, nll, *deq.grads.values())
        assert all(a.dtype == dtype for a in out[dtype])
    for a, b in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
