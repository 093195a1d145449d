"""DiagNormal, StandardNormal, Bernoulli, Categorical, UniformCategorical.

Oracles: central differences in float64 (lvmcore.testing.gradcheck) for every
backward, scipy.stats for log_prob and entropy, sample statistics for samplers.
"""

import importlib.util
import warnings

import numpy as np
import pytest
from scipy import special, stats

from lvmcore.distributions import (
    Bernoulli,
    Categorical,
    DiagNormal,
    StandardNormal,
    UniformCategorical,
)
from lvmcore.exceptions import InvalidParameterError
from lvmcore.testing import gradcheck

DTYPES = [np.float32, np.float64]
# float32 results against the float64 ones: a few ulps times the reduction length.
F32_TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _cupy_or_skip():
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device found")
    except Exception as exc:  # CUDA driver or runtime missing
        pytest.skip(f"CUDA unavailable: {exc}")
    return cupy


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    return np if request.param == "numpy" else _cupy_or_skip()


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _probe(rng, shape):
    """The probe G ~ N(0, 1/n) of lvmcore.testing: L = sum(out * G)."""
    n = max(int(np.prod(shape)), 1)
    return rng.standard_normal(shape) / np.sqrt(n)


# --- DiagNormal ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "param_shape,sample_shape",
    [((4,), ()), ((3, 4), ()), ((3, 4), (5,)), ((1, 2), (2, 3)), ((2, 1), (1,))],
)
def test_diagnormal_rsample_shapes_and_reparameterize(rng, dtype, param_shape, sample_shape):
    loc = rng.standard_normal(param_shape).astype(dtype)
    logvar = rng.standard_normal(param_shape).astype(dtype)
    p = DiagNormal(loc, logvar)
    assert p.batch_shape == param_shape[:-1] and p.event_shape == param_shape[-1:]
    z, eps = p.rsample(rng, sample_shape)
    assert z.shape == eps.shape == sample_shape + param_shape
    assert z.dtype == eps.dtype == dtype
    np.testing.assert_array_equal(z, p.reparameterize(eps))
    np.testing.assert_allclose(z, loc + np.exp(0.5 * logvar) * eps, rtol=1e-6)


def test_diagnormal_rsample_is_reproducible():
    loc, logvar = np.zeros((2, 3)), np.zeros((2, 3))
    p = DiagNormal(loc, logvar)
    a = p.rsample(np.random.default_rng(7), (4,))[0]
    b = p.rsample(np.random.default_rng(7), (4,))[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, p.sample(np.random.default_rng(7), (4,)))


def test_diagnormal_sample_moments(rng):
    loc = np.array([[-1.0, 0.5, 2.0]])
    logvar = np.array([[0.0, -1.0, 1.2]])
    z = DiagNormal(loc, logvar).sample(rng, (40_000,))
    n = z.shape[0]
    sd = np.exp(0.5 * logvar)
    # 5 standard errors of the sample mean and of the sample variance
    np.testing.assert_array_less(np.abs(z.mean(0) - loc), 5 * sd / np.sqrt(n))
    np.testing.assert_array_less(np.abs(z.var(0) - sd**2), 5 * sd**2 * np.sqrt(2 / n))


