"""Evaluations of the Gaussian-latent models and the kernels' public wrappers at extreme inputs,
against float64 PyTorch.

Evaluations probed: ``model.log_likelihood(x, rng, k, batch_size, chunk_size)``,
``model.elbo(x, rng)`` and ``model.bound(x, rng)`` in float32 and float64, with the parameters
pushed to where the numerics break: every entry moved by N(0, s^2), s = 1.5 to 5 (log w spread
over 1e4 to 1e10 nats within a row), the posterior log-variance pinned at -30 and +20, Bernoulli
output logits at +-150, a Gaussian decoder variance of 1e-4; uneven batches (7 rows by 3, 5 by
2) and chunks (k = 11 by 4, 7 by 3), k = 1, one row, a batch and a chunk larger than what they
cut.

- VAE, IWAE (IWAE, MIWAE, PIWAE, CIWAE objectives) and CVAE have a torch twin written here from
  the math (MLPs read from ``model.parameters()``; z = mu + exp(logvar / 2) eps, log w =
  log p(x|z) + log p(z) - log q(z|x) with (z - mu) / std = eps; the analytic or sampled KL of
  the VAE's ELBO; the objectives of ``lvmcore.losses.iwae``: MIWAE's groups are consecutive
  blocks of K samples, PIWAE reports L_{MK}).
- HierarchicalIWAE, FlowIWAE (IAF, planar, full covariance), PriorDecoderIWAE/VAE (mixture prior,
  MADE decoder) and MVAE: their log w at fixed noise has its torch oracle in the other
  test_oracle_* files; here the evaluations are replayed from ``log_weights`` of the float64
  model (at the float32 model's parameters, so a float32 evaluation is held to the float64 one)
  on the replayed noise, reduced in float64 torch.

How the noise is replayed (the models' docstrings):

- ``log_likelihood``: one seed per evaluation batch, in batch order, ``seed_i =
  int(rng.integers(0, 2**63))``. The VAE's sampler (VAE, IWAE) reads sample s of row b from
  element (s B + b) Z of ``kernels.philox.normal_ref(seed_i, 0, k B Z, dtype)``, whatever the
  chunking. The base sampler (CVAE, the log-weight models, MVAE) draws each chunk's noise as
  ``draw_noise(default_rng([seed_i, start]), B, n)``, which is ``normal_ref(u, 0, n B Z, dtype)``
  with ``u = default_rng([seed_i, start]).integers(0, 2**64, dtype=uint64)``.
- ``elbo`` / ``bound``: per batch of rows, one ``draw_key`` (VAE, IWAE) or ``draw_noise`` (the
  others): ``u = rng.integers(0, 2**64, dtype=uint64)``, eps = ``normal_ref(u, 0, S B Z, dtype)``
  shaped (S, B, Z), S the model's samples per row (L, K, or M K).

What "right" means: |got - want| <= rtol (|want| + scale), scale the size of what the rounding
works on (the sum of the absolute values of log w's summands: of the dominant sample for a
log-sum-exp, their mean for a mean). float64 rtol 1e-13 (measured at most 1e-15); float32 rtol
1e-5 (2^-24 per rounding, a few tens of roundings along the MLPs and the sums, GEMM sums larger
than their result: measured at most 1.5e-6).

Kernels probed, each against float64 torch (autograd for the backward) with its documented
special values: ``importance_weights`` (spreads of 1e30 / 1e300, ties, -inf entries, an all -inf
column, tiny and subnormal-producing ranges, +inf and NaN), ``bernoulli_loglik`` with and without
``bias`` (logits of +-1e30 / 1e300, +-1e4, +-700, -88), ``gumbel_softmax`` and its backward
(tau 1e-8 to 1e3, masked categories, ties, logits of +-1e4; noise ``gumbel_ref(seed, stream,
N C, dtype, offset)``), ``reparam_sample`` and its backward (log-variances -80 to 80 / 600,
means of +-1e4; noise ``normal_ref(seed, stream, K B Z, dtype, offset)``), ``mixture_logprob``
and its backward (components switched off, all off, far means, log-variances +-20),
``iaf_gate`` and its backward (gates saturated both ways) and ``bias_act`` with its backward
for each activation. Tolerances are a few ulp of the dtype times the size of the terms each
result is a rounded sum of; an output or gradient below the smallest normal may be 0 (the
kernels flush it, documented), and none may be subnormal.

One case once failed and is kept as a regression test: ``gumbel_softmax_backward`` given the
softmax argument (``logits_plus_g_over_tau``) of a row with a masked (-inf) category returned
dtau NaN (0 * -inf; the entries with y = 0 are now left out, as on the y_soft path).
"""

import math

import numpy as np
import pytest
from oracle_torch import (
    LOG_2PI,
    bounds,
    decoder_logvar,
    leaves,
    log_mean_exp,
    mlp,
    one_torch_thread,  # noqa: F401  (autouse)
    softplus,
    tensor64,
)

from kernels.philox import normal_ref
from lvmcore.models import (
    CVAE,
    IWAE,
    MVAE,
    VAE,
    FlowIWAE,
    HierarchicalIWAE,
    PriorDecoderIWAE,
    PriorDecoderVAE,
)

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.oracle

D, Z = 11, 3


# ---------------------------------------------------------------------------------------------
# Gaussian-latent models with a torch twin: VAE, IWAE (every objective), CVAE
# ---------------------------------------------------------------------------------------------


