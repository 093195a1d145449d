"""Whole-model oracles against PyTorch autograd: CatVAE, VQVAE and AAE in float64.

Each test builds a small model, moves every trainable array away from its initialisation with
seeded noise (the running-state arrays are set to chosen values instead), and evaluates the
model's loss and hand-written gradients. The same loss, or the documented surrogate whose
gradient the model's backward accumulates, is then written out in torch from the documented
math, on float64 leaf tensors holding the same parameter values, and differentiated by
autograd. No lvmcore function takes part in the torch computation.

Noise replay. The noise is an explicit array: ``model.draw_noise(default_rng(seed), B)`` (the
Gumbels g (K, B, N, C) of the CatVAE, the Gaussian eps (L, B, Z) of the AAE; the VQ-VAE draws
none) is passed both to ``model.forward`` and, as a tensor, to the torch computation. For a
training step (``loss_and_grads(x, default_rng(seed))``) the noise is replayed by drawing it
from a second generator in the same state, in the order the step consumes it: the step's noise
first, then (AAE) the target draws of the discriminator step. The CatVAE step runs the fused
Gumbel kernels, whose Gumbels agree with ``draw_noise`` to a few ulp.

What is compared: the loss (rtol 1e-10) and every array of ``model.gradients()`` (rtol 1e-8,
atol 1e-10), including the zero gradients of the state arrays; for the training steps also the
state the step updates (CatVAE baselines, VQ-VAE EMA codebook, the AAE discriminator's Adam
step).

- CatVAE: ``gumbel`` (pathwise gradient of the relaxed objective softmax((l + g)/tau)),
  ``st-gumbel`` (one-hot forward, soft gradient: ``y_hard + y_soft - sg[y_soft]``),
  ``reinforce`` and ``nvil`` (score-function surrogates with the stop-gradient learning signal
  log p(x|z) - c (- b(x)), the analytic KL to the uniform prior, NVIL's 1/max(1, sqrt v)
  scaling of the encoder gradient and the regression of b(x)), ``vimco`` (the K-sample bound
  plus the leave-one-out score term of Mnih & Rezende 2016, eq. 9-10).
- VQVAE: nearest code, Bernoulli reconstruction, codebook and commitment losses with their
  stop-gradients, straight-through ``z_q = sg[e_k] + z_e - sg[z_e]``; EMA mode has no codebook
  gradient and moves the codebook by the documented EMA rule in the step.
- AAE: reconstruction (Bernoulli, Gaussian with learned or fixed variance) plus the weighted
  generator loss through a discriminator whose weights are constants for this loss; the
  discriminator's own loss and its gradient; the step's Adam update of the discriminator.
"""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from oracle_torch import (
    GRAD_ATOL,
    GRAD_RTOL,
    LOSS_RTOL,
    autograd_grads,
    bernoulli_loglik,
    check_grads,
    decoder_logvar,
    leaves,
    log_normal,
    mlp,
    one_torch_thread,  # noqa: F401  (autouse)
    perturb,
    softplus,
)

from lvmcore.models import AAE, VQVAE, CatVAE

torch = pytest.importorskip("torch")

D_DATA = 10


def _binary_x(rng, B, D=D_DATA):
    x = (rng.random((B, D)) < 0.5).astype(np.float64)
    x[0, 0], x[-1, -1] = 1.0, 0.0
    return x


# ---------------------------------------------------------------------------------------------
# CatVAE


def _catvae(estimator, seed, activation="tanh", hidden=(6,), N=3, C=4, **kw):
    m = CatVAE(
        D_DATA,
        n_latents=N,
        n_categories=C,
        hidden=hidden,
        activation=activation,
        estimator=estimator,
        baseline_hidden=5,
        seed=seed,
        dtype=np.float64,
        **kw,
    )
    perturb(m, np.random.default_rng(seed + 100), 0.4, skip=("state.",))
    return m


