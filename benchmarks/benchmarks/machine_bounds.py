"""The machine's own limits for the kernels, measured on the threads the kernels run on.

Each kernel is compared with the one limit that binds it, measured in the same run:

- **read** and **copy bandwidth** (GB/s) for the memory-bound kernels (importance weights, the
  Bernoulli likelihood and its gradient): a 256 MiB float32 stream, summed (read) or copied
  (bytes read + bytes written), timed two ways, NumPy on one thread (``a.sum()``,
  ``np.copyto``) and a Numba ``prange`` over the configured threads (a vectorized sum; a copy
  loop that LLVM turns into ``memcpy``); the faster of the two is the limit.
- **generator bounds** (elements/s) for the kernels bound by the random numbers and their
  transcendentals: a Numba ``prange`` loop doing only the work every element needs, on the same
  threads, in chunks of ``CHUNK`` elements, with nothing read from or written to DRAM:

  - ``normal_bound``: reparameterized sampling. Per element one quarter of a Philox4x32-10
    block (a half for float64) and half a Box-Muller pair (log, sqrt, sincos): the engine's own
    vectorized generator ``kernels.philox._normals`` into an L1-resident buffer, then a sum of
    the buffer (the sink that keeps the work alive).
  - ``gumbel_bound``: Gumbel-Softmax. Per element a quarter Philox block, -log(-log u) (two
    logs), the softmax's exp and its normalization: ``kernels.philox._gumbels`` into the
    buffer, exp (``kernels.fastmath.exp_nonpos``, the kernel's) in place with its sum, then a
    division of every element by the sum (one sum per chunk: the per-row max and sums of the
    kernel, and reading the logits and writing y, are the kernel's overhead).

  The kernels call the same generators; what they do beyond the bound (reading the inputs,
  writing the outputs, the row max and sums, the division) is their overhead.
- **SGEMM rate** for nearest-code search: ``x @ E^T`` alone (no search), the faster of NumPy's
  chunked ``matmul(out=)`` on the configured BLAS threads and ``sgemm_tiles``: the kernel's own
  tiling (``kernels.nearest_code._tiles``: one-thread BLAS per worker, a ``prange`` over
  workers, an L2-sized block per GEMM) with the search left out.

Times are medians over ``repeat`` calls after two warm-up calls, on ``CLOCK``.
"""

import statistics
import time

import numpy as np
from numba import njit, prange

from kernels import nearest_code as _nc
from kernels.fastmath import exp_nonpos
from kernels.philox import _gumbels, _normals, key_words, per_block

__all__ = [
    "CHUNK",
    "CLOCK",
    "median_s",
    "read_copy_gbps",
    "copy_parallel",
    "normal_bound",
    "gumbel_bound",
    "sgemm_tiles",
]

# Elements per chunk of the generator bounds, as the fused kernels' chunks (L1-resident).
CHUNK = 4096
_STREAM_ELEMENTS = 1 << 26  # 256 MiB of float32


# The clock of every timing here: wall time, or (compare_peers --clock cpu, one thread) the CPU
# time of the calling thread, which a machine shared with other jobs disturbs far less.
CLOCK = time.perf_counter


