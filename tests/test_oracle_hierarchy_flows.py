"""Hierarchical and flow-posterior models against PyTorch autograd, whole model at once.

Checked: the loss of ``forward`` and every array of ``gradients()`` after ``backward`` for

- :class:`lvmcore.models.HierarchicalVAE` and :class:`~lvmcore.models.HierarchicalIWAE`
  (two and three stochastic layers, a top layer without hidden units),
- :class:`lvmcore.models.FlowVAE` and :class:`~lvmcore.models.FlowIWAE` with the ``fullcov``,
  ``iaf`` and ``planar`` posteriors (with and without the encoder's context head),

for the ELBO (L samples, a KL weight) and for every IWAE objective (iwae, miwae, ciwae,
piwae) under the plain, STL and DReG estimators.

How: a float64 model with every parameter array moved away from its initialisation by seeded
noise (non-zero biases, a non-diagonal Cholesky factor, IAF gates away from the identity,
masked MADE entries non-zero so that the masks must be applied), binary data, and noise drawn
once with ``model.draw_noise(numpy.random.default_rng(seed), B)``. That same array eps
(S, B, Z) is replayed in torch: each stochastic layer reads its slice of the last axis (the
hierarchy's layers side by side, bottom-up), a sample is ``mu + sigma * eps`` (or
``mu + L eps``) and the flows push it on. The torch side is written from the documented math
with float64 leaf tensors copied from ``model.parameters()``; it calls nothing of lvmcore
(the MADE masks are read from the flow steps: structure, not math). Densities are computed
as densities of z (not rewritten in the noise), a flow step's log-determinant in its closed
form is checked against the log |det| of its dense autograd Jacobian, and the held-fixed
score of a flow posterior that STL and DReG need is the dense solve
:math:`J^{-\\top}\\nabla_{z_0}\\ell(z_0)`, J the Jacobian of the whole flow. STL and DReG are
the usual surrogates: the inference network's gradient is that of
:math:`\\sum_s \\mathrm{sg}(a_s)\\,\\log w_s` with log q's parameters detached (the importance
weights a_s of the objective for STL, their squared-weight form for DReG); the generative
network's gradient is the plain one.
"""

import numpy as np
import pytest
from oracle_torch import (
    act,
    autograd_grads,
    bernoulli_loglik,
    check_loss_and_grads,
    cholesky,
    detached,
    forward_backward,
    iwae_reference,
    iwae_settings,
    jacobian_rows,
    leaves,
    log_mvn_tril,
    log_normal,
    log_std_normal,
    mask_tensors,
    mlp,
    np_log_mean_exp,
    one_torch_thread,  # noqa: F401  (autouse)
    perturb,
    softplus,
)

from lvmcore.models import FlowIWAE, FlowVAE, HierarchicalIWAE, HierarchicalVAE

torch = pytest.importorskip("torch")

D, B = 10, 3


# ---------------------------------------------------------------------------- lvmcore side
def _data(seed, d=D):
    rng = np.random.default_rng(seed)
    return (rng.random((B, d)) < 0.5).astype(np.float64)


def _compare(model, loss, grads, t_loss, t_grads):
    assert set(grads) == set(model.parameters())
    check_loss_and_grads(loss, grads, t_loss, t_grads)


# ---------------------------------------------------------------------------- hierarchy
def _hier_terms(model, P, x, eps, hold_q=False):
    """(log p(x|z_1), sum_l log p_l, sum_l log q_l), each (S, B), from the module docstring of
    lvmcore.models.hvae. ``hold_q``: log q_l is evaluated with Q_l's weights detached (at the
    live samples z_l and z_{l-1})."""
    Q = detached(P, lambda k: k.startswith("q")) if hold_q else P
    activation = model.activation
    zs, log_q, a, h = [], 0.0, 0, x
    for l, Zl in enumerate(model.latent_dims):
        y = mlp(P, f"q{l + 1}", h, activation)
        mu, logvar = y[..., :Zl], y[..., Zl:]
        z = mu + torch.exp(0.5 * logvar) * eps[..., a : a + Zl]  # (S, B, Z_l)
        if hold_q:
            y = mlp(Q, f"q{l + 1}", h, activation)
            mu, logvar = y[..., :Zl], y[..., Zl:]
        log_q = log_q + log_normal(z, mu, logvar)
        zs.append(z)
        h, a = z, a + Zl
    log_p = log_std_normal(zs[-1])
    for l in reversed(range(len(zs) - 1)):
        Zl = model.latent_dims[l]
        y = mlp(P, f"p{l + 1}", zs[l + 1], activation)
        log_p = log_p + log_normal(zs[l], y[..., :Zl], y[..., Zl:])
    logits = mlp(P, "decoder", zs[0], activation)
    return bernoulli_loglik(logits, x), log_p, log_q


