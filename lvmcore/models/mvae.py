"""Multimodal VAE (Wu and Goodman 2018): two modalities, one latent, a product of Gaussian experts.

Shapes: B batch, D = D_1 + D_2 data, D_m one modality, H hidden, Z latent, L samples per
subset, T = 3 subsets of modalities (both, the first alone, the second alone), M = 2 experts.

The modalities are the two parts of a data row: the first ``split`` columns and the rest. For a
row-major image of even height with ``split = D // 2`` (the default) they are its top and bottom
halves. Each modality m has a Gaussian expert q_m(z | x_m) (an encoder MLP D_m -> 2Z) and a
Bernoulli decoder p(x_m | z) (an MLP Z -> D_m); the posterior given a subset S of modalities is
the product of the prior expert N(0, I) and the experts of S, in closed form
(:func:`lvmcore.ops.poe_forward`).

Forward (the subsampled objective of Wu and Goodman 2018, sec. 3: the joint ELBO plus each
single-modality ELBO)::

    mu_m, logvar_m = encoder_m(x_m)                          (B, Z) each, m = 1, 2
    for each subset t in (both, first, second):             masks (M, T*B)
        mu_t, logvar_t = PoE(prior, experts of t)            (T*B, Z)
    z_t = mu_t + exp(logvar_t / 2) * eps_t                   (L, T*B, Z)
    log p(x_m | z_t) for the subsets t that hold m           (L, 2, B) per modality
    ELBO_t = mean_L sum_{m in t} log p(x_m | z_t) - KL(q_t || N(0, I))     (T, B)
    loss = -mean_B sum_t [mean_L sum_{m in t} log p(x_m|z_t) - w KL_t]

Backward, in reverse: each decoder's likelihood and MLP backward give dz for its two subsets;
the reparameterization gives d mu_t, d logvar_t, plus the analytic KL's; the product of experts'
backward gives each expert's gradient in each subset (exactly zero where it is absent), summed
over the subsets; each encoder's backward.

Cross-modal generation: q(z | x_1) = PoE(prior, q_1) decoded by the second decoder predicts the
missing half (:meth:`MVAE.predict`), and log p(x_2 | x_1) = log p(x_1, x_2) - log p(x_1) is
estimated as the difference of two importance-sampled log-likelihoods through the one chunked
routine (:meth:`MVAE.cross_log_likelihood`; proposal PoE(prior, q_1, q_2) for the joint and
PoE(prior, q_1) for the marginal). It is consistent in K, not a bound.

References
----------
M. Wu, N. Goodman, "Multimodal Generative Models for Scalable Weakly-Supervised Learning",
NeurIPS 2018, sec. 2-3 (the product of experts, eq. 3, and the subsampled objective).
"""

from typing import NamedTuple

import numpy as np

from .. import noise
from .._validation import (
    check_array,
    check_float_dtype,
    check_param,
    check_sizes,
    get_xp,
    to_numpy,
)
from ..cli._types import positive_int
from ..distributions.kl import (
    KLNormalStdCache,
    kl_normal_std_per_dim,
    kl_normal_std_per_dim_backward,
)
from ..evaluate import log_likelihood, standard_error
from ..losses import bernoulli_nll_backward, bernoulli_nll_forward
from ..nn import MLP
from ..ops import reparam_backward, reparam_forward, sigmoid
from ..ops.poe import poe_backward, poe_forward
from .base import Flag, Model

__all__ = ["MVAE", "MVAECache", "SUBSETS"]

#: The subsets of the objective, as (first present, second present): the joint, each alone.
SUBSETS = ((True, True), (True, False), (False, True))
# The subsets that hold each modality (rows of SUBSETS): the first is in the joint and the
# first-only subset, the second in the joint and the second-only subset.
_TERMS = ((0, 1), (0, 2))
_CROSS_STREAM = 12  # eval_report's cross-generation noise: default_rng([0, 0, 0, 12])


class MVAECache(NamedTuple):
    """Everything backward needs, each field with its shape."""

    enc: tuple  # the two encoder MLPCaches
    poe: object  # PoECache over (M, T*B, Z)
    mu: object  # (T*B, Z) the subsets' posterior means
    logvar: object  # (T*B, Z)
    reparam: object  # ReparamCache, eps (L, T*B, Z)
    dec: tuple  # the two decoder MLPCaches, over (L*2*B, D_m)
    lik: tuple  # the two BernoulliNLLCaches
    kl_weight: float
    stats: dict  # per-example quantities (B,)


