"""Gaussian stochastic layers: an MLP that gives a conditional diagonal Gaussian.

One layer serves both directions of a hierarchical VAE: as an inference step
:math:`q(z_l \\mid z_{l-1})` (with :math:`z_0 = x`) and as a generative step
:math:`p(z_l \\mid z_{l+1})`. Shape letters: N rows, I input width, H hidden, Z latent,
S leading sample axes (K importance samples).

Forward of one step, for fixed noise eps (*S, ..., Z)::

    mu, logvar = GaussianLayer(h)                           (..., Z) each
    z, log_q   = gaussian_rsample_forward(mu, logvar, eps)  (*S, ..., Z), (*S, ...)
    log_p      = gaussian_log_prob_forward(z, mu', logvar') (a density at a given z)

The sampling path reuses :func:`lvmcore.ops.reparam_forward`; the density at a given value
reuses :meth:`lvmcore.distributions.DiagNormal.log_prob` and its backward. This module adds
the stochastic-layer view of them (the pair (mu, logvar) out of an MLP, and log q carried with
the sample), not a second implementation.
"""

import math
from typing import NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_cache,
    check_grad,
    check_input,
    check_pair,
    check_param,
    get_xp,
)
from ..distributions.normal import DiagNormal
from ..ops import reparam_backward, reparam_forward
from .module import MLP

