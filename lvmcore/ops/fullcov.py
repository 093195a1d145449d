"""Full-covariance Gaussian posterior: z = mu + L eps with L lower triangular.

Shape letters: S leading sample axes (K), B batch (any leading shape of mu), Z latent,
T = Z (Z + 1) / 2 the unconstrained factor entries.

The encoder gives mu (B, Z) and an unconstrained vector ``l_raw`` (B, T): the entries of L's
lower triangle in row-major order (``numpy.tril_indices(Z)``), with the diagonal entries
exponentiated::

    L[i, j] = l_raw[k]        for j < i,        (k the row-major position of (i, j))
    L[i, i] = exp(l_raw[k_i]),  k_i = i (i + 3) / 2

Why exp and not softplus for the diagonal: ``log L_ii = l_raw[k_i]`` exactly, so the
log-determinant in log q is a plain sum of raw entries (linear, no ``log(softplus(.))`` that
underflows to ``-inf`` for very negative inputs), and a diagonal L is the diagonal posterior
with ``l_raw[k_i] = logvar_i / 2``: the full-covariance block extends the existing
log-variance parameterization rather than adding a second one. The price, exp overflowing for
raw entries above ~88 in float32, is the one the diagonal posterior already pays.

Forward, for fixed noise eps (*S, B, Z)::

    z     = mu + L eps                                           (*S, B, Z)
    log q = -|eps|^2 / 2 - sum_i log L_ii - Z/2 log(2 pi)          (*S, B)

This file is a set of stateless forward/backward pairs, like the rest of ``lvmcore.ops``.
"""

import math
from typing import NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_cache,
    check_pair,
    check_param,
    check_same_device,
    check_same_dtype,
    get_xp,
)

