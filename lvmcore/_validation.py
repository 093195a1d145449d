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
    if type(x) is np.ndarray:
        return "numpy"
    module = type(x).__module__.split(".")[0]
    return "cupy" if module == "cupy" else ("numpy" if isinstance(x, np.ndarray) else module)


def _type_hint(x, name):
    """Why ``x``'s dtype is refused and how to fix it (a float32/float64 array is wanted)."""
    kind = x.dtype.kind
    if kind == "O":
        return (
            f"An array of Python objects cannot be computed on. Build a numeric array with "
            f"numpy.asarray({name}, dtype=numpy.float32)."
        )
    if kind == "c":
        return (
            f"lvmcore works on real numbers and never drops an imaginary part silently. Pass "
            f"{name}.real (or numpy.abs({name})) explicitly if that is what you mean."
        )
    if kind in "biu":
        return (
            f"Integer and boolean input is never cast implicitly. Cast it with "
            f"{name}.astype(numpy.float32) (or numpy.float64 for checks)."
        )
    if kind == "f":
        return (
            f"{x.dtype} is not supported (float32 for speed, float64 for checks). Cast it with "
            f"{name}.astype(numpy.float32)."
        )
    return f"Cast it with {name}.astype(numpy.float32)."


def check_array(
    x,
    name,
    func,
    *,
    ndim=None,
    shape=None,
    dtype="float",
    finite=True,
    allow_inf=False,
    contiguous=False,
    xp=None,
    ref=None,
    shape_of=None,
):
    """Check one array argument and return it unchanged.

    The one array checker of lvmcore: every public function that takes an array calls it
    at its boundary, so that the math behind (and every kernel) sees valid input only.

    Parameters
    ----------
    x : array
        The argument. NumPy and CuPy arrays are accepted; anything else (a list, a Python
        or NumPy scalar, a pandas object) is a TypeError: lvmcore never converts implicitly.
    name, func : str
        The argument's and the calling function's names, used in messages.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries match any size.
    dtype : {"float", "int", "any"} or numpy dtype
        ``"float"`` accepts float32 and float64 only: integer, boolean, complex, float16 and
        object arrays are a TypeError that says how to cast. ``"int"`` accepts any integer
        dtype (indices). A numpy dtype must match exactly (``ref`` names what it must match).
    finite : bool
        Reject NaN and +-Inf values (one pass over the array).
    allow_inf : bool
        With ``finite``, still accept -inf and +inf (NaN is always rejected).
    contiguous : bool
        Require a C-contiguous array (a kernel that reads raw memory needs one); a strided
        view is a ValueError that says how to copy it.
    xp : module, optional
        numpy or cupy: the array library ``x`` must belong to (no implicit device copies).
    ref : str, optional
        What ``dtype`` and ``xp`` come from, for the message ("the distribution's").
    shape_of : str, optional
        The argument(s) ``shape`` comes from, for the message ("x and W").

    Raises
    ------
    TypeError
        Not an array, wrong array library, or a refused dtype.
    ValueError
        Wrong number of dimensions or shape, not contiguous, or NaN/Inf with ``finite``.
    """
    lib = _array_library(x)
    if lib not in ("numpy", "cupy"):
        raise TypeError(
            f"{func}: expected {name} to be a numpy.ndarray or cupy.ndarray, got "
            f"{type(x).__name__}. Convert it with numpy.asarray({name}, dtype=numpy.float32) "
            f"first; lvmcore never converts implicitly."
        )
    if xp is not None and lib != xp.__name__:
        where = ref or "the other arguments"
        raise TypeError(
            f"{func}: expected {name} on the same device as {where} ({xp.__name__}), got a "
            f"{lib} array. Move it explicitly with cupy.asarray(...) or cupy.asnumpy(...); "
            f"lvmcore never copies implicitly."
        )
    if isinstance(dtype, str) and dtype == "float":
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{func}: expected {name} to have dtype float32 or float64, got {x.dtype}. "
                f"{_type_hint(x, name)}"
            )
    elif isinstance(dtype, str) and dtype == "int":
        if x.dtype.kind not in "iu":
            raise TypeError(
                f"{func}: expected {name} to be an integer array, got {x.dtype}. Cast it with "
                f"{name}.astype(numpy.int64)."
            )
    elif not (isinstance(dtype, str) and dtype == "any") and x.dtype != np.dtype(dtype):
        want = np.dtype(dtype)
        if x.dtype not in FLOAT_DTYPES and want in FLOAT_DTYPES:
            hint = _type_hint(x, name)
        else:
            hint = f"Cast it with {name}.astype(numpy.{want})."
        of = f" ({ref})" if ref else ""
        raise TypeError(f"{func}: expected {name} to have dtype {want}{of}, got {x.dtype}. {hint}")
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
            # "(512)" for a 1-tuple, not "(512,)": existing messages are pinned in this form
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            follows = f" That shape follows {shape_of}." if shape_of else ""
            raise ValueError(
                f"{func}: expected {name} to have shape {want}, got {tuple(x.shape)}.{follows}"
            )
    if contiguous and not x.flags.c_contiguous:
        raise ValueError(
            f"{func}: expected {name} to be C-contiguous (a kernel reads its memory row by "
            f"row), got strides {tuple(x.strides)} for shape {tuple(x.shape)}. Pass "
            f"numpy.ascontiguousarray({name})."
        )
    if finite and x.dtype.kind == "f":
        xp_ = get_xp(x)
        bad = xp_.isnan(x) if allow_inf else ~xp_.isfinite(x)
        if bool(bad.any()):
            what = "NaN" if allow_inf else "NaN or Inf"
            raise ValueError(
                f"{func}: expected {name} to contain no {what} values, got "
                f"{int(bad.sum())} of {x.size}. Check the data or the step that produced it."
            )
    return x


