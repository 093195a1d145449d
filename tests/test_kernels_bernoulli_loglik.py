"""Tests of kernels.bernoulli_loglik: every variant against the reference, edge logits and exact
values, in-place gradients, the backward, finite differences of the reference, agreement with
lvmcore's Bernoulli NLL, bad input."""

import numpy as np
import pytest
from numba import njit

import kernels
from kernels import bernoulli_loglik as BL
from lvmcore.losses.likelihoods import bernoulli_nll_backward, bernoulli_nll_forward
from lvmcore.testing import PARITY_TOLERANCES, check_vjp

DTYPES = [np.float32, np.float64]
# CPU variants (the "cupy_*" ones have their own tests and need a device)
VARIANTS = sorted(v for v in BL.VARIANTS if not v.startswith("cupy"))
CPU_BACKENDS = ["numba", "numpy"]
# (S, B, D): N = S * B rows of logits scored against B rows of x
SHAPES = [
    (1, 1, 1),
    (1, 1, 7),
    (3, 5, 7),
    (1, 1, 784),
    (2, 3, 784),
    (3, 7, 784),
    (4, 1, 33),
    (1, 17, 64),
]


def _data(rng, S, B, D, dtype, scale=3.0):
    logits = (scale * rng.standard_normal((S * B, D))).astype(dtype)
    x = (rng.random((B, D)) < 0.4).astype(dtype)
    return logits, x


def _oracle(logits, x):
    """The reference in float64 on float64 inputs (what every dtype is compared against)."""
    return BL.bernoulli_loglik_ref(
        logits.astype(np.float64), x.astype(np.float64), np.empty(logits.shape)
    )


def _assert_close(got, want, dtype):
    np.testing.assert_allclose(got, want.astype(got.dtype), **PARITY_TOLERANCES[np.dtype(dtype)])


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """Run the Numba variants on the calling thread, or force their prange kernels even for
    small inputs (normally used only from BL._PARALLEL_MIN elements up)."""
    monkeypatch.setattr(BL, "_PARALLEL_MIN", 0 if request.param == "parallel" else 1 << 62)
    return request.param


