"""An autoregressive-flow prior: a standard normal pushed through T MAF steps.

Shape letters: S leading sample axes, Z latent, n draws.

Density evaluation, one MADE pass per step, for z (*S, Z)::

    z_0 = z
    z_t, logdet_t = maf_t(z_{t-1})            t = 1..T    (*S, Z), (*S,)
    log p(z) = log N(z_T; 0, I) + sum_t logdet_t           (*S,)

Sampling runs the steps' inverses from eps = z_T back to z_0 (Z MADE passes per step).
"""

import math
from typing import NamedTuple

import numpy as np

from .._validation import check_param
from ..flows.maf import MAFStep
from .base import Prior

__all__ = ["FlowPrior", "FlowPriorCache"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class FlowPriorCache(NamedTuple):
    """steps : one MAFCache per step, in order; u : (*S, Z) the base variable z_T; lead."""

    steps: list
    u: object
    lead: tuple


class FlowPrior(Prior):
    """Masked autoregressive flow prior (as the AF prior of the VLAE).

    Parameters
    ----------
    n_latent : int
        Z.
    hidden : sequence of int
        Hidden widths of every step's MADE (each >= Z - 1).
    rng : numpy.random.Generator
        Draws the MADEs' weights.
    n_steps : int, default 2
        T >= 1 MAF steps; the order is reversed between consecutive steps so that every
        dimension can depend on every other one.
    identity_init : bool, default True
        Start each step as the identity, so that a fresh prior is N(0, I) (the plain VAE's).
    direct : bool, default False
        The MADEs' strictly masked input-to-output connection.
    activation : {"tanh", "relu", "softplus", "sigmoid"}, default "tanh"
    dtype : float32 or float64

    Notes
    -----
    ``params`` and ``grads`` hold the steps' arrays themselves under ``"step<t>.<name>"``.

    Backward: :math:`\\partial\\log\\mathcal N(z_T)/\\partial z_T = -z_T` and every step
    receives :math:`dlogdet_t = dlog\\_p`; :meth:`MAFStep.backward` walks each step back,
    adding its MADE's gradients, from step T to step 1. ``input_vjp`` walks the same path
    through the MADEs' input VJPs only.

    References
    ----------
    G. Papamakarios, T. Pavlakou, I. Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017. X. Chen, D. P. Kingma, T. Salimans, Y. Duan, P. Dhariwal,
    J. Schulman, I. Sutskever, P. Abbeel, "Variational Lossy Autoencoder", ICLR 2017, sec. 3.2
    (the autoregressive-flow prior).
    """

    def __init__(
        self,
        n_latent,
        hidden,
        rng,
        *,
        n_steps=2,
        identity_init=True,
        direct=False,
        activation="tanh",
        dtype=np.float32,
    ):
        super().__init__()
        func = "FlowPrior"
        Z = check_param(n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True)
        T = check_param(n_steps, "n_steps", func, kind="int", low=1, low_inclusive=True)
        self.n_latent = Z
        self.steps = [
            MAFStep(
                Z,
                hidden,
                rng,
                reverse=bool(t % 2),
                identity_init=identity_init,
                direct=direct,
                activation=activation,
                dtype=dtype,
            )
            for t in range(T)
        ]
        self._link()

    def _link(self):
        self.params = {
            f"step{t}.{k}": v for t, s in enumerate(self.steps) for k, v in s.params.items()
        }
        self.grads = {
            f"step{t}.{k}": v for t, s in enumerate(self.steps) for k, v in s.grads.items()
        }

    def to(self, xp):
        for s in self.steps:
            s.to(xp)
        self._link()
        return self

    @property
    def n_steps(self):
        return len(self.steps)

    def _log_prob(self, z):
        caches, log_p = [], 0
        for step in self.steps:
            z, logdet, c = step.forward(z)
            log_p = log_p + logdet  # (*S,)
            caches.append(c)
        Z = self.n_latent
        log_p = log_p - 0.5 * (z * z).sum(axis=-1) - z.dtype.type(Z * _HALF_LOG_2PI)
        return log_p, FlowPriorCache(caches, z, tuple(z.shape[:-1]))

    def _backward(self, dlog_p, cache, accumulate):
        du = -dlog_p[..., None] * cache.u  # (*S, Z)
        for step, c in zip(reversed(self.steps), reversed(cache.steps)):
            if accumulate:
                du, _ = step.backward(du, dlog_p, c)
            else:
                du = step.input_vjp(du, dlog_p, c)
        return du

    def _draw_noise(self, rng, n):
        return self._normal(rng, (n, self.n_latent))

    def _check_noise(self, noise, n, func):
        return self._check_noise_array(noise, "noise", (n, self.n_latent), func)

    def _sample(self, noise, n):
        z = noise
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z