class MVAE(Model):
    """Two-modality VAE with a product-of-experts posterior and Bernoulli decoders.

    Parameters
    ----------
    data_dim : int
        D, the width of a data row (both modalities).
    split : int, optional
        D_1, the columns of the first modality (the rest are the second); ``data_dim // 2``
        when None (the top and bottom halves of an image of even height).
    latent_dim : int
        Z.
    hidden : sequence of int
        Hidden widths of each encoder; each decoder mirrors them.
    activation : {"tanh", "relu", "softplus"}
    n_samples : int
        L, samples of z per example and subset.
    beta : float
        Weight of the KL terms (the trainer may anneal it).
    names : pair of str
        The modalities' names, for reports and messages.
    seed : int
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``<name>_encoder.W0 ...`` (D_m -> H -> 2Z) and ``<name>_decoder.W0 ...``
    (Z -> H -> D_m) for each modality name (``top`` and ``bottom`` by default).
    """

    name = "mvae"
    help = "multimodal VAE: image top and bottom halves as two modalities, product of experts"
    bound_name = "subsampled objective ELBO(x) + ELBO(x_1) + ELBO(x_2)"
    likelihood = "bernoulli"
    has_log_likelihood = True
    has_gaussian_latents = True
    has_sample = True
    has_reconstruct = True
    flags = (
        Flag(
            "--split",
            "split",
            None,
            "columns of the first modality (default: half the row, the image's top half)",
            dict(type=positive_int, metavar="D1"),
        ),
    )

    def __init__(
        self,
        data_dim,
        split=None,
        latent_dim=20,
        hidden=(200, 200),
        activation="tanh",
        n_samples=1,
        beta=1.0,
        names=("top", "bottom"),
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "MVAE"
        pos = dict(kind="int", low=1, low_inclusive=True)
        self.data_dim = check_param(data_dim, "data_dim", f, kind="int", low=2, low_inclusive=True)
        split = self.data_dim // 2 if split is None else split
        self.split = check_param(
            split, "split", f, kind="int", low=1, low_inclusive=True, high=self.data_dim
        )
        if self.split >= self.data_dim:
            raise ValueError(
                f"{f}: expected split in [1, {self.data_dim - 1}] (both modalities non-empty), "
                f"got {self.split}."
            )
        self.latent_dim = check_param(latent_dim, "latent_dim", f, **pos)
        self.hidden = check_sizes(hidden, "hidden", f)
        self.activation = check_param(
            activation, "activation", f, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.n_samples = check_param(n_samples, "n_samples", f, **pos)
        self.beta = check_param(beta, "beta", f, low=0, low_inclusive=True)
        names = tuple(names)
        if len(names) != 2 or len(set(names)) != 2 or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{f}: expected names to be two distinct strings, got {names!r}.")
        self.names = names
        self.seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
        self.dtype = check_float_dtype(dtype, f)
        rng = np.random.default_rng(self.seed)
        Z, H = self.latent_dim, self.hidden
        self.encoders = tuple(
            MLP((d, *H, 2 * Z), self.activation, rng, self.dtype) for d in self.widths
        )
        self.decoders = tuple(
            MLP((Z, *H[::-1], d), self.activation, rng, self.dtype) for d in self.widths
        )

    @property
    def widths(self):
        """(D_1, D_2): the columns of each modality."""
        return (self.split, self.data_dim - self.split)

    @classmethod
    def from_args(cls, args, data_dim):
        """The MVAE of ``lvmcore train --model mvae``."""
        if args.likelihood != "bernoulli":
            raise ValueError(
                f"expected --likelihood bernoulli with --model mvae (its decoders are "
                f"Bernoulli), got {args.likelihood}."
            )
        return cls(
            data_dim,
            split=args.split,
            latent_dim=args.latent,
            hidden=args.hidden,
            activation=args.activation,
            seed=args.seed,
            dtype=args.dtype,
        )

    def config(self):
        return dict(
            model=self.name,
            data_dim=self.data_dim,
            split=self.split,
            latent_dim=self.latent_dim,
            hidden=list(self.hidden),
            activation=self.activation,
            n_samples=self.n_samples,
            beta=self.beta,
            names=list(self.names),
            seed=self.seed,
            dtype=self.dtype.name,
        )

    def modules(self):
        out = {}
        for name, enc, dec in zip(self.names, self.encoders, self.decoders):
            out[f"{name}_encoder"], out[f"{name}_decoder"] = enc, dec
        return out

    @property
    def default_kl_weight(self):
        return self.beta

    def init_output_bias(self, x_train):
        """Each decoder's output bias at the logit of its pixels' means (as the VAE's)."""
        xp = get_xp(x_train)
        for part, dec in zip(self._parts(x_train), self.decoders):
            p = xp.clip(part.mean(axis=0).astype(np.float64), 1e-3, 1 - 1e-3)
            dec.output_bias[...] = (xp.log(p) - xp.log1p(-p)).astype(self.dtype)

    # ------------------------------------------------------------------ pieces
    def _parts(self, x):
        """The two modalities of x (B, D), each contiguous: (B, D_1), (B, D_2)."""
        xp = get_xp(x)
        return xp.ascontiguousarray(x[:, : self.split]), xp.ascontiguousarray(x[:, self.split :])

    def _experts(self, parts):
        """Each present modality's expert: lists of (B, Z) means and log-variances and the
        encoder caches (None for an absent modality, whose expert is zeros and masked)."""
        Z = self.latent_dim
        mus, lvs, caches = [], [], []
        B = next(p.shape[0] for p in parts if p is not None)
        for part, enc in zip(parts, self.encoders):
            if part is None:
                zero = self.xp.zeros((B, Z), dtype=self.dtype)
                mus.append(zero)
                lvs.append(zero)
                caches.append(None)
                continue
            h, c = enc.forward(part)  # (B, 2Z)
            mus.append(h[:, :Z])
            lvs.append(h[:, Z:])
            caches.append(c)
        return mus, lvs, caches

    def _posterior(self, parts, present):
        """Moments (mu, logvar), each (B, Z), of PoE(prior, experts of the present
        modalities)."""
        mus, lvs, _ = self._experts(parts)
        B = mus[0].shape[0]
        mask = self.xp.asarray(np.repeat(np.array(present)[:, None], B, axis=1))  # (M, B)
        (mu, logvar), _ = poe_forward(mus, lvs, mask)
        return mu, logvar

    def _check_modality(self, x_m, m, func):
        """One modality's rows (B, D_m), named in messages by the modality's name."""
        name, width = f"x_{self.names[m]}", self.widths[m]
        check_array(x_m, name, func, ndim=2)
        if x_m.shape[1] != width:
            raise ValueError(
                f"{func}: expected {name} to have {width} columns (the {self.names[m]} "
                f"modality's width), got shape {tuple(x_m.shape)}. Pass the "
                f"{'first' if m == 0 else 'last'} {width} columns of each row."
            )
        full = self.xp.zeros((x_m.shape[0], self.data_dim), dtype=self.dtype)
        if m == 0:
            full[:, : self.split] = x_m
        else:
            full[:, self.split :] = x_m
        self._check_x(full, func)
        return x_m

    def encode(self, x):
        """Moments (mu, logvar), each (B, Z), of the joint posterior PoE(prior, q_1, q_2)."""
        return self._posterior(self._parts(self._check_x(x, "MVAE.encode")), (True, True))

    def encode_modality(self, x_m, modality):
        """Moments of PoE(prior, q_m) from one modality alone: ``x_m`` (B, D_m), ``modality``
        its index (0, 1) or name."""
        return self._encode_one(x_m, modality, "MVAE.encode_modality")

    def _encode_one(self, x_m, modality, func):
        m = self._modality_index(modality, func)
        self._check_modality(x_m, m, func)
        parts = [None, None]
        parts[m] = x_m
        return self._posterior(parts, tuple(i == m for i in range(2)))

    def _modality_index(self, modality, func):
        if modality in (0, 1) and not isinstance(modality, bool):
            return int(modality)
        if modality in self.names:
            return self.names.index(modality)
        raise ValueError(
            f"{func}: expected modality to be 0, 1 or one of {list(self.names)}, got {modality!r}."
        )

    def decode(self, z):
        """Both decoders' Bernoulli means at z (N, Z), side by side: (N, D)."""
        xp = get_xp(z)
        return xp.concatenate([sigmoid(dec.forward(z)[0]) for dec in self.decoders], axis=1)

    def sample(self, rng, n):
        """n joint samples: z ~ N(0, I), then both decoders' means, (n, D)."""
        n = self._check_sample(rng, n, "MVAE.sample")
        z = noise.standard_normal(rng, (n, self.latent_dim), self.dtype, self._like())
        return self.decode(z)

    def reconstruct(self, x):
        """Both decoders' means at the joint posterior mean, (B, D)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def predict(self, x_m, modality):
        """Cross-modal generation: the full row from one modality alone.

        Parameters
        ----------
        x_m : ndarray of shape (B, D_m)
            The present modality.
        modality : int or str
            Its index (0: the first ``split`` columns) or name.

        Returns
        -------
        ndarray of shape (B, D)
            The present modality as given, the missing one the decoder's mean at the mean of
            PoE(prior, q_m(z | x_m)).
        """
        m = self._modality_index(modality, "MVAE.predict")
        mu, _ = self._encode_one(x_m, m, "MVAE.predict")
        other = 1 - m
        guess = sigmoid(self.decoders[other].forward(mu)[0])  # (B, D_other)
        parts = [None, None]
        parts[m], parts[other] = x_m.astype(self.dtype), guess
        return get_xp(mu).concatenate(parts, axis=1)

    # ------------------------------------------------------------------ objective
    def draw_noise(self, rng, batch_size, n_samples=None):
        """eps (L, B, T, Z): L samples per example for each of the T = 3 subsets."""
        batch_size, n_samples = self._check_noise_size(batch_size, n_samples, "MVAE.draw_noise")
        L = self.n_samples if n_samples is None else n_samples
        shape = (L, batch_size, len(SUBSETS), self.latent_dim)
        return noise.standard_normal(rng, shape, self.dtype, self._like())

    def forward(self, x, eps, kl_weight=None):
        """The negative subsampled objective averaged over the batch, for fixed noise.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        eps : ndarray of shape (L, B, T, Z)
        kl_weight : float, optional
            Weight of the KL terms; ``beta`` when None.

        Returns
        -------
        loss : float
        cache : MVAECache
        """
        xp = get_xp(x)
        w = self.beta if kl_weight is None else float(kl_weight)
        L, B, T, Z = eps.shape
        parts = self._parts(x)
        mus, lvs, enc = self._experts(parts)
        mu_e = xp.broadcast_to(xp.stack(mus)[:, None], (2, T, B, Z)).reshape(2, T * B, Z)
        lv_e = xp.broadcast_to(xp.stack(lvs)[:, None], (2, T, B, Z)).reshape(2, T * B, Z)
        mask = xp.asarray(np.repeat(np.array(SUBSETS).T, B, axis=1))  # (M, T*B)
        (mu, logvar), poe = poe_forward(mu_e, lv_e, mask)  # (T*B, Z)
        e = xp.ascontiguousarray(eps.transpose(0, 2, 1, 3)).reshape(L, T * B, Z)
        z, rep = reparam_forward(mu, logvar, e)  # (L, T*B, Z)
        z4 = z.reshape(L, T, B, Z)
        dec, lik, log_px = [], [], []
        for m, terms in enumerate(_TERMS):
            zm = xp.ascontiguousarray(z4[:, list(terms)]).reshape(L * 2 * B, Z)
            out, c = self.decoders[m].forward(zm)  # (L*2*B, D_m)
            # row r is scored against parts[m][r % B]; the logits are a temporary
            nll, lc = bernoulli_nll_forward(out, parts[m], overwrite_logits=True)
            dec.append(c)
            lik.append(lc)
            log_px.append(-nll.reshape(L, 2, B).mean(axis=0))  # (2, B)
        kl = kl_normal_std_per_dim(mu, logvar).sum(axis=1).reshape(T, B)  # (T, B)
        recon = xp.stack([log_px[0][0] + log_px[1][0], log_px[0][1], log_px[1][1]])  # (T, B)
        loss = -float(recon.sum(axis=0).mean()) + w * float(kl.sum(axis=0).mean())
        stats = dict(elbo_terms=recon - kl, recon=recon, kl=kl)
        cache = MVAECache(tuple(enc), poe, mu, logvar, rep, tuple(dec), tuple(lik), w, stats)
        return loss, cache

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` into every parameter's gradient.

        Notes
        -----
        Each decoder row carries weight -dloss / (L B); the KL of each subset row weight
        w dloss / B, with :math:`\\partial KL/\\partial\\mu = \\mu`,
        :math:`\\partial KL/\\partial v = \\tfrac12(e^v - 1)`; then :func:`poe_backward`
        (zero for an absent expert) and the sum over the subsets of each expert's gradient.
        """
        xp = get_xp(cache.mu)
        eps = cache.reparam.eps
        L, TB, Z = eps.shape
        T = len(SUBSETS)
        B = TB // T
        dt = self.dtype.type
        dz = xp.zeros((L, T, B, Z), dtype=self.dtype)
        for m, terms in enumerate(_TERMS):
            dnll = xp.full(L * 2 * B, dt(dloss / (L * B)), dtype=self.dtype)
            dout = bernoulli_nll_backward(dnll, cache.lik[m])  # (L*2*B, D_m)
            dzm = self.decoders[m].backward(dout, cache.dec[m]).reshape(L, 2, B, Z)
            dz[:, list(terms)] += dzm
        dmu, dlogvar = reparam_backward(dz.reshape(L, TB, Z), cache.reparam)  # (T*B, Z)
        dkl = xp.full(cache.mu.shape, dt(dloss * cache.kl_weight / B), dtype=self.dtype)
        dmu_kl, dlv_kl = kl_normal_std_per_dim_backward(
            dkl, KLNormalStdCache(cache.mu, cache.logvar)
        )
        dmu_e, dlv_e = poe_backward((dmu + dmu_kl, dlogvar + dlv_kl), cache.poe)  # (M, T*B, Z)
        dmu_e = dmu_e.reshape(2, T, B, Z).sum(axis=1)  # (M, B, Z)
        dlv_e = dlv_e.reshape(2, T, B, Z).sum(axis=1)
        for m, enc in enumerate(self.encoders):
            enc.backward(xp.concatenate([dmu_e[m], dlv_e[m]], axis=1), cache.enc[m], need_dx=False)

    def _step_end(self, loss, cache, rng):
        """Step statistics (means over the batch): ``bound`` (the objective), ``elbo`` (the
        joint ELBO), ``recon`` and ``kl`` (joint), and each single-modality ELBO."""
        e = cache.stats["elbo_terms"]  # (T, B)
        out = dict(
            bound=float(e.sum(axis=0).mean()),
            elbo=float(e[0].mean()),
            recon=float(cache.stats["recon"][0].mean()),
            kl=float(cache.stats["kl"][0].mean()),
        )
        for m, name in enumerate(self.names):
            out[f"elbo_{name}"] = float(e[m + 1].mean())
        return out

    def _terms(self, x, rng, batch_size, func):
        """The per-example ELBO of every subset, (T, N), with beta = 1."""
        batch_size = self._check_eval(x, rng, batch_size, func)
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            _, c = self.forward(xb, self.draw_noise(rng, xb.shape[0]), kl_weight=1.0)
            out.append(c.stats["elbo_terms"])
        if not out:  # zero rows: one empty row of terms per subset
            return xp.zeros((len(SUBSETS), 0), dtype=self.dtype)
        return xp.concatenate(out, axis=1)

    def bound(self, x, rng, batch_size=1000):
        """The per-example training objective ELBO(x) + ELBO(x_1) + ELBO(x_2), shape (N,)
        (a sum of three bounds, on log p(x) + log p(x_1) + log p(x_2))."""
        return self._terms(x, rng, batch_size, "MVAE.bound").sum(axis=0)

    def elbo(self, x, rng, batch_size=1000):
        """The per-example joint ELBO of log p(x), shape (N,)."""
        return self._terms(x, rng, batch_size, "MVAE.elbo")[0]

    # ------------------------------------------------------------------ likelihoods
    def _log_weights(self, x, eps, present):
        """log w = sum_{m present} log p(x_m|z) + log p(z) - log q(z | x_present) for fixed
        eps (K, B, Z), with q = PoE(prior, experts present); (K, B)."""
        K, B, Z = eps.shape
        parts = list(self._parts(x))
        parts = [p if keep else None for p, keep in zip(parts, present)]
        mu, logvar = self._posterior(parts, present)
        z, _ = reparam_forward(mu, logvar, eps)  # (K, B, Z)
        # the 2 pi terms of log p(z) and log q cancel; (z - mu) / std = eps
        log_w = 0.5 * ((eps * eps - z * z).sum(axis=-1) + logvar.sum(axis=-1))
        for part, dec in zip(parts, self.decoders):
            if part is not None:
                out, _ = dec.forward(z.reshape(K * B, Z))
                nll, _ = bernoulli_nll_forward(out, part, need_grad=False)
                log_w = log_w - nll.reshape(K, B)
        return log_w

    def log_weights(self, x, eps):
        """log w of the joint log p(x) with proposal PoE(prior, q_1, q_2); eps (K, B, Z)."""
        return self._log_weights(x, eps, (True, True))

    def log_weight_sampler(self, x, rng, present=(True, True)):
        """``draw(start, n) -> log w (n, B)`` with the base sampler's noise (one seed per batch
        from ``rng``, each chunk's eps (n, B, Z) from ``default_rng([seed, start])``);
        ``present`` picks the modalities whose marginal likelihood is estimated."""
        seed = int(rng.integers(0, 2**63))

        def draw(start, n):
            eps = noise.standard_normal(
                np.random.default_rng([seed, start]),
                (n, x.shape[0], self.latent_dim),
                self.dtype,
                self._like(),
            )
            return self._log_weights(x, eps, present)

        return draw

    def modality_log_likelihood(self, x, rng, modality, k=1000, batch_size=100):
        """Importance-sampled log p(x_m) of one modality of the rows x (N, D), shape (N,),
        with proposal PoE(prior, q_m) (the other modality's columns are not read)."""
        m = self._modality_index(modality, "MVAE.modality_log_likelihood")
        return log_likelihood(
            _Marginal(self, tuple(i == m for i in range(2))), x, rng, k=k, batch_size=batch_size
        )

    def cross_log_likelihood(self, x, rng, given, k=1000, batch_size=100):
        """log p(x_other | x_given) = log p(x) - log p(x_given) per row (N,), both estimated
        with k importance samples (consistent in k; not a bound)."""
        joint = self.log_likelihood(x, rng, k=k, batch_size=batch_size)
        return joint - self.modality_log_likelihood(x, rng, given, k=k, batch_size=batch_size)

    def eval_report(self, x, batch_size=1000, k=500):
        """Cross-modal generation on a split, for ``lvmcore eval``: the mean of
        log p(x_2 | x_1) and log p(x_1 | x_2) (nats; k importance samples, noise from
        ``default_rng([0, 0, 0, 12])``), and each single-modality ELBO."""
        self._check_x(x, "MVAE.eval_report")
        if not x.shape[0]:
            return {}, []
        rng = np.random.default_rng([0, 0, 0, _CROSS_STREAM])
        terms = to_numpy(self._terms(x, rng, batch_size, "MVAE.eval_report"), np.float64)
        joint = to_numpy(self.log_likelihood(x, rng, k=k), np.float64)
        info, lines = dict(cross_k=k), []
        for m, name in enumerate(self.names):
            other = self.names[1 - m]
            marg = to_numpy(self.modality_log_likelihood(x, rng, m, k=k), np.float64)
            cross = joint - marg
            info[f"elbo_{name}"] = float(terms[m + 1].mean())
            info[f"log_p_{name}"] = float(marg.mean())
            info[f"cross_ll_{other}_given_{name}"] = float(cross.mean())
            info[f"cross_ll_{other}_given_{name}_sem"] = standard_error(cross)
            lines.append(
                f"cross-generation log p({other} | {name}) {cross.mean():.3f} +- "
                f"{standard_error(cross):.3f} nats (K={k}); log p({name}) {marg.mean():.3f}; "
                f"ELBO({name}) {terms[m + 1].mean():.3f}"
            )
        return info, lines


class _Marginal(Model):
    """The marginal of an MVAE over a subset of its modalities, p(x_S) = int prod_{m in S}
    p(x_m | z) p(z) dz with proposal PoE(prior, experts of S): the modules are the MVAE's
    own (nothing copied), so that the one chunked routine estimates log p(x_S)."""

    has_log_likelihood = True
    likelihood = "bernoulli"

    def __init__(self, mvae, present):
        super().__init__()
        self.mvae, self.present = mvae, present
        self.data_dim, self.dtype, self.name = mvae.data_dim, mvae.dtype, mvae.name

    def modules(self):
        return self.mvae.modules()

    def log_weight_sampler(self, x, rng):
        return self.mvae.log_weight_sampler(x, rng, self.present)
