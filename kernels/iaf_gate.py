"""The gated update of an inverse autoregressive flow step, fused, and its backward.

Math
----
From the MADE output y (N, 2, Z) of an IAF step, m = y[:, 0] and s_raw = y[:, 1], its input z
(N, Z) and the scalar forget bias b (Kingma et al. 2016, eqs. 11-15)::

    t        = s_raw + b                                                       (N, Z)
    s        = sigmoid(t),     oms = 1 - s = sigmoid(-t)                       (N, Z)
    z_new    = s z + oms m                                                     (N, Z)
    logdet   = sum_j log s[:, j] = sum_j log_sigmoid(t[:, j])                  (N,)

Backward of L(z_new, logdet), with dL/dz_new = dz_new (N, Z) and dL/dlogdet = dlogdet (N,), and
ds/dt = s oms, dlog s/dt = oms::

    dy[:, 0] = dm     = dz_new oms                                             (N, Z)
    dy[:, 1] = ds_raw = dz_new (z - m) s oms + dlogdet oms                     (N, Z)
    dz                = dz_new s           (the direct path only; the MADE adds its own)

Either upstream gradient may be None (zero). The same pass gives the IAF's Jacobian-transpose
solve its inner step: J^T g = r is solved by g <- (r - N^T g) / s, where N^T g is the MADE's
input VJP of (g oms, g (z - m) s oms), which is dy above with dz_new = g, dlogdet = None
(``need_dz=False`` skips dz there).

N is the product of the step's leading axes (K B); ``lvmcore.flows.IAFStep`` reshapes its
(*S, B, Z) arrays to (N, Z) views and calls these through its backend.

Shapes: y (N, 2, Z), z, z_new, s, oms, dz_new, dz (N, Z), logdet, dlogdet (N,); N >= 0,
Z >= 1; float32 or float64, one dtype; every array C-contiguous (the caller passes contiguous
views; nothing is copied here). Outputs may be preallocated (``*_out``) and overlap no input.

Numerics
--------
- One exponential per element: e = exp(-|t|) <= 1, then s and oms are 1 / (1 + e) and
  e / (1 + e) in the order the sign of t says. Neither is ever formed as 1 - (the other), so
  oms keeps full relative accuracy where s rounds to 1 (t > 17 in float32, > 37 in float64),
  and s where it rounds to 0.
- log_sigmoid(t) = min(t, 0) - log1p(e), stable for any t: no overflow, exact for t = -inf
  (-inf) and t = +inf (0); logdet is finite for finite y, or -inf when a t is -inf, as the
  reference's.
- The Numba kernels use ``kernels.fastmath`` (vectorizable exp, log1p; <= 1.5 ulp). Its exp
  returns exactly 0 where e would be subnormal (|t| > 87.3 in float32, 708.4 in float64), so s
  and oms are exactly 0, 1 or normal: no subnormal is produced by the gate (the reference keeps
  NumPy's subnormal oms there; they differ by less than the smallest normal). Products with a
  tiny operand (oms m, dz_new oms) round as IEEE arithmetic does, as the reference's.
  No ``fastmath`` flags are set on the kernels (nothing here needs reassociation).
- logdet is summed in the dtype, per row, sequentially over j = 0 .. Z-1: the row's log-sigmoid
  terms are written to a small per-chunk buffer in the vectorized pass and added up after it
  (a float accumulator inside that pass would serialize it: measured 9x slower), so logdet does
  not depend on the thread count nor on the vector width of the machine. All its terms are
  <= 0: no cancellation, relative error <= Z/2 ulp (the reference's NumPy sum is pairwise).
- float32 stays float32 (constants typed; tested from the IR).
- NaN in y or z propagates to the outputs of its row, as in the reference; nothing is
  scanned for NaN or Inf here (``IAFStep`` validates its inputs before its MADE runs).

Variants
--------
- ``iaf_gate_ref``, ``iaf_gate_backward_ref``: NumPy, the readable math (the IAF step's own
  before it called a kernel); the oracle and the "numpy" backend.
- ``iaf_gate_numba_v1``, ``iaf_gate_backward_numba_v1``: one pass over each row (forward: one
  vectorized loop writing z_new, s, oms and the log-sigmoid terms, then their sequential sum),
  ``prange`` over chunks of about 16 K elements fixed by the wrapper (identical results for any
  thread count), one thread below 64 K elements. DEFAULT, the "numba" backend.
- ``iaf_gate_cupy_v1`` (kernels/cuda/iaf_gate.cu): a group of up to 32 lanes per row, logdet by
  a warp-shuffle sum (a fixed tree order per Z); ``iaf_gate_backward_cupy_v1``: one
  ElementwiseKernel. The "cupy" backend; run on a device only through the CUDA emulator so far.

A fused solve step (g = (r - v) / s together with dy) was measured and not taken: see DEFAULT
below.
"""

