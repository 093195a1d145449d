"""importance_weights, variants 1 and 5 (lost to the shipped v4).

v1 gives every thread a run of columns (B split evenly), and makes three passes over its
chunk: the column maxima; e = exp(lw - m) stored and summed (float32 runs of 16 rows, then
float64); the scale by 1 / sum. No shared accumulation, no merge step. The shipped v4 splits
the rows instead: every pass streams whole rows, and a merge combines the block maxima and sums.
With column chunks, each thread reads a row in pieces (64 B to 2 KiB at a stride of B * 4
bytes), which streams at half the rate.

v5 keeps v4's row blocks but stores nothing in its first pass: per block the column maxima, NaN
flags and float64 sums of exp(lw - block max); the merge gives each column its max m, the bound
and 1 / sum; the second pass writes w = exp(lw - m) / sum. log_w is read twice and the weights
written once (80 MB of DRAM traffic at (5000, 1000) float32 with a separate weights_out, write
allocation included, against v4's 100 MB: v4 writes the block-shifted exps, then reads and
rewrites them), but each element's exp is computed twice. Both take ``fastmath.exp_nonpos``.

Timings ((K, B) = (5000, 1000) float32, weights_out preallocated; 2 vCPU AMD EPYC Zen 5 VM,
AVX-512, shared; Nov 2026):

    1 thread, CPU time, medians of 30:   v1 4.47 ms   v4 3.93 ms   PyTorch 16.7 ms
    2 threads, wall time, quiet minute:  v1 3.2 ms    v4 1.81 ms   PyTorch 7.3 ms

v5 against v4 with exp_nonpos (1 thread, CPU time, medians of 15; development VM, AMD EPYC
Zen 4, 2 vCPUs shared with other jobs; 2026-12-03): separate weights_out v5 4.8 ms [min 4.4],
v4 4.3 [4.1]; in place v5 4.9 [4.5], v4 3.9 [3.6].

Run: ``python benchmarks/lab/importance_weights.py`` checks v1 and v5 against the reference,
then times them and the shipped default.
"""

import math
import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from kernels import importance_weights as IW
from kernels.fastmath import exp, exp_nonpos, log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report

# Numba's on-disk cache re-imports a cached function's module by the name it was compiled
# under; tests load this file as lvmcore_lab_<name>: a run as a script answers to it too.
sys.modules.setdefault(f"lvmcore_lab_{Path(__file__).stem}", sys.modules[__name__])
# v5 (see the module docstring). Pass 1 per block: read from DRAM once, then from L2; nothing
# written. The merge: per column the max m, the bound and 1 / sum. Pass 2 per block: the weights,
# written once. Every exp argument is <= 0 (or -inf or NaN); NaN and +inf columns are settled in
# the merge (see _combine_v5).


@njit(cache=True, error_model="numpy", inline="always")
def _block_stats(src, k0, k1, bmax, bnan, bsum, zero, inf, sub):
    """Rows k0..k1: bmax = the block's column maxima (raw), bnan = whether a column holds a
    NaN, bsum = the column sums of exp(lw - shift) in float64, shift = bmax if finite, 0 for an
    all -inf block, +inf for a block holding +inf (every argument <= 0 or NaN)."""
    B = src.shape[1]
    for j in range(B):
        bmax[j] = -inf
        bnan[j] = 0
        bsum[j] = 0.0
    for k in range(k0, k1):  # read from DRAM here; the block stays in L2 for the exp loop
        row = src[k]
        for j in range(B):
            v = row[j]
            bmax[j] = v if v > bmax[j] else bmax[j]
            bnan[j] |= np.uint8(v != v)
    shift = np.empty(B, dtype=src.dtype)
    s32 = np.zeros(B, dtype=src.dtype)
    for j in range(B):
        shift[j] = zero if bmax[j] == -inf else bmax[j]
    for r0 in range(k0, k1, sub):
        for k in range(r0, min(r0 + sub, k1)):
            row = src[k]
            for j in range(B):
                s32[j] += exp_nonpos(row[j] - shift[j])
        for j in range(B):  # sums of `sub` terms in the dtype, then in float64
            bsum[j] += s32[j]
            s32[j] = zero