def check_axis(axis, x, name, func):
    """An int axis of ``x`` (negative counts from the end); returns it as a non-negative int."""
    nd = x.ndim
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -nd <= axis < nd:
        raise InvalidParameterError(
            f"The 'axis' parameter of {func} must be an int in [{-nd}, {nd}) for {name} of "
            f"shape {tuple(x.shape)}. Got {axis!r} instead."
        )
    return int(axis) % nd


def check_dout(dout, shape, dtype, xp, func, name="dout", *, scalar=True, source=None):
    """An upstream gradient for a forward output of ``shape``: returned broadcast to it.

    A float array of the forward output's dtype on its device whose shape broadcasts to
    ``shape`` (a view, not a copy, is returned). With ``scalar``, a Python or NumPy real
    number is accepted and filled in (``dout=1.0`` differentiates the sum). ``source`` names
    the argument the forward output's shape follows, for the message.
    """
    shape = tuple(shape)
    if scalar and isinstance(dout, numbers.Real) and not isinstance(dout, (bool, np.bool_)):
        return xp.full(shape, dout, dtype=dtype)
    check_array(dout, name, func, dtype=dtype, finite=False, xp=xp, ref="the forward output's")
    try:
        ok = np.broadcast_shapes(tuple(dout.shape), shape) == shape
    except ValueError:
        ok = False
    if not ok:
        follows = f" That shape follows {source}." if source else ""
        raise ValueError(
            f"{func}: expected {name} to have the forward output's shape {shape}, got "
            f"{tuple(dout.shape)}.{follows}"
        )
    return xp.broadcast_to(dout, shape)


def check_cache(cache, cls, func, name="cache"):
    """A cache made by the matching forward (a NamedTuple of type ``cls``)."""
    if not isinstance(cache, cls):
        raise TypeError(
            f"{func}: expected {name} to be the {cls.__name__} returned by the forward pass, "
            f"got {type(cache).__name__}. Pass the cache the matching *_forward returned."
        )
    return cache


def check_pair(pair, name, what, func):
    """An upstream gradient given as a pair ``what`` (e.g. "(dz, dlog_q)"), either entry None."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(
            f"{func}: expected {name} to be a pair {what} (either may be None), got "
            f"{type(pair).__name__}."
        )
    return tuple(pair)


def check_rng(rng, func):
    """Return ``rng`` if it is a NumPy (or CuPy) Generator; TypeError otherwise."""
    if isinstance(rng, np.random.Generator):
        return rng
    if type(rng).__module__.split(".")[0] == "cupy" and hasattr(rng, "standard_normal"):
        return rng
    raise TypeError(
        f"{func}: expected rng to be a numpy.random.Generator, got {type(rng).__name__}. "
        f"Create one with numpy.random.default_rng(seed) and pass it explicitly; lvmcore "
        f"never draws from global random state."
    )


def check_sample_shape(shape, func, name="shape"):
    """Normalise a sample shape (int or tuple of non-negative ints) to a tuple."""
    items = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        items = None if isinstance(items, (str, bytes)) else tuple(items)
    except TypeError:
        items = None
    if items is None or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s >= 0
        for s in items
    ):
        raise InvalidParameterError(
            f"The {name!r} parameter of {func} must be a tuple of non-negative ints. "
            f"Got {shape!r} instead."
        )
    return tuple(int(s) for s in items)


def check_float_dtype(dtype, func, name="dtype"):
    """``dtype`` as a numpy dtype, float32 or float64; TypeError otherwise (None included)."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    # dt is None is tested first: numpy.dtype(None) is float64, so None == float64 holds
    if dt is None or dt not in FLOAT_DTYPES:
        got = dt if dt is not None else repr(dtype)
        raise TypeError(
            f"{func}: expected {name} to be float32 or float64, got {got}. "
            f"Pass {name}=numpy.float32 (speed) or numpy.float64 (checks)."
        )
    return dt


def check_sizes(sizes, name, func, *, low=1):
    """Layer widths: a sequence (tuple, list) of ints >= ``low``; returned as a tuple.

    A single int (``hidden=8``), a string or a float is refused rather than iterated or
    wrapped: the caller says what it means (``hidden=(8,)``).
    """
    msg = (
        f"The {name!r} parameter of {func} must be a sequence of ints in [{low}, inf), e.g. "
        f"(200, 200) or () for none. Got {sizes!r} instead."
    )
    if isinstance(sizes, (str, bytes, numbers.Number)) or not hasattr(sizes, "__iter__"):
        raise InvalidParameterError(msg)
    try:
        items = tuple(sizes)
    except TypeError:
        raise InvalidParameterError(msg) from None
    if not all(
        isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s >= low
        for s in items
    ):
        raise InvalidParameterError(msg)
    return tuple(int(s) for s in items)


def check_xp(xp, func):
    """The array module argument: None (numpy), numpy or cupy."""
    if xp is None:
        return np
    if getattr(xp, "__name__", None) not in ("numpy", "cupy"):
        raise TypeError(f"{func}: expected xp to be the numpy or cupy module, got {xp!r}.")
    return xp


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


# --- blocks (stochastic layers, MADE, flows, priors, decoders) --------------------------------
# A block's inputs must be float arrays of the block's dtype, on the block's device, finite,
# with a given last axis; a conditioning input (context) may drop leading sample axes of the
# input it goes with and is broadcast over them.


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
