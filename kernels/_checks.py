"""Argument checks and error wording shared by the kernel modules.

Every public entry point of ``kernels`` (the variants ``kernels.get`` hands out and the module
wrappers) runs these checks before any Numba loop or CUDA launch: a raw kernel reads memory
linearly and trusts every shape, so an unchecked shape is an out-of-bounds read, not an error.
The raw ``@njit`` kernels themselves stay private and check nothing.

Messages follow the house template

    "<func>: expected <arg> to <requirement>, got <actual>. <fix hint>"

with ValueError for values and shapes, TypeError for types, and ``InvalidParameterError`` (both
a ValueError and a TypeError, as scikit-learn's) for scalar hyper-parameters, worded
"The '<name>' parameter of <func> must be ... Got ... instead.".

This module imports NumPy only: ``kernels`` is the lower package and never imports ``lvmcore``.
CuPy is never imported here either; a CuPy array is recognised by its type's module name, so
a NumPy variant handed a CuPy array (or a CuPy variant handed a NumPy array) gets a TypeError
whether or not CuPy can be imported.
"""

import importlib.util
import math
import numbers

import numpy as np

__all__ = [
    "InvalidParameterError",
    "BackendUnavailableError",
    "FLOAT_DTYPES",
    "U64_MAX",
    "ELEMENT_LIMIT",
    "array_library",
    "check_array",
    "check_same_dtype",
    "check_dtype_of",
    "check_out",
    "check_param",
    "check_noise_args",
    "check_u64",
    "check_fill_args",
    "check_backend",
    "same_buffer",
    "cupy_status",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_BOOLS = (bool, np.bool_)  # integers to Python, but never a count, seed or flag here
U64_MAX = 2**64 - 1
# Philox element indices: offset + n must stay below this so element and block indices fit
# Numba's int64 loop counters (see kernels/philox.py).
ELEMENT_LIMIT = 1 << 62


class InvalidParameterError(ValueError, TypeError):
    """A scalar hyper-parameter has a value or type outside its constraint.

    Subclasses both ValueError and TypeError, so callers catching either keep working.
    """


class BackendUnavailableError(RuntimeError):
    """A kernel variant needs a library or device that is not there; the message says why."""


def array_library(a):
    """The array library of ``a``: numpy, cupy, or its type's top-level module (e.g. builtins)."""
    if isinstance(a, np.ndarray):
        return "numpy"
    return type(a).__module__.split(".")[0]


def _type_name(a):
    module = type(a).__module__
    return type(a).__name__ if module == "builtins" else f"{module}.{type(a).__name__}"


def check_array(
    a,
    name,
    func,
    *,
    ndim=None,
    lib="numpy",
    dtype="float",
    contiguous=False,
    finite=False,
    allow_inf=False,
):
    """Check one array argument; return it unchanged.

    Parameters
    ----------
    a : object
        The argument.
    name, func : str
        The argument's and the calling function's names, used in messages.
    ndim : int, optional
        Required number of dimensions.
    lib : {"numpy", "cupy"}
        The array library the variant runs on; anything else is a TypeError.
    dtype : "float" or numpy dtype
        "float" accepts float32 and float64 only.
    contiguous : bool
        Require C-contiguity (raw kernels read memory linearly and ignore strides).
    finite : bool
        Reject NaN and +-inf (one pass over the array).
    allow_inf : bool
        With ``finite``, still accept +-inf (NaN is always rejected).
    """
    if array_library(a) != lib:
        if lib == "numpy":
            raise TypeError(
                f"{func}: expected {name} to be a numpy.ndarray, got {_type_name(a)}. "
                f"Convert it with numpy.asarray(...) first."
            )
        raise TypeError(
            f"{func}: expected {name} to be a cupy.ndarray (backend 'cupy'), got "
            f"{type(a).__module__}.{type(a).__name__}. Move it with cupy.asarray(...) or call "
            f"the numpy/numba backend."
        )
    if dtype == "float":
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{func}: expected {name} to have dtype float32 or float64, got {a.dtype}. "
                f"Cast it with {name}.astype(numpy.float32)."
            )
    elif a.dtype != np.dtype(dtype):
        raise TypeError(f"{func}: expected {name} to have dtype {np.dtype(dtype)}, got {a.dtype}.")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(
            f"{func}: expected {name} to have {ndim} dimensions, got an array of shape "
            f"{tuple(a.shape)}."
        )
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(
            f"{func}: expected {name} to be C-contiguous, got strides {tuple(a.strides)} for "
            f"shape {tuple(a.shape)}. Pass {'numpy' if lib == 'numpy' else 'cupy'}"
            f".ascontiguousarray({name})."
        )
    if finite and a.size:
        xp = np if lib == "numpy" else _cupy_module()
        bad = xp.isnan(a) if allow_inf else ~xp.isfinite(a)
        if bool(bad.any()):
            what = "NaN" if allow_inf else "NaN or Inf"
            raise ValueError(
                f"{func}: expected {name} to contain no {what} values, got {int(bad.sum())} "
                f"of {a.size}. Check the step that produced it."
            )
    return a


