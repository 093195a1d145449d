"""CuPy kernels against their NumPy references, on a GPU.

Every ``*_cupy_v1`` variant in kernels/ runs one test body with ``xp=numpy`` (the ``"numpy"``
backend, i.e. the reference) and with ``xp=cupy`` (the ``"cupy"`` backend) on the same host data,
in float32 and float64, at odd sizes and with edge values (-inf masks, +-1e4 logits, empty
axes, unaligned Philox offsets). Philox uniforms must be bit-identical to
``philox.uniform_ref``; normals and Gumbels agree to a few ulp (CUDA's logf / sincosf against
NumPy's), and everything computed from them to the error bounds spelled out in each test.

Needs CuPy and a CUDA device: the module is skipped with ``available_backends()["cupy"]`` as the
reason otherwise. CuPy is imported only inside the ``cp`` fixture, never at collection, so the
module collects (and skips) where CuPy is not installed.

test_kernels_cuda_emulated.py runs these same bodies on the CPU through a stand-in for CuPy that
executes the CUDA sources in an emulator (tests/cuda_emu), on device arrays that behave as
CuPy's (no implicit host conversion, no NumPy operands), so the engine's dispatch by array type
is exercised there too.
"""

import numpy as np
import pytest

import kernels
import lvmcore
from kernels import nearest_code as NC
from kernels import philox as P
from lvmcore.testing import PARITY_TOLERANCES

_CUPY = lvmcore.available_backends()["cupy"]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_CUPY != "available", reason=_CUPY)]

DTYPES = [np.float32, np.float64]
SEED = 0x0123456789ABCDEF  # both key words non-zero
STREAM = 0xFEDCBA9876543210  # both stream words non-zero
# Normals and Gumbels: CUDA's logf/sincosf (log/sincos) against NumPy's, chained through up to
# three calls; philox.py measured 2.8 ulp of max(|x|, 1) between NumPy and glibc.
NOISE_ULP = 8
EPS = {
    np.dtype(np.float32): float(np.finfo(np.float32).eps),
    np.dtype(np.float64): float(np.finfo(np.float64).eps),
}
UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


@pytest.fixture
def cp():
    import cupy

    return cupy


def _both(cp, body):
    """(body(numpy, get), body(cupy, get)): ``get(op)`` is the op's "numpy" (reference) or
    "cupy" implementation; the body returns host (NumPy) results."""

    def getter(backend):
        return lambda op: kernels.get(op, backend)

    return body(np, getter("numpy")), body(cp, getter("cupy"))


def _host(xp, a):
    return a if xp is np else xp.asnumpy(a)


def _assert_within(got, want, bound, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), want.shape)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    err = np.where(same, 0.0, np.abs(got - want))
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(
            np.argmax(np.where(bad, err - np.where(bad, bound, 0), -1)), want.shape
        )
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {want.size} values outside the "
            f"bound; worst at {i}: got {got[i]!r}, want {want[i]!r}, bound "
            f"{bound[i]!r}"
        )


def _assert_parity(got, want, dtype, what=""):
    np.testing.assert_allclose(got, want, err_msg=what, **PARITY_TOLERANCES[np.dtype(dtype)])


# ---------------------------------------------------------------------------------------------
# Philox: the CUDA port of kernels/philox.py
# ---------------------------------------------------------------------------------------------

