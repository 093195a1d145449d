"""Tests of kernels.nearest_code: every variant vs the reference vs brute force, the tie rule,
dist2 accuracy, memory that does not grow with N x M, thread-count independence, bad input."""

import sys
import tracemalloc

import numba
import numpy as np
import pytest

import kernels
from kernels import nearest_code as K

DTYPES = [np.float32, np.float64]
# CPU variants (the "cupy_*" ones have their own tests and need a device)
VARIANTS = sorted(v for v in K.VARIANTS if not v.startswith("cupy"))
EPS = {
    np.dtype(np.float32): np.finfo(np.float32).eps,
    np.dtype(np.float64): np.finfo(np.float64).eps,
}

# (N, M, E). M = 600 and 1100 span several codebook chunks of the Numba kernels (512 codes per
# chunk in float32, 256 in float64, once N >= 512 gives 256-query tiles); N = 1001 leaves a
# short last tile.
SHAPES = [
    (1, 1, 1),
    (1, 7, 3),
    (1001, 7, 3),
    (1001, 1, 64),
    (257, 7, 1),
    (1001, 40, 64),
    (600, 600, 64),
    (1001, 1100, 3),
    (33, 5, 2),
]


def _separated(rng, n, m, e, dtype):
    """Codes on distinct integer lattice points (spacing >= 1), queries within 1/4 of a code.

    The nearest code is then unique with a margin of at least (3/4)^2 - (1/4)^2 = 1/2 in squared
    distance, far above the scores' rounding error (the largest |code|^2 here is ~300, so
    E eps |e|^2 < 1e-3 in float32). Returns x (n, e), codebook (m, e), true index (n,).
    """
    r = 1
    while (2 * r + 1) ** e < 2 * m:
        r += 1
    seen, codes = set(), []
    while len(codes) < m:
        p = tuple(int(v) for v in rng.integers(-r, r + 1, size=e))
        if p not in seen:
            seen.add(p)
            codes.append(p)
    codebook = np.array(codes, dtype=np.float64)  # (m, e)
    true = rng.integers(0, m, size=n)  # (n,)
    direction = rng.standard_normal((n, e))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    x = codebook[true] + direction * rng.uniform(0.0, 0.25, size=(n, 1))  # (n, e)
    return x.astype(dtype), codebook.astype(dtype), true


def _brute(x, codebook):
    """((x[:, None] - c[None]) ** 2).sum(-1).argmin(1) in float64, in row chunks."""
    x, c = x.astype(np.float64), codebook.astype(np.float64)
    out = np.empty(x.shape[0], dtype=np.int64)
    for n0 in range(0, x.shape[0], 64):
        out[n0 : n0 + 64] = ((x[n0 : n0 + 64, None] - c[None]) ** 2).sum(-1).argmin(1)
    return out


def _dist2_rtol(dtype, e):
    """dist2 is a float64 sum of E non-negative terms (relative error <= (E - 1) u64 in any order,
    ours sequential, NumPy's pairwise), rounded once to the dtype (u32 = eps32 / 2 for float32)."""
    if np.dtype(dtype) == np.float32:
        return 2 * EPS[np.dtype(np.float32)]
    return max(e, 2) * EPS[np.dtype(np.float64)]


def _exact_dist2(x, codebook, index):
    diff = x.astype(np.float64) - codebook.astype(np.float64)[index]
    return (diff * diff).sum(1)


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, m, e", SHAPES)
def test_variant_matches_ref_and_brute_force(rng, variant, dtype, n, m, e):
    x, codebook, true = _separated(rng, n, m, e, dtype)
    index, dist2 = K.VARIANTS[variant](x, codebook)
    ref_index, _ = K.nearest_code_ref(x, codebook)
    assert index.dtype == np.int64 and index.shape == (n,)
    assert dist2.dtype == np.dtype(dtype) and dist2.shape == (n,)
    np.testing.assert_array_equal(index, true)
    np.testing.assert_array_equal(index, _brute(x, codebook))
    np.testing.assert_array_equal(index, ref_index)
    # dist2 is the float64 sum rounded once to the dtype (see test_dist2_is_exact_distance).
    np.testing.assert_allclose(
        dist2, _exact_dist2(x, codebook, index), rtol=_dist2_rtol(dtype, e), atol=0
    )


