"""Extreme regimes of the learned-prior, conditional, multimodal, discrete and adversarial models,
against PyTorch autograd in float64.

Probed: :class:`lvmcore.models.PriorDecoderVAE` / :class:`~lvmcore.models.PriorDecoderIWAE`
with mixture priors whose components lie far apart and whose weights are near zero (logits
+-50), VampPrior pseudo-inputs far from the data, saturated flow priors, MADE decoders with
logits beyond 100, categorical decoders with level logits near 1e3, variational dequantizers
with tiny and huge scales, Gaussian and logistic likelihoods with tiny learned scales, KL
weights and free bits at their edges; :class:`~lvmcore.models.CVAE` and
:class:`~lvmcore.models.MVAE` with near-deterministic (log-variance -30) and very wide (+20)
experts and a product of experts with one dominant expert; :class:`~lvmcore.models.CatVAE` at
temperatures 1e-3 and 1e-6 (the Gumbel-Softmax must reach its argmax limit) and with huge logits
and extreme learning signals for every estimator; :class:`~lvmcore.models.VQVAE` with codes far
from the encodings, exactly tied (duplicate) codes and unused codes under the EMA update;
:class:`~lvmcore.models.AAE` with a saturated discriminator.

How: each model is built small, every parameter array is moved by seeded noise and then pushed
into the regime (named entries set or scaled). The torch side is the documented math written
out on float64 leaf tensors holding the model's parameter values (no lvmcore function in it),
differentiated by autograd.

- float64, the readable path ``model.forward(x, noise)`` then ``model.backward``: loss to rtol
  1e-10, every gradient array to rtol 1e-8 with an absolute floor of 1e-9 times the array's
  largest entry (entries many orders below the largest are differences of large terms, exact
  only to the rounding of those terms).
- float32, the training step ``model.loss_and_grads`` (the fused kernels where the model has
  them: the CatVAE's Gumbel kernels), compared with float64 torch at the float32 parameter
  values. Each gradient array must agree to 2e-3 of its largest entry: float32 carries
  6e-8 relative rounding per operation, and the networks here chain a few hundred roundings
  into each entry (sums over hidden units, samples and rows) of terms up to ~1e3 times the
  result, so errors of ~1e-4 of the largest entry are expected and 2e-3 leaves a margin while
  still catching any formula error (a wrong term changes entries by O(1) of the largest).
  The loss agrees to rtol 1e-4. (Measured: at most 5e-6 of the largest entry.)

The CatVAE's softmax and log-softmax on the torch side use a backward written with pairwise
differences (``_stable_softmax_fns``): autograd's own ``y (dy - sum y dy)`` cancels at a
saturated softmax in float64 too, so it is no reference there.

Noise replay: ``model.draw_noise(np.random.default_rng(seed), B)`` gives the array a forward
consumes, read by torch in its documented layout: (S, B, Z) standard normals, then (for
dequantized data) D columns per sample, uniforms for uniform dequantization and standard
normals for the variational dequantizer; the MVAE's (L, B, T, Z) one slice per subset; the
CatVAE's Gumbels (K, B, N, C); the AAE's eps (L, B, Z). A training step
``loss_and_grads(x, default_rng(seed))`` is replayed by drawing from a second generator in the
same state, in the order the step consumes it (the AAE's target draws after its eps); the
CatVAE's fused Gumbel kernels agree with ``draw_noise`` to a few ulp.

Where an exact value overflows the dtype the documented behaviour is asserted instead: a
non-finite loss that the trainer's NaN guard stops on, never a finite wrong number.
"""

import math

import numpy as np
import pytest
from oracle_torch import (
    LOG_2PI,
    PriorDecoderTorch,
    autograd_grads,
    bernoulli_loglik,
    gaussian_head,
    leaves,
    log_mean_exp,
    mlp,
    mvae_twin_loss,
    one_torch_thread,  # noqa: F401  (autouse)
    perturb,
    softplus,
)

from lvmcore.models import AAE, CVAE, MVAE, VQVAE, CatVAE, PriorDecoderIWAE, PriorDecoderVAE

torch = pytest.importorskip("torch")

B = 4
LOSS_RTOL64, GRAD_RTOL64, FLOOR64 = 1e-10, 1e-8, 1e-9
LOSS_RTOL32, GRAD_TOL32 = 1e-4, 2e-3


