"""Importance-weighted autoencoder with plain, STL and DReG gradient estimators.

Shapes: B batch, D data, Z latent, K samples per data point (K, or M groups of K: M K).

Forward, for fixed noise eps (K, B, Z):
    mu, logvar = encoder(x)                                      (B, Z) each
    z = mu + exp(logvar / 2) * eps                               (K, B, Z)
    log w = log p(x|z) + log p(z) - log q(z|x)                   (K, B)
    bound = objective(log w)  (IWAE, MIWAE, CIWAE or PIWAE)      (B,)
    loss = -mean_B bound

Backward. With a_s = d bound / d log w_s (normalized weights) and
g_s = d log w_s / d z_s taken with q's parameters held fixed
    = d log p(x|z_s)/dz - z_s + eps_s / std,
the three estimators of the encoder gradient are (Tucker et al. 2019, eqs. 3-7)

    plain:  sum_s a_s [ (g_s - eps_s/std) dz_s/dphi + d(-log q)/dphi (total) ]
    STL:    sum_s a_s   g_s dz_s/dphi               (the score term dropped)
    DReG:   sum_s b_s   g_s dz_s/dphi               (b_s: w~ replaced by w~^2)

The decoder gradient is the plain one in all three. The plain estimator is the exact
gradient of the fixed-noise bound (finite-difference tested). DReG is unbiased for it
for every K (tested statistically). STL is unbiased only for K = 1: for K > 1 the
score term it drops has non-zero mean under the normalized weights (Tucker et al.
2019, sec. 3), so IWAE-STL trades a bias for lower variance; a test measures it.
"""

import numpy as np

from .._validation import check_param, get_xp
from ..cli._types import nonneg_float, positive_int
from ..losses.iwae import OBJECTIVES, bound_forward, split_bound_weights
from ..ops import reparam_backward
from .base import Flag, copy_arrays
from .vae import VAE, FusedReparam

ESTIMATORS = ("iwae", "stl", "dreg")
# Subnormals. A weight this far below the largest of its array drops out of the fused step's
# gradient (float32 only): its share, below 2^-60, is far under float rounding, and products of
# such weights with the layers' arrays are what goes subnormal (the weights / B of poor samples
# reach 1e-40). Together with the kernels' exp, which flushes what would be subnormal to 0 (the
# likelihood gradient x - sigmoid(l), the weights themselves), no subnormal is produced, so the
# step does not depend on the FPU's flush-to-zero: that is per-thread MXCSR state, set before
# every pool (BLAS, Numba) starts and invisible to a user, which the engine does not touch.
# Measured (benchmarks/compare_peers.py --only subnormals, 2026-12-02): on the Intel machines
# of PERF-NOTES subnormal GEMM operands cost 4x; on the AMD EPYC (Zen 4) of this run they cost
# nothing measurable (a GEMM with 0-100 % subnormal rows, the same time), and the step with
# 4 % subnormal weights ran at the same speed with and without this flush. Its cost is one pass
# over the (K, B) weights.
_TINY = 2.0**-60


def _flush_tiny(w):
    """Zero the entries of a weight array (K, B) whose magnitude is below _TINY times the
    largest (float32; float64 arrays are returned as they are): the fused step keeps
    subnormal numbers from being produced instead of relying on the FPU's flush-to-zero."""
    if w.dtype != np.float32 or w.size == 0:
        return w
    xp = get_xp(w)
    m = xp.abs(w).max()
    return xp.where(xp.abs(w) < m * np.float32(_TINY), np.float32(0), w)


def backward_bound_weights(model, weights, cache, run):
    """Accumulate the gradient of the bound whose weights are ``weights`` (BoundWeights):
    ``run(cache, w)`` is one backward pass of the model over its forward ``cache`` with the
    weights w (a pass may overwrite what it reads in the cache).

    One pass in general; where some samples' encoder-over-decoder ratio is too large for the
    rescale (a PIWAE group far below the rest of its column), three, as
    :func:`lvmcore.losses.iwae.split_bound_weights` prescribes: ``main`` accumulated as usual,
    and the difference of the ``direct`` and ``direct_generative`` passes, each over its own
    copy of the cache and taken on its own (``Model._gradient_of``), added.
    """
    parts = split_bound_weights(weights, model.estimator)
    if parts is None:
        run(cache, weights)
        return
    main, direct, direct_generative = parts
    copies = copy_arrays(cache), copy_arrays(cache)
    run(cache, main)
    plus = model._gradient_of(lambda: run(copies[0], direct))
    minus = model._gradient_of(lambda: run(copies[1], direct_generative))
    for name, g in model.gradients().items():
        g += plus[name] - minus[name]


