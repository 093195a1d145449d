"""The VampPrior: the mixture of the encoder's posteriors at C learned pseudo-inputs.

Shape letters: S leading sample axes, C pseudo-inputs (components), D data width, Z latent.

Forward, for z (*S, Z)::

    (mu, logvar), enc = encoder_forward(u)                       (C, Z) each, u (C, D)
    log p(z) = logsumexp_c [ -log C + log N(z; mu_c, exp(logvar_c)) ]   (*S,)

Backward: the mixture's backward gives dz and (dmu, dlogvar) (C, Z); the encoder's backward
turns those into du (C, D), adding its own parameter gradients on the way, so the prior's
gradient reaches the encoder's weights and the pseudo-inputs.
"""

import math
from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_param, to_numpy
from ..nn._checks import check_input
from .base import Prior
from .mixture import (
    MixtureNoise,
    _check_mixture_noise,
    mixture_log_prob_backward,
    mixture_log_prob_forward,
    mixture_sample,
)

__all__ = ["VampPrior", "VampPriorCache"]


class VampPriorCache(NamedTuple):
    """mixture : MixtureCache; encoder : the encoder's cache at the pseudo-inputs; lead."""

    mixture: object
    encoder: object
    lead: tuple


class VampPrior(Prior):
    """Variational mixture of posteriors prior (Tomczak and Welling 2018).

    Parameters
    ----------
    encoder : tuple (forward, backward) of callables
        ``forward(u) -> ((mu, logvar), cache)`` maps pseudo-inputs u (C, D) to the encoder's
        diagonal Gaussian (C, Z) each; ``backward((dmu, dlogvar), cache) -> du`` returns du
        (C, D) and *adds* the encoder's parameter gradients. For an
        :class:`lvmcore.nn.GaussianLayer` ``enc``: ``(enc.forward, enc.backward)``.
    n_components : int
        C >= 1, the number of pseudo-inputs.
    data_dim : int
        D, the encoder's input width.
    n_latent : int
        Z, the encoder's output width.
    rng : numpy.random.Generator
        Draws the initial pseudo-inputs (unless ``pseudo_inputs`` is given).
    pseudo_inputs : ndarray of shape (C, D), optional
        Initial pseudo-inputs, e.g. C training images (copied).
    init_mean, init_std : float, default 0.05 and 0.01
        Otherwise pseudo-inputs start at :math:`\\mathcal N(\\text{init\\_mean},
        \\text{init\\_std}^2)` entries (the paper's MNIST initialisation).
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``u`` (C, D), the pseudo-inputs, unconstrained (the encoder sees them as
    they are, no clipping). The encoder's weights belong to the encoder; this prior only adds
    to their gradients, so a model lists them once (as the encoder's).

    .. math::

        p_\\lambda(z) = \\frac1C\\sum_{c=1}^C q_\\phi(z \\mid u_c).

    Every evaluation runs the encoder on the C pseudo-inputs once; its cache is what
    backward needs (a second ``log_prob`` before the backward of the first gives a second,
    independent cache).

    References
    ----------
    J. M. Tomczak, M. Welling, "VAE with a VampPrior", AISTATS 2018, eq. 9.
    """

    def __init__(
        self,
        encoder,
        n_components,
        data_dim,
        n_latent,
        rng,
        *,
        pseudo_inputs=None,
        init_mean=0.05,
        init_std=0.01,
        dtype=np.float32,
    ):
        super().__init__()
        func = "VampPrior"
        ok = isinstance(encoder, tuple) and len(encoder) == 2 and all(callable(f) for f in encoder)
        if not ok:
            raise TypeError(
                f"{func}: expected encoder to be a pair (forward, backward) of callables, got "
                f"{type(encoder).__name__}. For an nn.GaussianLayer enc pass "
                f"(enc.forward, enc.backward)."
            )
        self.encoder_forward, self.encoder_backward = encoder
        C = check_param(n_components, "n_components", func, kind="int", low=1, low_inclusive=True)
        D = check_param(data_dim, "data_dim", func, kind="int", low=1, low_inclusive=True)
        Z = check_param(n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{func}: expected dtype float32 or float64, got {dtype}.")
        if pseudo_inputs is None:
            init_mean = check_param(init_mean, "init_mean", func)
            init_std = check_param(init_std, "init_std", func, low=0, low_inclusive=True)
            u = init_mean + init_std * rng.standard_normal((C, D))
        else:
            check_array(pseudo_inputs, "pseudo_inputs", func, ndim=2)
            if tuple(pseudo_inputs.shape) != (C, D):
                raise ValueError(
                    f"{func}: expected pseudo_inputs to have shape (n_components, data_dim) = "
                    f"{(C, D)}, got {tuple(pseudo_inputs.shape)}. Give one row of the "
                    f"encoder's input width per component."
                )
            u = pseudo_inputs
        self.n_components, self.data_dim, self.n_latent = C, D, Z
        self._add_param("u", np.array(to_numpy(u), dtype=dtype))  # a copy, on the host

    def _encode(self, func):
        u = self.params["u"]
        try:
            (mu, logvar), enc = self.encoder_forward(u)
        except ValueError as exc:
            raise ValueError(
                f"{func}: the encoder refused the pseudo-inputs u of shape {tuple(u.shape)} "
                f"(n_components, data_dim): {exc} Build the prior with the encoder's input "
                f"width as data_dim."
            ) from exc
        C, Z = self.n_components, self.n_latent
        for name, a in (("mu", mu), ("logvar", logvar)):
            check_input(a, f"the encoder's {name}", func, dtype=self.dtype, xp=self.xp)
            if tuple(a.shape) != (C, Z):
                raise ValueError(
                    f"{func}: expected the encoder's {name} at the pseudo-inputs to have shape "
                    f"(n_components, n_latent) = {(C, Z)}, got {tuple(a.shape)}. The encoder "
                    f"and the prior disagree on the latent width."
                )
        return mu, logvar, enc

    def _log_weights(self):
        C = self.n_components
        return self.xp.full(C, -math.log(C), dtype=self.dtype)  # (C,)

    def _log_prob(self, z):
        mu, logvar, enc = self._encode(f"{type(self).__name__}.log_prob")
        log_p, mc = mixture_log_prob_forward(z, mu, logvar, self._log_weights())
        return log_p, VampPriorCache(mc, enc, mc.lead)

    def _backward(self, dlog_p, cache, accumulate):
        dz, dmu, dlogvar, _ = mixture_log_prob_backward(dlog_p, cache.mixture, accumulate)
        if accumulate:
            du = self.encoder_backward((dmu, dlogvar), cache.encoder)  # (C, D)
            self.grads["u"] += du
        return dz

    def _draw_noise(self, rng, n):
        return MixtureNoise(self._uniform(rng, (n,)), self._normal(rng, (n, self.n_latent)))

    def _check_noise(self, noise, n, func):
        return _check_mixture_noise(self, noise, n, self.n_latent, func)

    def _sample(self, noise, n):
        mu, logvar, _ = self._encode(f"{type(self).__name__}.sample")
        return mixture_sample(mu, logvar, self._log_weights(), noise)
