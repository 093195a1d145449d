"""Closed-form KL divergences, their gradients, and the ``register_kl`` registry.

Public API::

    kl_divergence(p, q)                    -> ndarray, shape broadcast(p.batch_shape, q.batch_shape)
    kl_divergence_backward(p, q, dkl=1.0)  -> (grads of p's params, grads of q's params)
    @register_kl(P, Q)            registers forward(p, q) -> kl
    @register_kl_backward(P, Q)   registers backward(p, q, dkl) -> (dict, dict)

Registered pairs (all summed over the event axis):

===================  ===================  =============================================
p                    q                    KL(p || q)
===================  ===================  =============================================
DiagNormal           StandardNormal       1/2 sum(e^l + mu^2 - 1 - l)
DiagNormal           DiagNormal           1/2 sum(l2 - l1 + e^(l1-l2) + (mu1-mu2)^2 e^-l2 - 1)
Bernoulli            Bernoulli            p1 (log p1 - log p2) + (1-p1)(log(1-p1) - log(1-p2))
Categorical          Categorical          sum p (log p - log q), 0 where p = 0
Categorical          UniformCategorical   log C - H(p)
===================  ===================  =============================================

Dispatch follows the classes' MRO, as torch.distributions does: the registered pair
(P, Q) nearest to (type(p), type(q)) wins, so subclasses inherit their parents' rules.

The per-dimension KL to the standard normal (free bits needs it before the sum) is
an op pair in the house style: ``kl_normal_std_per_dim_forward(loc, logvar) ->
(kl, cache)`` and ``kl_normal_std_per_dim_backward(dkl, cache) -> (dloc, dlogvar)``.
"""

from typing import NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_cache,
    check_dout,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    get_xp,
)
from ..ops.activations import _sigmoid as sigmoid
from ..ops.activations import _softplus as softplus
from .base import Distribution, _event_axes, _sum_to
from .bernoulli import Bernoulli
from .categorical import Categorical, UniformCategorical, _log_softmax_and_probs
from .normal import DiagNormal, StandardNormal

__all__ = [
    "register_kl",
    "register_kl_backward",
    "kl_divergence",
    "kl_divergence_backward",
    "KLNormalStdCache",
    "kl_normal_std_per_dim",
    "kl_normal_std_per_dim_forward",
    "kl_normal_std_per_dim_backward",
    "deviation_from_mean",
]

_KL_FORWARD = {}
_KL_BACKWARD = {}


def _check_pair_types(type_p, type_q, func):
    for name, t in (("type_p", type_p), ("type_q", type_q)):
        if not (isinstance(t, type) and issubclass(t, Distribution)):
            raise TypeError(
                f"{func}: expected {name} to be a subclass of "
                f"lvmcore.distributions.Distribution, got {t!r}."
            )


def register_kl(type_p, type_q):
    """Decorator registering ``fn(p, q) -> kl`` as KL(p || q) for the pair of classes.

    The function returns the divergence summed over the event axes, with shape
    ``broadcast(p.batch_shape, q.batch_shape)``. It is returned unchanged. Register
    its gradient with ``register_kl_backward``.

    Examples
    --------
    >>> @register_kl(DiagNormal, StandardNormal)  # doctest: +SKIP
    ... def _kl_diagnormal_standardnormal(p, q):
    ...     ...
    """
    _check_pair_types(type_p, type_q, "register_kl")

    def decorator(fn):
        _KL_FORWARD[type_p, type_q] = fn
        return fn

    return decorator


def register_kl_backward(type_p, type_q):
    """Decorator registering ``fn(p, q, dkl) -> (dp, dq)`` as the gradient of KL(p || q).

    ``dkl`` arrives already checked and broadcast to the forward output's shape.
    ``dp`` and ``dq`` are dicts keyed like ``p.params`` and ``q.params``, each
    gradient of its parameter's shape.
    """
    _check_pair_types(type_p, type_q, "register_kl_backward")

    def decorator(fn):
        _KL_BACKWARD[type_p, type_q] = fn
        return fn

    return decorator


def _pairs(table):
    return ", ".join(f"({P.__name__}, {Q.__name__})" for P, Q in table)


