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

import math

import numpy as np
import pytest

from lvmcore.models import CVAE, MVAE, PriorDecoderIWAE, PriorDecoderVAE

B = 4
LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------- plumbing
def _perturb(model, seed, scale=0.35):
    """Move every parameter array away from its initial value by seeded noise."""
    rng = np.random.default_rng(seed)
    for p in model.parameters().values():
        p += scale * rng.standard_normal(p.shape)


def _leaves(torch, model):
    return {
        k: torch.tensor(np.array(v), dtype=torch.float64, requires_grad=True)
        for k, v in model.parameters().items()
    }


def _detached(params):
    return {k: v.detach() for k, v in params.items()}


def _check(torch, model, loss, loss_t, params):
    """The model's loss and gradients (already accumulated) against autograd of loss_t."""
    names = list(params)
    grads = torch.autograd.grad(loss_t, [params[k] for k in names], allow_unused=True)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-10, atol=0)
    got = model.gradients()
    assert set(got) == set(names)
    for k, g in zip(names, grads):
        want = np.zeros(params[k].shape) if g is None else g.numpy()
        # every parameter array reaches the loss: no comparison of two zero arrays
        assert np.abs(want).max() > 0, k
        np.testing.assert_allclose(got[k], want, rtol=1e-8, atol=1e-10, err_msg=k)


def _binary(rng, D):
    return (rng.random((B, D)) < 0.5).astype(np.float64)


def _levels(rng, D, L):
    x = rng.integers(0, L, (B, D))
    x[0, :] = L - 1  # the top level and the bottom one both occur
    x[1, 0] = 0
    return x.astype(np.float64)


# ------------------------------------------------------------------------------ torch pieces
def _act(torch, name):
    return {
        "tanh": torch.tanh,
        "relu": torch.relu,
        "softplus": torch.nn.functional.softplus,
    }[name]


def _n_layers(params, prefix):
    return sum(1 for k in params if k.startswith(prefix + "W") and k[len(prefix) + 1 :].isdigit())


def _mlp(torch, params, prefix, h, act, masks=None):
    """Affine layers ``<prefix>W<i>, b<i>`` with the activation between them (none after the
    last); ``masks`` multiply the weights (a MADE's)."""
    n = _n_layers(params, prefix)
    f = _act(torch, act)
    for i in range(n):
        W = params[f"{prefix}W{i}"]
        if masks is not None:
            W = W * masks[f"W{i}"]
        h = h @ W + params[f"{prefix}b{i}"]
        if i < n - 1:
            h = f(h)
    return h


def _gaussian_head(torch, params, prefix, h, act):
    out = _mlp(torch, params, prefix, h, act)
    Z = out.shape[-1] // 2
    return out[..., :Z], out[..., Z:]