@pytest.mark.parametrize("variant", ["numba_v3"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_tiles_and_chunks(rng, variant, dtype):
    """The tiling logic at odd sizes: calls the Numba kernels with tiles that leave short last
    tiles and chunks everywhere (the public wrappers pick large ones)."""
    x, codebook, true = _separated(rng, 203, 61, 5, dtype)
    cn = np.einsum("me,me->m", codebook, codebook)
    big = np.dtype(dtype).type(np.inf)
    for tile_n, tile_m in [(16, 1), (16, 7), (48, 60), (208, 61), (16, 64)]:
        index = np.empty(203, dtype=np.int64)
        dist2 = np.empty(203, dtype=dtype)
        cb2 = codebook * dtype(-2)
        K._nearest_code_v3(x, codebook, cb2, cn, tile_n, tile_m, big, 3, index, dist2)
        np.testing.assert_array_equal(index, true)
        np.testing.assert_allclose(
            dist2, _exact_dist2(x, codebook, index), rtol=_dist2_rtol(dtype, 5), atol=0
        )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicate_codes_give_lowest_index(rng, variant, dtype):
    """Duplicates inside one chunk, across chunks (512 / 256 codes per chunk) and in the tail
    rows. BLAS alone would not give identical rows identical scores (see the module docstring),
    so this checks the collapse of duplicates done before the search."""
    m, e = 1100, 5
    codebook = rng.standard_normal((m, e)).astype(dtype)
    groups = [(3, 7), (100, 700), (511, 512), (1090, 1099), (0, 600, 1098)]
    for g in groups:
        codebook[list(g[1:])] = codebook[g[0]]
    picks = np.array([i for g in groups for i in g] * 50)  # (550,)
    x = codebook[picks] + dtype(1e-3) * rng.standard_normal((picks.size, e)).astype(dtype)
    x[:12] = codebook[picks[:12]]  # some queries exactly on a code
    lowest = {i: g[0] for g in groups for i in g}
    expected = np.array([lowest[int(i)] for i in picks])
    np.testing.assert_array_equal(_brute(x, codebook), expected)  # float64: exact ties too
    index, dist2 = K.VARIANTS[variant](x, codebook)
    np.testing.assert_array_equal(index, expected)
    assert np.all(dist2[:12] == 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_codes_equal_gives_index_zero(rng, variant):
    """The case where OpenBLAS's GEMM rounds identical rows differently (rows 6-11, 18-23, ...)."""
    codebook = np.tile(rng.standard_normal((1, 8)), (300, 1)).astype(np.float32)  # (300, 8)
    x = rng.standard_normal((700, 8)).astype(np.float32)
    index, _ = K.VARIANTS[variant](x, codebook)
    np.testing.assert_array_equal(index, 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_signed_zero_duplicates_give_lowest_index(rng, variant):
    codebook = rng.standard_normal((40, 4)).astype(np.float32)
    codebook[:, 1] = 0.0
    codebook[30] = codebook[4]
    codebook[30, 1] = -0.0  # equal as numbers to row 4
    x = codebook[[4, 30, 4]] + np.float32(1e-4)
    index, _ = K.VARIANTS[variant](x, codebook)
    np.testing.assert_array_equal(index, [4, 4, 4])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dist2_is_exact_distance(rng, variant, dtype):
    """dist2 is recomputed as sum (x - c)^2 in float64 and rounded once: within one float32
    rounding (or float64's own summation error) of the float64 distance,
    even where the expansion |x|^2 - 2 x.e + |e|^2 would cancel: queries 1e-3 from codes of
    norm ~10, where float32's expansion error (~1e-5) exceeds the distance (~1e-5) itself."""
    codebook = (10 * rng.standard_normal((50, 16))).astype(dtype)
    x = codebook[rng.integers(0, 50, size=500)] + dtype(1e-3) * rng.standard_normal(
        (500, 16)
    ).astype(dtype)
    index, dist2 = K.VARIANTS[variant](x, codebook)
    exact = _exact_dist2(x, codebook, index)
    np.testing.assert_array_equal(index, _brute(x, codebook))
    np.testing.assert_allclose(dist2, exact, rtol=_dist2_rtol(dtype, 16), atol=0)
    assert np.all(dist2 >= 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_data_agrees_with_brute_force_up_to_rounding(rng, variant):
    """On random (not separated) float32 data the argmin may differ from float64 brute force only
    between near-tied codes: the chosen code's exact distance is within the scores' rounding
    error (~E eps (|x| |e| + |e|^2)) of the true minimum."""
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    codebook = rng.standard_normal((700, 32)).astype(np.float32)
    index, _ = K.VARIANTS[variant](x, codebook)
    best = _exact_dist2(x, codebook, _brute(x, codebook))
    got = _exact_dist2(x, codebook, index)
    assert np.all(got - best <= 32 * EPS[np.dtype(np.float32)] * 200)
    assert np.mean(index == _brute(x, codebook)) > 0.99


@pytest.mark.parametrize("variant", VARIANTS)
def test_codebook_sqnorm_argument(rng, variant):
    x, codebook, true = _separated(rng, 300, 20, 4, np.float32)
    sq = np.einsum("me,me->m", codebook, codebook)
    a = K.VARIANTS[variant](x, codebook)
    b = K.VARIANTS[variant](x, codebook, sq)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_contiguous_inputs_are_copied(rng, variant):
    x, codebook, true = _separated(rng, 301, 9, 6, np.float64)
    x_strided = np.repeat(x, 2, axis=1)[:, ::2]  # (301, 6) view
    codebook_f = np.asfortranarray(codebook)
    assert not x_strided.flags.c_contiguous and not codebook_f.flags.c_contiguous
    index, dist2 = K.VARIANTS[variant](x_strided, codebook_f)
    np.testing.assert_array_equal(index, true)
    np.testing.assert_array_equal(dist2, K.VARIANTS[variant](x, codebook)[1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(variant, dtype):
    index, dist2 = K.VARIANTS[variant](np.zeros((0, 4), dtype), np.ones((3, 4), dtype))
    assert index.shape == (0,) and index.dtype == np.int64
    assert dist2.shape == (0,) and dist2.dtype == np.dtype(dtype)


def test_thread_count_does_not_change_the_result(rng):
    x, codebook, true = _separated(rng, 3000, 700, 16, np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = K.nearest_code_numba_v3(x, codebook)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = K.nearest_code_numba_v3(x, codebook)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])  # recomputed per row: independent of tiles


def test_registry():
    assert kernels.get("nearest_code", "numpy") is K.nearest_code_ref
    assert kernels.get("nearest_code", "numba") is K.IMPLEMENTATIONS["numba"]
    assert set(K.IMPLEMENTATIONS.values()) <= set(K.VARIANTS.values())


# ---------------------------------------------------------------------------------------------
# Memory: never an N x M matrix
# ---------------------------------------------------------------------------------------------

N_BIG, M_BIG, E_BIG = 32768, 2048, 8  # N x M float32 would be 256 MiB
NM_BYTES = N_BIG * M_BIG * 4


def test_ref_does_not_allocate_n_by_m(rng):
    """tracemalloc sees NumPy's allocations: the reference peaks at its 4 MiB tile, not 256 MiB."""
    x = rng.standard_normal((N_BIG, E_BIG)).astype(np.float32)
    codebook = rng.standard_normal((M_BIG, E_BIG)).astype(np.float32)
    tracemalloc.start()
    try:
        K.nearest_code_ref(x, codebook)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < NM_BYTES / 16


def _vm_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
@pytest.mark.parametrize("variant", ["numba_v3"])
def test_numba_does_not_allocate_n_by_m(rng, variant):
    """Numba's allocations are invisible to tracemalloc, so this resets the peak resident set
    (/proc/self/clear_refs) and checks that the call raised it by far less than N x M floats."""
    x = rng.standard_normal((N_BIG, E_BIG)).astype(np.float32)
    codebook = rng.standard_normal((M_BIG, E_BIG)).astype(np.float32)
    K.VARIANTS[variant](x[:600], codebook)  # compile and warm up first
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS: {exc}")
    rss_before = _vm_kib("VmRSS")
    K.VARIANTS[variant](x, codebook)
    grown = (_vm_kib("VmHWM") - rss_before) * 1024
    assert grown < NM_BYTES / 8


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_inputs(variant):
    f = K.VARIANTS[variant]
    x = np.zeros((10, 64), np.float32)
    cb = np.zeros((512, 64), np.float32)
    with pytest.raises(
        ValueError,
        match=r"^nearest_code: expected codebook\.shape\[1\] == "
        r"x\.shape\[1\] \(64\), got codebook of shape "
        r"\(512, 32\)\.$",
    ):
        f(x, np.zeros((512, 32), np.float32))
    with pytest.raises(TypeError, match="expected x, codebook to share one dtype"):
        f(x, cb.astype(np.float64))
    with pytest.raises(TypeError, match="expected x to have dtype float32 or float64, got int64"):
        f(np.zeros((10, 64), np.int64), cb)
    with pytest.raises(TypeError, match="expected codebook to be a numpy.ndarray"):
        f(x, cb.tolist())
    with pytest.raises(
        ValueError,
        match="expected x to have 2 dimensions, got an array of "
        r"shape \(64,\)",
    ):
        f(x[0], cb)
    with pytest.raises(ValueError, match="expected codebook to have at least one row"):
        f(x, cb[:0])
    with pytest.raises(ValueError, match=r"expected x to have at least one column \(E >= 1\)"):
        f(x[:, :0], cb[:, :0])
    bad = cb.copy()
    bad[3, 5] = np.inf
    with pytest.raises(ValueError, match="expected codebook to contain no NaN or Inf values"):
        f(x, bad)
    with pytest.raises(ValueError, match=r"expected codebook_sqnorm to have shape \(512\)"):
        f(x, cb, np.zeros(511, np.float32))
    with pytest.raises(TypeError, match="expected codebook, codebook_sqnorm to share one dtype"):
        f(x, cb, np.zeros(512, np.float64))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_x_is_rejected(rng, variant, value):
    x = rng.standard_normal((700, 8)).astype(np.float32)
    x[345, 3] = value
    with pytest.raises(
        ValueError,
        match=r"^nearest_code: expected x to contain no NaN or Inf "
        r"values, got 1 of 5600\.",
    ):
        K.VARIANTS[variant](x, rng.standard_normal((30, 8)).astype(np.float32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_overflowing_distance_is_rejected(variant):
    x = np.full((3, 4), 3e38, np.float32)
    with pytest.raises(
        ValueError,
        match="expected the squared distances to fit in float32, got "
        "3 rows whose squared distance overflows",
    ):
        K.VARIANTS[variant](x, np.zeros((2, 4), np.float32))


# ---------------------------------------------------------------------------------------------
# Optional cross-check against PyTorch
# ---------------------------------------------------------------------------------------------


@pytest.mark.oracle
def test_matches_torch_cdist(rng):
    torch = pytest.importorskip("torch")
    x, codebook, _ = _separated(rng, 1000, 300, 12, np.float32)
    expected = torch.cdist(torch.from_numpy(x), torch.from_numpy(codebook)).argmin(1).numpy()
    for variant in VARIANTS:
        np.testing.assert_array_equal(K.VARIANTS[variant](x, codebook)[0], expected)
