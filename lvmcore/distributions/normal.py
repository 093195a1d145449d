"""Diagonal Gaussians: ``DiagNormal`` (mean and log-variance) and ``StandardNormal``.

This module also holds the ``Distribution`` base class and the private helpers the
other distribution modules share (bernoulli.py, categorical.py, kl.py import them
from here; normal.py imports none of its siblings, so there is no import cycle).

Conventions, shared by every distribution (torch.distributions names):

- The parameters have shape ``batch_shape + event_shape``. ``log_prob`` and
  ``entropy`` sum over the event axes and return ``batch_shape`` (broadcast with any
  leading sample dimensions of the value).
- Randomness enters only through an explicit ``rng``: a ``numpy.random.Generator``
  (or a ``cupy.random.Generator`` for CuPy parameters, which draws on the device; a
  NumPy Generator with CuPy parameters draws on the host and the noise is copied
  over, which is slower but bit-identical across devices). No global state.
- Every forward method has a hand-derived backward, ``<method>_backward(dout, ...)``,
  returning a dict of gradients keyed like ``params`` (plus ``"value"`` where the
  argument is differentiable). Gradients are fresh arrays of each parameter's
  shape (summed over broadcast sample dimensions); the caller accumulates them.
- Nothing is cached on ``self``: each backward recomputes the cheap terms it needs.
- Construction checks array type, dtype and shapes only (cheap); ``validate=True``
  adds a scan of the values (finiteness, support).
"""

import math
import numbers

import numpy as np

from .._validation import (
    _array_library,
    check_array,
    check_param,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    get_xp,
)
from ..exceptions import InvalidParameterError

__all__ = ["Distribution", "DiagNormal", "StandardNormal"]

_LOG_2PI = math.log(2.0 * math.pi)


# --- helpers shared by the distribution modules -------------------------------------------


def _check_rng(rng, func):
    """Return ``rng`` if it is a NumPy (or CuPy) Generator; TypeError otherwise."""
    if isinstance(rng, np.random.Generator):
        return rng
    if type(rng).__module__.split(".")[0] == "cupy" and hasattr(rng, "standard_normal"):
        return rng
    raise TypeError(
        f"{func}: expected rng to be a numpy.random.Generator, got {type(rng).__name__}. "
        f"Create one with numpy.random.default_rng(seed) and pass it explicitly; lvmcore "
        f"never draws from global random state."
    )


def _sample_shape(shape, func):
    """Normalise a sample shape (int or tuple of non-negative ints) to a tuple."""
    items = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        items = tuple(items)
    except TypeError:
        items = None
    if items is None or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in items
    ):
        raise InvalidParameterError(
            f"The 'shape' parameter of {func} must be a tuple of non-negative ints. "
            f"Got {shape!r} instead."
        )
    return tuple(int(s) for s in items)


def _standard_normal(rng, size, dtype, xp, func):
    """N(0, 1) noise of shape ``size`` and ``dtype`` on the device of ``xp``."""
    rng = _check_rng(rng, func)
    return xp.asarray(rng.standard_normal(size, dtype=dtype))


def _uniform(rng, size, dtype, xp, func):
    """U[0, 1) noise of shape ``size`` and ``dtype`` on the device of ``xp``."""
    rng = _check_rng(rng, func)
    return xp.asarray(rng.random(size, dtype=dtype))


def _sum_to(g, shape):
    """Sum ``g`` over the axes that broadcasting added to an array of ``shape``.

    The reverse of broadcasting: leading axes are summed away and axes where
    ``shape`` has size 1 are summed with keepdims. Always returns a new array, so a
    gradient never aliases the caller's upstream gradient.
    """
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if lead <= 0 and not axes:
        g = g.copy()
    return g


def _event_axes(k):
    """The last ``k`` axes, as a tuple for ``sum(axis=...)``."""
    return tuple(range(-k, 0))


def _check_device(x, name, xp, func):
    """TypeError when ``x`` lives on another device than the distribution (no copies)."""
    if get_xp(x) is not xp:
        raise TypeError(
            f"{func}: expected {name} on the same device as the distribution's parameters "
            f"({xp.__name__}), got a {_array_library(x)} array. Move it explicitly with "
            f"cupy.asarray(...) or cupy.asnumpy(...); lvmcore never copies implicitly."
        )