def _cupy_module():
    import cupy

    return cupy


def check_same_dtype(arrays, names, func):
    """All ``arrays`` share one dtype (TypeError naming them all otherwise)."""
    if len({np.dtype(a.dtype) for a in arrays}) > 1:
        got = ", ".join(f"{n}: {a.dtype}" for n, a in zip(names, arrays))
        raise TypeError(
            f"{func}: expected {', '.join(names)} to share one dtype, got {got}. Cast them to "
            f"one dtype (float32 for speed, float64 for checks)."
        )


def check_dtype_of(a, name, ref, ref_name, func):
    """``a`` has ``ref``'s dtype."""
    if a.dtype != ref.dtype:
        raise TypeError(
            f"{func}: expected {name} to have the dtype of {ref_name} ({ref.dtype}), got "
            f"{a.dtype}. Cast them to one dtype."
        )


def same_buffer(a, b):
    """Whether ``a`` and ``b`` start at the same address (``out is input`` for in-place use)."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def check_out(out, name, func, shape, dtype, inputs=(), in_place=None):
    """A preallocated NumPy output: C-contiguous, of ``shape`` and ``dtype``, writeable, and
    overlapping none of ``inputs`` (a dict name -> array or None), except that it may be the
    input named ``in_place`` itself (same start, same shape)."""
    check_array(out, name, func, ndim=len(shape), dtype="float")
    if out.dtype != np.dtype(dtype) or out.shape != tuple(shape) or not out.flags.c_contiguous:
        raise ValueError(
            f"{func}: expected {name} to be a C-contiguous {np.dtype(dtype)} array of shape "
            f"{tuple(shape)}, got {out.dtype} of shape {out.shape} (contiguous: "
            f"{out.flags.c_contiguous}). Allocate it with numpy.empty({tuple(shape)}, "
            f"{np.dtype(dtype)})."
        )
    if not out.flags.writeable:
        raise ValueError(
            f"{func}: expected {name} to be writeable, got a read-only array. Pass a fresh buffer."
        )
    for other, a in dict(inputs).items():
        if a is None or not np.may_share_memory(out, a):
            continue
        if other == in_place and same_buffer(out, a) and out.shape == a.shape:
            continue
        raise ValueError(
            f"{func}: expected {name} to overlap no input, got an array overlapping {other}. "
            f"Pass a fresh buffer."
        )
    return out


def check_param(
    value,
    name,
    func,
    *,
    kind="float",
    low=None,
    high=None,
    low_inclusive=False,
    high_inclusive=True,
    choices=None,
):
    """Check a scalar hyper-parameter; return it as ``int`` or ``float`` (or the choice).

    ``kind`` is "int", "float" or "choice"; the bounds give the allowed interval. Raises
    InvalidParameterError in scikit-learn's wording, e.g. "The 'tau' parameter of
    gumbel_softmax must be a float in (0, inf). Got 0.0 instead."
    """
    if kind == "choice":
        try:
            ok = value in choices
        except (TypeError, ValueError):  # e.g. an array, whose truth value is ambiguous
            ok = False
        if not ok:
            raise InvalidParameterError(
                f"The {name!r} parameter of {func} must be one of "
                f"{', '.join(repr(c) for c in choices)}. Got {value!r} instead."
            )
        return value
    original = value
    if kind == "int":
        ok = type(value) is int or (
            not isinstance(value, _BOOLS) and isinstance(value, numbers.Integral)
        )
        value = int(value) if ok else value
    else:
        ok = type(value) in (float, int) or (
            not isinstance(value, _BOOLS) and isinstance(value, numbers.Real)
        )
        value = float(value) if ok else value
        ok = ok and math.isfinite(value)
    ok = ok and (low is None or value > low or (value == low and low_inclusive))
    ok = ok and (high is None or value < high or (value == high and high_inclusive))
    if not ok:  # the message is built only here: this runs on every kernel call
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = (
            ("[" if low_inclusive else "(")
            + f"{lo}, {hi}"
            + ("]" if high_inclusive and high is not None else ")")
        )
        noun = "an int" if kind == "int" else "a float"
        raise InvalidParameterError(
            f"The {name!r} parameter of {func} must be {noun} in {interval}. Got "
            f"{original!r} instead."
        )
    return value


def check_noise_args(func, seed, stream, offset, n, what, detail=""):
    """seed, stream in [0, 2**64), offset >= 0 and offset + n <= 2**62 (kernels.philox's
    limits); ``what`` names n in the message (e.g. "K*B*Z"), ``detail`` says where it came
    from (e.g. " (k=3, mu of shape (2, 5))")."""
    seed = check_param(seed, "seed", func, kind="int", low=0, low_inclusive=True, high=U64_MAX)
    stream = check_param(
        stream, "stream", func, kind="int", low=0, low_inclusive=True, high=U64_MAX
    )
    offset = check_param(
        offset, "offset", func, kind="int", low=0, low_inclusive=True, high=ELEMENT_LIMIT
    )
    if offset + n > ELEMENT_LIMIT:
        raise InvalidParameterError(
            f"{func}: expected offset + {what} <= 2**62, got offset={offset}, {what}={n}"
            f"{detail}. Use another stream instead of a larger offset."
        )
    return seed, stream, offset


def check_u64(value, name, func, limit=1 << 64):
    """An integer in [0, limit): the seed, stream and words of kernels.philox."""
    if isinstance(value, _BOOLS) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{func}: expected {name} to be an integer, got {type(value).__name__}. "
            f"Pass a Python int or a NumPy integer."
        )
    value = int(value)
    if not 0 <= value < limit:
        bound = "2**64" if limit == 1 << 64 else f"2**{limit.bit_length() - 1}"
        raise ValueError(
            f"{func}: expected {name} to be in [0, {bound}), got {value}. Reduce it modulo {bound}."
        )
    return value


def check_fill_args(func, seed, stream, n, dtype, offset, out):
    """The arguments of a Philox fill ``(seed, stream, n, dtype, offset, out)``; returns them
    normalized (ints, a numpy dtype). ``out`` (NumPy only; None to skip) must be a contiguous,
    writeable array of shape (n,) and that dtype."""
    seed = check_u64(seed, "seed", func)
    stream = check_u64(stream, "stream", func)
    for name, value in (("n", n), ("offset", offset)):
        if isinstance(value, _BOOLS) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{func}: expected {name} to be an integer, got {type(value).__name__}. Pass a "
                f"Python int."
            )
        if value < 0:
            raise ValueError(f"{func}: expected {name} to be >= 0, got {value}.")
    n, offset = int(n), int(offset)
    if offset + n > ELEMENT_LIMIT:
        raise ValueError(
            f"{func}: expected offset + n <= 2**62, got offset={offset}, n={n}. Use another "
            f"stream instead of a larger offset."
        )
    try:  # np.dtype(None) would be float64, np.dtype(an array) the array's dtype
        ok = isinstance(dtype, type | str | np.dtype)
        got = np.dtype(dtype) if ok else repr(dtype)
    except TypeError:
        got = repr(dtype)
    if got not in FLOAT_DTYPES:
        raise TypeError(
            f"{func}: expected dtype to be float32 or float64, got {got}. Pass numpy.float32 "
            f"or numpy.float64."
        )
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{func}: expected out to be a numpy.ndarray, got {_type_name(out)}.")
        if out.dtype != got or out.shape != (n,) or not out.flags.c_contiguous:
            raise ValueError(
                f"{func}: expected out to be a contiguous {got} array of shape ({n},), got "
                f"{out.dtype} of shape {out.shape} (contiguous: {out.flags.c_contiguous}). "
                f"Allocate it with numpy.empty(n, dtype)."
            )
        if not out.flags.writeable:
            raise ValueError(f"{func}: expected out to be writeable, got a read-only array.")
    return seed, stream, n, got, offset


def check_backend(backend, table, func):
    """``table[backend]``; ValueError listing the choices for an unknown name."""
    if not isinstance(backend, str) or backend not in table:
        raise ValueError(f"{func}: expected backend to be one of {sorted(table)}, got {backend!r}.")
    return table[backend]


def cupy_status():
    """(available, reason) for the "cupy" variants: CuPy importable and a CUDA device present.

    Not cached (``lvmcore.backend`` caches its own answer): a test may install a stand-in CuPy.
    """
    if importlib.util.find_spec("cupy") is None:
        return False, "cupy: not installed"
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver or runtime missing
        return False, f"cupy: no usable CUDA runtime ({exc})"
    if n == 0:
        return False, "cupy: no CUDA device found"
    return True, "available"
