"""The categorical VAE and its five estimators.

Exact checks (float64 central differences, fixed Gumbel noise):
- "gumbel": the relaxed loss is smooth in every parameter; backward is its exact gradient.
- "st-gumbel": the decoder gradient is exact; the encoder gradient is the exact gradient of the
  straight-through surrogate (decoder fed y_hard + y_soft(theta) - y_soft(theta0)).
- "reinforce", "nvil", "vimco": the decoder gradient is exact; with the score-function term
  removed, the encoder gradient is exactly that of the fixed-sample loss (the analytic KL, or
  for VIMCO the log q inside the weights); NVIL's baseline gradient is that of its regression.
Statistical checks against exact enumeration over N = 2 latents of C = 3 classes (9
configurations): each score-function estimator's mean over many draws lies within 4.5
measured standard errors of the exact gradient, coordinate by coordinate; the relaxed and
straight-through estimators are measurably biased.
"""

import json
import math

import numpy as np
import pytest

from lvmcore.distributions.relaxed import relaxed_softmax
from lvmcore.exceptions import InvalidParameterError
from lvmcore.losses import bernoulli_nll_forward
from lvmcore.models import MODELS, CatVAE, build_model
from lvmcore.models.catvae import categorical_kl_terms, vimco_signals
from lvmcore.optim import Adam
from lvmcore.oracles.enumeration import catvae_exact_bound, one_hot_configurations
from lvmcore.testing import gradcheck

D, N, C = 6, 2, 3


@pytest.fixture
def rng():
    return np.random.default_rng(20260302)


def _data(rng, B=4, D=D):
    return (rng.random((B, D)) < 0.4).astype(np.float64)


def _model(estimator, x, k=None, **kw):
    k = (3 if estimator == "vimco" else 1) if k is None else k
    m = CatVAE(
        x.shape[1], N, C, (5,), estimator=estimator, k=k, tau=0.7, seed=3, dtype=np.float64, **kw
    )
    m.init_output_bias(x)
    return m


def _grads(model, x, g, **kw):
    model.zero_grad()
    loss, cache = model.forward(x, g, **kw)
    model.backward(cache)
    return loss, cache, {k: v.copy() for k, v in model.gradients().items()}


def _select(d, prefix):
    return {k: v for k, v in d.items() if k.startswith(prefix)}


# --- the fused path's KL against the registered one --------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("categories", [3, 10, 40])  # 40: the reduction along the last axis
def test_fused_kl_terms_equal_the_registered_kl_and_its_backward(rng, dtype, categories):
    from lvmcore.distributions import Categorical
    from lvmcore.distributions.categorical import UniformCategorical
    from lvmcore.distributions.kl import kl_divergence, kl_divergence_backward
    from lvmcore.ops.softmax import log_softmax_forward

    logits = (3 * rng.standard_normal((5, 4, categories))).astype(dtype)
    logits[0, 0, 0] = 120.0  # the other categories' p underflows to 0 (exp(-120) in float32)
    logits[1, 2] = 0.0  # uniform: KL exactly 0
    p, q = Categorical(logits), UniformCategorical(categories, dtype)
    terms = categorical_kl_terms(logits, np.dtype(dtype))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms.kl[..., 0], kl_divergence(p, q), **tol)
    assert terms.kl[1, 2, 0] == 0 and terms.kl.dtype == dtype
    dkl = rng.standard_normal((5, 4)).astype(dtype)
    want = kl_divergence_backward(p, q, dkl)[0]["logits"]
    np.testing.assert_allclose(dkl[..., None] * terms.p * (terms.diff - terms.kl), want, **tol)
    logp, (probs, _) = log_softmax_forward(logits)
    np.testing.assert_allclose(terms.logp, logp, **tol)
    np.testing.assert_allclose(terms.p, probs, **tol)


# --- exact gradients with fixed noise -----------------------------------------------------