def _catvae_torch(model, P, x, g, tau, w):
    """(loss, surrogate, parts) of the CatVAE for noise g (K, B, N, C), from the docstrings."""
    N, C = model.n_latents, model.n_categories
    K, B = g.shape[:2]
    D = x.shape[1]
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    logits = mlp(P, "encoder", xt, model.activation).reshape(B, N, C)
    logp = torch.log_softmax(logits, -1)  # (B, N, C) log q(z_n = c | x)
    # KL(q || uniform) = sum_n sum_c q (log q + log C)
    kl = (logp.exp() * (logp + math.log(C))).sum((-2, -1))  # (B,)
    scores = logits + gt  # (K, B, N, C)
    hard = torch.nn.functional.one_hot(scores.detach().argmax(-1), C).to(torch.float64)
    est = model.estimator
    if est == "gumbel":
        y = torch.softmax(scores / tau, -1)
    elif est == "st-gumbel":
        soft = torch.softmax(scores / tau, -1)
        y = hard + (soft - soft.detach())  # forward: one-hot; backward: the soft sample's
    else:
        y = hard
    out = mlp(P, "decoder", y.reshape(K * B, N * C), model.activation)
    xs = xt.expand(K, B, D).reshape(K * B, D)
    log_px = bernoulli_loglik(out, xs).reshape(K, B)  # (K, B)
    log_q = (hard * logp[None]).sum((-2, -1))  # (K, B) log q(z_kb | x_b)
    parts = dict(log_px=log_px, kl=kl, hard=hard)
    if est == "vimco":
        log_w = log_px - N * math.log(C) - log_q  # (K, B)
        lse = torch.logsumexp(log_w, 0)
        loss = -(lse - math.log(K)).mean()
        # leave-one-out signals L - L_{-k}, with w_k replaced by the geometric mean of the others
        lw = log_w.detach()
        loo_mean = (lw.sum(0) - lw) / (K - 1)
        rows = []
        for k in range(K):
            mk = lw.clone()
            mk[k] = loo_mean[k]
            rows.append(lse.detach() - torch.logsumexp(mk, 0))
        signal = torch.stack(rows)  # (K, B)
        # the bound's own path through log q plus the score term of the VIMCO estimator
        surrogate = loss - (signal * log_q).sum() / B
        return loss, surrogate, parts
    loss = -log_px.mean() + w * kl.mean()
    if est in ("gumbel", "st-gumbel"):
        return loss, loss, parts
    c = float(model.state.params["signal_mean"][0])
    if est == "nvil":
        b = mlp(P, "baseline", xt, "tanh")[:, 0]  # (B,)
        scale = 1.0
        if model.normalize_signal:
            scale = 1.0 / max(1.0, math.sqrt(float(model.state.params["signal_var"][0])))
        if scale != 1.0:
            logits.register_hook(lambda grad: grad * scale)  # the encoder part only
    else:
        b = torch.zeros(B, dtype=torch.float64)
    resid = log_px - c - b  # (K, B)
    parts["resid"] = resid.detach()
    # the exact decoder gradient, the score term with a stop-gradient learning signal, the
    # analytic KL gradient; NVIL regresses b(x) on the (constant) signal l - c
    surrogate = -log_px.mean() + w * kl.mean() - (resid.detach() * log_q).sum() / (K * B)
    if est == "nvil":
        surrogate = surrogate + ((log_px.detach() - c - b) ** 2).mean(0).sum() / (2 * B)
    return loss, surrogate, parts


