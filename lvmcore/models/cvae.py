"""Class-conditional VAE (Sohn et al. 2015): the label, one-hot, into the encoder and the decoder.

Shapes: B batch, D data, C classes, H hidden, Z latent, L samples per data point.

The CVAE is the VAE of :mod:`lvmcore.models.vae` with a one-hot label c = onehot(y) (B, C)
appended to the encoder's input and to every decoder input; everything else (the sample path,
the KL and free bits, the reverse-order backward) is the VAE's, inherited::

    xc = [x | c]                                     (B, D + C)
    mu, logvar = encoder(xc)                         (B, Z) each
    z = mu + exp(logvar / 2) * eps                   (L, B, Z)
    out = decoder([z | c])                           (L*B, D)
    loss = -mean_B mean_L log p(x|z, y) + w * KL(q(z|x, y) || N(0, I))

The label is data: the decoder's backward returns the gradient of its z columns only
(:class:`ConditionedMLP`), so the VAE's backward runs unchanged. The bound is
log p(x | y) >= ELBO(x, y), and ``log_likelihood`` estimates log p(x | y).

References
----------
K. Sohn, H. Lee, X. Yan, "Learning Structured Output Representation using Deep Conditional
Generative Models", NeurIPS 2015, sec. 3 (the CVAE, eq. 4).
"""

import numpy as np

from .. import noise
from .._validation import check_param, get_xp, to_numpy
from ..cli._types import positive_int
from ..distributions.kl import kl_normal_std_per_dim
from ..losses import bernoulli_nll_forward, gaussian_nll_forward
from ..nn import MLP
from ..ops import reparam_forward
from .base import Flag
from .vae import VAE, SampleForward

__all__ = ["CVAE", "ConditionedMLP", "one_hot"]


def one_hot(labels, n_classes, dtype):
    """The one-hot rows (B, C) of class ids ``labels`` (B,), on their device."""
    xp = get_xp(labels)
    return (labels[:, None] == xp.arange(n_classes)).astype(dtype)  # (B, C)


class ConditionedMLP(MLP):
    """An MLP whose input rows are [u | c]: u (N, I) the input proper, c (N, C) a context that
    is data (a one-hot label), so ``backward`` returns du (N, I) alone.

    Parameters are the MLP's, with ``W0`` of shape (I + C, H_1).
    """

    def __init__(self, sizes, n_context, activation, rng, dtype=np.float32):
        sizes = tuple(sizes)
        super().__init__((sizes[0] + n_context, *sizes[1:]), activation, rng, dtype)
        self.n_in = sizes[0]

    def backward(self, dy, cache, need_dx=True):
        """Accumulate parameter gradients; return du (N, I) (None with ``need_dx=False``)."""
        dx = super().backward(dy, cache, need_dx=need_dx)
        return None if dx is None else dx[:, : self.n_in]