import numpy as np
from numba import njit, prange

from ._checks import check_array, check_backend, check_dtype_of, check_out, check_param
from ._registry import KernelRecord, default_variant, implementations, variants
from .fastmath import exp, log1p

__all__ = [
    "iaf_gate",
    "iaf_gate_backward",
    "iaf_gate_ref",
    "iaf_gate_backward_ref",
    "iaf_gate_numba_v1",
    "iaf_gate_backward_numba_v1",
    "iaf_gate_cupy_v1",
    "iaf_gate_backward_cupy_v1",
    "RECORDS",
    "VARIANTS",
    "BACKWARD_VARIANTS",
    "IMPLEMENTATIONS",
    "BACKWARD_IMPLEMENTATIONS",
    "DEFAULT",
    "BACKWARD_DEFAULT",
]

_FUNC = "iaf_gate"
_FUNC_BWD = "iaf_gate_backward"
# Elements per chunk of rows in the Numba kernels; below _PARALLEL_MIN elements one thread
# runs the whole array (a parallel launch costs more than the work).
_CHUNK = 1 << 14
_PARALLEL_MIN = 1 << 16


# --------------------------------------------------------------------------------------------
# Argument checks (every variant runs them; the kernels below assume valid input)
# --------------------------------------------------------------------------------------------


def _check_rows(a, name, func, ndim, lib):
    return check_array(a, name, func, ndim=ndim, lib=lib, contiguous=True)


def _check_outs(func, outs, inputs, lib):
    """Each (name, array or None, shape, dtype) of ``outs``: a C-contiguous writeable buffer
    overlapping no input and no other output."""
    seen = dict(inputs)
    for name, out, shape, dtype in outs:
        if out is None:
            continue
        if lib == "numpy":
            check_out(out, name, func, shape, dtype, seen)
        else:
            from . import _cupy

            _cupy.check_out(out, name, func, shape, dtype)
        seen[name] = out


def _check_y_z(func, y, z, lib):
    _check_rows(y, "y", func, 3, lib)
    _check_rows(z, "z", func, 2, lib)
    check_dtype_of(z, "z", y, "y", func)
    if y.shape[1] != 2 or y.shape[2] < 1:
        raise ValueError(
            f"{func}: expected y of shape (N, 2, Z) with Z >= 1 (the MADE's m and s_raw heads), "
            f"got {tuple(y.shape)}."
        )
    if tuple(z.shape) != (y.shape[0], y.shape[2]):
        raise ValueError(
            f"{func}: expected z of shape {(y.shape[0], y.shape[2])} (the rows and Z of y, "
            f"of shape {tuple(y.shape)}), got {tuple(z.shape)}. Pass the step's input, "
            f"reshaped to (N, Z) as y is to (N, 2, Z)."
        )
    return y.shape[0], y.shape[2]


def _check_forward(func, y, z, forget_bias, z_new_out, s_out, oms_out, logdet_out, lib="numpy"):
    fb = check_param(forget_bias, "forget_bias", func, kind="float")
    N, Z = _check_y_z(func, y, z, lib)
    outs = [
        ("z_new_out", z_new_out, (N, Z), y.dtype),
        ("s_out", s_out, (N, Z), y.dtype),
        ("oms_out", oms_out, (N, Z), y.dtype),
        ("logdet_out", logdet_out, (N,), y.dtype),
    ]
    _check_outs(func, outs, {"y": y, "z": z}, lib)
    return y.dtype.type(fb)