CATVAE_CASES = [
    # id, estimator, constructor kwargs, forward kwargs, state (signal_mean, signal_var, step)
    ("gumbel-tau0.7-w0.6", "gumbel", dict(), dict(tau=0.7, kl_weight=0.6), None),
    (
        "gumbel-softplus-deep",
        "gumbel",
        dict(activation="softplus", hidden=(6, 5), N=2, C=3),
        dict(tau=2.0, kl_weight=None),
        None,
    ),
    (
        "gumbel-schedule-tau",
        "gumbel",
        dict(tau=2.0, tau_min=0.4, tau_decay=0.15, tau_every=2),
        dict(kl_weight=1.0),
        (0.0, 0.0, 5.0),
    ),
    ("st-gumbel-relu", "st-gumbel", dict(activation="relu"), dict(tau=0.5, kl_weight=1.0), None),
    ("st-gumbel-tanh-C3", "st-gumbel", dict(N=4, C=3), dict(tau=1.3, kl_weight=0.3), None),
    ("reinforce", "reinforce", dict(), dict(kl_weight=0.8), (-4.5, 2.0, 0.0)),
    ("reinforce-zero-baseline", "reinforce", dict(activation="softplus"), dict(), None),
    ("nvil-normalized", "nvil", dict(), dict(kl_weight=1.0), (-3.0, 6.25, 0.0)),
    ("nvil-small-var", "nvil", dict(activation="relu"), dict(kl_weight=0.5), (-6.0, 0.3, 0.0)),
    (
        "nvil-unnormalized",
        "nvil",
        dict(normalize_signal=False, N=2, C=4),
        dict(),
        (-2.0, 9.0, 0.0),
    ),
    ("vimco-k3", "vimco", dict(k=3), dict(), None),
    ("vimco-k2-relu", "vimco", dict(k=2, activation="relu", N=2, C=3), dict(kl_weight=1.0), None),
]


def _set_catvae_state(model, state):
    if state is not None:
        st = model.state.params
        st["signal_mean"][0], st["signal_var"][0], st["step"][0] = state


