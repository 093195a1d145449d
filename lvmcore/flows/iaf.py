"""Inverse autoregressive flow step, the numerically stable gated form (Kingma et al. 2016).

Shape letters: S leading sample axes (K), B batch, Z latent, C context (the encoder's h).

Forward of one step, for z (*S, B, Z) and h (B, C)::

    (m, s_raw) = MADE(z, h)                  (*S, B, Z) each
    s  = sigmoid(s_raw + forget_bias)        (*S, B, Z)
    z' = s * z + (1 - s) * m                 (*S, B, Z)
    logdet = sum_Z log s                     (*S, B)

``1 - s`` is computed as ``sigmoid(-(s_raw + forget_bias))`` and ``log s`` as
``log_sigmoid(...)``: both exact where ``s`` rounds to 1 or 0.

The gate (everything after the MADE) and its backward run as one fused pass each, the kernel
``iaf_gate`` / ``iaf_gate_backward`` of the array's backend (``kernels/iaf_gate.py``, whose
NumPy reference is the readable form of the math above), on the step's arrays viewed as
(N, Z) rows, N the product of the leading axes.
"""

from typing import NamedTuple

import numpy as np

from .._validation import check_cache, check_grad, check_param, get_xp
from ..backend import get_backend
from ..nn.made import MADE
from .step import AutoregressiveStep

__all__ = ["IAFStep", "IAFCache"]


class IAFCache(NamedTuple):
    """made : MADECache; z : (*S, B, Z) the step's input; y : (*S, B, 2, Z) the MADE output
    (m, s_raw); s, oms (= 1 - s) : (*S, B, Z). All C-contiguous; ``m`` is a view of y."""

    made: object
    z: object
    y: object
    s: object
    oms: object

    @property
    def m(self):
        """(*S, B, Z): the shift, ``y[..., 0, :]``."""
        return self.y[..., 0, :]


def _rows(xp, a, width):
    """(..., width) as a C-contiguous (N, width) view (a copy only for a strided input)."""
    return xp.ascontiguousarray(a).reshape(-1, width)


