"""kernels/bias_act.py: the reference's backward against central differences, every variant
against the reference (float32 and float64, every activation, row scales, in place, strided
input, empty batches), the vectorizable tanh over the whole float range, the values that must
not overflow or go subnormal, bad input, and the CuPy variants on a device or in the CUDA
emulator."""

import numpy as np
import pytest

import kernels
from kernels import bias_act as K
from lvmcore.testing import PARITY_TOLERANCES, numerical_gradient

ACTS = K.ACTIVATIONS
DTYPES = [np.float32, np.float64]


def _inputs(rng, dtype, n=37, o=13, scale=3.0):
    a = (scale * rng.standard_normal((n, o))).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return a, b


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("scaled", [False, True])
def test_reference_backward_is_the_gradient(act, scaled, rng):
    """L = sum_n s_n sum_o G_no f(a_no + b_o): da and db against central differences."""
    a, b = _inputs(rng, np.float64, 6, 5, scale=1.5)
    if act == "relu":
        a[np.abs(a + b) < 1e-3] += 0.1  # away from the kink
    G = rng.standard_normal(a.shape)
    s = rng.random(6) + 0.5 if scaled else None
    w = s[:, None] if scaled else 1.0

    def loss():
        return float(np.sum(w * G * K.bias_act_ref(a, b, act)))

    da, db = K.bias_act_backward_ref(G, K.bias_act_ref(a, b, act), act, s)
    np.testing.assert_allclose(da, numerical_gradient(loss, a), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numerical_gradient(loss, b), rtol=1e-6, atol=1e-8)


def _variants(backward):
    table = K.BACKWARD_VARIANTS if backward else K.VARIANTS
    return [v for v in table if not v.startswith("cupy")]


@pytest.mark.parametrize("variant", _variants(False))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (37, 13), (0, 5), (300, 200)])
def test_forward_variant_matches_reference(variant, act, dtype, shape, rng):
    a, b = _inputs(rng, dtype, *shape)
    want = K.bias_act_ref(a, b, act)
    got = K.VARIANTS[variant](a, b, act)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_allclose(got, want, **PARITY_TOLERANCES[np.dtype(dtype)])
    strided = np.asfortranarray(a)  # a strided input is read as it is
    np.testing.assert_allclose(
        K.VARIANTS[variant](strided, b, act), want, **PARITY_TOLERANCES[np.dtype(dtype)]
    )
    K.VARIANTS[variant](a, b, act, out=a)  # in place over the GEMM output
    np.testing.assert_allclose(a, want, **PARITY_TOLERANCES[np.dtype(dtype)])


@pytest.mark.parametrize("variant", _variants(True))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (37, 13), (0, 5), (300, 200)])
@pytest.mark.parametrize("scaled", [False, True])
def test_backward_variant_matches_reference(variant, act, dtype, shape, scaled, rng):
    a, b = _inputs(rng, dtype, *shape)
    y = K.bias_act_ref(a, b, act)
    dy = rng.standard_normal(shape).astype(dtype)
    s = rng.standard_normal(shape[0]).astype(dtype) if scaled else None
    want_da, want_db = K.bias_act_backward_ref(dy, y, act, s)
    da, db = K.BACKWARD_VARIANTS[variant](dy, y, act, s)
    tol = PARITY_TOLERANCES[np.dtype(dtype)]
    assert da.dtype == db.dtype == dtype and db.shape == (shape[1],)
    np.testing.assert_allclose(da, want_da, **tol)
    # db sums N terms: the reference and the kernel add them in different orders
    np.testing.assert_allclose(db, want_db, rtol=tol["rtol"], atol=tol["atol"] * max(1, shape[0]))
    da2, db2 = K.BACKWARD_VARIANTS[variant](dy, y, act, s, out=dy)  # in place over dy
    assert da2 is dy
    np.testing.assert_allclose(dy, want_da, **tol)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", DTYPES)