# ---------------------------------------------------------------------------------- plumbing
def _to32(model64, model32):
    model32.load_parameters({k: v.astype(np.float32) for k, v in model64.parameters().items()})


def _compare(got, want, dtype, nonzero=()):
    """Every gradient array of the model against autograd (module docstring's tolerances)."""
    assert set(got) == set(want)
    for k, w in want.items():
        g = np.asarray(got[k], dtype=np.float64)
        assert np.isfinite(g).all(), k
        scale = np.abs(w).max() if w.size else 0.0
        if k.startswith(nonzero):
            assert scale > 0, k
        if dtype == np.float64:
            np.testing.assert_allclose(g, w, rtol=GRAD_RTOL64, atol=FLOOR64 * scale, err_msg=k)
        else:
            err = np.abs(g - w).max() if w.size else 0.0
            assert err <= GRAD_TOL32 * scale + 1e-30, (k, err, scale)


def _loss_close(loss, loss_t, dtype):
    rtol = LOSS_RTOL64 if dtype == np.float64 else LOSS_RTOL32
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, loss_t, rtol=rtol, atol=0)


def _binary(rng, D, n=B):
    x = (rng.random((n, D)) < 0.5).astype(np.float64)
    x[0, 0], x[-1, -1] = 1.0, 0.0
    return x


# ---------------------------------------------------------------- PriorDecoderVAE / IWAE
def _set(model, name, value, cols=None):
    a = model.parameters()[name]
    if cols is None:
        a[...] = value
    else:
        a[..., cols] = value


def _scale(model, prefix, factor):
    for k, a in model.parameters().items():
        if k.startswith(prefix):
            a *= factor


def _mog_far(m):
    # components 90 apart, weights e^-100 apart, narrow and wide components
    _set(m, "prior.mu", np.array([[-45.0, 40.0], [0.3, -0.2], [50.0, -35.0]]))
    _set(m, "prior.logits", np.array([50.0, -50.0, 0.0]))
    _set(m, "prior.logvar", np.array([[-6.0, 4.0], [-3.0, -1.0], [5.0, -8.0]]))


def _vamp_far(m):
    m.parameters()["prior.u"][...] *= 6.0
    m.parameters()["prior.u"][...] += 4.0


def _flow_saturated(m):
    _scale(m, "prior.step", 4.0)


def _made_saturated(m):
    _scale(m, "decoder.", 12.0)


def _categorical_extreme(m):
    _scale(m, "decoder.W1", 300.0)
    _scale(m, "decoder.b1", 300.0)


def _deq_logvar(value):
    def setup(m):
        D = m.data_dim
        _set(m, "dequantizer.W1", 0.0, slice(D, None))
        _set(m, "dequantizer.b1", value, slice(D, None))

    return setup


def _tiny_gaussian(m):
    _set(m, "decoder.logvar", np.linspace(-22.0, -14.0, m.data_dim))


def _tiny_logistic(m):
    _set(m, "decoder.log_scale", np.linspace(-11.0, -7.0, m.data_dim))


BASE = dict(latent_dim=2, hidden=(6,), activation="tanh")
PD_CASES = {
    "mog-far-weights-vae": ("vae", dict(data_dim=8, prior="mog", prior_components=3), _mog_far),
    "mog-far-weights-iwae": (
        "iwae",
        dict(data_dim=8, prior="mog", prior_components=3, k=3),
        _mog_far,
    ),
    "vamp-far-pseudo-inputs-relu": (
        "vae",
        dict(data_dim=8, prior="vamp", prior_components=3, activation="relu", n_samples=2),
        _vamp_far,
    ),
    "vamp-far-pseudo-inputs-iwae-tanh": (
        "iwae",
        dict(data_dim=8, prior="vamp", prior_components=2, k=3),
        _vamp_far,
    ),
    "flow-saturated": (
        "vae",
        dict(data_dim=8, prior="flow", prior_flow_hidden=(5,), activation="softplus"),
        _flow_saturated,
    ),
    "made-saturated-logits": (
        "iwae",
        dict(data_dim=8, decoder="made", ar_hidden=(9,), k=2),
        _made_saturated,
    ),
    "categorical-extreme-levels": (
        "vae",
        dict(data_dim=6, decoder="categorical", levels=4, n_samples=2),
        _categorical_extreme,
    ),
    "deq-variational-tiny-scale": (
        "vae",
        dict(data_dim=6, dequantize="variational", likelihood="logistic", levels=4),
        _deq_logvar(-30.0),
    ),
    "deq-variational-huge-scale": (
        "iwae",
        dict(data_dim=6, dequantize="variational", likelihood="gaussian", levels=4, k=2),
        _deq_logvar(20.0),
    ),
    "deq-uniform-tiny-gaussian-variance": (
        "vae",
        dict(data_dim=6, dequantize="uniform", likelihood="gaussian", levels=5),
        _tiny_gaussian,
    ),
    "deq-uniform-tiny-logistic-scale": (
        "iwae",
        dict(data_dim=6, dequantize="uniform", likelihood="logistic", levels=5, k=3),
        _tiny_logistic,
    ),
}


