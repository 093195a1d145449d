"""Relaxed categoricals: Gumbel-Softmax / Concrete, in probability and in log space.

Two classes with torch.distributions' names and one parameterization, logits l (..., C) and a
temperature :math:`\\tau > 0`:

- ``RelaxedCategorical``: points y on the probability simplex,
  :math:`y = \\mathrm{softmax}((l + g)/\\tau)` with g standard Gumbel; ``hard=True`` gives the
  straight-through sample (forward one-hot, backward through y).
- ``ExpRelaxedCategorical``: the same draw in log space, :math:`x = \\log y =
  \\mathrm{log\\_softmax}((l + g)/\\tau)` (the ExpConcrete of Maddison et al. 2017, App. C),
  finite at any temperature even where y underflows to an exact one-hot.

Numerics (log space). Every draw is computed from the shifted scores
:math:`d = (s - \\max_c s)/\\tau \\le 0` with :math:`s = l + g`: the row max is subtracted
*before* dividing by :math:`\\tau`, so :math:`e^{d} \\in (0, 1]`, the normalizer lies in
[1, C], and nothing overflows or divides 0 by 0 for any :math:`\\tau > 0` and finite logits
(:math:`\\tau = 10^{-3}` with logits of :math:`\\pm 10^4` in float32 gives d near -2e7, an exact
one-hot y and a finite x). As :math:`\\tau \\to 0`, y tends to one_hot(argmax(l + g)): the
argmax limit, reached exactly once the top-two gap of s exceeds about 87 tau (float32) or
745 tau (float64). Logits must be finite: a masked category has no Concrete density.

Gradients. Every forward method has a hand-derived backward returning a dict keyed
``"logits"``, ``"temperature"`` (a 0-d array: :math:`\\tau` is one scalar) and, for densities,
``"value"``; sums over sample and batch axes accumulate in float64 before the cast.

One home for the Gumbel-Softmax. ``RelaxedCategorical.rsample`` is the fused kernel
``gumbel_softmax`` (``kernels/gumbel_softmax.py``, dispatched by ``lvmcore.backend``: the NumPy
reference, Numba or CUDA), fed one Philox key from the noise front door ``lvmcore.noise``; the
noise it returns is that key's Gumbel stream. The soft sample's backward (``rsample_backward``,
``relaxed_softmax_backward``) is the kernel ``gumbel_softmax_backward``. ``relaxed_softmax``
keeps the same shifted-score formula for noise the caller already holds (``reparameterize``);
tests/test_distributions_relaxed.py proves it equal to the kernel's reference on the same
stream, and the distribution's path equal to the kernel's.

References
----------
Maddison, Mnih & Teh, "The Concrete Distribution: A Continuous Relaxation of Discrete Random
Variables", ICLR 2017 (eq. 10 the density; App. C the ExpConcrete).
Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017 (eq. 1-3;
sec. 2.2 the straight-through estimator).
"""

import math

import numpy as np

from .. import noise
from .._validation import (
    check_array,
    check_dout,
    check_param,
    check_rng,
    check_sample_shape,
    get_xp,
)
from ..backend import get_backend
from ..ops.softmax import log_softmax_forward
from .base import Distribution, _broadcast_value, _sum_to

__all__ = [
    "RelaxedCategorical",
    "ExpRelaxedCategorical",
    "relaxed_softmax",
    "relaxed_softmax_backward",
]


# --- pure math: the draw and its backward, shared by both classes ---------------------------


def _scores(logits, tau, g):
    """(d, y, lse): d = (s - max s)/tau <= 0 (*S, ..., C); y = softmax(d); lse = log sum e^d.

    The max is subtracted before the division by tau (see the module notes): dividing s
    first overflows for tiny tau, and inf - inf is NaN.
    """
    xp = get_xp(logits, g)
    s = logits + g  # (*S, ..., C)
    d = (s - s.max(axis=-1, keepdims=True)) / tau  # (*S, ..., C), max 0
    e = xp.exp(d)  # (0, 1], 1 at the argmax
    z = e.sum(axis=-1, keepdims=True)  # in [1, C]
    return d, e / z, xp.log(z)


