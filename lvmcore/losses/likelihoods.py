"""Per-row negative log-likelihoods of data under the decoder's output distribution.

Reduction: each returns one value per row (the sum over the D data dimensions);
callers average over samples and batch.

Validation: every argument is checked before any arithmetic or kernel call (array
library, float32/float64 dtype, shapes against each other); integer, boolean, complex,
float16 and object arrays are a TypeError (integer input is never promoted: cast it
yourself). Values are not scanned: NaN propagates to the rows it touches.
"""

import math
from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_cache, check_same_device, check_same_dtype, get_xp
from ..backend import get_backend


class BernoulliNLLCache(NamedTuple):
    """``grad`` (N, D): x - sigmoid(logits), the derivative of the log-likelihood (None when
    forward was asked for no gradient); ``backend``: the backend that computed it."""

    grad: object
    backend: object


def bernoulli_nll_forward(
    logits, x, *, bias=None, need_grad=True, overwrite_logits=False, backend=None
):
    """:math:`-\\log p(x \\mid l) = \\sum_d \\mathrm{softplus}(l_d) - x_d l_d` per row.

    Parameters
    ----------
    logits : ndarray of shape (N, D)
        N = S B rows: row r is scored against ``x[r % B]`` (S samples per data point,
        sample-major), so x is never tiled.
    x : ndarray of shape (B, D), entries in {0, 1}, the dtype of logits
        B >= 1, and N must be a multiple of B.
    bias : ndarray of shape (D,), optional
        The dtype of logits: l = logits + bias (added in that dtype, inside the kernel's one
        pass), for a decoder whose last layer left its bias out (``MLP.forward_buffered(...,
        output_bias=False)``). The cached gradient is then the gradient of l, i.e. of the
        logits and, summed over rows, of the bias.
    need_grad : bool
        Also compute what backward needs (in the same pass).
    overwrite_logits : bool
        Store that gradient in ``logits``' memory instead of a new (N, D) array; for a
        caller whose logits are a temporary.
    backend : str, optional
        Kernel backend; by default chosen from the array type (see lvmcore.backend).

    Returns
    -------
    nll : ndarray of shape (N,)
    cache : BernoulliNLLCache

    Raises
    ------
    TypeError
        A non-array, a dtype other than float32/float64, x of another dtype or array
        library than logits.
    ValueError
        logits or x not 2-D, x.shape[1] != logits.shape[1], B == 0, or N not a multiple of
        B. These are checked before the kernel runs: it reads x[r % B] for every row r of
        logits and trusts the shapes.

    Notes
    -----
    Strided (non-C-contiguous) logits or x are copied once into C order, explicitly: the
    fused kernel reads each row as one block of memory. With ``overwrite_logits`` the
    gradient then goes into that copy (it is in the cache either way).

    One fused kernel (``kernels.bernoulli_loglik``) computes softplus(l) = max(l, 0) +
    log1p(exp(-|l|)) and sigmoid(l) from the same exp(-|l|): exact for any finite logit,
    so the NLL of a confidently wrong pixel with logit -1e4 is exactly 1e4, never inf.
    """
    f = "bernoulli_nll_forward"
    check_array(logits, "logits", f, ndim=2, finite=False)
    xp = get_xp(logits)
    check_array(x, "x", f, ndim=2, dtype=logits.dtype, finite=False, xp=xp, ref="logits'")
    N, D = logits.shape
    B = x.shape[0]
    if x.shape[1] != D:
        raise ValueError(
            f"{f}: expected x.shape[1] == logits.shape[1] ({D}), got x of shape "
            f"{tuple(x.shape)} and logits of shape {tuple(logits.shape)}."
        )
    if B == 0 or N % B != 0:
        raise ValueError(
            f"{f}: expected logits.shape[0] to be a multiple S * B of x.shape[0] ({B}), got "
            f"logits of shape {tuple(logits.shape)}. Order the logits sample-major, (S, B, D) "
            f"reshaped to (S * B, D), and pass at least one row of x."
        )
    if bias is not None:
        check_array(
            bias, "bias", f, shape=(D,), dtype=logits.dtype, finite=False, xp=xp, ref="logits'"
        )
    be = get_backend(logits, x, backend=backend)
    # the fused kernel reads rows as blocks of memory: strided views are copied, explicitly
    logits = xp.ascontiguousarray(logits)
    x = xp.ascontiguousarray(x)
    grad = None
    if need_grad:
        grad = logits if overwrite_logits else xp.empty_like(logits)
    if bias is None:
        loglik, grad = be.kernel("bernoulli_loglik")(logits, x, grad)
    else:
        loglik, grad = be.kernel("bernoulli_loglik")(logits, x, grad, xp.ascontiguousarray(bias))
    return -loglik, BernoulliNLLCache(grad, be)


