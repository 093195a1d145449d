"""Log-sum-exp, softmax and log-softmax along one axis, safe at the edges.

A slice whose entries are all -inf has log-sum-exp -inf, softmax weights 0 and
gradient 0 (never NaN): the maximum used for the shift is replaced by 0 there, so
exp(-inf - 0) = 0 and the log of the zero sum is -inf without a warning.

A slice holding a NaN gives NaN everywhere in it (log-sum-exp, every weight, every
log-softmax entry): NaN propagates and is never mistaken for a masked slice.

Validation: ``x`` is a float32 or float64 array with at least one entry along ``axis``
(integer, complex, float16 and object arrays are a TypeError; integer input is never
promoted: cast it yourself). A backward checks its upstream gradient against the cache.
"""

import contextlib
from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_axis, check_cache, get_xp


def _quiet(xp):
    """Silence NumPy's divide-by-zero warning for log(0) = -inf, which is intended here."""
    return np.errstate(divide="ignore") if xp is np else contextlib.nullcontext()


def _check_x(x, axis, func):
    """x: a float array with at least one entry along ``axis``; returns axis (>= 0)."""
    check_array(x, "x", func, finite=False)
    if x.ndim == 0:
        raise ValueError(
            f"{func}: expected x to have at least 1 dimension (the axis to reduce), got a "
            f"0-d array. Reshape it with x.reshape(1)."
        )
    axis = check_axis(axis, x, "x", func)
    if x.shape[axis] == 0:
        raise ValueError(
            f"{func}: expected x to have at least one entry along axis {axis}, got x of "
            f"shape {tuple(x.shape)}."
        )
    return axis


def _shift(x, axis, xp):
    m = x.max(axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, x.dtype.type(0))


def _normalize(e, s, dt, xp):
    """e / s where s > 0; an all -inf slice (s == 0) gives zeros, a NaN sum NaN."""
    return e / xp.where(s == 0, dt(1), s)


def _logsumexp(x, axis, xp):
    m = _shift(x, axis, xp)
    e = xp.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    with _quiet(xp):
        lse = xp.log(s) + m
    return lse, e, s


def logsumexp(x, axis=-1):
    """:math:`\\log \\sum_i e^{x_i}` along ``axis`` (kept out of the result)."""
    axis = _check_x(x, axis, "logsumexp")
    xp = get_xp(x)
    return _logsumexp(x, axis, xp)[0].squeeze(axis)


def softmax(x, axis=-1):
    """Normalized weights :math:`e^{x_i} / \\sum_j e^{x_j}`; all -inf slices give zeros."""
    axis = _check_x(x, axis, "softmax")
    return _softmax(x, axis)


def _softmax(x, axis):
    xp = get_xp(x)
    e = xp.exp(x - _shift(x, axis, xp))
    return _normalize(e, e.sum(axis=axis, keepdims=True), x.dtype.type, xp)


class LogSumExpCache(NamedTuple):
    """``weights``: softmax of x along ``axis`` (same shape as x); ``axis``: the reduced axis."""

    weights: object
    axis: int


class SoftmaxCache(NamedTuple):
    """``y``: the softmax output (shape of x); ``axis``: the normalized axis."""

    y: object
    axis: int


class LogSoftmaxCache(NamedTuple):
    """``probs``: softmax of x (shape of x); ``axis``: the normalized axis."""

    probs: object
    axis: int


def _check_dout(dout, like, shape, func, name):
    return check_array(
        dout,
        name,
        func,
        shape=tuple(shape),
        dtype=like.dtype,
        finite=False,
        xp=get_xp(like),
        ref="the forward output's",
    )


def logsumexp_forward(x, axis=-1):
    """Log-sum-exp along ``axis`` with the weights backward needs.

    Returns
    -------
    out : ndarray
        ``x`` with ``axis`` reduced.
    cache : LogSumExpCache
    """
    axis = _check_x(x, axis, "logsumexp_forward")
    xp = get_xp(x)
    lse, e, s = _logsumexp(x, axis, xp)
    return lse.squeeze(axis), LogSumExpCache(_normalize(e, s, x.dtype.type, xp), axis)


def logsumexp_backward(dout, cache):
    """:math:`\\partial/\\partial x_i = dout \\cdot \\mathrm{softmax}(x)_i` (zero for all -inf slices).

    ``dout`` has the shape of the forward output (x without ``axis``).
    """
    f = "logsumexp_backward"
    w, axis = check_cache(cache, LogSumExpCache, f)
    out_shape = w.shape[:axis] + w.shape[axis + 1 :]
    _check_dout(dout, w, out_shape, f, "dout")
    return w * get_xp(dout).expand_dims(dout, axis)


def softmax_forward(x, axis=-1):
    """y = softmax(x) along ``axis``; the cache is SoftmaxCache(y, axis)."""
    axis = _check_x(x, axis, "softmax_forward")
    y = _softmax(x, axis)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dy, cache):
    """:math:`dx = y \\odot (dy - \\sum dy \\odot y)`."""
    y, axis = check_cache(cache, SoftmaxCache, "softmax_backward")
    _check_dout(dy, y, y.shape, "softmax_backward", "dy")
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax_forward(x, axis=-1):
    """y = x - logsumexp(x) along ``axis``; the cache is LogSoftmaxCache(softmax(x), axis).

    Entries of -inf stay -inf; an all -inf slice gives -inf (not NaN); a slice holding a
    NaN gives NaN throughout (not -inf).

    Raises
    ------
    TypeError
        x not a float32 or float64 array: integer input is refused, not promoted (cast it
        with x.astype(numpy.float64)); complex input is refused, never truncated to its
        real part.
    ValueError
        x 0-d or empty along ``axis``; InvalidParameterError for an axis out of range.
    """
    axis = _check_x(x, axis, "log_softmax_forward")
    xp = get_xp(x)
    lse, e, s = _logsumexp(x, axis, xp)
    # only an all -inf (or +inf) slice is masked; NaN passes through x - lse
    keep = xp.isfinite(lse) | xp.isnan(lse)
    y = xp.where(keep, x - xp.where(keep, lse, x.dtype.type(0)), -xp.inf).astype(x.dtype)
    return y, LogSoftmaxCache(_normalize(e, s, x.dtype.type, xp), axis)


def log_softmax_backward(dy, cache):
    """:math:`dx = dy - \\mathrm{softmax}(x) \\sum dy`."""
    p, axis = check_cache(cache, LogSoftmaxCache, "log_softmax_backward")
    _check_dout(dy, p, p.shape, "log_softmax_backward", "dy")
    return dy - p * dy.sum(axis=axis, keepdims=True)