def _hier_inference(name):
    return name.startswith("q")


def _hier_path_log_w(model, P, x, eps):
    """log w with q's parameters held fixed in log q: its gradient with respect to the
    inference network is the path derivative of STL and DReG."""
    px, pz, qz = _hier_terms(model, P, x, eps, hold_q=True)
    return px + pz - qz


# ---------------------------------------------------------------------------- flows
def _iaf_step(step, P, pre, z, h, activation):
    """z' = s z + (1 - s) m, (m, s_raw) = MADE(z, h), s = sigmoid(s_raw + forget_bias);
    logdet = sum log s."""
    Z = step.n_latent
    n = step.n_layers
    M = mask_tensors(step)
    a = z @ (P[pre + "W0"] * M["W0"]) + P[pre + "b0"]
    if step.context_dim:
        a = a + h @ P[pre + "Wc"]  # h (B, C) broadcast over the samples
    for i in range(1, n):
        a = act(activation)(a) @ (P[pre + f"W{i}"] * M[f"W{i}"]) + P[pre + f"b{i}"]
    m, s_raw = a[..., :Z], a[..., Z:]
    g = s_raw + step.forget_bias
    s = torch.sigmoid(g)
    return s * z + (1 - s) * m, torch.nn.functional.logsigmoid(g).sum(-1)


def _planar_step(step, P, pre, z, h):
    """Rezende and Mohamed's planar step with the constraint u_hat = u + (m(wu) - wu) w/|w|^2,
    m(a) = -1 + softplus(a); logdet = log |1 + (1 - t^2) w . u_hat|."""
    Z = step.n_latent
    if step.context_dim:
        p = h @ P[pre + "Wp"] + P[pre + "bp"]  # (B, 2Z + 1)
        u, w, b = p[..., :Z], p[..., Z : 2 * Z], p[..., 2 * Z]
    else:
        u, w, b = P[pre + "u"], P[pre + "w"], P[pre + "b"][0]
    wu = (w * u).sum(-1)
    m = -1 + softplus(wu)
    u_hat = u + ((m - wu) / (w * w).sum(-1)).unsqueeze(-1) * w
    t = torch.tanh((z * w).sum(-1) + b)  # (S, B)
    z_new = z + u_hat * t.unsqueeze(-1)
    psi = (1 - t * t).unsqueeze(-1) * w
    return z_new, torch.log(torch.abs(1 + (psi * u_hat).sum(-1)))


def _flow_steps(model, P, h):
    """The flow's steps as functions z -> (z', logdet) with the parameters of P."""
    out = []
    for t, step in enumerate(model.flow.steps):
        pre = f"flow.step{t}."
        if model.posterior == "iaf":
            out.append(
                lambda z, step=step, pre=pre: _iaf_step(step, P, pre, z, h, model.activation)
            )
        else:
            out.append(lambda z, step=step, pre=pre: _planar_step(step, P, pre, z, h))
    return out


def _flow_head(model, P, x):
    Z = model.latent_dim
    head = mlp(P, "encoder", x, model.activation)
    if model.posterior == "fullcov":
        return head[:, :Z], head[:, Z:], None
    h = head[:, 2 * Z :] if model.context_dim else None
    return head[:, :Z], head[:, Z : 2 * Z], h


def _flow_terms(model, P, x, eps):
    """(log p(x|z), log p(z), log q(z|x), z), each (S, B) but z (S, B, Z), from the module
    docstring of lvmcore.models.flowvae."""
    Z = model.latent_dim
    mu, second, h = _flow_head(model, P, x)
    if model.posterior == "fullcov":
        L = cholesky(second, Z)
        z = mu + (L @ eps.unsqueeze(-1)).squeeze(-1)  # (S, B, Z)
        log_q = log_mvn_tril(z, mu, L)
    else:
        z = mu + torch.exp(0.5 * second) * eps
        log_q = log_normal(z, mu, second)
        for f in _flow_steps(model, P, h):
            z, logdet = f(z)
            log_q = log_q - logdet
    logits = mlp(P, "decoder", z, model.activation)
    return bernoulli_loglik(logits, x), log_std_normal(z), log_q, z


