"""VAE and IWAE with a richer posterior: full-covariance Gaussian, IAF or planar flow.

``lvmcore train --model vae --posterior iaf --flow-steps 2`` (or ``--model iwae``, or
``--posterior fullcov|planar``) builds these models: variants of the registered names
(:func:`lvmcore.models.register_variant`); ``--posterior diag`` is :class:`lvmcore.models.VAE`
and :class:`lvmcore.models.IWAE` themselves, bit for bit.

Shapes: S samples per data point, B batch, D data, H hidden, Z latent, T = Z (Z + 1) / 2,
C the context width (the IAF's h).

Forward, for fixed noise eps (S, B, Z)::

    head = encoder(x)                                          (B, Z + T) or (B, 2Z + C)
    fullcov: mu, l_raw = head                                  (B, Z), (B, T)
             z, log q = fullcov_rsample_forward(mu, l_raw, eps)
    iaf, planar: mu, logvar, h = head                          (B, Z), (B, Z), (B, C)
             z_0 = mu + exp(logvar / 2) eps, then T steps z_t = f_t(z_{t-1}; h)
             log q = log N(z_0; mu, logvar) - sum_t log |det df_t/dz_{t-1}|
    log p(z) = log N(z; 0, I)                                  (S, B)
    log p(x|z) = Bernoulli(x; decoder(z))                      (S, B)

The posterior blocks (:mod:`lvmcore.ops.fullcov`, :mod:`lvmcore.flows`) give the backward of z and
log q and, for STL and DReG, :math:`\\nabla_z \\log q(z|x)` with every parameter of q held fixed
(the flow's by a Jacobian-transpose recursion); the IAF's context h is an extra head of the
encoder, as in Kingma et al. (2016), and its gradient goes back through the encoder with mu's
and logvar's. The K-sample log-likelihood uses the same posterior as its proposal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import check_param, get_xp
from ..cli._types import int_list, positive_int
from ..flows import iaf_posterior, planar_posterior
from ..losses import bernoulli_nll_backward, bernoulli_nll_forward
from ..nn import MLP
from ..ops import sigmoid
from ..ops.fullcov import (
    fullcov_rsample_backward,
    fullcov_rsample_dlogq_dz,
    fullcov_rsample_forward,
    fullcov_tril_size,
)
from .base import Flag
from .hvae import EVAL_DRAWS, EVAL_STREAM
from .logweight import ELBOTraining, IWAETraining, LogTerms, LogWeightModel, PosteriorMeanVariance

__all__ = ["FlowVAE", "FlowIWAE", "FlowCache", "POSTERIORS"]

POSTERIORS = ("diag", "fullcov", "iaf", "planar")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class FlowCache(NamedTuple):
    """enc : the encoder's MLPCache; mu : (B, Z); z : (S, B, Z) the posterior sample; log_q :
    (S, B); post : the posterior block's cache (FullCovSampleCache or FlowPosteriorCache);
    dec : the decoder's MLPCache; lik : the likelihood's cache."""

    enc: object
    mu: object
    z: object
    log_q: object
    post: object
    dec: object
    lik: object


class _RichPosterior(LogWeightModel):
    """One stochastic layer with a full-covariance or flow posterior (module docstring).

    Parameters (shared by :class:`FlowVAE` and :class:`FlowIWAE`)
    ------------------------------------------------------------
    data_dim : int
        D.
    latent_dim : int
        Z.
    hidden : sequence of int
        The encoder's hidden widths; the decoder mirrors them.
    activation : {"tanh", "relu", "softplus"}
    likelihood : {"bernoulli"}
    posterior : {"fullcov", "iaf", "planar"}
    flow_steps : int, optional
        T >= 1 for ``iaf`` and ``planar`` (default 2); not for ``fullcov``.
    flow_hidden : sequence of int, optional
        ``iaf`` only: the hidden widths of each step's MADE, each >= Z - 1 (default (2Z, 2Z)).
    context_dim : int, optional
        ``iaf`` and ``planar``: C, the width of the encoder's context head h (default Z; 0
        gives steps without a context, planar steps with global parameters).
    seed : int
        Seeds the Glorot initialisation (encoder, flow steps, decoder, in that order).
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``encoder.*`` (last layer: ``[mu | l_raw]`` or ``[mu | logvar | h]``),
    ``flow.step<t>.*`` for a flow, ``decoder.*``. The full-covariance posterior starts
    diagonal (the weights of L's strictly lower entries at 0), as the IAF starts near the
    identity.
    """

    selectors = ("posterior",)
    graph_flags = (
        Flag(
            "--posterior",
            "posterior",
            "diag",
            "posterior: diag (a diagonal Gaussian), fullcov (a full-covariance Gaussian), iaf "
            "or planar (a diagonal Gaussian then --flow-steps flow steps)",
            dict(choices=POSTERIORS),
        ),
        Flag(
            "--flow-steps",
            "flow_steps",
            2,
            "T, flow steps of an iaf or planar posterior",
            dict(type=positive_int, metavar="T"),
        ),
        Flag(
            "--flow-hidden",
            "flow_hidden",
            None,
            "hidden widths of each IAF step's MADE (default: 2Z,2Z)",
            dict(type=int_list, metavar="H1,H2,..."),
        ),
    )

    @classmethod
    def selects(cls, settings):
        """A posterior other than ``diag`` (a flag or a config)."""
        return (settings.get("posterior") or "diag") != "diag"

    def _build(
        self,
        data_dim,
        latent_dim,
        hidden,
        activation,
        likelihood,
        posterior,
        flow_steps,
        flow_hidden,
        context_dim,
        seed,
        dtype,
        func,
    ):
        self.data_dim = check_param(
            data_dim, "data_dim", func, kind="int", low=1, low_inclusive=True
        )
        self.latent_dim = check_param(
            latent_dim, "latent_dim", func, kind="int", low=1, low_inclusive=True
        )
        self.hidden = tuple(
            check_param(h, "hidden", func, kind="int", low=1, low_inclusive=True) for h in hidden
        )
        self.activation = check_param(
            activation, "activation", func, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.likelihood = check_param(
            likelihood, "likelihood", func, kind="choice", choices=("bernoulli",)
        )
        if posterior == "diag":
            raise ValueError(
                f"{func}: expected posterior 'fullcov', 'iaf' or 'planar', got 'diag': the "
                f"diagonal posterior is lvmcore.models.VAE (or IWAE)."
            )
        self.posterior = check_param(
            posterior, "posterior", func, kind="choice", choices=POSTERIORS[1:]
        )
        self.seed = check_param(seed, "seed", func, kind="int", low=0, low_inclusive=True)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"{func}: expected dtype float32 or float64, got {self.dtype}.")
        Z, D, H = self.latent_dim, self.data_dim, self.hidden
        flow = self.posterior != "fullcov"
        for name, value, applies in (
            ("flow_steps", flow_steps, flow),
            ("flow_hidden", flow_hidden, self.posterior == "iaf"),
            ("context_dim", context_dim, flow),
        ):
            if value is not None and not applies:
                raise ValueError(
                    f"{func}: expected {name}=None with posterior={self.posterior!r} (it applies "
                    f"to {'the iaf posterior' if name == 'flow_hidden' else 'flow posteriors'}), "
                    f"got {value!r}."
                )
        self.flow_steps = self.flow_hidden = self.context_dim = None
        if flow:
            self.flow_steps = check_param(
                2 if flow_steps is None else flow_steps,
                "flow_steps",
                func,
                kind="int",
                low=1,
                low_inclusive=True,
            )
            self.context_dim = check_param(
                Z if context_dim is None else context_dim,
                "context_dim",
                func,
                kind="int",
                low=0,
                low_inclusive=True,
            )
        if self.posterior == "iaf":
            self.flow_hidden = tuple(
                check_param(h, "flow_hidden", func, kind="int", low=1, low_inclusive=True)
                for h in ((2 * Z, 2 * Z) if flow_hidden is None else flow_hidden)
            )
        self.noise_dim = Z
        head = Z + fullcov_tril_size(Z) if not flow else 2 * Z + self.context_dim
        rng = np.random.default_rng(self.seed)
        self.encoder = MLP((D, *H, head), self.activation, rng, self.dtype)
        if not flow:
            # Start as the diagonal posterior: the strictly lower entries of L begin at 0.
            # Glorot-uniform ones (about 0.3 each after the tanh layers) would add up to a row
            # norm near 0.3 sqrt(Z), a wide and strongly correlated start for every dimension
            # after the first; the gradient still reaches them from the first step.
            rows, cols = np.tril_indices(Z)
            off = Z + np.flatnonzero(rows != cols)
            self.encoder.params[f"W{self.encoder.n_layers - 1}"][:, off] = 0
        self.flow = None
        if self.posterior == "iaf":
            self.flow = iaf_posterior(
                Z,
                self.flow_steps,
                self.flow_hidden,
                rng,
                context_dim=self.context_dim,
                activation=self.activation,
                dtype=self.dtype,
            )
        elif self.posterior == "planar":
            self.flow = planar_posterior(
                Z, self.flow_steps, rng, context_dim=self.context_dim, dtype=self.dtype
            )
        self.decoder = MLP((Z, *H[::-1], D), self.activation, rng, self.dtype)

    def _graph_config(self):
        return dict(
            data_dim=self.data_dim,
            latent_dim=self.latent_dim,
            hidden=list(self.hidden),
            activation=self.activation,
            likelihood=self.likelihood,
            posterior=self.posterior,
            flow_steps=self.flow_steps,
            flow_hidden=None if self.flow_hidden is None else list(self.flow_hidden),
            context_dim=self.context_dim,
        )

    @staticmethod
    def _graph_args(args, data_dim):
        """The posterior of ``--posterior``, ``--flow-steps`` and ``--flow-hidden``."""
        p = args.posterior
        if (args.stochastic_layers or 1) > 1:
            raise ValueError(
                f"expected --stochastic-layers 1 with --posterior {p}, got "
                f"{args.stochastic_layers}: the full-covariance and flow posteriors have one "
                f"stochastic layer."
            )
        if p == "fullcov" and "flow_steps" in args.given:
            raise ValueError(
                "expected no --flow-steps with --posterior fullcov: it applies to the iaf and "
                "planar posteriors."
            )
        if p != "iaf" and "flow_hidden" in args.given:
            raise ValueError(
                f"expected no --flow-hidden with --posterior {p}: it applies to the iaf posterior."
            )
        return dict(
            latent_dim=args.latent,
            hidden=args.hidden,
            activation=args.activation,
            likelihood=args.likelihood,
            posterior=p,
            flow_steps=None if p == "fullcov" else args.flow_steps,
            flow_hidden=args.flow_hidden if p == "iaf" else None,
        )

    def modules(self):
        out = {"encoder": self.encoder}
        if self.flow is not None:
            out["flow"] = self.flow
        out["decoder"] = self.decoder
        return out

    def init_output_bias(self, x_train):
        """The decoder's output bias at the logit of the pixel means (Burda et al. 2016)."""
        self._init_output_bias_to_data_mean(x_train, self.decoder)

    # ------------------------------------------------------------------ the posterior
    def _posterior_forward(self, head, eps):
        """z (S, B, Z), log q (S, B) and the block's cache from the encoder's head (B, *)."""
        xp = get_xp(head)
        Z = self.latent_dim
        mu = xp.ascontiguousarray(head[:, :Z])  # (B, Z)
        if self.flow is None:
            l_raw = xp.ascontiguousarray(head[:, Z:])  # (B, T)
            return mu, *fullcov_rsample_forward(mu, l_raw, eps)
        logvar = xp.ascontiguousarray(head[:, Z : 2 * Z])  # (B, Z)
        h = xp.ascontiguousarray(head[:, 2 * Z :]) if self.context_dim else None  # (B, C)
        return mu, *self.flow.forward(mu, logvar, eps, h)

    # ------------------------------------------------------------------ pictures
    def sample(self, rng, n):
        """n samples: z ~ N(0, I), then the decoder's mean (n, D)."""
        z = noise.standard_normal(rng, (n, self.latent_dim), self.dtype, self._like())
        out, _ = self.decoder.forward(z)
        return sigmoid(out)

    def reconstruct(self, x):
        """The decoder's mean at the posterior's image of eps = 0 (mu for fullcov; the flow
        applied to mu otherwise), (B, D)."""
        x = self._check_x(x, f"{type(self).__name__}.reconstruct")
        head, _ = self.encoder.forward(x)
        eps = get_xp(x).zeros((1, x.shape[0], self.latent_dim), dtype=self.dtype)
        _, (z, _), _ = self._posterior_forward(head, eps)
        out, _ = self.decoder.forward(z[0])
        return sigmoid(out)

    # ------------------------------------------------------------------ the terms
    def _terms_forward(self, x, eps, need_grad=True):
        """The terms of log w for fixed noise eps (S, B, Z); see the module docstring.

        Returns
        -------
        terms : LogTerms
            Each (S, B).
        cache : FlowCache
        """
        S, B, Z = eps.shape
        head, enc = self.encoder.forward(x)  # (B, Z + T) or (B, 2Z + C)
        mu, (z, log_q), post = self._posterior_forward(head, eps)  # (S, B, Z), (S, B)
        log_pz = -0.5 * (z * z).sum(axis=-1) - z.dtype.type(Z * _HALF_LOG_2PI)  # (S, B)
        logits, dec = self.decoder.forward(z.reshape(S * B, Z))  # (S*B, D)
        # row r of the logits is scored against x[r % B]; the logits are a temporary
        nll, lik = bernoulli_nll_forward(logits, x, need_grad=need_grad, overwrite_logits=True)
        terms = LogTerms(-nll.reshape(S, B), log_pz, log_q)
        return terms, FlowCache(enc, mu, z, log_q, post, dec, lik)

    def _terms_backward(self, c, g):
        """Accumulate the parameter gradients of the terms, walking the forward in reverse.

        Parameters
        ----------
        c : FlowCache
        g : TermGrads

        Notes
        -----
        The decoder (generative weights) gives dz; the prior adds :math:`-z`; the sum enters
        the posterior multiplied by ``g.ratio``. Plain estimator: the posterior block's
        backward of (dz, dlog q = ``g.qz``), the total derivative at fixed noise. STL and
        DReG: ``g.qz`` times the block's held-fixed :math:`\\nabla_z \\log q` is added to dz
        and the block's backward runs on dz alone, so its parameters move only along the
        path of the sample. The encoder's backward takes the heads' gradients side by side.
        """
        xp = get_xp(c.z)
        S, B, Z = c.z.shape
        dlogits = bernoulli_nll_backward(-g.px.reshape(S * B), c.lik)  # nll = -log p(x|z)
        dz = self.decoder.backward(dlogits, c.dec).reshape(S, B, Z)  # (S, B, Z)
        dz -= g.pz[..., None] * c.z  # d log N(z; 0, I) / dz = -z
        dz *= g.ratio[..., None]
        if g.path:
            held = (
                fullcov_rsample_dlogq_dz(c.post)
                if self.flow is None
                else self.flow.dlogq_dz(c.post)
            )
            dz += g.qz[..., None] * held
        dlog_q = None if g.path else g.qz
        if self.flow is None:
            dmu, dl_raw = fullcov_rsample_backward((dz, dlog_q), c.post)  # (B, Z), (B, T)
            dhead = [dmu, dl_raw]
        else:
            dmu, dlogvar, dh = self.flow.backward((dz, dlog_q), c.post)  # (B, Z) x2, (B, C)
            dhead = [dmu, dlogvar] + ([dh] if self.context_dim else [])
        self.encoder.backward(xp.concatenate(dhead, axis=1), c.enc, need_dx=False)

    # ------------------------------------------------------------------ evaluation
    def eval_report(self, x, batch_size=1000):
        """Active units and the KL of the posterior's layer, for ``lvmcore eval``.

        Returns
        -------
        info : dict
            ``active_units``, ``active_units_per_layer`` (one layer), ``latent_dims``,
            ``kl_per_layer`` (nats, :math:`E_q[\\log q(z|x) - \\log p(z)]`),
            ``posterior_mean_variance`` (per unit).
        lines : list of str

        Notes
        -----
        EVAL_DRAWS samples per row from ``default_rng([seed, 0, 0, EVAL_STREAM])`` (as
        :mod:`lvmcore.models.hvae`). The posterior mean is mu for ``fullcov`` and the mean of
        the samples for a flow, whose Monte-Carlo variance is subtracted
        (:class:`lvmcore.models.logweight.PosteriorMeanVariance`).
        """
        f = f"{type(self).__name__}.eval_report"
        self._check_x(x, f)
        batch_size = check_param(batch_size, "batch_size", f, kind="int", low=1, low_inclusive=True)
        rng = np.random.default_rng([self.seed, 0, 0, EVAL_STREAM])
        acc, kl = PosteriorMeanVariance(), 0.0
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            eps = self.draw_noise(rng, xb.shape[0], EVAL_DRAWS)
            terms, c = self._terms_forward(xb, eps, need_grad=False)
            acc.add(get_xp(c.mu).broadcast_to(c.mu, c.z.shape) if self.flow is None else c.z)
            kl += float((terms.log_qz - terms.log_pz).astype(np.float64).mean(axis=0).sum())
        var = acc.value()
        active = int((var > 0.01).sum())
        kl /= max(x.shape[0], 1)
        info = dict(
            active_units=active,
            active_units_per_layer=[active],
            latent_dims=[self.latent_dim],
            kl_per_layer=[kl],
            posterior_mean_variance=[var.tolist()],
        )
        lines = [
            f"active units {active} of {self.latent_dim} ({self.posterior} posterior); KL "
            f"{kl:.2f} nats"
        ]
        return info, lines


class FlowVAE(_RichPosterior, ELBOTraining):
    """A VAE with a full-covariance or flow posterior, trained by the ELBO.

    Parameters
    ----------
    data_dim, latent_dim, hidden, activation, likelihood, posterior, flow_steps, flow_hidden,
    context_dim, seed, dtype
        See :class:`_RichPosterior`.
    n_samples : int
        L, samples per data point.
    beta : float
        Weight of log p(z) - log q(z|x) (the trainer's KL warm-up ends at it).
    """

    name = "vae"
    help = "VAE with a fullcov, iaf or planar posterior (--posterior)"
    flags = _RichPosterior.graph_flags + ELBOTraining.training_flags

    def __init__(
        self,
        data_dim,
        latent_dim=50,
        hidden=(200, 200),
        activation="tanh",
        likelihood="bernoulli",
        posterior="iaf",
        flow_steps=None,
        flow_hidden=None,
        context_dim=None,
        n_samples=1,
        beta=1.0,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "FlowVAE"
        self._init_training(n_samples, beta, f)
        self._build(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            posterior,
            flow_steps,
            flow_hidden,
            context_dim,
            seed,
            dtype,
            f,
        )


class FlowIWAE(_RichPosterior, IWAETraining):
    """An IWAE with a full-covariance or flow posterior as its proposal.

    Parameters
    ----------
    data_dim, latent_dim, hidden, activation, likelihood, posterior, flow_steps, flow_hidden,
    context_dim, seed, dtype
        See :class:`_RichPosterior`.
    k, estimator, objective, groups, ciwae_beta
        As for :class:`lvmcore.models.IWAE`; STL and DReG take the posterior block's
        held-fixed gradient.
    """

    name = "iwae"
    help = "IWAE with a fullcov, iaf or planar posterior (--posterior)"
    flags = _RichPosterior.graph_flags + IWAETraining.training_flags

    def __init__(
        self,
        data_dim,
        latent_dim=50,
        hidden=(200, 200),
        activation="tanh",
        likelihood="bernoulli",
        posterior="iaf",
        flow_steps=None,
        flow_hidden=None,
        context_dim=None,
        k=50,
        estimator="iwae",
        objective="iwae",
        groups=1,
        ciwae_beta=0.5,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "FlowIWAE"
        self._init_training(k, estimator, objective, groups, ciwae_beta, f)
        self._build(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            posterior,
            flow_steps,
            flow_hidden,
            context_dim,
            seed,
            dtype,
            f,
        )