def _one_hot_argmax(d):
    """One-hot of the argmax along the last axis (lowest index on ties), dtype of d."""
    xp = get_xp(d)
    idx = xp.argmax(d, axis=-1)[..., None]
    return (xp.arange(d.shape[-1]) == idx).astype(d.dtype)


def relaxed_softmax(logits, tau, g, hard=False):
    """The Gumbel-Softmax sample :math:`y = \\mathrm{softmax}((l + g)/\\tau)` for fixed noise.

    Parameters
    ----------
    logits : ndarray of shape (..., C)
    tau : float > 0
    g : ndarray broadcastable against logits, e.g. (*S, ..., C)
        Standard Gumbel noise.
    hard : bool
        Return one_hot(argmax(l + g)) instead (straight-through: see
        ``RelaxedCategorical`` for the gradient flow).

    Returns
    -------
    y : ndarray of shape broadcast(logits, g).shape

    Raises
    ------
    TypeError
        Non-float logits, or g of another dtype or device.
    ValueError
        logits not of shape (..., C) with C >= 1, or g that does not broadcast against them.
    InvalidParameterError
        tau not a float in (0, inf).
    """
    tau, _ = _check_draw_args(logits, tau, g, "relaxed_softmax")
    d, y, _ = _scores(logits, logits.dtype.type(tau), g)
    return _one_hot_argmax(d) if hard else y


def _check_draw_args(logits, tau, g, func):
    """Check the arguments of a Gumbel-Softmax draw; returns (tau, the draw's shape)."""
    tau = check_param(tau, "tau", func, low=0)
    _check_logits(logits, func, validate=False)
    check_array(g, "g", func, finite=False, dtype=logits.dtype, xp=get_xp(logits), ref="logits'")
    return tau, _broadcast_value(g, "g", logits.shape, 1, func, against="logits'")


def _softmax_vjp_to_params(v, d, tau, logits_shape):
    """From v = dL/da, a = (l + g)/tau, to dlogits (summed to logits_shape) and dtau (0-d).

    Notes
    -----
    :math:`\\partial a/\\partial l = 1/\\tau` and :math:`\\partial a/\\partial\\tau = -a/\\tau`.
    Each row of v sums to 0, so a may be replaced by the shifted d = a - max(a): the
    difference, :math:`\\sum_c v_c \\max(a)`, is zero; d stays finite and exact where a
    itself would overflow.
    """
    xp = get_xp(v)
    dlogits = _sum_to(v / tau, logits_shape)
    dtau = -(v * d).sum(dtype=np.float64) / float(tau)
    return dlogits, xp.asarray(dtau, dtype=v.dtype)


def relaxed_softmax_backward(dy, logits, tau, g, log_space=False):
    """Gradients of :math:`L = \\sum dy \\cdot y` (or :math:`\\sum dy \\cdot \\log y`) with g fixed.

    Parameters
    ----------
    dy : ndarray of shape broadcast(logits, g).shape
        Upstream gradient of the soft sample y (``log_space=False``) or of x = log y.
    logits, tau, g : as in ``relaxed_softmax``
    log_space : bool

    Returns
    -------
    dlogits : ndarray of logits' shape (summed over S)
    dtau : 0-d ndarray

    Notes
    -----
    With :math:`a = (l + g)/\\tau` and :math:`y = \\mathrm{softmax}(a)`, the VJP with respect
    to a is :math:`v = y \\odot (dy - \\sum_c dy_c y_c)` for y and
    :math:`v = dx - y \\sum_c dx_c` for :math:`x = \\log y`. Then
    :math:`dl = v/\\tau` and :math:`d\\tau = -\\sum v \\odot a / \\tau` (see
    ``_softmax_vjp_to_params`` for the shift that keeps a finite). Entries with y = 0 have
    v = 0 in the first case, so an exact one-hot at tiny tau contributes exactly 0.
    """
    func = "relaxed_softmax_backward"
    tau, full = _check_draw_args(logits, tau, g, func)
    dy = check_dout(
        dy, full, logits.dtype, get_xp(logits), func, "dy", scalar=False, source="logits and g"
    )
    t = logits.dtype.type(tau)
    d, y, _ = _scores(logits, t, g)
    if log_space:
        v = dy - y * dy.sum(axis=-1, keepdims=True)
        return _softmax_vjp_to_params(v, d, t, logits.shape)
    return _kernel_backward(dy, y, d, t, logits.shape)


