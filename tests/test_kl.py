"""kl_divergence, kl_divergence_backward, the register_kl registry and the per-dim KL.

Oracles: central differences in float64 for every backward (both arguments), a
Monte-Carlo estimate within 4 measured standard errors for every closed form,
scipy for the discrete ones, and the identities KL(p, p) = 0, KL >= 0,
KL(p || Uniform) = log C - H(p).
"""

import warnings

import numpy as np
import pytest
from scipy import special, stats

import lvmcore.distributions.kl as kl_module
from lvmcore.distributions import (
    Bernoulli,
    Categorical,
    DiagNormal,
    StandardNormal,
    UniformCategorical,
    kl_divergence,
    kl_divergence_backward,
    kl_normal_std_per_dim,
    kl_normal_std_per_dim_backward,
    kl_normal_std_per_dim_forward,
    register_kl,
    register_kl_backward,
)
from lvmcore.testing import check_vjp, gradcheck

DTYPES = [np.float32, np.float64]


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _probe(rng, shape):
    n = max(int(np.prod(shape)), 1)
    return rng.standard_normal(shape) / np.sqrt(n)


def _mc_kl(p, q, rng, n):
    """Mean and standard error of log p(x) - log q(x) over n draws x ~ p."""
    x = p.sample(rng, (n,))
    t = p.log_prob(x).astype(np.float64) - q.log_prob(x).astype(np.float64)  # (n, *batch)
    return t.mean(axis=0), t.std(axis=0, ddof=1) / np.sqrt(n)


def _assert_mc_agrees(analytic, p, q, rng, n=200_000):
    mean, stderr = _mc_kl(p, q, rng, n)
    analytic = np.asarray(analytic, dtype=np.float64)
    # meaningful: the estimate resolves the KL to a few per cent ...
    np.testing.assert_array_less(stderr, 0.03 * analytic)
    # ... and the closed form lies within 4 measured standard errors of it
    np.testing.assert_array_less(np.abs(analytic - mean), 4 * stderr)


def _check_kl_backward(rng, make_p, p_params, make_q, q_params):
    """Gradcheck kl_divergence_backward for every parameter of p and of q."""

    def build():
        return make_p(**p_params), make_q(**q_params)

    p, q = build()
    G = _probe(rng, kl_divergence(p, q).shape)

    def loss():
        return np.sum(kl_divergence(*build()) * G)

    dp, dq = kl_divergence_backward(p, q, G)
    assert set(dp) == set(p_params) and set(dq) == set(q_params)
    for name, d in (("p", dp), ("q", dq)):
        src = p_params if name == "p" else q_params
        assert all(d[k].shape == src[k].shape for k in src)
    inputs = {
        **{f"p.{k}": v for k, v in p_params.items()},
        **{f"q.{k}": v for k, v in q_params.items()},
    }
    analytic = {**{f"p.{k}": v for k, v in dp.items()}, **{f"q.{k}": v for k, v in dq.items()}}
    gradcheck(loss, inputs, analytic)


# --- DiagNormal || StandardNormal ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_normal_std_closed_form_and_monte_carlo(rng, dtype):
    loc = np.array([[0.5, -1.0, 0.0], [1.5, 0.3, -0.7]])
    logvar = np.array([[-1.0, 0.4, 0.8], [0.2, -0.5, -2.0]])
    p = DiagNormal(loc.astype(dtype), logvar.astype(dtype))
    q = StandardNormal(3, dtype)
    kl = kl_divergence(p, q)
    assert kl.shape == (2,) and kl.dtype == dtype
    want = 0.5 * np.sum(np.exp(logvar) + loc**2 - 1 - logvar, axis=-1)
    np.testing.assert_allclose(kl, want, rtol=1e-6 if dtype == np.float32 else 1e-13)
    if dtype == np.float64:
        _assert_mc_agrees(kl, p, q, rng)


def test_kl_normal_std_backward_gradcheck(rng):
    _check_kl_backward(
        rng,
        DiagNormal,
        {"loc": rng.standard_normal((3, 4)), "logvar": rng.standard_normal((3, 4))},
        lambda: StandardNormal(4, np.float64),
        {},
    )


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
def test_kl_normal_std_per_dim_vjp_and_sum(rng, shape):
    loc, logvar = rng.standard_normal(shape), rng.standard_normal(shape)
    check_vjp(
        kl_normal_std_per_dim_forward,
        kl_normal_std_per_dim_backward,
        [loc, logvar],
        names=["loc", "logvar"],
    )
    per_dim = kl_normal_std_per_dim(loc, logvar)
    assert per_dim.shape == shape
    np.testing.assert_array_equal(per_dim, kl_normal_std_per_dim_forward(loc, logvar)[0])
    np.testing.assert_allclose(
        per_dim.sum(-1),
        kl_divergence(DiagNormal(loc, logvar), StandardNormal(shape[-1], np.float64)),
        rtol=1e-14,
    )


