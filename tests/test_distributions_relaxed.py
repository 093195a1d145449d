"""Gumbel, Gumbel-max, RelaxedCategorical / ExpRelaxedCategorical and temperature schedules.

Oracles: scipy.stats (Gumbel density, CDF, entropy; chi-square and KS goodness of fit),
the closed-form binary Concrete (C = 2: y_1 = sigmoid((l_1 - l_2 + logistic)/tau)),
numerical integration of the density, and central differences in float64 for every backward.
"""

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from lvmcore.distributions import (
    Categorical,
    ExpRelaxedCategorical,
    Gumbel,
    RelaxedCategorical,
    gumbel_max,
    gumbel_max_sample,
    standard_gumbel,
)
from lvmcore.distributions.relaxed import relaxed_softmax, relaxed_softmax_backward
from lvmcore.exceptions import InvalidParameterError
from lvmcore.schedules import (
    ConstantSchedule,
    ExponentialDecay,
    make_schedule,
    temperature_schedule,
)
from lvmcore.testing import gradcheck


@pytest.fixture
def rng():
    return np.random.default_rng(20260301)


def _probe(rng, shape):
    return rng.standard_normal(shape) / np.sqrt(max(int(np.prod(shape)), 1))


# --- Gumbel -------------------------------------------------------------------------------


