"""The KL term of the ELBO with an optional free-bits floor per latent dimension."""

from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_cache, check_param, get_xp


class KLTermCache(NamedTuple):
    """``active`` (Z,): 1 where the dimension's batch-mean KL is above the floor, else 0;
    ``n``: the number of rows averaged over."""

    active: object
    n: int


def kl_term_forward(kl_per_dim, free_bits=0.0):
    """:math:`\\sum_j \\max(\\lambda, \\tfrac1N \\sum_n \\mathrm{KL}_{nj})`.

    Parameters
    ----------
    kl_per_dim : ndarray of shape (N, Z), float32 or float64, N >= 1
        KL (analytic or sampled) of each row and latent dimension.
    free_bits : float in [0, inf)
        The floor :math:`\\lambda` in nats per dimension (0 disables it).

    Returns
    -------
    term : float
    cache : KLTermCache

    Notes
    -----
    Free bits (Kingma et al. 2016, "Improved variational inference with inverse
    autoregressive flow", eq. 15): a dimension whose minibatch-average KL is below
    :math:`\\lambda` contributes the constant :math:`\\lambda` and so no gradient.
    """
    f = "kl_term_forward"
    check_array(kl_per_dim, "kl_per_dim", f, ndim=2, finite=False)
    if kl_per_dim.shape[0] == 0:
        raise ValueError(
            f"{f}: expected kl_per_dim to have at least one row to average, got shape "
            f"{tuple(kl_per_dim.shape)}."
        )
    free_bits = check_param(free_bits, "free_bits", f, low=0, low_inclusive=True)
    xp = get_xp(kl_per_dim)
    mean_kl = kl_per_dim.mean(axis=0)  # (Z,)
    if free_bits > 0:
        # in float64: a floor beyond float32's range must not become inf (0 * inf = NaN at
        # a KL weight of 0)
        mean64 = mean_kl.astype(np.float64)
        active = (mean64 > free_bits).astype(kl_per_dim.dtype)
        term = xp.maximum(mean64, free_bits).sum()
    else:
        active = xp.ones_like(mean_kl)
        term = mean_kl.sum()
    return float(term), KLTermCache(active, kl_per_dim.shape[0])


def kl_term_backward(dterm, cache):
    """Gradient with respect to kl_per_dim: dterm * active_j / N for every row; (1, Z).

    ``dterm`` is a real number (the term is a scalar).
    """
    f = "kl_term_backward"
    cache = check_cache(cache, KLTermCache, f)
    dterm = check_param(dterm, "dterm", f, low=None)
    return (dterm / cache.n) * cache.active[None, :]
