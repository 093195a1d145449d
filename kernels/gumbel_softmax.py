"""Gumbel-Softmax (Concrete) samples, their backward, and exact Gumbel-max sampling.

Math
----
For logits (N, C), a temperature tau > 0 and standard Gumbel noise g (N, C) from the engine's
Philox stream (``kernels.philox``)::

    s[n]    = logits[n] + g[n]                                             (N, C)
    y[n, c] = softmax_c(s[n] / tau) = exp((s[n, c] - max_c s[n]) / tau) / sum_c' (same)

g[n, c] is element ``n*C + c`` of ``gumbel_ref(seed, stream, N*C, dtype, offset)``, i.e. global
element ``offset + n*C + c`` of the (seed, stream) sequence. ``gumbel_max`` returns
argmax_c s[n, c] (lowest index on ties), an exact sample of Categorical(softmax(logits[n]))
(the Gumbel-max trick). ``hard=True`` returns the one-hot of that same argmax.

Numerics (log space)
--------------------
- The row max of s is subtracted *before* dividing by tau: d = (s - max s) / tau <= 0, and
  exp(d) in (0, 1] with exp(0) = 1 at the argmax, so the row sum is in [1, C]: no overflow and
  no 0/0 for any tau > 0 and any finite logits (logits of +-1e4 in float32, tau = 1e-8: d reaches
  -2e12, exp gives exactly 0; tested). Dividing s itself by tau first would overflow
  (1e4 / 1e-38 = inf, and inf - inf = NaN).
- As tau -> 0, y becomes exactly one-hot at argmax s in every row whose top-two gap of s
  exceeds 87.4 tau (float32; exp of anything below -87.34 is 0 in the Numba kernels, whose
  ``kernels.fastmath.exp`` flushes what would be subnormal to 0) or 745 tau (float64, the
  reference's np.exp). No subnormal is produced by the Numba kernels.
- logits may hold -inf (a masked category: s = -inf, d = -inf, y = 0 exactly, zero gradient) as
  long as every row has a finite entry; NaN and +inf are not allowed (``check_values=True``
  checks; unchecked, such a row comes out NaN).
- float32 work stays float32 (constants and tau cast to the dtype; tested from the IR). The
  backward's dtau sums over N*C terms accumulate in float64 per chunk, reduced in chunk order.

Gradient flow
-------------
With a = s / tau and v = y * (dy - sum_c dy y) (the softmax VJP with respect to a), for fixed g::

    dlogits = v / tau
    dtau    = -sum_{n,c} v[n, c] * s[n, c] / tau^2 = -sum_{n,c} dlogits[n, c] * a[n, c]

Since sum_c v[n, c] = 0 for every row, a[n] may be replaced by a[n] - r_n for any per-row
constant r_n. This kernel uses log y[n] = a[n] - logsumexp(a[n]) on the support (y > 0; entries
with y = 0 have v = 0 and contribute nothing), so backward needs only y_soft: g is neither stored
nor regenerated. The difference from using a itself is sum_c v_c * lse, which is 0 in exact
arithmetic and about |sum dy y| C eps log C in floating point. (Entries whose true y is below the
flush threshold are dropped; their true contribution is below e^-87 |a| per entry.) A caller
that has the softmax argument a = (logits + g) / tau at hand may pass it instead
(``logits_plus_g_over_tau``); both give the same dtau up to rounding (tested).

hard=True (straight-through): the forward value is one_hot(argmax s) (ties: lowest index), but
the gradient is the soft sample's: backward is called with y_soft and treats the hard output as
if it were y_soft. Ask the forward for the soft sample with ``y_soft_out=``; the hard forward
without ``y_soft_out`` skips the softmax entirely.

Shapes: logits (N, C), y and y_soft (N, C), dy (N, C), dlogits (N, C), dtau a Python float,
gumbel_max -> (N,) int64. N >= 0, C >= 1; float32 or float64, one dtype.

Variants
--------
- ``gumbel_softmax_ref``, ``gumbel_softmax_backward_ref``, ``gumbel_max_ref``: NumPy, noise from
  ``philox.gumbel_ref``. The oracles and the ``"numpy"`` backend.
- ``gumbel_softmax_numba_v1``: ``prange`` over chunks of rows (about 4096 elements, fixed by the
  wrapper, so results do not depend on the thread count). Per chunk: the Gumbels of the chunk's
  contiguous element range into an L1-resident buffer by a vectorized Philox + two
  ``fastmath.log`` (the generator of kernels.reparam_sample: uniforms bit-identical to
  ``philox.uniform_ref``, Gumbels within 3 ulp of max(|g|, 1) of ``gumbel_ref``); per row one pass
  for s, its max and argmax; then d = (s - max)/tau per row, one flat vectorized exp over the
  whole chunk (so C = 10 vectorizes as well as C = 512), row sums (reassociated, vectorized),
  division. DEFAULT (the only variant).
- ``gumbel_softmax_backward_numba_v1``: ``prange`` over chunks of rows; per row the dot
  sum(dy y), dlogits, and dlogits * log y summed into a float64 per-chunk partial of dtau. DEFAULT.
- ``gumbel_max_numba_v1``: the forward's first pass only. DEFAULT.
- ``gumbel_softmax_cupy_v1``, ``gumbel_softmax_backward_cupy_v1``, ``gumbel_max_cupy_v1``
  (kernels/cuda/gumbel_softmax.cu, noise from kernels/cuda/philox.cuh): a group of lanes per
  row; Gumbels from whole Philox blocks, (max, first argmax) and the sums by warp shuffles;
  dtau's row terms in float64 summed in row order. The ``"cupy"`` backend; not yet run on a
  device.
"""

