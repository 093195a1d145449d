"""Nearest code: for each query row, the index of the closest codebook row and the squared distance.

Math
----
For queries ``x`` of shape (N, E) and a codebook ``e`` of shape (M, E):

    index[n] = argmin_m ||x_n - e_m||^2            dist2[n] = ||x_n - e_{index[n]}||^2

With ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2 and ||x_n||^2 the same for every m, the argmin is that
of the score ``s[n, m] = ||e_m||^2 - 2 x_n.e_m``, whose x.e part for a block of rows is one GEMM.
Cost: 2 N M E flops in the GEMM, about N M more for the scores and the running minimum.

Shapes
------
x (N, E), codebook (M, E), codebook_sqnorm (M,)  ->  index (N,) int64, dist2 (N,) in x's dtype.
N >= 0, M >= 1, E >= 1; float32 or float64, one dtype for all arrays.

Algorithm (every variant)
-------------------------
The N x M score matrix is never built. Queries go in tiles of TN rows and the codebook in chunks of
TM rows; for each (tile, chunk) one BLAS GEMM writes the *transposed* block

    S = (-2 e[m0:m1]) @ x[n0:n1].T                 # (TM, TN), a preallocated per-worker buffer

(the codebook scaled by -2 once per call: exact, so S is exactly -2 times the unscaled GEMM and a
score costs one add) and a running minimum walks S code by code, over the tile's queries:

    v = ||e_m||^2 + S[m, r];  if v < best[r]: best[r], bidx[r] = v, m

four codes per pass over best and bidx (v3; v2 took one, so loaded and stored both arrays per
code). The inner loop runs along contiguous queries with independent lanes, so LLVM turns it
into AVX-512 compare-and-masked-moves: 8.9 us for a 512 x 256 block in v2, ~15 G scores/s on one
core, ~20x the rate at which a one-thread SGEMM produces them at E = 64 (~0.7 G/s). The row-major (TN, TM) block with
a per-row argmin needs a horizontal reduction, which LLVM left scalar even with 16 explicit lanes:
114 us for the same block (13x slower), so that layout was dropped. Measured 2026-11-21 on the
development VM (AMD EPYC Zen 4, 2 vCPUs, 1 MiB L2 per core), min of 9 runs.

Tile size: the float32 block is TM * TN * 4 = 512 KiB (TN = 256, TM = 512), half of the 1 MiB L2
per core (the Emerald Rapids machine of PERF-NOTES has 2 MiB), leaving room for OpenBLAS's packed
panels (TM x E = 128 KiB and E x TN = 64 KiB), so the block the GEMM writes is read back from L2.
Float64 halves TM to keep the bytes. On the (shared, noisy) VM, TN in {64, 128, 256, 512} x TM in
{256, 512, 1024} all landed within noise of each other (M = 512 and 8192), so the L2 argument
picked it; TN = 64 with TM = 2048 (same bytes, but a GEMM only 64 wide) was ~2x slower. Tile
sizes are kernel arguments (``tile_n``, ``tile_m``); the wrapper shrinks TN when N is small so
that every worker gets a tile. Extra memory: workers * TM * TN floats plus (M,) norms, any N.

Numerics
--------
- The scores and the running minimum are computed in the input dtype; float32 never promotes
  (the -2 is applied to the codebook, exactly; the initial +inf is passed in as a dtype scalar).
  The scores are the same numbers as v2's ||e||^2 - (S + S): scaling a GEMM operand by a power
  of two scales every product and partial sum exactly.
- ``dist2`` is *not* taken from the expansion. ``||x||^2 + min_m s`` cancels catastrophically when
  x sits near a code: its absolute error is a few eps * (||x||^2 + ||e||^2), which at
  ||x - e||^2 ~ 0 is a 100 % relative error, and it can even come out negative (a clamp at 0 would
  only hide that rounding error, it would not fix it). Instead the distance to the chosen code is
  recomputed directly, sum_e (x_e - c_e)^2, accumulated in float64 (in vector partial sums, an
  order fixed by the compiled kernel) and rounded once to the dtype (E flops per row, N E in all,
  nothing next to the GEMM's 2 N M E). So dist2 is the exact squared distance to
  ``codebook[index]`` up to one rounding (float64: E ulp at worst), never negative.
- ``index`` is the exact argmin of the *computed* scores. It can differ from the true argmin only
  between codes whose true distances differ by less than the scores' rounding error,
  about E * eps * (||x|| ||e|| + ||e||^2) (E eps = 8e-6 for E = 64 in float32); on data with any
  margin it is the true nearest code.

Tie rule
--------
Among codes with equal *computed* scores the lowest index wins: codes are visited in increasing m
and only a strict ``<`` replaces the running best (the reference uses ``np.argmin``, which returns
the first occurrence). That alone does *not* make exact duplicate codes safe, because BLAS does
not compute identical rows of a GEMM identically: with OpenBLAS 0.3.30 (Haswell kernels) a
300 x 8 codebook of one repeated row gives ``codebook @ x.T`` rows 6-11, 18-23, ... that differ
from row 0 in the last bit, so a later copy can score lower. So the guarantee is made before the
search: exact duplicate rows of the codebook (equal as numbers, -0.0 == +0.0) are collapsed to
their first occurrence (one sort of the M row keys, see ``_first_of_duplicates``), the kernel
searches the distinct rows in their original order, and the result is mapped back. Hence:

- exact duplicate codes always return the lowest index of the group (any backend, any BLAS);
- distinct codes at the same true distance (x exactly midway, or codes differing only below the
  scores' rounding error) get no promise: either index may come out, and the choice may change
  with the BLAS library, the tile sizes or the thread count.

Validation
----------
x and codebook: 2-D NumPy arrays of one float dtype, E equal, M >= 1, E >= 1, both finite (NaN or
Inf is a ValueError). The codebook is checked up front. The reference checks x up front too; the
Numba variant checks it through the search: a NaN or Inf in a row of x makes that row's dist2 NaN
or inf (the search itself only compares and never indexes with a value), so a non-finite dist2
triggers the same check of x, with the same message, after the search (an isfinite pass over x
cost 2-3 % of the search at N = 65536, E = 64, M = 512). Non-C-contiguous inputs are copied (an
N E copy, small next to the GEMM). A squared distance that overflows the dtype (float32 data
near 1e19) is a ValueError, raised after the search.

Variants
--------
- ``nearest_code_ref``: plain NumPy, tiles of rows, ``matmul(out=)`` and ``argmin``. The oracle
  and the ``"numpy"`` backend. Allocates O(tile * M) (4 MiB of scores), never N x M.
- v1 (moved to benchmarks/lab/nearest_code.py): serial loop over tiles; each GEMM uses the BLAS
  thread pool as it is configured (2 threads), the score walk runs on one thread. Lost to v2:
  on a quiet machine ~10 % slower (min 27.5 vs 24.7 ms at M = 512), and when other work shares
  the cores, OpenBLAS's spinning pool makes it ~10x slower (median 469 vs 48 ms).
- v2 (moved to benchmarks/lab/nearest_code.py): v3's tiles and threads with the unscaled GEMM,
  one code per pass of the running minimum, a strict float64 dist2 chain and an isfinite pass
  over x up front; 85 % of the same tiles' GEMM alone at M = 512 against v3's 88-92 %.
- ``nearest_code_numba_v3``: ``prange`` over workers, each with its own block, best and index
  buffers and a contiguous run of tiles (no shared accumulation: every tile writes only its own
  output rows); BLAS limited to one thread for the call (threadpoolctl), so the two pools never
  run at once and each GEMM runs at one-core speed with no fork/join; the GEMM on the -2-scaled
  codebook and the four-code running minimum above. DEFAULT (the ``"numba"`` backend). The
  limit is process-wide while the call runs: BLAS work started meanwhile by another Python
  thread also runs on one thread.
- ``nearest_code_cupy_v1`` (kernels/cuda/nearest_code.cu): per tile of queries one cuBLAS GEMM
  (``cupy.matmul(out=)``) into a reused (tile, M) block of at most 64 MiB, then a kernel with a
  group of lanes per query: argmin by warp shuffles (lower index on equal scores), dist2 in
  float64 against the chosen code. Duplicate codes are collapsed on the host as above. The
  ``"cupy"`` backend; not yet run on a device.

Against the machine (N = 65536, E = 64, float32; numbers in the DEFAULT comment)
---------------------------------------------------------------------------------
The bound is the SGEMM rate of x @ E^T alone, the faster of NumPy's chunked matmul and the
kernel's own tiles without the search (``benchmarks/benchmarks/machine_bounds.sgemm_tiles``), timed
alternately with the kernel by ``benchmarks/compare_peers.py``. What the search adds on top of its
GEMMs: the running minimum (about 1 add, 1 compare and 2 selects per score, ~4 % of the GEMM at
E = 64), dist2 (~2 %), the duplicate check and norms of the codebook (<1 %). On one core (CPU
time) v3 reaches 89-93 % of the tiles' GEMM rate at M = 512 and 94-97 % at M = 8192 (v2: 85 %
and 95 %). Two threads: each worker runs its own one-thread GEMMs, so the fraction is the same
work split in two; the 2-thread figures are in the report of the comparison run.
The Nov 2026 comparison: v2 ran at 82-92 % of the same tiled GEMM without the search,
96-124 % of NumPy's chunked SGEMM, 4.4-5.2x torch.cdist + argmin and 1.3-1.6x FAISS 1.15.1
IndexFlatL2 (k = 1), which itself ran at 64-92 % of the SGEMM rate.
"""

