"""The IAF step on its fused gate kernel (kernels/iaf_gate.py): on the "numpy" backend it
returns its former inline math bit for bit, on "numba" the same values and gradients (backward,
input VJP, Jacobian-transpose solve, parameter gradients) to float rounding, in float32 and
float64; on (emulated) device arrays it runs the "cupy" kernels and matches the host."""

import numpy as np
import pytest

import lvmcore
from lvmcore.testing import PARITY_TOLERANCES

DTYPES = [np.float32, np.float64]


def _assert_parity(got, want, dtype, n_terms=1):
    tol = PARITY_TOLERANCES[np.dtype(dtype)]
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape
    # logdet sums Z terms, in another order than NumPy's pairwise sum
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * n_terms)


def _step(dtype, Z=5, context=True, direct=True, reverse=False):
    from lvmcore.flows import IAFStep

    r = np.random.default_rng(11)
    return IAFStep(
        Z, (7, 6), r, context_dim=3 if context else 0, direct=direct, reverse=reverse, dtype=dtype
    )


def _inline_gate(step, z, h):
    """The step's math as it was written inline before the kernel: MADE, then ops."""
    from lvmcore.ops import log_sigmoid, sigmoid

    y, _ = step._forward(z, h)
    m, s_raw = y[..., 0, :], y[..., 1, :]
    t = s_raw + z.dtype.type(step.forget_bias)
    s, oms = sigmoid(t), sigmoid(-t)
    return s * z + oms * m, log_sigmoid(t).sum(axis=-1), m, s, oms


def _run_step(step, z, h, G, H, R):
    z_new, logdet, cache = step.forward(z, h)
    step.zero_grad()
    dz, dh = step.backward(G, H, cache)
    grads = {k: v.copy() for k, v in step.grads.items()}
    vjp = step.input_vjp(G, None, cache)
    solve = step.solve_transpose(R, cache)
    return [z_new, logdet, dz, dh, vjp, solve, *grads.values()]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(2, 5), (5,), (3, 0)])
def test_iaf_step_is_unchanged_by_the_kernel(dtype, lead, rng):
    """On the "numpy" backend the step returns its former inline math bit for bit; on "numba"
    the same values and gradients to float rounding."""
    step = _step(dtype)
    B = lead[-1]
    z = rng.standard_normal(lead + (5,)).astype(dtype)
    h = rng.standard_normal((B, 3)).astype(dtype)
    G = rng.standard_normal(z.shape).astype(dtype)
    H = rng.standard_normal(lead).astype(dtype)
    R = rng.standard_normal(z.shape).astype(dtype)
    with lvmcore.use_backend("numpy"):
        want = _run_step(step, z, h, G, H, R)
        z_new, logdet, cache = step.forward(z, h)
    old = _inline_gate(step, z, h)
    for got, w in zip((z_new, logdet, cache.m, cache.s, cache.oms), old):
        np.testing.assert_array_equal(got, w)
    with lvmcore.use_backend("numba"):
        got = _run_step(step, z, h, G, H, R)
    for g, w in zip(got, want):
        _assert_parity(g, w, dtype, n_terms=5)


def test_iaf_step_keeps_its_cache_fields(rng):
    step = _step(np.float64, context=False)
    z = rng.standard_normal((4, 5))
    _, _, cache = step.forward(z)
    assert cache.m.shape == cache.s.shape == cache.oms.shape == cache.z.shape == (4, 5)
    assert cache.y.shape == (4, 2, 5) and np.shares_memory(cache.m, cache.y)
    np.testing.assert_allclose(cache.s + cache.oms, 1.0, rtol=1e-15)


def test_iaf_step_takes_strided_input(rng):
    """A strided z (or upstream gradient) is copied to rows once; results match."""
    step = _step(np.float64, context=False)
    z = np.asfortranarray(rng.standard_normal((6, 5)))
    G = np.asfortranarray(rng.standard_normal((6, 5)))
    a = step.forward(z)
    b = step.forward(np.ascontiguousarray(z))
    for u, v in zip(a[:2], b[:2]):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(
        step.input_vjp(G, None, a[2]), step.input_vjp(np.ascontiguousarray(G), None, b[2])
    )
    np.testing.assert_allclose(
        step.solve_transpose(G, a[2]), step.solve_transpose(np.ascontiguousarray(G), b[2])
    )


# --- on device arrays: a GPU, or the CUDA emulator (tests/cuda_emu) ---------------------------


def test_iaf_step_on_device_arrays_runs_the_cupy_kernels(cp, rng, monkeypatch):
    """The step on (emulated) device arrays: the "cupy" kernels, equal to the host's."""
    import kernels

    calls, get = [], kernels.get

    def spy(op, backend):
        calls.append((op, backend))
        return get(op, backend)

    monkeypatch.setattr(kernels, "get", spy)
    z = rng.standard_normal((2, 4, 5))
    h = rng.standard_normal((4, 3))
    G, H, R = (
        rng.standard_normal(z.shape),
        rng.standard_normal((2, 4)),
        rng.standard_normal(z.shape),
    )
    host = _run_step(_step(np.float64), z, h, G, H, R)
    step = _step(np.float64).to(cp)
    calls.clear()
    dev = _run_step(step, *(cp.asarray(a) for a in (z, h, G, H, R)))
    gate = [c for c in calls if c[0].startswith("iaf_gate")]
    assert {b for _, b in gate} == {"cupy"}
    assert {op for op, _ in gate} == {"iaf_gate", "iaf_gate_backward"}
    for g, w in zip(dev, host):
        _assert_parity(cp.asnumpy(g), w, np.float64, n_terms=5)
