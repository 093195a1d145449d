"""Whole-model losses and gradients against PyTorch autograd: learned priors, autoregressive and
categorical decoders, dequantized levels, the label-conditioned VAE and the product of experts.

Checked: :class:`lvmcore.models.PriorDecoderVAE` and :class:`lvmcore.models.PriorDecoderIWAE`
(mixture, VampPrior, flow and standard priors; factorized, MADE and categorical decoders;
uniform and variational dequantization; the ELBO with a sampled or closed-form KL and free
bits; the IWAE, MIWAE and CIWAE bounds with the plain estimator, and the IWAE bound with the
STL and DReG estimators), :class:`lvmcore.models.CVAE` and :class:`lvmcore.models.MVAE`.

How: each model is built small in float64 and every parameter array is moved away from its
initial value by seeded noise. The loss and every gradient come from the model's
``forward`` / ``backward``; the same loss is then written out in torch from the documented
math, with float64 leaf tensors copied from ``model.parameters()`` and no lvmcore function on
the torch side, and differentiated by autograd. The loss must agree to rtol 1e-10 and every
gradient array to rtol 1e-8 (atol 1e-10).

Noise replay: the noise array ``model.draw_noise(np.random.default_rng(seed), B)`` that the
model's ``forward`` consumes is handed to torch as it is and read in its documented layout:
(S, B, Z) standard normals eps_z for the posterior sample, followed, for a MADE decoder with
input dropout or dequantized data, by D more columns per sample (uniforms in [0, 1) for the
dropout mask and for uniform dequantization, standard normals for the variational
dequantizer's logit-normal); the MVAE's noise is (L, B, T, Z), one slice per subset of
modalities. The MADE masks (decoder and flow prior) are structure and are read from the
modules; everything else is recomputed.

The STL and DReG estimators are not gradients of one function; they are expressed as
surrogates whose autograd gradient is the estimator. STL: log w with the posterior's density
evaluated at stop-gradient moments, so the inference network is reached only through the
sample z (the prior's own dependence on the encoder, the VampPrior's, stays live). DReG: the
bound of log w at a stop-gradient z (every generative parameter, the dequantizer and the
VampPrior's path into the encoder live), plus the squared normalized weights times log w with
every parameter stopped except through z, added with its value subtracted (it changes the
gradient, not the loss).
"""

import numpy as np
import pytest
from oracle_torch import (
    LOG_2PI,
    LOSS_RTOL,
    PriorDecoderTorch,
    autograd_grads,
    bernoulli_loglik,
    bounds,
    check_grads,
    decoder_logvar,
    detached,
    dreg_weights,
    leaves,
    log_normal,
    mlp,
    mvae_twin_loss,
    one_torch_thread,  # noqa: F401  (autouse)
    perturb,
)

from lvmcore.models import CVAE, MVAE, PriorDecoderIWAE, PriorDecoderVAE

torch = pytest.importorskip("torch")

B = 4


# ---------------------------------------------------------------------------------- plumbing
def _check(model, loss, loss_t, P):
    """The model's loss and gradients (already accumulated) against autograd of loss_t."""
    want = autograd_grads(loss_t, P)
    for k, w in want.items():
        # every parameter array reaches the loss: no comparison of two zero arrays
        assert np.abs(w).max() > 0, k
    np.testing.assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL, atol=0)
    check_grads(model.gradients(), want)


def _binary(rng, D):
    return (rng.random((B, D)) < 0.5).astype(np.float64)


def _levels(rng, D, L):
    x = rng.integers(0, L, (B, D))
    x[0, :] = L - 1  # the top level and the bottom one both occur
    x[1, 0] = 0
    return x.astype(np.float64)


# ------------------------------------------------------ the prior/decoder models, in torch
def _check_dependencies(masks, allowed, heads):
    """The 0/1 masks W0 ... W<L> connect input j to output (p, i) through some path exactly
    where ``allowed[j, i]`` (the autoregressive order, and the band of a limited context)."""
    n = sum(1 for k in masks if k[1:].isdigit())
    paths = masks["W0"]
    for i in range(1, n):
        paths = paths @ masks[f"W{i}"]
    np.testing.assert_array_equal(paths > 0, np.tile(allowed, (1, heads)))


def _prior_decoder_torch(model, cfg):
    """The torch twin of a PriorDecoderVAE / PriorDecoderIWAE (``oracle_torch``), after
    checking that its MADE masks (the decoder's and each flow-prior step's) give exactly the
    documented dependencies."""
    D, Z = cfg["data_dim"], cfg["latent_dim"]
    if cfg.get("decoder", "factorized") == "made":
        N = cfg.get("ar_context") or D
        i, j = np.arange(D)[None, :], np.arange(D)[:, None]
        _check_dependencies(model.decoder.masks, (j < i) & (j >= i - N), 1)
    if cfg.get("prior", "standard") == "flow":
        for t, step in enumerate(model.prior_block.steps):
            deg = np.arange(Z) if t % 2 == 0 else np.arange(Z)[::-1]
            _check_dependencies(step.masks, deg[:, None] < deg[None, :], 2)
    return PriorDecoderTorch(model, cfg)


