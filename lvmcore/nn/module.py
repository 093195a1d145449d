"""Modules: own their parameters and accumulate gradients; the math lives in ``ops``.

An :class:`MLP` has two forms of one computation:

- ``forward`` / ``backward``: the readable pair, layer by layer through ``ops.linear_forward``
  and the activation pairs of ``ops.activations``; every call makes fresh arrays.
- ``forward_buffered`` / ``backward_buffered``: the training step's form. Each GEMM writes into
  a buffer the MLP keeps and reuses (``matmul(..., out=)``), the bias and the activation are
  one pass over it (the ``bias_act`` kernel of the data's backend), and backward is one pass per
  layer (``bias_act_backward``: the activation's derivative from the output, the bias gradient
  summed in the same pass) between the weight-gradient GEMM and the input-gradient GEMM. A
  per-row scale of the upstream gradient (an IWAE's importance weights) is applied to the
  smaller arrays of the last layer instead of the (N, D) gradient itself. No (N, width) array is
  allocated after the first call at a given N: page faults on fresh memory cost more than the
  arithmetic here (PERF-NOTES).

Tests prove the two forms equal to float rounding (float32 and float64, every activation).
"""

import threading
from typing import NamedTuple

import numpy as np

from .._validation import check_array, check_cache, check_param, check_xp, get_xp, to_numpy
from ..backend import get_backend
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


def _activation_in_place(xp, a, activation):
    """The readable activation (``ops.ACTIVATIONS``) written over a, with its exact values."""
    if activation == "tanh":
        xp.tanh(a, out=a)
    elif activation == "relu":
        xp.multiply(a, a > 0, out=a)
    else:
        a[...] = ACTIVATIONS[activation][0](a)[0]


class BufferedMLPCache(NamedTuple):
    """What ``MLP.backward_buffered`` needs: the input ``x`` (N, sizes[0]) and each hidden
    layer's activation output ``h[i]`` (N, sizes[i+1]), views of the MLP's buffers, valid until
    the MLP's next buffered forward (``generation`` tells)."""

    x: object
    h: tuple
    generation: int


