"""Models given by their log-weight terms, trained as a VAE (the ELBO) or as an IWAE.

Shapes: S samples per data point (L for the ELBO; K, or M groups of K, for the IWAE), B batch,
D data, Z the width of one sample's noise.

A model built on this module computes, for fixed noise eps (S, B, Z), three per-sample terms

    log p(x|z)     the decoder's likelihood                                     (S, B)
    log p(z)       the prior and every generative conditional of the latents    (S, B)
    log q(z|x)     the posterior's density, flow log-determinants included      (S, B)

so that log w = log p(x|z) + log p(z) - log q(z|x), and writes the backward of those terms by
hand, given the loss's derivative with respect to each (:class:`TermGrads`). This module turns
the terms into the two training objectives, each a mixin of the model class:

:class:`ELBOTraining` (``--model vae``), with L samples and the KL weight w (``beta``, or the
trainer's warm-up)::

    loss = -mean_B mean_L [log p(x|z) + w (log p(z) - log q(z|x))]

:class:`IWAETraining` (``--model iwae``): ``loss = -mean_B bound(log w)`` for every objective of
:func:`lvmcore.losses.iwae.bound_forward` (iwae, miwae, ciwae, piwae) and the plain, STL and
DReG estimators of the inference network's gradient (Tucker et al. 2019), exactly as
:class:`lvmcore.models.IWAE` trains its diagonal posterior:

    plain: sum_s a_s  d log w_s / d phi              (the total derivative at fixed noise)
    STL:   sum_s a_s  g_s . dz_s / d phi
    DReG:  sum_s b_s  g_s . dz_s / d phi             (b_s: w~ replaced by w~^2)

with :math:`g_s = \\nabla_z \\log w(z_s)` taken with every parameter of q held fixed. A model's
backward gets the choice as ``TermGrads.path``: False, it differentiates log q totally; True,
it adds the held-fixed :math:`\\partial \\log q / \\partial z` into the gradient of the sample
(every posterior block provides it) and drops log q's direct dependence on its parameters.
The generative network's gradient is the plain one for every estimator.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import check_array, check_param, get_xp, to_numpy
from ..losses import kl_term_backward, kl_term_forward
from ..losses.iwae import OBJECTIVES, bound_forward
from .base import Model
from .iwae import ESTIMATORS, IWAE, backward_bound_weights
from .vae import VAE

__all__ = [
    "LogTerms",
    "TermGrads",
    "LogWeightModel",
    "ELBOTraining",
    "ELBOCache",
    "IWAETraining",
    "PosteriorMeanVariance",
]


class LogTerms(NamedTuple):
    """The per-sample terms of log w, each of shape (S, B)."""

    log_px_z: object
    log_pz: object
    log_qz: object

    @property
    def log_w(self):
        """log p(x|z) + log p(z) - log q(z|x), (S, B)."""
        return self.log_px_z + self.log_pz - self.log_qz


class TermGrads(NamedTuple):
    """The loss's derivatives with respect to the terms, each of shape (S, B).

    ``px`` and ``pz``: d loss / d log p(x|z) and d loss / d log p(z), for the generative
    network's parameters. ``qz``: d loss / d log q(z|x), for the inference network.
    ``ratio``: per sample, the inference network's weight of log w over the generative one;
    the gradient of a sample that the generative terms send back is multiplied by it before it
    enters the posterior (1 for the ELBO; the encoder-over-decoder weights of
    :class:`lvmcore.losses.iwae.BoundWeights` for an IWAE, finite everywhere).
    ``path``: True for STL and DReG (see the module docstring).
    ``kl``: None, or, when the ELBO takes the KL dimension by dimension
    (:class:`ELBOTraining`, analytic or under free bits), d loss / d KL_{bj} of the per-row,
    per-dimension KL, broadcastable to (B, Z); ``pz`` and ``qz`` are then zero.
    """

    px: object
    pz: object
    qz: object
    ratio: object
    path: bool
    kl: object = None


class PosteriorMeanVariance:
    """The variance over the data of :math:`E_q[z \\mid x]` per unit, from S draws per row.

    ``add(draws)`` takes draws (S, B, Z) whose expectation given x is the posterior mean: samples
    of z, a Rao-Blackwellized quantity such as :math:`\\mu_l(z_{l-1})`, or S copies of a mean
    known in closed form; ``value()`` returns the variance (Z,) in float64.

    Notes
    -----
    The variance over x of the S-sample mean overstates :math:`\\mathrm{Var}_x E[z|x]` by
    :math:`E_x \\mathrm{Var}(\\text{draw}|x) / S`; the within-row sample variance divided by S
    is subtracted (an unbiased estimate of it), so a collapsed unit (posterior = prior, variance
    1) is not counted active by the noise of the draws. A unit is active when the value exceeds
    0.01 (Burda et al. 2016, sec. 5.2; :func:`lvmcore.diagnostics.active_units`).
    """

    def __init__(self):
        self.row_means, self.within, self.n = [], 0.0, 0

    def add(self, draws):
        m = to_numpy(draws, np.float64)  # (S, B, Z)
        self.row_means.append(m.mean(axis=0))  # (B, Z)
        if m.shape[0] > 1:
            self.within = self.within + (m.var(axis=0, ddof=1) / m.shape[0]).sum(axis=0)
        self.n += m.shape[1]

    def value(self):
        means = np.concatenate(self.row_means)  # (N, Z)
        return means.var(axis=0) - self.within / max(self.n, 1)


class LogWeightModel(Model):
    """Base of the models given by their log-weight terms: noise, log-weights, checks.

    A subclass sets ``noise_dim`` (Z) and ``n_draws`` (S of a training step) and implements
    ``_terms_forward(x, noise, need_grad) -> (LogTerms, cache)`` and
    ``_terms_backward(cache, TermGrads)`` (accumulating into its gradients); the training
    mixins :class:`ELBOTraining` and :class:`IWAETraining` do the rest of the contract's
    computation. :meth:`config` and :meth:`from_args` join the graph's hooks
    (``_graph_config``, ``_graph_args``) with the training mixin's (``_training_config``,
    ``_training_args``).
    """

    has_log_likelihood = True
    has_sample = True
    has_reconstruct = True
    noise_dim: int

    @property
    def n_draws(self) -> int:
        """S, the samples per data point of a training step."""
        raise NotImplementedError(f"{type(self).__name__} does not define n_draws.")

    def draw_noise(self, rng, batch_size, n_samples=None):
        """eps (S, B, Z) on the model's device, keyed by the explicit generator ``rng``; S is
        ``n_samples`` (the model's own when None)."""
        S = self.n_draws if n_samples is None else n_samples
        return noise.standard_normal(rng, (S, batch_size, self.noise_dim), self.dtype, self._like())

    def _check_noise(self, x, eps, func):
        """Data x (B, D) and noise (S, B, Z) for its rows, in the model's dtype (the values
        are checked once where they enter: ``loss_and_grads``, ``bound``, ``elbo``, the
        evaluation; finite noise is the generator's)."""
        check_array(x, "x", func, ndim=2, shape=(None, self.data_dim), finite=False)
        check_array(eps, "noise", func, ndim=3, finite=False)
        if eps.shape[1:] != (x.shape[0], self.noise_dim):
            raise ValueError(
                f"{func}: expected noise of shape (S, {x.shape[0]}, {self.noise_dim}) (samples, "
                f"the rows of x, the noise width), got {tuple(eps.shape)}. Draw it with "
                f"draw_noise(rng, x.shape[0])."
            )
        if x.dtype != self.dtype:
            raise TypeError(
                f"{func}: expected x of the model's dtype {self.dtype}, got {x.dtype}. Cast it "
                f"with x.astype(numpy.{self.dtype})."
            )
        if eps.dtype != self.dtype:
            raise TypeError(
                f"{func}: expected noise of the model's dtype {self.dtype}, got {eps.dtype}."
            )

    def log_weights(self, x, eps):
        """log w = log p(x|z) + log p(z) - log q(z|x) for fixed noise eps (S, B, Z); (S, B)."""
        self._check_noise(x, eps, f"{type(self).__name__}.log_weights")
        terms, _ = self._terms_forward(x, eps, need_grad=False)
        return terms.log_w

    def _per_row(self, x, rng, batch_size, func, reduce):
        """``reduce(x_batch, noise)`` over batches of x, concatenated: (N,)."""
        self._check_x(x, func)
        batch_size = check_param(
            batch_size, "batch_size", func, kind="int", low=1, low_inclusive=True
        )
        xp = get_xp(x)
        out = [
            reduce(x[i : i + batch_size], self.draw_noise(rng, x[i : i + batch_size].shape[0]))
            for i in range(0, x.shape[0], batch_size)
        ]
        return xp.concatenate(out) if out else xp.zeros(0, dtype=self.dtype)

    def elbo(self, x, rng, batch_size=100):
        """Per-example ELBO (N,): the mean of log w over the model's S samples (w = 1)."""
        return self._per_row(
            x,
            rng,
            batch_size,
            f"{type(self).__name__}.elbo",
            lambda xb, eps: self.log_weights(xb, eps).mean(axis=0),
        )

    def config(self):
        """The constructor arguments, JSON-serialisable (written into checkpoints)."""
        return dict(
            model=self.name,
            **self._graph_config(),
            **self._training_config(),
            seed=self.seed,
            dtype=self.dtype.name,
        )

    @classmethod
    def from_args(cls, args, data_dim):
        """The model of ``lvmcore train --model NAME`` with the flags that select it."""
        return cls(
            data_dim,
            **cls._graph_args(args, data_dim),
            **cls._training_args(args),
            seed=args.seed,
            dtype=args.dtype,
        )

    # ------------------------------------------------------------------ hooks
    def _graph_config(self):
        """The constructor arguments of the model's graph (its networks), for :meth:`config`."""
        raise NotImplementedError(f"{type(self).__name__} does not define _graph_config().")

    @staticmethod
    def _graph_args(args, data_dim):
        """The graph's constructor arguments from ``lvmcore train``'s flags."""
        raise NotImplementedError("a LogWeightModel subclass must define _graph_args().")

    def _terms_forward(self, x, eps, need_grad=True):
        raise NotImplementedError(f"{type(self).__name__} does not define _terms_forward().")

    def _terms_backward(self, cache, grads: TermGrads) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _terms_backward().")


class ELBOCache(NamedTuple):
    """``terms``: the model's cache of its terms; ``kl_weight``: w; ``shape``: (L, B);
    ``stats``: per-example ``log_px_z`` and ``kl`` (B,), for reporting; ``kl_term``: the
    KLTermCache of a KL taken by dimension, else None."""

    terms: object
    kl_weight: float
    shape: tuple
    stats: dict
    kl_term: object = None


class ELBOTraining(LogWeightModel):
    """Training by the ELBO with L samples and a KL weight: the ``vae`` of a family.

    ``n_samples`` (L) and ``beta`` are :class:`lvmcore.models.VAE`'s, with its flags
    ``--samples`` and ``--beta``. The KL is the sampled one,
    :math:`\\log q(z|x) - \\log p(z)` (no closed form exists for a hierarchy or a flow),
    unless the model takes it dimension by dimension: a model whose posterior and prior both
    factorize over the latent units may set ``kl = "analytic"`` or ``free_bits > 0`` and
    implement ``_kl_per_dim(cache) -> (B, Z)`` (the closed form, or the sampled KL of each
    unit averaged over L); the loss then uses :func:`lvmcore.losses.kl_term_forward` on it,
    as :class:`lvmcore.models.VAE` does, and the backward hands the model
    d loss / d KL_{bj} as ``TermGrads.kl``.
    """

    bound_name = "ELBO"
    training_flags = tuple(f for f in VAE.flags if f.dest in ("samples", "beta"))
    # The KL of the loss: "sampled" and no floor, unless a model that can split the KL by
    # latent unit sets these (see the class docstring).
    kl = "sampled"
    free_bits = 0.0

    @property
    def _kl_by_dimension(self) -> bool:
        return self.kl == "analytic" or self.free_bits > 0

    def _kl_per_dim(self, cache):
        """The per-row, per-dimension KL (B, Z) from the terms' cache (see the class
        docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not define _kl_per_dim().")

    def _init_training(self, n_samples, beta, func):
        self.n_samples = check_param(
            n_samples, "n_samples", func, kind="int", low=1, low_inclusive=True
        )
        self.beta = check_param(beta, "beta", func, low=0, low_inclusive=True)

    def _training_config(self):
        return dict(n_samples=self.n_samples, beta=self.beta)

    @staticmethod
    def _training_args(args):
        return dict(n_samples=args.samples, beta=args.beta)

    @property
    def n_draws(self):
        return self.n_samples

    @property
    def default_kl_weight(self):
        """``beta``: the KL weight of ``forward`` when none is given."""
        return self.beta

    def forward(self, x, eps, kl_weight=None):
        """Negative ELBO averaged over the batch, for fixed noise.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        eps : ndarray of shape (L, B, Z)
        kl_weight : float, optional
            w, the weight of log p(z) - log q(z|x); ``beta`` when None.

        Returns
        -------
        loss : float
            :math:`-\\tfrac1{LB}\\sum_{l,b} [\\log p(x_b|z_{lb}) + w(\\log p(z_{lb}) -
            \\log q(z_{lb}|x_b))]`.
        cache : ELBOCache
        """
        self._check_noise(x, eps, f"{type(self).__name__}.forward")
        w = self.beta if kl_weight is None else float(kl_weight)
        terms, tc = self._terms_forward(x, eps)
        kl = terms.log_qz - terms.log_pz  # (L, B)
        klc = None
        if self._kl_by_dimension:
            kl_dim = self._kl_per_dim(tc)  # (B, Z)
            # Free bits compares the batch-mean KL of each unit with the floor: a statistic of
            # the whole batch (lvmcore.models.base); its gradient is that of these rows' mean.
            kl_value, klc = kl_term_forward(self._batch_rows(kl_dim), self.free_bits)
            klc = klc._replace(n=x.shape[0])
            kl_row = kl_dim.sum(axis=1)  # (B,)
        else:
            kl_value, kl_row = float(kl.mean()), kl.mean(axis=0)
        loss = -float(terms.log_px_z.mean()) + w * kl_value
        stats = dict(log_px_z=terms.log_px_z.mean(axis=0), kl=kl_row)
        return loss, ELBOCache(tc, w, tuple(kl.shape), stats, klc)

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` into every parameter's gradient.

        Notes
        -----
        Each of the L B samples has weight 1/(LB): d loss / d log p(x|z) = -1/(LB), and
        :math:`\\mp w/(LB)` for log p(z) and log q(z|x); the total derivative (no estimator
        choice: the ELBO's gradient at fixed noise). A KL taken by dimension gets
        ``kl_term_backward``'s w active_j / B per row instead (``TermGrads.kl``).
        """
        xp = get_xp(cache.stats["kl"])
        L, B = cache.shape
        dt = self.dtype.type
        w = dt(cache.kl_weight)
        full = xp.full((L, B), dt(dloss / (L * B)), dtype=self.dtype)
        ones = xp.ones((L, B), dtype=self.dtype)
        if cache.kl_term is not None:
            zero = xp.zeros((L, B), dtype=self.dtype)
            dkl = kl_term_backward(dt(dloss * cache.kl_weight), cache.kl_term)  # (1, Z)
            grads = TermGrads(-full, zero, zero, ones, False, dkl.astype(self.dtype))
        else:
            grads = TermGrads(-full, -w * full, w * full, ones, False)
        self._terms_backward(cache.terms, grads)

    def _step_end(self, loss, cache, rng):
        """Step statistics (means over the batch): ``elbo`` (w = 1), ``recon``, ``kl``."""
        recon, kl = float(cache.stats["log_px_z"].mean()), float(cache.stats["kl"].mean())
        return dict(elbo=recon - kl, recon=recon, kl=kl)

    def bound(self, x, rng, batch_size=100):
        """The per-example bound the model trains (here the ELBO with w = 1), (N,)."""
        return self.elbo(x, rng, batch_size)


class IWAETraining(LogWeightModel):
    """Training by an importance-weighted bound: the ``iwae`` of a family.

    ``k``, ``estimator``, ``objective``, ``groups`` and ``ciwae_beta`` are
    :class:`lvmcore.models.IWAE`'s, with its flags.
    """

    training_flags = IWAE.flags

    def _init_training(self, k, estimator, objective, groups, ciwae_beta, func):
        self.k = check_param(k, "k", func, kind="int", low=1, low_inclusive=True)
        self.estimator = check_param(
            estimator, "estimator", func, kind="choice", choices=ESTIMATORS
        )
        self.objective = check_param(
            objective, "objective", func, kind="choice", choices=OBJECTIVES
        )
        self.groups = check_param(groups, "groups", func, kind="int", low=1, low_inclusive=True)
        if self.objective in ("iwae", "ciwae"):
            self.groups = 1
        self.ciwae_beta = check_param(
            ciwae_beta, "ciwae_beta", func, low=0, low_inclusive=True, high=1
        )

    def _training_config(self):
        return dict(
            k=self.k,
            estimator=self.estimator,
            objective=self.objective,
            groups=self.groups,
            ciwae_beta=self.ciwae_beta,
        )

    @staticmethod
    def _training_args(args):
        if args.kl_warmup_epochs:
            raise ValueError(
                f"expected --kl-warmup-epochs 0 with --model iwae (KL annealing does not apply "
                f"to an importance-weighted bound), got {args.kl_warmup_epochs}."
            )
        return dict(
            k=args.k,
            estimator=args.estimator,
            objective=args.objective,
            groups=args.groups,
            ciwae_beta=args.ciwae_beta,
        )

    @property
    def n_draws(self):
        return self.k * self.groups

    @property
    def bound_name(self):
        """What ``bound`` computes, for reports, e.g. ``"IWAE bound (K=50)"``."""
        return f"{self.objective.upper()} bound (K={self.k})"

    def forward(self, x, eps, kl_weight=None):
        """Negative bound averaged over the batch, for fixed noise eps (K, B, Z) (M K for
        MIWAE and PIWAE).

        ``kl_weight`` is accepted for the trainer's sake and must be None or 1.

        Returns
        -------
        loss : float
        cache : tuple
            (the terms' cache, the bound's weights, per-example statistics ``bound`` (B,) and
            ``log_w`` (S, B)).
        """
        f = f"{type(self).__name__}.forward"
        if kl_weight not in (None, 1, 1.0):
            raise ValueError(
                f"{f}: expected kl_weight None or 1 (KL annealing does not apply to an "
                f"importance-weighted bound), got {kl_weight}."
            )
        self._check_noise(x, eps, f)
        terms, tc = self._terms_forward(x, eps)
        log_w = terms.log_w  # (S, B)
        bound, weights = bound_forward(log_w, self.objective, self.groups, self.ciwae_beta)
        return -float(bound.mean()), (tc, weights, dict(bound=bound, log_w=log_w))

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` with the chosen estimator.

        Notes
        -----
        loss = -mean bound, so d loss / d log w_s = -dloss a_s with a_s the decoder's weights
        for the generative terms, and the encoder's (plain, STL) or DReG's weights for
        log q; the generative terms' sample gradients reach the posterior rescaled by the
        encoder-over-decoder ratio (:class:`lvmcore.losses.iwae.BoundWeights`).
        """
        tc, bw, _ = cache
        dt = self.dtype.type

        def run(terms_cache, w):
            if self.estimator == "dreg":
                enc, ratio = w.encoder_dreg, w.dreg_over_decoder
            else:
                enc, ratio = w.encoder, w.encoder_over_decoder
            dec = -dt(dloss) * w.decoder
            self._terms_backward(
                terms_cache,
                TermGrads(dec, dec, dt(dloss) * enc, ratio, self.estimator != "iwae"),
            )

        backward_bound_weights(self, bw, tc, run)

    def _step_forward(self, x, noise, kl_weight):
        # KL annealing does not apply to an importance-weighted bound: a training step ignores
        # the trainer's weight (forward itself refuses one other than 1).
        return self.forward(x, noise)

    def _step_end(self, loss, cache, rng):
        """Step statistics: ``bound``, the mean of the training bound over the batch."""
        return dict(bound=-loss)

    def bound(self, x, rng, batch_size=100):
        """The model's training bound per example (N,), for fixed fresh noise.

        It is computed from :meth:`log_weights`, the evaluation path: nothing is kept for a
        backward, and what only training applies (a decoder's input dropout) is left out.
        """
        return self._per_row(
            x,
            rng,
            batch_size,
            f"{type(self).__name__}.bound",
            lambda xb, eps: bound_forward(
                self.log_weights(xb, eps), self.objective, self.groups, self.ciwae_beta
            )[0],
        )