def _rows(xp, a, shape):
    """``a`` broadcast to ``shape`` (..., C) as C-contiguous rows (M, C) for a kernel."""
    return xp.ascontiguousarray(xp.broadcast_to(a, shape).reshape(-1, shape[-1]))


def _kernel_backward(dy, y, d, tau, logits_shape):
    """The soft sample's VJP by the ``gumbel_softmax_backward`` kernel, on rows (M, C).

    The kernel takes the softmax argument a = (l + g)/tau; the shifted d = a - max(a) is
    passed instead (a per-row constant drops out, see ``_softmax_vjp_to_params``), so a stays
    finite at any temperature. Returns dlogits summed to ``logits_shape`` and dtau (0-d).
    """
    be = get_backend(y)
    xp = be.xp
    full = tuple(y.shape)
    dl, dtau = be.kernel("gumbel_softmax_backward")(
        _rows(xp, dy, full), _rows(xp, y, full), tau, _rows(xp, d, full)
    )
    return _sum_to(dl.reshape(full), logits_shape), xp.asarray(dtau, dtype=y.dtype)


# --- the ExpConcrete density and its backward ----------------------------------------------


def _exp_concrete_log_prob(logits, tau, x):
    """log p(x) of the ExpConcrete; returns (lp, w, xs) with w = softmax(l - tau xs).

    xs = x - max(x): the density is invariant under x -> x + c 1 (x lives on the
    C-1 dimensional set logsumexp(x) = 0), and the shift keeps tau * xs small.
    """
    C = logits.shape[-1]
    xs = x - x.max(axis=-1, keepdims=True)  # (*S, ..., C), max 0
    u = logits - tau * xs  # (*S, ..., C)
    lsm, (w, _) = log_softmax_forward(u, axis=-1)
    const = math.lgamma(C) + (C - 1) * math.log(tau)
    return lsm.sum(axis=-1) + logits.dtype.type(const), w, xs


def _check_temperature(temperature, func):
    return check_param(temperature, "temperature", func, low=0)


def _check_logits(logits, func, validate):
    check_array(logits, "logits", func, finite=validate)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{func}: expected logits to have shape (..., C) with C >= 1, got "
            f"{tuple(logits.shape)}."
        )


