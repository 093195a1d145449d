"""Planar flow step (Rezende and Mohamed 2015) with the invertibility constraint on u.

Shape letters: S leading sample axes (K), B batch, Z latent, C context. The parameters
(u, w, b) are global (u, w of shape (Z,), b scalar) or amortized, one set per data row
(u, w of shape (B, Z), b (B,), from a linear map of the encoder's h); either way they are
broadcast over the leading sample axes of z.

Forward, for z (*S, B, Z)::

    wu    = w . u,   |w|^2 = w . w                               (...,)
    u_hat = u + (m(wu) - wu) w / |w|^2,  m(a) = -1 + softplus(a)  (..., Z)
    a     = w . z + b,  t = tanh(a)                               (*S, B)
    z'    = z + u_hat t                                           (*S, B, Z)
    logdet = log(1 + (1 - t^2) w . u_hat)                         (*S, B)

Since ``w . u_hat = m(wu) > -1`` and ``0 < 1 - t^2 <= 1``, the determinant is positive and
is computed as ``t^2 + (1 - t^2) softplus(wu)``: a sum of non-negative terms, with no
cancellation when ``m(wu)`` is near -1.
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
)
from ..nn.init import glorot_uniform
from ..nn.module import Module
from ..ops import sigmoid, softplus
from .step import check_step_input

__all__ = ["PlanarStep", "PlanarCache", "planar_forward", "planar_backward"]


class PlanarCache(NamedTuple):
    """z (*S, B, Z); u, w, u_hat (..., Z); wu, ww, c, sp (...,): w.u, |w|^2,
    (m(wu) - wu)/|w|^2 and softplus(wu); t, det (*S, B); n_sample: leading axes of z the
    parameters were broadcast over."""

    z: object
    u: object
    w: object
    u_hat: object
    wu: object
    ww: object
    c: object
    sp: object
    t: object
    det: object
    n_sample: int


def _sum_lead(x, n):
    return x.sum(axis=tuple(range(n))) if n else x


def planar_forward(z, u, w, b):
    """One planar step with the invertibility constraint; see the module docstring.

    Parameters
    ----------
    z : ndarray of shape (*S, B, Z)
    u, w : ndarray of shape (..., Z)
        ``...`` is a trailing part of z's leading shape: () for global parameters, (B,) for
        amortized ones.
    b : ndarray of shape (...)
        The same leading shape as u and w.

    Returns
    -------
    z_new : ndarray of shape (*S, B, Z)
    logdet : ndarray of shape (*S, B)
    cache : PlanarCache

    Raises
    ------
    ValueError
        Shapes that disagree, NaN/Inf, or a w with |w| = 0 (the constraint divides by it).
    TypeError
        Non-float arrays, mixed dtypes or devices.

    Notes
    -----
    :math:`\\psi = (1 - t^2) w` is the gradient of :math:`\\tanh(w\\cdot z + b)`, so
    :math:`\\partial z'/\\partial z = I + \\hat u\\psi^\\top` and, by the matrix determinant
    lemma, :math:`\\det = 1 + \\hat u\\cdot\\psi = 1 + (1-t^2)\\,m(w\\cdot u)`.

    References
    ----------
    D. J. Rezende and S. Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
    eqs. 10-12 and Appendix A.1 (the constraint on u).
    """
    func = "planar_forward"
    check_array(z, "z", func)
    xp = get_xp(z)
    hint = "u, w and z share the latent width Z."
    check_input(w, "w", func, dtype=z.dtype, xp=xp, last=z.shape[-1], hint=hint)
    check_input(u, "u", func, dtype=z.dtype, xp=xp, last=z.shape[-1], hint=hint)
    if tuple(u.shape) != tuple(w.shape):
        raise ValueError(
            f"{func}: expected u and w to have the same shape, got {tuple(u.shape)} and "
            f"{tuple(w.shape)}."
        )
    n = check_lead(w, "w", z, "z", func)
    check_input(b, "b", func, dtype=z.dtype, xp=xp, min_ndim=0)
    if tuple(b.shape) != tuple(w.shape[:-1]):
        raise ValueError(
            f"{func}: expected b to have shape {tuple(w.shape[:-1])} (w's without the last "
            f"axis), got {tuple(b.shape)}."
        )
    ww = (w * w).sum(axis=-1)  # (...)
    if bool((ww == 0).any()):
        raise ValueError(
            f"{func}: expected w to be non-zero (the constraint on u divides by |w|^2), got "
            f"{int((ww == 0).sum())} zero rows. Initialise w away from 0."
        )
    return _planar_forward(z, u, w, b, ww, n)


def _planar_forward(z, u, w, b, ww, n):
    wu = (w * u).sum(axis=-1)  # (...)
    sp = softplus(wu)  # (...), m(wu) = sp - 1
    c = (softplus(-wu) - 1) / ww  # (m(wu) - wu) / |w|^2, as softplus(a) - a = softplus(-a)
    u_hat = u + c[..., None] * w  # (..., Z)
    t = get_xp(z).tanh((z * w).sum(axis=-1) + b)  # (*S, B)
    z_new = z + u_hat * t[..., None]  # (*S, B, Z)
    t2 = t * t
    det = t2 + (1 - t2) * sp  # = 1 + (1 - t^2) m(wu) > 0
    return z_new, get_xp(z).log(det), PlanarCache(z, u, w, u_hat, wu, ww, c, sp, t, det, n)


def _dt(dz_new, dlogdet, cache):
    """d/dt of the loss (*S, B) and the gradient that flows straight through z' = z + ..."""
    t, g = cache.t, 1 - cache.t * cache.t
    xp = get_xp(t)
    dt = xp.zeros_like(t)
    if dz_new is not None:
        dt += (dz_new * cache.u_hat).sum(axis=-1)
    ddet = None
    if dlogdet is not None:
        ddet = dlogdet / cache.det
        dt += ddet * (-2 * t * (cache.sp - 1))  # d det / dt = -2 t m(wu)
    return dt, g, ddet


