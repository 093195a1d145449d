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
  checks them up front). Unchecked, a row that holds a NaN or has no entry above -inf never
  yields a silent sample: ``gumbel_max`` raises ValueError (every variant detects such rows in
  the pass it makes anyway), and ``gumbel_softmax`` returns that row as NaN, soft or hard.
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

Against the machine
-------------------
The soft forward is bound by its noise and transcendentals:
``benchmarks/benchmarks/machine_bounds.gumbel_bound`` does only the work every element needs, on
the same threads (a quarter Philox4x32-10 block, -log(-log u), the exp and the normalization's
division, in an L1 buffer), about 2.2-2.3 ns per float32 element on one core, 1.9 of them the
Gumbels alone. What v2 adds: reading the logits and writing y (8 bytes per element), and per
row its max and its sum. Measured on one core (CPU time, tau 0.5, 2026-12-03; the 2-thread
figures at RECORDS):

- (10000, 512): 75-76 % of the bound (v1 58-60 %): the row max by halving and the fused
  shift-exp-sum leave the logits read and y write and the division as the overhead.
- (100000, 10): 44-53 % of the bound (v1 39-46 %), below the 70 % aimed at. A row of 10
  elements is shorter than one 16-lane vector, so the max and the sum of each row run as
  scalar loops and broadcast back per element: ~1 ns per element (max and its broadcast
  ~0.6, sum and its broadcast ~0.4, measured by stopping the kernel after each pass), about
  half the generator's own cost, on top of ~0.3 ns for the logits read. Across-row variants
  were measured slower: gathers of one column of 16 rows (0.37-0.60 ns per element for the max
  alone against 0.29 for the scalar loop). 70 % would need all per-row work under ~0.7 ns.

Variants
--------
Every variant checks its arguments (types, dtypes, shapes, contiguity, outputs, tau and the
noise arguments) before any loop or launch; the module wrappers pick one by ``backend``.

- ``gumbel_softmax_ref``, ``gumbel_softmax_backward_ref``, ``gumbel_max_ref``: NumPy, noise from
  ``philox.gumbel_ref``. The oracles and the ``"numpy"`` backend.
- ``gumbel_softmax_numba_v2``: ``prange`` over chunks of rows (about 4096 elements, fixed by the
  wrapper, so results do not depend on the thread count). Per chunk: the Gumbels of the chunk's
  contiguous element range into an L1-resident buffer by ``kernels.philox._gumbels`` (vectorized
  Philox + two ``fastmath.log``: uniforms bit-identical to ``philox.uniform_ref``, Gumbels within
  3 ulp of max(|g|, 1) of ``gumbel_ref``); s = logits + g as one flat loop; per row only what a
  row needs, its max and later its sum, each stored once per element of the row into a scratch
  buffer; every per-element step as one vector loop over the whole chunk: d = (s - max) / tau
  and exp(d) (``fastmath.exp_nonpos``: d <= 0), then y = e / sum. Rows of C >= 32 take per-row
  loops instead, which vectorize along the row. The hard sample (one-hot of the first argmax)
  keeps v1's per-row scan. DEFAULT, the ``"numba"`` backend.
- v1 (moved to benchmarks/lab/gumbel_softmax.py): the same chunks and noise, then the shift, the
  division by tau and the normalization in per-row loops; with C = 10 those are 10-element
  scalar loops with a scalar division per element. v2 is 1.2x faster at (100000, 10) and 1.1x
  at (10000, 512); the two agree to the last bit but for the order of the row sums (C < 32).
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

from ._checks import (
    InvalidParameterError,
    check_array,
    check_backend,
    check_noise_args,
    check_out,
    check_param,
)
from ._registry import KernelRecord, default_variant, implementations, variants
from .fastmath import exp_nonpos, log
from .philox import _gumbels, gumbel_ref, key_words, per_block

__all__ = [
    "gumbel_softmax",
    "gumbel_softmax_backward",
    "gumbel_max",
    "gumbel_softmax_ref",
    "gumbel_softmax_backward_ref",
    "gumbel_max_ref",
    "gumbel_softmax_numba_v2",
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
    "BACKWARD_DEFAULT",
    "MAX_DEFAULT",
]