def _check_float_arg(x, name, dtype, xp, func, *, finite=False):
    """A float array on the distribution's device with the distribution's dtype."""
    check_array(x, name, func, finite=finite)
    _check_device(x, name, xp, func)
    if x.dtype != dtype:
        raise TypeError(
            f"{func}: expected {name} to have dtype {dtype} (the distribution's), got "
            f"{x.dtype}. Cast it with {name}.astype(numpy.{dtype})."
        )
    return x


def _broadcast_value(value, name, param_shape, event_ndim, func):
    """Broadcast shape of ``value`` against ``param_shape``; its event axes must match."""
    event = tuple(param_shape[len(param_shape) - event_ndim :])
    vshape = tuple(value.shape)
    ok = vshape[len(vshape) - event_ndim :] == event if event_ndim else True
    full = None
    if ok and value.ndim >= event_ndim:
        try:
            full = np.broadcast_shapes(vshape, tuple(param_shape))
        except ValueError:
            full = None
    if full is None:
        want = "(..., " + ", ".join(str(s) for s in param_shape) + ")"
        raise ValueError(
            f"{func}: expected {name} to broadcast against the parameters' shape "
            f"{tuple(param_shape)} as {want}, got {name} of shape {vshape}."
        )
    return full


def _check_dout(dout, shape, dtype, xp, func, name="dout"):
    """Upstream gradient broadcast to the forward output's ``shape``.

    A Python number is accepted and broadcast (``dout=1.0`` differentiates the sum).
    """
    shape = tuple(shape)
    if isinstance(dout, numbers.Real) and not isinstance(dout, bool):
        return xp.full(shape, dout, dtype=dtype)
    _check_float_arg(dout, name, dtype, xp, func)
    try:
        ok = np.broadcast_shapes(tuple(dout.shape), shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{func}: expected {name} to have the forward output's shape {shape}, got "
            f"{tuple(dout.shape)}."
        )
    return xp.broadcast_to(dout, shape)


def _check_float_dtype(dtype, func):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(
            f"{func}: expected dtype to be float32 or float64, got {dt}. "
            f"Pass dtype=numpy.float32 (speed) or numpy.float64 (checks)."
        )
    return dt


def _check_xp(xp, func):
    if xp is None:
        return np
    if getattr(xp, "__name__", None) not in ("numpy", "cupy"):
        raise TypeError(f"{func}: expected xp to be the numpy or cupy module, got {xp!r}.")
    return xp


class Distribution:
    """Base class: shapes, dtype and array module shared by every distribution.

    Parameters
    ----------
    batch_shape, event_shape : tuple of int
        Independent (batch) axes, then the axes one draw spans (summed by
        ``log_prob`` and ``entropy``).
    dtype : numpy.dtype
        float32 or float64; every output has this dtype.
    xp : module
        numpy or cupy, the module of the parameters.
    validate : bool
        Whether value scans (finiteness, support) run at construction and in
        ``log_prob``.
    """

    def __init__(self, batch_shape, event_shape, dtype, xp, validate=False):
        self._batch_shape = tuple(batch_shape)
        self._event_shape = tuple(event_shape)
        self._dtype = np.dtype(dtype)
        self._xp = xp
        self.validate = bool(validate)

    @property
    def batch_shape(self):
        """tuple of int: the independent axes of the parameters."""
        return self._batch_shape

    @property
    def event_shape(self):
        """tuple of int: the axes that one draw spans (reduced by log_prob/entropy)."""
        return self._event_shape

    @property
    def dtype(self):
        """numpy.dtype: float32 or float64."""
        return self._dtype

    @property
    def xp(self):
        """module: numpy or cupy, the array module of the parameters."""
        return self._xp

    @property
    def params(self):
        """dict of str -> ndarray: the differentiable parameters (keys of the gradients)."""
        return {}

    def rsample(self, rng, shape=()):
        """Reparameterized sample; discrete distributions have none."""
        raise NotImplementedError(
            f"{type(self).__name__}.rsample: {type(self).__name__} has no reparameterized "
            f"sampler (its samples are discrete). Use sample(rng, shape) with a "
            f"score-function estimator, or a relaxed (Gumbel-softmax) distribution."
        )

    def __repr__(self):
        return (
            f"{type(self).__name__}(batch_shape={self.batch_shape}, "
            f"event_shape={self.event_shape}, dtype={self.dtype})"
        )


# --- Gaussians ----------------------------------------------------------------------------


