"""A categorical decoder: a softmax over L levels for each of D discrete data dimensions.

Shape letters: S leading sample axes (K), B batch, D data, L levels, Z latent, N rows.

Forward, for x (B, D) with levels in [0, L) and z (*S, B, Z)::

    logits = MLP(z)                              (*S, B, D*L) -> (*S, B, D, L)
    log p(x | z) = sum_d log_softmax(logits[..., d, :])[x_d]     (*S, B)

The model for discrete non-binary data such as grey levels, scored exactly (no
dequantization): the baseline the dequantized continuous decoders are compared against.
"""

from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_levels, check_param, get_xp
from ..nn._checks import check_grad, check_input
from ..nn.module import MLP
from ..noise import uniform
from ..ops import ACTIVATIONS
from ..ops.softmax import log_softmax_forward

__all__ = [
    "categorical_log_prob_forward",
    "categorical_log_prob_backward",
    "CategoricalLogProbCache",
    "CategoricalDecoder",
    "CategoricalDecoderCache",
]


class CategoricalLogProbCache(NamedTuple):
    """probs : (*S, B, D, L) the softmax; onehot : (B, D, L) the data; lead : (*S, B)."""

    probs: object
    onehot: object
    lead: tuple


def categorical_log_prob_forward(logits, x):
    """:math:`\\log p(x) = \\sum_d \\log\\mathrm{softmax}(\\text{logits}_d)_{x_d}` per row.

    Parameters
    ----------
    logits : ndarray of shape (*S, B, D, L)
    x : ndarray of shape (B, D)
        Levels in [0, L): an integer array, or a float array of integral values.

    Returns
    -------
    log_px : ndarray of shape (*S, B)
    cache : CategoricalLogProbCache

    Raises
    ------
    ValueError
        Non-integer or out-of-range levels, shapes that disagree, NaN or Inf in the logits.
    TypeError
        Non-numeric x, non-float logits, arrays on different devices.

    Notes
    -----
    The log-softmax is shifted by the maximum over L, so a logit of any finite size gives a
    finite log-probability.
    """
    func = "categorical_log_prob_forward"
    check_array(logits, "logits", func)
    if logits.ndim < 3:
        raise ValueError(
            f"{func}: expected logits of shape (*S, B, D, L), got {tuple(logits.shape)}."
        )
    xp = get_xp(logits)
    L = logits.shape[-1]
    check_array(x, "x", func, dtype="any", ndim=2, finite=False)
    if get_xp(x) is not xp:
        raise TypeError(
            f"{func}: expected x on the logits' device ({xp.__name__}), got a "
            f"{get_xp(x).__name__} array. Move it explicitly; lvmcore never copies implicitly."
        )
    if tuple(logits.shape[-3:-1]) != tuple(x.shape):
        raise ValueError(
            f"{func}: expected logits of shape (*S, {x.shape[0]}, {x.shape[1]}, L) for x of "
            f"shape {tuple(x.shape)}, got {tuple(logits.shape)}."
        )
    levels = check_levels(x, L, "x", func)  # (B, D) int64
    onehot = (xp.arange(L) == levels[..., None]).astype(logits.dtype)  # (B, D, L)
    logp, (probs, _) = log_softmax_forward(logits, axis=-1)  # (*S, B, D, L)
    log_px = (logp * onehot).sum(axis=(-2, -1))  # (*S, B)
    return log_px, CategoricalLogProbCache(probs, onehot, tuple(logits.shape[:-2]))


def categorical_log_prob_backward(dlog_px, cache):
    """dlogits (*S, B, D, L) :math:`= dlog\\_px\\,(\\mathrm{onehot}(x) - \\mathrm{softmax})`.

    Notes
    -----
    :math:`\\partial\\log\\mathrm{softmax}(l)_k/\\partial l_j = [j = k] - p_j`.
    """
    check_grad(
        dlog_px, "dlog_px", cache.lead, "categorical_log_prob_backward", dtype=cache.probs.dtype
    )
    return dlog_px[..., None, None] * (cache.onehot - cache.probs)


class CategoricalDecoderCache(NamedTuple):
    """mlp : MLPCache over N = prod(S) B rows; log_prob : CategoricalLogProbCache; lead."""

    mlp: object
    log_prob: object
    lead: tuple


