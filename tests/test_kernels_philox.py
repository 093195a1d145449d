"""Tests of kernels.philox: known answers, the documented counter mapping, Numba vs reference,
thread-count independence, the inline helpers, the vectorized in-kernel noise of the fused
kernels, range and distribution checks, bad input."""

import math

import numba
import numpy as np
import pytest
from numba import njit
from scipy import stats

from kernels import philox as P

DTYPES = [np.float32, np.float64]
FILLS = {
    "uniform": (P.uniform_ref, P.uniform_numba),
    "normal": (P.normal_ref, P.normal_numba),
    "gumbel": (P.gumbel_ref, P.gumbel_numba),
}
# Normals and Gumbels go through log/cos/sin, which NumPy (own SIMD loops, SVML) and Numba
# (glibc) round differently in the last bit; chained through up to three such calls the worst
# difference seen over 6e6 draws was 2.8 ulp of max(|x|, 1). Uniforms must match exactly.
ULP_TOL = {
    np.dtype(np.float32): 8 * np.finfo(np.float32).eps,
    np.dtype(np.float64): 8 * np.finfo(np.float64).eps,
}

# Random123 tests/kat_vectors, "philox4x32 10" lines: counter (4 words), key (2), expected (4).
KAT = [
    (
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
    ),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

SEED = 0x0123456789ABCDEF  # both key words non-zero
STREAM = 0xFEDCBA9876543210  # both stream words non-zero
EPS = {
    np.dtype(np.float32): float(np.finfo(np.float32).eps),
    np.dtype(np.float64): float(np.finfo(np.float64).eps),
}
# The vectorized in-kernel noise against the reference: within a few ulp of max(|x|, 1)
# (measured 2.8 float32 / 2.8 float64 over 4e6 draws, the spread between NumPy and glibc).
NOISE_ULP = 8


# ---------------------------------------------------------------------------------------------
# The bijection
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_known_answers_ref(counter, key, expected):
    got = P.philox4x32_10_ref(np.array([counter], dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert got.dtype == np.uint32
    assert tuple(int(w) for w in got[0]) == expected


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_known_answers_numba(counter, key, expected):
    got = P.philox4x32_10(*(np.uint32(c) for c in counter), *(np.uint32(k) for k in key))
    assert tuple(int(w) for w in got) == expected


def test_ref_is_vectorized_over_counters_and_keys(rng):
    counter = rng.integers(0, 2**32, size=(257, 4), dtype=np.uint32)
    keys = rng.integers(0, 2**32, size=(257, 2), dtype=np.uint32)
    all_at_once = P.philox4x32_10_ref(counter, keys)  # (257, 4)
    kat_rows = P.philox4x32_10_ref(
        np.array([c for c, _, _ in KAT], dtype=np.uint32),
        np.array([k for _, k, _ in KAT], dtype=np.uint32),
    )
    np.testing.assert_array_equal(kat_rows, np.array([e for _, _, e in KAT], dtype=np.uint32))
    shared = P.philox4x32_10_ref(counter, keys[0])
    for i in range(counter.shape[0]):
        one = P.philox4x32_10(*counter[i], *keys[i])
        np.testing.assert_array_equal(all_at_once[i], np.array(one, dtype=np.uint32))
        np.testing.assert_array_equal(
            shared[i], P.philox4x32_10_ref(counter[i : i + 1], keys[0])[0]
        )


# ---------------------------------------------------------------------------------------------
# The documented element -> counter mapping
# ---------------------------------------------------------------------------------------------


def _words(seed, stream, blocks):
    blocks = np.asarray(blocks, dtype=np.uint64)
    counter = np.stack(
        [
            blocks & 0xFFFFFFFF,
            blocks >> 32,
            np.full_like(blocks, stream & 0xFFFFFFFF),
            np.full_like(blocks, stream >> 32),
        ],
        axis=1,
    ).astype(np.uint32)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    return P.philox4x32_10_ref(counter, key)  # (nblocks, 4)


def _u32(w):  # the docstring's U32, in exact Python arithmetic
    return np.float32(((int(w) >> 9) + 0.5) * 2.0**-23)


def _u64(a, b):  # the docstring's U64
    return np.float64(((((int(a) << 32) | int(b)) >> 12) + 0.5) * 2.0**-52)


def _expected_uniforms(seed, stream, n, dtype, offset):
    per = 4 if dtype == np.float32 else 2
    g = np.arange(offset, offset + n)
    words = _words(seed, stream, g // per)  # (n, 4)
    if dtype == np.float32:
        return np.array([_u32(w[s]) for w, s in zip(words, g % 4)], dtype=np.float32)
    return np.array([_u64(w[2 * s], w[2 * s + 1]) for w, s in zip(words, g % 2)])


# offsets crossing block 2**32, where the block index spills into counter word 1
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 5, 4 * 2**32 - 7, 2 * 2**32 - 3])
def test_uniform_follows_documented_mapping(dtype, offset):
    want = _expected_uniforms(SEED, STREAM, 13, dtype, offset)
    np.testing.assert_array_equal(P.uniform_ref(SEED, STREAM, 13, dtype, offset), want)
    np.testing.assert_array_equal(P.uniform_numba(SEED, STREAM, 13, dtype, offset), want)


def test_normal_and_gumbel_follow_documented_mapping():
    # float32: pairs (w0, w1) and (w2, w3); float64: one pair from (w0, w1), (w2, w3).
    w = _words(SEED, STREAM, [3])[0]
    u32 = np.array([_u32(x) for x in w], dtype=np.float32)
    r = np.sqrt(np.float32(-2) * np.log(u32[[0, 2]]))
    t = np.float32(2 * np.pi) * u32[[1, 3]]
    want32 = np.array(
        [r[0] * np.cos(t[0]), r[0] * np.sin(t[0]), r[1] * np.cos(t[1]), r[1] * np.sin(t[1])],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(P.normal_ref(SEED, STREAM, 4, np.float32, offset=12), want32)
    np.testing.assert_array_equal(
        P.gumbel_ref(SEED, STREAM, 4, np.float32, offset=12), -np.log(-np.log(u32))
    )
    u64 = np.array([_u64(w[0], w[1]), _u64(w[2], w[3])])
    r, t = np.sqrt(-2 * np.log(u64[0])), 2 * np.pi * u64[1]
    np.testing.assert_array_equal(
        P.normal_ref(SEED, STREAM, 2, np.float64, offset=6), [r * np.cos(t), r * np.sin(t)]
    )
    np.testing.assert_array_equal(
        P.gumbel_ref(SEED, STREAM, 2, np.float64, offset=6), -np.log(-np.log(u64))
    )


def test_frozen_uniforms_for_ports():
    # First values for seed 42, stream 0; a CUDA port must print exactly these.
    np.testing.assert_array_equal(
        P.uniform_numba(42, 0, 4, np.float32),
        np.array(
            [
                float.fromhex(h)
                for h in ("0x1.39d5e2p-1", "0x1.dfd524p-2", "0x1.2bf51p-4", "0x1.5d0accp-2")
            ],
            np.float32,
        ),
    )
    np.testing.assert_array_equal(
        P.uniform_numba(42, 0, 4, np.float64),
        [
            float.fromhex(h)
            for h in (
                "0x1.39d5e0a6efea9p-1",
                "0x1.2bf50ad5742b8p-4",
                "0x1.f9b6424ea774dp-1",
                "0x1.071eb4dce89c1p-1",
            )
        ],
    )


# ---------------------------------------------------------------------------------------------
# Numba against the reference; offsets; threads; out=
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(FILLS))
@pytest.mark.parametrize(
    "n, offset", [(1, 0), (3, 0), (4, 0), (4097, 0), (1, 3), (3, 1), (4097, 5), (4097, 2**34 + 1)]
)
def test_numba_matches_ref(kind, dtype, n, offset):
    ref, fast = FILLS[kind]
    want = ref(SEED, STREAM, n, dtype, offset)
    got = fast(SEED, STREAM, n, dtype, offset)
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape == (n,)
    if kind == "uniform":
        np.testing.assert_array_equal(got, want)
    else:
        tol = ULP_TOL[np.dtype(dtype)]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(FILLS))
@pytest.mark.parametrize("impl", [0, 1], ids=["ref", "numba"])
def test_offset_is_a_window_of_the_sequence(kind, dtype, impl):
    fill = FILLS[kind][impl]
    whole = fill(7, 3, 1000, dtype)
    for offset, n in [(0, 1000), (1, 998), (2, 5), (3, 500), (999, 1), (10, 0)]:
        np.testing.assert_array_equal(fill(7, 3, n, dtype, offset), whole[offset : offset + n])


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(FILLS))
def test_numba_independent_of_thread_count(kind, dtype, restore_threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba was started with fewer than 2 threads (NUMBA_NUM_THREADS)")
    fill = FILLS[kind][1]
    numba.set_num_threads(1)
    one = fill(SEED, STREAM, 100_003, dtype, 3)
    numba.set_num_threads(2)
    two = fill(SEED, STREAM, 100_003, dtype, 3)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(FILLS))
