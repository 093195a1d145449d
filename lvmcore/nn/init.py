"""Parameter initialisation with an explicit random generator."""

import numpy as np


def glorot_uniform(rng, fan_in, fan_out, dtype=np.float32):
    """W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), shape (fan_in, fan_out).

    References
    ----------
    Glorot and Bengio (2010), "Understanding the difficulty of training deep
    feedforward neural networks", eq. 16.
    """
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(dtype)