def _lookup(table, p, q, func, what):
    """The registered function for the pair nearest to (type(p), type(q)) in MRO order."""
    tp, tq = type(p), type(q)
    best, best_key = None, None
    for (P, Q), fn in table.items():
        if P in tp.__mro__ and Q in tq.__mro__:
            i, j = tp.__mro__.index(P), tq.__mro__.index(Q)
            if best_key is None or (i + j, i) < best_key:
                best, best_key = fn, (i + j, i)
    if best is None:
        decorator = "register_kl" if what == "" else "register_kl_backward"
        raise NotImplementedError(
            f"No KL(p || q){what} for p={tp.__name__}, q={tq.__name__}. Registered pairs: "
            f"{_pairs(table) or 'none'}. Register one with "
            f"@{decorator}({tp.__name__}, {tq.__name__})."
        )
    return best


def _check_distributions(p, q, func):
    for name, d in (("p", p), ("q", q)):
        if not isinstance(d, Distribution):
            raise TypeError(
                f"{func}: expected {name} to be an lvmcore distribution, got "
                f"{type(d).__name__}. Wrap arrays in one first, e.g. DiagNormal(loc, logvar)."
            )


def _check_pair(p, q, func):
    """Same device, dtype and event shape; returns the broadcast batch shape."""
    _check_distributions(p, q, func)
    if p.xp is not q.xp:
        raise TypeError(
            f"{func}: expected p and q on one device, got p on {p.xp.__name__} and q on "
            f"{q.xp.__name__}. Move one explicitly; lvmcore never copies implicitly."
        )
    if p.dtype != q.dtype:
        raise TypeError(
            f"{func}: expected p and q to share one dtype, got p: {p.dtype}, q: {q.dtype}. "
            f"Build both in float32 (speed) or float64 (checks)."
        )
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"{func}: expected p and q to have the same event_shape, got {p.event_shape} and "
            f"{q.event_shape}."
        )
    try:
        return np.broadcast_shapes(p.batch_shape, q.batch_shape)
    except ValueError:
        raise ValueError(
            f"{func}: expected the batch shapes of p and q to broadcast, got {p.batch_shape} "
            f"and {q.batch_shape}."
        ) from None


def kl_divergence(p, q):
    """KL(p || q), summed over the event axes.

    Parameters
    ----------
    p, q : Distribution
        A registered pair (see the module docstring), same dtype and device.

    Returns
    -------
    ndarray of shape broadcast(p.batch_shape, q.batch_shape)
        :math:`\\mathbb{E}_p[\\log p(x) - \\log q(x)] \\ge 0`.

    Raises
    ------
    NotImplementedError
        No rule is registered for the pair; the message lists the registered pairs.
    TypeError
        p or q not a Distribution (e.g. an array), or different dtypes or devices.
    ValueError
        Different event shapes (or numbers of categories), or batch shapes that do
        not broadcast.
    """
    func = "kl_divergence"
    _check_distributions(p, q, func)
    fn = _lookup(_KL_FORWARD, p, q, func, "")
    _check_pair(p, q, func)
    return fn(p, q)


def kl_divergence_backward(p, q, dkl=1.0):
    """Gradients of :math:`L = \\sum dkl \\cdot KL(p \\| q)` for both arguments.

    Parameters
    ----------
    p, q : Distribution
        The pair passed to ``kl_divergence``.
    dkl : ndarray of shape broadcast(p.batch_shape, q.batch_shape) or float, default 1.0
        Upstream gradient.

    Returns
    -------
    dp : dict
        Gradients for ``p.params``, each of its parameter's shape.
    dq : dict
        Gradients for ``q.params`` (empty for parameter-free priors).

    Raises
    ------
    NotImplementedError
        No backward is registered for the pair.
    """
    func = "kl_divergence_backward"
    _check_distributions(p, q, func)
    fn = _lookup(_KL_BACKWARD, p, q, func, " backward")
    out_shape = _check_pair(p, q, func)
    dkl = check_dout(dkl, out_shape, p.dtype, p.xp, func, name="dkl")
    return fn(p, q, dkl)


# --- DiagNormal || StandardNormal ---------------------------------------------------------


class KLNormalStdCache(NamedTuple):
    """What kl_normal_std_per_dim_backward needs: ``loc`` and ``logvar``, both (..., Z)."""

    loc: object
    logvar: object


def _check_loc_logvar(loc, logvar, func):
    check_array(loc, "loc", func, finite=False)
    check_array(logvar, "logvar", func, finite=False)
    check_same_device([loc, logvar], ["loc", "logvar"], func)
    check_same_dtype([loc, logvar], ["loc", "logvar"], func)
    check_same_shape(loc, logvar, "loc", "logvar", func)


