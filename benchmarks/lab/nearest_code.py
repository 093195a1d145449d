"""nearest_code, variants 1 and 2 (lost to the shipped v3).

v1 walks the query tiles in one loop; each tile's GEMM uses the BLAS thread pool as it is
configured (2 threads) and the score walk runs on the calling thread. v2 runs the tiles in a
prange with BLAS held to one thread, so the two thread pools never run at once; it lost to v1's
successor v3 (shipped), which keeps v2's tiles and adds: the -2 folded into the GEMM (the
codebook scaled by -2, exact, so a score is one add), a running minimum that takes four codes
per pass over the tile's best/index arrays, dist2 summed with vector partial sums (v2's strict
float64 chain of E dependent adds cost ~10 % of the search), and x's NaN/Inf found through dist2
instead of an isfinite pass over x up front.

v2 against v3 and the bare GEMM (N = 65536, E = 64, float32, CPU time of one thread, medians
of 9; development VM, AMD EPYC Zen 4, 2 vCPUs shared with other jobs; 2026-12-03):

    M = 512:   same tiles, GEMM only 49.7 ms; v2 58.7 ms (85 %); v3 53.9-55.6 ms (88-92 %)
    M = 8192:  same tiles, GEMM only 810 ms;  v2 853 ms (95 %);  v3 829-875 ms (94-97 %)

v1 against v2 (N = 65536, E = 64, float32, M = 512; development VM, AMD EPYC Zen 4, 2 vCPUs
shared with other jobs, OpenBLAS 0.3.30; 2026-11-21):

    quiet machine, min of 9:            v1 27.5 ms   v2 24.7 ms   (~10 % slower)
    cores contended, medians:           v1 469 ms    v2 48 ms     (OpenBLAS's spinning pool)

Run: ``python benchmarks/lab/nearest_code.py`` checks v1 and v2 against the reference
(including tiles that leave short last tiles and chunks), then times them and the shipped
default.
"""

import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from kernels import nearest_code as NC

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report

# Numba's on-disk cache re-imports a cached function's module by the name it was compiled
# under; tests load this file as lvmcore_lab_<name>: a run as a script answers to it too.
sys.modules.setdefault(f"lvmcore_lab_{Path(__file__).stem}", sys.modules[__name__])


@njit(cache=True, inline="always")
def _tile(x, cb, cn, n0, n1, tile_m, big, buf, best, bidx, index, dist2):
    """Nearest code for queries n0:n1. buf (>= tile_m * (n1 - n0),), best, bidx (>= n1 - n0,)."""
    e_dim = x.shape[1]
    m = cb.shape[0]
    nb = n1 - n0
    for r in range(nb):
        best[r] = big
        bidx[r] = 0
    xt = x[n0:n1]  # (nb, E)
    for m0 in range(0, m, tile_m):
        m1 = min(m0 + tile_m, m)
        s = buf[: (m1 - m0) * nb].reshape(m1 - m0, nb)  # (mb, nb)
        np.dot(cb[m0:m1], xt.T, s)  # BLAS GEMM
        for j in range(m1 - m0):
            c = cn[m0 + j]
            jj = np.int32(m0 + j)
            srow = s[j]
            # Vectorizes along r (independent lanes); strict < keeps the lowest index on ties.
            for r in range(nb):
                v = c - (srow[r] + srow[r])
                b = best[r]
                lt = v < b
                best[r] = v if lt else b
                bidx[r] = jj if lt else bidx[r]
    for r in range(nb):
        k = bidx[r]
        acc = 0.0  # float64 on purpose: E flops per row, buys a once-rounded dist2
        for i in range(e_dim):
            d = np.float64(x[n0 + r, i]) - np.float64(cb[k, i])
            acc += d * d
        index[n0 + r] = k
        dist2[n0 + r] = acc