def _flow_log_terms(model, P, x, eps):
    return _flow_terms(model, P, x, eps)[:3]


def _flow_inference(name):
    return name.startswith(("encoder.", "flow."))


def _flow_held_score(model, P, x, eps):
    """grad_z log q(z|x) at the posterior's samples with every parameter of q held fixed
    (S, B, Z); also checks each step's closed-form log-determinant against its dense
    Jacobian."""
    Pd = detached(P)
    mu, second, h = _flow_head(model, Pd, x)
    if model.posterior == "fullcov":
        L = cholesky(second, model.latent_dim)
        z = (mu + (L @ eps.unsqueeze(-1)).squeeze(-1)).requires_grad_(True)
        return torch.autograd.grad(log_mvn_tril(z, mu, L).sum(), z)[0]
    z0 = (mu + torch.exp(0.5 * second) * eps).requires_grad_(True)
    ell, z = log_normal(z0, mu, second), z0
    for f in _flow_steps(model, Pd, h):
        zin = z.detach().requires_grad_(True)
        zout, logdet = f(zin)
        dense = torch.linalg.slogdet(jacobian_rows(zout, zin))
        assert bool((dense.sign > 0).all())
        np.testing.assert_allclose(logdet.detach().numpy(), dense.logabsdet.numpy(), rtol=1e-10)
        z, logdet = f(z)
        ell = ell - logdet
    J = jacobian_rows(z, z0)  # d z_T / d z_0, (S, B, Z, Z)
    g0 = torch.autograd.grad(ell.sum(), z0)[0]
    return torch.linalg.solve(J.transpose(-1, -2), g0.unsqueeze(-1)).squeeze(-1)


def _flow_path_log_w(model, P, x, eps):
    """A surrogate of log w whose inference-network gradient is the path derivative
    (grad_z log p(x, z) - g) . dz/dphi, g the held-fixed score of log q."""
    px, pz, _, z = _flow_terms(model, P, x, eps)
    g = _flow_held_score(model, P, x, eps)
    return px + pz - (g * z).sum(-1)


# ---------------------------------------------------------------------------- objectives
def _torch_elbo(P, terms, w):
    px, pz, qz = terms
    loss = -(px.mean() + w * (pz - qz).mean())
    return loss.item(), autograd_grads(loss, P)


def _torch_iwae(model, P, terms, path_log_w, inference):
    """loss = -mean_B bound and its gradients: the generative parameters by the plain
    gradient of the generative bound; the inference ones by the model's estimator."""
    px, pz, qz = terms
    return iwae_reference(P, px + pz - qz, path_log_w, inference, **iwae_settings(model))


# ---------------------------------------------------------------------------- configurations
H2 = ((D, 6, 3), (3, 4, 2))
H3 = ((D, 6, 3), (3, 5, 3), (3, 2))  # the top layer one affine map
ESTIMATORS = ("iwae", "stl", "dreg")
OBJECTIVES = (("iwae", 4, 1), ("miwae", 2, 2), ("ciwae", 4, 1), ("piwae", 3, 2))


def _scale(layers):
    """The perturbation of a hierarchy's parameters: smaller for three layers, whose log w
    already spread over hundreds of nats at the initialisation."""
    return 0.3 if len(layers) == 2 else 0.1


HIER_IWAE = [
    # (layers, activation, estimator, objective, k, groups)
    *[(H2, "tanh", e, o, k, m) for o, k, m in OBJECTIVES for e in ESTIMATORS],
    *[(H2, "softplus", e, "iwae", 3, 1) for e in ESTIMATORS],
    *[(H3, "tanh", e, "iwae", 3, 1) for e in ESTIMATORS],
    (H3, "relu", "stl", "ciwae", 3, 1),
    (H3, "relu", "dreg", "piwae", 2, 2),
]

