"""nearest_code, variant 1: serial tiles with a multi-threaded BLAS (lost to the shipped v2).

v1 walks the query tiles in one loop; each tile's GEMM uses the BLAS thread pool as it is
configured (2 threads) and the score walk runs on the calling thread. The shipped v2 runs the
tiles in a prange with BLAS held to one thread, so the two thread pools never run at once.

Timings (N = 65536, E = 64, float32, M = 512; development VM, AMD EPYC Zen 4, 2 vCPUs shared
with other jobs, OpenBLAS 0.3.30; 2026-11-21):

    quiet machine, min of 9:            v1 27.5 ms   v2 24.7 ms   (~10 % slower)
    cores contended, medians:           v1 469 ms    v2 48 ms     (OpenBLAS's spinning pool)

Run: ``python benchmarks/lab/nearest_code.py`` checks v1 against the reference (including
tiles that leave short last tiles and chunks), then times v1 and the shipped default.
"""

import sys
from pathlib import Path

import numpy as np
from numba import njit

from kernels import nearest_code as NC

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report

# Numba's on-disk cache re-imports a cached function's module by the name it was compiled
# under; tests load this file as lvmcore_lab_<name>: a run as a script answers to it too.
sys.modules.setdefault(f"lvmcore_lab_{Path(__file__).stem}", sys.modules[__name__])


@njit(cache=True)
def _nearest_code_v1(x, cb, cn, tile_n, tile_m, big, index, dist2):
    n = x.shape[0]
    buf = np.empty(tile_m * tile_n, dtype=x.dtype)
    best = np.empty(tile_n, dtype=x.dtype)
    bidx = np.empty(tile_n, dtype=np.int32)
    for n0 in range(0, n, tile_n):
        NC._tile(x, cb, cn, n0, min(n0 + tile_n, n), tile_m, big, buf, best, bidx, index, dist2)


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
        index, dist2 = nearest_code_numba_v1(x, codebook)
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_allclose(dist2, want_dist2, rtol=1e-5 if dtype == np.float32 else 1e-12)
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
            ("v2 (shipped)", lambda: NC.nearest_code_numba_v2(x, codebook)),
        ],
    )


if __name__ == "__main__":
    main()