@pytest.mark.parametrize("impl", [0, 1], ids=["ref", "numba"])
def test_out_is_filled_in_place(kind, dtype, impl):
    fill = FILLS[kind][impl]
    out = np.full(37, np.nan, dtype=dtype)
    assert fill(5, 6, 37, dtype, 2, out=out) is out
    np.testing.assert_array_equal(out, fill(5, 6, 37, dtype, 2))


def test_zero_length():
    for ref, fast in FILLS.values():
        for dtype in DTYPES:
            assert ref(1, 2, 0, dtype).shape == fast(1, 2, 0, dtype, 9).shape == (0,)


# ---------------------------------------------------------------------------------------------
# The inline helpers other kernels call
# ---------------------------------------------------------------------------------------------


def _make_at_kernel(at):
    @njit
    def fill(out, k0, k1, s0, s1, offset):
        flat = out.reshape(-1)
        for i in range(flat.size):
            flat[i] = at(k0, k1, s0, s1, offset + i)

    return fill


AT_HELPERS = {
    ("uniform", np.float32): P._uniform_f32_at,
    ("uniform", np.float64): P._uniform_f64_at,
    ("normal", np.float32): P._normal_f32_at,
    ("normal", np.float64): P._normal_f64_at,
    ("gumbel", np.float32): P._gumbel_f32_at,
    ("gumbel", np.float64): P._gumbel_f64_at,
}


