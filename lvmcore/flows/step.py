"""What the flow steps share: the check of a step's input and context, and the MADE-based
autoregressive step (IAF, MAF) that builds a two-headed MADE in a chosen order and runs its
backward after the step's own output map.

Shape letters: S leading sample axes, Z latent, C context.
"""

from .._validation import check_cache, check_grad, check_input, check_lead, get_xp
from ..nn.made import MADE

__all__ = ["check_step_input", "AutoregressiveStep"]


def check_step_input(z, h, func, *, zname, like, n_latent, context_dim):
    """Check a flow step's input ``z`` (..., Z) and context ``h`` (..., C) against a parameter
    array ``like`` (dtype and array module): h is required when ``context_dim > 0``, its
    leading axes a trailing part of z's (z's extra leading axes are sample axes), and must be
    None otherwise."""
    xp = get_xp(like)
    check_input(z, zname, func, dtype=like.dtype, xp=xp, last=n_latent)
    if context_dim:
        if h is None:
            raise ValueError(
                f"{func}: expected h of shape (..., {context_dim}) (context_dim="
                f"{context_dim}), got None."
            )
        check_input(h, "h", func, dtype=like.dtype, xp=xp, last=context_dim)
        check_lead(h, "h", z, zname, func)
    elif h is not None:
        raise ValueError(
            f"{func}: expected h None (this step has context_dim=0), got an array of shape "
            f"{tuple(h.shape)}. Build the step with context_dim={h.shape[-1]}."
        )


class AutoregressiveStep(MADE):
    """A flow step on a MADE with two outputs per dimension, ``y[..., 0, :]`` and
    ``y[..., 1, :]`` (IAF: m, s_raw; MAF: m, a).

    A subclass supplies ``_dy(dout, dlogdet, cache) -> (dy, dz)``, the gradient of its output
    map (the MADE output gradient and the direct path), and the class attributes
    ``_cache_type`` (its cache, with the MADE's cache as ``made``), ``_dout_name`` (the name of
    the output gradient in its signatures) and ``_shape_of`` (the cache field of the output's
    shape).

    Parameters
    ----------
    n_latent, hidden, rng, context_dim, direct, activation, dtype
        As for :class:`lvmcore.nn.MADE` (``n_in`` = ``n_latent``).
    reverse : bool
        Use the reversed order Z-1, ..., 0 (alternate it between stacked steps).
    order : sequence of int or None
        An explicit order (a permutation); overrides ``reverse``.
    """

    def __init__(
        self, n_latent, hidden, rng, *, context_dim, reverse, order, direct, activation, dtype
    ):
        self.reverse = bool(reverse)
        if order is None:
            order = "reverse" if self.reverse else "natural"
        super().__init__(
            n_latent,
            hidden,
            rng,
            n_outputs_per_dim=2,
            context_dim=context_dim,
            order=order,
            direct=direct,
            activation=activation,
            dtype=dtype,
        )

    @property
    def n_latent(self):
        return self.n_in

    def _check(self, z, h, func, zname="z"):
        check_step_input(
            z,
            h,
            func,
            zname=zname,
            like=self.params["W0"],
            n_latent=self.n_in,
            context_dim=self.context_dim,
        )

    def _check_grads(self, dout, dlogdet, cache, func):
        check_cache(cache, self._cache_type, func)
        like = getattr(cache, self._shape_of)
        if dout is not None:
            check_grad(dout, self._dout_name, like.shape, func, dtype=like.dtype)
        if dlogdet is not None:
            check_grad(dlogdet, "dlogdet", like.shape[:-1], func, dtype=like.dtype)

    def _step_backward(self, dout, dlogdet, cache, func):
        """Accumulate the MADE's gradients; (dz, dh)."""
        self._check_grads(dout, dlogdet, cache, func)
        dy, dz = self._dy(dout, dlogdet, cache)
        dz_made, dh = self._backward(dy, cache.made, self.grads)
        return dz + dz_made, dh

    def _step_input_vjp(self, dout, dlogdet, cache, func):
        """dz of the backward, the parameter gradients untouched."""
        self._check_grads(dout, dlogdet, cache, func)
        dy, dz = self._dy(dout, dlogdet, cache)
        return dz + MADE.input_vjp(self, dy, cache.made)
