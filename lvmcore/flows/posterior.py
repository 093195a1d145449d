"""A flow posterior: a diagonal Gaussian followed by T flow steps.

Shape letters: S leading sample axes (K), B batch, Z latent, C context.

Forward, for fixed noise eps (*S, B, Z)::

    z_0, log q_0 = gaussian_rsample_forward(mu, logvar, eps)   (*S, B, Z), (*S, B)
    z_t, logdet_t = step_t(z_{t-1}, h)                          t = 1..T
    log q(z_T | x) = log q_0 - sum_t logdet_t                   (*S, B)

Backward walks the steps in reverse: ``dlogdet_t = -dlog_q``, each step adds its parameter
gradients and returns (dz_{t-1}, dh); the base Gaussian turns dz_0 and dlog_q into dmu and
dlogvar. That is the total derivative of the fixed-noise objective (the plain estimator).

STL and DReG need instead :math:`\\nabla_{z_T} \\log q(z_T)` with every parameter of q held
fixed: :meth:`FlowPosterior.dlogq_dz`.
"""

from typing import NamedTuple

import numpy as np

from .._validation import (
    check_cache,
    check_float_dtype,
    check_grad,
    check_input,
    check_pair,
    check_param,
    get_xp,
)
from ..nn.module import Module
from ..nn.stochastic import (
    gaussian_rsample_backward,
    gaussian_rsample_dlogq_dz,
    gaussian_rsample_forward,
)
from .iaf import IAFStep
from .planar import PlanarStep

__all__ = ["FlowPosterior", "FlowPosteriorCache", "iaf_posterior", "planar_posterior"]

_PROTOCOL = ("forward", "backward", "input_vjp", "solve_transpose", "inverse")


class FlowPosteriorCache(NamedTuple):
    """base : GaussianSampleCache of z_0; steps : one cache per flow step, in order."""

    base: object
    steps: list