def test_db_does_not_depend_on_the_thread_count(dtype, rng):
    import numba

    a, b = _inputs(rng, dtype, 5000, 7)
    y = K.bias_act_numba_v1(a, b, "tanh")
    dy = rng.standard_normal(a.shape).astype(dtype)
    old = numba.get_num_threads()
    try:
        results = []
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            results.append(K.bias_act_backward_numba_v1(dy, y, "tanh")[1])
    finally:
        numba.set_num_threads(old)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype, bound", [(np.float32, 6.0), (np.float64, 2.0)])
def test_tanh_is_accurate_over_the_whole_range(dtype, bound):
    """ulp error of the vectorizable tanh against the correctly rounded one (NumPy's in a
    wider type), on a dense grid, near zero, near the clamp and far out."""
    grid = np.concatenate(
        [
            np.linspace(-12, 12, 2_000_001),
            np.geomspace(1e-30, 20, 200_001),
            -np.geomspace(1e-30, 20, 200_001),
            np.array([0.0, -0.0, 0.625, -0.625, 7.9053, 9.0, 1e30, -1e30]),
        ]
    ).astype(dtype)
    y = np.zeros(1, dtype)
    got = K.bias_act_numba_v1(grid[:, None], y, "tanh")[:, 0]
    wide = np.longdouble if dtype == np.float64 else np.float64
    ref = np.tanh(grid.astype(wide))
    ulp = np.spacing(np.abs(ref).astype(dtype)).astype(wide)
    err = np.abs(got.astype(wide) - ref) / ulp
    assert float(err.max()) <= bound, float(err.max())
    special = np.array([np.nan, np.inf, -np.inf], dtype)
    out = K.bias_act_numba_v1(special[:, None], y, "tanh")[:, 0]
    assert np.isnan(out[0]) and out[1] == 1 and out[2] == -1


@pytest.mark.parametrize("variant", _variants(False))
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs_neither_overflow_nor_go_subnormal(variant, dtype):
    a = np.array([[-1e4, -100.0, 100.0, 1e4, np.nan]], dtype)
    b = np.zeros(5, dtype)
    tanh = K.VARIANTS[variant](a, b, "tanh")[0]
    np.testing.assert_array_equal(tanh[:4], [-1, -1, 1, 1])
    sig = K.VARIANTS[variant](a, b, "sigmoid")[0]
    sp = K.VARIANTS[variant](a, b, "softplus")[0]
    relu = K.VARIANTS[variant](a, b, "relu")[0]
    assert sig[2] == sig[3] == 1 and sp[3] == 1e4 and sp[2] == 100
    assert all(np.isnan(v[4]) for v in (tanh, sig, sp, relu))
    tiny = np.finfo(dtype).tiny
    for v in (sig, sp):
        assert 0 <= v[0] < tiny
        if variant != "ref":  # the kernels flush what would be subnormal to exact zeros
            assert v[0] == 0 and (v[1] == 0 or v[1] >= tiny)
    y = K.VARIANTS[variant](a[:, :4], b[:4], "softplus")
    da, _ = K.BACKWARD_VARIANTS[variant](np.ones_like(y), y, "softplus")
    np.testing.assert_allclose(da[0, 2:], [1, 1])
    assert 0 <= da[0, 0] < tiny


def test_float32_kernels_stay_float32():
    """No silent float64 in the float32 loops (PERF-NOTES, "Silent float64"): the forward has
    no double arithmetic at all; the backward's only doubles are db's float64 partial sums."""
    import re

    from numba import njit

    a, b = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    fwd = njit(parallel=True, error_model="numpy")(K._forward_v1.py_func)  # uncached, to inspect
    bwd = njit(parallel=True, error_model="numpy")(K._backward_v1.py_func)
    for code in range(4):
        fwd(a.copy(), b, code, 2)
        bwd(a.copy(), a, a[:, 0].copy(), True, np.zeros((2, 3)), code, 2)
    ir = fwd.inspect_llvm(fwd.signatures[0])
    assert re.search(r"\bfmul( [a-z]+)* (<\d+ x )?float", ir)  # the check works
    assert not re.search(r"\bf(add|sub|mul|div)( [a-z]+)* (<\d+ x )?double", ir)
    assert not re.search(r"\bfpext\b", ir)
    ir = bwd.inspect_llvm(bwd.signatures[0])
    assert not re.search(r"\bf(sub|mul|div)( [a-z]+)* (<\d+ x )?double", ir)


