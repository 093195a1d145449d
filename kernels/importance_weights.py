"""Importance weights: log-mean-exp over K and the normalized weights, per column, fused.

Math
----
For log-weights lw (K, B), column b, with m_b = max_k lw[k, b]::

    bound[b]      = log (1/K) sum_k exp(lw[k, b]) = m_b + log sum_k exp(lw[k, b] - m_b) - log K
    weights[k, b] = exp(lw[k, b] - m_b) / sum_j exp(lw[j, b] - m_b)        (softmax over K)

Backward: d bound[b] / d lw[k, b] = weights[k, b], so the weights are the cache of the bound.

Shapes: log_w (K, B), C-contiguous (B is the contiguous axis, as the engine lays out log w);
bound (B,); weights (K, B), preallocated by the caller or allocated here; it may be ``log_w``
itself (overwritten in place) or must not overlap it.

Special values
--------------
- A column of all -inf (every sample rejected): bound -inf, weights all 0; no NaN, no warning.
  (The shift m is replaced by 0 when it is not finite, so exp(-inf - 0) = 0 and the sum is 0;
  the reciprocal of a zero sum is taken as 0.)
- -inf entries in a column with finite ones get weight exactly 0.
- +inf in a column (an overflowed log-weight): bound +inf; weights NaN at the +inf entries and 0
  elsewhere, as ``lvmcore.losses.iwae.importance_weights_forward`` gives (inf / inf); the NaN
  flags the overflow rather than hiding it.
- NaN in a column: bound NaN and all weights of that column NaN.

Numerics
--------
- exp / log are ``kernels.fastmath`` (<= 1 ulp; exp of a shifted log-weight below -87.3
  (float32) / -708.4 (float64) is 0, never subnormal). Weights below the smallest normal float
  (1.2e-38 / 2.2e-308 of the column's total) are returned as 0: subnormal weights would fill the
  logit gradients with subnormals and slow the backward GEMMs (PERF-NOTES, "Denormals"). The
  absolute error this adds is below the smallest normal.
- Column sums: float32 terms are summed in float32 over runs of 16 rows (<= 15 ulp = 9e-7
  relative, all terms being positive), and the run sums in float64; a float64 add per element
  would halve the vector width of the exp loop (measured 2x slower), while one float32 sum over
  K = 5000 rows could lose up to K * 2^-24 = 3e-4. The bound is formed in float64 and rounded
  once. Measured against the float64 reference at (5000, 1000), lw ~ N(0, 25): bound within
  1e-6 absolute, weights within 2e-7 absolute (float32); 1e-14 (float64).
- Results do not depend on the number of threads (the order of every sum is fixed by the data
  shape alone; tested).

Layout and loops
----------------
B is contiguous, so every loop runs k outer / b inner, vectorized over b (16 float32 lanes on
AVX-512), with per-column maxima and sums in (B,)-shaped buffers. Indexing uses row slices or a
plain ``range`` index: ``src[k, b0 + j]`` gets NumPy wraparound handling and vectorizes only as
gathers (10x slower, measured).

Against the machine
-------------------
``benchmarks/compare_peers.py`` holds the kernel to the copy bandwidth (log_w read, the weights
written: 8 bytes per element), measured in the same run. At (5000, 1000) float32 it stays well
below it, for two measured reasons (development VM, AMD EPYC Zen 4, 2 vCPUs shared with other
jobs, 2026-12-03; figures at RECORDS):

- Traffic. A weight is final only once its column's sum over all K rows is known, so 20 MB of
  log_w (bigger than the 1 MiB L2 of a core, and than any safe share of a 32 MiB L3 the VM
  shares with other tenants) cannot go from DRAM to the weights in one pass: v4 writes the
  block-shifted exps, then reads and rewrites them. With a separate weights_out every written
  line is first read (write-allocate): 100 MB of DRAM traffic, where the copy the bound times
  moves 40 MB (glibc's 256 MiB copy streams with non-temporal stores, which Numba cannot emit);
  80 MB in place, as the K-sample evaluation calls it. Reading log_w twice instead and writing
  the weights once (v5, in the lab) moves 80 MB but computes every exp twice, and lost.
- exp. One core computes ``fastmath.exp_nonpos`` at 0.26 ns per element (0.41 for the general
  exp: 13-20 cycles per 16 lanes, Zen 4 running 512-bit vectors on 256-bit units): 1.3 ms for
  the 5 M exps on one core, against 1.6 ms for the whole 40 MB copy on one core (~25 GB/s).
  One thread measures 38 % of the copy bandwidth, 42 % in place (CPU time, v4).
- Tried: column panels narrow enough for all K rows of a panel to stay in L2 (one DRAM read,
  one write): they read each row in 128 B to 2 KiB pieces at a 4 KB stride, and ran 2.5-3.5x
  slower than v4 on one core at 128-500 columns (11-15 ms), with or without software prefetch.

Variants
--------
Every variant checks its arguments (types, dtypes, shape, contiguity, K >= 1, the output buffer
and its overlap with log_w) before any loop or launch; ``importance_weights`` picks one by
``backend``.

- ``importance_weights_ref``: NumPy, computed in float64, cast back; the oracle and the
  ``"numpy"`` backend.
- v1 (moved to benchmarks/lab/importance_weights.py): ``prange`` over column chunks, three
  passes (max; e = exp(lw - m) stored and summed; scale by 1 / sum). Lost to v4: 3.2 ms
  against 1.81 ms at (5000, 1000) float32 on 2 threads (its column halves stream at half the
  rate), 4.47 against 3.93 ms on 1 thread.
- ``importance_weights_numba_v4``: ``prange`` over blocks of whole rows (about 512 KiB of log_w
  each). Per block: its column maxima (the block is read from DRAM once and stays in L2), then
  e = exp(lw - block max) stored and the block's column sums. A merge over columns combines the
  block maxima and sums (sum_b s_b exp(m_b - m)) into the bound and a per-block factor
  exp(m_b - m) / sum, and a last pass multiplies each block by it. Every pass streams whole
  rows, two passes over memory instead of three, and each block owns its row of the (nblocks, B)
  tables, so no shared accumulation. Every exp argument is <= 0 (a +inf block shifts by +inf,
  its column settled in the merge from the NaN flags the max pass collects), so the exps are
  ``fastmath.exp_nonpos`` (exp bit for bit, 0.26 against 0.41 ns per element on one core).
  DEFAULT (the ``"numba"`` backend).
- v5 (moved to benchmarks/lab/importance_weights.py): two passes over v4's row blocks, nothing
  stored by the first (block maxima, NaN flags, sums of exp), the weights exp(lw - m) / sum
  written once by the second. 20 % less DRAM traffic than v4 (log_w read twice and the weights
  written once, instead of the exps written, read back and rewritten), but two exps per element:
  on one core (CPU time, 2026-12-03) 4.4 ms against v4's 4.1 (4.5 against 3.6 in place).
- Tried and deleted: two exps per element so the weights are written once and never re-read
  (v2), and an online running max per column chunk (v3); with column chunks the rows are read in
  pieces of 64 B to 2 KiB at a stride of B * 4 bytes, and on one thread v1 at full width ran in
  4.0 ms where any split into chunks of 16 to 512 columns took 5-12 ms; v2/v3 were no faster
  than v1 at equal chunking.
- Not written: a (B, K) transposed-input variant. PERF-NOTES measured log-sum-exp/softmax with
  K contiguous at about 2x, but the engine lays log w out as (K, B) (sample-major, as the decoder
  rows), and a transpose is itself a full read and write of the array, about the cost of v4. It
  would pay only if the engine produced log w batch-major in the first place.
- ``importance_weights_cupy_v1`` (kernels/cuda/importance_weights.cu): blocks of 32 columns x TY
  row-slices (coalesced 32-column row segments), slice maxima and float64 sums merged in shared
  memory; max, sum and weight passes. The ``"cupy"`` backend; not yet run on a device.
"""

