"""Tests of kernels.importance_weights: every variant against the reference, -inf / +inf / NaN
columns, huge values, normalization, in place, thread-count independence, agreement with
lvmcore.losses.iwae, bad input."""

import math
import warnings

import numba
import numpy as np
import pytest

import kernels
from kernels import importance_weights as IW
from lvmcore.losses.iwae import importance_weights_forward
from lvmcore.testing import PARITY_TOLERANCES

DTYPES = [np.float32, np.float64]
# CPU variants (the "cupy_*" ones have their own tests and need a device)
VARIANTS = sorted(v for v in IW.VARIANTS if not v.startswith("cupy"))
CPU_BACKENDS = ["numba", "numpy"]
SHAPES = [(1, 1), (1, 7), (7, 1), (3, 1000), (5001, 7), (64, 16), (65, 17), (300, 33)]


def _oracle(log_w):
    """The reference in float64 (what every dtype is compared against)."""
    return IW.importance_weights_ref(log_w.astype(np.float64))


def _assert_close(got, want, dtype):
    tol = PARITY_TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(got, want.astype(got.dtype), **tol)


def _log_w(rng, K, B, dtype, scale=5.0):
    return (scale * rng.standard_normal((K, B)) - 100.0).astype(dtype)


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "divide by zero" from an all -inf column
        yield


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """Run the Numba variants on the calling thread, or force their prange kernels even for
    small inputs (normally used only from IW._PARALLEL_MIN elements up)."""
    monkeypatch.setattr(IW, "_PARALLEL_MIN", 0 if request.param == "parallel" else 1 << 62)
    return request.param


# ---------------------------------------------------------------------------------------------
# Variants against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, B", SHAPES)
def test_variant_matches_reference(variant, dtype, K, B, rng, path):
    log_w = _log_w(rng, K, B, dtype)
    want_b, want_w = _oracle(log_w)
    out = np.empty_like(log_w)
    bound, weights = IW.VARIANTS[variant](log_w, out)
    assert weights is out and bound.dtype == dtype and bound.shape == (B,)
    _assert_close(bound, want_b, dtype)
    _assert_close(weights, want_w, dtype)
    b2, w2 = IW.VARIANTS[variant](log_w)  # allocating
    np.testing.assert_array_equal(b2, bound)
    np.testing.assert_array_equal(w2, weights)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place(variant, dtype, rng, path):
    log_w = _log_w(rng, 300, 33, dtype)
    want_b, want_w = IW.VARIANTS[variant](log_w)
    work = log_w.copy()
    bound, weights = IW.VARIANTS[variant](work, work)
    assert weights is work
    np.testing.assert_array_equal(bound, want_b)
    np.testing.assert_array_equal(work, want_w)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_sum_to_one(variant, dtype, rng):
    log_w = _log_w(rng, 5001, 7, dtype, scale=30.0)
    _, weights = IW.VARIANTS[variant](log_w)
    np.testing.assert_allclose(
        weights.sum(axis=0, dtype=np.float64),
        1.0,
        rtol=0,
        atol=1e-5 if dtype == np.float32 else 1e-12,
    )
    assert np.all(weights >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_equal_one_gives_the_log_weight(dtype, rng):
    log_w = _log_w(rng, 1, 9, dtype)
    for variant in VARIANTS:
        bound, weights = IW.VARIANTS[variant](log_w)
        np.testing.assert_array_equal(bound, log_w[0])
        np.testing.assert_array_equal(weights, np.ones_like(log_w))


def test_results_do_not_depend_on_the_thread_count(rng, path):
    log_w = _log_w(rng, 3000, 40, np.float32, scale=20.0)
    before = numba.get_num_threads()
    try:
        results = {}
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            results[n] = {v: IW.VARIANTS[v](log_w) for v in VARIANTS}
    finally:
        numba.set_num_threads(before)
    first = results[1]
    for res in results.values():
        for v in VARIANTS:
            np.testing.assert_array_equal(res[v][0], first[v][0])
            np.testing.assert_array_equal(res[v][1], first[v][1])


# ---------------------------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_minus_inf_columns(variant, dtype, rng, path):
    log_w = _log_w(rng, 130, 20, dtype)
    log_w[:, [0, 7, 19]] = -np.inf
    bound, weights = IW.VARIANTS[variant](log_w)
    assert not np.isnan(bound).any() and not np.isnan(weights).any()
    assert np.all(bound[[0, 7, 19]] == -np.inf)
    assert np.all(weights[:, [0, 7, 19]] == 0)
    keep = [j for j in range(20) if j not in (0, 7, 19)]
    want_b, want_w = _oracle(log_w[:, keep])
    _assert_close(bound[keep], want_b, dtype)
    _assert_close(weights[:, keep], want_w, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_minus_inf_entries_get_zero_weight(variant, dtype, rng):
    log_w = _log_w(rng, 200, 9, dtype)
    mask = rng.random(log_w.shape) < 0.5
    mask[0] = False  # every column keeps a finite entry
    log_w[mask] = -np.inf
    bound, weights = IW.VARIANTS[variant](log_w)
    assert np.all(weights[mask] == 0)
    want_b, want_w = _oracle(log_w)
    _assert_close(bound, want_b, dtype)
    _assert_close(weights, want_w, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "dtype, big", [(np.float64, 1e30), (np.float64, 1e300), (np.float32, 3e38), (np.float32, 1e30)]
)
def test_huge_values(variant, dtype, big, path):
    log_w = np.array(
        [[big, -big, -big, big, 0.0], [-big, -big, -big, 1.0, 0.0], [0.0, -big, -big, 2.0, -big]],
        dtype=dtype,
    )
    bound, weights = IW.VARIANTS[variant](log_w)
    want_b, want_w = _oracle(log_w)
    assert not np.isnan(bound).any() and not np.isnan(weights).any()
    np.testing.assert_allclose(
        bound, want_b.astype(dtype), rtol=PARITY_TOLERANCES[np.dtype(dtype)]["rtol"]
    )
    _assert_close(weights, want_w, dtype)
    np.testing.assert_array_equal(weights[:, 0], [1, 0, 0])  # the huge entry takes all weight
    assert bound[0] == dtype(big) - dtype(math.log(3))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_plus_inf_and_nan(variant, dtype, path):
    log_w = np.array([[np.inf, np.nan, 0.0], [1.0, 1.0, 1.0], [-np.inf, 2.0, 2.0]], dtype=dtype)
    bound, weights = IW.VARIANTS[variant](log_w)
    # +inf: bound +inf; the weight of the +inf entry is NaN (inf / inf), the others 0
    assert bound[0] == np.inf
    assert np.isnan(weights[0, 0]) and weights[1, 0] == 0 and weights[2, 0] == 0
    # NaN: the bound and every weight of the column are NaN
    assert np.isnan(bound[1]) and np.all(np.isnan(weights[:, 1]))
    # the finite column is untouched
    want_b, want_w = _oracle(log_w[:, 2:])
    _assert_close(bound[2:], want_b, dtype)
    _assert_close(weights[:, 2:], want_w, dtype)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "ref"])