_FUNC = "gumbel_softmax"
_FUNC_BWD = "gumbel_softmax_backward"
_FUNC_MAX = "gumbel_max"
# Elements per chunk of the Numba kernels (a 16 KiB float32 noise buffer, L1-resident).
_CHUNK = 4096


# --------------------------------------------------------------------------------------------
# Argument checks (every variant runs them; the kernels below assume valid input)
# --------------------------------------------------------------------------------------------


def _check_logits(logits, func, check_values=False, lib="numpy"):
    check_array(logits, "logits", func, ndim=2, lib=lib, contiguous=lib == "cupy")
    if logits.shape[1] < 1:
        raise ValueError(
            f"{func}: expected logits to have at least one category (C >= 1), got "
            f"shape {tuple(logits.shape)}."
        )
    if check_values and logits.size:
        xp = np if lib == "numpy" else _cupy_module()
        bad = xp.isnan(logits) | xp.isposinf(logits)
        if bool(bad.any()):
            raise ValueError(
                f"{func}: expected logits to contain no NaN or +inf values, got "
                f"{int(bad.sum())} of {logits.size}. Check the encoder output."
            )
        dead = ~xp.isfinite(logits).any(axis=1)
        if bool(dead.any()):
            raise ValueError(
                f"{func}: expected every row of logits to have a finite entry, got "
                f"{int(dead.sum())} rows of -inf only (first: row "
                f"{int(xp.argmax(dead))}). A row needs one category it "
                f"can sample."
            )
    return np.ascontiguousarray(logits) if lib == "numpy" else logits


def _cupy_module():
    from . import _cupy

    return _cupy.cupy


def _lib(backend):
    return "cupy" if backend == "cupy" else "numpy"


def _check_tau(tau, func, dtype):
    tau = check_param(tau, "tau", func, kind="float", low=0)
    tau_d = np.dtype(dtype).type(tau)
    if tau_d == 0:
        raise InvalidParameterError(
            f"The 'tau' parameter of {func} must be a float that is positive in {dtype} "
            f"(>= {np.finfo(dtype).smallest_subnormal}). Got {tau!r} instead."
        )
    return tau_d


def _check_hard(hard, func):
    return bool(check_param(hard, "hard", func, kind="choice", choices=(False, True)))


def _prepare(func, logits, tau, seed, stream, offset, hard, y_out, y_soft_out):
    """Check a forward call (NumPy); return its arguments, logits C-contiguous."""
    logits = _check_logits(logits, func)
    tau_d = _check_tau(tau, func, logits.dtype)
    hard = _check_hard(hard, func)
    seed, stream, offset = check_noise_args(func, seed, stream, offset, logits.size, "N*C")
    if y_out is not None:
        check_out(y_out, "y_out", func, logits.shape, logits.dtype, {"logits": logits})
    if y_soft_out is not None:
        if not hard:
            raise ValueError(
                f"{func}: expected y_soft_out=None when hard=False (y itself is "
                f"the soft sample), got an array. Drop y_soft_out or pass "
                f"hard=True."
            )
        check_out(
            y_soft_out,
            "y_soft_out",
            func,
            logits.shape,
            logits.dtype,
            {"logits": logits, "y_out": y_out},
        )
    return logits, tau_d, seed, stream, offset, hard, y_out, y_soft_out


