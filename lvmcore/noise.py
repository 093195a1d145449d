"""The engine's noise: Philox4x32-10 streams, filled on the device of the caller's arrays.

This module is the one front door to randomness. Every draw takes one 64-bit seed from the
caller's ``numpy.random.Generator`` (``philox_key``; so a run's seeding scheme stays an
explicit generator) and fills the array with the Philox kernels of ``kernels.philox`` on the
backend of ``like``: Numba (or the NumPy reference) for NumPy arrays, CUDA for CuPy arrays.
The same seed gives bit-identical uniforms on every backend and normals and Gumbels equal to
float rounding, so a run on a GPU follows the same noise as on the CPU, and no noise is copied
from host to device.

A fused kernel that draws its own noise (``kernels.reparam_sample``, ``kernels.gumbel_softmax``)
takes the same key: call ``philox_key(rng)`` once, pass ``(seed, stream)`` to the kernel, and
``philox_fill`` with that key returns the noise the kernel drew (to float rounding on the Numba
and CUDA backends, whose fused generators vectorize differently; bit for bit on "numpy").

Values follow the Philox conversions (``kernels/philox.py``): uniforms in (0, 1) on a grid of
2**-23 (float32) or 2**-52 (float64), never 0 or 1; normals by Box-Muller, cut at |z| <= 5.77
(float32) and 8.57 (float64); Gumbels ``-log(-log u)``.
"""

import math
import numbers

import numpy as np

from ._validation import FLOAT_DTYPES, check_array
from .backend import get_backend

__all__ = ["uniform", "standard_normal", "standard_gumbel", "philox_key", "philox_fill"]

_STREAM = 0
_KINDS = ("uniform", "normal", "gumbel")


def _check_rng(rng, func):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{func}: expected rng to be a numpy.random.Generator, got "
            f"{type(rng).__name__}. Make one with numpy.random.default_rng(seed)."
        )


def _check_fill(func, shape, dtype, like):
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"{func}: expected shape to be non-negative integers, got {shape!r}.")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{func}: expected dtype float32 or float64, got {np.dtype(dtype)}.")
    check_array(like, "like", func, dtype="any", finite=False)
    return tuple(int(s) for s in shape)


def philox_key(rng):
    """The Philox key ``(seed, stream)`` of one draw: a 64-bit seed taken from ``rng``.

    Parameters
    ----------
    rng : numpy.random.Generator

    Returns
    -------
    seed : int in [0, 2**64)
    stream : int
        0: one stream per seed (the seed already separates draws).
    """
    _check_rng(rng, "noise.philox_key")
    return int(rng.integers(0, 2**64, dtype=np.uint64)), _STREAM


def philox_fill(kind, key, shape, dtype, like):
    """The noise of Philox key ``key`` as an array of ``shape``, on ``like``'s device.

    Parameters
    ----------
    kind : {"uniform", "normal", "gumbel"}
    key : (int, int)
        ``(seed, stream)``, e.g. from ``philox_key``.
    shape : int or tuple of int
    dtype : float32 or float64
    like : ndarray
        A NumPy or CuPy array: where the noise is made, and by which backend.

    Returns
    -------
    ndarray of ``shape``: element i of the C-ordered array is element i of the stream.
    """
    func = "noise.philox_fill"
    if kind not in _KINDS:
        raise ValueError(f"{func}: expected kind to be one of {_KINDS}, got {kind!r}.")
    shape = _check_fill(func, shape, dtype, like)
    return _draw(kind, key, shape, dtype, like)


def _draw(kind, key, shape, dtype, like):
    seed, stream = key
    fill = get_backend(like).kernel(f"philox_{kind}")
    return fill(seed, stream, math.prod(shape), np.dtype(dtype)).reshape(shape)


def _fill(kind, rng, shape, dtype, like):
    func = f"noise.{'uniform' if kind == 'uniform' else 'standard_' + kind}"
    _check_rng(rng, func)
    shape = _check_fill(func, shape, dtype, like)
    return _draw(kind, philox_key(rng), shape, dtype, like)


def uniform(rng, shape, dtype, like):
    """Uniforms in (0, 1) of ``shape`` and ``dtype`` (float32/float64), on ``like``'s device."""
    return _fill("uniform", rng, shape, dtype, like)


def standard_normal(rng, shape, dtype, like):
    """Standard normals of ``shape`` and ``dtype``, on ``like``'s device."""
    return _fill("normal", rng, shape, dtype, like)


def standard_gumbel(rng, shape, dtype, like):
    """Standard Gumbels of ``shape`` and ``dtype``, on ``like``'s device."""
    return _fill("gumbel", rng, shape, dtype, like)