def bernoulli_nll_backward(dnll, cache):
    """:math:`\\partial/\\partial l_d = dnll \\cdot (\\sigma(l_d) - x_d)`; returns dlogits (N, D).

    ``dnll`` (N,) is a float32 or float64 array (cast to the forward's dtype). Overwrites the
    cached gradient in place (a cache serves one backward).
    """
    f = "bernoulli_nll_backward"
    grad, be = check_cache(cache, BernoulliNLLCache, f)
    if grad is None:
        raise ValueError(
            f"{f}: expected a cache holding the gradient, got one made with need_grad=False. "
            f"Call bernoulli_nll_forward(..., need_grad=True) before a backward."
        )
    check_array(dnll, "dnll", f, shape=(grad.shape[0],), finite=False, xp=be.xp, ref="logits'")
    dloglik = be.xp.ascontiguousarray(-dnll, dtype=grad.dtype)
    return be.kernel("bernoulli_loglik_backward")(dloglik, grad, grad)


class GaussianNLLCache(NamedTuple):
    """``diff`` = x - mean (N, D) and ``inv_var`` = exp(-logvar) broadcastable to it."""

    diff: object
    inv_var: object


def gaussian_nll_forward(mean, logvar, x):
    """:math:`\\sum_d \\tfrac12[\\log 2\\pi + v_d + (x_d - m_d)^2 e^{-v_d}]` per row.

    Parameters
    ----------
    mean : ndarray of shape (N, D), float32 or float64
    logvar : ndarray of shape (D,) or (N, D), the dtype of mean
        Log-variance per dimension (a learned vector or a fixed constant array).
    x : ndarray of shape (N, D), the dtype of mean

    Returns
    -------
    nll : ndarray of shape (N,)
    cache : GaussianNLLCache

    Raises
    ------
    TypeError
        A non-array or a dtype other than float32/float64 (integer data are not promoted:
        cast them with x.astype(numpy.float32)), or arguments of different dtypes or array
        libraries.
    ValueError
        Shapes that do not match as above.
    """
    f = "gaussian_nll_forward"
    check_array(mean, "mean", f, ndim=2, finite=False)
    xp = get_xp(mean)
    N, D = mean.shape
    kw = dict(finite=False, dtype=mean.dtype, xp=xp, ref="mean's")
    check_array(logvar, "logvar", f, ndim=(1, 2), **kw)
    if tuple(logvar.shape) not in ((D,), (N, D)):
        raise ValueError(
            f"{f}: expected logvar to have shape ({D},) or ({N}, {D}) (that of mean's rows "
            f"or of mean), got {tuple(logvar.shape)}."
        )
    check_array(x, "x", f, shape=(N, D), shape_of="mean", **kw)
    diff = x - mean  # (N, D)
    inv_var = xp.exp(-logvar)
    half_log_2pi = mean.dtype.type(0.5 * math.log(2 * math.pi))
    nll = (half_log_2pi + 0.5 * logvar + 0.5 * diff * diff * inv_var).sum(axis=-1)  # (N,)
    return nll, GaussianNLLCache(diff, inv_var)


def gaussian_nll_backward(dnll, cache):
    """Gradients with respect to mean (N, D) and logvar (shape as given in forward).

    Notes
    -----
    :math:`\\partial/\\partial m_d = -(x_d - m_d) e^{-v_d}`,
    :math:`\\partial/\\partial v_d = \\tfrac12 - \\tfrac12 (x_d - m_d)^2 e^{-v_d}`; a logvar
    vector shared by all rows gets the sum over rows.
    """
    f = "gaussian_nll_backward"
    diff, inv_var = check_cache(cache, GaussianNLLCache, f)
    check_array(
        dnll,
        "dnll",
        f,
        shape=(diff.shape[0],),
        dtype=diff.dtype,
        finite=False,
        xp=get_xp(diff),
        ref="mean's",
    )
    d = dnll[..., None]
    dmean = -d * diff * inv_var
    dlogvar = d * (0.5 - 0.5 * diff * diff * inv_var)
    if inv_var.ndim < dlogvar.ndim:
        dlogvar = dlogvar.reshape(-1, dlogvar.shape[-1]).sum(axis=0)
    return dmean, dlogvar


