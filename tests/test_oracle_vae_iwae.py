"""The VAE's and the IWAE's losses and gradients against PyTorch autograd.

Each test builds a small float64 model, moves every parameter array away from its
initialisation with seeded noise (so the biases are non-zero too) and draws the step's noise
as an array, ``eps = model.draw_noise(numpy.random.default_rng(seed), B)``: the readable path
of ``forward``. The same parameters (as leaf tensors) and the same eps go into a computation
written here in torch from the documented math, with no lvmcore function in it:

    mu, logvar = encoder MLP(x)                  (B, Z) each, the first and last Z outputs
    z = mu + exp(logvar / 2) eps                 (S, B, Z)
    log p(x|z)   Bernoulli on the decoder's logits, or Gaussian (learned or fixed variance)
    log p(z), log q(z|x)                         standard and diagonal normal densities

VAE: ``-mean log p(x|z) + w sum_j max(free_bits, mean_B KL_j)`` with the analytic or the
sampled KL per dimension, w the ``kl_weight`` or ``beta``. IWAE: ``-mean_B bound(log w)`` for
the iwae, miwae, ciwae and piwae objectives, with the gradient of the estimator the model
documents: plain (the total derivative at fixed noise; PIWAE: L_MK for the decoder, MIWAE for
the encoder), STL (log q with the posterior's parameters detached) and DReG (Tucker et al.
2019: the encoder surrogate sum_s b_s log w_s with log q's parameters detached and b_s the
objective's weights with w~ replaced by w~^2; the decoder's gradient is the plain one).

The loss is compared to rtol 1e-10 and every gradient array to rtol 1e-8, atol 1e-10.

The methods that take a generator instead of noise run the fused sampling kernel on the
noise ``draw_noise`` would draw from a generator in the same state (the model docstrings'
replay rule): a training step ``loss_and_grads`` (one draw; its loss and gradients are
checked as above) and the evaluations ``VAE.elbo``, ``IWAE.bound`` and ``IWAE.elbo`` (one
draw per evaluation batch; per-row values). The tests replay that noise with ``draw_noise``
on a fresh generator of the same seed. ``log_weights`` takes the array directly.
"""

import numpy as np
import pytest
from oracle_torch import (
    LOG_2PI,
    LOSS_RTOL,
    autograd_grads,
    bernoulli_loglik,
    bounds,
    check_loss_and_grads,
    decoder_logvar,
    forward_backward,
    iwae_reference,
    leaves,
    log_normal,
    mlp,
    one_torch_thread,  # noqa: F401  (autouse)
    perturb,
)

from lvmcore.models import IWAE, VAE

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.oracle

D, Z, B = 12, 3, 4


# ---------------------------------------------------------------- setup


def _data(likelihood, seed, n=B):
    rng = np.random.default_rng(seed)
    if likelihood == "bernoulli":
        return (rng.random((n, D)) < 0.4).astype(np.float64)
    return rng.standard_normal((n, D))


# ---------------------------------------------------------------- the torch side


def _terms(P, x, eps, spec, detach_q=False):
    """Per-sample terms (S, B) and the posterior moments, from the math.

    ``spec``: hidden, activation, likelihood, decoder_variance. ``detach_q``: log q(z|x) with
    mu and logvar detached (z keeps its path to them)."""
    x = torch.as_tensor(x)
    eps = torch.as_tensor(eps)
    S = eps.shape[0]
    h = mlp(P, "encoder", x, spec["activation"])
    mu, logvar = h[:, :Z], h[:, Z:]
    z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, Z)
    out = mlp(P, "decoder", z.reshape(S * x.shape[0], Z), spec["activation"])
    out = out.reshape(S, x.shape[0], D)
    if spec["likelihood"] == "bernoulli":
        log_px = bernoulli_loglik(out, x)
    else:
        v = decoder_logvar(P, spec.get("decoder_variance", "learned"), D)
        log_px = log_normal(x, out, v)
    mq, lq = (mu.detach(), logvar.detach()) if detach_q else (mu, logvar)
    log_pz_dim = -0.5 * (z**2 + LOG_2PI)  # (S, B, Z)
    log_qz_dim = -0.5 * ((z - mq) ** 2 * torch.exp(-lq) + lq + LOG_2PI)
    return dict(
        mu=mu,
        logvar=logvar,
        log_px=log_px,
        log_pz_dim=log_pz_dim,
        log_qz_dim=log_qz_dim,
        log_w=log_px + log_pz_dim.sum(-1) - log_qz_dim.sum(-1),
    )


def _vae_kl_per_dim(t, kl):
    """(B, Z): the analytic KL to N(0, I), or the mean over L of log q - log p per unit."""
    mu, logvar = t["mu"], t["logvar"]
    if kl == "analytic":
        return 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar)
    return (t["log_qz_dim"] - t["log_pz_dim"]).mean(0)