@pytest.mark.parametrize(
    "param_shape,sample_shape", [((4,), ()), ((3, 4), ()), ((3, 4), (2,)), ((2, 1, 3), (2, 1))]
)
def test_diagnormal_rsample_backward_gradcheck(rng, param_shape, sample_shape):
    loc = rng.standard_normal(param_shape)
    logvar = 0.5 * rng.standard_normal(param_shape)
    eps = DiagNormal(loc, logvar).rsample(rng, sample_shape)[1]  # noise held fixed
    G = _probe(rng, eps.shape)

    def loss():
        return np.sum(DiagNormal(loc, logvar).reparameterize(eps) * G)

    grads = DiagNormal(loc, logvar).rsample_backward(G, eps)
    assert set(grads) == {"loc", "logvar"}
    gradcheck(loss, {"loc": loc, "logvar": logvar}, grads, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diagnormal_log_prob_matches_scipy(rng, dtype):
    loc = rng.standard_normal((3, 5))
    logvar = rng.uniform(-2, 2, (3, 5))
    z = rng.standard_normal((4, 3, 5)) * 2
    want = stats.norm.logpdf(z, loc, np.exp(0.5 * logvar)).sum(-1)
    got = DiagNormal(loc.astype(dtype), logvar.astype(dtype)).log_prob(z.astype(dtype))
    assert got.shape == (4, 3) and got.dtype == dtype
    tol = F32_TOL if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize(
    "param_shape,value_shape",
    [((4,), (4,)), ((3, 4), (3, 4)), ((3, 4), (2, 3, 4)), ((3, 4), (4,)), ((1, 4), (2, 3, 4))],
)
def test_diagnormal_log_prob_backward_gradcheck(rng, param_shape, value_shape):
    loc = rng.standard_normal(param_shape)
    logvar = 0.5 * rng.standard_normal(param_shape)
    value = rng.standard_normal(value_shape)
    out_shape = np.broadcast_shapes(param_shape, value_shape)[:-1]
    G = _probe(rng, out_shape)

    def loss():
        return np.sum(DiagNormal(loc, logvar).log_prob(value) * G)

    grads = DiagNormal(loc, logvar).log_prob_backward(G, value)
    assert set(grads) == {"loc", "logvar", "value"}
    gradcheck(loss, {"loc": loc, "logvar": logvar, "value": value}, grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diagnormal_entropy_matches_scipy(rng, dtype):
    logvar = rng.uniform(-3, 3, (4, 6))
    want = stats.norm(scale=np.exp(0.5 * logvar)).entropy().sum(-1)
    got = DiagNormal(np.zeros_like(logvar, dtype=dtype), logvar.astype(dtype)).entropy()
    assert got.shape == (4,) and got.dtype == dtype
    tol = F32_TOL if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


def test_diagnormal_entropy_backward_gradcheck(rng):
    loc, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    G = _probe(rng, (3,))

    def loss():
        return np.sum(DiagNormal(loc, logvar).entropy() * G)

    gradcheck(loss, {"loc": loc, "logvar": logvar}, DiagNormal(loc, logvar).entropy_backward(G))


def test_diagnormal_float32_gradients_keep_dtype(rng):
    loc = rng.standard_normal((3, 4)).astype(np.float32)
    p = DiagNormal(loc, loc.copy())
    z, eps = p.rsample(rng, (2,))
    for grads in (
        p.rsample_backward(np.ones_like(z), eps),
        p.log_prob_backward(np.ones((2, 3), np.float32), z),
        p.entropy_backward(1.0),
    ):
        assert all(g.dtype == np.float32 for g in grads.values())


def test_diagnormal_parity_across_array_modules(xp, rng):
    loc, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    z = rng.standard_normal((2, 3, 4))
    ref = DiagNormal(loc, logvar)
    dev = DiagNormal(xp.asarray(loc), xp.asarray(logvar))
    np.testing.assert_allclose(_to_numpy(dev.log_prob(xp.asarray(z))), ref.log_prob(z), rtol=1e-12)
    np.testing.assert_allclose(_to_numpy(dev.entropy()), ref.entropy(), rtol=1e-12)
    got = dev.log_prob_backward(xp.ones((2, 3)), xp.asarray(z))
    for k, v in ref.log_prob_backward(np.ones((2, 3)), z).items():
        np.testing.assert_allclose(_to_numpy(got[k]), v, rtol=1e-12, atol=1e-14)
    zd, epsd = dev.rsample(np.random.default_rng(3), (2,))
    np.testing.assert_allclose(
        _to_numpy(zd), ref.rsample(np.random.default_rng(3), (2,))[0], rtol=1e-12
    )


# --- StandardNormal -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_normal_log_prob_entropy_sample(rng, dtype):
    q = StandardNormal(5, dtype)
    assert q.batch_shape == () and q.event_shape == (5,)
    z = q.sample(rng, (7, 2))
    assert z.shape == (7, 2, 5) and z.dtype == dtype
    lp = q.log_prob(z)
    assert lp.shape == (7, 2) and lp.dtype == dtype
    tol = F32_TOL if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(lp, stats.norm.logpdf(z.astype(np.float64)).sum(-1), **tol)
    np.testing.assert_allclose(q.entropy(), 5 * stats.norm.entropy(), **tol)
    assert q.entropy().dtype == dtype
    zz, eps = q.rsample(rng, (3,))
    np.testing.assert_array_equal(zz, eps)
    assert q.rsample_backward(zz, eps) == {} and q.entropy_backward(1.0) == {}


def test_standard_normal_log_prob_backward_gradcheck(rng):
    z = rng.standard_normal((3, 2, 4))
    G = _probe(rng, (3, 2))
    q = StandardNormal(4, np.float64)

    def loss():
        return np.sum(q.log_prob(z) * G)

    grads = q.log_prob_backward(G, z)
    assert set(grads) == {"value"}
    gradcheck(loss, {"value": z}, grads)


# --- Bernoulli ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("event_ndim", [0, 1])
def test_bernoulli_log_prob_and_entropy_match_scipy(rng, dtype, event_ndim):
    logits = rng.uniform(-6, 6, (4, 7))
    x = (rng.random((3, 4, 7)) < 0.5).astype(np.float64)
    d = Bernoulli(logits.astype(dtype), event_ndim=event_ndim)
    want_lp = stats.bernoulli.logpmf(x, special.expit(logits))
    want_h = stats.bernoulli.entropy(special.expit(logits))
    if event_ndim:
        want_lp, want_h = want_lp.sum(-1), want_h.sum(-1)
    got_lp, got_h = d.log_prob(x.astype(dtype)), d.entropy()
    assert got_lp.shape == want_lp.shape and got_h.shape == want_h.shape == d.batch_shape
    assert got_lp.dtype == got_h.dtype == dtype
    tol = F32_TOL if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_lp, want_lp, **tol)
    np.testing.assert_allclose(got_h, want_h, **tol)
    np.testing.assert_allclose(d.probs, special.expit(logits), **tol)


@pytest.mark.parametrize("event_ndim", [0, 1])
@pytest.mark.parametrize(
    "logit_shape,value_shape", [((6,), (6,)), ((3, 6), (3, 6)), ((3, 6), (2, 3, 6)), ((3, 6), (6,))]
)
def test_bernoulli_log_prob_backward_gradcheck(rng, event_ndim, logit_shape, value_shape):
    logits = 3 * rng.standard_normal(logit_shape)
    value = (rng.random(value_shape) < 0.5).astype(np.float64)
    full = np.broadcast_shapes(logit_shape, value_shape)
    G = _probe(rng, full[: len(full) - event_ndim])

    def loss():
        return np.sum(Bernoulli(logits, event_ndim=event_ndim).log_prob(value) * G)

    grads = Bernoulli(logits, event_ndim=event_ndim).log_prob_backward(G, value)
    assert set(grads) == {"logits", "value"}
    gradcheck(loss, {"logits": logits, "value": value}, grads)


@pytest.mark.parametrize("event_ndim", [0, 1, 2])
def test_bernoulli_entropy_backward_gradcheck(rng, event_ndim):
    logits = 3 * rng.standard_normal((2, 3, 4))
    G = _probe(rng, logits.shape[: 3 - event_ndim])

    def loss():
        return np.sum(Bernoulli(logits, event_ndim=event_ndim).entropy() * G)

    gradcheck(
        loss, {"logits": logits}, Bernoulli(logits, event_ndim=event_ndim).entropy_backward(G)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, 1e30])
