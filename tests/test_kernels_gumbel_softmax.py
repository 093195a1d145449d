"""Tests of kernels.gumbel_softmax: the fused Gumbel generator against kernels.philox, every
variant against the reference (forward, backward, gumbel_max; float32 and float64), the
reference's backward against central differences, the tau -> 0 and huge-logit limits, the
straight-through rule, Gumbel-max frequencies, thread-count independence, the float32 IR, and
bad input."""

import math
import re

import numba
import numpy as np
import pytest
from numba import njit
from scipy import stats

import kernels
from kernels import InvalidParameterError
from kernels import gumbel_softmax as G
from kernels import philox as P
from lvmcore.testing import gradcheck

DTYPES = [np.float32, np.float64]
EPS = {
    np.dtype(np.float32): float(np.finfo(np.float32).eps),
    np.dtype(np.float64): float(np.finfo(np.float64).eps),
}
# (N, C): C = 1, 2, 10 and 513 (not a multiple of 4, so rows straddle Philox blocks), odd N;
# (1001, 10) and (9, 513) span several 4096-element chunks.
SHAPES = [(1, 1), (3, 1), (7, 2), (33, 10), (1001, 10), (9, 513)]
SEED = 0x0123456789ABCDEF
STREAM = 0xFEDCBA9876543210
# Gumbels: within a few ulp of max(|g|, 1) of gumbel_ref (measured 2.8 float32, 1.0 float64).
NOISE_ULP = 8


def _cpu(table):
    """The CPU variants of a table (the "cupy_*" ones run in test_kernels_cupy.py, on a GPU)."""
    return sorted(v for v in table if not v.startswith("cupy"))


def _g_ref(n, c, dtype, offset=0):
    return P.gumbel_ref(SEED, STREAM, n * c, dtype, offset).reshape(n, c)


def _one_hot(index, c, dtype):
    y = np.zeros((index.size, c), dtype)
    y[np.arange(index.size), index] = 1
    return y