import math

import numpy as np
from numba import njit, prange

from ._checks import check_array, check_backend, check_dtype_of, same_buffer
from ._registry import KernelRecord, default_variant, implementations, variants
from .fastmath import exp, exp_nonpos, log

__all__ = [
    "importance_weights",
    "importance_weights_ref",
    "importance_weights_numba_v4",
    "importance_weights_cupy_v1",
    "RECORDS",
    "VARIANTS",
    "IMPLEMENTATIONS",
    "DEFAULT",
]

_FUNC = "importance_weights"

# v4: bytes of log_w per row block; the block is read once from DRAM by the max loop and again
# from L2 (1-2 MB per core on the target machines) by the exp loop.
_BLOCK_BYTES = 512 * 1024
# v4: columns per task of the merge loop.
_COMBINE_COLS = 256
# v4: inputs with fewer elements run on the calling thread: a parallel region costs 2-17 us on a
# warm pool and, on a loaded machine, a scheduler tick (4 ms) whenever the worker is not running.
_PARALLEL_MIN = 1 << 18
# Rows summed in the dtype before the partial sum is added into a float64 column sum: float32
# sums of 16 positive terms are good to 15 ulp (9e-7) in the worst case, and a float64 add per
# element would halve the vector width of the exp loop (measured 2x slower pass).
_SUM_BLOCK = 16