def _log_normal(torch, v, mu, logvar):
    """log N(v; mu, diag exp(logvar)), summed over the last axis."""
    return -0.5 * ((v - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def _bernoulli(torch, logits, x):
    return (x * logits - torch.nn.functional.softplus(logits)).sum(-1)


def _gaussian(torch, mean, logvar, y):
    return -0.5 * (LOG_2PI + logvar + (y - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def _logistic(torch, mean, log_scale, y):
    t = (y - mean) * torch.exp(-log_scale)
    return -(t + log_scale + 2 * torch.nn.functional.softplus(-t)).sum(-1)


def _check_dependencies(masks, allowed, heads):
    """The 0/1 masks W0 ... W<L> connect input j to output (p, i) through some path exactly
    where ``allowed[j, i]`` (the autoregressive order, and the band of a limited context)."""
    n = sum(1 for k in masks if k[1:].isdigit())
    paths = masks["W0"]
    for i in range(1, n):
        paths = paths @ masks[f"W{i}"]
    np.testing.assert_array_equal(paths > 0, np.tile(allowed, (1, heads)))


def _masks(torch, module):
    return {k: torch.tensor(np.array(v), dtype=torch.float64) for k, v in module.masks.items()}


# ------------------------------------------------------ the prior/decoder models, in torch
class _PriorDecoderTorch:
    """log p(x|z), log p(z), log q(z|x) of PriorDecoderVAE / PriorDecoderIWAE from the module
    docstring of lvmcore.models.priordecoder, in torch, for a configuration ``cfg`` (the
    constructor's arguments)."""

    def __init__(self, torch, model, cfg):
        self.torch, self.cfg = torch, cfg
        self.D, self.Z = cfg["data_dim"], cfg["latent_dim"]
        self.act = cfg["activation"]
        self.L = cfg.get("levels")
        self.decoder = cfg.get("decoder", "factorized")
        self.deq = cfg.get("dequantize", "none")
        self.prior = cfg.get("prior", "standard")
        self.extra = (
            self.decoder == "made" and (cfg.get("ar_dropout") or 0) > 0
        ) or self.deq != "none"
        # structure only: the MADE masks of the decoder and of each flow-prior step, each
        # checked to give exactly the documented dependencies
        if self.decoder == "made":
            self.dec_masks = _masks(torch, model.decoder)
            N = cfg.get("ar_context") or self.D
            i, j = np.arange(self.D)[None, :], np.arange(self.D)[:, None]
            _check_dependencies(model.decoder.masks, (j < i) & (j >= i - N), 1)
        if self.prior == "flow":
            self.flow_masks = [_masks(torch, s) for s in model.prior_block.steps]
            for t, step in enumerate(model.prior_block.steps):
                deg = np.arange(self.Z) if t % 2 == 0 else np.arange(self.Z)[::-1]
                _check_dependencies(step.masks, deg[:, None] < deg[None, :], 2)

    def encoder_input(self, x):
        return x / (self.L - 1) if self.L is not None else x

    def split(self, noise):
        if self.extra:
            return noise[..., : self.Z], noise[..., self.Z :]
        return noise, None

    def encode(self, P, x):
        return _gaussian_head(self.torch, P, "encoder.", self.encoder_input(x), self.act)

    def log_prior(self, P, z):
        torch, Z = self.torch, self.Z
        if self.prior == "standard":
            return -0.5 * (z * z).sum(-1) - 0.5 * Z * LOG_2PI
        if self.prior == "mog":
            log_w = torch.log_softmax(P["prior.logits"], 0)  # (C,)
            comp = _log_normal(torch, z[..., None, :], P["prior.mu"], P["prior.logvar"])
            return torch.logsumexp(log_w + comp, -1)
        if self.prior == "vamp":
            # the encoder at the pseudo-inputs, as they are (no rescaling)
            mu_c, lv_c = _gaussian_head(torch, P, "encoder.", P["prior.u"], self.act)
            C = mu_c.shape[0]
            comp = _log_normal(torch, z[..., None, :], mu_c, lv_c)
            return torch.logsumexp(comp - math.log(C), -1)
        # flow: MAF steps in order, u = (z - m) exp(-a), logdet = -sum a
        log_p = 0.0
        for t, masks in enumerate(self.flow_masks):
            y = _mlp(torch, P, f"prior.step{t}.", z, self.act, masks)
            y = y.reshape(*z.shape[:-1], 2, Z)
            m, a = y[..., 0, :], y[..., 1, :]
            z = (z - m) * torch.exp(-a)
            log_p = log_p - a.sum(-1)
        return log_p - 0.5 * (z * z).sum(-1) - 0.5 * Z * LOG_2PI

    def log_lik(self, P, x, z, extra, train=True):
        """log p(x|z) (S, B); the dequantized forms include -D log L - log q(u|x)."""
        torch, D = self.torch, self.D
        if self.decoder == "made":
            x_in = (2 * x - 1).expand(*z.shape[:-1], D)
            if train and self.extra:
                x_in = x_in * (extra >= self.cfg["ar_dropout"]).to(x.dtype)
            M = self.dec_masks
            h = x_in @ (P["decoder.W0"] * M["W0"]) + P["decoder.b0"] + z @ P["decoder.Wc"]
            n = _n_layers(P, "decoder.")
            f = _act(torch, self.act)
            for i in range(1, n):
                h = f(h) @ (P[f"decoder.W{i}"] * M[f"W{i}"]) + P[f"decoder.b{i}"]
            return _bernoulli(torch, h, x)
        out = _mlp(torch, P, "decoder.", z, self.act)
        if self.decoder == "categorical":
            logits = out.reshape(*z.shape[:-1], D, self.L)
            logp = torch.log_softmax(logits, -1)
            idx = x.long().expand(*z.shape[:-1], D)[..., None]
            return torch.gather(logp, -1, idx)[..., 0].sum(-1)
        lik = self.cfg.get("likelihood") or "bernoulli"
        if lik == "bernoulli":
            return _bernoulli(torch, out, x)
        log_q_u = 0.0
        if self.deq == "uniform":
            y = (x + extra) / self.L
        elif self.deq == "variational":
            mu_u, lv_u = _gaussian_head(torch, P, "dequantizer.", x / (self.L - 1), self.act)
            s = mu_u + torch.exp(0.5 * lv_u) * extra
            u = torch.sigmoid(s)
            logsig = torch.nn.functional.logsigmoid
            log_q_u = _log_normal(torch, s, mu_u, lv_u) - (logsig(s) + logsig(-s)).sum(-1)
            y = (x + u) / self.L
        else:
            y = x
        if lik == "gaussian":
            log_py = _gaussian(torch, out, P["decoder.logvar"], y)
        else:
            log_py = _logistic(torch, out, P["decoder.log_scale"], y)
        log_det = -D * math.log(self.L) if self.deq != "none" else 0.0
        return log_py + log_det - log_q_u

    def terms(self, P, x, noise, q_moments_fixed=False):
        """(log p(x|z), log p(z), log q(z|x), z, mu, logvar), each term (S, B)."""
        e, extra = self.split(noise)
        mu, logvar = self.encode(P, x)
        z = mu + self.torch.exp(0.5 * logvar) * e
        lq_mu, lq_lv = (mu.detach(), logvar.detach()) if q_moments_fixed else (mu, logvar)
        log_q = _log_normal(self.torch, z, lq_mu, lq_lv)
        return self.log_lik(P, x, z, extra), self.log_prior(P, z), log_q, z, mu, logvar


def _bound(torch, log_w, objective, groups=1, beta=0.5):
    """The per-row bound (B,) of losses/iwae.py's objectives from log w (S, B)."""
    S = log_w.shape[0]
    if objective == "iwae":
        return torch.logsumexp(log_w, 0) - math.log(S)
    if objective == "miwae":
        K = S // groups
        g = log_w.reshape(groups, K, -1)
        return (torch.logsumexp(g, 1) - math.log(K)).mean(0)
    assert objective == "ciwae"
    return beta * log_w.mean(0) + (1 - beta) * (torch.logsumexp(log_w, 0) - math.log(S))


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
    torch = pytest.importorskip("torch")
    i = list(ELBO_CASES).index(name)
    cfg = _cfg(ELBO_CASES[name], i)
    rng = np.random.default_rng(100 + i)
    x = _data(cfg, rng)
    standard = cfg.get("prior", "standard") == "standard"
    analytic = standard and cfg.get("kl", "analytic") == "analytic"
    w = 0.7

    model = PriorDecoderVAE(**cfg)
    _perturb(model, 200 + i)
    P = _leaves(torch, model)
    tm = _PriorDecoderTorch(torch, model, cfg)
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
    _check(torch, model, loss, loss_t, P)


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(IWAE_CASES))
def test_prior_decoder_iwae_matches_autograd(name):
    torch = pytest.importorskip("torch")
    i = list(IWAE_CASES).index(name)
    cfg = _cfg(IWAE_CASES[name], i)
    cfg.setdefault("k", 3)
    rng = np.random.default_rng(400 + i)
    x = _data(cfg, rng)
    estimator = cfg.get("estimator", "iwae")
    objective = cfg.get("objective", "iwae")

    model = PriorDecoderIWAE(**cfg)
    _perturb(model, 500 + i)
    P = _leaves(torch, model)
    tm = _PriorDecoderTorch(torch, model, cfg)
    noise = model.draw_noise(np.random.default_rng(600 + i), B)
    nt = torch.tensor(noise)
    xt = torch.tensor(x)

    def bound(log_w):
        return _bound(
            torch, log_w, objective, cfg.get("groups", 1), cfg.get("ciwae_beta", 0.5)
        ).mean()

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
        log_w = (
            tm.log_lik(P, xt, zd, extra) + tm.log_prior(P, zd) - _log_normal(torch, zd, mud, lvd)
        )
        # the encoder through z, weighted by the squared normalized weights
        Pd = _detached(P)
        log_w_path = (
            tm.log_lik(Pd, xt, z, extra) + tm.log_prior(Pd, z) - _log_normal(torch, z, mud, lvd)
        )
        wt = torch.softmax(log_w.detach(), 0)
        path = (wt * wt * log_w_path).sum(0).mean()
        loss_t = -bound(log_w) - (path - path.detach())

    loss, cache = model.forward(x, noise)
    model.zero_grad()
    model.backward(cache)
    _check(torch, model, loss, loss_t, P)


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
    torch = pytest.importorskip("torch")
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
    _perturb(model, 800 + i)
    P = _leaves(torch, model)
    noise = model.draw_noise(np.random.default_rng(900 + i), B)  # (L, B, Z)
    L = noise.shape[0]
    eps = torch.tensor(noise)
    xt = torch.tensor(x)
    c = torch.nn.functional.one_hot(torch.tensor(labels), C).to(torch.float64)  # (B, C)

    h = _mlp(torch, P, "encoder.", torch.cat([xt, c], 1), act)
    mu, logvar = h[:, :Z], h[:, Z:]
    z = mu + torch.exp(0.5 * logvar) * eps  # (L, B, Z)
    out = _mlp(torch, P, "decoder.", torch.cat([z, c.expand(L, B, C)], -1), act)
    if gaussian:
        v = case["decoder_variance"]
        lv = (
            P["decoder.logvar"]
            if v == "learned"
            else torch.full((D,), math.log(v), dtype=torch.float64)
        )
        log_px = _gaussian(torch, out, lv, xt)
    else:
        log_px = _bernoulli(torch, out, xt)
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
    _check(torch, model, loss, loss_t, P)


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
    torch = pytest.importorskip("torch")
    i = list(MVAE_CASES).index(name)
    case = dict(MVAE_CASES[name])
    w = case.pop("w")
    D, Z, act = case["data_dim"], case["latent_dim"], case["activation"]
    split = D // 2 if case["split"] is None else case["split"]
    rng = np.random.default_rng(1000 + i)
    x = _binary(rng, D)

    model = MVAE(hidden=(6,), dtype=np.float64, **case)
    _perturb(model, 1100 + i)
    P = _leaves(torch, model)
    noise = model.draw_noise(np.random.default_rng(1200 + i), B)  # (L, B, T, Z)
    eps = torch.tensor(noise)
    xt = torch.tensor(x)
    parts = (xt[:, :split], xt[:, split:])

    experts = []
    for name_m, part in zip(("top", "bottom"), parts):
        h = _mlp(torch, P, f"{name_m}_encoder.", part, act)
        experts.append((h[:, :Z], h[:, Z:]))
    # product of the prior expert N(0, I) and the present experts: precisions add, the mean
    # is the precision-weighted mean
    recon, kl = [], []
    for t, present in enumerate(((0, 1), (0,), (1,))):
        prec = 1.0 + sum(torch.exp(-experts[m][1]) for m in present)
        mu = sum(experts[m][0] * torch.exp(-experts[m][1]) for m in present) / prec
        logvar = -torch.log(prec)
        z = mu + torch.exp(0.5 * logvar) * eps[:, :, t]  # (L, B, Z)
        r = 0.0
        for m in present:
            name_m = ("top", "bottom")[m]
            logits = _mlp(torch, P, f"{name_m}_decoder.", z, act)
            r = r + _bernoulli(torch, logits, parts[m]).mean(0)  # (B,)
        recon.append(r)
        kl.append((0.5 * (torch.exp(logvar) - 1 - logvar + mu * mu)).sum(-1))
    loss_t = -torch.stack(recon).sum(0).mean() + w * torch.stack(kl).sum(0).mean()

    loss, cache = model.forward(x, noise, kl_weight=w)
    model.zero_grad()
    model.backward(cache)
    _check(torch, model, loss, loss_t, P)