def _prepare_backward(func, dy, y_soft, tau, a, lib="numpy"):
    """Check a backward call; return (dy, y_soft, tau in the dtype, a), C-contiguous."""
    contiguous = lib == "cupy"
    check_array(dy, "dy", func, ndim=2, lib=lib, contiguous=contiguous)
    check_array(y_soft, "y_soft", func, ndim=2, lib=lib, contiguous=contiguous)
    if dy.shape != y_soft.shape or dy.dtype != y_soft.dtype:
        raise ValueError(
            f"{func}: expected dy and y_soft to have one shape and dtype, got "
            f"{dy.dtype} {tuple(dy.shape)} and {y_soft.dtype} {tuple(y_soft.shape)}."
        )
    if y_soft.shape[1] < 1:
        raise ValueError(
            f"{func}: expected at least one category (C >= 1), got shape {tuple(y_soft.shape)}."
        )
    tau_d = _check_tau(tau, func, y_soft.dtype)
    if a is not None:
        check_array(a, "logits_plus_g_over_tau", func, ndim=2, lib=lib, contiguous=contiguous)
        if a.shape != y_soft.shape or a.dtype != y_soft.dtype:
            raise ValueError(
                f"{func}: expected logits_plus_g_over_tau to match y_soft "
                f"({y_soft.dtype} {tuple(y_soft.shape)}), got {a.dtype} {tuple(a.shape)}."
            )
    if lib == "numpy":
        dy, y_soft = np.ascontiguousarray(dy), np.ascontiguousarray(y_soft)
        a = None if a is None else np.ascontiguousarray(a)
    return dy, y_soft, tau_d, a


def _prepare_max(func, logits, seed, stream, offset, lib="numpy"):
    logits = _check_logits(logits, func, lib=lib)
    seed, stream, offset = check_noise_args(func, seed, stream, offset, logits.size, "N*C")
    return logits, seed, stream, offset