def planar_backward(dz_new, dlogdet, cache):
    """Gradients of one planar step.

    Parameters
    ----------
    dz_new : ndarray of shape (*S, B, Z) or None (zero)
    dlogdet : ndarray of shape (*S, B) or None (zero)
    cache : PlanarCache

    Returns
    -------
    dz : ndarray of shape (*S, B, Z)
    du, dw : ndarray of u's shape
    db : ndarray of b's shape
        Summed over the sample axes the parameters were broadcast over.

    Notes
    -----
    With :math:`g = 1 - t^2` and :math:`\\det = t^2 + g\\,sp`, :math:`sp = softplus(w\\cdot u)`:
    :math:`dt = dz'\\cdot\\hat u - 2t\\,m\\,dlogdet/\\det`, :math:`da = g\\,dt`,
    :math:`dz = dz' + da\\,w`, :math:`dw \\mathrel{+}= da\\,z`, :math:`db = da`,
    :math:`d\\hat u = t\\,dz'`, :math:`dsp = g\\,dlogdet/\\det`. Then through
    :math:`\\hat u = u + c\\,w` with :math:`c = (softplus(-w\\cdot u) - 1)/|w|^2`:
    :math:`du = d\\hat u + dwu\\,w`, :math:`dw \\mathrel{+}= c\\,d\\hat u + dwu\\,u + 2\\,dww\\,w`
    where :math:`dc = d\\hat u\\cdot w`, :math:`dwu = -dc\\,\\sigma(-w\\cdot u)/|w|^2 +
    dsp\\,\\sigma(w\\cdot u)` and :math:`dww = -dc\\,c/|w|^2`.
    """
    _check_planar_grads(dz_new, dlogdet, cache, "planar_backward")
    n, z, w, u = cache.n_sample, cache.z, cache.w, cache.u
    dt, g, ddet = _dt(dz_new, dlogdet, cache)
    da = dt * g  # (*S, B)
    dz = da[..., None] * w if dz_new is None else dz_new + da[..., None] * w  # (*S, B, Z)
    dw = _sum_lead(da[..., None] * z, n)  # (..., Z)
    db = _sum_lead(da, n)  # (...)
    du_hat = (
        get_xp(z).zeros_like(u) if dz_new is None else _sum_lead(dz_new * cache.t[..., None], n)
    )
    dsp = 0 if ddet is None else _sum_lead(ddet * g, n)  # (...)
    dc = (du_hat * w).sum(axis=-1)  # (...)
    dwu = -dc * sigmoid(-cache.wu) / cache.ww + dsp * sigmoid(cache.wu)
    dww = -dc * cache.c / cache.ww
    du = du_hat + dwu[..., None] * w
    dw = dw + cache.c[..., None] * du_hat + dwu[..., None] * u + 2 * dww[..., None] * w
    return dz, du, dw, db


