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
- Normals and Gumbels call ``log``, ``cos``, ``sin``. Within one backend they are bit-identical
  (the fill functions and the inline helpers below share the same code). Across backends they
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

The ``*_at`` helpers run one Philox block per element (4x, resp. 2x, the work of a fill). A kernel
that walks elements in order should instead call ``_block(k0, k1, s0, s1, b)`` once per block and
convert all its words with ``_uniform01_f32``, ``_normal_pair_f32``, ``_gumbel_f32`` (or their
float64 versions), exactly as ``_fill_f32`` / ``_fill_f64`` below do.

Variants
--------
- ``*_ref``: NumPy, vectorized over blocks with uint64 arithmetic. The oracle.
- ``*_numba``: ``@njit(parallel=True)``, ``prange`` over blocks; each block writes its own E
  outputs, so there is no shared accumulation and no race.
- ``*_cupy`` (``kernels/cuda/philox.cuh``, fills in ``philox.cu``): the same mapping with
  ``__umulhi``, the exact conversions written with non-contracting ``__fadd_rn``/``__fmul_rn``,
  Box-Muller with ``logf``/``sincosf`` (float32) and ``log``/``sincos`` (float64); one thread per
  block. Unverified on a device so far: run tests/test_kernels_cupy.py on a GPU.

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
import numbers

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

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

_U64_LIMIT = 1 << 64
# offset + n must stay below this so element and block indices fit Numba's int64 loop counters.
_ELEMENT_LIMIT = 1 << 62

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


# --------------------------------------------------------------------------------------------
# Validation (public boundary only; kernels assume valid input)
# --------------------------------------------------------------------------------------------


def _check_u64(value, name, func):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{func}: expected {name} to be an integer, got {type(value).__name__}. "
            f"Pass a Python int or a NumPy integer."
        )
    value = int(value)
    if not 0 <= value < _U64_LIMIT:
        raise ValueError(
            f"{func}: expected {name} to be in [0, 2**64), got {value}. Reduce it modulo 2**64."
        )
    return value


def _check_fill_args(func, seed, stream, n, dtype, offset, out):
    seed = _check_u64(seed, "seed", func)
    stream = _check_u64(stream, "stream", func)
    for name, value in (("n", n), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{func}: expected {name} to be an integer, got "
                f"{type(value).__name__}. Pass a Python int."
            )
        if value < 0:
            raise ValueError(f"{func}: expected {name} to be >= 0, got {value}.")
    n, offset = int(n), int(offset)
    if offset + n > _ELEMENT_LIMIT:
        raise ValueError(
            f"{func}: expected offset + n <= 2**62, got offset={offset}, n={n}. "
            f"Use another stream instead of a larger offset."
        )
    try:
        got = "None" if dtype is None else np.dtype(dtype)  # np.dtype(None) would be float64
    except TypeError:
        got = repr(dtype)
    if got not in _PER_BLOCK:
        raise TypeError(
            f"{func}: expected dtype to be float32 or float64, got {got}. "
            f"Pass numpy.float32 or numpy.float64."
        )
    dtype = got
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(
                f"{func}: expected out to be a numpy.ndarray, got {type(out).__name__}."
            )
        if out.dtype != dtype or out.shape != (n,) or not out.flags.c_contiguous:
            raise ValueError(
                f"{func}: expected out to be a contiguous {dtype} array of shape "
                f"({n},), got {out.dtype} of shape {out.shape} (contiguous: "
                f"{out.flags.c_contiguous}). Allocate it with numpy.empty(n, dtype)."
            )
    return seed, stream, n, dtype, offset


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
    seed = _check_u64(seed, "seed", "key_words")
    stream = _check_u64(stream, "stream", "key_words")
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
    seed, stream, n, dtype, offset = _check_fill_args(func, seed, stream, n, dtype, offset, out)
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


@njit(cache=True, inline="always")
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


