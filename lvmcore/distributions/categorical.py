"""Categorical distributions over the last axis: ``Categorical`` and ``UniformCategorical``.

Everything is computed in log space from log_softmax (lvmcore.ops.softmax). A logit of
-inf masks its category: the probability is exactly 0, ``p log p`` is taken as 0 (the
log is replaced by 0 before the product, so no ``0 * -inf`` is ever evaluated and no
RuntimeWarning is raised), and every gradient with respect to that logit is 0.
"""

import math

import numpy as np

from .._validation import (
    check_array,
    check_float_dtype,
    check_param,
    check_rng,
    check_sample_shape,
    check_xp,
    get_xp,
)
from ..ops.softmax import log_softmax_forward
from .base import Distribution, _sum_to, _uniform

__all__ = ["Categorical", "UniformCategorical"]


def _log_softmax_and_probs(logits):
    """(log p, p) along the last axis; -inf logits give log p = -inf and p = 0."""
    logp, (p, _) = log_softmax_forward(logits, axis=-1)
    return logp, p


def _finite_log(logp, p):
    """log p where p > 0 and 0 elsewhere: ``p * _finite_log(...)`` is p log p with 0 log 0 = 0."""
    return get_xp(logp).where(p > 0, logp, 0)


def _check_index(value, num_categories, batch_shape, xp, func, validate):
    """An integer index array broadcastable to batch_shape; returns the output shape."""
    check_array(value, "value", func, dtype="any", finite=False, xp=xp, ref="the distribution")
    if value.dtype.kind not in "iu":
        raise TypeError(
            f"{func}: expected value to be an integer array of category indices, got dtype "
            f"{value.dtype}. Cast it with value.astype(numpy.int64)."
        )
    try:
        out_shape = np.broadcast_shapes(tuple(value.shape), tuple(batch_shape))
    except ValueError:
        out_shape = None
    if out_shape is None:
        raise ValueError(
            f"{func}: expected value to broadcast against batch_shape {tuple(batch_shape)}, "
            f"got value of shape {tuple(value.shape)}."
        )
    if validate:
        bad = (value < 0) | (value >= num_categories)
        if bool(bad.any()):
            raise ValueError(
                f"{func}: expected value to lie in [0, {num_categories}), got "
                f"{int(bad.sum())} indices outside, e.g. {int(value[bad].ravel()[0])}."
            )
    return out_shape