class CVAE(VAE):
    """Class-conditional Gaussian-encoder VAE.

    Parameters
    ----------
    data_dim : int
        D.
    n_classes : int
        C, the number of classes (labels lie in [0, C)).
    latent_dim, hidden, activation, likelihood, decoder_variance, kl, n_samples, beta,
    free_bits, seed, dtype
        As for :class:`lvmcore.models.VAE`.

    Notes
    -----
    Parameters as the VAE's, with ``encoder.W0`` of shape (D + C, H_1) and ``decoder.W0`` of
    shape (Z + C, H_L). Every method that takes data takes ``labels`` (B,) too
    (``needs_labels``); ``sample`` draws one class after another when no labels are given.
    """

    fused_step = False  # its forward samples z beside the label: explicit noise, not the fused key

    name = "cvae"
    help = "class-conditional VAE: the one-hot label into encoder and decoder (needs labels)"
    needs_labels = True
    # encode() needs the labels, so the evaluation's label-free diagnostics do not apply:
    # eval_report gives the active units and the KL per dimension instead.
    has_gaussian_latents = False
    has_latent_space = True
    flags = VAE.flags + (
        Flag(
            "--classes",
            "classes",
            None,
            "number of classes (default: one more than the data's largest label)",
            dict(type=positive_int, metavar="C"),
        ),
    )

    def __init__(
        self,
        data_dim,
        n_classes=10,
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
        super().__init__(
            data_dim,
            latent_dim,
            hidden,
            activation,
            likelihood,
            decoder_variance,
            kl,
            n_samples,
            beta,
            free_bits,
            seed,
            dtype,
        )
        self.n_classes = check_param(
            n_classes, "n_classes", "CVAE", kind="int", low=1, low_inclusive=True
        )
        # The VAE's modules again, with the label's C columns added to their inputs.
        rng = np.random.default_rng(self.seed)
        Z, D, H, C = self.latent_dim, self.data_dim, self.hidden, self.n_classes
        self.encoder = ConditionedMLP((D, *H, 2 * Z), C, self.activation, rng, self.dtype)
        self.decoder = ConditionedMLP((Z, *H[::-1], D), C, self.activation, rng, self.dtype)
        if self.likelihood == "gaussian" and self.decoder_variance == "learned":
            self.decoder._add_param("logvar", np.zeros(D, dtype=self.dtype))

    @classmethod
    def from_args(cls, args, data_dim):
        """The CVAE of ``lvmcore train --model cvae``: ``--classes`` or the data's classes."""
        n_classes = args.classes if args.classes is not None else args.data_classes
        if n_classes is None:
            raise ValueError(
                "expected data with labels for --model cvae (it is conditioned on the class), "
                "got a data set without them. Use --data digits, or an .npz with train_labels, "
                "valid_labels and test_labels."
            )
        return cls(
            data_dim,
            n_classes=n_classes,
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

    def config(self):
        c = super().config()
        c["n_classes"] = self.n_classes
        return c

    # ------------------------------------------------------------------ pieces
    def _with_label(self, x, labels):
        """[x | onehot(labels)], (B, D + C): the encoder's input."""
        xp = get_xp(x)
        return xp.concatenate([x, one_hot(labels, self.n_classes, self.dtype)], axis=1)

    def _checked(self, x, labels, func):
        self._check_x(x, func)
        return self._check_labels(labels, x.shape[0], func)

    def encode(self, x, labels=None):
        """Posterior parameters (mu, logvar) of q(z | x, y), each (B, Z)."""
        labels = self._checked(x, labels, "CVAE.encode")
        return VAE.encode(self, self._with_label(x, labels))

    def decode(self, z, labels=None):
        """Decoder means (N, D) at latents z (N, Z) under the labels (N,)."""
        f = "CVAE.decode"
        labels = self._check_labels(labels, z.shape[0], f)
        xp = get_xp(z)
        return VAE.decode(
            self, xp.concatenate([z, one_hot(labels, self.n_classes, self.dtype)], axis=1)
        )

    def sample(self, rng, n, labels=None):
        """n samples: z ~ N(0, I), then the decoder's mean under ``labels`` (n,) (classes
        0, 1, ..., C - 1, 0, ... when None), shape (n, D)."""
        n = check_param(n, "n", "CVAE.sample", kind="int", low=1, low_inclusive=True)
        xp = self.xp
        if labels is None:
            labels = xp.arange(n) % self.n_classes
        z = noise.standard_normal(rng, (n, self.latent_dim), self.dtype, self._like())
        return self.decode(z, labels)

    def reconstruct(self, x, labels=None):
        """Decoder mean at the posterior mean of q(z | x, y), (B, D)."""
        labels = self._checked(x, labels, "CVAE.reconstruct")
        mu, _ = VAE.encode(self, self._with_label(x, labels))
        return self.decode(mu, labels)

    # ------------------------------------------------------------------ objective
    def _forward_samples(self, xc, eps, need_grad=True):
        """The VAE's sample path on xc = [x | c] (B, D + C): encoder on xc, decoder on
        [z | c], likelihood of x."""
        xp = get_xp(xc)
        K, B, Z = eps.shape
        D, C = self.data_dim, self.n_classes
        h, enc = self.encoder.forward(xc)  # (B, 2Z)
        mu, logvar = h[:, :Z], h[:, Z:]  # (B, Z)
        z, rep = reparam_forward(mu, logvar, eps)  # (K, B, Z)
        c = xp.broadcast_to(xc[:, D:], (K, B, C))
        out, dec = self.decoder.forward(
            xp.concatenate([z, c], axis=-1).reshape(K * B, Z + C)
        )  # (K*B, D)
        x = xp.ascontiguousarray(xc[:, :D])  # (B, D)
        if self.likelihood == "bernoulli":
            # row r of out is scored against x[r % B]
            nll, lik = bernoulli_nll_forward(out, x, need_grad=need_grad, overwrite_logits=True)
        else:
            xs = x if K == 1 else xp.broadcast_to(x, (K, B, D)).reshape(K * B, D)
            nll, lik = gaussian_nll_forward(out, self._decoder_logvar(xp), xs)
        return SampleForward(enc, mu, logvar, z, rep, dec, lik, -nll.reshape(K, B))

    def forward(self, x, eps, kl_weight=None, labels=None):
        """Negative ELBO of log p(x | y) averaged over the batch, for fixed noise eps (L, B, Z)
        and labels (B,); the VAE's forward on [x | onehot(y)] (its cache serves the VAE's
        backward)."""
        labels = self._check_labels(labels, x.shape[0], "CVAE.forward")
        return VAE.forward(self, self._with_label(x, labels), eps, kl_weight)

    def _step_forward(self, x, noise, kl_weight, labels=None):
        return self.forward(x, noise, kl_weight=kl_weight, labels=labels)

    def log_weights(self, x, eps, labels=None):
        """log w = log p(x|z, y) + log p(z) - log q(z|x, y) for fixed eps (K, B, Z); (K, B)."""
        labels = self._check_labels(labels, x.shape[0], "CVAE.log_weights")
        return VAE.log_weights(self, self._with_label(x, labels), eps)

    concurrent_draws = False  # its own sampler, through the readable forward

    def log_weight_sampler(self, x, rng, labels=None):
        """``draw(start, n) -> log w (n, B)``: the base sampler's noise (one seed per batch
        from ``rng``, each chunk's eps from ``default_rng([seed, start])``), decoded with the
        label (the VAE's fused kernel decodes z alone)."""
        labels = self._check_labels(labels, x.shape[0], "CVAE.log_weight_sampler")
        xc = self._with_label(x, labels)
        seed = int(rng.integers(0, 2**63))

        def draw(start, n):
            chunk_rng = np.random.default_rng([seed, start])
            return VAE.log_weights(self, xc, self.draw_noise(chunk_rng, x.shape[0], n))

        return draw

    def bound(self, x, rng, batch_size=1000, labels=None):
        """The per-example ELBO of log p(x | y), shape (B,)."""
        return self.elbo(x, rng, batch_size, labels=labels)

    def elbo(self, x, rng, batch_size=1000, labels=None):
        """Per-example ELBO of log p(x | y) (B,) with beta = 1, no free bits, the model's L."""
        batch_size = self._check_eval(x, rng, batch_size, "CVAE.elbo")
        labels = self._checked(x, labels, "CVAE.elbo")
        xc = self._with_label(x, labels)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = xc[i : i + batch_size]
            _, c = VAE.forward(self, xb, self.draw_noise(rng, xb.shape[0]), kl_weight=1.0)
            out.append(c.stats["log_px_z"] - c.stats["kl"])
        return self._rows(out, get_xp(x))

    # ------------------------------------------------------------------ reports
    def eval_report(self, x, batch_size=1000, labels=None):
        """Active units and the KL per latent dimension of q(z | x, y), for ``lvmcore eval``
        (what the evaluation gives a label-free Gaussian-latent model).

        Returns
        -------
        info : dict
            ``active_units`` (dimensions whose posterior mean varies by more than 0.01 over
            the data), ``latent_dim``, ``posterior_mean_variance`` and ``kl_per_dim`` (nats),
            ``n_classes``.
        lines : list of str
        """
        labels = self._checked(x, labels, "CVAE.eval_report")
        mus, kls = [], []
        for i in range(0, x.shape[0], batch_size):
            mu, logvar = self.encode(x[i : i + batch_size], labels[i : i + batch_size])
            mus.append(mu.astype(np.float64))
            kls.append(kl_normal_std_per_dim(mu, logvar).astype(np.float64).sum(axis=0))
        var = to_numpy(get_xp(x).concatenate(mus).var(axis=0))  # (Z,)
        kl = to_numpy(sum(kls) / x.shape[0])  # (Z,)
        active = int((var > 0.01).sum())
        info = dict(
            active_units=active,
            latent_dim=self.latent_dim,
            posterior_mean_variance=var.tolist(),
            kl_per_dim=kl.tolist(),
            n_classes=self.n_classes,
        )
        lines = [
            f"active units {active} of {self.latent_dim} (given the label); KL per dimension "
            f"(nats): " + " ".join(f"{v:.2f}" for v in kl)
        ]
        return info, lines

    def write_extra_pictures(self, x, out, labels=None):
        """None beyond the trainer's (``lvmcore explore`` draws the label analogies)."""
        return []