def _pd_data(cfg, rng):
    if cfg.get("levels") is not None:
        x = rng.integers(0, cfg["levels"], (B, cfg["data_dim"]))
        x[0, :] = cfg["levels"] - 1
        x[1, 0] = 0
        return x.astype(np.float64)
    return _binary(rng, cfg["data_dim"])


def _pd_build(kind, cfg, dtype):
    cls = PriorDecoderVAE if kind == "vae" else PriorDecoderIWAE
    return cls(**cfg, dtype=dtype)


def _pd_loss_t(tm, kind, P, x, noise, w):
    log_px, log_pz, log_q, *_ = tm.terms(P, torch.tensor(x), torch.tensor(noise))
    if kind == "vae":
        return -log_px.mean() + w * (log_q - log_pz).mean()
    log_w = log_px + log_pz - log_q
    return -log_mean_exp(log_w).mean()


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(PD_CASES))
def test_prior_decoder_extremes_match_autograd(name, dtype):
    kind, case, setup = PD_CASES[name]
    i = list(PD_CASES).index(name)
    cfg = dict(BASE, **case)
    cfg.setdefault("prior", "standard")
    if kind == "vae":
        cfg["kl"] = "sampled"
    x = _pd_data(cfg, np.random.default_rng(10 + i))
    w = 1.0 if kind == "iwae" else 0.8
    model = _pd_build(kind, cfg, np.float64)
    perturb(model, 20 + i, 1.0)
    setup(model)
    if dtype == np.float32:
        m32 = _pd_build(kind, cfg, np.float32)
        _to32(model, m32)
        model = m32
    P = leaves(model)
    tm = PriorDecoderTorch(model, cfg)
    seed = 30 + i
    noise = model.draw_noise(np.random.default_rng(seed), B)
    kw = {} if kind == "iwae" else dict(kl_weight=w)
    if dtype == np.float64:
        loss, cache = model.forward(x, noise, **kw)
        model.zero_grad()
        model.backward(cache)
    else:
        loss, _ = model.loss_and_grads(x.astype(np.float32), np.random.default_rng(seed), **kw)
    loss_t = _pd_loss_t(tm, kind, P, x, noise.astype(np.float64), w)
    _loss_close(loss, loss_t.item(), dtype)
    _compare(model.gradients(), autograd_grads(loss_t, P), dtype, nonzero=("encoder.",))