# --------------------------------------------------------------------------- configurations
BASE = dict(latent_dim=2, hidden=(6,), dtype=np.float64)

ELBO_CASES = {
    "mog-bernoulli": dict(data_dim=8, prior="mog", prior_components=3, n_samples=2),
    "vamp-made-dropout": dict(
        data_dim=8,
        prior="vamp",
        prior_components=2,
        decoder="made",
        ar_hidden=(10,),
        ar_context=3,
        ar_dropout=0.3,
        n_samples=2,
    ),
    "flow-categorical": dict(
        data_dim=8, latent_dim=3, prior="flow", prior_flow_hidden=(5,), decoder="categorical"
    ),
    "standard-made-sampled-kl": dict(
        data_dim=9, decoder="made", ar_hidden=(9, 8), kl="sampled", n_samples=2
    ),
    "mog-uniform-deq-gaussian": dict(
        data_dim=8, prior="mog", prior_components=2, dequantize="uniform", likelihood="gaussian"
    ),
    "vamp-variational-deq-logistic": dict(
        data_dim=10,
        prior="vamp",
        prior_components=3,
        dequantize="variational",
        likelihood="logistic",
        dequantizer_hidden=(5,),
        n_samples=2,
    ),
    "standard-categorical-analytic-kl": dict(data_dim=8, decoder="categorical", n_samples=2),
    "standard-variational-deq-analytic-kl": dict(
        data_dim=8, dequantize="variational", likelihood="gaussian"
    ),
}

IWAE_CASES = {
    "iwae-mog-bernoulli": dict(data_dim=8, prior="mog", prior_components=3),
    "iwae-vamp-bernoulli": dict(data_dim=10, prior="vamp", prior_components=3),
    "iwae-mog-made-dropout": dict(
        data_dim=8, prior="mog", prior_components=2, decoder="made", ar_hidden=(8,), ar_dropout=0.4
    ),
    "iwae-flow-categorical": dict(
        data_dim=8, prior="flow", prior_flow_steps=3, prior_flow_hidden=(4,), decoder="categorical"
    ),
    "iwae-standard-variational-deq": dict(
        data_dim=8, dequantize="variational", likelihood="gaussian"
    ),
    "iwae-mog-uniform-deq-logistic": dict(
        data_dim=8, prior="mog", prior_components=2, dequantize="uniform", likelihood="logistic"
    ),
    "miwae-vamp-made": dict(
        data_dim=8,
        prior="vamp",
        prior_components=2,
        decoder="made",
        ar_hidden=(7,),
        objective="miwae",
        groups=2,
        k=2,
    ),
    "ciwae-mog-categorical": dict(
        data_dim=8,
        prior="mog",
        prior_components=3,
        decoder="categorical",
        objective="ciwae",
        ciwae_beta=0.3,
    ),
    "stl-vamp-made": dict(
        data_dim=8,
        prior="vamp",
        prior_components=2,
        decoder="made",
        ar_hidden=(8,),
        ar_dropout=0.25,
        estimator="stl",
    ),
    "stl-mog-variational-deq": dict(
        data_dim=8,
        prior="mog",
        prior_components=2,
        dequantize="variational",
        likelihood="logistic",
        estimator="stl",
    ),
    "stl-flow-bernoulli": dict(data_dim=8, prior="flow", prior_flow_hidden=(4, 4), estimator="stl"),
    "dreg-vamp-categorical": dict(
        data_dim=8, prior="vamp", prior_components=3, decoder="categorical", estimator="dreg"
    ),
    "dreg-flow-variational-deq": dict(
        data_dim=8,
        prior="flow",
        prior_flow_hidden=(4,),
        dequantize="variational",
        likelihood="logistic",
        estimator="dreg",
    ),
    "dreg-mog-made": dict(
        data_dim=8,
        prior="mog",
        prior_components=3,
        decoder="made",
        ar_hidden=(8,),
        ar_context=2,
        ar_dropout=0.3,
        estimator="dreg",
    ),
}

ACTIVATIONS = ("tanh", "softplus", "relu")


def _cfg(case, i):
    cfg = dict(BASE, activation=ACTIVATIONS[i % len(ACTIVATIONS)])
    cfg.update(case)
    uses_levels = cfg.get("decoder") == "categorical" or cfg.get("dequantize", "none") != "none"
    if uses_levels:
        cfg.setdefault("levels", 3 + i % 2)
    return cfg