class ExpRelaxedCategorical(Distribution):
    """The log of a Gumbel-Softmax sample: the ExpConcrete distribution.

    Parameters
    ----------
    logits : ndarray of shape (..., C)
        Finite unnormalized log-probabilities :math:`l`.
    temperature : float
        :math:`\\tau > 0`.
    validate : bool, default False
        Also reject non-finite logits.

    Attributes
    ----------
    batch_shape : tuple
        ``logits.shape[:-1]``.
    event_shape : tuple
        ``(C,)``.

    Raises
    ------
    InvalidParameterError
        ``temperature`` not a float in (0, inf).

    Notes
    -----
    A draw is :math:`x = \\mathrm{log\\_softmax}((l + g)/\\tau)`, finite for every
    :math:`\\tau > 0`. Its density on the (C-1)-dimensional set
    :math:`\\{x : \\mathrm{logsumexp}(x) = 0\\}` (Maddison et al. 2017, App. C) is

    .. math::

        \\log p(x) = \\log (C-1)! + (C-1)\\log\\tau
                     + \\sum_k \\big[u_k - \\mathrm{logsumexp}(u)\\big],
        \\qquad u = l - \\tau x,

    a sum of log-softmax terms, with no power of a probability anywhere. Unnormalized logits
    give the same value (the normalizer cancels).
    """

    def __init__(self, logits, temperature, *, validate=False):
        func = type(self).__name__
        self.temperature = _check_temperature(temperature, func)
        _check_logits(logits, func, validate)
        super().__init__(
            logits.shape[:-1], logits.shape[-1:], logits.dtype, get_xp(logits), validate
        )
        self.logits = logits
        self.num_categories = int(logits.shape[-1])

    @property
    def params(self):
        """dict: ``{"logits": logits}`` (the temperature's gradient is returned too)."""
        return {"logits": self.logits}

    @property
    def probs(self):
        """ndarray of shape (..., C): the probabilities of the underlying categorical."""
        return log_softmax_forward(self.logits, axis=-1)[1][0]

    @property
    def _tau(self):
        return self.dtype.type(self.temperature)

    def _check_noise(self, g, func):
        self._check_arg(g, "g", func)
        return _broadcast_value(g, "g", self.logits.shape, 1, func)

    def reparameterize(self, g):
        """:math:`x = \\mathrm{log\\_softmax}((l + g)/\\tau)` for fixed noise g (*S, ..., C)."""
        self._check_noise(g, f"{type(self).__name__}.reparameterize")
        d, _, lse = _scores(self.logits, self._tau, g)
        return d - lse

    def rsample(self, rng, shape=()):
        """Reparameterized draw ``(x, g)``: x (*S, ..., C) and its Gumbel noise g."""
        shape = check_sample_shape(shape, f"{type(self).__name__}.rsample")
        g = noise.standard_gumbel(rng, shape + tuple(self.logits.shape), self.dtype, self.logits)
        return self.reparameterize(g), g

    def sample(self, rng, shape=()):
        """``rsample(rng, shape)[0]``."""
        return self.rsample(rng, shape)[0]

    def rsample_backward(self, dx, g):
        """Gradients through :math:`x = \\mathrm{log\\_softmax}((l + g)/\\tau)`, g fixed.

        Returns
        -------
        dict
            ``"logits"`` (logits' shape, summed over S) and ``"temperature"`` (0-d).

        Notes
        -----
        :math:`v = dx - y\\sum_c dx_c` with :math:`y = e^x`; :math:`dl = v/\\tau`,
        :math:`d\\tau = -\\sum v\\,a/\\tau` (``relaxed_softmax_backward``).
        """
        func = f"{type(self).__name__}.rsample_backward"
        full = self._check_noise(g, func)
        dx = self._check_dout(dx, full, func, name="dx", source="g")
        dlogits, dtau = relaxed_softmax_backward(dx, self.logits, self._tau, g, log_space=True)
        return {"logits": dlogits, "temperature": dtau}

    def _check_x(self, value, func):
        self._check_arg(value, "value", func, finite=self.validate)
        return _broadcast_value(value, "value", self.logits.shape, 1, func)

    def log_prob(self, value):
        """ExpConcrete log density of ``value`` = log y, shape (*S, *batch_shape).

        Parameters
        ----------
        value : ndarray of shape (*S, ..., C)
            Finite log-space points, e.g. from ``rsample``.
        """
        self._check_x(value, f"{type(self).__name__}.log_prob")
        return _exp_concrete_log_prob(self.logits, self._tau, value)[0]

    def log_prob_backward(self, dout, value):
        """Gradients of :math:`L = \\sum dout \\cdot \\log p(value)`.

        Returns
        -------
        dict
            ``"logits"`` (summed over S), ``"temperature"`` (0-d) and ``"value"``.

        Notes
        -----
        With :math:`w = \\mathrm{softmax}(u)`, :math:`u = l - \\tau x` and
        :math:`r = 1 - C w`: the log density is :math:`\\sum_k u_k - C\\,\\mathrm{lse}(u)` plus
        constants, so :math:`\\partial/\\partial l_k = r_k`,
        :math:`\\partial/\\partial x_k = -\\tau r_k` and
        :math:`\\partial/\\partial \\tau = (C-1)/\\tau - \\sum_k x_k r_k`. The last sum is
        taken with x shifted by its max (:math:`\\sum_k r_k = 0`, so the value is unchanged).
        """
        func = f"{type(self).__name__}.log_prob_backward"
        full = self._check_x(value, func)
        dout = self._check_dout(dout, full[:-1], func, source="value")[..., None]
        C = self.num_categories
        tau = self._tau
        _, w, xs = _exp_concrete_log_prob(self.logits, tau, value)
        r = 1 - C * w  # (*S, ..., C)
        dr = dout * r
        dtau = (dout[..., 0] * (C - 1) / tau).sum(dtype=np.float64) - (dr * xs).sum(
            dtype=np.float64
        )
        return {
            "logits": _sum_to(dr, self.logits.shape),
            "temperature": self.xp.asarray(dtau, dtype=self.dtype),
            "value": _sum_to(-tau * dr, value.shape),
        }

    def entropy(self):
        raise NotImplementedError(
            f"{type(self).__name__}.entropy: the Concrete distribution has no closed-form "
            f"entropy. Estimate it by Monte Carlo with -log_prob(rsample(...))."
        )

    def __repr__(self):
        return (
            f"{type(self).__name__}(batch_shape={self.batch_shape}, "
            f"event_shape={self.event_shape}, temperature={self.temperature}, "
            f"dtype={self.dtype})"
        )


