"""The reparameterization trick for a diagonal Gaussian: z = mu + exp(logvar / 2) * eps."""

from typing import NamedTuple

from .._validation import get_xp


class ReparamCache(NamedTuple):
    """``eps`` (..., B, Z): the standard-normal noise; ``std`` (B, Z) = exp(logvar / 2)."""

    eps: object
    std: object


def reparam_forward(mu, logvar, eps):
    """z = mu + exp(logvar / 2) * eps, broadcasting leading sample axes of eps.

    Parameters
    ----------
    mu, logvar : ndarray of shape (B, Z)
    eps : ndarray of shape (..., B, Z)
        Noise held fixed by the caller (drawn from a counter-based or explicit generator).

    Returns
    -------
    z : ndarray of shape (..., B, Z)
    cache : ReparamCache
    """
    std = get_xp(mu).exp(0.5 * logvar)  # (B, Z)
    return mu + std * eps, ReparamCache(eps, std)


def reparam_backward(dz, cache):
    """dmu = sum over samples of dz; dlogvar = sum over samples of dz * eps * std / 2.

    Notes
    -----
    :math:`\\partial z/\\partial\\mu = 1` and
    :math:`\\partial z/\\partial v = \\tfrac12 e^{v/2}\\epsilon`; leading sample axes of
    ``dz`` are summed so that the gradients have the shape of mu.
    """
    eps, std = cache
    lead = tuple(range(dz.ndim - std.ndim))
    dmu = dz.sum(axis=lead) if lead else dz
    dlogvar = (dz * eps).sum(axis=lead) if lead else dz * eps
    return dmu, 0.5 * std * dlogvar
