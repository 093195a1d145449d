"""The models' noise: Philox4x32-10 streams filled on the device of the model's arrays.

Each draw takes one 64-bit seed from the caller's ``numpy.random.Generator`` (so the run's
seeding scheme is unchanged) and fills the array with the Philox kernels of ``kernels.philox``
on the backend of ``like``: Numba (or the NumPy reference) for NumPy arrays, CUDA for CuPy
arrays. The same seed gives bit-identical uniforms on every backend and normals and Gumbels
equal to float rounding, so a run on a GPU follows the same noise as on the CPU, and no noise is
copied from host to device.

Values follow the Philox conversions (``kernels/philox.py``): uniforms in (0, 1) on a grid of
2**-23 (float32) or 2**-52 (float64), never 0 or 1; normals by Box-Muller, cut at |z| <= 5.77
(float32) and 8.57 (float64); Gumbels ``-log(-log u)``.
"""

import math
import numbers

import numpy as np

from ._validation import FLOAT_DTYPES, check_array
from .backend import get_backend

__all__ = ["uniform", "standard_normal", "standard_gumbel"]

_STREAM = 0


def _fill(kind, rng, shape, dtype, like):
    func = f"noise.{'uniform' if kind == 'uniform' else 'standard_' + kind}"
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{func}: expected rng to be a numpy.random.Generator, got "
            f"{type(rng).__name__}. Make one with numpy.random.default_rng(seed)."
        )
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"{func}: expected shape to be non-negative integers, got {shape!r}.")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{func}: expected dtype float32 or float64, got {np.dtype(dtype)}.")
    check_array(like, "like", func, dtype="any", finite=False)
    shape = tuple(int(s) for s in shape)
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    fill = get_backend(like).kernel(f"philox_{kind}")
    return fill(seed, _STREAM, math.prod(shape), np.dtype(dtype)).reshape(shape)


def uniform(rng, shape, dtype, like):
    """Uniforms in (0, 1) of ``shape`` and ``dtype`` (float32/float64), on ``like``'s device."""
    return _fill("uniform", rng, shape, dtype, like)


def standard_normal(rng, shape, dtype, like):
    """Standard normals of ``shape`` and ``dtype``, on ``like``'s device."""
    return _fill("normal", rng, shape, dtype, like)


def standard_gumbel(rng, shape, dtype, like):
    """Standard Gumbels of ``shape`` and ``dtype``, on ``like``'s device."""
    return _fill("gumbel", rng, shape, dtype, like)
