"""Importance-weighted bounds over K samples per data point, and their weights.

Shapes: S samples per data point (S = K, or M groups of K), B data points.
log w (S, B): log p(x, z_s) - log q(z_s | x).

Objectives (Burda et al. 2016; Rainforth et al. 2018, "Tighter variational bounds
are not necessarily better"), each a mean over B:

- ``iwae``:  L_K = log (1/K) sum_k w_k
- ``miwae``: (1/M) sum_m log (1/K) sum_k w_mk     (M groups of K)
- ``ciwae``: beta * ELBO + (1 - beta) * L_K        (same K samples)
- ``piwae``: L_{MK} for the decoder, MIWAE(M, K) for the encoder

For every objective the gradient with respect to log w_s is a weight a_s >= 0 per
sample (normalized importance weights, possibly mixed with uniform ones). DReG also
needs b_s: the same weights with w~ replaced by w~^2 (Tucker et al. 2019, eq. 7).
"""

import contextlib
import math
from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_cache, check_param, get_xp
from ..backend import get_backend


def _quiet(xp):
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()


class ImportanceWeightsCache(NamedTuple):
    """``weights`` (K, B): normalized importance weights w~ (columns of all -inf are 0)."""

    weights: object


def importance_weights_forward(log_w, backend=None):
    """Log-mean-exp over K and the normalized weights, per column.

    Parameters
    ----------
    log_w : ndarray of shape (K, B)
        Log importance weights; -inf entries are allowed (zero weight).
    backend : str, optional
        Kernel backend (``kernels.importance_weights``); by default from the array type.

    Returns
    -------
    bound : ndarray of shape (B,)
        :math:`\\log \\tfrac1K \\sum_k e^{\\log w_k}`; -inf for an all -inf column.
    cache : ImportanceWeightsCache
        w~ = softmax over K; all zeros for an all -inf column (never NaN).

    Raises
    ------
    TypeError
        Not an array, or a dtype other than float32/float64.
    ValueError
        log_w not 2-D, or K == 0 (checked before the kernel, which trusts its input).

    Notes
    -----
    A strided (non-C-contiguous) log_w is copied once into C order, explicitly: the
    kernel reads columns from raw memory.
    """
    f = "importance_weights_forward"
    _check_log_w(log_w, f)
    be = get_backend(log_w, backend=backend)
    if log_w.shape[1] == 0:  # no columns: nothing to reduce (the kernel needs B >= 1)
        xp = be.xp
        return xp.empty(0, log_w.dtype), ImportanceWeightsCache(xp.empty_like(log_w))
    bound, weights = be.kernel("importance_weights")(be.xp.ascontiguousarray(log_w))
    return bound, ImportanceWeightsCache(weights)


def importance_weights_backward(dbound, cache):
    """:math:`\\partial/\\partial \\log w_k = dbound \\cdot \\tilde w_k`; (K, B).

    ``dbound`` (B,) has the dtype of the forward's log_w.
    """
    f = "importance_weights_backward"
    w = check_cache(cache, ImportanceWeightsCache, f).weights
    check_array(
        dbound,
        "dbound",
        f,
        shape=(w.shape[1],),
        dtype=w.dtype,
        finite=False,
        xp=get_xp(w),
        ref="log_w's",
    )
    return cache.weights * dbound[None, :]


OBJECTIVES = ("iwae", "miwae", "ciwae", "piwae")


class BoundWeights(NamedTuple):
    """Per-sample gradient weights of the batch-mean bound, all of shape (S, B).

    ``decoder``: d bound / d log w_s for the generative network.
    ``encoder``: the same for the inference network (differs for PIWAE).
    ``encoder_dreg``: the DReG weights (w~ replaced by w~^2).
    ``encoder_over_decoder``: encoder / decoder weight ratio, finite everywhere; it
    rescales the decoder's backpropagated dz into the encoder's without a second pass.
    ``dreg_over_decoder``: encoder_dreg / decoder likewise.
    """

    decoder: object
    encoder: object
    encoder_dreg: object
    encoder_over_decoder: object
    dreg_over_decoder: object


