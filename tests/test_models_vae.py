"""The whole VAE objective end to end: its hand-written backward against central
differences over every parameter array, with the noise held fixed."""

import numpy as np
import pytest

from lvmcore import InvalidParameterError
from lvmcore.models import VAE, build_model
from lvmcore.optim import Adam
from lvmcore.testing import gradcheck

CONFIGS = [
    dict(likelihood="bernoulli", kl="analytic", n_samples=1),
    dict(likelihood="bernoulli", kl="sampled", n_samples=3),
    dict(likelihood="bernoulli", kl="analytic", n_samples=2, beta=0.3, free_bits=0.05),
    dict(likelihood="bernoulli", kl="sampled", n_samples=2, free_bits=0.05, activation="softplus"),
    dict(likelihood="gaussian", kl="analytic", decoder_variance="learned"),
    dict(likelihood="gaussian", kl="sampled", decoder_variance=0.5, n_samples=2, activation="relu"),
]


def _data(rng, likelihood, B=6, D=7):
    if likelihood == "bernoulli":
        return (rng.random((B, D)) < 0.4).astype(np.float64)
    return rng.standard_normal((B, D))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_elbo_gradient_every_parameter(rng, cfg):
    model = VAE(7, 3, (5, 4), dtype=np.float64, seed=3, **cfg)
    x = _data(rng, cfg["likelihood"])
    model.init_output_bias(x)
    eps = model.draw_noise(rng, x.shape[0])
    model.zero_grad()
    loss, cache = model.forward(x, eps, kl_weight=0.8)
    model.backward(cache)
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    gradcheck(lambda: model.forward(x, eps, kl_weight=0.8)[0], model.parameters(), analytic)


def test_backward_scales_with_dloss(rng):
    model = VAE(7, 3, (5,), dtype=np.float64)
    x = _data(rng, "bernoulli")
    eps = model.draw_noise(rng, 6)
    _, cache = model.forward(x, eps)
    model.zero_grad()
    model.backward(cache, dloss=1.0)
    g1 = {k: v.copy() for k, v in model.gradients().items()}
    _, cache = model.forward(x, eps)  # a cache serves one backward (it is overwritten)
    model.zero_grad()
    model.backward(cache, dloss=-2.5)
    for k, v in model.gradients().items():
        np.testing.assert_allclose(v, -2.5 * g1[k], rtol=1e-12)


def test_analytic_and_sampled_kl_agree_in_expectation(rng):
    model = VAE(7, 3, (5,), dtype=np.float64, n_samples=1)
    x = _data(rng, "bernoulli", B=1)
    analytic = VAE.from_config({**model.config(), "kl": "analytic"})
    sampled = VAE.from_config({**model.config(), "kl": "sampled", "n_samples": 20000})
    for m in (analytic, sampled):
        m.load_parameters(model.parameters())
    kl_a = analytic.forward(x, analytic.draw_noise(rng, 1))[1].stats["kl"][0]
    c = sampled.forward(x, sampled.draw_noise(rng, 1))[1]
    logvar, eps, z = c.logvar, c.reparam.eps, c.z
    per_sample = (0.5 * (z * z - eps * eps) - 0.5 * logvar).sum(axis=-1)[:, 0]
    se = per_sample.std(ddof=1) / np.sqrt(per_sample.size)
    assert abs(per_sample.mean() - kl_a) < 4 * se
    assert c.stats["kl"][0] == pytest.approx(per_sample.mean())


def test_training_improves_the_bound(rng):
    from sklearn.datasets import load_digits

    x = (load_digits().data >= 8).astype(np.float32)[:500]
    model = VAE(64, 4, (32,), seed=0)
    model.init_output_bias(x)
    opt = Adam(model.parameters(), model.gradients(), lr=3e-3)
    start = model.elbo(x, np.random.default_rng(1)).mean()
    for step in range(150):
        model.loss_and_grads(x[(step % 5) * 100 : (step % 5 + 1) * 100], rng)
        opt.step()
    end = model.elbo(x, np.random.default_rng(1)).mean()
    assert end > start + 5.0


def test_encode_decode_sample_reconstruct_shapes(rng):
    model = VAE(7, 3, (5,))
    x = _data(rng, "bernoulli").astype(np.float32)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 3)
    assert model.decode(mu).shape == (6, 7)
    s = model.sample(rng, 4)
    assert s.shape == (4, 7) and s.dtype == np.float32 and ((s > 0) & (s < 1)).all()
    assert model.reconstruct(x).shape == (6, 7)
    assert build_model(model.config()).config() == model.config()


def test_bad_inputs_are_named(rng):
    model = VAE(7, 3, (5,))
    x = _data(rng, "bernoulli").astype(np.float32)
    with pytest.raises(ValueError, match=r"expected x to have shape \(\*, 7\), got \(6, 6\)"):
        model.loss_and_grads(x[:, :6], rng)
    with pytest.raises(TypeError, match="expected x to have dtype float32 or float64, got int64"):
        model.loss_and_grads(x.astype(np.int64), rng)
    with pytest.raises(TypeError, match="model's dtype float32"):
        model.loss_and_grads(x.astype(np.float64), rng)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="expected x to contain no NaN or Inf"):
        model.loss_and_grads(bad, rng)
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="expected x to be binary"):
        model.loss_and_grads(bad, rng)
    with pytest.raises(TypeError, match="numpy.ndarray or cupy.ndarray, got list"):
        model.loss_and_grads(x.tolist(), rng)
    with pytest.raises(InvalidParameterError, match="'latent_dim' parameter of VAE"):
        VAE(7, 0)
    with pytest.raises(InvalidParameterError, match="'kl' parameter of VAE must be one of"):
        VAE(7, 2, kl="exact")
    with pytest.raises(InvalidParameterError, match="'beta' parameter of VAE"):
        VAE(7, 2, beta=-1.0)


def test_gaussian_decoder_accepts_real_data(rng):
    model = VAE(5, 2, (4,), likelihood="gaussian")
    x = rng.standard_normal((8, 5)).astype(np.float32)
    loss, stats = model.loss_and_grads(x, rng)
    assert np.isfinite(loss) and "decoder.logvar" in model.parameters()
