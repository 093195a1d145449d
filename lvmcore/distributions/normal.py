"""Diagonal Gaussians: ``DiagNormal`` (mean and log-variance) and ``StandardNormal``.

The conventions every distribution shares are in :mod:`lvmcore.distributions.base`.
"""

import math

from .._validation import (
    check_array,
    check_float_dtype,
    check_param,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_sample_shape,
    check_xp,
    get_xp,
)
from .base import Distribution, _broadcast_value, _standard_normal, _sum_to

__all__ = ["DiagNormal", "StandardNormal"]

_LOG_2PI = math.log(2.0 * math.pi)


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
        self._check_arg(eps, "eps", func)
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
        shape = check_sample_shape(shape, func)
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
        self._check_arg(eps, "eps", func)
        full = _broadcast_value(eps, "eps", self.loc.shape, 1, func)
        dz = self._check_dout(dz, full, func, name="dz", source="eps")
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
        self._check_arg(value, "value", func, finite=self.validate)
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
        self._check_arg(value, "value", func)
        full = _broadcast_value(value, "value", self.loc.shape, 1, func)
        dout = self._check_dout(dout, full[:-1], func, source="value")[..., None]
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
        dout = self._check_dout(dout, self.batch_shape, func)[..., None]
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
        super().__init__((), (event_size,), check_float_dtype(dtype, func), check_xp(xp, func))

    @property
    def mean(self):
        """ndarray of shape (Z,): zeros."""
        return self.xp.zeros(self.event_shape, dtype=self.dtype)

    def sample(self, rng, shape=()):
        """Standard-normal draws of shape ``shape + (Z,)``."""
        func = "StandardNormal.sample"
        shape = check_sample_shape(shape, func)
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
        self._check_arg(value, "value", func)
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
        self._check_arg(value, "value", func)
        _broadcast_value(value, "value", self.event_shape, 1, func)
        dout = self._check_dout(dout, value.shape[:-1], func, source="value")[..., None]
        return {"value": -dout * value}

    def entropy(self):
        """0-d array :math:`\\tfrac{Z}{2}(1 + \\log 2\\pi)`."""
        z = self.event_shape[0]
        return self.xp.asarray(0.5 * z * (1.0 + _LOG_2PI), dtype=self.dtype)

    def entropy_backward(self, dout):
        """No parameters: an empty dict."""
        return {}