def _kl_normal_std(loc, logvar):
    # expm1(l) - l instead of e^l - 1 - l: the latter loses every digit as l -> 0,
    # which is where a collapsed latent sits.
    return 0.5 * (get_xp(loc).expm1(logvar) - logvar + loc * loc)


def kl_normal_std_per_dim_forward(loc, logvar):
    """Per-dimension KL(N(loc, e^logvar) || N(0, 1)), not summed (for free bits).

    Parameters
    ----------
    loc : ndarray of shape (..., Z)
    logvar : ndarray of shape (..., Z)

    Returns
    -------
    kl : ndarray of shape (..., Z)
        :math:`\\tfrac12(e^{\\ell} - 1 - \\ell + \\mu^2)`, evaluated as
        :math:`\\tfrac12(\\mathrm{expm1}(\\ell) - \\ell + \\mu^2)`.
    cache : KLNormalStdCache

    Notes
    -----
    Kingma & Welling (2014), Appendix B, per dimension. The backward is
    :math:`d\\mu = dkl\\,\\mu` and :math:`d\\ell = \\tfrac12 dkl\\,(e^{\\ell} - 1)`.
    """
    _check_loc_logvar(loc, logvar, "kl_normal_std_per_dim_forward")
    return _kl_normal_std(loc, logvar), KLNormalStdCache(loc, logvar)


def kl_normal_std_per_dim(loc, logvar):
    """``kl_normal_std_per_dim_forward(loc, logvar)[0]``: the (..., Z) per-dimension KL."""
    _check_loc_logvar(loc, logvar, "kl_normal_std_per_dim")
    return _kl_normal_std(loc, logvar)


def kl_normal_std_per_dim_backward(dkl, cache):
    """Gradients of the per-dimension KL to N(0, 1).

    Parameters
    ----------
    dkl : ndarray of shape (..., Z) or float
        Upstream gradient (zero where free bits clamps a dimension).
    cache : KLNormalStdCache
        ``loc`` and ``logvar`` (..., Z) from the forward pass.

    Returns
    -------
    dloc : ndarray of shape (..., Z)
        :math:`dkl \\cdot \\mu`.
    dlogvar : ndarray of shape (..., Z)
        :math:`\\tfrac12\\, dkl \\cdot \\mathrm{expm1}(\\ell)`.

    Notes
    -----
    Differentiate :math:`\\tfrac12(e^{\\ell} - 1 - \\ell + \\mu^2)` term by term:
    :math:`\\partial/\\partial\\mu = \\mu` and
    :math:`\\partial/\\partial\\ell = \\tfrac12(e^{\\ell} - 1)`.
    """
    func = "kl_normal_std_per_dim_backward"
    loc, logvar = check_cache(cache, KLNormalStdCache, func)
    xp = get_xp(loc)
    dkl = check_dout(dkl, loc.shape, loc.dtype, xp, func, name="dkl")
    return dkl * loc, 0.5 * dkl * xp.expm1(logvar)


@register_kl(DiagNormal, StandardNormal)
def _kl_diagnormal_standardnormal(p, q):
    """:math:`\\tfrac12\\sum_j(e^{\\ell_j} - 1 - \\ell_j + \\mu_j^2)`, shape p.batch_shape."""
    return _kl_normal_std(p.loc, p.logvar).sum(axis=-1)


@register_kl_backward(DiagNormal, StandardNormal)
def _kl_diagnormal_standardnormal_backward(p, q, dkl):
    """:math:`d\\mu = dkl\\,\\mu` and :math:`d\\ell = \\tfrac12 dkl\\,\\mathrm{expm1}(\\ell)`.

    q (the prior) has no parameters, so its dict is empty.
    """
    cache = KLNormalStdCache(p.loc, p.logvar)
    dloc, dlogvar = kl_normal_std_per_dim_backward(dkl[..., None], cache)
    return {"loc": dloc, "logvar": dlogvar}, {}


# --- DiagNormal || DiagNormal -------------------------------------------------------------