class FlowPosterior(Module):
    """log q(z_T | x) of a diagonal Gaussian pushed through flow steps.

    Parameters
    ----------
    steps : sequence of flow steps
        At least one. Each provides ``forward(z, h) -> (z_new, logdet, cache)``,
        ``backward(dz_new, dlogdet, cache) -> (dz, dh)``, ``input_vjp``, ``solve_transpose``
        and ``inverse`` (:class:`~lvmcore.flows.IAFStep`, :class:`~lvmcore.flows.PlanarStep`),
        all of one latent width Z.

    Notes
    -----
    ``params`` and ``grads`` hold the steps' arrays themselves under ``"step<t>.<name>"``
    (no copies): the steps accumulate into them, an optimizer updates them in place.

    **The held-fixed gradient.** Let :math:`\\ell_t(z_t) = \\log q_t(z_t)` be the density
    after t steps. Since :math:`z_{t-1} = f_t^{-1}(z_t)` and
    :math:`\\partial z_{t-1}/\\partial z_t = J_t^{-1}`,

    .. math::

        \\ell_t(z_t) = \\ell_{t-1}(z_{t-1}) - \\log|\\det J_t(z_{t-1})|
        \\;\\Rightarrow\\;
        \\nabla\\ell_t = J_t^{-\\top}\\big(\\nabla\\ell_{t-1} -
        \\nabla_{z_{t-1}}\\log|\\det J_t|\\big),

    from :math:`\\nabla\\ell_0 = -(z_0-\\mu)/\\sigma^2 = -\\varepsilon/\\sigma`. Each step gives
    :math:`\\nabla\\log|\\det J_t|` (its input VJP with dlogdet = 1) and
    :math:`J_t^{-\\top}r` (planar: Sherman-Morrison, O(Z); IAF: Z - 1 MADE input VJPs, exact
    because the autoregressive part of :math:`J_t` is nilpotent). Nothing is inverted
    numerically and no parameter gradient is touched.
    """

    def __init__(self, steps):
        super().__init__()
        steps = list(steps)
        if len(steps) < 1:
            raise ValueError(
                "FlowPosterior: expected steps to hold at least one flow step, got 0. Use the "
                "diagonal Gaussian (lvmcore.nn.stochastic) for a posterior without a flow."
            )
        for t, s in enumerate(steps):
            missing = [m for m in _PROTOCOL if not callable(getattr(s, m, None))]
            if missing:
                raise TypeError(
                    f"FlowPosterior: expected steps[{t}] to be a flow step (with "
                    f"{', '.join(_PROTOCOL)}), got {type(s).__name__} without {missing}."
                )
        widths = {s.n_latent for s in steps}
        contexts = {s.context_dim for s in steps}
        if len(widths) > 1:
            raise ValueError(
                f"FlowPosterior: expected every step to have one latent width, got "
                f"{[s.n_latent for s in steps]}."
            )
        self.steps = steps
        self.n_latent = widths.pop()
        self.context_dim = max(contexts)
        self._link()

    def _link(self):
        self.params = {
            f"step{t}.{k}": v for t, s in enumerate(self.steps) for k, v in s.params.items()
        }
        self.grads = {
            f"step{t}.{k}": v for t, s in enumerate(self.steps) for k, v in s.grads.items()
        }

    def to(self, xp):
        for s in self.steps:
            s.to(xp)
        self._link()
        return self

    @property
    def n_steps(self):
        return len(self.steps)

    def forward(self, mu, logvar, eps, h=None):
        """Sample z_T and its log-density for fixed noise.

        Parameters
        ----------
        mu, logvar : ndarray of shape (B, Z)
            The base Gaussian (the encoder's heads).
        eps : ndarray of shape (*S, B, Z)
        h : ndarray of shape (B, C), optional
            The encoder feature, for steps with a context (broadcast over S).

        Returns
        -------
        (z, log_q) : tuple
            ``z`` (*S, B, Z) is z_T; ``log_q`` (*S, B) is :math:`\\log q(z_T \\mid x)`.
        cache : FlowPosteriorCache
        """
        if h is not None and not self.context_dim:
            raise ValueError(
                f"FlowPosterior.forward: expected h None (no step takes a context), got an "
                f"array of shape {tuple(h.shape)}. Build the steps with context_dim="
                f"{h.shape[-1]}."
            )
        (z, log_q), base = gaussian_rsample_forward(mu, logvar, eps)
        caches = []
        for step in self.steps:
            z, logdet, c = step.forward(z, h if step.context_dim else None)
            log_q = log_q - logdet
            caches.append(c)
        return (z, log_q), FlowPosteriorCache(base, caches)

    def backward(self, dout, cache):
        """Accumulate the steps' gradients; return (dmu, dlogvar, dh).

        Parameters
        ----------
        dout : tuple (dz, dlog_q)
            ``dz`` (*S, B, Z) and ``dlog_q`` (*S, B); either may be None (zero).
        cache : FlowPosteriorCache

        Returns
        -------
        dmu, dlogvar : ndarray of shape (B, Z)
        dh : ndarray of h's shape, or None when no step takes a context

        Notes
        -----
        :math:`\\log q = \\log q_0 - \\sum_t \\log|\\det J_t|`, so every step receives
        :math:`dlogdet_t = -dlog\\_q` and its output gradient from the step after it; h feeds
        every step, so its gradients add up. The base Gaussian then adds
        :math:`\\partial\\log q_0/\\partial\\ell = -\\tfrac12` per dimension at fixed noise.
        """
        func = "FlowPosterior.backward"
        check_cache(cache, FlowPosteriorCache, func)
        dz, dlog_q = check_pair(dout, "dout", "(dz, dlog_q)", func)
        eps = cache.base.reparam.eps  # z_T has the noise's shape
        if dz is not None:
            check_grad(dz, "dz", eps.shape, func, dtype=eps.dtype)
        if dlog_q is not None:
            check_grad(dlog_q, "dlog_q", eps.shape[:-1], func, dtype=eps.dtype)
        dlogdet = None if dlog_q is None else -dlog_q
        dh = None
        for step, c in zip(reversed(self.steps), reversed(cache.steps)):
            dz, dh_t = step.backward(dz, dlogdet, c)
            if dh_t is not None:
                dh = dh_t if dh is None else dh + dh_t
        dmu, dlogvar = gaussian_rsample_backward((dz, dlog_q), cache.base)
        return dmu, dlogvar, dh

    def dlogq_dz(self, cache):
        """:math:`\\nabla_{z_T}\\log q(z_T \\mid x)` with every parameter of q held fixed.

        Returns
        -------
        ndarray of shape (*S, B, Z)

        Notes
        -----
        See the class Notes for the recursion. The IAF's cost is Z - 1 MADE backward passes
        (without weight gradients) per step; the planar step's is O(Z).
        """
        check_cache(cache, FlowPosteriorCache, "FlowPosterior.dlogq_dz")
        g = gaussian_rsample_dlogq_dz(cache.base)  # (*S, B, Z)
        ones = get_xp(g).ones(g.shape[:-1], dtype=g.dtype)  # (*S, B): dlogdet = 1
        for step, c in zip(self.steps, cache.steps):
            g = step.solve_transpose(g - step.input_vjp(None, ones, c), c)
        return g

    def log_prob(self, z, mu, logvar, h=None):
        """:math:`\\log q(z \\mid x)` at a given z_T, by inverting the steps (no backward).

        Parameters
        ----------
        z : ndarray of shape (*S, B, Z)
        mu, logvar : ndarray of shape (B, Z)
        h : ndarray of shape (B, C), optional

        Returns
        -------
        ndarray of shape (*S, B)

        Notes
        -----
        For evaluation and tests: :math:`z_{t-1} = f_t^{-1}(z_t)` (IAF: Z MADE passes; planar:
        bisection), then :math:`\\log q = \\log N(z_0;\\mu,\\sigma^2) - \\sum_t\\log|\\det J_t|`.
        """
        func = "FlowPosterior.log_prob"
        like = next(iter(self.params.values()))
        for name, a in (("mu", mu), ("logvar", logvar)):
            check_input(a, name, func, dtype=like.dtype, xp=get_xp(like), last=self.n_latent)
            if a.ndim != 2:
                raise ValueError(
                    f"{func}: expected {name} to have shape (B, {self.n_latent}), got "
                    f"{tuple(a.shape)}."
                )
        if tuple(logvar.shape) != tuple(mu.shape):
            raise ValueError(
                f"{func}: expected mu and logvar to have the same shape, got "
                f"{tuple(mu.shape)} and {tuple(logvar.shape)}."
            )
        check_input(z, "z", func, dtype=like.dtype, xp=get_xp(like), last=self.n_latent, min_ndim=2)
        if z.shape[-2] != mu.shape[0]:
            raise ValueError(
                f"{func}: expected z of shape (*S, {mu.shape[0]}, {self.n_latent}) (mu's batch "
                f"last before Z), got {tuple(z.shape)}."
            )
        zs = [z]
        for step in reversed(self.steps):
            zs.append(step.inverse(zs[-1], h if step.context_dim else None))
        z0 = zs[-1]
        if not bool(get_xp(z0).isfinite(z0).all()):
            raise ValueError(
                "FlowPosterior.log_prob: expected z where the inverse flow stays finite, got "
                "points whose preimage overflows (so far in q's tails that log q is below the "
                "float range). Evaluate nearer q's mass or in float64."
            )
        eps = (z0 - mu) * get_xp(logvar).exp(-0.5 * logvar)  # (*S, B, Z)
        (_, log_q), _ = gaussian_rsample_forward(mu, logvar, eps)
        for step, z_prev in zip(self.steps, reversed(zs[1:])):
            _, logdet, _ = step.forward(z_prev, h if step.context_dim else None)
            log_q = log_q - logdet
        return log_q


