"""Pointwise activations and their exact log-space forms.

Every function works on NumPy and CuPy arrays alike. The log-space functions are
exact for inputs of any size: softplus(x) = max(x, 0) + log1p(exp(-|x|)) never
overflows, and log-sigmoid(x) = -softplus(-x) keeps full relative accuracy for
logits as large as +-1e30 in either direction.
"""

from .._validation import get_xp


def softplus(x):
    """:math:`\\log(1 + e^x)`, exact for every finite x (and +-inf)."""
    xp = get_xp(x)
    return xp.logaddexp(x.dtype.type(0), x)


def sigmoid(x):
    """:math:`1 / (1 + e^{-x})` without overflow: the exponent is always of -|x|."""
    xp = get_xp(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def log_sigmoid(x):
    """:math:`\\log \\sigma(x) = -\\mathrm{softplus}(-x)`, exact for logits of any size."""
    xp = get_xp(x)
    return -xp.logaddexp(x.dtype.type(0), -x)


# --- forward/backward pairs. Caches hold the one array backward needs. ---


def tanh_forward(x):
    """y = tanh(x); the cache is y (backward uses 1 - y^2)."""
    y = get_xp(x).tanh(x)
    return y, y


def tanh_backward(dy, cache):
    y = cache
    return dy * (1 - y * y)


def relu_forward(x):
    """y = max(x, 0); the cache is the mask x > 0 (the subgradient at 0 is taken as 0)."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dy, cache):
    return dy * cache


def softplus_forward(x):
    """y = softplus(x); the cache is x (backward uses sigmoid(x))."""
    return softplus(x), x


def softplus_backward(dy, cache):
    return dy * sigmoid(cache)


def sigmoid_forward(x):
    """y = sigmoid(x); the cache is y (backward uses y (1 - y))."""
    y = sigmoid(x)
    return y, y


def sigmoid_backward(dy, cache):
    y = cache
    return dy * y * (1 - y)


def log_sigmoid_forward(x):
    """y = log sigmoid(x); the cache is x.

    Notes
    -----
    :math:`d/dx \\log\\sigma(x) = 1 - \\sigma(x) = \\sigma(-x)`, evaluated as sigmoid(-x)
    so that it stays exact (not 1 - 1 = 0) for large negative x.
    """
    return log_sigmoid(x), x


def log_sigmoid_backward(dy, cache):
    return dy * sigmoid(-cache)


ACTIVATIONS = {
    "tanh": (tanh_forward, tanh_backward),
    "relu": (relu_forward, relu_backward),
    "softplus": (softplus_forward, softplus_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "log_sigmoid": (log_sigmoid_forward, log_sigmoid_backward),
}