@register_kl(DiagNormal, DiagNormal)
def _kl_diagnormal_diagnormal(p, q):
    """KL between diagonal Gaussians.

    Notes
    -----
    With :math:`d = \\ell_p - \\ell_q`:
    :math:`KL = \\tfrac12\\sum_j[\\mathrm{expm1}(d_j) - d_j
    + (\\mu_{p,j} - \\mu_{q,j})^2 e^{-\\ell_{q,j}}]`, exactly 0 for p = q.
    """
    xp = p.xp
    d = p.logvar - q.logvar  # (..., Z)
    diff = p.loc - q.loc  # (..., Z)
    return 0.5 * (xp.expm1(d) - d + diff * diff * xp.exp(-q.logvar)).sum(axis=-1)


@register_kl_backward(DiagNormal, DiagNormal)
def _kl_diagnormal_diagnormal_backward(p, q, dkl):
    """Gradients for both Gaussians.

    Notes
    -----
    With :math:`u = (\\mu_p - \\mu_q) e^{-\\ell_q}` and :math:`s = (\\mu_p - \\mu_q) u`:
    :math:`d\\mu_p = u`, :math:`d\\mu_q = -u`,
    :math:`d\\ell_p = \\tfrac12(e^{d} - 1)` and
    :math:`d\\ell_q = -\\tfrac12(e^{d} - 1 + s)`, each times dkl and summed to its
    parameter's shape.
    """
    xp = p.xp
    dk = dkl[..., None]
    diff = p.loc - q.loc  # (..., Z)
    u = diff * xp.exp(-q.logvar)  # (..., Z)
    r = xp.expm1(p.logvar - q.logvar)  # (..., Z)
    du = dk * u
    dp = {"loc": _sum_to(du, p.loc.shape), "logvar": _sum_to(0.5 * dk * r, p.loc.shape)}
    dq = {
        "loc": _sum_to(-du, q.loc.shape),
        "logvar": _sum_to(-0.5 * dk * (r + diff * u), q.loc.shape),
    }
    return dp, dq


# --- Bernoulli || Bernoulli ---------------------------------------------------------------


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p, q):
    """KL between Bernoullis in terms of logits a (p) and b (q).

    Notes
    -----
    With :math:`\\log\\sigma(x) = -\\mathrm{softplus}(-x)`:
    :math:`KL = \\sigma(a)[\\mathrm{sp}(-b) - \\mathrm{sp}(-a)]
    + \\sigma(-a)[\\mathrm{sp}(b) - \\mathrm{sp}(a)]`. The algebraically equal
    :math:`\\sigma(a)(a - b) + \\mathrm{sp}(b) - \\mathrm{sp}(a)` cancels to 0 at
    a = 1e30, b = 0 (true value log 2); here each bracket is small or multiplied by
    an exact 0, so logits of any size give the exact result.
    """
    a, b = p.logits, q.logits
    kl = sigmoid(a) * (softplus(-b) - softplus(-a)) + sigmoid(-a) * (softplus(b) - softplus(a))
    return kl.sum(axis=_event_axes(p.event_ndim)) if p.event_ndim else kl


