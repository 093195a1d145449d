"""Bias and activation in one pass over a GEMM output, and their backward in one pass.

Math
----
For a layer's pre-activation GEMM output a = x W (N, O), its bias b (O,) and a pointwise
activation f::

    y[n, o]   = f(a[n, o] + b[o])                                              (N, O)

Backward, from y alone (the pre-activation is never stored), with an optional per-row scale
s (N,) that multiplies the upstream gradient (the importance weights of an IWAE step, applied
here instead of in a pass of their own over the larger output of the layer above)::

    da[n, o]  = s[n] dy[n, o] f'(y[n, o])                                      (N, O)
    db[o]     = sum_n da[n, o]                                                 (O,)

and da is also dL/da = dL/d(x W) for the GEMMs dW = x^T da, dx = da W^T. f' as a function of y:

    tanh        1 - y^2
    relu        [y > 0]                      (the subgradient at 0 taken as 0)
    sigmoid     y (1 - y)
    softplus    sigmoid(a) = 1 - e^{-y} = -expm1(-y)

Numerics
--------
- tanh (Numba): float32, Eigen's rational approximation x P(x^2) / Q(x^2) on x clamped to
  [-7.9053, 7.9053] (no exp, one division; within 6 ulp of the correctly rounded tanh, measured
  5.72 near |x| = 5.9 on a dense sweep, and 3x faster than a form built on exp); float64, Cephes' rational
  function on |v| < 0.625, else sign(v) (1 - 2 / (e^{2|v|} + 1)), within 2 ulp (e^{2|v|} = inf
  gives exactly +-1). Both tested against NumPy's tanh over the whole range.
- sigmoid and softplus go through e = exp(-|v|) <= 1, so nothing overflows for any v;
  softplus(v) = max(v, 0) + log1p(e). The Numba kernels use ``kernels.fastmath`` (exp, log,
  log1p, vectorizable): exp flushes results below the smallest normal to 0, so sigmoid(v) and
  softplus(v) are exactly 0 for v < -87.3 (float32) instead of a subnormal: no subnormal is
  produced (PERF-NOTES, "Denormals"). The reference keeps NumPy's subnormals; they differ by
  less than the smallest normal.
- -expm1(-y) for softplus (Numba): its Taylor series below y = 1/2, 1 - e^{-y} above: no
  cancellation for small y, where 1 - e^{-y} would lose every digit.
- relu propagates NaN (v * [v > 0], as ``lvmcore.ops.relu_forward``).
- db accumulates in float64, per chunk of rows, and the chunks are summed in order: the result
  does not depend on the thread count.
- float32 stays float32 (constants typed, tested from the IR).

Shapes: a, y, dy, da (N, O), b and db (O,), s (N,). N >= 0, O >= 1; float32 or float64, one
dtype. ``out`` may be the input it replaces (a for the forward, dy for the backward).

Variants
--------
- ``bias_act_ref``, ``bias_act_backward_ref``: NumPy, the oracle; the "numpy" backend.
- ``bias_act_numba_v1``, ``bias_act_backward_numba_v1``: in place, ``prange`` over chunks of
  rows (about 16 K elements each, fixed by the wrapper: the results do not depend on the thread
  count); per row one vectorized loop over O. An out-of-place call copies its input into the
  output first: a loop reading one array and writing another that is the same memory fails
  LLVM's runtime alias check and runs scalar (10-20x slower, measured). DEFAULT, the "numba"
  backend.
- ``bias_act_cupy_v1``, ``bias_act_backward_cupy_v1``: one ElementwiseKernel each (CUDA's own
  tanh, exp, log1p); db by CuPy's float64 sum over rows. The "cupy" backend; not yet run on a
  device (the CUDA emulator runs them).
"""

import numpy as np
from numba import njit, prange

from ._checks import check_array, check_backend, check_out, check_param, same_buffer
from ._registry import KernelRecord, default_variant, implementations, variants
from .fastmath import _generic, exp, exp_f32, exp_f64, log1p