def _twin_terms(model, x, eps, labels=None):
    """Float64 torch: log p(x|z), log p(z), log q(z|x) (each (S, B)), mu, logvar, z, and the
    size of each sample's terms (the sum of the absolute values of its summands, (S, B))."""
    P = leaves(model, requires_grad=False)
    xb = tensor64(x)
    eps = tensor64(eps)
    S, B, Zl = eps.shape
    c = None  # the CVAE's one-hot label, appended to the input of each network
    if labels is not None:
        c = torch.nn.functional.one_hot(torch.as_tensor(labels), model.n_classes).double()
    h = mlp(P, "encoder", xb if c is None else torch.cat([xb, c], -1), model.activation)
    mu, logvar = h[:, :Zl], h[:, Zl:]
    z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, Z)
    z_in = z if c is None else torch.cat([z, c.expand(S, B, c.shape[-1])], -1)
    y = mlp(P, "decoder", z_in, model.activation)  # (S, B, D)
    if model.likelihood == "bernoulli":
        terms_px = xb * y - softplus(y)
    else:
        v = decoder_logvar(P, model.decoder_variance, xb.shape[1])
        terms_px = -0.5 * (LOG_2PI + v + (xb - y) ** 2 * torch.exp(-v))
    log_px = terms_px.sum(-1)
    log_pz = (-0.5 * (z**2 + LOG_2PI)).sum(-1)
    log_qz = (-0.5 * (eps**2 + logvar + LOG_2PI)).sum(-1)  # (z - mu) / std = eps
    size = terms_px.abs().sum(-1) + log_pz.abs() + log_qz.abs()  # (S, B)
    return log_px, log_pz, log_qz, mu, logvar, z, size


def _twin_log_w(model, x, eps, labels=None):
    log_px, log_pz, log_qz, *_, size = _twin_terms(model, x, eps, labels)
    return log_px + log_pz - log_qz, size


def _scale(lw, size, objective):
    """What rounding works on, per row: for a log-sum-exp the size of its largest sample
    (the others enter damped by their weights), for a mean the mean size, for CIWAE both."""
    top = size.gather(0, lw.argmax(0, keepdim=True))[0]
    if objective == "mean":
        return size.mean(0)
    if objective in ("ciwae", "miwae"):
        return torch.maximum(top, size.mean(0))
    return top


def _twin_bound(model, lw):
    """The objective of ``bound`` per row from log w (S, B), float64: the generative
    network's bound (PIWAE reports its decoder target L_S)."""
    return bounds(lw, model.objective, model.groups, model.ciwae_beta)[0]


def _key_eps(rng, shape, dtype):
    """The noise of ``draw_key`` / ``draw_noise``: one uint64 seed from rng, stream 0."""
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    return normal_ref(seed, 0, math.prod(shape), dtype).reshape(shape)


def _twin_elbo_or_bound(model, x, seed, batch_size, which, labels=None):
    """Replay ``model.elbo`` / ``model.bound``: one key per batch, in batch order."""
    rng = np.random.default_rng(seed)
    S = model.n_samples if isinstance(model, VAE) and not isinstance(model, IWAE) else None
    if isinstance(model, IWAE):
        S = model.k * model.groups
    out, scales = [], []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size]
        lb = None if labels is None else labels[b0 : b0 + batch_size]
        eps = _key_eps(rng, (S, xb.shape[0], model.latent_dim), model.dtype)
        log_px, log_pz, log_qz, mu, logvar, z, size = _twin_terms(model, xb, eps, lb)
        lw = log_px + log_pz - log_qz
        scale = _scale(lw, size, "mean")
        if isinstance(model, IWAE):
            if which == "bound":
                scale = _scale(lw, size, model.objective)
            val = lw.mean(0) if which == "elbo" else _twin_bound(model, lw)
        elif model.kl == "analytic":
            kl = 0.5 * (torch.exp(logvar) + mu**2 - 1 - logvar).sum(-1)
            val = log_px.mean(0) - kl
            scale = log_px.abs().mean(0) + (
                0.5 * (torch.exp(logvar) + mu**2 + 1 + logvar.abs())
            ).sum(-1)
        else:
            val = lw.mean(0)
        out.append(val)
        scales.append(scale)
    return torch.cat(out).numpy(), torch.cat(scales).numpy()


def _twin_log_likelihood(model, x, seed, k, batch_size, labels=None):
    """Replay ``model.log_likelihood``: one int63 seed per evaluation batch. The VAE's sampler
    (VAE, IWAE) takes sample s of row b from element (s B + b) Z of that seed's normal stream
    (``normal_ref(seed, 0, k B Z)``) whatever the chunking; the CVAE's (the base rule) takes
    each chunk's noise from ``default_rng([seed, start])`` (so the chunking must be known)."""
    rng = np.random.default_rng(seed)
    out, scales = [], []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size]
        B = xb.shape[0]
        seed_i = int(rng.integers(0, 2**63))
        eps = normal_ref(seed_i, 0, k * B * model.latent_dim, model.dtype)
        lw, size = _twin_log_w(model, xb, eps.reshape(k, B, model.latent_dim))
        out.append(log_mean_exp(lw))
        scales.append(_scale(lw, size, "iwae"))
    return torch.cat(out).numpy(), torch.cat(scales).numpy()


def _twin_log_likelihood_base(model, x, seed, k, batch_size, chunk_size, labels=None):
    rng = np.random.default_rng(seed)
    out, scales = [], []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size]
        lb = None if labels is None else labels[b0 : b0 + batch_size]
        B = xb.shape[0]
        seed_i = int(rng.integers(0, 2**63))
        lws, sizes = [], []
        for s in range(0, k, chunk_size):
            n = min(chunk_size, k - s)
            eps = _key_eps(
                np.random.default_rng([seed_i, s]), (n, B, model.latent_dim), model.dtype
            )
            lw, size = _twin_log_w(model, xb, eps, lb)
            lws.append(lw)
            sizes.append(size)
        lw = torch.cat(lws)
        out.append(log_mean_exp(lw))
        scales.append(_scale(lw, torch.cat(sizes), "iwae"))
    return torch.cat(out).numpy(), torch.cat(scales).numpy()


# Tolerances, relative to the size of the quantity: |got - want| <= rtol (|want| + scale), scale
# the largest sum over a row's samples of |each summand of log w| (and of the analytic KL):
# what the rounding of the terms works on. float64: the forward rounds each term to 1e-16 of
# its size, a GEMM's sum to about (number of terms) 1e-16 of its absolute sum; 1e-11 leaves
# room for that. float32: 2^-24 = 6e-8 per rounding, a few tens of them along the MLPs and the
# sums over D and Z, and the GEMMs' absolute sums exceed |term| by up to the layer width when
# the parameters are spread: 2e-5 (measured: at most 2e-6).
RTOL = {np.float64: 1e-13, np.float32: 1e-5}


