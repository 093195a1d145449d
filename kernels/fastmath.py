"""Vectorizable exp, log and log1p for Numba kernels (float32 and float64).

Why
---
pip Numba has no SVML: ``math.exp`` / ``math.log`` lower to scalar libm calls, so a loop that calls
them never vectorizes (PERF-NOTES, "No SVML in pip Numba"). The functions here are straight-line
arithmetic, integer bit casts and selects, with no calls and no branches left after LLVM's
if-conversion, so a loop that calls them vectorizes to ``<16 x float>`` / ``<8 x double>`` on
AVX-512 (``<8 x float>`` on AVX2).

Math
----
exp(x), Cody-Waite range reduction::

    n = rint(x / ln2)                  (magic-number rounding: (x log2e + 1.5 2^p) - 1.5 2^p)
    r = (x - n C1) - n C2              C1 + C2 = ln2, C1 with trailing zero bits; |r| <= ln2 / 2
    exp(x) = exp(r) 2^n                2^n = 2^(n >> 1) 2^(n - (n >> 1)), both factors normal

- float32: exp(r) = 1 + r + r^2 P5(r), the Cephes ``expf`` minimax polynomial (S. L. Moshier).
- float64: the fdlibm ``e_exp.c`` rational form exp(r) = 1 + 2r / (R(r^2) - r), with its
  degree-5 Remez polynomial in r^2 (one division).

log(x), reduction by bit manipulation (as musl's logf)::

    x = 2^k m,   m in [sqrt(1/2), sqrt(2)),   f = m - 1 (exact)
    log(x) = k ln2 + log1p(f)

- float32: log1p(f) = f - f^2/2 + f^3 P8(f), the Cephes ``logf`` polynomial; no division.
- float64: fdlibm ``e_log.c``: s = f / (2 + f), log1p(f) = 2 atanh(s) with its degree-7 Remez
  polynomial in s^2 (one division).
- Subnormal x is scaled by 2^p (p = 23 or 52) first, so log of a subnormal is exact to the same
  error (unless the FPU runs with DAZ, which reads it as 0: log gives -inf).

log1p(x) = log(w) + c / w, where w = fl(1 + x) and c = (1 + x) - w is its rounding error, exact by
Fast2Sum: c = x - (w - 1) when |x| <= 1, c = 1 - (w - x) otherwise. The correction is first-order
exact (log(w + c) = log(w) + c/w + O(c^2/w^2), with c/w <= 2^-p).

All arithmetic stays in the argument's dtype: every constant is a typed NumPy scalar, the integer
exponent work happens inside ``@intrinsic`` bit casts at the float's own width (i32 for float32),
and multiply-adds are explicit ``llvm.fma`` calls, so results do not depend on whether the caller
allows contraction.

Special values (tested exactly)
-------------------------------
====================  ============================  =================================
 input                 exp                           log / log1p
====================  ============================  =================================
 NaN                   NaN                           NaN
 -inf                  +0                            NaN
 +inf                  +inf                          +inf
 x > HI                +inf (overflow)               -
 x < LO                +0  (flushed, see below)      -
 0 (log) / -1 (log1p)  -                             -inf
 < 0 (log) / < -1      -                             NaN
====================  ============================  =================================

HI is the largest float whose exp rounds to a finite value (float32 88.72283172607422,
float64 709.782712893384). **Denormals are never produced**: LO is the smallest float >= ln of the
smallest normal (float32 -87.33654022216797, float64 -708.3964185322641), and for x < LO, where
the true result is subnormal (or rounds to 0 anyway), exp returns exactly 0: an absolute error
below the smallest normal, 2^-126 / 2^-1022, which is what flush-to-zero hardware would give. Inputs
below LO are clamped before the arithmetic, so no subnormal is produced even in an intermediate:
subnormal operands and results take microcode assists on Intel cores (PERF-NOTES, "Denormals":
4x slower GEMMs), and the importance-weight kernel feeds -inf masks and very negative log-weights
through exp all the time.

Accuracy (measured; tests/test_kernels_fastmath.py asserts the bounds in ``ULP_BOUNDS``)
-----------------------------------------------------------------------------------------
"steps": the largest distance, in floats, from the correctly rounded result (float32: NumPy's
float64 result rounded to float32; float64: an 80-bit long double reference). "ulp": the largest
error against the unrounded reference, in units of the last place of the result (0.5 is
correctly rounded). NaN results occur exactly where the reference has them.

============  ==============================================  =====  =========  =====
 function      inputs                                           steps  ulp        bound
============  ==============================================  =====  =========  =====
 exp_f32       all 2^32 float32 bit patterns (exhaustive)       1      1.010      1
 log_f32       all 2^32 float32 bit patterns (exhaustive)       1      0.827      1
 log1p_f32     all 2^32 float32 bit patterns (exhaustive)       1      1.437      2
 exp_f64       2^22 random in [LO, HI] and near 0               1      0.905      1
 log_f64       2^22 random positive bit patterns, and near 1    1      0.835      1
 log1p_f64     2^22 random in (-1, 1), near -1, up to 1e300     1      1.437      2
============  ==============================================  =====  =========  =====

(exp_f32 below LO counts as exact when it returns 0, the documented flush. The exhaustive float32
sweep took 8 minutes and is not in the test suite; the tests sweep every 1021st bit pattern,
20 million evenly spaced floats in each function's critical range, and with ``-m slow`` every
17th pattern.)

Use
---
Call ``exp_f32(x)`` etc. from ``@njit`` code, or the dtype-generic ``exp(x)``, ``log(x)``,
``log1p(x)`` (``numba.extending.overload``; from Python they work on scalars only). They are
ordinary ``@njit`` functions that LLVM inlines into the calling loop. They are deliberately *not*
``inline="always"``: Numba-level inlining compiles their bodies under the caller's fastmath flags,
and with ``reassoc`` + ``nsz`` (or ``fastmath=True``) LLVM folds the magic-number rounding
``(t + M) - M`` and the Fast2Sum correction ``x - ((1 + x) - 1)`` away: measured, exp_f32 and
log1p_f32 inlined that way into such a loop return results with relative error 1.0. Compiled
separately, their instructions keep their own strict flags after LLVM inlines them, so a kernel
may use ``fastmath={"reassoc"}`` (even ``True``) to vectorize its own reductions and get
bit-identical results (tested).

Variants
--------
- ``*_f32``, ``*_f64``: the only versions; scalar functions, so there is no reference/variant
  table. The tests compare them against NumPy (float64 / long double), which is the reference.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = [
    "exp_f32",
    "exp_f64",
    "exp_nonpos_f32",
    "exp_nonpos_f64",
    "log_f32",
    "log_f64",
    "log1p_f32",
    "log1p_f64",
    "exp",
    "log",
    "log1p",
    "exp_nonpos",
    "EXP_LIMITS",
    "ULP_BOUNDS",
]

# --------------------------------------------------------------------------------------------
# Intrinsics: bit-level work at the float's own width, and fused multiply-add
# --------------------------------------------------------------------------------------------

_FLOATS = (types.float32, types.float64)


def _layout(fty):
    """(integer type, exponent bias, mantissa bits, bits of sqrt(1/2)) for a Numba float type."""
    if fty == types.float32:
        return ir.IntType(32), 127, 23, 0x3F3504F3
    return ir.IntType(64), 1023, 52, 0x3FE6A09E667F3BCD


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma; vectorizes to vfmadd)."""
    if not (a == b == c and a in _FLOATS):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        name = "llvm.fma.f32" if signature.return_type == types.float32 else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), name)
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def _ldexp(typingctx, p, n):
    """p * 2**n for an integral float n with |n| <= 2 emax: two exponent-built normal factors."""
    if not (p == n and p in _FLOATS):
        return None

    def codegen(context, builder, signature, args):
        ity, bias, mbits, _ = _layout(signature.return_type)
        pv, nv = args
        ni = builder.fptosi(nv, ity)
        n1 = builder.ashr(ni, ir.Constant(ity, 1))
        n2 = builder.sub(ni, n1)
        shift, b = ir.Constant(ity, mbits), ir.Constant(ity, bias)
        s1 = builder.bitcast(builder.shl(builder.add(n1, b), shift), pv.type)
        s2 = builder.bitcast(builder.shl(builder.add(n2, b), shift), pv.type)
        return builder.fmul(builder.fmul(pv, s1), s2)

    return p(p, n), codegen