def _schedule_tau(model):
    """tau of the documented schedule at the model's step: max(tau_min, tau e^{-r t'})."""
    if model.tau_decay == 0:
        return model.tau
    step = int(model.state.params["step"][0])
    t = model.tau_every * (step // model.tau_every)
    return max(model.tau_min, model.tau * math.exp(-model.tau_decay * t))


@pytest.mark.oracle
@pytest.mark.parametrize(
    "estimator, kw, fkw, state", [c[1:] for c in CATVAE_CASES], ids=[c[0] for c in CATVAE_CASES]
)
def test_catvae_forward_backward_matches_torch(estimator, kw, fkw, state):
    seed = 11 + len(kw) + 7 * len(fkw)
    model = _catvae(estimator, seed, **kw)
    _set_catvae_state(model, state)
    B = 4 if estimator != "vimco" else 3
    x = _binary_x(np.random.default_rng(seed + 1), B)
    g = model.draw_noise(np.random.default_rng(seed + 2), B)
    assert g.shape == (model.k, B, model.n_latents, model.n_categories)
    assert g.dtype == np.float64

    loss, cache = model.forward(x, g, **fkw)
    model.zero_grad()
    model.backward(cache)

    tau = fkw.get("tau") or _schedule_tau(model)
    w = 1.0 if fkw.get("kl_weight") is None else fkw["kl_weight"]
    P = leaves(model)
    loss_t, surrogate, _ = _catvae_torch(model, P, x, g, tau, w)
    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    check_grads(model.gradients(), autograd_grads(surrogate, P, zero=("state.",)))


@pytest.mark.oracle
@pytest.mark.parametrize(
    "estimator, kw, w, state",
    [
        ("gumbel", dict(tau=1.5, tau_min=0.5, tau_decay=0.2, tau_every=1), 0.7, (0.0, 0.0, 3.0)),
        ("st-gumbel", dict(tau=0.8), None, None),
        ("reinforce", dict(baseline_decay=0.8), 0.9, (-5.0, 3.0, 2.0)),
        ("nvil", dict(baseline_decay=0.6), None, (-4.0, 4.0, 1.0)),
        ("vimco", dict(k=3), None, None),
    ],
    ids=["gumbel", "st-gumbel", "reinforce", "nvil", "vimco"],
)
def test_catvae_training_step_matches_torch(estimator, kw, w, state):
    """loss_and_grads (the fused Gumbel kernels) against torch on the replayed noise, and the
    running state it updates afterwards: step + 1, and the moving averages
    c <- a c + (1 - a) mean(l - b(x)), v <- a v + (1 - a) var(l - b(x))."""
    seed = {"gumbel": 3, "st-gumbel": 4, "reinforce": 5, "nvil": 6, "vimco": 7}[estimator]
    model = _catvae(estimator, seed, **kw)
    _set_catvae_state(model, state)
    B = 4
    x = _binary_x(np.random.default_rng(seed + 1), B)
    g = model.draw_noise(np.random.default_rng(seed + 2), B)  # the step's noise, replayed
    tau = _schedule_tau(model)
    c0 = float(model.state.params["signal_mean"][0])
    v0 = float(model.state.params["signal_var"][0])
    step0 = float(model.state.params["step"][0])
    P = leaves(model)  # the parameters before the step
    loss_t, surrogate, parts = _catvae_torch(model, P, x, g, tau, 1.0 if w is None else w)

    loss, stats = model.loss_and_grads(x, np.random.default_rng(seed + 2), kl_weight=w)

    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    assert_allclose(stats["tau"], tau, rtol=1e-15)
    check_grads(model.gradients(), autograd_grads(surrogate, P, zero=("state.",)))
    st = model.state.params
    assert st["step"][0] == step0 + 1
    if estimator in ("reinforce", "nvil"):
        a = model.baseline_decay
        signal = (parts["resid"] + c0).numpy()  # l - b(x), (K, B)
        assert_allclose(st["signal_mean"][0], a * c0 + (1 - a) * signal.mean(), rtol=1e-10)
        assert_allclose(st["signal_var"][0], a * v0 + (1 - a) * signal.var(), rtol=1e-10)
    else:
        assert st["signal_mean"][0] == c0 and st["signal_var"][0] == v0


# ---------------------------------------------------------------------------------------------
# VQ-VAE


def _vqvae(seed, codebook_update, beta, activation, hidden=(6,), M=5, S=2, E=3):
    m = VQVAE(
        D_DATA,
        codes=M,
        slots=S,
        code_dim=E,
        hidden=hidden,
        activation=activation,
        beta=beta,
        codebook_update=codebook_update,
        ema_decay=0.8,
        ema_eps=1e-3,
        seed=seed,
        dtype=np.float64,
    )
    rng = np.random.default_rng(seed + 100)
    perturb(m, rng, 0.5, skip=("code_age", "ema_"))
    if codebook_update == "ema":
        p = m.params
        p["ema_cluster_size"][...] = rng.uniform(0.5, 3.0, M)
        p["ema_code_sum"][...] = p["ema_cluster_size"][:, None] * p["codebook"]
    return m


def _vqvae_torch(model, P, x):
    """(loss, z_e, index) of the VQ-VAE from the docstrings of vqvae.py and ops/vq.py."""
    B = x.shape[0]
    S, E = model.slots, model.code_dim
    xt = torch.from_numpy(x)
    z_e = mlp(P, "encoder", xt, model.activation).reshape(B * S, E)
    e = P["codebook"]  # (M, E)
    dist = ((z_e.detach()[:, None, :] - e.detach()[None]) ** 2).sum(-1)  # (B*S, M)
    k = dist.argmin(-1)  # nearest code, ties to the lowest index
    e_k = e[k]  # (B*S, E)
    z_q = e_k.detach() + (z_e - z_e.detach())  # value e_k, gradient copied onto z_e
    out = mlp(P, "decoder", z_q.reshape(B, S * E), model.activation)
    nll = -bernoulli_loglik(out, xt)  # (B,)
    codebook_loss = ((z_e.detach() - e_k) ** 2).sum() / B
    commitment = model.beta * ((z_e - e_k.detach()) ** 2).sum() / B
    loss = nll.mean() + commitment
    if model.codebook_update == "loss":
        loss = loss + codebook_loss
    return loss, z_e.detach(), k


VQ_CASES = [
    ("loss-beta0.25-relu", "loss", 0.25, "relu", (6,)),
    ("loss-beta1.3-tanh-deep", "loss", 1.3, "tanh", (6, 5)),
    ("loss-beta0-softplus", "loss", 0.0, "softplus", (6,)),
    ("ema-beta0.6-tanh", "ema", 0.6, "tanh", (6,)),
]


@pytest.mark.oracle
@pytest.mark.parametrize(
    "update, beta, activation, hidden", [c[1:] for c in VQ_CASES], ids=[c[0] for c in VQ_CASES]
)
def test_vqvae_forward_backward_matches_torch(update, beta, activation, hidden):
    seed = 21 + len(hidden) + int(10 * beta)
    model = _vqvae(seed, update, beta, activation, hidden)
    assert model.draw_noise(np.random.default_rng(0), 4) is None
    x = _binary_x(np.random.default_rng(seed + 1), 4)
    before = {k: v.copy() for k, v in model.parameters().items()}

    loss, cache = model.forward(x, None)
    model.zero_grad()
    model.backward(cache)

    P = leaves(model)
    loss_t, _, k = _vqvae_torch(model, P, x)
    np.testing.assert_array_equal(cache.vq.index, k.numpy())
    assert len(np.unique(k.numpy())) >= 2  # the assignment is not degenerate
    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    state = ("code_age", "ema_") + (("codebook",) if update == "ema" else ())
    check_grads(model.gradients(), autograd_grads(loss_t, P, zero=state))
    for name, v in model.parameters().items():  # forward and backward leave state alone
        np.testing.assert_array_equal(v, before[name], err_msg=name)


@pytest.mark.oracle
@pytest.mark.parametrize("update", ["loss", "ema"])
def test_vqvae_training_step_matches_torch(update):
    """loss_and_grads: the gradients at the parameters before the step; with EMA, the
    codebook then moves by N <- g N + (1-g) n, S <- g S + (1-g) s, e = S / N~ (Laplace
    smoothed), and the code ages restart for used codes."""
    model = _vqvae(31, update, 0.4, "tanh")
    x = _binary_x(np.random.default_rng(32), 4)
    P = leaves(model)
    loss_t, z_e, k = _vqvae_torch(model, P, x)
    age0 = model.params["code_age"].copy()

    loss, stats = model.loss_and_grads(x, np.random.default_rng(0))

    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    state = ("code_age", "ema_") + (("codebook",) if update == "ema" else ())
    check_grads(model.gradients(), autograd_grads(loss_t, P, zero=state))
    M = model.codes
    counts = np.bincount(k.numpy(), minlength=M)
    assert_allclose(model.params["code_age"], np.where(counts > 0, 0.0, age0 + 1))
    if update == "ema":
        gam, eps = model.ema_decay, model.ema_eps
        size0 = P["ema_cluster_size"].detach().numpy()
        sum0 = P["ema_code_sum"].detach().numpy()
        sums = np.zeros((M, model.code_dim))
        np.add.at(sums, k.numpy(), z_e.numpy())
        size = gam * size0 + (1 - gam) * counts
        total = gam * sum0 + (1 - gam) * sums
        n = size.sum()
        smoothed = (size + eps) / (n + M * eps) * n
        assert_allclose(model.params["ema_cluster_size"], size, rtol=1e-12)
        assert_allclose(model.params["ema_code_sum"], total, rtol=1e-12, atol=1e-15)
        assert_allclose(model.params["codebook"], total / smoothed[:, None], rtol=1e-12)
    else:
        np.testing.assert_array_equal(model.params["codebook"], P["codebook"].detach().numpy())


# ---------------------------------------------------------------------------------------------
# AAE


def _aae(seed, likelihood="bernoulli", decoder_variance="learned", n_samples=1, **kw):
    m = AAE(
        D_DATA,
        latent_dim=2,
        hidden=(6,),
        activation=kw.pop("activation", "tanh"),
        likelihood=likelihood,
        decoder_variance=decoder_variance,
        n_samples=n_samples,
        disc_hidden=(5,),
        seed=seed,
        dtype=np.float64,
        **kw,
    )
    rng = np.random.default_rng(seed + 100)
    perturb(m, rng, 0.4, skip=("disc_adam.",))
    for name, a in m.parameters().items():  # a mid-training Adam state of D
        if name.startswith("disc_adam.m."):
            a[...] = 0.1 * rng.standard_normal(a.shape)
        elif name.startswith("disc_adam.v."):
            a[...] = 0.05 * rng.random(a.shape) + 1e-4
    m.params["disc_adam.t"][0] = 4
    return m


def _aae_torch(model, P, x, eps, w):
    """(loss, z) of the autoencoder step: -mean log p(x|z) + w L_G(D(z)), D's weights constant."""
    L, B, Z = eps.shape
    D = x.shape[1]
    xt = torch.from_numpy(x)
    h = mlp(P, "encoder", xt, model.activation)
    mu, logvar = h[:, :Z], h[:, Z:]
    z = mu + torch.exp(logvar / 2) * torch.from_numpy(eps)  # (L, B, Z)
    out = mlp(P, "decoder", z.reshape(L * B, Z), model.activation)
    xs = xt.expand(L, B, D).reshape(L * B, D)
    if model.likelihood == "bernoulli":
        log_px = bernoulli_loglik(out, xs)
    else:
        log_px = log_normal(xs, out, decoder_logvar(P, model.decoder_variance, D))
    frozen = {k: t.detach() for k, t in P.items() if k.startswith("discriminator.")}
    d = mlp(frozen, "discriminator", z.reshape(L * B, Z), "relu")[:, 0]
    if model.saturating:
        gen = -softplus(d).mean()  # mean log(1 - sigma(d))
    else:
        gen = softplus(-d).mean()  # mean -log sigma(d)
    return -log_px.mean() + w * gen, z


def _disc_loss_torch(P, z_prior, z_post):
    """mean_P softplus(-D(z_prior)) + mean_Q softplus(D(z_post)): prior draws are class 1."""
    d_p = mlp(P, "discriminator", z_prior, "relu")[:, 0]
    d_q = mlp(P, "discriminator", z_post, "relu")[:, 0]
    return softplus(-d_p).mean() + softplus(d_q).mean(), d_p, d_q


AAE_CASES = [
    ("bernoulli-nonsat", dict(), None),
    ("bernoulli-sat-w0.5", dict(saturating=True, adv_weight=0.5), None),
    ("bernoulli-L3-relu", dict(n_samples=3, activation="relu", adv_weight=2.0), 0.7),
    ("gaussian-learned-L2", dict(likelihood="gaussian", n_samples=2), 0.3),
    ("gaussian-fixed-var", dict(likelihood="gaussian", decoder_variance=0.5), None),
]


@pytest.mark.oracle
@pytest.mark.parametrize("kw, kl_weight", [c[1:] for c in AAE_CASES], ids=[c[0] for c in AAE_CASES])
def test_aae_forward_backward_matches_torch(kw, kl_weight):
    seed = 41 + 3 * len(kw)
    model = _aae(seed, **dict(kw))
    B = 3
    x = _binary_x(np.random.default_rng(seed + 1), B)
    if model.likelihood == "gaussian":
        x = x + 0.3 * np.random.default_rng(seed + 3).standard_normal(x.shape)
    eps = model.draw_noise(np.random.default_rng(seed + 2), B)
    assert eps.shape == (model.n_samples, B, 2)

    loss, cache = model.forward(x, eps, kl_weight=kl_weight)
    model.zero_grad()
    model.backward(cache)

    w = model.adv_weight if kl_weight is None else kl_weight
    P = leaves(model)
    loss_t, _ = _aae_torch(model, P, x, eps, w)
    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    check_grads(model.gradients(), autograd_grads(loss_t, P, zero=("discriminator.", "disc_adam.")))


@pytest.mark.oracle
def test_aae_discriminator_loss_matches_torch():
    """The discriminator's loss and its gradient (the codes and the target draws are inputs)."""
    model = _aae(51)
    rng = np.random.default_rng(52)
    z_prior, z_post = rng.standard_normal((5, 2)), 1.5 * rng.standard_normal((4, 2)) + 0.3
    model.zero_grad()
    loss, cache = model.discriminator_loss(z_prior, z_post)
    model.discriminator_loss_backward(cache, dloss=1.7)

    P = leaves(model)
    loss_t, _, _ = _disc_loss_torch(P, torch.from_numpy(z_prior), torch.from_numpy(z_post))
    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    names = [k for k in P if k.startswith("discriminator.")]
    grads = torch.autograd.grad(1.7 * loss_t, [P[k] for k in names])
    for name, g in zip(names, grads):
        got = model.discriminator.grads[name.split(".", 1)[1]]
        assert_allclose(got, g.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=name)


@pytest.mark.oracle
@pytest.mark.parametrize("target", ["gaussian", "mixture"])
def test_aae_training_step_matches_torch(target):
    """loss_and_grads: the autoencoder gradients on the replayed eps, then one Adam step of D
    (betas (0.5, 0.999), eps 1e-8, the model's m, v, t) on the discriminator loss of the
    replayed target draws against the step's codes."""
    model = _aae(61, target=target, n_components=4, n_samples=2, disc_lr=0.01)
    B = 4
    x = _binary_x(np.random.default_rng(62), B)
    replay = np.random.default_rng(63)
    eps = model.draw_noise(replay, B)  # the step's noise ...
    z_prior = model.sample_target(replay, 2 * B)  # ... then the discriminator's target draws
    P = leaves(model)  # before the step
    loss_t, z = _aae_torch(model, P, x, eps, 0.8)
    z_post = z.detach().reshape(-1, 2)
    disc_t, d_p, d_q = _disc_loss_torch(P, torch.from_numpy(z_prior), z_post)
    names = [k for k in P if k.startswith("discriminator.")]
    dgrads = torch.autograd.grad(disc_t, [P[k] for k in names])

    loss, stats = model.loss_and_grads(x, np.random.default_rng(63), kl_weight=0.8)

    assert_allclose(loss, loss_t.item(), rtol=LOSS_RTOL)
    check_grads(model.gradients(), autograd_grads(loss_t, P, zero=("discriminator.", "disc_adam.")))
    assert_allclose(stats["disc_loss"], disc_t.item(), rtol=LOSS_RTOL)
    right = int((d_p > 0).sum()) + int((d_q <= 0).sum())
    assert stats["disc_accuracy"] == right / (d_p.numel() + d_q.numel())
    # Adam (Kingma & Ba 2015, Algorithm 1)
    b1, b2, lr, adam_eps = 0.5, 0.999, model.disc_lr, 1e-8
    t = float(P["disc_adam.t"].item()) + 1
    assert model.params["disc_adam.t"][0] == t
    for name, g in zip(names, dgrads):
        k = name.split(".", 1)[1]
        g = g.numpy()
        m = b1 * P[f"disc_adam.m.{k}"].detach().numpy() + (1 - b1) * g
        v = b2 * P[f"disc_adam.v.{k}"].detach().numpy() + (1 - b2) * g * g
        step = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + adam_eps)
        new = P[name].detach().numpy() - step
        assert_allclose(model.params[f"disc_adam.m.{k}"], m, rtol=1e-10, atol=1e-15)
        assert_allclose(model.params[f"disc_adam.v.{k}"], v, rtol=1e-10, atol=1e-15)
        assert_allclose(model.parameters()[name], new, rtol=1e-10, atol=1e-13, err_msg=name)
        assert_allclose(
            model.parameters()[name] - P[name].detach().numpy(), -step, rtol=1e-7, atol=1e-15
        )