def _raise_bad_rows(func, bad):
    """gumbel_max's answer for rows whose max of logits + g is not finite (a NaN anywhere in
    the row, an all -inf row, or +inf): an error, never a silent index."""
    rows = np.flatnonzero(bad)
    raise ValueError(
        f"{func}: expected every row of logits to have a finite maximum and no NaN, got "
        f"{rows.size} rows that do not (first: row {int(rows[0])}). Check the encoder output; "
        f"mask a category with -inf only while its row keeps a finite entry."
    )


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
        A row whose max of logits + g is not finite (a NaN, all -inf, +inf) is all NaN.
    """
    logits, tau, seed, stream, offset, hard, y_out, y_soft_out = _prepare(
        _FUNC, logits, tau, seed, stream, offset, hard, y_out, y_soft_out
    )
    n, c = logits.shape
    g = gumbel_ref(seed, stream, n * c, logits.dtype, offset).reshape(n, c)  # (N, C)
    s = logits + g  # (N, C)
    y = np.empty((n, c), logits.dtype) if y_out is None else y_out
    if n == 0:
        return y
    m = s.max(axis=1, keepdims=True)  # (N, 1); NaN when the row holds one
    if not hard or y_soft_out is not None:
        with np.errstate(under="ignore", invalid="ignore"):  # bad rows: inf - inf = NaN
            e = np.exp((s - m) / tau)  # (N, C)
            soft = y if not hard else y_soft_out
            np.divide(e, e.sum(axis=1, keepdims=True), out=soft)
    if hard:
        y[...] = 0
        y[np.arange(n), np.argmax(s, axis=1)] = 1  # first max
        y[~np.isfinite(m[:, 0])] = np.nan  # no silent one-hot for a row with no valid max
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
    dy, y_soft, tau, logits_plus_g_over_tau = _prepare_backward(
        _FUNC_BWD, dy, y_soft, tau, logits_plus_g_over_tau
    )
    v = y_soft * (dy - np.sum(dy * y_soft, axis=1, keepdims=True))  # (N, C)
    dlogits = v / tau  # (N, C)
    if logits_plus_g_over_tau is None:
        pos = y_soft > 0
        a = np.zeros_like(y_soft)
        a[pos] = np.log(y_soft[pos])  # (N, C)
    else:  # only where y > 0: a masked category's a is -inf, and dlogits there is 0
        a = np.where(y_soft > 0, logits_plus_g_over_tau, 0)
    dtau = -float(np.sum(dlogits.astype(np.float64) * a))
    return dlogits, dtau


def gumbel_max_ref(logits, seed, stream=0, offset=0):
    """argmax_c (logits + g) per row (lowest index on ties), NumPy reference -> (N,) int64.

    Raises ValueError for a row whose max of logits + g is not finite (see ``gumbel_max``).
    """
    logits, seed, stream, offset = _prepare_max(_FUNC_MAX, logits, seed, stream, offset)
    n, c = logits.shape
    g = gumbel_ref(seed, stream, n * c, logits.dtype, offset).reshape(n, c)  # (N, C)
    s = logits + g  # (N, C)
    if n:
        bad = ~np.isfinite(s.max(axis=1))  # (N,); np.max propagates NaN
        if bad.any():
            _raise_bad_rows(_FUNC_MAX, bad)
    return np.argmax(s, axis=1).astype(np.int64)  # (N,)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _row_sum(x):
    # Reassociation lets LLVM keep 16-lane partial sums; this helper calls nothing, so the
    # flag cannot reach exp/log (explicit flags are not inherited by or from callers).
    acc = x[0] - x[0]
    for j in range(x.size):
        acc += x[j]
    return acc


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _row_dot(x, y):
    acc = x[0] - x[0]
    for j in range(x.size):
        acc += x[j] * y[j]
    return acc


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False, inline="always")
def _scan_row(lr, sr):
    """sr <- lr + sr (the Gumbels become s); return (max s, first argmax), the argmax -1 when
    the row holds a NaN or its max is not finite (all -inf, or +inf)."""
    m = lr[0] + sr[0]
    sr[0] = m
    am = 0
    nan = m != m
    for j in range(1, sr.size):
        v = lr[j] + sr[j]
        sr[j] = v
        nan |= v != v  # NaN never wins the comparison below, so it is tracked apart
        if v > m:  # strict: the lowest index wins ties
            m = v
            am = j
    if nan or not (m - m == m - m):  # m - m is NaN for m = +-inf or NaN; typed, no float64
        am = -1
    return m, am


# v2: the soft sample in flat, vectorized passes over a chunk. Rows of C = 10 make every per-row
# loop a short scalar loop; v1 ran the shift, the division by tau and the normalization in such
# loops (scalar divisions, 3-4 cycles each). v2 keeps per-row work to what only a row can do
# (its max and its sum, each stored once per element of the row into a chunk-sized buffer) and
# runs everything per element as one loop over the whole chunk, which vectorizes for any C.
# Indices inside the per-row loops are unsigned: a signed index gets NumPy's wraparound select.
# Large rows (C >= _WIDE) take the row loops instead, which vectorize along the row.
_WIDE = 32
_LANES = 16  # where _row_max_wide stops halving: one AVX-512 vector of float32


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False, inline="always")
def _row_max(s, o, c):
    """max of s[o : o + c] (c >= 1), two interleaved running maxima (max is exact, so the order
    does not change the result); NaN never wins, as in ``_scan_row``."""
    u = np.uint64
    cu = u(c)
    m0 = s[o]
    m1 = m0
    j = u(1)
    while j + u(1) < cu:
        v0 = s[o + j]
        v1 = s[o + j + u(1)]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        j += u(2)
    if j < cu:
        v0 = s[o + j]
        m0 = v0 if v0 > m0 else m0
    return m1 if m1 > m0 else m0


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False, inline="always")
def _max_pairs(a, b, out):
    """out[i] = max(a[i], b[i]) (NaN in b never wins); out overlaps neither input."""
    for i in range(out.size):
        x = a[i]
        y = b[i]
        out[i] = y if y > x else x


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _row_max_wide(x, scratch):
    """max of x (x.size >= 2 _LANES) by halving: elementwise maxima of the two halves, then of
    the halves of that, ... down to _LANES values (long elementwise loops vectorize where a max
    reduction does not; the levels alternate between two halves of ``scratch``, of x.size, so
    no loop reads what it writes). Max is exact, so the order does not change the result."""
    h = x.size // 2
    m = x[x.size - 1]  # the odd element out, if any (else compared twice)
    b1 = scratch[:h]
    b2 = scratch[h : 2 * h]
    _max_pairs(x[:h], x[h : 2 * h], b1)
    src, dst = b1, b2
    while h > _LANES:
        h2 = h // 2
        if h & 1:
            v = src[h - 1]
            m = v if v > m else m
        _max_pairs(src[:h2], src[h2 : 2 * h2], dst[:h2])
        src, dst = dst, src
        h = h2
    for i in range(h):
        v = src[i]
        m = v if v > m else m
    return m


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _shifted(v, m, tau):
    """(v - m) / tau with strict flags (compiled apart, inlined by LLVM into reassoc loops)."""
    return (v - m) / tau


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False, inline="always")
def _row_total(e, o, c):
    """sum of e[o : o + c] (c >= 1, short rows): two interleaved partial sums."""
    u = np.uint64
    cu = u(c)
    a0 = e[o] - e[o]
    a1 = a0
    j = u(0)
    while j + u(1) < cu:
        a0 += e[o + j]
        a1 += e[o + j + u(1)]
        j += u(2)
    if j < cu:
        a0 += e[o + j]
    return a0 + a1


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _exp_row_sum(s, m, tau, e):
    """e <- exp((s - m) / tau) (<= 0: exp_nonpos) and return its sum; reassoc vectorizes the
    sum only (the shift and exp are compiled apart with strict flags, see kernels.fastmath)."""
    acc = tau - tau
    for j in range(s.size):
        v = exp_nonpos(_shifted(s[j], m, tau))
        e[j] = v
        acc += v
    return acc


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _soft_chunk_v2(lf, s, add, c, tau, out, rb):
    """out <- the soft samples of the chunk's rows, flat (rows * C,): s holds the chunk's
    Gumbels, ``add`` True (s <- lf + s first), or already logits + g; rb is scratch of s's size."""
    u = np.uint64
    n = s.size
    if add:
        for i in range(n):
            s[i] = lf[i] + s[i]
    nr = n // c
    cu = u(c)
    if c < _WIDE:
        for r in range(nr):
            o = u(r) * cu
            m0 = s[o]
            m1 = m0
            j = u(1)
            while j + u(1) < cu:
                v0 = s[o + j]
                v1 = s[o + j + u(1)]
                m0 = v0 if v0 > m0 else m0
                m1 = v1 if v1 > m1 else m1
                j += u(2)
            if j < cu:
                v0 = s[o + j]
                m0 = v0 if v0 > m0 else m0
            m = m1 if m1 > m0 else m0
            for q in range(c):
                rb[o + u(q)] = m
        for i in range(n):  # one vector loop over the chunk; the argument is <= 0 (or NaN)
            out[i] = exp_nonpos((s[i] - rb[i]) / tau)
        for r in range(nr):
            o = u(r) * cu
            t = _row_total(out, o, c)  # >= 1: the argmax term is exp(0) = 1
            for q in range(c):
                rb[o + u(q)] = t
        for i in range(n):
            out[i] = out[i] / rb[i]
    else:
        for r in range(nr):
            o = r * c
            sr = s[o : o + c]
            m = _row_max_wide(sr, rb[:c])
            yr = out[o : o + c]
            t = _exp_row_sum(sr, m, tau, yr)  # (s - m) / tau <= 0; -inf for masked entries
            for j in range(c):
                yr[j] = yr[j] / t


