"""Dequantization: continuous densities as models of discrete data, with a valid bound.

Shape letters: S leading sample axes (K), B batch, D data, L levels.

A continuous density :math:`p_v` on :math:`\\mathbb R^D` assigns the discrete point x (levels
in [0, L)) the probability of its unit cell, :math:`P(x) = \\int_{[0,1)^D} p_v(x + u)\\,du`.
For any density :math:`q(u \\mid x)` on the cell, Jensen's inequality gives

.. math::

    \\log P(x) \\;\\ge\\; \\mathbb E_{q(u\\mid x)}\\big[\\log p_v(x + u) - \\log q(u \\mid x)\\big],

with equality when :math:`q(u \\mid x) = p_v(x + u)/P(x)`.

- **Uniform dequantization** (Theis et al. 2016): :math:`q = U[0,1)^D`, :math:`\\log q = 0`.
- **Variational dequantization** (Ho et al. 2019, Flow++): a learned conditional q; here the
  logit-normal :math:`u = \\sigma(\\mu(x) + \\sigma(x)\\varepsilon)`.

The model usually sees :math:`y = (x + u)/L \\in [0, 1)^D`; with :math:`p_v(v) =
p_y(v/L)\\,L^{-D}` the log-Jacobian :math:`-D\\log L` enters the bound. Results are reported
in nats per data point or in bits per dimension, :math:`-\\text{bound}/(D\\ln 2)`.

Per sample (the model's log-weight, for the K-sample bounds as much as for the ELBO)::

    y, log_det = uniform_dequantize(x, u, L)                      (*S, B, D), float
    (y, log_q), c = VariationalDequantizer.forward(x, eps)        (*S, B, D), (*S, B)
    log w = log p_y(y) + log_det - log_q                          (*S, B)
"""

import math
from typing import NamedTuple

import numpy as np

from ._validation import check_array, check_levels, check_param, get_xp
from .nn._checks import check_grad, check_input
from .nn.stochastic import GaussianLayer, gaussian_rsample_backward, gaussian_rsample_forward
from .ops import log_sigmoid, sigmoid

__all__ = [
    "uniform_dequantize",
    "logit_normal_forward",
    "logit_normal_backward",
    "LogitNormalCache",
    "VariationalDequantizer",
    "VariationalDequantizerCache",
    "dequantized_log_weight",
    "bits_per_dim",
]

_LN2 = math.log(2.0)


def _check_unit(u, name, func, closed):
    hi = (u > 1) if closed else (u >= 1)
    bad = (u < 0) | hi
    if bool(bad.any()):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(
            f"{func}: expected {name} to lie in {interval}, got {int(bad.sum())} values "
            f"outside, e.g. {float(u[bad].ravel()[0])!r}. Draw it with lvmcore.noise.uniform."
        )


def _check_data_and_noise(x, u, levels, func, uname):
    """x (B, D) levels and u (*S, B, D) float; returns the levels as u's dtype."""
    L = check_param(levels, "levels", func, kind="int", low=2, low_inclusive=True)
    check_array(x, "x", func, dtype="any", ndim=2, finite=False)
    check_array(u, uname, func)
    if get_xp(x) is not get_xp(u):
        raise TypeError(
            f"{func}: expected x and {uname} on one device, got {get_xp(x).__name__} and "
            f"{get_xp(u).__name__}. Move them explicitly; lvmcore never copies implicitly."
        )
    if u.ndim < 2 or tuple(u.shape[-2:]) != tuple(x.shape):
        raise ValueError(
            f"{func}: expected {uname} of shape (*S, {x.shape[0]}, {x.shape[1]}) (sample axes, "
            f"then x's shape), got {tuple(u.shape)}."
        )
    return check_levels(x, L, "x", func).astype(u.dtype), L


def uniform_dequantize(x, u, levels):
    """:math:`y = (x + u)/L` and the log-Jacobian of the scaling.

    Parameters
    ----------
    x : ndarray of shape (B, D)
        Levels in [0, L) (integer, or float of integral values).
    u : ndarray of shape (*S, B, D)
        Noise in [0, 1): uniforms for uniform dequantization (``lvmcore.noise.uniform``), or a
        variational dequantizer's sample.
    levels : int
        L >= 2.

    Returns
    -------
    y : ndarray of shape (*S, B, D), u's dtype
        In [0, 1).
    log_det : float
        :math:`-D\\log L`: add it to :math:`\\log p_y(y)` to get :math:`\\log p_v(x + u)`,
        the density in the levels' own scale in which the bound holds.

    Raises
    ------
    ValueError
        Non-integer or out-of-range levels, u outside [0, 1) or of the wrong shape.

    Notes
    -----
    No gradient flows here for uniform noise (it has no parameters, x is data); a
    variational u gets :math:`du = dy / L`, which :class:`VariationalDequantizer` applies.
    """
    func = "uniform_dequantize"
    xf, L = _check_data_and_noise(x, u, levels, func, "u")
    _check_unit(u, "u", func, closed=False)
    y = (xf + u) / u.dtype.type(L)  # (*S, B, D)
    return y, -x.shape[1] * math.log(L)