import numpy as np
from numba import njit, prange

from lvmcore._validation import check_param
from lvmcore.exceptions import InvalidParameterError

from .fastmath import exp, log, log_f32, log_f64
from .philox import _uniform01_f32 as _u01_f32
from .philox import _uniform01_f64 as _u01_f64
from .philox import fill_by_dtype, gumbel_ref, key_words, per_block
from .philox import philox_words as _philox_words
from .reparam_sample import _check_noise_args

__all__ = [
    "gumbel_softmax",
    "gumbel_softmax_backward",
    "gumbel_max",
    "gumbel_softmax_ref",
    "gumbel_softmax_backward_ref",
    "gumbel_max_ref",
    "gumbel_softmax_numba_v1",
    "gumbel_softmax_backward_numba_v1",
    "gumbel_max_numba_v1",
    "gumbel_softmax_cupy_v1",
    "gumbel_softmax_backward_cupy_v1",
    "gumbel_max_cupy_v1",
    "VARIANTS",
    "BACKWARD_VARIANTS",
    "MAX_VARIANTS",
    "IMPLEMENTATIONS",
    "BACKWARD_IMPLEMENTATIONS",
    "MAX_IMPLEMENTATIONS",
    "DEFAULT",
]

_FUNC = "gumbel_softmax"
_FUNC_BWD = "gumbel_softmax_backward"
_FUNC_MAX = "gumbel_max"
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Elements per chunk of the Numba kernels (a 16 KiB float32 noise buffer, L1-resident).
_CHUNK = 4096


# --------------------------------------------------------------------------------------------
# Vectorized Gumbel noise (philox.py's mapping; uniforms bit-identical). fastmath=False is
# explicit so that Numba's flag inheritance cannot give these loops a caller's fastmath flags.
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", fastmath=False)
def _gumbels_f32(buf, k0, k1, s0, s1, first):
    """buf (4 m,) float32 <- -log(-log u) for the 4 words of blocks first .. first + m - 1."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 4):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        buf[4 * i] = -log_f32(-log_f32(_u01_f32(w0)))
        buf[4 * i + 1] = -log_f32(-log_f32(_u01_f32(w1)))
        buf[4 * i + 2] = -log_f32(-log_f32(_u01_f32(w2)))
        buf[4 * i + 3] = -log_f32(-log_f32(_u01_f32(w3)))


@njit(cache=True, error_model="numpy", fastmath=False)
def _gumbels_f64(buf, k0, k1, s0, s1, first):
    """buf (2 m,) float64 <- -log(-log u) for words (w0, w1), (w2, w3) of each block."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 2):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        buf[2 * i] = -log_f64(-log_f64(_u01_f64(w0, w1)))
        buf[2 * i + 1] = -log_f64(-log_f64(_u01_f64(w2, w3)))


_gumbels = fill_by_dtype(
    _gumbels_f32,
    _gumbels_f64,
    "Fill ``buf`` with the Gumbels of whole blocks from ``first`` on (4 float32 or 2 float64 "
    "per block).",
)
_per_block = per_block


# --------------------------------------------------------------------------------------------
# Validation (public boundary; the variants below assume valid, C-contiguous input)
# --------------------------------------------------------------------------------------------


def _check_float(a, name, func, ndim=2):
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{func}: expected {name} to be a numpy.ndarray, got "
            f"{type(a).__name__}. Convert it with numpy.asarray(...) first."
        )
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{func}: expected {name} to have dtype float32 or float64, got "
            f"{a.dtype}. Cast it with {name}.astype(numpy.float32)."
        )
    if a.ndim != ndim:
        raise ValueError(
            f"{func}: expected {name} to have {ndim} dimensions, got an array of shape {a.shape}."
        )