def _data(cfg, rng):
    if cfg.get("levels") is not None:
        return _levels(rng, cfg["data_dim"], cfg["levels"])
    return _binary(rng, cfg["data_dim"])


# ----------------------------------------------------------------------------------- tests
@pytest.mark.oracle
@pytest.mark.parametrize("name", list(ELBO_CASES))
def test_prior_decoder_vae_elbo_matches_autograd(name):
    i = list(ELBO_CASES).index(name)
    cfg = _cfg(ELBO_CASES[name], i)
    rng = np.random.default_rng(100 + i)
    x = _data(cfg, rng)
    standard = cfg.get("prior", "standard") == "standard"
    analytic = standard and cfg.get("kl", "analytic") == "analytic"
    w = 0.7

    model = PriorDecoderVAE(**cfg)
    perturb(model, 200 + i, 0.35)
    P = leaves(model)
    tm = _prior_decoder_torch(model, cfg)
    noise = model.draw_noise(np.random.default_rng(300 + i), B)
    nt = torch.tensor(noise)
    xt = torch.tensor(x)

    log_px, log_pz, log_q, z, mu, logvar = tm.terms(P, xt, nt)
    if analytic:
        # the closed-form KL per unit, floored by free bits between the units' batch means
        kl_dim = 0.5 * (torch.exp(logvar) - 1 - logvar + mu * mu)  # (B, Z)
        means = np.sort(kl_dim.detach().numpy().mean(0))
        free_bits = float(0.5 * (means[0] + means[-1]))
        kl_term = torch.clamp(kl_dim.mean(0), min=free_bits).sum()
        # rebuilt with the floor, same parameters
        perturbed = {k: v.copy() for k, v in model.parameters().items()}
        model = PriorDecoderVAE(**cfg, free_bits=free_bits)
        model.load_parameters(perturbed)
    else:
        kl_term = (log_q - log_pz).mean()
    loss_t = -log_px.mean() + w * kl_term

    loss, cache = model.forward(x, noise, kl_weight=w)
    model.zero_grad()
    model.backward(cache)
    _check(model, loss, loss_t, P)


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(IWAE_CASES))
def test_prior_decoder_iwae_matches_autograd(name):
    i = list(IWAE_CASES).index(name)
    cfg = _cfg(IWAE_CASES[name], i)
    cfg.setdefault("k", 3)
    rng = np.random.default_rng(400 + i)
    x = _data(cfg, rng)
    estimator = cfg.get("estimator", "iwae")
    objective = cfg.get("objective", "iwae")

    model = PriorDecoderIWAE(**cfg)
    perturb(model, 500 + i, 0.35)
    P = leaves(model)
    tm = _prior_decoder_torch(model, cfg)
    noise = model.draw_noise(np.random.default_rng(600 + i), B)
    nt = torch.tensor(noise)
    xt = torch.tensor(x)

    settings = (objective, cfg.get("groups", 1), cfg.get("ciwae_beta", 0.5))

    def bound(log_w):
        return bounds(log_w, *settings)[0].mean()

    if estimator == "iwae":
        log_px, log_pz, log_q, *_ = tm.terms(P, xt, nt)
        loss_t = -bound(log_px + log_pz - log_q)
    elif estimator == "stl":
        # log q at stop-gradient moments: q's parameters reach the loss through z only
        log_px, log_pz, log_q, *_ = tm.terms(P, xt, nt, q_moments_fixed=True)
        loss_t = -bound(log_px + log_pz - log_q)
    else:
        e, extra = tm.split(nt)
        mu, logvar = tm.encode(P, xt)
        z = mu + torch.exp(0.5 * logvar) * e
        zd = z.detach()
        mud, lvd = mu.detach(), logvar.detach()
        # the bound at a fixed sample: the generative gradient (and the VampPrior's path)
        log_w = tm.log_lik(P, xt, zd, extra) + tm.log_prior(P, zd) - log_normal(zd, mud, lvd)
        # the encoder through z, weighted by the squared normalized weights
        Pd = detached(P)
        log_w_path = tm.log_lik(Pd, xt, z, extra) + tm.log_prior(Pd, z) - log_normal(z, mud, lvd)
        path = (dreg_weights(log_w, *settings) * log_w_path).sum(0).mean()
        loss_t = -bound(log_w) - (path - path.detach())

    loss, cache = model.forward(x, noise)
    model.zero_grad()
    model.backward(cache)
    _check(model, loss, loss_t, P)