class CategoricalDecoder(MLP):
    """p(x | z) = prod_d Categorical(x_d | softmax(logits_d(z))) over L levels.

    Parameters
    ----------
    sizes : sequence of int
        ``(Z, H_1, ..., H_n, D)``: latent width, hidden widths, data width. The MLP built has
        widths ``(Z, H_1, ..., H_n, D L)``.
    levels : int
        L >= 2.
    activation : {"tanh", "relu", "softplus", "sigmoid"}
    rng : numpy.random.Generator
    dtype : float32 or float64

    Notes
    -----
    The last layer's output column ``d L + k`` is the logit of level k of dimension d. The
    parameters are the MLP's (``W0, b0, ...``).
    """

    def __init__(self, sizes, levels, activation, rng, dtype=np.float32):
        func = "CategoricalDecoder"
        sizes = [
            check_param(s, "sizes", func, kind="int", low=1, low_inclusive=True) for s in sizes
        ]
        if len(sizes) < 2:
            raise ValueError(
                f"{func}: expected sizes to list at least a latent and a data width, got {sizes}."
            )
        self.levels = check_param(levels, "levels", func, kind="int", low=2, low_inclusive=True)
        self.n_latent, self.data_dim = sizes[0], sizes[-1]
        super().__init__((*sizes[:-1], sizes[-1] * self.levels), activation, rng, dtype)

    def _logits(self, z):
        lead = tuple(z.shape[:-1])
        y, mc = MLP.forward(self, z.reshape(-1, self.n_latent))  # (N, D L)
        return y.reshape(lead + (self.data_dim, self.levels)), mc  # (*S, B, D, L)

    def log_prob(self, x, z):
        """:math:`\\log p(x \\mid z)` for x (B, D) levels and z (*S, B, Z); returns
        (log_px (*S, B), cache)."""
        func = "CategoricalDecoder.log_prob"
        W0 = self.params["W0"]
        check_input(z, "z", func, dtype=W0.dtype, xp=get_xp(W0), last=self.n_latent, min_ndim=2)
        logits, mc = self._logits(z)
        log_px, lc = categorical_log_prob_forward(logits, x)
        return log_px, CategoricalDecoderCache(mc, lc, lc.lead)

    def _dy(self, dlog_px, cache):
        dlogits = categorical_log_prob_backward(dlog_px, cache.log_prob)  # (*S, B, D, L)
        return dlogits.reshape(-1, self.data_dim * self.levels)

    def log_prob_backward(self, dlog_px, cache):
        """Add the MLP's parameter gradients; return dz (*S, B, Z)."""
        dz = MLP.backward(self, self._dy(dlog_px, cache), cache.mlp)
        return dz.reshape(cache.lead + (self.n_latent,))

    def input_vjp(self, dlog_px, cache):
        """dz of :meth:`log_prob_backward`, no parameter gradient accumulated: the MLP walked
        back through its activations and :math:`dx = dy\\,W^\\top` only."""
        _, act_backward = ACTIVATIONS[self.activation]
        dh = self._dy(dlog_px, cache)
        for i in reversed(range(self.n_layers)):
            if i < self.n_layers - 1:
                dh = act_backward(dh, cache.mlp.activation[i])
            dh = dh @ self.params[f"W{i}"].T  # (N, sizes[i])
        return dh.reshape(cache.lead + (self.n_latent,))

    def draw_noise(self, rng, lead):
        """Uniforms of shape ``lead + (D,)`` for :meth:`sample`."""
        W0 = self.params["W0"]
        return uniform(rng, tuple(lead) + (self.data_dim,), W0.dtype, W0)

    def sample(self, z, rng_or_noise):
        """Levels drawn by the inverse CDF of each dimension's softmax.

        Parameters
        ----------
        z : ndarray of shape (*S, Z)
        rng_or_noise : numpy.random.Generator or ndarray of shape (*S, D) of uniforms in [0, 1)

        Returns
        -------
        x : ndarray of int64, shape (*S, D)
        """
        func = "CategoricalDecoder.sample"
        W0 = self.params["W0"]
        xp = get_xp(W0)
        check_input(z, "z", func, dtype=W0.dtype, xp=xp, last=self.n_latent)
        lead = tuple(z.shape[:-1])
        if isinstance(rng_or_noise, np.random.Generator):
            u = self.draw_noise(rng_or_noise, lead)
        else:
            u = rng_or_noise
            check_input(u, "rng_or_noise", func, dtype=W0.dtype, xp=xp)
            if tuple(u.shape) != lead + (self.data_dim,) or bool(((u < 0) | (u >= 1)).any()):
                raise ValueError(
                    f"{func}: expected rng_or_noise to be uniforms in [0, 1) of shape "
                    f"{lead + (self.data_dim,)}, got shape {tuple(u.shape)}."
                )
        logits, _ = self._logits(z)
        _, (probs, _) = log_softmax_forward(logits, axis=-1)  # (*S, D, L)
        cdf = xp.cumsum(probs, axis=-1)
        # level = number of CDF entries at or below u; a last entry rounded below 1 is capped.
        x = (cdf <= u[..., None]).sum(axis=-1)
        return xp.minimum(x, self.levels - 1).astype(np.int64)
