"""The reparameterization trick for a diagonal Gaussian: z = mu + exp(logvar / 2) * eps.

This is the readable path, for noise the caller holds: eps comes from the engine's one noise
front door, ``lvmcore.noise.standard_normal`` (the Philox normals of ``kernels.philox``). The
fused kernel ``reparam_sample`` (``kernels/reparam_sample.py``, dispatched by
``lvmcore.backend``) computes the same z from the same Philox key without storing eps, and adds
log q(z|x) and log p(z) in the same pass; tests/test_noise.py proves the two equal on one key.
"""

from typing import NamedTuple

from .._validation import check_array, check_cache, check_same_device, check_same_dtype, get_xp


class ReparamCache(NamedTuple):
    """``eps`` (..., B, Z): the standard-normal noise; ``std`` (B, Z) = exp(logvar / 2)."""

    eps: object
    std: object


def _check(mu, logvar, eps, func):
    # Values are not checked: a NaN from a diverging encoder must reach the loss, where the
    # training loop stops on it and names the last good checkpoint.
    for name, a in (("mu", mu), ("logvar", logvar), ("eps", eps)):
        check_array(a, name, func, finite=False)
    check_same_device([mu, logvar, eps], ["mu", "logvar", "eps"], func)
    check_same_dtype([mu, logvar, eps], ["mu", "logvar", "eps"], func)
    if mu.ndim < 1 or logvar.shape != mu.shape:
        raise ValueError(
            f"{func}: expected mu and logvar to have one shape (..., Z), e.g. (B, Z), got "
            f"{tuple(mu.shape)} and {tuple(logvar.shape)}."
        )
    if eps.ndim < mu.ndim or eps.shape[eps.ndim - mu.ndim :] != mu.shape:
        raise ValueError(
            f"{func}: expected eps to have shape (..., {', '.join(map(str, mu.shape))}) "
            f"(leading sample axes, then mu's shape), got {tuple(eps.shape)}."
        )


def reparam_forward(mu, logvar, eps):
    """z = mu + exp(logvar / 2) * eps, broadcasting leading sample axes of eps.

    Parameters
    ----------
    mu, logvar : ndarray of shape (B, Z), or any (..., Z) of one shape
    eps : ndarray of shape (..., B, Z): leading sample axes, then mu's shape
        Noise held fixed by the caller, e.g. ``lvmcore.noise.standard_normal``.

    Returns
    -------
    z : ndarray of shape (..., B, Z)
    cache : ReparamCache

    Raises
    ------
    TypeError
        Not float32/float64 arrays of one dtype on one device.
    ValueError
        mu, logvar not of one shape, or eps not of shape (..., *mu.shape).
    """
    _check(mu, logvar, eps, "reparam_forward")
    std = get_xp(mu).exp(0.5 * logvar)  # (B, Z)
    return mu + std * eps, ReparamCache(eps, std)


def reparam_backward(dz, cache):
    """dmu = sum over samples of dz; dlogvar = sum over samples of dz * eps * std / 2.

    Parameters
    ----------
    dz : ndarray of shape (..., B, Z)
        dL/dz, the shape of the forward's z.
    cache : ReparamCache

    Returns
    -------
    dmu, dlogvar : ndarray of shape (B, Z)

    Notes
    -----
    :math:`\\partial z/\\partial\\mu = 1` and
    :math:`\\partial z/\\partial v = \\tfrac12 e^{v/2}\\epsilon`; leading sample axes of
    ``dz`` are summed so that the gradients have the shape of mu.
    """
    f = "reparam_backward"
    eps, std = check_cache(cache, ReparamCache, f)
    check_array(dz, "dz", f, dtype=eps.dtype, finite=False, xp=get_xp(eps), ref="eps'")
    if dz.shape != eps.shape:
        raise ValueError(
            f"reparam_backward: expected dz to have the shape of the forward's z "
            f"{tuple(eps.shape)}, got {tuple(dz.shape)}."
        )
    lead = tuple(range(dz.ndim - std.ndim))
    dmu = dz.sum(axis=lead) if lead else dz
    dlogvar = (dz * eps).sum(axis=lead) if lead else dz * eps
    return dmu, 0.5 * std * dlogvar
