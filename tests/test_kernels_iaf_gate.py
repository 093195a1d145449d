"""kernels/iaf_gate.py: the reference's backward against central differences, every variant
against the reference (float32 and float64, odd sizes, every combination of absent upstream
gradients, preallocated outputs), gates that saturate, NaN and Inf as the reference's, results
independent of the thread count, float32 kept float32, bad input, and the CuPy variants on a
device or in the CUDA emulator. The IAF step that calls the kernel: test_flows_iaf_gate.py."""

import numpy as np
import pytest

import kernels
from kernels import iaf_gate as K
from lvmcore.testing import PARITY_TOLERANCES, gradcheck

DTYPES = [np.float32, np.float64]
SIZES = [(n, z) for n in (0, 1, 7, 33, 1001) for z in (1, 3, 17)]


def _inputs(rng, dtype, n, z, scale=3.0):
    y = (scale * rng.standard_normal((n, 2, z))).astype(dtype)
    x = rng.standard_normal((n, z)).astype(dtype)
    return y, x


def _upstream(rng, dtype, n, z):
    return rng.standard_normal((n, z)).astype(dtype), rng.standard_normal(n).astype(dtype)


def _cpu_variants(table):
    return [v for v in table if not v.startswith("cupy")]


def _assert_parity(got, want, dtype, what="", n_terms=1):
    tol = PARITY_TOLERANCES[np.dtype(dtype)]
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape, what
    # logdet sums Z terms, in another order than NumPy's pairwise sum
    np.testing.assert_allclose(
        got, want, rtol=tol["rtol"], atol=tol["atol"] * n_terms, err_msg=what
    )


# --- the reference's backward is the gradient ------------------------------------------------


@pytest.mark.parametrize("which", ["both", "dz_new", "dlogdet"])
def test_reference_backward_is_the_gradient(which, rng):
    """L = sum G z_new + sum H logdet: dy (hence dm, ds_raw) and dz against central
    differences, with either upstream gradient absent."""
    n, Z = 4, 3
    y, z = _inputs(rng, np.float64, n, Z, scale=1.5)
    G, H = _upstream(rng, np.float64, n, Z)
    G = None if which == "dlogdet" else G
    H = None if which == "dz_new" else H

    def loss():
        z_new, _, _, logdet = K.iaf_gate_ref(y, z, 0.7)
        total = 0.0
        if G is not None:
            total += float(np.sum(G * z_new))
        if H is not None:
            total += float(np.sum(H * logdet))
        return total

    _, s, oms, _ = K.iaf_gate_ref(y, z, 0.7)
    dy, dz = K.iaf_gate_backward_ref(G, H, y, z, s, oms)
    gradcheck(loss, {"y": y, "z": z}, {"y": dy, "z": dz})


# --- every variant against the reference ------------------------------------------------------


