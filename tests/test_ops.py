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


def test_bernoulli_nll_with_bias_backward(rng):
    """The output bias read inside the kernel: finite differences over logits and bias (the
    bias gradient is the column sum of the cached gradient), and the values of adding it
    first, bit for bit, on both CPU backends."""
    logits = rng.standard_normal((6, 9)) * 3
    x = (rng.random((3, 9)) < 0.5).astype(float)
    bias = rng.standard_normal(9)

    def backward(d, c):
        dl = bernoulli_nll_backward(d, c)
        return dl, dl.sum(axis=0)

    check_vjp(
        lambda l, b: bernoulli_nll_forward(l, x, bias=b),
        backward,
        [logits, bias],
        names=["logits", "bias"],
    )
    for dtype in (np.float32, np.float64):
        l32, x32, b32 = (a.astype(dtype) for a in (logits, x, bias))
        for backend in ("numba", "numpy"):
            want, wc = bernoulli_nll_forward(l32 + b32, x32, backend=backend)
            got, gc = bernoulli_nll_forward(l32, x32, bias=b32, backend=backend)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(gc.grad, wc.grad)
    with pytest.raises(ValueError, match=r"bernoulli_nll_forward: expected bias to have shape"):
        bernoulli_nll_forward(logits, x, bias=np.zeros(8))
    with pytest.raises(TypeError, match=r"expected bias to have dtype float64 \(logits'\)"):
        bernoulli_nll_forward(logits, x, bias=np.zeros(9, np.float32))


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


# --- bad input: shapes and dtypes are checked before any kernel or arithmetic -------------


def test_bernoulli_nll_checks_shapes_before_the_kernel():
    # logits wider than x made the Numba kernel read past x (a segfault at this width)
    with pytest.raises(ValueError, match=r"bernoulli_nll_forward: expected x.shape\[1\] =="):
        bernoulli_nll_forward(np.zeros((2, 10**7), np.float32), np.ones((2, 6), np.float32))
    # x wider than logits, and rows that are not a multiple of x's, gave wrong numbers
    with pytest.raises(ValueError, match=r"expected x.shape\[1\] == logits.shape\[1\] \(6\)"):
        bernoulli_nll_forward(np.zeros((2, 6), np.float32), np.ones((2, 9), np.float32))
    with pytest.raises(ValueError, match=r"logits.shape\[0\] to be a multiple S \* B of x"):
        bernoulli_nll_forward(np.zeros((5, 6), np.float32), np.ones((2, 6), np.float32))
    with pytest.raises(ValueError, match=r"multiple S \* B of x.shape\[0\] \(0\)"):
        bernoulli_nll_forward(np.zeros((0, 6), np.float32), np.ones((0, 6), np.float32))
    with pytest.raises(ValueError, match="bernoulli_nll_forward: expected x to have 2 dim"):
        bernoulli_nll_forward(np.zeros((2, 6)), np.ones(6))
    with pytest.raises(TypeError, match=r"expected x to have dtype float32 \(logits'\)"):
        bernoulli_nll_forward(np.zeros((2, 6), np.float32), np.ones((2, 6), np.uint8))


def test_bernoulli_nll_strided_input_is_copied_and_correct(rng):
    logits = rng.standard_normal((6, 8))
    x = (rng.random((3, 8)) < 0.5).astype(float)
    want, _ = bernoulli_nll_forward(logits, x)
    big = np.zeros((6, 16))
    big[:, ::2] = logits
    got, cache = bernoulli_nll_forward(big[:, ::2], np.asfortranarray(x), overwrite_logits=True)
    np.testing.assert_array_equal(got, want)
    assert np.all(big[:, 1::2] == 0)  # the strided input was not written through
    with pytest.raises(ValueError, match=r"bernoulli_nll_backward: expected dnll to have shape"):
        bernoulli_nll_backward(np.ones(3), cache)
    _, no_grad = bernoulli_nll_forward(logits, x, need_grad=False)
    with pytest.raises(ValueError, match="made with need_grad=False"):
        bernoulli_nll_backward(np.ones(6), no_grad)


def test_log_softmax_propagates_nan():
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf]])
    y, cache = ops.log_softmax_forward(x, axis=1)
    assert np.isnan(y[0]).all()  # not -inf: the NaN is not mistaken for a masked row
    assert np.isfinite(y[1]).all() and np.isneginf(y[2]).all()
    assert np.isnan(cache.probs[0]).all() and not np.isnan(cache.probs[1:]).any()
    assert np.isnan(ops.softmax(x, axis=1)[0]).all()
    assert np.isnan(ops.logsumexp(x, axis=1)[0])


