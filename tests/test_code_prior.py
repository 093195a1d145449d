"""The categorical MADE prior over VQ codes: autoregressive property, gradients, normalization,
exact ancestral sampling, bits per code and the trainer."""

import itertools
import math

import numpy as np
import pytest

from lvmcore import InvalidParameterError
from lvmcore.nn.code_prior import CodePrior, fit_code_prior
from lvmcore.testing import gradcheck


def _prior(rng, S=3, M=4, hidden=(6,), **kw):
    kw.setdefault("dtype", np.float64)
    return CodePrior(S, M, hidden, rng, **kw)


def _all_codes(S, M):
    return np.array(list(itertools.product(range(M), repeat=S)), dtype=np.int64)


@pytest.mark.parametrize("order", ["natural", "random"])
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("embedded", [False, True])
def test_slot_logits_depend_only_on_earlier_slots(rng, order, direct, embedded):
    S, M = 4, 5
    emb = rng.standard_normal((M, 2)) if embedded else None
    prior = _prior(rng, S, M, (7, 6), order=order, direct=direct, embedding=emb)
    rank = np.empty(S, dtype=int)
    rank[prior.order] = np.arange(S)
    codes = rng.integers(0, M, size=(8, S))
    logits0 = prior.forward(codes)[0]
    assert logits0.shape == (8, S, M)
    for j in range(S):
        changed = codes.copy()
        changed[:, j] = (changed[:, j] + 1 + rng.integers(0, M - 1, size=8)) % M
        logits1 = prior.forward(changed)[0]
        later = rank > rank[j]
        np.testing.assert_array_equal(logits1[:, ~later], logits0[:, ~later])
        assert np.all(np.abs(logits1[:, later] - logits0[:, later]).max(axis=(0, 2)) > 0)


@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("embedded", [False, True])
def test_log_prob_backward_by_central_differences(rng, context_dim, embedded):
    S, M, B = 3, 4, 5
    emb = rng.standard_normal((M, 3)) if embedded else None
    prior = _prior(rng, S, M, (5, 4), context_dim=context_dim, embedding=emb)
    codes = rng.integers(0, M, size=(B, S))
    ctx = rng.standard_normal((B, context_dim)) if context_dim else None
    G = rng.standard_normal(B)
    prior.zero_grad()
    log_p, cache = prior.log_prob_forward(codes, ctx)
    dctx = prior.log_prob_backward(G, cache)
    inputs, analytic = dict(prior.params), {k: g.copy() for k, g in prior.grads.items()}
    if context_dim:
        inputs["context"], analytic["context"] = ctx, dctx
    else:
        assert dctx is None
    gradcheck(lambda: np.sum(prior.log_prob(codes, ctx) * G), inputs, analytic)


def test_logits_backward_by_central_differences(rng):
    prior = _prior(rng, 3, 4, (5,), context_dim=2)
    codes, ctx = rng.integers(0, 4, size=(4, 3)), rng.standard_normal((4, 2))
    G = rng.standard_normal((4, 3, 4))
    prior.zero_grad()
    _, cache = prior.forward(codes, ctx)
    dctx = prior.backward(G, cache)
    inputs = {**prior.params, "context": ctx}
    analytic = {**{k: g.copy() for k, g in prior.grads.items()}, "context": dctx}
    gradcheck(lambda: np.sum(prior.forward(codes, ctx)[0] * G), inputs, analytic)


@pytest.mark.parametrize(
    ("S", "M", "order"), [(2, 3, "natural"), (2, 3, "reverse"), (3, 2, "random")]
)
def test_probabilities_of_every_code_sum_to_one(rng, S, M, order):
    prior = _prior(rng, S, M, (4,), order=order, context_dim=2)
    for p in prior.params.values():  # move away from the near-uniform initial state
        p += 0.8 * rng.standard_normal(p.shape) * (p != 0)
    codes = _all_codes(S, M)
    assert codes.shape == (M**S, S)
    for _ in range(3):
        ctx = np.repeat(rng.standard_normal((1, 2)), len(codes), axis=0)
        p = np.exp(prior.log_prob(codes, ctx))
        assert p.min() > 0
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-12)


def test_ancestral_sample_is_the_gumbel_max_of_its_own_conditionals(rng):
    prior = _prior(rng, 5, 6, (8,), order="random")
    codes, g = prior.sample(rng, 50)
    assert codes.shape == (50, 5) and codes.dtype == np.int64 and g.shape == (50, 5, 6)
    logits = prior.forward(codes)[0]  # slot s sees only earlier slots: its sampling logits
    np.testing.assert_array_equal(np.argmax(logits + g, axis=-1), codes)
    np.testing.assert_array_equal(prior.sample_from_noise(g), codes)  # fixed noise, fixed draw


def test_ancestral_samples_follow_the_exact_distribution(rng):
    S, M, n = 2, 3, 40_000
    prior = _prior(rng, S, M, (4,))
    for p in prior.params.values():
        p += rng.standard_normal(p.shape) * (p != 0)
    codes = _all_codes(S, M)
    prob = np.exp(prior.log_prob(codes))
    samples, _ = prior.sample(rng, n)
    counts = np.array([np.sum(np.all(samples == c, axis=1)) for c in codes])
    se = np.sqrt(prob * (1 - prob) / n)
    assert np.all(np.abs(counts / n - prob) < 5 * se), (counts / n, prob)


