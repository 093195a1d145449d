"""Masked autoregressive flow step (Papamakarios et al. 2017), in the density direction.

Shape letters: S leading sample axes, Z latent, C context.

Forward (density evaluation, one MADE pass), for z (*S, Z)::

    (m, a) = MADE(z [, h])              (*S, Z) each; m_i, a_i depend on z_<i only
    u = (z - m) * exp(-a)               (*S, Z)
    logdet = -sum_Z a                   (*S,)   log|det du/dz|

Inverse (sampling, Z sequential MADE passes): ``z_i = u_i exp(a_i) + m_i`` in the order.
This is the IAF's mirror image: the MAF evaluates a density in one pass and samples slowly,
which is what a prior needs (the IWAE bound evaluates log p(z) at K B posterior samples and
samples from the prior only for pictures).
"""

from typing import NamedTuple

import numpy as np

from .._validation import get_xp
from .step import AutoregressiveStep

__all__ = ["MAFStep", "MAFCache"]


class MAFCache(NamedTuple):
    """made : MADECache; u : (*S, Z) the output; inv_scale : (*S, Z) exp(-a)."""

    made: object
    u: object
    inv_scale: object


class MAFStep(AutoregressiveStep):
    """One MAF step: a MADE with two heads (m, a) and the affine autoregressive map.

    Parameters
    ----------
    n_latent : int
        Z.
    hidden : sequence of int
        The MADE's hidden widths (each >= Z - 1).
    rng : numpy.random.Generator
    context_dim : int, default 0
        C, an unmasked conditioning input of the MADE (0: none).
    reverse : bool, default False
        Use the reversed order; alternate it between stacked steps.
    order : sequence of int, optional
        An explicit autoregressive order (a permutation); overrides ``reverse``.
    identity_init : bool, default True
        Zero the output layer (and direct connection), so that a fresh step is the identity
        (m = a = 0) and a fresh stack of steps is the standard normal's density.
    direct : bool, default False
    activation : {"tanh", "relu", "softplus", "sigmoid"}, default "tanh"
    dtype : float32 or float64

    Notes
    -----
    Parameters are the MADE's; ``y[..., 0, :]`` is m and ``y[..., 1, :]`` is a (the log
    scale, unconstrained: no clipping, so every gradient claimed is exact).

    The Jacobian :math:`\\partial u/\\partial z` is triangular in the order with diagonal
    :math:`e^{-a}`, so :math:`\\log|\\det| = -\\sum_i a_i`. Backward:

    .. math::

        dz \\mathrel{+}= du\\odot e^{-a}, \\quad dm = -du\\odot e^{-a}, \\quad
        da = -du\\odot u - dlogdet,

    then ``(dm, da)`` goes back through the MADE, which adds its own dz and dh.

    References
    ----------
    G. Papamakarios, T. Pavlakou, I. Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017, sec. 3.1, eqs. 2-4.
    """

    _cache_type, _dout_name, _shape_of = MAFCache, "du", "u"

    def __init__(
        self,
        n_latent,
        hidden,
        rng,
        *,
        context_dim=0,
        reverse=False,
        order=None,
        identity_init=True,
        direct=False,
        activation="tanh",
        dtype=np.float32,
    ):
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
        if identity_init:
            L = self.n_layers - 1
            for name in (f"W{L}", f"b{L}", "Wd"):
                if name in self.params:
                    self.params[name][...] = 0

    def forward(self, z, h=None):
        """Map z to the base variable u (the density direction).

        Parameters
        ----------
        z : ndarray of shape (*S, Z)
        h : ndarray of shape (..., C), optional
            Required when ``context_dim > 0``; broadcast over z's leading sample axes.

        Returns
        -------
        u : ndarray of shape (*S, Z)
        logdet : ndarray of shape (*S,)
            :math:`\\log|\\det\\partial u/\\partial z| = -\\sum_i a_i`.
        cache : MAFCache
        """
        self._check(z, h, "MAFStep.forward")
        y, mc = self._forward(z, h)  # (*S, 2, Z)
        m, a = y[..., 0, :], y[..., 1, :]
        inv_scale = get_xp(a).exp(-a)  # (*S, Z)
        u = (z - m) * inv_scale  # (*S, Z)
        return u, -a.sum(axis=-1), MAFCache(mc, u, inv_scale)

    def _dy(self, du, dlogdet, cache):
        """The MADE output gradient (dm, da) and the direct path du * exp(-a)."""
        xp = get_xp(cache.u)
        u, inv_scale = cache.u, cache.inv_scale
        dy = xp.zeros(u.shape[:-1] + (2, u.shape[-1]), dtype=u.dtype)  # (*S, 2, Z)
        dz = xp.zeros_like(u)
        if du is not None:
            dz = du * inv_scale
            dy[..., 0, :] = -dz
            dy[..., 1, :] = -du * u
        if dlogdet is not None:
            dy[..., 1, :] -= dlogdet[..., None]
        return dy, dz

    def backward(self, du, dlogdet, cache):
        """Accumulate the MADE's gradients; return (dz, dh).

        Parameters
        ----------
        du : ndarray of shape (*S, Z) or None (zero)
        dlogdet : ndarray of shape (*S,) or None (zero)
        cache : MAFCache

        Returns
        -------
        dz : ndarray of shape (*S, Z)
        dh : ndarray of h's shape, or None without a context
        """
        return self._step_backward(du, dlogdet, cache, "MAFStep.backward")

    def input_vjp(self, du, dlogdet, cache):
        """dz of :meth:`backward` without touching the parameter gradients."""
        return self._step_input_vjp(du, dlogdet, cache, "MAFStep.input_vjp")

    def inverse(self, u, h=None):
        """The z that the step maps to ``u`` (the sampling direction; no backward).

        Notes
        -----
        :math:`z_i = u_i e^{a_i} + m_i` with m, a evaluated at z itself; they depend only on
        the dimensions before i, so solving one dimension per MADE pass in the order (the
        unsolved ones held at 0) is exact after Z passes.
        """
        self._check(u, h, "MAFStep.inverse", zname="u")
        xp = get_xp(u)
        z = xp.zeros_like(u)
        for i in self.order:
            y, _ = self._forward(z, h)
            z[..., i] = u[..., i] * xp.exp(y[..., 1, i]) + y[..., 0, i]
        return z
