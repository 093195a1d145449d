"""Variational autoencoder with a diagonal-Gaussian encoder and a hand-written backward.

Shapes: B batch, D data, H hidden, Z latent, L samples per data point (K in the IWAE, which
shares the sample path below).

Forward (one step):
    h = encoder(x)                                   (B, 2Z)
    mu, logvar = h[:, :Z], h[:, Z:]                  (B, Z) each
    z = mu + exp(logvar / 2) * eps                   (L, B, Z)
    out = decoder(z.reshape(L*B, Z))                 (L*B, D) logits or means
    log p(x|z)                                       (L, B)
    KL per dimension (analytic or sampled)           (B, Z)
    loss = -mean_B mean_L log p(x|z) + w * sum_j max(lambda, mean_B KL_j)

The backward walks the same steps in reverse; every piece has a finite-difference test.
The batch-mean KL of free bits spans the batch: it is taken over ``_batch_rows`` (see
:mod:`lvmcore.models.base`).

Two paths of the sampling step, one noise
-----------------------------------------
``forward(x, noise)`` takes the noise in either of two forms of the same Philox stream:

- an array eps (L, B, Z) (``draw_noise``): the readable path, ``ops.reparam_forward`` and
  ``ops.reparam_backward``, with log q(z|x) and log p(z) written out from eps;
- a :class:`~lvmcore.models.noise_key.NoiseKey` of kind "normal" and shape (L, B, Z): the fused
  path. The kernel ``reparam_sample`` of the data's backend draws eps from the key, writes z and
  sums log q(z|x) and log p(z) in one pass, and its ``reparam_sample_backward`` regenerates eps
  from the key for dmu and dlogvar, so eps is never stored.

A training step (``loss_and_grads``), ``bound`` and ``elbo`` take the fused path. Keying, for a
caller who replays a step: the step's generator ``rng`` gives one 64-bit seed,
``seed = rng.integers(0, 2**64, dtype=uint64)`` (``lvmcore.noise.philox_key``; stream 0), and
eps[l, b, j] is element ``(l*B + b)*Z + j`` of that seed's normal stream, so
``draw_noise(rng, B)`` from a generator in the same state returns the step's eps (equal to the
kernel's to its few ulp; the uniforms behind them bit for bit). The K-sample evaluation
(``log_weight_sampler``) reads the same stream the same way: sample s of row b is element
``(s*B + b)*Z + j`` of the normal stream of a seed drawn once per evaluation batch, so a step
and an evaluation with one seed see the same z. Tests prove both paths equal to float rounding
in float32 and float64.

A data-parallel process that draws the global batch's noise and keeps its rows
(``noise_rows(draw_noise(rng, B), a, b)``, see :mod:`lvmcore.models.base`) passes an array,
and so takes the readable path with the same noise.
"""

import math
from typing import ClassVar, NamedTuple

import numpy as np

from .. import noise
from .._validation import check_float_dtype, check_param, check_sizes, get_xp
from ..backend import get_backend
from ..cli._types import nonneg_float, positive_int
from ..distributions.kl import (
    KLNormalStdCache,
    kl_normal_std_per_dim,
    kl_normal_std_per_dim_backward,
)
from ..losses import (
    bernoulli_nll_backward,
    bernoulli_nll_forward,
    gaussian_nll_backward,
    gaussian_nll_forward,
    kl_term_backward,
    kl_term_forward,
)
from ..nn import MLP, BufferedMLPCache
from ..ops import reparam_backward, reparam_forward, sigmoid
from .base import Flag, Model
from .noise_key import NoiseKey, draw_key

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class FusedReparam(NamedTuple):
    """The fused kernel's side of the sample path: its key, its densities and the backend
    whose ``reparam_sample_backward`` regenerates eps from the key (eps is never stored)."""

    key: NoiseKey  # the normal stream of eps (K, B, Z)
    log_q: object  # (K, B) log q(z|x)
    log_p: object  # (K, B) log p(z)
    backend: object