@pytest.fixture
def threads():
    before = numba.get_num_threads()
    yield min(2, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Forward, gumbel_max: every variant vs the reference
# ---------------------------------------------------------------------------------------------


def _softmax_tol(dtype, logits, g, tau, y_ref):
    """|y - y_ref| bound: the noise's few ulp plus one rounding of s = logits + g, divided by
    tau, move exp(d) by a relative 2 * max over the row; exp, the sum and the division add a
    few (C + 4) ulp. An absolute 1e-36 covers exp's flush of would-be subnormals to 0."""
    e = EPS[np.dtype(dtype)]
    ds = NOISE_ULP * e * np.maximum(np.abs(g), 1) + 2 * e * np.abs(logits + g)
    rel = 2 * ds.max(axis=1, keepdims=True) / tau + (logits.shape[1] + 4) * e
    return rel * y_ref + 1e-36


@pytest.mark.parametrize("variant", _cpu(G.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_forward_variants_match_reference(variant, dtype, shape, offset, tau, rng):
    n, c = shape
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    y = G.VARIANTS[variant](logits, tau, SEED, STREAM, offset)
    y_ref = G.gumbel_softmax_ref(logits, tau, SEED, STREAM, offset)
    assert y.dtype == np.dtype(dtype) and y.shape == shape
    g = _g_ref(n, c, dtype, offset).astype(np.float64)
    tol = _softmax_tol(dtype, logits.astype(np.float64), g, tau, y_ref.astype(np.float64))
    assert np.all(np.abs(y.astype(np.float64) - y_ref) <= tol)
    # rows sum to one
    np.testing.assert_allclose(
        y.sum(axis=1, dtype=np.float64), 1, rtol=0, atol=(c + 4) * EPS[np.dtype(dtype)]
    )


@pytest.mark.parametrize("variant", _cpu(G.MAX_VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0, 3])
def test_gumbel_max_and_hard_forward_match_reference(variant, dtype, shape, offset, rng):
    n, c = shape
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    index = G.MAX_VARIANTS[variant](logits, SEED, STREAM, offset)
    assert index.dtype == np.int64 and index.shape == (n,)
    s = logits + _g_ref(n, c, dtype, offset)
    np.testing.assert_array_equal(index, np.argmax(s, axis=1))
    for forward in _cpu(G.VARIANTS):  # every forward's hard sample is the one-hot of that argmax
        hard = G.VARIANTS[forward](logits, 0.5, SEED, STREAM, offset, hard=True)
        np.testing.assert_array_equal(hard, _one_hot(index, c, dtype))


def test_ties_go_to_the_lowest_index():
    # Logits of +-1e30 swallow the Gumbels (|g| < 37 is below half an ulp of 1e30 in both
    # dtypes), so s ties exactly between the 1e30 columns.
    for dtype in DTYPES:
        logits = np.array([[-1e30, 1e30, 1e30, -1e30], [1e30, 1e30, 1e30, 1e30]], dtype)
        for backend in ("numpy", "numba"):
            np.testing.assert_array_equal(G.gumbel_max(logits, 1, backend=backend), [1, 0])
            hard = G.gumbel_softmax(logits, 1.0, 1, hard=True, backend=backend)
            np.testing.assert_array_equal(hard, [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_y_out_is_filled_and_returned(rng):
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    y_out = np.full((5, 7), np.nan, np.float32)
    y = G.gumbel_softmax(logits, 0.5, 1, 2, 3, y_out=y_out)
    assert y is y_out
    np.testing.assert_array_equal(y_out, G.gumbel_softmax(logits, 0.5, 1, 2, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_continues_across_offsets(dtype, rng):
    # Rows 0..9 at offset 0 and rows 4..9 drawn alone at offset 4 C see the same Gumbels.
    logits = rng.standard_normal((10, 7)).astype(dtype)
    full = G.gumbel_softmax(logits, 0.7, SEED, STREAM, 0)
    tail = G.gumbel_softmax(logits[4:], 0.7, SEED, STREAM, 4 * 7)
    np.testing.assert_array_equal(tail, full[4:])


# ---------------------------------------------------------------------------------------------
# Limits: tau -> 0, huge logits, masked categories
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [1e-3, 1e-8])
def test_small_tau_gives_the_one_hot_argmax(backend, dtype, tau, rng):
    # Logits 40 apart on a random permutation: the Gumbels (range < 40) cannot change the
    # order, so the top gap of s exceeds 0.5, far beyond 745 tau: y must be exactly one-hot.
    n, c = 500, 10
    logits = (40.0 * np.argsort(rng.random((n, c)), axis=1)).astype(dtype)
    y = G.gumbel_softmax(logits, tau, SEED, STREAM, 1, backend=backend)
    index = G.gumbel_max(logits, SEED, STREAM, 1, backend=backend)
    np.testing.assert_array_equal(y, _one_hot(index, c, dtype))
    # Random logits: no NaN; every row whose top gap of s exceeds the exp cut-off (745 tau) is
    # exactly one-hot; every row has its largest y at the argmax.
    logits = rng.standard_normal((2000, c)).astype(dtype)
    y = G.gumbel_softmax(logits, tau, SEED, STREAM, 1, backend=backend)
    index = G.gumbel_max(logits, SEED, STREAM, 1, backend=backend)
    assert np.isfinite(y).all()
    s = np.sort(logits + _g_ref(2000, c, dtype, 1), axis=1)
    clear = (s[:, -1] - s[:, -2]) > 745 * tau
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(y[clear], _one_hot(index[clear], c, dtype))
    np.testing.assert_array_equal(np.argmax(y, axis=1), index)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("tau", [0.5, 1e-3, 1e-8])
def test_huge_logits_float32_stay_finite(backend, tau, rng):
    logits = rng.choice(np.array([-1e4, 1e4, 0.0, 3.0], np.float32), size=(301, 10))
    y = G.gumbel_softmax(logits, tau, 3, backend=backend)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=1), 1, atol=1e-5)
    # every row's mass sits on its +1e4 categories when it has any
    top = logits == 1e4
    rows = top.any(axis=1)
    np.testing.assert_allclose((y * top).sum(axis=1)[rows], 1, atol=1e-5)
    dlogits, dtau = G.gumbel_softmax_backward(
        rng.standard_normal(y.shape).astype(np.float32), y, tau, backend=backend
    )
    assert np.isfinite(dlogits).all() and math.isfinite(dtau)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_masked_categories_get_zero_probability_and_gradient(backend, rng):
    logits = rng.standard_normal((50, 6))
    logits[:, [1, 4]] = -np.inf
    logits[7, :] = -np.inf
    logits[7, 2] = 0.0  # a row with one category left
    y = G.gumbel_softmax(logits, 0.5, 9, backend=backend)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, [1, 4]], 0)
    np.testing.assert_array_equal(y[7], [0, 0, 1, 0, 0, 0])
    dy = rng.standard_normal(y.shape)
    dlogits, dtau = G.gumbel_softmax_backward(dy, y, 0.5, backend=backend)
    np.testing.assert_array_equal(dlogits[:, [1, 4]], 0)
    assert np.isfinite(dlogits).all() and math.isfinite(dtau)
    # the softmax argument of a masked category is -inf: left out, as on the y_soft path (not
    # 0 * -inf = NaN); log y stands for it (equal up to a per-row constant, which drops out)
    with np.errstate(divide="ignore"):
        a = np.where(y > 0, np.log(y), -np.inf)
    _, dtau_a = G.gumbel_softmax_backward(dy, y, 0.5, a, backend=backend)
    assert dtau_a == pytest.approx(dtau, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_argument", [False, True])
def test_reference_backward_matches_finite_differences(use_argument, rng):
    n, c = 4, 5
    logits = rng.standard_normal((n, c))
    tau = np.array([0.7])
    probe = rng.standard_normal((n, c)) / math.sqrt(n * c)
    g = _g_ref(n, c, np.float64, 2)

    def loss():
        return np.sum(G.gumbel_softmax_ref(logits, float(tau[0]), SEED, STREAM, 2) * probe)

    y = G.gumbel_softmax_ref(logits, float(tau[0]), SEED, STREAM, 2)
    a = (logits + g) / tau[0] if use_argument else None
    dlogits, dtau = G.gumbel_softmax_backward_ref(probe, y, float(tau[0]), a)
    gradcheck(loss, {"logits": logits, "tau": tau}, {"logits": dlogits, "tau": np.array([dtau])})


@pytest.mark.parametrize("variant", _cpu(G.BACKWARD_VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_argument", [False, True])
def test_backward_variants_match_reference(variant, dtype, shape, use_argument, rng):
    n, c = shape
    tau = 0.6
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    y = G.gumbel_softmax_ref(logits, tau, SEED, STREAM, 0)
    dy = rng.standard_normal(shape).astype(dtype)
    a = ((logits + _g_ref(n, c, dtype)) / dtype(tau)).astype(dtype) if use_argument else None
    dlogits, dtau = G.BACKWARD_VARIANTS[variant](dy, y, tau, a)
    # float64 oracle on the same inputs
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    v = y64 * (dy64 - (dy64 * y64).sum(1, keepdims=True))
    want = v / tau
    w = a.astype(np.float64) if use_argument else np.log(np.where(y64 > 0, y64, 1))
    want_dtau = -np.sum(want * w)
    e = EPS[np.dtype(dtype)]
    scale = y64 * (np.abs(dy64) + (np.abs(dy64) * y64).sum(1, keepdims=True)) / tau
    assert dlogits.dtype == np.dtype(dtype) and dlogits.shape == shape
    assert np.all(np.abs(dlogits - want) <= (c + 4) * e * scale)
    # dtau: N*C products summed, each good to ~(C + 8) ulp of |dlogits a|; log y and a are
    # not exactly a per-row shift of each other in floating point (see "Gradient flow").
    mag = np.sum(scale * (np.abs(w) + 1))
    assert abs(dtau - want_dtau) <= (c + 8) * e * mag + 1e-300


def test_backward_from_log_y_equals_backward_from_the_argument(rng):
    n, c, tau = 200, 10, 0.4
    logits = rng.standard_normal((n, c))
    y = G.gumbel_softmax(logits, tau, SEED, STREAM, 0)
    dy = rng.standard_normal((n, c))
    a = (logits + _g_ref(n, c, np.float64)) / tau
    for backend in ("numpy", "numba"):
        d1, t1 = G.gumbel_softmax_backward(dy, y, tau, backend=backend)
        d2, t2 = G.gumbel_softmax_backward(dy, y, tau, a, backend=backend)
        np.testing.assert_array_equal(d1, d2)
        assert t1 == pytest.approx(t2, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_forward_is_one_hot_and_its_backward_is_the_soft_one(dtype, rng):
    logits = rng.standard_normal((40, 6)).astype(dtype)
    for backend in ("numpy", "numba"):
        soft = G.gumbel_softmax(logits, 0.5, 4, 5, 6, backend=backend)
        y_soft = np.empty_like(logits)
        hard = G.gumbel_softmax(logits, 0.5, 4, 5, 6, hard=True, y_soft_out=y_soft, backend=backend)
        np.testing.assert_array_equal(y_soft, soft)
        np.testing.assert_array_equal(hard.sum(axis=1), 1)
        np.testing.assert_array_equal(hard, _one_hot(np.argmax(soft, axis=1), 6, dtype))
        dy = rng.standard_normal(logits.shape).astype(dtype)
        d_hard = G.gumbel_softmax_backward(dy, y_soft, 0.5, backend=backend)
        d_soft = G.gumbel_softmax_backward(dy, soft, 0.5, backend=backend)
        np.testing.assert_array_equal(d_hard[0], d_soft[0])
        assert d_hard[1] == d_soft[1]


@pytest.mark.oracle
def test_backward_matches_torch_autograd(rng):
    import torch

    n, c = 6, 5
    logits = rng.standard_normal((n, c))
    dy = rng.standard_normal((n, c))
    g = torch.from_numpy(_g_ref(n, c, np.float64, 3))
    tl = torch.tensor(logits, requires_grad=True)
    tt = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    torch.softmax((tl + g) / tt, dim=1).backward(torch.from_numpy(dy))
    y = G.gumbel_softmax(logits, 0.8, SEED, STREAM, 3)
    np.testing.assert_allclose(y, torch.softmax((tl + g) / tt, dim=1).detach().numpy(), rtol=1e-13)
    for backend in ("numpy", "numba"):
        dlogits, dtau = G.gumbel_softmax_backward(dy, y, 0.8, backend=backend)
        np.testing.assert_allclose(dlogits, tl.grad.numpy(), rtol=1e-10, atol=1e-12)
        assert dtau == pytest.approx(float(tt.grad), rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Sampling distribution, determinism, IR
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, dtype", [("numpy", np.float64), ("numba", np.float64), ("numba", np.float32)]
)
def test_gumbel_max_frequencies_follow_softmax(backend, dtype):
    logits = np.array([0.3, -1.2, 2.0, 0.0, -0.5, 1.1])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    n = 200_000
    index = G.gumbel_max(np.tile(logits.astype(dtype), (n, 1)), 2026, 1, backend=backend)
    counts = np.bincount(index, minlength=logits.size)
    assert stats.chisquare(counts, n * p).pvalue > 1e-3


def test_results_do_not_depend_on_thread_count(threads, rng):
    if threads < 2:
        pytest.skip("Numba has a single thread here")
    logits = rng.standard_normal((3001, 10)).astype(np.float32)
    dy = rng.standard_normal((3001, 10)).astype(np.float32)
    out = {}
    for t in (1, threads):
        numba.set_num_threads(t)
        y = G.gumbel_softmax(logits, 0.5, SEED, STREAM, 7)
        out[t] = (
            y,
            G.gumbel_softmax(logits, 0.5, SEED, STREAM, 7, hard=True),
            G.gumbel_max(logits, SEED, STREAM, 7),
            *G.gumbel_softmax_backward(dy, y, 0.5),
        )
    for a, b in zip(out[1], out[threads]):
        np.testing.assert_array_equal(a, b)


def test_float32_kernels_do_no_float64_arithmetic():
    # The forward and gumbel_max kernels (with the Gumbel fill and exp inlined) must not
    # contain a single double-precision arithmetic op or widening in their float32 versions.
    logits = np.zeros((5, 3), np.float32)
    opts = dict(parallel=True, error_model="numpy", fastmath=False)
    fwd = njit(**opts)(G._forward_v2.py_func)
    y = np.empty_like(logits)
    fwd(
        logits,
        np.float32(0.5),
        np.float32(0),
        np.float32(1),
        *P.key_words(1, 2),
        np.int64(0),
        4,
        2,
        True,
        True,
        y,
        y.copy().reshape(-1),
    )
    mx = njit(**opts)(G._max_v1.py_func)
    mx(logits, *P.key_words(1, 2), np.int64(0), 4, 2, np.empty(5, np.int64))
    for f in (fwd, mx):
        ir = f.inspect_llvm(f.signatures[0])
        assert re.search(r"\bfadd( [a-z]+)* (<\d+ x )?float", ir)  # the check works
        assert not re.search(r"\bf(add|sub|mul|div)( [a-z]+)* (<\d+ x )?double", ir)
        assert not re.search(r"\bfpext\b", ir)


# ---------------------------------------------------------------------------------------------
# Registry and public wrappers
# ---------------------------------------------------------------------------------------------


def test_registry(rng):
    assert kernels.get("gumbel_softmax", "numpy") is G.gumbel_softmax_ref
    assert kernels.get("gumbel_softmax", "numba") is G.VARIANTS[G.DEFAULT]
    assert G.BACKWARD_IMPLEMENTATIONS["numba"] is G.BACKWARD_VARIANTS[G.BACKWARD_DEFAULT]
    assert G.MAX_IMPLEMENTATIONS["numba"] is G.MAX_VARIANTS[G.MAX_DEFAULT]


def test_empty_and_non_contiguous_inputs(rng):
    y = G.gumbel_softmax(np.zeros((0, 4), np.float32), 0.5, 1)
    assert y.shape == (0, 4)
    assert G.gumbel_max(np.zeros((0, 4)), 1).shape == (0,)
    d, t = G.gumbel_softmax_backward(np.zeros((0, 4)), np.zeros((0, 4)), 0.5)
    assert d.shape == (0, 4) and t == 0.0
    logits = rng.standard_normal((6, 8))
    np.testing.assert_array_equal(
        G.gumbel_softmax(logits[::2, ::2], 0.5, 1),
        G.gumbel_softmax(logits[::2, ::2].copy(), 0.5, 1),
    )


LOGITS = np.zeros((4, 3), np.float32)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            dict(tau=0.0),
            InvalidParameterError,
            r"The 'tau' parameter of gumbel_softmax must be a float in \(0, inf\)\. Got 0\.0 instead\.",
        ),
        (dict(tau=-1.0), InvalidParameterError, "'tau' parameter of gumbel_softmax"),
        (dict(tau=float("nan")), InvalidParameterError, "'tau' parameter"),
        (dict(tau="1"), InvalidParameterError, "'tau' parameter"),
        (dict(tau=1e-50), InvalidParameterError, "'tau' parameter .* positive in float32"),
        (dict(logits=[[0.0]]), TypeError, "expected logits to be a numpy.ndarray"),
        (dict(logits=np.zeros((4, 3), np.int32)), TypeError, "dtype float32 or float64"),
        (dict(logits=np.zeros(3)), ValueError, "logits to have 2 dimensions"),
        (dict(logits=np.zeros((3, 0))), ValueError, r"at least one category \(C >= 1\)"),
        (dict(seed=-1), InvalidParameterError, "'seed' parameter of gumbel_softmax"),
        (dict(stream=2**64), InvalidParameterError, "'stream' parameter"),
        (dict(offset=2**62), InvalidParameterError, r"offset \+ N\*C <= 2\*\*62"),
        (dict(hard="yes"), InvalidParameterError, "'hard' parameter"),
        (
            dict(y_out=np.empty((4, 3), np.float64)),
            ValueError,
            r"y_out to be a C-contiguous float32 array of shape \(4, 3\)",
        ),
        (dict(y_out=LOGITS), ValueError, "y_out to overlap no input"),
        (
            dict(y_soft_out=np.empty((4, 3), np.float32)),
            ValueError,
            "expected y_soft_out=None when hard=False",
        ),
        (
            dict(logits=np.full((4, 3), np.nan, np.float32), check_values=True),
            ValueError,
            r"no NaN or \+inf",
        ),
        (
            dict(logits=np.full((4, 3), -np.inf, np.float32), check_values=True),
            ValueError,
            "rows of -inf only",
        ),
        (dict(backend="fortran"), ValueError, "expected backend to be one of"),
    ],
)
def test_forward_validation(kwargs, exc, match):
    args = dict(logits=LOGITS, tau=0.5, seed=1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        G.gumbel_softmax(**args)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(tau=0), InvalidParameterError, "'tau' parameter of gumbel_softmax_backward"),
        (dict(dy=np.zeros((4, 2), np.float32)), ValueError, "dy and y_soft to have one shape"),
        (dict(dy=np.zeros((4, 3))), ValueError, "one shape and dtype"),
        (
            dict(logits_plus_g_over_tau=np.zeros((4, 4), np.float32)),
            ValueError,
            "logits_plus_g_over_tau to match y_soft",
        ),
    ],
)
def test_backward_validation(kwargs, exc, match):
    args = dict(dy=np.zeros((4, 3), np.float32), y_soft=np.full((4, 3), 1 / 3, np.float32), tau=0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        G.gumbel_softmax_backward(**args)


def test_gumbel_max_validation():
    with pytest.raises(InvalidParameterError, match="'seed' parameter of gumbel_max"):
        G.gumbel_max(LOGITS, -2)
    with pytest.raises(ValueError, match="gumbel_max: expected logits to have 2 dimensions"):
        G.gumbel_max(np.zeros(3), 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_max_by_halving_is_the_max(dtype, rng):
    # the wide-row max of the forward (C >= 32): every size from 32 to 140, odd ones included,
    # the max anywhere in the row, and -inf entries
    for c in list(range(32, 141)) + [511, 513, 1000]:
        x = rng.standard_normal(c).astype(dtype)
        x[rng.integers(c)] = 7.0
        x[rng.integers(c)] = -np.inf
        assert G._row_max_wide(x, np.empty(c, dtype)) == x.max()