__all__ = [
    "fullcov_tril_size",
    "fullcov_cholesky_forward",
    "fullcov_cholesky_backward",
    "fullcov_raw_from_cholesky",
    "fullcov_rsample_forward",
    "fullcov_rsample_backward",
    "fullcov_rsample_dlogq_dz",
    "fullcov_log_prob_forward",
    "fullcov_log_prob_backward",
    "CholeskyCache",
    "FullCovSampleCache",
    "FullCovLogProbCache",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def fullcov_tril_size(n_latent):
    """T = Z (Z + 1) / 2, the length of ``l_raw`` for Z latent dimensions."""
    n_latent = check_param(
        n_latent, "n_latent", "fullcov_tril_size", kind="int", low=0, low_inclusive=True
    )
    return n_latent * (n_latent + 1) // 2


def _n_from_size(T, func):
    Z = int(round((math.sqrt(8 * T + 1) - 1) / 2))
    if Z < 1 or fullcov_tril_size(Z) != T:
        raise ValueError(
            f"{func}: expected l_raw.shape[-1] to be Z (Z + 1) / 2 for some Z >= 1 (1, 3, 6, 10, "
            f"...), got {T}."
        )
    return Z


def _tril(Z, xp):
    rows, cols = np.tril_indices(Z)
    diag = np.arange(Z) * (np.arange(Z) + 3) // 2
    return xp.asarray(rows), xp.asarray(cols), xp.asarray(diag)


# --- the factor ---------------------------------------------------------------------------


class CholeskyCache(NamedTuple):
    """diag_L : (..., Z) the exponentiated diagonal; rows, cols, diag : index arrays."""

    diag_L: object
    rows: object
    cols: object
    diag: object


def fullcov_cholesky_forward(l_raw):
    """Lower-triangular L with positive diagonal from the unconstrained vector.

    Parameters
    ----------
    l_raw : ndarray of shape (..., T)

    Returns
    -------
    L : ndarray of shape (..., Z, Z)
    cache : CholeskyCache

    Raises
    ------
    ValueError
        T not a triangular number, NaN or Inf.
    """
    func = "fullcov_cholesky_forward"
    check_array(l_raw, "l_raw", func)
    if l_raw.ndim < 1:
        raise ValueError(f"{func}: expected l_raw to have at least 1 dimension, got a 0-d array.")
    return _cholesky(l_raw, _n_from_size(l_raw.shape[-1], func))


def _cholesky(l_raw, Z):
    xp = get_xp(l_raw)
    rows, cols, diag = _tril(Z, xp)
    L = xp.zeros(l_raw.shape[:-1] + (Z, Z), dtype=l_raw.dtype)  # (..., Z, Z)
    L[..., rows, cols] = l_raw
    diag_L = xp.exp(l_raw[..., diag])  # (..., Z)
    L[..., xp.arange(Z), xp.arange(Z)] = diag_L
    return L, CholeskyCache(diag_L, rows, cols, diag)


def fullcov_cholesky_backward(dL, cache):
    """dl_raw (..., T) from dL (..., Z, Z).

    Notes
    -----
    Off the diagonal L copies l_raw; on it :math:`\\partial L_{ii}/\\partial r_{k_i} = L_{ii}`.
    The upper triangle of dL is ignored (L has no entries there).
    """
    func = "fullcov_cholesky_backward"
    check_cache(cache, CholeskyCache, func)
    Z = cache.diag_L.shape[-1]
    check_array(
        dL,
        "dL",
        func,
        shape=tuple(cache.diag_L.shape) + (Z,),
        dtype=cache.diag_L.dtype,
        finite=False,
        shape_of="the factor L of the forward",
        ref="the forward's",
    )
    return _cholesky_backward(dL, cache)


def _cholesky_backward(dL, cache):
    dl_raw = dL[..., cache.rows, cache.cols]  # (..., T), a fresh array
    dl_raw[..., cache.diag] *= cache.diag_L
    return dl_raw


def fullcov_raw_from_cholesky(L):
    """The unconstrained vector of a given Cholesky factor (the inverse of the forward).

    Parameters
    ----------
    L : ndarray of shape (..., Z, Z)
        Lower triangular with a positive diagonal, e.g. ``numpy.linalg.cholesky(cov)``.

    Returns
    -------
    l_raw : ndarray of shape (..., T)

    Raises
    ------
    ValueError
        L not square, not lower triangular, with a non-positive diagonal entry, NaN or Inf.
    """
    func = "fullcov_raw_from_cholesky"
    check_array(L, "L", func)
    if L.ndim < 2 or L.shape[-1] != L.shape[-2]:
        raise ValueError(
            f"{func}: expected L to have shape (..., Z, Z), got {tuple(L.shape)}. Pass the "
            f"square Cholesky factor of the covariance."
        )
    xp, Z = get_xp(L), L.shape[-1]
    upper = xp.triu(L, 1)
    if bool((upper != 0).any()):
        raise ValueError(
            f"{func}: expected L to be lower triangular, got {int((upper != 0).sum())} non-zero "
            f"entries above the diagonal. Pass numpy.linalg.cholesky(cov), not its transpose."
        )
    d = xp.diagonal(L, axis1=-2, axis2=-1)  # (..., Z)
    if bool((d <= 0).any()):
        bad = float(d[d <= 0].ravel()[0])
        raise ValueError(
            f"{func}: expected L to have a positive diagonal (a Cholesky factor), got "
            f"{int((d <= 0).sum())} non-positive diagonal entries, e.g. {bad!r}. A factor with "
            f"a sign flip gives the same covariance with the column negated."
        )
    rows, cols, diag = _tril(Z, xp)
    l_raw = L[..., rows, cols]  # (..., T)
    l_raw[..., diag] = xp.log(d)
    return l_raw


# --- shared checks and helpers ------------------------------------------------------------


def _check_like(x, name, mu, func, min_ndim=1):
    """A finite float array on mu's device with mu's dtype and at least ``min_ndim`` axes."""
    check_array(x, name, func)
    check_same_device([mu, x], ["mu", name], func)
    check_same_dtype([mu, x], ["mu", name], func)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{func}: expected {name} to have at least {min_ndim} dimensions, got an array of "
            f"shape {tuple(x.shape)}."
        )


def _check_grad(d, name, shape, func):
    check_array(d, name, func, finite=False)
    if tuple(d.shape) != tuple(shape):
        raise ValueError(
            f"{func}: expected {name} to have the forward output's shape {tuple(shape)}, got "
            f"{tuple(d.shape)}."
        )


def _check_mu_raw(mu, l_raw, func):
    check_array(mu, "mu", func)
    _check_like(mu, "mu", mu, func)
    xp = get_xp(mu)
    Z = mu.shape[-1]
    T = fullcov_tril_size(Z)
    _check_like(l_raw, "l_raw", mu, func)
    if tuple(l_raw.shape) != tuple(mu.shape[:-1]) + (T,):
        raise ValueError(
            f"{func}: expected l_raw to have shape {tuple(mu.shape[:-1]) + (T,)} (mu's leading "
            f"shape, then Z (Z + 1) / 2 = {T} for Z = {Z}), got {tuple(l_raw.shape)}."
        )
    return xp, Z


def _check_samples(x, name, mu, func):
    _check_like(x, name, mu, func, min_ndim=mu.ndim)
    if tuple(x.shape[x.ndim - mu.ndim :]) != tuple(mu.shape):
        raise ValueError(
            f"{func}: expected {name} to have shape (*S, {', '.join(map(str, mu.shape))}) "
            f"(sample axes, then mu's shape), got {tuple(x.shape)}."
        )
    return x.ndim - mu.ndim


