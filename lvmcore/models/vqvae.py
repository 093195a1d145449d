"""VQ-VAE (van den Oord et al. 2017) with an MLP encoder and decoder and a hand-written backward.

Shapes: B batch, D data, H hidden, S code slots per example, E code dimension, M codebook size.

Forward (one step)::

    z_e = encoder(x).reshape(B, S, E)                   MLP D -> H... -> S*E
    k, z_q = nearest code of each slot, e_k             (B*S,), (B, S, E)   lvmcore.ops.vq
    logits = decoder(z_q.reshape(B, S*E))               MLP S*E -> ...H -> D, (B, D)
    loss = mean_B NLL(x | logits)                       Bernoulli, summed over D
           + codebook loss      (codebook_update="loss" only)
           + commitment loss    (beta included)

Both VQ terms are means over B of sums over S and E (see :mod:`lvmcore.ops.vq`).

Backward, in reverse: Bernoulli NLL -> decoder -> dz_q; straight-through dz_e = dz_q plus the
commitment gradient; the codebook gradient from the codebook loss only; encoder. The gradient
flow is documented in :mod:`lvmcore.ops.vq`.

Codebook updates
----------------
- ``"loss"``: the codebook is a parameter like any other, moved by the optimizer along the
  gradient of the codebook loss.
- ``"ema"``: the codebook is moved by the EMA rule (:func:`lvmcore.ops.codebook.
  ema_codebook_update`) inside :meth:`VQVAE.loss_and_grads`, after the backward pass, with the
  assignment of that forward pass (as Sonnet's ``VectorQuantizerEMA`` does in its forward). The
  codebook loss is then left out of the loss, so the codebook's gradient is identically zero and
  an optimizer leaves it exactly as it is (Adam: m = v = 0 gives a step of 0 / eps = 0; SGD:
  a step of lr * 0).

State that is not trained by gradients (EMA statistics, code ages) is the model's
``state_arrays()``, entries of ``parameters()`` with gradients that stay zero, so checkpoints
store it and a run resumed from a checkpoint continues bit for bit (see :mod:`lvmcore.train`).
The EMA statistics, the code counts and the rows that re-seed dead codes span the batch: they
are taken over ``_batch_rows`` (see :mod:`lvmcore.models.base`).

Bound
-----
With a uniform prior p(k) = 1/M per slot and a deterministic one-hot posterior q(k|x), the KL
term of the ELBO is the constant S log M, so ELBO = -NLL_recon - S log M. ``bound`` returns the
per-example reconstruction log-likelihood log p(x|z_q) (what training improves), ``elbo`` the
ELBO. Neither is a K-sample estimate of log p(x); that needs a learned prior over codes.
"""

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._validation import check_param, get_xp, to_numpy
from ..cli._types import nonneg_float, positive_int, unit_float
from ..evaluate import standard_error
from ..losses import bernoulli_nll_backward, bernoulli_nll_forward
from ..nn import MLP
from ..ops import sigmoid
from ..ops.codebook import ema_codebook_update, kmeans_codebook, reseed_codes
from ..ops.vq import VQFrozen, code_counts, perplexity, vq_backward, vq_forward
from .base import Flag, Model

__all__ = ["VQVAE", "VQVAECache", "VQFrozen"]

_KMEANS_STREAM = 9  # rng stream of the k-means initialisation: default_rng([seed, 0, 0, 9])


class VQVAECache(NamedTuple):
    """Everything backward and the codebook updates need."""

    x: object  # (B, D) data
    enc: object  # encoder MLPCache
    z_e: object  # (B, S, E) encoder output
    vq: object  # VQCache: diff (B*S, E), index (B*S,)
    dec: object  # decoder MLPCache
    lik: object  # BernoulliNLLCache over (B, D)
    nll: object  # (B,) reconstruction NLL per example
    losses: object  # VQLosses (codebook, commitment)