@njit(nogil=True, cache=True, parallel=True, error_model="numpy", fastmath=False)
def _forward_v2(
    logits, tau, zero, one, k0, k1, s0, s1, offset, per, rows, hard, soft, y, soft_flat
):
    # As _forward_v1 (same chunks, same noise, same hard path); the soft sample by
    # _soft_chunk_v2 into soft_flat, the soft output (y or y_soft) flattened by the wrapper:
    # a C-contiguous 1-D type, so the chunk loops vectorize (a slice of an array picked at run
    # time would be typed 'A', any layout). Each chunk writes only its own rows.
    n, c = logits.shape
    nchunks = (n + rows - 1) // rows
    lflat = logits.reshape(-1)
    for ch in prange(nchunks):
        r0 = ch * rows
        r1 = min(r0 + rows, n)
        g0 = offset + r0 * c
        first = g0 // per
        nblk = (offset + r1 * c - 1) // per - first + 1
        buf = np.empty(nblk * per, dtype=logits.dtype)
        _gumbels(buf, k0, k1, s0, s1, first)
        e0 = g0 - first * per
        s = buf[e0 : e0 + (r1 - r0) * c]
        if hard:
            for r in range(r0, r1):
                sr = s[(r - r0) * c : (r - r0 + 1) * c]
                _, am = _scan_row(logits[r], sr)  # sr <- logits + g
                yr = y[r]
                for j in range(c):
                    yr[j] = zero
                if am >= 0:
                    yr[am] = one
                else:  # no valid max: NaN, as the soft sample of such a row is
                    for j in range(c):
                        yr[j] = zero / zero
        if soft:
            rb = np.empty(s.size, dtype=logits.dtype)
            out = soft_flat[r0 * c : r1 * c]
            _soft_chunk_v2(lflat[r0 * c : r1 * c], s, not hard, c, tau, out, rb)


