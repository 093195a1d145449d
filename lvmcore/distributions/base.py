"""The ``Distribution`` base class and the helpers every distribution module shares.

Conventions, shared by every distribution (torch.distributions names):

- The parameters have shape ``batch_shape + event_shape``. ``log_prob`` and
  ``entropy`` sum over the event axes and return ``batch_shape`` (broadcast with any
  leading sample dimensions of the value).
- Randomness enters only through an explicit ``rng``: a ``numpy.random.Generator`` keys
  the engine's Philox stream (``lvmcore.noise``: one draw of ``rng`` per sample call, the
  noise made on the parameters' device, the same numbers on either), or a
  ``cupy.random.Generator`` for CuPy parameters draws with it on the device. No global
  state.
- Every forward method has a hand-derived backward, ``<method>_backward(dout, ...)``,
  returning a dict of gradients keyed like ``params`` (plus ``"value"`` where the
  argument is differentiable). Gradients are fresh arrays of each parameter's
  shape (summed over broadcast sample dimensions); the caller accumulates them.
- Nothing is cached on ``self``: each backward recomputes the cheap terms it needs.
- Construction checks array type, dtype and shapes only (cheap); ``validate=True``
  adds a scan of the values (finiteness, support).
- Every argument is checked by :mod:`lvmcore._validation` (the one array checker);
  this module only adds what is particular to distributions (broadcasting a value
  against the parameters, summing a gradient back to a parameter's shape).

The distribution modules import from here and never from each other's private
helpers, so there is no import cycle between them.
"""

import numpy as np

from .. import noise
from .._validation import check_array, check_dout, check_rng

__all__ = ["Distribution"]


# --- helpers shared by the distribution modules -------------------------------------------


def _standard_normal(rng, size, dtype, xp, func):
    """N(0, 1) noise of shape ``size`` and ``dtype`` on the device of ``xp``: the engine's
    Philox stream keyed by one draw of a NumPy ``rng`` (``lvmcore.noise``), made on that
    device; a CuPy Generator's own draw."""
    rng = check_rng(rng, func)
    if not isinstance(rng, np.random.Generator):  # a cupy.random.Generator
        return xp.asarray(rng.standard_normal(size, dtype=dtype))
    return noise.standard_normal(rng, size, dtype, xp.empty(0, dtype))


def _uniform(rng, size, dtype, xp, func):
    """U(0, 1) noise of shape ``size`` and ``dtype`` on the device of ``xp``, as
    ``_standard_normal`` draws it."""
    rng = check_rng(rng, func)
    if not isinstance(rng, np.random.Generator):  # a cupy.random.Generator
        return xp.asarray(rng.random(size, dtype=dtype))
    return noise.uniform(rng, size, dtype, xp.empty(0, dtype))


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


def _broadcast_value(value, name, param_shape, event_ndim, func, against="the parameters'"):
    """Broadcast shape of ``value`` against ``param_shape``; its event axes must match.

    ``against`` names what ``param_shape`` is, for the message ("logits'")."""
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
            f"{func}: expected {name} to broadcast against {against} shape "
            f"{tuple(param_shape)} as {want}, got {name} of shape {vshape}."
        )
    return full


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

    # argument checks in terms of this distribution's dtype and device ----------------------

    def _check_arg(self, x, name, func, *, finite=False):
        """A float array of this distribution's dtype, on its device."""
        return check_array(
            x, name, func, dtype=self.dtype, finite=finite, xp=self.xp, ref="the distribution's"
        )

    def _check_dout(self, dout, shape, func, name="dout", source=None):
        """An upstream gradient of the forward output's ``shape`` (or a number), broadcast;
        ``source`` names the argument that shape follows (with the parameters)."""
        if source is not None:
            source = f"{source} broadcast against the parameters"
        return check_dout(dout, shape, self.dtype, self.xp, func, name, source=source)

    def __repr__(self):
        return (
            f"{type(self).__name__}(batch_shape={self.batch_shape}, "
            f"event_shape={self.event_shape}, dtype={self.dtype})"
        )