def _close(got, want, scale, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, what
    assert np.all(np.isfinite(got)), (what, got)
    err = np.abs(got - want)
    lim = RTOL[dtype] * (np.abs(want) + scale)
    assert np.all(err <= lim), (what, got, want, (err / (np.abs(want) + scale)).max())


def _extreme(model, regime, seed=5):
    """Push the parameters: ``spreadS`` adds N(0, S^2) to every entry; ``logvar-30`` /
    ``logvar+20`` pin the posterior log-variance (its output columns 0, bias at the value);
    ``saturated`` moves the decoder's output bias to +-150 (Bernoulli logits far out)."""
    rng = np.random.default_rng(seed)
    P = model.parameters()
    new = {}
    spread = float(regime[6:]) if regime.startswith("spread") else 0.5
    for n, v in P.items():
        new[n] = (v + spread * rng.standard_normal(v.shape)).astype(v.dtype)
    last = max(int(n[len("encoder.W") :]) for n in P if n.startswith("encoder.W"))
    Zl = model.latent_dim
    if regime.startswith("logvar"):
        W, b = new[f"encoder.W{last}"], new[f"encoder.b{last}"]
        W[:, Zl:] = 0
        b[Zl:] = float(regime[6:])
    if regime == "saturated":
        last_d = max(int(n[len("decoder.W") :]) for n in P if n.startswith("decoder.W"))
        b = new[f"decoder.b{last_d}"]
        b[:] = np.where(np.arange(b.size) % 2 == 0, 150.0, -150.0)
    model.load_parameters(new)
    return model


def _data(likelihood, n, dtype, seed=3, d=D):
    rng = np.random.default_rng(seed)
    if likelihood == "bernoulli":
        return (rng.random((n, d)) < 0.4).astype(dtype)
    return (2.0 * rng.standard_normal((n, d))).astype(dtype)


REGIMES = ["spread2", "spread5", "logvar-30", "logvar+20", "saturated"]
DTYPES = [np.float64, np.float32]


def _make(kind, dtype, likelihood="bernoulli", **kw):
    if kind == "vae":
        return VAE(D, Z, (7,), likelihood=likelihood, seed=1, dtype=dtype, **kw)
    return IWAE(D, Z, (7,), likelihood=likelihood, seed=1, dtype=dtype, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize(
    "kind, likelihood, kw",
    [
        ("vae", "bernoulli", {}),
        ("vae", "gaussian", {"kl": "sampled", "n_samples": 3}),
        ("iwae", "bernoulli", {"k": 6}),
        ("iwae", "gaussian", {"k": 4, "objective": "piwae", "groups": 3}),
    ],
)
def test_vae_iwae_log_likelihood_extremes(kind, likelihood, kw, regime, dtype):
    """K-sample log-likelihood: uneven batches (7 rows by 3) and uneven chunks (k = 11 by 4)."""
    model = _extreme(_make(kind, dtype, likelihood, **kw), regime)
    x = _data(likelihood, 7, dtype)
    got = model.log_likelihood(x, np.random.default_rng(21), k=11, batch_size=3, chunk_size=4)
    want, scale = _twin_log_likelihood(model, x, 21, 11, 3)
    _close(got, want, scale, dtype, "log_likelihood")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize(
    "kind, likelihood, kw",
    [
        ("vae", "bernoulli", {}),
        ("vae", "bernoulli", {"n_samples": 4}),
        ("vae", "gaussian", {"kl": "sampled", "n_samples": 3}),
        ("vae", "gaussian", {"decoder_variance": 1e-4}),
        ("iwae", "bernoulli", {"k": 5}),
        ("iwae", "bernoulli", {"k": 3, "objective": "miwae", "groups": 2}),
        ("iwae", "gaussian", {"k": 4, "objective": "piwae", "groups": 3}),
        ("iwae", "bernoulli", {"k": 6, "objective": "ciwae", "ciwae_beta": 0.3}),
        ("iwae", "bernoulli", {"k": 1}),
    ],
)
def test_vae_iwae_elbo_and_bound_extremes(kind, likelihood, kw, regime, dtype):
    model = _extreme(_make(kind, dtype, likelihood, **kw), regime)
    x = _data(likelihood, 5, dtype)
    for which in ("elbo", "bound"):
        got = getattr(model, which)(x, np.random.default_rng(33), batch_size=2)
        want, scale = _twin_elbo_or_bound(model, x, 33, 2, which)
        _close(got, want, scale, dtype, which)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "k, batch_size, chunk_size, n",
    [(1, 1, 1, 1), (1, 4, None, 3), (9, 9, 2, 1), (13, 2, 5, 5), (5, 100, 100, 4)],
)
def test_log_likelihood_sizes_at_spread(k, batch_size, chunk_size, n, dtype):
    """k = 1, one row, a batch larger than the data, a chunk larger than k, the default chunk."""
    model = _extreme(_make("iwae", dtype, k=2), "spread4")
    x = _data("bernoulli", n, dtype)
    got = model.log_likelihood(
        x, np.random.default_rng(8), k=k, batch_size=batch_size, chunk_size=chunk_size
    )
    want, scale = _twin_log_likelihood(model, x, 8, k, batch_size)
    _close(got, want, scale, dtype, "log_likelihood")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["spread3", "logvar-30", "logvar+20", "saturated"])
def test_cvae_evaluations_extremes(regime, dtype):
    """The CVAE's sampler is the base one: each chunk's noise from default_rng([seed, start])."""
    model = _extreme(CVAE(D, 3, Z, (7,), seed=2, dtype=dtype), regime)
    x = _data("bernoulli", 5, dtype)
    labels = np.array([0, 2, 1, 2, 0])
    got = model.log_likelihood(
        x, np.random.default_rng(4), k=7, batch_size=2, chunk_size=3, labels=labels
    )
    want, scale = _twin_log_likelihood_base(model, x, 4, 7, 2, 3, labels)
    _close(got, want, scale, dtype, "log_likelihood")
    got = model.elbo(x, np.random.default_rng(6), batch_size=3, labels=labels)
    want, scale = _twin_elbo_or_bound(model, x, 6, 3, "elbo", labels)
    _close(got, want, scale, dtype, "elbo")


# ---------------------------------------------------------------------------------------------
# Models whose log w has its oracle elsewhere: the evaluations replayed from ``log_weights``
# ---------------------------------------------------------------------------------------------