@register_kl_backward(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli_backward(p, q, dkl):
    """Gradients for both logits.

    Notes
    -----
    From :math:`KL = \\sigma(a)(a - b) + \\mathrm{sp}(b) - \\mathrm{sp}(a)`:
    :math:`\\partial/\\partial a = \\sigma(a)\\sigma(-a)(a - b)` and
    :math:`\\partial/\\partial b = \\sigma(b) - \\sigma(a)`. The first is formed as
    :math:`s a - s b` with :math:`s = \\sigma(a)\\sigma(-a)` (0 for huge a, never
    0 * inf); the second as :math:`\\sigma(-a) - \\sigma(-b)` when both logits are
    positive, so no digits cancel near 1.
    """
    xp = p.xp
    a, b = p.logits, q.logits
    dk = dkl.reshape(tuple(dkl.shape) + (1,) * p.event_ndim)
    s = sigmoid(a) * sigmoid(-a)  # p (1 - p)
    da = dk * (s * a - s * b)
    both_pos = (a > 0) & (b > 0)
    db = dk * xp.where(both_pos, sigmoid(-a) - sigmoid(-b), sigmoid(b) - sigmoid(a))
    return {"logits": _sum_to(da, a.shape)}, {"logits": _sum_to(db, b.shape)}


# --- Categorical || Categorical and || UniformCategorical ---------------------------------


def _check_categories(p, q, func):
    if p.num_categories != q.num_categories:
        raise ValueError(
            f"{func}: expected p and q to have the same number of categories, got "
            f"{p.num_categories} and {q.num_categories}."
        )


def _categorical_terms(logp, p, logq):
    """Per-category ``log p - log q`` (0 where p = 0) and the KL, shape (..., 1).

    The logs are replaced by 0 where p = 0 before subtracting, so masked categories
    contribute exactly 0 and ``-inf - -inf`` is never evaluated; where p > 0 = q the
    difference is +inf and so is the KL, as it should be.
    """
    xp = get_xp(logp)
    mask = p > 0
    diff = xp.where(mask, logp, 0) - xp.where(mask, logq, 0)  # (..., C)
    return diff, (p * diff).sum(axis=-1, keepdims=True)


def deviation_from_mean(p, v, mean):
    """v - mean, where ``mean`` (..., 1) = sum_k p_k v_k, for probabilities p (..., C).

    The entry of the most probable category is formed as sum_k p_k (v_top - v_k) instead: when
    p_top is within the dtype's eps of 1, v_top - mean cancels to rounding noise, while its
    true value, about (1 - p_top) times a difference of v, is what the gradients of a
    saturated softmax carry (the KL's p (log p - log q - KL), a score function's weights). Equal
    in exact arithmetic (sum_k p_k = 1); terms with p_k = 0 are left out.
    """
    xp = get_xp(p)
    top = xp.argmax(p, axis=-1)[..., None]  # (..., 1)
    v_top = xp.take_along_axis(v, top, axis=-1)
    pairwise = xp.where(p > 0, p * (v_top - v), p.dtype.type(0)).sum(axis=-1, keepdims=True)
    at_top = xp.arange(p.shape[-1]) == top  # (..., C)
    return xp.where(at_top, pairwise, v - mean)


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p, q):
    """:math:`\\sum_i p_i(\\log p_i - \\log q_i)`, in log space, 0 terms where p_i = 0."""
    _check_categories(p, q, "kl_divergence")
    logp, pp = _log_softmax_and_probs(p.logits)
    logq = _log_softmax_and_probs(q.logits)[0]
    return _categorical_terms(logp, pp, logq)[1][..., 0]


@register_kl_backward(Categorical, Categorical)
def _kl_categorical_categorical_backward(p, q, dkl):
    """Gradients for both logit vectors.

    Notes
    -----
    With :math:`\\partial \\log p_j/\\partial a_i = \\delta_{ij} - p_i`:
    :math:`\\partial KL/\\partial a_i = \\sum_j p_j(\\delta_{ij} - p_i)(\\log p_j - \\log q_j)
    + \\sum_j p_j(\\delta_{ij} - p_i) = p_i(\\log p_i - \\log q_i - KL)` and
    :math:`\\partial KL/\\partial b_i = -\\sum_j p_j(\\delta_{ij} - q_i) = q_i - p_i`.
    Both vanish where the logit is -inf. Undefined (NaN) where the KL is infinite.
    """
    _check_categories(p, q, "kl_divergence_backward")
    dk = dkl[..., None]
    logp, pp = _log_softmax_and_probs(p.logits)
    logq, qq = _log_softmax_and_probs(q.logits)
    diff, kl = _categorical_terms(logp, pp, logq)
    return (
        {"logits": _sum_to(dk * pp * deviation_from_mean(pp, diff, kl), p.logits.shape)},
        {"logits": _sum_to(dk * (qq - pp), q.logits.shape)},
    )


@register_kl(Categorical, UniformCategorical)
def _kl_categorical_uniform(p, q):
    """:math:`\\log C - H(p) = \\sum_i p_i(\\log p_i + \\log C)`, exactly 0 at uniform p."""
    _check_categories(p, q, "kl_divergence")
    logp, pp = _log_softmax_and_probs(p.logits)
    return _categorical_terms(logp, pp, q.log_probs)[1][..., 0]


@register_kl_backward(Categorical, UniformCategorical)
def _kl_categorical_uniform_backward(p, q, dkl):
    """:math:`\\partial KL/\\partial a_i = p_i(\\log p_i + H) = -\\partial H/\\partial a_i`.

    The uniform prior has no parameters, so its dict is empty.
    """
    _check_categories(p, q, "kl_divergence_backward")
    logp, pp = _log_softmax_and_probs(p.logits)
    diff, kl = _categorical_terms(logp, pp, q.log_probs)
    dev = deviation_from_mean(pp, diff, kl)
    return {"logits": _sum_to(dkl[..., None] * pp * dev, p.logits.shape)}, {}