class DiagNormal(Distribution):
    """Gaussian with diagonal covariance, parameterized by mean and log-variance.

    The event is the last axis (Z latent dimensions); the leading axes are batch.

    Parameters
    ----------
    loc : ndarray of shape (..., Z)
        Mean :math:`\\mu`.
    logvar : ndarray of shape (..., Z)
        Log-variance :math:`\\log \\sigma^2` (the VAE encoder's second head). Same
        shape and dtype as ``loc``.
    validate : bool, default False
        Also reject NaN/Inf in ``loc``/``logvar`` (and in values passed to
        ``log_prob``). Off by default: the default checks are shape and dtype only.

    Attributes
    ----------
    batch_shape : tuple
        ``loc.shape[:-1]``.
    event_shape : tuple
        ``(Z,)``.

    Raises
    ------
    TypeError
        Non-array or non-float ``loc``/``logvar``, different dtypes or devices.
    ValueError
        ``loc`` and ``logvar`` of different shapes, 0-d parameters, or (with
        ``validate``) non-finite values.

    Notes
    -----
    .. math::

        \\log p(z) = -\\tfrac12 \\sum_{j=1}^{Z} \\Big[(z_j - \\mu_j)^2 e^{-\\ell_j}
                     + \\ell_j + \\log 2\\pi\\Big], \\qquad \\ell = \\log\\sigma^2 .

    Parameterizing by :math:`\\ell` keeps :math:`\\sigma = e^{\\ell/2} > 0` without a
    constraint and makes the entropy and the KL to N(0, I) linear or convex in
    :math:`\\ell`.

    References
    ----------
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, Sec. 2.4 (the
    reparameterization z = mu + sigma * eps) and Appendix B (Gaussian KL).
    """

    def __init__(self, loc, logvar, *, validate=False):
        func = "DiagNormal"
        check_array(loc, "loc", func, finite=validate)
        check_array(logvar, "logvar", func, finite=validate)
        check_same_device([loc, logvar], ["loc", "logvar"], func)
        check_same_dtype([loc, logvar], ["loc", "logvar"], func)
        check_same_shape(loc, logvar, "loc", "logvar", func)
        if loc.ndim < 1:
            raise ValueError(
                f"{func}: expected loc to have at least 1 dimension (the last is the event "
                f"axis Z), got a 0-d array. Reshape it to (1,) for a scalar Gaussian."
            )
        super().__init__(loc.shape[:-1], loc.shape[-1:], loc.dtype, get_xp(loc), validate)
        self.loc = loc
        self.logvar = logvar

    @property
    def params(self):
        """dict: ``{"loc": loc, "logvar": logvar}``."""
        return {"loc": self.loc, "logvar": self.logvar}

    @property
    def mean(self):
        """ndarray of shape (..., Z): the mean, ``loc``."""
        return self.loc

    @property
    def scale(self):
        """ndarray of shape (..., Z): standard deviation :math:`e^{\\ell/2}`."""
        return self.xp.exp(0.5 * self.logvar)

    @property
    def variance(self):
        """ndarray of shape (..., Z): :math:`e^{\\ell}`."""
        return self.xp.exp(self.logvar)

    # sampling ------------------------------------------------------------------------------

    def reparameterize(self, eps):
        """Deterministic reparameterization of fixed noise.

        Parameters
        ----------
        eps : ndarray of shape (*S, ..., Z)
            Standard-normal noise; broadcasts against ``loc``.

        Returns
        -------
        z : ndarray of shape (*S, ..., Z)
            :math:`z = \\mu + e^{\\ell/2} \\odot \\varepsilon`.
        """
        func = "DiagNormal.reparameterize"
        _check_float_arg(eps, "eps", self.dtype, self.xp, func)
        _broadcast_value(eps, "eps", self.loc.shape, 1, func)
        return self.loc + self.scale * eps

    def rsample(self, rng, shape=()):
        """Reparameterized sample and the noise that produced it.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of the noise (see the module notes for CuPy).
        shape : tuple of int, default ()
            Sample shape S prepended to ``loc.shape``.

        Returns
        -------
        z : ndarray of shape (*S, ..., Z)
            :math:`\\mu + e^{\\ell/2} \\odot \\varepsilon`.
        eps : ndarray of shape (*S, ..., Z)
            The noise :math:`\\varepsilon \\sim N(0, I)`; pass it to ``rsample_backward``.
        """
        func = "DiagNormal.rsample"
        shape = _sample_shape(shape, func)
        eps = _standard_normal(rng, shape + tuple(self.loc.shape), self.dtype, self.xp, func)
        return self.loc + self.scale * eps, eps

    def sample(self, rng, shape=()):
        """Sample of shape ``shape + loc.shape`` (``rsample`` without the noise)."""
        return self.rsample(rng, shape)[0]

    def rsample_backward(self, dz, eps):
        """Gradients of a loss through ``z = rsample(...)`` with the noise held fixed.

        Parameters
        ----------
        dz : ndarray of shape (*S, ..., Z)
            :math:`\\partial L / \\partial z`.
        eps : ndarray of shape (*S, ..., Z)
            The noise returned by ``rsample`` (or passed to ``reparameterize``).

        Returns
        -------
        dict
            ``"loc"`` and ``"logvar"``, each of ``loc``'s shape (summed over S).

        Notes
        -----
        From :math:`z = \\mu + e^{\\ell/2}\\varepsilon`:
        :math:`\\partial z/\\partial\\mu = 1` and
        :math:`\\partial z/\\partial\\ell = \\tfrac12 e^{\\ell/2}\\varepsilon`, so
        :math:`d\\mu = \\sum_S dz` and
        :math:`d\\ell = \\tfrac12 e^{\\ell/2} \\sum_S dz\\,\\varepsilon` (the factor is
        the same for every sample, so it is applied after the sum).
        """
        func = "DiagNormal.rsample_backward"
        _check_float_arg(eps, "eps", self.dtype, self.xp, func)
        full = _broadcast_value(eps, "eps", self.loc.shape, 1, func)
        dz = _check_dout(dz, full, self.dtype, self.xp, func, name="dz")
        dloc = _sum_to(dz, self.loc.shape)  # (..., Z)
        dlogvar = _sum_to(dz * eps, self.loc.shape) * (0.5 * self.scale)  # (..., Z)
        return {"loc": dloc, "logvar": dlogvar}

    # density -------------------------------------------------------------------------------

    def log_prob(self, value):
        """Log density summed over the event axis.

        Parameters
        ----------
        value : ndarray of shape (*S, ..., Z)
            Points; broadcasts against ``loc`` (sample dimensions S lead).

        Returns
        -------
        ndarray of shape (*S, ...)
            :math:`-\\tfrac12\\sum_j [(z_j-\\mu_j)^2 e^{-\\ell_j} + \\ell_j + \\log 2\\pi]`.
        """
        func = "DiagNormal.log_prob"
        _check_float_arg(value, "value", self.dtype, self.xp, func, finite=self.validate)
        _broadcast_value(value, "value", self.loc.shape, 1, func)
        diff = value - self.loc  # (*S, ..., Z)
        return -0.5 * (diff * diff * self.xp.exp(-self.logvar) + self.logvar + _LOG_2PI).sum(
            axis=-1
        )

    def log_prob_backward(self, dout, value):
        """Gradients of :math:`L = \\sum dout \\cdot \\log p(value)`.

        Parameters
        ----------
        dout : ndarray of shape (*S, ...) or float
            Upstream gradient of ``log_prob(value)``.
        value : ndarray of shape (*S, ..., Z)
            The same value passed to ``log_prob``.

        Returns
        -------
        dict
            ``"loc"``, ``"logvar"`` (``loc``'s shape, summed over S) and ``"value"``
            (``value``'s shape).

        Notes
        -----
        With :math:`u = (z - \\mu) e^{-\\ell}`, differentiating each summand of
        ``log_prob`` gives :math:`\\partial/\\partial z = -u`,
        :math:`\\partial/\\partial\\mu = u` and
        :math:`\\partial/\\partial\\ell = \\tfrac12[(z-\\mu) u - 1]`; each is scaled by
        ``dout`` broadcast over the event axis and summed back to its argument's shape.
        """
        func = "DiagNormal.log_prob_backward"
        _check_float_arg(value, "value", self.dtype, self.xp, func)
        full = _broadcast_value(value, "value", self.loc.shape, 1, func)
        dout = _check_dout(dout, full[:-1], self.dtype, self.xp, func)[..., None]
        diff = value - self.loc  # (*S, ..., Z)
        u = diff * self.xp.exp(-self.logvar)  # (*S, ..., Z)
        du = dout * u
        return {
            "loc": _sum_to(du, self.loc.shape),
            "logvar": _sum_to(dout * (diff * u - 1), self.loc.shape) * 0.5,
            "value": _sum_to(-du, value.shape),
        }

    def entropy(self):
        """Differential entropy summed over the event axis.

        Returns
        -------
        ndarray of shape batch_shape
            :math:`\\tfrac12 \\sum_j (1 + \\log 2\\pi + \\ell_j)`.
        """
        return 0.5 * (self.logvar + (1.0 + _LOG_2PI)).sum(axis=-1)

    def entropy_backward(self, dout):
        """Gradients of :math:`L = \\sum dout \\cdot H`.

        Parameters
        ----------
        dout : ndarray of shape batch_shape or float

        Returns
        -------
        dict
            ``"loc"`` (zeros: H does not depend on the mean) and ``"logvar"``
            (:math:`\\tfrac12 dout`, broadcast over Z).

        Notes
        -----
        H is linear in :math:`\\ell` with slope 1/2 per dimension and constant in
        :math:`\\mu`.
        """
        func = "DiagNormal.entropy_backward"
        dout = _check_dout(dout, self.batch_shape, self.dtype, self.xp, func)[..., None]
        dlogvar = self.xp.broadcast_to(0.5 * dout, self.loc.shape).copy()
        return {"loc": self.xp.zeros_like(self.loc), "logvar": dlogvar}