def test_gumbel_density_cdf_entropy_match_scipy(rng):
    loc = rng.standard_normal(5)
    scale = rng.uniform(0.3, 2.0, 5)
    x = rng.standard_normal((3, 5)) * 2
    d = Gumbel(loc, scale)
    ref = stats.gumbel_r(loc, scale)
    np.testing.assert_allclose(d.log_prob(x), ref.logpdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.cdf(x), ref.cdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.log_cdf(x), ref.logcdf(x), rtol=1e-12)
    np.testing.assert_allclose(d.entropy(), ref.entropy(), rtol=1e-12)
    np.testing.assert_allclose(d.mean, ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(d.variance, ref.var(), rtol=1e-12)
    u = rng.uniform(0.01, 0.99, 5)
    np.testing.assert_allclose(d.icdf(u), ref.ppf(u), rtol=1e-12)


def test_gumbel_samples_follow_the_distribution(rng):
    d = Gumbel(np.array([0.5]), np.array([1.5]))
    x, g = d.rsample(rng, (20000,))
    assert x.shape == (20000, 1) and g.shape == (20000, 1)
    np.testing.assert_allclose(x, 0.5 + 1.5 * g)
    assert stats.kstest(x[:, 0], stats.gumbel_r(0.5, 1.5).cdf).pvalue > 1e-3


def test_gumbel_backwards_match_finite_differences(rng):
    loc, scale = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    x = rng.standard_normal((3, 4))
    G = _probe(rng, (3, 4))
    grads = Gumbel(loc, scale).log_prob_backward(G, x)
    gradcheck(
        lambda: np.sum(Gumbel(loc, scale).log_prob(x) * G),
        {"loc": loc, "scale": scale, "value": x},
        grads,
    )
    g = standard_gumbel(rng, (3, 4))
    grads = Gumbel(loc, scale).rsample_backward(G, g)
    gradcheck(
        lambda: np.sum(Gumbel(loc, scale).reparameterize(g) * G),
        {"loc": loc, "scale": scale},
        grads,
    )
    Ge = _probe(rng, (4,))
    grads = Gumbel(loc, scale).entropy_backward(Ge)
    gradcheck(
        lambda: np.sum(Gumbel(loc, scale).entropy() * Ge), {"loc": loc, "scale": scale}, grads
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standard_gumbel_is_finite_and_typed(rng, dtype):
    g = standard_gumbel(rng, (1000, 7), dtype)
    assert g.dtype == dtype and g.shape == (1000, 7) and np.isfinite(g).all()
    assert g.max() <= -np.log(np.finfo(dtype).tiny)


def test_gumbel_validates_scale():
    with pytest.raises(InvalidParameterError, match="'scale' parameter of Gumbel"):
        Gumbel(np.zeros(2), np.array([1.0, 0.0]), validate=True)


# --- Gumbel-max ---------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_gumbel_max_is_exactly_categorical(masked):
    """Chi-square goodness of fit of 200,000 Gumbel-max draws against Categorical(pi)."""
    rng = np.random.default_rng(7)
    logits = np.array([1.0, -0.5, 0.3, 2.0, -2.0, 0.0])
    if masked:
        logits[2] = -np.inf
    n = 200_000
    idx, g = gumbel_max_sample(rng, logits, (n,))
    assert idx.shape == (n,) and g.shape == (n, 6)
    np.testing.assert_array_equal(idx, gumbel_max(logits, g))
    counts = np.bincount(idx, minlength=6)
    pi = Categorical(logits).probs
    if masked:
        assert counts[2] == 0
        keep = pi > 0
        counts, pi = counts[keep], pi[keep]
    res = stats.chisquare(counts, n * pi)
    assert res.pvalue > 1e-3


def test_gumbel_max_ties_and_batch_shapes(rng):
    logits = rng.standard_normal((4, 3))
    g = standard_gumbel(rng, (5, 4, 3))
    idx = gumbel_max(logits, g)
    assert idx.shape == (5, 4) and idx.dtype == np.int64
    np.testing.assert_array_equal(gumbel_max(np.zeros(3), np.zeros(3)), 0)  # lowest index


# --- RelaxedCategorical: sampling and its backward ---------------------------------------


@pytest.mark.parametrize("cls", [RelaxedCategorical, ExpRelaxedCategorical])
@pytest.mark.parametrize("shape,sample", [((3, 4), (2,)), ((4,), ()), ((1, 2, 5), (1, 3))])
def test_rsample_backward_logits_and_temperature(rng, cls, shape, sample):
    logits = rng.standard_normal(shape)
    tau = np.array([0.7])
    y, g = cls(logits, 0.7).rsample(rng, sample)
    assert y.shape == sample + shape and g.shape == y.shape
    G = _probe(rng, y.shape)
    grads = cls(logits, 0.7).rsample_backward(G, g)
    assert grads["temperature"].shape == ()
    gradcheck(
        lambda: np.sum(cls(logits, float(tau[0])).reparameterize(g) * G),
        {"logits": logits, "tau": tau},
        {"logits": grads["logits"], "tau": grads["temperature"].reshape(1)},
    )


def test_soft_sample_is_softmax_on_the_simplex(rng):
    logits = rng.standard_normal((6, 5))
    y, g = RelaxedCategorical(logits, 0.5).rsample(rng)
    np.testing.assert_allclose(y.sum(axis=-1), 1, rtol=1e-14)
    np.testing.assert_allclose(y, special.softmax((logits + g) / 0.5, axis=-1), rtol=1e-12)
    x = ExpRelaxedCategorical(logits, 0.5).reparameterize(g)
    np.testing.assert_allclose(np.exp(x), y, rtol=1e-12)


def test_straight_through_forward_is_hard_and_backward_is_soft(rng):
    """Hard forward = one_hot(Gumbel-max); the gradient is that of the surrogate
    y_hard + y_soft(theta) - y_soft(theta0), checked by central differences."""
    logits = rng.standard_normal((4, 3))
    tau = np.array([0.6])
    d = RelaxedCategorical(logits, 0.6)
    y_hard, g = d.rsample(rng, (2,), hard=True)
    np.testing.assert_array_equal(y_hard.argmax(-1), gumbel_max(logits, g))
    np.testing.assert_array_equal(y_hard.sum(-1), 1)
    assert set(np.unique(y_hard)) == {0.0, 1.0}
    # a nonlinear downstream loss, so dy at the hard value differs from dy at the soft one
    W = rng.standard_normal((3, 3))

    def f(y):
        return np.sum(np.tanh(y @ W))

    dy = (1 - np.tanh(y_hard @ W) ** 2) @ W.T
    grads = d.rsample_backward(dy, g)
    y_soft0 = d.reparameterize(g)

    def surrogate():
        ys = RelaxedCategorical(logits, float(tau[0])).reparameterize(g)
        return f(y_hard + ys - y_soft0)

    gradcheck(
        surrogate,
        {"logits": logits, "tau": tau},
        {"logits": grads["logits"], "tau": grads["temperature"].reshape(1)},
    )


def test_argmax_limit_as_temperature_goes_to_zero(rng):
    logits = rng.standard_normal((50, 6)) * 3
    g = standard_gumbel(rng, (50, 6))
    hard = relaxed_softmax(logits, 1.0, g, hard=True)
    gaps = []
    for tau in (1.0, 0.3, 0.1, 0.03, 0.01, 1e-3, 1e-5, 1e-8):
        y = RelaxedCategorical(logits, tau).reparameterize(g)
        assert np.isfinite(y).all()
        gaps.append(np.abs(y - hard).max())
    assert all(a >= b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] == 0.0  # exactly one-hot: the row max is subtracted before dividing
    x = ExpRelaxedCategorical(logits, 1e-8).reparameterize(g)
    assert np.isfinite(x).all() and (x.max(axis=-1) == 0).all()


# --- densities ----------------------------------------------------------------------------


def test_binary_concrete_density_matches_closed_form():
    """C = 2: y_1 = sigmoid((a + L)/tau), L ~ Logistic, a = l_1 - l_2, so
    P(y_1 <= v) = sigmoid(tau logit(v) - a) and p(v) = tau s (1 - s) / (v (1 - v))."""
    logits = np.array([0.3, -0.5])
    v = np.linspace(0.01, 0.99, 41)
    y = np.stack([v, 1 - v], axis=-1)
    for tau in (0.3, 1.0, 2.5):
        s = special.expit(tau * special.logit(v) - (logits[0] - logits[1]))
        want = np.log(tau * s * (1 - s) / (v * (1 - v)))
        np.testing.assert_allclose(RelaxedCategorical(logits, tau).log_prob(y), want, rtol=1e-10)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_density_integrates_to_one_over_the_simplex(tau):
    logits = np.array([0.4, -0.3, 0.9])
    d = RelaxedCategorical(logits, tau)

    def p(y2, y1):
        return (
            math.exp(d.log_prob(np.array([y1, y2, max(1 - y1 - y2, 1e-300)])))
            if y1 + y2 < 1
            else 0.0
        )

    total, err = integrate.dblquad(p, 0, 1, 0, lambda y1: 1 - y1, epsabs=1e-6)
    assert total == pytest.approx(1, abs=2e-3)


def test_samples_follow_the_density_binary_ks(rng):
    logits = np.array([0.8, -0.2])
    tau = 0.7
    y, _ = RelaxedCategorical(logits, tau).rsample(rng, (20000,))
    cdf = lambda v: special.expit(tau * special.logit(v) - 1.0)  # noqa: E731
    assert stats.kstest(y[:, 0], cdf).pvalue > 1e-3


def test_exp_and_plain_densities_differ_by_the_jacobian(rng):
    logits = rng.standard_normal((3, 4))
    x, _ = ExpRelaxedCategorical(logits, 0.8).rsample(rng, (2,))
    lp_exp = ExpRelaxedCategorical(logits, 0.8).log_prob(x)
    lp = RelaxedCategorical(logits, 0.8).log_prob(np.exp(x))
    np.testing.assert_allclose(lp, lp_exp - x.sum(-1), rtol=1e-12)
    np.testing.assert_allclose(
        RelaxedCategorical(logits, 0.8).log_prob(x, log_space=True), lp, rtol=1e-12
    )
    # invariant under x -> x + c (x lives on logsumexp(x) = 0), and unnormalized logits
    np.testing.assert_allclose(
        ExpRelaxedCategorical(logits + 3.0, 0.8).log_prob(x + 2.0), lp_exp, rtol=1e-12
    )


@pytest.mark.parametrize("case", ["exp", "simplex", "log_space"])
def test_log_prob_backward_logits_temperature_value(rng, case):
    logits = rng.standard_normal((3, 4))
    tau = np.array([0.8])
    x, _ = ExpRelaxedCategorical(logits, 0.8).rsample(rng, (2,))
    if case == "exp":
        cls, value, kw = ExpRelaxedCategorical, x, {}
    elif case == "simplex":
        cls, value, kw = RelaxedCategorical, np.exp(x), {}
    else:
        cls, value, kw = RelaxedCategorical, x, {"log_space": True}
    G = _probe(rng, (2, 3))
    grads = cls(logits, 0.8).log_prob_backward(G, value, **kw)
    gradcheck(
        lambda: np.sum(cls(logits, float(tau[0])).log_prob(value, **kw) * G),
        {"logits": logits, "tau": tau, "value": value},
        {
            "logits": grads["logits"],
            "tau": grads["temperature"].reshape(1),
            "value": grads["value"],
        },
    )


# --- edges --------------------------------------------------------------------------------


def test_tiny_temperature_and_huge_logits_float32_stay_finite(rng):
    """tau = 1e-3 and logits of +-1e4 in float32: finite samples, log-probs and gradients."""
    logits = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, 1e4, 5.0]], np.float32)
    tau = 1e-3
    soft = RelaxedCategorical(logits, tau)
    y, g = soft.rsample(rng, (3,))
    y_hard = soft.reparameterize(g, hard=True)
    x = ExpRelaxedCategorical(logits, tau).reparameterize(g)
    for a in (y, y_hard, x):
        assert a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(y, y_hard)  # the argmax limit, exactly
    dy = rng.standard_normal(y.shape).astype(np.float32)
    lp = ExpRelaxedCategorical(logits, tau).log_prob(x)
    lp_y = soft.log_prob(x, log_space=True)
    grads = [
        soft.rsample_backward(dy, g),
        ExpRelaxedCategorical(logits, tau).rsample_backward(dy, g),
        ExpRelaxedCategorical(logits, tau).log_prob_backward(np.ones((3, 2), np.float32), x),
        soft.log_prob_backward(np.ones((3, 2), np.float32), x, log_space=True),
    ]
    assert np.isfinite(lp).all() and np.isfinite(lp_y).all()
    assert lp.dtype == np.float32
    for gr in grads:
        for v in gr.values():
            assert v.dtype == np.float32 and np.isfinite(v).all()