@pytest.mark.oracle
@pytest.mark.parametrize(
    "kl_weight, free_bits",
    [(0.0, 0.0), (1e6, 0.0), (1.0, 1e9), (0.5, 1e-300)],
    ids=["w0", "w1e6", "free-bits-above-every-unit", "free-bits-tiny"],
)
def test_prior_decoder_kl_weight_and_free_bits_edges(kl_weight, free_bits):
    """The standard prior's closed-form KL with the KL weight and the free-bits floor at their
    edges: w = 0 (the KL gives no gradient at all), w = 1e6 (it dominates), a floor above every
    unit's batch-mean KL (every unit floored: only the reconstruction's gradient remains, the
    loss carries Z times the floor) and a floor of 1e-300 (no unit floored)."""
    cfg = dict(BASE, data_dim=8, decoder="made", ar_hidden=(8,), n_samples=2)
    x = _binary(np.random.default_rng(1), 8)
    model = PriorDecoderVAE(**cfg, free_bits=free_bits, dtype=np.float64)
    perturb(model, 2, 0.8)
    P = leaves(model)
    tm = PriorDecoderTorch(model, cfg)
    noise = model.draw_noise(np.random.default_rng(3), B)
    loss, cache = model.forward(x, noise, kl_weight=kl_weight)
    model.zero_grad()
    model.backward(cache)
    log_px, *_ = tm.terms(P, torch.tensor(x), torch.tensor(noise))
    mu, logvar = gaussian_head(P, "encoder", torch.tensor(x), "tanh")
    mean_kl = (0.5 * (torch.exp(logvar) - 1 - logvar + mu * mu)).mean(0)  # (Z,)
    floor = torch.full_like(mean_kl, free_bits)
    kl_term = torch.where(mean_kl > free_bits, mean_kl, floor).sum()
    loss_t = -log_px.mean() + kl_weight * kl_term
    _loss_close(loss, loss_t.item(), np.float64)
    _compare(model.gradients(), autograd_grads(loss_t, P), np.float64, nonzero=("encoder.",))


# ------------------------------------------------------------------------------------ CVAE
def _expert_logvar(model, prefix, Z, value, cols=None):
    """Set the log-variance half of a Gaussian head to ``value`` for every input: zero
    weights into those outputs, the bias at the value."""
    W, b = model.parameters()[f"{prefix}W1"], model.parameters()[f"{prefix}b1"]
    sl = slice(Z, 2 * Z) if cols is None else cols
    W[:, sl] = 0.0
    b[sl] = value


CVAE_CASES = {
    "near-deterministic-analytic": (-30.0, "analytic", "bernoulli"),
    "near-deterministic-sampled": (-30.0, "sampled", "bernoulli"),
    "very-wide-analytic": (20.0, "analytic", "bernoulli"),
    "very-wide-sampled-gaussian": (20.0, "sampled", "gaussian"),
}


def _cvae(kl, lik, dtype):
    kw = dict(decoder_variance="learned") if lik == "gaussian" else {}
    return CVAE(
        9, n_classes=3, latent_dim=3, hidden=(6,), kl=kl, likelihood=lik, n_samples=2,
        dtype=dtype, **kw,
    )  # fmt: skip


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CVAE_CASES))
def test_cvae_extreme_experts_match_autograd(name, dtype):
    lv, kl, lik = CVAE_CASES[name]
    Z, C, D = 3, 3, 9
    rng = np.random.default_rng(40)
    x = rng.standard_normal((B, D)) if lik == "gaussian" else _binary(rng, D)
    labels = np.array([2, 0, 1, 2], dtype=np.int64)
    w = 0.7
    model = _cvae(kl, lik, np.float64)
    perturb(model, 41, 1.0)
    _expert_logvar(model, "encoder.", Z, lv)
    if dtype == np.float32:
        m32 = _cvae(kl, lik, np.float32)
        _to32(model, m32)
        model = m32
    P = leaves(model)
    noise = model.draw_noise(np.random.default_rng(42), B)
    if dtype == np.float64:
        loss, cache = model.forward(x, noise, kl_weight=w, labels=labels)
        model.zero_grad()
        model.backward(cache)
    else:
        loss, _ = model.loss_and_grads(
            x.astype(np.float32), np.random.default_rng(42), kl_weight=w, labels=labels
        )
    xt, eps = torch.tensor(x), torch.tensor(noise.astype(np.float64))
    c = torch.nn.functional.one_hot(torch.tensor(labels), C).to(torch.float64)
    h = mlp(P, "encoder", torch.cat([xt, c], 1), "tanh")
    mu, logvar = h[:, :Z], h[:, Z:]
    z = mu + torch.exp(0.5 * logvar) * eps
    L = eps.shape[0]
    out = mlp(P, "decoder", torch.cat([z, c.expand(L, B, C)], -1), "tanh")
    if lik == "gaussian":
        v = P["decoder.logvar"]
        log_px = -0.5 * (LOG_2PI + v + (xt - out) ** 2 * torch.exp(-v)).sum(-1)
    else:
        log_px = bernoulli_loglik(out, xt)
    if kl == "analytic":
        kl_dim = 0.5 * (torch.exp(logvar) - 1 - logvar + mu * mu)
    else:
        log_q = -0.5 * (eps**2 + logvar + LOG_2PI)  # log N(z; mu, e^v) with (z - mu)/std = eps
        kl_dim = (log_q + 0.5 * (z * z + LOG_2PI)).mean(0)
    loss_t = -log_px.mean() + w * kl_dim.mean(0).sum()
    _loss_close(loss, loss_t.item(), dtype)
    _compare(model.gradients(), autograd_grads(loss_t, P), dtype, nonzero=("encoder.",))