class LogisticNLLCache(NamedTuple):
    """``t`` = (x - mean) exp(-log_scale) (..., D); ``inv_scale`` = exp(-log_scale) as
    given; ``mean_shape``, ``scale_shape``, ``x_shape``: the shapes the gradients are summed
    back to."""

    t: object
    inv_scale: object
    mean_shape: tuple
    scale_shape: tuple
    x_shape: tuple


def _sum_to(g, shape):
    """Sum ``g`` over the axes broadcasting added to an array of ``shape``."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def logistic_nll_forward(mean, log_scale, x):
    """:math:`\\sum_d [t_d + \\log s_d + 2\\,\\mathrm{softplus}(-t_d)]`, :math:`t = (x - m)/s`,
    per row: the negative log-density of a factorized logistic distribution.

    Parameters
    ----------
    mean : ndarray of shape (..., D)
    log_scale : ndarray of shape (D,) or mean's shape
        :math:`\\log s`, a learned vector or per-row output.
    x : ndarray of shape (..., D)
        Real-valued data (e.g. dequantized levels (x + u) / L); broadcasts against mean.

    Returns
    -------
    nll : ndarray of shape (...)
    cache : LogisticNLLCache

    Raises
    ------
    ValueError
        Shapes that do not broadcast or NaN/Inf.
    TypeError
        Non-float arrays, mixed dtypes or devices.

    Notes
    -----
    The logistic density :math:`e^{-t}/(s(1+e^{-t})^2)` is written with
    :math:`\\log(1+e^{-t}) = \\mathrm{softplus}(-t)`, exact for any finite t. A continuous
    decoder for dequantized discrete data with heavier tails than the Gaussian (the choice
    of PixelCNN++ and Flow++ for pixel intensities).
    """
    func = "logistic_nll_forward"
    for name, a in (("mean", mean), ("log_scale", log_scale), ("x", x)):
        check_array(a, name, func)
    check_same_device((mean, log_scale, x), ("mean", "log_scale", "x"), func)
    check_same_dtype((mean, log_scale, x), ("mean", "log_scale", "x"), func)
    try:
        shape = np.broadcast_shapes(tuple(mean.shape), tuple(log_scale.shape), tuple(x.shape))
    except ValueError:
        shape = None
    if shape is None or log_scale.ndim > mean.ndim:
        raise ValueError(
            f"{func}: expected mean, log_scale and x to broadcast to one shape (..., D) with "
            f"log_scale of shape (D,) or mean's, got {tuple(mean.shape)}, "
            f"{tuple(log_scale.shape)} and {tuple(x.shape)}."
        )
    xp = get_xp(mean)
    inv_scale = xp.exp(-log_scale)
    t = (x - mean) * inv_scale  # (..., D)
    nll = (t + log_scale + 2 * xp.logaddexp(t.dtype.type(0), -t)).sum(axis=-1)  # (...)
    shapes = (tuple(mean.shape), tuple(log_scale.shape), tuple(x.shape))
    return nll, LogisticNLLCache(t, inv_scale, *shapes)


def logistic_nll_backward(dnll, cache):
    """Gradients with respect to mean, log_scale and x, each of its own shape (summed over the
    axes it was broadcast over).

    Returns
    -------
    dmean, dlog_scale, dx : ndarray

    Notes
    -----
    :math:`\\partial\\,\\mathrm{nll}/\\partial t = 1 - 2\\sigma(-t) = \\tanh(t/2)`, so
    :math:`\\partial/\\partial m = -\\tanh(t/2)/s` and
    :math:`\\partial/\\partial\\log s = 1 - t\\tanh(t/2)`,
    :math:`\\partial/\\partial x = \\tanh(t/2)/s` (what a variational dequantizer needs:
    the density's gradient at the dequantized point).
    """
    f = "logistic_nll_backward"
    t, inv_scale, *_ = check_cache(cache, LogisticNLLCache, f)
    xp = get_xp(t)
    check_array(
        dnll,
        "dnll",
        f,
        shape=t.shape[:-1],
        dtype=t.dtype,
        finite=False,
        xp=xp,
        ref="the broadcast (mean, x)'s",
    )
    d = dnll[..., None]
    th = xp.tanh(0.5 * cache.t)  # (..., D)
    dmean = -d * th * cache.inv_scale  # (..., D)
    dlog_scale = d * (1 - cache.t * th)  # (..., D)
    dx = -dmean
    return (
        _sum_to(dmean, cache.mean_shape),
        _sum_to(dlog_scale, cache.scale_shape),
        _sum_to(dx, cache.x_shape),
    )