@intrinsic
def _pow2(typingctx, n):
    """2**n for an integral float n in [emin, emax]: one normal float built from exponent bits."""
    if n not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        ity, bias, mbits, _ = _layout(signature.return_type)
        ni = builder.fptosi(args[0], ity)
        e = builder.shl(builder.add(ni, ir.Constant(ity, bias)), ir.Constant(ity, mbits))
        return builder.bitcast(e, args[0].type)

    return n(n), codegen


def _split(builder, fty, xv):
    ity, _, mbits, sqrt_half = _layout(fty)
    off = ir.Constant(ity, sqrt_half)
    ix = builder.sub(builder.bitcast(xv, ity), off)
    return ity, mbits, off, ix


@intrinsic
def _mantissa(typingctx, x):
    """m in [sqrt(1/2), sqrt(2)) with x = 2^k m, for positive normal x (garbage otherwise)."""
    if x not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        ity, mbits, off, ix = _split(builder, signature.return_type, args[0])
        low = builder.and_(ix, ir.Constant(ity, (1 << mbits) - 1))
        return builder.bitcast(builder.add(low, off), args[0].type)

    return x(x), codegen


@intrinsic
def _exponent(typingctx, x):
    """k (as a float) with x = 2^k m, m in [sqrt(1/2), sqrt(2)), for positive normal x."""
    if x not in _FLOATS:
        return None

    def codegen(context, builder, signature, args):
        ity, mbits, off, ix = _split(builder, signature.return_type, args[0])
        return builder.sitofp(builder.ashr(ix, ir.Constant(ity, mbits)), args[0].type)

    return x(x), codegen