def _torch_vae(model, spec, x, eps, kl_weight=None, dloss=1.0):
    P = leaves(model)
    t = _terms(P, x, eps, spec)
    mean_kl = _vae_kl_per_dim(t, spec["kl"]).mean(0)  # (Z,)
    fb = spec.get("free_bits", 0.0)
    if fb > 0:
        mean_kl = torch.where(mean_kl > fb, mean_kl, torch.full_like(mean_kl, fb))
    w = spec.get("beta", 1.0) if kl_weight is None else kl_weight
    loss = -t["log_px"].mean() + w * mean_kl.sum()
    return loss.item(), autograd_grads(dloss * loss, P)


def _settings(spec):
    """The objective and estimator settings of an IWAE spec, as oracle_torch takes them."""
    return {k: spec[k] for k in ("estimator", "objective", "groups", "ciwae_beta")}


def _torch_iwae(model, spec, x, eps, dloss=1.0):
    """The decoder's plain gradient of -mean_B of its bound; the encoder's by the estimator
    on log w with log q's parameters detached (``oracle_torch.iwae_reference``)."""
    P = leaves(model)
    return iwae_reference(
        P,
        _terms(P, x, eps, spec)["log_w"],
        lambda: _terms(P, x, eps, spec, detach_q=True)["log_w"],
        lambda k: k.startswith("encoder."),
        dloss=dloss,
        **_settings(spec),
    )


# ---------------------------------------------------------------- VAE

VAE_CASES = {
    "bernoulli-analytic": dict(hidden=(7,), activation="tanh", likelihood="bernoulli"),
    "bernoulli-sampled-L3": dict(
        hidden=(7, 5), activation="tanh", likelihood="bernoulli", kl="sampled", n_samples=3
    ),
    "bernoulli-analytic-L2-relu-beta": dict(
        hidden=(7, 5), activation="relu", likelihood="bernoulli", n_samples=2, beta=2.5
    ),
    "gaussian-learned-analytic-softplus": dict(
        hidden=(7,), activation="softplus", likelihood="gaussian"
    ),
    "gaussian-learned-sampled-L2-beta": dict(
        hidden=(7, 5),
        activation="tanh",
        likelihood="gaussian",
        kl="sampled",
        n_samples=2,
        beta=0.4,
    ),
    "gaussian-fixed-analytic": dict(
        hidden=(7,), activation="tanh", likelihood="gaussian", decoder_variance=0.3
    ),
    "gaussian-fixed-sampled-L3": dict(
        hidden=(7, 5),
        activation="relu",
        likelihood="gaussian",
        decoder_variance=2.0,
        kl="sampled",
        n_samples=3,
    ),
}


def _vae_spec(kw):
    spec = dict(activation="tanh", kl="analytic", n_samples=1, beta=1.0, free_bits=0.0)
    spec.update(kw)
    return spec


def _vae(spec, seed=1):
    kw = {k: v for k, v in spec.items()}
    model = VAE(D, Z, dtype=np.float64, seed=seed, **kw)
    return perturb(model, 100 + seed, 0.3)


@pytest.mark.oracle
@pytest.mark.parametrize("case", list(VAE_CASES))
def test_vae_loss_and_gradients(case):
    spec = _vae_spec(VAE_CASES[case])
    model = _vae(spec)
    x = _data(spec["likelihood"], 7)
    eps = model.draw_noise(np.random.default_rng(11), B)
    assert eps.shape == (spec["n_samples"], B, Z)
    check_loss_and_grads(*forward_backward(model, x, eps), *_torch_vae(model, spec, x, eps))


@pytest.mark.oracle
@pytest.mark.parametrize("kl", ["analytic", "sampled"])
@pytest.mark.parametrize("kl_weight", [0.0, 0.25, 1.7])
def test_vae_kl_weight_overrides_beta(kl, kl_weight):
    spec = _vae_spec(dict(hidden=(7,), likelihood="bernoulli", kl=kl, n_samples=2, beta=3.0))
    model = _vae(spec, seed=2)
    x = _data("bernoulli", 8)
    eps = model.draw_noise(np.random.default_rng(12), B)
    got = forward_backward(model, x, eps, kl_weight=kl_weight)
    check_loss_and_grads(*got, *_torch_vae(model, spec, x, eps, kl_weight=kl_weight))