__all__ = [
    "GaussianLayer",
    "GaussianLayerCache",
    "GaussianSampleCache",
    "gaussian_rsample_forward",
    "gaussian_rsample_backward",
    "gaussian_rsample_dlogq_dz",
    "gaussian_log_prob_forward",
    "gaussian_log_prob_backward",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class GaussianLayerCache(NamedTuple):
    """``mlp``: the MLPCache over N = prod(lead) rows; ``lead``: the leading shape of h."""

    mlp: object
    lead: tuple


class GaussianLayer(MLP):
    """A conditional diagonal Gaussian: h -> (mu, logvar) through an MLP.

    Parameters
    ----------
    sizes : sequence of int
        ``(I, H_1, ..., H_n, Z)``: input width, hidden widths, latent width. The MLP built has
        widths ``(I, H_1, ..., H_n, 2 Z)``; ``(I, Z)`` gives one affine map. The IWAE paper's
        two-layer encoder is ``GaussianLayer((784, 200, 200, 100))`` then
        ``GaussianLayer((100, 100, 100, 50))``.
    activation : {"tanh", "relu", "softplus", "sigmoid"}
        Between hidden layers; the output is affine (no activation on mu or logvar).
    rng : numpy.random.Generator
        Draws the Glorot-uniform weights.
    dtype : float32 or float64

    Notes
    -----
    The last layer's 2Z outputs are ``[mu | logvar]`` (the VAE encoder's layout), so the
    parameters ``W0, b0, ..., W<n>, b<n>`` are those of :class:`MLP` and checkpoints share its
    format. The log-variance is unconstrained: no clipping, so its gradient is exact
    everywhere.
    """

    def __init__(self, sizes, activation, rng, dtype=np.float32):
        func = "GaussianLayer"
        sizes = [
            check_param(s, "sizes", func, kind="int", low=1, low_inclusive=True) for s in sizes
        ]
        if len(sizes) < 2:
            raise ValueError(
                f"{func}: expected sizes to list at least an input and a latent width, got {sizes}."
            )
        self.n_latent = sizes[-1]
        super().__init__((*sizes[:-1], 2 * sizes[-1]), activation, rng, dtype)

    @property
    def n_in(self):
        return self.sizes[0]

    def forward(self, h):
        """Mean and log-variance of the conditional Gaussian.

        Parameters
        ----------
        h : ndarray of shape (..., I)
            Conditioning input (data, a previous layer's sample, or a deterministic feature);
            leading axes are flattened into rows for the GEMMs.

        Returns
        -------
        (mu, logvar) : tuple of ndarray of shape (..., Z)
            Contiguous arrays.
        cache : GaussianLayerCache
        """
        func = "GaussianLayer.forward"
        W0 = self.params["W0"]
        check_input(h, "h", func, dtype=W0.dtype, xp=get_xp(W0), last=self.n_in)
        xp, Z, lead = get_xp(W0), self.n_latent, tuple(h.shape[:-1])
        y, mlp = MLP.forward(self, h.reshape(-1, self.n_in))  # (N, 2Z)
        mu = xp.ascontiguousarray(y[:, :Z]).reshape(lead + (Z,))
        logvar = xp.ascontiguousarray(y[:, Z:]).reshape(lead + (Z,))
        return (mu, logvar), GaussianLayerCache(mlp, lead)

    def backward(self, dout, cache, need_dh=True):
        """Accumulate parameter gradients; return dh (..., I).

        Parameters
        ----------
        dout : tuple (dmu, dlogvar) of ndarray of shape (..., Z)
        cache : GaussianLayerCache
        need_dh : bool
            False when h is data: the first layer's input GEMM is skipped and None returned.

        Notes
        -----
        The forward splits one affine output into two heads, so backward concatenates
        ``[dmu | dlogvar]`` into the output gradient (N, 2Z) and runs :meth:`MLP.backward`.
        """
        func = "GaussianLayer.backward"
        check_cache(cache, GaussianLayerCache, func)
        dmu, dlogvar = check_pair(dout, "dout", "(dmu, dlogvar)", func)
        shape = cache.lead + (self.n_latent,)
        dtype = self.params["W0"].dtype
        check_grad(dmu, "dmu", shape, func, dtype=dtype)
        check_grad(dlogvar, "dlogvar", shape, func, dtype=dtype)
        xp = get_xp(dmu)
        dy = xp.concatenate(
            [dmu.reshape(-1, self.n_latent), dlogvar.reshape(-1, self.n_latent)], axis=1
        )  # (N, 2Z)
        dh = MLP.backward(self, dy, cache.mlp, need_dx=need_dh)
        return None if dh is None else dh.reshape(cache.lead + (self.n_in,))


# --- sampling and density helpers ---------------------------------------------------------


class GaussianSampleCache(NamedTuple):
    """``reparam``: the ReparamCache (eps (*S, ..., Z), std (..., Z))."""

    reparam: object


def _check_mu_logvar(mu, logvar, func):
    check_array(mu, "mu", func)
    check_input(mu, "mu", func, dtype=mu.dtype, xp=get_xp(mu))
    check_input(logvar, "logvar", func, dtype=mu.dtype, xp=get_xp(mu))
    if tuple(mu.shape) != tuple(logvar.shape):
        raise ValueError(
            f"{func}: expected mu and logvar to have the same shape, got {tuple(mu.shape)} "
            f"and {tuple(logvar.shape)}."
        )


def gaussian_rsample_forward(mu, logvar, eps):
    """Reparameterized sample of a diagonal Gaussian and its log-density, for fixed noise.

    Parameters
    ----------
    mu, logvar : ndarray of shape (..., Z)
    eps : ndarray of shape (*S, ..., Z)
        Standard-normal noise held fixed by the caller; leading sample axes S are broadcast.

    Returns
    -------
    (z, log_q) : tuple
        ``z`` (*S, ..., Z) and ``log_q`` (*S, ...), :math:`\\log N(z; \\mu, e^{\\ell})`.
    cache : GaussianSampleCache

    Raises
    ------
    ValueError
        Shapes that disagree, NaN or Inf in any argument.
    TypeError
        Non-float arrays, mixed dtypes or devices.

    Notes
    -----
    .. math::

        z = \\mu + e^{\\ell/2}\\varepsilon, \\qquad
        \\log q(z) = -\\tfrac12\\lVert\\varepsilon\\rVert^2 - \\tfrac12\\sum_j \\ell_j
                     - \\tfrac{Z}{2}\\log 2\\pi .

    The density is written in the noise, which is exact (no cancellation in
    :math:`(z-\\mu)/\\sigma`) and free: it needs no division.
    """
    func = "gaussian_rsample_forward"
    _check_mu_logvar(mu, logvar, func)
    check_input(eps, "eps", func, dtype=mu.dtype, xp=get_xp(mu), min_ndim=mu.ndim)
    if tuple(eps.shape[eps.ndim - mu.ndim :]) != tuple(mu.shape):
        raise ValueError(
            f"{func}: expected eps to have shape (*S, {', '.join(map(str, mu.shape))}) "
            f"(sample axes, then mu's shape), got {tuple(eps.shape)}."
        )
    z, rc = reparam_forward(mu, logvar, eps)  # (*S, ..., Z)
    Z = mu.shape[-1]
    log_q = -0.5 * (eps * eps).sum(axis=-1) - (
        0.5 * logvar.sum(axis=-1) + Z * _HALF_LOG_2PI
    )  # (*S, ...)
    return (z, log_q.astype(mu.dtype, copy=False)), GaussianSampleCache(rc)


def gaussian_rsample_backward(dout, cache):
    """Gradients of :math:`L(z, \\log q)` through the sample, with the noise held fixed.

    Parameters
    ----------
    dout : tuple (dz, dlog_q)
        ``dz`` (*S, ..., Z) and ``dlog_q`` (*S, ...); either may be None (zero).
    cache : GaussianSampleCache

    Returns
    -------
    dmu, dlogvar : ndarray of shape (..., Z)
        Summed over the sample axes S.

    Notes
    -----
    Through z: :math:`d\\mu = \\sum_S dz`,
    :math:`d\\ell = \\tfrac12 e^{\\ell/2}\\sum_S dz\\,\\varepsilon` (reparam_backward).
    Through log q at fixed noise: :math:`\\partial \\log q/\\partial\\ell_j = -\\tfrac12` and
    :math:`\\partial \\log q/\\partial\\mu = 0`, so :math:`d\\ell \\mathrel{-}= \\tfrac12\\sum_S
    dlog\\_q`. This is the total derivative of the fixed-noise objective (the plain
    estimator); STL and DReG instead pass ``dlog_q=None`` and fold
    :func:`gaussian_rsample_dlogq_dz` into ``dz``.
    """
    func = "gaussian_rsample_backward"
    check_cache(cache, GaussianSampleCache, func)
    dz, dlog_q = check_pair(dout, "dout", "(dz, dlog_q)", func)
    eps, std = cache.reparam
    xp = get_xp(std)
    if dz is None:
        dmu, dlogvar = xp.zeros_like(std), xp.zeros_like(std)
    else:
        check_grad(dz, "dz", eps.shape, func)
        dmu, dlogvar = reparam_backward(dz, cache.reparam)
        dmu = dmu.copy() if dmu is dz else dmu
    if dlog_q is not None:
        check_grad(dlog_q, "dlog_q", eps.shape[:-1], func)
        lead = tuple(range(eps.ndim - std.ndim))
        s = dlog_q.sum(axis=lead) if lead else dlog_q  # (...)
        dlogvar = dlogvar - 0.5 * s[..., None]
    return dmu, dlogvar


def gaussian_rsample_dlogq_dz(cache):
    """:math:`\\partial \\log q(z)/\\partial z` at the sample with mu and logvar held fixed.

    Returns
    -------
    ndarray of shape (*S, ..., Z)
        :math:`-(z - \\mu)/\\sigma^2 = -\\varepsilon/\\sigma`: what STL and DReG need (the
        score term of log q is dropped or reweighted, the path term kept).
    """
    check_cache(cache, GaussianSampleCache, "gaussian_rsample_dlogq_dz")
    eps, std = cache.reparam
    return -eps / std


def gaussian_log_prob_forward(z, mu, logvar):
    """:math:`\\log N(z; \\mu, \\mathrm{diag}\\,e^{\\ell})` summed over Z, at a given z.

    The generative step :math:`\\log p(z_l \\mid z_{l+1})` of a hierarchy, or a density
    evaluated at someone else's sample. Delegates to
    :meth:`lvmcore.distributions.DiagNormal.log_prob`.

    Parameters
    ----------
    z : ndarray of shape (*S, ..., Z)
        Broadcasts against mu (leading sample axes S).
    mu, logvar : ndarray of shape (..., Z)

    Returns
    -------
    log_p : ndarray of shape (*S, ...)
    cache : tuple (DiagNormal, z)
    """
    func = "gaussian_log_prob_forward"
    _check_mu_logvar(mu, logvar, func)
    check_input(z, "z", func, dtype=mu.dtype, xp=get_xp(mu), last=mu.shape[-1])
    if z.ndim < mu.ndim or tuple(z.shape[z.ndim - mu.ndim :]) != tuple(mu.shape):
        raise ValueError(
            f"{func}: expected z of shape (*S, {', '.join(map(str, mu.shape))}) (mu's shape "
            f"after leading sample axes), got {tuple(z.shape)}."
        )
    dist = DiagNormal(mu, logvar)
    return dist.log_prob(z), (dist, z)


def gaussian_log_prob_backward(dlog_p, cache):
    """Gradients of :math:`\\sum dlog\\_p \\cdot \\log p(z)`.

    Returns
    -------
    dz : ndarray of z's shape
        :math:`-dlog\\_p\\,(z-\\mu)e^{-\\ell}` (held-fixed-parameter gradient, DReG/STL's).
    dmu, dlogvar : ndarray of mu's shape
        :math:`dlog\\_p\\,(z-\\mu)e^{-\\ell}` and
        :math:`\\tfrac12 dlog\\_p[(z-\\mu)^2 e^{-\\ell} - 1]`, summed over sample axes.

    Notes
    -----
    See :meth:`lvmcore.distributions.DiagNormal.log_prob_backward` for the derivation.
    """
    func = "gaussian_log_prob_backward"
    if not (isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[0], DiagNormal)):
        raise TypeError(
            f"{func}: expected cache to be the (DiagNormal, z) pair returned by "
            f"gaussian_log_prob_forward, got {type(cache).__name__}."
        )
    dist, z = cache
    check_grad(dlog_p, "dlog_p", z.shape[:-1], func, dtype=z.dtype)
    g = dist.log_prob_backward(dlog_p, z)
    return g["value"], g["loc"], g["logvar"]