@njit(cache=True, parallel=True)
def _nearest_code_v2(x, cb, cn, tile_n, tile_m, big, workers, index, dist2):
    n = x.shape[0]
    ntiles = (n + tile_n - 1) // tile_n
    bufs = np.empty((workers, tile_m * tile_n), dtype=x.dtype)
    bests = np.empty((workers, tile_n), dtype=x.dtype)
    bidxs = np.empty((workers, tile_n), dtype=np.int32)
    # One iteration per worker, each owning its scratch row and a contiguous run of tiles; tiles
    # write disjoint output rows, so nothing is shared.
    for w in prange(workers):
        for t in range(w * ntiles // workers, (w + 1) * ntiles // workers):
            n0 = t * tile_n
            _tile(
                x,
                cb,
                cn,
                n0,
                min(n0 + tile_n, n),
                tile_m,
                big,
                bufs[w],
                bests[w],
                bidxs[w],
                index,
                dist2,
            )


def nearest_code_numba_v2(x, codebook, codebook_sqnorm=None):
    """Parallel tiles, one-thread BLAS; contract of ``kernels.nearest_code.nearest_code_ref``."""
    x, codebook, cn, keep, index, dist2 = NC._prepare(x, codebook, codebook_sqnorm)
    if x.shape[0] == 0:
        return index, dist2
    workers = numba.get_num_threads()
    tile_n, tile_m = NC._tiles(x.shape[0], codebook.shape[0], x.itemsize, workers)
    with NC._blas_controller().limit(limits=1, user_api="blas"):
        _nearest_code_v2(
            x, codebook, cn, tile_n, tile_m, x.dtype.type(np.inf), workers, index, dist2
        )
    return NC._finish(x, keep, index, dist2)


@njit(cache=True)
def _nearest_code_v1(x, cb, cn, tile_n, tile_m, big, index, dist2):
    n = x.shape[0]
    buf = np.empty(tile_m * tile_n, dtype=x.dtype)
    best = np.empty(tile_n, dtype=x.dtype)
    bidx = np.empty(tile_n, dtype=np.int32)
    for n0 in range(0, n, tile_n):
        _tile(x, cb, cn, n0, min(n0 + tile_n, n), tile_m, big, buf, best, bidx, index, dist2)


def nearest_code_numba_v1(x, codebook, codebook_sqnorm=None):
    """Serial tiles, multi-threaded BLAS; contract of ``kernels.nearest_code.nearest_code_ref``."""
    x, codebook, cn, keep, index, dist2 = NC._prepare(x, codebook, codebook_sqnorm)
    if x.shape[0] == 0:
        return index, dist2
    tile_n, tile_m = NC._tiles(x.shape[0], codebook.shape[0], x.itemsize, 1)
    _nearest_code_v1(x, codebook, cn, tile_n, tile_m, x.dtype.type(np.inf), index, dist2)
    return NC._finish(x, keep, index, dist2)


def check(rng):
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((203, 5)).astype(dtype)
        codebook = rng.standard_normal((61, 5)).astype(dtype)
        want_index, want_dist2 = NC.nearest_code_ref(x, codebook)
        for variant in (nearest_code_numba_v1, nearest_code_numba_v2):
            index, dist2 = variant(x, codebook)
            np.testing.assert_array_equal(index, want_index)
            rtol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(dist2, want_dist2, rtol=rtol)
        cn = np.einsum("me,me->m", codebook, codebook)
        for tile_n, tile_m in [(16, 1), (16, 7), (48, 60), (208, 61), (16, 64)]:
            index = np.empty(203, dtype=np.int64)
            dist2 = np.empty(203, dtype=dtype)
            _nearest_code_v1(x, codebook, cn, tile_n, tile_m, dtype(np.inf), index, dist2)
            np.testing.assert_array_equal(index, want_index)


def main():
    rng = np.random.default_rng(0)
    check(rng)
    x = rng.standard_normal((65536, 64)).astype(np.float32)
    codebook = rng.standard_normal((512, 64)).astype(np.float32)
    report(
        "N=65536 M=512 E=64",
        [
            ("v1 (serial tiles)", lambda: nearest_code_numba_v1(x, codebook)),
            ("v2 (parallel tiles)", lambda: nearest_code_numba_v2(x, codebook)),
            ("v3 (shipped)", lambda: NC.nearest_code_numba_v3(x, codebook)),
        ],
    )


if __name__ == "__main__":
    main()
