"""Helpers shared by the PyTorch oracle tests (tests/test_oracle_*.py).

The torch side is written from the documented math with float64 tensors and calls nothing of
lvmcore; the few lvmcore-side helpers (``perturb``, ``forward_backward``) only set parameters
and run a model's own forward and backward. Importing this module skips the importing test
module when torch is not installed.

MLP parameters are named ``<prefix>.W<i>``, ``<prefix>.b<i>`` (in, out): ``prefix`` is given
without the trailing dot everywhere here.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

LOG_2PI = math.log(2 * math.pi)
LOSS_RTOL = 1e-10
GRAD_RTOL, GRAD_ATOL = 1e-8, 1e-10


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds overhead (and contends with other work).
    Autouse in every test module that imports it; the setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- lvmcore side
def perturb(model, seed, scale, skip=(), sort=False):
    """Add ``scale`` N(0, 1) noise from ``seed`` (an int or a Generator) to every parameter
    array in place, in ``parameters()`` order (by name with ``sort``), leaving the names that
    start with ``skip``; returns the model."""
    rng = np.random.default_rng(seed)
    params = model.parameters()
    for name in sorted(params) if sort else params:
        if not name.startswith(skip):
            p = params[name]
            p += scale * rng.standard_normal(p.shape)
    return model


def forward_backward(model, x, noise, dloss=1.0, **kw):
    """lvmcore's loss and float64 copies of its gradients: forward, zero_grad, backward."""
    loss, cache = model.forward(x, noise, **kw)
    model.zero_grad()
    model.backward(cache, dloss=dloss)
    return loss, {k: np.array(v, dtype=np.float64) for k, v in model.gradients().items()}


# ---------------------------------------------------------------------------- tensors
def tensor64(a):
    """A float64 tensor of an array (sharing its memory where it is float64 already)."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def leaves(model, requires_grad=True):
    """The model's parameters as float64 leaf tensors (copies), by name."""
    return {
        k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=requires_grad)
        for k, v in model.parameters().items()
    }


def detached(P, keep=None):
    """P with the tensors whose name passes ``keep`` (all of them without it) detached."""
    return {k: v.detach() if keep is None or keep(k) else v for k, v in P.items()}


def mask_tensors(module):
    """A MADE's 0/1 masks (``module.masks``) as float64 tensors: structure, not math."""
    return {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in module.masks.items()}


def autograd_grads(out, P, names=None, zero=()):
    """d out / d P[name] for ``names`` (all of P without it) as float64 arrays: zeros for a
    parameter ``out`` does not reach and for names starting with ``zero`` (state arrays,
    constants of this loss). The graph is kept."""
    names = list(P) if names is None else list(names)
    gs = torch.autograd.grad(out, [P[k] for k in names], retain_graph=True, allow_unused=True)
    return {
        k: np.zeros(tuple(P[k].shape)) if g is None or k.startswith(zero) else g.detach().numpy()
        for k, g in zip(names, gs)
    }


# ---------------------------------------------------------------------------- comparisons
def check_grads(got, want):
    """Every gradient array of ``got`` against ``want`` (the same names), rtol 1e-8, atol
    1e-10."""
    assert set(got) == set(want)
    for name, w in want.items():
        np.testing.assert_allclose(
            got[name], w, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=f"gradient of {name}"
        )


def check_loss_and_grads(loss, grads, ref_loss, ref_grads):
    """The loss to rtol 1e-10 and every gradient array as ``check_grads``."""
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    check_grads(grads, ref_grads)


# ---------------------------------------------------------------------------- networks
def softplus(a):
    """log(1 + e^a), exact for every a (no linear branch)."""
    return torch.logaddexp(a, torch.zeros_like(a))


def act(name):
    """The activation function of that name: tanh, relu or softplus."""
    return {"tanh": torch.tanh, "relu": torch.relu, "softplus": softplus}[name]


def n_layers(P, prefix):
    """The number of affine layers ``<prefix>.W<i>`` in P."""
    return sum(1 for k in P if k.startswith(prefix + ".W") and k[len(prefix) + 2 :].isdigit())


def mlp(P, prefix, h, activation, masks=None):
    """Affine layers ``<prefix>.W<i>, b<i>`` with the activation between them (none after the
    last); ``masks`` (by ``W<i>``) multiply the weights (a MADE's)."""
    n = n_layers(P, prefix)
    f = act(activation)
    for i in range(n):
        W = P[f"{prefix}.W{i}"]
        if masks is not None:
            W = W * masks[f"W{i}"]
        h = h @ W + P[f"{prefix}.b{i}"]
        if i < n - 1:
            h = f(h)
    return h