import functools

import numba
import numpy as np
from numba import njit, prange

from ._checks import check_array, check_same_dtype
from ._registry import KernelRecord, default_variant, implementations, variants

__all__ = [
    "nearest_code_ref",
    "nearest_code_numba_v3",
    "nearest_code_cupy_v1",
    "RECORDS",
    "VARIANTS",
    "IMPLEMENTATIONS",
    "DEFAULT",
]

_FUNC = "nearest_code"

# Score block per worker, in bytes: half of the 1 MiB L2 per core of the project machine (see the
# module docstring). Queries per tile for the Numba kernels; codes per chunk follow from both.
_BLOCK_BYTES = 512 * 1024
_TILE_N = 256
# The reference's NumPy tiles: about 4 MiB of scores per tile (its speed does not matter much).
_REF_BLOCK_BYTES = 4 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Validation (public boundary; the kernels below assume valid, C-contiguous input)
# --------------------------------------------------------------------------------------------


def _check(x, codebook, codebook_sqnorm, lib="numpy", check_x=True):
    """The argument checks every variant runs (finiteness included: one pass over the codebook
    and, with ``check_x``, over x; a variant that skips x checks it through dist2 in
    ``_finish``)."""
    check_array(x, "x", _FUNC, ndim=2, lib=lib)
    check_array(codebook, "codebook", _FUNC, ndim=2, lib=lib)
    check_same_dtype([x, codebook], ["x", "codebook"], _FUNC)
    e = x.shape[1]
    m = codebook.shape[0]
    if e < 1:
        raise ValueError(
            f"{_FUNC}: expected x to have at least one column (E >= 1), got x of shape "
            f"{tuple(x.shape)}."
        )
    if codebook.shape[1] != e:
        raise ValueError(
            f"{_FUNC}: expected codebook.shape[1] == x.shape[1] ({e}), got codebook "
            f"of shape {tuple(codebook.shape)}."
        )
    if m < 1:
        raise ValueError(
            f"{_FUNC}: expected codebook to have at least one row, got codebook of "
            f"shape {tuple(codebook.shape)}."
        )
    if check_x:
        check_array(x, "x", _FUNC, lib=lib, finite=True)
    check_array(codebook, "codebook", _FUNC, lib=lib, finite=True)
    if codebook_sqnorm is not None:
        check_array(codebook_sqnorm, "codebook_sqnorm", _FUNC, lib=lib)
        if tuple(codebook_sqnorm.shape) != (m,):
            raise ValueError(
                f"{_FUNC}: expected codebook_sqnorm to have shape ({m}), got "
                f"{tuple(codebook_sqnorm.shape)}."
            )
        check_same_dtype([codebook, codebook_sqnorm], ["codebook", "codebook_sqnorm"], _FUNC)
        check_array(codebook_sqnorm, "codebook_sqnorm", _FUNC, lib=lib, finite=True)