@pytest.mark.parametrize(
    "args, err, match",
    [
        (dict(act="gelu"), kernels.InvalidParameterError, "'act' parameter of bias_act"),
        (dict(a=np.ones((3, 4), np.int64)), TypeError, "expected a to have dtype float32"),
        (dict(b=np.ones(5, np.float32)), ValueError, r"expected b of shape \(4,\)"),
        (dict(b=np.ones(4, np.float64)), TypeError, "expected b to have the dtype of a"),
        (dict(a=np.ones(4, np.float32)), ValueError, "expected a to have 2 dimensions"),
        (dict(a=[[1.0]]), TypeError, "expected a to be a numpy.ndarray"),
        (dict(out=np.ones((3, 5), np.float32)), ValueError, "expected out to be a C-contig"),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_forward_checks_its_arguments(args, err, match, backend):
    kw = dict(a=np.ones((3, 4), np.float32), b=np.ones(4, np.float32), act="tanh", out=None)
    kw.update(args)
    with pytest.raises(err, match=match):
        K.bias_act(kw["a"], kw["b"], kw["act"], kw["out"], backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_backward_checks_its_arguments(backend):
    dy = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="expected y to match dy"):
        K.bias_act_backward(dy, np.ones((3, 5), np.float32), "tanh", backend=backend)
    with pytest.raises(ValueError, match=r"expected row_scale to be a float32 array of shape"):
        K.bias_act_backward(dy, dy.copy(), "tanh", np.ones(4, np.float32), backend=backend)
    with pytest.raises(ValueError, match="overlapping y"):
        y = dy.copy()
        K.bias_act_backward(dy, y, "tanh", out=y, backend=backend)
    with pytest.raises(kernels.InvalidParameterError, match="'act' parameter"):
        K.bias_act_backward(dy, dy.copy(), "elu", backend=backend)


def test_registry_and_engine_dispatch():
    assert kernels.get("bias_act", "numba") is K.bias_act_numba_v1
    assert kernels.get("bias_act_backward", "numpy") is K.bias_act_backward_ref
    assert {r.backend for r in kernels.records("bias_act")} == {"numpy", "numba", "cupy"}


# --- CuPy: on a device, or in the CUDA emulator (tests/cuda_emu) -----------------------------


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaled", [False, True])
def test_cupy_variants_match_the_reference(cp, act, dtype, scaled, rng):
    a, b = _inputs(rng, dtype, 19, 7)
    dy = rng.standard_normal(a.shape).astype(dtype)
    s = rng.standard_normal(19).astype(dtype) if scaled else None
    y = K.bias_act_ref(a, b, act)
    want_da, want_db = K.bias_act_backward_ref(dy, y, act, s)
    fwd, bwd = kernels.get("bias_act", "cupy"), kernels.get("bias_act_backward", "cupy")
    got = fwd(cp.asarray(a), cp.asarray(b), act)
    out = cp.asarray(dy)
    da, db = bwd(out, cp.asarray(y), act, None if s is None else cp.asarray(s), out)
    tol = PARITY_TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(cp.asnumpy(got), y, **tol)
    np.testing.assert_allclose(cp.asnumpy(da), want_da, **tol)
    np.testing.assert_allclose(cp.asnumpy(db), want_db, rtol=tol["rtol"], atol=tol["atol"] * 19)
    with pytest.raises(TypeError, match="cupy.ndarray"):
        fwd(a, cp.asarray(b), act)