# --------------------------------------------------------------------------------------------
# Constants (typed, so float32 code never promotes to float64)
# --------------------------------------------------------------------------------------------

# exp limits: LO = smallest float >= ln(smallest normal); HI = largest float whose exp rounds to a
# finite value. Computed with mpmath at 200 bits; the tests check both sides of each.
EXP_LIMITS = {
    np.dtype(np.float32): (
        np.float32(float.fromhex("-0x1.5d589ep+6")),  # -87.33654022216797
        np.float32(float.fromhex("0x1.62e42ep+6")),
    ),  # 88.72283172607422
    np.dtype(np.float64): (
        np.float64(float.fromhex("-0x1.6232bdd7abcd2p+9")),  # -708.3964185322641
        np.float64(float.fromhex("0x1.62e42fefa39efp+9")),
    ),  # 709.782712893384
}

# Max ulp error asserted by the tests (see the table in the module docstring).
ULP_BOUNDS = {
    "exp_f32": 1,
    "log_f32": 1,
    "log1p_f32": 2,
    "exp_f64": 1,
    "log_f64": 1,
    "log1p_f64": 2,
}

_F32 = np.float32
_ZERO32, _ONE32, _HALF32 = _F32(0.0), _F32(1.0), _F32(0.5)
_INF32, _NAN32 = _F32(np.inf), _F32(np.nan)
_TINY32 = _F32(np.finfo(np.float32).tiny)
_LO32, _HI32 = EXP_LIMITS[np.dtype(np.float32)]
_LOG2E32 = _F32(1.0 / math.log(2.0))
_MAGIC32 = _F32(1.5 * 2.0**23)  # x + M rounds x to an integer for |x| < 2^22
_C1_32 = _F32(0.693359375)  # ln2 split for Cody-Waite (Cephes)
_C2_32 = _F32(-2.12194440e-4)
# Cephes expf: exp(r) = 1 + r + r^2 (((((E0 r + E1) r + E2) r + E3) r + E4) r + E5)
_E0_32, _E1_32, _E2_32 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_E3_32, _E4_32, _E5_32 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
# Cephes logf: log1p(f) = f - f^2/2 + f^3 P(f), P of degree 8, f in [sqrt(1/2) - 1, sqrt(2) - 1)
_L0_32, _L1_32, _L2_32 = _F32(7.0376836292e-2), _F32(-1.1514610310e-1), _F32(1.1676998740e-1)
_L3_32, _L4_32, _L5_32 = _F32(-1.2420140846e-1), _F32(1.4249322787e-1), _F32(-1.6668057665e-1)
_L6_32, _L7_32, _L8_32 = _F32(2.0000714765e-1), _F32(-2.4999993993e-1), _F32(3.3333331174e-1)
_SUB_SCALE32, _SUB_K32 = _F32(2.0**23), _F32(23.0)