@pytest.mark.parametrize("variant", _cpu_variants(K.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, Z", SIZES)
def test_forward_variant_matches_reference(variant, dtype, n, Z, rng):
    y, z = _inputs(rng, dtype, n, Z)
    want = K.iaf_gate_ref(y, z, 1.0)
    got = K.VARIANTS[variant](y, z, 1.0)
    for g, w, name in zip(got, want, ("z_new", "s", "oms", "logdet")):
        _assert_parity(g, w, dtype, name, Z if name == "logdet" else 1)
    outs = [np.full((n, Z), np.nan, dtype) for _ in range(3)] + [np.full(n, np.nan, dtype)]
    again = K.VARIANTS[variant](y, z, 1.0, *outs)
    assert all(a is o for a, o in zip(again, outs))
    for g, w in zip(again, got):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("variant", _cpu_variants(K.BACKWARD_VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, Z", SIZES)
@pytest.mark.parametrize("which", ["both", "dz_new", "dlogdet", "none"])
@pytest.mark.parametrize("need_dz", [True, False])
def test_backward_variant_matches_reference(variant, dtype, n, Z, which, need_dz, rng):
    y, z = _inputs(rng, dtype, n, Z)
    _, s, oms, _ = K.iaf_gate_ref(y, z, 1.0)
    G, H = _upstream(rng, dtype, n, Z)
    G = G if which in ("both", "dz_new") else None
    H = H if which in ("both", "dlogdet") else None
    want_dy, want_dz = K.iaf_gate_backward_ref(G, H, y, z, s, oms, need_dz=need_dz)
    dy, dz = K.BACKWARD_VARIANTS[variant](G, H, y, z, s, oms, need_dz=need_dz)
    _assert_parity(dy, want_dy, dtype, "dy")
    if need_dz:
        _assert_parity(dz, want_dz, dtype, "dz")
    else:
        assert dz is None and want_dz is None
    dy_out = np.full(y.shape, np.nan, dtype)
    dz_out = np.full(z.shape, np.nan, dtype) if need_dz else None
    dy2, dz2 = K.BACKWARD_VARIANTS[variant](G, H, y, z, s, oms, dy_out, dz_out, need_dz)
    assert dy2 is dy_out and dz2 is dz_out
    np.testing.assert_array_equal(dy2, dy)
    if need_dz:
        np.testing.assert_array_equal(dz2, dz)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_backward_is_the_reference_bit_for_bit(dtype, rng):
    """The Numba backward evaluates the reference's expressions in the same order."""
    y, z = _inputs(rng, dtype, 301, 17)
    _, s, oms, _ = K.iaf_gate_ref(y, z, 1.0)
    G, H = _upstream(rng, dtype, 301, 17)
    for args in ((G, H), (G, None), (None, H)):
        want = K.iaf_gate_backward_ref(*args, y, z, s, oms)
        got = K.iaf_gate_backward_numba_v1(*args, y, z, s, oms)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


# --- saturated gates ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", _cpu_variants(K.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_gates_are_exact_and_never_subnormal(variant, dtype, rng):
    """t = +-100, +-1e4 and +-inf: s and 1 - s round to 0 or 1 (or are tiny), log s is t or 0;
    logdet is finite, or -inf where a t is -inf, as the reference's."""
    t = np.array(
        [[-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], [1e4, np.inf, 0.5, -np.inf, 1.0, 2.0, 3.0]]
    )
    n, Z = t.shape
    y = np.empty((n, 2, Z), dtype)
    y[:, 0] = rng.standard_normal((n, Z))
    y[:, 1] = t
    z = rng.standard_normal((n, Z)).astype(dtype)
    want = K.iaf_gate_ref(y, z, 0.0)
    got = K.VARIANTS[variant](y, z, 0.0)
    for g, w, name in zip(got, want, ("z_new", "s", "oms", "logdet")):
        _assert_parity(g, w, dtype, name, Z if name == "logdet" else 1)
    z_new, s, oms, logdet = got
    assert np.isfinite(logdet[0]) and logdet[0] == pytest.approx(
        -1e4 - 100 - 20 - np.log(2), rel=1e-6
    )
    assert logdet[1] == -np.inf and want[3][1] == -np.inf
    assert s[0, 0] == 0 and oms[0, 0] == 1 and s[0, -1] == 1 and oms[0, -1] == 0
    assert s[1, 1] == 1 and oms[1, 1] == 0 and s[1, 3] == 0 and oms[1, 3] == 1
    np.testing.assert_array_equal(z_new[0, [0, -1]], [y[0, 0, 0], z[0, -1]])
    # oms where s rounds to 1 keeps its relative accuracy: sigmoid(-20), not 1 - s
    np.testing.assert_allclose(oms[0, 4], 1 / (1 + np.exp(20.0)), rtol=1e-6)
    tiny = np.finfo(dtype).tiny
    if variant != "ref":  # the kernels flush what would be subnormal to exact zeros
        for a in (s, oms):
            assert np.all((a == 0) | (a >= tiny))
    dy, dz = K.BACKWARD_VARIANTS[variant](z, np.ones_like(logdet), y, z, s, oms)
    want_dy, want_dz = K.iaf_gate_backward_ref(z, np.ones_like(logdet), y, z, s, oms)
    _assert_parity(dy, want_dy, dtype, "dy")
    _assert_parity(dz, want_dz, dtype, "dz")


# --- determinism and precision -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_the_thread_count(dtype, rng):
    import numba

    y, z = _inputs(rng, dtype, 5000, 50)  # above the parallel threshold
    G, H = _upstream(rng, dtype, 5000, 50)
    old = numba.get_num_threads()
    try:
        results = []
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            fwd = K.iaf_gate_numba_v1(y, z, 1.0)
            results.append(fwd + K.iaf_gate_backward_numba_v1(G, H, y, z, *fwd[1:3]))
    finally:
        numba.set_num_threads(old)
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)
    # logdet is the sequential sum over j of the kernel's own terms, on either path
    small = K.iaf_gate_numba_v1(y[:3], z[:3], 1.0)[3]
    np.testing.assert_array_equal(small, results[0][3][:3])


def test_float32_kernels_stay_float32():
    """No double arithmetic and no widening in the float32 loops (PERF-NOTES, "Silent
    float64")."""
    import re

    from numba import njit

    f32 = np.float32
    fwd = njit(error_model="numpy")(K._forward_rows.py_func)  # uncached, to inspect
    bwd = njit(error_model="numpy")(K._backward_rows.py_func)
    y, z = np.ones((4, 2, 3), f32), np.ones((4, 3), f32)
    outs = [np.empty((4, 3), f32) for _ in range(3)]
    fwd(y, z, f32(1), *outs, np.empty(4, f32), np.empty(3, f32), 0, 4)
    bwd(z, z[:, 0].copy(), y, z, z, z, np.empty_like(y), np.empty_like(z), True, True, True, 0, 4)
    for f in (fwd, bwd):
        ir = f.inspect_llvm(f.signatures[0])
        assert re.search(r"\bfmul( [a-z]+)* (<\d+ x )?float", ir)  # the check works
        assert not re.search(r"\bf(add|sub|mul|div)( [a-z]+)* (<\d+ x )?double", ir)
        assert not re.search(r"\bfpext\b", ir)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_as_in_the_reference(dtype):
    y, z = np.ones((3, 2, 4), dtype), np.ones((3, 4), dtype)
    y[0, 1, 1], y[1, 0, 2], y[2, 1, 0], z[2, 3] = np.nan, np.nan, np.inf, np.inf
    with np.errstate(invalid="ignore"):
        want = K.iaf_gate_ref(y, z, 1.0)
        want_b = K.iaf_gate_backward_ref(z, np.ones(3, dtype), y, z, *want[1:3])
    got = K.iaf_gate_numba_v1(y, z, 1.0)
    got_b = K.iaf_gate_backward_numba_v1(z, np.ones(3, dtype), y, z, *got[1:3])
    for g, w in zip(got + got_b, want + want_b):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_allclose(g, w, rtol=1e-5, equal_nan=True)


# --- bad input ----------------------------------------------------------------------------------


def _fwd_args(dtype=np.float32, n=3, Z=4):
    return dict(y=np.ones((n, 2, Z), dtype), z=np.ones((n, Z), dtype), forget_bias=1.0)


@pytest.mark.parametrize(
    "args, err, match",
    [
        (dict(y=np.ones((3, 2, 4), np.int64)), TypeError, "expected y to have dtype float32"),
        (dict(z=np.ones((3, 4), np.float64)), TypeError, "expected z to have the dtype of y"),
        (dict(y=np.ones((3, 3, 4), np.float32)), ValueError, r"expected y of shape \(N, 2, Z\)"),
        (dict(y=np.ones((3, 2, 0), np.float32)), ValueError, "with Z >= 1"),
        (dict(y=np.ones((3, 8), np.float32)), ValueError, "expected y to have 3 dimensions"),
        (dict(z=np.ones((3, 5), np.float32)), ValueError, r"expected z of shape \(3, 4\)"),
        (dict(z=np.ones((2, 4), np.float32)), ValueError, r"expected z of shape \(3, 4\)"),
        (dict(z=np.ones((3, 8), np.float32)[:, ::2]), ValueError, "expected z to be C-contig"),
        (dict(y=np.ones((3, 4, 4), np.float32)[:, ::2]), ValueError, "expected y to be C-contig"),
        (dict(z=[[1.0] * 4] * 3), TypeError, "expected z to be a numpy.ndarray"),
        (dict(forget_bias=np.nan), kernels.InvalidParameterError, "'forget_bias' parameter"),
        (dict(forget_bias="1"), kernels.InvalidParameterError, "'forget_bias' parameter"),
        (dict(s_out=np.ones((3, 5), np.float32)), ValueError, "expected s_out to be a C-contig"),
        (dict(logdet_out=np.ones(3, np.float64)), ValueError, "expected logdet_out to be a C-"),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_forward_checks_its_arguments(args, err, match, backend):
    kw = _fwd_args()
    kw.update(args)
    with pytest.raises(err, match=match):
        K.iaf_gate(**kw, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_forward_outputs_overlap_nothing(backend):
    kw = _fwd_args()
    with pytest.raises(
        ValueError, match="expected z_new_out to overlap no input, got an array overlapping z"
    ):
        K.iaf_gate(**kw, z_new_out=kw["z"], backend=backend)
    s = np.empty((3, 4), np.float32)
    with pytest.raises(
        ValueError, match="expected oms_out to overlap no input, got an array overlapping s_out"
    ):
        K.iaf_gate(**kw, s_out=s, oms_out=s, backend=backend)


def _bwd_args(dtype=np.float32, n=3, Z=4):
    f = _fwd_args(dtype, n, Z)
    ones = np.ones((n, Z), dtype)
    return dict(
        dz_new=ones, dlogdet=np.ones(n, dtype), y=f["y"], z=f["z"], s=ones / 2, oms=ones / 2
    )


@pytest.mark.parametrize(
    "args, err, match",
    [
        (
            dict(dz_new=np.ones((3, 5), np.float32)),
            ValueError,
            r"expected dz_new of shape \(3, 4\)",
        ),
        (dict(dlogdet=np.ones(4, np.float32)), ValueError, r"expected dlogdet of shape \(3,\)"),
        (dict(dlogdet=np.ones((3, 1), np.float32)), ValueError, "expected dlogdet to have 1 dim"),
        (dict(s=np.ones((3, 4), np.float64)), TypeError, "expected s to have the dtype of y"),
        (dict(oms=np.ones((3, 8), np.float32)[:, ::2]), ValueError, "expected oms to be C-contig"),
        (
            dict(dz_new=np.ones((3, 4), np.int32)),
            TypeError,
            "expected dz_new to have dtype float32",
        ),
        (dict(need_dz=1), TypeError, "expected need_dz to be a bool"),
        (
            dict(need_dz=False, dz_out=np.ones((3, 4), np.float32)),
            ValueError,
            "expected dz_out None",
        ),
        (dict(dy_out=np.ones((3, 4), np.float32)), ValueError, "expected dy_out to have 3 dim"),
        (dict(dz_out=np.ones((3, 4), np.float64)), ValueError, "expected dz_out to be a C-contig"),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_backward_checks_its_arguments(args, err, match, backend):
    kw = _bwd_args()
    kw.update(args)
    with pytest.raises(err, match=match):
        K.iaf_gate_backward(**kw, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_backward_outputs_overlap_nothing(backend):
    kw = _bwd_args()
    with pytest.raises(
        ValueError, match="expected dz_out to overlap no input, got an array overlapping dz_new"
    ):
        K.iaf_gate_backward(**kw, dz_out=kw["dz_new"], backend=backend)


def test_registry_and_engine_dispatch():
    assert kernels.get("iaf_gate", "numba") is K.iaf_gate_numba_v1
    assert kernels.get("iaf_gate_backward", "numpy") is K.iaf_gate_backward_ref
    for op in ("iaf_gate", "iaf_gate_backward"):
        assert {r.backend for r in kernels.records(op)} == {"numpy", "numba", "cupy"}
    with pytest.raises(ValueError, match="expected backend to be one of"):
        K.iaf_gate(**_fwd_args(), backend="torch")


# --- CuPy: on a device, or in the CUDA emulator (tests/cuda_emu) -----------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, Z", [(0, 3), (1, 1), (7, 3), (33, 17), (70, 40)])
def test_cupy_forward_matches_the_reference(cp, dtype, n, Z, rng):
    y, z = _inputs(rng, dtype, n, Z)
    if n > 1:
        y[1, 1, 0], y[0, 1, -1] = -np.inf, 1e4  # a -inf logdet, a saturated gate
    want = K.iaf_gate_ref(y, z, 1.0)
    fwd = kernels.get("iaf_gate", "cupy")
    got = fwd(cp.asarray(y), cp.asarray(z), 1.0)
    for g, w, name in zip(got, want, ("z_new", "s", "oms", "logdet")):
        _assert_parity(cp.asnumpy(g), w, dtype, name, Z if name == "logdet" else 1)
    outs = [cp.empty((n, Z), dtype) for _ in range(3)] + [cp.empty(n, dtype)]
    again = fwd(cp.asarray(y), cp.asarray(z), 1.0, *outs)
    assert all(a is o for a, o in zip(again, outs))
    with pytest.raises(TypeError, match="expected y to be a cupy.ndarray"):
        fwd(y, cp.asarray(z), 1.0)
    with pytest.raises(ValueError, match="expected z to be C-contiguous"):
        fwd(cp.ones((2, 2, 3), dtype), cp.ones((2, 6), dtype)[:, ::2], 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["both", "dz_new", "dlogdet", "none"])
@pytest.mark.parametrize("need_dz", [True, False])
def test_cupy_backward_matches_the_reference(cp, dtype, which, need_dz, rng):
    n, Z = 19, 7
    y, z = _inputs(rng, dtype, n, Z)
    _, s, oms, _ = K.iaf_gate_ref(y, z, 1.0)
    G, H = _upstream(rng, dtype, n, Z)
    G = G if which in ("both", "dz_new") else None
    H = H if which in ("both", "dlogdet") else None
    want_dy, want_dz = K.iaf_gate_backward_ref(G, H, y, z, s, oms, need_dz=need_dz)
    bwd = kernels.get("iaf_gate_backward", "cupy")

    def dev(a):
        return None if a is None else cp.asarray(a)

    dy_out = cp.asarray(np.full(y.shape, np.nan, dtype))
    dy, dz = bwd(dev(G), dev(H), dev(y), dev(z), dev(s), dev(oms), dy_out, None, need_dz)
    assert dy is dy_out
    _assert_parity(cp.asnumpy(dy), want_dy, dtype, "dy")
    if need_dz:
        _assert_parity(cp.asnumpy(dz), want_dz, dtype, "dz")
    else:
        assert dz is None
