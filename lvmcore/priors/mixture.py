"""Mixture of diagonal Gaussians: its log-density over C components and the learned prior.

Shape letters: S leading sample axes, N = prod(S) rows, Z latent, C components, n draws.

The hot path of the mixture priors (this one and the VampPrior, C = 500 pseudo-inputs in
Tomczak and Welling's experiments) is, for every row n, a log-sum-exp over the components::

    a[n, c] = log w_c - 1/2 sum_j [(z_nj - mu_cj)^2 exp(-lv_cj) + lv_cj + log 2 pi]   (N, C)
    log p(z_n) = logsumexp_c a[n, c]                                                 (N,)
    r[n, c] = softmax_c a[n, c]     (the responsibilities, all backward needs)        (N, C)

:func:`mixture_log_prob_ref` computes it in plain array code, the differences
:math:`z_{nj} - \\mu_{cj}` formed directly (no :math:`z^2 - 2z\\mu + \\mu^2` expansion, which
cancels in float32 when z is near a far-out mean), in row blocks so that the (rows, C, Z)
temporary stays bounded. It is the reference a fused kernel for this op is checked against:
one pass per row over C with a running maximum, no (N, C, Z) temporary. That kernel is
``kernels/mixture_logprob.py`` (NumPy reference, Numba, CuPy): :func:`mixture_log_prob_forward`
and :func:`mixture_log_prob_backward`, the entry points the priors call, run it through the
backend of the arrays.
"""

import math
from typing import NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_cache,
    check_float_dtype,
    check_grad,
    check_input,
    check_param,
    get_xp,
)
from ..backend import get_backend
from ..ops.softmax import log_softmax_backward, log_softmax_forward, logsumexp_forward, softmax
from .base import Prior

__all__ = [
    "mixture_log_prob_ref",
    "mixture_log_prob_backward_ref",
    "mixture_log_prob_forward",
    "mixture_log_prob_backward",
    "mixture_sample",
    "MixtureCache",
    "MixtureNoise",
    "MixturePrior",
    "MixturePriorCache",
]

_LOG_2PI = math.log(2.0 * math.pi)
# Elements of one (rows, C, Z) block: 2**20 float64 is 8 MB, small next to the (N, C) output.
_BLOCK = 1 << 20