def _check_planar_grads(dz_new, dlogdet, cache, func):
    check_cache(cache, PlanarCache, func)
    if dz_new is not None:
        check_grad(dz_new, "dz_new", cache.z.shape, func, dtype=cache.z.dtype)
    if dlogdet is not None:
        check_grad(dlogdet, "dlogdet", cache.z.shape[:-1], func, dtype=cache.z.dtype)


def planar_input_vjp(dz_new, dlogdet, cache):
    """dz of :func:`planar_backward` alone (no parameter gradients)."""
    _check_planar_grads(dz_new, dlogdet, cache, "planar_input_vjp")
    dt, g, _ = _dt(dz_new, dlogdet, cache)
    dz = (dt * g)[..., None] * cache.w
    return dz if dz_new is None else dz_new + dz


def planar_solve_transpose(r, cache):
    """:math:`J^{-\\top} r` by Sherman-Morrison: :math:`J^\\top = I + \\psi\\hat u^\\top`, so
    :math:`J^{-\\top} r = r - \\psi\\,(\\hat u\\cdot r)/\\det`, :math:`\\psi = (1-t^2)w`."""
    check_cache(cache, PlanarCache, "planar_solve_transpose")
    check_grad(r, "r", cache.z.shape, "planar_solve_transpose", dtype=cache.z.dtype)
    g = 1 - cache.t * cache.t
    coef = g * (r * cache.u_hat).sum(axis=-1) / cache.det  # (*S, B)
    return r - coef[..., None] * cache.w


def planar_inverse(z_new, u, w, b, n_iter=100):
    """The z with ``planar_forward(z, u, w, b)[0] == z_new`` (no backward; for densities).

    Notes
    -----
    With :math:`\\alpha = w\\cdot z + b`, :math:`w\\cdot z' + b = \\alpha + m\\tanh\\alpha`,
    :math:`m = w\\cdot\\hat u = m(w\\cdot u) > -1`: strictly increasing in :math:`\\alpha`
    and within :math:`|m|` of :math:`\\alpha`, so bisection on
    :math:`[y - |m|, y + |m|]` finds it; then :math:`z = z' - \\hat u\\tanh\\alpha`.
    """
    xp = get_xp(z_new)
    ww = (w * w).sum(axis=-1)
    n = len(z_new.shape) - len(w.shape)
    cache = _planar_forward(z_new, u, w, b, ww, n)[2]
    m = cache.sp - 1  # (...)
    y = (z_new * w).sum(axis=-1) + b  # (*S, B)
    lo, hi = y - xp.abs(m), y + xp.abs(m)
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        above = mid + m * xp.tanh(mid) > y
        hi, lo = xp.where(above, mid, hi), xp.where(above, lo, mid)
    alpha = 0.5 * (lo + hi)
    return z_new - cache.u_hat * xp.tanh(alpha)[..., None]