__all__ = [
    "bias_act",
    "bias_act_backward",
    "bias_act_ref",
    "bias_act_backward_ref",
    "bias_act_numba_v1",
    "bias_act_backward_numba_v1",
    "bias_act_cupy_v1",
    "bias_act_backward_cupy_v1",
    "ACTIVATIONS",
    "tanh_f32",
    "tanh_f64",
    "RECORDS",
    "VARIANTS",
    "BACKWARD_VARIANTS",
    "IMPLEMENTATIONS",
    "BACKWARD_IMPLEMENTATIONS",
    "DEFAULT",
    "BACKWARD_DEFAULT",
]

_FUNC = "bias_act"
_FUNC_BWD = "bias_act_backward"
ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus")
_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
# Elements per chunk of rows in the Numba kernels.
_CHUNK = 1 << 14


# --------------------------------------------------------------------------------------------
# Argument checks (every variant runs them; the kernels below assume valid input)
# --------------------------------------------------------------------------------------------


def _check_act(act, func):
    return check_param(act, "act", func, kind="choice", choices=ACTIVATIONS)


def _check_forward(func, a, b, act, out, lib="numpy"):
    act = _check_act(act, func)
    check_array(a, "a", func, ndim=2, lib=lib)
    check_array(b, "b", func, ndim=1, lib=lib)
    if b.dtype != a.dtype:
        raise TypeError(
            f"{func}: expected b to have the dtype of a ({a.dtype}), got {b.dtype}. Cast them "
            f"to one dtype."
        )
    if b.shape[0] != a.shape[1] or a.shape[1] < 1:
        raise ValueError(
            f"{func}: expected b of shape ({a.shape[1]},) (the columns of a, at least one), "
            f"got a of shape {tuple(a.shape)} and b of shape {tuple(b.shape)}."
        )
    if out is a and lib == "numpy" and _in_place_ok(a, {"b": b}):
        pass  # the training step's call: check_out's overlap scan would find only a itself
    elif out is not None and lib == "numpy":
        check_out(out, "out", func, a.shape, a.dtype, {"a": a, "b": b}, in_place="a")
    elif out is not None:
        from . import _cupy

        _cupy.check_out(out, "out", func, a.shape, a.dtype)
    return act


def _in_place_ok(a, others):
    """Whether ``a`` may be written in place as it is (C-contiguous, writeable, overlapping
    none of ``others``): the cheap test for ``out is a``; False sends the call through
    ``check_out``, whose message names the problem."""
    return (
        a.flags.c_contiguous
        and a.flags.writeable
        and not any(o is not None and np.may_share_memory(a, o) for o in others.values())
    )


def _check_backward(func, dy, y, act, row_scale, out, lib="numpy"):
    act = _check_act(act, func)
    check_array(dy, "dy", func, ndim=2, lib=lib)
    check_array(y, "y", func, ndim=2, lib=lib)
    if y.dtype != dy.dtype or y.shape != dy.shape:
        raise ValueError(
            f"{func}: expected y to match dy ({dy.dtype} {tuple(dy.shape)}), got {y.dtype} "
            f"{tuple(y.shape)}. Pass the forward's output."
        )
    if dy.shape[1] < 1:
        raise ValueError(
            f"{func}: expected dy to have at least one column, got shape {tuple(dy.shape)}."
        )
    if row_scale is not None:
        check_array(row_scale, "row_scale", func, ndim=1, lib=lib)
        if row_scale.dtype != dy.dtype or row_scale.shape[0] != dy.shape[0]:
            raise ValueError(
                f"{func}: expected row_scale to be a {dy.dtype} array of shape "
                f"({dy.shape[0]},) (one scale per row of dy), got {row_scale.dtype} "
                f"{tuple(row_scale.shape)}."
            )
    if out is dy and lib == "numpy" and _in_place_ok(dy, {"y": y, "row_scale": row_scale}):
        pass  # the training step's call, as in _check_forward
    elif out is not None and lib == "numpy":
        inputs = {"dy": dy, "y": y, "row_scale": row_scale}
        check_out(out, "out", func, dy.shape, dy.dtype, inputs, in_place="dy")
    elif out is not None:
        from . import _cupy

        _cupy.check_out(out, "out", func, dy.shape, dy.dtype)
    return act