FLOW_IWAE = [
    # (posterior, extra constructor arguments, estimator, objective, k, groups)
    *[(p, {}, e, "iwae", 4, 1) for p in ("fullcov", "iaf", "planar") for e in ESTIMATORS],
    ("fullcov", {}, "stl", "miwae", 2, 2),
    ("fullcov", {}, "dreg", "piwae", 3, 2),
    ("iaf", {}, "dreg", "piwae", 3, 2),
    ("iaf", {}, "stl", "ciwae", 4, 1),
    ("planar", {}, "dreg", "ciwae", 4, 1),
    ("planar", {}, "iwae", "miwae", 2, 2),
    ("iaf", dict(context_dim=0, flow_steps=3, flow_hidden=(4,)), "dreg", "iwae", 4, 1),
    ("iaf", dict(context_dim=2, flow_hidden=(5, 3)), "stl", "piwae", 2, 2),
    ("planar", dict(context_dim=0, flow_steps=3), "dreg", "iwae", 4, 1),
    ("planar", dict(context_dim=0, flow_steps=3), "iwae", "ciwae", 3, 1),
]


def _ids(cases):
    """e.g. ``N2-tanh-dreg-piwae-k3xM2`` or ``planar-context_dim0flow_steps3-dreg-iwae-k4xM1``."""
    out = []
    for first, second, estimator, objective, k, groups in cases:
        a = first if isinstance(first, str) else f"N{len(first)}"
        b = second if isinstance(second, str) else "".join(f"{n}{v}" for n, v in second.items())
        out.append("-".join(filter(None, (a, b, estimator, objective, f"k{k}xM{groups}"))))
    return out


# ---------------------------------------------------------------------------- tests
@pytest.mark.oracle
@pytest.mark.parametrize(
    "layers, activation, n_samples, beta, kl_weight",
    [
        (H2, "tanh", 2, 1.0, None),
        (H2, "tanh", 1, 0.6, None),
        (H3, "softplus", 2, 1.0, 0.3),
        (H3, "relu", 3, 0.8, None),
    ],
)
def test_hierarchical_vae_matches_torch(layers, activation, n_samples, beta, kl_weight):
    model = HierarchicalVAE(
        D,
        layers=layers,
        activation=activation,
        n_samples=n_samples,
        beta=beta,
        seed=3,
        dtype=np.float64,
    )
    perturb(model, 11, _scale(layers), sort=True)
    x = _data(5)
    eps = model.draw_noise(np.random.default_rng(7), B)
    assert eps.shape == (n_samples, B, sum(s[-1] for s in layers))
    loss, grads = forward_backward(model, x, eps, kl_weight=kl_weight)
    P = leaves(model)
    xt, et = torch.from_numpy(x), torch.from_numpy(eps)
    w = beta if kl_weight is None else kl_weight
    t_loss, t_grads = _torch_elbo(P, _hier_terms(model, P, xt, et), w)
    _compare(model, loss, grads, t_loss, t_grads)


@pytest.mark.oracle
@pytest.mark.parametrize(
    "layers, activation, estimator, objective, k, groups", HIER_IWAE, ids=_ids(HIER_IWAE)
)
def test_hierarchical_iwae_matches_torch(layers, activation, estimator, objective, k, groups):
    model = HierarchicalIWAE(
        D,
        layers=layers,
        activation=activation,
        k=k,
        estimator=estimator,
        objective=objective,
        groups=groups,
        ciwae_beta=0.3,
        seed=4,
        dtype=np.float64,
    )
    perturb(model, 12, _scale(layers), sort=True)
    x = _data(6)
    eps = model.draw_noise(np.random.default_rng(8), B)
    assert eps.shape == (k * groups, B, sum(s[-1] for s in layers))
    loss, grads = forward_backward(model, x, eps)
    P = leaves(model)
    xt, et = torch.from_numpy(x), torch.from_numpy(eps)
    t_loss, t_grads = _torch_iwae(
        model,
        P,
        _hier_terms(model, P, xt, et),
        lambda: _hier_path_log_w(model, P, xt, et),
        _hier_inference,
    )
    _compare(model, loss, grads, t_loss, t_grads)


def _flow_model(cls, posterior, extra, **kw):
    Z = 3
    args = dict(latent_dim=Z, hidden=(6,), posterior=posterior, seed=5, dtype=np.float64)
    model = cls(D, **args, **extra, **kw)
    return perturb(model, 13, 0.3, sort=True)


