"""Tests of kernels.mixture_logprob: every CPU variant against the float64 reference (forward and
backward, float32 and float64, odd sizes, -inf component weights and rows with no component),
the serial and parallel paths, thread-count independence, central differences, the engine's
readable reference in lvmcore.priors, and bad input. The CuPy variants share test bodies in
test_kernels_cupy.py (a GPU, or the CUDA emulator)."""

import warnings

import numba
import numpy as np
import pytest

import kernels
from kernels import mixture_logprob as ML
from lvmcore.priors import mixture_log_prob_backward_ref, mixture_log_prob_ref
from lvmcore.testing import PARITY_TOLERANCES, gradcheck

DTYPES = [np.float32, np.float64]
FWD = sorted(v for v in ML.VARIANTS if not v.startswith("cupy"))
BWD = sorted(v for v in ML.BACKWARD_VARIANTS if not v.startswith("cupy"))
# (N, C, Z): one row, one component, one dimension, odd sizes, and the VampPrior's shape
SHAPES = [(1, 1, 1), (7, 1, 3), (1, 9, 2), (33, 17, 5), (301, 3, 1), (130, 65, 7)]


def _inputs(rng, N, C, Z, dtype, off=()):
    z = rng.standard_normal((N, Z)).astype(dtype)
    mu = rng.standard_normal((C, Z)).astype(dtype)
    logvar = (0.3 * rng.standard_normal((C, Z))).astype(dtype)
    log_w = np.log(rng.dirichlet(np.ones(C))).astype(dtype)
    log_w[list(off)] = -np.inf
    return z, mu, logvar, log_w


def _oracle(*arrays):
    return ML.mixture_logprob_ref(*(a.astype(np.float64) for a in arrays))


def _close(got, want, dtype, what=""):
    assert got.dtype == np.dtype(dtype), what
    np.testing.assert_allclose(
        got, want.astype(got.dtype), err_msg=what, **PARITY_TOLERANCES[np.dtype(dtype)]
    )


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "divide by zero" from a row without a component
        yield


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    """The Numba kernels on the calling thread, or their prange loops even for small inputs."""
    monkeypatch.setattr(ML, "_PARALLEL_MIN", 0 if request.param == "parallel" else 1 << 62)
    return request.param


@pytest.mark.parametrize("variant", FWD)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, Z", SHAPES)
def test_forward_against_the_reference(rng, path, variant, dtype, N, C, Z):
    args = _inputs(rng, N, C, Z, dtype, off=(0,) if C > 2 else ())
    log_p, resp = ML.VARIANTS[variant](*args)
    want_p, want_r = _oracle(*args)
    _close(log_p, want_p, dtype, "log_p")
    _close(resp, want_r, dtype, "resp")
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-13)
    if C > 2:
        assert np.all(resp[:, 0] == 0)  # the -inf component: exactly no responsibility


