"""Modules: own their parameters and accumulate gradients; the math lives in ``ops``."""

from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_cache, check_param, check_xp, get_xp, to_numpy
from ..ops import ACTIVATIONS, linear_backward, linear_forward
from .init import glorot_uniform


def _check_input(x, W, func):
    """x (N, I) of the first weight's dtype and array library, I = W.shape[0]."""
    check_array(
        x,
        "x",
        func,
        ndim=2,
        shape=(None, W.shape[0]),
        dtype=W.dtype,
        finite=False,
        xp=get_xp(W),
        ref="the parameters'",
    )


class Module:
    """Base class: ``params`` and ``grads`` are dicts with the same keys.

    ``forward(x) -> (y, cache)`` stores nothing on ``self``; ``backward(dy, cache) -> dx``
    *adds* into ``grads`` so shared weights and several samples accumulate; call
    ``zero_grad()`` before each step.
    """

    def __init__(self):
        self.params = {}
        self.grads = {}

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def _add_param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def to(self, xp):
        """Move parameters and gradients to the array module ``xp`` (numpy or cupy)."""
        xp = check_xp(xp, f"{type(self).__name__}.to")
        asarray = xp.asarray if xp is not np else to_numpy
        self.params = {k: asarray(v) for k, v in self.params.items()}
        self.grads = {k: asarray(v) for k, v in self.grads.items()}
        return self


class Linear(Module):
    """y = x W + b with W of shape (I, O), Glorot-uniform initialised, b zero."""

    def __init__(self, n_in, n_out, rng, dtype=np.float32):
        super().__init__()
        n_in = check_param(n_in, "n_in", "Linear", kind="int", low=1, low_inclusive=True)
        n_out = check_param(n_out, "n_out", "Linear", kind="int", low=1, low_inclusive=True)
        self._add_param("W", glorot_uniform(rng, n_in, n_out, dtype))
        self._add_param("b", np.zeros(n_out, dtype=dtype))

    def forward(self, x):
        """x (N, I) -> y (N, O) and a LinearCache; x has the parameters' dtype and device."""
        W = self.params["W"]
        _check_input(x, W, "Linear.forward")
        return linear_forward(x, W, self.params["b"])

    def backward(self, dy, cache):
        dx, dW, db = linear_backward(dy, cache)
        self.grads["W"] += dW
        self.grads["b"] += db
        return dx


class MLPCache(NamedTuple):
    """Per layer: the linear cache and the activation cache (None after the last layer)."""

    linear: list
    activation: list


class MLP(Module):
    """Multi-layer perceptron: Linear, activation, ..., Linear (no output activation).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths from input to output, e.g. (784, 200, 200, 100).
    activation : {"tanh", "relu", "softplus", "sigmoid"}
    rng : numpy.random.Generator
        Draws the Glorot-uniform weights; biases start at zero.

    Notes
    -----
    Parameters are named ``W0, b0, W1, b1, ...`` in layer order; ``W<i>`` has shape
    (sizes[i], sizes[i+1]). This is the layout written to checkpoints.
    """

    def __init__(self, sizes, activation, rng, dtype=np.float32):
        super().__init__()
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError(
                f"MLP: expected sizes to be a sequence of ints, got {type(sizes).__name__}."
            ) from None
        sizes = [
            check_param(s, "sizes", "MLP", kind="int", low=1, low_inclusive=True) for s in sizes
        ]
        if len(sizes) < 2:
            raise ValueError(
                f"MLP: expected sizes to list at least an input and an output width, got {sizes}."
            )
        self.activation = check_param(
            activation,
            "activation",
            "MLP",
            kind="choice",
            choices=("tanh", "relu", "softplus", "sigmoid"),
        )
        self.sizes = tuple(sizes)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            self._add_param(f"W{i}", glorot_uniform(rng, n_in, n_out, dtype))
            self._add_param(f"b{i}", np.zeros(n_out, dtype=dtype))

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def forward(self, x):
        """x (N, sizes[0]) -> y (N, sizes[-1]) and an MLPCache."""
        _check_input(x, self.params["W0"], "MLP.forward")
        act_forward, _ = ACTIVATIONS[self.activation]
        lin_caches, act_caches = [], []
        h = x
        for i in range(self.n_layers):
            h, c = linear_forward(h, self.params[f"W{i}"], self.params[f"b{i}"])  # (N, sizes[i+1])
            lin_caches.append(c)
            if i < self.n_layers - 1:
                h, a = act_forward(h)
                act_caches.append(a)
        return h, MLPCache(lin_caches, act_caches)

    def backward(self, dy, cache, need_dx=True):
        """Accumulate parameter gradients and return dx (N, sizes[0]).

        With ``need_dx=False`` (an encoder fed with data) the first layer's dx GEMM is
        skipped and None is returned.
        """
        f = "MLP.backward"
        cache = check_cache(cache, MLPCache, f)
        x = cache.linear[0].x
        out = (x.shape[0], self.sizes[-1])
        check_array(dy, "dy", f, shape=out, dtype=x.dtype, finite=False, ref="the output's")
        _, act_backward = ACTIVATIONS[self.activation]
        dh = dy
        for i in reversed(range(self.n_layers)):
            if i < self.n_layers - 1:
                dh = act_backward(dh, cache.activation[i])
            if i == 0 and not need_dx:
                x = cache.linear[0].x
                self.grads["W0"] += x.T @ dh
                self.grads["b0"] += dh.sum(axis=0)
                return None
            dh, dW, db = linear_backward(dh, cache.linear[i])
            self.grads[f"W{i}"] += dW
            self.grads[f"b{i}"] += db
        return dh
