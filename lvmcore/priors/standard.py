"""The standard normal prior N(0, I): the plain VAE's, behind the common prior interface."""

import math
from typing import NamedTuple

import numpy as np

from .._validation import check_param, to_numpy
from .base import Prior

__all__ = ["StandardNormalPrior", "StandardNormalCache"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class StandardNormalCache(NamedTuple):
    """z : (*S, Z) the evaluated points; lead : their leading shape S."""

    z: object
    lead: tuple


class StandardNormalPrior(Prior):
    """:math:`p(z) = \\mathcal N(z; 0, I)`, no parameters.

    Parameters
    ----------
    n_latent : int
        Z.
    dtype : float32 or float64

    Notes
    -----
    :math:`\\log p(z) = -\\tfrac12\\sum_j z_j^2 - \\tfrac Z2\\log 2\\pi` and
    :math:`\\partial\\log p/\\partial z = -z`. The same values as
    :class:`lvmcore.distributions.StandardNormal`; this class gives them the prior interface
    so that a model treats every prior alike. ``params`` and ``grads`` are empty.
    """

    def __init__(self, n_latent, *, dtype=np.float32):
        super().__init__()
        func = "StandardNormalPrior"
        self.n_latent = check_param(
            n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True
        )
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{func}: expected dtype float32 or float64, got {dtype}.")
        self._anchor = np.zeros(0, dtype=dtype)  # no parameters: this carries dtype and device

    def _like(self):
        return self._anchor

    def to(self, xp):
        super().to(xp)
        self._anchor = xp.asarray(self._anchor) if xp is not np else to_numpy(self._anchor)
        return self

    def _log_prob(self, z):
        Z = self.n_latent
        log_p = -0.5 * (z * z).sum(axis=-1) - z.dtype.type(Z * _HALF_LOG_2PI)  # (*S,)
        return log_p, StandardNormalCache(z, tuple(z.shape[:-1]))

    def _backward(self, dlog_p, cache, accumulate):
        return -dlog_p[..., None] * cache.z  # (*S, Z)

    def _draw_noise(self, rng, n):
        return self._normal(rng, (n, self.n_latent))

    def _check_noise(self, noise, n, func):
        return self._check_noise_array(noise, "noise", (n, self.n_latent), func)

    def _sample(self, noise, n):
        return noise.copy()