@pytest.mark.parametrize("tau,kl_weight", [(0.7, None), (2.0, 0.3), (0.2, 1.0)])
def test_gumbel_relaxed_gradient_every_parameter(rng, tau, kl_weight):
    x = _data(rng)
    m = _model("gumbel", x)
    g = m.draw_noise(rng, x.shape[0])
    _, _, an = _grads(m, x, g, kl_weight=kl_weight, tau=tau)
    params = _select(m.parameters(), ("encoder", "decoder"))
    gradcheck(lambda: m.forward(x, g, kl_weight=kl_weight, tau=tau)[0], params, an)
    for v in _select(an, "state").values():
        assert not v.any()


def test_straight_through_gradients(rng):
    x = _data(rng)
    m = _model("st-gumbel", x)
    g = m.draw_noise(rng, x.shape[0])
    loss, cache, an = _grads(m, x, g, kl_weight=0.6)
    # decoder: exact gradient of the (piecewise constant in the encoder) loss
    gradcheck(lambda: m.forward(x, g, kl_weight=0.6)[0], _select(m.parameters(), "decoder"), an)
    # the forward value is the exact discrete sample
    np.testing.assert_array_equal(cache.y.argmax(-1), (cache.logits + g).argmax(-1))
    # encoder: the exact gradient of the straight-through surrogate
    B = x.shape[0]
    y_hard = cache.y
    y_soft0 = relaxed_softmax(cache.logits, 0.7, g)

    def surrogate():
        logits = m.posterior_logits(x)
        y = y_hard + relaxed_softmax(logits, 0.7, g) - y_soft0
        out, _ = m.decoder.forward(y.reshape(B, N * C))
        nll, _ = bernoulli_nll_forward(out, x)
        kl = m._kl(logits).sum(-1)
        return nll.mean() + 0.6 * kl.mean()

    assert surrogate() == pytest.approx(loss, rel=1e-12)
    gradcheck(surrogate, _select(m.parameters(), "encoder"), an)


@pytest.mark.parametrize("estimator", ["reinforce", "nvil", "vimco"])
def test_score_estimators_exact_parts(rng, estimator):
    """Decoder exact; encoder exact once the score term is removed from the cache."""
    x = _data(rng)
    m = _model(estimator, x)
    m.state.params["signal_mean"][0] = -3.0
    m.state.params["signal_var"][0] = 9.0
    g = m.draw_noise(rng, x.shape[0])
    kw = {} if estimator == "vimco" else dict(kl_weight=0.8)
    loss, cache, an = _grads(m, x, g, **kw)
    f = lambda: m.forward(x, g, **kw)[0]  # noqa: E731
    gradcheck(f, _select(m.parameters(), "decoder"), an)
    # pathwise part only: reinforce/nvil keep the analytic KL; VIMCO keeps d(-bound)/d log q
    # at fixed z, whose coefficient is the normalized weight (w_rec = w~/B)
    pathwise = -cache.w_rec if estimator == "vimco" else np.zeros_like(cache.w_rec)
    m.zero_grad()
    _, cache = m.forward(x, g, **kw)  # a fresh cache: a cache serves one backward
    m.backward(cache._replace(w_score=pathwise, enc_scale=1.0))
    gradcheck(
        f, _select(m.parameters(), "encoder"), {k: v.copy() for k, v in m.gradients().items()}
    )
    if estimator == "nvil":
        np.testing.assert_allclose(cache.enc_scale, 1 / 3.0)  # 1 / max(1, sqrt(9))

        def regression():  # (1/2B) sum_b (log p(x|z) - c - b(x))^2, the samples held fixed
            b, _ = m.baseline.forward(x)
            return 0.5 * np.mean((cache.stats["recon"] + 3.0 - b[:, 0]) ** 2)

        gradcheck(regression, _select(m.parameters(), "baseline"), an)


def test_backward_is_linear_in_dloss(rng):
    x = _data(rng)
    for est in ("gumbel", "vimco"):
        m = _model(est, x)
        g = m.draw_noise(rng, x.shape[0])
        m.zero_grad()
        m.backward(m.forward(x, g)[1], 1.0)  # a cache serves one backward
        g1 = {k: v.copy() for k, v in m.gradients().items()}
        m.zero_grad()
        m.backward(m.forward(x, g)[1], -2.5)
        for k, v in m.gradients().items():
            np.testing.assert_allclose(v, -2.5 * g1[k], rtol=1e-12, atol=1e-300)