@njit(cache=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of one counter (c0, c1, c2, c3) under key (k0, k1) -> 4 uint32 words."""
    w0, w1, w2, w3 = _rounds(
        np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3), np.uint64(k0), np.uint64(k1)
    )
    return np.uint32(w0), np.uint32(w1), np.uint32(w2), np.uint32(w3)


@njit(cache=True, inline="always")
def philox_words(b, s0, s1, k0, k1):
    """Words of block ``b`` as uint64 (counter (b mod 2^32, b >> 32, s0, s1), key (k0, k1), all
    uint64 holding 32-bit values): the form for kernels whose loops over blocks vectorize."""
    return _rounds(b & _MASK32, b >> _SHIFT32, s0, s1, k0, k1)


def per_block(dtype):
    """Elements one Philox block yields: 4 float32 or 2 float64."""
    return 4 if np.dtype(dtype) == np.float32 else 2


def fill_by_dtype(fill_f32, fill_f64, doc):
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


@njit(cache=True)
def _block(k0, k1, s0, s1, b):
    """Words of block ``b`` (int, >= 0) for key words (k0, k1) and stream words (s0, s1)."""
    ub = np.uint64(b)
    return philox4x32_10(ub & _MASK32, ub >> _SHIFT32, s0, s1, k0, k1)


@njit(cache=True, inline="always")
def _uniform01_f32(w):
    """uint32 word -> float32 in [2**-24, 1 - 2**-24]: (float32(w >> 9) + 0.5) * 2**-23, exact."""
    return (np.float32(np.uint64(w) >> _SHIFT9) + _HALF_F32) * _TWO_M23


@njit(cache=True, inline="always")
def _uniform01_f64(a, b):
    """Two uint32 words -> float64 in [2**-53, 1 - 2**-53], exact (a supplies the high bits)."""
    x = ((np.uint64(a) << _SHIFT32) | np.uint64(b)) >> _SHIFT12
    return (np.float64(x) + _HALF_F64) * _TWO_M52


@njit(cache=True)
def _normal_pair_f32(w0, w1):
    """Box-Muller in float32: radius from word w0, angle from word w1 -> (z0, z1)."""
    r = math.sqrt(_MINUS_TWO_F32 * math.log(_uniform01_f32(w0)))
    t = _TWO_PI_F32 * _uniform01_f32(w1)
    return r * math.cos(t), r * math.sin(t)


@njit(cache=True)
def _normal_pair_f64(w0, w1, w2, w3):
    """Box-Muller in float64: radius from words (w0, w1), angle from (w2, w3) -> (z0, z1)."""
    r = math.sqrt(_MINUS_TWO_F64 * math.log(_uniform01_f64(w0, w1)))
    t = _TWO_PI_F64 * _uniform01_f64(w2, w3)
    return r * math.cos(t), r * math.sin(t)


@njit(cache=True)
def _gumbel_f32(w):
    return -math.log(-math.log(_uniform01_f32(w)))


@njit(cache=True)
def _gumbel_f64(a, b):
    return -math.log(-math.log(_uniform01_f64(a, b)))


@njit(cache=True)
def _pick4(w0, w1, w2, w3, s):
    if s == 0:
        return w0
    if s == 1:
        return w1
    if s == 2:
        return w2
    return w3


@njit(cache=True)
def _uniform_f32_at(k0, k1, s0, s1, g):
    """float32 uniform of global element g (block g // 4, word g % 4)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 4)
    return _uniform01_f32(_pick4(w0, w1, w2, w3, g % 4))


@njit(cache=True)
def _gumbel_f32_at(k0, k1, s0, s1, g):
    """float32 Gumbel of global element g (block g // 4, word g % 4)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 4)
    return _gumbel_f32(_pick4(w0, w1, w2, w3, g % 4))


@njit(cache=True)
def _normal_f32_at(k0, k1, s0, s1, g):
    """float32 normal of global element g (block g // 4; pair (g % 4) // 2; cos if g even)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 4)
    if g % 4 < 2:
        z0, z1 = _normal_pair_f32(w0, w1)
    else:
        z0, z1 = _normal_pair_f32(w2, w3)
    return z0 if g % 2 == 0 else z1


@njit(cache=True)
def _uniform_f64_at(k0, k1, s0, s1, g):
    """float64 uniform of global element g (block g // 2, words 2 (g % 2) and 2 (g % 2) + 1)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 2)
    if g % 2 == 0:
        return _uniform01_f64(w0, w1)
    return _uniform01_f64(w2, w3)


@njit(cache=True)
def _gumbel_f64_at(k0, k1, s0, s1, g):
    """float64 Gumbel of global element g (same words as ``_uniform_f64_at``)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 2)
    if g % 2 == 0:
        return _gumbel_f64(w0, w1)
    return _gumbel_f64(w2, w3)


@njit(cache=True)
def _normal_f64_at(k0, k1, s0, s1, g):
    """float64 normal of global element g (block g // 2; cos if g even, sin if odd)."""
    w0, w1, w2, w3 = _block(k0, k1, s0, s1, g // 2)
    z0, z1 = _normal_pair_f64(w0, w1, w2, w3)
    return z0 if g % 2 == 0 else z1


# kind codes of the fill kernels
_UNIFORM, _NORMAL, _GUMBEL = 0, 1, 2


@njit(cache=True)
def _values_f32(kind, w0, w1, w2, w3):
    """The 4 float32 values of one block, in slot order."""
    if kind == _UNIFORM:
        return _uniform01_f32(w0), _uniform01_f32(w1), _uniform01_f32(w2), _uniform01_f32(w3)
    if kind == _GUMBEL:
        return _gumbel_f32(w0), _gumbel_f32(w1), _gumbel_f32(w2), _gumbel_f32(w3)
    z0, z1 = _normal_pair_f32(w0, w1)
    z2, z3 = _normal_pair_f32(w2, w3)
    return z0, z1, z2, z3


@njit(cache=True)
def _values_f64(kind, w0, w1, w2, w3):
    """The 2 float64 values of one block, in slot order."""
    if kind == _UNIFORM:
        return _uniform01_f64(w0, w1), _uniform01_f64(w2, w3)
    if kind == _GUMBEL:
        return _gumbel_f64(w0, w1), _gumbel_f64(w2, w3)
    return _normal_pair_f64(w0, w1, w2, w3)


@njit(cache=True)
def _value_f32_at(kind, k0, k1, s0, s1, g):
    if kind == _UNIFORM:
        return _uniform_f32_at(k0, k1, s0, s1, g)
    if kind == _GUMBEL:
        return _gumbel_f32_at(k0, k1, s0, s1, g)
    return _normal_f32_at(k0, k1, s0, s1, g)


@njit(cache=True)
def _value_f64_at(kind, k0, k1, s0, s1, g):
    if kind == _UNIFORM:
        return _uniform_f64_at(k0, k1, s0, s1, g)
    if kind == _GUMBEL:
        return _gumbel_f64_at(k0, k1, s0, s1, g)
    return _normal_f64_at(k0, k1, s0, s1, g)


@njit(cache=True, parallel=True)
def _fill_f32(out, k0, k1, s0, s1, offset, kind):
    # out: (n,) float32 = elements offset .. offset + n - 1. The partial blocks at either end
    # (at most 3 elements each) go element by element; the whole blocks between them run in a
    # prange with one Philox call per iteration and no bounds checks. Each iteration writes only
    # its own 4 slots: no races, and the result is independent of the thread count. (Compiling
    # `kind` as a literal, or inlining the helpers at IR level, measured no faster.)
    n = out.size
    head = min((-offset) % 4, n)  # elements before the first whole block
    nfull = (n - head) // 4
    for j in range(head):
        out[j] = _value_f32_at(kind, k0, k1, s0, s1, offset + j)
    for j in range(head + 4 * nfull, n):
        out[j] = _value_f32_at(kind, k0, k1, s0, s1, offset + j)
    first = (offset + head) // 4
    for jb in prange(nfull):
        w0, w1, w2, w3 = _block(k0, k1, s0, s1, first + jb)
        v0, v1, v2, v3 = _values_f32(kind, w0, w1, w2, w3)
        j = head + 4 * jb
        out[j] = v0
        out[j + 1] = v1
        out[j + 2] = v2
        out[j + 3] = v3


@njit(cache=True, parallel=True)
def _fill_f64(out, k0, k1, s0, s1, offset, kind):
    # As _fill_f32 with 2 values per block.
    n = out.size
    head = min(offset % 2, n)
    nfull = (n - head) // 2
    for j in range(head):
        out[j] = _value_f64_at(kind, k0, k1, s0, s1, offset + j)
    for j in range(head + 2 * nfull, n):
        out[j] = _value_f64_at(kind, k0, k1, s0, s1, offset + j)
    first = (offset + head) // 2
    for jb in prange(nfull):
        w0, w1, w2, w3 = _block(k0, k1, s0, s1, first + jb)
        v0, v1 = _values_f64(kind, w0, w1, w2, w3)
        j = head + 2 * jb
        out[j] = v0
        out[j + 1] = v1


def _fill_numba(kind, func, seed, stream, n, dtype, offset, out):
    seed, stream, n, dtype, offset = _check_fill_args(func, seed, stream, n, dtype, offset, out)
    if out is None:
        out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    k0, k1, s0, s1 = key_words(seed, stream)
    fill = _fill_f32 if dtype == np.float32 else _fill_f64
    fill(out, k0, k1, s0, s1, np.int64(offset), kind)
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
# CuPy: the fills on a GPU (kernels/cuda/philox.cu); CuPy is imported only when they are called
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = ("lvm_philox_fill_v1<float>", "lvm_philox_fill_v1<double>")


def _fill_cupy(kind, func, seed, stream, n, dtype, offset, out):
    from . import _cupy

    cupy = _cupy.cupy
    seed, stream, n, dtype, offset = _check_fill_args(func, seed, stream, n, dtype, offset, None)
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
UNIFORM_IMPLEMENTATIONS = {"numpy": uniform_ref, "numba": uniform_numba, "cupy": uniform_cupy}
NORMAL_IMPLEMENTATIONS = {"numpy": normal_ref, "numba": normal_numba, "cupy": normal_cupy}
GUMBEL_IMPLEMENTATIONS = {"numpy": gumbel_ref, "numba": gumbel_numba, "cupy": gumbel_cupy}