class Categorical(Distribution):
    """Categorical distribution over the last axis of ``logits`` (C categories).

    Parameters
    ----------
    logits : ndarray of shape (..., C)
        Unnormalized log-probabilities; -inf masks a category (probability 0).
    validate : bool, default False
        Also reject NaN and +inf logits and rows whose logits are all -inf.

    Attributes
    ----------
    batch_shape : tuple
        ``logits.shape[:-1]``.
    event_shape : tuple
        ``()``: one draw is one index.
    num_categories : int
        C.

    Raises
    ------
    TypeError
        Non-array or non-float logits.
    ValueError
        0-d logits or C = 0; with ``validate``: NaN, +inf, or an all -inf row.

    Notes
    -----
    :math:`\\log p_i = l_i - \\log\\sum_j e^{l_j}` (log_softmax, shift-stabilised).
    """

    def __init__(self, logits, *, validate=False):
        func = "Categorical"
        check_array(logits, "logits", func, finite=validate, allow_inf=True)
        if logits.ndim < 1 or logits.shape[-1] < 1:
            raise ValueError(
                f"{func}: expected logits to have shape (..., C) with C >= 1, got "
                f"{tuple(logits.shape)}."
            )
        xp = get_xp(logits)
        if validate:
            pos = logits == xp.inf
            if bool(pos.any()):
                raise ValueError(
                    f"{func}: expected logits to contain no +inf values, got "
                    f"{int(pos.sum())}. Mask categories with -inf; +inf has no probability "
                    f"meaning."
                )
            empty = ~(logits > -xp.inf).any(axis=-1)
            if bool(empty.any()):
                raise ValueError(
                    f"{func}: expected every row of logits to have a finite entry, got "
                    f"{int(empty.sum())} rows that are all -inf. Leave at least one "
                    f"category unmasked."
                )
        super().__init__(logits.shape[:-1], (), logits.dtype, xp, validate)
        self.logits = logits
        self.num_categories = int(logits.shape[-1])

    @property
    def params(self):
        """dict: ``{"logits": logits}``."""
        return {"logits": self.logits}

    @property
    def probs(self):
        """ndarray of shape (..., C): softmax of the logits (0 at -inf)."""
        return _log_softmax_and_probs(self.logits)[1]

    @property
    def log_probs(self):
        """ndarray of shape (..., C): log_softmax of the logits (-inf at -inf)."""
        return _log_softmax_and_probs(self.logits)[0]

    def sample(self, rng, shape=()):
        """Category indices by inversion of the CDF.

        Parameters
        ----------
        rng : numpy.random.Generator
        shape : tuple of int, default ()
            Sample shape S.

        Returns
        -------
        ndarray of int64, shape (*S, *batch_shape)

        Notes
        -----
        With :math:`u \\sim U[0, 1)` and :math:`F_k = \\sum_{j \\le k} p_j`, the index is
        :math:`\\#\\{k : F_k \\le u F_{C-1}\\}`: category k is chosen iff
        :math:`F_{k-1} \\le u F_{C-1} < F_k`, which needs :math:`p_k > 0`, so masked
        categories are never drawn. The result is clamped to the last category with
        :math:`p > 0` in case rounding makes :math:`u F_{C-1}` reach :math:`F_{C-1}`.
        """
        func = "Categorical.sample"
        shape = check_sample_shape(shape, func)
        xp = self.xp
        p = self.probs  # (..., C)
        cdf = xp.cumsum(p, axis=-1)  # (..., C)
        u = _uniform(rng, shape + self.batch_shape, self.dtype, xp, func)  # (*S, ...)
        target = u[..., None] * cdf[..., -1:]  # (*S, ..., 1)
        idx = (cdf <= target).sum(axis=-1)  # (*S, ...)
        # last category with p > 0 (int8: argmax over bool is not portable to every xp)
        positive = (p > 0)[..., ::-1].astype(np.int8)  # (..., C)
        last = (self.num_categories - 1) - xp.argmax(positive, axis=-1)  # (...)
        return xp.minimum(idx, last).astype(np.int64)

    def log_prob(self, value):
        """Log-probability of category indices.

        Parameters
        ----------
        value : ndarray of int, shape broadcastable to (*S, *batch_shape)
            Indices in [0, C). Negative indices wrap as in NumPy unless
            ``validate=True``, which rejects them.

        Returns
        -------
        ndarray of shape (*S, *batch_shape)
            :math:`\\log p_{value}`.
        """
        func = "Categorical.log_prob"
        out_shape = _check_index(
            value, self.num_categories, self.batch_shape, self.xp, func, self.validate
        )
        xp = self.xp
        logp = xp.broadcast_to(self.log_probs, out_shape + (self.num_categories,))
        idx = xp.broadcast_to(value, out_shape)[..., None]
        return xp.take_along_axis(logp, idx, axis=-1)[..., 0]

    def log_prob_backward(self, dout, value):
        """Gradient of :math:`L = \\sum dout \\cdot \\log p_{value}`.

        Parameters
        ----------
        dout : ndarray of shape (*S, *batch_shape) or float
        value : ndarray of int
            The indices passed to ``log_prob`` (not differentiable).

        Returns
        -------
        dict
            ``{"logits": sum_S dout * (onehot(value) - p)}`` of ``logits``' shape.

        Notes
        -----
        :math:`\\partial \\log p_k / \\partial l_i = \\delta_{ik} - p_i`; it is 0 at a
        masked category (:math:`p_i = 0`) unless that category is the value itself.
        """
        func = "Categorical.log_prob_backward"
        out_shape = _check_index(value, self.num_categories, self.batch_shape, self.xp, func, False)
        xp = self.xp
        dout = self._check_dout(dout, out_shape, func, source="value")[..., None]
        p = self.probs  # (..., C)
        onehot = (xp.arange(self.num_categories) == value[..., None]).astype(self.dtype)
        return {"logits": _sum_to(dout * (onehot - p), self.logits.shape)}

    def entropy(self):
        """Entropy, computed in log space.

        Returns
        -------
        ndarray of shape batch_shape
            :math:`H = -\\sum_i p_i \\log p_i`, with :math:`0 \\log 0 = 0` at -inf logits.
        """
        logp, p = _log_softmax_and_probs(self.logits)
        return -(p * _finite_log(logp, p)).sum(axis=-1)

    def entropy_backward(self, dout):
        """Gradient of :math:`L = \\sum dout \\cdot H`.

        Parameters
        ----------
        dout : ndarray of shape batch_shape or float

        Returns
        -------
        dict
            ``{"logits": -dout * p * (log p + H)}``, 0 at masked categories.

        Notes
        -----
        With :math:`\\partial p_j/\\partial l_i = p_j(\\delta_{ij} - p_i)`:
        :math:`\\partial H/\\partial l_i = -\\sum_j (\\log p_j + 1)\\,p_j(\\delta_{ij} - p_i)
        = -p_i(\\log p_i + 1) + p_i(1 - H) = -p_i(\\log p_i + H)`.
        """
        func = "Categorical.entropy_backward"
        dout = self._check_dout(dout, self.batch_shape, func)[..., None]
        logp, p = _log_softmax_and_probs(self.logits)
        flog = _finite_log(logp, p)  # (..., C)
        h = -(p * flog).sum(axis=-1, keepdims=True)  # (..., 1)
        return {"logits": -(dout * p * (flog + h))}