class PlanarStep(Module):
    """A planar flow step with global or amortized (context-dependent) parameters.

    Parameters
    ----------
    n_latent : int
        Z.
    rng : numpy.random.Generator
        Draws the initial u and w (each entry uniform in +-1/sqrt(Z)), so that w is non-zero.
    context_dim : int, default 0
        0: global parameters ``u`` (Z,), ``w`` (Z,), ``b`` (1,). C > 0: amortized,
        ``[u | w | b] = h Wp + bp`` per row of h, with ``Wp`` (C, 2Z + 1) and ``bp`` (2Z + 1,)
        (as in van den Berg et al. 2018's amortized planar flows).
    dtype : float32 or float64

    Notes
    -----
    The flow step protocol (shared with :class:`lvmcore.flows.IAFStep`):
    ``forward(z, h) -> (z_new, logdet, cache)``,
    ``backward(dz_new, dlogdet, cache) -> (dz, dh)`` (accumulating parameter gradients),
    ``input_vjp``, ``solve_transpose`` and ``inverse``.
    """

    def __init__(self, n_latent, rng, *, context_dim=0, dtype=np.float32):
        super().__init__()
        func = "PlanarStep"
        Z = check_param(n_latent, "n_latent", func, kind="int", low=1, low_inclusive=True)
        C = check_param(context_dim, "context_dim", func, kind="int", low=0, low_inclusive=True)
        dtype = check_float_dtype(dtype, func)  # None included: numpy.dtype(None) is float64
        self.n_latent, self.context_dim = Z, C
        a = 1.0 / np.sqrt(Z)
        if C == 0:
            self._add_param("u", rng.uniform(-a, a, Z).astype(dtype))
            self._add_param("w", rng.uniform(-a, a, Z).astype(dtype))
            self._add_param("b", np.zeros(1, dtype=dtype))
        else:
            self._add_param("Wp", glorot_uniform(rng, C, 2 * Z + 1, dtype))
            bp = np.zeros(2 * Z + 1, dtype=dtype)
            bp[: 2 * Z] = rng.uniform(-a, a, 2 * Z)  # w's bias non-zero: w != 0 at h = 0
            self._add_param("bp", bp)

    def _check(self, z, h, func, zname="z"):
        check_step_input(
            z,
            h,
            func,
            zname=zname,
            like=next(iter(self.params.values())),
            n_latent=self.n_latent,
            context_dim=self.context_dim,
        )

    def _uwb(self, h):
        """(u, w, b) and, amortized, h's rows for the backward GEMM."""
        Z = self.n_latent
        if not self.context_dim:
            return self.params["u"], self.params["w"], self.params["b"].reshape(()), None
        h2 = h.reshape(-1, self.context_dim)  # (M, C)
        p = (h2 @ self.params["Wp"] + self.params["bp"]).reshape(h.shape[:-1] + (2 * Z + 1,))
        return p[..., :Z], p[..., Z : 2 * Z], p[..., 2 * Z], h2

    def forward(self, z, h=None):
        """Apply the step: z (*S, B, Z), h (B, C) when amortized.

        Returns
        -------
        z_new : ndarray of shape (*S, B, Z)
        logdet : ndarray of shape (*S, B)
        cache : tuple (PlanarCache, h rows or None)
        """
        func = "PlanarStep.forward"
        self._check(z, h, func)
        u, w, b, h2 = self._uwb(h)
        ww = (w * w).sum(axis=-1)
        if bool((ww == 0).any()):
            raise ValueError(
                f"{func}: expected w to be non-zero (the constraint on u divides by |w|^2), "
                f"got {int((ww == 0).sum())} zero rows."
            )
        n = len(z.shape) - len(w.shape)
        z_new, logdet, pc = _planar_forward(z, u, w, b, ww, n)
        return z_new, logdet, (pc, h2)

    def backward(self, dz_new, dlogdet, cache):
        """Accumulate the parameter gradients; return (dz, dh), dh None when global."""
        pc, h2 = self._cache(cache, "PlanarStep.backward")
        dz, du, dw, db = planar_backward(dz_new, dlogdet, pc)
        if not self.context_dim:
            self.grads["u"] += du
            self.grads["w"] += dw
            self.grads["b"] += db.reshape(1)
            return dz, None
        xp = get_xp(dz)
        dp = xp.concatenate([du, dw, db[..., None]], axis=-1).reshape(
            h2.shape[0], 2 * du.shape[-1] + 1
        )
        self.grads["Wp"] += h2.T @ dp
        self.grads["bp"] += dp.sum(axis=0)
        dh = (dp @ self.params["Wp"].T).reshape(du.shape[:-1] + (self.context_dim,))
        return dz, dh

    def input_vjp(self, dz_new, dlogdet, cache):
        """dz of :meth:`backward` without touching the parameter gradients."""
        return planar_input_vjp(dz_new, dlogdet, self._cache(cache, "PlanarStep.input_vjp")[0])

    def solve_transpose(self, r, cache):
        """:math:`J^{-\\top} r` at the cached input (Sherman-Morrison, O(Z))."""
        return planar_solve_transpose(r, self._cache(cache, "PlanarStep.solve_transpose")[0])

    @staticmethod
    def _cache(cache, func):
        """The (PlanarCache, h rows or None) pair that :meth:`forward` returned."""
        if not (isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[0], PlanarCache)):
            raise TypeError(
                f"{func}: expected cache to be the (PlanarCache, h rows) pair returned by "
                f"PlanarStep.forward, got {type(cache).__name__}. Pass the cache forward "
                f"returned."
            )
        return cache

    def inverse(self, z_new, h=None):
        """The z that the step maps to ``z_new`` (bisection; no backward)."""
        self._check(z_new, h, "PlanarStep.inverse", zname="z_new")
        u, w, b, _ = self._uwb(h)
        return planar_inverse(z_new, u, w, b)