# ------------------------------------------------------------------------------------ MVAE
MVAE_CASES = {
    "top-dominant": dict(top=-30.0, bottom=None),
    "both-near-deterministic": dict(top=-30.0, bottom=-28.0),
    "bottom-very-wide": dict(top=None, bottom=20.0),
    "top-deterministic-bottom-wide": dict(top=-30.0, bottom=20.0),
}


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(MVAE_CASES))
def test_mvae_extreme_experts_match_autograd(name, dtype):
    case = MVAE_CASES[name]
    D, Z, split, w = 10, 2, 4, 0.9
    x = _binary(np.random.default_rng(50), D)
    kw = dict(data_dim=D, split=split, latent_dim=Z, n_samples=2, hidden=(6,))
    model = MVAE(**kw, dtype=np.float64)
    perturb(model, 51, 1.0)
    for m in ("top", "bottom"):
        if case[m] is not None:
            _expert_logvar(model, f"{m}_encoder.", Z, case[m])
    if dtype == np.float32:
        m32 = MVAE(**kw, dtype=np.float32)
        _to32(model, m32)
        model = m32
    P = leaves(model)
    noise = model.draw_noise(np.random.default_rng(52), B)
    if dtype == np.float64:
        loss, cache = model.forward(x, noise, kl_weight=w)
        model.zero_grad()
        model.backward(cache)
    else:
        loss, _ = model.loss_and_grads(x.astype(np.float32), np.random.default_rng(52), kl_weight=w)
    eps, xt = torch.tensor(noise.astype(np.float64)), torch.tensor(x)
    parts = (xt[:, :split], xt[:, split:])
    loss_t = mvae_twin_loss(P, parts, eps, Z, "tanh", w)
    _loss_close(loss, loss_t.item(), dtype)
    _compare(model.gradients(), autograd_grads(loss_t, P), dtype, nonzero=("top_encoder.",))


# ---------------------------------------------------------------------------------- CatVAE
D_CAT = 10


def _stable_softmax_fns():
    """softmax and log-softmax over the last axis whose backward is written without the
    cancellation of autograd's ``y (dy - sum y dy)`` / ``g - p sum g``: pairwise differences
    ``v_j = sum_k y_j y_k (dy_j - dy_k)`` and ``sum_{k != j} (g_j p_k - p_j g_k)``, exact to a
    few ulp of each entry even where the softmax is saturated (1 - y_top far below 1e-16)."""

    class Softmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            y = torch.softmax(a, -1)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, dy):
            (y,) = ctx.saved_tensors
            diff = dy[..., :, None] - dy[..., None, :]  # (..., C, C): dy_j - dy_k
            return (y[..., :, None] * y[..., None, :] * diff).sum(-1)

    class LogSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            lp = torch.log_softmax(a, -1)
            ctx.save_for_backward(lp.exp())
            return lp

        @staticmethod
        def backward(ctx, g):
            (p,) = ctx.saved_tensors
            pair = g[..., :, None] * p[..., None, :] - p[..., :, None] * g[..., None, :]
            return pair.sum(-1)  # the k = j term is 0

    return Softmax.apply, LogSoftmax.apply


