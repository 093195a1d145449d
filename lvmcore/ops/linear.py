"""Affine layer y = x W + b."""

from typing import NamedTuple

from .._validation import check_array, check_cache, get_xp


class LinearCache(NamedTuple):
    """What linear_backward needs: ``x`` (B, I) and ``W`` (I, O)."""

    x: object
    W: object


def linear_forward(x, W, b):
    """Affine map of a batch of rows.

    Parameters
    ----------
    x : ndarray of shape (B, I)
    W : ndarray of shape (I, O), the dtype and array library of x
    b : ndarray of shape (O,), the dtype and array library of x

    Returns
    -------
    y : ndarray of shape (B, O)
        :math:`y = x W + b`.
    cache : LinearCache

    Raises
    ------
    TypeError
        A non-array, a dtype other than float32/float64, or W, b of another dtype or
        array library than x.
    ValueError
        x not 2-D, or W, b whose shapes do not chain with x (e.g.
        "linear_forward: expected W to have shape (783, *), got (784, 200).").
    """
    f = "linear_forward"
    check_array(x, "x", f, ndim=2, finite=False)
    xp = get_xp(x)
    kw = dict(finite=False, dtype=x.dtype, xp=xp, ref="x's")
    check_array(W, "W", f, ndim=2, shape=(x.shape[1], None), shape_of="x.shape[1]", **kw)
    check_array(b, "b", f, shape=(W.shape[1],), shape_of="W.shape[1]", **kw)
    y = x @ W  # (B, O), BLAS / cuBLAS GEMM
    y += b
    return y, LinearCache(x, W)


def linear_backward(dy, cache):
    """Gradients of the affine map.

    Parameters
    ----------
    dy : ndarray of shape (B, O)
    cache : LinearCache
        ``x`` (B, I) and ``W`` (I, O) from the forward pass.

    Returns
    -------
    dx : ndarray of shape (B, I)
        :math:`dy W^T`.
    dW : ndarray of shape (I, O)
        :math:`x^T dy`.
    db : ndarray of shape (O,)
        :math:`\\sum_B dy`.
    """
    f = "linear_backward"
    x, W = check_cache(cache, LinearCache, f)
    shape = (x.shape[0], W.shape[1])
    check_array(dy, "dy", f, shape=shape, finite=False, dtype=x.dtype, xp=get_xp(x), ref="x's")
    dx = dy @ W.T  # (B, I)
    dW = x.T @ dy  # (I, O)
    db = dy.sum(axis=0)  # (O,)
    return dx, dW, db