class VQVAE(Model):
    """Vector-quantized autoencoder with a Bernoulli decoder.

    Parameters
    ----------
    data_dim : int
        D, the width of a (binary) data row.
    codes : int
        M, the codebook size.
    slots : int
        S, code slots per example (the encoder outputs S vectors of E numbers).
    code_dim : int
        E.
    hidden : sequence of int
        Hidden widths of the encoder; the decoder mirrors them.
    activation : {"tanh", "relu", "softplus"}
    beta : float
        Weight of the commitment loss (0.25 in the paper).
    codebook_update : {"loss", "ema"}
        Move the codebook by the optimizer along the codebook loss, or by exponential moving
        averages (see the module docstring).
    ema_decay : float in (0, 1)
        gamma of the EMA update.
    ema_eps : float
        Laplace smoothing of the EMA cluster sizes.
    dead_code_steps : int
        A code not assigned to any slot for this many consecutive training steps is dead
        (counted in the ``dead_codes`` statistic).
    reset_dead_codes : bool
        Re-seed every dead code from a random encoder output of the current batch (drawn with
        the step's explicit rng) and restart its age; with EMA its statistics restart at one
        row: cluster size 1, sum = the new code. With ``"loss"`` the optimizer's moments of
        that row are left as they are (they belong to the optimizer; a dead code's gradient
        has been zero for ``dead_code_steps`` steps, so they have decayed).
    kmeans_init : bool
        At the start of training (:meth:`init_output_bias`, called once by ``fit`` for a fresh
        run), set the codebook to k-means centres of encoder outputs of the first training
        examples (:meth:`init_codebook_kmeans`).
    kmeans_iters : int
        Lloyd iterations of that initialisation.
    seed : int
        Seeds the Glorot initialisation and the codebook (an explicit generator).
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``encoder.W0 ... encoder.b<n>``, ``decoder.W0 ... decoder.b<n>``, ``codebook``
    (M, E); state arrays with zero gradients: ``code_age`` (M,) (steps since each code was last
    assigned, as a float), and with EMA ``ema_cluster_size`` (M,) and ``ema_code_sum`` (M, E).

    The codebook starts uniform in [-1/M, 1/M] per coordinate (the common VQ-VAE
    initialisation); the EMA statistics start at one row per code (cluster size 1, sum = the
    code), so the first updates move the codes towards their data at rate 1 - gamma.
    """

    name = "vqvae"
    help = "VQ-VAE: nearest-codebook quantization, straight-through gradient"
    bound_name = "reconstruction log-likelihood log p(x|z_q)"
    likelihood = "bernoulli"
    has_sample = True
    has_reconstruct = True
    flags = (
        Flag("--codes", "codes", 512, "codebook size", dict(type=positive_int, metavar="M")),
        Flag("--slots", "slots", 8, "code slots per example", dict(type=positive_int, metavar="S")),
        Flag(
            "--code-dim",
            "code_dim",
            16,
            "dimension of a code",
            dict(type=positive_int, metavar="E"),
        ),
        Flag(
            "--commitment-beta",
            "commitment_beta",
            0.25,
            "weight of the commitment loss",
            dict(type=nonneg_float, metavar="BETA"),
        ),
        Flag(
            "--codebook-update",
            "codebook_update",
            "loss",
            "move the codebook by the codebook loss or by EMA",
            dict(choices=("loss", "ema")),
        ),
        Flag(
            "--ema-decay",
            "ema_decay",
            0.99,
            "decay of the EMA codebook update",
            dict(type=unit_float, metavar="G"),
        ),
        Flag(
            "--dead-code-steps",
            "dead_code_steps",
            100,
            "a code unused for N training steps is dead",
            dict(type=positive_int, metavar="N"),
        ),
        Flag(
            "--reset-dead-codes",
            "reset_dead_codes",
            False,
            "re-seed dead codes from encoder outputs of the current batch",
            dict(action="store_const", const=True),
        ),
        Flag(
            "--kmeans-init",
            "kmeans_init",
            False,
            "initialise the codebook by k-means on the first encoder outputs",
            dict(action="store_const", const=True),
        ),
    )

    def __init__(
        self,
        data_dim,
        codes=512,
        slots=8,
        code_dim=16,
        hidden=(200, 200),
        activation="relu",
        beta=0.25,
        codebook_update="loss",
        ema_decay=0.99,
        ema_eps=1e-5,
        dead_code_steps=100,
        reset_dead_codes=False,
        kmeans_init=False,
        kmeans_iters=10,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = "VQVAE"
        pos = dict(kind="int", low=1, low_inclusive=True)
        self.data_dim = check_param(data_dim, "data_dim", f, **pos)
        self.codes = check_param(codes, "codes", f, **pos)
        self.slots = check_param(slots, "slots", f, **pos)
        self.code_dim = check_param(code_dim, "code_dim", f, **pos)
        self.hidden = tuple(check_param(h, "hidden", f, **pos) for h in hidden)
        self.activation = check_param(
            activation, "activation", f, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.beta = check_param(beta, "beta", f, low=0, low_inclusive=True)
        self.codebook_update = check_param(
            codebook_update, "codebook_update", f, kind="choice", choices=("loss", "ema")
        )
        self.ema_decay = check_param(ema_decay, "ema_decay", f, low=0, high=1, high_inclusive=False)
        self.ema_eps = check_param(ema_eps, "ema_eps", f, low=0)
        self.dead_code_steps = check_param(dead_code_steps, "dead_code_steps", f, **pos)
        self.reset_dead_codes = check_param(
            reset_dead_codes, "reset_dead_codes", f, kind="choice", choices=(False, True)
        )
        self.kmeans_init = check_param(
            kmeans_init, "kmeans_init", f, kind="choice", choices=(False, True)
        )
        self.kmeans_iters = check_param(
            kmeans_iters, "kmeans_iters", f, kind="int", low=0, low_inclusive=True
        )
        self.seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"VQVAE: expected dtype float32 or float64, got {self.dtype}.")
        rng = np.random.default_rng(self.seed)
        D, H, M, S, E = self.data_dim, self.hidden, self.codes, self.slots, self.code_dim
        self.encoder = MLP((D, *H, S * E), self.activation, rng, self.dtype)
        self.decoder = MLP((S * E, *H[::-1], D), self.activation, rng, self.dtype)
        codebook = rng.uniform(-1.0 / M, 1.0 / M, size=(M, E)).astype(self.dtype)  # (M, E)
        self.params = {"codebook": codebook, "code_age": np.zeros(M, dtype=self.dtype)}
        if self.codebook_update == "ema":
            self.params["ema_cluster_size"] = np.ones(M, dtype=self.dtype)  # (M,)
            self.params["ema_code_sum"] = codebook.copy()  # (M, E)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @classmethod
    def from_args(cls, args, data_dim):
        """The VQ-VAE of ``lvmcore train --model vqvae``."""
        cls._refuse_flags(args, ("latent",))
        if args.likelihood != "bernoulli":
            raise ValueError(
                f"expected --likelihood bernoulli with --model vqvae (its decoder is "
                f"Bernoulli), got {args.likelihood}."
            )
        if args.kl_warmup_epochs:
            raise ValueError(
                f"expected --kl-warmup-epochs 0 with --model vqvae (it has no KL term "
                f"to anneal), got {args.kl_warmup_epochs}."
            )
        return cls(
            data_dim,
            codes=args.codes,
            slots=args.slots,
            code_dim=args.code_dim,
            hidden=args.hidden,
            activation=args.activation,
            beta=args.commitment_beta,
            codebook_update=args.codebook_update,
            ema_decay=args.ema_decay,
            dead_code_steps=args.dead_code_steps,
            reset_dead_codes=args.reset_dead_codes,
            kmeans_init=args.kmeans_init,
            seed=args.seed,
            dtype=args.dtype,
        )

    # ------------------------------------------------------------------ parameters
    def config(self):
        """The constructor arguments, JSON-serialisable (written into checkpoints)."""
        return dict(
            model=self.name,
            data_dim=self.data_dim,
            codes=self.codes,
            slots=self.slots,
            code_dim=self.code_dim,
            hidden=list(self.hidden),
            activation=self.activation,
            beta=self.beta,
            codebook_update=self.codebook_update,
            ema_decay=self.ema_decay,
            ema_eps=self.ema_eps,
            dead_code_steps=self.dead_code_steps,
            reset_dead_codes=self.reset_dead_codes,
            kmeans_init=self.kmeans_init,
            kmeans_iters=self.kmeans_iters,
            seed=self.seed,
            dtype=self.dtype.name,
        )

    @property
    def codebook(self):
        """The live (M, E) codebook array."""
        return self.params["codebook"]

    def modules(self):
        return {"encoder": self.encoder, "decoder": self.decoder}

    def state_arrays(self):
        """``code_age`` (M,) and, with EMA, ``ema_cluster_size`` (M,) and ``ema_code_sum``
        (M, E)."""
        return {k: v for k, v in self.params.items() if k != "codebook"}

    def init_output_bias(self, x_train):
        """Data-dependent initialisation, called once by ``fit`` at the start of a fresh run.

        Sets the decoder's output bias to the logit of the pixel means (clipped to
        [1e-3, 1 - 1e-3]), as the VAE does, and with ``kmeans_init`` runs
        :meth:`init_codebook_kmeans` on the first ``ceil(20 M / S)`` rows of ``x_train``
        (at least M encoder outputs; all rows if there are fewer), with the generator
        ``default_rng([seed, 0, 0, 9])``.
        """
        self._init_output_bias_to_data_mean(x_train, self.decoder)
        if self.kmeans_init:
            n = min(x_train.shape[0], math.ceil(20 * self.codes / self.slots))
            rng = np.random.default_rng([self.seed, 0, 0, _KMEANS_STREAM])
            self.init_codebook_kmeans(x_train[:n].astype(self.dtype, copy=False), rng)

    def init_codebook_kmeans(self, x, rng, iters=None):
        """Set the codebook to k-means centres of the encoder outputs of x (its B*S rows).

        k-means++ seeding drawn with ``rng``, then ``iters`` Lloyd iterations (``kmeans_iters``
        when None); see :func:`lvmcore.ops.codebook.kmeans_codebook`.
        Needs B*S >= M. With EMA the statistics restart at one row per code; code ages restart
        at 0.
        """
        self._check_x(x, "VQVAE.init_codebook_kmeans")
        h, _ = self.encoder.forward(x)  # (B, S*E)
        z = h.reshape(-1, self.code_dim)  # (B*S, E)
        iters = self.kmeans_iters if iters is None else iters
        self.params["codebook"][...] = kmeans_codebook(z, self.codes, rng, iters)
        self._restart_state(self.xp.ones(self.codes, dtype=bool))

    def _restart_state(self, which):
        """Code age 0 and, with EMA, one row per code (size 1, sum = code) for codes ``which``."""
        self.params["code_age"][which] = 0
        if self.codebook_update == "ema":
            self.params["ema_cluster_size"][which] = 1
            self.params["ema_code_sum"][which] = self.params["codebook"][which]

    # ------------------------------------------------------------------ pieces
    def quantize(self, x):
        """Codes of every slot, (B, S) int64 (the nearest code to each encoder output)."""
        return self._codes(self._check_x(x, "VQVAE.quantize"))

    def _codes(self, x):
        h, _ = self.encoder.forward(x)  # (B, S*E)
        _, _, vq = vq_forward(h.reshape(-1, self.slots, self.code_dim), self.codebook, self.beta)
        return vq.index.reshape(-1, self.slots)

    def decode_codes(self, index):
        """Bernoulli means (B, D) of the decoder at codes ``index`` (B, S)."""
        z_q = self.codebook[index].reshape(index.shape[0], self.slots * self.code_dim)
        out, _ = self.decoder.forward(z_q)
        return sigmoid(out)

    def sample(self, rng, n):
        """n samples under the uniform prior over codes: each slot's code drawn uniformly,
        then the decoder's mean (n, D). (A VQ-VAE is usually sampled through a learned prior
        over codes; this shows what the uniform prior of the bound gives.)"""
        return self.decode_codes(self.xp.asarray(rng.integers(0, self.codes, size=(n, self.slots))))

    def reconstruct(self, x):
        """Decoder mean at the quantized encoding of x: (B, D)."""
        return self.decode_codes(self.quantize(x))

    # ------------------------------------------------------------------ objective
    def draw_noise(self, rng, batch_size, n_samples=None):
        """None: the forward pass of a VQ-VAE draws no noise (``loss_and_grads`` uses its
        generator only to re-seed dead codes)."""
        return None

    def forward(self, x, noise=None, *, index=None, frozen=None, need_grad=True):
        """The training loss for a batch, and a cache for :meth:`backward`.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        noise : None
            A VQ-VAE's forward pass is deterministic (the contract's noise argument).
        index : ndarray of int of shape (B*S,) or (B, S), optional
            A fixed code assignment (finite-difference checks); the nearest codes when None.
        frozen : VQFrozen, optional
            Values of the stop-gradient arguments (finite-difference checks only; see
            :mod:`lvmcore.ops.vq`).
        need_grad : bool
            Also form what :meth:`backward` needs from the likelihood (False: evaluation only).

        Returns
        -------
        loss : float
            ``mean_B NLL + [codebook loss] + commitment``; the codebook loss only with
            ``codebook_update="loss"``.
        cache : VQVAECache
        """
        h, enc = self.encoder.forward(x)  # (B, S*E)
        return self._forward_encoded(x, h, enc, index, frozen, need_grad)

    def _forward_encoded(self, x, h, enc, index=None, frozen=None, need_grad=True):
        """The rest of :meth:`forward`, from the encoder output h (B, S*E) and its cache."""
        B = x.shape[0]
        S, E = self.slots, self.code_dim
        z_e = h.reshape(B, S, E)  # (B, S, E)
        z_q, losses, vq = vq_forward(
            z_e, self.codebook, self.beta, index=index, frozen=frozen
        )  # (B, S, E)
        logits, dec = self.decoder.forward(z_q.reshape(B, S * E))  # (B, D)
        # the logits are a temporary, so the fused kernel writes the gradient over them
        nll, lik = bernoulli_nll_forward(
            logits, x, need_grad=need_grad, overwrite_logits=True
        )  # (B,)
        loss = float(nll.mean()) + losses.commitment
        if self.codebook_update == "loss":
            loss += losses.codebook
        return loss, VQVAECache(x, enc, z_e, vq, dec, lik, nll, losses)

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` into every parameter's gradient.

        A cache serves one backward: the likelihood's gradient is formed in its memory.

        Notes
        -----
        dlogits = dloss/B (sigmoid(l) - x); the decoder gives dz_q; :func:`vq_backward` gives
        dz_e = dz_q + dloss beta (2/B)(z_e - e_k) and, with ``codebook_update="loss"``,
        dcodebook = -dloss (2/B) sum_{k[n]=m}(z_e[n] - e_m); the encoder takes dz_e.
        """
        xp = get_xp(cache.nll)
        B = cache.x.shape[0]
        S, E = self.slots, self.code_dim
        dnll = xp.full(B, self.dtype.type(dloss / B), dtype=self.dtype)  # (B,)
        dlogits = bernoulli_nll_backward(dnll, cache.lik)  # (B, D)
        dz_q = self.decoder.backward(dlogits, cache.dec).reshape(B, S, E)  # (B, S, E)
        by_loss = self.codebook_update == "loss"
        dz_e, dcodebook = vq_backward(
            dz_q, cache.vq, dcodebook_loss=dloss if by_loss else 0.0, dcommit=dloss
        )
        if by_loss:
            self.grads["codebook"] += dcodebook
        self.encoder.backward(dz_e.reshape(B, S * E), cache.enc, need_dx=False)

    def loss_and_grads(self, x, rng, *, kl_weight=None, validate=True, update_codebook=True):
        """One training evaluation: zero the gradients, forward, backward, codebook updates.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        rng : numpy.random.Generator
            Draws the rows that re-seed dead codes (nothing else here is random).
        kl_weight : None
            Accepted for the training loop's interface; a VQ-VAE has no KL term to anneal.
        validate : bool
            Check x (binary, the model's dtype and width).
        update_codebook : bool
            Apply the EMA update, the code ages and the dead-code reset after the backward
            (False: gradients only, the model is left unchanged).

        Returns
        -------
        loss : float
            NaN when the encoder output is not finite (a diverged model; the trainer then
            stops with TrainingDivergedError); no gradients or updates are computed then.
        stats : dict
            Means over the batch: ``bound`` (= ``recon``, log p(x|z_q)), ``elbo``
            (bound - S log M), ``recon``, ``codebook_loss`` (reported in EMA mode too),
            ``commitment`` (beta included); and ``perplexity`` (of this batch's code usage),
            ``used_codes`` (distinct codes in the batch), ``dead_codes`` (codes unused for
            ``dead_code_steps`` steps, counted before any reset) and ``reset_codes``.
        """
        if kl_weight is not None:
            raise ValueError(
                f"VQVAE.loss_and_grads: expected kl_weight None (a VQ-VAE has no "
                f"KL term to anneal), got {kl_weight!r}. Train with "
                f"kl_warmup_epochs=0."
            )
        if validate:
            self._check_x(x, "VQVAE.loss_and_grads")
        self.zero_grad()
        h, enc = self.encoder.forward(x)  # (B, S*E)
        # over the whole batch's rows, so that every process of a data-parallel step takes the
        # same branch (and the same collectives below)
        if not bool(self._batch_rows(get_xp(h).isfinite(h).all(axis=1)).all()):
            nan = math.nan
            return nan, dict(
                bound=nan,
                elbo=nan,
                recon=nan,
                codebook_loss=nan,
                commitment=nan,
                perplexity=nan,
                used_codes=nan,
                dead_codes=nan,
                reset_codes=nan,
            )
        loss, cache = self._forward_encoded(x, h, enc)
        self.backward(cache)
        # the rows of the whole batch: the codebook statistics span it
        z = self._batch_rows(cache.z_e).reshape(-1, self.code_dim)  # (B*S, E)
        index = self._batch_rows(cache.vq.index.reshape(-1, self.slots)).reshape(-1)  # (B*S,)
        counts = code_counts(index, self.codes)  # (M,)
        dead = reset = 0
        if update_codebook:
            dead, reset = self._update_codebook(z, index, counts, rng)
        recon = -float(cache.nll.mean())
        return loss, dict(
            bound=recon,
            elbo=recon - self.slots * math.log(self.codes),
            recon=recon,
            codebook_loss=cache.losses.codebook,
            commitment=cache.losses.commitment,
            perplexity=perplexity(counts),
            used_codes=int((counts > 0).sum()),
            dead_codes=dead,
            reset_codes=reset,
        )

    def _update_codebook(self, z, index, counts, rng):
        """EMA update, code ages, dead-code reset (in place) from the encoder outputs z
        (B*S, E), their codes ``index`` (B*S,) and the code counts (M,). Returns the (dead,
        reset) counts."""
        p = self.params
        if self.codebook_update == "ema":
            size, total, codebook = ema_codebook_update(
                p["ema_cluster_size"],
                p["ema_code_sum"],
                z,
                index,
                self.ema_decay,
                self.ema_eps,
            )
            p["ema_cluster_size"][...] = size
            p["ema_code_sum"][...] = total
            p["codebook"][...] = codebook
        age = p["code_age"]
        age += 1
        age[counts > 0] = 0
        dead = age >= self.dead_code_steps  # (M,)
        n_dead = int(dead.sum())
        if not (self.reset_dead_codes and n_dead):
            return n_dead, 0
        p["codebook"][...], reseeded = reseed_codes(p["codebook"], dead, z, rng)
        self._restart_state(reseeded)
        return n_dead, int(reseeded.size)

    # ------------------------------------------------------------------ evaluation
    def bound(self, x, rng=None, batch_size=1000):
        """Per-example reconstruction log-likelihood log p(x | z_q(x)), shape (B,).

        Deterministic (``rng`` is accepted for the trainer's interface and unused).
        """
        self._check_x(x, "VQVAE.bound")
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            _, c = self.forward(x[i : i + batch_size], need_grad=False)
            out.append(-c.nll)
        return xp.concatenate(out) if out else xp.zeros(0, dtype=self.dtype)

    def elbo(self, x, rng=None, batch_size=1000):
        """Per-example ELBO under the uniform prior over codes: bound - S log M, shape (B,)."""
        return self.bound(x, rng, batch_size) - self.dtype.type(self.slots * math.log(self.codes))

    def code_usage(self, x, batch_size=1000):
        """How many of the B*S slots of x each code takes: int64 (M,)."""
        self._check_x(x, "VQVAE.code_usage")
        counts = 0
        for i in range(0, x.shape[0], batch_size):
            counts = counts + code_counts(self._codes(x[i : i + batch_size]).ravel(), self.codes)
        return counts if x.shape[0] else get_xp(x).zeros(self.codes, dtype=np.int64)

    def write_extra_pictures(self, x, out):
        """``code_usage.png``: how often each code is used on x (none for an empty x)."""
        if not x.shape[0]:
            return []
        from ..plots import plot_code_usage

        return [plot_code_usage(self.code_usage(x), Path(os.fspath(out)) / "code_usage.png")]

    def eval_report(self, x, batch_size=1000):
        """Reconstruction NLL and code usage of a data split, for ``lvmcore eval``.

        Returns
        -------
        info : dict
            ``recon_nll`` (mean over x of -log p(x|z_q), nats) and ``recon_nll_sem``,
            ``perplexity`` of the split's code usage, ``used_codes``, ``dead_codes`` (codes no
            slot of the split is assigned to), ``codes`` (M) and ``slots`` (S).
        lines : list of str
            The same, for printing.
        """
        self._check_x(x, "VQVAE.eval_report")
        nll, counts = [], np.zeros(self.codes, dtype=np.int64)
        for i in range(0, x.shape[0], batch_size):
            _, c = self.forward(x[i : i + batch_size], need_grad=False)
            nll.append(to_numpy(c.nll, np.float64))
            k = code_counts(c.vq.index, self.codes)
            counts += to_numpy(k)
        nll = np.concatenate(nll) if nll else np.zeros(0)
        sem = standard_error(nll)
        ppl = perplexity(counts)
        used = int((counts > 0).sum())
        info = dict(
            recon_nll=float(nll.mean()) if nll.size else math.nan,
            recon_nll_sem=sem,
            perplexity=ppl,
            used_codes=used,
            dead_codes=self.codes - used,
            codes=self.codes,
            slots=self.slots,
        )
        lines = [
            f"reconstruction NLL {info['recon_nll']:.3f} +- {sem:.3f} nats",
            f"code perplexity {ppl:.1f} of {self.codes} codes; {used} used, "
            f"{self.codes - used} dead (never assigned on this split)",
        ]
        return info, lines
