"""Adversarial autoencoder (Makhzani et al. 2016) with a Gaussian encoder and a hand-written
backward.

Shapes: B batch, D data, H hidden, Z latent, L samples per data point, N = L B codes.

The encoder, the reparameterized sample path and the decoder are the VAE's
(:mod:`lvmcore.models.vae`, inherited); the KL term is replaced by a discriminator D on z
(:class:`lvmcore.nn.Discriminator`) that tells codes of the encoder from draws of the target
prior p(z), a standard Gaussian or a mixture of Gaussians on a circle
(:func:`lvmcore.nn.discriminator.circle_mixture`).

Training alternates, every step (Makhzani et al. 2016, sec. 2):

1. the autoencoder step: the reconstruction loss plus ``w`` times the generator loss (the
   encoder tries to make D call its codes prior draws), through ``forward`` and ``backward``
   with the noise held fixed; the trainer's optimizer applies it to the encoder and decoder.
   The paper's reconstruction and regularization phases are one update here, on the sum of
   their losses, so that the step maps onto ``loss_and_grads`` and the trainer's one optimizer.
2. the discriminator step, in ``loss_and_grads`` after the backward (``_step_end``): N draws
   of the target from the step's generator against the step's N codes, one Adam update of D
   with the model's own Adam state. D's weights and that state are the model's
   ``state_arrays()`` (gradients exactly zero for the trainer's optimizer), so checkpoints hold
   them and a resumed run continues bit for bit. The codes are the whole batch's
   (``_batch_rows``), so every data-parallel process makes the same update.

Forward, for fixed noise eps (L, B, Z)::

    mu, logvar = encoder(x); z = mu + exp(logvar / 2) eps        (L, B, Z)
    log p(x|z) from decoder(z)                                    (L, B)
    d = D(z.reshape(N, Z))                                        (N,)
    loss = -mean log p(x|z) + w * generator_loss(d)

Backward: likelihood -> decoder -> dz; generator loss -> D's backward -> dz (D's own gradient
from this pass is discarded: D is not trained by the generator loss); the reparameterization;
the encoder.

Bounds. ``bound`` is the reconstruction term E_q log p(x|z) (what the autoencoder step
improves); ``elbo`` and the K-sample ``log_likelihood`` use the target as the prior,
log w = log p(x|z) + log p_target(z) - log q(z|x), so they bound and estimate the log p(x) of
the generative model the AAE samples from.

References
----------
A. Makhzani, J. Shlens, N. Jaitly, I. Goodfellow, B. Frey, "Adversarial Autoencoders", 2016,
sec. 2 (the two phases) and fig. 4 (the 2-D mixture target).
"""

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._validation import check_param, get_xp
from ..cli._types import int_list, nonneg_float, positive_float, positive_int
from ..losses import bernoulli_nll_backward, gaussian_nll_backward
from ..losses.adversarial import (
    discriminator_loss_backward,
    discriminator_loss_forward,
    generator_loss_backward,
    generator_loss_forward,
)
from ..nn.discriminator import (
    Discriminator,
    circle_mixture,
    gaussian_target_sample,
    mixture_target_sample,
)
from ..ops import reparam_backward
from ..optim import Adam
from ..priors.mixture import mixture_log_prob_forward
from .base import Flag, Model
from .vae import VAE

__all__ = ["AAE", "AAECache", "TARGETS"]

TARGETS = ("gaussian", "mixture")
_DISC_STREAM = 1  # the discriminator's initialisation: default_rng([seed, 1])
_DISC_BETAS = (0.5, 0.999)  # Adam's betas for D, as is usual for adversarial training
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class AAECache(NamedTuple):
    """What backward and the discriminator step need."""

    samples: object  # the VAE's SampleForward: encoder, reparam, decoder, likelihood caches
    disc: object  # the discriminator's MLPCache over the N codes
    gen: object  # GeneratorLossCache, logits (N,)
    adv_weight: float
    stats: dict  # per-example log_px_z (B,) and the step's generator loss