def _check_log_w(log_w, f):
    check_array(log_w, "log_w", f, ndim=2, finite=False)
    if log_w.shape[0] == 0:
        raise ValueError(
            f"{f}: expected log_w to have K >= 1 rows (samples), got shape "
            f"{tuple(log_w.shape)}. Pass log_w of shape (K, B)."
        )


def _grouped(log_w, groups):
    S, B = log_w.shape
    return log_w.reshape(groups, S // groups, B)


def bound_forward(log_w, objective="iwae", groups=1, beta=0.5):
    """The per-data-point bound and the gradient weights of its batch mean.

    Parameters
    ----------
    log_w : ndarray of shape (S, B)
    objective : {"iwae", "miwae", "ciwae", "piwae"}
    groups : int
        M for MIWAE and PIWAE (S = M K); ignored otherwise.
    beta : float
        CIWAE's weight on the ELBO.

    Returns
    -------
    bound : ndarray of shape (B,)
        The value of the objective per data point (PIWAE reports its decoder target L_S).
    weights : BoundWeights
        Weights for the gradient of ``bound.mean()``.

    Raises
    ------
    TypeError, ValueError
        log_w not a float (S, B) array with S >= 1 (InvalidParameterError, both at once,
        for objective, groups and beta out of range, or S not a multiple of groups).
    """
    f = "bound_forward"
    _check_log_w(log_w, f)
    objective = check_param(objective, "objective", f, kind="choice", choices=OBJECTIVES)
    if objective in ("miwae", "piwae"):
        groups = check_param(groups, "groups", f, kind="int", low=1, low_inclusive=True)
        if log_w.shape[0] % groups != 0:
            raise ValueError(
                f"{f}: expected log_w.shape[0] to be a multiple M * K of groups ({groups}), "
                f"got log_w of shape {tuple(log_w.shape)}."
            )
    if objective == "ciwae":
        beta = check_param(beta, "beta", f, low=0, low_inclusive=True, high=1)
    xp = get_xp(log_w)
    S, B = log_w.shape
    dt = log_w.dtype.type
    one = xp.ones_like(log_w)
    if objective == "iwae":
        bound, c = importance_weights_forward(log_w)
        w = c.weights / B
        return bound, BoundWeights(w, w, c.weights * w, one, c.weights)
    if objective in ("miwae", "piwae"):
        K = S // groups
        g = _grouped(log_w, groups).transpose(1, 0, 2).reshape(K, groups * B)
        gbound, gc = importance_weights_forward(g)  # groups folded into columns
        wg = gc.weights.reshape(K, groups, B).transpose(1, 0, 2).reshape(S, B)
        gbound = gbound.reshape(groups, B)
        enc = wg / (groups * B)
        enc_dreg = wg * enc
        if objective == "miwae":
            return gbound.mean(axis=0), BoundWeights(enc, enc, enc_dreg, one, wg)
        bound, c = importance_weights_forward(log_w)
        dec = c.weights / B
        # enc / dec = exp(LSE_all - LSE_group) / M per group (0 for an all -inf group)
        lse_all = bound + dt(math.log(S))  # (B,)
        lse_grp = gbound + dt(math.log(K))  # (M, B)
        with _quiet(xp):
            ratio = xp.where(xp.isfinite(lse_grp), xp.exp(lse_all[None] - lse_grp), dt(0))
        ratio = xp.repeat(ratio[:, None, :], K, axis=1).reshape(S, B) / dt(groups)
        return bound, BoundWeights(dec, enc, enc_dreg, ratio, ratio * wg)
    if objective == "ciwae":
        bound, c = importance_weights_forward(log_w)
        elbo = log_w.mean(axis=0)
        uni = dt(beta / S)
        a = uni + dt(1 - beta) * c.weights  # (S, B)
        b = uni + dt(1 - beta) * c.weights * c.weights
        ratio = b / a if beta > 0 else c.weights
        return beta * elbo + (1 - beta) * bound, BoundWeights(a / B, a / B, b / B, one, ratio)
    raise ValueError(
        f"bound_forward: expected objective to be one of {OBJECTIVES}, got {objective!r}."
    )