@pytest.mark.parametrize("variant", BWD)
@pytest.mark.parametrize("need_params", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, Z", SHAPES)
def test_backward_against_the_reference(rng, path, variant, need_params, dtype, N, C, Z):
    args = _inputs(rng, N, C, Z, dtype, off=(1,) if C > 2 else ())
    _, resp = ML.mixture_logprob_ref(*args)
    dlog_p = rng.standard_normal(N).astype(dtype)
    z, mu, logvar, _ = args
    got = ML.BACKWARD_VARIANTS[variant](dlog_p, z, mu, logvar, resp, need_params)
    want = ML.mixture_logprob_backward_ref(
        *(a.astype(np.float64) for a in (dlog_p, z, mu, logvar, resp)), need_params
    )
    for g, w, name in zip(got, want, ["dz", "dmu", "dlogvar", "dlog_weights"]):
        if w is None:
            assert g is None, name
            continue
        # float32: a sum of about C (dz) or N (the rest) terms of either sign
        tol = dict(rtol=1e-4, atol=2e-5 * max(C, N) ** 0.5) if dtype == np.float32 else {}
        assert g.dtype == np.dtype(dtype), name
        np.testing.assert_allclose(
            g, w, err_msg=name, **(tol or PARITY_TOLERANCES[np.dtype(dtype)])
        )
    if need_params and C > 2:
        assert np.all(got[1][1] == 0) and got[3][1] == 0  # the -inf component gets nothing


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_without_a_component_and_empty_rows(rng, dtype):
    """Every weight -inf: log p = -inf, responsibilities 0, zero gradients, no NaN; N = 0."""
    z, mu, logvar, _ = _inputs(rng, 4, 3, 2, dtype)
    off = np.full(3, -np.inf, dtype=dtype)
    for variant in FWD:
        log_p, resp = ML.VARIANTS[variant](z, mu, logvar, off)
        assert np.all(log_p == -np.inf) and np.all(resp == 0)
    for variant in BWD:
        dz, dmu, dlv, dlw = ML.BACKWARD_VARIANTS[variant](np.ones(4, dtype), z, mu, logvar, resp)
        assert not (dz.any() or dmu.any() or dlw.any()) and np.all(dlv == 0)
    for variant in FWD:
        log_p, empty = ML.VARIANTS[variant](z[:0], mu, logvar, off)
        assert log_p.shape == (0,) and empty.shape == (0, 3)
    for variant in BWD:
        dz, dmu, _, _ = ML.BACKWARD_VARIANTS[variant](z[:0, 0], z[:0], mu, logvar, empty)
        assert dz.shape == (0, 2) and not dmu.any()


def test_far_from_every_component_in_float32(rng):
    """The densities of all components underflow: the shift by the row maximum keeps log p
    finite and the responsibilities normalized."""
    mu = np.array([[0.0, 0.0], [1.0, -1.0]], np.float32)
    logvar = np.array([[-6.0, -6.0], [-5.0, -6.0]], np.float32)
    log_w = np.log(np.array([0.3, 0.7], np.float32))
    z = np.array([[40.0, -30.0], [0.5, 0.5]], np.float32)
    want_p, want_r = _oracle(z, mu, logvar, log_w)
    log_p, resp = ML.mixture_logprob_numba_v1(z, mu, logvar, log_w)
    assert np.isfinite(log_p).all() and np.isfinite(want_p).all()
    np.testing.assert_allclose(log_p, want_p, rtol=2e-6)
    np.testing.assert_allclose(resp, want_r, atol=1e-6)


def test_results_do_not_depend_on_the_threads(rng, monkeypatch):
    monkeypatch.setattr(ML, "_PARALLEL_MIN", 0)
    args = _inputs(rng, 1000, 20, 6, np.float32)
    dlog_p = rng.standard_normal(1000).astype(np.float32)
    old = numba.get_num_threads()
    out = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            log_p, resp = ML.mixture_logprob_numba_v1(*args)
            grads = ML.mixture_logprob_backward_numba_v1(dlog_p, *args[:3], resp)
            out.append([log_p, resp, *grads])
    finally:
        numba.set_num_threads(old)
    for a, b in zip(out[0], out[-1]):
        np.testing.assert_array_equal(a, b)


def test_central_differences_in_float64(rng):
    z, mu, logvar, log_w = _inputs(rng, 5, 3, 2, np.float64)
    G = rng.standard_normal(5)
    fwd, bwd = ML.mixture_logprob_numba_v1, ML.mixture_logprob_backward_numba_v1
    _, resp = fwd(z, mu, logvar, log_w)
    dz, dmu, dlv, dlw = bwd(G, z, mu, logvar, resp)
    params = dict(z=z, mu=mu, logvar=logvar, log_w=log_w)
    gradcheck(
        lambda: float((G * fwd(z, mu, logvar, log_w)[0]).sum()),
        params,
        dict(z=dz, mu=dmu, logvar=dlv, log_w=dlw),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_engines_readable_reference_is_the_kernel(rng, dtype):
    """lvmcore.priors.mixture_log_prob_ref (blocked array code in the dtype) and the kernel the
    priors call compute the same op."""
    args = _inputs(rng, 40, 6, 4, dtype, off=(2,))
    dlog_p = rng.standard_normal(40).astype(dtype)
    log_p, resp = kernels.get("mixture_logprob", "numba")(*args)
    want_p, want_r = mixture_log_prob_ref(*args)
    _close(log_p, want_p, dtype, "log_p")
    _close(resp, want_r, dtype, "resp")
    got = kernels.get("mixture_logprob_backward", "numba")(dlog_p, *args[:3], resp)
    want = mixture_log_prob_backward_ref(dlog_p, *args[:3], resp)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else PARITY_TOLERANCES[np.dtype(dtype)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


def test_bad_input_names_the_argument(rng):
    z, mu, logvar, log_w = _inputs(rng, 4, 3, 2, np.float32)
    fwd, bwd = ML.mixture_logprob_numba_v1, ML.mixture_logprob_backward_numba_v1
    with pytest.raises(ValueError, match="expected z to have 2 columns"):
        fwd(z[:, :1].copy(), mu, logvar, log_w)
    with pytest.raises(ValueError, match="expected mu to have at least one row"):
        fwd(z, mu[:0], logvar[:0], log_w[:0])
    with pytest.raises(ValueError, match="expected log_weights to have shape \\(3,\\)"):
        fwd(z, mu, logvar, log_w[:2].copy())
    with pytest.raises(ValueError, match="expected log_weights to hold no NaN or \\+inf"):
        fwd(z, mu, logvar, np.array([0.0, np.inf, 0.0], np.float32))
    bad = z.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="expected z to contain no NaN or Inf"):
        fwd(bad, mu, logvar, log_w)
    with pytest.raises(TypeError, match="expected mu to have the dtype of z"):
        fwd(z, mu.astype(np.float64), logvar.astype(np.float64), log_w)
    with pytest.raises(ValueError, match="expected z to be C-contiguous"):
        fwd(np.asfortranarray(np.repeat(z, 2, axis=1))[:, ::2], mu, logvar, log_w)
    _, resp = fwd(z, mu, logvar, log_w)
    with pytest.raises(ValueError, match="expected resp to have shape \\(4, 3\\)"):
        bwd(np.ones(4, np.float32), z, mu, logvar, resp[:, :2].copy())
    with pytest.raises(ValueError, match="expected dlog_p to have shape \\(4,\\)"):
        bwd(np.ones(3, np.float32), z, mu, logvar, resp)
    with pytest.raises(TypeError, match="expected need_params to be a bool"):
        bwd(np.ones(4, np.float32), z, mu, logvar, resp, need_params=1)
    with pytest.raises(ValueError, match="expected backend to be one of"):
        ML.mixture_logprob(z, mu, logvar, log_w, backend="jax")
