"""importance_weights, variant 1: column chunks, three passes (lost to the shipped v4).

v1 gives every thread a run of columns (B split evenly), and makes three passes over its
chunk: the column maxima; e = exp(lw - m) stored and summed (float32 runs of 16 rows, then
float64); the scale by 1 / sum. No shared accumulation, no merge step. The shipped v4 splits
the rows instead: every pass streams whole rows, and a merge combines the block maxima and sums.
With column chunks, each thread reads a row in pieces (64 B to 2 KiB at a stride of B * 4
bytes), which streams at half the rate.

Timings ((K, B) = (5000, 1000) float32, weights_out preallocated; 2 vCPU AMD EPYC Zen 5 VM,
AVX-512, shared; Nov 2026):

    1 thread, CPU time, medians of 30:   v1 4.47 ms   v4 3.93 ms   PyTorch 16.7 ms
    2 threads, wall time, quiet minute:  v1 3.2 ms    v4 1.81 ms   PyTorch 7.3 ms

Run: ``python benchmarks/lab/importance_weights.py`` checks v1 against the reference, then
times v1 and the shipped default.
"""

import math
import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from kernels import importance_weights as IW
from kernels.fastmath import exp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report

# Numba's on-disk cache re-imports a cached function's module by the name it was compiled
# under; tests load this file as lvmcore_lab_<name>: a run as a script answers to it too.
sys.modules.setdefault(f"lvmcore_lab_{Path(__file__).stem}", sys.modules[__name__])


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
        work = log_w.copy()
        bound, weights = importance_weights_numba_v1(work, work)  # in place
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
            ("v4 (shipped)", lambda: IW.importance_weights_numba_v4(log_w, out)),
        ],
    )


if __name__ == "__main__":
    main()