OTHER = {
    "hier-iwae": lambda dt: HierarchicalIWAE(
        10, layers=((10, 6, 3), (3, 4, 2)), k=3, seed=4, dtype=dt
    ),
    "hier-miwae": lambda dt: HierarchicalIWAE(
        10, layers=((10, 6, 3), (3, 4, 2)), k=2, objective="miwae", groups=3, seed=4, dtype=dt
    ),
    "flow-iaf": lambda dt: FlowIWAE(
        10, latent_dim=3, hidden=(6,), posterior="iaf", context_dim=0, k=3, seed=5, dtype=dt
    ),
    "flow-planar-ciwae": lambda dt: FlowIWAE(
        10,
        latent_dim=3,
        hidden=(6,),
        posterior="planar",
        context_dim=0,
        k=4,
        objective="ciwae",
        seed=5,
        dtype=dt,
    ),  # fmt: skip
    "flow-fullcov-piwae": lambda dt: FlowIWAE(
        10,
        latent_dim=3,
        hidden=(6,),
        posterior="fullcov",
        k=2,
        objective="piwae",
        groups=2,
        seed=5,
        dtype=dt,
    ),  # fmt: skip
    "pd-mog-iwae": lambda dt: PriorDecoderIWAE(
        10, latent_dim=3, hidden=(6,), prior="mog", prior_components=3, k=3, seed=6, dtype=dt
    ),
    "pd-made-vae": lambda dt: PriorDecoderVAE(
        10,
        latent_dim=3,
        hidden=(6,),
        decoder="made",
        ar_hidden=(9,),
        n_samples=2,
        seed=6,
        dtype=dt,
    ),  # fmt: skip
    "mvae": lambda dt: MVAE(10, split=4, latent_dim=2, hidden=(6,), n_samples=2, seed=7, dtype=dt),
}


def _spread_pair(name, spread, seed=9):
    """The float64 model with every parameter moved by N(0, spread^2), and a float32 copy."""
    m64, m32 = OTHER[name](np.float64), OTHER[name](np.float32)
    rng = np.random.default_rng(seed)
    P = {k: v + spread * rng.standard_normal(v.shape) for k, v in m64.parameters().items()}
    m64.load_parameters(P)
    m32.load_parameters({k: v.astype(np.float32) for k, v in P.items()})
    m64.load_parameters({k: v.astype(np.float32).astype(np.float64) for k, v in P.items()})
    return m64, m32


def _noise_dim(model):
    return model.latent_dim if isinstance(model, MVAE) else model.noise_dim


def _ref_log_w(m64, x, eps):
    """log w (S, B) of the float64 model at the (float32 or float64) noise, as a tensor."""
    return tensor64(m64.log_weights(x.astype(np.float64), eps.astype(np.float64)))


def _replay_base_log_likelihood(m64, x, seed, k, batch_size, chunk_size, dtype):
    rng = np.random.default_rng(seed)
    out, scales = [], []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size]
        seed_i = int(rng.integers(0, 2**63))
        lws = []
        for s in range(0, k, chunk_size):
            n = min(chunk_size, k - s)
            shape = (n, xb.shape[0], _noise_dim(m64))
            lws.append(
                _ref_log_w(m64, xb, _key_eps(np.random.default_rng([seed_i, s]), shape, dtype))
            )
        lw = torch.cat(lws)
        out.append(log_mean_exp(lw))
        scales.append(_scale(lw, lw.abs(), "iwae"))
    return torch.cat(out).numpy(), torch.cat(scales).numpy()


def _replay_per_row(m64, x, seed, batch_size, reduce, objective, dtype):
    rng = np.random.default_rng(seed)
    out, scales = [], []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size]
        lw = _ref_log_w(m64, xb, _key_eps(rng, (m64.n_draws, xb.shape[0], m64.noise_dim), dtype))
        out.append(reduce(lw))
        scales.append(_scale(lw, lw.abs(), objective))
    return torch.cat(out).numpy(), torch.cat(scales).numpy()


# float32 against the float64 model at the same (float32) parameters and noise: the float32
# forward's rounding, relative to the row's largest |log w| (its terms are of that size here:
# no cancellation between them at these spreads, checked by the float64 margin). Measured:
# at most 3e-6.
RTOL_OTHER = {np.float64: 1e-13, np.float32: 1e-5}