# --------------------------------------------------------------------------------------------
# Argument checks (every variant runs them; the kernels below assume valid input)
# --------------------------------------------------------------------------------------------


def _prepare(func, log_w, weights_out, lib="numpy", contiguous=True):
    """Check the arguments; ``contiguous`` False for the NumPy reference, which takes strides."""
    check_array(log_w, "log_w", func, ndim=2, lib=lib, contiguous=contiguous)
    if log_w.shape[0] == 0:
        raise ValueError(
            f"{func}: expected log_w to have K >= 1 rows, got shape {tuple(log_w.shape)}."
        )
    if weights_out is None:
        return
    check_array(weights_out, "weights_out", func, ndim=2, lib=lib, contiguous=contiguous)
    check_dtype_of(weights_out, "weights_out", log_w, "log_w", func)
    if weights_out.shape != log_w.shape:
        raise ValueError(
            f"{func}: expected weights_out to have shape {tuple(log_w.shape)}, got "
            f"{tuple(weights_out.shape)}. Allocate it with numpy.empty_like(log_w)."
        )
    if lib != "numpy":  # device overlap is not checked (wrong values, never out of bounds)
        return
    if not weights_out.flags.writeable:
        raise ValueError(f"{func}: expected weights_out to be writeable, got a read-only array.")
    if not same_buffer(weights_out, log_w) and np.may_share_memory(weights_out, log_w):
        raise ValueError(
            f"{func}: expected weights_out to be log_w itself or not to "
            f"overlap it, got a partially overlapping array. Pass "
            f"weights_out=log_w to overwrite it, or a fresh buffer."
        )


# --------------------------------------------------------------------------------------------
# Reference (the oracle)
# --------------------------------------------------------------------------------------------


def importance_weights_ref(log_w, weights_out=None):
    """Plain NumPy in float64; results cast to the input dtype.

    Parameters
    ----------
    log_w : ndarray of shape (K, B)
    weights_out : ndarray of shape (K, B), optional; may be ``log_w`` itself

    Returns
    -------
    bound : ndarray of shape (B,)
    weights : ndarray of shape (K, B)
    """
    _prepare(_FUNC, log_w, weights_out, contiguous=False)
    K = log_w.shape[0]
    lw = log_w.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = lw.max(axis=0)  # (B,)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(lw - m)  # (K, B)
        s = e.sum(axis=0)  # (B,)
        bound = (np.log(s) + m - math.log(K)).astype(log_w.dtype)
        w = e * np.where(s != 0, 1.0 / s, 0.0)
    if weights_out is None:
        weights_out = np.empty_like(log_w)
    weights_out[...] = w
    return bound, weights_out


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------

# Loops index row slices (src[k, b0:b1]) or src[k, j] with j from range(n): an index like
# src[k, b0 + j], not provably >= 0, gets NumPy-style wraparound (a select per element), which
# LLVM can only vectorize as gathers (measured 10x slower).


@njit(nogil=True, cache=True, error_model="numpy")
def _finite_or(v, zero, inf):
    return v if (v > -inf) & (v < inf) else zero