def _to_columns(x, n):
    """(*S, ..., Z) -> (..., Z, prod S): samples as right-hand-side columns."""
    lead = x.shape[n:-1]
    x = x.reshape((-1,) + tuple(x.shape[n:]))  # (prod S, ..., Z)
    return get_xp(x).moveaxis(x, 0, -1).reshape(lead + (x.shape[-1], x.shape[0]))


def _from_columns(x, shape):
    """(..., Z, prod S) -> (*S, ..., Z), the inverse of ``_to_columns``."""
    xp = get_xp(x)
    x = xp.moveaxis(x, -1, 0)  # (prod S, ..., Z)
    return xp.ascontiguousarray(x).reshape(shape)


def _outer_sum(a, b, n):
    """sum over the n sample axes of a_i b_j: (*S, ..., Z) x2 -> (..., Z, Z), one GEMM."""
    A = _to_columns(a, n)  # (..., Z, prod S)
    Bt = get_xp(a).swapaxes(_to_columns(b, n), -1, -2)  # (..., prod S, Z)
    return A @ Bt


# --- reparameterized sample ---------------------------------------------------------------


class FullCovSampleCache(NamedTuple):
    """eps : (*S, ..., Z); L : (..., Z, Z); chol : CholeskyCache; n_sample : len(S)."""

    eps: object
    L: object
    chol: object
    n_sample: int


def fullcov_rsample_forward(mu, l_raw, eps):
    """Reparameterized sample of :math:`N(\\mu, L L^\\top)` and its log-density.

    Parameters
    ----------
    mu : ndarray of shape (..., Z)
    l_raw : ndarray of shape (..., T)
        Unconstrained factor entries (module docstring for the layout).
    eps : ndarray of shape (*S, ..., Z)
        Standard-normal noise held fixed by the caller.

    Returns
    -------
    (z, log_q) : tuple
        ``z`` (*S, ..., Z) and ``log_q`` (*S, ...).
    cache : FullCovSampleCache

    Raises
    ------
    ValueError
        Shapes that disagree (l_raw not of length Z (Z + 1) / 2), NaN or Inf.
    TypeError
        Non-float arrays, mixed dtypes or devices.

    Notes
    -----
    .. math::

        z = \\mu + L\\varepsilon, \\qquad
        \\log q(z) = -\\tfrac12\\lVert\\varepsilon\\rVert^2 - \\sum_i \\log L_{ii}
                     - \\tfrac{Z}{2}\\log 2\\pi,

    since :math:`L^{-1}(z-\\mu) = \\varepsilon` and
    :math:`\\tfrac12\\log\\det(LL^\\top) = \\sum_i\\log L_{ii}`.
    """
    func = "fullcov_rsample_forward"
    _, Z = _check_mu_raw(mu, l_raw, func)
    n = _check_samples(eps, "eps", mu, func)
    L, chol = _cholesky(l_raw, Z)  # (..., Z, Z)
    z = mu + (L @ eps[..., None])[..., 0]  # (*S, ..., Z)
    log_q = -0.5 * (eps * eps).sum(axis=-1) - (
        l_raw[..., chol.diag].sum(axis=-1) + Z * _HALF_LOG_2PI
    )  # (*S, ...)
    return (z, log_q), FullCovSampleCache(eps, L, chol, n)


def fullcov_rsample_backward(dout, cache):
    """Gradients through the sample and log q with the noise held fixed.

    Parameters
    ----------
    dout : tuple (dz, dlog_q)
        ``dz`` (*S, ..., Z) and ``dlog_q`` (*S, ...); either may be None (zero).
    cache : FullCovSampleCache

    Returns
    -------
    dmu : ndarray of shape (..., Z)
    dl_raw : ndarray of shape (..., T)

    Notes
    -----
    :math:`d\\mu = \\sum_S dz`, :math:`dL = \\sum_S dz\\,\\varepsilon^\\top` (lower part, one
    batched GEMM over the samples), then through the factor
    (:func:`fullcov_cholesky_backward`). At fixed noise log q depends on the parameters only
    through :math:`-\\sum_i \\log L_{ii} = -\\sum_i r_{k_i}`, so
    :math:`dr_{k_i} \\mathrel{-}= \\sum_S dlog\\_q`. STL and DReG pass ``dlog_q=None`` and
    add :func:`fullcov_rsample_dlogq_dz` into dz instead.
    """
    func = "fullcov_rsample_backward"
    check_cache(cache, FullCovSampleCache, func)
    dz, dlog_q = check_pair(dout, "dout", "(dz, dlog_q)", func)
    eps, L, chol, n = cache
    xp = get_xp(L)
    if dz is None:
        dmu = xp.zeros(L.shape[:-1], dtype=L.dtype)
        dl_raw = xp.zeros(L.shape[:-2] + (chol.rows.shape[0],), dtype=L.dtype)
    else:
        _check_grad(dz, "dz", eps.shape, func)
        dmu = dz.sum(axis=tuple(range(n))) if n else dz.copy()  # (..., Z)
        dl_raw = _cholesky_backward(_outer_sum(dz, eps, n), chol)  # (..., T)
    if dlog_q is not None:
        _check_grad(dlog_q, "dlog_q", eps.shape[:-1], func)
        s = dlog_q.sum(axis=tuple(range(n))) if n else dlog_q  # (...)
        dl_raw[..., chol.diag] -= s[..., None]
    return dmu, dl_raw


