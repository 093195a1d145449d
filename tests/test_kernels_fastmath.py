"""Tests of kernels.fastmath: ulp error over float32 sweeps and float64 samples, exact special
values, dtype preservation, vectorization, and independence from the caller's fastmath flags."""

import re

import numpy as np
import pytest
from numba import njit

from kernels import fastmath as fm

F32_FUNCS = {"exp_f32": np.exp, "log_f32": np.log, "log1p_f32": np.log1p}
F64_FUNCS = {"exp_f64": np.exp, "log_f64": np.log, "log1p_f64": np.log1p}
TINY32 = np.finfo(np.float32).tiny
TINY64 = np.finfo(np.float64).tiny


def _loop(f):
    @njit
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])

    return loop


_LOOPS = {name: _loop(getattr(fm, name)) for name in list(F32_FUNCS) + list(F64_FUNCS)}


def _apply(name, x):
    out = np.empty_like(x)
    _LOOPS[name](x, out)
    return out


def _ordered(a):
    """Map float bits to integers that are monotonic in the float value (ulp steps)."""
    bits = a.view(np.int32 if a.dtype == np.float32 else np.int64).astype(np.int64)
    return np.where(
        bits < 0,
        -(bits & np.int64(0x7FFFFFFFFFFFFFFF if a.dtype == np.float64 else 0x7FFFFFFF)),
        bits,
    )


def _expected_f32(name, x):
    """NumPy's float64 result rounded to float32; exp's subnormal range flushed to 0 as
    documented."""
    with np.errstate(all="ignore"):
        ref = F32_FUNCS[name](x.astype(np.float64)).astype(np.float32)
    if name == "exp_f32":
        ref[ref < TINY32] = 0.0
    return ref


def _max_steps(got, want):
    """Largest distance in float steps between got and want (NaNs must match, and are skipped)."""
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    np.testing.assert_array_equal(nan_got, nan_want, err_msg="NaN pattern differs")
    ok = ~nan_want
    if not ok.any():
        return 0
    d = np.abs(_ordered(got[ok]) - _ordered(want[ok]))
    return int(d.max())


def _sweep32(stride, start=0):
    """Every ``stride``-th float32 bit pattern: all signs, exponents, NaN, inf and subnormals."""
    bits = np.arange(start, 1 << 32, stride, dtype=np.int64).astype(np.uint32)
    return bits.view(np.float32)


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(F32_FUNCS))
def test_float32_sweep_of_whole_range(name):
    # 4.2 million bit patterns; the stride is odd so every mantissa residue class is visited.
    x = _sweep32(1021, start=7)
    got = _apply(name, x)
    assert got.dtype == np.float32
    assert _max_steps(got, _expected_f32(name, x)) <= fm.ULP_BOUNDS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(F32_FUNCS))
def test_float32_dense_sweep(name):
    x = _sweep32(17, start=3)  # 253 million points
    for part in np.array_split(x, 16):
        assert _max_steps(_apply(name, part), _expected_f32(name, part)) <= fm.ULP_BOUNDS[name]