# ---------------------------------------------------------------------------------------------
# Variants against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S, B, D", SHAPES)
def test_variant_matches_reference(variant, dtype, S, B, D, rng, path):
    logits, x = _data(rng, S, B, D, dtype)
    want_ll, want_g = _oracle(logits, x)
    grad = np.empty_like(logits)
    ll, g = BL.VARIANTS[variant](logits, x, grad)
    assert g is grad and ll.dtype == dtype and ll.shape == (S * B,)
    _assert_close(ll, want_ll, dtype)
    _assert_close(grad, want_g, dtype)
    ll_only, none = BL.VARIANTS[variant](logits, x)
    assert none is None
    np.testing.assert_array_equal(ll_only, ll)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_out_may_alias_logits(variant, dtype, rng, path):
    logits, x = _data(rng, 3, 5, 784, dtype)
    ll, grad = BL.VARIANTS[variant](logits, x, np.empty_like(logits))
    work = logits.copy()
    ll2, g2 = BL.VARIANTS[variant](work, x, work)
    assert g2 is work
    np.testing.assert_array_equal(ll2, ll)
    np.testing.assert_array_equal(work, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_use_x_of_row_mod_b(dtype, rng):
    # the engine passes x once for S samples; the result must equal scoring against a tiled x
    logits, x = _data(rng, 4, 3, 9, dtype)
    tiled = np.tile(x, (4, 1))
    for variant in VARIANTS:
        np.testing.assert_array_equal(
            BL.VARIANTS[variant](logits, x)[0], BL.VARIANTS[variant](logits, tiled)[0]
        )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S, B, D", [(1, 1, 1), (3, 5, 7), (2, 3, 784), (4, 1, 33)])
def test_bias_is_the_bias_added_first_bit_for_bit(variant, dtype, S, B, D, rng, path):
    """bias (D,) reads logits + bias, rounded in the dtype: exactly what adding it to the
    logits first and calling without it gives, loglik and gradient, in place or not."""
    logits, x = _data(rng, S, B, D, dtype)
    bias = (2.0 * rng.standard_normal(D)).astype(dtype)
    bias[::5] = np.resize(np.array([0.0, -1e4, 1e4, 88.0, -88.0], dtype), bias[::5].size)
    added = logits + bias
    want_ll, want_g = BL.VARIANTS[variant](added, x, np.empty_like(added))
    ll, g = BL.VARIANTS[variant](logits, x, np.empty_like(logits), bias)
    np.testing.assert_array_equal(ll, want_ll)
    np.testing.assert_array_equal(g, want_g)
    ll_only, none = BL.VARIANTS[variant](logits, x, None, bias)
    assert none is None
    np.testing.assert_array_equal(ll_only, want_ll)
    work = logits.copy()
    ll_in, g_in = BL.VARIANTS[variant](work, x, work, bias)
    assert g_in is work
    np.testing.assert_array_equal(ll_in, want_ll)
    np.testing.assert_array_equal(work, want_g)
    via_wrapper = BL.bernoulli_loglik(
        logits, x, bias=bias, backend="numpy" if variant == "ref" else "numba"
    )
    np.testing.assert_array_equal(via_wrapper[0], want_ll)


# ---------------------------------------------------------------------------------------------
# Edge logits and exact values
# ---------------------------------------------------------------------------------------------

EDGE = {
    np.float32: [
        1e4,
        -1e4,
        1e30,
        -1e30,
        0.0,
        88.0,
        -88.0,
        87.5,
        -87.5,
        100.0,
        -100.0,
        3e38,
        -3e38,
        1e-30,
        -1e-30,
    ],
    np.float64: [
        1e4,
        -1e4,
        1e30,
        -1e30,
        0.0,
        88.0,
        -88.0,
        745.0,
        -745.0,
        709.0,
        -709.0,
        1e300,
        -1e300,
        1e-300,
        -1e-300,
    ],
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_logits(variant, dtype, path):
    vals = np.array(EDGE[dtype], dtype=dtype)
    D = vals.size
    logits = np.stack([vals, vals])  # (2, D): row 0 against x = 0, row 1 against x = 1
    x = np.stack([np.zeros(D, dtype), np.ones(D, dtype)])
    want_ll, want_g = _oracle(logits, x)
    grad = np.empty_like(logits)
    ll, _ = BL.VARIANTS[variant](logits, x, grad)
    assert np.all(np.isfinite(ll)) and np.all(np.isfinite(grad))
    _assert_close(ll, want_ll, dtype)
    _assert_close(grad, want_g, dtype)
    # every element as its own D = 1 row: each term alone, no rounding from the sum
    col = vals.reshape(-1, 1)  # (D, 1), B = 1
    for xv in (0.0, 1.0):
        x1 = np.full((1, 1), xv, dtype=dtype)
        ll1, _ = BL.VARIANTS[variant](col, x1)
        _assert_close(ll1, _oracle(col, x1)[0], dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_values_for_saturated_logits(variant, dtype):
    logits = np.array([[-1e4], [1e4], [-1e4], [1e4], [0.0], [0.0]], dtype=dtype)
    x = np.array([[1.0], [1.0], [0.0], [0.0], [1.0], [0.0]], dtype=dtype)
    loglik = np.empty(6, dtype)
    grad = np.empty_like(logits)
    for r in range(6):  # one row each (B = 1)
        ll, _ = BL.VARIANTS[variant](logits[r : r + 1], x[r : r + 1], grad[r : r + 1])
        loglik[r] = ll[0]
    assert loglik[0] == -1e4  # x = 1, l = -1e4: exactly l
    assert loglik[1] == 0.0  # x = 1, l = 1e4: log sigmoid(1e4) = -0
    assert loglik[2] == 0.0  # x = 0, l = -1e4: -softplus(-1e4) = -0
    assert loglik[3] == -1e4  # x = 0, l = 1e4: exactly -l
    np.testing.assert_allclose(loglik[4:], -np.log(2.0), rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(grad[:, 0], np.array([1, 0, 0, -1, 0.5, -0.5], dtype))


def test_sigmoid_is_flushed_not_subnormal():
    # sigmoid(l) for l below -87.3 (float32) is returned as 0, not a subnormal (see docstring)
    logits = np.linspace(-104, -86, 4097, dtype=np.float32).reshape(1, -1)
    x = np.zeros_like(logits)
    grad = np.empty_like(logits)
    BL.bernoulli_loglik_numba_v3(logits, x, grad)
    tiny = np.finfo(np.float32).tiny
    assert not np.any((grad != 0) & (np.abs(grad) < tiny))


@pytest.mark.parametrize("variant", VARIANTS)
def test_nan_logit_propagates(variant):
    logits = np.array([[0.5, np.nan, -1.0], [0.5, 0.2, -1.0]], dtype=np.float32)
    x = np.array([[1.0, 0.0, 1.0]], dtype=np.float32)
    ll, _ = BL.VARIANTS[variant](logits, x)
    assert np.isnan(ll[0]) and np.isfinite(ll[1])


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


def test_reference_gradient_by_finite_differences(rng):
    logits, x = _data(rng, 2, 3, 5, np.float64, scale=2.0)

    def forward(l):
        return BL.bernoulli_loglik_ref(l, x, np.empty_like(l))  # (loglik, cache = grad)

    def backward(dloglik, grad):
        return BL.bernoulli_loglik_backward_ref(dloglik, grad)

    check_vjp(forward, backward, [logits], names=["logits"])


def test_reference_gradient_with_bias_by_finite_differences(rng):
    """d loglik / d bias[d] = sum over rows of the gradient column: the cached gradient is the
    gradient of logits + bias, for the logits and the bias alike."""
    logits, x = _data(rng, 2, 3, 5, np.float64, scale=2.0)
    bias = rng.standard_normal(5)

    def forward(l, b):
        return BL.bernoulli_loglik_ref(l, x, np.empty_like(l), b)

    def backward(dloglik, grad):
        dlogits = BL.bernoulli_loglik_backward_ref(dloglik, grad)
        return dlogits, dlogits.sum(axis=0)

    check_vjp(forward, backward, [logits, bias], names=["logits", "bias"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference_and_runs_in_place(backend, dtype, rng, path):
    logits, x = _data(rng, 3, 5, 7, dtype)
    _, grad = BL.bernoulli_loglik(logits, x, np.empty_like(logits))
    dloglik = rng.standard_normal(15).astype(dtype)
    want = dloglik[:, None].astype(np.float64) * grad
    got = BL.bernoulli_loglik_backward(dloglik, grad, backend=backend)
    _assert_close(got, want, dtype)
    work = grad.copy()
    got2 = BL.bernoulli_loglik_backward(dloglik, work, work, backend=backend)
    assert got2 is work
    np.testing.assert_array_equal(work, got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_lvmcore_bernoulli_nll(dtype, rng):
    logits, x = _data(rng, 1, 6, 11, dtype)
    nll, cache = bernoulli_nll_forward(logits, x)
    ll, grad = BL.bernoulli_loglik(logits, x, np.empty_like(logits))
    _assert_close(ll, -nll.astype(np.float64), dtype)
    dnll = np.ones(6, dtype)
    _assert_close(grad, -bernoulli_nll_backward(dnll, cache).astype(np.float64), dtype)


@pytest.mark.oracle
def test_torch_cross_check(rng):
    torch = pytest.importorskip("torch")
    logits, x = _data(rng, 1, 8, 13, np.float64)
    lt = torch.from_numpy(logits).requires_grad_(True)
    ll_t = -torch.nn.functional.binary_cross_entropy_with_logits(
        lt, torch.from_numpy(x), reduction="none"
    ).sum(1)
    ll_t.sum().backward()
    ll, grad = BL.bernoulli_loglik(logits, x, np.empty_like(logits))
    np.testing.assert_allclose(ll, ll_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, lt.grad.numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Registry and validation
# ---------------------------------------------------------------------------------------------


def test_registered():
    assert kernels.get("bernoulli_loglik", "numba") is BL.IMPLEMENTATIONS["numba"]
    assert kernels.get("bernoulli_loglik", "numpy") is BL.bernoulli_loglik_ref
    assert BL.IMPLEMENTATIONS["numba"] is BL.VARIANTS[BL.DEFAULT]


def _valid(dtype=np.float32):
    return np.zeros((6, 4), dtype), np.zeros((3, 4), dtype)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: (np.zeros((6, 8), np.float32)[:, ::2], _valid()[1]), ValueError, "C-contiguous"),
        (lambda: (_valid()[0], np.zeros((3, 8), np.float32)[:, ::2]), ValueError, "C-contiguous"),
        (lambda: (_valid(np.float16)[0], _valid(np.float16)[1]), TypeError, "float32 or float64"),
        (lambda: (_valid()[0].astype(np.int32), _valid()[1]), TypeError, "float32 or float64"),
        (lambda: (_valid()[0], _valid(np.float64)[1]), TypeError, "dtype of logits"),
        (lambda: (_valid()[0].tolist(), _valid()[1]), TypeError, "numpy.ndarray"),
        (lambda: (np.zeros(6, np.float32), _valid()[1]), ValueError, "2 dimensions"),
        (lambda: (_valid()[0], np.zeros((3, 5), np.float32)), ValueError, r"x.shape\[1\]"),
        (lambda: (np.zeros((7, 4), np.float32), _valid()[1]), ValueError, "multiple"),
    ],
)
def test_bad_input_is_rejected(make, exc, match):
    logits, x = make()
    with pytest.raises(exc, match=match):
        BL.bernoulli_loglik(logits, x)


def test_bad_grad_out_is_rejected():
    logits, x = _valid()
    with pytest.raises(ValueError, match="shape of logits"):
        BL.bernoulli_loglik(logits, x, np.empty((6, 5), np.float32))
    with pytest.raises(TypeError, match="dtype of logits"):
        BL.bernoulli_loglik(logits, x, np.empty((6, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        BL.bernoulli_loglik(logits, x, np.empty((6, 8), np.float32)[:, ::2])
    big = np.zeros((9, 4), np.float32)
    with pytest.raises(ValueError, match="overlapping x"):
        BL.bernoulli_loglik(logits, big[:3], big[2:8])
    with pytest.raises(ValueError, match="overlapping logits"):
        BL.bernoulli_loglik(big[:6], x, big[3:])
    with pytest.raises(ValueError, match="backend"):
        BL.bernoulli_loglik(logits, x, backend="fortran")


def test_bad_bias_is_rejected():
    logits, x = _valid()
    with pytest.raises(ValueError, match=r"expected bias of shape \(4,\)"):
        BL.bernoulli_loglik(logits, x, bias=np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="dtype of logits"):
        BL.bernoulli_loglik(logits, x, bias=np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="1 dimension"):
        BL.bernoulli_loglik(logits, x, bias=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        BL.bernoulli_loglik(logits, x, bias=np.zeros(8, np.float32)[::2])
    with pytest.raises(TypeError, match="numpy.ndarray"):
        BL.bernoulli_loglik(logits, x, bias=[0.0] * 4)
    big = np.zeros(28, np.float32)
    with pytest.raises(ValueError, match="overlapping bias"):
        BL.bernoulli_loglik(logits, x, big[:24].reshape(6, 4), bias=big[20:24])
    bias = np.zeros(4, np.float32)
    bias[2] = np.nan
    with pytest.raises(ValueError, match="expected bias to contain no NaN or Inf"):
        BL.bernoulli_loglik(logits, x, bias=bias, check_values=True)


def test_check_values():
    logits, x = _valid()
    x[1, 2] = 0.5
    BL.bernoulli_loglik(logits, x)  # not checked by default
    with pytest.raises(ValueError, match="binary"):
        BL.bernoulli_loglik(logits, x, check_values=True)
    x[1, 2] = 1.0
    logits[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        BL.bernoulli_loglik(logits, x, check_values=True)


def test_backward_bad_input_is_rejected():
    base = np.zeros(30, np.float32)
    grad = base[:24].reshape(6, 4)
    with pytest.raises(ValueError, match="match"):
        BL.bernoulli_loglik_backward(np.zeros(5, np.float32), grad)
    with pytest.raises(TypeError, match="dtype of grad"):
        BL.bernoulli_loglik_backward(np.zeros(6, np.float64), grad)
    with pytest.raises(ValueError, match="overlapping grad"):
        BL.bernoulli_loglik_backward(np.zeros(6, np.float32), grad, base[2:26].reshape(6, 4))


def test_float32_log1p_polynomial_is_within_two_ulp():
    # v3's log1p(t) on [0, 1] (t = exp(-|l|)): every float32 of [2^-20, 1] at a stride, all
    # powers of two below, and 0; against long double, in ulps of the float32 result.
    @njit
    def fn(t, out):
        for i in range(t.size):
            out[i] = BL._log1p_unit_f32(t[i])

    lo, hi = np.float32(2.0**-20).view(np.int32), np.float32(1.0).view(np.int32)
    t = np.concatenate(
        [
            np.arange(lo, hi + 1, 37, dtype=np.int32).view(np.float32),
            np.float32(2.0) ** -np.arange(21, 127, dtype=np.float32),
            np.array([0.0, 1.0], np.float32),
        ]
    )
    got = np.empty_like(t)
    fn(t, got)
    want = np.log1p(t.astype(np.longdouble))
    ulp = np.spacing(want.astype(np.float32)).astype(np.longdouble)
    err = np.abs(got.astype(np.longdouble) - want)
    assert got[-2] == 0.0
    assert np.max(err[:-2] / ulp[:-2]) <= 2.0