@njit(cache=True, error_model="numpy")
def _combine_v5(bmax, bnan, bsum, bound, shift, inv, b0, b1, log_k, zero, one, inf):
    """Columns b0..b1: the column max, the bound and the pass-2 shift and scale.

    finite max m: s = sum over blocks of bsum * exp(block max - m) (all -inf blocks add 0),
    bound = log(s) + m - log K, shift m, inv 1 / s. All -inf column: bound -inf, weights 0.
    A NaN anywhere: bound NaN, inv NaN (every weight NaN). Else +inf present: bound +inf,
    shift +inf, inv 0, so the weights are NaN at the +inf entries (inf - inf) and 0 elsewhere,
    as the reference gives them (inf / inf and finite / inf)."""
    n = b1 - b0
    nb = bmax.shape[0]
    m = np.empty(n, dtype=bmax.dtype)
    nan = np.zeros(n, dtype=np.uint8)
    s = np.zeros(n, dtype=np.float64)
    for j in range(n):
        m[j] = -inf
    for ib in range(nb):
        row, nrow = bmax[ib, b0:b1], bnan[ib, b0:b1]
        for j in range(n):
            v = row[j]
            m[j] = v if v > m[j] else m[j]
            nan[j] |= nrow[j]
    for ib in range(nb):
        row, srow = bmax[ib, b0:b1], bsum[ib, b0:b1]
        for j in range(n):
            mj = m[j]
            if row[j] > -inf and mj < inf:  # finite block max <= finite m
                s[j] += srow[j] * exp_nonpos(np.float64(row[j]) - np.float64(mj))
    for j in range(n):
        mj = m[j]
        if nan[j]:
            bound[b0 + j] = zero / zero
            shift[b0 + j] = zero
            inv[b0 + j] = zero / zero
        elif mj == inf:
            bound[b0 + j] = inf
            shift[b0 + j] = inf
            inv[b0 + j] = zero
        elif mj == -inf:
            bound[b0 + j] = -inf
            shift[b0 + j] = zero
            inv[b0 + j] = zero
        else:
            sj = s[j]  # >= 1: the block holding the max adds exp(0) = 1 at least
            bound[b0 + j] = log(sj) + np.float64(mj) - log_k
            shift[b0 + j] = mj
            inv[b0 + j] = one / sj


@njit(cache=True, error_model="numpy", inline="always")
def _write_block(src, dst, k0, k1, shift, inv, zero, tiny):
    for k in range(k0, k1):
        row = src[k]
        out = dst[k]
        for j in range(src.shape[1]):
            v = exp_nonpos(row[j] - shift[j]) * inv[j]
            out[j] = zero if v < tiny else v  # no subnormal weights; NaN stays NaN


