import numpy as np
import pytest

from kernels import adam_update as K
from lvmcore.testing import PARITY_TOLERANCES


@pytest.mark.parametrize("variant", ["numba_v1", "numba_v2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (K.PARALLEL_THRESHOLD + 3,)])
def test_variant_matches_reference(rng, variant, dtype, shape):
    p, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m, v = rng.standard_normal(shape).astype(dtype), rng.random(shape).astype(dtype)
    want = [a.copy() for a in (p, m, v)]
    K.adam_update_ref(*want[:1], g, *want[1:], 1e-3, 0.9, 0.999, 1e-6)
    K.VARIANTS[variant](p, g, m, v, 1e-3, 0.9, 0.999, 1e-6)
    for got, ref in zip((p, m, v), want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, **PARITY_TOLERANCES[np.dtype(dtype)])


# ---------------------------------------------------------------------------------------------
# adam_update_group: a whole optimizer's arrays in one call
# ---------------------------------------------------------------------------------------------

GROUP_SHAPES = [(7, 3), (1,), (0,), (200, 50), (K.PARALLEL_THRESHOLD + 3,), (13,)]


def _quads(rng, shapes, dtypes, strided_g=()):
    """(p, g, m, v) per shape; quadruple i in strided_g gets a strided view for g (read-only
    in the update, copied by it)."""
    out = []
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        p, m = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
        if i in strided_g:
            g = rng.standard_normal((*shape[:-1], 2 * shape[-1])).astype(dtype)[..., ::2]
        else:
            g = rng.standard_normal(shape).astype(dtype)
        out.append((p, g, m, rng.random(shape).astype(dtype)))
    return out


def _group(quads, **kw):
    return K.AdamGroup(*(list(a) for a in zip(*quads)), **kw)


@pytest.mark.parametrize("variant", ["ref", "numba_v1"])
@pytest.mark.parametrize(
    "dtypes", [(np.float32,) * 6, (np.float64,) * 6, (np.float32, np.float64) * 3]
)
def test_group_is_each_array_updated_alone(rng, variant, dtypes):
    """Bit for bit the per-array update (the numba group against numba_v2, whose loop it
    runs), three steps, mixed dtypes and sizes (empty, one element, above the parallel
    threshold)."""
    quads = _quads(rng, GROUP_SHAPES, dtypes, strided_g=(0, 4))
    alone = [tuple(a.copy() for a in q) for q in quads]
    group = _group(quads)
    single = K.adam_update_ref if variant == "ref" else K.adam_update_numba_v2
    for t in range(1, 4):
        args = (1e-3 * t, 0.9, 0.999, 1e-6 / t)
        K.GROUP_VARIANTS[variant](group, *args)
        for q in alone:
            single(*q, *args)
    for q, a in zip(quads, alone):
        for got, want in zip(q, a):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_numba_matches_the_reference(rng, dtype):
    quads = _quads(rng, GROUP_SHAPES, [dtype] * 6)
    ref = [tuple(a.copy() for a in q) for q in quads]
    K.adam_update_group_numba_v1(_group(quads), 1e-3, 0.9, 0.999, 1e-6)
    K.adam_update_group_ref(_group(ref), 1e-3, 0.9, 0.999, 1e-6)
    for q, r in zip(quads, ref):
        for got, want in zip(q, r):
            np.testing.assert_allclose(got, want, **PARITY_TOLERANCES[np.dtype(dtype)])


def test_group_holds_its_arrays_by_identity(rng):
    quads = _quads(rng, [(3,), (2, 2)], [np.float32] * 2)
    lists = [list(a) for a in zip(*quads)]
    group = K.AdamGroup(*lists)
    assert group.holds(*lists)
    swapped = [list(a) for a in lists]
    swapped[2][1] = swapped[2][1].copy()  # a moment buffer replaced (a loaded state)
    assert not group.holds(*swapped)
    assert not group.holds(*(a[:1] for a in lists))


def _bad_group_cases(rng):
    def quads(**change):
        q = {k: a for k, a in zip("pgmv", _quads(rng, [(4, 3)], [np.float32])[0])}
        q.update(change)
        return [[q[k]] for k in "pgmv"]

    p = np.zeros((4, 3), np.float32)
    read_only = p.copy()
    read_only.flags.writeable = False
    both = np.zeros((2, 4, 3), np.float32)
    return [
        (quads(g=np.zeros((4, 2), np.float32)), ValueError, r"g\[W\] to match p\[W\]"),
        (quads(m=np.zeros((4, 3), np.float64)), ValueError, r"m\[W\] to match p\[W\]"),
        (quads(p=read_only), ValueError, r"p\[W\] to be writeable"),
        (quads(m=both[0], v=both[0]), ValueError, r"m\[W\] and v\[W\] to be separate"),
        (quads(p=p.astype(np.int32)), TypeError, r"p\[W\] to have dtype float32 or float64"),
        (quads(v=[1.0, 2.0]), TypeError, r"v\[W\] to be a numpy.ndarray"),
    ]


def test_a_bad_group_is_refused_when_built_naming_the_array(rng):
    for lists, exc, match in _bad_group_cases(rng):
        with pytest.raises(exc, match=match):
            K.AdamGroup(*lists, names=["W"])
    q = [[a] for a in _quads(rng, [(2,)], [np.float32])[0]]
    with pytest.raises(ValueError, match="ps, gs, ms and vs of one length"):
        K.AdamGroup(q[0], q[1] * 2, q[2], q[3])
    with pytest.raises(TypeError, match="expected gs to be a list or tuple"):
        K.AdamGroup(q[0], q[1][0], q[2], q[3])
    with pytest.raises(ValueError, match="one name per parameter"):
        K.AdamGroup(*q, names=["a", "b"])
    with pytest.raises(TypeError, match="expected names to be a list or tuple"):
        K.AdamGroup(*q, names="a")
    with pytest.raises(ValueError, match="expected lib to be 'numpy' or 'cupy'"):
        K.AdamGroup(*q, lib="torch")
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"Adam.step: expected grads\['w'\] to match"):
        K.AdamGroup(
            [p],
            [np.zeros(4, np.float32)],
            [p.copy()],
            [p.copy()],
            names=["'w'"],
            roles=("params", "grads", "m", "v"),
            func="Adam.step",
        )


@pytest.mark.parametrize("variant", ["ref", "numba_v1", "cupy_v1"])
@pytest.mark.parametrize(
    "scalar, value",
    [
        ("step_size", float("inf")),
        ("step_size", float("nan")),
        ("beta1", 1.0),
        ("beta2", -0.1),
        ("eps_hat", -1e-8),
        ("eps_hat", "1e-8"),
        ("beta1", None),
        ("step_size", np.zeros(2)),
    ],
)
def test_group_update_checks_its_scalars_and_changes_nothing(rng, variant, scalar, value):
    quads = _quads(rng, [(5,)], [np.float32])
    before = [a.copy() for a in quads[0]]
    args = dict(step_size=1e-3, beta1=0.9, beta2=0.999, eps_hat=1e-8)
    args[scalar] = value
    lib = "cupy" if variant == "cupy_v1" else "numpy"
    group = _group(quads)
    with pytest.raises((ValueError, TypeError), match=scalar if lib == "numpy" else "cupy"):
        K.GROUP_VARIANTS[variant](group, **args)
    for a, b in zip(quads[0], before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", ["ref", "numba_v1", "cupy_v1"])
def test_group_update_wants_a_group_of_its_arrays(rng, variant):
    quads = _quads(rng, [(5,)], [np.float32])
    with pytest.raises(TypeError, match="expected group to be a kernels.adam_update.AdamGroup"):
        K.GROUP_VARIANTS[variant](list(quads[0]), 1e-3, 0.9, 0.999, 1e-8)
    if variant == "cupy_v1":
        with pytest.raises(TypeError, match="a group of cupy arrays, got one of numpy"):
            K.GROUP_VARIANTS[variant](_group(quads), 1e-3, 0.9, 0.999, 1e-8)