def test_kl_normal_std_small_logvar_keeps_precision():
    # e^l - 1 - l cancels for l -> 0 (a collapsed latent); expm1(l) - l does not.
    logvar = np.array([1e-5], np.float32)
    got = kl_normal_std_per_dim(np.zeros(1, np.float32), logvar)
    want = 0.5 * (np.expm1(1e-5) - 1e-5)  # ~2.5e-11 in float64
    np.testing.assert_allclose(got, want, rtol=1e-3)


# --- DiagNormal || DiagNormal -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_normal_normal_closed_form_and_monte_carlo(rng, dtype):
    p = DiagNormal(
        np.array([[0.5, -1.0, 0.0], [1.0, 0.3, -0.7]], dtype),
        np.array([[-1.0, 0.4, 0.8], [0.2, -0.5, -1.0]], dtype),
    )
    q = DiagNormal(
        np.array([[0.0, 0.5, -0.5], [0.2, 0.0, 0.3]], dtype),
        np.array([[0.3, -0.2, 0.5], [-0.4, 0.6, 0.1]], dtype),
    )
    kl = kl_divergence(p, q)
    assert kl.shape == (2,) and kl.dtype == dtype
    v1, v2 = np.exp(p.logvar.astype(np.float64)), np.exp(q.logvar.astype(np.float64))
    dm = (p.loc - q.loc).astype(np.float64)
    want = 0.5 * np.sum(np.log(v2 / v1) + (v1 + dm**2) / v2 - 1, axis=-1)
    np.testing.assert_allclose(kl, want, rtol=1e-6 if dtype == np.float32 else 1e-13)
    if dtype == np.float64:
        _assert_mc_agrees(kl, p, q, rng)


@pytest.mark.parametrize("p_shape,q_shape", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 4))])
def test_kl_normal_normal_backward_gradcheck(rng, p_shape, q_shape):
    _check_kl_backward(
        rng,
        DiagNormal,
        {"loc": rng.standard_normal(p_shape), "logvar": rng.standard_normal(p_shape)},
        DiagNormal,
        {"loc": rng.standard_normal(q_shape), "logvar": rng.standard_normal(q_shape)},
    )


def test_kl_normal_normal_to_standard_agrees_with_prior_rule(rng):
    loc, logvar = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    p = DiagNormal(loc, logvar)
    zero = DiagNormal(np.zeros(4), np.zeros(4))
    np.testing.assert_allclose(
        kl_divergence(p, zero), kl_divergence(p, StandardNormal(4, np.float64)), rtol=1e-14
    )


# --- Bernoulli || Bernoulli ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_bernoulli_closed_form_and_monte_carlo(rng, dtype):
    a = np.array([[1.0, -2.0, 0.5, 3.0, -0.3], [-1.0, 0.0, 2.0, -3.0, 1.2]])
    b = np.array([[-0.5, 1.0, 0.0, 1.0, 0.8], [0.5, 1.5, -1.0, 0.0, -1.0]])
    p = Bernoulli(a.astype(dtype), event_ndim=1)
    q = Bernoulli(b.astype(dtype), event_ndim=1)
    kl = kl_divergence(p, q)
    assert kl.shape == (2,) and kl.dtype == dtype
    pa, pb = special.expit(a), special.expit(b)
    want = (special.rel_entr(pa, pb) + special.rel_entr(1 - pa, 1 - pb)).sum(-1)
    np.testing.assert_allclose(kl, want, rtol=2e-6 if dtype == np.float32 else 1e-12)
    if dtype == np.float64:
        _assert_mc_agrees(kl, p, q, rng)
        elementwise = kl_divergence(Bernoulli(a), Bernoulli(b))
        assert elementwise.shape == (2, 5)
        np.testing.assert_allclose(elementwise.sum(-1), kl, rtol=1e-14)


