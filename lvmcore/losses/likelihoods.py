"""Per-row negative log-likelihoods of data under the decoder's output distribution.

Reduction: each returns one value per row (the sum over the D data dimensions);
callers average over samples and batch.
"""
import math
from typing import NamedTuple

from .._validation import get_xp
from ..ops.activations import sigmoid


class BernoulliNLLCache(NamedTuple):
    """``logits`` (N, D) and ``x`` (N, D) from the forward pass."""

    logits: object
    x: object


def bernoulli_nll_forward(logits, x):
    """:math:`-\\log p(x \\mid l) = \\sum_d \\mathrm{softplus}(l_d) - x_d l_d` per row.

    Parameters
    ----------
    logits : ndarray of shape (N, D)
    x : ndarray of shape (N, D) or (D,)... broadcastable to logits, entries in {0, 1}

    Returns
    -------
    nll : ndarray of shape (N,)
    cache : BernoulliNLLCache

    Notes
    -----
    softplus(l) = max(l, 0) + log1p(exp(-|l|)) is exact for any logit, so the NLL of a
    confidently wrong pixel with logit -1e4 is exactly 1e4, never inf.
    """
    xp = get_xp(logits)
    nll = (xp.logaddexp(logits.dtype.type(0), logits) - x * logits).sum(axis=-1)  # (N,)
    return nll, BernoulliNLLCache(logits, x)


def bernoulli_nll_backward(dnll, cache):
    """:math:`\\partial/\\partial l_d = dnll \\cdot (\\sigma(l_d) - x_d)`; returns dlogits (N, D)."""
    logits, x = cache
    return dnll[..., None] * (sigmoid(logits) - x)


class GaussianNLLCache(NamedTuple):
    """``diff`` = x - mean (N, D) and ``inv_var`` = exp(-logvar) broadcastable to it."""

    diff: object
    inv_var: object


def gaussian_nll_forward(mean, logvar, x):
    """:math:`\\sum_d \\tfrac12[\\log 2\\pi + v_d + (x_d - m_d)^2 e^{-v_d}]` per row.

    Parameters
    ----------
    mean : ndarray of shape (N, D)
    logvar : ndarray of shape (D,) or (N, D)
        Log-variance per dimension (a learned vector or a fixed constant array).
    x : ndarray of shape (N, D)

    Returns
    -------
    nll : ndarray of shape (N,)
    cache : GaussianNLLCache
    """
    xp = get_xp(mean)
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
    diff, inv_var = cache
    d = dnll[..., None]
    dmean = -d * diff * inv_var
    dlogvar = d * (0.5 - 0.5 * diff * diff * inv_var)
    if inv_var.ndim < dlogvar.ndim:
        dlogvar = dlogvar.reshape(-1, dlogvar.shape[-1]).sum(axis=0)
    return dmean, dlogvar
