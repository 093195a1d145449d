"""Affine layer y = x W + b."""

from typing import NamedTuple


class LinearCache(NamedTuple):
    """What linear_backward needs: ``x`` (B, I) and ``W`` (I, O)."""

    x: object
    W: object


def linear_forward(x, W, b):
    """Affine map of a batch of rows.

    Parameters
    ----------
    x : ndarray of shape (B, I)
    W : ndarray of shape (I, O)
    b : ndarray of shape (O,)

    Returns
    -------
    y : ndarray of shape (B, O)
        :math:`y = x W + b`.
    cache : LinearCache
    """
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
    x, W = cache
    dx = dy @ W.T  # (B, I)
    dW = x.T @ dy  # (I, O)
    db = dy.sum(axis=0)  # (O,)
    return dx, dW, db