@pytest.mark.parametrize("dtype, spread", [(np.float32, 120.0), (np.float64, 800.0)])
def test_weights_are_never_subnormal(variant, dtype, spread, rng, path):
    # log-weights spread wider than the normal range: exact weights reach the subnormals
    log_w = rng.uniform(-spread, 0.0, size=(400, 50)).astype(dtype)
    log_w[0] = 0.0
    bound, weights = IW.VARIANTS[variant](log_w)
    tiny = np.finfo(dtype).tiny
    assert not np.any((weights > 0) & (weights < tiny))
    want_b, want_w = _oracle(log_w)
    assert np.any((want_w > 0) & (want_w < tiny)) or dtype == np.float64
    _assert_close(bound, want_b, dtype)
    _assert_close(weights, want_w, dtype)


# ---------------------------------------------------------------------------------------------
# Agreement with the engine and with PyTorch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_lvmcore_importance_weights_forward(variant, dtype, rng):
    log_w = _log_w(rng, 257, 19, dtype)
    log_w[:, 3] = -np.inf
    log_w[::3, 5] = -np.inf
    bound, weights = IW.VARIANTS[variant](log_w)
    want_b, cache = importance_weights_forward(log_w.astype(np.float64))
    _assert_close(bound, want_b, dtype)
    _assert_close(weights, cache.weights, dtype)
    if dtype == np.float32:  # and the engine's own float32 path, within float32 tolerance
        b32, c32 = importance_weights_forward(log_w)
        _assert_close(bound, b32.astype(np.float64), dtype)
        _assert_close(weights, c32.weights.astype(np.float64), dtype)


@pytest.mark.oracle
def test_torch_cross_check(rng):
    torch = pytest.importorskip("torch")
    log_w = _log_w(rng, 500, 13, np.float64)
    t = torch.from_numpy(log_w)
    bound, weights = IW.importance_weights(log_w)
    np.testing.assert_allclose(
        bound, (torch.logsumexp(t, 0) - math.log(500)).numpy(), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(weights, torch.softmax(t, 0).numpy(), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Registry and validation
# ---------------------------------------------------------------------------------------------


def test_registered():
    assert kernels.get("importance_weights", "numba") is IW.IMPLEMENTATIONS["numba"]
    assert kernels.get("importance_weights", "numpy") is IW.importance_weights_ref
    assert IW.IMPLEMENTATIONS["numba"] is IW.VARIANTS[IW.DEFAULT]


@pytest.mark.parametrize(
    "log_w, exc, match",
    [
        (np.zeros((4, 6), np.float32)[:, ::2], ValueError, "C-contiguous"),
        (np.zeros((4, 3), np.float16), TypeError, "float32 or float64"),
        (np.zeros((4, 3), np.int64), TypeError, "float32 or float64"),
        ([[0.0, 1.0]], TypeError, "numpy.ndarray"),
        (np.zeros(4, np.float32), ValueError, "2 dimensions"),
        (np.zeros((0, 3), np.float32), ValueError, "K >= 1"),
    ],
)
def test_bad_input_is_rejected(log_w, exc, match):
    with pytest.raises(exc, match=match):
        IW.importance_weights(log_w)


def test_bad_weights_out_is_rejected():
    log_w = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        IW.importance_weights(log_w, np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="dtype of log_w"):
        IW.importance_weights(log_w, np.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        IW.importance_weights(log_w, np.empty((4, 6), np.float32)[:, ::2])
    base = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        IW.importance_weights(base[:12].reshape(4, 3), base[3:15].reshape(4, 3))
    with pytest.raises(ValueError, match="backend"):
        IW.importance_weights(log_w, backend="fortran")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_public_wrapper_dispatches(backend, rng):
    log_w = _log_w(rng, 40, 6, np.float64)
    bound, weights = IW.importance_weights(log_w, backend=backend)
    want_b, want_w = _oracle(log_w)
    _assert_close(bound, want_b, np.float64)
    _assert_close(weights, want_w, np.float64)