def _prepare(x, codebook, codebook_sqnorm, check_x=True):
    """Check the arguments; return C-contiguous x, codebook, the (M,) norms and the outputs."""
    _check(x, codebook, codebook_sqnorm, check_x=check_x)
    n = x.shape[0]
    x = np.ascontiguousarray(x)
    codebook = np.ascontiguousarray(codebook)
    keep = _first_of_duplicates(codebook)  # (M',) or None
    if keep is not None:
        codebook = codebook[keep]  # (M', E)
        if codebook_sqnorm is not None:
            codebook_sqnorm = codebook_sqnorm[keep]
    if codebook_sqnorm is None:
        codebook_sqnorm = np.einsum("me,me->m", codebook, codebook)  # (M',)
    codebook_sqnorm = np.ascontiguousarray(codebook_sqnorm)
    index = np.empty(n, dtype=np.int64)  # (N,)
    dist2 = np.empty(n, dtype=x.dtype)  # (N,)
    return x, codebook, codebook_sqnorm, keep, index, dist2


def _first_of_duplicates(codebook):
    """Sorted indices of the first occurrence of every distinct row, or None if all differ.

    Rows are compared as bytes after ``+ 0``, which turns -0.0 into +0.0 (so numerically equal
    rows match; NaN cannot occur, the codebook was checked). Costs one sort of M row keys:
    0.1 ms at M = 512 and 2 ms at M = 8192 (E = 64), under 1 % of the search.
    """
    m, e = codebook.shape
    key = (codebook + codebook.dtype.type(0)).view(np.dtype((np.void, e * codebook.itemsize)))
    _, first = np.unique(key.ravel(), return_index=True)  # stable: first occurrences
    if first.size == m:
        return None
    return np.sort(first)


