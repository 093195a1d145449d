"""CuPy plumbing shared by the ``*_cupy_v<N>`` kernel variants.

This module imports CuPy at the top (``kernels.BackendUnavailableError`` when it cannot), so
the kernel modules import it only inside their CuPy functions (``from . import _cupy``, then
``_cupy.cupy``), after checking that their arguments are CuPy arrays at all: importing any
kernel module never needs CuPy.

- ``raw_module(file, name_expressions)``: the ``cupy.RawModule`` of ``kernels/cuda/<file>``,
  built on first use and memoized per device. Sources are read with ``importlib.resources``;
  their ``#include "x.cuh"`` lines are replaced by the headers of the same folder (NVRTC gets
  one self-contained string and no include path, so this works from a wheel or a zip too).
- ``elementwise(...)``: a memoized ``cupy.ElementwiseKernel``.
- launch sizes (``grid``, ``group_width``) and the argument checks a raw kernel needs (it
  ignores strides and validates nothing), worded by ``kernels._checks``.
"""

import functools
import importlib.resources
import re

from . import _checks

try:
    import cupy
except ImportError as exc:  # a "cupy" variant called on a machine without CuPy
    raise _checks.BackendUnavailableError(
        f"backend 'cupy' is unavailable: {_checks.cupy_status()[1]}"
    ) from exc

__all__ = [
    "raw_module",
    "elementwise",
    "source",
    "grid",
    "group_width",
    "sm_count",
    "check_array",
    "check_same",
    "check_out",
    "THREADS",
]

# Threads per block of the row kernels (a multiple of 32: groups of lanes never straddle warps).
THREADS = 256
# Resident blocks per SM the grid-stride kernels aim for; more blocks only add scheduling.
BLOCKS_PER_SM = 8
# NVRTC options. CuPy adds -ftz=true to every RawModule (float32 subnormals flush to zero; the
# kernels' documented outputs never rely on float32 subnormals).
OPTIONS = ("--std=c++17",)

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


@functools.cache
def _read(name):
    return importlib.resources.files("kernels").joinpath("cuda", name).read_text()


@functools.cache
def source(name):
    """Text of ``kernels/cuda/<name>`` with its quoted includes inlined, each header once."""
    seen = set()

    def expand(text):
        def repl(match):
            header = match.group(1)
            if header in seen:
                return ""
            seen.add(header)
            return expand(_read(header))

        return _INCLUDE.sub(repl, text)

    return expand(_read(name))


@cupy.memoize(for_each_device=True)
def raw_module(name, name_expressions):
    """The RawModule of ``kernels/cuda/<name>``; ``name_expressions`` a tuple of template
    instantiations such as ``"lvm_op_v1<float>"`` (fetch them with ``get_function``)."""
    return cupy.RawModule(
        code=source(name), options=OPTIONS, name_expressions=list(name_expressions)
    )


@cupy.memoize(for_each_device=True)
def elementwise(in_params, out_params, operation, name):
    return cupy.ElementwiseKernel(in_params, out_params, operation, name)


@cupy.memoize(for_each_device=True)
def sm_count():
    """Streaming multiprocessors of the current device."""
    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def grid(work, per_block):
    """Blocks for ``work`` items at ``per_block`` items per block, capped at BLOCKS_PER_SM per SM
    (the kernels loop grid-stride over the rest); at least 1."""
    need = -(-int(work) // int(per_block))
    return max(1, min(need, sm_count() * BLOCKS_PER_SM))


def group_width(n):
    """Lanes per row for a row of ``n`` work items: the power of two >= n, between 1 and 32."""
    w = 1
    while w < min(int(n), 32):
        w *= 2
    return w


def check_array(a, name, func, ndim, dtype=None):
    """``a`` must be a C-contiguous cupy.ndarray with ``ndim`` dimensions and a float dtype (or
    ``dtype``). Raw kernels read memory linearly, so strides are rejected, not ignored."""
    return _checks.check_array(
        a,
        name,
        func,
        ndim=ndim,
        lib="cupy",
        dtype="float" if dtype is None else dtype,
        contiguous=True,
    )


def check_same(a, name, ref, ref_name, func, shape=None):
    """``a`` has ``ref``'s dtype and the given shape (``ref``'s when None)."""
    _checks.check_dtype_of(a, name, ref, ref_name, func)
    shape = tuple(ref.shape) if shape is None else tuple(shape)
    if tuple(a.shape) != shape:
        raise ValueError(f"{func}: expected {name} to have shape {shape}, got {tuple(a.shape)}.")


def check_out(out, name, func, shape, dtype):
    """A preallocated output: a C-contiguous cupy.ndarray of ``shape`` and ``dtype``. Overlap
    with the inputs is not checked on the device (a partial overlap gives wrong values, never
    an out-of-bounds access); the in-place cases the NumPy variants allow (``grad_out is
    logits``, ``weights_out is log_w``, ``out is grad``) work here too, because each element is
    read by the thread that then overwrites it."""
    check_array(out, name, func, len(shape), dtype)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(
            f"{func}: expected {name} to have shape {tuple(shape)}, got "
            f"{tuple(out.shape)}. Allocate it with cupy.empty(...)."
        )
    return out
