"""MADE: a masked autoencoder whose j-th outputs depend only on inputs earlier in an order.

Shape letters: N rows (all leading axes flattened), Z autoregressive inputs, W input features
per autoregressive input (1 for a real-valued input; M for a one-hot M-way code, E for an
embedded one), C context width, H hidden width, P outputs per input dimension (e.g. 2: a mean
and a scale; M: the logits of an M-way categorical).

Forward, with masked weights :math:`\\tilde W = W \\odot M` formed once per call::

    a_1 = x W~_0 + c W_c + b_0          (N, H_1)   x: (N, Z*W); c: context, unmasked
    h_l = act(a_l)                       (N, H_l)
    a_{l+1} = h_l W~_l + b_l             (N, H_{l+1})
    y = h_L W~_L + b_L [+ x W~_d]        (N, P*Z)  -> (..., P, Z)

The masks never enter the GEMMs' inner loops: each weight is multiplied by its mask
(a Z*H or H*H elementwise product, against the N*H*H of the GEMM) and the product goes to
``xp.matmul`` as a dense matrix. The gradient of a masked weight is masked, so a weight that
starts at zero under its mask stays zero under any optimizer that maps a zero gradient to a
zero step (SGD, Adam).
"""

from typing import NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_cache,
    check_float_dtype,
    check_grad,
    check_input,
    check_lead,
    check_param,
    get_xp,
    to_numpy,
)
from ..ops import ACTIVATIONS, linear_backward, linear_forward
from .init import glorot_uniform
from .module import Module

__all__ = ["MADE", "MADECache", "made_degrees"]


def made_degrees(n_in, hidden, order):
    """Degrees of the input, hidden and output units (Germain et al. 2015, sec. 4).

    Parameters
    ----------
    n_in : int
        Z, the number of autoregressive inputs.
    hidden : tuple of int
        Hidden widths.
    order : ndarray of int, a permutation of range(Z)
        ``order[j]`` is the input that comes j-th; its degree is j + 1.

    Returns
    -------
    list of ndarray of int
        ``[m_in (Z,), m_1 (H_1,), ..., m_L (H_L,)]``.

    Notes
    -----
    Hidden degrees cycle through 1, ..., Z - 1 (all 0 when Z = 1): the deterministic form of
    Germain et al.'s uniform draw from [min m^{l-1}, Z - 1]. With every width at least Z - 1
    each degree occurs in every layer, so every connection the order allows exists.
    """
    func = "made_degrees"
    n_in = check_param(n_in, "n_in", func, kind="int", low=1, low_inclusive=True)
    check_array(order, "order", func, dtype="int", shape=(n_in,), shape_of="n_in")
    if not np.array_equal(np.sort(order), np.arange(n_in)):
        raise ValueError(
            f"{func}: expected order to be a permutation of range({n_in}), got {order!r}."
        )
    m_in = np.empty(n_in, dtype=np.int64)
    m_in[np.asarray(order)] = np.arange(1, n_in + 1)
    degrees = [m_in]
    for width in hidden:
        if n_in > 1:
            degrees.append(np.arange(width) % (n_in - 1) + 1)
        else:
            degrees.append(np.zeros(width, dtype=np.int64))
    return degrees


class MADECache(NamedTuple):
    """What MADE.backward needs.

    x : (N, Z*W) input rows; context : (M, C) context rows or None; lead : x's leading shape;
    ctx_lead : context's leading shape; linear : per layer LinearCache (masked W inside);
    activation : per hidden layer activation cache.
    """

    x: object
    context: object
    lead: tuple
    ctx_lead: tuple
    linear: list
    activation: list


