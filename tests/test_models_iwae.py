"""IWAE bound and its estimators: exact gradients for fixed noise, the K = 1 identity,
edge values, and unbiasedness of STL and DReG against the plain estimator."""

import warnings

import numpy as np
import pytest

from lvmcore.losses.iwae import (
    bound_forward,
    importance_weights_backward,
    importance_weights_forward,
)
from lvmcore.models import IWAE, VAE
from lvmcore.testing import check_vjp, gradcheck


def _x(rng, likelihood, B=5, D=7):
    if likelihood == "bernoulli":
        return (rng.random((B, D)) < 0.4).astype(np.float64)
    return rng.standard_normal((B, D))


def _grads(model, x, eps):
    model.zero_grad()
    _, cache = model.forward(x, eps)
    model.backward(cache)
    return {k: v.copy() for k, v in model.gradients().items()}


@pytest.mark.parametrize("objective,groups", [("iwae", 1), ("miwae", 3), ("ciwae", 1)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_plain_gradient_every_parameter(rng, objective, groups, likelihood):
    model = IWAE(
        7,
        3,
        (5,),
        k=4,
        objective=objective,
        groups=groups,
        likelihood=likelihood,
        dtype=np.float64,
        seed=1,
    )
    x = _x(rng, likelihood)
    eps = model.draw_noise(rng, x.shape[0])
    gradcheck(lambda: model.forward(x, eps)[0], model.parameters(), _grads(model, x, eps))


def test_piwae_decoder_follows_iwae_and_encoder_follows_miwae(rng):
    M, K = 3, 4
    piwae = IWAE(7, 3, (5,), k=K, objective="piwae", groups=M, dtype=np.float64, seed=2)
    iwae = IWAE.from_config({**piwae.config(), "objective": "iwae", "k": M * K, "groups": 1})
    miwae = IWAE.from_config({**piwae.config(), "objective": "miwae"})
    for m in (iwae, miwae):
        m.load_parameters(piwae.parameters())
    x = _x(rng, "bernoulli")
    eps = piwae.draw_noise(rng, x.shape[0])
    g = _grads(piwae, x, eps)
    dec = {k: v for k, v in iwae.parameters().items() if k.startswith("decoder")}
    enc = {k: v for k, v in miwae.parameters().items() if k.startswith("encoder")}
    gradcheck(lambda: iwae.forward(x, eps)[0], dec, {k: g[k] for k in dec})
    gradcheck(lambda: miwae.forward(x, eps)[0], enc, {k: g[k] for k in enc})


def test_k1_bound_equals_sampled_kl_elbo(rng):
    vae = VAE(7, 3, (5,), kl="sampled", dtype=np.float64, seed=4)
    iwae = IWAE(7, 3, (5,), k=1, dtype=np.float64, seed=4)
    x = _x(rng, "bernoulli")
    eps = vae.draw_noise(rng, x.shape[0])
    loss_v, cache_v = vae.forward(x, eps)
    loss_i, cache_i = iwae.forward(x, eps)
    elbo = cache_v.stats["log_px_z"] - cache_v.stats["kl"]
    np.testing.assert_allclose(cache_i[2]["bound"], elbo, rtol=1e-12)
    assert loss_i == pytest.approx(loss_v, rel=1e-12)
    gv, gi = _grads(vae, x, eps), _grads(iwae, x, eps)
    for k in gv:
        np.testing.assert_allclose(gi[k], gv[k], rtol=1e-10, atol=1e-13)


def test_importance_weights_backward(rng):
    log_w = rng.standard_normal((6, 4)) * 3
    check_vjp(
        importance_weights_forward,
        lambda d, c: (importance_weights_backward(d, c),),
        [log_w],
        names=["log_w"],
    )


@pytest.mark.parametrize(
    "objective,groups", [("iwae", 1), ("miwae", 2), ("ciwae", 1), ("piwae", 2)]
)
def test_all_minus_inf_column_gives_minus_inf_and_zero_weights(objective, groups):
    log_w = np.array([[-np.inf, 0.5], [-np.inf, -1.0], [-np.inf, -np.inf], [-np.inf, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bound, w = bound_forward(log_w, objective, groups, beta=0.3)
    assert bound[0] == -np.inf and np.isfinite(bound[1]) or objective == "ciwae"
    for field in w:
        assert not np.isnan(field).any()
    np.testing.assert_array_equal(w.decoder[:, 0], 0.0 if objective != "ciwae" else w.decoder[:, 0])
    assert np.all(w.encoder[:, 0] == 0) or objective == "ciwae"
    b, c = importance_weights_forward(log_w)
    assert b[0] == -np.inf and not c.weights[:, 0].any()
    assert not importance_weights_backward(np.ones(2), c)[:, 0].any()


def test_iwae_bound_is_log_mean_exp(rng):
    log_w = rng.standard_normal((50, 3)) * 4 - 200.0  # far below exp's range
    bound, w = bound_forward(log_w, "iwae")
    want = np.log(np.mean(np.exp(log_w + 200.0), axis=0)) - 200.0
    np.testing.assert_allclose(bound, want, rtol=1e-12)
    np.testing.assert_allclose(w.decoder.sum(axis=0), 1 / 3)


def _encoder_grad_samples(model, x, rng, n):
    rows = []
    for _ in range(n):
        g = _grads(model, x, model.draw_noise(rng, x.shape[0]))
        rows.append(np.concatenate([v.ravel() for k, v in sorted(g.items())]))
    return np.array(rows)


def _paired_encoder_difference(estimator, k, n, seed=11):
    """Encoder-gradient samples of ``estimator`` minus plain IWAE on the same noise."""
    plain = IWAE(4, 2, (3,), k=k, dtype=np.float64, seed=7)
    other = IWAE.from_config({**plain.config(), "estimator": estimator})
    other.load_parameters(plain.parameters())
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    d = _encoder_grad_samples(other, x, np.random.default_rng(seed), n) - _encoder_grad_samples(
        plain, x, np.random.default_rng(seed), n
    )
    names = sorted(plain.gradients())
    sizes = [plain.gradients()[name].size for name in names]
    is_dec = np.concatenate(
        [np.full(s, name.startswith("decoder")) for name, s in zip(names, sizes)]
    )
    np.testing.assert_allclose(d[:, is_dec], 0.0, atol=1e-12)  # decoder gradient unchanged
    enc = d[:, ~is_dec]
    se = enc.std(axis=0, ddof=1) / np.sqrt(n)
    assert (se > 0).sum() > 10  # the estimators really differ sample by sample
    return enc.mean(axis=0) / np.maximum(se, 1e-15)


# n=500 runs in the default suite (a few seconds); n=3000 is the full-power check (-m slow).
N_PAIRED = [500, pytest.param(3000, marks=pytest.mark.slow)]


@pytest.mark.parametrize("n", N_PAIRED)
@pytest.mark.parametrize("estimator,k", [("dreg", 5), ("dreg", 1), ("stl", 1)])
def test_estimator_is_unbiased_for_the_plain_gradient(estimator, k, n):
    """Same noise for both estimators, so the paired difference must have mean zero.

    The tolerance is 4.5 standard errors of the mean difference, measured from the
    samples, per coordinate (Bonferroni over the ~40 coordinates keeps the chance of a
    false alarm for a correct estimator near 3e-4).
    """
    z = _paired_encoder_difference(estimator, k, n=n)
    assert np.abs(z).max() < 4.5, f"largest |z| = {np.abs(z).max():.2f}"


@pytest.mark.parametrize("n", N_PAIRED)
def test_stl_is_biased_for_k_above_one(n):
    """Tucker et al. (2019), sec. 3: for K > 1 the score term that STL drops does not
    have zero mean under the normalized weights, so IWAE-STL is biased. lvmcore keeps
    STL as specified (it is the lower-variance choice people ask for) and documents
    this; the same check that passes for DReG must fail here."""
    z = _paired_encoder_difference("stl", 5, n=n)
    assert np.abs(z).max() > 10


def test_log_likelihood_is_chunk_invariant_and_tighter_than_elbo(rng):
    model = VAE(7, 2, (5,), dtype=np.float64, seed=0)
    x = _x(rng, "bernoulli", B=3)
    a = model.log_likelihood(x, np.random.default_rng(3), k=64, chunk_size=64)
    b = model.log_likelihood(x, np.random.default_rng(3), k=64, chunk_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    elbo = model.elbo(x, np.random.default_rng(4)).mean()
    assert model.log_likelihood(x, np.random.default_rng(5), k=2000).mean() > elbo


def test_bad_parameters():
    with pytest.raises(ValueError, match="'estimator' parameter of IWAE must be one of"):
        IWAE(4, 2, estimator="rws")
    with pytest.raises(ValueError, match="'k' parameter of IWAE must be an int"):
        IWAE(4, 2, k=0)
    with pytest.raises(ValueError, match="'objective' parameter of IWAE"):
        IWAE(4, 2, objective="vimco")


def _far_group_case(dtype, scale, estimator):
    """A PIWAE model whose parameters are spread by ``scale`` (log w spreads with it) and
    float32 noise for 4 rows of 30 binary pixels."""
    D, Z = 30, 3
    base = IWAE(D, Z, (8,), k=6, objective="piwae", groups=3, dtype=np.float64, seed=1)
    rng = np.random.default_rng(5)
    params = {n: v + scale * rng.standard_normal(v.shape) for n, v in base.parameters().items()}
    model = IWAE(
        D, Z, (8,), k=6, objective="piwae", groups=3, estimator=estimator, dtype=dtype, seed=1
    )
    model.load_parameters({n: v.astype(dtype) for n, v in params.items()})
    x = (np.random.default_rng(0).random((4, D)) < 0.4).astype(dtype)
    return model, x


@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
def test_piwae_group_far_below_its_column_keeps_its_encoder_gradient(estimator):
    """A group 50-270 nats below the rest of its column: its decoder weights are flushed
    (float32 step) or underflow, so the encoder-over-decoder rescale alone would lose its
    encoder gradient (or make it NaN past 88 nats); the float32 fused step must agree with the
    float64 readable one on the same noise, with no warning."""
    for scale, least_gap in ((1.5, 45), (2.0, 95), (3.0, 250)):
        m32, x32 = _far_group_case(np.float32, scale, estimator)
        m64, x64 = _far_group_case(np.float64, scale, estimator)
        eps = m32.draw_noise(np.random.default_rng(3), 4)  # float32 noise for both
        log_w = m64.log_weights(x64, eps.astype(np.float64)).reshape(3, 6, 4)
        lse = np.logaddexp.reduce(log_w, axis=1)  # (groups, B)
        assert (lse.max(0) - lse.min(0)).max() > least_gap
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m32.zero_grad()
            m32.backward(m32.forward(x32, m32.draw_key(np.random.default_rng(3), 4))[1])
            want = _grads(m64, x64, eps.astype(np.float64))
        for name, g in m32.gradients().items():
            ref = want[name]
            err = np.abs(g.astype(np.float64) - ref).max() / np.abs(ref).max()
            assert err < 1e-3, (scale, name, err)


@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
def test_the_direct_way_equals_the_rescale_where_both_are_exact(monkeypatch, estimator):
    """split_bound_weights' three passes add up to the one-pass gradient (float64, gaps of a
    few nats, where the rescale is exact): forced on every sample with a ratio above 1/2."""
    import lvmcore.losses.iwae as iwae_losses

    model, x = _far_group_case(np.float64, 0.3, estimator)
    eps = model.draw_noise(np.random.default_rng(3), 4)
    want = _grads(model, x, eps)
    monkeypatch.setattr(iwae_losses, "RESCALE_LIMIT", 0.5)
    _, cache = model.forward(x, eps)
    assert iwae_losses.split_bound_weights(cache[1], estimator) is not None
    got = _grads(model, x, eps)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_split_bound_weights_is_none_below_the_limit_and_for_other_objectives(rng):
    from lvmcore.losses.iwae import RESCALE_LIMIT, split_bound_weights

    log_w = rng.standard_normal((6, 4))
    for objective in ("iwae", "miwae", "ciwae", "piwae"):
        _, bw = bound_forward(log_w, objective, groups=2)
        for estimator in ("iwae", "stl", "dreg"):
            assert split_bound_weights(bw, estimator) is None
    log_w[:3, 1] -= 1000.0  # group 0 of column 1 far below group 1
    _, bw = bound_forward(log_w, "piwae", groups=2)
    assert np.isfinite(bw.encoder_over_decoder).all()  # capped, not inf
    assert bw.encoder_over_decoder.max() > RESCALE_LIMIT
    main, direct, generative = split_bound_weights(bw, "iwae")
    far = np.zeros((6, 4), bool)
    far[:3, 1] = True
    np.testing.assert_array_equal(main.decoder, bw.decoder)
    np.testing.assert_array_equal(main.encoder, np.where(far, 0, bw.encoder))
    np.testing.assert_array_equal(direct.decoder, np.where(far, bw.encoder, 0))
    np.testing.assert_array_equal(direct.encoder_over_decoder, far.astype(float))
    np.testing.assert_array_equal(generative.decoder, direct.decoder)
    assert not generative.encoder.any() and not generative.encoder_over_decoder.any()


def _logweight_families():
    from lvmcore.models import FlowIWAE, HierarchicalIWAE, PriorDecoderIWAE

    common = dict(objective="piwae", groups=2, k=3, seed=2, dtype=np.float64)
    return {
        "hierarchy": lambda e: HierarchicalIWAE(8, estimator=e, **common),
        "iaf": lambda e: FlowIWAE(8, 3, (6,), posterior="iaf", estimator=e, **common),
        "vamp+made": lambda e: PriorDecoderIWAE(
            8,
            3,
            (6,),
            prior="vamp",
            prior_components=3,
            decoder="made",
            ar_dropout=0.3,
            estimator=e,
            **common,
        ),
        "mog+levels": lambda e: PriorDecoderIWAE(
            8,
            3,
            (6,),
            prior="mog",
            prior_components=2,
            levels=4,
            dequantize="variational",
            likelihood="gaussian",
            estimator=e,
            **common,
        ),
    }


@pytest.mark.parametrize("family", sorted(_logweight_families()))
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
def test_the_direct_way_over_a_copied_cache_for_every_bound_family(monkeypatch, family, estimator):
    """The families trained through LogWeightModel take the direct way over copies of their
    forward cache (copy_arrays): forced on every sample with a ratio above 1/2, the gradient
    is the one-pass one."""
    import lvmcore.losses.iwae as iwae_losses

    model = _logweight_families()[family](estimator)
    rng = np.random.default_rng(4)
    model.load_parameters(
        {n: v + 0.2 * rng.standard_normal(v.shape) for n, v in model.parameters().items()}
    )
    if family == "mog+levels":
        x = rng.integers(0, 4, (4, 8)).astype(np.float64)
    else:
        x = (rng.random((4, 8)) < 0.4).astype(np.float64)
    eps = model.draw_noise(np.random.default_rng(3), 4)
    want = _grads(model, x, eps)
    monkeypatch.setattr(iwae_losses, "RESCALE_LIMIT", 0.5)
    assert iwae_losses.split_bound_weights(model.forward(x, eps)[1][1], estimator) is not None
    got = _grads(model, x, eps)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-11, atol=1e-13, err_msg=name)