def fullcov_rsample_dlogq_dz(cache):
    """:math:`\\partial\\log q(z)/\\partial z` at the sample with mu and L held fixed.

    Returns
    -------
    ndarray of shape (*S, ..., Z)
        :math:`-(LL^\\top)^{-1}(z-\\mu) = -L^{-\\top}\\varepsilon`, one batched solve with the
        samples as right-hand sides.
    """
    check_cache(cache, FullCovSampleCache, "fullcov_rsample_dlogq_dz")
    eps, L, _, n = cache
    xp = get_xp(L)
    g = xp.linalg.solve(xp.swapaxes(L, -1, -2), _to_columns(eps, n))  # (..., Z, prod S)
    return -_from_columns(g, eps.shape)


# --- density at a given value -------------------------------------------------------------


class FullCovLogProbCache(NamedTuple):
    """v = L^{-1}(z - mu), w = L^{-T} v : (*S, ..., Z); chol : CholeskyCache; n_sample."""

    v: object
    w: object
    chol: object
    n_sample: int


def fullcov_log_prob_forward(z, mu, l_raw):
    """:math:`\\log N(z; \\mu, LL^\\top)` at given points.

    Parameters
    ----------
    z : ndarray of shape (*S, ..., Z)
    mu : ndarray of shape (..., Z)
    l_raw : ndarray of shape (..., T)

    Returns
    -------
    log_q : ndarray of shape (*S, ...)
    cache : FullCovLogProbCache

    Notes
    -----
    :math:`v = L^{-1}(z-\\mu)`,
    :math:`\\log q = -\\tfrac12\\lVert v\\rVert^2 - \\sum_i\\log L_{ii} - \\tfrac Z2\\log 2\\pi`.
    """
    func = "fullcov_log_prob_forward"
    xp, Z = _check_mu_raw(mu, l_raw, func)
    n = _check_samples(z, "z", mu, func)
    L, chol = _cholesky(l_raw, Z)
    r = _to_columns(z - mu, n)  # (..., Z, prod S)
    v = xp.linalg.solve(L, r)  # (..., Z, prod S)
    w = xp.linalg.solve(xp.swapaxes(L, -1, -2), v)
    v, w = _from_columns(v, z.shape), _from_columns(w, z.shape)  # (*S, ..., Z)
    log_q = -0.5 * (v * v).sum(axis=-1) - (
        l_raw[..., chol.diag].sum(axis=-1) + Z * _HALF_LOG_2PI
    )  # (*S, ...)
    return log_q, FullCovLogProbCache(v, w, chol, n)


def fullcov_log_prob_backward(dlog_q, cache):
    """Gradients of :math:`\\sum dlog\\_q\\cdot\\log q(z)`.

    Returns
    -------
    dz : ndarray of shape (*S, ..., Z)
        :math:`-dlog\\_q\\;L^{-\\top}v` (the held-fixed gradient that STL and DReG use).
    dmu : ndarray of shape (..., Z)
        :math:`\\sum_S dlog\\_q\\;L^{-\\top}v`.
    dl_raw : ndarray of shape (..., T)

    Notes
    -----
    With :math:`v = L^{-1}r`: :math:`dv = -L^{-1}\\,dL\\,v`, so
    :math:`d(-\\tfrac12 v^\\top v) = v^\\top L^{-1}dL\\,v = \\mathrm{tr}(L^{-\\top}v v^\\top
    dL^\\top)` and :math:`\\partial/\\partial L = L^{-\\top}v\\,v^\\top = w v^\\top` (lower part);
    :math:`\\partial/\\partial r = -w`. The log-determinant adds :math:`-1` per diagonal raw
    entry.
    """
    func = "fullcov_log_prob_backward"
    check_cache(cache, FullCovLogProbCache, func)
    v, w, chol, n = cache
    _check_grad(dlog_q, "dlog_q", v.shape[:-1], func)
    aw = dlog_q[..., None] * w  # (*S, ..., Z)
    dz = -aw
    dmu = aw.sum(axis=tuple(range(n))) if n else aw.copy()
    dl_raw = _cholesky_backward(_outer_sum(aw, v, n), chol)  # (..., T)
    s = dlog_q.sum(axis=tuple(range(n))) if n else dlog_q
    dl_raw[..., chol.diag] -= s[..., None]
    return dz, dmu, dl_raw
