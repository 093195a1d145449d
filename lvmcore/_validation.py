"""Validation at the public boundary.

Every public entry point validates its arguments once, here, and the math below
assumes valid input. Messages follow one template:

    "<func>: expected <arg> to <requirement>, got <actual>. <fix hint>"

ValueError is raised for values and shapes, TypeError for types and array-library
mismatches, InvalidParameterError for hyper-parameters.
"""

import numbers

import numpy as np

from .exceptions import InvalidParameterError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _array_library(x):
    module = type(x).__module__.split(".")[0]
    return "cupy" if module == "cupy" else ("numpy" if isinstance(x, np.ndarray) else module)


def check_array(
    x, name, func, *, ndim=None, shape=None, dtype="float", finite=True, allow_inf=False
):
    """Check one array argument and return it unchanged.

    Parameters
    ----------
    x : array
        The argument. NumPy and CuPy arrays are accepted; anything else is a TypeError.
    name, func : str
        The argument's and the calling function's names, used in messages.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries match any size.
    dtype : {"float", "any"} or numpy dtype
        ``"float"`` accepts float32 and float64 only.
    finite : bool
        Reject NaN and +-Inf values.
    allow_inf : bool
        With ``finite``, still accept -inf and +inf (NaN is always rejected).
    """
    lib = _array_library(x)
    if lib not in ("numpy", "cupy"):
        raise TypeError(
            f"{func}: expected {name} to be a numpy.ndarray or cupy.ndarray, got "
            f"{type(x).__name__}. Convert it with numpy.asarray(...) first."
        )
    if dtype == "float":
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{func}: expected {name} to have dtype float32 or float64, got {x.dtype}. "
                f"Cast it with {name}.astype(numpy.float32)."
            )
    elif dtype != "any" and x.dtype != np.dtype(dtype):
        raise TypeError(f"{func}: expected {name} to have dtype {np.dtype(dtype)}, got {x.dtype}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{func}: expected {name} to have {want} dimensions, got an array of shape "
                f"{tuple(x.shape)}."
            )
    if shape is not None:
        ok = len(shape) == x.ndim and all(s is None or s == t for s, t in zip(shape, x.shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{func}: expected {name} to have shape {want}, got {tuple(x.shape)}.")
    if finite and x.dtype.kind == "f":
        xp = get_xp(x)
        bad = xp.isnan(x) if allow_inf else ~xp.isfinite(x)
        if bool(bad.any()):
            what = "NaN" if allow_inf else "NaN or Inf"
            raise ValueError(
                f"{func}: expected {name} to contain no {what} values, got "
                f"{int(bad.sum())} of {x.size}. Check the data or the step that produced it."
            )
    return x


def check_binary(x, name, func):
    """Check that every entry of ``x`` is exactly 0 or 1 (data for a Bernoulli likelihood)."""
    xp = get_xp(x)
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        example = float(x[bad].ravel()[0])
        raise ValueError(
            f"{func}: expected {name} to be binary (every entry 0 or 1), got "
            f"{int(bad.sum())} other values, e.g. {example!r}. Binarize the data "
            f"(x > 0.5) or use a Gaussian decoder for real-valued data."
        )
    del xp
    return x


def check_levels(x, levels, name, func):
    """Check that ``x`` holds discrete levels 0, 1, ..., levels - 1; return them as int64.

    Integer arrays and float arrays of integral values are accepted (the data path stores
    floats); booleans, complex and object arrays are a TypeError; a fraction, NaN, Inf or a
    level outside [0, levels) is a ValueError.
    """
    check_array(x, name, func, dtype="any", finite=False)
    xp = get_xp(x)
    if x.dtype.kind not in "iuf":
        raise TypeError(
            f"{func}: expected {name} to be an integer (or integral float) array of levels in "
            f"[0, {levels}), got dtype {x.dtype}. Cast it with {name}.astype(numpy.int64)."
        )
    if x.dtype.kind == "f":
        bad = ~xp.isfinite(x) | (x != xp.floor(x))
        if bool(bad.any()):
            example = float(x[bad].ravel()[0])
            raise ValueError(
                f"{func}: expected {name} to hold integer levels in [0, {levels}), got "
                f"{int(bad.sum())} non-integer values, e.g. {example!r}. Quantize the data "
                f"first, e.g. numpy.floor(x * {levels}) for values in [0, 1)."
            )
    bad = (x < 0) | (x >= levels)
    if bool(bad.any()):
        example = x[bad].ravel()[0]
        raise ValueError(
            f"{func}: expected {name} to hold levels in [0, {levels}), got {int(bad.sum())} "
            f"outside, e.g. {example.item()!r}. Check the number of levels."
        )
    return x.astype(np.int64)


def check_same_shape(a, b, name_a, name_b, func):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{func}: expected {name_a} and {name_b} to have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )


def check_same_dtype(arrays, names, func):
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) > 1:
        got = ", ".join(f"{n}: {a.dtype}" for n, a in zip(names, arrays))
        raise TypeError(
            f"{func}: expected {', '.join(names)} to share one dtype, got {got}. "
            f"Cast them to one dtype (float32 for speed, float64 for checks)."
        )


def check_same_device(arrays, names, func):
    """Raise TypeError when NumPy and CuPy arrays are mixed; no implicit copies."""
    libs = [_array_library(a) for a in arrays]
    if len(set(libs)) > 1:
        got = ", ".join(f"{n} is {lib}" for n, lib in zip(names, libs))
        raise TypeError(
            f"{func}: expected all arrays on one device, got {got}. Move them explicitly "
            f"with cupy.asarray(...) or cupy.asnumpy(...); lvmcore never copies implicitly."
        )


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
    """Check a hyper-parameter and return it converted to ``int`` or ``float``.

    ``kind`` is "int", "float" or "choice". Bounds give the open or closed interval
    allowed. Raises InvalidParameterError in scikit-learn's wording, e.g.
    "The 'temperature' parameter of gumbel_softmax must be a float in (0, inf). Got 0.0 instead."
    """
    if kind == "choice":
        if value not in choices:
            raise InvalidParameterError(
                f"The {name!r} parameter of {func} must be one of "
                f"{', '.join(repr(c) for c in choices)}. Got {value!r} instead."
            )
        return value
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = (
        ("[" if low_inclusive else "(")
        + f"{lo}, {hi}"
        + ("]" if high_inclusive and high is not None else ")")
    )
    noun = "an int" if kind == "int" else "a float"
    msg = f"The {name!r} parameter of {func} must be {noun} in {interval}. Got {value!r} instead."
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidParameterError(msg)
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidParameterError(msg)
        value = float(value)
        if not np.isfinite(value):
            raise InvalidParameterError(msg)
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise InvalidParameterError(msg)
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise InvalidParameterError(msg)
    return value


def get_xp(*arrays):
    """The array module (numpy or cupy) of the given arrays."""
    for a in arrays:
        if _array_library(a) == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(a, dtype=None):
    """A host (NumPy) array of ``a``: CuPy arrays are copied from the device (the explicit
    transfer; ``numpy.asarray`` refuses them), anything else goes through ``numpy.asarray``."""
    if _array_library(a) == "cupy":
        a = a.get()
    return np.asarray(a, dtype=dtype)