@njit(nogil=True, cache=True, error_model="numpy")
def _finish(s, m, bound, inv, b0, log_k, one, zero):
    """bound = log(s) + m - log K, in float64; inv = 1 / s, 0 for an empty (all -inf) column."""
    for j in range(s.shape[0]):
        sj = s[j]
        bound[b0 + j] = log(sj) + np.float64(m[j]) - log_k
        inv[j] = one / sj if sj != 0.0 else zero


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _block_exp(src, dst, k0, k1, bmax, bnan, bsum, zero, inf, sub):
    """Rows k0..k1, all columns: bmax = the block's column maxima (raw), bnan = whether the
    column holds a NaN, dst = exp(lw - shift) with shift = bmax (0 for an all -inf block), bsum =
    the block's column sums of dst (float64). Every exp argument is <= 0, -inf or NaN (a +inf
    block's shift is +inf: its exps are 0, and NaN at the +inf entries), so exp_nonpos serves."""
    B = src.shape[1]
    for j in range(B):
        bmax[j] = -inf
        bnan[j] = 0
        bsum[j] = 0.0
    for k in range(k0, k1):  # the block is read from DRAM here and stays in L2 for the next loop
        for j in range(B):
            v = src[k, j]
            bmax[j] = v if v > bmax[j] else bmax[j]
            bnan[j] |= np.uint8(v != v)
    shift = np.empty(B, dtype=src.dtype)
    s32 = np.zeros(B, dtype=src.dtype)
    for j in range(B):
        shift[j] = zero if bmax[j] == -inf else bmax[j]
    for r0 in range(k0, k1, sub):
        for k in range(r0, min(r0 + sub, k1)):
            for j in range(B):
                e = exp_nonpos(src[k, j] - shift[j])
                dst[k, j] = e
                s32[j] += e
        for j in range(B):  # sums of `sub` terms in the dtype, then in float64
            bsum[j] += s32[j]
            s32[j] = zero


@njit(nogil=True, cache=True, error_model="numpy")
def _combine(bmax, bnan, bsum, bound, b0, b1, log_k, zero, one, inf):
    """Columns b0..b1: merge the block maxima and sums into the bound, and overwrite bmax with
    the factor exp(shift_block - shift) / sum that the scale pass multiplies each block by.
    A column holding +inf and no NaN: bound +inf, factors 0 (its +inf block's sum is NaN)."""
    n = b1 - b0
    nb = bmax.shape[0]
    m = np.empty(n, dtype=bmax.dtype)
    nan = np.zeros(n, dtype=np.uint8)
    s = np.zeros(n, dtype=np.float64)
    inv = np.empty(n, dtype=bmax.dtype)
    for j in range(n):
        m[j] = -inf
    for ib in range(nb):
        row, nrow = bmax[ib, b0:b1], bnan[ib, b0:b1]
        for j in range(n):
            v = row[j]
            m[j] = v if v > m[j] else m[j]
            nan[j] |= nrow[j]
    posinf = np.empty(n, dtype=np.uint8)
    for j in range(n):
        posinf[j] = np.uint8(m[j] == inf and nan[j] == 0)
        m[j] = _finite_or(m[j], zero, inf)
    for ib in range(nb):
        row, srow = bmax[ib, b0:b1], bsum[ib, b0:b1]
        for j in range(n):
            f = exp(_finite_or(row[j], zero, inf) - m[j])
            row[j] = f
            s[j] += srow[j] * f
    _finish(s, m, bound, inv, b0, log_k, one, zero)
    for j in range(n):
        if posinf[j]:
            bound[b0 + j] = inf
            inv[j] = zero
    for ib in range(nb):
        row = bmax[ib, b0:b1]
        for j in range(n):  # inv == 0 (empty or +inf column): factor 0, never inf * 0
            row[j] = row[j] * inv[j] if inv[j] != zero else zero


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _scale_block(dst, k0, k1, factor, zero, tiny):
    for k in range(k0, k1):
        for j in range(dst.shape[1]):
            v = dst[k, j] * factor[j]
            dst[k, j] = zero if v < tiny else v  # no subnormal weights; NaN stays NaN