class RelaxedCategorical(ExpRelaxedCategorical):
    """Gumbel-Softmax (Concrete) distribution on the probability simplex.

    Parameters
    ----------
    logits : ndarray of shape (..., C)
        Finite unnormalized log-probabilities :math:`l`.
    temperature : float
        :math:`\\tau > 0`. As :math:`\\tau \\to 0` samples become one-hot (the categorical);
        as :math:`\\tau \\to \\infty`, the uniform point 1/C.
    validate : bool, default False
        Also reject non-finite logits.

    Raises
    ------
    InvalidParameterError
        ``temperature`` not a float in (0, inf): "The 'temperature' parameter of
        RelaxedCategorical must be a float in (0, inf). Got 0.0 instead."

    Notes
    -----
    A draw is :math:`y = \\mathrm{softmax}((l + g)/\\tau)`, g i.i.d. standard Gumbel
    (Jang et al. 2017, eq. 1). Its density (Maddison et al. 2017, eq. 10) is

    .. math::

        p(y) = (C-1)!\\,\\tau^{C-1} \\prod_k \\frac{\\pi_k y_k^{-\\tau-1}}
               {\\big(\\sum_j \\pi_j y_j^{-\\tau}\\big)}
             = p_{\\mathrm{Exp}}(\\log y) \\prod_k y_k^{-1},

    computed as ``ExpRelaxedCategorical.log_prob(log y) - sum(log y)`` (torch's
    TransformedDistribution(ExpRelaxedCategorical, ExpTransform)): all in log space.

    Gradient flow
    -------------
    ``rsample(..., hard=False)``: y is a smooth function of (l, tau) for fixed g;
    ``rsample_backward(dy, g)`` is its exact VJP (finite-difference tested).

    ``rsample(..., hard=True)``, the straight-through Gumbel estimator (Jang et al. 2017,
    sec. 2.2): the forward value is the exact categorical sample
    one_hot(argmax(l + g)) (Gumbel-max), but the backward treats it as the soft sample:
    ``rsample_backward(dy_hard, g)`` returns the soft VJP evaluated with the gradient taken
    at the hard value, i.e. the gradient of the surrogate
    :math:`y_{hard} + y_{soft} - \\mathrm{stop}(y_{soft})`. It is biased (the hard value is
    piecewise constant in l, whose true gradient is 0 almost everywhere), with a bias that
    shrinks with tau while the variance grows. The temperature gradient follows the same path.
    """

    def reparameterize(self, g, hard=False):
        """:math:`y = \\mathrm{softmax}((l + g)/\\tau)`, or its one-hot argmax if ``hard``."""
        self._check_noise(g, "RelaxedCategorical.reparameterize")
        return relaxed_softmax(self.logits, self._tau, g, hard=hard)

    def rsample(self, rng, shape=(), hard=False):
        """Reparameterized draw ``(y, g)``: y (*S, ..., C) (one-hot if ``hard``) and its noise.

        Use the returned g with ``rsample_backward`` (see "Gradient flow").

        Notes
        -----
        One Philox key from ``rng`` (``lvmcore.noise.philox_key``) feeds the fused
        ``gumbel_softmax`` kernel of the logits' backend, on the logits broadcast to rows
        (S * batch, C); g is that key's Gumbel stream (``lvmcore.noise.philox_fill``). On the
        "numpy" backend y is ``reparameterize(g, hard)`` bit for bit; the Numba and CUDA
        kernels generate the same stream with their own vectorized log, to a few ulp.
        """
        func = "RelaxedCategorical.rsample"
        full = check_sample_shape(shape, func) + tuple(self.logits.shape)
        key = noise.philox_key(check_rng(rng, func))
        be = get_backend(self.logits)
        rows = _rows(be.xp, self.logits, full)  # (S * batch, C)
        y = be.kernel("gumbel_softmax")(rows, self._tau, *key, 0, bool(hard))
        g = noise.philox_fill("gumbel", key, full, self.dtype, self.logits)
        return y.reshape(full), g

    def sample(self, rng, shape=(), hard=False):
        """``rsample(rng, shape, hard)[0]``."""
        return self.rsample(rng, shape, hard)[0]

    def rsample_backward(self, dy, g):
        """Gradients through the soft sample y for fixed g, for soft and hard draws alike.

        Parameters
        ----------
        dy : ndarray of shape (*S, ..., C)
            :math:`\\partial L/\\partial y`; for a hard draw, the gradient at the one-hot
            value, passed straight through to the soft sample.
        g : ndarray of shape (*S, ..., C)
            The noise ``rsample`` returned.

        Returns
        -------
        dict
            ``"logits"`` (summed over S) and ``"temperature"`` (0-d).

        Notes
        -----
        :math:`v = y \\odot (dy - \\sum_c dy_c y_c)`, :math:`dl = v/\\tau`,
        :math:`d\\tau = -\\sum v\\,a/\\tau` with a the shifted scores (finite at any tau).
        """
        func = "RelaxedCategorical.rsample_backward"
        full = self._check_noise(g, func)
        dy = self._check_dout(dy, full, func, name="dy", source="g")
        dlogits, dtau = relaxed_softmax_backward(dy, self.logits, self._tau, g)  # the kernel's
        return {"logits": dlogits, "temperature": dtau}

    def _log_value(self, value, log_space, func):
        self._check_x(value, func)
        if log_space:
            return value
        bad = ~(value > 0)
        if bool(bad.any()):
            raise ValueError(
                f"{func}: expected value to lie in the open simplex (every entry > 0), got "
                f"{int(bad.sum())} entries <= 0 or NaN. At low temperature y underflows to an "
                f"exact one-hot; pass log y with log_space=True (ExpRelaxedCategorical.rsample "
                f"draws it, finite at any temperature)."
            )
        return self.xp.log(value)

    def log_prob(self, value, log_space=False):
        """Concrete log density, shape (*S, *batch_shape).

        Parameters
        ----------
        value : ndarray of shape (*S, ..., C)
            A point y of the open simplex, or ``log y`` when ``log_space`` is True (finite
            at any temperature; e.g. ``ExpRelaxedCategorical(...).rsample``).
        log_space : bool, default False
        """
        x = self._log_value(value, log_space, "RelaxedCategorical.log_prob")
        return _exp_concrete_log_prob(self.logits, self._tau, x)[0] - x.sum(axis=-1)

    def log_prob_backward(self, dout, value, log_space=False):
        """Gradients of :math:`L = \\sum dout \\cdot \\log p(value)`.

        Returns
        -------
        dict
            ``"logits"``, ``"temperature"`` (0-d) and ``"value"`` (with respect to y, or to
            log y when ``log_space``).

        Notes
        -----
        :math:`\\log p(y) = \\log p_{\\mathrm{Exp}}(x) - \\sum_k x_k` with :math:`x = \\log y`:
        the logits and temperature gradients are the ExpConcrete ones; the value gradient is
        :math:`\\partial/\\partial x_k = -\\tau r_k - 1`, times :math:`1/y_k` for y.
        """
        func = "RelaxedCategorical.log_prob_backward"
        x = self._log_value(value, log_space, func)
        full = _broadcast_value(x, "value", self.logits.shape, 1, func)
        dout = self._check_dout(dout, full[:-1], func, source="value")
        grads = ExpRelaxedCategorical.log_prob_backward(self, dout, x)
        dx = grads["value"] - _sum_to(self.xp.broadcast_to(dout[..., None], full), x.shape)
        grads["value"] = dx if log_space else dx / value
        return grads