class _Buffers:
    """Arrays an MLP reuses across calls, one per name, grown to the largest row count seen
    (a call with fewer rows uses the first rows: a C-contiguous view). Replaced on ``to``.

    Each thread has its own arrays and generation count, so threads may run buffered forwards
    of one MLP at the same time (the K-sample evaluation's chunks do); a thread's arrays go
    when the thread ends.
    """

    def __init__(self):
        self._local = threading.local()

    def _mine(self):
        """This thread's state: ``arrays`` by name and ``generation``, the buffered forwards it
        has run (a cache is valid while its generation is current)."""
        local = self._local
        if not hasattr(local, "arrays"):
            local.arrays, local.generation = {}, 0
        return local

    @property
    def arrays(self):
        return self._mine().arrays

    @property
    def generation(self):
        return self._mine().generation

    def next_generation(self):
        local = self._mine()
        local.generation += 1
        return local.generation

    def rows(self, name, n, width, dtype, xp):
        arrays = self.arrays
        a = arrays.get(name)
        if a is None or a.shape[0] < n or a.shape[1] != width or a.dtype != dtype:
            a = xp.empty((max(n, 1), width), dtype)
            arrays[name] = a
        return a[:n]

    def fixed(self, name, shape, dtype, xp):
        arrays = self.arrays
        a = arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = arrays[name] = xp.empty(shape, dtype)
        return a


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
        self._buffers = _Buffers()

    def to(self, xp):
        """Move parameters and gradients to ``xp`` (numpy or cupy); the buffers start afresh."""
        super().to(xp)
        self._buffers = _Buffers()
        return self

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    @property
    def output_bias(self):
        """The last layer's bias (sizes[-1],): the parameter array itself, so writing into it
        sets the parameter."""
        return self.params[f"b{self.n_layers - 1}"]

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
        skipped and None is returned. The cache of a buffered forward is handed to
        ``backward_buffered``.
        """
        f = "MLP.backward"
        if isinstance(cache, BufferedMLPCache):
            return self.backward_buffered(dy, cache, need_dx=need_dx)
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

    # ------------------------------------------------------------------ buffered form
    def input_buffer(self, n):
        """A (n, sizes[0]) buffer for the input of the next ``forward_buffered``, which a
        caller may fill in place (the sampling kernel writes z there); reused like the rest."""
        W = self.params["W0"]
        return self._buffers.rows("x", n, self.sizes[0], W.dtype, get_xp(W))

    def forward_buffered(self, x, fused=True, output_bias=True):
        """``forward`` with reused buffers and one fused bias+activation pass per hidden layer.

        Parameters
        ----------
        x : ndarray of shape (N, sizes[0])
            The parameters' dtype and device.
        fused : bool
            True: the ``bias_act`` kernel (one pass). False: the bias added and the readable
            activation applied in place (NumPy's or CuPy's own tanh, ...): bit for bit the
            values of ``forward``, for a caller whose results are pinned to it.
        output_bias : bool
            False: the last layer's bias is left out of y, for a caller that adds it inside
            the pass that reads y next (the Bernoulli likelihood kernel's ``bias``), saving a
            pass over (N, sizes[-1]). ``backward_buffered`` is the same either way.

        Returns
        -------
        y : ndarray of shape (N, sizes[-1])
            A view of a buffer of the MLP: overwritten by its next buffered forward (a caller
            may overwrite it too, e.g. with the likelihood's gradient).
        cache : BufferedMLPCache
            For ``backward_buffered``; valid until the next buffered forward.

        Notes
        -----
        Layer i: ``matmul(h, W_i, out=buffer)``, then ``bias_act(buffer, b_i, act,
        out=buffer)`` (the last layer: ``buffer += b``). Equal to ``forward`` to float rounding
        (the activations are the kernels' vectorized ones).
        """
        f = "MLP.forward_buffered"
        W0 = self.params["W0"]
        _check_input(x, W0, f)
        for name, flag in (("fused", fused), ("output_bias", output_bias)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{f}: expected {name} to be True or False, got {flag!r}.")
        xp, dtype, n = get_xp(W0), W0.dtype, x.shape[0]
        fwd = get_backend(x).kernel("bias_act")
        buf = self._buffers
        generation = buf.next_generation()
        hidden = []
        h = x
        for i in range(self.n_layers):
            width = self.sizes[i + 1]
            last = i == self.n_layers - 1
            a = buf.rows("y" if last else f"h{i}", n, width, dtype, xp)  # (N, sizes[i+1])
            xp.matmul(h, self.params[f"W{i}"], out=a)
            if last:
                if output_bias:
                    a += self.params[f"b{i}"]
            elif fused:
                fwd(a, self.params[f"b{i}"], self.activation, a)
                hidden.append(a)
            else:
                a += self.params[f"b{i}"]
                _activation_in_place(xp, a, self.activation)
                hidden.append(a)
            h = a
        return h, BufferedMLPCache(x, tuple(hidden), generation)

    def backward_buffered(self, dy, cache, row_scale=None, need_dx=True):
        r"""``backward`` of a buffered forward: accumulate the parameter gradients of
        ``L = sum_n s_n sum_o dy_no y_no`` and return dx (N, sizes[0]) (None without
        ``need_dx``).

        Parameters
        ----------
        dy : ndarray of shape (N, sizes[-1])
            The upstream gradient, before the row scale.
        cache : BufferedMLPCache
            Of the MLP's last buffered forward.
        row_scale : ndarray of shape (N,), optional
            s, a factor per row of dy (1 when None).
        need_dx : bool

        Returns
        -------
        dx : ndarray of shape (N, sizes[0]) or None
            A view of a buffer (valid until the next buffered call).

        Raises
        ------
        ValueError
            A cache of an earlier buffered forward (its buffers were reused since), or dy /
            row_scale of the wrong shape.

        Notes
        -----
        Last layer, with s: :math:`dW \mathrel{+}= (s \odot h)^T dy`,
        :math:`db \mathrel{+}= s^T dy`, :math:`dh = s \odot (dy\,W^T)`: s scales the
        (N, H) arrays, never the (N, sizes[-1]) dy. Hidden layer i: da, db from
        ``bias_act_backward`` (in place over dh, s applied in the first one), then
        :math:`dW_i \mathrel{+}= h_{i-1}^T da` and :math:`dh_{i-1} = da\,W_i^T`, each GEMM into
        a buffer.
        """
        f = "MLP.backward_buffered"
        cache = check_cache(cache, BufferedMLPCache, f)
        buf = self._buffers
        if cache.generation != buf.generation:
            raise ValueError(
                f"{f}: expected the cache of the MLP's last buffered forward, got one of an "
                f"earlier call (generation {cache.generation}, now {buf.generation}): its "
                f"buffers were reused since. Run each backward before the next forward_buffered."
            )
        x = cache.x
        n = x.shape[0]
        W0 = self.params["W0"]
        xp, dtype = get_xp(W0), W0.dtype
        kw = dict(finite=False, dtype=dtype, xp=xp, ref="the output's")
        check_array(dy, "dy", f, shape=(n, self.sizes[-1]), **kw)
        if row_scale is not None:
            check_array(row_scale, "row_scale", f, shape=(n,), **kw)
        bwd = get_backend(dy).kernel("bias_act_backward")
        inputs = (x,) + tuple(cache.h)
        L = self.n_layers
        scale = row_scale
        d = dy
        for i in reversed(range(L)):
            h_in = inputs[i]  # (N, sizes[i])
            if i < L - 1:
                d, db = bwd(d, cache.h[i], self.activation, scale, d)  # in place, (N, sizes[i+1])
                scale = None
                self.grads[f"b{i}"] += db
                self._add_weight_grad(i, h_in, d)
            elif scale is not None:
                hs = buf.rows("hs", n, self.sizes[i], dtype, xp)  # (N, sizes[i])
                xp.multiply(h_in, scale[:, None], out=hs)
                self._add_weight_grad(i, hs, d)
                self.grads[f"b{i}"] += xp.matmul(scale, d)  # (sizes[-1],), a GEMV
            else:
                self._add_weight_grad(i, h_in, d)
                self.grads[f"b{i}"] += d.sum(axis=0)
            if i == 0 and not need_dx:
                return None
            nxt = buf.rows("dx" if i == 0 else f"d{i - 1}", n, self.sizes[i], dtype, xp)
            xp.matmul(d, self.params[f"W{i}"].T, out=nxt)  # (N, sizes[i])
            d = nxt
            if L == 1 and scale is not None:  # no hidden layer took the scale
                d *= scale[:, None]
        return d

    def _add_weight_grad(self, i, h_in, d):
        """grads["W<i>"] += h_in^T d, the GEMM into a reused buffer."""
        g = self.grads[f"W{i}"]
        tmp = self._buffers.fixed(f"gW{i}", g.shape, g.dtype, get_xp(g))
        get_xp(g).matmul(h_in.T, d, out=tmp)
        g += tmp
