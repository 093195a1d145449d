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
    ``encoder_over_decoder``: encoder / decoder weight ratio, finite everywhere (at most
    2^100); it rescales the decoder's backpropagated dz into the encoder's without a second
    pass. ``dreg_over_decoder``: encoder_dreg / decoder likewise. Only PIWAE has ratios above
    1; where one exceeds ``RESCALE_LIMIT`` the rescale cannot be trusted, and
    :func:`split_bound_weights` says how to take those samples another way.
    """

    decoder: object
    encoder: object
    encoder_dreg: object
    encoder_over_decoder: object
    dreg_over_decoder: object


# The encoder-over-decoder rescale (BoundWeights) multiplies the decoder's sample gradient,
# taken with the decoder's weight, by the ratio. A PIWAE group whose samples sit far below the
# rest of their column has decoder weights exp(-gap) times its encoder weights: past about 41
# nats in a float32 step they are flushed to 0 (models.iwae._TINY), past 88 (float32) or 709
# (float64) nats the ratio would overflow, and 0 * ratio loses the group's whole encoder
# gradient. Samples whose ratio exceeds RESCALE_LIMIT take the direct way instead
# (split_bound_weights); below it the decoder's weight is at least 2^-30 of the encoder's.
RESCALE_LIMIT = 2.0**30
_LOG_RATIO_CAP = 100 * math.log(2.0)  # ratios are capped at 2^100: finite in float32 too


def split_bound_weights(weights, estimator):
    """How to backpropagate ``weights`` when some encoder-over-decoder ratios are too large.

    Parameters
    ----------
    weights : BoundWeights
    estimator : {"iwae", "stl", "dreg"}
        Which encoder weights and ratio the backward uses (DReG's, else the plain ones).

    Returns
    -------
    None when every ratio is at most ``RESCALE_LIMIT`` (the single backward with the rescale
    is exact to rounding), else ``(main, direct, direct_generative)``, three BoundWeights whose
    backward passes add up to the gradient: ``main`` keeps every decoder weight and drops the
    encoder's weights and ratios of the samples past the limit; ``direct`` takes those samples
    alone, with the encoder's weight on the generative terms too (ratio 1), so their sample
    gradients reach the posterior without the rescale; ``direct_generative`` is ``direct``
    without its encoder part, whose generative gradients ``direct`` added and which must be
    taken back (gradient = main + direct - direct_generative).
    """
    ratio = weights.dreg_over_decoder if estimator == "dreg" else weights.encoder_over_decoder
    xp = get_xp(ratio)
    bad = ~(ratio <= ratio.dtype.type(RESCALE_LIMIT))  # NaN counts as past the limit
    if not bool(bad.any()):
        return None
    zero = ratio.dtype.type(0)
    enc = weights.encoder_dreg if estimator == "dreg" else weights.encoder
    ones = xp.where(bad, ratio.dtype.type(1), zero)
    zeros = xp.zeros_like(ratio)
    main = BoundWeights(
        weights.decoder,
        xp.where(bad, zero, weights.encoder),
        xp.where(bad, zero, weights.encoder_dreg),
        xp.where(bad, zero, weights.encoder_over_decoder),
        xp.where(bad, zero, weights.dreg_over_decoder),
    )
    on_generative = xp.where(bad, enc, zero)
    direct = BoundWeights(
        on_generative,
        xp.where(bad, weights.encoder, zero),
        xp.where(bad, weights.encoder_dreg, zero),
        ones,
        ones,
    )
    direct_generative = BoundWeights(on_generative, zeros, zeros, zeros, zeros)
    return main, direct, direct_generative


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
            gap = xp.minimum(lse_all[None] - lse_grp, dt(_LOG_RATIO_CAP))  # no overflow
            ratio = xp.where(xp.isfinite(lse_grp), xp.exp(gap), dt(0))
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
