"""Every op's backward against central differences in float64, plus edge values."""

import warnings

import numpy as np
import pytest

from lvmcore import ops
from lvmcore.losses import (
    bernoulli_nll_backward,
    bernoulli_nll_forward,
    gaussian_nll_backward,
    gaussian_nll_forward,
    kl_term_backward,
    kl_term_forward,
)
from lvmcore.testing import check_vjp


def test_linear_backward(rng):
    x, W, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    check_vjp(ops.linear_forward, ops.linear_backward, [x, W, b], names=["x", "W", "b"])


@pytest.mark.parametrize("name", ["tanh", "relu", "softplus", "sigmoid", "log_sigmoid"])
def test_activation_backward(rng, name):
    fwd, bwd = ops.ACTIVATIONS[name]
    x = rng.standard_normal((4, 6)) * 3
    x[np.abs(x) < 0.05] = 0.5  # keep away from relu's kink
    check_vjp(fwd, lambda d, c: (bwd(d, c),), [x], names=["x"])


@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_family_backward(rng, op, axis):
    fwd = getattr(ops, f"{op}_forward")
    bwd = getattr(ops, f"{op}_backward")
    x = rng.standard_normal((5, 7)) * 2
    check_vjp(lambda a: fwd(a, axis), lambda d, c: (bwd(d, c),), [x], names=["x"])


def test_reparam_backward(rng):
    mu, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)) * 0.5
    eps = rng.standard_normal((2, 3, 4))
    check_vjp(
        lambda m, v: ops.reparam_forward(m, v, eps),
        ops.reparam_backward,
        [mu, logvar],
        names=["mu", "logvar"],
    )


def test_bernoulli_nll_backward(rng):
    logits = rng.standard_normal((4, 9)) * 3
    x = (rng.random((4, 9)) < 0.5).astype(float)
    check_vjp(
        lambda l: bernoulli_nll_forward(l, x),
        lambda d, c: (bernoulli_nll_backward(d, c),),
        [logits],
        names=["logits"],
    )


@pytest.mark.parametrize("shared_logvar", [True, False])
def test_gaussian_nll_backward(rng, shared_logvar):
    mean, x = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    logvar = rng.standard_normal(5 if shared_logvar else (4, 5)) * 0.5
    check_vjp(
        lambda m, v: gaussian_nll_forward(m, v, x),
        gaussian_nll_backward,
        [mean, logvar],
        names=["mean", "logvar"],
    )


def test_gaussian_nll_matches_scipy(rng):
    from scipy.stats import norm

    mean, x, logvar = (
        rng.standard_normal((3, 4)),
        rng.standard_normal((3, 4)),
        rng.standard_normal(4),
    )
    nll, _ = gaussian_nll_forward(mean, logvar, x)
    want = -norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(axis=1)
    np.testing.assert_allclose(nll, want, rtol=1e-12)


@pytest.mark.parametrize("free_bits", [0.0, 0.4])
def test_kl_term_backward(rng, free_bits):
    kl = rng.random((6, 5)) * 0.8
    kl[:, 2] += 1.0  # one dimension clearly above the floor
    kl[:, 0] *= 0.1  # one clearly below

    def fwd(k):
        t, c = kl_term_forward(k, free_bits)
        return np.array(t), c

    check_vjp(
        fwd, lambda d, c: (kl_term_backward(float(d), c) * np.ones_like(kl),), [kl], names=["kl"]
    )


def test_free_bits_blocks_gradient_below_floor(rng):
    kl = np.full((4, 3), 0.1)
    kl[:, 1] = 2.0
    term, cache = kl_term_forward(kl, free_bits=0.5)
    assert term == pytest.approx(0.5 + 2.0 + 0.5)
    np.testing.assert_array_equal(kl_term_backward(1.0, cache)[0], [0.0, 0.25, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_sigmoid_exact_for_huge_logits(dtype):
    x = np.array([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.log_sigmoid(x)
        sp = ops.softplus(x)
        s = ops.sigmoid(x)
        dy = ops.log_sigmoid_backward(np.ones_like(x), x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[[0, 1]], x[[0, 1]])  # log sigma(x) = x for very negative x
    assert y[2] == pytest.approx(-50.0 - np.exp(-50.0), rel=1e-7)
    assert y[3] == pytest.approx(-np.log(2.0), rel=1e-7)
    assert y[4] == pytest.approx(-np.exp(-50.0), rel=1e-6)  # not rounded to 0
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(sp)) and np.all(np.isfinite(dy))
    np.testing.assert_array_equal(sp[[5, 6]], x[[5, 6]])
    np.testing.assert_array_equal(
        s,
        [
            0,
            0,
            np.exp(dtype(-50)) / (1 + np.exp(dtype(-50))),
            0.5,
            1 / (1 + np.exp(dtype(-50))),
            1,
            1,
        ],
    )
    assert dy[0] == 1.0 and dy[-1] == 0.0


def test_logsumexp_all_minus_inf_gives_minus_inf_zero_weights_zero_grad():
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, cache = ops.logsumexp_forward(x, axis=1)
        dx = ops.logsumexp_backward(np.ones(2), cache)
        ls, _ = ops.log_softmax_forward(x, axis=1)
        sm = ops.softmax(x, axis=1)
    assert out[0] == -np.inf
    assert out[1] == pytest.approx(np.log(1 + np.e))
    np.testing.assert_array_equal(dx[0], 0.0)
    np.testing.assert_array_equal(sm[0], 0.0)
    assert np.isneginf(ls[0]).all() and ls[1, 1] == -np.inf and np.isfinite(ls[1, [0, 2]]).all()
    assert not np.isnan(dx).any()


def test_logsumexp_large_values_do_not_overflow():
    x = np.array([1e4, 1e4], dtype=np.float32)
    assert ops.logsumexp(x) == pytest.approx(1e4 + np.log(2))