@pytest.mark.parametrize(
    "call",
    [
        lambda a: ops.log_softmax_forward(a),
        lambda a: ops.softmax(a),
        lambda a: ops.logsumexp(a),
        lambda a: gaussian_nll_forward(a, np.zeros(3), np.zeros((2, 3))),
        lambda a: gaussian_nll_forward(np.zeros((2, 3)), np.zeros(3), a),
        lambda a: ops.sigmoid(a),
        lambda a: bernoulli_nll_forward(a, np.ones((2, 3))),
        lambda a: kl_term_forward(a),
    ],
)
def test_integer_input_is_a_type_error_not_cast_back(call):
    # integer input was cast back to integers (log_softmax, gaussian_nll: wrong values)
    with pytest.raises(TypeError, match=r"got int64\. Integer and boolean input is never cast"):
        call(np.arange(6).reshape(2, 3))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda a: ops.sigmoid(a), "sigmoid: expected x"),
        (
            lambda a: bernoulli_nll_forward(a, np.ones((2, 3))),
            "bernoulli_nll_forward: expected logits",
        ),
        (lambda a: kl_term_forward(a), "kl_term_forward: expected kl_per_dim"),
        (lambda a: ops.log_softmax_forward(a), "log_softmax_forward: expected x"),
    ],
)
def test_complex_input_is_a_type_error_never_drops_the_imaginary_part(call, name):
    z = np.full((2, 3), 1.0 + 2.0j)
    with pytest.raises(
        TypeError, match=rf"{name} to have dtype float32 or float64, got complex128"
    ):
        call(z)


def test_non_arrays_and_bad_shapes_name_the_argument():
    with pytest.raises(TypeError, match=r"sigmoid: expected x to be a numpy.ndarray .* got list"):
        ops.sigmoid([0.0, 1.0])
    with pytest.raises(TypeError, match=r"softplus: expected x .* got float"):
        ops.softplus(1.0)
    with pytest.raises(
        TypeError, match=r"tanh_forward: expected x .* got object\. An array of Python objects"
    ):
        ops.tanh_forward(np.array([1.0, None]))
    with pytest.raises(TypeError, match=r"relu_forward: .* got float16\. float16 is not supp"):
        ops.relu_forward(np.zeros(3, np.float16))
    with pytest.raises(ValueError, match=r"linear_forward: expected W to have shape \(3, \*\)"):
        ops.linear_forward(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(5))
    with pytest.raises(ValueError, match=r"linear_forward: expected b to have shape \(5\)"):
        ops.linear_forward(np.zeros((2, 3)), np.zeros((3, 5)), np.zeros(4))
    y, cache = ops.tanh_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"tanh_backward: expected dy to have shape \(2, 3\)"):
        ops.tanh_backward(np.zeros((3, 2)), cache)
    with pytest.raises(ValueError, match=r"logsumexp: expected x to have at least one entry"):
        ops.logsumexp(np.zeros((2, 0)))
    with pytest.raises(ValueError, match=r"The 'axis' parameter of softmax must be an int in"):
        ops.softmax(np.zeros((2, 3)), axis=2)
    _, c = ops.logsumexp_forward(np.zeros((2, 3)), axis=0)
    with pytest.raises(ValueError, match=r"logsumexp_backward: expected dout to have shape \(3\)"):
        ops.logsumexp_backward(np.zeros(2), c)
    with pytest.raises(TypeError, match=r"softmax_backward: expected cache to be the Softmax"):
        ops.softmax_backward(np.zeros((2, 3)), (np.zeros((2, 3)), 0))
    with pytest.raises(ValueError, match=r"gaussian_nll_forward: expected logvar to have shape"):
        gaussian_nll_forward(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"kl_term_forward: expected kl_per_dim to have at le"):
        kl_term_forward(np.zeros((0, 3)))


def test_a_free_bits_floor_beyond_float32_meets_the_kl_in_float64():
    """A floor of 1e300 on float32 KLs: the term is finite (Z times the floor), not inf, so a
    KL weight of 0 gives a finite loss instead of 0 * inf = NaN."""
    from lvmcore.losses import kl_term_forward

    kl = np.full((3, 2), 0.5, np.float32)
    term, cache = kl_term_forward(kl, 1e300)
    assert term == 2e300 and 0.0 * term == 0.0
    assert not cache.active.any()
