"""Per-row negative log-likelihoods of data under the decoder's output distribution.

Reduction: each returns one value per row (the sum over the D data dimensions);
callers average over samples and batch.
"""

import math
from typing import NamedTuple

from .._validation import get_xp
from ..backend import get_backend


class BernoulliNLLCache(NamedTuple):
    """``grad`` (N, D): x - sigmoid(logits), the derivative of the log-likelihood (None when
    forward was asked for no gradient); ``backend``: the backend that computed it."""

    grad: object
    backend: object


def bernoulli_nll_forward(logits, x, *, need_grad=True, overwrite_logits=False, backend=None):
    """:math:`-\\log p(x \\mid l) = \\sum_d \\mathrm{softplus}(l_d) - x_d l_d` per row.

    Parameters
    ----------
    logits : ndarray of shape (N, D)
        N = S B rows: row r is scored against ``x[r % B]`` (S samples per data point,
        sample-major), so x is never tiled.
    x : ndarray of shape (B, D), entries in {0, 1}
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

    Notes
    -----
    One fused kernel (``kernels.bernoulli_loglik``) computes softplus(l) = max(l, 0) +
    log1p(exp(-|l|)) and sigmoid(l) from the same exp(-|l|): exact for any finite logit,
    so the NLL of a confidently wrong pixel with logit -1e4 is exactly 1e4, never inf.
    """
    be = get_backend(logits, x, backend=backend)
    xp = be.xp
    logits = xp.ascontiguousarray(logits)
    x = xp.ascontiguousarray(x, dtype=logits.dtype)
    grad = None
    if need_grad:
        grad = logits if overwrite_logits else xp.empty_like(logits)
    loglik, grad = be.kernel("bernoulli_loglik")(logits, x, grad)
    return -loglik, BernoulliNLLCache(grad, be)


def bernoulli_nll_backward(dnll, cache):
    """:math:`\\partial/\\partial l_d = dnll \\cdot (\\sigma(l_d) - x_d)`; returns dlogits (N, D).

    Overwrites the cached gradient in place (a cache serves one backward).
    """
    grad, be = cache
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