# --- the enumeration oracle ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_exact_bound_gradient_by_finite_differences(rng, k):
    x = _data(rng, B=2)
    m = _model("reinforce", x)
    _, grads = catvae_exact_bound(m, x, k)
    params = _select(m.parameters(), ("encoder", "decoder"))
    gradcheck(lambda: -catvae_exact_bound(m, x, k)[0].mean(), params, grads)


def test_exact_elbo_is_the_enumerated_expectation(rng):
    x = _data(rng, B=3)
    m = _model("reinforce", x)
    bound, _ = catvae_exact_bound(m, x, 1)
    Z = one_hot_configurations(N, C)  # (9, N, C)
    logits = m.posterior_logits(x)
    logq = np.einsum("mnc,bnc->bm", Z, logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
    out, _ = m.decoder.forward(Z.reshape(9, -1))
    ell = np.array([-bernoulli_nll_forward(out, np.broadcast_to(xb, out.shape))[0] for xb in x])
    elbo = (np.exp(logq) * ell).sum(-1) - m._kl(logits).sum(-1)
    np.testing.assert_allclose(bound, elbo, rtol=1e-12)
    # the K-sample bounds increase with K and stay below log p(x)
    log_px = np.log((np.exp(ell) / C**N).sum(-1))
    b2, _ = catvae_exact_bound(m, x, 2)
    b3, _ = catvae_exact_bound(m, x, 3)
    assert (bound < b2).all() and (b2 < b3).all() and (b3 < log_px).all()
    # Monte-Carlo ELBO of the model agrees
    mc = m.elbo(np.repeat(x, 20000, axis=0), np.random.default_rng(1)).reshape(3, -1)
    se = mc.std(axis=1, ddof=1) / np.sqrt(mc.shape[1])
    assert (np.abs(mc.mean(axis=1) - elbo) < 4.5 * se).all()
    # the importance-sampled log-likelihood converges to the enumerated log p(x)
    # within 4.5 standard errors, the relative variance of w = p(x, z)/q(z|x) enumerated too
    k = 20000
    ll = m.log_likelihood(x, np.random.default_rng(2), k=k)
    log_w = ell - N * np.log(C) - logq  # (B, 9)
    rel_var = (np.exp(logq + 2 * log_w).sum(-1) / np.exp(2 * log_px)) - 1
    assert (np.abs(ll - log_px) < 4.5 * np.sqrt(rel_var / k)).all()


# --- statistical unbiasedness against enumeration -----------------------------------------


def _estimator_mean(model, x0, rng, groups=300, reps=200, tau=None):
    """Mean and standard error per coordinate of the estimated gradient of the loss.

    Each call evaluates x0 repeated ``reps`` times (independent noise per row), so its gradient
    is the mean of ``reps`` draws of the estimator for the batch x0; ``groups`` such calls
    give the mean and its standard error. The encoder part is divided by NVIL's scale.
    """
    x = np.tile(x0, (reps, 1))
    keys = sorted(_select(model.gradients(), ("encoder", "decoder")))
    draws = []
    for _ in range(groups):
        _, cache, grads = _grads(model, x, model.draw_noise(rng, x.shape[0]), tau=tau)
        draws.append(
            np.concatenate(
                [
                    grads[k].ravel() / (cache.enc_scale if k.startswith("encoder") else 1)
                    for k in keys
                ]
            )
        )
    draws = np.array(draws)
    return keys, draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(groups)


def _flat(grads, keys):
    return np.concatenate([grads[k].ravel() for k in keys])


@pytest.mark.parametrize("estimator", ["reinforce", "nvil", "vimco"])
def test_score_function_estimators_are_unbiased(estimator):
    rng = np.random.default_rng(11)
    x0 = _data(rng, B=2, D=5)
    m = _model(estimator, x0)
    # a non-trivial running state: the baseline c and the variance normalisation are active
    m.state.params["signal_mean"][0] = -1.7
    m.state.params["signal_var"][0] = 4.0
    _, exact = catvae_exact_bound(m, x0, m.k)
    keys, mean, se = _estimator_mean(m, x0, rng)
    want = _flat(exact, keys)
    assert se.max() < 0.05 * np.abs(want).max()  # the test has power
    assert (np.abs(mean - want) <= 4.5 * se + 1e-12).all(), np.abs(mean - want) / se


@pytest.mark.parametrize("estimator", ["gumbel", "st-gumbel"])
def test_relaxed_estimators_are_biased_for_the_elbo_gradient(estimator):
    """The known bias: the relaxed objective is not the ELBO, and straight-through is not the
    gradient of anything; both means sit many standard errors from the exact gradient."""
    rng = np.random.default_rng(12)
    x0 = _data(rng, B=2, D=5)
    m = _model(estimator, x0)
    _, exact = catvae_exact_bound(m, x0, 1)
    keys, mean, se = _estimator_mean(m, x0, rng, groups=100, tau=0.5)
    z = np.abs(mean - _flat(exact, keys)) / np.maximum(se, 1e-300)
    assert z.max() > 20


def test_vimco_signals_match_the_definition(rng):
    log_w = rng.standard_normal((4, 3)) * 3
    got = vimco_signals(log_w)
    for k in range(4):
        others = np.delete(log_w, k, axis=0)
        geo = others.mean(axis=0)
        w = np.exp(log_w)
        L = np.log(w.mean(axis=0))
        L_k = np.log((np.exp(others).sum(axis=0) + np.exp(geo)) / 4)
        np.testing.assert_allclose(got[k], L - L_k, rtol=1e-12)


# --- state, schedule, training, persistence -----------------------------------------------


def test_running_state_and_temperature_schedule(rng):
    x = _data(rng, B=8)
    m = _model("reinforce", x, baseline_decay=0.5)
    opt = Adam(m.parameters(), m.gradients(), lr=1e-2)
    _, stats = m.loss_and_grads(x, np.random.default_rng(3))
    assert m.step == 1 and not m.gradients()["state.step"].any()
    recon = stats["recon"]
    assert m.state.params["signal_mean"][0] == pytest.approx(0.5 * recon)
    before = {k: v.copy() for k, v in m.parameters().items() if k.startswith("state")}
    opt.step()
    for k, v in before.items():
        np.testing.assert_array_equal(m.parameters()[k], v)
    s = CatVAE(
        D, N, C, (5,), estimator="gumbel", tau=1.0, tau_min=0.5, tau_decay=0.1, dtype=np.float64
    )
    taus = [s.loss_and_grads(x, rng)[1]["tau"] for _ in range(3)]
    assert taus == pytest.approx([1.0, math.exp(-0.1), math.exp(-0.2)])
    assert s.temperature(10**4) == 0.5


@pytest.mark.parametrize("estimator", ["gumbel", "st-gumbel", "reinforce", "nvil", "vimco"])
def test_training_improves_the_elbo(estimator):
    from sklearn.datasets import load_digits

    x = (load_digits().data >= 8).astype(np.float32)[:500]
    m = CatVAE(64, 4, 5, (32,), estimator=estimator, k=3 if estimator == "vimco" else 1, seed=0)
    m.init_output_bias(x)
    opt = Adam(m.parameters(), m.gradients(), lr=3e-3)
    rng = np.random.default_rng(0)
    start = m.elbo(x, np.random.default_rng(1)).mean()
    for step in range(120):
        loss, stats = m.loss_and_grads(x[(step % 5) * 100 : (step % 5 + 1) * 100], rng)
        assert np.isfinite(loss)
        opt.step()
    end = m.elbo(x, np.random.default_rng(1)).mean()
    assert end > start + 1.0


def test_config_roundtrip_and_build_model(rng):
    x = _data(rng)
    assert MODELS["catvae"] is CatVAE
    for est in ("nvil", "vimco", "gumbel"):
        m = _model(est, x, **({} if est != "gumbel" else dict(tau_min=0.5, tau_decay=1e-3)))
        m.state.params["step"][0] = 17
        cfg = json.loads(json.dumps(m.config()))
        m2 = build_model(cfg)
        m2.load_parameters(m.parameters())
        assert m2.config() == m.config() and m2.step == 17
        g = m.draw_noise(rng, x.shape[0])
        assert m.forward(x, g)[0] == m2.forward(x, g)[0]
        assert m2.sample(rng, 3).shape == (3, x.shape[1])
        assert m2.reconstruct(x).shape == x.shape
        assert m2.bound(x, rng).shape == (x.shape[0],)


def test_tiny_temperature_float32_is_finite(rng):
    x = _data(rng).astype(np.float32)
    m = CatVAE(D, N, C, (5,), estimator="gumbel", tau=1e-3)
    m.encoder.params["W1"] *= 1e3  # logits of order 1e3
    loss, stats = m.loss_and_grads(x, rng)
    assert np.isfinite(loss)
    for v in m.gradients().values():
        assert v.dtype == np.float32 and np.isfinite(v).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(estimator="rebar"), r"'estimator' parameter of CatVAE must be one of 'gumbel'"),
        (dict(estimator="vimco", k=1), r"'k' parameter of CatVAE must be an int in \[2, inf\)"),
        (dict(estimator="nvil", k=3), r"'k' parameter of CatVAE applies to estimator='vimco'"),
        (dict(tau=0.0), r"'tau' parameter of temperature_schedule must be a float in \(0, inf\)"),
        (dict(tau=-1.0), r"'tau' parameter"),
        (dict(n_categories=1), r"'n_categories' parameter of CatVAE must be an int in \[2, inf\)"),
        (dict(baseline_decay=1.0), r"'baseline_decay' parameter"),
    ],
)
def test_invalid_hyper_parameters(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        CatVAE(D, **kwargs)


def test_invalid_inputs(rng):
    x = _data(rng)
    m = _model("vimco", x)
    with pytest.raises(ValueError, match="expected kl_weight None or 1 with estimator 'vimco'"):
        m.forward(x, m.draw_noise(rng, x.shape[0]), kl_weight=0.5)
    with pytest.raises(ValueError, match="expected x to be binary"):
        m.loss_and_grads(x * 0.5, rng)
    with pytest.raises(InvalidParameterError, match=r"'tau' parameter of CatVAE.forward"):
        _model("gumbel", x).forward(x, m.draw_noise(rng, x.shape[0], 1), tau=0.0)


@pytest.mark.parametrize("estimator", ["st-gumbel", "vimco"])
def test_cli_train_and_eval(tmp_path, capsys, estimator):
    from lvmcore.cli import main

    out = tmp_path / "run"
    extra = (
        ["--k", "3"]
        if estimator == "vimco"
        else ["--tau", "0.8", "--tau-min", "0.5", "--tau-decay", "1e-3"]
    )
    main(
        [
            "train",
            "--model",
            "catvae",
            "--estimator",
            estimator,
            "--latents",
            "3",
            "--categories",
            "4",
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]
    )
    main(["eval", str(out), "--k", "20", "--subset", "50"])
    text = capsys.readouterr().out
    assert "test ELBO" in text and "test NLL (K=20, n=50)" in text
    assert "active latents" in text
    result = json.loads((out / "eval.json").read_text())
    assert np.isfinite(result["elbo"]) and np.isfinite(result["nll"])
    assert len(result["kl_per_latent"]) == 3


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--estimator", "reinforce", "--tau", "0.5"], "expected no --tau with --model catvae"),
        (["--estimator", "gumbel", "--k", "3"], "expected no --k with --model catvae"),
        (["--latent", "3"], "expected no --latent with --model catvae"),
    ],
)
def test_cli_refuses_flags_that_do_not_apply(tmp_path, capsys, argv, match):
    from lvmcore.cli import main

    with pytest.raises(SystemExit) as err:
        main(["train", "--model", "catvae", "--epochs", "1", "--out", str(tmp_path / "r"), *argv])
    assert err.value.code == 2
    assert match in capsys.readouterr().err


def test_mnist_experiment_script_runs_on_digits(capsys):
    from lvmcore.experiments import catvae_mnist

    assert (
        catvae_mnist.main(
            [
                "--data",
                "digits",
                "--epochs",
                "1",
                "--hidden",
                "16",
                "--latents",
                "3",
                "--categories",
                "4",
                "--k",
                "5",
                "--nll-subset",
                "20",
                "--estimators",
                "gumbel,nvil",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| estimator | test ELBO (nats) | test NLL (K=5, n=20) |" in out
    assert "| gumbel |" in out and "| nvil |" in out