def _catvae_torch(model, P, x, g, tau, w):
    """(loss, surrogate, y) of the CatVAE for Gumbels g (K, B, N, C), from its docstrings."""
    N, C = model.n_latents, model.n_categories
    K, Bx = g.shape[:2]
    xt, gt = torch.tensor(x), torch.tensor(g)
    softmax, log_softmax = _stable_softmax_fns()
    logits = mlp(P, "encoder", xt, model.activation).reshape(Bx, N, C)
    logp = log_softmax(logits)
    kl = (logp.exp() * (logp + math.log(C))).sum((-2, -1))
    scores = logits + gt
    hard = torch.nn.functional.one_hot(scores.detach().argmax(-1), C).to(torch.float64)
    est = model.estimator
    if est == "gumbel":
        y = softmax(scores / tau)
    elif est == "st-gumbel":
        soft = softmax(scores / tau)
        y = hard + (soft - soft.detach())
    else:
        y = hard
    out = mlp(P, "decoder", y.reshape(K * Bx, N * C), model.activation)
    log_px = bernoulli_loglik(out, xt.expand(K, Bx, x.shape[1]).reshape(K * Bx, -1))
    log_px = log_px.reshape(K, Bx)
    log_q = (hard * logp[None]).sum((-2, -1))
    if est == "vimco":
        log_w = log_px - N * math.log(C) - log_q
        lse = torch.logsumexp(log_w, 0)
        loss = -(lse - math.log(K)).mean()
        lw = log_w.detach()
        loo = (lw.sum(0) - lw) / (K - 1)
        rows = []
        for k in range(K):
            mk = lw.clone()
            mk[k] = loo[k]
            rows.append(lse.detach() - torch.logsumexp(mk, 0))
        signal = torch.stack(rows)
        return loss, loss - (signal * log_q).sum() / Bx, y
    loss = -log_px.mean() + w * kl.mean()
    if est in ("gumbel", "st-gumbel"):
        return loss, loss, y
    c = float(model.state.params["signal_mean"][0])
    if est == "nvil":
        b = mlp(P, "baseline", xt, "tanh")[:, 0]
        scale = 1.0 / max(1.0, math.sqrt(float(model.state.params["signal_var"][0])))
        if scale != 1.0:
            logits.register_hook(lambda grad: grad * scale)
    else:
        b = torch.zeros(Bx, dtype=torch.float64)
    resid = log_px - c - b
    sur = -log_px.mean() + w * kl.mean() - (resid.detach() * log_q).sum() / (K * Bx)
    if est == "nvil":
        sur = sur + ((log_px.detach() - c - b) ** 2).mean(0).sum() / (2 * Bx)
    return loss, sur, y


def _catvae(estimator, dtype, **kw):
    return CatVAE(
        D_CAT, n_latents=3, n_categories=4, hidden=(6,), estimator=estimator, baseline_hidden=5,
        seed=7, dtype=dtype, **kw,
    )  # fmt: skip


CAT_CASES = {
    # estimator, constructor kwargs, encoder-logit scale, decoder scale, state (c, v)
    "gumbel-tau1e-3": ("gumbel", dict(tau=1e-3), 1.0, 1.0, None),
    "gumbel-tau1e-6-huge-logits": ("gumbel", dict(tau=1e-6), 100.0, 1.0, None),
    "st-gumbel-tau1e-6": ("st-gumbel", dict(tau=1e-6), 1.0, 1.0, None),
    "st-gumbel-huge-logits": ("st-gumbel", dict(tau=0.5), 300.0, 1.0, None),
    "reinforce-huge-logits-extreme-signal": ("reinforce", {}, 100.0, 30.0, (-1e4, 0.0)),
    "nvil-huge-logits-extreme-signal": ("nvil", {}, 100.0, 30.0, (5e3, 1e8)),
    "vimco-huge-logits-spread-weights": ("vimco", dict(k=3), 100.0, 30.0, None),
}


def _cat_params():
    out = []
    for name in CAT_CASES:
        for dt, tag in ((np.float64, "f64"), (np.float32, "f32")):
            out.append(pytest.param(name, dt, id=f"{name}-{tag}"))
    return out