def _check_logits(logits, func, check_values):
    _check_float(logits, "logits", func)
    if logits.shape[1] < 1:
        raise ValueError(
            f"{func}: expected logits to have at least one category (C >= 1), got "
            f"shape {logits.shape}."
        )
    if check_values and logits.size:
        bad = np.isnan(logits) | np.isposinf(logits)
        if bad.any():
            raise ValueError(
                f"{func}: expected logits to contain no NaN or +inf values, got "
                f"{int(bad.sum())} of {logits.size}. Check the encoder output."
            )
        dead = ~np.isfinite(logits).any(axis=1)
        if dead.any():
            raise ValueError(
                f"{func}: expected every row of logits to have a finite entry, got "
                f"{int(dead.sum())} rows of -inf only (first: row "
                f"{int(np.flatnonzero(dead)[0])}). A row needs one category it "
                f"can sample."
            )
    return np.ascontiguousarray(logits)


def _check_tau(tau, func, dtype):
    tau = check_param(tau, "tau", func, kind="float", low=0)
    tau_d = np.dtype(dtype).type(tau)
    if tau_d == 0:
        raise InvalidParameterError(
            f"The 'tau' parameter of {func} must be a float that is positive in {dtype} "
            f"(>= {np.finfo(dtype).smallest_subnormal}). Got {tau!r} instead."
        )
    return tau_d


def _check_out(out, name, func, shape, dtype, inputs):
    _check_float(out, name, func, len(shape))
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"{func}: expected {name} to be a C-contiguous {dtype} array of shape "
            f"{shape}, got {out.dtype} of shape {out.shape} (contiguous: "
            f"{out.flags.c_contiguous}). Allocate it with numpy.empty_like(...)."
        )
    for other, a in inputs.items():
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(
                f"{func}: expected {name} to overlap no input, got an array "
                f"overlapping {other}. Pass a fresh buffer."
            )


def _prepare(logits, tau, seed, stream, offset, hard, y_out, y_soft_out, check_values):
    logits = _check_logits(logits, _FUNC, check_values)
    tau_d = _check_tau(tau, _FUNC, logits.dtype)
    hard = check_param(hard, "hard", _FUNC, kind="choice", choices=(False, True))
    hard = bool(hard)
    seed, stream, offset = _check_noise_args(_FUNC, seed, stream, offset, logits.size, "N*C")
    if y_out is not None:
        _check_out(y_out, "y_out", _FUNC, logits.shape, logits.dtype, {"logits": logits})
    if y_soft_out is not None:
        if not hard:
            raise ValueError(
                f"{_FUNC}: expected y_soft_out=None when hard=False (y itself is "
                f"the soft sample), got an array. Drop y_soft_out or pass "
                f"hard=True."
            )
        _check_out(
            y_soft_out,
            "y_soft_out",
            _FUNC,
            logits.shape,
            logits.dtype,
            {"logits": logits, "y_out": y_out},
        )
    return logits, tau_d, seed, stream, offset, hard, y_out, y_soft_out


# --------------------------------------------------------------------------------------------
# Reference (plain NumPy, the oracle)
# --------------------------------------------------------------------------------------------


def gumbel_softmax_ref(
    logits, tau, seed, stream=0, offset=0, hard=False, y_out=None, y_soft_out=None
):
    """Gumbel-Softmax sample, NumPy reference.

    Parameters
    ----------
    logits : ndarray of shape (N, C), float32 or float64
    tau : float > 0
    seed, stream : int in [0, 2**64)
    offset : int >= 0
        Global index of g[0, 0] in the (seed, stream) sequence.
    hard : bool
        Return one_hot(argmax(logits + g)) instead of the soft sample.
    y_out : ndarray of shape (N, C), optional
        Receives the returned sample.
    y_soft_out : ndarray of shape (N, C), optional
        hard=True only: receives the soft sample (what backward needs).

    Returns
    -------
    y : ndarray of shape (N, C)
    """
    n, c = logits.shape
    dtype = logits.dtype.type
    tau = dtype(tau)
    g = gumbel_ref(seed, stream, n * c, logits.dtype, offset).reshape(n, c)  # (N, C)
    s = logits + g  # (N, C)
    y = np.empty((n, c), logits.dtype) if y_out is None else y_out
    if n == 0:
        return y
    if not hard or y_soft_out is not None:
        with np.errstate(under="ignore"):
            e = np.exp((s - s.max(axis=1, keepdims=True)) / tau)  # (N, C)
        soft = y if not hard else y_soft_out
        np.divide(e, e.sum(axis=1, keepdims=True), out=soft)
    if hard:
        y[...] = 0
        y[np.arange(n), np.argmax(s, axis=1)] = 1  # first max
    return y