_F64 = np.float64
_ZERO64, _ONE64, _HALF64, _TWO64 = _F64(0.0), _F64(1.0), _F64(0.5), _F64(2.0)
_INF64, _NAN64 = _F64(np.inf), _F64(np.nan)
_TINY64 = _F64(np.finfo(np.float64).tiny)
_LO64, _HI64 = EXP_LIMITS[np.dtype(np.float64)]
_LOG2E64 = _F64(float.fromhex("0x1.71547652b82fep+0"))
_MAGIC64 = _F64(1.5 * 2.0**52)
# fdlibm e_exp.c / e_log.c constants, from their hex forms
_LN2HI64 = _F64(float.fromhex("0x1.62e42fee00000p-1"))  # 6.93147180369123816490e-01
_LN2LO64 = _F64(float.fromhex("0x1.a39ef35793c76p-33"))  # 1.90821492927058770002e-10
_P1_64 = _F64(float.fromhex("0x1.555555555553ep-3"))  # 1.66666666666666019037e-01
_P2_64 = _F64(float.fromhex("-0x1.6c16c16bebd93p-9"))  # -2.77777777770155933842e-03
_P3_64 = _F64(float.fromhex("0x1.1566aaf25de2cp-14"))  # 6.61375632143793436117e-05
_P4_64 = _F64(float.fromhex("-0x1.bbd41c5d26bf1p-20"))  # -1.65339022054652515390e-06
_P5_64 = _F64(float.fromhex("0x1.6376972bea4d0p-25"))  # 4.13813679705723846039e-08
_LG1_64 = _F64(float.fromhex("0x1.5555555555593p-1"))  # 6.666666666666735130e-01
_LG2_64 = _F64(float.fromhex("0x1.999999997fa04p-2"))  # 3.999999999940941908e-01
_LG3_64 = _F64(float.fromhex("0x1.2492494229359p-2"))  # 2.857142874366239149e-01
_LG4_64 = _F64(float.fromhex("0x1.c71c51d8e78afp-3"))  # 2.222219843214978396e-01
_LG5_64 = _F64(float.fromhex("0x1.7466496cb03dep-3"))  # 1.818357216161805012e-01
_LG6_64 = _F64(float.fromhex("0x1.39a09d078c69fp-3"))  # 1.531383769920937332e-01
_LG7_64 = _F64(float.fromhex("0x1.2f112df3e5244p-3"))  # 1.479819860511658591e-01
_SUB_SCALE64, _SUB_K64 = _F64(2.0**52), _F64(52.0)


# --------------------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _exp_core_f32(xc):
    """(p, n) with exp(xc) = p 2^n for a clamped float32 xc: n = rint(xc / ln2), the Cody-Waite
    reduction and the degree-5 polynomial p of exp(r), r = xc - n ln2 (exp_f32, exp_nonpos_f32)."""
    n = (xc * _LOG2E32 + _MAGIC32) - _MAGIC32  # rint(x / ln2), |n| <= 128
    r = _fma(n, -_C1_32, xc)
    r = _fma(n, -_C2_32, r)
    p = _fma(_E0_32, r, _E1_32)
    p = _fma(p, r, _E2_32)
    p = _fma(p, r, _E3_32)
    p = _fma(p, r, _E4_32)
    p = _fma(p, r, _E5_32)
    return _fma(p, r * r, r) + _ONE32, n