@pytest.mark.oracle
@pytest.mark.parametrize("name, dtype", _cat_params())
def test_catvae_extremes_match_autograd(name, dtype):
    """Tiny temperatures and huge logits for every estimator; float32 runs the training step
    (the fused Gumbel kernels). At tau = 1e-6 the relaxed sample is the one-hot of
    argmax(l + g) exactly (the Gumbel-Softmax's argmax limit) and its gradient is exactly 0."""
    est, kw, enc_scale, dec_scale, state = CAT_CASES[name]
    model = _catvae(est, np.float64, **kw)
    perturb(model, 60, 0.8, skip=("state.",))
    _scale(model, "encoder.W1", enc_scale)
    _scale(model, "encoder.b1", enc_scale)
    _scale(model, "decoder.", dec_scale)
    if state is not None:
        model.state.params["signal_mean"][0], model.state.params["signal_var"][0] = state
    if dtype == np.float32:
        m32 = _catvae(est, np.float32, **kw)
        _to32(model, m32)
        model = m32
    x = _binary(np.random.default_rng(61), D_CAT)
    g = model.draw_noise(np.random.default_rng(62), B)
    P = leaves(model)
    # before the step: a training step updates the baselines' running statistics it read
    loss_t, sur, y_t = _catvae_torch(model, P, x, g.astype(np.float64), model.tau, 1.0)
    if dtype == np.float64:
        loss, cache = model.forward(x, g)
        model.zero_grad()
        model.backward(cache)
        y = cache.y
    else:
        loss, _ = model.loss_and_grads(x.astype(np.float32), np.random.default_rng(62))
        y = None
    _loss_close(loss, loss_t.item(), dtype)
    want = autograd_grads(sur, P, zero=("state.",))
    _compare(model.gradients(), want, dtype, nonzero=("decoder.",))
    if kw.get("tau") == 1e-6:
        assert np.array_equal(y_t.detach().numpy(), np.round(y_t.detach().numpy()))
        if y is not None:
            np.testing.assert_array_equal(y, y_t.detach().numpy())


# ----------------------------------------------------------------------------------- VQ-VAE
def _vqvae(update, dtype):
    return VQVAE(
        D_CAT, codes=5, slots=2, code_dim=3, hidden=(6,), activation="tanh", beta=0.4,
        codebook_update=update, ema_decay=0.8, ema_eps=1e-5, seed=3, dtype=dtype,
    )  # fmt: skip


def _vq_torch(model, P, x):
    Bx = x.shape[0]
    S, E = model.slots, model.code_dim
    xt = torch.tensor(x)
    z_e = mlp(P, "encoder", xt, "tanh").reshape(Bx * S, E)
    e = P["codebook"]
    dist = ((z_e.detach()[:, None, :] - e.detach()[None]) ** 2).sum(-1)
    k = torch.tensor(np.argmin(dist.numpy(), -1))  # ties to the lowest index
    e_k = e[k]
    z_q = e_k.detach() + (z_e - z_e.detach())
    out = mlp(P, "decoder", z_q.reshape(Bx, S * E), "tanh")
    loss = -bernoulli_loglik(out, xt).mean() + model.beta * ((z_e - e_k.detach()) ** 2).sum() / Bx
    if model.codebook_update == "loss":
        loss = loss + ((z_e.detach() - e_k) ** 2).sum() / Bx
    return loss, z_e.detach().numpy(), k.numpy()


def _vq_far(m, rng):
    m.params["codebook"][...] = 80.0 * rng.standard_normal((5, 3)) + 40.0


def _vq_tied(m, rng):
    cb = 60.0 + 10.0 * rng.standard_normal((5, 3))  # far codes, none chosen
    cb[1] = cb[3] = 0.05 * rng.standard_normal(3)  # exact duplicates near the encodings
    m.params["codebook"][...] = cb