# --- the logit-normal q(u | x) ------------------------------------------------------------


class LogitNormalCache(NamedTuple):
    """gaussian : GaussianSampleCache of s = mu + sigma eps; u : (*S, B, D) sigmoid(s);
    one_minus_u : (*S, B, D) sigmoid(-s), exact where u rounds to 1."""

    gaussian: object
    u: object
    one_minus_u: object


def logit_normal_forward(mu, logvar, eps):
    """Reparameterized logit-normal sample on (0, 1)^D and its log-density.

    Parameters
    ----------
    mu, logvar : ndarray of shape (B, D)
        Mean and log-variance of the Gaussian in logit space.
    eps : ndarray of shape (*S, B, D)
        Standard-normal noise held fixed by the caller.

    Returns
    -------
    (u, log_q) : tuple
        ``u`` (*S, B, D) :math:`= \\sigma(\\mu + e^{\\ell/2}\\varepsilon)` and ``log_q``
        (*S, B) :math:`= \\log\\mathcal N(s;\\mu,e^{\\ell}) - \\sum_d \\log u_d(1 - u_d)`.
    cache : LogitNormalCache

    Notes
    -----
    The change of variables :math:`u = \\sigma(s)` has :math:`du/ds = u(1-u)`, so
    :math:`\\log q(u) = \\log\\mathcal N(s) - \\log u - \\log(1-u)`, computed as
    ``log_sigmoid(s) + log_sigmoid(-s)``: exact even where u rounds to 0 or 1 (float32 for
    :math:`|s| > 17`), so the density and its gradient stay finite.
    """
    (s, log_n), gc = gaussian_rsample_forward(mu, logvar, eps)  # checks the arguments
    u, omu = sigmoid(s), sigmoid(-s)
    log_q = log_n - (log_sigmoid(s) + log_sigmoid(-s)).sum(axis=-1)  # (*S, B)
    return (u, log_q), LogitNormalCache(gc, u, omu)


def logit_normal_backward(dout, cache):
    """Gradients of :math:`L(u, \\log q)` with the noise held fixed.

    Parameters
    ----------
    dout : tuple (du, dlog_q)
        ``du`` (*S, B, D) and ``dlog_q`` (*S, B); either may be None (zero).
    cache : LogitNormalCache

    Returns
    -------
    dmu, dlogvar : ndarray of shape (B, D)
        Summed over the sample axes.

    Notes
    -----
    With :math:`s = \\mu + \\sigma\\varepsilon`: :math:`\\partial u/\\partial s = u(1-u)` and
    :math:`\\partial(-\\log u - \\log(1-u))/\\partial s = -(1-u) + u`, so

    .. math::

        ds = du\\,u(1-u) + dlog\\_q\\,(u - (1-u)),

    and :func:`lvmcore.nn.stochastic.gaussian_rsample_backward` takes ``(ds, dlog_q)`` to
    (dmu, dlogvar), adding the Gaussian's :math:`-\\tfrac12 dlog\\_q` per dimension.
    """
    du, dlog_q = dout
    u, omu = cache.u, cache.one_minus_u
    ds = get_xp(u).zeros_like(u)
    if du is not None:
        check_grad(du, "du", u.shape, "logit_normal_backward")
        ds = ds + du * u * omu
    if dlog_q is not None:
        check_grad(dlog_q, "dlog_q", u.shape[:-1], "logit_normal_backward")
        ds = ds + dlog_q[..., None] * (u - omu)
    return gaussian_rsample_backward((ds, dlog_q), cache.gaussian)


# --- the learned dequantizer --------------------------------------------------------------


class VariationalDequantizerCache(NamedTuple):
    """net : GaussianLayerCache; logit_normal : LogitNormalCache; levels : L."""

    net: object
    logit_normal: object
    levels: int


