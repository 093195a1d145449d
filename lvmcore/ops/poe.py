"""Product of diagonal Gaussian experts in closed form (the multimodal VAE's posterior).

Shape letters: M experts (one per modality), B batch, Z latent.

Each present modality m contributes an expert :math:`N(\\mu_m, \\sigma_m^2)` per latent
dimension; the prior expert :math:`N(0, 1)` may be added. The product of Gaussian densities is
(up to a constant) the Gaussian with

.. math::

    T = [\\text{prior}] + \\sum_{m \\text{ present}} e^{-v_m}, \\qquad
    \\mu = \\frac{1}{T}\\sum_{m \\text{ present}} \\mu_m e^{-v_m}, \\qquad
    v = -\\log T,

with :math:`v_m` = logvar_m. It is computed in log space: with :math:`a_m = -v_m` for a present
expert, :math:`a_m = -\\infty` for a missing one and :math:`a_0 = 0` for the prior expert,
:math:`\\log T = \\operatorname{logsumexp}_m a_m` and the weights
:math:`w_m = e^{a_m - \\log T}` (a softmax over experts) give :math:`\\mu = \\sum_m w_m \\mu_m`
(the prior's mean is 0). So a logvar of -200 (precision e^200) neither overflows nor hides the
other experts' contributions, and a missing expert has weight exactly 0, hence gradient
exactly 0.

References
----------
M. Wu, N. Goodman, "Multimodal Generative Models for Scalable Weakly-Supervised Learning",
NeurIPS 2018, sec. 2 (the product of experts with a prior expert, eq. 3).
"""

from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_same_device, check_same_dtype, get_xp

__all__ = ["poe_forward", "poe_backward", "PoECache"]


class PoECache(NamedTuple):
    """What poe_backward needs.

    mu : (M, B, Z) the experts' means; weights : (M, B, Z) each expert's share
    :math:`w_m = e^{-v_m}/T` of the product's precision (0 for a missing expert);
    mu_out : (B, Z) the product's mean.
    """

    mu: object
    weights: object
    mu_out: object


def poe_forward(mu, logvar, mask=None, prior_expert=True):
    """Mean and log-variance of the product of the present Gaussian experts.

    Parameters
    ----------
    mu, logvar : ndarray of shape (M, B, Z), or a sequence of M arrays of shape (B, Z)
        Expert m's mean and log-variance for each row; entries of a missing expert are ignored
        but must be finite (fill them with zeros). A sequence is checked expert by expert (so a
        modality whose encoder gives the wrong width is named) and stacked.
    mask : ndarray of bool, shape (M, B), optional
        ``mask[m, b]`` is True when modality m is present in row b. All present when None.
    prior_expert : bool, default True
        Include the prior expert N(0, I) in the product.

    Returns
    -------
    (mu_out, logvar_out) : tuple of ndarray of shape (B, Z)
    cache : PoECache

    Raises
    ------
    ValueError
        Shapes that differ or are not 3-D, a mask of the wrong shape, NaN or Inf, or a row with no
        expert at all (no modality present and ``prior_expert=False``).
    TypeError
        Non-float arrays, differing dtypes or devices, a non-boolean mask.

    Notes
    -----
    A row with one present expert and no prior expert returns that expert unchanged
    (:math:`w = 1`). With the prior expert and every modality missing the product is the
    prior, N(0, I).
    """
    func = "poe_forward"
    mu = _stack_experts(mu, "mu", func)
    logvar = _stack_experts(logvar, "logvar", func)
    check_array(mu, "mu", func, ndim=3)
    check_array(logvar, "logvar", func, ndim=3)
    check_same_dtype([mu, logvar], ["mu", "logvar"], func)
    check_same_device([mu, logvar], ["mu", "logvar"], func)
    if tuple(logvar.shape) != tuple(mu.shape):
        raise ValueError(
            f"{func}: expected logvar to have mu's shape (M, B, Z) = {tuple(mu.shape)}, got "
            f"{tuple(logvar.shape)}. Every expert must give a (B, Z) mean and log-variance."
        )
    M, B, _ = mu.shape
    if M == 0:
        raise ValueError(
            f"{func}: expected mu to hold at least one expert (M >= 1), got shape "
            f"{tuple(mu.shape)}. Pass the modality experts; the prior expert is prior_expert=True."
        )
    xp = get_xp(mu)
    if mask is None:
        mask = xp.ones((M, B), dtype=bool)
    else:
        check_array(mask, "mask", func, dtype=np.bool_, shape=(M, B), finite=False)
        check_same_device([mu, mask], ["mu", "mask"], func)
    if not prior_expert and bool((~mask.any(axis=0)).any()):
        rows = xp.nonzero(~mask.any(axis=0))[0]
        raise ValueError(
            f"{func}: expected mask to mark at least one present expert in every row when "
            f"prior_expert=False, got {int(rows.size)} rows with none (e.g. row {int(rows[0])}). "
            f"Use prior_expert=True or drop those rows."
        )
    return _poe(mu, logvar, mask, bool(prior_expert), xp)