class StandardNormal(Distribution):
    """The standard Gaussian N(0, I) over Z dimensions: the VAE prior.

    It has no parameters, so its backward methods return gradients for ``value``
    only (or an empty dict).

    Parameters
    ----------
    event_size : int
        Z, the number of dimensions.
    dtype : numpy dtype
        float32 or float64 (must match the distributions it meets in ``kl_divergence``).
    xp : module, optional
        numpy (default) or cupy: where ``sample`` puts its arrays.

    Attributes
    ----------
    batch_shape : tuple
        ``()``.
    event_shape : tuple
        ``(Z,)``.

    Notes
    -----
    :math:`\\log p(z) = -\\tfrac12 \\sum_j (z_j^2 + \\log 2\\pi)`,
    :math:`H = \\tfrac{Z}{2}(1 + \\log 2\\pi)`.
    """

    def __init__(self, event_size, dtype, *, xp=None):
        func = "StandardNormal"
        event_size = check_param(
            event_size, "event_size", func, kind="int", low=1, low_inclusive=True
        )
        super().__init__((), (event_size,), _check_float_dtype(dtype, func), _check_xp(xp, func))

    @property
    def mean(self):
        """ndarray of shape (Z,): zeros."""
        return self.xp.zeros(self.event_shape, dtype=self.dtype)

    def sample(self, rng, shape=()):
        """Standard-normal draws of shape ``shape + (Z,)``."""
        func = "StandardNormal.sample"
        shape = _sample_shape(shape, func)
        return _standard_normal(rng, shape + self.event_shape, self.dtype, self.xp, func)

    def rsample(self, rng, shape=()):
        """``(z, eps)`` with ``z = eps`` (there is nothing to reparameterize)."""
        eps = self.sample(rng, shape)
        return eps, eps

    def rsample_backward(self, dz, eps):
        """No parameters: an empty dict."""
        return {}

    def log_prob(self, value):
        """Log density summed over the last axis.

        Parameters
        ----------
        value : ndarray of shape (..., Z)

        Returns
        -------
        ndarray of shape (...)
            :math:`-\\tfrac12 \\sum_j (z_j^2 + \\log 2\\pi)`.
        """
        func = "StandardNormal.log_prob"
        _check_float_arg(value, "value", self.dtype, self.xp, func)
        _broadcast_value(value, "value", self.event_shape, 1, func)
        return -0.5 * (value * value + _LOG_2PI).sum(axis=-1)

    def log_prob_backward(self, dout, value):
        """Gradient with respect to the value only.

        Parameters
        ----------
        dout : ndarray of shape (...) or float
        value : ndarray of shape (..., Z)

        Returns
        -------
        dict
            ``{"value": -dout * value}`` (dout broadcast over Z).

        Notes
        -----
        :math:`\\partial \\log p / \\partial z_j = -z_j`.
        """
        func = "StandardNormal.log_prob_backward"
        _check_float_arg(value, "value", self.dtype, self.xp, func)
        _broadcast_value(value, "value", self.event_shape, 1, func)
        dout = _check_dout(dout, value.shape[:-1], self.dtype, self.xp, func)[..., None]
        return {"value": -dout * value}

    def entropy(self):
        """0-d array :math:`\\tfrac{Z}{2}(1 + \\log 2\\pi)`."""
        z = self.event_shape[0]
        return self.xp.asarray(0.5 * z * (1.0 + _LOG_2PI), dtype=self.dtype)

    def entropy_backward(self, dout):
        """No parameters: an empty dict."""
        return {}
