"""What every prior p(z) provides, and the checks they share.

Shape letters: S leading sample axes (K importance samples, B batch, ...), Z latent, n draws.

A prior is an ``nn.Module`` (``params`` and ``grads`` dicts with the same keys, ``zero_grad``,
``to``) with::

    log_prob(z)                      -> (log_p (*S,), cache)      z (*S, Z)
    log_prob_backward(dlog_p, cache) -> dz (*S, Z)   and adds the prior's parameter gradients
    input_vjp(dlog_p, cache)         -> dz (*S, Z)   the same dz, no parameter gradient touched
    draw_noise(rng, n)               -> the noise one call of ``sample`` consumes
    sample(rng_or_noise, n)          -> z (n, Z)

``log_prob_backward``'s dz is :math:`\\partial \\log p(z)/\\partial z` weighted by ``dlog_p``:
the prior's share of :math:`d\\log w/dz` that a model passes back into the sampler, and the
whole of what DReG and STL need from the prior. ``input_vjp`` is for a second pass over the
same cache with other weights (DReG weights the inference path by the squared normalized
weights): it leaves the parameter gradients alone, so the prior's parameters are counted once.
"""

import numpy as np

from .._validation import get_xp
from ..nn._checks import check_grad, check_input
from ..nn.module import Module
from ..noise import standard_normal, uniform

__all__ = ["Prior"]


class Prior(Module):
    """Base class of the priors: the interface above plus the shared argument checks.

    Subclasses set ``n_latent`` and implement ``_log_prob``, ``_backward``, ``_draw_noise``
    and ``_sample`` on checked input; the public methods here validate once.
    """

    n_latent = None

    # --- device and dtype -----------------------------------------------------------------

    def _like(self):
        """One array on the prior's device and of its dtype."""
        return next(iter(self.params.values()))

    @property
    def dtype(self):
        return self._like().dtype

    @property
    def xp(self):
        return get_xp(self._like())

    # --- the interface --------------------------------------------------------------------

    def log_prob(self, z):
        """Log-density of each row of ``z``.

        Parameters
        ----------
        z : ndarray of shape (*S, Z)
            Any leading shape, e.g. (K, B, Z); the prior's dtype and device, finite.

        Returns
        -------
        log_p : ndarray of shape (*S,)
        cache : object
            What ``log_prob_backward`` and ``input_vjp`` need.
        """
        func = f"{type(self).__name__}.log_prob"
        check_input(z, "z", func, dtype=self.dtype, xp=self.xp, last=self.n_latent)
        return self._log_prob(z)

    def log_prob_backward(self, dlog_p, cache):
        """Add the prior's parameter gradients of :math:`\\sum dlog\\_p \\cdot \\log p(z)`;
        return its gradient with respect to z.

        Parameters
        ----------
        dlog_p : ndarray of shape (*S,)
            The upstream gradient, e.g. the normalized importance weights over B.
        cache : from ``log_prob``

        Returns
        -------
        dz : ndarray of shape (*S, Z)
        """
        self._check_dlog_p(dlog_p, cache, "log_prob_backward")
        return self._backward(dlog_p, cache, True)

    def input_vjp(self, dlog_p, cache):
        """dz of :meth:`log_prob_backward` with every parameter held fixed (no gradient
        is accumulated): :math:`dlog\\_p \\cdot \\nabla_z \\log p(z)`."""
        self._check_dlog_p(dlog_p, cache, "input_vjp")
        return self._backward(dlog_p, cache, False)

    def draw_noise(self, rng, n):
        """The noise ``sample(noise, n)`` consumes, from the counter-based generator
        (:mod:`lvmcore.noise`) on the prior's device."""
        func = f"{type(self).__name__}.draw_noise"
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"{func}: expected rng to be a numpy.random.Generator, got "
                f"{type(rng).__name__}. Make one with numpy.random.default_rng(seed)."
            )
        return self._draw_noise(rng, self._check_n(n, func))

    def sample(self, rng_or_noise, n):
        """n draws from the prior.

        Parameters
        ----------
        rng_or_noise : numpy.random.Generator or the noise of ``draw_noise(rng, n)``
            With explicit noise the draw is deterministic (replayable).
        n : int

        Returns
        -------
        z : ndarray of shape (n, Z)
        """
        func = f"{type(self).__name__}.sample"
        n = self._check_n(n, func)
        if isinstance(rng_or_noise, np.random.Generator):
            noise = self._draw_noise(rng_or_noise, n)
        else:
            noise = self._check_noise(rng_or_noise, n, func)
        return self._sample(noise, n)

    # --- shared helpers -------------------------------------------------------------------

    def _check_dlog_p(self, dlog_p, cache, method):
        func = f"{type(self).__name__}.{method}"
        check_grad(dlog_p, "dlog_p", cache.lead, func, dtype=self.dtype)

    @staticmethod
    def _check_n(n, func):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{func}: expected n to be a non-negative int, got {n!r}.")
        return int(n)

    def _normal(self, rng, shape):
        return standard_normal(rng, shape, self.dtype, self._like())

    def _uniform(self, rng, shape):
        return uniform(rng, shape, self.dtype, self._like())

    def _check_noise_array(self, a, name, shape, func):
        """One noise array: the prior's dtype and device, exactly ``shape``, finite."""
        check_input(a, name, func, dtype=self.dtype, xp=self.xp)
        if tuple(a.shape) != tuple(shape):
            raise ValueError(
                f"{func}: expected {name} to have shape {tuple(shape)}, got {tuple(a.shape)}. "
                f"Draw it with draw_noise(rng, n)."
            )
        return a

    def _check_uniform01(self, u, name, func):
        if bool(((u < 0) | (u >= 1)).any()):
            raise ValueError(
                f"{func}: expected {name} to hold uniforms in [0, 1), got values outside. "
                f"Draw it with draw_noise(rng, n)."
            )
        return u

    # --- for subclasses -------------------------------------------------------------------

    def _log_prob(self, z):
        raise NotImplementedError

    def _backward(self, dlog_p, cache, accumulate):
        raise NotImplementedError

    def _draw_noise(self, rng, n):
        raise NotImplementedError

    def _check_noise(self, noise, n, func):
        raise NotImplementedError

    def _sample(self, noise, n):
        raise NotImplementedError