def gumbel_softmax_backward_ref(dy, y_soft, tau, logits_plus_g_over_tau=None):
    """Backward of the soft (or straight-through hard) Gumbel-Softmax, NumPy reference.

    Parameters
    ----------
    dy : ndarray of shape (N, C)
        dL/dy (for hard=True: dL/d y_hard, passed straight through).
    y_soft : ndarray of shape (N, C)
        The soft sample of the forward call.
    tau : float > 0
    logits_plus_g_over_tau : ndarray of shape (N, C), optional
        The softmax argument a = (logits + g) / tau; when None, log(y_soft) is used on y > 0
        (equal to a up to a per-row constant, which drops out).

    Returns
    -------
    dlogits : ndarray of shape (N, C)
        y (dy - sum_c dy y) / tau.
    dtau : float
        -sum dlogits * a.
    """
    dtype = y_soft.dtype.type
    tau = dtype(tau)
    v = y_soft * (dy - np.sum(dy * y_soft, axis=1, keepdims=True))  # (N, C)
    dlogits = v / tau  # (N, C)
    if logits_plus_g_over_tau is None:
        pos = y_soft > 0
        a = np.zeros_like(y_soft)
        a[pos] = np.log(y_soft[pos])  # (N, C)
    else:
        a = logits_plus_g_over_tau
    dtau = -float(np.sum(dlogits.astype(np.float64) * a))
    return dlogits, dtau


def gumbel_max_ref(logits, seed, stream=0, offset=0):
    """argmax_c (logits + g) per row (lowest index on ties), NumPy reference -> (N,) int64."""
    n, c = logits.shape
    g = gumbel_ref(seed, stream, n * c, logits.dtype, offset).reshape(n, c)  # (N, C)
    return np.argmax(logits + g, axis=1).astype(np.int64)  # (N,)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _row_sum(x):
    # Reassociation lets LLVM keep 16-lane partial sums; this helper calls nothing, so the
    # flag cannot reach exp/log (explicit flags are not inherited by or from callers).
    acc = x[0] - x[0]
    for j in range(x.size):
        acc += x[j]
    return acc


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _row_dot(x, y):
    acc = x[0] - x[0]
    for j in range(x.size):
        acc += x[j] * y[j]
    return acc


@njit(cache=True, error_model="numpy", fastmath=False, inline="always")
def _scan_row(lr, sr):
    """sr <- lr + sr (the Gumbels become s); return (max s, first argmax)."""
    m = lr[0] + sr[0]
    sr[0] = m
    am = 0
    for j in range(1, sr.size):
        v = lr[j] + sr[j]
        sr[j] = v
        if v > m:  # strict: the lowest index wins ties
            m = v
            am = j
    return m, am


@njit(cache=True, parallel=True, error_model="numpy", fastmath=False)
def _forward_v1(logits, tau, zero, one, k0, k1, s0, s1, offset, per, rows, hard, soft, y, y_soft):
    # logits, y, y_soft (N, C); tau, zero, one: scalars of logits' dtype (a literal 1 would make
    # float64). Chunks of `rows` rows (fixed by the wrapper); each chunk writes only its own
    # rows. hard: y <- one-hot; soft: y_soft (hard) or y (not hard) <- softmax.
    n, c = logits.shape
    nchunks = (n + rows - 1) // rows
    for ch in prange(nchunks):
        r0 = ch * rows
        r1 = min(r0 + rows, n)
        g0 = offset + r0 * c
        first = g0 // per
        nblk = (offset + r1 * c - 1) // per - first + 1
        buf = np.empty(nblk * per, dtype=logits.dtype)
        _gumbels(buf, k0, k1, s0, s1, first)
        e0 = g0 - first * per
        for r in range(r0, r1):
            sr = buf[e0 + (r - r0) * c : e0 + (r - r0 + 1) * c]
            m, am = _scan_row(logits[r], sr)
            if hard:
                yr = y[r]
                for j in range(c):
                    yr[j] = zero
                yr[am] = one
            if soft:
                for j in range(c):
                    sr[j] = (sr[j] - m) / tau  # <= 0; -inf for masked entries
        if soft:
            out = y_soft if hard else y
            flat = out[r0:r1].reshape(-1)
            d = buf[e0 : e0 + (r1 - r0) * c]
            for i in range(flat.size):  # one vector loop per chunk, whatever C is
                flat[i] = exp(d[i])
            for r in range(r0, r1):
                yr = out[r]
                tot = _row_sum(yr)  # >= 1: the argmax term is exp(0) = 1
                for j in range(c):
                    yr[j] = yr[j] / tot