def _check_backward(func, dz_new, dlogdet, y, z, s, oms, dy_out, dz_out, need_dz, lib="numpy"):
    if not isinstance(need_dz, bool | np.bool_):
        raise TypeError(f"{func}: expected need_dz to be a bool, got {type(need_dz).__name__}.")
    N, Z = _check_y_z(func, y, z, lib)
    inputs = {"y": y, "z": z}
    for name, a in (("s", s), ("oms", oms), ("dz_new", dz_new), ("dlogdet", dlogdet)):
        if a is None and name in ("dz_new", "dlogdet"):
            continue
        shape = (N,) if name == "dlogdet" else (N, Z)
        _check_rows(a, name, func, len(shape), lib)
        check_dtype_of(a, name, y, "y", func)
        if tuple(a.shape) != shape:
            raise ValueError(
                f"{func}: expected {name} of shape {shape} (from y of shape {tuple(y.shape)}), "
                f"got {tuple(a.shape)}."
            )
        inputs[name] = a
    if dz_out is not None and not need_dz:
        raise ValueError(
            f"{func}: expected dz_out None when need_dz=False, got an array. Pass "
            f"need_dz=True to have dz written."
        )
    outs = [("dy_out", dy_out, (N, 2, Z), y.dtype), ("dz_out", dz_out, (N, Z), y.dtype)]
    _check_outs(func, outs, inputs, lib)
    return bool(need_dz)


# --------------------------------------------------------------------------------------------
# Reference (plain NumPy, the oracle)
# --------------------------------------------------------------------------------------------


def _sigmoid_ref(x):
    e = np.exp(-np.abs(x))  # <= 1: nothing overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _put(out, value):
    if out is None:
        return value
    out[...] = value
    return out


def iaf_gate_ref(y, z, forget_bias, z_new_out=None, s_out=None, oms_out=None, logdet_out=None):
    """z_new, s, 1 - s and logdet of the IAF gate, NumPy reference (module docstring).

    Parameters
    ----------
    y : ndarray of shape (N, 2, Z), float32 or float64, C-contiguous
        The MADE output: ``y[:, 0]`` is m, ``y[:, 1]`` is s_raw.
    z : ndarray of shape (N, Z), y's dtype, C-contiguous
        The step's input.
    forget_bias : float
        Added to s_raw before the sigmoid.
    z_new_out, s_out, oms_out : ndarray of shape (N, Z), optional
    logdet_out : ndarray of shape (N,), optional
        Preallocated C-contiguous outputs of y's dtype, overlapping no input.

    Returns
    -------
    z_new, s, oms : ndarray of shape (N, Z)
        ``oms`` is 1 - s, computed as sigmoid(-t).
    logdet : ndarray of shape (N,)
        :math:`\\sum_j \\log s_j`.

    Raises
    ------
    TypeError
        Non-arrays, non-float dtypes, arrays of different dtypes.
    ValueError
        Wrong shapes, non-contiguous arrays, outputs of the wrong shape or overlapping an input.
    kernels.InvalidParameterError
        ``forget_bias`` not a finite float.
    """
    fb = _check_forward(_FUNC, y, z, forget_bias, z_new_out, s_out, oms_out, logdet_out)
    m, s_raw = y[:, 0], y[:, 1]  # (N, Z) each
    t = s_raw + fb
    s, oms = _sigmoid_ref(t), _sigmoid_ref(-t)  # 1 - s without cancellation
    z_new = s * z + oms * m  # (N, Z)
    logdet = (-np.logaddexp(t.dtype.type(0), -t)).sum(axis=-1)  # (N,): log_sigmoid(t)
    return (
        _put(z_new_out, z_new),
        _put(s_out, s),
        _put(oms_out, oms),
        _put(logdet_out, logdet),
    )


