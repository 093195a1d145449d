"""Philox4x32-10: the one counter-based random number generator of the engine.

Every kernel that needs noise draws element ``i``'s numbers from a Philox block whose counter is
derived from ``i`` alone, so the values do not depend on the thread count, the order of work, or
(later) the device.

The bijection (Salmon et al. 2011, Random123)
---------------------------------------------
A counter ``c = (c0, c1, c2, c3)`` and a key ``k = (k0, k1)``, all uint32, go through 10 rounds of

    (hi0, lo0) = mulhilo(0xD2511F53, c0)        # 32 x 32 -> 64-bit product, split in halves
    (hi1, lo1) = mulhilo(0xCD9E8D57, c2)
    c = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)

with the key bumped between rounds (before rounds 2..10) by the Weyl increments
``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85`` (mod 2**32). The four words of ``c`` after round 10 are
the output block ``(w0, w1, w2, w3)``. This reproduces Random123's ``philox4x32_R(10, ctr, key)``
and its published known-answer vectors.

Counter and key mapping (normative: a CUDA kernel must reproduce it bit for bit)
---------------------------------------------------------------------------------
``seed`` and ``stream`` are integers in [0, 2**64); ``b`` is a block index in [0, 2**64):

    key     = (seed & 0xffffffff,  seed >> 32)
    counter = (b & 0xffffffff,  b >> 32,  stream & 0xffffffff,  stream >> 32)

A flat output of ``n`` values drawn with element offset ``offset`` holds, at position ``j``, the
value of global element ``g = offset + j``. Element ``g`` lives in block ``b = g // E`` at slot
``s = g % E``, with ``E`` values per block: ``E = 4`` for float32 and ``E = 2`` for float64.
From the block's words ``(w0, w1, w2, w3)``:

=========  =========================  ==========================================================
 dtype      uniform / Gumbel, slot s   normal, slot s: Box-Muller of (u1, u2)
=========  =========================  ==========================================================
 float32    U32(w_s)                   (u1, u2) = (U32(w0), U32(w1)) for s = 0, 1;
                                       (u1, u2) = (U32(w2), U32(w3)) for s = 2, 3;
                                       even s takes z0, odd s takes z1
 float64    U64(w_{2s}, w_{2s+1})      (u1, u2) = (U64(w0, w1), U64(w2, w3));
                                       s = 0 takes z0, s = 1 takes z1
=========  =========================  ==========================================================

Conversions, chosen so that every step is exact (no rounding, so no FMA or evaluation-order
question on any device):

    U32(w)    = (float32(w >> 9) + 0.5f) * 2**-23              # 23 bits, in [2**-24, 1 - 2**-24]
    U64(a, b) = (float64(((a << 32) | b) >> 12) + 0.5) * 2**-52
                                                               # 52 bits, in [2**-53, 1 - 2**-53]

Both are midpoints of an equal-width grid, so they are never 0 or 1 and ``log(u)``,
``-log(-log(u))`` are always finite. (The 24-bit ``(w >> 8) * 2**-24 + 2**-25`` is *not* safe:
at ``w >> 8 = 2**24 - 1`` the sum needs 25 significant bits and rounds to exactly 1.0f; the same
happens to a 53-bit float64 variant.)

    Box-Muller:  r = sqrt(-2 log u1),  t = (2 pi) * u2,  z0 = r cos t,  z1 = r sin t
    Gumbel:      g = -log(-log u)

All arithmetic is in the output dtype (float32 paths stay float32; ``2 pi`` is rounded to the dtype
first). The tails are cut where the grid ends: |z| <= 5.77 in float32 and 8.57 in float64;
Gumbels lie in [-2.81, 16.6] (float32) and [-3.60, 36.7] (float64).

Exactness contract
------------------
- The uint32 words and the uniforms are bit-identical across ``*_ref``, ``*_numba`` (any thread
  count) and, by construction, a CUDA port.
- Normals and Gumbels call ``log``, ``cos``, ``sin``. The Numba fills (``normal_numba``,
  ``gumbel_numba``) run the fused kernels' vectorized generator (``_normals``, ``_gumbels``
  below), so the noise of a readable step and of a fused kernel with the same key are
  bit-identical; the scalar per-element helpers (``_normal_f32_at`` ...) agree with them to a
  few ulp. Across backends they
  agree to a few ulp only: NumPy's float32 ``log``/``cos``/``sin`` are its own SIMD loops and its
  float64 ``log`` is SVML on AVX-512, while Numba calls glibc's ``logf``/``log``; on the
  development machine 10-20 % of the float32 results of each function and 0.15 % of float64
  ``log`` results differ in the last bit, and the fills agree within 3 ulp of max(|x|, 1). This is
  the "agree to float rounding" of DESIGN.md.

Using the generator inside another Numba kernel
-----------------------------------------------
Compute the key words once on the host with ``key_words(seed, stream)`` and pass the four words
to the kernel. To reproduce ``normal_ref(seed, stream, K * B * Z, dtype, offset)[i]`` at flat
index ``i`` of a C-ordered (K, B, Z) array, use global element ``g = offset + i``:

    z = _normal_f32_at(k0, k1, s0, s1, g)             # float32; or _normal_f64_at for float64

The ``*_at`` helpers run one Philox block per element (4x, resp. 2x, the work of a fill) and agree
with the fills to <= 3 ulp of max(|x|, 1). A kernel that walks elements in order should instead
generate whole blocks into a buffer with ``_normals`` / ``_gumbels`` / ``_uniforms`` (below), as
the fills and the fused kernels do: their values are the fills' values bit for bit.

The vectorized in-kernel noise (``_normals``, ``_gumbels``)
------------------------------------------------------------
The scalar helpers above call libm per log/cos/sin, which blocks LLVM's loop vectorizer (25 M
float32 normals took ~0.14 s on 2 threads as a fill). The fused kernels (``kernels.reparam_sample``,
``kernels.gumbel_softmax``) instead generate their noise per chunk of about 4096 elements into
an L1-resident buffer with ``_normals(buf, k0, k1, s0, s1, first)`` /
``_gumbels(buf, k0, k1, s0, s1, first)``: the values of whole blocks ``first, first + 1, ...``
in the slot order above, dtype taken from ``buf`` (4 float32 or 2 float64 per block). The rounds
of Philox4x32-10 are written out in uint64 arithmetic (AVX-512 ``vpmuludq``), logs go through
``kernels.fastmath.log_f32/log_f64`` (<= 1 ulp), the radius through ``llvm.sqrt`` (``_sqrt``) and
the Box-Muller angle through ``_sincos``, a branch-free fdlibm kernel in float64 (quadrant by
integer arithmetic; a chain of ``if q == ...`` selects did not vectorize) whose float32 rounding
equals the correctly rounded sin/cos on all 2^23 angles the float32 mapping can produce. The
loops compile to 512-bit vectors: 4 M float32 normals in 8.5 ms on one core (``normal_numba``:
69-100 ms). The counter mapping is the one above, so words and uniforms are bit-identical
(tested against ``philox4x32_10_ref``, the Random123 known answers and ``uniform_ref``);
normals and Gumbels agree with ``normal_ref`` / ``gumbel_ref`` to <= 3 ulp of max(|x|, 1)
(measured max 2.8 float32 / 2.8 float64 ulp over 4e6 draws). The normal and Gumbel fills run
them too, in fixed runs of ``_VECTOR_RUN`` blocks per parallel task, the partial blocks at
either end through a one-block buffer (any window of the stream holds the same values): 250 K
float32 normals in 0.40 ms on one thread, against 3.5 ms for the scalar fill they replaced;
the uniform fill runs ``_uniforms`` the same way. These generators are
compiled with ``fastmath=False`` *explicitly*: Numba compiles a callee that leaves fastmath
unset with its caller's flags, so, called from a ``reassoc`` kernel, they came out with
``reassoc`` on every float op (seen in the IR), which licenses LLVM to rewrite the magic-number
rounding and the exact conversions.

Variants
--------
- ``*_ref``: NumPy, vectorized over blocks with uint64 arithmetic. The oracle and the
  ``"numpy"`` backend of the ``philox_uniform`` / ``philox_normal`` / ``philox_gumbel`` kernels.
- ``*_numba``: ``@njit(nogil=True, parallel=True)``, ``prange`` over blocks; each block writes its own E
  outputs, so there is no shared accumulation and no race. The ``"numba"`` backend (the only
  Numba fill: the vectorized in-kernel fills above are not thread-parallel and differ in the
  last bits).
- ``*_cupy`` (``kernels/cuda/philox.cuh``, fills in ``philox.cu``): the same mapping with
  ``__umulhi``, the exact conversions written with non-contracting ``__fadd_rn``/``__fmul_rn``,
  Box-Muller with ``logf``/``sincosf`` (float32) and ``log``/``sincos`` (float64); one thread per
  block. The ``"cupy"`` backend. Unverified on a device so far: run tests/test_kernels_cupy.py
  on a GPU.

Cost (Nov 2026 dev VM, shared and loaded): 25M float32 normals take about 0.28 s of CPU time
(one thread), i.e. about 0.14 s on 2 threads when the cores are free; uniforms about 0.08 s of
CPU. The normal fill is bound by the scalar libm calls (logf, cosf, sinf), not by Philox.

References
----------
J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC '11 (Philox, Sec. 3.2; constants in Random123's philox.h, known answers in tests/kat_vectors).
G. E. P. Box, M. E. Muller, "A note on the generation of random normal deviates", Ann. Math.
Statist. 29 (1958).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._checks import check_array, check_fill_args, check_u64
from ._registry import KernelRecord, implementations
from .fastmath import log_f32, log_f64

__all__ = [
    "philox4x32_10_ref",
    "philox4x32_10",
    "key_words",
    "uniform_ref",
    "uniform_numba",
    "normal_ref",
    "normal_numba",
    "gumbel_ref",
    "gumbel_numba",
    "uniform_cupy",
    "normal_cupy",
    "gumbel_cupy",
    "per_block",
    "RECORDS",
    "UNIFORM_IMPLEMENTATIONS",
    "NORMAL_IMPLEMENTATIONS",
    "GUMBEL_IMPLEMENTATIONS",
]

# Philox4x32 constants (Random123 philox.h). Numba freezes these module-level uint64 scalars into
# the compiled code, which is what we want for constants of the algorithm; keeping them uint64
# keeps every product in unsigned 64-bit arithmetic (uint64 mixed with int64 would give float64).
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_ROUNDS = 10

# Conversion constants, cast to their dtype so float32 code never promotes to float64.
_HALF_F32 = np.float32(0.5)
_TWO_M23 = np.float32(2.0**-23)
_MINUS_TWO_F32 = np.float32(-2.0)
_TWO_PI_F32 = np.float32(2.0 * math.pi)
_HALF_F64 = np.float64(0.5)
_TWO_M52 = np.float64(2.0**-52)
_MINUS_TWO_F64 = np.float64(-2.0)
_TWO_PI_F64 = np.float64(2.0 * math.pi)
_SHIFT9 = np.uint64(9)
_SHIFT12 = np.uint64(12)

# Values per Philox block (4 uint32 words): one word per float32, two words per float64.
_PER_BLOCK = {np.dtype(np.float32): 4, np.dtype(np.float64): 2}
_WORD_LIMIT = 1 << 32


def key_words(seed, stream):
    """Split (seed, stream) into the four uint32 words a kernel passes to ``_block``.

    Parameters
    ----------
    seed, stream : int in [0, 2**64)

    Returns
    -------
    k0, k1, s0, s1 : numpy.uint32
        ``key = (k0, k1)`` = low and high halves of ``seed``; ``(s0, s1)`` = low and high halves
        of ``stream``, which fill counter words 2 and 3.
    """
    seed = check_u64(seed, "seed", "key_words")
    stream = check_u64(stream, "stream", "key_words")
    return (
        np.uint32(seed & 0xFFFFFFFF),
        np.uint32(seed >> 32),
        np.uint32(stream & 0xFFFFFFFF),
        np.uint32(stream >> 32),
    )


# --------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------


def philox4x32_10_ref(counter, key):
    """Philox4x32-10 on many counters at once (NumPy, uint64 arithmetic).

    Parameters
    ----------
    counter : ndarray of shape (N, 4), uint32
    key : ndarray of shape (N, 2) or (2,), uint32

    Returns
    -------
    out : ndarray of shape (N, 4), uint32
    """
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.dtype != np.uint32 or counter.ndim != 2 or counter.shape[1] != 4:
        raise ValueError(
            f"philox4x32_10_ref: expected counter to be a uint32 array of shape "
            f"(N, 4), got {counter.dtype} of shape {counter.shape}."
        )
    if key.dtype != np.uint32 or key.shape not in ((2,), (counter.shape[0], 2)):
        raise ValueError(
            f"philox4x32_10_ref: expected key to be a uint32 array of shape (2,) or "
            f"({counter.shape[0]}, 2), got {key.dtype} of shape {key.shape}."
        )
    c0, c1, c2, c3 = (counter[:, j].astype(np.uint64) for j in range(4))  # (N,) each
    k0 = key[..., 0].astype(np.uint64)  # () or (N,)
    k1 = key[..., 1].astype(np.uint64)
    for r in range(_ROUNDS):
        if r > 0:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = _M0 * c0  # < 2**64: exact 32 x 32 -> 64 product
        p1 = _M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32) ^ c1 ^ k0,
            p1 & _MASK32,
            (p0 >> _SHIFT32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)  # (N, 4)


def _words_ref(seed, stream, first_block, nblocks):
    """Output words of blocks first_block .. first_block + nblocks - 1, shape (nblocks, 4)."""
    b = np.arange(nblocks, dtype=np.uint64) + np.uint64(first_block)  # (nblocks,)
    counter = np.empty((nblocks, 4), dtype=np.uint32)
    counter[:, 0] = b & _MASK32
    counter[:, 1] = b >> _SHIFT32
    counter[:, 2] = stream & 0xFFFFFFFF
    counter[:, 3] = stream >> 32
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    return philox4x32_10_ref(counter, key)


def _uniform_f32_ref(w):
    return ((w >> np.uint32(9)).astype(np.float32) + _HALF_F32) * _TWO_M23


def _uniform_f64_ref(a, b):
    x = ((a.astype(np.uint64) << _SHIFT32) | b.astype(np.uint64)) >> _SHIFT12
    return (x.astype(np.float64) + _HALF_F64) * _TWO_M52


def _uniforms_per_block_ref(words, dtype):
    """(nblocks, 4) words -> (nblocks, E) uniforms in the slot order of the module docstring."""
    if dtype == np.float32:
        return _uniform_f32_ref(words)  # (nblocks, 4)
    return np.stack(
        [_uniform_f64_ref(words[:, 0], words[:, 1]), _uniform_f64_ref(words[:, 2], words[:, 3])],
        axis=1,
    )  # (nblocks, 2)


def _fill_ref(kind, func, seed, stream, n, dtype, offset, out):
    seed, stream, n, dtype, offset = check_fill_args(func, seed, stream, n, dtype, offset, out)
    if out is None:
        out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    per = _PER_BLOCK[dtype]
    first = offset // per
    nblocks = (offset + n - 1) // per - first + 1
    u = _uniforms_per_block_ref(_words_ref(seed, stream, first, nblocks), dtype)  # (nblocks, E)
    if kind == "uniform":
        values = u
    elif kind == "gumbel":
        values = -np.log(-np.log(u))
    else:
        minus_two, two_pi = (
            (_MINUS_TWO_F32, _TWO_PI_F32) if dtype == np.float32 else (_MINUS_TWO_F64, _TWO_PI_F64)
        )
        u1, u2 = u[:, 0::2], u[:, 1::2]  # (nblocks, E / 2)
        r = np.sqrt(minus_two * np.log(u1))
        t = two_pi * u2
        values = np.empty_like(u)
        values[:, 0::2] = r * np.cos(t)
        values[:, 1::2] = r * np.sin(t)
    start = offset - first * per
    out[:] = values.reshape(-1)[start : start + n]
    return out


def uniform_ref(seed, stream, n, dtype, offset=0, *, out=None):
    """Uniforms in the open interval (0, 1), NumPy reference.

    Parameters
    ----------
    seed, stream : int in [0, 2**64)
        Philox key and counter words 2-3 (see the module docstring for the exact mapping).
    n : int
        Number of values.
    dtype : {numpy.float32, numpy.float64}
    offset : int, default 0
        Global index of the first element: the result equals elements ``offset .. offset+n-1``
        of the sequence for (seed, stream).
    out : ndarray of shape (n,), optional
        Preallocated contiguous output of dtype ``dtype``.

    Returns
    -------
    out : ndarray of shape (n,)
    """
    return _fill_ref("uniform", "uniform_ref", seed, stream, n, dtype, offset, out)


def normal_ref(seed, stream, n, dtype, offset=0, *, out=None):
    """Standard normals by Box-Muller, NumPy reference. Arguments as ``uniform_ref``."""
    return _fill_ref("normal", "normal_ref", seed, stream, n, dtype, offset, out)


def gumbel_ref(seed, stream, n, dtype, offset=0, *, out=None):
    """Standard Gumbels ``-log(-log u)``, NumPy reference. Arguments as ``uniform_ref``."""
    return _fill_ref("gumbel", "gumbel_ref", seed, stream, n, dtype, offset, out)


# --------------------------------------------------------------------------------------------
# Numba: scalar helpers (callable from other @njit kernels), then the fill kernels
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, inline="always")
def _rounds(c0, c1, c2, c3, k0, k1):
    """The ten Philox4x32 rounds on uint64 words holding 32-bit values.

    Everything stays in uint64: the products of two 32-bit values are exact, and masks bring
    sums back to 32 bits. Never mix in a signed integer (uint64 op int64 -> float64 in Numba).
    Inlined into its callers so that their loops over blocks vectorize."""
    for r in range(_ROUNDS):
        if r > 0:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _SHIFT32) ^ c1 ^ k0
        n2 = (p0 >> _SHIFT32) ^ c3 ^ k1
        c1 = p1 & _MASK32
        c3 = p0 & _MASK32
        c0 = n0
        c2 = n2
    return c0, c1, c2, c3


@njit(nogil=True, cache=True)
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of one counter (c0, c1, c2, c3) under key (k0, k1) -> 4 uint32 words."""
    w0, w1, w2, w3 = _rounds(
        np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3), np.uint64(k0), np.uint64(k1)
    )
    return np.uint32(w0), np.uint32(w1), np.uint32(w2), np.uint32(w3)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of one counter under one key, from Python (Numba kernels call the
    private ``_philox4x32_10`` or ``_block``).

    Parameters
    ----------
    c0, c1, c2, c3 : int in [0, 2**32)
        Counter words.
    k0, k1 : int in [0, 2**32)
        Key words.

    Returns
    -------
    w0, w1, w2, w3 : numpy.uint32
    """
    args = {"c0": c0, "c1": c1, "c2": c2, "c3": c3, "k0": k0, "k1": k1}
    words = [check_u64(v, name, "philox4x32_10", limit=_WORD_LIMIT) for name, v in args.items()]
    return _philox4x32_10(*(np.uint32(w) for w in words))


@njit(nogil=True, cache=True, inline="always")
def _philox_words(b, s0, s1, k0, k1):
    """Words of block ``b`` as uint64 (counter (b mod 2^32, b >> 32, s0, s1), key (k0, k1), all
    uint64 holding 32-bit values): the form for kernels whose loops over blocks vectorize."""
    return _rounds(b & _MASK32, b >> _SHIFT32, s0, s1, k0, k1)


def per_block(dtype):
    """Elements one Philox block yields: 4 for float32, 2 for float64."""
    try:
        got = np.dtype(dtype)
    except TypeError:
        got = None
    if dtype is None or got not in _PER_BLOCK:
        raise TypeError(
            f"per_block: expected dtype to be float32 or float64, got {dtype!r}. Pass "
            f"numpy.float32 or numpy.float64."
        )
    return _PER_BLOCK[got]


def _fill_by_dtype(fill_f32, fill_f64, doc):
    """One fill ``f(buf, k0, k1, s0, s1, first)`` that picks the float32 or float64 block
    fill from ``buf``'s dtype: at typing time inside @njit code (an overload), at run time
    from Python."""

    def fill(buf, k0, k1, s0, s1, first):
        (fill_f32 if buf.dtype == np.float32 else fill_f64)(buf, k0, k1, s0, s1, first)

    @overload(fill)
    def _fill_overload(buf, k0, k1, s0, s1, first):
        if buf.dtype == types.float32:
            return lambda buf, k0, k1, s0, s1, first: fill_f32(buf, k0, k1, s0, s1, first)
        if buf.dtype == types.float64:
            return lambda buf, k0, k1, s0, s1, first: fill_f64(buf, k0, k1, s0, s1, first)
        return None

    fill.__doc__ = doc
    return fill


@njit(nogil=True, cache=True)
def _block(k0, k1, s0, s1, b):
    """Words of block ``b`` (int, >= 0) for key words (k0, k1) and stream words (s0, s1)."""
    ub = np.uint64(b)
    return _philox4x32_10(ub & _MASK32, ub >> _SHIFT32, s0, s1, k0, k1)


@njit(nogil=True, cache=True, inline="always")
def _uniform01_f32(w):
    """uint32 word -> float32 in [2**-24, 1 - 2**-24]: (float32(w >> 9) + 0.5) * 2**-23, exact."""
    return (np.float32(np.uint64(w) >> _SHIFT9) + _HALF_F32) * _TWO_M23


@njit(nogil=True, cache=True, inline="always")
def _uniform01_f64(a, b):
    """Two uint32 words -> float64 in [2**-53, 1 - 2**-53], exact (a supplies the high bits)."""
    x = ((np.uint64(a) << _SHIFT32) | np.uint64(b)) >> _SHIFT12
    return (np.float64(x) + _HALF_F64) * _TWO_M52


@njit(nogil=True, cache=True)
def _normal_pair_f32(w0, w1):
    """Box-Muller in float32: radius from word w0, angle from word w1 -> (z0, z1)."""
    r = math.sqrt(_MINUS_TWO_F32 * math.log(_uniform01_f32(w0)))
    t = _TWO_PI_F32 * _uniform01_f32(w1)
    return r * math.cos(t), r * math.sin(t)


@njit(nogil=True, cache=True)
def _normal_pair_f64(w0, w1, w2, w3):
    """Box-Muller in float64: radius from words (w0, w1), angle from (w2, w3) -> (z0, z1)."""
    r = math.sqrt(_MINUS_TWO_F64 * math.log(_uniform01_f64(w0, w1)))
    t = _TWO_PI_F64 * _uniform01_f64(w2, w3)
    return r * math.cos(t), r * math.sin(t)


@njit(nogil=True, cache=True)
def _gumbel_f32(w):
    return -math.log(-math.log(_uniform01_f32(w)))


@njit(nogil=True, cache=True)
def _gumbel_f64(a, b):
    return -math.log(-math.log(_uniform01_f64(a, b)))


@njit(nogil=True, cache=True)
def _pick4(w0, w1, w2, w3, s):
    if s == 0:
        return w0
    if s == 1:
        return w1
    if s == 2:
        return w2
    return w3


@njit(nogil=True, cache=True)
def _uniform_f32_at(k0, k1, s0, s1, g):
    """float32 uniform of global element g (block g // 4, word g % 4)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 4)
    return _uniform01_f32(_pick4(w0, w1, w2, w3, g % 4))


@njit(nogil=True, cache=True)
def _gumbel_f32_at(k0, k1, s0, s1, g):
    """float32 Gumbel of global element g (block g // 4, word g % 4)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 4)
    return _gumbel_f32(_pick4(w0, w1, w2, w3, g % 4))


@njit(nogil=True, cache=True)
def _normal_f32_at(k0, k1, s0, s1, g):
    """float32 normal of global element g (block g // 4; pair (g % 4) // 2; cos if g even)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 4)
    if g % 4 < 2:
        z0, z1 = _normal_pair_f32(w0, w1)
    else:
        z0, z1 = _normal_pair_f32(w2, w3)
    return z0 if g % 2 == 0 else z1


@njit(nogil=True, cache=True)
def _uniform_f64_at(k0, k1, s0, s1, g):
    """float64 uniform of global element g (block g // 2, words 2 (g % 2) and 2 (g % 2) + 1)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 2)
    if g % 2 == 0:
        return _uniform01_f64(w0, w1)
    return _uniform01_f64(w2, w3)


@njit(nogil=True, cache=True)
def _gumbel_f64_at(k0, k1, s0, s1, g):
    """float64 Gumbel of global element g (same words as ``_uniform_f64_at``)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 2)
    if g % 2 == 0:
        return _gumbel_f64(w0, w1)
    return _gumbel_f64(w2, w3)


@njit(nogil=True, cache=True)
def _normal_f64_at(k0, k1, s0, s1, g):
    """float64 normal of global element g (block g // 2; cos if g even, sin if odd)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 2)
    z0, z1 = _normal_pair_f64(w0, w1, w2, w3)
    return z0 if g % 2 == 0 else z1


# kind codes of the fill kernels
_UNIFORM, _NORMAL, _GUMBEL = 0, 1, 2


# Blocks per parallel task of the fills: fixed, so the result does not depend on the thread
# count (each task writes its own slice of out).
_VECTOR_RUN = 1024


@njit(nogil=True, cache=True)
def _whole_blocks(buf, k0, k1, s0, s1, first, kind):
    """buf <- the values of whole blocks first .. of the given kind (the fused kernels')."""
    if kind == _NORMAL:
        _normals(buf, k0, k1, s0, s1, first)
    elif kind == _GUMBEL:
        _gumbels(buf, k0, k1, s0, s1, first)
    else:
        _uniforms(buf, k0, k1, s0, s1, first)


@njit(nogil=True, cache=True, parallel=True)
def _fill(out, k0, k1, s0, s1, offset, kind):
    # out: (n,) float32 or float64 = elements offset .. offset + n - 1, per = 4 resp. 2 values per
    # block. Whole blocks in fixed runs of _VECTOR_RUN blocks per prange task (each task writes
    # only its own slice: no races, and the result is independent of the thread count); the
    # partial blocks at either end (fewer than per elements each) through a one-block buffer, so
    # that any window of the stream holds the same values.
    per = 16 // out.itemsize
    n = out.size
    head = min((-offset) % per, n)  # elements before the first whole block
    nfull = (n - head) // per
    first = (offset + head) // per
    one = np.empty(per, dtype=out.dtype)
    for j in range(head):
        g = offset + j
        _whole_blocks(one, k0, k1, s0, s1, g // per, kind)
        out[j] = one[g % per]
    for j in range(head + per * nfull, n):
        g = offset + j
        _whole_blocks(one, k0, k1, s0, s1, g // per, kind)
        out[j] = one[g % per]
    for t in prange((nfull + _VECTOR_RUN - 1) // _VECTOR_RUN):
        b0 = t * _VECTOR_RUN
        seg = out[head + per * b0 : head + per * min(b0 + _VECTOR_RUN, nfull)]
        _whole_blocks(seg, k0, k1, s0, s1, first + b0, kind)


def _fill_numba(kind, func, seed, stream, n, dtype, offset, out):
    seed, stream, n, dtype, offset = check_fill_args(func, seed, stream, n, dtype, offset, out)
    if out is None:
        out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    k0, k1, s0, s1 = key_words(seed, stream)
    _fill(out, k0, k1, s0, s1, np.int64(offset), kind)
    return out


def uniform_numba(seed, stream, n, dtype, offset=0, *, out=None):
    """Uniforms in (0, 1), Numba, parallel over blocks. Signature and bits of ``uniform_ref``."""
    return _fill_numba(_UNIFORM, "uniform_numba", seed, stream, n, dtype, offset, out)


def normal_numba(seed, stream, n, dtype, offset=0, *, out=None):
    """Standard normals, Numba. Signature of ``normal_ref``; values agree to a few ulp."""
    return _fill_numba(_NORMAL, "normal_numba", seed, stream, n, dtype, offset, out)


def gumbel_numba(seed, stream, n, dtype, offset=0, *, out=None):
    """Standard Gumbels, Numba. Signature of ``gumbel_ref``; values agree to a few ulp."""
    return _fill_numba(_GUMBEL, "gumbel_numba", seed, stream, n, dtype, offset, out)


# --------------------------------------------------------------------------------------------
# Vectorized in-kernel noise for the fused kernels (see the module docstring): Box-Muller and
# Gumbels on the vectorizable words of _philox_words, uniforms bit-identical to the fills above.
# Straight-line helpers, inlined into the block loops; fastmath=False is explicit on the loops
# so that Numba's flag inheritance cannot give them a caller's fastmath flags.
# --------------------------------------------------------------------------------------------

# fdlibm k_sin.c / k_cos.c (|r| <= pi/4) and e_rem_pio2.c (pi/2 = PIO2_1 + PIO2_1T, PIO2_1 with
# 33 significant bits, so n * PIO2_1 is exact for the n <= 4 that occur here).
_INVPIO2 = np.float64(6.36619772367581382433e-01)
_PIO2_1 = np.float64(1.57079632673412561417e00)
_PIO2_1T = np.float64(6.07710050650619224932e-11)
_RINT_MAGIC = np.float64(1.5 * 2.0**52)
_S1 = np.float64(-1.66666666666666324348e-01)
_S2 = np.float64(8.33333333332248946124e-03)
_S3 = np.float64(-1.98412698298579493134e-04)
_S4 = np.float64(2.75573137070700676789e-06)
_S5 = np.float64(-2.50507602534068634195e-08)
_S6 = np.float64(1.58969099521155010221e-10)
_C1 = np.float64(4.16666666666666019037e-02)
_C2 = np.float64(-1.38888888888741095749e-03)
_C3 = np.float64(2.48015872894767294178e-05)
_C4 = np.float64(-2.75573143513906633035e-07)
_C5 = np.float64(2.08757232129817482790e-09)
_C6 = np.float64(-1.13596475577881948265e-11)
_ONE_F64 = np.float64(1.0)
_ONE_I64 = np.int64(1)
_TWO_I64 = np.int64(2)


@intrinsic
def _sqrt(typingctx, x):
    """IEEE sqrt as ``llvm.sqrt`` (Numba lowers math.sqrt to a ``sqrtf`` libcall that blocks
    vectorization); correctly rounded, so bit-identical to NumPy's sqrt."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        name = "llvm.sqrt.f32" if signature.return_type == types.float32 else "llvm.sqrt.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t]), name)
        return builder.call(fn, args)

    return x(x), codegen


@njit(nogil=True, cache=True, inline="always")
def _sincos(t):
    """(sin t, cos t) for float64 t in [0, 2 pi], branch-free; error ~1 ulp (fdlibm kernels)."""
    n = (t * _INVPIO2 + _RINT_MAGIC) - _RINT_MAGIC  # rint(t / (pi/2)), 0..4
    r = (t - n * _PIO2_1) - n * _PIO2_1T  # |r| <= pi/4
    z = r * r
    s = r + (z * r) * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    hz = _HALF_F64 * z
    w = _ONE_F64 - hz
    c = w + (
        ((_ONE_F64 - w) - hz)
        + z * (z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6))))))
    )
    q = np.int64(n)
    odd = (q & _ONE_I64) == _ONE_I64
    sn = c if odd else s
    cs = s if odd else c
    sn = -sn if (q & _TWO_I64) == _TWO_I64 else sn  # quadrants 2, 3
    cs = -cs if ((q + _ONE_I64) & _TWO_I64) == _TWO_I64 else cs  # quadrants 1, 2
    return sn, cs


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _normals_f32(buf, k0, k1, s0, s1, first):
    """buf (4 m,) float32 <- the normals of blocks first .. first + m - 1 (philox.py slots)."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 4):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        ra = _sqrt(_MINUS_TWO_F32 * log_f32(_uniform01_f32(w0)))
        rb = _sqrt(_MINUS_TWO_F32 * log_f32(_uniform01_f32(w2)))
        sa, ca = _sincos(np.float64(_TWO_PI_F32 * _uniform01_f32(w1)))  # angle rounded as philox.py
        sb, cb = _sincos(np.float64(_TWO_PI_F32 * _uniform01_f32(w3)))
        buf[4 * i] = ra * np.float32(ca)
        buf[4 * i + 1] = ra * np.float32(sa)
        buf[4 * i + 2] = rb * np.float32(cb)
        buf[4 * i + 3] = rb * np.float32(sb)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _normals_f64(buf, k0, k1, s0, s1, first):
    """buf (2 m,) float64 <- the normals of blocks first .. first + m - 1 (philox.py slots)."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 2):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        r = _sqrt(_MINUS_TWO_F64 * log_f64(_uniform01_f64(w0, w1)))
        s, c = _sincos(_TWO_PI_F64 * _uniform01_f64(w2, w3))
        buf[2 * i] = r * c
        buf[2 * i + 1] = r * s


_normals = _fill_by_dtype(
    _normals_f32,
    _normals_f64,
    "Fill ``buf`` with the normals of whole blocks from ``first`` on (dtype picks the mapping: "
    "4 float32 or 2 float64 per block).",
)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _gumbels_f32(buf, k0, k1, s0, s1, first):
    """buf (4 m,) float32 <- -log(-log u) for the 4 words of blocks first .. first + m - 1."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 4):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        buf[4 * i] = -log_f32(-log_f32(_uniform01_f32(w0)))
        buf[4 * i + 1] = -log_f32(-log_f32(_uniform01_f32(w1)))
        buf[4 * i + 2] = -log_f32(-log_f32(_uniform01_f32(w2)))
        buf[4 * i + 3] = -log_f32(-log_f32(_uniform01_f32(w3)))


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _gumbels_f64(buf, k0, k1, s0, s1, first):
    """buf (2 m,) float64 <- -log(-log u) for words (w0, w1), (w2, w3) of each block."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 2):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        buf[2 * i] = -log_f64(-log_f64(_uniform01_f64(w0, w1)))
        buf[2 * i + 1] = -log_f64(-log_f64(_uniform01_f64(w2, w3)))


_gumbels = _fill_by_dtype(
    _gumbels_f32,
    _gumbels_f64,
    "Fill ``buf`` with the Gumbels of whole blocks from ``first`` on (4 float32 or 2 float64 "
    "per block).",
)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _uniforms_f32(buf, k0, k1, s0, s1, first):
    """buf (4 m,) float32 <- the uniforms of the 4 words of blocks first .. first + m - 1."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 4):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        buf[4 * i] = _uniform01_f32(w0)
        buf[4 * i + 1] = _uniform01_f32(w1)
        buf[4 * i + 2] = _uniform01_f32(w2)
        buf[4 * i + 3] = _uniform01_f32(w3)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=False)
def _uniforms_f64(buf, k0, k1, s0, s1, first):
    """buf (2 m,) float64 <- the uniforms of words (w0, w1), (w2, w3) of each block."""
    kk0, kk1 = np.uint64(k0), np.uint64(k1)
    ss0, ss1 = np.uint64(s0), np.uint64(s1)
    b0 = np.uint64(first)
    for i in range(buf.size // 2):
        w0, w1, w2, w3 = _philox_words(b0 + np.uint64(i), ss0, ss1, kk0, kk1)
        buf[2 * i] = _uniform01_f64(w0, w1)
        buf[2 * i + 1] = _uniform01_f64(w2, w3)


_uniforms = _fill_by_dtype(
    _uniforms_f32,
    _uniforms_f64,
    "Fill ``buf`` with the uniforms of whole blocks from ``first`` on (4 float32 or 2 float64 "
    "per block).",
)
# --------------------------------------------------------------------------------------------
# CuPy: the fills on a GPU (kernels/cuda/philox.cu); CuPy is imported only when they are called
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = ("lvm_philox_fill_v1<float>", "lvm_philox_fill_v1<double>")


def _fill_cupy(kind, func, seed, stream, n, dtype, offset, out):
    seed, stream, n, dtype, offset = check_fill_args(func, seed, stream, n, dtype, offset, None)
    if out is not None:
        check_array(out, "out", func, lib="cupy")  # before CuPy is needed at all
    from . import _cupy

    cupy = _cupy.cupy
    if out is None:
        out = cupy.empty(n, dtype=dtype)  # (n,)
    else:
        _cupy.check_out(out, "out", func, (n,), dtype)
    if n == 0:
        return out
    per = _PER_BLOCK[dtype]
    nblocks = (offset + n - 1) // per - offset // per + 1
    name = _CUPY_NAMES[dtype == np.float64]
    kernel = _cupy.raw_module("philox.cu", _CUPY_NAMES).get_function(name)
    kernel(
        (_cupy.grid(nblocks, _cupy.THREADS),),
        (_cupy.THREADS,),
        (out, np.int64(n), np.int64(offset), *key_words(seed, stream), np.int32(kind)),
    )
    return out


def uniform_cupy(seed, stream, n, dtype, offset=0, *, out=None):
    """Uniforms in (0, 1) on the GPU, a cupy.ndarray; the bits of ``uniform_ref``."""
    return _fill_cupy(_UNIFORM, "uniform_cupy", seed, stream, n, dtype, offset, out)


def normal_cupy(seed, stream, n, dtype, offset=0, *, out=None):
    """Standard normals on the GPU; ``normal_ref``'s to a few ulp."""
    return _fill_cupy(_NORMAL, "normal_cupy", seed, stream, n, dtype, offset, out)


def gumbel_cupy(seed, stream, n, dtype, offset=0, *, out=None):
    """Standard Gumbels on the GPU; ``gumbel_ref``'s to a few ulp."""
    return _fill_cupy(_GUMBEL, "gumbel_cupy", seed, stream, n, dtype, offset, out)


# The fills as kernels of the registry: "philox_uniform", "philox_normal", "philox_gumbel".
RECORDS = tuple(
    KernelRecord(f"philox_{kind}", backend, variant, func, status)
    for kind, (ref, fast, gpu) in {
        "uniform": (uniform_ref, uniform_numba, uniform_cupy),
        "normal": (normal_ref, normal_numba, normal_cupy),
        "gumbel": (gumbel_ref, gumbel_numba, gumbel_cupy),
    }.items()
    for backend, variant, func, status in (
        ("numpy", "ref", ref, "reference"),
        ("numba", "numba", fast, "default"),
        ("cupy", "cupy", gpu, "default"),
    )
)
UNIFORM_IMPLEMENTATIONS = implementations(RECORDS, "philox_uniform")
NORMAL_IMPLEMENTATIONS = implementations(RECORDS, "philox_normal")
GUMBEL_IMPLEMENTATIONS = implementations(RECORDS, "philox_gumbel")