class IAFStep(AutoregressiveStep):
    """One IAF step: a MADE with two heads (m, s_raw) and the gated update.

    Parameters
    ----------
    n_latent : int
        Z.
    hidden : sequence of int
        The MADE's hidden widths (each >= Z - 1).
    rng : numpy.random.Generator
    context_dim : int, default 0
        C, the width of the encoder feature h fed (unmasked) into the MADE.
    reverse : bool, default False
        Use the reversed order Z-1, ..., 0; alternate it between steps so that every
        dimension gets to depend on every other one.
    order : sequence of int, optional
        An explicit autoregressive order (a permutation); overrides ``reverse``.
    forget_bias : float, default 1.0
        Added to s_raw before the sigmoid, so that a fresh step starts near the identity
        (s = sigmoid(1) = 0.73 at zero output).
    direct : bool, default False
        The MADE's strictly masked input-to-output connection.
    activation : {"tanh", "relu", "softplus", "sigmoid"}, default "tanh"
    dtype : float32 or float64

    Notes
    -----
    Parameters are the MADE's (``W0, b0, [Wc], W1, b1, ..., [Wd]``); ``y[..., 0, :]`` is m and
    ``y[..., 1, :]`` is s_raw.

    The Jacobian :math:`J = \\partial z'/\\partial z` is triangular in the order with diagonal
    s (m and s at dimension i depend only on earlier dimensions), so
    :math:`\\log|\\det J| = \\sum_i \\log s_i`.

    Backward, with :math:`t = s_{raw} + b_f`, :math:`\\sigma'(t) = s(1-s)` and
    :math:`d\\log s/dt = 1 - s`:

    .. math::

        dz \\mathrel{+}= dz'\\odot s, \\quad dm = dz'\\odot(1-s), \\quad
        ds_{raw} = (1-s)\\odot\\big(dz'\\odot(z-m)\\odot s + dlogdet\\big),

    then ``(dm, ds_raw)`` goes back through the MADE, which adds its own dz and dh.

    References
    ----------
    D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling, "Improved
    Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016, eqs. 11-15 and
    Algorithm 1 (the LSTM-type update).
    """

    _cache_type, _dout_name, _shape_of = IAFCache, "dz_new", "z"

    def __init__(
        self,
        n_latent,
        hidden,
        rng,
        *,
        context_dim=0,
        reverse=False,
        order=None,
        forget_bias=1.0,
        direct=False,
        activation="tanh",
        dtype=np.float32,
    ):
        self.forget_bias = check_param(forget_bias, "forget_bias", "IAFStep")
        super().__init__(
            n_latent,
            hidden,
            rng,
            context_dim=context_dim,
            reverse=reverse,
            order=order,
            direct=direct,
            activation=activation,
            dtype=dtype,
        )

    def _gate(self, z, h):
        """MADE, then the fused gate: (z_new, logdet, cache) on checked input."""
        y, mc = self._forward(z, h)  # (..., 2, Z)
        xp, Z, lead = get_xp(y), self.n_in, tuple(z.shape[:-1])
        y2 = xp.ascontiguousarray(y).reshape(-1, 2, Z)  # (N, 2, Z)
        z2 = _rows(xp, z, Z)  # (N, Z)
        gate = get_backend(z).kernel("iaf_gate")
        z_new, s, oms, logdet = gate(y2, z2, self.forget_bias)  # (N, Z) x3, (N,)
        cache = IAFCache(
            mc,
            z2.reshape(lead + (Z,)),
            y2.reshape(lead + (2, Z)),
            s.reshape(lead + (Z,)),
            oms.reshape(lead + (Z,)),
        )
        return z_new.reshape(lead + (Z,)), logdet.reshape(lead), cache

    def forward(self, z, h=None):
        """Apply the step.

        Parameters
        ----------
        z : ndarray of shape (*S, B, Z)
        h : ndarray of shape (B, C) or (*S, B, C), optional
            Required when ``context_dim > 0``.

        Returns
        -------
        z_new : ndarray of shape (*S, B, Z)
        logdet : ndarray of shape (*S, B)
            :math:`\\log|\\det \\partial z'/\\partial z| = \\sum_i \\log s_i`.
        cache : IAFCache
        """
        self._check(z, h, "IAFStep.forward")
        return self._gate(z, h)  # (*S, B, Z), (*S, B), cache

    def _dy(self, dz_new, dlogdet, cache):
        """The MADE output gradient (dm, ds_raw) and the direct path dz' * s, fused."""
        xp, Z, lead = get_xp(cache.s), self.n_in, tuple(cache.z.shape[:-1])
        bwd = get_backend(cache.z).kernel("iaf_gate_backward")
        dy, dz = bwd(
            None if dz_new is None else _rows(xp, dz_new, Z),
            None if dlogdet is None else xp.ascontiguousarray(dlogdet).reshape(-1),
            cache.y.reshape(-1, 2, Z),
            cache.z.reshape(-1, Z),
            cache.s.reshape(-1, Z),
            cache.oms.reshape(-1, Z),
        )  # (N, 2, Z), (N, Z)
        return dy.reshape(lead + (2, Z)), dz.reshape(lead + (Z,))

    def backward(self, dz_new, dlogdet, cache):
        """Accumulate the MADE's gradients; return (dz, dh).

        Parameters
        ----------
        dz_new : ndarray of shape (*S, B, Z) or None (zero)
        dlogdet : ndarray of shape (*S, B) or None (zero)
        cache : IAFCache

        Returns
        -------
        dz : ndarray of shape (*S, B, Z)
        dh : ndarray of h's shape, or None without a context
        """
        return self._step_backward(dz_new, dlogdet, cache, "IAFStep.backward")

    def input_vjp(self, dz_new, dlogdet, cache):
        """dz of :meth:`backward` without touching the parameter gradients."""
        return self._step_input_vjp(dz_new, dlogdet, cache, "IAFStep.input_vjp")

    def solve_transpose(self, r, cache):
        """:math:`J^{-\\top} r`, J the step's Jacobian at the cached input.

        Parameters
        ----------
        r : ndarray of shape (*S, B, Z)

        Returns
        -------
        ndarray of shape (*S, B, Z)

        Notes
        -----
        :math:`J = \\mathrm{diag}(s) + N` with N strictly triangular in the order, so
        :math:`J^\\top g = r` is solved by :math:`g \\leftarrow (r - N^\\top g)/s`, exact after Z
        sweeps (N is nilpotent: after sweep k the last k dimensions in the order are final).
        :math:`N^\\top g` is the MADE's input VJP of
        :math:`(g(1-s),\\, g(z-m)s(1-s))`, so the cost is Z - 1 MADE backward passes without
        weight gradients.
        """
        check_cache(cache, IAFCache, "IAFStep.solve_transpose")
        check_grad(r, "r", cache.z.shape, "IAFStep.solve_transpose", dtype=cache.z.dtype)
        xp, Z, lead = get_xp(cache.s), self.n_in, tuple(cache.z.shape[:-1])
        bwd = get_backend(cache.z).kernel("iaf_gate_backward")
        y, z = cache.y.reshape(-1, 2, Z), cache.z.reshape(-1, Z)  # (N, 2, Z), (N, Z)
        s, oms = cache.s.reshape(-1, Z), cache.oms.reshape(-1, Z)
        r = _rows(xp, r, Z)  # (N, Z)
        g = r / s
        dy = xp.empty_like(y)  # (N, 2, Z), reused by every sweep
        for _ in range(Z - 1):
            # (g (1 - s), g (z - m) s (1 - s)): the gate's backward with dz' = g, no dlogdet
            bwd(g, None, y, z, s, oms, dy, None, False)
            v = MADE.input_vjp(self, dy.reshape(lead + (2, Z)), cache.made)  # (..., Z)
            xp.subtract(r, v.reshape(-1, Z), out=g)
            xp.divide(g, s, out=g)
        return g.reshape(lead + (Z,))

    def inverse(self, z_new, h=None):
        """The z that the step maps to ``z_new`` (no backward; for densities and tests).

        Notes
        -----
        :math:`z_i = (z'_i - (1-s_i)m_i)/s_i` with m, s evaluated at z itself; since they
        depend only on earlier dimensions, solving one dimension per MADE pass in the order
        (the unsolved ones held at 0, never at a diverging guess) is exact after Z passes.
        """
        self._check(z_new, h, "IAFStep.inverse", zname="z_new")
        z = get_xp(z_new).zeros_like(z_new)
        for i in self.order:  # dimension i's m and s see only dimensions already solved
            _, _, c = self._gate(z, h)
            z[..., i] = (z_new[..., i] - c.oms[..., i] * c.m[..., i]) / c.s[..., i]
        return z