# ------------------------------------------------------------------------------------ CVAE
CVAE_CASES = {
    "bernoulli-analytic": dict(likelihood="bernoulli", kl="analytic", n_samples=2),
    "bernoulli-analytic-free-bits": dict(
        likelihood="bernoulli", kl="analytic", n_samples=1, free_bits="mid"
    ),
    "gaussian-learned-sampled": dict(
        likelihood="gaussian", decoder_variance="learned", kl="sampled", n_samples=3
    ),
    "gaussian-fixed-sampled-free-bits": dict(
        likelihood="gaussian", decoder_variance=0.4, kl="sampled", n_samples=2, free_bits="mid"
    ),
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(CVAE_CASES))
def test_cvae_matches_autograd(name):
    i = list(CVAE_CASES).index(name)
    case = dict(CVAE_CASES[name])
    fb = case.pop("free_bits", None)
    D, C, Z, act = 9, 3, 3, ACTIVATIONS[i % len(ACTIVATIONS)]
    rng = np.random.default_rng(700 + i)
    gaussian = case["likelihood"] == "gaussian"
    x = rng.standard_normal((B, D)) if gaussian else _binary(rng, D)
    labels = np.array([2, 0, 1, 2], dtype=np.int64)
    w = 0.6

    def build(free_bits=0.0):
        return CVAE(
            D,
            n_classes=C,
            latent_dim=Z,
            hidden=(6,),
            activation=act,
            free_bits=free_bits,
            dtype=np.float64,
            **case,
        )

    model = build()
    perturb(model, 800 + i, 0.35)
    P = leaves(model)
    noise = model.draw_noise(np.random.default_rng(900 + i), B)  # (L, B, Z)
    L = noise.shape[0]
    eps = torch.tensor(noise)
    xt = torch.tensor(x)
    c = torch.nn.functional.one_hot(torch.tensor(labels), C).to(torch.float64)  # (B, C)

    h = mlp(P, "encoder", torch.cat([xt, c], 1), act)
    mu, logvar = h[:, :Z], h[:, Z:]
    z = mu + torch.exp(0.5 * logvar) * eps  # (L, B, Z)
    out = mlp(P, "decoder", torch.cat([z, c.expand(L, B, C)], -1), act)
    if gaussian:
        log_px = log_normal(xt, out, decoder_logvar(P, case["decoder_variance"], D))
    else:
        log_px = bernoulli_loglik(out, xt)
    if case["kl"] == "analytic":
        kl_dim = 0.5 * (torch.exp(logvar) - 1 - logvar + mu * mu)  # (B, Z)
    else:
        log_q_j = -0.5 * ((z - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)
        log_p_j = -0.5 * (z * z + LOG_2PI)
        kl_dim = (log_q_j - log_p_j).mean(0)  # (B, Z)
    mean_kl = kl_dim.mean(0)  # (Z,)
    if fb is not None:
        m = np.sort(mean_kl.detach().numpy())
        fb = float(0.5 * (m[0] + m[-1]))
        perturbed = {k: v.copy() for k, v in model.parameters().items()}
        model = build(fb)
        model.load_parameters(perturbed)
        kl_term = torch.clamp(mean_kl, min=fb).sum()
    else:
        kl_term = mean_kl.sum()
    loss_t = -log_px.mean() + w * kl_term

    loss, cache = model.forward(x, noise, kl_weight=w, labels=labels)
    model.zero_grad()
    model.backward(cache)
    _check(model, loss, loss_t, P)


# ------------------------------------------------------------------------------------ MVAE
MVAE_CASES = {
    "uneven-split-L2": dict(
        data_dim=10, split=4, latent_dim=2, n_samples=2, activation="tanh", w=0.8
    ),
    "halves-L1": dict(
        data_dim=8, split=None, latent_dim=3, n_samples=1, activation="softplus", w=1.0
    ),
    "latent3-L3": dict(data_dim=12, split=7, latent_dim=3, n_samples=3, activation="relu", w=0.5),
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(MVAE_CASES))
def test_mvae_matches_autograd(name):
    i = list(MVAE_CASES).index(name)
    case = dict(MVAE_CASES[name])
    w = case.pop("w")
    D, Z, act = case["data_dim"], case["latent_dim"], case["activation"]
    split = D // 2 if case["split"] is None else case["split"]
    rng = np.random.default_rng(1000 + i)
    x = _binary(rng, D)

    model = MVAE(hidden=(6,), dtype=np.float64, **case)
    perturb(model, 1100 + i, 0.35)
    P = leaves(model)
    noise = model.draw_noise(np.random.default_rng(1200 + i), B)  # (L, B, T, Z)
    eps = torch.tensor(noise)
    xt = torch.tensor(x)
    parts = (xt[:, :split], xt[:, split:])

    loss_t = mvae_twin_loss(P, parts, eps, Z, act, w)

    loss, cache = model.forward(x, noise, kl_weight=w)
    model.zero_grad()
    model.backward(cache)
    _check(model, loss, loss_t, P)