class AAE(VAE):
    """Adversarial autoencoder: a VAE's encoder and decoder, the KL replaced by a
    discriminator on z.

    Parameters
    ----------
    data_dim, latent_dim, hidden, activation, likelihood, decoder_variance, n_samples, seed,
    dtype
        As for :class:`lvmcore.models.VAE`.
    target : {"gaussian", "mixture"}
        The prior the aggregate posterior is matched to: N(0, I), or ``n_components`` equal
        Gaussians (standard deviation 0.5) evenly spaced on a circle of radius 4 in the first
        two latent dimensions (needs Z >= 2).
    n_components : int
        Components of the mixture target.
    adv_weight : float
        w, the generator loss's weight in the autoencoder step (the trainer's warm-up ramps it
        from 0).
    disc_hidden : sequence of int
        The discriminator's hidden widths (ReLU).
    disc_lr : float
        The discriminator's Adam step size.
    saturating : bool
        Use the saturating generator loss log(1 - sigma(d)) instead of -log sigma(d).

    Notes
    -----
    Parameters: the VAE's ``encoder.*`` and ``decoder.*``; state arrays (zero gradients):
    ``discriminator.W0 ...``, and its Adam state ``disc_adam.m.<name>``,
    ``disc_adam.v.<name>`` and ``disc_adam.t`` (1,), the step count as a float.
    """

    fused_step = False  # the discriminator passes read eps: explicit noise, not the fused key

    name = "aae"
    help = "adversarial autoencoder: a discriminator on z matches q(z) to a Gaussian or mixture"
    bound_name = "reconstruction term E_q log p(x|z)"
    flags = tuple(f for f in VAE.flags if f.dest == "samples") + (
        Flag("--target", "target", "gaussian", "target prior of z", dict(choices=TARGETS)),
        Flag(
            "--components",
            "components",
            10,
            "components of the mixture target",
            dict(type=positive_int, metavar="C"),
        ),
        Flag(
            "--adv-weight",
            "adv_weight",
            1.0,
            "weight of the generator loss",
            dict(type=nonneg_float, metavar="W"),
        ),
        Flag(
            "--disc-hidden",
            "disc_hidden",
            (64, 64),
            "discriminator hidden widths",
            dict(type=int_list, metavar="H1,H2,..."),
        ),
        Flag(
            "--disc-lr",
            "disc_lr",
            1e-3,
            "discriminator learning rate",
            dict(type=positive_float, metavar="LR"),
        ),
    )

    def __init__(
        self,
        data_dim,
        latent_dim=2,
        hidden=(200, 200),
        activation="tanh",
        likelihood="bernoulli",
        decoder_variance="learned",
        n_samples=1,
        target="gaussian",
        n_components=10,
        adv_weight=1.0,
        disc_hidden=(64, 64),
        disc_lr=1e-3,
        saturating=False,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            decoder_variance,
            n_samples=n_samples,
            seed=seed,
            dtype=dtype,
        )
        f = "AAE"
        self.target = check_param(target, "target", f, kind="choice", choices=TARGETS)
        self.n_components = check_param(
            n_components, "n_components", f, kind="int", low=1, low_inclusive=True
        )
        if self.target == "mixture" and self.latent_dim < 2:
            raise ValueError(
                f"{f}: expected latent_dim >= 2 with target='mixture' (its components lie on a "
                f"circle in the first two dimensions), got {self.latent_dim}."
            )
        self.adv_weight = check_param(adv_weight, "adv_weight", f, low=0, low_inclusive=True)
        self.disc_hidden = tuple(
            check_param(h, "disc_hidden", f, kind="int", low=1, low_inclusive=True)
            for h in disc_hidden
        )
        self.disc_lr = check_param(disc_lr, "disc_lr", f, low=0)
        self.saturating = check_param(
            saturating, "saturating", f, kind="choice", choices=(False, True)
        )
        rng = np.random.default_rng([self.seed, _DISC_STREAM])
        self.discriminator = Discriminator(
            self.latent_dim, self.disc_hidden, rng, activation="relu", dtype=self.dtype
        )
        for k, v in self.discriminator.params.items():
            self.params[f"disc_adam.m.{k}"] = np.zeros_like(v)
            self.params[f"disc_adam.v.{k}"] = np.zeros_like(v)
        self.params["disc_adam.t"] = np.zeros(1, dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.mixture = None
        if self.target == "mixture":
            self.mixture = circle_mixture(self.latent_dim, self.n_components)

    @classmethod
    def from_args(cls, args, data_dim):
        """The AAE of ``lvmcore train --model aae``."""
        return cls(
            data_dim,
            latent_dim=args.latent,
            hidden=args.hidden,
            activation=args.activation,
            likelihood=args.likelihood,
            n_samples=args.samples,
            target=args.target,
            n_components=args.components,
            adv_weight=args.adv_weight,
            disc_hidden=args.disc_hidden,
            disc_lr=args.disc_lr,
            seed=args.seed,
            dtype=args.dtype,
        )

    def config(self):
        c = super().config()
        for key in ("kl", "beta", "free_bits"):
            c.pop(key)
        c.update(
            model=self.name,
            target=self.target,
            n_components=self.n_components,
            adv_weight=self.adv_weight,
            disc_hidden=list(self.disc_hidden),
            disc_lr=self.disc_lr,
            saturating=self.saturating,
        )
        return c

    def modules(self):
        return {
            "encoder": self.encoder,
            "decoder": self.decoder,
            "discriminator": self.discriminator,
        }

    def state_arrays(self):
        """The discriminator's weights and its Adam state (m, v per weight, and t)."""
        out = {f"discriminator.{k}": v for k, v in self.discriminator.params.items()}
        out.update(self.params)
        return out

    @property
    def default_kl_weight(self):
        """``adv_weight``: the trainer's warm-up ramps the generator loss's weight."""
        return self.adv_weight

    # ------------------------------------------------------------------ the target prior
    def _mixture_arrays(self):
        """The mixture target's (mu (C, Z), logvar (C, Z), log_pi (C,)) on the device."""
        log_pi, means, variances = self.mixture
        xp, dt = self.xp, self.dtype
        return (
            xp.asarray(means.astype(dt)),
            xp.asarray(np.log(variances).astype(dt)),
            xp.asarray(log_pi.astype(dt)),
        )

    def target_log_prob(self, z):
        """log p_target(z) of latents (..., Z), shape (...)."""
        if self.target == "gaussian":
            Z = z.shape[-1]
            return -0.5 * (z * z).sum(axis=-1) - self.dtype.type(Z * _HALF_LOG_2PI)
        mu, logvar, log_pi = self._mixture_arrays()
        return mixture_log_prob_forward(z, mu, logvar, log_pi)[0]

    def sample_target(self, rng, n):
        """n draws of the target prior, (n, Z)."""
        if self.target == "gaussian":
            return gaussian_target_sample(rng, n, self.latent_dim, self.dtype, like=self._like())
        return mixture_target_sample(rng, n, self.mixture, self.dtype, like=self._like())[0]

    def sample(self, rng, n):
        """n samples: z from the target prior, then the decoder's mean (n, D)."""
        n = self._check_sample(rng, n, "AAE.sample")
        if n == 0:  # the target samplers draw at least one point
            return self.xp.zeros((0, self.data_dim), dtype=self.dtype)
        return self.decode(self.sample_target(rng, n))

    # ------------------------------------------------------------------ objective
    def forward(self, x, eps, kl_weight=None):
        """Reconstruction loss plus the weighted generator loss, for fixed noise eps (L, B, Z).

        ``kl_weight`` is the generator loss's weight (``adv_weight`` when None).

        Returns
        -------
        loss : float
            :math:`-\\tfrac{1}{LB}\\sum \\log p(x|z) + w\\,L_G(D(z))`.
        cache : AAECache
        """
        w = self.adv_weight if kl_weight is None else float(kl_weight)
        p = self._forward_samples(x, eps)
        L, B, Z = eps.shape
        logits, disc = self.discriminator.forward(p.z.reshape(L * B, Z))  # (N,)
        gen_loss, gen = generator_loss_forward(logits, saturating=self.saturating)
        loss = -float(p.log_px_z.mean()) + w * gen_loss
        stats = dict(log_px_z=p.log_px_z.mean(axis=0), gen_loss=gen_loss)
        return loss, AAECache(p, disc, gen, w, stats)

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` into the encoder and decoder.

        Notes
        -----
        Each of the L*B likelihood rows has weight -dloss / (L B); the generator loss gives
        dlogits (N,), which the discriminator's backward turns into dz; the discriminator's
        parameter gradients from this pass are cleared, since D does not minimize the generator
        loss (it takes its own step in ``loss_and_grads``).
        """
        p = cache.samples
        xp = get_xp(p.mu)
        eps = p.reparam.eps
        L, B, Z = eps.shape
        dt = self.dtype.type
        dnll = xp.full(L * B, dt(dloss / (L * B)), dtype=self.dtype)
        if self.likelihood == "bernoulli":
            dout = bernoulli_nll_backward(dnll, p.lik)
        else:
            dout, dlv = gaussian_nll_backward(dnll, p.lik)
            if self.decoder_variance == "learned":
                self.decoder.grads["logvar"] += dlv
        dz = self.decoder.backward(dout, p.dec).reshape(L, B, Z)  # (L, B, Z)
        dlogits = generator_loss_backward(cache.gen, dloss * cache.adv_weight)  # (N,)
        saved = {k: g.copy() for k, g in self.discriminator.grads.items()}
        dz += self.discriminator.backward(dlogits, cache.disc).reshape(L, B, Z)
        for k, g in self.discriminator.grads.items():
            g[...] = saved[k]
        dmu, dlogvar = reparam_backward(dz, p.reparam)
        self.encoder.backward(xp.concatenate([dmu, dlogvar], axis=1), p.enc, need_dx=False)

    def _step_end(self, loss, cache, rng):
        """The discriminator step on this step's codes; returns the step statistics: ``bound``
        (= ``recon``, the reconstruction term), ``gen_loss``, ``disc_loss`` (before D's
        update) and ``disc_accuracy`` (the share of the 2N points D classifies right)."""
        z = self._batch_rows(cache.samples.z, axis=1)  # (L, B_all, Z): the whole batch's codes
        z_post = z.reshape(-1, self.latent_dim)
        z_prior = self.sample_target(rng, z_post.shape[0])
        disc_loss, accuracy = self.discriminator_step(z_prior, z_post)
        recon = float(cache.stats["log_px_z"].mean())
        return dict(
            bound=recon,
            recon=recon,
            gen_loss=cache.stats["gen_loss"],
            disc_loss=disc_loss,
            disc_accuracy=accuracy,
        )

    def discriminator_loss(self, z_prior, z_post):
        """The discriminator's loss on target draws (P, Z) and codes (Q, Z), and its cache:
        ``(loss, (prior cache, post cache, loss cache))``."""
        d_prior, c_prior = self.discriminator.forward(z_prior)  # (P,)
        d_post, c_post = self.discriminator.forward(z_post)  # (Q,)
        loss, lc = discriminator_loss_forward(d_prior, d_post)
        return loss, (c_prior, c_post, lc)

    def discriminator_loss_backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss *`` the discriminator's loss into its ``grads``."""
        c_prior, c_post, lc = cache
        dp, dq = discriminator_loss_backward(lc, dloss)
        self.discriminator.backward(dp, c_prior, need_dx=False)
        self.discriminator.backward(dq, c_post, need_dx=False)

    def discriminator_step(self, z_prior, z_post):
        """One Adam step of the discriminator on target draws and codes (state in
        ``state_arrays``); its gradients are zero again afterwards. Returns (loss before the
        step, accuracy before the step)."""
        disc = self.discriminator
        disc.zero_grad()
        loss, cache = self.discriminator_loss(z_prior, z_post)
        c_prior, c_post, lc = cache
        accuracy = float(
            ((lc.logits_prior > 0).sum() + (lc.logits_post <= 0).sum())
            / (z_prior.shape[0] + z_post.shape[0])
        )
        self.discriminator_loss_backward(cache)
        opt = Adam(disc.params, disc.grads, lr=self.disc_lr, betas=_DISC_BETAS)
        # the optimizer's buffers are the model's state arrays, updated in place
        opt.m = {k: self.params[f"disc_adam.m.{k}"] for k in disc.params}
        opt.v = {k: self.params[f"disc_adam.v.{k}"] for k in disc.params}
        opt.t = int(round(float(self.params["disc_adam.t"][0])))
        opt.step()
        self.params["disc_adam.t"][0] = opt.t
        disc.zero_grad()
        return loss, accuracy

    # ------------------------------------------------------------------ bounds
    def log_weights(self, x, eps):
        """log w = log p(x|z) + log p_target(z) - log q(z|x) for fixed eps (K, B, Z); (K, B)."""
        p = self._forward_samples(x, eps, need_grad=False)
        Z = eps.shape[-1]
        log_q = -0.5 * ((eps * eps).sum(axis=-1) + p.logvar.sum(axis=-1))
        log_q = log_q - self.dtype.type(Z * _HALF_LOG_2PI)  # (K, B)
        return p.log_px_z + self.target_log_prob(p.z) - log_q

    concurrent_draws = False  # its own sampler, through the readable forward

    def log_weight_sampler(self, x, rng):
        """The base sampler (fresh noise per chunk): the VAE's fused kernel assumes N(0, I)."""
        return Model.log_weight_sampler(self, x, rng)

    def bound(self, x, rng, batch_size=1000):
        """Per-example reconstruction term E_q log p(x|z) with the model's L samples, (N,)."""
        return self._per_batch(x, rng, batch_size, "AAE.bound", elbo=False)

    def elbo(self, x, rng, batch_size=1000):
        """Per-example ELBO with the target as the prior (the sampled KL), (N,)."""
        return self._per_batch(x, rng, batch_size, "AAE.elbo", elbo=True)

    def _per_batch(self, x, rng, batch_size, func, elbo):
        batch_size = self._check_eval(x, rng, batch_size, func)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            eps = self.draw_noise(rng, xb.shape[0])
            if elbo:
                out.append(self.log_weights(xb, eps).mean(axis=0))
            else:
                out.append(self._forward_samples(xb, eps, need_grad=False).log_px_z.mean(axis=0))
        return self._rows(out, get_xp(x))

    def write_extra_pictures(self, x, out):
        """``aggregate_posterior.png``: the posterior means of x over draws of the target, in the
        first two latent dimensions (none for Z = 1 or an empty x)."""
        if self.latent_dim < 2 or not x.shape[0]:
            return []
        from ..latent import write_latent_scatter

        mu, _ = self.encode(x)
        ref = self.sample_target(np.random.default_rng([self.seed, 0, 0, 13]), 2000)
        path = Path(os.fspath(out)) / "aggregate_posterior.png"
        title = f"Aggregate posterior (colour) over the {self.target} target (grey)"
        return [write_latent_scatter(mu, path, dims=(0, 1), reference=ref, title=title)["path"]]
