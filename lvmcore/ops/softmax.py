"""Log-sum-exp, softmax and log-softmax along one axis, safe at the edges.

A slice whose entries are all -inf has log-sum-exp -inf, softmax weights 0 and
gradient 0 (never NaN): the maximum used for the shift is replaced by 0 there, so
exp(-inf - 0) = 0 and the log of the zero sum is -inf without a warning.
"""

import contextlib
from typing import NamedTuple

import numpy as np

from .._validation import get_xp


def _quiet(xp):
    """Silence NumPy's divide-by-zero warning for log(0) = -inf, which is intended here."""
    return np.errstate(divide="ignore") if xp is np else contextlib.nullcontext()


def _shift(x, axis, xp):
    m = x.max(axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, x.dtype.type(0))


def logsumexp(x, axis=-1):
    """:math:`\\log \\sum_i e^{x_i}` along ``axis`` (kept out of the result)."""
    xp = get_xp(x)
    m = _shift(x, axis, xp)
    with _quiet(xp):
        return (xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


def softmax(x, axis=-1):
    """Normalized weights :math:`e^{x_i} / \\sum_j e^{x_j}`; all -inf slices give zeros."""
    xp = get_xp(x)
    e = xp.exp(x - _shift(x, axis, xp))
    s = e.sum(axis=axis, keepdims=True)
    return e / xp.where(s > 0, s, x.dtype.type(1))


class LogSumExpCache(NamedTuple):
    """``weights``: softmax of x along ``axis`` (same shape as x); ``axis``: the reduced axis."""

    weights: object
    axis: int


def logsumexp_forward(x, axis=-1):
    """Log-sum-exp along ``axis`` with the weights backward needs.

    Returns
    -------
    out : ndarray
        ``x`` with ``axis`` reduced.
    cache : LogSumExpCache
    """
    xp = get_xp(x)
    m = _shift(x, axis, xp)
    e = xp.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    with _quiet(xp):
        out = (xp.log(s) + m).squeeze(axis)
    weights = e / xp.where(s > 0, s, x.dtype.type(1))
    return out, LogSumExpCache(weights, axis)


def logsumexp_backward(dout, cache):
    """:math:`\\partial/\\partial x_i = dout \\cdot \\mathrm{softmax}(x)_i` (zero for all -inf slices)."""
    return cache.weights * get_xp(dout).expand_dims(dout, cache.axis)


def softmax_forward(x, axis=-1):
    """y = softmax(x) along ``axis``; the cache is (y, axis)."""
    y = softmax(x, axis)
    return y, (y, axis)


def softmax_backward(dy, cache):
    """:math:`dx = y \\odot (dy - \\sum dy \\odot y)`."""
    y, axis = cache
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax_forward(x, axis=-1):
    """y = x - logsumexp(x) along ``axis``; the cache is (softmax(x), axis).

    Entries of -inf stay -inf; an all -inf slice gives -inf (not NaN).
    """
    xp = get_xp(x)
    lse, cache = logsumexp_forward(x, axis)
    lse_k = xp.expand_dims(lse, axis)
    finite = xp.isfinite(lse_k)
    y = xp.where(finite, x - xp.where(finite, lse_k, x.dtype.type(0)), -xp.inf).astype(x.dtype)
    return y, (cache.weights, axis)


def log_softmax_backward(dy, cache):
    """:math:`dx = dy - \\mathrm{softmax}(x) \\sum dy`."""
    p, axis = cache
    return dy - p * dy.sum(axis=axis, keepdims=True)