PHILOX_CASES = [(1, 0), (1, 3), (7, 1), (1001, 0), (1001, 5), (4099, 2**35 + 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, offset", PHILOX_CASES)
def test_philox_uniforms_are_bit_identical(cp, dtype, n, offset):
    got = cp.asnumpy(P.uniform_cupy(SEED, STREAM, n, dtype, offset))
    want = P.uniform_ref(SEED, STREAM, n, dtype, offset)
    assert got.dtype == want.dtype and got.shape == (n,)
    u = UINT[np.dtype(dtype)]
    np.testing.assert_array_equal(got.view(u), want.view(u))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, offset", PHILOX_CASES)
@pytest.mark.parametrize("kind", ["normal", "gumbel"])
def test_philox_normals_and_gumbels_within_ulps(cp, dtype, n, offset, kind):
    fill, ref = {"normal": (P.normal_cupy, P.normal_ref), "gumbel": (P.gumbel_cupy, P.gumbel_ref)}[
        kind
    ]
    got = cp.asnumpy(fill(SEED, STREAM, n, dtype, offset))
    want = ref(SEED, STREAM, n, dtype, offset)
    assert got.dtype == want.dtype
    _assert_within(got, want, NOISE_ULP * EPS[np.dtype(dtype)] * np.maximum(np.abs(want), 1), kind)


@pytest.mark.parametrize("dtype", DTYPES)
def test_philox_out_argument_and_empty_fill(cp, dtype):
    out = cp.empty(10, dtype=dtype)
    assert P.uniform_cupy(1, 2, 10, dtype, 3, out=out) is out
    np.testing.assert_array_equal(cp.asnumpy(out), P.uniform_ref(1, 2, 10, dtype, 3))
    assert P.normal_cupy(1, 2, 0, dtype).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        P.uniform_cupy(1, 2, 10, dtype, out=cp.empty(9, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# bernoulli_loglik (+ backward)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S, B, D", [(1, 1, 1), (1, 3, 7), (3, 5, 33), (2, 4, 784), (5, 1, 100)])
def test_bernoulli_loglik(cp, dtype, S, B, D, rng):
    logits = (3.0 * rng.standard_normal((S * B, D))).astype(dtype)
    logits.flat[::11] *= 30.0  # a few large |logits|
    x = (rng.random((B, D)) < 0.5).astype(dtype)
    dloglik = rng.standard_normal(S * B).astype(dtype)

    def body(xp, get):
        fwd, bwd = get("bernoulli_loglik"), get("bernoulli_loglik_backward")
        lg, xx, dl = xp.asarray(logits), xp.asarray(x), xp.asarray(dloglik)
        ll, grad = fwd(lg, xx, xp.empty_like(lg))
        ll_only, none = fwd(lg, xx)
        work = lg.copy()
        ll_in, grad_in = fwd(work, xx, work)  # gradient over the logits
        assert none is None and grad_in is work
        dlogits = bwd(dl, grad)
        work2 = grad.copy()
        dlogits_in = bwd(dl, work2, work2)  # in place
        assert dlogits_in is work2
        return [_host(xp, a) for a in (ll, grad, ll_only, ll_in, grad_in, dlogits, dlogits_in)]

    want, got = _both(cp, body)
    names = [
        "loglik",
        "grad",
        "loglik (no grad)",
        "loglik (in place)",
        "grad (in place)",
        "dlogits",
        "dlogits (in place)",
    ]
    for g, w, name in zip(got, want, names):
        assert g.dtype == np.dtype(dtype)
        _assert_parity(g, w, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S, B, D", [(1, 1, 1), (3, 5, 33), (2, 4, 784)])
def test_bernoulli_loglik_with_bias(cp, dtype, S, B, D, rng):
    """The output bias read inside the kernel: what adding it first gives, with and without
    the gradient, in place."""
    logits = (3.0 * rng.standard_normal((S * B, D))).astype(dtype)
    x = (rng.random((B, D)) < 0.5).astype(dtype)
    bias = (2.0 * rng.standard_normal(D)).astype(dtype)

    def body(xp, get):
        fwd = get("bernoulli_loglik")
        lg, xx, bb = xp.asarray(logits), xp.asarray(x), xp.asarray(bias)
        ll, grad = fwd(lg, xx, xp.empty_like(lg), bb)
        ll_only, _ = fwd(lg, xx, None, bb)
        work = lg.copy()
        ll_in, _ = fwd(work, xx, work, bb)
        first, grad_first = fwd(lg + bb, xx, xp.empty_like(lg))
        return [_host(xp, a) for a in (ll, grad, ll_only, ll_in, work, first, grad_first)]

    want, got = _both(cp, body)
    for g, w in zip(got, want):
        _assert_parity(g, w, dtype, "bernoulli_loglik with bias")
    ll, grad, ll_only, ll_in, work, first, grad_first = got
    for a, b in ((ll, first), (ll_only, first), (ll_in, first), (grad, grad_first), (work, grad)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_loglik_huge_logits_are_exact(cp, dtype):
    # x l - softplus(l) for |l| = 1e4 is exactly -1e4 or 0, and the gradient exactly +-1 or 0.
    logits = cp.asarray(np.array([[-1e4], [1e4], [-1e4], [1e4]], dtype))
    x = cp.asarray(np.array([[1.0], [0.0], [0.0], [1.0]], dtype))
    ll, grad = kernels.get("bernoulli_loglik", "cupy")(logits, x, cp.empty_like(logits))
    np.testing.assert_array_equal(cp.asnumpy(ll), np.array([-1e4, -1e4, 0.0, 0.0], dtype))
    np.testing.assert_array_equal(cp.asnumpy(grad)[:, 0], np.array([1.0, -1.0, 0.0, 0.0], dtype))


# ---------------------------------------------------------------------------------------------
# importance_weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, B", [(1, 1), (1, 7), (7, 1), (37, 5), (5001, 3), (50, 300), (65, 33)])
def test_importance_weights(cp, dtype, K, B, rng):
    log_w = (5.0 * rng.standard_normal((K, B)) - 100.0).astype(dtype)

    def body(xp, get):
        iw = get("importance_weights")
        lw = xp.asarray(log_w)
        bound, weights = iw(lw)
        work = lw.copy()
        bound_in, weights_in = iw(work, work)
        assert weights_in is work
        return [_host(xp, a) for a in (bound, weights, bound_in, weights_in)]

    want, got = _both(cp, body)
    for g, w, name in zip(
        got, want, ["bound", "weights", "bound (in place)", "weights (in place)"]
    ):
        assert g.dtype == np.dtype(dtype)
        _assert_parity(g, w, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_importance_weights_special_columns(cp, dtype, rng):
    log_w = rng.standard_normal((9, 6)).astype(dtype)
    log_w[:, 0] = -np.inf  # every sample rejected: bound -inf, weights 0
    log_w[::2, 1] = -np.inf  # some rejected: weight exactly 0 there
    log_w[3, 2] = np.inf  # overflowed: bound +inf, NaN at the +inf entry, 0 else
    log_w[4, 3] = np.nan  # NaN: bound and the whole column NaN
    with np.errstate(invalid="ignore"):
        want_b, want_w = kernels.get("importance_weights", "numpy")(log_w)
    bound, weights = kernels.get("importance_weights", "cupy")(cp.asarray(log_w))
    bound, weights = cp.asnumpy(bound), cp.asnumpy(weights)
    assert bound[0] == -np.inf and np.all(weights[:, 0] == 0)
    assert np.all(weights[::2, 1] == 0)
    assert bound[2] == np.inf and np.isnan(weights[3, 2])
    assert np.all(np.delete(weights[:, 2], 3) == 0)
    assert np.isnan(bound[3]) and np.all(np.isnan(weights[:, 3]))
    _assert_parity(bound, want_b, dtype, "bound")
    _assert_parity(weights, want_w, dtype, "weights")


@pytest.mark.parametrize("dtype, spread", [(np.float32, 120.0), (np.float64, 800.0)])
def test_importance_weights_are_never_subnormal(cp, dtype, spread, rng):
    log_w = rng.uniform(-spread, 0.0, size=(400, 50)).astype(dtype)
    log_w[0] = 0.0
    _, weights = kernels.get("importance_weights", "cupy")(cp.asarray(log_w))
    weights = cp.asnumpy(weights)
    assert not np.any((weights > 0) & (weights < np.finfo(dtype).tiny))
    _assert_parity(weights, kernels.get("importance_weights", "numpy")(log_w)[1], dtype)


# ---------------------------------------------------------------------------------------------
# reparam_sample (+ backward)
# ---------------------------------------------------------------------------------------------

REPARAM_CASES = [
    (1, 1, 1, 0),
    (3, 5, 7, 1),
    (2, 3, 50, 3),
    (4, 7, 2, 5),
    (2, 2, 130, 2**35 + 1),
    (50, 4, 5, 0),
]


def _reparam_data(rng, K, B, Z, dtype):
    mu = rng.standard_normal((B, Z)).astype(dtype)
    logvar = (0.5 * rng.standard_normal((B, Z))).astype(dtype)
    dz = rng.standard_normal((K, B, Z)).astype(dtype)
    dlog_q = rng.standard_normal((K, B)).astype(dtype)
    dlog_p = rng.standard_normal((K, B)).astype(dtype)
    return mu, logvar, dz, dlog_q, dlog_p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K, B, Z, offset", REPARAM_CASES)
def test_reparam_sample(cp, dtype, K, B, Z, offset, rng):
    mu, logvar, dz, dlog_q, dlog_p = _reparam_data(rng, K, B, Z, dtype)

    def body(xp, get):
        m, lv = xp.asarray(mu), xp.asarray(logvar)
        z, log_q, log_p = get("reparam_sample")(m, lv, K, SEED, STREAM, offset)
        z_out = xp.empty((K, B, Z), dtype)
        z2, _, _ = get("reparam_sample")(m, lv, K, SEED, STREAM, offset, z_out)
        assert z2 is z_out
        dmu, dlogvar = get("reparam_sample_backward")(
            xp.asarray(dz), xp.asarray(dlog_q), xp.asarray(dlog_p), m, lv, SEED, STREAM, offset
        )
        # None upstream gradients read as zeros (the reference takes the zeros themselves)
        zeros = (lambda shape: np.zeros(shape, dtype)) if xp is np else (lambda shape: None)
        dmu0, dlv0 = get("reparam_sample_backward")(
            zeros((K, B, Z)), xp.asarray(dlog_q), zeros((K, B)), m, lv, SEED, STREAM, offset
        )
        return [_host(xp, a) for a in (z, log_q, log_p, z2, dmu, dlogvar, dmu0, dlv0)]

    want, got = _both(cp, body)
    for g in got:
        assert g.dtype == np.dtype(dtype)
    z, log_q, log_p, z2, dmu, dlogvar, dmu0, dlv0 = got
    e = EPS[np.dtype(dtype)]
    c = 4 * NOISE_ULP
    # the reference's own eps and z, in float64, to size the bounds
    eps = P.normal_ref(SEED, STREAM, K * B * Z, dtype, offset).reshape(K, B, Z).astype(float)
    sigma = np.exp(logvar.astype(float) / 2)
    z_ref = mu + sigma * eps
    big_e = np.maximum(np.abs(eps), 1)
    _assert_within(z, want[0], c * e * (np.abs(mu) + sigma * big_e + np.abs(z_ref)), "z")
    np.testing.assert_array_equal(z2, z)
    # row sums of Z terms each good to c ulp: (c + Z) eps times the sum of |terms|
    _assert_within(log_q, want[1], (c + Z) * e * (np.abs(logvar) + big_e**2 + 1).sum(-1), "log_q")
    _assert_within(log_p, want[2], (c + Z) * e * (z_ref**2 + 1).sum(-1), "log_p")
    # backward: K terms g = dz - dlog_p z, each with z good to c ulp
    g_mag = np.abs(dz) + np.abs(dlog_p)[..., None] * (np.abs(mu) + sigma * big_e)  # (K, B, Z)
    _assert_within(dmu, want[4], (c + K) * e * g_mag.sum(0) + 1e-300, "dmu")
    lv_mag = (g_mag * sigma * big_e).sum(0) + np.abs(dlog_q).sum(0)[:, None]
    _assert_within(dlogvar, want[5], (c + K) * e * lv_mag + 1e-300, "dlogvar")
    np.testing.assert_array_equal(dmu0, np.zeros_like(dmu0))
    _assert_parity(dlv0, want[7], dtype, "dlogvar from dlog_q only")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, Z", [(0, 3), (3, 0)])
def test_reparam_sample_empty_axes(cp, dtype, B, Z):
    mu = cp.zeros((B, Z), dtype)
    z, log_q, log_p = kernels.get("reparam_sample", "cupy")(mu, mu, 4, SEED)
    assert z.shape == (4, B, Z) and log_q.shape == log_p.shape == (4, B)
    assert np.all(cp.asnumpy(log_q) == 0) and np.all(cp.asnumpy(log_p) == 0)
    dmu, dlogvar = kernels.get("reparam_sample_backward", "cupy")(
        cp.ones((4, B, Z), dtype), cp.ones((4, B), dtype), cp.ones((4, B), dtype), mu, mu, SEED
    )
    assert dmu.shape == dlogvar.shape == (B, Z)


# ---------------------------------------------------------------------------------------------
# gumbel_softmax (+ backward) and gumbel_max
# ---------------------------------------------------------------------------------------------

GUMBEL_CASES = [(1, 1, 0), (3, 1, 1), (7, 2, 3), (33, 10, 5), (1001, 10, 0), (9, 513, 2**35 + 1)]


def _softmax_bound(dtype, logits, g, tau, y_ref):
    """|y - y_ref| bound: the Gumbels' few ulp plus one rounding of s = logits + g, divided by
    tau, move exp(d) by a relative 2 * max over the row; exp, the sum and the division add
    (C + 4) ulp; masked (-inf) entries must be exactly 0 on both sides."""
    e = EPS[np.dtype(dtype)]
    s = logits.astype(float) + g
    ds = np.where(np.isfinite(s), NOISE_ULP * e * np.maximum(np.abs(g), 1) + 2 * e * np.abs(s), 0)
    rel = 2 * ds.max(axis=1, keepdims=True) / tau + (logits.shape[1] + 4) * e
    return rel * y_ref + 1e-36


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, offset", GUMBEL_CASES)
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_gumbel_softmax(cp, dtype, N, C, offset, tau, rng):
    logits = (2.0 * rng.standard_normal((N, C))).astype(dtype)
    if C > 2:
        logits[:, 1] = -np.inf  # a masked category
    dy = rng.standard_normal((N, C)).astype(dtype)

    def body(xp, get):
        fwd, bwd, amax = get("gumbel_softmax"), get("gumbel_softmax_backward"), get("gumbel_max")
        lg = xp.asarray(logits)
        y = fwd(lg, tau, SEED, STREAM, offset)
        y_soft = xp.empty_like(lg)
        hard = fwd(lg, tau, SEED, STREAM, offset, True, None, y_soft)
        hard_only = fwd(lg, tau, SEED, STREAM, offset, True)
        index = amax(lg, SEED, STREAM, offset)
        dlogits, _ = bwd(xp.asarray(dy), y, tau)
        return [_host(xp, a) for a in (y, y_soft, hard, hard_only, index, dlogits)]

    want, got = _both(cp, body)
    y, y_soft, hard, hard_only, index, dlogits = got
    g = P.gumbel_ref(SEED, STREAM, N * C, dtype, offset).reshape(N, C).astype(float)
    bound = _softmax_bound(dtype, logits, g, tau, want[0])
    _assert_within(y, want[0], bound, "y")
    _assert_within(y_soft, want[0], bound, "y_soft")
    if C > 2:
        assert np.all(y[:, 1] == 0) and np.all(dlogits[:, 1] == 0)
    np.testing.assert_array_equal(hard, want[2])
    np.testing.assert_array_equal(hard_only, want[2])
    assert index.dtype == np.int64
    np.testing.assert_array_equal(index, want[4])
    np.testing.assert_array_equal(hard, np.eye(C, dtype=dtype)[index])
    # backward, dlogits = y (dy - sum dy y) / tau. Each side on its own y: the difference of the
    # y's (bound above) propagates; then both on the reference's y: rounding only.
    e = EPS[np.dtype(dtype)]
    y_ref = want[0]
    d_mag = y_ref * (np.abs(dy) + np.abs(dy * y_ref).sum(1, keepdims=True)) / tau
    sd = np.abs((dy * y_ref).sum(1, keepdims=True))
    from_y = (bound * (np.abs(dy) + sd) + y_ref * (np.abs(dy) * bound).sum(1, keepdims=True)) / tau
    _assert_within(dlogits, want[5], (C + 8) * e * d_mag + 2 * from_y + 1e-36, "dlogits (own y)")
    d2, t2 = kernels.get("gumbel_softmax_backward", "cupy")(cp.asarray(dy), cp.asarray(y_ref), tau)
    d2w, t2w = kernels.get("gumbel_softmax_backward", "numpy")(dy, y_ref, tau)
    _assert_within(cp.asnumpy(d2), d2w, (C + 8) * e * d_mag + 1e-36, "dlogits")
    a = np.where(y_ref > 0, np.log(np.where(y_ref > 0, y_ref, 1)), 0)
    t_mag = float((np.abs(d2w) * (np.abs(a) + 1)).sum())
    assert abs(t2 - t2w) <= (C + 16) * e * t_mag + 1e-300, (t2, t2w)
    # with the softmax argument passed in
    t3 = kernels.get("gumbel_softmax_backward", "cupy")(
        cp.asarray(dy), cp.asarray(y_ref), tau, cp.asarray(a.astype(dtype))
    )[1]
    t3w = kernels.get("gumbel_softmax_backward", "numpy")(dy, y_ref, tau, a.astype(dtype))[1]
    assert abs(t3 - t3w) <= (C + 16) * e * t_mag + 1e-300, (t3, t3w)
    # a masked category's argument is -inf: left out as on the y_soft path (no 0 * -inf)
    a_inf = np.where(y_ref > 0, a, -np.inf).astype(dtype)
    t4 = kernels.get("gumbel_softmax_backward", "cupy")(
        cp.asarray(dy), cp.asarray(y_ref), tau, cp.asarray(a_inf)
    )[1]
    assert t4 == t3


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_softmax_zero_temperature_and_huge_logits(cp, dtype, rng):
    # s - max s is taken before dividing by tau: no overflow, exactly one-hot rows, no NaN.
    logits = np.where(rng.random((200, 7)) < 0.5, -1e4, 1e4).astype(dtype)
    logits[:, 0] = 1e4 + 50.0  # a clear winner in float32 and float64
    lg = cp.asarray(logits)
    y = cp.asnumpy(kernels.get("gumbel_softmax", "cupy")(lg, 1e-8, 7))
    index = cp.asnumpy(kernels.get("gumbel_max", "cupy")(lg, 7))
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(index, np.zeros(200, np.int64))
    np.testing.assert_array_equal(y, np.eye(7, dtype=dtype)[index])


# ---------------------------------------------------------------------------------------------
# nearest_code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, M, E", [(1, 1, 1), (5, 3, 2), (101, 37, 8), (257, 300, 5), (0, 4, 3)])
@pytest.mark.parametrize("tiles", ["one", "many"])
def test_nearest_code(cp, dtype, N, M, E, tiles, rng, monkeypatch):
    if tiles == "many":  # a score block of 3 query rows: several GEMM tiles and launches
        monkeypatch.setattr(NC, "_CUPY_BLOCK_BYTES", 3 * M * np.dtype(dtype).itemsize)
    x = rng.standard_normal((N, E)).astype(dtype)
    codebook = rng.standard_normal((M, E)).astype(dtype)

    def body(xp, get):
        nc = get("nearest_code")
        index, dist2 = nc(xp.asarray(x), xp.asarray(codebook))
        sq = xp.asarray((codebook.astype(float) ** 2).sum(1).astype(dtype))
        index2, _ = nc(xp.asarray(x), xp.asarray(codebook), sq)
        return [_host(xp, a) for a in (index, dist2, index2)]

    want, got = _both(cp, body)
    index, dist2, index2 = got
    assert index.dtype == np.int64 and dist2.dtype == np.dtype(dtype)
    # The argmin of computed scores may differ from the reference's (cuBLAS vs BLAS rounding)
    # only between codes whose distances differ by less than the scores' rounding error.
    true = ((x.astype(float)[:, None] - codebook.astype(float)[None]) ** 2).sum(-1)  # (N, M)
    rows = np.arange(N)
    e = EPS[np.dtype(dtype)]
    slack = 8 * E * e * ((x.astype(float) ** 2).sum(1) + (codebook.astype(float) ** 2).sum(1).max())
    assert np.all(true[rows, index] <= true[rows, want[0]] + slack)
    assert np.all(true[rows, index2] <= true[rows, want[0]] + slack)
    # dist2 is the distance to the chosen code, rounded once
    _assert_within(dist2, true[rows, index], (E + 2) * e * true[rows, index] + 1e-300, "dist2")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_code_separated_data_and_ties(cp, dtype, rng):
    # Codes on a grid (spacing 1) and queries within 0.1 of one: the nearest code is unambiguous,
    # so the index must equal the reference's. Exact duplicate codes return the first copy.
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(6), indexing="ij"), -1).reshape(-1, 2)
    codebook = np.concatenate([grid, grid[:5]]).astype(dtype)  # rows 36..40 = rows 0..4
    pick = rng.integers(0, 36, 500)
    x = (grid[pick] + rng.uniform(-0.1, 0.1, (500, 2))).astype(dtype)
    x[:5] = codebook[36:41]  # exactly on duplicates
    index, dist2 = kernels.get("nearest_code", "cupy")(cp.asarray(x), cp.asarray(codebook))
    index, dist2 = cp.asnumpy(index), cp.asnumpy(dist2)
    np.testing.assert_array_equal(index, kernels.get("nearest_code", "numpy")(x, codebook)[0])
    np.testing.assert_array_equal(index[5:], pick[5:])
    np.testing.assert_array_equal(index[:5], np.arange(5))
    np.testing.assert_array_equal(dist2[:5], np.zeros(5, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_code_ties_go_to_the_lowest_index(cp, dtype):
    # x = 0 makes every GEMM entry exactly 0, so the scores are the exact squared norms: codes
    # 0..4 score 4, the 2E = 40 distinct unit codes 5..44 all score 1, spread over every lane of
    # the warp. The lowest of the tied indices, 5, must win.
    E = 20
    unit = np.concatenate([np.eye(E), -np.eye(E)])
    codebook = np.concatenate([2 * np.eye(E)[:5], unit]).astype(dtype)
    x = np.zeros((7, E), dtype)
    index, dist2 = kernels.get("nearest_code", "cupy")(cp.asarray(x), cp.asarray(codebook))
    np.testing.assert_array_equal(cp.asnumpy(index), np.full(7, 5))
    np.testing.assert_array_equal(
        cp.asnumpy(index), kernels.get("nearest_code", "numpy")(x, codebook)[0]
    )
    np.testing.assert_array_equal(cp.asnumpy(dist2), np.ones(7, dtype))


@pytest.mark.filterwarnings("ignore:overflow encountered")  # NumPy's, under the emulator
def test_nearest_code_rejects_overflow_and_non_finite(cp):
    x = cp.asarray(np.full((3, 4), 1e19, np.float32))
    codebook = cp.asarray(np.full((2, 4), -1e19, np.float32))
    with pytest.raises(ValueError, match="overflows"):
        kernels.get("nearest_code", "cupy")(x, codebook)
    bad = np.zeros((3, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kernels.get("nearest_code", "cupy")(
            cp.asarray(bad), cp.asarray(np.zeros((2, 4), np.float32))
        )


def test_nearest_code_copies_non_contiguous_queries(cp, rng):
    x = rng.standard_normal((40, 6)).astype(np.float32)
    codebook = rng.standard_normal((9, 3)).astype(np.float32)
    got = kernels.get("nearest_code", "cupy")(cp.asarray(x)[:, ::2], cp.asarray(codebook))
    want = kernels.get("nearest_code", "cupy")(
        cp.asarray(np.ascontiguousarray(x[:, ::2])), cp.asarray(codebook)
    )
    np.testing.assert_array_equal(cp.asnumpy(got[0]), cp.asnumpy(want[0]))


# ---------------------------------------------------------------------------------------------
# adam_update
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 3), (1001,), (4, 5, 6)])
def test_adam_update(cp, dtype, shape, rng):
    host = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]

    def body(xp, get):
        update = get("adam_update")
        p, m, v = (xp.array(a) for a in host)  # copies: the update is in place
        v = abs(v)
        for t, g in enumerate(grads, start=1):  # three steps, bias corrections folded in
            step = 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            update(p, xp.asarray(g), m, v, step, 0.9, 0.999, 1e-8 * np.sqrt(1 - 0.999**t))
        return [_host(xp, a) for a in (p, m, v)]

    want, got = _both(cp, body)
    for g, w, name in zip(got, want, "pmv"):
        assert g.dtype == np.dtype(dtype)
        _assert_parity(g, w, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_group(cp, dtype, rng):
    """A whole optimizer's arrays in one call, on the device as on the host."""
    from kernels.adam_update import AdamGroup

    shapes = [(7, 3), (1,), (0,), (1001,)]
    host = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]

    def body(xp, get):
        ps, gs, ms, vs = ([xp.array(a) for a in arrays] for arrays in host)
        vs = [abs(v) for v in vs]
        lib = "numpy" if xp is np else "cupy"
        get("adam_update_group")(AdamGroup(ps, gs, ms, vs, lib=lib), 1e-3, 0.9, 0.999, 1e-8)
        return [_host(xp, a) for a in ps + ms + vs]

    want, got = _both(cp, body)
    for g, w in zip(got, want):
        assert g.dtype == np.dtype(dtype)
        _assert_parity(g, w, dtype, "adam group")


# ---------------------------------------------------------------------------------------------
# Mixture of diagonal Gaussians: log-density over the components and its backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "N, C, Z", [(1, 1, 1), (5, 3, 2), (37, 33, 3), (70, 5, 1), (3, 65, 4), (0, 4, 2)]
)
def test_mixture_logprob(cp, dtype, N, C, Z, rng):
    z = rng.standard_normal((N, Z)).astype(dtype)
    mu = rng.standard_normal((C, Z)).astype(dtype)
    logvar = (0.3 * rng.standard_normal((C, Z))).astype(dtype)
    log_w = np.log(rng.dirichlet(np.ones(C))).astype(dtype)
    if C > 2:
        log_w[1] = -np.inf  # a component switched off
    dlog_p = rng.standard_normal(N).astype(dtype)

    def body(xp, get):
        args = [xp.asarray(a) for a in (z, mu, logvar, log_w)]
        log_p, resp = get("mixture_logprob")(*args)
        grads = get("mixture_logprob_backward")(xp.asarray(dlog_p), *args[:3], resp)
        dz_only = get("mixture_logprob_backward")(xp.asarray(dlog_p), *args[:3], resp, False)
        assert dz_only[1:] == (None, None, None)
        return [_host(xp, a) for a in (log_p, resp, *grads, dz_only[0])]

    want, got = _both(cp, body)
    names = ["log_p", "resp", "dz", "dmu", "dlogvar", "dlog_weights", "dz (alone)"]
    for g, w, name in zip(got, want, names):
        assert g.dtype == np.dtype(dtype) and g.shape == w.shape, name
        # float32 gradients: sums of up to max(N, C) terms of either sign
        tol = None if dtype == np.float64 or name in ("log_p", "resp") else 2e-5 * max(N, C)
        if tol is None:
            _assert_parity(g, w, dtype, name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=tol, err_msg=name)
    if C > 2 and N:
        assert np.all(got[1][:, 1] == 0) and got[5][1] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixture_logprob_rows_without_a_component(cp, dtype, rng):
    z = rng.standard_normal((6, 2)).astype(dtype)
    mu, logvar = np.zeros((3, 2), dtype), np.zeros((3, 2), dtype)
    off = np.full(3, -np.inf, dtype)
    log_p, resp = kernels.get("mixture_logprob", "cupy")(
        *(cp.asarray(a) for a in (z, mu, logvar, off))
    )
    assert np.all(cp.asnumpy(log_p) == -np.inf) and not cp.asnumpy(resp).any()


def test_mixture_and_vamp_priors_on_the_device_run_the_kernel(cp, rng):
    """The priors' log-density and backward on device arrays: the "cupy" kernel, equal to the
    host's."""
    from lvmcore.nn import GaussianLayer
    from lvmcore.priors import MixturePrior, VampPrior

    z = rng.standard_normal((3, 4, 2))
    G = rng.standard_normal((3, 4))

    def make():
        r = np.random.default_rng(5)
        enc = GaussianLayer((5, 4, 2), "tanh", r, np.float64)
        vamp = VampPrior((enc.forward, enc.backward), 3, 5, 2, r, dtype=np.float64)
        return [MixturePrior(2, 4, r, dtype=np.float64), vamp], enc

    def body(xp):
        priors, enc = make()
        if xp is cp:
            enc.to(cp)
            for p in priors:
                p.to(cp)
        out = []
        for p in priors:
            log_p, cache = p.log_prob(xp.asarray(z))
            dz = p.log_prob_backward(xp.asarray(G), cache)
            out += [log_p, dz, *p.grads.values()]
        out += list(enc.grads.values())
        return [_host(xp, a) for a in out]

    for g, w in zip(body(cp), body(np)):
        _assert_parity(g, w, np.float64)


# ---------------------------------------------------------------------------------------------
# Registration, dispatch from the engine, bad input
# ---------------------------------------------------------------------------------------------

OPS = [
    "bernoulli_loglik",
    "bernoulli_loglik_backward",
    "importance_weights",
    "mixture_logprob",
    "mixture_logprob_backward",
    "reparam_sample",
    "reparam_sample_backward",
    "gumbel_softmax",
    "gumbel_softmax_backward",
    "gumbel_max",
    "nearest_code",
    "adam_update",
]


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_cupy_variant(op):
    assert kernels.get(op, "cupy").__name__ == f"{op}_cupy_v1"


def test_engine_dispatches_cupy_arrays_to_the_cupy_kernels(cp, rng):
    from lvmcore.backend import get_backend
    from lvmcore.losses.iwae import importance_weights_forward
    from lvmcore.losses.likelihoods import bernoulli_nll_backward, bernoulli_nll_forward

    log_w = (5.0 * rng.standard_normal((20, 6))).astype(np.float32)
    logits = rng.standard_normal((12, 9)).astype(np.float32)
    x = (rng.random((6, 9)) < 0.5).astype(np.float32)
    dnll = rng.standard_normal(12).astype(np.float32)

    def body(xp):
        assert get_backend(xp.asarray(log_w)).name == ("cupy" if xp is cp else "numba")
        bound, cache = importance_weights_forward(xp.asarray(log_w))
        nll, lcache = bernoulli_nll_forward(xp.asarray(logits), xp.asarray(x))
        dlogits = bernoulli_nll_backward(xp.asarray(dnll), lcache)
        return [_host(xp, a) for a in (bound, cache.weights, nll, dlogits)]

    for g, w in zip(body(cp), body(np)):
        _assert_parity(g, w, np.float32)


@pytest.mark.parametrize(
    "op, args",
    [
        ("bernoulli_loglik", lambda: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))),
        ("importance_weights", lambda: (np.zeros((2, 3), np.float32),)),
        (
            "adam_update",
            lambda: tuple(np.zeros(3, np.float32) for _ in range(4)) + (1, 0.9, 0.9, 1),
        ),
    ],
)
def test_cupy_variants_reject_numpy_arrays(cp, op, args):
    with pytest.raises(TypeError, match="cupy.ndarray"):
        kernels.get(op, "cupy")(*args())


def test_cupy_variants_check_dtype_and_contiguity(cp):
    logits = cp.zeros((4, 6), cp.float32)
    with pytest.raises(TypeError, match="dtype of logits"):
        kernels.get("bernoulli_loglik", "cupy")(logits, cp.zeros((4, 6), cp.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.get("bernoulli_loglik", "cupy")(logits[:, ::2], logits[:, ::2].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.get("importance_weights", "cupy")(logits.T)