@njit(cache=True, parallel=True, error_model="numpy", fastmath=False)
def _backward_v1(dy, y, a, has_a, tau, zero, rows, dlogits, partial):
    # partial (nchunks,) float64: chunk ch's sum of dlogits * a over its rows; the wrapper adds
    # the chunks in order (deterministic for any thread count). The float64 accumulation of
    # the row dots is deliberate (N*C terms); everything per element stays in y's dtype.
    n, c = y.shape
    nchunks = (n + rows - 1) // rows
    for ch in prange(nchunks):
        r0 = ch * rows
        r1 = min(r0 + rows, n)
        w = np.empty(c, dtype=y.dtype)
        acc = 0.0
        for r in range(r0, r1):
            yr = y[r]
            dyr = dy[r]
            dl = dlogits[r]
            sdot = _row_dot(dyr, yr)
            for j in range(c):
                dl[j] = yr[j] * (dyr[j] - sdot) / tau
            if has_a:
                acc += np.float64(_row_dot(dl, a[r]))
            else:
                for j in range(c):
                    w[j] = log(yr[j]) if yr[j] > zero else zero
                acc += np.float64(_row_dot(dl, w))
        partial[ch] = acc


@njit(cache=True, parallel=True, error_model="numpy", fastmath=False)
def _max_v1(logits, k0, k1, s0, s1, offset, per, rows, out):
    n, c = logits.shape
    nchunks = (n + rows - 1) // rows
    for ch in prange(nchunks):
        r0 = ch * rows
        r1 = min(r0 + rows, n)
        g0 = offset + r0 * c
        first = g0 // per
        nblk = (offset + r1 * c - 1) // per - first + 1
        buf = np.empty(nblk * per, dtype=logits.dtype)
        _gumbels(buf, k0, k1, s0, s1, first)
        e0 = g0 - first * per
        for r in range(r0, r1):
            _, am = _scan_row(logits[r], buf[e0 + (r - r0) * c : e0 + (r - r0 + 1) * c])
            out[r] = am


