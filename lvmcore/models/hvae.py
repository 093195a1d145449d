"""Hierarchical VAE and IWAE: N >= 2 stochastic layers of diagonal Gaussians, backward by hand.

The IWAE paper's second architecture (Burda et al. 2016, sec. 5) is N = 2::

    q: x -784-200-200-> (z_1: 100) -100-100-> (z_2: 50)
    p: (z_2: 50) -100-100-> (z_1: 100) -200-200-784-> x        tanh, Bernoulli output

``lvmcore train --model vae --stochastic-layers 2`` trains it by the ELBO,
``lvmcore train --model iwae --stochastic-layers 2 --k 5 --estimator dreg`` by an IWAE bound;
both are variants of the registered names (:func:`lvmcore.models.register_variant`).

Shapes: S samples per data point, B batch, D data, Z_l the width of layer l (z_0 = x).

Forward, for fixed noise eps (S, B, Z_1 + ... + Z_N) split by layer::

    inference, bottom-up, l = 1..N:
        mu_l, logvar_l = Q_l(z_{l-1})                   (B, Z_1) for l = 1, else (S, B, Z_l)
        z_l = mu_l + exp(logvar_l / 2) eps_l            (S, B, Z_l)
        log q_l = log N(z_l; mu_l, logvar_l)            (S, B)
    generative, top-down:
        log p_N = log N(z_N; 0, I)                      (S, B)
        mu'_l, logvar'_l = P_l(z_{l+1})                 (S, B, Z_l),  l = N-1..1
        log p_l = log N(z_l; mu'_l, logvar'_l)          (S, B)
        log p(x|z_1) = Bernoulli(x; decoder(z_1))       (S, B)
    log w = log p(x|z_1) + sum_l log p_l - sum_l log q_l

The backward (:meth:`_Hierarchy._terms_backward`) walks the same steps in reverse: the generative
network bottom-up with the generative weights, then the inference network top-down with the
inference weights. DReG and STL for a hierarchy (Tucker et al. 2019, sec. 4: the doubly
reparameterized form holds for any reparameterizable q, here the joint q(z_1, ..., z_N | x))
need :math:`\\nabla_z \\log w` with every parameter of q held fixed. log q_l depends on z_l and,
through Q_l's input, on z_{l-1}; the first part is :math:`-\\varepsilon_l/\\sigma_l`, the second
is Q_l's input gradient of :math:`(\\partial \\log q_l/\\partial\\mu_l,
\\partial \\log q_l/\\partial\\ell_l) = (\\varepsilon_l/\\sigma_l, \\tfrac12(\\varepsilon_l^2-1))`
with Q_l's weights untouched (:func:`_layer_input_vjp`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import check_param, get_xp, to_numpy
from ..cli._types import int_list, positive_int
from ..losses import bernoulli_nll_backward, bernoulli_nll_forward
from ..nn import MLP, GaussianLayer
from ..nn.stochastic import (
    gaussian_log_prob_backward,
    gaussian_log_prob_forward,
    gaussian_rsample_backward,
    gaussian_rsample_dlogq_dz,
    gaussian_rsample_forward,
)
from ..ops import ACTIVATIONS, sigmoid
from .base import Flag
from .logweight import (
    ELBOTraining,
    IWAETraining,
    LogTerms,
    LogWeightModel,
    PosteriorMeanVariance,
)

__all__ = ["HierarchicalVAE", "HierarchicalIWAE", "HierarchyCache", "EVAL_STREAM", "EVAL_DRAWS"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# The per-layer diagnostics of eval_report draw their noise from default_rng([seed, 0, 0, 9])
# (seed: the model's), next to the streams of lvmcore.evaluate (5 to 8), with EVAL_DRAWS
# samples per row.
EVAL_STREAM, EVAL_DRAWS = 9, 32


class HierarchyCache(NamedTuple):
    """What the backward (and the per-layer diagnostics) need; lists are indexed by layer
    l = 0..N-1 (z_{l+1} in the module docstring's 1-based names).

    x : (B, D) data; q : GaussianLayerCache of each Q_l; rs : GaussianSampleCache of each
    z_l (eps_l (S, B, Z_l), std_l); z : each sample (S, B, Z_l); q_mu : each mu_l, (B, Z_1)
    then (S, B, Z_l); log_q : each log q_l (S, B); p : GaussianLayerCache of each P_l
    (l = 0..N-2); lp : each log-prob cache of p(z_l | z_{l+1}); log_p : each log p_l (S, B),
    the prior last; dec : the decoder's MLPCache; lik : the likelihood's cache.
    """

    x: object
    q: list
    rs: list
    z: list
    q_mu: list
    log_q: list
    p: list
    lp: list
    log_p: list
    dec: object
    lik: object


def _layer_input_vjp(layer, dmu, dlogvar, cache):
    """The input gradient of ``layer.backward((dmu, dlogvar), cache)``, leaving the layer's
    parameter gradients untouched (one GEMM per layer, no weight gradients).

    The held-fixed score of log q_l reaches z_{l-1} this way: it moves the sample below, never
    Q_l's weights.
    """
    xp = get_xp(dmu)
    Z = layer.n_latent
    _, act_backward = ACTIVATIONS[layer.activation]
    dh = xp.concatenate([dmu.reshape(-1, Z), dlogvar.reshape(-1, Z)], axis=1)  # (N, 2Z)
    for i in reversed(range(layer.n_layers)):
        if i < layer.n_layers - 1:
            dh = act_backward(dh, cache.mlp.activation[i])
        dh = dh @ cache.mlp.linear[i].W.T  # (N, sizes[i])
    return dh.reshape(cache.lead + (layer.n_in,))


class _Hierarchy(LogWeightModel):
    """The layers of a hierarchical model, its forward and its backward (module docstring).

    Parameters (shared by :class:`HierarchicalVAE` and :class:`HierarchicalIWAE`)
    ----------------------------------------------------------------------------
    data_dim : int
        D.
    layers : sequence of sequences of int, optional
        One per stochastic layer, bottom-up: the widths of Q_l from its input to its latent
        width, ``(I, H_1, ..., Z_l)``. The first input is D and each next input is the latent
        width below (the sizes chain). P_l and the decoder mirror them. Default: the IWAE
        paper's ``((D, 200, 200, 100), (100, 100, 100, 50))``.
    activation : {"tanh", "relu", "softplus"}
    likelihood : {"bernoulli"}
    seed : int
        Seeds the Glorot initialisation (Q_1..Q_N, then P_1..P_{N-1}, then the decoder).
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``q<l>.W<i>, q<l>.b<i>`` of Q_l (l = 1..N, the last layer's 2 Z_l outputs
    ``[mu | logvar]``), ``p<l>.*`` of P_l (l = 1..N-1) and ``decoder.*``.
    """

    selectors = ("stochastic_layers",)
    graph_flags = (
        Flag(
            "--stochastic-layers",
            "stochastic_layers",
            1,
            "stochastic layers (2: the IWAE paper's second architecture; --latent then lists "
            "one width per layer, e.g. 100,50)",
            dict(type=positive_int, metavar="N"),
        ),
        Flag(
            "--upper-hidden",
            "upper_hidden",
            None,
            "hidden widths of each stochastic layer above the first (default: half of --hidden)",
            dict(type=int_list, metavar="H1,H2,..."),
        ),
    )

    @classmethod
    def selects(cls, settings):
        """Two or more stochastic layers: ``stochastic_layers`` (a flag) or ``layers`` (a
        config)."""
        n = settings.get("stochastic_layers") or len(settings.get("layers") or ()) or 1
        return n > 1

    def _build(self, data_dim, layers, activation, likelihood, seed, dtype, func):
        self.data_dim = check_param(
            data_dim, "data_dim", func, kind="int", low=1, low_inclusive=True
        )
        self.activation = check_param(
            activation, "activation", func, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.likelihood = check_param(
            likelihood, "likelihood", func, kind="choice", choices=("bernoulli",)
        )
        self.seed = check_param(seed, "seed", func, kind="int", low=0, low_inclusive=True)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"{func}: expected dtype float32 or float64, got {self.dtype}.")
        D = self.data_dim
        if layers is None:
            layers = ((D, 200, 200, 100), (100, 100, 100, 50))
        self.layers = self._check_layers(layers, D, func)
        self.latent_dims = tuple(sizes[-1] for sizes in self.layers)
        self.noise_dim = sum(self.latent_dims)
        rng = np.random.default_rng(self.seed)
        act = self.activation
        self.q = [GaussianLayer(sizes, act, rng, self.dtype) for sizes in self.layers]
        self.p = [GaussianLayer(sizes[::-1], act, rng, self.dtype) for sizes in self.layers[1:]]
        self.decoder = MLP(self.layers[0][::-1], act, rng, self.dtype)

    @staticmethod
    def _check_layers(layers, D, func):
        try:
            layers = tuple(tuple(sizes) for sizes in layers)
        except TypeError:
            raise TypeError(
                f"{func}: expected layers to be a sequence of layer sizes such as "
                f"(({D}, 200, 200, 100), (100, 100, 100, 50)), got {layers!r}."
            ) from None
        if len(layers) < 2:
            raise ValueError(
                f"{func}: expected layers to list at least 2 stochastic layers, got "
                f"{len(layers)}. One diagonal-Gaussian layer is lvmcore.models.VAE (or IWAE)."
            )
        for l, sizes in enumerate(layers):
            for s in sizes:
                check_param(s, f"layers[{l}]", func, kind="int", low=1, low_inclusive=True)
            if len(sizes) < 2:
                raise ValueError(
                    f"{func}: expected layers[{l}] to list an input and a latent width at "
                    f"least, got {sizes}."
                )
            want = D if l == 0 else layers[l - 1][-1]
            if sizes[0] != want:
                below = "data_dim" if l == 0 else f"layers[{l - 1}][-1]"
                raise ValueError(
                    f"{func}: expected layers[{l}][0] == {below} ({want}), got {sizes[0]}: the "
                    f"layer sizes do not chain (each stochastic layer reads the sample of the "
                    f"one below, the first reads the data)."
                )
        return tuple(tuple(int(s) for s in sizes) for sizes in layers)

    def _graph_config(self):
        return dict(
            data_dim=self.data_dim,
            layers=[list(sizes) for sizes in self.layers],
            activation=self.activation,
            likelihood=self.likelihood,
        )

    @staticmethod
    def _graph_args(args, data_dim):
        """The layers of ``--stochastic-layers N``, ``--latent Z_1,...,Z_N``, ``--hidden`` (the
        first layer's) and ``--upper-hidden`` (every layer above)."""
        n = args.stochastic_layers
        if args.posterior not in (None, "diag"):
            raise ValueError(
                f"expected --posterior diag with --stochastic-layers {n}, got --posterior "
                f"{args.posterior}: the full-covariance and flow posteriors have one stochastic "
                f"layer."
            )
        if "latent" in args.given:
            widths = args.latent if isinstance(args.latent, tuple) else (args.latent,)
            if len(widths) != n:
                raise ValueError(
                    f"expected --latent to list {n} widths, one per stochastic layer (e.g. "
                    f"--latent {','.join(str(max(1, 100 >> l)) for l in range(n))}), got "
                    f"{','.join(map(str, widths))}."
                )
        else:  # the shared default, halved at each layer up
            widths = tuple(max(1, int(args.latent) >> l) for l in range(n))
        hidden = tuple(args.hidden)
        upper = args.upper_hidden
        if upper is None:
            upper = tuple(max(1, h // 2) for h in hidden)
        layers = [(data_dim, *hidden, widths[0])]
        layers += [(widths[l - 1], *upper, widths[l]) for l in range(1, n)]
        return dict(layers=layers, activation=args.activation, likelihood=args.likelihood)

    def modules(self):
        out = {f"q{l + 1}": layer for l, layer in enumerate(self.q)}
        out.update({f"p{l + 1}": layer for l, layer in enumerate(self.p)})
        out["decoder"] = self.decoder
        return out

    def init_output_bias(self, x_train):
        """The decoder's output bias at the logit of the pixel means (Burda et al. 2016)."""
        self._init_output_bias_to_data_mean(x_train, self.decoder)

    # ------------------------------------------------------------------ pictures
    def sample(self, rng, n):
        """n samples: z_N ~ N(0, I), z_l ~ p(z_l | z_{l+1}), then the decoder's mean (n, D)."""
        like = self._like()
        z = noise.standard_normal(rng, (n, self.latent_dims[-1]), self.dtype, like)
        for layer in reversed(self.p):
            (mu, logvar), _ = layer.forward(z)
            eps = noise.standard_normal(rng, mu.shape, self.dtype, like)
            z = mu + get_xp(mu).exp(0.5 * logvar) * eps
        out, _ = self.decoder.forward(z)
        return sigmoid(out)

    def reconstruct(self, x):
        """The decoder's mean at the first layer's posterior mean, (B, D)."""
        x = self._check_x(x, f"{type(self).__name__}.reconstruct")
        (mu, _), _ = self.q[0].forward(x)
        out, _ = self.decoder.forward(mu)
        return sigmoid(out)

    # ------------------------------------------------------------------ the terms
    def _terms_forward(self, x, eps, need_grad=True):
        """The terms of log w for fixed noise eps (S, B, sum Z_l); see the module docstring.

        Returns
        -------
        terms : LogTerms
            Each (S, B).
        cache : HierarchyCache
        """
        xp = get_xp(x)
        S, B, _ = eps.shape
        N = len(self.q)
        # inference, bottom-up: q(z_1 | x), q(z_2 | z_1), ...
        q, rs, zs, q_mu, log_q = [], [], [], [], []
        h, a = x, 0
        for l, layer in enumerate(self.q):
            b = a + self.latent_dims[l]
            (mu, logvar), qc = layer.forward(h)  # (B, Z_1) or (S, B, Z_l)
            e = xp.ascontiguousarray(eps[..., a:b])  # (S, B, Z_l)
            (z, lq), sc = gaussian_rsample_forward(mu, logvar, e)  # (S, B, Z_l), (S, B)
            q.append(qc), rs.append(sc), zs.append(z), q_mu.append(mu), log_q.append(lq)
            h, a = z, b
        # generative, top-down: p(z_N), p(z_{N-1} | z_N), ..., p(x | z_1)
        zN = zs[-1]
        prior = -0.5 * (zN * zN).sum(axis=-1) - zN.dtype.type(self.latent_dims[-1] * _HALF_LOG_2PI)
        p, lp, log_p = [None] * (N - 1), [None] * (N - 1), [None] * (N - 1) + [prior]
        for l in reversed(range(N - 1)):
            (mu, logvar), p[l] = self.p[l].forward(zs[l + 1])  # (S, B, Z_l)
            log_p[l], lp[l] = gaussian_log_prob_forward(zs[l], mu, logvar)  # (S, B)
        logits, dec = self.decoder.forward(zs[0].reshape(S * B, -1))  # (S*B, D)
        # row r of the logits is scored against x[r % B]; the logits are a temporary, so the
        # fused kernel writes the gradient over them
        nll, lik = bernoulli_nll_forward(logits, x, need_grad=need_grad, overwrite_logits=True)
        terms = LogTerms(-nll.reshape(S, B), sum(log_p), sum(log_q))
        return terms, HierarchyCache(x, q, rs, zs, q_mu, log_q, p, lp, log_p, dec, lik)

    def _terms_backward(self, c, g):
        """Accumulate the parameter gradients of the terms, walking the forward in reverse.

        Parameters
        ----------
        c : HierarchyCache
        g : TermGrads

        Notes
        -----
        Generative network, bottom-up (the reverse of its top-down forward), with the
        generative weights: the decoder gives dz_1; each
        :math:`\\log N(z_l; \\mu'_l, \\ell'_l)` gives dz_l and, through P_l, dz_{l+1}; the prior
        gives :math:`-z_N`. These sample gradients enter the inference network multiplied by
        ``g.ratio``.

        Inference network, top-down: at layer l, dz_l collects the generative part, the part
        that reached z_l through Q_{l+1}'s input, and (STL, DReG) the held-fixed
        :math:`-\\varepsilon_l/\\sigma_l` of log q_l; the reparameterization gives
        :math:`d\\mu_l, d\\ell_l` (plus :math:`-\\tfrac12` per unit of ``g.qz`` on
        :math:`\\ell_l` for the plain estimator: log q_l's dependence on its parameters at
        fixed noise), and Q_l's backward adds its gradients and returns dz_{l-1}. For STL
        and DReG the held-fixed dependence of log q_l on z_{l-1} is added to dz_{l-1} by
        :func:`_layer_input_vjp`, which leaves Q_l's weights alone.
        """
        N = len(self.q)
        S, B = g.px.shape
        ratio = g.ratio[..., None]  # (S, B, 1)
        # generative network, bottom-up, with the generative weights
        dlogits = bernoulli_nll_backward(-g.px.reshape(S * B), c.lik)  # nll = -log p(x|z_1)
        dz_gen = [self.decoder.backward(dlogits, c.dec).reshape(S, B, -1)] + [None] * (N - 1)
        for l in range(N - 1):
            dz_l, dmu, dlogvar = gaussian_log_prob_backward(g.pz, c.lp[l])
            dz_gen[l] = dz_gen[l] + dz_l  # (S, B, Z_l)
            dz_gen[l + 1] = self.p[l].backward((dmu, dlogvar), c.p[l])  # (S, B, Z_{l+1})
        prior = -g.pz[..., None] * c.z[-1]  # d log N(z_N; 0, I) / dz_N = -z_N
        dz_gen[-1] = prior if dz_gen[-1] is None else dz_gen[-1] + prior
        # inference network, top-down, with the inference weights
        dz_up = None  # what reached z_l through Q_{l+1}'s input
        gq = g.qz[..., None]  # (S, B, 1)
        for l in reversed(range(N)):
            dz = ratio * dz_gen[l]  # (S, B, Z_l)
            if dz_up is not None:
                dz += dz_up
            if g.path:
                dz += gq * gaussian_rsample_dlogq_dz(c.rs[l])  # -eps / std
            dmu, dlogvar = gaussian_rsample_backward((dz, None if g.path else g.qz), c.rs[l])
            dz_up = self.q[l].backward((dmu, dlogvar), c.q[l], need_dh=l > 0)
            if g.path and l > 0:
                eps, std = c.rs[l].reparam
                dz_up = dz_up + _layer_input_vjp(
                    self.q[l], gq * eps / std, 0.5 * gq * (eps * eps - 1), c.q[l]
                )

    # ------------------------------------------------------------------ evaluation
    def eval_report(self, x, batch_size=1000):
        """Active units and KL per stochastic layer, for ``lvmcore eval``.

        Returns
        -------
        info : dict
            ``active_units`` (all layers), ``active_units_per_layer``, ``latent_dims``,
            ``kl_per_layer`` (nats, :math:`E_q[\\log q_l - \\log p_l]`, summing to the KL of
            the ELBO), ``posterior_mean_variance`` (per layer, per unit).
        lines : list of str

        Notes
        -----
        EVAL_DRAWS samples per row from ``default_rng([seed, 0, 0, EVAL_STREAM])``. The
        posterior mean of layer 1 is mu_1(x); that of layer l > 1 is estimated by the mean of
        mu_l(z_{l-1}) over the samples (Rao-Blackwellized), its Monte-Carlo variance
        subtracted (:class:`lvmcore.models.logweight.PosteriorMeanVariance`).
        """
        f = f"{type(self).__name__}.eval_report"
        self._check_x(x, f)
        batch_size = check_param(batch_size, "batch_size", f, kind="int", low=1, low_inclusive=True)
        rng = np.random.default_rng([self.seed, 0, 0, EVAL_STREAM])
        N = len(self.q)
        acc = [PosteriorMeanVariance() for _ in range(N)]
        kl = np.zeros(N)
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            eps = self.draw_noise(rng, xb.shape[0], EVAL_DRAWS)
            _, c = self._terms_forward(xb, eps, need_grad=False)
            for l in range(N):
                mu = c.q_mu[l]
                acc[l].add(get_xp(mu).broadcast_to(mu, c.z[l].shape))
                kl[l] += float(to_numpy(c.log_q[l] - c.log_p[l], np.float64).mean(axis=0).sum())
        n = max(x.shape[0], 1)
        var = [a.value() for a in acc]
        active = [int((v > 0.01).sum()) for v in var]
        kl = (kl / n).tolist()
        info = dict(
            active_units=sum(active),
            active_units_per_layer=active,
            latent_dims=list(self.latent_dims),
            kl_per_layer=kl,
            posterior_mean_variance=[v.tolist() for v in var],
        )
        lines = [
            "active units per layer "
            + ", ".join(f"{a} of {z}" for a, z in zip(active, self.latent_dims))
            + "; KL per layer (nats) "
            + ", ".join(f"{v:.2f}" for v in kl)
        ]
        return info, lines


class HierarchicalVAE(_Hierarchy, ELBOTraining):
    """A VAE with N >= 2 stochastic layers, trained by the ELBO.

    Parameters
    ----------
    data_dim, layers, activation, likelihood, seed, dtype
        See :class:`_Hierarchy` (the module's layer parameters).
    n_samples : int
        L, samples per data point.
    beta : float
        Weight of log p(z) - log q(z|x) (the trainer's KL warm-up ends at it).
    """

    name = "vae"
    help = "VAE with N >= 2 stochastic layers (--stochastic-layers N)"
    flags = _Hierarchy.graph_flags + ELBOTraining.training_flags

    def __init__(
        self,
        data_dim,
        layers=None,
        activation="tanh",
        likelihood="bernoulli",
        n_samples=1,
        beta=1.0,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "HierarchicalVAE"
        self._init_training(n_samples, beta, f)
        self._build(data_dim, layers, activation, likelihood, seed, dtype, f)


class HierarchicalIWAE(_Hierarchy, IWAETraining):
    """An IWAE with N >= 2 stochastic layers.

    Parameters
    ----------
    data_dim, layers, activation, likelihood, seed, dtype
        See :class:`_Hierarchy` (the module's layer parameters).
    k, estimator, objective, groups, ciwae_beta
        As for :class:`lvmcore.models.IWAE`; DReG and STL take the hierarchy's held-fixed
        gradient (module docstring).
    """

    name = "iwae"
    help = "IWAE with N >= 2 stochastic layers (--stochastic-layers N)"
    flags = _Hierarchy.graph_flags + IWAETraining.training_flags

    def __init__(
        self,
        data_dim,
        layers=None,
        activation="tanh",
        likelihood="bernoulli",
        k=50,
        estimator="iwae",
        objective="iwae",
        groups=1,
        ciwae_beta=0.5,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "HierarchicalIWAE"
        self._init_training(k, estimator, objective, groups, ciwae_beta, f)
        self._build(data_dim, layers, activation, likelihood, seed, dtype, f)