@pytest.mark.parametrize("kind, dtype", sorted(AT_HELPERS, key=str))
def test_element_helpers_match_fills(kind, dtype):
    K, B, Z = 3, 5, 7
    offset = 11
    eps = np.empty((K, B, Z), dtype=dtype)
    _make_at_kernel(AT_HELPERS[kind, dtype])(eps, *P.key_words(SEED, STREAM), offset)
    fill = FILLS[kind][1](SEED, STREAM, K * B * Z, dtype, offset)
    if kind == "uniform":
        np.testing.assert_array_equal(eps.reshape(-1), fill)
    else:  # the fills run the vectorized generator: a few ulp from the scalar helpers
        ulp = np.finfo(dtype).eps
        err = np.abs(eps.reshape(-1) - fill) / np.maximum(np.abs(fill), 1)
        assert err.max() <= 3 * ulp


@njit
def _blockwise_normals_f32(out, k0, k1, s0, s1):
    # The pattern a fused kernel uses: one Philox call per 4 consecutive float32 elements.
    for b in range(out.size // 4):
        w0, w1, w2, w3 = P._block(k0, k1, s0, s1, b)
        out[4 * b], out[4 * b + 1] = P._normal_pair_f32(w0, w1)
        out[4 * b + 2], out[4 * b + 3] = P._normal_pair_f32(w2, w3)


def test_block_helpers_match_fill():
    out = np.empty(4 * 50, dtype=np.float32)
    _blockwise_normals_f32(out, *P.key_words(SEED, STREAM))
    fill = P.normal_numba(SEED, STREAM, out.size, np.float32)
    assert (np.abs(out - fill) / np.maximum(np.abs(fill), 1)).max() <= 3 * np.finfo(np.float32).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 3, 4097])
