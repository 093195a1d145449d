"""The Gumbel distribution and Gumbel-max sampling of a categorical.

``Gumbel(loc, scale)`` has the usual torch.distributions surface (``sample``, ``rsample``,
``log_prob``, ``cdf``, ``entropy`` and the backward of each); ``standard_gumbel`` draws the
noise g the relaxed categoricals and the categorical VAE take as an explicit argument, and
``gumbel_max`` turns logits and such noise into an exact categorical sample.

Noise. A standard Gumbel is :math:`g = -\\log E` with :math:`E = -\\log U \\sim \\mathrm{Exp}(1)`;
it is the engine's Philox stream (``lvmcore.noise.standard_gumbel``: one draw of ``rng`` keys
it, element i of the C-ordered array is element i of the stream, made on the array's device),
whose uniforms lie strictly inside (0, 1), so g is always finite.
"""

import math

import numpy as np

from .. import noise
from .._validation import (
    check_array,
    check_float_dtype,
    check_rng,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_sample_shape,
    check_xp,
    get_xp,
)
from ..exceptions import InvalidParameterError
from .base import Distribution, _broadcast_value, _sum_to

__all__ = ["Gumbel", "standard_gumbel", "gumbel_max", "gumbel_max_sample", "EULER_GAMMA"]

EULER_GAMMA = 0.5772156649015329


def standard_gumbel(rng, shape, dtype=np.float64, xp=None):
    """Standard Gumbel noise, :math:`g = -\\log E`, :math:`E \\sim \\mathrm{Exp}(1)`.

    Parameters
    ----------
    rng : numpy.random.Generator (or cupy.random.Generator, which draws with itself)
    shape : tuple of int
    dtype : float32 or float64
    xp : module, optional
        numpy (default) or cupy: where the noise is made (the same numbers on either).

    Returns
    -------
    g : ndarray of ``shape`` and ``dtype``
        Finite (see the module notes): ``lvmcore.noise.standard_gumbel`` checked as the
        distributions check their arguments.
    """
    func = "standard_gumbel"
    rng = check_rng(rng, func)
    shape = check_sample_shape(shape, func)
    dt = check_float_dtype(dtype, func)
    xp = check_xp(xp, func)
    if not isinstance(rng, np.random.Generator):  # a cupy.random.Generator draws itself
        e = rng.standard_exponential(shape, dtype=dt)
        return -xp.log(xp.maximum(e, np.finfo(dt).tiny))
    return noise.standard_gumbel(rng, shape, dt, xp.empty(0, dt))


def gumbel_max(logits, g):
    """Index of the largest ``logits + g`` along the last axis (lowest index on ties).

    Parameters
    ----------
    logits : ndarray of shape (..., C)
        Unnormalized log-probabilities; -inf masks a category.
    g : ndarray broadcastable against logits, e.g. (*S, ..., C)
        Standard Gumbel noise.

    Returns
    -------
    ndarray of int64, shape ``broadcast(logits, g).shape[:-1]``

    Notes
    -----
    The Gumbel-max trick: for i.i.d. standard Gumbels :math:`g_c`,
    :math:`P(\\arg\\max_c (l_c + g_c) = k) = e^{l_k} / \\sum_c e^{l_c}`, exactly. (The max of
    Gumbels with locations :math:`l_c` is a Gumbel with location
    :math:`\\log\\sum_c e^{l_c}`, and the argmax is independent of it.) A -inf logit gives
    -inf + g = -inf and is never chosen while the row has a finite entry.
    """
    func = "gumbel_max"
    _check_logits_and_noise(logits, g, func)
    xp = get_xp(logits, g)
    return xp.argmax(logits + g, axis=-1).astype(np.int64)


def _check_logits_and_noise(logits, g, func):
    """logits (..., C) and noise broadcastable against them, of one dtype and device.

    NaN is refused in both (an argmax over NaN returns an index with no meaning); -inf
    logits are allowed (they mask a category).
    """
    check_array(logits, "logits", func, allow_inf=True)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{func}: expected logits to have shape (..., C) with C >= 1, got "
            f"{tuple(logits.shape)}."
        )
    check_array(g, "g", func, allow_inf=True, dtype=logits.dtype, xp=get_xp(logits), ref="logits'")
    _broadcast_value(g, "g", logits.shape, 1, func, against="logits'")