@njit(nogil=True, cache=True, parallel=True, error_model="numpy", fastmath=False)
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
            if has_a:  # only where y > 0: a masked category's a is -inf (0 * -inf)
                ar = a[r]
                for j in range(c):
                    w[j] = ar[j] if yr[j] > zero else zero
            else:
                for j in range(c):
                    w[j] = log(yr[j]) if yr[j] > zero else zero
            acc += np.float64(_row_dot(dl, w))
        partial[ch] = acc


@njit(nogil=True, cache=True, parallel=True, error_model="numpy", fastmath=False)
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


def gumbel_softmax_numba_v2(
    logits, tau, seed, stream=0, offset=0, hard=False, y_out=None, y_soft_out=None
):
    """Numba, fused noise + softmax in flat vectorized passes per chunk of rows. Contract of
    ``gumbel_softmax_ref``."""
    logits, tau, seed, stream, offset, hard, y_out, y_soft_out = _prepare(
        _FUNC, logits, tau, seed, stream, offset, hard, y_out, y_soft_out
    )
    n, c = logits.shape
    dtype = logits.dtype.type
    y = np.empty((n, c), logits.dtype) if y_out is None else y_out  # (N, C)
    if n == 0:
        return y
    soft = (not hard) or (y_soft_out is not None)
    y_soft = y if y_soft_out is None else y_soft_out  # (N, C)
    k0, k1, s0, s1 = key_words(seed, stream)
    _forward_v2(
        logits,
        dtype(tau),
        dtype(0),
        dtype(1),
        k0,
        k1,
        s0,
        s1,
        np.int64(offset),
        per_block(logits.dtype),
        max(1, _CHUNK // c),
        bool(hard),
        soft,
        y,
        y_soft.reshape(-1),
    )
    return y


def gumbel_softmax_backward_numba_v1(dy, y_soft, tau, logits_plus_g_over_tau=None):
    """Numba, parallel over chunks of rows. Contract of ``gumbel_softmax_backward_ref``."""
    dy, y_soft, tau, logits_plus_g_over_tau = _prepare_backward(
        _FUNC_BWD, dy, y_soft, tau, logits_plus_g_over_tau
    )
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
    logits, seed, stream, offset = _prepare_max(_FUNC_MAX, logits, seed, stream, offset)
    n, c = logits.shape
    out = np.empty(n, np.int64)  # (N,)
    if n == 0:
        return out
    k0, k1, s0, s1 = key_words(seed, stream)
    _max_v1(
        logits, k0, k1, s0, s1, np.int64(offset), per_block(logits.dtype), max(1, _CHUNK // c), out
    )
    bad = out < 0  # (N,): rows _scan_row flagged
    if bad.any():
        _raise_bad_rows(_FUNC_MAX, bad)
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


def _cupy_width(logits):
    """Lanes per row: one per Philox block the row can touch, up to a warp."""
    from . import _cupy

    return _cupy.group_width(-(-(logits.shape[1] - 1) // per_block(logits.dtype)) + 1)


def _cupy_bad_rows(logits):
    """(N,) device mask of the rows whose max is not finite (a NaN propagates through max). The
    CUDA argmax skips NaN, so these rows are found here, with one reduction and a sync."""
    from . import _cupy

    return ~_cupy.cupy.isfinite(logits.max(axis=1))


def gumbel_softmax_cupy_v1(
    logits, tau, seed, stream=0, offset=0, hard=False, y_out=None, y_soft_out=None
):
    """CuPy: a group of lanes per row; Gumbels from whole Philox blocks, (max, first argmax) and
    the softmax sums by warp shuffles. Contract of ``gumbel_softmax_ref`` on cupy arrays
    (arguments checked; a hard sample's row without a finite max is set to NaN after the launch,
    at the cost of one reduction)."""
    func = "gumbel_softmax_cupy_v1"
    logits = _check_logits(logits, func, lib="cupy")
    tau_d = _check_tau(tau, func, logits.dtype)
    hard = _check_hard(hard, func)
    n, c = logits.shape
    seed, stream, offset = check_noise_args(func, seed, stream, offset, n * c, "N*C")
    for name, out in (("y_out", y_out), ("y_soft_out", y_soft_out)):
        if out is not None:
            check_array(out, name, func, ndim=2, lib="cupy", contiguous=True)
    from . import _cupy

    cupy = _cupy.cupy
    W = _cupy_width(logits)
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
    if hard:
        bad = _cupy_bad_rows(logits)
        if bool(bad.any()):
            y_out[bad] = np.nan  # no silent one-hot, as in the Numba variant
    return y_out


def gumbel_softmax_backward_cupy_v1(dy, y_soft, tau, logits_plus_g_over_tau=None):
    """CuPy: a group of lanes per row; dtau's row terms in float64, summed over rows in order.
    Contract of ``gumbel_softmax_backward_ref`` on cupy arrays."""
    func = "gumbel_softmax_backward_cupy_v1"
    dy, y_soft, tau_d, a = _prepare_backward(
        func, dy, y_soft, tau, logits_plus_g_over_tau, lib="cupy"
    )
    from . import _cupy

    cupy = _cupy.cupy
    n, c = y_soft.shape
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
    """CuPy: the forward's first pass only. Contract of ``gumbel_max_ref`` on cupy arrays (rows
    without a finite max are found by one reduction and a sync before the launch)."""
    func = "gumbel_max_cupy_v1"
    logits, seed, stream, offset = _prepare_max(func, logits, seed, stream, offset, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    n, c = logits.shape
    index = cupy.empty(n, dtype=np.int64)  # (N,)
    if n == 0:
        return index
    bad = _cupy_bad_rows(logits)
    if bool(bad.any()):
        _raise_bad_rows(func, cupy.asnumpy(bad))
    W = _cupy_width(logits)
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

# DEFAULT: numba_v2 for the forward, numba_v1 for the backward and gumbel_max (their only Numba
# variants). Evidence, 2026-12-03, development VM (AMD EPYC Zen 4, 2 vCPUs, shared with other
# jobs that kept both cores busy), float32, tau 0.5, y_out preallocated, one thread, CPU time of
# the thread, medians of 15 (v1 from benchmarks/lab/gumbel_softmax.py, same run):
#   (100000, 10):  v2 4.0-4.4 ms, v1 4.8-5.4 ms, Gumbel generator bound 2.2-2.3 ms
#   (10000, 512):  v2 14.3-15.4 ms, v1 18.4-19.7 ms, bound 10.9-11.6 ms
#   compare_peers --threads 1 --clock cpu (same day): v2 at 44 % / 72 % of the bound, 8.1x /
#   7.9x torch.nn.functional.gumbel_softmax.
# Nov 2026 (v1, 2 threads, quiet moment): forward 1.9 / 7.3 ms vs torch 24 / 117 ms; backward
# 1.6-2.6 / 2.1-8 ms [minima]; gumbel_max 1.0-1.5 / 12-14 ms [minima].
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", gumbel_softmax_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v2", gumbel_softmax_numba_v2, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", gumbel_softmax_cupy_v1, "default"),
    KernelRecord(_FUNC_BWD, "numpy", "ref", gumbel_softmax_backward_ref, "reference"),
    KernelRecord(_FUNC_BWD, "numba", "numba_v1", gumbel_softmax_backward_numba_v1, "default"),
    KernelRecord(_FUNC_BWD, "cupy", "cupy_v1", gumbel_softmax_backward_cupy_v1, "default"),
    KernelRecord(_FUNC_MAX, "numpy", "ref", gumbel_max_ref, "reference"),
    KernelRecord(_FUNC_MAX, "numba", "numba_v1", gumbel_max_numba_v1, "default"),
    KernelRecord(_FUNC_MAX, "cupy", "cupy_v1", gumbel_max_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
BACKWARD_VARIANTS = variants(RECORDS, _FUNC_BWD)
MAX_VARIANTS = variants(RECORDS, _FUNC_MAX)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
BACKWARD_IMPLEMENTATIONS = implementations(RECORDS, _FUNC_BWD)
MAX_IMPLEMENTATIONS = implementations(RECORDS, _FUNC_MAX)
DEFAULT = default_variant(RECORDS, _FUNC)
BACKWARD_DEFAULT = default_variant(RECORDS, _FUNC_BWD)
MAX_DEFAULT = default_variant(RECORDS, _FUNC_MAX)


# --------------------------------------------------------------------------------------------
# Public wrappers: pick the variant by backend (every variant checks its own arguments)
# --------------------------------------------------------------------------------------------


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
    backend : {"numba", "numpy", "cupy"}
    check_values : bool
        Also check logits for NaN/+inf and all -inf rows up front (one extra pass); unchecked,
        such a row comes out all NaN (soft or hard), never a silent sample.

    Returns
    -------
    y : ndarray of shape (N, C)

    Raises
    ------
    TypeError, ValueError
        Non-ndarray, non-float or non-2-D logits, C = 0, bad outputs, bad values (with
        check_values).
    kernels.InvalidParameterError
        tau not a float in (0, inf) (or 0 in the dtype), hard not a bool, bad seed, stream or
        offset.

    Notes
    -----
    y[n] = exp((s[n] - max s[n]) / tau) / sum(...), s = logits + g, g[n, c] = gumbel_ref(seed,
    stream, N*C, dtype, offset)[n*C + c]. See "Gradient flow" in the module docstring.
    """
    impl = check_backend(backend, IMPLEMENTATIONS, _FUNC)
    if check_values:
        _check_logits(logits, _FUNC, check_values=True, lib=_lib(backend))
    return impl(logits, tau, seed, stream, offset, hard, y_out, y_soft_out)


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
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    dlogits : ndarray of shape (N, C)
        y (dy - sum_c dy y) / tau.
    dtau : float
        -sum_{n,c} y (dy - sum_c dy y) (logits + g) / tau^2.
    """
    impl = check_backend(backend, BACKWARD_IMPLEMENTATIONS, _FUNC_BWD)
    return impl(dy, y_soft, tau, logits_plus_g_over_tau)


def gumbel_max(logits, seed, stream=0, offset=0, *, backend="numba", check_values=False):
    """Exact categorical samples argmax_c(logits + g) per row (ties: lowest index).

    Parameters
    ----------
    logits : ndarray of shape (N, C), float32 or float64
    seed, stream, offset : int
        As in ``gumbel_softmax``; the same arguments give the argmax of the same s.
    backend : {"numba", "numpy", "cupy"}
    check_values : bool
        Also check logits for NaN/+inf and all -inf rows up front (one extra pass).

    Returns
    -------
    index : ndarray of shape (N,), int64

    Raises
    ------
    ValueError
        A row of logits + g without a finite maximum (a NaN anywhere in the row, only -inf
        entries, or +inf), whether or not ``check_values`` is set: such a row has no
        categorical sample, and an index for it would be silently wrong.
    """
    impl = check_backend(backend, MAX_IMPLEMENTATIONS, _FUNC_MAX)
    if check_values:
        _check_logits(logits, _FUNC_MAX, check_values=True, lib=_lib(backend))
    return impl(logits, seed, stream, offset)