@njit(nogil=True, cache=True, error_model="numpy")
def exp_f32(x):
    """exp(x) for float32 x; <= 1 ulp; 0 below LO (no subnormals), inf above HI, NaN -> NaN."""
    xc = x if x >= _LO32 else _LO32  # NaN -> LO: keeps the arithmetic finite
    xc = xc if xc <= _HI32 else _HI32
    p, n = _exp_core_f32(xc)
    y = _ldexp(p, n)
    y = y if x >= _LO32 else _ZERO32
    y = y if x <= _HI32 else _INF32
    return y if x == x else x


@njit(nogil=True, cache=True, error_model="numpy")
def exp_nonpos_f32(x):
    """exp(x) for float32 x <= 0 (and NaN, -inf): exp_f32's result bit for bit, with less work.

    After the clamp at LO, n = rint(x / ln2) lies in [-126, 0], so 2^n is a single normal float
    (exp_f32 multiplies by two factors to reach |n| up to 254); both scalings are exact powers
    of two applied to the same p, so the results are identical (tested). x > 0 is out of
    contract (no overflow clamp): the result is garbage there.
    """
    xc = x if x >= _LO32 else _LO32  # NaN -> LO: keeps the arithmetic finite
    p, n = _exp_core_f32(xc)
    y = p * _pow2(n)
    y = y if x >= _LO32 else _ZERO32
    return y if x == x else x


@njit(nogil=True, cache=True, error_model="numpy")
def log_f32(x):
    """log(x) for float32 x; <= 1 ulp; log(0) = -inf, log(inf) = inf, log(<0) = NaN."""
    sub = x < _TINY32
    xs = x * _SUB_SCALE32 if sub else x  # subnormals: scale into the normal range
    k = _exponent(xs) - (_SUB_K32 if sub else _ZERO32)
    f = _mantissa(xs) - _ONE32  # exact, in [sqrt(1/2) - 1, sqrt(2) - 1)
    z = f * f
    p = _fma(_L0_32, f, _L1_32)
    p = _fma(p, f, _L2_32)
    p = _fma(p, f, _L3_32)
    p = _fma(p, f, _L4_32)
    p = _fma(p, f, _L5_32)
    p = _fma(p, f, _L6_32)
    p = _fma(p, f, _L7_32)
    p = _fma(p, f, _L8_32)
    y = p * f * z
    y = _fma(k, _C2_32, y)
    y = _fma(-_HALF32, z, y)
    y = f + y
    y = _fma(k, _C1_32, y)
    y = y if x < _INF32 else _INF32
    y = y if x != _ZERO32 else -_INF32
    y = y if x >= _ZERO32 else _NAN32  # negative and NaN inputs
    return y


@njit(nogil=True, cache=True, error_model="numpy")
def log1p_f32(x):
    """log(1 + x) for float32 x; <= 2 ulp (1 measured); log1p(-1) = -inf, log1p(<-1) = NaN."""
    w = x + _ONE32
    big = (x > _ONE32) | (x < -_ONE32)
    c = (_ONE32 - (w - x)) if big else (x - (w - _ONE32))  # (1 + x) - w exactly (Fast2Sum)
    lw = log_f32(w)
    ok = (w > _ZERO32) & (w < _INF32)
    return lw + c / w if ok else lw


# --------------------------------------------------------------------------------------------
# float64
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _exp_core_f64(xc):
    """(p, n) with exp(xc) = p 2^n for a clamped float64 xc: fdlibm's reduction by ln2 in two
    parts and its rational approximation (exp_f64, exp_nonpos_f64)."""
    n = (xc * _LOG2E64 + _MAGIC64) - _MAGIC64  # |n| <= 1024
    hi = _fma(n, -_LN2HI64, xc)  # exact: LN2HI has 32 trailing zero bits
    lo = n * _LN2LO64
    r = hi - lo
    t = r * r
    c = _fma(t, _P5_64, _P4_64)
    c = _fma(c, t, _P3_64)
    c = _fma(c, t, _P2_64)
    c = _fma(c, t, _P1_64)
    c = _fma(-t, c, r)
    return _ONE64 - ((lo - (r * c) / (_TWO64 - c)) - hi), n