def gumbel_max_sample(rng, logits, shape=()):
    """An exact sample of ``Categorical(logits)`` by the Gumbel-max trick.

    Parameters
    ----------
    rng : numpy.random.Generator
    logits : ndarray of shape (..., C)
    shape : tuple of int, default ()
        Sample shape S.

    Returns
    -------
    index : ndarray of int64, shape (*S, ...)
    g : ndarray of shape (*S, ..., C)
        The Gumbel noise that produced it (``gumbel_max(logits, g) == index``).
    """
    func = "gumbel_max_sample"
    rng = check_rng(rng, func)
    check_array(logits, "logits", func, allow_inf=True)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"{func}: expected logits to have shape (..., C) with C >= 1, got "
            f"{tuple(logits.shape)}."
        )
    shape = check_sample_shape(shape, func)
    g = standard_gumbel(rng, shape + tuple(logits.shape), logits.dtype, get_xp(logits))
    return gumbel_max(logits, g), g


class Gumbel(Distribution):
    """Gumbel (type-I extreme value) distribution with location and scale.

    Parameters
    ----------
    loc : ndarray of shape (...)
        Location :math:`\\mu`.
    scale : ndarray of the same shape
        Scale :math:`\\beta > 0`.
    validate : bool, default False
        Also reject non-finite parameters and non-positive scales.

    Attributes
    ----------
    batch_shape : tuple
        ``loc.shape``.
    event_shape : tuple
        ``()``.

    Notes
    -----
    With :math:`z = (x - \\mu)/\\beta`:

    .. math::

        F(x) = \\exp(-e^{-z}), \\qquad
        \\log p(x) = -\\log\\beta - z - e^{-z}, \\qquad
        H = \\log\\beta + \\gamma + 1,

    mean :math:`\\mu + \\gamma\\beta` (:math:`\\gamma` = Euler's constant). Samples are
    reparameterized as :math:`x = \\mu + \\beta g` with g standard Gumbel.

    References
    ----------
    Gumbel, "Statistical Theory of Extreme Values and Some Practical Applications", 1954.
    """

    def __init__(self, loc, scale, *, validate=False):
        func = "Gumbel"
        check_array(loc, "loc", func, finite=validate)
        check_array(scale, "scale", func, finite=validate)
        check_same_device([loc, scale], ["loc", "scale"], func)
        check_same_dtype([loc, scale], ["loc", "scale"], func)
        check_same_shape(loc, scale, "loc", "scale", func)
        if validate and bool((scale <= 0).any()):
            raise InvalidParameterError(
                f"The 'scale' parameter of {func} must be an array of floats in (0, inf). Got "
                f"{int((scale <= 0).sum())} entries <= 0, e.g. "
                f"{float(scale[scale <= 0].ravel()[0])!r} instead."
            )
        super().__init__(loc.shape, (), loc.dtype, get_xp(loc), validate)
        self.loc = loc
        self.scale = scale

    @property
    def params(self):
        """dict: ``{"loc": loc, "scale": scale}``."""
        return {"loc": self.loc, "scale": self.scale}

    @property
    def mean(self):
        """ndarray: :math:`\\mu + \\gamma\\beta`."""
        return self.loc + self.dtype.type(EULER_GAMMA) * self.scale

    @property
    def variance(self):
        """ndarray: :math:`\\pi^2\\beta^2/6`."""
        return self.dtype.type(math.pi**2 / 6) * self.scale * self.scale

    def reparameterize(self, g):
        """:math:`x = \\mu + \\beta g` for fixed standard-Gumbel noise g (broadcasts)."""
        func = "Gumbel.reparameterize"
        self._check_arg(g, "g", func)
        _broadcast_value(g, "g", self.loc.shape, 0, func)
        return self.loc + self.scale * g

    def rsample(self, rng, shape=()):
        """Reparameterized sample and its noise.

        Returns
        -------
        x : ndarray of shape (*S, ...)
            :math:`\\mu + \\beta g`.
        g : ndarray of shape (*S, ...)
            The standard Gumbel noise; pass it to ``rsample_backward``.
        """
        shape = check_sample_shape(shape, "Gumbel.rsample")
        g = standard_gumbel(rng, shape + tuple(self.loc.shape), self.dtype, self.xp)
        return self.loc + self.scale * g, g

    def sample(self, rng, shape=()):
        """Sample of shape ``shape + loc.shape`` (``rsample`` without the noise)."""
        return self.rsample(rng, shape)[0]

    def rsample_backward(self, dx, g):
        """Gradients through :math:`x = \\mu + \\beta g` with g fixed.

        Returns
        -------
        dict
            ``"loc"``: :math:`\\sum_S dx`; ``"scale"``: :math:`\\sum_S dx\\,g`.
        """
        func = "Gumbel.rsample_backward"
        self._check_arg(g, "g", func)
        full = _broadcast_value(g, "g", self.loc.shape, 0, func)
        dx = self._check_dout(dx, full, func, name="dx", source="g")
        return {"loc": _sum_to(dx, self.loc.shape), "scale": _sum_to(dx * g, self.loc.shape)}

    def _z(self, value, func):
        self._check_arg(value, "value", func, finite=self.validate)
        full = _broadcast_value(value, "value", self.loc.shape, 0, func)
        return (value - self.loc) / self.scale, full

    def log_prob(self, value):
        """:math:`-\\log\\beta - z - e^{-z}` elementwise, shape broadcast(value, loc).

        Far below the mode (:math:`z < -\\log` of the largest float) :math:`e^{-z}`
        overflows and the result is -inf, which is the correctly rounded value.
        """
        z, _ = self._z(value, "Gumbel.log_prob")
        with np.errstate(over="ignore"):
            return -(self.xp.log(self.scale) + z + self.xp.exp(-z))

    def log_prob_backward(self, dout, value):
        """Gradients of :math:`L = \\sum dout \\cdot \\log p(value)`.

        Returns
        -------
        dict
            ``"loc"``, ``"scale"`` (summed to their shape) and ``"value"``.

        Notes
        -----
        With :math:`\\partial \\log p/\\partial z = -(1 - e^{-z})` and
        :math:`z = (x - \\mu)/\\beta`:
        :math:`\\partial/\\partial\\mu = (1 - e^{-z})/\\beta`,
        :math:`\\partial/\\partial x = -(1 - e^{-z})/\\beta`,
        :math:`\\partial/\\partial\\beta = (z(1 - e^{-z}) - 1)/\\beta`;
        :math:`1 - e^{-z}` is evaluated as ``-expm1(-z)`` (no cancellation near the mode).
        """
        func = "Gumbel.log_prob_backward"
        z, full = self._z(value, func)
        dout = self._check_dout(dout, full, func, source="value")
        with np.errstate(over="ignore"):
            t = -self.xp.expm1(-z)  # 1 - e^{-z}
        inv = 1 / self.scale
        return {
            "loc": _sum_to(dout * t * inv, self.loc.shape),
            "scale": _sum_to(dout * (z * t - 1) * inv, self.scale.shape),
            "value": _sum_to(-dout * t * inv, value.shape),
        }

    def cdf(self, value):
        """:math:`F(x) = \\exp(-e^{-z})`, shape broadcast(value, loc)."""
        z, _ = self._z(value, "Gumbel.cdf")
        with np.errstate(over="ignore"):
            return self.xp.exp(-self.xp.exp(-z))

    def log_cdf(self, value):
        """:math:`\\log F(x) = -e^{-z}`, exact where F underflows."""
        z, _ = self._z(value, "Gumbel.log_cdf")
        with np.errstate(over="ignore"):
            return -self.xp.exp(-z)

    def icdf(self, u):
        """Quantile :math:`\\mu - \\beta\\log(-\\log u)` for u in (0, 1)."""
        func = "Gumbel.icdf"
        self._check_arg(u, "u", func)
        _broadcast_value(u, "u", self.loc.shape, 0, func)
        return self.loc - self.scale * self.xp.log(-self.xp.log(u))

    def entropy(self):
        """:math:`\\log\\beta + \\gamma + 1`, shape batch_shape."""
        return self.xp.log(self.scale) + self.dtype.type(EULER_GAMMA + 1)

    def entropy_backward(self, dout):
        """``{"loc": 0, "scale": dout / scale}``."""
        func = "Gumbel.entropy_backward"
        dout = self._check_dout(dout, self.batch_shape, func)
        return {"loc": self.xp.zeros_like(self.loc), "scale": dout / self.scale}