def test_bernoulli_extreme_logits_are_exact(dtype, big):
    logits = np.array([-big, -big, big, big], dtype=dtype)
    x = np.array([1, 0, 1, 0], dtype=dtype)
    d = Bernoulli(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lp = d.log_prob(x)
        g = d.log_prob_backward(np.ones(4, dtype), x)
        h, dh = d.entropy(), d.entropy_backward(np.ones(4, dtype))
    big = dtype(big)
    np.testing.assert_array_equal(lp, np.array([-big, 0, 0, -big], dtype=dtype))
    # d/dl [x l - softplus(l)] = x - sigmoid(l): exactly +-1 or 0 at these logits
    np.testing.assert_array_equal(g["logits"], np.array([1, 0, 0, -1], dtype=dtype))
    np.testing.assert_array_equal(g["value"], logits)
    np.testing.assert_array_equal(h, np.zeros(4, dtype))
    np.testing.assert_array_equal(dh["logits"], np.zeros(4, dtype))
    for a in (lp, g["logits"], h, dh["logits"]):
        assert a.dtype == dtype and np.all(np.isfinite(a))


def test_bernoulli_gradient_keeps_relative_accuracy_near_saturation():
    # x = 1 at l = 30: x - sigmoid(l) = sigmoid(-30) ~ 9.4e-14, lost by 1 - 0.99999...
    d = Bernoulli(np.array([30.0, -30.0]))
    g = d.log_prob_backward(1.0, np.array([1.0, 0.0]))["logits"]
    np.testing.assert_allclose(g, [special.expit(-30.0), -special.expit(-30.0)], rtol=1e-14)
    # H = (1 + 30) e^-30 + O(e^-60) ~ 2.9e-12; softplus(l) - l sigmoid(l) (and scipy's
    # entropy) keep only ~3 digits here. Reference from mpmath at 50 digits.
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        p = 1 / (1 + mpmath.exp(-30))
        want = float(-p * mpmath.log(p) - (1 - p) * mpmath.log(1 - p))
    np.testing.assert_allclose(d.entropy(), [want, want], rtol=1e-13)


def test_bernoulli_sample_frequencies(rng):
    logits = np.array([-2.0, 0.0, 1.5, 40.0])
    d = Bernoulli(logits)
    n = 50_000
    x = d.sample(rng, (n,))
    assert x.shape == (n, 4) and x.dtype == np.float64
    assert set(np.unique(x)) <= {0.0, 1.0}
    p = special.expit(logits)
    np.testing.assert_array_less(np.abs(x.mean(0) - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


# --- Categorical --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_log_prob_and_entropy_match_scipy(rng, dtype):
    logits = 2 * rng.standard_normal((4, 6))
    idx = rng.integers(0, 6, (3, 4))
    d = Categorical(logits.astype(dtype))
    assert d.batch_shape == (4,) and d.event_shape == () and d.num_categories == 6
    p = special.softmax(logits, axis=-1)
    onehot = np.eye(6, dtype=int)[idx]  # (3, 4, 6)
    want = np.array(
        [[stats.multinomial(1, p[b]).logpmf(onehot[s, b]) for b in range(4)] for s in range(3)]
    )
    got = d.log_prob(idx)
    assert got.shape == (3, 4) and got.dtype == dtype
    tol = F32_TOL if dtype == np.float32 else dict(rtol=1e-12)
    np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_allclose(d.entropy(), stats.entropy(p, axis=-1), **tol)
    np.testing.assert_allclose(d.probs, p, **tol)
    np.testing.assert_allclose(d.log_probs, special.log_softmax(logits, axis=-1), **tol)


@pytest.mark.parametrize(
    "logit_shape,index_shape", [((5,), ()), ((3, 5), (3,)), ((3, 5), (2, 3)), ((1, 5), (2, 3))]
)
def test_categorical_log_prob_backward_gradcheck(rng, logit_shape, index_shape):
    logits = rng.standard_normal(logit_shape)
    logits[..., 1] = -np.inf  # a masked category, never indexed
    idx = rng.choice([0, 2, 3, 4], size=index_shape)
    G = _probe(rng, np.broadcast_shapes(logit_shape[:-1], index_shape))

    def loss():
        return np.sum(Categorical(logits).log_prob(idx) * G)

    grads = Categorical(logits).log_prob_backward(G, idx)
    assert set(grads) == {"logits"}
    assert np.all(grads["logits"][..., 1] == 0)
    gradcheck(loss, {"logits": logits}, grads)


@pytest.mark.parametrize("masked", [False, True])
def test_categorical_entropy_backward_gradcheck(rng, masked):
    logits = rng.standard_normal((3, 6))
    if masked:
        logits[0, [1, 4]] = -np.inf
        logits[2, 0] = -np.inf
    G = _probe(rng, (3,))

    def loss():
        return np.sum(Categorical(logits).entropy() * G)

    grads = Categorical(logits).entropy_backward(G)
    gradcheck(loss, {"logits": logits}, grads)
    assert np.all(np.isfinite(grads["logits"]))
    assert np.all(grads["logits"][~np.isfinite(logits)] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_neg_inf_logits_are_safe(dtype):
    inf = np.inf
    logits = np.array(
        [[0.0, -inf, 1.0, -inf], [-inf, -inf, 3.0, -inf], [-1e4, 0.0, -inf, 2.0]], dtype=dtype
    )
    d = Categorical(logits, validate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0 * -inf or log(0)
        h = d.entropy()
        dh = d.entropy_backward(np.ones(3, dtype))["logits"]
        lp = d.log_prob(np.array([2, 2, 3]))
        dlp = d.log_prob_backward(np.ones(3, dtype), np.array([2, 2, 3]))["logits"]
        s = d.sample(np.random.default_rng(0), (2000,))
    assert h.dtype == dtype and np.all(np.isfinite(h))
    p = special.softmax(np.where(np.isinf(logits), -np.inf, logits.astype(np.float64)), axis=-1)
    np.testing.assert_allclose(h, stats.entropy(p, axis=-1), rtol=1e-5, atol=1e-7)
    assert h[1] == 0
    for g in (dh, dlp):
        assert np.all(np.isfinite(g)) and np.all(g[np.isinf(logits)] == 0)
    assert np.all(np.isfinite(lp))
    assert not np.any(np.isinf(logits)[np.arange(3), s])  # masked never drawn


def test_categorical_sample_frequencies(rng):
    logits = np.array([[0.0, 1.0, -np.inf, 0.5], [-np.inf, 2.0, 0.0, -np.inf]])
    d = Categorical(logits)
    n = 40_000
    s = d.sample(rng, (n,))
    assert s.shape == (n, 2) and s.dtype == np.int64
    p = d.probs
    for b in range(2):
        freq = np.bincount(s[:, b], minlength=4) / n
        np.testing.assert_array_less(
            np.abs(freq - p[b]), 5 * np.sqrt(p[b] * (1 - p[b]) / n) + 1e-12
        )


def test_categorical_sample_is_reproducible():
    d = Categorical(np.zeros((3, 5), np.float32))
    a = d.sample(np.random.default_rng(11), (8,))
    np.testing.assert_array_equal(a, d.sample(np.random.default_rng(11), (8,)))


def test_categorical_has_no_rsample(rng):
    with pytest.raises(NotImplementedError, match="Categorical has no reparameterized sampler"):
        Categorical(np.zeros(3)).rsample(rng)
    with pytest.raises(NotImplementedError, match="Bernoulli has no reparameterized sampler"):
        Bernoulli(np.zeros(3)).rsample(rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_categorical(rng, dtype):
    u = UniformCategorical(6, dtype)
    assert u.batch_shape == () and u.event_shape == ()
    s = u.sample(rng, (10_000,))
    assert s.dtype == np.int64 and s.min() >= 0 and s.max() <= 5
    assert np.all(np.bincount(s, minlength=6) > 1400)
    lp = u.log_prob(np.array([[0, 5]]))
    assert lp.shape == (1, 2) and lp.dtype == dtype
    np.testing.assert_allclose(lp, -np.log(6), rtol=1e-7)
    np.testing.assert_allclose(u.entropy(), np.log(6), rtol=1e-7)
    np.testing.assert_allclose(u.entropy(), Categorical(u.logits).entropy(), rtol=1e-6)
    assert u.log_prob_backward(1.0, s) == {} and u.entropy_backward(1.0) == {}


# --- validation ---------------------------------------------------------------------------


def test_diagnormal_rejects_bad_inputs(rng):
    good = np.zeros((3, 4))
    with pytest.raises(
        TypeError,
        match=r"DiagNormal: expected loc to have dtype float32 or "
        r"float64, got int64",
    ):
        DiagNormal(np.zeros((3, 4), dtype=np.int64), good)
    with pytest.raises(TypeError, match=r"DiagNormal: expected loc to be a numpy.ndarray"):
        DiagNormal([[0.0]], good)
    with pytest.raises(
        ValueError,
        match=r"DiagNormal: expected loc and logvar to have the same "
        r"shape, got \(3, 4\) and \(3, 5\)",
    ):
        DiagNormal(good, np.zeros((3, 5)))
    with pytest.raises(TypeError, match=r"DiagNormal: expected loc, logvar to share one dtype"):
        DiagNormal(good, good.astype(np.float32))
    with pytest.raises(ValueError, match=r"DiagNormal: expected loc to have at least 1 dim"):
        DiagNormal(np.zeros(()), np.zeros(()))
    nan = good.copy()
    nan[1, 2] = np.nan
    DiagNormal(nan, good)  # the default checks are shape and dtype only (cheap)
    with pytest.raises(
        ValueError,
        match=r"DiagNormal: expected loc to contain no NaN or Inf "
        r"values, got 1 of 12",
    ):
        DiagNormal(nan, good, validate=True)
    with pytest.raises(ValueError, match=r"expected logvar to contain no NaN"):
        DiagNormal(good, nan, validate=True)
    p = DiagNormal(good, good)
    with pytest.raises(
        TypeError,
        match=r"DiagNormal.rsample: expected rng to be a "
        r"numpy.random.Generator, got int",
    ):
        p.rsample(0)
    with pytest.raises(
        TypeError,
        match=r"expected rng to be a numpy.random.Generator, got "
        r"NoneType",
    ):
        p.sample(None)
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'shape' parameter of DiagNormal.rsample "
        r"must be a tuple of non-negative ints",
    ):
        p.rsample(rng, (2, -1))
    with pytest.raises(
        ValueError,
        match=r"DiagNormal.log_prob: expected value to broadcast "
        r"against the parameters' shape \(3, 4\)",
    ):
        p.log_prob(np.zeros((3, 5)))
    with pytest.raises(
        TypeError,
        match=r"DiagNormal.log_prob: expected value to have dtype "
        r"float64 \(the distribution's\), got float32",
    ):
        p.log_prob(np.zeros((3, 4), np.float32))
    with pytest.raises(
        ValueError,
        match=r"DiagNormal.log_prob_backward: expected dout to have "
        r"the forward output's shape \(3,\), got \(4,\)",
    ):
        p.log_prob_backward(np.ones(4), good)
    with pytest.raises(ValueError, match=r"DiagNormal.rsample_backward: expected dz to have"):
        p.rsample_backward(np.ones((2, 3, 4)), good)


def test_standard_normal_rejects_bad_inputs():
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'event_size' parameter of "
        r"StandardNormal must be an int in \[1, inf\)",
    ):
        StandardNormal(0, np.float32)
    with pytest.raises(
        TypeError,
        match=r"StandardNormal: expected dtype to be float32 or "
        r"float64, got int32",
    ):
        StandardNormal(3, np.int32)
    with pytest.raises(ValueError, match=r"StandardNormal.log_prob: expected value to broadcast"):
        StandardNormal(3, np.float64).log_prob(np.zeros((2, 4)))


def test_bernoulli_rejects_bad_inputs():
    with pytest.raises(
        TypeError,
        match=r"Bernoulli: expected logits to have dtype float32 or "
        r"float64, got bool",
    ):
        Bernoulli(np.zeros(3, dtype=bool))
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'event_ndim' parameter of Bernoulli "
        r"must be an int in \[0, 2\]",
    ):
        Bernoulli(np.zeros((2, 3)), event_ndim=3)
    with pytest.raises(ValueError, match=r"Bernoulli: expected logits to contain no NaN or Inf"):
        Bernoulli(np.array([0.0, np.inf]), validate=True)
    d = Bernoulli(np.zeros((2, 3)), event_ndim=1, validate=True)
    with pytest.raises(
        ValueError,
        match=r"Bernoulli.log_prob: expected value to lie in \[0, 1\]"
        r".*got 1 entries outside, e.g. 2.0",
    ):
        d.log_prob(np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"Bernoulli.log_prob: expected value to broadcast"):
        d.log_prob(np.zeros((2, 4)))
    with pytest.raises(
        ValueError,
        match=r"Bernoulli.entropy_backward: expected dout to have the "
        r"forward output's shape \(2,\), got \(2, 3\)",
    ):
        d.entropy_backward(np.ones((2, 3)))


def test_categorical_rejects_bad_inputs():
    with pytest.raises(
        ValueError,
        match=r"Categorical: expected logits to have shape \(\.\.\., C\)"
        r" with C >= 1, got \(\)",
    ):
        Categorical(np.zeros(()))
    with pytest.raises(
        ValueError,
        match=r"Categorical: expected logits to contain no NaN "
        r"values, got 1 of 2",
    ):
        Categorical(np.array([0.0, np.nan]), validate=True)
    with pytest.raises(ValueError, match=r"Categorical: expected logits to contain no \+inf"):
        Categorical(np.array([0.0, np.inf]), validate=True)
    with pytest.raises(
        ValueError,
        match=r"Categorical: expected every row of logits to have a "
        r"finite entry, got 1 rows that are all -inf",
    ):
        Categorical(np.array([[0.0, 1.0], [-np.inf, -np.inf]]), validate=True)
    d = Categorical(np.zeros((2, 3)), validate=True)
    with pytest.raises(
        TypeError,
        match=r"Categorical.log_prob: expected value to be an integer "
        r"array of category indices, got dtype float64",
    ):
        d.log_prob(np.zeros(2))
    with pytest.raises(
        ValueError,
        match=r"Categorical.log_prob: expected value to lie in "
        r"\[0, 3\), got 1 indices outside, e.g. 3",
    ):
        d.log_prob(np.array([0, 3]))
    with pytest.raises(
        ValueError,
        match=r"Categorical.log_prob: expected value to broadcast "
        r"against batch_shape \(2,\)",
    ):
        d.log_prob(np.array([0, 1, 2]))
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'num_categories' parameter of "
        r"UniformCategorical",
    ):
        UniformCategorical(0, np.float64)


@pytest.mark.parametrize(
    "dist",
    [
        lambda: DiagNormal(np.zeros((2, 3)), np.zeros((2, 3))),
        lambda: StandardNormal(3, np.float64),
        lambda: Bernoulli(np.zeros((2, 3))),
        lambda: Categorical(np.zeros((2, 3))),
        lambda: UniformCategorical(3, np.float64),
    ],
)
def test_sample_with_a_negative_size_or_a_bad_rng_is_a_clear_error(dist):
    d = dist()
    name = type(d).__name__
    with pytest.raises(
        InvalidParameterError,
        match=rf"The 'shape' parameter of {name}.r?sample must be a tuple of non-negative",
    ):
        d.sample(np.random.default_rng(0), -1)
    with pytest.raises(InvalidParameterError, match="Got 'ab' instead"):
        d.sample(np.random.default_rng(0), "ab")
    with pytest.raises(TypeError, match=rf"{name}.r?sample: expected rng to be a numpy.random"):
        d.sample(np.random.RandomState(0), (2,))
    with pytest.raises(TypeError, match=r"expected rng to be a numpy.random.Generator, got int"):
        d.sample(3)


def test_distribution_arguments_name_the_argument():
    p = DiagNormal(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"DiagNormal.log_prob: expected value to be a numpy"):
        p.log_prob([[0.0, 0.0, 0.0]])
    with pytest.raises(TypeError, match=r"DiagNormal.log_prob: .*got complex128\. lvmcore works"):
        p.log_prob(np.zeros((2, 3), complex))
    with pytest.raises(TypeError, match=r"StandardNormal: expected dtype to be float32 or .*None"):
        StandardNormal(3, None)
    with pytest.raises(TypeError, match=r"DiagNormal: expected loc .* got float16"):
        DiagNormal(np.zeros(3, np.float16), np.zeros(3, np.float16))
    with pytest.raises(TypeError, match=r"Categorical.log_prob: expected value to be an integer"):
        Categorical(np.zeros(3)).log_prob(np.zeros(2))


def test_a_numpy_generator_keys_the_engine_noise_and_a_cupy_one_draws_itself(rng):
    """A NumPy Generator keys the engine's Philox stream (lvmcore.noise), the same stream the
    models draw; a cupy.random.Generator (here a stand-in whose type lives in 'cupy') is
    drawn from directly, as on a device."""
    from lvmcore import noise

    loc, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    p = DiagNormal(loc, logvar)
    _, eps = p.rsample(np.random.default_rng(5), (2,))
    want = noise.standard_normal(np.random.default_rng(5), (2, 3, 4), np.float64, loc)
    np.testing.assert_array_equal(eps, want)

    drawn = []

    class CupyLike:
        def __init__(self):
            self.inner = np.random.default_rng(7)

        def standard_normal(self, size, dtype):
            drawn.append(size)
            return self.inner.standard_normal(size, dtype=dtype)

    CupyLike.__module__ = "cupy.random._generator"
    _, eps2 = p.rsample(CupyLike(), (2,))
    assert drawn == [(2, 3, 4)]
    np.testing.assert_array_equal(eps2, np.random.default_rng(7).standard_normal((2, 3, 4)))