def median_s(fn, repeat, warmup=2):
    """Median time of ``fn()`` in seconds, on ``CLOCK``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = CLOCK()
        fn()
        times.append(CLOCK() - t)
    return statistics.median(times)


@njit(cache=True, fastmath={"reassoc"})
def _sum_chunk(a):
    acc = a[0] - a[0]
    for i in range(a.size):
        acc += a[i]
    return acc


@njit(cache=True, parallel=True)
def _read(a, parts):
    n = a.size
    for c in prange(parts.size):
        parts[c] = _sum_chunk(a[c * n // parts.size : (c + 1) * n // parts.size])


@njit(cache=True, parallel=True)
def copy_parallel(a, b, nparts):
    n = a.size
    for c in prange(nparts):
        src = a[c * n // nparts : (c + 1) * n // nparts]
        dst = b[c * n // nparts : (c + 1) * n // nparts]
        for i in range(src.size):
            dst[i] = src[i]


def read_copy_gbps(threads, repeat):
    """(read GB/s, copy GB/s, detail): the faster of NumPy (one thread) and Numba (``threads``)
    on a 256 MiB float32 stream; copy counts the bytes read and written."""
    a = np.ones(_STREAM_ELEMENTS, dtype=np.float32)
    b = np.empty_like(a)
    parts = np.empty(max(1, threads), np.float32)
    t = {
        "read numpy": median_s(lambda: a.sum(), repeat),
        "read numba": median_s(lambda: _read(a, parts), repeat),
        "copy numpy": median_s(lambda: np.copyto(b, a), repeat),
        "copy numba": median_s(lambda: copy_parallel(a, b, max(1, threads)), repeat),
    }
    gbps = {k: (1 if k.startswith("read") else 2) * a.nbytes / v / 1e9 for k, v in t.items()}
    read = max(gbps["read numpy"], gbps["read numba"])
    copy = max(gbps["copy numpy"], gbps["copy numba"])
    return read, copy, gbps


@njit(cache=True, parallel=True)
def _normal_bound(n, chunk, k0, k1, s0, s1, per, sample):
    nch = (n + chunk - 1) // chunk
    parts = np.empty(nch, np.float64)
    for c in prange(nch):
        buf = np.empty(chunk, sample.dtype)
        _normals(buf, k0, k1, s0, s1, c * (chunk // per))
        parts[c] = _sum_chunk(buf)
    return parts.sum()


@njit(cache=True, fastmath={"reassoc"})
def _exp_sum(a, shift):
    """a <- exp(a - shift) and return the sum (reassoc vectorizes the sum; exp is strict)."""
    acc = a[0] - a[0]
    for i in range(a.size):
        e = exp_nonpos(a[i] - shift)
        a[i] = e
        acc += e
    return acc


@njit(cache=True)
def _normalize(a, total):
    for i in range(a.size):
        a[i] = a[i] / total


@njit(cache=True, parallel=True)
def _gumbel_bound(n, chunk, k0, k1, s0, s1, per, sample):
    nch = (n + chunk - 1) // chunk
    parts = np.empty(nch, np.float64)
    shift = sample.dtype.type(40)  # above every Gumbel: exp's argument stays <= 0
    for c in prange(nch):
        buf = np.empty(chunk, sample.dtype)
        _gumbels(buf, k0, k1, s0, s1, c * (chunk // per))
        _normalize(buf, _exp_sum(buf, shift))
        parts[c] = buf[0]
    return parts.sum()


def normal_bound(n, dtype=np.float32):
    """A function generating n standard normals as ``reparam_sample`` does, summed, nothing
    stored (see the module docstring)."""
    words = key_words(1, 0)
    per = per_block(dtype)
    sample = np.zeros(1, dtype)
    return lambda: _normal_bound(n, CHUNK, *words, per, sample)


def gumbel_bound(n, dtype=np.float32):
    """A function generating n Gumbels as ``gumbel_softmax`` does, exponentiating and
    normalizing them in an L1-resident buffer."""
    words = key_words(1, 0)
    per = per_block(dtype)
    sample = np.zeros(1, dtype)
    return lambda: _gumbel_bound(n, CHUNK, *words, per, sample)


@njit(cache=True, parallel=True)
def _sgemm_tiles(x, cb, tile_n, tile_m, workers):
    n = x.shape[0]
    m = cb.shape[0]
    ntiles = (n + tile_n - 1) // tile_n
    bufs = np.empty((workers, tile_m * tile_n), dtype=x.dtype)
    for w in prange(workers):
        for t in range(w * ntiles // workers, (w + 1) * ntiles // workers):
            n0 = t * tile_n
            n1 = min(n0 + tile_n, n)
            xt = x[n0:n1]
            for m0 in range(0, m, tile_m):
                m1 = min(m0 + tile_m, m)
                s = bufs[w][: (m1 - m0) * (n1 - n0)].reshape(m1 - m0, n1 - n0)
                np.dot(cb[m0:m1], xt.T, s)


def sgemm_tiles(x, codebook, workers):
    """A function computing every x.e of ``x @ codebook.T`` in the nearest-code kernel's tiles
    (``workers`` one-thread BLAS calls at a time, an L2-sized block each), with no search."""
    tile_n, tile_m = _nc._tiles(x.shape[0], codebook.shape[0], x.itemsize, workers)

    def run():
        with _nc._blas_controller().limit(limits=1, user_api="blas"):
            _sgemm_tiles(x, codebook, tile_n, tile_m, workers)

    return run