class IWAE(VAE):
    """Importance-weighted autoencoder (Burda et al. 2016).

    Parameters
    ----------
    k : int
        K, importance samples per data point (per group for MIWAE and PIWAE).
    estimator : {"iwae", "stl", "dreg"}
        Gradient estimator for the inference network.
    objective : {"iwae", "miwae", "ciwae", "piwae"}
    groups : int
        M for MIWAE and PIWAE; M K samples per data point.
    ciwae_beta : float
        The ELBO's weight in CIWAE.

    The remaining parameters are those of :class:`VAE` (``kl``, ``beta`` and
    ``free_bits`` do not apply: the bound is sampled as a whole).
    """

    name = "iwae"
    help = "importance-weighted autoencoder"
    flags = (
        Flag(
            "--k", "k", 50, "importance samples per example", dict(type=positive_int, metavar="K")
        ),
        Flag(
            "--estimator",
            "estimator",
            "iwae",
            "inference-network gradient estimator",
            dict(choices=ESTIMATORS),
        ),
        Flag("--objective", "objective", "iwae", "bound to train", dict(choices=OBJECTIVES)),
        Flag(
            "--groups",
            "groups",
            1,
            "M groups of K samples for miwae/piwae",
            dict(type=positive_int, metavar="M"),
        ),
        Flag(
            "--ciwae-beta",
            "ciwae_beta",
            0.5,
            "weight of the ELBO in ciwae",
            dict(type=nonneg_float, metavar="BETA"),
        ),
    )

    def __init__(
        self,
        data_dim,
        latent_dim=50,
        hidden=(200, 200),
        activation="tanh",
        likelihood="bernoulli",
        decoder_variance="learned",
        k=50,
        estimator="iwae",
        objective="iwae",
        groups=1,
        ciwae_beta=0.5,
        seed=0,
        dtype=np.float32,
    ):
        f = "IWAE"
        self.k = check_param(k, "k", f, kind="int", low=1, low_inclusive=True)
        self.estimator = check_param(estimator, "estimator", f, kind="choice", choices=ESTIMATORS)
        self.objective = check_param(objective, "objective", f, kind="choice", choices=OBJECTIVES)
        self.groups = check_param(groups, "groups", f, kind="int", low=1, low_inclusive=True)
        if self.objective in ("iwae", "ciwae"):
            self.groups = 1
        self.ciwae_beta = check_param(
            ciwae_beta, "ciwae_beta", f, low=0, low_inclusive=True, high=1
        )
        super().__init__(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            decoder_variance,
            kl="sampled",
            n_samples=self.k * self.groups,
            seed=seed,
            dtype=dtype,
        )

    @classmethod
    def from_args(cls, args, data_dim):
        """The IWAE of ``lvmcore train --model iwae``."""
        if args.kl_warmup_epochs:
            raise ValueError(
                f"expected --kl-warmup-epochs 0 with --model iwae (KL annealing does "
                f"not apply to an importance-weighted bound), got "
                f"{args.kl_warmup_epochs}."
            )
        return cls(
            data_dim,
            latent_dim=args.latent,
            hidden=args.hidden,
            activation=args.activation,
            likelihood=args.likelihood,
            k=args.k,
            estimator=args.estimator,
            objective=args.objective,
            groups=args.groups,
            ciwae_beta=args.ciwae_beta,
            seed=args.seed,
            dtype=args.dtype,
        )

    @property
    def bound_name(self):
        """What ``bound`` computes, for reports, e.g. ``"IWAE bound (K=50)"``."""
        return f"{self.objective.upper()} bound (K={self.k})"

    def config(self):
        c = super().config()
        for key in ("kl", "n_samples", "beta", "free_bits"):
            c.pop(key)
        c.update(
            model=self.name,
            k=self.k,
            estimator=self.estimator,
            objective=self.objective,
            groups=self.groups,
            ciwae_beta=self.ciwae_beta,
        )
        return c

    def forward(self, x, eps, kl_weight=None):
        """Negative bound averaged over the batch, for fixed noise eps (K, B, Z) (M K for
        MIWAE and PIWAE): an array (the readable path) or its NoiseKey (the fused kernel, see
        :mod:`lvmcore.models.vae`).

        ``kl_weight`` is accepted for the trainer's sake and must be None or 1.
        """
        if kl_weight not in (None, 1, 1.0):
            raise ValueError(
                f"IWAE.forward: expected kl_weight None or 1 (KL annealing does "
                f"not apply to an importance-weighted bound), got {kl_weight}."
            )
        p = self._forward_samples(x, eps)
        log_w = self._log_w(p)  # (K, B)
        bound, weights = bound_forward(log_w, self.objective, self.groups, self.ciwae_beta)
        loss = -float(bound.mean())
        stats = dict(bound=bound, log_w=log_w)
        return loss, (p, weights, stats)

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` with the chosen estimator."""
        p, bw, _ = cache
        backward_bound_weights(self, bw, p, lambda c, w: self._backward_weights(c, w, dloss))

    def _backward_weights(self, p, bw, dloss):
        """One backward pass with the bound's weights ``bw`` (``backward_bound_weights``)."""
        xp = get_xp(p.mu)
        K, B, Z = p.z.shape
        dt = self.dtype.type
        c = dt(-dloss)  # loss = -mean bound; the weights are for the bound
        fused = isinstance(p.reparam, FusedReparam)
        dec_w = _flush_tiny(bw.decoder) if fused else bw.decoder
        dnll = (dt(dloss) * dec_w).reshape(K * B)
        dz_dec = self._decoder_backward(dnll, p).reshape(K, B, Z)  # = -dloss a dlogp/dz
        if self.estimator == "dreg":
            s, ratio = bw.encoder_dreg, bw.dreg_over_decoder
        else:
            s, ratio = bw.encoder, bw.encoder_over_decoder
        if fused:
            s, ratio = _flush_tiny(s), _flush_tiny(ratio)
        cs = c * s  # (K, B)
        dz = ratio[..., None] * dz_dec  # (K, B, Z)
        if fused:
            # log p(z) and log q(z|x) go to the kernel's regenerating backward as their
            # upstream gradients; STL and DReG keep only log q's path through z, eps / std
            # (eps drawn again from the key), and pass no dlog_q (its total derivative holds
            # the score term)
            dlog_q = None
            if self.estimator != "iwae":
                dz += cs[..., None] * (self._eps(p) * xp.exp(-0.5 * p.logvar))
            else:
                dlog_q = -cs
            dmu, dlogvar = self._reparam_grads(p, dz, dlog_q, cs)
        else:
            eps, std = p.reparam
            cs = cs[..., None]  # (K, B, 1)
            dz -= cs * p.z  # log p(z) term
            if self.estimator != "iwae":
                dz += cs * (eps / std)  # -log q through z only
            dmu, dlogvar = reparam_backward(dz, p.reparam)
            if self.estimator == "iwae":
                dlogvar += dt(0.5) * cs.sum(axis=0)  # total d(-log q)/dlogvar
        self.encoder.backward(xp.concatenate([dmu, dlogvar], axis=1), p.enc, need_dx=False)

    def _step_forward(self, x, noise, kl_weight):
        # KL annealing does not apply to an importance-weighted bound: a training step ignores
        # the trainer's weight (forward itself refuses one other than 1).
        return self.forward(x, noise)

    def _step_end(self, loss, cache, rng):
        """Step statistics: ``bound``, the mean of the training bound over the batch."""
        return dict(bound=-loss)

    def elbo(self, x, rng, batch_size=100):
        """Per-example ELBO (B,): the mean of log w over the model's K (M K) samples (the
        fused path, with the noise ``draw_noise`` would draw from ``rng``)."""
        batch_size = self._check_eval(x, rng, batch_size, "IWAE.elbo")
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            out.append(self.log_weights(xb, self.draw_key(rng, xb.shape[0])).mean(axis=0))
        return self._rows(out, xp)

    def bound(self, x, rng, batch_size=100):
        """The model's training bound per example (B,), for fixed fresh noise (the fused
        path, with the noise ``draw_noise`` would draw from ``rng``)."""
        batch_size = self._check_eval(x, rng, batch_size, "IWAE.bound")
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            _, (_, _, stats) = self.forward(xb, self.draw_key(rng, xb.shape[0]))
            out.append(stats["bound"])
        return self._rows(out, xp)