@njit(nogil=True, cache=True, error_model="numpy")
def exp_f64(x):
    """exp(x) for float64 x; <= 1 ulp; 0 below LO (no subnormals), inf above HI, NaN -> NaN."""
    xc = x if x >= _LO64 else _LO64
    xc = xc if xc <= _HI64 else _HI64
    p, n = _exp_core_f64(xc)
    y = _ldexp(p, n)
    y = y if x >= _LO64 else _ZERO64
    y = y if x <= _HI64 else _INF64
    return y if x == x else x


@njit(nogil=True, cache=True, error_model="numpy")
def exp_nonpos_f64(x):
    """exp(x) for float64 x <= 0 (and NaN, -inf): exp_f64's result bit for bit (n in
    [-1022, 0] after the clamp, one power-of-two factor); x > 0 is out of contract."""
    xc = x if x >= _LO64 else _LO64
    p, n = _exp_core_f64(xc)
    y = p * _pow2(n)
    y = y if x >= _LO64 else _ZERO64
    return y if x == x else x


@njit(nogil=True, cache=True, error_model="numpy")
def log_f64(x):
    """log(x) for float64 x; <= 1 ulp; log(0) = -inf, log(inf) = inf, log(<0) = NaN."""
    sub = x < _TINY64
    xs = x * _SUB_SCALE64 if sub else x
    k = _exponent(xs) - (_SUB_K64 if sub else _ZERO64)
    f = _mantissa(xs) - _ONE64
    s = f / (_TWO64 + f)
    z = s * s
    w = z * z
    t1 = w * _fma(w, _fma(w, _LG6_64, _LG4_64), _LG2_64)
    t2 = z * _fma(w, _fma(w, _fma(w, _LG7_64, _LG5_64), _LG3_64), _LG1_64)
    r = t2 + t1
    hfsq = _HALF64 * f * f
    y = _fma(k, _LN2HI64, -((hfsq - _fma(s, hfsq + r, k * _LN2LO64)) - f))
    y = y if x < _INF64 else _INF64
    y = y if x != _ZERO64 else -_INF64
    y = y if x >= _ZERO64 else _NAN64
    return y


@njit(nogil=True, cache=True, error_model="numpy")
def log1p_f64(x):
    """log(1 + x) for float64 x; <= 2 ulp (1 measured); log1p(-1) = -inf, log1p(<-1) = NaN."""
    w = x + _ONE64
    big = (x > _ONE64) | (x < -_ONE64)
    c = (_ONE64 - (w - x)) if big else (x - (w - _ONE64))
    lw = log_f64(w)
    ok = (w > _ZERO64) & (w < _INF64)
    return lw + c / w if ok else lw


# --------------------------------------------------------------------------------------------
# dtype-generic names for kernels written once for both precisions
# --------------------------------------------------------------------------------------------


def _generic(f32, f64, name):
    def scalar(x):
        if isinstance(x, np.float32):
            return np.float32(f32(x))  # the dispatcher boxes float32 results as Python floats
        return np.float64(f64(np.float64(x)))

    scalar.__name__ = name
    scalar.__doc__ = f"{name}(x): ``{f32.__name__}`` for float32 x, ``{f64.__name__}`` otherwise."

    @overload(scalar)
    def _ol(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        return None

    return scalar


exp = _generic(exp_f32, exp_f64, "exp")
log = _generic(log_f32, log_f64, "log")
log1p = _generic(log1p_f32, log1p_f64, "log1p")
exp_nonpos = _generic(exp_nonpos_f32, exp_nonpos_f64, "exp_nonpos")