class UniformCategorical(Distribution):
    """The uniform distribution over C categories: the prior of a discrete latent.

    Parameters
    ----------
    num_categories : int
        C.
    dtype : numpy dtype
        float32 or float64, the dtype of its log-probabilities.
    xp : module, optional
        numpy (default) or cupy.

    Attributes
    ----------
    batch_shape, event_shape : tuple
        ``()`` and ``()``.

    Notes
    -----
    :math:`\\log p_i = -\\log C` and :math:`H = \\log C`; it has no parameters, so
    its backward methods return empty dicts.
    """

    def __init__(self, num_categories, dtype, *, xp=None):
        func = "UniformCategorical"
        self.num_categories = check_param(
            num_categories, "num_categories", func, kind="int", low=1, low_inclusive=True
        )
        super().__init__((), (), check_float_dtype(dtype, func), check_xp(xp, func))

    @property
    def logits(self):
        """ndarray of shape (C,): zeros."""
        return self.xp.zeros(self.num_categories, dtype=self.dtype)

    @property
    def probs(self):
        """ndarray of shape (C,): 1 / C."""
        return self.xp.full(self.num_categories, 1.0 / self.num_categories, dtype=self.dtype)

    @property
    def log_probs(self):
        """ndarray of shape (C,): -log C."""
        return self.xp.full(self.num_categories, -math.log(self.num_categories), dtype=self.dtype)

    def sample(self, rng, shape=()):
        """Uniform indices, int64 of shape ``shape``."""
        func = "UniformCategorical.sample"
        shape = check_sample_shape(shape, func)
        rng = check_rng(rng, func)
        return self.xp.asarray(rng.integers(0, self.num_categories, size=shape, dtype=np.int64))

    def log_prob(self, value):
        """:math:`-\\log C` for every index, shape ``value.shape``."""
        func = "UniformCategorical.log_prob"
        out_shape = _check_index(value, self.num_categories, (), self.xp, func, True)
        return self.xp.full(out_shape, -math.log(self.num_categories), dtype=self.dtype)

    def log_prob_backward(self, dout, value):
        """No parameters: an empty dict."""
        return {}

    def entropy(self):
        """0-d array :math:`\\log C`."""
        return self.xp.asarray(math.log(self.num_categories), dtype=self.dtype)

    def entropy_backward(self, dout):
        """No parameters: an empty dict."""
        return {}