class VariationalDequantizer(GaussianLayer):
    """q(u | x): a logit-normal whose mean and log-variance an MLP reads off the levels.

    Parameters
    ----------
    sizes : sequence of int
        ``(D, H_1, ..., H_n, D)``: data width, hidden widths, data width again (the MLP gives
        2D outputs, ``[mu | logvar]``, as :class:`lvmcore.nn.GaussianLayer`).
    levels : int
        L >= 2.
    activation : {"tanh", "relu", "softplus", "sigmoid"}
    rng : numpy.random.Generator
    dtype : float32 or float64

    Notes
    -----
    The network's input is :math:`x/(L-1) \\in [0, 1]^D`. Forward: ``(mu, logvar) = MLP(x /
    (L - 1))``, ``(u, log_q) = logit_normal_forward(mu, logvar, eps)``, ``y = (x + u)/L``.
    Backward from ``(dy, dlog_q)``: :math:`du = dy/L`, then
    :func:`logit_normal_backward` and the MLP's backward (no gradient for x, which is data).

    References
    ----------
    J. Ho, X. Chen, A. Srinivas, Y. Duan, P. Abbeel, "Flow++: Improving Flow-Based Generative
    Models with Variational Dequantization and Architecture Design", ICML 2019, sec. 3.1.
    """

    def __init__(self, sizes, levels, activation, rng, dtype=np.float32):
        func = "VariationalDequantizer"
        self.levels = check_param(levels, "levels", func, kind="int", low=2, low_inclusive=True)
        super().__init__(sizes, activation, rng, dtype)
        if self.n_in != self.n_latent:
            raise ValueError(
                f"{func}: expected sizes to start and end with the data width D, got "
                f"{tuple(sizes)}."
            )

    def forward(self, x, eps):
        """Sample y = (x + u)/L with u ~ q(u | x) for fixed noise.

        Parameters
        ----------
        x : ndarray of shape (B, D)
            Levels in [0, L).
        eps : ndarray of shape (*S, B, D)
            Standard-normal noise.

        Returns
        -------
        (y, log_q) : tuple
            ``y`` (*S, B, D) in (0, 1), ``log_q`` (*S, B) :math:`\\log q(u \\mid x)`.
        cache : VariationalDequantizerCache
        """
        func = "VariationalDequantizer.forward"
        W0 = self.params["W0"]
        xf, L = _check_data_and_noise(x, eps, self.levels, func, "eps")
        check_input(eps, "eps", func, dtype=W0.dtype, xp=get_xp(W0), last=self.n_in)
        (mu, logvar), nc = GaussianLayer.forward(self, xf / W0.dtype.type(L - 1))  # (B, D) each
        (u, log_q), lc = logit_normal_forward(mu, logvar, eps)
        y = (xf + u) / W0.dtype.type(L)  # (*S, B, D)
        return (y, log_q), VariationalDequantizerCache(nc, lc, L)

    def backward(self, dout, cache):
        """Accumulate the MLP's gradients from ``(dy, dlog_q)``; returns None (x is data).

        Parameters
        ----------
        dout : tuple (dy, dlog_q)
            ``dy`` (*S, B, D), e.g. the continuous decoder's gradient at y; ``dlog_q``
            (*S, B), e.g. minus the bound's weights. Either may be None.
        cache : VariationalDequantizerCache
        """
        dy, dlog_q = dout
        du = None if dy is None else dy / dy.dtype.type(cache.levels)
        dmu, dlogvar = logit_normal_backward((du, dlog_q), cache.logit_normal)
        GaussianLayer.backward(self, (dmu, dlogvar), cache.net, need_dh=False)


# --- bounds -------------------------------------------------------------------------------


def dequantized_log_weight(log_p_y, n_dims, levels, log_q=None):
    """:math:`\\log w = \\log p_y(y) - D\\log L - \\log q(u \\mid x)` per sample.

    Parameters
    ----------
    log_p_y : ndarray of shape (*S, B)
        The continuous density of y = (x + u)/L (e.g. minus ``logistic_nll_forward``).
    n_dims : int
        D.
    levels : int
        L.
    log_q : ndarray of shape (*S, B), optional
        The dequantizer's log-density; None for uniform dequantization (log q = 0).

    Returns
    -------
    ndarray of shape (*S, B)
        Its mean over S is the bound on :math:`\\log P(x)` in nats (a log-mean-exp over S
        gives the tighter importance-weighted bound).
    """
    func = "dequantized_log_weight"
    check_array(log_p_y, "log_p_y", func, allow_inf=True)
    D = check_param(n_dims, "n_dims", func, kind="int", low=1, low_inclusive=True)
    L = check_param(levels, "levels", func, kind="int", low=2, low_inclusive=True)
    log_w = log_p_y - log_p_y.dtype.type(D * math.log(L))
    if log_q is not None:
        check_array(log_q, "log_q", func)
        if tuple(log_q.shape) != tuple(log_p_y.shape):
            raise ValueError(
                f"{func}: expected log_q to have log_p_y's shape {tuple(log_p_y.shape)}, got "
                f"{tuple(log_q.shape)}."
            )
        log_w = log_w - log_q
    return log_w


def bits_per_dim(log_px, n_dims):
    """:math:`-\\log P(x) / (D \\ln 2)`: a log-likelihood (or bound) in nats per data point
    turned into bits per dimension (lower is better)."""
    D = check_param(n_dims, "n_dims", "bits_per_dim", kind="int", low=1, low_inclusive=True)
    return -log_px / (D * _LN2)