# --------------------------------------------------------------------------------------------
# Reference (plain NumPy, the oracle)
# --------------------------------------------------------------------------------------------


def _act_ref(v, act):
    t = v.dtype.type
    if act == "tanh":
        return np.tanh(v)
    if act == "relu":
        return v * (v > 0)
    e = np.exp(-np.abs(v))
    if act == "sigmoid":
        return np.where(v >= 0, t(1) / (t(1) + e), e / (t(1) + e))
    return np.maximum(v, t(0)) + np.log1p(e)


def _dact_ref(y, act):
    t = y.dtype.type
    if act == "tanh":
        return t(1) - y * y
    if act == "relu":
        return (y > 0).astype(y.dtype)
    if act == "sigmoid":
        return y * (t(1) - y)
    return -np.expm1(-y)


def bias_act_ref(a, b, act, out=None):
    """y = f(a + b), NumPy reference.

    Parameters
    ----------
    a : ndarray of shape (N, O), float32 or float64
        The GEMM output x W.
    b : ndarray of shape (O,), a's dtype
    act : {"tanh", "relu", "sigmoid", "softplus"}
    out : ndarray of shape (N, O), optional
        C-contiguous output of a's dtype; may be ``a`` itself (in place).

    Returns
    -------
    y : ndarray of shape (N, O)
    """
    act = _check_forward(_FUNC, a, b, act, out)
    y = _act_ref(a + b, act)  # (N, O)
    if out is None:
        return y
    out[...] = y
    return out


def bias_act_backward_ref(dy, y, act, row_scale=None, out=None):
    """da = s dy f'(y) and db = sum over rows of da, NumPy reference.

    Parameters
    ----------
    dy : ndarray of shape (N, O)
        dL/dy.
    y : ndarray of shape (N, O)
        The forward's output.
    act : {"tanh", "relu", "sigmoid", "softplus"}
    row_scale : ndarray of shape (N,), optional
        s, a factor per row of dy (1 when None).
    out : ndarray of shape (N, O), optional
        C-contiguous output for da; may be ``dy`` itself (in place).

    Returns
    -------
    da : ndarray of shape (N, O)
    db : ndarray of shape (O,)
        Summed in float64, rounded once.
    """
    act = _check_backward(_FUNC_BWD, dy, y, act, row_scale, out)
    da = dy * _dact_ref(y, act)  # (N, O)
    if row_scale is not None:
        da = da * row_scale[:, None]
    db = da.sum(axis=0, dtype=np.float64).astype(dy.dtype)  # (O,)
    if out is None:
        return da, db
    out[...] = da
    return out, db


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def tanh_f32(x):
    """tanh for float32, vectorizable (module docstring): Eigen's rational approximation."""
    c = np.float32(7.90531110763549805)  # beyond it tanh rounds to within 2 ulp of +-1
    xc = min(max(x, -c), c)
    x2 = xc * xc
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    r = xc * p / q
    r = x if abs(x) < np.float32(0.0004) else r  # tanh(x) = x to float32 precision
    return x + x if x != x else r  # NaN in, NaN out (min/max would drop it)


@njit(nogil=True, cache=True, error_model="numpy")
def tanh_f64(x):
    """tanh for float64, vectorizable (module docstring): Cephes ``tanh``."""
    ax = abs(x)
    s = x * x
    num = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s
    num = num - 1.61468768441708447952e3
    den = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s
    den = den + 4.84406305325125486048e3
    p = x + x * s * (num / den)
    big = 1.0 - 2.0 / (exp_f64(2.0 * ax) + 1.0)
    big = big if x >= 0.0 else -big
    return p if ax < 0.625 else big