def test_normal_fill_is_the_fused_kernels_noise_bit_for_bit(dtype, offset):
    """normal_numba runs the fused kernels' generator: reparam_sample with mu = 0 and
    logvar = 0 (z = 0 + 1 eps) returns the fill's values exactly, for any offset."""
    from kernels.reparam_sample import reparam_sample

    K, B, Z = 5, 3, 7
    zeros = np.zeros((B, Z), dtype)
    z = reparam_sample(zeros, zeros, K, SEED, STREAM, offset)[0]
    fill = P.normal_numba(SEED, STREAM, K * B * Z, dtype, offset)
    np.testing.assert_array_equal(z.reshape(-1), fill)


def test_key_words():
    assert P.key_words(SEED, STREAM) == (0x89ABCDEF, 0x01234567, 0x76543210, 0xFEDCBA98)
    assert all(type(w) is np.uint32 for w in P.key_words(SEED, STREAM))


@pytest.mark.parametrize(
    "helper, args",
    [
        (P._uniform01_f32, (numba.uint32,)),
        (P._gumbel_f32, (numba.uint32,)),
        (P._normal_pair_f32, (numba.uint32, numba.uint32)),
        (P._normal_f32_at, (numba.uint32,) * 4 + (numba.int64,)),
    ],
)
def test_float32_helpers_stay_float32(helper, args):
    # PERF-NOTES "Silent float64": a stray Python float constant would make these float64.
    helper.compile(args)
    ret = helper.overloads[args].signature.return_type
    assert str(ret) in ("float32", "UniTuple(float32 x 2)")


# ---------------------------------------------------------------------------------------------
# The vectorized in-kernel noise of the fused kernels (_philox_words, _normals, _gumbels)
# ---------------------------------------------------------------------------------------------