class MADE(Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015).

    Parameters
    ----------
    n_in : int
        Z, the autoregressive dimension.
    hidden : sequence of int
        Hidden widths, at least one layer, each at least Z - 1 (so every connection the
        order allows exists).
    rng : numpy.random.Generator
        Draws the Glorot-uniform weights (and the order when ``order="random"``).
    n_outputs_per_dim : int, default 1
        P output heads, each of Z values: output (p, i) depends only on the inputs before i.
    input_width : int, default 1
        W, the features per autoregressive input: x has Z*W columns, dimension-major (columns
        ``i*W ... i*W + W - 1`` belong to input i and share its degree), so an input can be a
        one-hot or embedded category. Outputs stay (P, Z).
    context_dim : int, default 0
        C, the width of an unmasked conditioning input added into the first hidden layer
        (the IAF's h). 0: no context.
    order : {"natural", "reverse", "random"} or sequence of int, default "natural"
        The autoregressive order: a permutation whose j-th entry is the input that comes
        j-th. ``"random"`` draws it from ``rng``.
    direct : bool, default False
        Add a direct input-to-output connection, masked strictly (input j reaches output i
        only if j comes before i).
    activation : {"tanh", "relu", "softplus", "sigmoid"}, default "tanh"
    dtype : float32 or float64

    Attributes
    ----------
    order : ndarray of int (Z,)
    degrees : list of ndarray of int
        Input degrees (Z,) then each hidden layer's.
    masks : dict of str -> ndarray
        One per masked weight (``W0 ... W<L>``, ``Wd``), 0/1 in the parameters' dtype.

    Notes
    -----
    Parameters: ``W0`` (Z, H_1), ``b0``, ``Wc`` (C, H_1) with a context, ``W1 ... W<L>``
    (the output weight (H_L, P*Z), columns head-major: column p*Z + i is head p of input i),
    ``b<l>``, and ``Wd`` (Z, P*Z) with ``direct`` (``W0`` and ``Wd`` have Z*W rows with an
    input width W > 1). The masks (Germain et al. eqs. 12-13) are

    .. math::

        M^{(l)}_{k'k} = [m^l(k) \\ge m^{l-1}(k')], \\qquad
        M^{out}_{k,(p,i)} = [m^0(i) > m^L(k)], \\qquad
        M^{d}_{j,(p,i)} = [m^0(i) > m^0(j)] .

    Backward: with :math:`\\tilde W = W\\odot M`, the affine-layer gradients are
    :math:`dx = dy\\,\\tilde W^\\top` and :math:`dW = (x^\\top dy)\\odot M` (the chain rule
    through the elementwise product with a constant mask).

    References
    ----------
    M. Germain, K. Gregor, I. Murray, H. Larochelle, "MADE: Masked Autoencoder for
    Distribution Estimation", ICML 2015, sec. 4 and eqs. 12-13.
    """

    def __init__(
        self,
        n_in,
        hidden,
        rng,
        *,
        n_outputs_per_dim=1,
        input_width=1,
        context_dim=0,
        order="natural",
        direct=False,
        activation="tanh",
        dtype=np.float32,
    ):
        super().__init__()
        func = "MADE"
        Z = check_param(n_in, "n_in", func, kind="int", low=1, low_inclusive=True)
        hidden = tuple(
            check_param(h, "hidden", func, kind="int", low=1, low_inclusive=True) for h in hidden
        )
        if not hidden:
            raise ValueError(
                f"{func}: expected hidden to list at least one hidden width, got (). Pass e.g. "
                f"hidden=({max(2 * Z, 2)},)."
            )
        if min(hidden) < Z - 1:
            raise ValueError(
                f"{func}: expected every hidden width >= n_in - 1 ({Z - 1}), got hidden="
                f"{hidden}. Narrower layers drop connections the order allows."
            )
        P = check_param(
            n_outputs_per_dim, "n_outputs_per_dim", func, kind="int", low=1, low_inclusive=True
        )
        W = check_param(input_width, "input_width", func, kind="int", low=1, low_inclusive=True)
        C = check_param(context_dim, "context_dim", func, kind="int", low=0, low_inclusive=True)
        self.activation = check_param(
            activation,
            "activation",
            func,
            kind="choice",
            choices=("tanh", "relu", "softplus", "sigmoid"),
        )
        dtype = check_float_dtype(dtype, func)  # None included: numpy.dtype(None) is float64
        self.order = self._make_order(order, Z, rng, func)
        self.n_in, self.hidden, self.n_outputs_per_dim = Z, hidden, P
        self.input_width = W
        self.context_dim, self.direct = C, bool(direct)
        self.degrees = made_degrees(Z, hidden, self.order)

        m_in, widths = self.degrees[0], (Z * W, *hidden)
        m_cols = np.repeat(m_in, W)  # (Z*W,): an input's W features share its degree
        self.masks = {}
        for l in range(len(hidden)):  # hidden layers: m_l(k) >= m_{l-1}(k')
            m_prev = m_cols if l == 0 else self.degrees[l]
            mask = self.degrees[l + 1][None, :] >= m_prev[:, None]
            self._add_masked(f"W{l}", mask, widths[l], widths[l + 1], rng, dtype)
            self._add_param(f"b{l}", np.zeros(widths[l + 1], dtype=dtype))
            if l == 0 and C:
                self._add_param("Wc", glorot_uniform(rng, C, hidden[0], dtype))
        L = len(hidden)
        out_mask = np.tile(m_in[None, :] > self.degrees[L][:, None], (1, P))  # (H_L, P*Z)
        self._add_masked(f"W{L}", out_mask, hidden[-1], P * Z, rng, dtype)
        self._add_param(f"b{L}", np.zeros(P * Z, dtype=dtype))
        if self.direct:
            d_mask = np.tile(m_in[None, :] > m_cols[:, None], (1, P))  # (Z*W, P*Z)
            self._add_masked("Wd", d_mask, Z * W, P * Z, rng, dtype)

    @staticmethod
    def _make_order(order, Z, rng, func):
        if isinstance(order, str):
            order = check_param(
                order, "order", func, kind="choice", choices=("natural", "reverse", "random")
            )
            if order == "random":
                return rng.permutation(Z)
            return np.arange(Z) if order == "natural" else np.arange(Z)[::-1].copy()
        perm = np.asarray(order)
        if perm.shape != (Z,) or perm.dtype.kind not in "iu" or set(perm.tolist()) != set(range(Z)):
            raise ValueError(
                f"{func}: expected order to be 'natural', 'reverse', 'random' or a permutation "
                f"of range({Z}), got {order!r}."
            )
        return perm.astype(np.int64)

    def _add_masked(self, name, mask, fan_in, fan_out, rng, dtype):
        mask = mask.astype(dtype)
        self.masks[name] = mask
        self._add_param(name, glorot_uniform(rng, fan_in, fan_out, dtype) * mask)

    @property
    def n_layers(self):
        """Number of masked affine layers (hidden layers + output)."""
        return len(self.hidden) + 1

    @property
    def output_bias(self):
        """The output layer's bias: the parameter array itself (as ``MLP.output_bias``)."""
        return self.params[f"b{self.n_layers - 1}"]

    def to(self, xp):
        super().to(xp)
        asarray = xp.asarray if xp is not np else to_numpy
        self.masks = {k: asarray(v) for k, v in self.masks.items()}
        return self

    def _masked(self, name):
        return self.params[name] * self.masks[name]  # (fan_in, fan_out), dense for the GEMM

    # --- forward / backward ---------------------------------------------------------------

    def forward(self, x, context=None):
        """Outputs of every head for every input dimension.

        Parameters
        ----------
        x : ndarray of shape (..., Z*W)
        context : ndarray of shape (..., C), optional
            Required when ``context_dim > 0``. Its leading shape equals x's or a trailing part
            of it (e.g. h (B, C) for x (K, B, Z)): it is broadcast over x's leading axes.

        Returns
        -------
        y : ndarray of shape (..., P, Z)
            ``y[..., p, i]`` depends on x only through the inputs that precede i in ``order``.
        cache : MADECache

        Raises
        ------
        ValueError
            Wrong last axes, leading shapes that do not broadcast, NaN/Inf, a context that is
            missing or not expected.
        TypeError
            Non-float arrays, dtype or device other than the parameters'.
        """
        func = "MADE.forward"
        W0 = self.params["W0"]
        xp = get_xp(W0)
        check_input(x, "x", func, dtype=W0.dtype, xp=xp, last=self.n_in * self.input_width)
        if self.context_dim:
            if context is None:
                raise ValueError(
                    f"{func}: expected context of shape (..., {self.context_dim}) "
                    f"(context_dim={self.context_dim}), got None."
                )
            check_input(context, "context", func, dtype=W0.dtype, xp=xp, last=self.context_dim)
            check_lead(context, "context", x, "x", func)
        elif context is not None:
            raise ValueError(
                f"{func}: expected context None (this MADE has context_dim=0), got an array of "
                f"shape {tuple(context.shape)}. Build it with context_dim={context.shape[-1]}."
            )
        return self._forward(x, context)

    def _forward(self, x, context):
        """Forward on checked input (also the inner loop of the IAF's Jacobian solves)."""
        act_forward, _ = ACTIVATIONS[self.activation]
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, self.n_in * self.input_width)  # (N, Z*W)
        c2, ctx_lead = None, ()
        lin, acts = [], []
        h = x2
        for l in range(self.n_layers):
            a, c = linear_forward(h, self._masked(f"W{l}"), self.params[f"b{l}"])  # (N, H)
            lin.append(c)
            if l == 0 and context is not None:
                ctx_lead = tuple(context.shape[:-1])
                c2 = context.reshape(-1, self.context_dim)  # (M, C)
                ctx = (c2 @ self.params["Wc"]).reshape(ctx_lead + (a.shape[1],))  # (..., H_1)
                # widths named, not -1: reshape(0, -1) is ambiguous for zero rows
                a = (a.reshape(lead + (a.shape[1],)) + ctx).reshape(x2.shape[0], a.shape[1])
            if l < self.n_layers - 1:
                h, ac = act_forward(a)
                acts.append(ac)
        if self.direct:
            a = a + x2 @ self._masked("Wd")  # (N, P*Z)
        y = a.reshape(lead + (self.n_outputs_per_dim, self.n_in))
        return y, MADECache(x2, c2, lead, ctx_lead, lin, acts)

    def backward(self, dy, cache):
        """Accumulate parameter gradients; return the input gradients.

        Parameters
        ----------
        dy : ndarray of shape (..., P, Z)
        cache : MADECache

        Returns
        -------
        dx : ndarray of shape (..., Z*W)
        dcontext : ndarray of the context's shape, or None without a context
            Summed over the leading axes the context was broadcast over.
        """
        self._check_dy(dy, cache, "MADE.backward")
        return self._backward(dy, cache, self.grads)

    def _check_dy(self, dy, cache, func):
        check_cache(cache, MADECache, func)
        shape = cache.lead + (self.n_outputs_per_dim, self.n_in)
        check_grad(dy, "dy", shape, func, dtype=cache.x.dtype)

    def input_vjp(self, dy, cache):
        """dx only, :math:`dy^\\top \\partial y/\\partial x`, leaving the gradients untouched.

        The building block of a flow's Jacobian-transpose solve: it skips every weight
        gradient GEMM and the context branch.
        """
        self._check_dy(dy, cache, "MADE.input_vjp")
        return self._backward(dy, cache, None)[0]

    def _backward(self, dy, cache, grads):
        _, act_backward = ACTIVATIONS[self.activation]
        N, ZW = cache.x.shape
        da = dy.reshape(N, self.n_outputs_per_dim * self.n_in)  # (N, P*Z)
        dx_direct = None
        if self.direct:
            Wd = self._masked("Wd")
            dx_direct = da @ Wd.T  # (N, Z*W)
            if grads is not None:
                grads["Wd"] += (cache.x.T @ da) * self.masks["Wd"]
        dcontext, dh = None, None
        for l in reversed(range(self.n_layers)):
            if l < self.n_layers - 1:
                da = act_backward(dh, cache.activation[l])
            if l == 0 and grads is not None and cache.context is not None:
                H = da.shape[1]
                n_b = len(cache.lead) - len(cache.ctx_lead)
                dctx = da.reshape(cache.lead + (H,))
                if n_b:
                    dctx = dctx.sum(axis=tuple(range(n_b)))
                dctx = dctx.reshape(-1, H)  # (M, H_1)
                grads["Wc"] += cache.context.T @ dctx
                dcontext = (dctx @ self.params["Wc"].T).reshape(
                    cache.ctx_lead + (self.context_dim,)
                )
            if grads is None:
                dh = da @ cache.linear[l].W.T  # masked W: dx = dy W~^T
                continue
            dh, dW, db = linear_backward(da, cache.linear[l])
            grads[f"W{l}"] += dW * self.masks[f"W{l}"]
            grads[f"b{l}"] += db
        dx = dh if dx_direct is None else dh + dx_direct
        return dx.reshape(cache.lead + (ZW,)), dcontext
