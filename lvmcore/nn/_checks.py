"""Argument checks shared by the posterior blocks (stochastic layers, MADE, flows).

Thin wrappers over ``lvmcore._validation``: a block's inputs must be float arrays of the
block's dtype, on the block's device, finite, with a given last axis; a conditioning input
(context) may drop leading sample axes of the input it goes with and is broadcast over them.
"""

import numpy as np

from .._validation import _array_library, check_array, get_xp


def check_input(
    x,
    name,
    func,
    *,
    dtype,
    xp,
    last=None,
    min_ndim=1,
    finite=True,
    hint="The layer sizes do not chain.",
):
    """A float array of ``dtype`` on the device of ``xp`` with ``x.shape[-1] == last``."""
    check_array(x, name, func, finite=finite)
    if get_xp(x) is not xp:
        raise TypeError(
            f"{func}: expected {name} on the parameters' device ({xp.__name__}), got a "
            f"{_array_library(x)} array. Move it explicitly with cupy.asarray(...) or "
            f"cupy.asnumpy(...); lvmcore never copies implicitly."
        )
    if x.dtype != dtype:
        raise TypeError(
            f"{func}: expected {name} to have dtype {np.dtype(dtype)} (the parameters'), got "
            f"{x.dtype}. Cast it with {name}.astype(numpy.{np.dtype(dtype)})."
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"{func}: expected {name} to have at least {min_ndim} dimensions, got an array of "
            f"shape {tuple(x.shape)}."
        )
    if last is not None and x.shape[-1] != last:
        raise ValueError(
            f"{func}: expected {name}.shape[-1] == {last}, got {name} of shape "
            f"{tuple(x.shape)}. {hint}"
        )
    return x


def check_lead(c, c_name, x, x_name, func):
    """``c.shape[:-1]`` must equal a trailing part of ``x.shape[:-1]`` (leading axes of ``x``
    are sample axes that ``c`` is broadcast over); returns how many axes ``c`` lacks."""
    lead_x, lead_c = tuple(x.shape[:-1]), tuple(c.shape[:-1])
    n = len(lead_x) - len(lead_c)
    if n < 0 or lead_x[n:] != lead_c:
        raise ValueError(
            f"{func}: expected {c_name}.shape[:-1] to equal {x_name}.shape[:-1] or a trailing "
            f"part of it (leading sample axes are broadcast), got {c_name} of shape "
            f"{tuple(c.shape)} and {x_name} of shape {tuple(x.shape)}."
        )
    return n


def check_grad(d, name, shape, func, dtype=None):
    """An upstream gradient of exactly the forward output's ``shape``."""
    check_array(d, name, func, finite=False)
    if tuple(d.shape) != tuple(shape):
        raise ValueError(
            f"{func}: expected {name} to have the forward output's shape {tuple(shape)}, got "
            f"{tuple(d.shape)}."
        )
    if dtype is not None and d.dtype != dtype:
        raise TypeError(
            f"{func}: expected {name} to have dtype {np.dtype(dtype)}, got {d.dtype}. "
            f"Cast it with {name}.astype(numpy.{np.dtype(dtype)})."
        )
    return d