def test_nll_bits_is_the_mean_log_prob_per_slot_and_uniform_gives_log2_m(rng):
    S, M = 3, 8
    prior = _prior(rng, S, M, (5,))
    codes = rng.integers(0, M, size=(37, S))
    want = -prior.log_prob(codes).mean() / (S * math.log(2))
    np.testing.assert_allclose(prior.nll_bits(codes, batch_size=10), want, rtol=1e-12)
    for p in prior.params.values():
        p[...] = 0
    np.testing.assert_allclose(prior.nll_bits(codes), math.log2(M), rtol=1e-12)


def test_fit_code_prior_learns_a_copied_slot(rng):
    """Slot 1 copies slot 0 (uniform over 3): the entropy is log2(3) / 2 bits per code."""
    M = 3
    first = rng.integers(0, M, size=600)
    codes = np.stack([first, first], axis=1)
    valid = np.stack([np.arange(M)] * 2, axis=1).repeat(20, axis=0)
    prior = CodePrior(2, M, (8,), np.random.default_rng(0), dtype=np.float64)
    history = fit_code_prior(
        prior, codes, rng, epochs=30, batch_size=64, lr=0.03, valid_codes=valid
    )
    assert len(history) == 30 and history[0]["epoch"] == 1
    assert history[-1]["train_bits"] < history[0]["train_bits"]
    assert history[-1]["valid_bits"] < 0.85  # uniform: log2(3) = 1.58; optimum 0.79
    assert history[-1]["valid_bits"] > math.log2(M) / 2 - 1e-9


def test_float32_prior_samples_and_scores(rng):
    prior = CodePrior(4, 5, (6,), rng)
    codes, g = prior.sample(rng, 7)
    assert g.dtype == np.float32
    log_p, cache = prior.log_prob_forward(codes)
    assert log_p.dtype == np.float32
    prior.log_prob_backward(np.ones(7, np.float32), cache)
    assert all(gr.dtype == np.float32 for gr in prior.grads.values())


def test_code_prior_rejects_bad_input(rng):
    prior = _prior(rng, 3, 4, (5,))
    codes = rng.integers(0, 4, size=(5, 3))
    with pytest.raises(ValueError, match=r"CodePrior.forward: expected codes to lie in \[0, 4\)"):
        prior.forward(codes + 4)
    with pytest.raises(ValueError, match=r"CodePrior.forward: expected codes to lie in \[0, 4\)"):
        prior.log_prob(codes - 4)
    with pytest.raises(ValueError, match=r"CodePrior.forward: expected codes of shape \(B, 3\)"):
        prior.forward(codes[:, :2])
    with pytest.raises(TypeError, match="CodePrior.forward: expected codes to be an integer"):
        prior.forward(codes.astype(np.float64))
    with pytest.raises(ValueError, match="CodePrior.forward: expected context None"):
        prior.forward(codes, np.zeros((5, 2)))
    with pytest.raises(InvalidParameterError, match="'n' parameter of CodePrior.sample"):
        prior.sample(rng, 0)
    with pytest.raises(ValueError, match=r"CodePrior.sample_from_noise: expected g of shape"):
        prior.sample_from_noise(np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match=r"CodePrior: expected embedding to have one row per"):
        CodePrior(3, 4, (5,), rng, embedding=np.zeros((5, 2), np.float32))
    with pytest.raises(InvalidParameterError, match="'n_codes' parameter of CodePrior"):
        CodePrior(3, 1, (5,), rng)
    cond = _prior(rng, 3, 4, (5,), context_dim=2)
    with pytest.raises(ValueError, match=r"CodePrior.forward: expected context of shape \(B, 2\)"):
        cond.forward(codes)
    with pytest.raises(ValueError, match=r"CodePrior.forward: expected context of shape \(5, 2\)"):
        cond.forward(codes, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"fit_code_prior: expected codes to lie in"):
        fit_code_prior(prior, codes + 4, rng)
    _, cache = prior.log_prob_forward(codes)
    with pytest.raises(ValueError, match="CodePrior.log_prob_backward: expected dlog_p"):
        prior.log_prob_backward(np.ones(4), cache)


def test_config_rebuilds_the_same_prior(rng):
    import json

    prior = _prior(rng, 3, 4, (5,), order="random", context_dim=2)
    cfg = json.loads(json.dumps(prior.config()))
    assert cfg.pop("embedded") is False
    twin = CodePrior(rng=np.random.default_rng(1), **cfg)
    np.testing.assert_array_equal(twin.order, prior.order)
    for k, v in prior.params.items():
        twin.params[k][...] = v
    codes, ctx = rng.integers(0, 4, size=(6, 3)), rng.standard_normal((6, 2))
    np.testing.assert_array_equal(twin.log_prob(codes, ctx), prior.log_prob(codes, ctx))
