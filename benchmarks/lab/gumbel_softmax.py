"""gumbel_softmax, forward variant 1: per-row shift, scale and normalization (lost to the
shipped v2).

v1 generates each chunk's Gumbels as v2 does, then works row by row: s = logits + g, its max
and argmax (``_scan_row``), d = (s - max) / tau in a per-row loop, one flat exp over the
chunk, the row sums and a per-row division. With C = 10 the per-row loops are 10 elements long,
so the two divisions per element run as scalar divisions (3-4 cycles each). The shipped v2
keeps only the row max and sum per row (each stored once per element of its row) and runs
every per-element operation as one vector loop over the chunk; its results agree with v1's to
the last bit but for the order of the row sums (C < 32).

Timings (float32, tau = 0.5, y preallocated; CPU time of one thread, medians of 15, development
VM, AMD EPYC Zen 4, 2 vCPUs shared with other jobs; 2026-12-03), against the Gumbel generator
bound of benchmarks/benchmarks/machine_bounds.py (Philox, two logs and an exp per element):

    (100000, 10)   v1 4.8 ms   v2 4.0 ms   bound 2.2 ms
    (10000, 512)   v1 16.5 ms  v2 15.0 ms  bound 10.9 ms

Run: ``python benchmarks/lab/gumbel_softmax.py`` checks v1 against the reference, then times v1
and the shipped default.
"""

import sys
from pathlib import Path

import numpy as np
from numba import njit, prange

from kernels import gumbel_softmax as G
from kernels.fastmath import exp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report

# Numba's on-disk cache re-imports a cached function's module by the name it was compiled
# under; tests load this file as lvmcore_lab_<name>: a run as a script answers to it too.
sys.modules.setdefault(f"lvmcore_lab_{Path(__file__).stem}", sys.modules[__name__])


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
        G._gumbels(buf, k0, k1, s0, s1, first)
        e0 = g0 - first * per
        for r in range(r0, r1):
            sr = buf[e0 + (r - r0) * c : e0 + (r - r0 + 1) * c]
            m, am = G._scan_row(logits[r], sr)
            if hard:
                yr = y[r]
                for j in range(c):
                    yr[j] = zero
                if am >= 0:
                    yr[am] = one
                else:  # no valid max: NaN, as the soft sample of such a row is
                    for j in range(c):
                        yr[j] = zero / zero
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
                tot = G._row_sum(yr)  # >= 1: the argmax term is exp(0) = 1
                for j in range(c):
                    yr[j] = yr[j] / tot


def gumbel_softmax_numba_v1(
    logits, tau, seed, stream=0, offset=0, hard=False, y_out=None, y_soft_out=None
):
    """Numba, fused noise + softmax, parallel over chunks of rows. Contract of
    ``gumbel_softmax_ref``."""
    logits, tau, seed, stream, offset, hard, y_out, y_soft_out = G._prepare(
        "gumbel_softmax_numba_v1", logits, tau, seed, stream, offset, hard, y_out, y_soft_out
    )
    n, c = logits.shape
    dtype = logits.dtype.type
    y = np.empty((n, c), logits.dtype) if y_out is None else y_out  # (N, C)
    if n == 0:
        return y
    soft = (not hard) or (y_soft_out is not None)
    y_soft = y if y_soft_out is None else y_soft_out  # (N, C)
    k0, k1, s0, s1 = G.key_words(seed, stream)
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
        G.per_block(logits.dtype),
        max(1, G._CHUNK // c),
        bool(hard),
        soft,
        y,
        y_soft,
    )
    return y


def check(rng):
    for dtype in (np.float32, np.float64):
        for shape in [(7, 2), (33, 10), (9, 513)]:
            logits = (2 * rng.standard_normal(shape)).astype(dtype)
            want = G.gumbel_softmax_ref(logits, 0.5, 1, 2, 3)
            got = gumbel_softmax_numba_v1(logits, 0.5, 1, 2, 3)
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
            hard = gumbel_softmax_numba_v1(logits, 0.5, 1, 2, 3, hard=True)
            np.testing.assert_array_equal(hard, G.gumbel_softmax_ref(logits, 0.5, 1, 2, 3, True))


def main():
    rng = np.random.default_rng(0)
    check(rng)
    for shape in [(100000, 10), (10000, 512)]:
        logits = rng.standard_normal(shape).astype(np.float32)
        y = np.empty_like(logits)
        report(
            f"{shape}",
            [
                (
                    "v1 (per-row passes)",
                    lambda: gumbel_softmax_numba_v1(logits, 0.5, 1, 0, 0, False, y),
                ),
                ("v2 (shipped)", lambda: G.gumbel_softmax_numba_v2(logits, 0.5, 1, 0, 0, False, y)),
            ],
        )


if __name__ == "__main__":
    main()