def _finish(x, keep, index, dist2):
    """Map indices back to the full codebook; raise if x holds NaN or Inf (a variant that did
    not check x up front: such a row's dist2 is NaN or inf), else if a squared distance
    overflowed (x and the codebook finite, a non-finite dist2 can only be that)."""
    bad = ~np.isfinite(dist2)
    if bad.any():
        check_array(x, "x", _FUNC, finite=True)
        raise ValueError(
            f"{_FUNC}: expected the squared distances to fit in {x.dtype}, got {int(bad.sum())} "
            f"rows whose squared distance overflows. Rescale x and codebook, or use float64."
        )
    if keep is not None:
        index[...] = keep[index]
    return index, dist2


def _tiles(n, m, itemsize, workers):
    """(tile_n, tile_m) for the Numba kernels: a _BLOCK_BYTES score block, every worker busy."""
    per_worker = -(-n // max(workers, 1))
    tile_n = max(16, min(_TILE_N, -(-per_worker // 16) * 16))
    tile_m = max(1, min(m, _BLOCK_BYTES // (tile_n * itemsize)))
    return tile_n, tile_m


# --------------------------------------------------------------------------------------------
# Reference (plain NumPy)
# --------------------------------------------------------------------------------------------


def nearest_code_ref(x, codebook, codebook_sqnorm=None):
    """Nearest codebook row for every row of ``x``, in plain NumPy (the oracle).

    Parameters
    ----------
    x : ndarray of shape (N, E), float32 or float64
        Queries. Must be finite.
    codebook : ndarray of shape (M, E), same dtype as x
        Codes, M >= 1. Must be finite.
    codebook_sqnorm : ndarray of shape (M,), same dtype, optional
        ``(codebook ** 2).sum(1)``, when the caller already has it (it is reused across calls
        with one codebook). It defines the scores, so it must be the codebook's row norms.

    Returns
    -------
    index : ndarray of shape (N,), int64
        ``argmin_m ||x_n - codebook_m||^2``; the lowest index among equal computed scores.
    dist2 : ndarray of shape (N,), x's dtype
        ``||x_n - codebook[index[n]]||^2``, recomputed directly (float64 sum, one rounding).

    Raises
    ------
    TypeError
        Not NumPy arrays, not float32/float64, or x and codebook of different dtypes.
    ValueError
        Not 2-D, E mismatch, M = 0 or E = 0, NaN/Inf in x or codebook, or overflowing distances.

    Notes
    -----
    Tiles of rows: ``S = x_tile @ codebook.T`` into a reused buffer, ``S = ||e||^2 - 2 S`` in
    place, ``np.argmin(S, axis=1)``. Memory is O(tile * M), never O(N M).
    """
    x, codebook, cn, keep, index, dist2 = _prepare(x, codebook, codebook_sqnorm)
    n, m = x.shape[0], codebook.shape[0]
    if n == 0:
        return index, dist2
    tile = max(1, min(n, _REF_BLOCK_BYTES // (m * x.itemsize)))
    buf = np.empty((tile, m), dtype=x.dtype)  # (tile, M)
    cbT = codebook.T  # (E, M)
    minus_two = x.dtype.type(-2)
    for n0 in range(0, n, tile):
        n1 = min(n0 + tile, n)
        s = buf[: n1 - n0]
        np.matmul(x[n0:n1], cbT, out=s)  # (tile, M)
        s *= minus_two  # exact
        s += cn
        k = np.argmin(s, axis=1)  # first minimum
        diff = x[n0:n1].astype(np.float64) - codebook[k].astype(np.float64)  # (tile, E)
        index[n0:n1] = k
        with np.errstate(over="ignore"):  # an overflow to inf is reported by _finish
            dist2[n0:n1] = np.einsum("ne,ne->n", diff, diff)
    return _finish(x, keep, index, dist2)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _sqdist64(a, b):
    """sum_e (a_e - b_e)^2 in float64. reassoc lets LLVM keep vector partial sums (one order per
    compiled kernel, so deterministic); a strict left-to-right float64 sum is a chain of E
    dependent adds, 4 cycles each, which cost ~10 % of the whole search at E = 64."""
    acc = 0.0
    for i in range(a.size):
        d = np.float64(a[i]) - np.float64(b[i])
        acc += d * d
    return acc


@njit(nogil=True, cache=True, inline="always")
def _scan(s, cn, m0, mb, nb, best, bidx):
    """Running minimum over the block s (mb, nb) = -2 e.x for codes m0 .. m0 + mb - 1: the
    score of code m at query r is cn[m] + s[m - m0, r]. Four codes per pass over the tile's
    best / bidx (one load and store of each per four codes), compared in increasing m with a
    strict < (the lowest index wins ties); vectorizes along r (independent lanes)."""
    j = 0
    while j + 4 <= mb:
        c0 = cn[m0 + j]
        c1 = cn[m0 + j + 1]
        c2 = cn[m0 + j + 2]
        c3 = cn[m0 + j + 3]
        i0 = np.int32(m0 + j)
        i1 = np.int32(m0 + j + 1)
        i2 = np.int32(m0 + j + 2)
        i3 = np.int32(m0 + j + 3)
        s0 = s[j]
        s1 = s[j + 1]
        s2 = s[j + 2]
        s3 = s[j + 3]
        for r in range(nb):
            b = best[r]
            k = bidx[r]
            v = c0 + s0[r]
            lt = v < b
            b = v if lt else b
            k = i0 if lt else k
            v = c1 + s1[r]
            lt = v < b
            b = v if lt else b
            k = i1 if lt else k
            v = c2 + s2[r]
            lt = v < b
            b = v if lt else b
            k = i2 if lt else k
            v = c3 + s3[r]
            lt = v < b
            b = v if lt else b
            k = i3 if lt else k
            best[r] = b
            bidx[r] = k
        j += 4
    while j < mb:
        c = cn[m0 + j]
        jj = np.int32(m0 + j)
        srow = s[j]
        for r in range(nb):
            v = c + srow[r]
            b = best[r]
            lt = v < b
            best[r] = v if lt else b
            bidx[r] = jj if lt else bidx[r]
        j += 1


@njit(nogil=True, cache=True, inline="always")
def _tile_v3(x, cb, cb2, cn, n0, n1, tile_m, big, buf, best, bidx, index, dist2):
    """Nearest code for queries n0:n1. cb2 = -2 cb (exact), so the GEMM writes -2 e.x and a
    score is one add; buf (>= tile_m * (n1 - n0),), best, bidx (>= n1 - n0,)."""
    m = cb.shape[0]
    nb = n1 - n0
    for r in range(nb):
        best[r] = big
        bidx[r] = 0
    xt = x[n0:n1]  # (nb, E)
    for m0 in range(0, m, tile_m):
        m1 = min(m0 + tile_m, m)
        s = buf[: (m1 - m0) * nb].reshape(m1 - m0, nb)  # (mb, nb)
        np.dot(cb2[m0:m1], xt.T, s)  # BLAS GEMM: -2 e.x
        _scan(s, cn, m0, m1 - m0, nb, best, bidx)
    for r in range(nb):
        k = bidx[r]
        index[n0 + r] = k
        dist2[n0 + r] = _sqdist64(x[n0 + r], cb[k])  # float64 on purpose: a once-rounded dist2


@njit(nogil=True, cache=True, parallel=True)
def _nearest_code_v3(x, cb, cb2, cn, tile_n, tile_m, big, workers, index, dist2):
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
            _tile_v3(
                x,
                cb,
                cb2,
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


@functools.cache
def _blas_controller():
    """threadpoolctl controller over the loaded BLAS libraries (built once: ~10 ms; a limit()
    on it then costs ~20 us). Numba's np.dot calls SciPy's BLAS, so load it first."""
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def nearest_code_numba_v3(x, codebook, codebook_sqnorm=None):
    """Nearest code; Numba, parallel tiles, one-thread BLAS, -2 folded into the GEMM. Contract
    of ``nearest_code_ref``."""
    # x's NaN/Inf are found through dist2 (a row with one gets a NaN or inf dist2) in _finish:
    # a pass over x up front (isfinite(x).all(), an N E mask) cost 2-3 % of the search
    x, codebook, cn, keep, index, dist2 = _prepare(x, codebook, codebook_sqnorm, check_x=False)
    if x.shape[0] == 0:
        return index, dist2
    workers = numba.get_num_threads()
    tile_n, tile_m = _tiles(x.shape[0], codebook.shape[0], x.itemsize, workers)
    cb2 = codebook * x.dtype.type(-2)  # (M', E), exact
    with _blas_controller().limit(limits=1, user_api="blas"):
        _nearest_code_v3(
            x, codebook, cb2, cn, tile_n, tile_m, x.dtype.type(np.inf), workers, index, dist2
        )
    return _finish(x, keep, index, dist2)


# --------------------------------------------------------------------------------------------
# CuPy (kernels/cuda/nearest_code.cu; CuPy is imported only when this runs)
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = ("lvm_nearest_code_v1<float>", "lvm_nearest_code_v1<double>")
# Bytes of the (tile, M) score block on the GPU: large enough that each cuBLAS GEMM is big
# (2048 queries at M = 8192 in float32), small next to device memory, independent of N.
_CUPY_BLOCK_BYTES = 64 * 1024 * 1024


def nearest_code_cupy_v1(x, codebook, codebook_sqnorm=None):
    """Nearest code on the GPU: per tile of queries one cuBLAS GEMM (``cupy.matmul``) into a
    reused (tile, M) buffer, then a kernel with a group of lanes per query for the argmin (lowest
    index on equal scores) and the float64 distance to the chosen code. Contract of
    ``nearest_code_ref`` on cupy arrays (validation included: finiteness costs one device
    reduction and a sync, duplicate detection one M x E copy to the host)."""
    _check(x, codebook, codebook_sqnorm, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    n, e = x.shape
    x = cupy.ascontiguousarray(x)
    codebook = cupy.ascontiguousarray(codebook)
    keep = _first_of_duplicates(cupy.asnumpy(codebook))  # the tie rule, decided on the host
    if keep is not None:
        keep = cupy.asarray(keep)  # (M',)
        codebook = codebook[keep]  # (M', E)
        if codebook_sqnorm is not None:
            codebook_sqnorm = codebook_sqnorm[keep]
    if codebook_sqnorm is None:
        codebook_sqnorm = (codebook * codebook).sum(axis=1)  # (M',)
    cn = cupy.ascontiguousarray(codebook_sqnorm)
    index = cupy.empty(n, dtype=np.int64)  # (N,)
    dist2 = cupy.empty(n, dtype=x.dtype)  # (N,)
    if n == 0:
        return index, dist2
    m = codebook.shape[0]
    tile = max(1, min(n, _CUPY_BLOCK_BYTES // (m * x.itemsize)))
    buf = cupy.empty((tile, m), dtype=x.dtype)  # (tile, M')
    cb_t = codebook.T  # (E, M')
    W = _cupy.group_width(max(m, e))
    kernel = _cupy.raw_module("nearest_code.cu", _CUPY_NAMES).get_function(
        _CUPY_NAMES[x.dtype == np.float64]
    )
    for n0 in range(0, n, tile):
        n1 = min(n0 + tile, n)
        s = buf[: n1 - n0]
        cupy.matmul(x[n0:n1], cb_t, out=s)  # cuBLAS
        kernel(
            (_cupy.grid((n1 - n0) * W, _cupy.THREADS),),
            (_cupy.THREADS,),
            (
                s,
                cn,
                x[n0:n1],
                codebook,
                index[n0:n1],
                dist2[n0:n1],
                np.int64(n1 - n0),
                np.int64(m),
                np.int64(e),
                np.int32(W),
            ),
        )
    bad = ~cupy.isfinite(dist2)
    if bool(bad.any()):
        raise ValueError(
            f"{_FUNC}: expected the squared distances to fit in {x.dtype}, got {int(bad.sum())} "
            f"rows whose squared distance overflows. Rescale x and codebook, or use float64."
        )
    if keep is not None:
        index = keep[index]
    return index, dist2


# DEFAULT: numba_v3. Evidence, 2026-12-03, development VM (AMD EPYC Zen 4, 2 vCPUs, shared with
# other jobs that kept both cores busy; OpenBLAS 0.3.30, torch 2.13, no FAISS installed),
# N = 65536, E = 64, float32, one thread (one-thread BLAS), CPU time of the thread, medians of
# 9-15, against the same tiles' GEMMs alone:
#                           M = 512          M = 8192
#   same tiles, GEMM only   47.6-50.6 ms     786-856 ms
#   numba_v3                51.6-56.7 (89-93 %)  829-901 (94-97 %)
#   numba_v2                58.7 (85 %)      853 (95 %)
#   NumPy SGEMM x @ e.T     50.8-66.2        958-1138     chunks of 4096 rows, out= reused
#   torch.cdist + argmin    180              3159         chunks of 8192 rows
# Nov 2026 (2 threads, quiet run): v2 27.7 / 393 ms, same tiles GEMM only 22.6 / 361, NumPy
# SGEMM 26.7 / 489, FAISS IndexFlatL2 k=1 41.8 / 529, torch.cdist 131 / 2061; v1 27.5 min vs v2
# 24.7 min, medians 469 vs 48 with the cores contended (v1's OpenBLAS pool spins).
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", nearest_code_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v3", nearest_code_numba_v3, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", nearest_code_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
DEFAULT = default_variant(RECORDS, _FUNC)