@pytest.mark.parametrize("event_ndim", [0, 1])
@pytest.mark.parametrize("p_shape,q_shape", [((3, 5), (3, 5)), ((3, 5), (5,))])
def test_kl_bernoulli_backward_gradcheck(rng, event_ndim, p_shape, q_shape):
    def make(logits):
        return Bernoulli(logits, event_ndim=event_ndim)

    _check_kl_backward(
        rng,
        make,
        {"logits": 3 * rng.standard_normal(p_shape)},
        make,
        {"logits": 3 * rng.standard_normal(q_shape)},
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, 1e30])
def test_kl_bernoulli_extreme_logits_are_exact(dtype, big):
    a = np.array([big, big, -big, big, 0.0], dtype)
    b = np.array([-big, 0.0, 0.0, big, big], dtype)
    p, q = Bernoulli(a), Bernoulli(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl = kl_divergence(p, q)
        dp, dq = kl_divergence_backward(p, q, np.ones(5, dtype))
    log2 = np.log(2.0)
    # p = 1, q = 0: -log sigma(-big) = big; p = 1 or 0 vs q = 1/2: log 2; p = q: 0;
    # p = 1/2 vs q = 1: (1/2)(-log 2 - log sigma(big)) + (1/2)(-log 2 - log sigma(-big))
    #                   = big / 2 - log 2
    np.testing.assert_allclose(kl, np.array([big, log2, log2, 0.0, big / 2 - log2]), rtol=1e-6)
    assert kl[3] == 0
    # dKL/da = sigma(a) sigma(-a) (a - b); dKL/db = sigma(b) - sigma(a)
    np.testing.assert_allclose(dp["logits"], np.array([0, 0, 0, 0, 0.25 * -big]), rtol=1e-6)
    np.testing.assert_allclose(dq["logits"], np.array([-1, -0.5, 0.5, 0, 0.5]), atol=1e-7)
    for arr in (kl, dp["logits"], dq["logits"]):
        assert arr.dtype == dtype and np.all(np.isfinite(arr))


# --- Categorical || Categorical, Categorical || UniformCategorical ------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_categorical_closed_form_and_monte_carlo(rng, dtype):
    a = np.array([[0.5, -np.inf, 1.0, -0.5, 0.0], [2.0, 0.0, -1.0, -np.inf, -np.inf]])
    b = np.array([[-0.5, 0.0, 0.8, 1.0, -1.0], [0.0, 1.0, 0.5, -np.inf, 0.0]])
    p, q = Categorical(a.astype(dtype)), Categorical(b.astype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl = kl_divergence(p, q)
    assert kl.shape == (2,) and kl.dtype == dtype
    want = stats.entropy(special.softmax(a, -1), special.softmax(b, -1), axis=-1)
    np.testing.assert_allclose(kl, want, rtol=2e-6 if dtype == np.float32 else 1e-12)
    if dtype == np.float64:
        _assert_mc_agrees(kl, p, q, rng)


@pytest.mark.parametrize("p_shape,q_shape", [((3, 5), (3, 5)), ((3, 5), (5,)), ((2, 1, 5), (3, 5))])
def test_kl_categorical_backward_gradcheck(rng, p_shape, q_shape):
    a, b = rng.standard_normal(p_shape), rng.standard_normal(q_shape)
    a[..., 1] = -np.inf  # masked in p only: contributes nothing, gradient 0 for a
    a[..., 3] = -np.inf  # masked in both
    b[..., 3] = -np.inf
    _check_kl_backward(rng, Categorical, {"logits": a}, Categorical, {"logits": b})
    dp, dq = kl_divergence_backward(Categorical(a), Categorical(b), 1.0)
    assert np.all(dp["logits"][..., [1, 3]] == 0) and np.all(dq["logits"][..., 3] == 0)


def test_kl_categorical_infinite_when_q_masks_support():
    p = Categorical(np.array([0.0, 0.0, 0.0]))
    q = Categorical(np.array([0.0, -np.inf, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kl_divergence(p, q) == np.inf
        assert np.isfinite(kl_divergence(q, p))  # support of q inside p's


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_categorical_uniform_is_log_c_minus_entropy(rng, dtype):
    a = np.array([[0.5, -np.inf, 1.0, -0.5, 0.0, 2.0], [3.0, 0.0, -1.0, 0.5, -2.0, 0.0]])
    p, u = Categorical(a.astype(dtype)), UniformCategorical(6, dtype)
    kl = kl_divergence(p, u)
    assert kl.shape == (2,) and kl.dtype == dtype
    np.testing.assert_allclose(
        kl, np.log(6) - p.entropy(), rtol=1e-5 if dtype == np.float32 else 1e-12
    )
    np.testing.assert_allclose(
        kl,
        kl_divergence(p, Categorical(np.zeros(6, dtype))),
        rtol=1e-5 if dtype == np.float32 else 1e-12,
    )
    assert kl_divergence(Categorical(np.zeros(6, dtype)), u) == 0
    if dtype == np.float64:
        _assert_mc_agrees(kl, p, u, rng)


def test_kl_categorical_uniform_backward_gradcheck(rng):
    a = rng.standard_normal((3, 5))
    a[1, 2] = -np.inf
    _check_kl_backward(
        rng, Categorical, {"logits": a}, lambda: UniformCategorical(5, np.float64), {}
    )
    # -dH/da: the KL backward is the entropy backward with the sign flipped
    dp, _ = kl_divergence_backward(Categorical(a), UniformCategorical(5, np.float64), 1.0)
    np.testing.assert_allclose(
        dp["logits"], -Categorical(a).entropy_backward(1.0)["logits"], rtol=1e-12, atol=1e-15
    )


# --- identities over every registered pair ------------------------------------------------


def _pairs(rng, dtype, batch=(4,)):
    """(p, q, p_again) for every registered pair, random parameters."""

    def r(*shape, scale=1.0):
        return (scale * rng.standard_normal(batch + shape)).astype(dtype)

    lp, lq = r(6, scale=2), r(6, scale=2)
    return [
        (DiagNormal(r(3), r(3)), StandardNormal(3, dtype)),
        (DiagNormal(r(3), r(3)), DiagNormal(r(3), r(3))),
        (Bernoulli(r(5, scale=3), event_ndim=1), Bernoulli(r(5, scale=3), event_ndim=1)),
        (Categorical(lp), Categorical(lq)),
        (Categorical(lp), UniformCategorical(6, dtype)),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_of_a_distribution_with_itself_is_zero(rng, dtype):
    for p, _ in _pairs(rng, dtype):
        kl = kl_divergence(p, p)
        assert kl.shape == p.batch_shape and kl.dtype == dtype
        np.testing.assert_array_equal(kl, 0, err_msg=type(p).__name__)
        dp, dq = kl_divergence_backward(p, p, 1.0)
        for g in (*dp.values(), *dq.values()):
            np.testing.assert_allclose(g, 0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_is_non_negative(rng, dtype):
    for _ in range(20):
        for p, q in _pairs(rng, dtype, batch=(8,)):
            kl = kl_divergence(p, q)
            assert kl.dtype == dtype
            assert np.all(kl >= 0), (type(p).__name__, type(q).__name__, kl.min())


# --- registry and validation --------------------------------------------------------------


def test_missing_pair_names_both_types_and_the_registered_pairs():
    p, q = DiagNormal(np.zeros(3), np.zeros(3)), Bernoulli(np.zeros(3))
    with pytest.raises(
        NotImplementedError,
        match=r"No KL\(p \|\| q\) for p=DiagNormal, q=Bernoulli\. Registered "
        r"pairs: .*\(DiagNormal, StandardNormal\).*\(Categorical, "
        r"UniformCategorical\).*@register_kl\(DiagNormal, Bernoulli\)",
    ):
        kl_divergence(p, q)
    with pytest.raises(
        NotImplementedError, match=r"No KL\(p \|\| q\) backward for p=DiagNormal, q=Bernoulli"
    ):
        kl_divergence_backward(p, q, 1.0)
    with pytest.raises(NotImplementedError, match=r"p=StandardNormal, q=DiagNormal"):
        kl_divergence(StandardNormal(3, np.float64), p)


def test_register_kl_and_subclass_dispatch(monkeypatch):
    monkeypatch.setattr(kl_module, "_KL_FORWARD", dict(kl_module._KL_FORWARD))
    monkeypatch.setattr(kl_module, "_KL_BACKWARD", dict(kl_module._KL_BACKWARD))

    class MyNormal(DiagNormal):
        pass

    p = MyNormal(np.ones((2, 3)), np.zeros((2, 3)))
    q = StandardNormal(3, np.float64)
    # inherited through the MRO: (MyNormal, StandardNormal) uses (DiagNormal, StandardNormal)
    np.testing.assert_allclose(kl_divergence(p, q), [1.5, 1.5])

    @register_kl(MyNormal, StandardNormal)
    def _kl_mine(p, q):
        return p.xp.full(p.batch_shape, 7.0)

    @register_kl_backward(MyNormal, StandardNormal)
    def _kl_mine_backward(p, q, dkl):
        return {"loc": p.xp.zeros_like(p.loc), "logvar": p.xp.zeros_like(p.logvar)}, {}

    np.testing.assert_array_equal(kl_divergence(p, q), [7.0, 7.0])  # the nearest pair wins
    assert np.all(kl_divergence_backward(p, q)[0]["loc"] == 0)
    np.testing.assert_allclose(kl_divergence(DiagNormal(p.loc, p.logvar), q), [1.5, 1.5])
    with pytest.raises(
        TypeError,
        match=r"register_kl: expected type_q to be a subclass of "
        r"lvmcore.distributions.Distribution",
    ):
        register_kl(DiagNormal, int)


def test_kl_rejects_mismatched_pairs():
    p64 = DiagNormal(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(
        TypeError,
        match=r"kl_divergence: expected p and q to share one dtype, "
        r"got p: float64, q: float32",
    ):
        kl_divergence(p64, StandardNormal(3, np.float32))
    with pytest.raises(
        ValueError,
        match=r"kl_divergence: expected p and q to have the same "
        r"event_shape, got \(3,\) and \(4,\)",
    ):
        kl_divergence(p64, StandardNormal(4, np.float64))
    with pytest.raises(
        ValueError,
        match=r"kl_divergence: expected the batch shapes of p and q "
        r"to broadcast, got \(2,\) and \(5,\)",
    ):
        kl_divergence(p64, DiagNormal(np.zeros((5, 3)), np.zeros((5, 3))))
    with pytest.raises(
        ValueError,
        match=r"kl_divergence: expected p and q to have the same "
        r"number of categories, got 3 and 4",
    ):
        kl_divergence(Categorical(np.zeros(3)), UniformCategorical(4, np.float64))
    with pytest.raises(
        ValueError,
        match=r"kl_divergence_backward: expected dkl to have the "
        r"forward output's shape \(2,\), got \(3,\)",
    ):
        kl_divergence_backward(p64, StandardNormal(3, np.float64), np.ones(3))
    with pytest.raises(
        ValueError,
        match=r"kl_normal_std_per_dim_forward: expected loc and "
        r"logvar to have the same shape, got \(2, 3\) and "
        r"\(2, 4\)",
    ):
        kl_normal_std_per_dim_forward(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(
        TypeError,
        match=r"kl_normal_std_per_dim: expected logvar to have dtype "
        r"float32 or float64, got int64",
    ):
        kl_normal_std_per_dim(np.zeros(3), np.zeros(3, dtype=np.int64))


def test_kl_divergence_of_an_array_is_the_promised_type_error():
    q = StandardNormal(3, np.float64)
    with pytest.raises(TypeError, match=r"kl_divergence: expected p to be an lvmcore distrib"):
        kl_divergence(np.zeros((2, 3)), q)
    with pytest.raises(TypeError, match=r"kl_divergence_backward: expected q to be an lvmcore"):
        kl_divergence_backward(DiagNormal(np.zeros(3), np.zeros(3)), np.zeros(3))
    _, cache = kl_normal_std_per_dim_forward(np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match=r"kl_normal_std_per_dim_backward: expected cache to be"):
        kl_normal_std_per_dim_backward(np.ones(3), (np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match=r"kl_normal_std_per_dim_backward: expected dkl to have"):
        kl_normal_std_per_dim_backward(np.ones(4), cache)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kl_gradient_of_a_saturated_categorical_keeps_its_top_entry(dtype):
    """At p_top within eps of 1, p_top (log p_top + log C - KL) cancels to rounding noise if
    formed as written; its true value, sum_k p_k (log p_top - log p_k), is what the gradient
    carries (deviation_from_mean)."""
    from lvmcore.distributions import Categorical, UniformCategorical
    from lvmcore.distributions.kl import kl_divergence_backward

    logits = np.array([[30.0, 2.0, -1.0, 0.5], [0.3, -0.2, 0.1, 0.0]], dtype=dtype)
    grads, _ = kl_divergence_backward(
        Categorical(logits), UniformCategorical(4, dtype), np.ones(2, dtype)
    )
    l64 = logits.astype(np.float64)
    logp = l64 - np.logaddexp.reduce(l64, axis=-1, keepdims=True)
    p = np.exp(logp)
    # exact in float64: p_i sum_k p_k (log p_i - log p_k), every term without cancellation
    want = p * (p[:, None, :] * (logp[:, :, None] - logp[:, None, :])).sum(-1)
    np.testing.assert_allclose(grads["logits"], want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert grads["logits"][0, 0] > 0  # the top entry: about 2.8e-12, not 0 or noise