@pytest.mark.parametrize("cls", [RelaxedCategorical, ExpRelaxedCategorical])
@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_non_positive_temperature_is_rejected(cls, tau):
    with pytest.raises(
        InvalidParameterError,
        match=rf"'temperature' parameter of {cls.__name__} must be a float in "
        r"\(0, inf\)",
    ):
        cls(np.zeros(3), tau)


def test_simplex_log_prob_rejects_exact_zeros_with_a_hint():
    d = RelaxedCategorical(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="open simplex.*log_space=True"):
        d.log_prob(np.array([1.0, 0.0, 0.0]))


# --- temperature schedules ----------------------------------------------------------------


def test_constant_and_exponential_schedules():
    assert ConstantSchedule(0.7)(0) == ConstantSchedule(0.7)(10**6) == 0.7
    s = ExponentialDecay(1.0, 1e-3, 0.5)
    assert s(0) == 1.0
    assert s(100) == pytest.approx(math.exp(-0.1))
    assert s(10**6) == 0.5
    stepped = ExponentialDecay(1.0, 1e-3, 0.5, every=500)
    assert stepped(499) == 1.0 and stepped(500) == pytest.approx(math.exp(-0.5))
    for sched in (s, stepped, ConstantSchedule(0.3)):
        again = make_schedule(sched.config())
        assert [again(t) for t in (0, 7, 900)] == [sched(t) for t in (0, 7, 900)]
    assert isinstance(temperature_schedule(0.5), ConstantSchedule)
    assert temperature_schedule(1.0, 0.5, 1e-4, 1000)(3000) == pytest.approx(math.exp(-0.3))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=0.0), r"'tau' parameter of temperature_schedule must be a float in \(0, inf\)"),
        (dict(tau=-1.0), r"'tau' parameter"),
        (dict(tau=1.0, tau_decay=-1.0), r"'tau_decay' parameter"),
        (dict(tau=1.0, tau_decay=1e-3), r"'tau_min' parameter .* when tau_decay > 0"),
        (dict(tau=1.0, tau_decay=1e-3, tau_min=2.0), r"'tau_min' parameter of ExponentialDecay"),
        (dict(tau=1.0, tau_decay=1e-3, tau_min=0.0), r"'tau_min' parameter"),
        (dict(tau=1.0, tau_min=0.5), r"'tau_min' parameter .* decaying temperature only"),
    ],
)
def test_schedule_validation(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        temperature_schedule(**kwargs)


# --- parity with the Philox Gumbel-Softmax kernel, when it is there -----------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_gumbel_softmax_kernel_reference(rng, dtype):
    gs = pytest.importorskip("kernels.gumbel_softmax")
    philox = pytest.importorskip("kernels.philox")
    logits = rng.standard_normal((7, 5)).astype(dtype)
    g = philox.gumbel_ref(11, 3, logits.size, np.dtype(dtype)).reshape(logits.shape)
    y = gs.gumbel_softmax_ref(logits, 0.4, 11, 3)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(relaxed_softmax(logits, 0.4, g), y, **tol)
    np.testing.assert_array_equal(
        relaxed_softmax(logits, 0.4, g, hard=True),
        gs.gumbel_softmax_ref(logits, 0.4, 11, 3, hard=True),
    )
    dy = rng.standard_normal(logits.shape).astype(dtype)
    dl, dtau = relaxed_softmax_backward(dy, logits, 0.4, g)
    dl_k, dtau_k = gs.gumbel_softmax_backward_ref(dy, y, 0.4)
    np.testing.assert_allclose(dl, dl_k, **tol)
    assert float(dtau) == pytest.approx(dtau_k, rel=1e-4 if dtype == np.float32 else 1e-10)


# --- one Gumbel-Softmax: the distribution runs the kernel ---------------------------------


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hard", [False, True])
def test_rsample_is_the_gumbel_softmax_kernel_on_one_philox_key(backend, dtype, hard, rng):
    import kernels
    from lvmcore import noise
    from lvmcore.backend import use_backend

    logits = rng.standard_normal((4, 6)).astype(dtype)
    d = RelaxedCategorical(logits, 0.6)
    with use_backend(backend):
        y, g = d.rsample(np.random.default_rng(21), (3,), hard=hard)
    seed, stream = noise.philox_key(np.random.default_rng(21))
    rows = np.ascontiguousarray(np.broadcast_to(logits, (3, 4, 6)).reshape(12, 6))
    want = kernels.get("gumbel_softmax", backend)(rows, 0.6, seed, stream, 0, hard)
    np.testing.assert_array_equal(y, want.reshape(3, 4, 6))
    ref_fill = kernels.get("philox_gumbel", backend)
    np.testing.assert_array_equal(g, ref_fill(seed, stream, 72, np.dtype(dtype)).reshape(3, 4, 6))
    if backend == "numpy":  # the readable path on the same noise: the same bits
        np.testing.assert_array_equal(y, d.reparameterize(g, hard=hard))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_rsample_backward_is_the_gumbel_softmax_kernel_backward(backend, rng):
    import kernels
    from lvmcore.backend import use_backend

    logits = rng.standard_normal((4, 6))
    d = RelaxedCategorical(logits, 0.6)
    y, g = d.rsample(rng, (3,))
    dy = rng.standard_normal(y.shape)
    with use_backend(backend):
        grads = d.rsample_backward(dy, g)
    y_soft = d.reparameterize(g)  # (3, 4, 6)
    a = (logits + g) / 0.6
    dl, dtau = kernels.get("gumbel_softmax_backward", backend)(
        dy.reshape(12, 6), y_soft.reshape(12, 6), 0.6, a.reshape(12, 6)
    )
    np.testing.assert_allclose(grads["logits"], dl.reshape(3, 4, 6).sum(0), rtol=1e-12, atol=1e-15)
    assert float(grads["temperature"]) == pytest.approx(dtau, rel=1e-10)
