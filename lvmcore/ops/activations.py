"""Pointwise activations and their exact log-space forms.

Every function works on NumPy and CuPy arrays alike. The log-space functions are
exact for inputs of any size: softplus(x) = max(x, 0) + log1p(exp(-|x|)) never
overflows, and log-sigmoid(x) = -softplus(-x) keeps full relative accuracy for
logits as large as +-1e30 in either direction.

Validation. Every function checks its array at the boundary (lvmcore._validation): a
float32 or float64 NumPy/CuPy array, any shape; integer, complex, float16 and object arrays,
lists and Python scalars are a TypeError. NaN is not scanned for: it propagates (NaN in,
NaN out). A backward checks its upstream gradient against the cache (shape, dtype, device).
"""

from .._validation import check_array, get_xp


def _check_x(x, func):
    return check_array(x, "x", func, finite=False)


def _check_dy(dy, cache, func):
    """dy: a float array of the forward output's shape, on its device (and dtype, unless
    the cache is a boolean mask)."""
    check_array(cache, "cache", func, dtype="any", finite=False)
    dtype = "float" if cache.dtype.kind == "b" else cache.dtype
    return check_array(
        dy,
        "dy",
        func,
        shape=tuple(cache.shape),
        dtype=dtype,
        finite=False,
        xp=get_xp(cache),
        ref="the forward output's",
    )


def _softplus(x):
    return get_xp(x).logaddexp(x.dtype.type(0), x)


def _sigmoid(x):
    xp = get_xp(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x):
    """:math:`\\log(1 + e^x)`, exact for every finite x (and +-inf)."""
    return _softplus(_check_x(x, "softplus"))


def sigmoid(x):
    """:math:`1 / (1 + e^{-x})` without overflow: the exponent is always of -|x|."""
    return _sigmoid(_check_x(x, "sigmoid"))


def log_sigmoid(x):
    """:math:`\\log \\sigma(x) = -\\mathrm{softplus}(-x)`, exact for logits of any size."""
    x = _check_x(x, "log_sigmoid")
    return -get_xp(x).logaddexp(x.dtype.type(0), -x)


# --- forward/backward pairs. Caches hold the one array backward needs. ---


def tanh_forward(x):
    """y = tanh(x); the cache is y (backward uses 1 - y^2)."""
    y = get_xp(x).tanh(_check_x(x, "tanh_forward"))
    return y, y


def tanh_backward(dy, cache):
    """:math:`dx = dy\\,(1 - y^2)` with y = tanh(x) from the cache."""
    _check_dy(dy, cache, "tanh_backward")
    y = cache
    return dy * (1 - y * y)


def relu_forward(x):
    """y = max(x, 0); the cache is the mask x > 0 (the subgradient at 0 is taken as 0)."""
    mask = _check_x(x, "relu_forward") > 0
    return x * mask, mask


def relu_backward(dy, cache):
    """:math:`dx = dy \\cdot [x > 0]` with the mask from the cache."""
    _check_dy(dy, cache, "relu_backward")
    return dy * cache


def softplus_forward(x):
    """y = softplus(x); the cache is x (backward uses sigmoid(x))."""
    return _softplus(_check_x(x, "softplus_forward")), x


def softplus_backward(dy, cache):
    """:math:`dx = dy\\,\\sigma(x)` with x from the cache."""
    _check_dy(dy, cache, "softplus_backward")
    return dy * _sigmoid(cache)


def sigmoid_forward(x):
    """y = sigmoid(x); the cache is y (backward uses y (1 - y))."""
    y = _sigmoid(_check_x(x, "sigmoid_forward"))
    return y, y


def sigmoid_backward(dy, cache):
    """:math:`dx = dy\\,y(1 - y)` with y = sigmoid(x) from the cache."""
    _check_dy(dy, cache, "sigmoid_backward")
    y = cache
    return dy * y * (1 - y)


def log_sigmoid_forward(x):
    """y = log sigmoid(x); the cache is x.

    Notes
    -----
    :math:`d/dx \\log\\sigma(x) = 1 - \\sigma(x) = \\sigma(-x)`, evaluated as sigmoid(-x)
    so that it stays exact (not 1 - 1 = 0) for large negative x.
    """
    x = _check_x(x, "log_sigmoid_forward")
    return -get_xp(x).logaddexp(x.dtype.type(0), -x), x


def log_sigmoid_backward(dy, cache):
    """:math:`dx = dy\\,\\sigma(-x)` with x from the cache."""
    _check_dy(dy, cache, "log_sigmoid_backward")
    return dy * _sigmoid(-cache)


ACTIVATIONS = {
    "tanh": (tanh_forward, tanh_backward),
    "relu": (relu_forward, relu_backward),
    "softplus": (softplus_forward, softplus_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "log_sigmoid": (log_sigmoid_forward, log_sigmoid_backward),
}