def gaussian_head(P, prefix, h, activation):
    """(mu, logvar): the first and the second half of the MLP's last axis."""
    out = mlp(P, prefix, h, activation)
    Z = out.shape[-1] // 2
    return out[..., :Z], out[..., Z:]


# ---------------------------------------------------------------------------- densities
def log_normal(v, mu, logvar):
    """log N(v; mu, diag exp(logvar)), summed over the last axis."""
    return -0.5 * ((v - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_std_normal(z):
    """log N(z; 0, I), summed over the last axis."""
    return (-0.5 * z * z - 0.5 * LOG_2PI).sum(-1)


def bernoulli_loglik(logits, x):
    """log Bernoulli(x; sigmoid(logits)) = sum_d x_d l_d - softplus(l_d), per row."""
    return (x * logits - softplus(logits)).sum(-1)


def log_logistic(y, mean, log_scale):
    """The logistic log-density of y, summed over the last axis."""
    t = (y - mean) * torch.exp(-log_scale)
    return -(t + log_scale + 2 * softplus(-t)).sum(-1)


def decoder_logvar(P, variance, d):
    """A Gaussian decoder's log-variance: the learned ``decoder.logvar`` or log(variance)
    (d,)."""
    if variance == "learned":
        return P["decoder.logvar"]
    return torch.full((d,), math.log(variance), dtype=torch.float64)


def cholesky(l_raw, Z):
    """L (..., Z, Z) from l_raw (..., T): the row-major lower triangle, its diagonal
    exponentiated."""
    rows, cols = np.tril_indices(Z)
    L = torch.zeros(l_raw.shape[:-1] + (Z, Z), dtype=l_raw.dtype)
    L[..., rows, cols] = l_raw
    d = torch.diagonal(L, dim1=-2, dim2=-1)
    return L - torch.diag_embed(d) + torch.diag_embed(torch.exp(d))


def log_mvn_tril(z, mu, L):
    """log N(z; mu, L L^T) for z (S, B, Z), mu (B, Z), L (B, Z, Z) lower triangular."""
    Z = z.shape[-1]
    diff = (z - mu).unsqueeze(-1)  # (S, B, Z, 1)
    sol = torch.linalg.solve_triangular(L.expand(diff.shape[:-1] + (Z,)), diff, upper=False)
    logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (B,)
    return -0.5 * (sol.squeeze(-1) ** 2).sum(-1) - logdet - 0.5 * Z * LOG_2PI


def jacobian_rows(out, z):
    """d out_i / d z_j (..., Z, Z) for maps that act row by row, dense."""
    rows = [
        torch.autograd.grad(out[..., i].sum(), z, retain_graph=True)[0]
        for i in range(out.shape[-1])
    ]
    return torch.stack(rows, dim=-2)


# ---------------------------------------------------------------------------- IWAE bounds
def log_mean_exp(a, dim=0):
    """log mean_dim exp(a), in torch."""
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


def np_log_mean_exp(a, axis):
    """log mean_axis exp(a), in numpy."""
    top = a.max(axis=axis, keepdims=True)
    return np.log(np.exp(a - top).mean(axis=axis)) + top.squeeze(axis)


def _grouped_bound(lw, M):
    """MIWAE: the mean over M groups (group m: samples m K ... m K + K - 1) of each one's
    IWAE bound."""
    return log_mean_exp(lw.reshape(M, lw.shape[0] // M, -1), 1).mean(0)


def bounds(lw, objective, groups=1, ciwae_beta=0.5):
    """(the generative network's bound, the inference network's bound), each (B,), of
    losses/iwae.py's objectives from log w (S, B); PIWAE's are IWAE's and MIWAE's."""
    if objective == "iwae":
        b = log_mean_exp(lw)
        return b, b
    if objective == "miwae":
        b = _grouped_bound(lw, groups)
        return b, b
    if objective == "ciwae":
        b = ciwae_beta * lw.mean(0) + (1 - ciwae_beta) * log_mean_exp(lw)
        return b, b
    if objective == "piwae":
        return log_mean_exp(lw), _grouped_bound(lw, groups)
    raise ValueError(f"unknown objective {objective!r}")


def dreg_weights(lw, objective, groups=1, ciwae_beta=0.5):
    """Tucker et al.'s weights (S, B), held fixed: each normalised importance weight squared,
    with the objective's outer coefficients (the ELBO part of CIWAE keeps its 1/S)."""
    lw = lw.detach()
    S = lw.shape[0]
    if objective in ("miwae", "piwae"):
        wg = torch.softmax(lw.reshape(groups, S // groups, -1), dim=1)
        return (wg * wg / groups).reshape(lw.shape)
    wt = torch.softmax(lw, dim=0)
    if objective == "ciwae":
        return ciwae_beta / S + (1 - ciwae_beta) * wt * wt
    return wt * wt


def iwae_settings(model):
    """The estimator and objective settings of an IWAE-type model, for ``iwae_reference``."""
    return dict(
        estimator=model.estimator,
        objective=model.objective,
        groups=model.groups,
        ciwae_beta=model.ciwae_beta,
    )


def iwae_reference(
    P, log_w, path_log_w, inference, estimator, objective, groups=1, ciwae_beta=0.5, dloss=1.0
):
    """(loss, gradients) with loss = -mean_B of the generative bound of log w (S, B): the
    generative parameters get its plain gradient, the inference ones (names passing
    ``inference``) the estimator's: plain (the inference bound), STL (the objective's weights)
    or DReG (the squared ones), each weight times ``path_log_w()``, a log w whose log q has
    q's parameters held fixed. Every gradient is that of ``dloss`` times its target."""
    gen, enc = bounds(log_w, objective, groups, ciwae_beta)
    loss = -gen.mean()
    n = log_w.shape[1]
    gen_names = [k for k in P if not inference(k)]
    inf_names = [k for k in P if inference(k)]
    out = autograd_grads(dloss * loss, P, gen_names)
    if estimator == "iwae":
        target = -enc.mean()
    else:
        if estimator == "stl":
            a = torch.autograd.grad(enc.sum(), log_w, retain_graph=True)[0].detach()
        else:
            a = dreg_weights(log_w, objective, groups, ciwae_beta)
        target = -(a * path_log_w()).sum() / n
    out.update(autograd_grads(dloss * target, P, inf_names))
    return loss.item(), out


# ---------------------------------------------------------------------------- model twins
def mvae_twin_loss(P, parts, eps, Z, activation, w):
    """The MVAE's loss: the product of the prior expert N(0, I) and the present experts of
    each subset (both, top, bottom; precisions add, the mean is the precision-weighted mean),
    its samples z = mu + sigma eps[:, :, t], the present parts' reconstruction and the
    analytic KL with weight w."""
    experts = []
    for name, part in zip(("top", "bottom"), parts):
        h = mlp(P, f"{name}_encoder", part, activation)
        experts.append((h[:, :Z], h[:, Z:]))
    recon, kl = [], []
    for t, present in enumerate(((0, 1), (0,), (1,))):
        prec = 1.0 + sum(torch.exp(-experts[m][1]) for m in present)
        mu = sum(experts[m][0] * torch.exp(-experts[m][1]) for m in present) / prec
        logvar = -torch.log(prec)
        z = mu + torch.exp(0.5 * logvar) * eps[:, :, t]  # (L, B, Z)
        r = 0.0
        for m in present:
            logits = mlp(P, f"{('top', 'bottom')[m]}_decoder", z, activation)
            r = r + bernoulli_loglik(logits, parts[m]).mean(0)  # (B,)
        recon.append(r)
        kl.append((0.5 * (torch.exp(logvar) - 1 - logvar + mu * mu)).sum(-1))
    return -torch.stack(recon).sum(0).mean() + w * torch.stack(kl).sum(0).mean()


class PriorDecoderTorch:
    """log p(x|z), log p(z), log q(z|x) of PriorDecoderVAE / PriorDecoderIWAE from the module
    docstring of lvmcore.models.priordecoder, for a configuration ``cfg`` (the constructor's
    arguments). The model gives structure only: the MADE masks of the decoder and of each
    flow-prior step."""

    def __init__(self, model, cfg):
        self.cfg = cfg
        self.D, self.Z = cfg["data_dim"], cfg["latent_dim"]
        self.act = cfg["activation"]
        self.L = cfg.get("levels")
        self.decoder = cfg.get("decoder", "factorized")
        self.deq = cfg.get("dequantize", "none")
        self.prior = cfg.get("prior", "standard")
        self.extra = (
            self.decoder == "made" and (cfg.get("ar_dropout") or 0) > 0
        ) or self.deq != "none"
        if self.decoder == "made":
            self.dec_masks = mask_tensors(model.decoder)
        if self.prior == "flow":
            self.flow_masks = [mask_tensors(s) for s in model.prior_block.steps]

    def encoder_input(self, x):
        return x / (self.L - 1) if self.L is not None else x

    def split(self, noise):
        """(the latent noise, the extra noise of the dropout or the dequantizer or None)."""
        if self.extra:
            return noise[..., : self.Z], noise[..., self.Z :]
        return noise, None

    def encode(self, P, x):
        return gaussian_head(P, "encoder", self.encoder_input(x), self.act)

    def log_prior(self, P, z):
        Z = self.Z
        if self.prior == "standard":
            return -0.5 * (z * z).sum(-1) - 0.5 * Z * LOG_2PI
        if self.prior == "mog":
            log_w = torch.log_softmax(P["prior.logits"], 0)  # (C,)
            comp = log_normal(z[..., None, :], P["prior.mu"], P["prior.logvar"])
            return torch.logsumexp(log_w + comp, -1)
        if self.prior == "vamp":
            # the encoder at the pseudo-inputs, as they are (no rescaling)
            mu_c, lv_c = gaussian_head(P, "encoder", P["prior.u"], self.act)
            C = mu_c.shape[0]
            comp = log_normal(z[..., None, :], mu_c, lv_c)
            return torch.logsumexp(comp - math.log(C), -1)
        # flow: MAF steps in order, u = (z - m) exp(-a), logdet = -sum a
        log_p = 0.0
        for t, masks in enumerate(self.flow_masks):
            y = mlp(P, f"prior.step{t}", z, self.act, masks)
            y = y.reshape(*z.shape[:-1], 2, Z)
            m, a = y[..., 0, :], y[..., 1, :]
            z = (z - m) * torch.exp(-a)
            log_p = log_p - a.sum(-1)
        return log_p - 0.5 * (z * z).sum(-1) - 0.5 * Z * LOG_2PI

    def log_lik(self, P, x, z, extra, train=True):
        """log p(x|z) (S, B); the dequantized forms include -D log L - log q(u|x)."""
        D = self.D
        if self.decoder == "made":
            x_in = (2 * x - 1).expand(*z.shape[:-1], D)
            if train and self.extra:
                x_in = x_in * (extra >= self.cfg["ar_dropout"]).to(x.dtype)
            M = self.dec_masks
            h = x_in @ (P["decoder.W0"] * M["W0"]) + P["decoder.b0"] + z @ P["decoder.Wc"]
            f = act(self.act)
            for i in range(1, n_layers(P, "decoder")):
                h = f(h) @ (P[f"decoder.W{i}"] * M[f"W{i}"]) + P[f"decoder.b{i}"]
            return bernoulli_loglik(h, x)
        out = mlp(P, "decoder", z, self.act)
        if self.decoder == "categorical":
            logits = out.reshape(*z.shape[:-1], D, self.L)
            logp = torch.log_softmax(logits, -1)
            idx = x.long().expand(*z.shape[:-1], D)[..., None]
            return torch.gather(logp, -1, idx)[..., 0].sum(-1)
        lik = self.cfg.get("likelihood") or "bernoulli"
        if lik == "bernoulli":
            return bernoulli_loglik(out, x)
        log_q_u = 0.0
        if self.deq == "uniform":
            y = (x + extra) / self.L
        elif self.deq == "variational":
            mu_u, lv_u = gaussian_head(P, "dequantizer", x / (self.L - 1), self.act)
            s = mu_u + torch.exp(0.5 * lv_u) * extra
            u = torch.sigmoid(s)
            logsig = torch.nn.functional.logsigmoid
            log_q_u = log_normal(s, mu_u, lv_u) - (logsig(s) + logsig(-s)).sum(-1)
            y = (x + u) / self.L
        else:
            y = x
        if lik == "gaussian":
            log_py = log_normal(y, out, P["decoder.logvar"])
        else:
            log_py = log_logistic(y, out, P["decoder.log_scale"])
        log_det = -D * math.log(self.L) if self.deq != "none" else 0.0
        return log_py + log_det - log_q_u

    def terms(self, P, x, noise, q_moments_fixed=False):
        """(log p(x|z), log p(z), log q(z|x), z, mu, logvar), each term (S, B);
        ``q_moments_fixed``: log q at stop-gradient mu and logvar (z keeps its path)."""
        e, extra = self.split(noise)
        mu, logvar = self.encode(P, x)
        z = mu + torch.exp(0.5 * logvar) * e
        lq_mu, lq_lv = (mu.detach(), logvar.detach()) if q_moments_fixed else (mu, logvar)
        log_q = log_normal(z, lq_mu, lq_lv)
        return self.log_lik(P, x, z, extra), self.log_prior(P, z), log_q, z, mu, logvar