class SampleForward(NamedTuple):
    """Caches and values of the shared sample path, for K samples per data point (the VAE's
    L)."""

    enc: object  # encoder MLPCache
    mu: object  # (B, Z)
    logvar: object  # (B, Z)
    z: object  # (K, B, Z)
    reparam: object  # ReparamCache (eps (K, B, Z) held) or FusedReparam (eps regenerated)
    dec: object  # decoder MLPCache
    lik: object  # likelihood cache over (K*B, D)
    log_px_z: object  # (K, B)


class VAECache(NamedTuple):
    """Everything backward needs, each field with its shape."""

    x: object  # (B, D) data
    enc: object  # encoder MLPCache
    mu: object  # (B, Z)
    logvar: object  # (B, Z)
    reparam: object  # ReparamCache, eps (L, B, Z), or FusedReparam (eps regenerated)
    z: object  # (L, B, Z)
    dec: object  # decoder MLPCache
    lik: object  # likelihood cache over (L*B, D)
    kl_term: object  # KLTermCache (n: this process's rows)
    kl_weight: float
    stats: dict  # per-example quantities, for reporting


class VAE(Model):
    """Gaussian-encoder VAE with a Bernoulli or Gaussian decoder.

    Parameters
    ----------
    data_dim : int
        D, the width of a data row.
    latent_dim : int
        Z.
    hidden : sequence of int
        Hidden widths of the encoder; the decoder mirrors them.
    activation : {"tanh", "relu", "softplus"}
    likelihood : {"bernoulli", "gaussian"}
        Bernoulli for binary data (logits out), Gaussian for real-valued data.
    decoder_variance : "learned" or float
        Gaussian decoder only: a learned per-dimension log-variance vector
        (``decoder.logvar``, initialised at 0) or a fixed variance.
    kl : {"analytic", "sampled"}
        The closed-form KL to N(0, I), or the single-sample estimate log q(z|x) - log p(z).
    n_samples : int
        L, samples of z per data point.
    beta : float
        Weight of the KL term (beta-VAE); the trainer may anneal it.
    free_bits : float
        Floor, in nats per latent dimension, on the batch-mean KL (0 disables).
    seed : int
        Seeds the Glorot initialisation (an explicit generator, never global state).
    dtype : float32 or float64

    Notes
    -----
    Parameters are named ``encoder.W0 ... encoder.b<n>``, ``decoder.W0 ... decoder.b<n>``
    and, for a learned Gaussian variance, ``decoder.logvar`` (D,). The encoder's last
    layer outputs 2Z values: the first Z are mu, the last Z are log-variances.
    """

    name = "vae"
    help = "Gaussian-encoder VAE (ELBO)"
    bound_name = "ELBO"
    has_log_likelihood = True
    has_gaussian_latents = True
    has_sample = True
    has_reconstruct = True
    flags = (
        Flag("--kl", "kl", "analytic", "KL term", dict(choices=("analytic", "sampled"))),
        Flag(
            "--samples",
            "samples",
            1,
            "samples of z per example",
            dict(type=positive_int, metavar="L"),
        ),
        Flag("--beta", "beta", 1.0, "KL weight", dict(type=nonneg_float, metavar="BETA")),
        Flag(
            "--free-bits",
            "free_bits",
            0.0,
            "KL floor per latent dimension in nats",
            dict(type=nonneg_float, metavar="F"),
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
        kl="analytic",
        n_samples=1,
        beta=1.0,
        free_bits=0.0,
        seed=0,
        dtype=np.float32,
    ):
        super().__init__()
        f = type(self).__name__
        self.data_dim = check_param(data_dim, "data_dim", f, kind="int", low=1, low_inclusive=True)
        self.latent_dim = check_param(
            latent_dim, "latent_dim", f, kind="int", low=1, low_inclusive=True
        )
        self.hidden = check_sizes(hidden, "hidden", f)
        self.activation = check_param(
            activation, "activation", f, kind="choice", choices=("tanh", "relu", "softplus")
        )
        self.likelihood = check_param(
            likelihood, "likelihood", f, kind="choice", choices=("bernoulli", "gaussian")
        )
        if decoder_variance != "learned":
            decoder_variance = check_param(decoder_variance, "decoder_variance", f, low=0)
        self.decoder_variance = decoder_variance
        self.kl = check_param(kl, "kl", f, kind="choice", choices=("analytic", "sampled"))
        self.n_samples = check_param(
            n_samples, "n_samples", f, kind="int", low=1, low_inclusive=True
        )
        self.beta = check_param(beta, "beta", f, low=0, low_inclusive=True)
        self.free_bits = check_param(free_bits, "free_bits", f, low=0, low_inclusive=True)
        self.seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
        self.dtype = check_float_dtype(dtype, f)
        rng = np.random.default_rng(self.seed)
        Z, D, H = self.latent_dim, self.data_dim, self.hidden
        self.encoder = MLP((D, *H, 2 * Z), self.activation, rng, self.dtype)
        self.decoder = MLP((Z, *H[::-1], D), self.activation, rng, self.dtype)
        if self.likelihood == "gaussian" and self.decoder_variance == "learned":
            self.decoder._add_param("logvar", np.zeros(D, dtype=self.dtype))

    @classmethod
    def from_args(cls, args, data_dim):
        """The VAE of ``lvmcore train --model vae``."""
        return cls(
            data_dim,
            latent_dim=args.latent,
            hidden=args.hidden,
            activation=args.activation,
            likelihood=args.likelihood,
            kl=args.kl,
            n_samples=args.samples,
            beta=args.beta,
            free_bits=args.free_bits,
            seed=args.seed,
            dtype=args.dtype,
        )

    # ------------------------------------------------------------------ parameters
    def config(self):
        """The constructor arguments, JSON-serialisable (written into checkpoints)."""
        return dict(
            model=self.name,
            data_dim=self.data_dim,
            latent_dim=self.latent_dim,
            hidden=list(self.hidden),
            activation=self.activation,
            likelihood=self.likelihood,
            decoder_variance=self.decoder_variance,
            kl=self.kl,
            n_samples=self.n_samples,
            beta=self.beta,
            free_bits=self.free_bits,
            seed=self.seed,
            dtype=self.dtype.name,
        )

    def modules(self):
        return {"encoder": self.encoder, "decoder": self.decoder}

    @property
    def default_kl_weight(self):
        """``beta``: the KL weight of ``forward`` when none is given."""
        return self.beta

    def init_output_bias(self, x_train):
        """Set the decoder's output bias to the data mean: the logit of the pixel means
        (Bernoulli; clipped to [1e-3, 1 - 1e-3] because a constant pixel has an infinite
        logit) or the mean itself (Gaussian), as in Burda et al. (2016)."""
        self._init_output_bias_to_data_mean(x_train, self.decoder)

    # ------------------------------------------------------------------ pieces
    def encode(self, x):
        """Posterior parameters (mu, logvar), each (B, Z)."""
        h, _ = self.encoder.forward(x)
        Z = self.latent_dim
        return h[:, :Z], h[:, Z:]

    def decode(self, z):
        """Decoder output for z (N, Z): Bernoulli probabilities or Gaussian means (N, D)."""
        out, _ = self.decoder.forward(z)
        return sigmoid(out) if self.likelihood == "bernoulli" else out

    def sample(self, rng, n):
        """n samples from the model: z ~ N(0, I), then the decoder's mean (n, D)."""
        n = self._check_sample(rng, n, f"{type(self).__name__}.sample")
        z = noise.standard_normal(rng, (n, self.latent_dim), self.dtype, self._like())
        return self.decode(z)

    def reconstruct(self, x):
        """Decoder mean at the posterior mean: (B, D)."""
        mu, _ = self.encode(self._check_x(x, f"{type(self).__name__}.reconstruct"))
        return self.decode(mu)

    def _decoder_logvar(self, xp):
        if self.decoder_variance == "learned":
            return self.decoder.params["logvar"]
        return xp.full(self.data_dim, math.log(self.decoder_variance), dtype=self.dtype)

    # ------------------------------------------------------------------ objective
    def _forward_samples(self, x, eps, need_grad=True):
        """Encoder, reparameterization, decoder and likelihood for K samples per row; ``eps``
        the noise array (K, B, Z) or its NoiseKey (the fused path)."""
        if isinstance(eps, NoiseKey):
            return self._forward_samples_fused(x, eps, need_grad)
        xp = get_xp(x)
        K, B, Z = eps.shape
        h, enc = self.encoder.forward(x)  # (B, 2Z)
        mu, logvar = h[:, :Z], h[:, Z:]  # (B, Z)
        z, rep = reparam_forward(mu, logvar, eps)  # (K, B, Z)
        out, dec = self.decoder.forward(z.reshape(K * B, Z))  # (K*B, D)
        lik, log_px_z = self._likelihood(xp, out, x, K, need_grad)
        return SampleForward(enc, mu, logvar, z, rep, dec, lik, log_px_z)

    def _forward_samples_fused(self, x, key, need_grad=True):
        """The sample path through the fused kernel ``reparam_sample`` (module docstring)."""
        self._check_key(key, x)
        be = get_backend(x)
        xp = be.xp
        K, B, Z = key.shape
        h, enc = self.encoder.forward_buffered(x)  # (B, 2Z)
        if not bool(xp.isfinite(h).all()):
            # The kernel refuses non-finite moments; a diverging encoder's NaN must reach the
            # loss instead, where the trainer stops on it: the readable path lets it through.
            return self._forward_samples(x, key.fill(self.dtype, x), need_grad)
        mu, logvar = xp.ascontiguousarray(h[:, :Z]), xp.ascontiguousarray(h[:, Z:])  # (B, Z)
        z = self.decoder.input_buffer(K * B).reshape(K, B, Z)  # the kernel writes z there
        z, log_q, log_p = be.kernel("reparam_sample")(mu, logvar, K, key.seed, key.stream, 0, z)
        # (K*B, D), a buffer; a Bernoulli likelihood adds the output bias in its own pass
        bernoulli = self.likelihood == "bernoulli"
        out, dec = self.decoder.forward_buffered(z.reshape(K * B, Z), output_bias=not bernoulli)
        bias = self.decoder.output_bias if bernoulli else None
        lik, log_px_z = self._likelihood(xp, out, x, K, need_grad, bias)
        rep = FusedReparam(key, log_q, log_p, be)
        return SampleForward(enc, mu, logvar, z, rep, dec, lik, log_px_z)

    def _check_key(self, key, x):
        K_B_Z = key.shape
        if (
            key.kind != "normal"
            or len(K_B_Z) != 3
            or K_B_Z[0] < 1
            or tuple(K_B_Z[1:]) != (x.shape[0], self.latent_dim)
        ):
            raise ValueError(
                f"{type(self).__name__}.forward: expected a normal NoiseKey of shape (K, "
                f"{x.shape[0]}, {self.latent_dim}) with K >= 1, got kind {key.kind!r} and shape "
                f"{tuple(K_B_Z)}. Draw it with draw_key('normal', rng, (K, B, Z))."
            )

    def _likelihood(self, xp, out, x, K, need_grad, bias=None):
        """The likelihood of the decoder output (K*B, D): (cache, log p(x|z) (K, B)); ``bias``
        the decoder's output bias when ``out`` left it out (Bernoulli only)."""
        B = x.shape[0]
        if self.likelihood == "bernoulli":
            # row r of out is scored against x[r % B]; the logits are a temporary, so the
            # fused kernel writes the gradient over them
            nll, lik = bernoulli_nll_forward(
                out, x, bias=bias, need_grad=need_grad, overwrite_logits=True
            )
        else:
            xs = x if K == 1 else xp.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1)
            nll, lik = gaussian_nll_forward(out, self._decoder_logvar(xp), xs)
        return lik, -nll.reshape(K, B)

    @staticmethod
    def _eps(p):
        """eps (K, B, Z) of a sample path: held by the readable path, drawn again from its key
        on the fused one (``NoiseKey.fill`` runs the kernel's own generator: the forward's eps
        bit for bit). Not (z - mu) exp(-logvar/2): where sigma eps is below the spacing of the
        floats near mu (float32, a posterior standard deviation below about 1e-7 |mu|), z - mu
        is rounding noise."""
        if isinstance(p.reparam, FusedReparam):
            return p.reparam.key.fill(p.z.dtype, p.z)
        return p.reparam.eps

    @staticmethod
    def _log_w(p):
        """log w = log p(x|z) + log p(z) - log q(z|x) of a sample path, (K, B)."""
        if isinstance(p.reparam, FusedReparam):
            return p.reparam.log_p - p.reparam.log_q + p.log_px_z  # as log_weight_sampler
        # the 2 pi terms of log p(z) and log q(z|x) cancel; (z - mu) / std = eps
        return p.log_px_z + 0.5 * ((p.reparam.eps**2 - p.z**2).sum(axis=-1) + p.logvar.sum(axis=-1))

    def _decoder_backward(self, dnll, p):
        """The decoder's parameter gradients for the per-row weights dnll (K*B,) of
        -log p(x|z); returns dz (K*B, Z).

        On the fused path (a buffered decoder), the Bernoulli likelihood's cached gradient
        x - sigmoid(l) goes to the decoder as it is, with -dnll as its row scale: the weights
        multiply the (K*B, H) arrays of the last layer instead of the (K*B, D) logits."""
        if self.likelihood == "bernoulli":
            if isinstance(p.dec, BufferedMLPCache):
                return self.decoder.backward_buffered(p.lik.grad, p.dec, row_scale=-dnll)
            dout = bernoulli_nll_backward(dnll, p.lik)
        else:
            dout, dlv = gaussian_nll_backward(dnll, p.lik)
            if self.decoder_variance == "learned":
                self.decoder.grads["logvar"] += dlv
        return self.decoder.backward(dout, p.dec)

    @staticmethod
    def _reparam_grads(p, dz, dlog_q=None, dlog_p=None):
        """dmu, dlogvar (B, Z) of L = sum dz z + sum dlog_q log q + sum dlog_p log p, with
        log q's total derivative (path and score): 0 for mu, -1/2 for each logvar_j.

        The fused path hands all three to the kernel's regenerating backward; the readable
        path has dlog_q = dlog_p = None (its callers fold the density terms into dz)."""
        rep = p.reparam
        if isinstance(rep, FusedReparam):
            key = rep.key
            return rep.backend.kernel("reparam_sample_backward")(
                dz, dlog_q, dlog_p, p.mu, p.logvar, key.seed, key.stream, 0
            )
        return reparam_backward(dz, rep)

    def log_weights(self, x, eps):
        """log w = log p(x|z) + log p(z) - log q(z|x) for fixed noise eps (K, B, Z) (an array
        or its NoiseKey); (K, B)."""
        return self._log_w(self._forward_samples(x, eps, need_grad=False))

    # Each thread's draws decode into its own buffers of the decoder (nn.module._Buffers).
    concurrent_draws: ClassVar[bool] = True

    def log_weight_sampler(self, x, rng):
        """``draw(start, n) -> log w (n, B)`` for the chunked K-sample evaluation of x (B, D).

        Notes
        -----
        The noise comes from the counter-based Philox stream (``kernels.reparam_sample``),
        keyed by a seed drawn once per batch from ``rng`` and indexed by element: sample s of
        row b draws the elements from s*B*Z + b*Z on, so the estimate does not depend on the
        chunking. z, log q(z|x) and log p(z) are produced in one pass without storing eps.
        To replay it: ``seed = int(rng.integers(0, 2**63))`` (one per evaluation batch, in
        batch order), then the k samples' eps are ``kernels.philox.normal_ref(seed, 0,
        k * B * Z, dtype).reshape(k, B, Z)`` to float rounding
        (tests/test_oracle_evaluation.py recomputes the estimate from them in PyTorch).
        """
        be = get_backend(x)
        xp = be.xp
        sample = be.kernel("reparam_sample")
        B, Z = x.shape[0], self.latent_dim
        seed = int(rng.integers(0, 2**63))
        mu, logvar = (xp.ascontiguousarray(a) for a in self.encode(x))
        bias = self.decoder.output_bias  # (D,)

        def draw(start, n):
            z = self.decoder.input_buffer(n * B).reshape(n, B, Z)
            z, log_q, log_p = sample(mu, logvar, n, seed, 0, start * B * Z, z)  # (n, B, Z)
            # reused buffers, with the readable activations' exact values (fused=False) and
            # the output bias added by the likelihood kernel (the same float adds): the
            # estimate stays bit for bit what it has been
            zs = z.reshape(n * B, -1)
            if self.likelihood == "bernoulli":
                logits, _ = self.decoder.forward_buffered(zs, fused=False, output_bias=False)
                nll, _ = bernoulli_nll_forward(logits, x, bias=bias, need_grad=False)  # (n*B,)
            else:
                logits, _ = self.decoder.forward_buffered(zs, fused=False)
                xs = xp.broadcast_to(x, (n,) + x.shape).reshape(n * B, -1)
                nll, _ = gaussian_nll_forward(logits, self._decoder_logvar(xp), xs)
            return log_p - log_q - nll.reshape(n, B)  # (n, B)

        return draw

    def draw_noise(self, rng, batch_size, n_samples=None):
        """eps (L, B, Z) for one step on the model's device, keyed by the explicit generator
        ``rng`` (see lvmcore.noise); L = ``n_samples`` (the model's own when None)."""
        batch_size, n_samples = self._check_noise_size(
            batch_size, n_samples, f"{type(self).__name__}.draw_noise"
        )
        L = self.n_samples if n_samples is None else n_samples
        return noise.standard_normal(
            rng, (L, batch_size, self.latent_dim), self.dtype, self._like()
        )

    def draw_key(self, rng, batch_size, n_samples=None):
        """The NoiseKey of the eps ``draw_noise(rng, batch_size, n_samples)`` would return: the
        fused path's form of the same noise (it consumes ``rng`` the same way)."""
        L = self.n_samples if n_samples is None else n_samples
        return draw_key("normal", rng, (L, batch_size, self.latent_dim))

    # A subclass whose forward samples z itself (it reads eps) trains on explicit noise.
    fused_step: ClassVar[bool] = True

    def _step_noise(self, rng, batch_size):
        """A training step's noise as its key: the step runs the fused sampling kernel. A
        data-parallel step takes its rows of the global batch's noise as an array instead
        (``Model._step_noise``: ``noise_rows`` of ``draw_noise``), the readable path, equal to
        the fused one to float rounding."""
        if self._shard is not None or not self.fused_step:
            return super()._step_noise(rng, batch_size)
        return self.draw_key(rng, batch_size)

    def forward(self, x, eps, kl_weight=None):
        """Negative ELBO averaged over the batch, for fixed noise.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        eps : ndarray of shape (L, B, Z), or its NoiseKey
            The noise: an array takes the readable path, a key the fused kernel (module
            docstring); both give the same loss and gradients to float rounding.
        kl_weight : float, optional
            Weight of the KL term; ``beta`` when None.

        Returns
        -------
        loss : float
            :math:`-\\tfrac1B\\sum_b \\tfrac1L\\sum_l \\log p(x_b|z_{lb}) + w\\,\\mathrm{KLterm}`.
        cache : VAECache
        """
        w = self.beta if kl_weight is None else float(kl_weight)
        p = self._forward_samples(x, eps)
        mu, logvar, z = p.mu, p.logvar, p.z
        log_px_z = p.log_px_z
        if self.kl == "analytic":
            kl_dim = kl_normal_std_per_dim(mu, logvar)  # (B, Z)
        else:
            # log q(z|x) - log p(z) per dimension, in terms of eps: (z - mu) / std = eps
            eps = self._eps(p)
            kl_dim = (0.5 * (z * z - eps * eps) - 0.5 * logvar).mean(axis=0)  # (B, Z)
        # Free bits compares the batch-mean KL of each dimension with the floor: a statistic of
        # the whole batch. Its gradient is that of this process's rows' mean (n = B).
        kl_value, klc = kl_term_forward(self._batch_rows(kl_dim), self.free_bits)
        klc = klc._replace(n=x.shape[0])
        recon = float(log_px_z.mean())
        loss = -recon + w * kl_value
        stats = dict(log_px_z=log_px_z.mean(axis=0), kl=kl_dim.sum(axis=1))
        cache = VAECache(x, p.enc, mu, logvar, p.reparam, z, p.dec, p.lik, klc, w, stats)
        return loss, cache

    def backward(self, cache, dloss=1.0):
        """Accumulate the gradient of ``dloss * loss`` into every parameter's ``grads``.

        A cache serves one backward: the likelihood's gradient is formed in its memory.

        Notes
        -----
        Reconstruction: each of the L*B rows of log p(x|z) has weight -1/(L B).
        Analytic KL: :math:`\\partial/\\partial\\mu = \\mu`,
        :math:`\\partial/\\partial v = \\tfrac12(e^v - 1)` per unit of KL term.
        Sampled KL with z = mu + e^{v/2} eps: :math:`\\partial/\\partial z = z`
        (from -log p(z)) and a direct :math:`-\\tfrac12` on v (from log q; the
        dependence of log q on z cancels that on mu, sigma along eps).
        """
        xp = get_xp(cache.mu)
        L, B, Z = cache.z.shape
        dt = self.dtype.type
        dnll = xp.full(L * B, dt(dloss / (L * B)), dtype=self.dtype)
        dz = self._decoder_backward(dnll, cache).reshape(L, B, Z)  # (L, B, Z)
        dkl = kl_term_backward(dt(dloss * cache.kl_weight), cache.kl_term)  # (1, Z)
        if self.kl == "analytic":
            dmu, dlogvar = self._reparam_grads(cache, dz)
            dmu_kl, dlogvar_kl = kl_normal_std_per_dim_backward(
                xp.broadcast_to(dkl, cache.mu.shape), KLNormalStdCache(cache.mu, cache.logvar)
            )
            dmu += dmu_kl
            dlogvar += dlogvar_kl
        else:
            dz = dz + (dkl / L) * cache.z
            dmu, dlogvar = self._reparam_grads(cache, dz)
            dlogvar = dlogvar - 0.5 * dkl
        self.encoder.backward(xp.concatenate([dmu, dlogvar], axis=1), cache.enc, need_dx=False)

    def _step_end(self, loss, cache, rng):
        """Step statistics (means over the batch): ``elbo`` (with beta = 1), ``recon``, ``kl``."""
        return self._summary(cache)

    @staticmethod
    def _summary(cache):
        recon = float(cache.stats["log_px_z"].mean())
        kl = float(cache.stats["kl"].mean())
        return dict(elbo=recon - kl, recon=recon, kl=kl)

    def bound(self, x, rng, batch_size=1000):
        """The per-example bound the model trains (here the ELBO), shape (B,)."""
        return self.elbo(x, rng, batch_size)

    def elbo(self, x, rng, batch_size=1000):
        """Per-example ELBO (B,) with beta = 1, no free bits, and the model's L (the fused
        path, with the noise ``draw_noise`` would draw from ``rng``)."""
        batch_size = self._check_eval(x, rng, batch_size, "VAE.elbo")
        xp = get_xp(x)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            _, c = self.forward(xb, self.draw_key(rng, xb.shape[0]), kl_weight=1.0)
            out.append(c.stats["log_px_z"] - c.stats["kl"])
        return self._rows(out, xp)