def _row_blocks(N, C, Z):
    step = max(1, _BLOCK // max(C * Z, 1))
    return [(s, min(s + step, N)) for s in range(0, N, step)]


def mixture_log_prob_ref(z, mu, logvar, log_weights):
    """Log-density of each row under a mixture of diagonal Gaussians, and the responsibilities.

    The reference of the op: plain NumPy/CuPy array code, no checks (see
    :func:`mixture_log_prob_forward` for the validated entry point).

    Parameters
    ----------
    z : ndarray of shape (N, Z)
    mu, logvar : ndarray of shape (C, Z)
        Component means and log-variances.
    log_weights : ndarray of shape (C,)
        Log mixture weights, :math:`\\log w_c` with :math:`\\sum_c w_c = 1`.

    Returns
    -------
    log_p : ndarray of shape (N,)
        :math:`\\log\\sum_c w_c\\,\\mathcal N(z_n; \\mu_c, \\mathrm{diag}\\,e^{\\ell_c})`.
    resp : ndarray of shape (N, C)
        :math:`r_{nc} = w_c\\mathcal N(z_n;\\mu_c, e^{\\ell_c}) / p(z_n)`; rows sum to 1.

    Notes
    -----
    The log-sum-exp is shifted by the row maximum (``lvmcore.ops.logsumexp_forward``), so no
    component's density underflowing to 0 can turn the result into ``-inf`` while another
    component still has mass.
    """
    xp = get_xp(z)
    N, Z = z.shape
    C = mu.shape[0]
    inv_var = xp.exp(-logvar)  # (C, Z)
    const = log_weights - 0.5 * (logvar.sum(axis=1) + Z * _LOG_2PI)  # (C,)
    a = xp.empty((N, C), dtype=z.dtype)
    for s, e in _row_blocks(N, C, Z):
        d = z[s:e, None, :] - mu[None, :, :]  # (n, C, Z)
        a[s:e] = const - 0.5 * (d * d * inv_var).sum(axis=2)  # (n, C)
    log_p, lse = logsumexp_forward(a, axis=1)  # (N,), weights (N, C)
    return log_p.astype(z.dtype, copy=False), lse.weights.astype(z.dtype, copy=False)


def mixture_log_prob_backward_ref(dlog_p, z, mu, logvar, resp, need_params=True):
    """Gradients of :math:`\\sum_n dlog\\_p_n \\log p(z_n)`; the reference of the op.

    Parameters
    ----------
    dlog_p : ndarray of shape (N,)
    z : ndarray of shape (N, Z)
    mu, logvar : ndarray of shape (C, Z)
    resp : ndarray of shape (N, C)
        From :func:`mixture_log_prob_ref`.
    need_params : bool
        False: only dz (the held-fixed gradient); the others are returned as None.

    Returns
    -------
    dz : ndarray of shape (N, Z)
    dmu, dlogvar : ndarray of shape (C, Z), or None
    dlog_weights : ndarray of shape (C,), or None

    Notes
    -----
    With :math:`g_{nc} = dlog\\_p_n\\, r_{nc}` and :math:`d_{ncj} = z_{nj} - \\mu_{cj}`, the
    derivative of a log-sum-exp is its softmax, so each component's log-density is weighted
    by :math:`g_{nc}`:

    .. math::

        dz_{nj} = -\\sum_c g_{nc} d_{ncj} e^{-\\ell_{cj}}, \\quad
        d\\mu_{cj} = \\sum_n g_{nc} d_{ncj} e^{-\\ell_{cj}}, \\quad
        d\\ell_{cj} = \\tfrac12\\sum_n g_{nc}(d_{ncj}^2 e^{-\\ell_{cj}} - 1), \\quad
        d\\log w_c = \\sum_n g_{nc}.
    """
    xp = get_xp(z)
    N, Z = z.shape
    C = mu.shape[0]
    inv_var = xp.exp(-logvar)  # (C, Z)
    g = dlog_p[:, None] * resp  # (N, C)
    dz = xp.empty_like(z)
    dmu = xp.zeros_like(mu) if need_params else None
    dlogvar = xp.zeros_like(mu) if need_params else None
    for s, e in _row_blocks(N, C, Z):
        d = z[s:e, None, :] - mu[None, :, :]  # (n, C, Z)
        t = g[s:e, :, None] * d * inv_var  # (n, C, Z)
        dz[s:e] = -t.sum(axis=1)
        if need_params:
            dmu += t.sum(axis=0)
            dlogvar += 0.5 * (t * d).sum(axis=0)
    if not need_params:
        return dz, None, None, None
    dlog_weights = g.sum(axis=0)  # (C,)
    dlogvar -= 0.5 * dlog_weights[:, None]
    return dz, dmu, dlogvar, dlog_weights


class MixtureCache(NamedTuple):
    """z : (N, Z) the rows; mu, logvar : (C, Z); resp : (N, C); lead : z's leading shape."""

    z: object
    mu: object
    logvar: object
    resp: object
    lead: tuple


def _check_components(mu, logvar, log_weights, func):
    check_array(mu, "mu", func, ndim=2)
    xp, dtype = get_xp(mu), mu.dtype
    C, Z = mu.shape
    if C < 1 or Z < 1:
        raise ValueError(
            f"{func}: expected mu to have at least one row (component) and one column (latent "
            f"dimension), got shape {(C, Z)}."
        )
    check_input(logvar, "logvar", func, dtype=dtype, xp=xp)
    if tuple(logvar.shape) != (C, Z):
        raise ValueError(
            f"{func}: expected logvar to have mu's shape {(C, Z)}, got {tuple(logvar.shape)}."
        )
    check_input(log_weights, "log_weights", func, dtype=dtype, xp=xp, finite=False)
    check_array(log_weights, "log_weights", func, allow_inf=True)
    if tuple(log_weights.shape) != (C,):
        raise ValueError(
            f"{func}: expected log_weights to have shape ({C},) (one per row of mu), got "
            f"{tuple(log_weights.shape)}."
        )
    return xp, dtype, C, Z


def mixture_log_prob_forward(z, mu, logvar, log_weights):
    """Log-density under a mixture of diagonal Gaussians, with what backward needs.

    Parameters
    ----------
    z : ndarray of shape (*S, Z)
    mu, logvar : ndarray of shape (C, Z)
    log_weights : ndarray of shape (C,)
        Normalized log weights (e.g. a log-softmax); -inf switches a component off.

    Returns
    -------
    log_p : ndarray of shape (*S,)
    cache : MixtureCache

    Raises
    ------
    ValueError
        Shapes that disagree, no component, NaN or Inf (NaN only, for log_weights).
    TypeError
        Non-float arrays, mixed dtypes or devices.

    Notes
    -----
    The math of :func:`mixture_log_prob_ref`, computed by the backend's fused kernel
    (``kernels.mixture_logprob``) after the arguments are validated.
    """
    func = "mixture_log_prob_forward"
    xp, dtype, C, Z = _check_components(mu, logvar, log_weights, func)
    check_input(z, "z", func, dtype=dtype, xp=xp, last=Z)
    lead = tuple(z.shape[:-1])
    z2 = xp.ascontiguousarray(z.reshape(-1, Z))  # (N, Z)
    mu, logvar, log_weights = (xp.ascontiguousarray(a) for a in (mu, logvar, log_weights))
    # the fused kernel of the backend (kernels/mixture_logprob.py); equal to
    # mixture_log_prob_ref (tests/test_kernels_mixture_logprob.py)
    log_p, resp = get_backend(z2).kernel("mixture_logprob")(z2, mu, logvar, log_weights)
    return log_p.reshape(lead), MixtureCache(z2, mu, logvar, resp, lead)


def mixture_log_prob_backward(dlog_p, cache, need_params=True):
    """Gradients with respect to z and the components.

    Parameters
    ----------
    dlog_p : ndarray of shape (*S,)
    cache : MixtureCache
    need_params : bool, default True
        False: return dz only (the others None), skipping their work.

    Returns
    -------
    dz : ndarray of shape (*S, Z)
    dmu, dlogvar : ndarray of shape (C, Z)
    dlog_weights : ndarray of shape (C,)

    Notes
    -----
    The math of :func:`mixture_log_prob_backward_ref`, computed by the backend's fused kernel
    (``kernels.mixture_logprob_backward``).
    """
    check_cache(cache, MixtureCache, "mixture_log_prob_backward")
    check_grad(dlog_p, "dlog_p", cache.lead, "mixture_log_prob_backward", dtype=cache.z.dtype)
    xp = get_xp(cache.z)
    dlog_p = xp.ascontiguousarray(dlog_p.reshape(-1))  # (N,)
    dz, dmu, dlv, dlw = get_backend(cache.z).kernel("mixture_logprob_backward")(
        dlog_p, cache.z, cache.mu, cache.logvar, cache.resp, bool(need_params)
    )
    return dz.reshape(cache.lead + (cache.z.shape[1],)), dmu, dlv, dlw


class MixtureNoise(NamedTuple):
    """u : (n,) uniforms in [0, 1) that pick the components; eps : (n, Z) standard normals."""

    u: object
    eps: object


def mixture_sample(mu, logvar, log_weights, noise):
    """Draws from the mixture for given noise (no gradient: a sampler, not a reparameterization).

    Parameters
    ----------
    mu, logvar : ndarray of shape (C, Z)
    log_weights : ndarray of shape (C,)
    noise : MixtureNoise

    Returns
    -------
    z : ndarray of shape (n, Z)

    Notes
    -----
    Component :math:`c_i` is the first with :math:`\\sum_{c' \\le c} w_{c'} > u_i` (the
    inverse CDF of the weights), then :math:`z_i = \\mu_{c_i} + e^{\\ell_{c_i}/2}\\varepsilon_i`.
    """
    func = "mixture_sample"
    xp, dtype, C, Z = _check_components(mu, logvar, log_weights, func)
    if not isinstance(noise, MixtureNoise):
        raise TypeError(
            f"{func}: expected noise to be a MixtureNoise (u, eps), got "
            f"{type(noise).__name__}. Draw it with MixturePrior.draw_noise(rng, n)."
        )
    check_input(noise.u, "noise.u", func, dtype=dtype, xp=xp)
    n = noise.u.shape[0]
    if noise.u.ndim != 1 or bool(((noise.u < 0) | (noise.u >= 1)).any()):
        raise ValueError(
            f"{func}: expected noise.u to be uniforms in [0, 1) of shape (n,), got shape "
            f"{tuple(noise.u.shape)} with {int(((noise.u < 0) | (noise.u >= 1)).sum())} "
            f"values outside."
        )
    check_input(noise.eps, "noise.eps", func, dtype=dtype, xp=xp)
    if tuple(noise.eps.shape) != (n, Z):
        raise ValueError(
            f"{func}: expected noise.eps to have shape (n, Z) = {(n, Z)} (n from noise.u, Z "
            f"from mu), got {tuple(noise.eps.shape)}."
        )
    cdf = xp.cumsum(softmax(log_weights))  # (C,)
    # The last CDF entry may round below 1: an index past the end falls back to C - 1.
    c = xp.minimum(xp.searchsorted(cdf, noise.u, side="right"), C - 1)  # (n,)
    return mu[c] + xp.exp(0.5 * logvar[c]) * noise.eps  # (n, Z)


# --- the learned mixture prior ----------------------------------------------------------------


class MixturePriorCache(NamedTuple):
    """mixture : MixtureCache; log_softmax : the log-softmax cache of the logits; lead."""

    mixture: object
    log_softmax: object
    lead: tuple


class MixturePrior(Prior):
    """A mixture of C diagonal Gaussians with learned means, log-variances and weights.

    Parameters
    ----------
    n_latent : int
        Z.
    n_components : int
        C >= 1. C = 1 with zero means and log-variances is the standard normal.
    rng : numpy.random.Generator
        Draws the initial means.
    init_std : float, default 1.0
        The initial means are drawn from :math:`\\mathcal N(0, \\text{init\\_std}^2 I)`;
        log-variances and logits start at 0 (unit variances, equal weights).
    dtype : float32 or float64

    Notes
    -----
    Parameters: ``mu`` (C, Z), ``logvar`` (C, Z) and ``logits`` (C,), with weights
    :math:`w = \\mathrm{softmax}(\\text{logits})`:

    .. math::

        \\log p(z) = \\log\\sum_c w_c\\,\\mathcal N(z;\\mu_c, \\mathrm{diag}\\,e^{\\ell_c}).

    Backward: :func:`mixture_log_prob_backward_ref` gives :math:`d\\log w`; the logits get it
    through the log-softmax, :math:`d\\text{logits} = d\\log w - w\\sum_c d\\log w_c`.
    """

    _cache_type = MixturePriorCache

    def __init__(self, n_latent, n_components, rng, *, init_std=1.0, dtype=np.float32):
        super().__init__()
        func = "MixturePrior"
        Z = check_param(n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True)
        C = check_param(n_components, "n_components", func, kind="int", low=1, low_inclusive=True)
        init_std = check_param(init_std, "init_std", func, low=0, low_inclusive=True)
        dtype = check_float_dtype(dtype, func)  # None included: numpy.dtype(None) is float64
        self.n_latent, self.n_components = Z, C
        self._add_param("mu", (init_std * rng.standard_normal((C, Z))).astype(dtype))
        self._add_param("logvar", np.zeros((C, Z), dtype=dtype))
        self._add_param("logits", np.zeros(C, dtype=dtype))

    @property
    def weights(self):
        """ndarray of shape (C,): the mixture weights softmax(logits)."""
        return softmax(self.params["logits"])

    def _log_prob(self, z):
        log_w, ls = log_softmax_forward(self.params["logits"])  # (C,)
        log_p, mc = mixture_log_prob_forward(z, self.params["mu"], self.params["logvar"], log_w)
        return log_p, MixturePriorCache(mc, ls, mc.lead)

    def _backward(self, dlog_p, cache, accumulate):
        dz, dmu, dlv, dlw = mixture_log_prob_backward(dlog_p, cache.mixture, accumulate)
        if accumulate:
            self.grads["mu"] += dmu
            self.grads["logvar"] += dlv
            self.grads["logits"] += log_softmax_backward(dlw, cache.log_softmax)
        return dz

    def _draw_noise(self, rng, n):
        return MixtureNoise(self._uniform(rng, (n,)), self._normal(rng, (n, self.n_latent)))

    def _check_noise(self, noise, n, func):
        return _check_mixture_noise(self, noise, n, self.n_latent, func)

    def _sample(self, noise, n):
        p = self.params
        log_w, _ = log_softmax_forward(p["logits"])
        return mixture_sample(p["mu"], p["logvar"], log_w, noise)


def _check_mixture_noise(prior, noise, n, Z, func):
    if not isinstance(noise, MixtureNoise):
        raise TypeError(
            f"{func}: expected rng_or_noise to be a numpy.random.Generator or a MixtureNoise "
            f"(u, eps), got {type(noise).__name__}. Draw it with draw_noise(rng, n)."
        )
    prior._check_noise_array(noise.u, "noise.u", (n,), func)
    prior._check_uniform01(noise.u, "noise.u", func)
    prior._check_noise_array(noise.eps, "noise.eps", (n, Z), func)
    return noise
