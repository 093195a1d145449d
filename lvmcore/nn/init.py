"""Parameter initialisation with an explicit random generator."""

import numpy as np

from .._validation import check_float_dtype, check_param, check_rng


def glorot_uniform(rng, fan_in, fan_out, dtype=np.float32):
    """W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), shape (fan_in, fan_out).

    ``rng`` is a numpy.random.Generator, ``fan_in`` and ``fan_out`` ints >= 1 and ``dtype``
    float32 or float64.

    References
    ----------
    Glorot and Bengio (2010), "Understanding the difficulty of training deep
    feedforward neural networks", eq. 16.
    """
    f = "glorot_uniform"
    rng = check_rng(rng, f)
    fan_in = check_param(fan_in, "fan_in", f, kind="int", low=1, low_inclusive=True)
    fan_out = check_param(fan_out, "fan_out", f, kind="int", low=1, low_inclusive=True)
    dtype = check_float_dtype(dtype, f)
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(dtype)
