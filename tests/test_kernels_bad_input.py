"""Bad input at every public entry point of ``kernels``: an error that names the argument, or the
reference's answer, never a crash, a silent wrong value or an out-of-bounds read.

The entry points are every NumPy/Numba variant the registry holds (``kernels.records``), the
module wrappers (``bernoulli_loglik``, ``gumbel_softmax``, ...) and the Philox helpers. For each
one a valid call is built; hypothesis then corrupts one argument (wrong number of dimensions,
a wrong size, an int/float16/complex/object/bool dtype, a non-contiguous view, a NaN, an empty
axis, a Python scalar, a list, None, or for scalars a negative, huge, NaN, string, array or
bool value) and requires either

- a ValueError or TypeError whose message names the corrupted argument, or
- a result equal to the NumPy reference's on the same input (``PARITY_TOLERANCES``; NaN where
  the reference has NaN), finite whenever every input was finite.

The CuPy variants are probed separately: handed NumPy arrays, each raises TypeError naming an
argument before it needs CuPy (their parity and argument checks on device arrays run in
test_kernels_cupy.py, on a GPU or through the CUDA emulator).

The raw ``@njit`` kernels are private and unprobed (they trust their callers by design), as are
the scalar device functions other kernels inline (``kernels.fastmath``'s exp/log and
``kernels.philox``'s per-element helpers): they take scalars and touch no memory.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels import bernoulli_loglik as BL
from kernels import bias_act as BA
from kernels import gumbel_softmax as GS
from kernels import iaf_gate as IG
from kernels import importance_weights as IW
from kernels import mixture_logprob as ML
from kernels import philox as P
from kernels import reparam_sample as RS
from lvmcore.testing import PARITY_TOLERANCES

DTYPES = (np.float32, np.float64)


@dataclass(frozen=True)
class Entry:
    """One public function: ``build(dtype, n, rng)`` makes a valid call as an ordered dict of
    arguments; ``reference`` computes the answer the entry must give (None: the entry is its
    own reference, and only its errors are checked); ``inplace`` names the arguments an entry
    updates in place (their values after the call are its result)."""

    name: str
    func: object
    build: object
    reference: object = None
    inplace: tuple = ()


def _normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _bl(dtype, n, rng):
    return dict(
        logits=_normal(rng, (2 * n, 4), dtype, 3.0),
        x=(rng.random((n, 4)) < 0.5).astype(dtype),
        grad_out=np.empty((2 * n, 4), dtype),
        bias=_normal(rng, (4,), dtype),
    )


def _bl_bwd(dtype, n, rng):
    return dict(dloglik=_normal(rng, (n,), dtype), grad=_normal(rng, (n, 4), dtype), out=None)


def _iw(dtype, n, rng):
    return dict(log_w=_normal(rng, (n + 1, 3), dtype, 5.0), weights_out=None)


def _rs(dtype, n, rng):
    return dict(
        mu=_normal(rng, (n, 3), dtype),
        logvar=_normal(rng, (n, 3), dtype, 0.5),
        k=2,
        seed=5,
        stream=1,
        offset=3,
        z_out=None,
    )


def _rs_bwd(dtype, n, rng):
    return dict(
        dz=_normal(rng, (2, n, 3), dtype),
        dlog_q=_normal(rng, (2, n), dtype),
        dlog_p=_normal(rng, (2, n), dtype),
        mu=_normal(rng, (n, 3), dtype),
        logvar=_normal(rng, (n, 3), dtype, 0.5),
        seed=5,
        stream=1,
        offset=3,
    )


def _gs(dtype, n, rng):
    return dict(
        logits=_normal(rng, (n, 5), dtype),
        tau=0.5,
        seed=5,
        stream=1,
        offset=3,
        hard=False,
        y_out=None,
        y_soft_out=None,
    )


def _gs_bwd(dtype, n, rng):
    a = _normal(rng, (n, 5), dtype)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return dict(
        dy=_normal(rng, (n, 5), dtype),
        y_soft=(e / e.sum(axis=1, keepdims=True)).astype(dtype),
        tau=0.5,
        logits_plus_g_over_tau=None,
    )


def _gmax(dtype, n, rng):
    return dict(logits=_normal(rng, (n, 5), dtype), seed=5, stream=1, offset=3)


def _ml(dtype, n, rng):
    return dict(
        z=_normal(rng, (n, 3), dtype),
        mu=_normal(rng, (4, 3), dtype),
        logvar=_normal(rng, (4, 3), dtype, 0.3),
        log_weights=np.log(np.full(4, 0.25, dtype)),
    )


def _ml_bwd(dtype, n, rng):
    resp = rng.random((n, 4)).astype(dtype)
    return dict(
        dlog_p=_normal(rng, (n,), dtype),
        z=_normal(rng, (n, 3), dtype),
        mu=_normal(rng, (4, 3), dtype),
        logvar=_normal(rng, (4, 3), dtype, 0.3),
        resp=resp / resp.sum(axis=1, keepdims=True),
        need_params=True,
    )


def _nc(dtype, n, rng):
    return dict(x=_normal(rng, (n + 2, 3), dtype), codebook=_normal(rng, (4, 3), dtype))


def _adam(dtype, n, rng):
    return dict(
        p=_normal(rng, (n, 2), dtype),
        g=_normal(rng, (n, 2), dtype),
        m=_normal(rng, (n, 2), dtype),
        v=rng.random((n, 2)).astype(dtype),
        step_size=1e-3,
        beta1=0.9,
        beta2=0.999,
        eps_hat=1e-8,
    )


def _ba(dtype, n, rng):
    return dict(
        a=_normal(rng, (n, 4), dtype, 3.0), b=_normal(rng, (4,), dtype), act="tanh", out=None
    )


def _ba_bwd(dtype, n, rng):
    return dict(
        dy=_normal(rng, (n, 4), dtype),
        y=np.tanh(_normal(rng, (n, 4), dtype)),
        act="softplus",
        row_scale=_normal(rng, (n,), dtype),
        out=None,
    )


def _ig(dtype, n, rng):
    return dict(
        y=_normal(rng, (n, 2, 3), dtype, 3.0),
        z=_normal(rng, (n, 3), dtype),
        forget_bias=1.0,
        z_new_out=None,
        s_out=None,
        oms_out=None,
        logdet_out=None,
    )


def _ig_bwd(dtype, n, rng):
    y, z = _normal(rng, (n, 2, 3), dtype, 3.0), _normal(rng, (n, 3), dtype)
    s = (1 / (1 + np.exp(-y[:, 1]))).astype(dtype)
    return dict(
        dz_new=_normal(rng, (n, 3), dtype),
        dlogdet=_normal(rng, (n,), dtype),
        y=y,
        z=z,
        s=s,
        oms=(1 - s).astype(dtype),
        dy_out=None,
        dz_out=None,
        need_dz=True,
    )


def _fill(dtype, n, rng):
    return dict(seed=7, stream=2, n=n + 3, dtype=dtype, offset=1, out=np.empty(n + 3, dtype))


def _ref_of(op):
    return kernels.get(op, "numpy")


# op -> (builder of a valid call, the arguments it updates in place)
BUILDS = {
    "bernoulli_loglik": (_bl, ()),
    "bernoulli_loglik_backward": (_bl_bwd, ()),
    "importance_weights": (_iw, ()),
    "mixture_logprob": (_ml, ()),
    "mixture_logprob_backward": (_ml_bwd, ()),
    "reparam_sample": (_rs, ()),
    "reparam_sample_backward": (_rs_bwd, ()),
    "gumbel_softmax": (_gs, ()),
    "gumbel_softmax_backward": (_gs_bwd, ()),
    "gumbel_max": (_gmax, ()),
    "nearest_code": (_nc, ()),
    "adam_update": (_adam, ("p", "m", "v")),
    "bias_act": (_ba, ()),
    "bias_act_backward": (_ba_bwd, ()),
    "iaf_gate": (_ig, ()),
    "iaf_gate_backward": (_ig_bwd, ()),
    "philox_uniform": (_fill, ()),
    "philox_normal": (_fill, ()),
    "philox_gumbel": (_fill, ()),
}


# Ops whose arguments are not arrays and scalars alone, with their own bad-input tests:
# adam_update_group takes an AdamGroup, checked when built (tests/test_kernels_adam_update.py).
OWN_BAD_INPUT_TESTS = {"adam_update_group"}


def _entries():
    out = []
    for r in kernels.records():
        if r.backend == "cupy" or r.op in OWN_BAD_INPUT_TESTS:
            continue
        build, inplace = BUILDS[r.op]
        out.append(Entry(f"{r.op}[{r.variant}]", r.func, build, _ref_of(r.op), inplace))
    wrappers = {
        "bernoulli_loglik": BL.bernoulli_loglik,
        "bernoulli_loglik_backward": BL.bernoulli_loglik_backward,
        "importance_weights": IW.importance_weights,
        "mixture_logprob": ML.mixture_logprob,
        "mixture_logprob_backward": ML.mixture_logprob_backward,
        "reparam_sample": RS.reparam_sample,
        "reparam_sample_backward": RS.reparam_sample_backward,
        "gumbel_softmax": GS.gumbel_softmax,
        "gumbel_softmax_backward": GS.gumbel_softmax_backward,
        "gumbel_max": GS.gumbel_max,
        "bias_act": BA.bias_act,
        "bias_act_backward": BA.bias_act_backward,
        "iaf_gate": IG.iaf_gate,
        "iaf_gate_backward": IG.iaf_gate_backward,
    }
    for op, func in wrappers.items():
        out.append(Entry(f"{op}[wrapper]", func, BUILDS[op][0], _ref_of(op)))
    out += [
        Entry("key_words", P.key_words, lambda dtype, n, rng: dict(seed=n, stream=3)),
        Entry(
            "philox4x32_10",
            P.philox4x32_10,
            lambda dtype, n, rng: dict(c0=n, c1=0, c2=1, c3=2, k0=3, k1=4),
        ),
        Entry(
            "philox4x32_10_ref",
            P.philox4x32_10_ref,
            lambda dtype, n, rng: dict(
                counter=rng.integers(0, 2**32, (n, 4), dtype=np.uint32),
                key=np.array([1, 2], np.uint32),
            ),
        ),
        Entry("per_block", P.per_block, lambda dtype, n, rng: dict(dtype=dtype)),
    ]
    return out


ENTRIES = _entries()
ARRAY_BAD = (
    "ndim+",
    "ndim-",
    "size",
    "int32",
    "float16",
    "complex",
    "object",
    "bool",
    "strided",
    "nan",
    "empty",
    "pyfloat",
    "list",
    "none",
)
SCALAR_BAD = ("negative", "huge", "float", "nan", "string", "none", "array", "bool", "complex")


def _corrupt_array(a, how, rng):
    if a is None:  # an optional output: give it a wrong one
        return np.empty(3, np.float64) if how != "none" else None
    if how == "ndim+":
        return a[None]
    if how == "ndim-":
        return a.reshape(-1)[0] if a.ndim == 1 else a[0]
    if how == "size":
        shape = list(a.shape)
        shape[-1] += 1
        return np.ascontiguousarray(np.resize(a, shape))
    if how == "int32":
        return a.astype(np.int32)
    if how == "float16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16)
    if how == "complex":
        return a.astype(np.complex64)
    if how == "object":
        return a.astype(object)
    if how == "bool":
        return a != 0
    if how == "strided":
        wide = np.repeat(a, 2, axis=-1)
        return wide[..., ::2]
    if how == "nan":
        if a.dtype.kind != "f" or a.size == 0:
            return None
        b = a.copy()
        b.flat[rng.integers(a.size)] = np.nan
        return b
    if how == "empty":
        return a[:0]
    if how == "pyfloat":
        return 0.5
    if how == "list":
        return a.tolist()
    return None


def _corrupt_scalar(v, how):
    return {
        "negative": -3,
        "huge": 2**70,
        "float": 1.5,
        "nan": math.nan,
        "string": "1",
        "none": None,
        "array": np.zeros(2),
        "bool": True,
        "complex": 1j,
    }[how]


def _call(entry, args):
    return entry.func(**args)


def _flatten(result, args, entry):
    if entry.inplace:
        return [args[k] for k in entry.inplace]
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]


def _copy(args):
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}


def _inputs_finite(args):
    for v in args.values():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
    return True


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, np.ndarray):
            assert isinstance(g, np.ndarray) and g.shape == w.shape and g.dtype == w.dtype
            if w.dtype.kind == "f":
                tol = PARITY_TOLERANCES[np.dtype(w.dtype)]
                np.testing.assert_allclose(g, w, equal_nan=True, **tol)
            else:
                np.testing.assert_array_equal(g, w)
        elif isinstance(w, float):
            assert g == pytest.approx(w, rel=1e-4, abs=1e-6, nan_ok=True)
        else:
            assert np.array_equal(np.asarray(g), np.asarray(w))


def _probe(entry, args, target):
    """Call ``entry``; an error must name ``target``; a result must be the reference's."""
    ref_args = _copy(args)
    try:
        result = _call(entry, args)
    except (ValueError, TypeError) as exc:
        assert target in str(exc), f"{entry.name}: {target} not named in {exc!r}"
        return
    got = _flatten(result, args, entry)
    if entry.reference is not None and entry.reference is not entry.func:
        want = _flatten(entry.reference(**ref_args), ref_args, entry)
        _assert_same(got, want)
    if _inputs_finite(args):
        for g in got:
            if isinstance(g, np.ndarray) and g.dtype.kind == "f":
                assert np.isfinite(g).all(), f"{entry.name}: non-finite output from finite input"


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_public_entry_point_rejects_or_answers_bad_input(data):
    entry = data.draw(st.sampled_from(ENTRIES), label="entry")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(st.integers(1, 5), label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    args = entry.build(dtype, n, rng)
    target = data.draw(st.sampled_from(sorted(args)), label="argument")
    value = args[target]
    if isinstance(value, np.ndarray) or value is None:
        how = data.draw(st.sampled_from(ARRAY_BAD), label="corruption")
        args[target] = _corrupt_array(value, how, rng)
    else:
        how = data.draw(st.sampled_from(SCALAR_BAD), label="corruption")
        args[target] = _corrupt_scalar(value, how)
    _probe(entry, args, target)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_public_entry_point_answers_valid_input_as_the_reference(entry, dtype, rng):
    """The baseline of the property test: each valid call it starts from is right."""
    _probe(entry, entry.build(dtype, 3, rng), target="")


@pytest.mark.parametrize(
    "record",
    [r for r in kernels.records() if r.backend == "cupy" and r.op not in OWN_BAD_INPUT_TESTS],
    ids=lambda r: r.op,
)
def test_cupy_variants_refuse_numpy_arrays_without_needing_cupy(record, rng):
    build = BUILDS[record.op][0]
    args = build(np.float32, 3, rng)
    with pytest.raises(TypeError, match=r"expected \w+ to be a cupy\.ndarray"):
        record.func(**args)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_cupy_variants_reject_or_answer_bad_device_input(data):
    """The same property for the "cupy" variants, on device arrays of the CUDA emulator
    (tests/cuda_emu): the kernels' argument checks, launches and results on the CPU."""
    from cuda_emu import fake_cupy

    ok, why = fake_cupy.available()
    if not ok:
        pytest.skip(why)
    records = [
        r for r in kernels.records() if r.backend == "cupy" and r.op not in OWN_BAD_INPUT_TESTS
    ]
    record = data.draw(st.sampled_from(records), label="variant")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    build, inplace = BUILDS[record.op]
    args = build(dtype, data.draw(st.integers(1, 4), label="n"), rng)
    target = data.draw(st.sampled_from(sorted(args)), label="argument")
    value = args[target]
    if isinstance(value, np.ndarray) or value is None:
        how = data.draw(st.sampled_from(ARRAY_BAD), label="corruption")
        args[target] = _corrupt_array(value, how, rng)
    else:
        how = data.draw(st.sampled_from(SCALAR_BAD), label="corruption")
        args[target] = _corrupt_scalar(value, how)
    with fake_cupy.installed() as cp:
        device = {}
        for k, v in args.items():
            if isinstance(v, np.ndarray) and v.dtype != object:
                device[k] = cp.asarray(v)
            else:
                device[k] = v
        entry = Entry(record.op, record.func, build, _ref_of(record.op), inplace)
        ref_args = _copy(args)
        try:
            result = record.func(**device)
        except (ValueError, TypeError) as exc:
            assert target in str(exc), f"{record.op}: {target} not named in {exc!r}"
            return
        host = {k: cp.asnumpy(v) if type(v).__module__ == "cupy" else v for k, v in device.items()}
        if not isinstance(result, tuple):
            result = (result,)
        got = _flatten(
            tuple(cp.asnumpy(r) if type(r).__module__ == "cupy" else r for r in result),
            host,
            entry,
        )
    want = _flatten(entry.reference(**ref_args), ref_args, entry)
    _assert_same(got, want)


def test_gumbel_max_never_returns_an_index_for_a_nan_row():
    logits = np.zeros((3, 4), np.float32)
    logits[1, 2] = np.nan
    for backend in ("numpy", "numba"):
        with pytest.raises(ValueError, match=r"gumbel_max: expected every row of logits .* row 1"):
            GS.gumbel_max(logits, 1, backend=backend)
        dead = np.full((2, 3), -np.inf)
        with pytest.raises(ValueError, match="finite maximum"):
            GS.gumbel_max(dead, 1, backend=backend)
        hard = GS.gumbel_softmax(logits, 0.5, 1, hard=True, backend=backend)
        assert np.isnan(hard[1]).all() and np.isfinite(hard[[0, 2]]).all()


def test_gumbel_max_never_returns_an_index_for_a_nan_row_on_a_device():
    from cuda_emu import fake_cupy

    ok, why = fake_cupy.available()
    if not ok:
        pytest.skip(why)
    logits = np.zeros((3, 4), np.float32)
    logits[1, 2] = np.nan
    with fake_cupy.installed() as cp:
        with pytest.raises(ValueError, match=r"gumbel_max_cupy_v1: expected every row .* row 1"):
            GS.gumbel_max(cp.asarray(logits), 1, backend="cupy")
        hard = cp.asnumpy(GS.gumbel_softmax(cp.asarray(logits), 0.5, 1, hard=True, backend="cupy"))
        soft = cp.asnumpy(GS.gumbel_softmax(cp.asarray(logits), 0.5, 1, backend="cupy"))
    for y in (hard, soft):
        assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
