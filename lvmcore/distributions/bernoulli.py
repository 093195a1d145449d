"""Bernoulli distribution parameterized by logits, exact for logits of any size.

All quantities are written with softplus and sigmoid of +-logits (lvmcore.ops), so
they stay finite and keep full relative accuracy for logits as large as +-1e30 in
float32 and float64: e.g. ``log_prob(x=1)`` at ``l = -1e4`` is exactly ``-1e4``.
"""

from .._validation import check_array, check_param, check_sample_shape, get_xp
from ..ops.activations import _sigmoid as sigmoid
from ..ops.activations import _softplus as softplus
from .base import Distribution, _broadcast_value, _event_axes, _sum_to, _uniform

__all__ = ["Bernoulli"]


class Bernoulli(Distribution):
    """Independent Bernoulli variables with logits :math:`l`, :math:`p = \\sigma(l)`.

    Parameters
    ----------
    logits : ndarray of shape (...,)
        Log-odds :math:`l = \\log p - \\log(1 - p)`, float32 or float64.
    event_ndim : int, default 0
        How many trailing axes of ``logits`` form one event. ``0`` (torch's
        Bernoulli): ``log_prob`` and ``entropy`` are elementwise, shape
        ``logits.shape``. ``1``: they are summed over the last axis, shape
        ``logits.shape[:-1]`` -- the per-row log-likelihood of a VAE decoder over D
        pixels (torch's ``Independent(Bernoulli(logits), 1)``).
    validate : bool, default False
        Also reject NaN/Inf logits, and values outside [0, 1] in ``log_prob``.

    Attributes
    ----------
    batch_shape : tuple
        ``logits.shape[:logits.ndim - event_ndim]``.
    event_shape : tuple
        The last ``event_ndim`` axes of ``logits.shape``.

    Raises
    ------
    TypeError
        Non-array or non-float ``logits``.
    InvalidParameterError
        ``event_ndim`` not an int in [0, logits.ndim].
    ValueError
        With ``validate``: non-finite logits.

    Notes
    -----
    .. math::

        \\log p(x) = x\\,l - \\mathrm{softplus}(l)
                   = x \\log\\sigma(l) + (1 - x)\\log\\sigma(-l),

    exact for any finite l because softplus never overflows. For data in [0, 1]
    that is not binary (grey-scale pixels) the same expression is the negative
    binary cross-entropy, which is what VAE decoders usually optimize; the
    Bernoulli support is {0, 1}.
    """

    def __init__(self, logits, *, event_ndim=0, validate=False):
        func = "Bernoulli"
        check_array(logits, "logits", func, finite=validate)
        event_ndim = check_param(
            event_ndim,
            "event_ndim",
            func,
            kind="int",
            low=0,
            high=logits.ndim,
            low_inclusive=True,
            high_inclusive=True,
        )
        split = logits.ndim - event_ndim
        super().__init__(
            logits.shape[:split], logits.shape[split:], logits.dtype, get_xp(logits), validate
        )
        self.logits = logits
        self.event_ndim = event_ndim

    @property
    def params(self):
        """dict: ``{"logits": logits}``."""
        return {"logits": self.logits}

    @property
    def probs(self):
        """ndarray of ``logits``' shape: :math:`\\sigma(l)`."""
        return sigmoid(self.logits)

    @property
    def mean(self):
        """ndarray of ``logits``' shape: :math:`\\sigma(l)`."""
        return self.probs

    def _sum_event(self, t):
        return t.sum(axis=_event_axes(self.event_ndim)) if self.event_ndim else t

    def _expand_event(self, dout):
        return dout.reshape(tuple(dout.shape) + (1,) * self.event_ndim)

    def _check_value(self, value, func, finite=False):
        self._check_arg(value, "value", func, finite=finite)
        full = _broadcast_value(value, "value", self.logits.shape, self.event_ndim, func)
        if self.validate:
            bad = (value < 0) | (value > 1)
            if bool(bad.any()):
                raise ValueError(
                    f"{func}: expected value to lie in [0, 1] (the Bernoulli support is "
                    f"{{0, 1}}), got {int(bad.sum())} entries outside, e.g. "
                    f"{float(value[bad].ravel()[0])!r}. Binarize or rescale the data."
                )
        return full

    def sample(self, rng, shape=()):
        """Draws in {0, 1} as floats of ``logits``' dtype.

        Parameters
        ----------
        rng : numpy.random.Generator
        shape : tuple of int, default ()
            Sample shape S.

        Returns
        -------
        ndarray of shape (*S, *logits.shape)
            ``1`` where :math:`u < \\sigma(l)` for :math:`u \\sim U[0, 1)`.
        """
        func = "Bernoulli.sample"
        shape = check_sample_shape(shape, func)
        u = _uniform(rng, shape + tuple(self.logits.shape), self.dtype, self.xp, func)
        return (u < self.probs).astype(self.dtype)

    def log_prob(self, value):
        """Log-probability of ``value``, summed over the ``event_ndim`` last axes.

        Parameters
        ----------
        value : ndarray of shape (*S, *logits.shape)
            Data in {0, 1} (or [0, 1] for the cross-entropy); broadcasts against
            ``logits``.

        Returns
        -------
        ndarray of shape (*S, *batch_shape)
            :math:`\\sum_{event} [x\\,l - \\mathrm{softplus}(l)]`.
        """
        self._check_value(value, "Bernoulli.log_prob", finite=self.validate)
        # x l - softplus(l): no log of a probability, so nothing under- or overflows;
        # at x = 1, l = -1e4 it is -1e4 - 0 exactly.
        return self._sum_event(value * self.logits - softplus(self.logits))

    def log_prob_backward(self, dout, value):
        """Gradients of :math:`L = \\sum dout \\cdot \\log p(value)`.

        Parameters
        ----------
        dout : ndarray of shape (*S, *batch_shape) or float
        value : ndarray of shape (*S, *logits.shape)
            The value passed to ``log_prob``.

        Returns
        -------
        dict
            ``"logits"`` (``logits``' shape, summed over S):
            :math:`dout\\,(x - \\sigma(l))`; ``"value"`` (``value``'s shape):
            :math:`dout\\,l`.

        Notes
        -----
        :math:`\\partial/\\partial l\\,[x l - \\mathrm{softplus}(l)] = x - \\sigma(l)`, evaluated
        as :math:`x\\,\\sigma(-l) - (1 - x)\\,\\sigma(l)` (equal for every x), which has no
        cancellation: at x = 1 it is :math:`\\sigma(-l)` to full relative accuracy even
        when :math:`\\sigma(l)` rounds to 1. :math:`\\partial/\\partial x = l`.
        """
        func = "Bernoulli.log_prob_backward"
        full = self._check_value(value, func)
        out_shape = full[: len(full) - self.event_ndim]
        dout = self._expand_event(self._check_dout(dout, out_shape, func, source="value"))
        lg = self.logits
        resid = value * sigmoid(-lg) - (1 - value) * sigmoid(lg)  # x - sigma(l), (*S, ...)
        return {"logits": _sum_to(dout * resid, lg.shape), "value": _sum_to(dout * lg, value.shape)}

    def entropy(self):
        """Entropy summed over the ``event_ndim`` last axes.

        Returns
        -------
        ndarray of shape batch_shape
            :math:`\\sigma(l)\\,\\mathrm{softplus}(-l) + \\sigma(-l)\\,\\mathrm{softplus}(l)`.

        Notes
        -----
        :math:`H = -p\\log p - (1-p)\\log(1-p)` with :math:`-\\log p = \\mathrm{softplus}(-l)`
        and :math:`-\\log(1-p) = \\mathrm{softplus}(l)`. Both terms are non-negative, so
        there is no cancellation (the equivalent :math:`\\mathrm{softplus}(l) - l\\sigma(l)`
        loses all digits for l > 30), and at :math:`l = \\pm 10^{30}` it is
        :math:`1 \\cdot 0 + 0 \\cdot 10^{30} = 0`.
        """
        lg = self.logits
        return self._sum_event(sigmoid(lg) * softplus(-lg) + sigmoid(-lg) * softplus(lg))

    def entropy_backward(self, dout):
        """Gradient of :math:`L = \\sum dout \\cdot H`.

        Parameters
        ----------
        dout : ndarray of shape batch_shape or float

        Returns
        -------
        dict
            ``{"logits": -dout * l * sigma(l) * sigma(-l)}``.

        Notes
        -----
        From :math:`H = \\mathrm{softplus}(l) - l\\sigma(l)`:
        :math:`H' = \\sigma(l) - \\sigma(l) - l\\sigma(l)\\sigma(-l)`. The product
        :math:`\\sigma(l)\\sigma(-l)` is formed first, so huge logits give
        :math:`0 \\cdot l = 0` rather than an overflow.
        """
        func = "Bernoulli.entropy_backward"
        dout = self._expand_event(self._check_dout(dout, self.batch_shape, func))
        lg = self.logits
        s = sigmoid(lg) * sigmoid(-lg)  # p (1 - p), underflows to 0 for |l| > ~750
        return {"logits": -(dout * (s * lg))}