# As v4: block ib owns row ib of the (nblocks, B) tables; the merge is its own loop over column
# chunks; in place (weights None) is a compile-time case, so src and dst are one array.
@njit(cache=True, parallel=True, error_model="numpy")
def _kernel_v5(
    log_w,
    weights,
    bound,
    bmax,
    bnan,
    bsum,
    shift,
    inv,
    rows,
    sub,
    cols,
    log_k,
    zero,
    one,
    inf,
    tiny,
):
    if weights is None:
        dst = log_w
    else:
        dst = weights
    K, B = log_w.shape
    nb = bmax.shape[0]
    for ib in prange(nb):
        k0, k1 = ib * rows, min(ib * rows + rows, K)
        _block_stats(log_w, k0, k1, bmax[ib], bnan[ib], bsum[ib], zero, inf, sub)
    for c in prange((B + cols - 1) // cols):
        b0, b1 = c * cols, min(c * cols + cols, B)
        _combine_v5(bmax, bnan, bsum, bound, shift, inv, b0, b1, log_k, zero, one, inf)
    for ib in prange(nb):
        _write_block(log_w, dst, ib * rows, min(ib * rows + rows, K), shift, inv, zero, tiny)


@njit(cache=True, error_model="numpy")
def _kernel_v5_serial(
    log_w,
    weights,
    bound,
    bmax,
    bnan,
    bsum,
    shift,
    inv,
    rows,
    sub,
    cols,
    log_k,
    zero,
    one,
    inf,
    tiny,
):
    if weights is None:
        dst = log_w
    else:
        dst = weights
    K, B = log_w.shape
    for ib in range(bmax.shape[0]):
        k0, k1 = ib * rows, min(ib * rows + rows, K)
        _block_stats(log_w, k0, k1, bmax[ib], bnan[ib], bsum[ib], zero, inf, sub)
    _combine_v5(bmax, bnan, bsum, bound, shift, inv, 0, B, log_k, zero, one, inf)
    for ib in range(bmax.shape[0]):
        _write_block(log_w, dst, ib * rows, min(ib * rows + rows, K), shift, inv, zero, tiny)


def importance_weights_numba_v5(log_w, weights_out=None, *, rows=None):
    """Numba, two passes over row blocks (statistics, then weights), the exp computed in each
    (input assumed valid). ``rows`` as in v4; results do not depend on the thread count."""
    IW._prepare("importance_weights_numba_v5", log_w, weights_out)
    K, B = log_w.shape
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(
            f"importance_weights_numba_v5: expected rows to be an int >= 1, got {rows!r}."
        )
    dt = log_w.dtype.type
    if rows is None:
        rows = max(
            IW._SUM_BLOCK, IW._BLOCK_BYTES // (B * log_w.itemsize) // IW._SUM_BLOCK * IW._SUM_BLOCK
        )
    nb = -(-K // rows)
    bound = np.empty(B, dtype=log_w.dtype)  # (B,)
    bmax = np.empty((nb, B), dtype=log_w.dtype)  # (nblocks, B): block maxima
    bnan = np.empty((nb, B), dtype=np.uint8)  # (nblocks, B): NaN flags
    bsum = np.empty((nb, B), dtype=np.float64)  # (nblocks, B): block sums
    shift = np.empty(B, dtype=log_w.dtype)  # (B,)
    inv = np.empty(B, dtype=log_w.dtype)  # (B,)
    if weights_out is None:
        weights_out = np.empty_like(log_w)  # (K, B)
    dst = None if IW.same_buffer(weights_out, log_w) else weights_out  # None: in place
    kernel = _kernel_v5 if K * B >= IW._PARALLEL_MIN else _kernel_v5_serial
    kernel(
        log_w,
        dst,
        bound,
        bmax,
        bnan,
        bsum,
        shift,
        inv,
        rows,
        IW._SUM_BLOCK,
        IW._COMBINE_COLS,
        np.float64(math.log(K)),
        dt(0),
        dt(1),
        dt(np.inf),
        dt(np.finfo(dt).tiny),
    )
    return bound, weights_out


@njit(cache=True, error_model="numpy")
def _column_max(src, b0, b1, m, zero, inf):
    """m[j] = max_k src[k, b0 + j], made finite (0 for all -inf or +inf columns)."""
    n = b1 - b0
    for j in range(n):
        m[j] = -inf
    for k in range(src.shape[0]):
        row = src[k, b0:b1]
        for j in range(n):
            v = row[j]
            m[j] = v if v > m[j] else m[j]  # NaN never wins: it reaches the sum through exp
    for j in range(n):
        m[j] = IW._finite_or(m[j], zero, inf)


@njit(cache=True, error_model="numpy", inline="always")
def _chunk_v1(src, dst, b0, b1, bound, log_k, zero, one, inf, tiny, sub):
    """Columns b0..b1, all K rows: max pass, exp-store-sum pass, scale pass."""
    n = b1 - b0
    K = src.shape[0]
    m = np.empty(n, dtype=src.dtype)
    s32 = np.zeros(n, dtype=src.dtype)
    s64 = np.zeros(n, dtype=np.float64)
    inv = np.empty(n, dtype=src.dtype)
    _column_max(src, b0, b1, m, zero, inf)
    for k0 in range(0, K, sub):  # e = exp(lw - m), stored and summed
        for k in range(k0, min(k0 + sub, K)):
            row, out = src[k, b0:b1], dst[k, b0:b1]
            for j in range(n):
                e = exp(row[j] - m[j])
                out[j] = e
                s32[j] += e
        for j in range(n):  # sums of `sub` terms in the dtype, then in float64
            s64[j] += s32[j]
            s32[j] = zero
    IW._finish(s64, m, bound, inv, b0, log_k, one, zero)
    for k in range(K):
        out = dst[k, b0:b1]
        for j in range(n):
            v = out[j] * inv[j]
            out[j] = zero if v < tiny else v  # no subnormal weights; NaN stays NaN


@njit(cache=True, parallel=True, error_model="numpy")
def _kernel_v1(log_w, weights, bound, chunk, log_k, zero, one, inf, tiny, sub):
    if weights is None:
        dst = log_w
    else:
        dst = weights
    B = log_w.shape[1]
    for c in prange((B + chunk - 1) // chunk):  # each chunk owns its columns: no races
        _chunk_v1(
            log_w,
            dst,
            c * chunk,
            min(c * chunk + chunk, B),
            bound,
            log_k,
            zero,
            one,
            inf,
            tiny,
            sub,
        )


def importance_weights_numba_v1(log_w, weights_out=None, *, chunk=None):
    """Column chunks, three passes; contract of ``kernels.importance_weights`` (in place when
    ``weights_out is log_w``). ``chunk``: columns per task, default B split over the threads."""
    IW._prepare("importance_weights_numba_v1", log_w, weights_out)
    K, B = log_w.shape
    dt = log_w.dtype.type
    if chunk is None:
        chunk = max(16, -(-B // (numba.get_num_threads() * 16)) * 16)
    bound = np.empty(B, dtype=log_w.dtype)  # (B,)
    if weights_out is None:
        weights_out = np.empty_like(log_w)  # (K, B)
    dst = None if IW.same_buffer(weights_out, log_w) else weights_out  # None: in place
    _kernel_v1(
        log_w,
        dst,
        bound,
        chunk,
        np.float64(math.log(K)),
        dt(0),
        dt(1),
        dt(np.inf),
        dt(np.finfo(dt).tiny),
        IW._SUM_BLOCK,
    )
    return bound, weights_out


def check(rng):
    for dtype in (np.float32, np.float64):
        log_w = (5 * rng.standard_normal((130, 37)) - 100).astype(dtype)
        log_w[:, [0, 9]] = -np.inf
        want_b, want_w = IW.importance_weights_ref(log_w)
        tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
        for chunk in (None, 16):
            bound, weights = importance_weights_numba_v1(log_w, chunk=chunk)
            np.testing.assert_allclose(bound, want_b, **tol)
            np.testing.assert_allclose(weights, want_w, **tol)
        for rows in (None, 16):
            bound, weights = importance_weights_numba_v5(log_w, rows=rows)
            np.testing.assert_allclose(bound, want_b, **tol)
            np.testing.assert_allclose(weights, want_w, **tol)
        for variant in (importance_weights_numba_v1, importance_weights_numba_v5):
            work = log_w.copy()
            bound, weights = variant(work, work)  # in place
            np.testing.assert_allclose(weights, want_w, **tol)


def main():
    rng = np.random.default_rng(0)
    check(rng)
    log_w = (5 * rng.standard_normal((5000, 1000))).astype(np.float32)
    out = np.empty_like(log_w)
    report(
        "(5000, 1000)",
        [
            ("v1 (column chunks)", lambda: importance_weights_numba_v1(log_w, out)),
            ("v5 (exp twice)", lambda: importance_weights_numba_v5(log_w, out)),
            ("v4 (shipped)", lambda: IW.importance_weights_numba_v4(log_w, out)),
        ],
    )


if __name__ == "__main__":
    main()