# ``weights`` None means in place (over ``log_w``), resolved at compile time: then src and dst
# below are one array, and since the helpers that write are inlined by Numba (inline="always"),
# LLVM sees one pointer and a distance-0 dependence, which vectorizes. Two arguments aliasing one
# buffer would fail LLVM's runtime overlap check and run the scalar loop (20x slower, measured).


# v4 splits the rows among threads: every pass streams whole rows. Block ib owns row ib of the
# (nblocks, B) tables bmax and bsum, so no two iterations write one slot; the merge is its own
# loop over column chunks. Three parallel regions, about 2 us each when the pool is warm; small
# inputs take the serial kernel (see _PARALLEL_MIN).
@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _kernel_v4(
    log_w, weights, bound, bmax, bnan, bsum, rows, sub, cols, log_k, zero, one, inf, tiny
):
    if weights is None:
        dst = log_w
    else:
        dst = weights
    K, B = log_w.shape
    nb = bmax.shape[0]
    for ib in prange(nb):
        k0, k1 = ib * rows, min(ib * rows + rows, K)
        _block_exp(log_w, dst, k0, k1, bmax[ib], bnan[ib], bsum[ib], zero, inf, sub)
    for c in prange((B + cols - 1) // cols):
        b0, b1 = c * cols, min(c * cols + cols, B)
        _combine(bmax, bnan, bsum, bound, b0, b1, log_k, zero, one, inf)
    for ib in prange(nb):
        _scale_block(dst, ib * rows, min(ib * rows + rows, K), bmax[ib], zero, tiny)


@njit(nogil=True, cache=True, error_model="numpy")
def _kernel_v4_serial(
    log_w, weights, bound, bmax, bnan, bsum, rows, sub, cols, log_k, zero, one, inf, tiny
):
    if weights is None:
        dst = log_w
    else:
        dst = weights
    K, B = log_w.shape
    for ib in range(bmax.shape[0]):
        k0, k1 = ib * rows, min(ib * rows + rows, K)
        _block_exp(log_w, dst, k0, k1, bmax[ib], bnan[ib], bsum[ib], zero, inf, sub)
    _combine(bmax, bnan, bsum, bound, 0, B, log_k, zero, one, inf)
    for ib in range(bmax.shape[0]):
        _scale_block(dst, ib * rows, min(ib * rows + rows, K), bmax[ib], zero, tiny)


def importance_weights_numba_v4(log_w, weights_out=None, *, rows=None):
    """Numba, row blocks, block-wise max and sum merged per column (input assumed valid).

    ``rows``: rows per block; default about _BLOCK_BYTES of log_w per block. It fixes the order
    of the sums, so results do not depend on the number of threads.
    """
    _prepare("importance_weights_numba_v4", log_w, weights_out)
    K, B = log_w.shape
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(
            f"importance_weights_numba_v4: expected rows to be an int >= 1, got {rows!r}."
        )
    dt = log_w.dtype.type
    if rows is None:
        rows = max(_SUM_BLOCK, _BLOCK_BYTES // (B * log_w.itemsize) // _SUM_BLOCK * _SUM_BLOCK)
    nb = -(-K // rows)
    bound = np.empty(B, dtype=log_w.dtype)  # (B,)
    bmax = np.empty((nb, B), dtype=log_w.dtype)  # (nblocks, B): block maxima, then factors
    bnan = np.empty((nb, B), dtype=np.uint8)  # (nblocks, B): NaN flags
    bsum = np.empty((nb, B), dtype=np.float64)  # (nblocks, B): block sums
    if weights_out is None:
        weights_out = np.empty_like(log_w)  # (K, B)
    dst = None if same_buffer(weights_out, log_w) else weights_out  # None: in place
    kernel = _kernel_v4 if K * B >= _PARALLEL_MIN else _kernel_v4_serial
    kernel(
        log_w,
        dst,
        bound,
        bmax,
        bnan,
        bsum,
        rows,
        _SUM_BLOCK,
        _COMBINE_COLS,
        np.float64(math.log(K)),
        dt(0),
        dt(1),
        dt(np.inf),
        dt(np.finfo(dt).tiny),
    )
    return bound, weights_out


# --------------------------------------------------------------------------------------------
# CuPy (kernels/cuda/importance_weights.cu; CuPy is imported only when this runs)
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = ("lvm_importance_weights_v1<float>", "lvm_importance_weights_v1<double>")
# Columns per block (one warp-wide row segment) and the row-slices per block: 32 while the
# column groups alone cannot fill the device, else 8.
_CUPY_COLS = 32


def importance_weights_cupy_v1(log_w, weights_out=None):
    """CuPy: blocks of 32 columns x TY row-slices, coalesced row reads, the slices' maxima and
    float64 sums combined in shared memory in a fixed order. Contract of
    ``importance_weights_ref`` on cupy arrays (types, dtypes, shapes, contiguity checked)."""
    func = "importance_weights_cupy_v1"
    _prepare(func, log_w, weights_out, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    K, B = log_w.shape
    if weights_out is None:
        weights_out = cupy.empty_like(log_w)  # (K, B)
    bound = cupy.empty(B, dtype=log_w.dtype)  # (B,)
    if B == 0:
        return bound, weights_out
    groups = -(-B // _CUPY_COLS)
    ty = 32 if groups < 4 * _cupy.sm_count() else 8
    ty = min(ty, _cupy.group_width(K))  # no idle row-slices when K is small
    name = _CUPY_NAMES[log_w.dtype == np.float64]
    kernel = _cupy.raw_module("importance_weights.cu", _CUPY_NAMES).get_function(name)
    kernel(
        (_cupy.grid(groups, 1),),
        (_CUPY_COLS, ty),
        (log_w, weights_out, bound, np.int64(K), np.int64(B), np.float64(math.log(K))),
    )
    return bound, weights_out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

# DEFAULT: numba_v4. Evidence, 2026-12-03, development VM (AMD EPYC Zen 4, 2 vCPUs, shared with
# other jobs that kept both cores busy), (K, B) = (5000, 1000) float32, one thread, CPU time
# of the thread, medians of 15: v4 (exp_nonpos) 4.3 ms [min 4.1], in place 3.9 [3.6]; v5 4.8
# [4.4], in place 4.9 [4.5] (benchmarks/lab); a one-thread copy 21-23 GB/s. compare_peers
# --threads 1 --clock cpu (same day, loaded): v4 at 34 % of the copy bandwidth (35 % in place),
# 10x NumPy, 6.7x PyTorch logsumexp + softmax.
# Nov 2026 (Zen 5 VM): 1 thread, CPU time, medians of 30: v4 (general exp) 3.93 ms, v1 4.47 ms,
# PyTorch 16.7 ms; 2 threads, wall time, quiet minute: v4 1.81 ms (22 GB/s read + written),
# PyTorch 7.3 ms, v1 3.2 ms (its two column halves stream at half the rate).
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", importance_weights_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v4", importance_weights_numba_v4, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", importance_weights_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
DEFAULT = default_variant(RECORDS, _FUNC)


# --------------------------------------------------------------------------------------------
# Public wrapper: pick the variant by backend (every variant checks its own arguments)
# --------------------------------------------------------------------------------------------


def importance_weights(log_w, weights_out=None, *, backend="numba"):
    """Per-column log-mean-exp over K and the normalized importance weights.

    Parameters
    ----------
    log_w : ndarray of shape (K, B), float32 or float64, C-contiguous
        Log importance weights; -inf entries are allowed (zero weight).
    weights_out : ndarray of shape (K, B), optional
        Receives the weights; may be ``log_w`` itself (overwritten in place), otherwise it must
        not overlap it.
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    bound : ndarray of shape (B,)
        log (1/K) sum_k exp(log_w[k]); -inf for an all -inf column.
    weights : ndarray of shape (K, B)
        softmax over K; all 0 for an all -inf column.

    Raises
    ------
    TypeError
        Not a NumPy array, dtype not float32/float64, or weights_out of another dtype.
    ValueError
        Not 2-D, K == 0, non-contiguous, or a weights_out of the wrong shape or overlapping.
    """
    return check_backend(backend, IMPLEMENTATIONS, _FUNC)(log_w, weights_out)