tanh = _generic(tanh_f32, tanh_f64, "tanh")


@njit(nogil=True, cache=True, error_model="numpy")
def dsoftplus_f32(y):
    """sigmoid(a) from y = softplus(a) >= 0 in float32: -expm1(-y), vectorizable."""
    # y < 1/2: the Taylor series of 1 - e^{-y} to y^9 (truncation below 2^-27 relative);
    # above, 1 - e^{-y} >= 0.39 loses no more than an ulp
    t = np.float32(1.0 / 362880.0)
    t = np.float32(-1.0 / 40320.0) + y * t
    t = np.float32(1.0 / 5040.0) + y * t
    t = np.float32(-1.0 / 720.0) + y * t
    t = np.float32(1.0 / 120.0) + y * t
    t = np.float32(-1.0 / 24.0) + y * t
    t = np.float32(1.0 / 6.0) + y * t
    t = np.float32(-0.5) + y * t
    t = np.float32(1.0) + y * t
    small = y * t
    big = np.float32(1) - exp_f32(-y)
    return small if y < np.float32(0.5) else big


@njit(nogil=True, cache=True, error_model="numpy")
def dsoftplus_f64(y):
    """sigmoid(a) from y = softplus(a) >= 0 in float64: -expm1(-y), vectorizable."""
    # y < 1/2: the Taylor series to y^17 (truncation below 2^-56 relative)
    t = 0.0
    f = 1.0
    for k in range(17, 0, -1):  # unrolled by LLVM: a constant trip count
        f = 1.0
        for i in range(2, k + 1):
            f *= i
        t = (1.0 if k % 2 else -1.0) / f + y * t
    small = y * t
    big = 1.0 - exp_f64(-y)
    return small if y < 0.5 else big


dsoftplus = _generic(dsoftplus_f32, dsoftplus_f64, "dsoftplus")


@njit(nogil=True, cache=True, error_model="numpy")
def _act(v, code, zero, one):
    # code: 0 tanh, 1 relu, 2 sigmoid, 3 softplus; zero, one: typed constants of v's dtype
    if code == 0:
        return tanh(v)
    if code == 1:
        return v * (one if v > zero else zero)
    e = exp(-abs(v))
    if code == 2:
        return one / (one + e) if v >= zero else e / (one + e)
    return (v if v > zero else zero) + log1p(e)


@njit(nogil=True, cache=True, error_model="numpy")
def _dact(y, code, zero, one):
    if code == 0:
        return one - y * y
    if code == 1:
        return one if y > zero else zero
    if code == 2:
        return y * (one - y)
    return dsoftplus(y)


# The loops run in place, on one array: handed two arrays with the same data pointer, LLVM's
# runtime alias check sees them overlap and takes the scalar fallback loop (measured 10-20x
# slower); so an out-of-place call copies its input into the output first.


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _forward_v1(y, b, code, rows):
    # y <- f(y + b); chunks of `rows` rows, each row written by one iteration (no shared writes)
    n, o = y.shape
    zero = b.dtype.type(0)
    one = b.dtype.type(1)
    nchunks = (n + rows - 1) // rows
    for c in prange(nchunks):
        for r in range(c * rows, min(n, (c + 1) * rows)):
            yr = y[r]
            if code == 0:  # one branch per activation, hoisted out of the vector loop
                for j in range(o):
                    yr[j] = _act(yr[j] + b[j], 0, zero, one)
            elif code == 1:
                for j in range(o):
                    yr[j] = _act(yr[j] + b[j], 1, zero, one)
            elif code == 2:
                for j in range(o):
                    yr[j] = _act(yr[j] + b[j], 2, zero, one)
            else:
                for j in range(o):
                    yr[j] = _act(yr[j] + b[j], 3, zero, one)


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _backward_v1(d, y, s, scaled, acc, code, rows):
    # d <- s d f'(y) in place; chunk c owns acc[c] (float64 partial of db): no shared writes,
    # and the wrapper sums acc over c in order, so db does not depend on the thread count
    n, o = d.shape
    zero = d.dtype.type(0)
    one = d.dtype.type(1)
    nchunks = (n + rows - 1) // rows
    for c in prange(nchunks):
        ac = acc[c]
        for r in range(c * rows, min(n, (c + 1) * rows)):
            dr = d[r]
            yr = y[r]
            sr = s[r] if scaled else one
            if code == 0:
                for j in range(o):
                    v = sr * dr[j] * _dact(yr[j], 0, zero, one)
                    dr[j] = v
                    ac[j] += np.float64(v)
            elif code == 1:
                for j in range(o):
                    v = sr * dr[j] * _dact(yr[j], 1, zero, one)
                    dr[j] = v
                    ac[j] += np.float64(v)
            elif code == 2:
                for j in range(o):
                    v = sr * dr[j] * _dact(yr[j], 2, zero, one)
                    dr[j] = v
                    ac[j] += np.float64(v)
            else:
                for j in range(o):
                    v = sr * dr[j] * _dact(yr[j], 3, zero, one)
                    dr[j] = v
                    ac[j] += np.float64(v)