@pytest.mark.oracle
@pytest.mark.parametrize("kl", ["analytic", "sampled"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_free_bits(kl, likelihood):
    """A floor between the units' batch-mean KLs: some units held at it (no gradient), some
    above it."""
    spec = _vae_spec(dict(hidden=(7,), likelihood=likelihood, kl=kl, n_samples=2, beta=1.5))
    model = _vae(spec, seed=3)
    x = _data(likelihood, 9)
    eps = model.draw_noise(np.random.default_rng(13), B)
    t = _terms(leaves(model), x, eps, spec)
    mean_kl = np.sort(_vae_kl_per_dim(t, kl).mean(0).detach().numpy())
    floor = float(0.5 * (mean_kl[0] + mean_kl[1]))  # the smallest unit below it, two above
    assert mean_kl[1] - mean_kl[0] > 1e-3 and floor > 0
    spec["free_bits"] = floor
    model = _vae(spec, seed=3)
    check_loss_and_grads(*forward_backward(model, x, eps), *_torch_vae(model, spec, x, eps))


@pytest.mark.oracle
def test_vae_dloss_scales_the_gradient():
    spec = _vae_spec(VAE_CASES["gaussian-learned-sampled-L2-beta"])
    model = _vae(spec, seed=4)
    x = _data("gaussian", 10)
    eps = model.draw_noise(np.random.default_rng(14), B)
    got = forward_backward(model, x, eps, dloss=-0.7)
    check_loss_and_grads(*got, *_torch_vae(model, spec, x, eps, dloss=-0.7))


def _vae_elbo_rows(model, spec, x, eps):
    """Per-row ELBO with beta = 1 and no free bits: mean_L log p(x|z) - KL (B,)."""
    t = _terms(leaves(model), x, eps, spec)
    kl = _vae_kl_per_dim(t, spec["kl"]).sum(1)
    return (t["log_px"].mean(0) - kl).detach().numpy()


@pytest.mark.oracle
@pytest.mark.parametrize(
    "case", ["bernoulli-sampled-L3", "gaussian-learned-sampled-L2-beta", "gaussian-fixed-analytic"]
)
@pytest.mark.parametrize("batch_size", [B, 3])
def test_vae_elbo_replayed(case, batch_size):
    """``VAE.elbo`` (the fused path, beta = 1, free bits off) on the noise ``draw_noise``
    draws from the same generator, one draw per evaluation batch."""
    spec = _vae_spec(dict(VAE_CASES[case], free_bits=0.05))
    model = _vae(spec, seed=5)
    x = _data(spec["likelihood"], 15)
    got = model.elbo(x, np.random.default_rng(21), batch_size=batch_size)
    rng = np.random.default_rng(21)
    ref = []
    for i in range(0, B, batch_size):
        xb = x[i : i + batch_size]
        ref.append(_vae_elbo_rows(model, spec, xb, model.draw_noise(rng, xb.shape[0])))
    np.testing.assert_allclose(got, np.concatenate(ref), rtol=LOSS_RTOL, atol=0)


@pytest.mark.oracle
@pytest.mark.parametrize(
    ("case", "kl_weight"),
    [
        ("bernoulli-sampled-L3", None),
        ("bernoulli-analytic-L2-relu-beta", 0.3),
        ("gaussian-learned-analytic-softplus", None),
        ("gaussian-fixed-sampled-L3", 0.6),
    ],
)
def test_vae_training_step_replayed(case, kl_weight):
    """``loss_and_grads`` (the fused sampling kernel) on the eps ``draw_noise`` draws from a
    generator in the same state."""
    spec = _vae_spec(VAE_CASES[case])
    model = _vae(spec, seed=6)
    x = _data(spec["likelihood"], 16)
    loss, _ = model.loss_and_grads(x, np.random.default_rng(22), kl_weight=kl_weight)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    eps = model.draw_noise(np.random.default_rng(22), B)
    check_loss_and_grads(loss, grads, *_torch_vae(model, spec, x, eps, kl_weight=kl_weight))


# ---------------------------------------------------------------- IWAE

OBJECTIVE_CASES = {
    "iwae": dict(objective="iwae", k=5),
    "miwae": dict(objective="miwae", k=3, groups=2),
    "ciwae": dict(objective="ciwae", k=5, ciwae_beta=0.3),
    "piwae": dict(objective="piwae", k=3, groups=2),
}


def _iwae_spec(kw):
    spec = dict(
        hidden=(7,),
        activation="tanh",
        likelihood="bernoulli",
        decoder_variance="learned",
        k=5,
        estimator="iwae",
        objective="iwae",
        groups=1,
        ciwae_beta=0.5,
    )
    spec.update(kw)
    return spec


def _iwae(spec, seed=1):
    model = IWAE(D, Z, dtype=np.float64, seed=seed, **spec)
    return perturb(model, 200 + seed, 0.3)


def _iwae_case(spec, seed, data_seed, noise_seed, dloss=1.0):
    model = _iwae(spec, seed)
    x = _data(spec["likelihood"], data_seed)
    eps = model.draw_noise(np.random.default_rng(noise_seed), B)
    assert eps.shape == (spec["k"] * spec["groups"], B, Z)
    got = forward_backward(model, x, eps, dloss=dloss)
    check_loss_and_grads(*got, *_torch_iwae(model, spec, x, eps, dloss=dloss))


@pytest.mark.oracle
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
@pytest.mark.parametrize("objective", list(OBJECTIVE_CASES))
def test_iwae_objectives_and_estimators(objective, estimator):
    spec = _iwae_spec(dict(OBJECTIVE_CASES[objective], estimator=estimator))
    _iwae_case(spec, seed=1, data_seed=30, noise_seed=31)


@pytest.mark.oracle
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(objective="iwae", hidden=(7, 5), decoder_variance="learned"),
        dict(objective="miwae", k=2, groups=3, activation="softplus", decoder_variance=0.5),
        dict(objective="ciwae", ciwae_beta=0.6, activation="relu"),
        dict(objective="piwae", k=2, groups=3, hidden=(7, 5)),
    ],
    ids=["iwae", "miwae", "ciwae", "piwae"],
)
def test_iwae_gaussian(kw, estimator):
    spec = _iwae_spec(dict(kw, likelihood="gaussian", estimator=estimator))
    _iwae_case(spec, seed=2, data_seed=32, noise_seed=33)