def gumbel_softmax_numba_v1(
    logits, tau, seed, stream=0, offset=0, hard=False, y_out=None, y_soft_out=None
):
    """Numba, fused noise + softmax, parallel over chunks of rows. Contract of
    ``gumbel_softmax_ref``."""
    n, c = logits.shape
    dtype = logits.dtype.type
    y = np.empty((n, c), logits.dtype) if y_out is None else y_out  # (N, C)
    if n == 0:
        return y
    soft = (not hard) or (y_soft_out is not None)
    y_soft = y if y_soft_out is None else y_soft_out  # (N, C)
    k0, k1, s0, s1 = key_words(seed, stream)
    _forward_v1(
        logits,
        dtype(tau),
        dtype(0),
        dtype(1),
        k0,
        k1,
        s0,
        s1,
        np.int64(offset),
        _per_block(logits.dtype),
        max(1, _CHUNK // c),
        bool(hard),
        soft,
        y,
        y_soft,
    )
    return y


def gumbel_softmax_backward_numba_v1(dy, y_soft, tau, logits_plus_g_over_tau=None):
    """Numba, parallel over chunks of rows. Contract of ``gumbel_softmax_backward_ref``."""
    n, c = y_soft.shape
    dlogits = np.empty((n, c), y_soft.dtype)  # (N, C)
    if n == 0:
        return dlogits, 0.0
    rows = max(1, _CHUNK // c)
    partial = np.empty((n + rows - 1) // rows, np.float64)
    has_a = logits_plus_g_over_tau is not None
    a = logits_plus_g_over_tau if has_a else y_soft[:1]
    dtype = y_soft.dtype.type
    _backward_v1(dy, y_soft, a, has_a, dtype(tau), dtype(0), rows, dlogits, partial)
    return dlogits, -float(partial.sum())


def gumbel_max_numba_v1(logits, seed, stream=0, offset=0):
    """Numba, the forward's noise and argmax pass only. Contract of ``gumbel_max_ref``."""
    n, c = logits.shape
    out = np.empty(n, np.int64)  # (N,)
    if n == 0:
        return out
    k0, k1, s0, s1 = key_words(seed, stream)
    _max_v1(
        logits, k0, k1, s0, s1, np.int64(offset), _per_block(logits.dtype), max(1, _CHUNK // c), out
    )
    return out


# --------------------------------------------------------------------------------------------
# CuPy (kernels/cuda/gumbel_softmax.cu; CuPy is imported only when these run)
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = (
    "lvm_gumbel_softmax_v1<float>",
    "lvm_gumbel_softmax_v1<double>",
    "lvm_gumbel_max_v1<float>",
    "lvm_gumbel_max_v1<double>",
    "lvm_gumbel_softmax_backward_v1<float>",
    "lvm_gumbel_softmax_backward_v1<double>",
)


def _cupy_kernel(which, dtype):
    """which: 0 forward, 1 gumbel_max, 2 backward."""
    from . import _cupy

    name = _CUPY_NAMES[2 * which + (dtype == np.float64)]
    return _cupy.raw_module("gumbel_softmax.cu", _CUPY_NAMES).get_function(name)


def _cupy_logits(logits, func):
    from . import _cupy

    _cupy.check_array(logits, "logits", func, 2)
    if logits.shape[1] < 1:
        raise ValueError(
            f"{func}: expected logits to have at least one category (C >= 1), got "
            f"shape {tuple(logits.shape)}."
        )
    n, c = logits.shape
    # lanes per row: one per Philox block the row can touch, up to a warp
    return n, c, _cupy.group_width(-(-(c - 1) // _per_block(logits.dtype)) + 1)


def gumbel_softmax_cupy_v1(
    logits, tau, seed, stream=0, offset=0, hard=False, y_out=None, y_soft_out=None
):
    """CuPy: a group of lanes per row; Gumbels from whole Philox blocks, (max, first argmax) and
    the softmax sums by warp shuffles. Contract of ``gumbel_softmax_ref`` on cupy arrays
    (arguments checked, logit values not)."""
    from . import _cupy

    cupy = _cupy.cupy
    func = "gumbel_softmax_cupy_v1"
    n, c, W = _cupy_logits(logits, func)
    tau_d = _check_tau(tau, func, logits.dtype)
    seed, stream, offset = _check_noise_args(func, seed, stream, offset, n * c, "N*C")
    if y_out is None:
        y_out = cupy.empty((n, c), dtype=logits.dtype)  # (N, C)
    else:
        _cupy.check_out(y_out, "y_out", func, (n, c), logits.dtype)
    if y_soft_out is not None:
        if not hard:
            raise ValueError(
                f"{func}: expected y_soft_out=None when hard=False (y itself is the "
                f"soft sample), got an array. Drop y_soft_out or pass hard=True."
            )
        _cupy.check_out(y_soft_out, "y_soft_out", func, (n, c), logits.dtype)
    if n == 0:
        return y_out
    soft = (not hard) or (y_soft_out is not None)
    soft_out = y_soft_out if (hard and soft) else y_out  # not written unless soft
    _cupy_kernel(0, logits.dtype)(
        (_cupy.grid(n * W, _cupy.THREADS),),
        (_cupy.THREADS,),
        (
            logits,
            y_out,
            soft_out,
            np.int64(n),
            np.int64(c),
            np.int64(offset),
            *key_words(seed, stream),
            tau_d,
            np.int32(bool(hard)),
            np.int32(soft),
            np.int32(W),
        ),
    )
    return y_out


def gumbel_softmax_backward_cupy_v1(dy, y_soft, tau, logits_plus_g_over_tau=None):
    """CuPy: a group of lanes per row; dtau's row terms in float64, summed over rows in order.
    Contract of ``gumbel_softmax_backward_ref`` on cupy arrays."""
    from . import _cupy

    cupy = _cupy.cupy
    func = "gumbel_softmax_backward_cupy_v1"
    _cupy.check_array(y_soft, "y_soft", func, 2)
    _cupy.check_array(dy, "dy", func, 2)
    _cupy.check_same(dy, "dy", y_soft, "y_soft", func)
    a = logits_plus_g_over_tau
    if a is not None:
        _cupy.check_array(a, "logits_plus_g_over_tau", func, 2)
        _cupy.check_same(a, "logits_plus_g_over_tau", y_soft, "y_soft", func)
    n, c = y_soft.shape
    tau_d = _check_tau(tau, func, y_soft.dtype)
    dlogits = cupy.empty((n, c), dtype=y_soft.dtype)  # (N, C)
    if n == 0 or c == 0:
        return dlogits, 0.0
    partial = cupy.empty(n, dtype=np.float64)  # (N,)
    W = _cupy.group_width(c)
    _cupy_kernel(2, y_soft.dtype)(
        (_cupy.grid(n * W, _cupy.THREADS),),
        (_cupy.THREADS,),
        (
            dy,
            y_soft,
            y_soft if a is None else a,
            dlogits,
            partial,
            np.int64(n),
            np.int64(c),
            tau_d,
            np.int32(a is not None),
            np.int32(W),
        ),
    )
    return dlogits, -float(partial.sum())


def gumbel_max_cupy_v1(logits, seed, stream=0, offset=0):
    """CuPy: the forward's first pass only. Contract of ``gumbel_max_ref`` on cupy arrays."""
    from . import _cupy

    cupy = _cupy.cupy
    func = "gumbel_max_cupy_v1"
    n, c, W = _cupy_logits(logits, func)
    seed, stream, offset = _check_noise_args(func, seed, stream, offset, n * c, "N*C")
    index = cupy.empty(n, dtype=np.int64)  # (N,)
    if n == 0:
        return index
    _cupy_kernel(1, logits.dtype)(
        (_cupy.grid(n * W, _cupy.THREADS),),
        (_cupy.THREADS,),
        (
            logits,
            index,
            np.int64(n),
            np.int64(c),
            np.int64(offset),
            *key_words(seed, stream),
            np.int32(W),
        ),
    )
    return index


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

VARIANTS = {
    "ref": gumbel_softmax_ref,
    "numba_v1": gumbel_softmax_numba_v1,
    "cupy_v1": gumbel_softmax_cupy_v1,
}
BACKWARD_VARIANTS = {
    "ref": gumbel_softmax_backward_ref,
    "numba_v1": gumbel_softmax_backward_numba_v1,
    "cupy_v1": gumbel_softmax_backward_cupy_v1,
}
MAX_VARIANTS = {
    "ref": gumbel_max_ref,
    "numba_v1": gumbel_max_numba_v1,
    "cupy_v1": gumbel_max_cupy_v1,
}

# DEFAULT: numba_v1 for all three (the only Numba variants). Evidence, 2026-11-21, project VM
# (2 vCPU AMD EPYC Zen 4, AVX-512, shared and loaded: load average 3-4), float32, 2 Numba / 2
# torch threads, medians of 33 calls (min in brackets), y_out preallocated; peer
# torch.nn.functional.gumbel_softmax(logits, tau=0.5) (forward only):
#   (100000, 10):  forward 8.0-12.0 ms [1.6-2.2] vs torch 72-107 ms [42-71] (8.9-9.0x);
#                  gumbel_max 8.0-12.0 ms [1.0-1.5]; backward 8.0-9.8 ms [1.6-2.6].
#   (10000, 512):  forward 16-24 ms [15.5-16] vs torch 131-216 ms [95-169] (8.1-9.0x);
#                  gumbel_max 15-25 ms [12-14]; backward 8-13 ms [2.1-8].
# The medians are inflated by the load (whole 4 ms scheduler ticks); the minima are the kernels'
# own cost. On a quiet moment (load ~2): forward 1.9 / 7.3 ms vs torch 24 / 117 ms (12-16x).
DEFAULT = "numba_v1"

IMPLEMENTATIONS = {
    "numpy": gumbel_softmax_ref,
    "numba": gumbel_softmax_numba_v1,
    "cupy": gumbel_softmax_cupy_v1,
}
BACKWARD_IMPLEMENTATIONS = {
    "numpy": gumbel_softmax_backward_ref,
    "numba": gumbel_softmax_backward_numba_v1,
    "cupy": gumbel_softmax_backward_cupy_v1,
}
MAX_IMPLEMENTATIONS = {
    "numpy": gumbel_max_ref,
    "numba": gumbel_max_numba_v1,
    "cupy": gumbel_max_cupy_v1,
}


# --------------------------------------------------------------------------------------------
# Public wrappers: validate once, then dispatch
# --------------------------------------------------------------------------------------------


def _impl(backend, table, func):
    if backend not in table:
        raise ValueError(f"{func}: expected backend to be one of {sorted(table)}, got {backend!r}.")
    return table[backend]


def gumbel_softmax(
    logits,
    tau,
    seed,
    stream=0,
    offset=0,
    hard=False,
    y_out=None,
    *,
    y_soft_out=None,
    backend="numba",
    check_values=False,
):
    """Gumbel-Softmax sample y = softmax((logits + g) / tau), noise from the Philox stream.

    Parameters
    ----------
    logits : ndarray of shape (N, C), float32 or float64
        Unnormalized log-probabilities; -inf masks a category (each row needs a finite entry).
    tau : float > 0
        Temperature (must stay positive when cast to logits' dtype).
    seed, stream : int in [0, 2**64)
    offset : int >= 0
        Global element index of g[0, 0]; offset + N*C <= 2**62.
    hard : bool
        Straight-through: return one_hot(argmax(logits + g)) (ties: lowest index).
    y_out : ndarray of shape (N, C), optional
        Preallocated output (C-contiguous, logits' dtype, not overlapping logits).
    y_soft_out : ndarray of shape (N, C), optional
        hard=True only: receives the soft sample that backward needs.
    backend : {"numba", "numpy"}
    check_values : bool
        Also check logits for NaN/+inf and all -inf rows (one extra pass).

    Returns
    -------
    y : ndarray of shape (N, C)

    Raises
    ------
    TypeError, ValueError
        Non-ndarray, non-float or non-2-D logits, C = 0, bad outputs, bad values (with
        check_values).
    InvalidParameterError
        tau not a float in (0, inf) (or 0 in the dtype), hard not a bool, bad seed, stream or
        offset.

    Notes
    -----
    y[n] = exp((s[n] - max s[n]) / tau) / sum(...), s = logits + g, g[n, c] = gumbel_ref(seed,
    stream, N*C, dtype, offset)[n*C + c]. See "Gradient flow" in the module docstring.
    """
    args = _prepare(logits, tau, seed, stream, offset, hard, y_out, y_soft_out, check_values)
    return _impl(backend, IMPLEMENTATIONS, _FUNC)(*args)


def gumbel_softmax_backward(dy, y_soft, tau, logits_plus_g_over_tau=None, *, backend="numba"):
    """Gradients (dlogits, dtau) of a Gumbel-Softmax sample, from the soft sample alone.

    Parameters
    ----------
    dy : ndarray of shape (N, C)
        dL/dy. For a hard (straight-through) forward, dL/d y_hard.
    y_soft : ndarray of shape (N, C)
        The soft sample (forward with hard=False, or its ``y_soft_out`` with hard=True).
    tau : float > 0
        The forward's temperature.
    logits_plus_g_over_tau : ndarray of shape (N, C), optional
        The softmax argument, if the caller keeps it; otherwise log(y_soft) is used (exact up
        to rounding, see "Gradient flow").
    backend : {"numba", "numpy"}

    Returns
    -------
    dlogits : ndarray of shape (N, C)
        y (dy - sum_c dy y) / tau.
    dtau : float
        -sum_{n,c} y (dy - sum_c dy y) (logits + g) / tau^2.
    """
    func = _FUNC_BWD
    _check_float(dy, "dy", func)
    _check_float(y_soft, "y_soft", func)
    if dy.shape != y_soft.shape or dy.dtype != y_soft.dtype:
        raise ValueError(
            f"{func}: expected dy and y_soft to have one shape and dtype, got "
            f"{dy.dtype} {dy.shape} and {y_soft.dtype} {y_soft.shape}."
        )
    if y_soft.shape[1] < 1:
        raise ValueError(
            f"{func}: expected at least one category (C >= 1), got shape {y_soft.shape}."
        )
    tau_d = _check_tau(tau, func, y_soft.dtype)
    a = logits_plus_g_over_tau
    if a is not None:
        _check_float(a, "logits_plus_g_over_tau", func)
        if a.shape != y_soft.shape or a.dtype != y_soft.dtype:
            raise ValueError(
                f"{func}: expected logits_plus_g_over_tau to match y_soft "
                f"({y_soft.dtype} {y_soft.shape}), got {a.dtype} {a.shape}."
            )
        a = np.ascontiguousarray(a)
    return _impl(backend, BACKWARD_IMPLEMENTATIONS, func)(
        np.ascontiguousarray(dy), np.ascontiguousarray(y_soft), tau_d, a
    )


def gumbel_max(logits, seed, stream=0, offset=0, *, backend="numba", check_values=False):
    """Exact categorical samples argmax_c(logits + g) per row (ties: lowest index).

    Parameters
    ----------
    logits : ndarray of shape (N, C), float32 or float64
    seed, stream, offset : int
        As in ``gumbel_softmax``; the same arguments give the argmax of the same s.
    backend : {"numba", "numpy"}
    check_values : bool

    Returns
    -------
    index : ndarray of shape (N,), int64
    """
    logits = _check_logits(logits, _FUNC_MAX, check_values)
    seed, stream, offset = _check_noise_args(_FUNC_MAX, seed, stream, offset, logits.size, "N*C")
    return _impl(backend, MAX_IMPLEMENTATIONS, _FUNC_MAX)(logits, seed, stream, offset)