def _rows(o):
    return max(1, _CHUNK // o)


def bias_act_numba_v1(a, b, act, out=None):
    """Numba, one pass per row in place, parallel over chunks of rows. Contract of
    ``bias_act_ref`` (out of place: a copied into the output first)."""
    act = _check_forward(_FUNC, a, b, act, out)
    y = np.empty(a.shape, a.dtype) if out is None else out  # (N, O)
    if y is not a and not same_buffer(y, a):
        np.copyto(y, a)
    _forward_v1(y, np.ascontiguousarray(b), _CODE[act], _rows(a.shape[1]))
    return y


def bias_act_backward_numba_v1(dy, y, act, row_scale=None, out=None):
    """Numba, one pass per row in place with float64 partials of db per chunk of rows.
    Contract of ``bias_act_backward_ref`` (out of place: dy copied into the output first)."""
    act = _check_backward(_FUNC_BWD, dy, y, act, row_scale, out)
    n, o = dy.shape
    da = np.empty(dy.shape, dy.dtype) if out is None else out  # (N, O)
    if da is not dy and not same_buffer(da, dy):
        np.copyto(da, dy)
    rows = _rows(o)
    acc = np.zeros((max(1, -(-n // rows)), o), np.float64)  # (chunks, O)
    scaled = row_scale is not None
    s = np.ascontiguousarray(row_scale) if scaled else np.empty(0, dy.dtype)
    _backward_v1(da, np.ascontiguousarray(y), s, scaled, acc, _CODE[act], rows)
    return da, acc.sum(axis=0).astype(dy.dtype)


# --------------------------------------------------------------------------------------------
# CuPy (one ElementwiseKernel each; CuPy is imported only when these run)
# --------------------------------------------------------------------------------------------

# (parameter names other than a: the CUDA emulator's launcher calls its argument array a)
_CUPY_FORWARD = {
    "tanh": "y = tanh(h + bias)",
    "relu": "T v = h + bias; y = v * (v > (T)0 ? (T)1 : (T)0)",
    "sigmoid": (
        "T v = h + bias; T e = exp(-fabs(v)); y = v >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e)"
    ),
    "softplus": "T v = h + bias; y = (v > (T)0 ? v : (T)0) + log1p(exp(-fabs(v)))",
}
_CUPY_DACT = {
    "tanh": "(T)1 - y * y",
    "relu": "(y > (T)0 ? (T)1 : (T)0)",
    "sigmoid": "y * ((T)1 - y)",
    "softplus": "(-expm1(-y))",
}


def bias_act_cupy_v1(a, b, act, out=None):
    """CuPy: one ElementwiseKernel, b broadcast over rows. Contract of ``bias_act_ref``."""
    func = "bias_act_cupy_v1"
    act = _check_forward(func, a, b, act, out, lib="cupy")
    from . import _cupy

    kernel = _cupy.elementwise("T h, T bias", "T y", _CUPY_FORWARD[act], f"lvm_bias_{act}_v1")
    if out is None:
        out = _cupy.cupy.empty(a.shape, a.dtype)  # (N, O)
    kernel(a, b, out)
    return out


def bias_act_backward_cupy_v1(dy, y, act, row_scale=None, out=None):
    """CuPy: one ElementwiseKernel for da, db by a float64 sum over rows. Contract of
    ``bias_act_backward_ref``."""
    func = "bias_act_backward_cupy_v1"
    act = _check_backward(func, dy, y, act, row_scale, out, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    if out is None:
        out = cupy.empty(dy.shape, dy.dtype)  # (N, O)
    s = cupy.ones(dy.shape[0], dy.dtype) if row_scale is None else row_scale
    op = f"da = s * dy * ({_CUPY_DACT[act]})"
    kernel = _cupy.elementwise("T dy, T y, T s", "T da", op, f"lvm_bias_{act}_backward_v1")
    kernel(dy, y, s[:, None], out)
    return out, out.sum(axis=0, dtype=np.float64).astype(dy.dtype)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

# DEFAULT numba_v1 (forward and backward, the only Numba variants). Evidence: see
# benchmarks/compare_peers.py ("bias+act") and the asv BiasAct suite; one fused pass against
# NumPy's add, tanh (and multiply, sum) passes over the same (N, O) array.
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", bias_act_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v1", bias_act_numba_v1, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", bias_act_cupy_v1, "default"),
    KernelRecord(_FUNC_BWD, "numpy", "ref", bias_act_backward_ref, "reference"),
    KernelRecord(_FUNC_BWD, "numba", "numba_v1", bias_act_backward_numba_v1, "default"),
    KernelRecord(_FUNC_BWD, "cupy", "cupy_v1", bias_act_backward_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
BACKWARD_VARIANTS = variants(RECORDS, _FUNC_BWD)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
BACKWARD_IMPLEMENTATIONS = implementations(RECORDS, _FUNC_BWD)
DEFAULT = default_variant(RECORDS, _FUNC)
BACKWARD_DEFAULT = default_variant(RECORDS, _FUNC_BWD)


# --------------------------------------------------------------------------------------------
# Public wrappers: validate once, then dispatch
# --------------------------------------------------------------------------------------------


def bias_act(a, b, act, out=None, *, backend="numba"):
    """y = f(a + b) in one pass over the GEMM output a (module docstring).

    Parameters
    ----------
    a : ndarray of shape (N, O), float32 or float64
    b : ndarray of shape (O,), a's dtype
    act : {"tanh", "relu", "sigmoid", "softplus"}
    out : ndarray of shape (N, O), optional
        Preallocated C-contiguous output; may be ``a`` itself.
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    y : ndarray of shape (N, O)

    Raises
    ------
    TypeError
        Non-arrays, non-float dtypes, b of another dtype than a.
    ValueError
        a not 2-D, b not of shape (O,), out of another shape or overlapping b.
    kernels.InvalidParameterError
        act not one of the four names.
    """
    impl = check_backend(backend, IMPLEMENTATIONS, _FUNC)
    return impl(a, b, act, out)


def bias_act_backward(dy, y, act, row_scale=None, out=None, *, backend="numba"):
    """da = s dy f'(y) and db = sum_n da, in one pass (module docstring).

    Parameters
    ----------
    dy, y : ndarray of shape (N, O)
        The upstream gradient and the forward's output.
    act : {"tanh", "relu", "sigmoid", "softplus"}
    row_scale : ndarray of shape (N,), optional
        A factor per row of dy (1 when None).
    out : ndarray of shape (N, O), optional
        Preallocated C-contiguous output for da; may be ``dy`` itself.
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    da : ndarray of shape (N, O)
    db : ndarray of shape (O,)
    """
    impl = check_backend(backend, BACKWARD_IMPLEMENTATIONS, _FUNC_BWD)
    return impl(dy, y, act, row_scale, out)