def iaf_gate_backward_ref(dz_new, dlogdet, y, z, s, oms, dy_out=None, dz_out=None, need_dz=True):
    """dy = (dm, ds_raw) and the direct path dz = dz_new s, NumPy reference.

    Parameters
    ----------
    dz_new : ndarray of shape (N, Z) or None
        dL/dz_new (None: zero).
    dlogdet : ndarray of shape (N,) or None
        dL/dlogdet (None: zero).
    y : ndarray of shape (N, 2, Z)
        The forward's MADE output (m is ``y[:, 0]``).
    z, s, oms : ndarray of shape (N, Z)
        The forward's input and its s, 1 - s.
    dy_out : ndarray of shape (N, 2, Z), optional
    dz_out : ndarray of shape (N, Z), optional
        Preallocated C-contiguous outputs, overlapping no input.
    need_dz : bool, default True
        False: dz is not computed (returned as None), as in the Jacobian-transpose solve.

    Returns
    -------
    dy : ndarray of shape (N, 2, Z)
        ``dy[:, 0]`` = dz_new oms, ``dy[:, 1]`` = dz_new (z - m) s oms + dlogdet oms.
    dz : ndarray of shape (N, Z) or None
        dz_new s (zeros when dz_new is None).

    Notes
    -----
    From ds/dt = s (1 - s) and d log s / dt = 1 - s: the gate's z_new = s z + (1 - s) m gives
    dm = dz_new (1 - s), ds = dz_new (z - m), so ds_raw = dz_new (z - m) s (1 - s), and logdet
    adds dlogdet (1 - s).
    """
    need_dz = _check_backward(_FUNC_BWD, dz_new, dlogdet, y, z, s, oms, dy_out, dz_out, need_dz)
    m = y[:, 0]  # (N, Z)
    dy = np.zeros(y.shape, dtype=y.dtype) if dy_out is None else dy_out  # (N, 2, Z)
    if dy_out is not None:
        dy[...] = 0
    dz = None
    if need_dz:
        dz = np.zeros_like(z) if dz_out is None else dz_out  # (N, Z)
        if dz_out is not None:
            dz[...] = 0
    if dz_new is not None:
        dy[:, 0] = dz_new * oms
        dy[:, 1] = dz_new * (z - m) * s * oms
        if need_dz:
            np.multiply(dz_new, s, out=dz)
    if dlogdet is not None:
        dy[:, 1] += dlogdet[:, None] * oms
    return dy, dz


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def _forward_rows(y, z, fb, z_new, s, oms, logdet, ls, r0, r1):
    # rows r0..r1; ls (Z,) holds one row's log-sigmoid terms, summed in order after the
    # vectorized loop (an accumulator inside it would be a serial dependency chain)
    Z = z.shape[1]
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    for r in range(r0, r1):
        mr = y[r, 0]
        tr = y[r, 1]
        zr = z[r]
        znr = z_new[r]
        sr = s[r]
        omr = oms[r]
        for j in range(Z):
            t = tr[j] + fb
            e = exp(-abs(t))  # in [0, 1]; exactly 0 where it would be subnormal
            d = one + e
            p = one / d  # sigmoid(|t|)
            q = e / d  # sigmoid(-|t|)
            pos = t >= zero
            sj = p if pos else q
            oj = q if pos else p
            sr[j] = sj
            omr[j] = oj
            znr[j] = sj * zr[j] + oj * mr[j]
            ls[j] = (t if t < zero else zero) - log1p(e)  # log_sigmoid(t)
        acc = zero
        for j in range(Z):
            acc += ls[j]
        logdet[r] = acc


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _forward_par(y, z, fb, z_new, s, oms, logdet, ls, rows):
    # chunk c owns rows c*rows .. and its scratch row ls[c]: no shared writes
    n = z.shape[0]
    for c in prange((n + rows - 1) // rows):
        _forward_rows(y, z, fb, z_new, s, oms, logdet, ls[c], c * rows, min(n, (c + 1) * rows))


@njit(nogil=True, cache=True, error_model="numpy")
def _backward_rows(dz_new, dlogdet, y, z, s, oms, dy, dz, has_dz_new, has_dlogdet, need_dz, r0, r1):
    # the reference's expression order, so float64 results agree to the last bit where no
    # dlogdet is added; one loop per case (the flags are hoisted out of the vector loops)
    Z = z.shape[1]
    zero = z.dtype.type(0)
    for r in range(r0, r1):
        dmr = dy[r, 0]
        dsr = dy[r, 1]
        omr = oms[r]
        dl = dlogdet[r] if has_dlogdet else zero
        if not has_dz_new:
            for j in range(Z):
                dmr[j] = zero
                dsr[j] = dl * omr[j]
            if need_dz:
                dzr = dz[r]
                for j in range(Z):
                    dzr[j] = zero
            continue
        gr = dz_new[r]
        mr = y[r, 0]
        zr = z[r]
        sr = s[r]
        if need_dz:
            dzr = dz[r]
            for j in range(Z):
                g = gr[j]
                o = omr[j]
                dmr[j] = g * o
                dsr[j] = g * (zr[j] - mr[j]) * sr[j] * o + dl * o
                dzr[j] = g * sr[j]
        else:
            for j in range(Z):
                g = gr[j]
                o = omr[j]
                dmr[j] = g * o
                dsr[j] = g * (zr[j] - mr[j]) * sr[j] * o + dl * o


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _backward_par(dz_new, dlogdet, y, z, s, oms, dy, dz, has_dz_new, has_dlogdet, need_dz, rows):
    n = z.shape[0]
    for c in prange((n + rows - 1) // rows):
        _backward_rows(
            dz_new,
            dlogdet,
            y,
            z,
            s,
            oms,
            dy,
            dz,
            has_dz_new,
            has_dlogdet,
            need_dz,
            c * rows,
            min(n, (c + 1) * rows),
        )


def _rows_per_chunk(Z):
    return max(1, _CHUNK // Z)


def _parallel(N, Z):
    return N * Z >= _PARALLEL_MIN and N > _rows_per_chunk(Z)


def iaf_gate_numba_v1(y, z, forget_bias, z_new_out=None, s_out=None, oms_out=None, logdet_out=None):
    """Numba, one vectorized pass per row, parallel over fixed chunks of rows. Contract of
    ``iaf_gate_ref``."""
    fb = _check_forward(_FUNC, y, z, forget_bias, z_new_out, s_out, oms_out, logdet_out)
    N, Z = z.shape
    z_new, s, oms = (
        np.empty((N, Z), z.dtype) if o is None else o for o in (z_new_out, s_out, oms_out)
    )
    logdet = np.empty(N, z.dtype) if logdet_out is None else logdet_out  # (N,)
    if _parallel(N, Z):
        rows = _rows_per_chunk(Z)
        ls = np.empty((-(-N // rows), Z), z.dtype)  # (chunks, Z) scratch
        _forward_par(y, z, fb, z_new, s, oms, logdet, ls, rows)
    else:
        _forward_rows(y, z, fb, z_new, s, oms, logdet, np.empty(Z, z.dtype), 0, N)
    return z_new, s, oms, logdet


def iaf_gate_backward_numba_v1(
    dz_new, dlogdet, y, z, s, oms, dy_out=None, dz_out=None, need_dz=True
):
    """Numba, one pass per row, parallel over fixed chunks of rows. Contract of
    ``iaf_gate_backward_ref``."""
    need_dz = _check_backward(_FUNC_BWD, dz_new, dlogdet, y, z, s, oms, dy_out, dz_out, need_dz)
    N, Z = z.shape
    dy = np.empty(y.shape, y.dtype) if dy_out is None else dy_out  # (N, 2, Z)
    dz = None
    if need_dz:
        dz = np.empty((N, Z), z.dtype) if dz_out is None else dz_out  # (N, Z)
    empty2, empty1 = np.empty((0, Z), z.dtype), np.empty(0, z.dtype)  # stand-ins for None
    args = (
        empty2 if dz_new is None else dz_new,
        empty1 if dlogdet is None else dlogdet,
        y,
        z,
        s,
        oms,
        dy,
        empty2 if dz is None else dz,
        dz_new is not None,
        dlogdet is not None,
        need_dz,
    )
    if _parallel(N, Z):
        _backward_par(*args, _rows_per_chunk(Z))
    else:
        _backward_rows(*args, 0, N)
    return dy, dz


# --------------------------------------------------------------------------------------------
# CuPy (kernels/cuda/iaf_gate.cu and an ElementwiseKernel; CuPy is imported only when these
# run)
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = ("lvm_iaf_gate_v1<float>", "lvm_iaf_gate_v1<double>")

# dy[:, 0] = dm, dy[:, 1] = ds_raw (and dz) from dz_new (g), dlogdet broadcast over Z (dl)
_CUPY_BACKWARD = (
    "dm = g * oms; ds = g * (zz - m) * s * oms + dl * oms",
    "dm = g * oms; ds = g * (zz - m) * s * oms + dl * oms; dz = g * s",
)


def iaf_gate_cupy_v1(y, z, forget_bias, z_new_out=None, s_out=None, oms_out=None, logdet_out=None):
    """CuPy: a group of up to 32 lanes per row, logdet by warp shuffles. Contract of
    ``iaf_gate_ref`` on cupy arrays (checks types, dtypes, shapes and contiguity)."""
    func = "iaf_gate_cupy_v1"
    fb = _check_forward(func, y, z, forget_bias, z_new_out, s_out, oms_out, logdet_out, "cupy")
    from . import _cupy

    cupy = _cupy.cupy
    N, Z = z.shape
    z_new, s, oms = (
        cupy.empty((N, Z), z.dtype) if o is None else o for o in (z_new_out, s_out, oms_out)
    )
    logdet = cupy.empty(N, z.dtype) if logdet_out is None else logdet_out  # (N,)
    if N == 0:
        return z_new, s, oms, logdet
    W = _cupy.group_width(Z)
    name = _CUPY_NAMES[int(z.dtype == np.float64)]
    kernel = _cupy.raw_module("iaf_gate.cu", _CUPY_NAMES).get_function(name)
    kernel(
        (_cupy.grid(N * W, _cupy.THREADS),),
        (_cupy.THREADS,),
        (y, z, fb, z_new, s, oms, logdet, np.int64(N), np.int64(Z), np.int32(W)),
    )
    return z_new, s, oms, logdet


def iaf_gate_backward_cupy_v1(
    dz_new, dlogdet, y, z, s, oms, dy_out=None, dz_out=None, need_dz=True
):
    """CuPy: one ElementwiseKernel over (N, Z) writing both halves of dy (and dz). Contract of
    ``iaf_gate_backward_ref`` on cupy arrays."""
    func = "iaf_gate_backward_cupy_v1"
    need_dz = _check_backward(func, dz_new, dlogdet, y, z, s, oms, dy_out, dz_out, need_dz, "cupy")
    from . import _cupy

    cupy = _cupy.cupy
    N, Z = z.shape
    dy = cupy.empty(y.shape, y.dtype) if dy_out is None else dy_out  # (N, 2, Z)
    dz = None
    if need_dz:
        dz = cupy.empty((N, Z), z.dtype) if dz_out is None else dz_out  # (N, Z)
    dl = cupy.zeros((N, 1), z.dtype) if dlogdet is None else dlogdet[:, None]  # (N, 1)
    if dz_new is None:
        dy[:, 0] = 0
        cupy.multiply(dl, oms, out=dy[:, 1])
        if need_dz:
            dz[...] = 0
        return dy, dz
    outs = "T dm, T ds, T dz" if need_dz else "T dm, T ds"
    kernel = _cupy.elementwise(
        "T g, T dl, T m, T zz, T s, T oms",
        outs,
        _CUPY_BACKWARD[need_dz],
        f"lvm_iaf_gate_backward_v1{'_dz' if need_dz else ''}",
    )
    args = (dz_new, dl, y[:, 0], z, s, oms, dy[:, 0], dy[:, 1])
    if need_dz:
        kernel(*args, dz)
    else:
        kernel(*args)
    return dy, dz


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

# DEFAULT numba_v1 (forward and backward, the only Numba variants). Evidence (2 vCPU AMD EPYC,
# AVX-512, shared with other jobs; 1 Numba thread, the count a model step runs kernels on, since
# 2-thread parallel regions on the shared machine stalled for whole scheduler ticks, 8-16 ms, in
# this kernel and in bias_act alike; medians of 40; benchmarks/compare_peers.py --only iaf_gate
# and the asv IAFGate suite):
#   (5000, 50) float32 forward:  0.75-0.82 ms; NumPy reference 6.6-19 ms (9-24x); PyTorch eager
#                                (sigmoid twice, logsigmoid, sum) 0.84-1.4 ms
#   (5000, 50) float32 backward: 0.24-0.29 ms; reference 0.56-0.98 ms; PyTorch 0.28-0.36 ms
#   (5000, 50) float64:          forward 1.4 ms against 11.7 ms, backward 0.41 against 1.25 ms
#   (100, 50) float32:           forward 0.025 ms against 0.108 ms (argument checks dominate)
# A fused solve sweep (g = (r - v) / s and dy from it in one loop) measured 0.30 ms against
# 0.22 ms for this backward plus two in-place NumPy passes (its nine streams exceed the
# vectorizer's runtime alias checks), and either is about 3 % of a sweep, whose MADE input VJP
# takes about 7 ms: not taken.
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", iaf_gate_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v1", iaf_gate_numba_v1, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", iaf_gate_cupy_v1, "default"),
    KernelRecord(_FUNC_BWD, "numpy", "ref", iaf_gate_backward_ref, "reference"),
    KernelRecord(_FUNC_BWD, "numba", "numba_v1", iaf_gate_backward_numba_v1, "default"),
    KernelRecord(_FUNC_BWD, "cupy", "cupy_v1", iaf_gate_backward_cupy_v1, "default"),
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


def iaf_gate(
    y,
    z,
    forget_bias,
    z_new_out=None,
    s_out=None,
    oms_out=None,
    logdet_out=None,
    *,
    backend="numba",
):
    """The IAF gate: z_new, s, 1 - s and logdet in one pass (module docstring).

    Parameters
    ----------
    y : ndarray of shape (N, 2, Z), float32 or float64, C-contiguous
        The MADE output (m, s_raw).
    z : ndarray of shape (N, Z)
    forget_bias : float
    z_new_out, s_out, oms_out, logdet_out : ndarray, optional
        Preallocated outputs ((N, Z), (N, Z), (N, Z), (N,)).
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    z_new, s, oms : ndarray of shape (N, Z)
    logdet : ndarray of shape (N,)
    """
    impl = check_backend(backend, IMPLEMENTATIONS, _FUNC)
    return impl(y, z, forget_bias, z_new_out, s_out, oms_out, logdet_out)


def iaf_gate_backward(
    dz_new,
    dlogdet,
    y,
    z,
    s,
    oms,
    dy_out=None,
    dz_out=None,
    need_dz=True,
    *,
    backend="numba",
):
    """dy = (dm, ds_raw) and dz = dz_new s in one pass (module docstring).

    Parameters
    ----------
    dz_new : ndarray of shape (N, Z) or None
    dlogdet : ndarray of shape (N,) or None
    y : ndarray of shape (N, 2, Z)
    z, s, oms : ndarray of shape (N, Z)
    dy_out, dz_out : ndarray, optional
        Preallocated outputs ((N, 2, Z), (N, Z)).
    need_dz : bool, default True
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    dy : ndarray of shape (N, 2, Z)
    dz : ndarray of shape (N, Z) or None
    """
    impl = check_backend(backend, BACKWARD_IMPLEMENTATIONS, _FUNC_BWD)
    return impl(dz_new, dlogdet, y, z, s, oms, dy_out, dz_out, need_dz)