KAT_WORDS = [  # Random123 kat_vectors, philox4x32 10: counter, key, expected
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@njit
def _words_many(blocks, s0, s1, k0, k1, out):
    for i in range(blocks.size):
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = P._philox_words(blocks[i], s0, s1, k0, k1)


@pytest.mark.parametrize("counter, key, expected", KAT_WORDS)
def test_philox_words_known_answers(counter, key, expected):
    b = np.uint64(counter[0] | (counter[1] << 32))
    got = P._philox_words(
        b, np.uint64(counter[2]), np.uint64(counter[3]), np.uint64(key[0]), np.uint64(key[1])
    )
    assert tuple(int(w) for w in got) == expected


def test_philox_words_match_reference(rng):
    blocks = rng.integers(0, 2**63, size=1000, dtype=np.uint64)
    blocks[:3] = [0, 2**32 - 1, 2**32]
    got = np.empty((blocks.size, 4), np.uint64)
    k0, k1, s0, s1 = (np.uint64(w) for w in P.key_words(SEED, STREAM))
    _words_many(blocks, s0, s1, k0, k1, got)
    counter = np.stack(
        [
            blocks & 0xFFFFFFFF,
            blocks >> 32,
            np.full_like(blocks, int(s0)),
            np.full_like(blocks, int(s1)),
        ],
        axis=1,
    ).astype(np.uint32)
    want = P.philox4x32_10_ref(counter, np.array([int(k0), int(k1)], np.uint32))
    np.testing.assert_array_equal(got, want.astype(np.uint64))


@njit
def _uniforms_f32(first, s0, s1, k0, k1, out):
    for i in range(out.shape[0]):
        w0, w1, w2, w3 = P._philox_words(first + np.uint64(i), s0, s1, k0, k1)
        out[i, 0], out[i, 1] = P._uniform01_f32(w0), P._uniform01_f32(w1)
        out[i, 2], out[i, 3] = P._uniform01_f32(w2), P._uniform01_f32(w3)


@njit
def _uniforms_f64(first, s0, s1, k0, k1, out):
    for i in range(out.shape[0]):
        w0, w1, w2, w3 = P._philox_words(first + np.uint64(i), s0, s1, k0, k1)
        out[i, 0], out[i, 1] = P._uniform01_f64(w0, w1), P._uniform01_f64(w2, w3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_conversions_are_bit_identical_to_philox(dtype):
    per = 4 if dtype == np.float32 else 2
    first = 2**32 - 3  # crosses the low counter word's wrap
    out = np.empty((4099, per), dtype)
    k0, k1, s0, s1 = (np.uint64(w) for w in P.key_words(SEED, STREAM))
    (_uniforms_f32 if dtype == np.float32 else _uniforms_f64)(np.uint64(first), s0, s1, k0, k1, out)
    np.testing.assert_array_equal(
        out.ravel(), P.uniform_ref(SEED, STREAM, out.size, dtype, per * first)
    )


@njit
def _sincos_many(t, s, c):
    for i in range(t.size):
        s[i], c[i] = P._sincos(t[i])


@pytest.mark.skipif(
    np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
    reason="needs an extended-precision long double as the reference",
)
@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow), 61])
def test_sincos_on_every_float32_angle(stride):
    # Every angle the float32 Box-Muller can produce: t = float32(2 pi) * U32 over the whole
    # 2^23-point grid (stride 1, under -m slow; the default run takes every 61st point, the
    # grid's ends included). Measured: <= 1.43 ulp in float64, and the float32 rounding equals
    # the correctly rounded sin/cos everywhere.
    points = np.unique(np.r_[np.arange(0, 2**23, stride), 2**23 - 1])
    u = ((points.astype(np.float64) + 0.5) * 2.0**-23).astype(np.float32)
    t = (np.float32(2 * math.pi) * u).astype(np.float64)
    s, c = np.empty_like(t), np.empty_like(t)
    _sincos_many(t, s, c)
    tl = t.astype(np.longdouble)
    for got, want in ((s, np.sin(tl)), (c, np.cos(tl))):
        ulp = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float64))
        assert ulp.max() <= 2
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("first", [0, 5, 2**35 + 1])
def test_gumbels_match_philox_reference(dtype, first):
    per = 4 if dtype == np.float32 else 2
    buf = np.empty(per * 50001, dtype)
    P._gumbels(buf, *P.key_words(SEED, STREAM), first)
    want = P.gumbel_ref(SEED, STREAM, buf.size, dtype, per * first)
    tol = NOISE_ULP * EPS[np.dtype(dtype)] * np.maximum(np.abs(want), 1)
    assert np.all(np.abs(buf - want) <= tol)


# ---------------------------------------------------------------------------------------------
# Range and distribution
# ---------------------------------------------------------------------------------------------