def iaf_posterior(
    n_latent,
    flow_steps,
    hidden,
    rng,
    *,
    context_dim=0,
    forget_bias=1.0,
    direct=False,
    activation="tanh",
    dtype=np.float32,
):
    """A FlowPosterior of ``flow_steps`` IAF steps, the order reversed between steps.

    Raises
    ------
    InvalidParameterError
        ``flow_steps`` not an int >= 1 (a ValueError).
    """
    T = check_param(
        flow_steps, "flow_steps", "iaf_posterior", kind="int", low=1, low_inclusive=True
    )
    return FlowPosterior(
        IAFStep(
            n_latent,
            hidden,
            rng,
            context_dim=context_dim,
            reverse=t % 2 == 1,
            forget_bias=forget_bias,
            direct=direct,
            activation=activation,
            dtype=check_float_dtype(dtype, "iaf_posterior"),
        )
        for t in range(T)
    )


def planar_posterior(n_latent, flow_steps, rng, *, context_dim=0, dtype=np.float32):
    """A FlowPosterior of ``flow_steps`` planar steps.

    Raises
    ------
    InvalidParameterError
        ``flow_steps`` not an int >= 1 (a ValueError).
    """
    T = check_param(
        flow_steps, "flow_steps", "planar_posterior", kind="int", low=1, low_inclusive=True
    )
    dtype = check_float_dtype(dtype, "planar_posterior")
    return FlowPosterior(
        PlanarStep(n_latent, rng, context_dim=context_dim, dtype=dtype) for _ in range(T)
    )