def _stack_experts(arrays, name, func):
    """A (M, B, Z) array from a sequence of (B, Z) experts, each checked and named."""
    if not isinstance(arrays, (list, tuple)):
        return arrays
    if not arrays:
        raise ValueError(f"{func}: expected {name} to hold at least one expert, got an empty list.")
    for m, a in enumerate(arrays):
        check_array(a, f"{name}[{m}]", func, ndim=2)
        if tuple(a.shape) != tuple(arrays[0].shape):
            raise ValueError(
                f"{func}: expected {name}[{m}] to have the shape of {name}[0] (B, Z) = "
                f"{tuple(arrays[0].shape)}, got {tuple(a.shape)}. Every modality's encoder must "
                f"give the same latent width Z and batch B."
            )
    check_same_dtype(arrays, [f"{name}[{m}]" for m in range(len(arrays))], func)
    check_same_device(arrays, [f"{name}[{m}]" for m in range(len(arrays))], func)
    return get_xp(arrays[0]).stack(arrays)


def _poe(mu, logvar, mask, prior_expert, xp):
    dt = mu.dtype.type
    a = xp.where(mask[:, :, None], -logvar, dt(-np.inf))  # (M, B, Z) log precisions
    m = a.max(axis=0)  # (B, Z)
    if prior_expert:
        m = xp.maximum(m, dt(0))  # the prior's log precision is 0: m is finite
    e = xp.exp(a - m)  # (M, B, Z), 0 for a missing expert
    total = e.sum(axis=0)  # (B, Z), >= 1 (its largest term is e^0)
    if prior_expert:
        total = total + xp.exp(-m)
    log_t = xp.log(total) + m  # (B, Z) log precision of the product
    weights = e / total  # (M, B, Z)
    mu_out = (weights * mu).sum(axis=0)  # (B, Z)
    return (mu_out, -log_t), PoECache(mu, weights, mu_out)


def poe_backward(dout, cache):
    """Gradients to every expert's mean and log-variance.

    Parameters
    ----------
    dout : tuple (dmu_out, dlogvar_out) of ndarray of shape (B, Z)
        Either entry may be None (no gradient through it).
    cache : PoECache

    Returns
    -------
    dmu, dlogvar : ndarray of shape (M, B, Z)
        Exactly zero for a missing expert.

    Notes
    -----
    With :math:`a_m = -v_m` and softmax weights :math:`w_m`,
    :math:`\\partial\\mu/\\partial\\mu_m = w_m`,
    :math:`\\partial\\mu/\\partial a_m = w_m(\\mu_m - \\mu)` (a softmax-weighted mean) and
    :math:`\\partial v/\\partial a_m = -w_m` (the gradient of :math:`-\\log\\sum e^{a}`); so

    .. math::

        d\\mu_m = w_m\\, d\\mu, \\qquad
        dv_m = -w_m\\,[(\\mu_m - \\mu)\\, d\\mu - dv].
    """
    dmu_out, dlogvar_out = dout
    w = cache.weights
    xp = get_xp(w)
    zero = xp.zeros_like(cache.mu_out)
    dmu_out = zero if dmu_out is None else dmu_out
    dlogvar_out = zero if dlogvar_out is None else dlogvar_out
    for name, d in (("dmu_out", dmu_out), ("dlogvar_out", dlogvar_out)):
        check_array(d, name, "poe_backward", shape=tuple(cache.mu_out.shape), finite=False)
    dmu = w * dmu_out  # (M, B, Z)
    dlogvar = -w * ((cache.mu - cache.mu_out) * dmu_out - dlogvar_out)  # (M, B, Z)
    return dmu, dlogvar