@pytest.mark.oracle
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(objective="iwae", k=1),
        dict(objective="ciwae", ciwae_beta=0.0),
        dict(objective="ciwae", ciwae_beta=1.0),
        dict(objective="miwae", k=1, groups=3),
        dict(objective="piwae", k=4, groups=1),
        dict(objective="piwae", k=1, groups=4),
    ],
    ids=["k1", "ciwae-beta0", "ciwae-beta1", "miwae-k1", "piwae-m1", "piwae-k1"],
)
def test_iwae_edge_settings(kw, estimator):
    spec = _iwae_spec(dict(kw, estimator=estimator, hidden=(7, 5)))
    _iwae_case(spec, seed=3, data_seed=34, noise_seed=35)


@pytest.mark.oracle
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
def test_iwae_dloss_scales_the_gradient(estimator):
    spec = _iwae_spec(dict(OBJECTIVE_CASES["piwae"], estimator=estimator))
    _iwae_case(spec, seed=4, data_seed=36, noise_seed=37, dloss=-1.3)


@pytest.mark.oracle
@pytest.mark.parametrize("objective", list(OBJECTIVE_CASES))
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_bound_elbo_and_log_weights_replayed(objective, likelihood):
    """``IWAE.bound`` (PIWAE: its decoder target L_MK) and ``IWAE.elbo`` (mean of log w) on
    the noise ``draw_noise`` draws from the same generator, per evaluation batch, and
    ``log_weights`` on an explicit eps."""
    spec = _iwae_spec(dict(OBJECTIVE_CASES[objective], likelihood=likelihood))
    model = _iwae(spec, seed=5)
    x = _data(likelihood, 40)
    P = leaves(model)
    batch_size = 3
    for method in ("bound", "elbo"):
        got = getattr(model, method)(x, np.random.default_rng(41), batch_size=batch_size)
        rng = np.random.default_rng(41)
        ref = []
        for i in range(0, B, batch_size):
            xb = x[i : i + batch_size]
            log_w = _terms(P, xb, model.draw_noise(rng, xb.shape[0]), spec)["log_w"]
            if method == "bound":
                row = bounds(log_w, spec["objective"], spec["groups"], spec["ciwae_beta"])[0]
            else:
                row = log_w.mean(0)
            ref.append(row.detach().numpy())
        np.testing.assert_allclose(got, np.concatenate(ref), rtol=LOSS_RTOL, atol=0)
    eps = model.draw_noise(np.random.default_rng(42), B)
    ref = _terms(P, x, eps, spec)["log_w"].detach().numpy()
    np.testing.assert_allclose(model.log_weights(x, eps), ref, rtol=LOSS_RTOL, atol=0)


@pytest.mark.oracle
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
@pytest.mark.parametrize("objective", list(OBJECTIVE_CASES))
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_training_step_replayed(likelihood, objective, estimator):
    """``loss_and_grads`` (the fused sampling kernel and its regenerating backward) on the eps
    ``draw_noise`` draws from a generator in the same state."""
    spec = _iwae_spec(dict(OBJECTIVE_CASES[objective], likelihood=likelihood, estimator=estimator))
    model = _iwae(spec, seed=6)
    x = _data(likelihood, 43)
    loss, stats = model.loss_and_grads(x, np.random.default_rng(44))
    grads = {k: v.copy() for k, v in model.gradients().items()}
    eps = model.draw_noise(np.random.default_rng(44), B)
    ref_loss, ref_grads = _torch_iwae(model, spec, x, eps)
    check_loss_and_grads(loss, grads, ref_loss, ref_grads)
    np.testing.assert_allclose(stats["bound"], -ref_loss, rtol=LOSS_RTOL, atol=0)