@pytest.mark.parametrize(
    "name, lo, hi", [("exp_f32", -88.0, 89.0), ("log_f32", 0.5, 2.0), ("log1p_f32", -0.5, 1.0)]
)
def test_float32_every_value_where_it_matters(name, lo, hi):
    # about 20 million evenly spaced float32 (in bit order) where the range-reduction boundaries
    # (k ln2 for exp, sqrt(2) 2^k for log) lie; every value when the range has fewer
    a = np.array([lo, hi], dtype=np.float32)
    ia, ib = _ordered(a)
    ints = np.arange(ia, ib + 1, 1 + (ib - ia) // 20_000_000, dtype=np.int64)
    bits = np.where(ints < 0, (-ints) | 0x80000000, ints).astype(np.uint32)
    x = bits.view(np.float32)
    assert _max_steps(_apply(name, x), _expected_f32(name, x)) <= fm.ULP_BOUNDS[name]


def _long_double_ok():
    return np.finfo(np.longdouble).nmant >= 63


@pytest.mark.skipif(not _long_double_ok(), reason="needs an 80-bit long double reference")
@pytest.mark.parametrize("name", list(F64_FUNCS))
def test_float64_random_samples(name, rng):
    n = 1 << 20
    lo, hi = fm.EXP_LIMITS[np.dtype(np.float64)]
    if name == "exp_f64":
        x = np.concatenate(
            [rng.uniform(lo, hi, n), rng.uniform(-1, 1, n) * 10.0 ** rng.uniform(-20, 0, n)]
        )
    elif name == "log_f64":
        x = np.concatenate(
            [
                rng.integers(1, 0x7FF0000000000000, n, dtype=np.int64).view(np.float64),
                1.0 + rng.uniform(-0.3, 0.5, n),
            ]
        )
    else:
        x = np.concatenate(
            [
                rng.uniform(-1, 1, n) * 10.0 ** rng.uniform(-30, 0, n),
                10.0 ** rng.uniform(0, 300, n),
                -1.0 + 10.0 ** rng.uniform(-15, 0, n),
            ]
        )
    got = _apply(name, x)
    want = F64_FUNCS[name](x.astype(np.longdouble)).astype(np.float64)
    assert _max_steps(got, want) <= fm.ULP_BOUNDS[name]


# ---------------------------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(dtype):
    name = "exp_f32" if dtype == np.float32 else "exp_f64"
    lo, hi = fm.EXP_LIMITS[np.dtype(dtype)]
    inf = dtype(np.inf)
    x = np.array(
        [
            -np.inf,
            np.inf,
            np.nan,
            0.0,
            -0.0,
            hi,
            np.nextafter(hi, inf),
            lo,
            np.nextafter(lo, -inf),
            -1e30,
            1e30,
            1.0,
        ],
        dtype=dtype,
    )
    y = _apply(name, x)
    tiny = np.finfo(dtype).tiny
    assert y[0] == 0 and y[1] == np.inf and np.isnan(y[2])
    assert y[3] == 1 and y[4] == 1
    assert np.isfinite(y[5]) and y[5] > np.finfo(dtype).max / 2  # largest finite result
    assert y[6] == np.inf  # first overflowing input
    assert y[7] >= tiny  # smallest normal result
    assert y[8] == 0  # flushed, not subnormal
    assert y[9] == 0 and y[10] == np.inf
    assert abs(float(y[11]) - np.e) <= np.spacing(dtype(np.e))


def test_exp_never_returns_subnormals():
    # the whole float32 range below LO and the boundary region, every value
    x = np.linspace(-200, -87, 1_000_001, dtype=np.float32)
    y = _apply("exp_f32", x)
    assert not np.any((y > 0) & (y < TINY32))
    y64 = _apply("exp_f64", np.linspace(-800, -700, 1_000_001))
    assert not np.any((y64 > 0) & (y64 < TINY64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_and_log1p_special_values(dtype):
    sfx = "_f32" if dtype == np.float32 else "_f64"
    tiny = np.finfo(dtype).tiny
    sub = dtype(tiny / 2**10)
    x = np.array(
        [0.0, -0.0, np.inf, -np.inf, -1.0, np.nan, 1.0, sub, np.finfo(dtype).max], dtype=dtype
    )
    y = _apply("log" + sfx, x)
    assert y[0] == -np.inf and y[1] == -np.inf and y[2] == np.inf
    assert np.isnan(y[3]) and np.isnan(y[4]) and np.isnan(y[5])
    assert y[6] == 0
    with np.errstate(all="ignore"):
        want = np.log(x[7:].astype(np.float64)).astype(dtype)
    np.testing.assert_allclose(y[7:], want, rtol=2 * np.finfo(dtype).eps)  # subnormal, max

    x1 = np.array([-1.0, -2.0, -np.inf, np.inf, np.nan, 0.0, 1e-30, -1e-30, 1.0], dtype=dtype)
    y1 = _apply("log1p" + sfx, x1)
    assert y1[0] == -np.inf and np.isnan(y1[1]) and np.isnan(y1[2]) and y1[3] == np.inf
    assert np.isnan(y1[4]) and y1[5] == 0
    assert y1[6] == x1[6] and y1[7] == x1[7]  # log1p(x) = x for tiny x, exactly
    assert abs(float(y1[8]) - np.log(2.0)) <= np.spacing(dtype(np.log(2.0)))


def test_generic_names_pick_the_dtype():
    @njit
    def both(a, b):
        return fm.exp(a), fm.log(a), fm.log1p(a), fm.exp(b), fm.log(b), fm.log1p(b)

    out = both(np.float32(0.5), 0.5)
    assert [type(v) for v in out] == [float] * 6  # boxed; check values for the precision
    assert out[0] == fm.exp_f32(np.float32(0.5)) and out[3] == fm.exp_f64(0.5)
    assert out[0] != out[3]  # the float32 result is rounded to float32
    assert isinstance(fm.exp(np.float32(1.0)), np.float32)  # from Python
    assert fm.log(1.0) == 0.0


# ---------------------------------------------------------------------------------------------
# Code generation: float32 stays float32, and loops vectorize
# ---------------------------------------------------------------------------------------------


def test_float32_loop_stays_float32_and_vectorizes():
    @njit
    def loop(x, o1, o2, o3):
        for i in range(x.shape[0]):
            o1[i] = fm.exp_f32(x[i])
            o2[i] = fm.log_f32(x[i])
            o3[i] = fm.log1p_f32(x[i])

    x = np.linspace(0.1, 3, 257, dtype=np.float32)
    outs = [np.empty_like(x) for _ in range(3)]
    loop(x, *outs)
    assert all(o.dtype == np.float32 for o in outs)
    ir = loop.inspect_llvm(loop.signatures[0])
    assert re.search(r"<(4|8|16) x float>", ir), "the loop did not vectorize"
    assert "fpext" not in ir and not re.search(r"x double>", ir), "silent float64 in the loop"
    assert not re.search(r"call[^\n]*@(expf|logf|log1pf|exp|log)\b", ir), "libm call left"


def test_float64_loop_vectorizes():
    loop = _loop(fm.exp_f64)
    x = np.linspace(-3, 3, 101)
    loop(x, np.empty_like(x))
    ir = loop.inspect_llvm(loop.signatures[0])
    assert re.search(r"<(2|4|8) x double>", ir)


def test_caller_fastmath_flags_do_not_change_results():
    # The functions are compiled on their own and inlined by LLVM with their strict flags, so a
    # caller with reassoc (or all of fastmath) must not fold (t + M) - M or the Fast2Sum term.
    def make(flags):
        @njit(fastmath=flags)
        def loop(x, o1, o2, o3):
            s = np.float32(0.0)
            for i in range(x.shape[0]):
                a, b, c = fm.exp_f32(x[i]), fm.log_f32(x[i]), fm.log1p_f32(x[i])
                o1[i], o2[i], o3[i] = a, b, c
                s += a  # a reduction that needs reassoc to vectorize
            return s

        return loop

    x = np.concatenate([_sweep32(65537), np.array([-np.inf, np.inf, np.nan], np.float32)])
    strict = [np.empty_like(x) for _ in range(3)]
    make(False)(x, *strict)
    for flags in ({"reassoc"}, {"reassoc", "contract", "nsz", "arcp"}, True):
        got = [np.empty_like(x) for _ in range(3)]
        make(flags)(x, *got)
        for g, s in zip(got, strict):
            np.testing.assert_array_equal(g, s)


# ---------------------------------------------------------------------------------------------
# exp_nonpos: exp for arguments <= 0, bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [pytest.param(7, marks=pytest.mark.slow), 997])
def test_exp_nonpos_is_exp_bit_for_bit_on_nonpositive_float32(stride):
    # every 7th non-positive float32 bit pattern (sign bit set; under -m slow: 2.4 GB and half a
    # minute; the default run takes every 997th), plus -0, -inf, NaN and LO
    bits = np.arange(1 << 31, 1 << 32, stride, dtype=np.int64).astype(np.uint32)
    lo = fm.EXP_LIMITS[np.dtype(np.float32)][0]
    edges = [0.0, -0.0, -np.inf, np.nan, lo, np.nextafter(lo, np.float32(0)), -87.5, -1e-45]
    x = np.concatenate([bits.view(np.float32), np.array(edges, np.float32)])
    got, want = np.empty_like(x), _apply("exp_f32", x)
    _loop(fm.exp_nonpos_f32)(x, got)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_exp_nonpos_is_exp_bit_for_bit_on_nonpositive_float64(rng):
    lo = fm.EXP_LIMITS[np.dtype(np.float64)][0]
    x = np.concatenate(
        [
            -np.abs(rng.standard_normal(1 << 20)) * 200,
            -rng.random(1 << 16) * 1e-300,
            np.linspace(lo - 1, lo + 1, 4097),
            [0.0, -0.0, -np.inf, np.nan, lo, -745.2, -1e308],
        ]
    )
    got, want = np.empty_like(x), _apply("exp_f64", x)
    _loop(fm.exp_nonpos_f64)(x, got)
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    assert fm.exp_nonpos(np.float32(-1.0)) == fm.exp(np.float32(-1.0))
    assert fm.exp_nonpos(-1.0) == fm.exp(-1.0)