@pytest.mark.oracle
@pytest.mark.parametrize(
    "posterior, extra, n_samples, beta, kl_weight",
    [
        ("fullcov", {}, 2, 1.0, None),
        ("iaf", {}, 2, 0.8, None),
        ("planar", {}, 2, 1.0, 0.4),
        ("iaf", dict(context_dim=0, flow_steps=3), 1, 1.0, None),
        ("planar", dict(context_dim=0), 3, 0.5, None),
    ],
)
def test_flow_vae_matches_torch(posterior, extra, n_samples, beta, kl_weight):
    model = _flow_model(FlowVAE, posterior, extra, n_samples=n_samples, beta=beta)
    x = _data(9)
    eps = model.draw_noise(np.random.default_rng(10), B)
    assert eps.shape == (n_samples, B, model.latent_dim)
    loss, grads = forward_backward(model, x, eps, kl_weight=kl_weight)
    P = leaves(model)
    xt, et = torch.from_numpy(x), torch.from_numpy(eps)
    if posterior != "fullcov":
        _flow_held_score(model, P, xt, et)  # the log-determinants against dense ones
    w = beta if kl_weight is None else kl_weight
    t_loss, t_grads = _torch_elbo(P, _flow_terms(model, P, xt, et)[:3], w)
    _compare(model, loss, grads, t_loss, t_grads)


@pytest.mark.oracle
@pytest.mark.parametrize(
    "posterior, extra, estimator, objective, k, groups", FLOW_IWAE, ids=_ids(FLOW_IWAE)
)
def test_flow_iwae_matches_torch(posterior, extra, estimator, objective, k, groups):
    model = _flow_model(
        FlowIWAE,
        posterior,
        extra,
        k=k,
        estimator=estimator,
        objective=objective,
        groups=groups,
        ciwae_beta=0.3,
    )
    x = _data(14)
    eps = model.draw_noise(np.random.default_rng(15), B)
    assert eps.shape == (k * groups, B, model.latent_dim)
    loss, grads = forward_backward(model, x, eps)
    P = leaves(model)
    xt, et = torch.from_numpy(x), torch.from_numpy(eps)
    t_loss, t_grads = _torch_iwae(
        model,
        P,
        _flow_log_terms(model, P, xt, et),
        lambda: _flow_path_log_w(model, P, xt, et),
        _flow_inference,
    )
    _compare(model, loss, grads, t_loss, t_grads)


@pytest.mark.oracle
@pytest.mark.parametrize(
    "family, estimator",
    [("hierarchy", e) for e in ESTIMATORS] + [("fullcov", "dreg")],
)
def test_piwae_with_a_group_far_below_the_others_matches_torch(family, estimator):
    """A PIWAE group more than 709 nats below the rest of its column: its decoder weights
    underflow and the encoder-over-decoder rescale cannot carry its encoder gradient, which
    lvmcore.losses.iwae.split_bound_weights then takes directly (no overflow, no NaN)."""
    if family == "hierarchy":
        model = HierarchicalIWAE(
            D,
            layers=H3,
            activation="relu",
            k=2,
            estimator=estimator,
            objective="piwae",
            groups=2,
            seed=4,
            dtype=np.float64,
        )
        perturb(model, 12, 0.3, sort=True)
        x, eps = _data(6), model.draw_noise(np.random.default_rng(8), B)
        terms, path, inference = _hier_terms, _hier_path_log_w, _hier_inference
    else:
        model = _flow_model(
            FlowIWAE, "fullcov", {}, k=2, estimator=estimator, objective="piwae", groups=2
        )
        Z = model.latent_dim
        # a wide posterior (L's diagonal 55 times larger): log w spread over thousands of nats
        model.encoder.params["b1"][Z + np.arange(Z) * (np.arange(Z) + 3) // 2] += 4.0
        x, eps = _data(14), model.draw_noise(np.random.default_rng(15), B)
        terms, path, inference = _flow_log_terms, _flow_path_log_w, _flow_inference
    lw = model.log_weights(x, eps)
    gap = np_log_mean_exp(lw, 0) - np_log_mean_exp(lw.reshape(2, 2, B), 1)  # (groups, B)
    if not gap.max() > 720:
        pytest.fail(f"expected a group more than 720 nats below its column, got {gap.max()}")
    loss, grads = forward_backward(model, x, eps)
    P = leaves(model)
    xt, et = torch.from_numpy(x), torch.from_numpy(eps)
    t_loss, t_grads = _torch_iwae(
        model,
        P,
        terms(model, P, xt, et),
        lambda: path(model, P, xt, et),
        inference,
    )
    assert all(np.isfinite(g).all() for g in t_grads.values())
    _compare(model, loss, grads, t_loss, t_grads)