def test_conversions_never_reach_0_or_1():
    lo, hi = np.uint32(0), np.uint32(0xFFFFFFFF)
    assert P._uniform01_f32(lo) == 2.0**-24 and P._uniform01_f32(hi) == 1 - 2.0**-24
    assert P._uniform01_f64(lo, lo) == 2.0**-53 and P._uniform01_f64(hi, hi) == 1 - 2.0**-53
    words = np.array([0, 0xFFFFFFFF], dtype=np.uint32)
    assert np.all(np.isfinite([P._gumbel_f32(w) for w in words]))
    assert np.all(np.isfinite([P._gumbel_f64(a, b) for a in words for b in words]))
    for a in words:
        for b in words:
            assert np.all(np.isfinite(P._normal_pair_f32(a, b)))
            assert np.all(np.isfinite(P._normal_pair_f64(a, a, b, b)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniforms_strictly_inside_unit_interval(dtype):
    u = P.uniform_numba(1, 0, 10**5, dtype)
    assert 0 < u.min() and u.max() < 1


KS_CASES = {"uniform": "uniform", "normal": "norm", "gumbel": "gumbel_r"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(FILLS))
def test_kolmogorov_smirnov(kind, dtype):
    # Fixed seeds, so the p-values are fixed numbers; 1e-3 only catches real defects.
    for seed, stream in [(0, 0), (2026, 1), (2**63 + 5, 2**40)]:
        x = FILLS[kind][1](seed, stream, 10**5, dtype)
        assert stats.kstest(x.astype(np.float64), KS_CASES[kind]).pvalue > 1e-3


def test_normal_pairs_are_uncorrelated():
    z = P.normal_numba(3, 4, 2 * 10**5, np.float64).reshape(-1, 2)  # (N, 2) = (cos, sin)
    r = np.corrcoef(z[:, 0], z[:, 1])[0, 1]
    assert abs(r) < 4 / np.sqrt(z.shape[0])
    assert abs(np.corrcoef(z[:, 0] ** 2, z[:, 1] ** 2)[0, 1]) < 4 / np.sqrt(z.shape[0])


def test_byte_frequencies_chi_square():
    words = _words(99, 1, np.arange(2**16))  # (65536, 4)
    counts = np.bincount(words.view(np.uint8).reshape(-1), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_bins_chi_square(dtype):
    # 256 equal bins hold equally many grid points (2**15 for float32), so they are equiprobable.
    u = P.uniform_numba(12345, 0, 2**20, dtype)
    counts = np.bincount((u * 256).astype(np.int64), minlength=256)
    assert counts.size == 256
    assert stats.chisquare(counts).pvalue > 1e-3


def test_streams_and_seeds_give_different_sequences():
    pairs = [(1, 0), (1, 1), (2, 0), (1 + 2**32, 0), (1, 2**32), (0, 1), (2**64 - 1, 2**64 - 1)]
    seqs = [P.uniform_numba(s, t, 4096, np.float64) for s, t in pairs]
    for i in range(len(seqs)):
        for j in range(i):
            assert np.mean(seqs[i] == seqs[j]) == 0
            assert abs(np.corrcoef(seqs[i], seqs[j])[0, 1]) < 4 / np.sqrt(4096)


def test_counter_words_are_not_swapped():
    # stream s and block index s must not collide: seed/stream and block occupy distinct words.
    a = _words(5, 0, [1])
    b = _words(5, 1, [0])
    assert not np.array_equal(a, b)
    assert not np.array_equal(
        P.uniform_ref(5, 1, 4, np.float32), P.uniform_ref(5, 0, 4, np.float32, 4)
    )


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [P.uniform_ref, P.normal_numba, P.gumbel_numba])
def test_bad_arguments(fill):
    with pytest.raises(TypeError, match="expected dtype to be float32 or float64, got int32"):
        fill(1, 2, 3, np.int32)
    with pytest.raises(TypeError, match="expected dtype to be float32 or float64, got None"):
        fill(1, 2, 3, None)
    with pytest.raises(ValueError, match=r"expected seed to be in \[0, 2\*\*64\), got -1"):
        fill(-1, 2, 3, np.float32)
    with pytest.raises(ValueError, match=r"expected stream to be in \[0, 2\*\*64\)"):
        fill(1, 2**64, 3, np.float32)
    with pytest.raises(TypeError, match="expected seed to be an integer, got float"):
        fill(1.0, 2, 3, np.float32)
    with pytest.raises(ValueError, match="expected n to be >= 0, got -1"):
        fill(1, 2, -1, np.float32)
    with pytest.raises(TypeError, match="expected offset to be an integer"):
        fill(1, 2, 3, np.float32, 0.5)
    with pytest.raises(ValueError, match=r"expected offset \+ n <= 2\*\*62"):
        fill(1, 2, 3, np.float32, 2**62)
    with pytest.raises(ValueError, match=r"expected out to be a contiguous float32 array of shape"):
        fill(1, 2, 3, np.float32, out=np.empty(4, np.float32))
    with pytest.raises(ValueError, match="expected out to be a contiguous float64"):
        fill(1, 2, 3, np.float64, out=np.empty(6)[::2])


def test_ref_rejects_bad_counter_and_key():
    with pytest.raises(ValueError, match=r"expected counter to be a uint32 array of shape \(N"):
        P.philox4x32_10_ref(np.zeros((2, 4), dtype=np.int64), np.zeros(2, dtype=np.uint32))
    with pytest.raises(ValueError, match=r"expected key to be a uint32 array of shape \(2,\)"):
        P.philox4x32_10_ref(np.zeros((2, 4), dtype=np.uint32), np.zeros(3, dtype=np.uint32))