VQ_CASES = {
    "far-codes-loss": ("loss", _vq_far),
    "far-codes-ema": ("ema", _vq_far),
    "tied-duplicate-codes-loss": ("loss", _vq_tied),
    "tied-duplicate-codes-ema-unused": ("ema", _vq_tied),
}


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(VQ_CASES))
def test_vqvae_extremes_training_step(name, dtype):
    """Codes far from every encoding, exact duplicate codes (the lowest index of a tie wins)
    and, with EMA, unused codes whose cluster sizes are 0 or 1e-30: the step's gradients and
    the EMA update N <- g N + (1-g) n, S <- g S + (1-g) s, e = S / N~ (Laplace smoothed)."""
    update, setup = VQ_CASES[name]
    model = _vqvae(update, np.float64)
    rng = np.random.default_rng(70)
    perturb(model, 71, 0.8, skip=("code_age", "ema_", "codebook"))
    setup(model, rng)
    if update == "ema":
        p = model.params
        p["ema_cluster_size"][...] = [0.0, 2.0, 1e-30, 3.0, 1e-30]
        p["ema_code_sum"][...] = p["ema_cluster_size"][:, None] * p["codebook"]
    if dtype == np.float32:
        m32 = _vqvae(update, np.float32)
        _to32(model, m32)
        model = m32
    x = _binary(np.random.default_rng(72), D_CAT)
    P = leaves(model)
    loss_t, z_e, k = _vq_torch(model, P, x)
    if "tied" in name:
        assert set(k.tolist()) == {1}
    loss, _ = model.loss_and_grads(x.astype(dtype), np.random.default_rng(0))
    _loss_close(loss, loss_t.item(), dtype)
    state = ("code_age", "ema_") + (("codebook",) if update == "ema" else ())
    _compare(model.gradients(), autograd_grads(loss_t, P, zero=state), dtype, ("encoder.",))
    if update == "ema":
        M, gam, eps = 5, model.ema_decay, model.ema_eps
        counts = np.bincount(k, minlength=M)
        sums = np.zeros((M, 3))
        np.add.at(sums, k, z_e)
        size = gam * P["ema_cluster_size"].detach().numpy() + (1 - gam) * counts
        total = gam * P["ema_code_sum"].detach().numpy() + (1 - gam) * sums
        n = size.sum()
        want = total / ((size + eps) / (n + M * eps) * n)[:, None]
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        got = model.params["codebook"].astype(np.float64)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


# -------------------------------------------------------------------------------------- AAE
def _aae(saturating, dtype):
    return AAE(
        D_CAT, latent_dim=2, hidden=(6,), activation="tanh", n_samples=2, disc_hidden=(5,),
        saturating=saturating, seed=5, dtype=dtype,
    )  # fmt: skip


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("saturating", [False, True], ids=["non-saturating", "saturating"])
def test_aae_saturated_discriminator(saturating, dtype):
    """Discriminator weights scaled so that its logits reach |d| ~ 1e3: the generator loss
    softplus(-d) (or -softplus(d)) and its sigmoid gradient stay exact, and the step's
    discriminator loss on the replayed target draws matches."""
    model = _aae(saturating, np.float64)
    perturb(model, 80, 0.8, skip=("disc_adam.",))
    _scale(model, "discriminator.", 40.0)
    if dtype == np.float32:
        m32 = _aae(saturating, np.float32)
        _to32(model, m32)
        model = m32
    x = _binary(np.random.default_rng(81), D_CAT)
    replay = np.random.default_rng(82)
    eps = model.draw_noise(replay, B).astype(np.float64)
    z_prior = model.sample_target(replay, 2 * B).astype(np.float64)
    P = leaves(model)
    xt = torch.tensor(x)
    h = mlp(P, "encoder", xt, "tanh")
    z = h[:, :2] + torch.exp(h[:, 2:] / 2) * torch.tensor(eps)  # (L, B, Z)
    out = mlp(P, "decoder", z.reshape(2 * B, 2), "tanh")
    log_px = bernoulli_loglik(out, xt.expand(2, B, D_CAT).reshape(2 * B, D_CAT))
    frozen = {k: v.detach() for k, v in P.items() if k.startswith("discriminator.")}
    relu = "relu"
    d = mlp(frozen, "discriminator", z.reshape(2 * B, 2), relu)[:, 0]
    gen = -softplus(d).mean() if saturating else softplus(-d).mean()
    loss_t = -log_px.mean() + model.adv_weight * gen
    assert d.abs().max().item() > 100  # saturated
    d_p = mlp(P, "discriminator", torch.tensor(z_prior), relu)[:, 0]
    d_q = mlp(P, "discriminator", z.detach().reshape(2 * B, 2), relu)[:, 0]
    disc_t = softplus(-d_p).mean() + softplus(d_q).mean()
    if dtype == np.float64:
        loss, cache = model.forward(x, eps)
        model.zero_grad()
        model.backward(cache)
    else:
        loss, stats = model.loss_and_grads(x.astype(np.float32), np.random.default_rng(82))
        assert np.isfinite(stats["disc_loss"])
        np.testing.assert_allclose(stats["disc_loss"], disc_t.item(), rtol=LOSS_RTOL32)
    _loss_close(loss, loss_t.item(), dtype)
    zero = ("discriminator.", "disc_adam.")
    _compare(model.gradients(), autograd_grads(loss_t, P, zero=zero), dtype, ("encoder.",))