def _close_other(got, want, scale, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape and np.all(np.isfinite(got)), (what, got)
    rel = np.abs(got - want) / (np.abs(want) + scale)
    assert rel.max() <= RTOL_OTHER[dtype], (what, got, want, rel.max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", [1.5, 4.0])
@pytest.mark.parametrize("name", list(OTHER))
def test_log_weight_models_evaluations_at_spread(name, spread, dtype):
    """``log_likelihood`` (base sampler: chunk noise from default_rng([seed, start])), ``elbo``
    and ``bound`` (one ``draw_noise`` per batch, the model's S samples)."""
    m64, m32 = _spread_pair(name, spread)
    model = m64 if dtype == np.float64 else m32
    x = _data("bernoulli", 5, dtype, d=10)
    got = model.log_likelihood(x, np.random.default_rng(2), k=7, batch_size=2, chunk_size=3)
    want, scale = _replay_base_log_likelihood(m64, x, 2, 7, 2, 3, dtype)
    _close_other(got, want, scale, dtype, "log_likelihood")
    if isinstance(model, MVAE):
        return  # its elbo/bound are sums of per-subset ELBOs, not of log_weights
    got = model.elbo(x, np.random.default_rng(3), batch_size=3)
    want, scale = _replay_per_row(m64, x, 3, 3, lambda lw: lw.mean(0), "mean", dtype)
    _close_other(got, want, scale, dtype, "elbo")
    got = model.bound(x, np.random.default_rng(4), batch_size=3)
    if hasattr(model, "objective"):
        reduce, objective = (lambda lw: _twin_bound(model, lw)), model.objective
    else:
        reduce, objective = (lambda lw: lw.mean(0)), "mean"
    want, scale = _replay_per_row(m64, x, 4, 3, reduce, objective, dtype)
    _close_other(got, want, scale, dtype, "bound")


# ---------------------------------------------------------------------------------------------
# The kernels' public wrappers at extreme inputs
# ---------------------------------------------------------------------------------------------

ULP = {np.float32: 2.0**-23, np.float64: 2.0**-52}
TINY = {np.float32: float(np.finfo(np.float32).tiny), np.float64: float(np.finfo(np.float64).tiny)}
NINF = -np.inf


def _lw_columns(dtype):
    """log w (7, 6): a spread of 1e30 (1e300), ties, -inf entries, an all -inf column, tiny
    values, and a column whose small weights fall below the smallest normal."""
    big = 1e30 if dtype == np.float32 else 1e300
    cols = [
        [big, -big, 0.0, big / 2, -1.0, 3.0, big],
        [2.5] * 7,
        [NINF, 1.0, NINF, -1e3, NINF, 2.0, NINF],
        [NINF] * 7,
        [1e-30, -1e-30, 0.0, 1e-38, -3e-39, 5e-40, 0.0],
        [0.0, -80.0, -100.0, -700.0, -750.0, -90.0, -87.0],
    ]
    return np.ascontiguousarray(np.array(cols, dtype=np.float64).T.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_importance_weights_extremes(dtype):
    from kernels.importance_weights import importance_weights

    lw = _lw_columns(dtype)
    bound, w = importance_weights(lw.copy())
    t = tensor64(lw)
    want_b = torch.logsumexp(t, 0) - math.log(lw.shape[0])
    want_w = torch.nan_to_num(torch.softmax(t, 0), nan=0.0)  # the all -inf column: 0
    u = ULP[dtype]
    fin = torch.isfinite(want_b).numpy()
    assert np.array_equal(np.isfinite(bound), fin) and np.all(bound[~fin] == -np.inf)
    # the bound is formed in float64 from m and rounded once: a few ulp of |m| + log K
    m = np.abs(lw).max(0, where=np.isfinite(lw), initial=0.0).astype(np.float64)
    err = np.abs(bound[fin].astype(np.float64) - want_b.numpy()[fin])
    assert np.all(err <= 4 * u * (m[fin] + 2)), err
    # weights: a few ulp, and entries below the smallest normal (of the total) may be 0
    assert np.all(
        np.abs(w.astype(np.float64) - want_w.numpy()) <= 8 * u * want_w.numpy() + TINY[dtype]
    )
    assert not np.any((w != 0) & (np.abs(w) < TINY[dtype])), "a subnormal weight"
    assert np.all(w[np.isneginf(lw)] == 0) and np.all(w[:, 3] == 0)
    np.testing.assert_array_equal(w[:, 1], np.full(7, 1 / 7, dtype))  # ties
    # in place gives the same
    lw2 = lw.copy()
    b2, w2 = importance_weights(lw2, lw2)
    np.testing.assert_array_equal(b2, bound)
    np.testing.assert_array_equal(w2, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_importance_weights_documented_inf_and_nan(dtype):
    from kernels.importance_weights import importance_weights

    lw = np.array([[np.inf, 0.0], [1.0, np.nan], [2.0, 1.0]], dtype)
    bound, w = importance_weights(lw.copy())
    assert bound[0] == np.inf and np.isnan(w[0, 0]) and np.all(w[1:, 0] == 0)
    assert np.isnan(bound[1]) and np.all(np.isnan(w[:, 1]))


def _logits_grid(dtype, n, d, seed=0):
    """Logits (n, d) mixing 0, +-tiny, moderate, +-20, +-100, +-700, +-1e4, +-1e30 (1e300)."""
    big = 1e30 if dtype == np.float32 else 1e300
    vals = np.array([0.0, 1e-30, -1e-30, 0.7, -3.0, 20.0, -20.0, 100.0, -100.0, 700.0, -700.0,
                     -760.0, 1e4, -1e4, big, -big, -88.0, -90.0, 17.0, -17.0])  # fmt: skip
    rng = np.random.default_rng(seed)
    return rng.choice(vals, size=(n, d)).astype(dtype)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_loglik_extremes(dtype, with_bias):
    from kernels.bernoulli_loglik import bernoulli_loglik

    S, B, Dd = 3, 5, 13
    logits = _logits_grid(dtype, S * B, Dd)
    x = (np.random.default_rng(1).random((B, Dd)) < 0.5).astype(dtype)
    bias = None
    if with_bias:
        bias = np.random.default_rng(2).choice([0.0, 1.5, -50.0, 30.0], Dd).astype(dtype)
        if dtype == np.float32:
            bias[0] = 1e30  # with a 1e30 logit: 2e30, with -1e30: exactly 0
    ll, grad = bernoulli_loglik(logits, x, np.empty_like(logits), bias=bias)
    ll_only, none = bernoulli_loglik(logits, x, bias=bias)
    assert none is None
    np.testing.assert_array_equal(ll_only, ll)
    lt = tensor64(logits if bias is None else logits + bias)  # the bias added in the data dtype
    lt.requires_grad_(True)
    xt = tensor64(np.tile(x, (S, 1)))
    terms = xt * lt - softplus(lt)
    want = terms.sum(1)
    (want_g,) = torch.autograd.grad(want.sum(), lt)
    u = ULP[dtype]
    err = np.abs(ll.astype(np.float64) - want.detach().numpy())
    assert np.all(err <= 4 * Dd * u * terms.detach().abs().sum(1).numpy() + TINY[dtype]), err
    assert np.all(np.abs(grad.astype(np.float64) - want_g.numpy()) <= 4 * u + TINY[dtype])
    assert not np.any((grad != 0) & (np.abs(grad) < TINY[dtype])), "a subnormal gradient"
    # exact where documented: x = 1, l = -1e4 gives -1e4; x = 0, l = -1e4 gives 0
    one = np.array([[-1e4, -1e4]], dtype)
    ll1, _ = bernoulli_loglik(one, np.array([[1.0, 0.0]], dtype))
    assert ll1[0] == -1e4


def _rows_softmax(a):
    return torch.softmax(a, -1)


def _within(got, want, lim, what):
    """|got - want| <= lim entrywise (NaN fails), with a short report of the worst entry."""
    got = np.asarray(got, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        err = np.where(got == want, 0.0, np.abs(got - want))
    bad = ~(err <= lim)
    if bad.any():
        i = np.unravel_index(
            np.argmax(np.where(bad, np.nan_to_num(err / np.maximum(lim, 1e-300), nan=np.inf), -1)),
            err.shape,
        )
        raise AssertionError(
            f"{what}: {bad.sum()} entries off; at {i} got {got[i]!r}, want {want[i]!r}, limit {np.broadcast_to(lim, err.shape)[i]!r}"
        )


@pytest.mark.parametrize("tau", [1e-8, 0.05, 1.0, 1e3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_softmax_and_backward_extremes(dtype, tau):
    from kernels.gumbel_softmax import gumbel_softmax, gumbel_softmax_backward
    from kernels.philox import gumbel_ref

    N, C = 7, 5
    big = 1e4
    logits = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # ties before the noise
            [big, -big, 0.0, big, -big],
            [NINF, 1.0, NINF, NINF, NINF],  # one category left
            [NINF, 2.0, -3.0, NINF, 0.5],
            [1e-30, -1e-30, 50.0, -50.0, 0.0],
            [-big, -big, -big, -big, -big],
            [3.0, 2.9, -700.0, 700.0, 699.0],
        ],
        dtype,
    )
    seed, stream, offset = 12345, 3, 17
    y = gumbel_softmax(logits, tau, seed, stream, offset)
    g = gumbel_ref(seed, stream, N * C, dtype, offset).reshape(N, C)
    s = (logits + g).astype(dtype)  # the kernel's s, in the dtype
    a = tensor64(s) / tau
    a.requires_grad_(True)
    want = _rows_softmax(a)
    u = ULP[dtype]
    # the shift (s - max s) / tau is rounded: relative u of |s - max s| / tau in the exponent
    # and the fused Gumbels are gumbel_ref's to a few ulp: u |s| / tau in the exponent too
    size = (tensor64(np.abs(s)) + tensor64(np.abs(g))).amax(-1, keepdim=True) / tau
    e = 8 * u * (1 + (a - a.max(-1, keepdim=True).values).abs().detach() + 2 * size)
    lim = torch.nan_to_num(want.detach() * torch.expm1(e), nan=0.0).numpy() + 4 * u + TINY[dtype]
    _within(y, want.detach().numpy(), lim, "y")
    assert np.all(y[np.isneginf(logits)] == 0)
    dy = np.random.default_rng(5).standard_normal((N, C)).astype(dtype)
    (da,) = torch.autograd.grad((want * tensor64(dy)).sum(), a)
    want_dl = da / tau  # d/dlogits = d/da / tau
    ad = a.detach()
    sup = torch.isfinite(ad)  # masked categories (y = 0, v = 0) contribute nothing
    want_dtau = float(-torch.where(sup, da * ad, 0).sum() / tau)  # a = s / tau
    # the softmax argument, where the caller keeps it: a masked category's is -inf, and that
    # case has its own test below (rows without one here)
    kept = (s / dtype(tau)).astype(dtype)
    kept[~np.isfinite(kept)] = -1e30 if dtype == np.float32 else -1e300
    for arg in (None, kept):
        dl, dtau = gumbel_softmax_backward(dy, y, tau, arg)
        assert np.all(np.isfinite(dl)) and math.isfinite(dtau), (dl, dtau)
        # y's relative error (the rounded shift, above) times the VJP's terms
        rel = torch.nan_to_num(torch.expm1(e), nan=0.0) + 16 * u
        yd = want.detach()
        terms = yd * (tensor64(dy).abs() + (yd * tensor64(dy).abs()).sum(-1, keepdim=True))
        _within(dl, want_dl.numpy(), (rel * terms / tau).numpy() + TINY[dtype] / tau, "dlogits")
        sizes = torch.where(sup, rel * terms * (ad.abs() + 1), 0)
        lim = 4 * C * float(sizes.sum()) / tau
        assert abs(dtau - want_dtau) <= lim + 1e-300, (dtau, want_dtau, lim)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_softmax_backward_masked_category_with_softmax_argument(dtype, backend):
    from kernels.gumbel_softmax import gumbel_softmax, gumbel_softmax_backward
    from kernels.philox import gumbel_ref

    logits = np.array([[NINF, 1.0, 0.0]], dtype)
    y = gumbel_softmax(logits, 1.0, 1, 0, 0)
    a = (logits + gumbel_ref(1, 0, 3, dtype)).astype(dtype)  # (logits + g) / tau, tau = 1
    dy = np.array([[2.0, 1.0, 0.5]], dtype)
    at = tensor64(a).requires_grad_(True)
    (da,) = torch.autograd.grad((torch.softmax(at, -1) * tensor64(dy)).sum(), at)
    want = float(-torch.where(torch.isfinite(at), da * at.detach(), 0).sum())
    _, dtau = gumbel_softmax_backward(dy, y, 1.0, a, backend=backend)
    assert abs(dtau - want) <= 1e-5 * (1 + abs(want)), (dtau, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_sample_and_backward_extremes(dtype):
    from kernels.reparam_sample import reparam_sample, reparam_sample_backward

    K, B, Zl = 5, 3, 7
    seed, stream, offset = 2**63 + 11, 2, 5
    mu = np.array([[0.0, 1e4, -1e4, 1e-30, 3.0, -2.0, 0.5]] * B, dtype)
    lv_hi = 80.0 if dtype == np.float32 else 600.0  # z^2 near 1e35 / 1e260: no overflow
    logvar = np.array(
        [[-30.0, 20.0, -80.0, 0.0, lv_hi, -1e-30, 5.0],
         [20.0, -30.0, 0.0, lv_hi, -80.0, 1.0, -5.0],
         [0.0] * Zl],
        dtype,
    )  # fmt: skip
    z, log_q, log_p = reparam_sample(mu, logvar, K, seed, stream, offset)
    eps = tensor64(normal_ref(seed, stream, K * B * Zl, dtype, offset).reshape(K, B, Zl))
    mt, lt = tensor64(mu).requires_grad_(True), tensor64(logvar).requires_grad_(True)
    zt = mt + torch.exp(0.5 * lt) * eps
    lq = (-0.5 * (LOG_2PI + lt + eps**2)).sum(-1)
    lp = (-0.5 * (LOG_2PI + zt**2)).sum(-1)
    u = ULP[dtype]
    sig_eps = (torch.exp(0.5 * lt) * eps).abs().detach()
    # eps to <= 3 ulp (the kernel's Box-Muller), exp to 1 ulp, one add
    _within(z, zt.detach().numpy(), (8 * u * (mt.detach().abs() + sig_eps)).numpy(), "z")
    size_q = (0.5 * (LOG_2PI + lt.abs() + eps**2)).sum(-1).detach()
    _within(log_q, lq.detach().numpy(), (4 * Zl * u * size_q).numpy(), "log_q")
    size_p = (0.5 * (LOG_2PI + zt**2)).sum(-1).detach()
    _within(log_p, lp.detach().numpy(), (20 * Zl * u * size_p).numpy(), "log_p")
    rng = np.random.default_rng(3)
    dz = rng.standard_normal((K, B, Zl)).astype(dtype)
    dq = rng.standard_normal((K, B)).astype(dtype)
    dp = (1e-8 * rng.standard_normal((K, B))).astype(dtype)  # z^2 reaches 1e65: keep it finite
    L = (tensor64(dz) * zt).sum() + (tensor64(dq) * lq).sum() + (tensor64(dp) * lp).sum()
    gmu, glv = torch.autograd.grad(L, (mt, lt), retain_graph=True)
    dmu, dlogvar = reparam_sample_backward(dz, dq, dp, mu, logvar, seed, stream, offset)
    # the size of each sum's terms: |dz| + |dlog_p z|, times sigma eps / 2 for logvar
    g_size = (tensor64(dz).abs() + tensor64(dp).abs()[..., None] * zt.detach().abs()).detach()
    _within(dmu, gmu.numpy(), (16 * u * g_size.sum(0)).numpy(), "dmu")
    lv_size = (g_size * sig_eps).sum(0) + tensor64(dq).abs().sum(0)[:, None]
    _within(dlogvar, glv.numpy(), (16 * u * lv_size).numpy(), "dlogvar")
    # None upstream gradients read as zeros
    (gmu, glv) = torch.autograd.grad((tensor64(dz) * zt).sum(), (mt, lt))
    dmu, dlogvar = reparam_sample_backward(dz, None, None, mu, logvar, seed, stream, offset)
    _within(dmu, gmu.numpy(), (16 * u * tensor64(dz).abs().sum(0)).numpy(), "dmu (dz only)")
    lim = (16 * u * (tensor64(dz).abs() * sig_eps).sum(0)).numpy()
    _within(dlogvar, glv.numpy(), lim, "dlogvar (dz only)")


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixture_logprob_and_backward_extremes(dtype):
    from kernels.mixture_logprob import mixture_logprob, mixture_logprob_backward

    N, Zl = 5, 3
    rng = np.random.default_rng(7)
    z = np.array([[0.0, 0.0, 0.0], [1e3, -1e3, 0.5], [1e-30, 2.0, -2.0], [30.0, 30.0, 30.0],
                  [-5.0, 1e-3, 7.0]], dtype)  # fmt: skip
    mu = np.array([[0.0, 0.0, 0.0], [1e3, -1e3, 0.0], [-3.0, 2.0, 1.0], [5.0, 5.0, 5.0]], dtype)
    logvar = np.array([[-20.0, 0.0, 20.0], [0.0, -10.0, 3.0], [15.0, 15.0, -15.0],
                       [0.0, 0.0, 0.0]], dtype)  # fmt: skip
    u = ULP[dtype]
    for lw in (
        np.log(np.array([0.1, 0.2, 0.3, 0.4])),
        np.array([NINF, math.log(0.5), NINF, math.log(0.5)]),  # components switched off
        np.array([0.0, NINF, NINF, NINF]),
    ):
        lw = lw.astype(dtype)
        log_p, resp = mixture_logprob(z, mu, logvar, lw)
        zt, mt, vt = (tensor64(a).requires_grad_(True) for a in (z, mu, logvar))
        wt = tensor64(lw).requires_grad_(True)
        d = zt[:, None, :] - mt[None]
        q = d**2 * torch.exp(-vt) + vt + LOG_2PI  # (N, C, Z)
        a = wt - 0.5 * q.sum(-1)
        want = torch.logsumexp(a, -1)
        size = torch.where(torch.isfinite(a), wt.abs() + 0.5 * q.abs().sum(-1), 0).detach()
        top = size.gather(1, a.detach().argmax(1, keepdim=True))[:, 0]
        _within(log_p, want.detach().numpy(), (8 * Zl * u * (top + 1)).numpy(), "log_p")
        want_r = torch.nan_to_num(torch.softmax(a, -1), nan=0.0).detach()
        rel = 8 * Zl * u * (size + top[:, None] + 1)
        lim_r = torch.nan_to_num(want_r * torch.expm1(rel), nan=0.0).numpy()
        _within(resp, want_r.numpy(), lim_r + TINY[dtype], "resp")
        assert np.all(resp[:, np.isneginf(lw)] == 0)
        dlp = rng.standard_normal(N).astype(dtype)
        grads = torch.autograd.grad(
            (tensor64(dlp) * want).sum(), (zt, mt, vt, wt), allow_unused=True
        )
        got = mixture_logprob_backward(dlp, z, mu, logvar, resp)
        g = tensor64(dlp).abs()[:, None] * want_r  # (N, C)
        iv = torch.exp(-tensor64(logvar))
        dsz = (g[..., None] * (d.detach().abs() * iv)) * (1 + rel[..., None])
        limits = (
            (16 * u * dsz.sum(1) + dsz.sum(1) * rel.amax()).numpy(),
            (16 * u * dsz.sum(0) + dsz.sum(0) * rel.amax()).numpy(),
            (16 * u + rel.amax()).item()
            * (0.5 * g[..., None] * (d.detach() ** 2 * iv + 1)).sum(0).numpy(),
            (16 * u + rel.amax()).item() * g.sum(0).numpy(),
        )
        for what, gg, ww, lim in zip(("dz", "dmu", "dlogvar", "dlog_weights"), got, grads, limits):
            ww = (
                torch.zeros(gg.shape, dtype=torch.float64)
                if ww is None
                else torch.nan_to_num(ww, nan=0.0)
            )
            _within(gg, ww.numpy(), lim + TINY[dtype], what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_iaf_gate_and_backward_extremes(dtype):
    from kernels.iaf_gate import iaf_gate, iaf_gate_backward

    N, Zl = 4, 5
    rng = np.random.default_rng(9)
    y = np.empty((N, 2, Zl), dtype)
    y[:, 0] = rng.choice([0.0, 1e4, -1e4, 1e-30, 2.0], (N, Zl))
    y[:, 1] = np.array([[-200.0, -100.0, -50.0, -20.0, 0.0], [200.0, 100.0, 50.0, 20.0, 1e-30],
                        [-88.0, -90.0, -104.0, 16.0, 17.0], [-1e4, 1e4, -745.0, 37.0, -37.0]])  # fmt: skip
    z = rng.choice([0.0, 1e4, -3.0, 1e-30], (N, Zl)).astype(dtype)
    fb = 1.5
    z_new, s, oms, logdet = iaf_gate(y, z, fb)
    yt, zt = tensor64(y).requires_grad_(True), tensor64(z).requires_grad_(True)
    t = yt[:, 1] + fb
    # s and 1 - s through log-sigmoid: autograd's sigmoid backward, s (1 - s), loses 1 - s
    # where s rounds to 1
    ls, loms = torch.nn.functional.logsigmoid(t), torch.nn.functional.logsigmoid(-t)
    st, omst = torch.exp(ls), torch.exp(loms)
    zn = st * zt + omst * yt[:, 0]
    ld = torch.nn.functional.logsigmoid(t).sum(-1)
    u = ULP[dtype]
    for what, got, want in (("s", s, st), ("oms", oms, omst)):
        _within(got, want.detach().numpy(), 4 * u * want.detach().numpy() + TINY[dtype], what)
    size = (st * zt.abs() + omst * yt[:, 0].abs()).detach()
    _within(z_new, zn.detach().numpy(), (8 * u * size).numpy() + TINY[dtype], "z_new")
    lsize = torch.nn.functional.logsigmoid(t).abs().sum(-1).detach()
    _within(logdet, ld.detach().numpy(), (4 * Zl * u * (lsize + 1)).numpy(), "logdet")
    dzn = rng.standard_normal((N, Zl)).astype(dtype)
    dld = rng.standard_normal(N).astype(dtype)
    gy, gz = torch.autograd.grad((tensor64(dzn) * zn).sum() + (tensor64(dld) * ld).sum(), (yt, zt))
    dy, dz = iaf_gate_backward(dzn, dld, y, z, s, oms)
    gd = tensor64(dzn).abs()
    lim_m = 8 * u * (gd * omst).detach() + TINY[dtype]
    _within(dy[:, 0], gy[:, 0].numpy(), lim_m.numpy(), "dm")
    lim_s = (
        8
        * u
        * (gd * (zt - yt[:, 0]).abs() * st * omst + tensor64(dld).abs()[:, None] * omst).detach()
    )
    _within(
        dy[:, 1],
        gy[:, 1].numpy(),
        lim_s.numpy() + TINY[dtype] * (1 + gd * (zt - yt[:, 0]).abs().detach()).numpy(),
        "ds_raw",
    )
    _within(dz, gz.numpy(), (8 * u * gd * st).detach().numpy() + TINY[dtype], "dz")


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "softplus"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_and_backward_extremes(dtype, act):
    from kernels.bias_act import bias_act, bias_act_backward

    N, O = 9, 20
    a = _logits_grid(dtype, N, O, seed=4)
    b = np.random.default_rng(5).choice([0.0, 1e-30, -0.5, 3.0], O).astype(dtype)
    y = bias_act(a, b, act)
    v = tensor64((a + b).astype(dtype)).requires_grad_(True)  # the add in the dtype
    f = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "softplus": softplus}
    want = f[act](v)
    u = ULP[dtype]
    wd = want.detach().numpy()
    _within(y, wd, 8 * u * np.abs(wd) + TINY[dtype], "y")  # tanh: 6 ulp documented
    assert not np.any((y != 0) & (np.abs(y) < TINY[dtype])), "a subnormal output"
    rng = np.random.default_rng(6)
    dy = rng.standard_normal((N, O)).astype(dtype)
    scale = rng.choice([1.0, 1e-20, 1e20, 0.0], N).astype(dtype)
    da, db = bias_act_backward(dy, y, act, scale)
    # the reference derivative at the kernel's own y, as documented (f' as a function of y)
    yt = tensor64(y)
    fp = {
        "tanh": 1 - yt**2,
        "relu": (yt > 0).double(),
        "sigmoid": yt * (1 - yt),
        "softplus": -torch.expm1(-yt),
    }[act]
    want_da = tensor64(scale)[:, None] * tensor64(dy) * fp
    # f'(y) in the dtype: 1 - y^2 and y - y^2 round relative to 1 and to y
    size = tensor64(scale).abs()[:, None] * tensor64(dy).abs() * {
        "tanh": 1 + yt**2, "relu": fp, "sigmoid": yt.abs(), "softplus": fp,
    }[act]  # fmt: skip
    _within(da, want_da.numpy(), (8 * u * size).numpy() + TINY[dtype], "da")
    _within(db, want_da.sum(0).numpy(), 8 * u * size.sum(0).numpy() + TINY[dtype], "db")
    # and against the true derivative at the pre-activation, where y carries it
    (g,) = torch.autograd.grad((want * tensor64(dy)).sum(), v)
    g = tensor64(scale)[:, None] * g
    ok = np.isfinite(g.numpy())
    vv = v.detach().numpy()
    if act == "softplus":
        ok &= vv > -80  # below, sigmoid(v) is flushed to 0 (documented)
    if act in ("tanh", "sigmoid"):  # y rounds to +-1 beyond (f' from y: documented)
        ok &= (np.abs(vv) < 5) if act == "tanh" else (np.abs(vv) < 15)
    # y's few-ulp error moves 1 - y^2 (y - y^2) by about u y^2 (u y) of |s dy|
    lim = 64 * u * (np.abs(g.numpy()) + size.numpy()) + TINY[dtype]
    _within(da[ok], g.numpy()[ok], lim[ok], "da vs autograd")
