"""Tests of kernels.reparam_sample: the fused kernel's noise against kernels.philox, every variant
against the reference (forward and backward, float32 and float64), the reference's backward
against central differences, densities against scipy, noise statistics, thread-count
independence, the float32 IR, and bad input."""

import math
import re

import numba
import numpy as np
import pytest
from numba import njit
from scipy import stats

import kernels
from kernels import InvalidParameterError
from kernels import philox as P
from kernels import reparam_sample as R
from lvmcore.testing import gradcheck

DTYPES = [np.float32, np.float64]
EPS = {
    np.dtype(np.float32): float(np.finfo(np.float32).eps),
    np.dtype(np.float64): float(np.finfo(np.float64).eps),
}
# (K, B, Z): K = 1, B = 1, Z = 1, odd sizes, and one shape of several 4096-element chunks
# whose rows straddle Philox blocks (Z = 7, 50 are not multiples of 4).
SHAPES = [(1, 1, 1), (1, 4, 3), (6, 1, 5), (4, 3, 1), (3, 5, 7), (50, 20, 50), (2, 3, 2100)]
OFFSETS = [0, 3, 2**40 + 5]
SEED = 0x0123456789ABCDEF
STREAM = 0xFEDCBA9876543210
# Noise: within a few ulp of max(|x|, 1) of normal_ref (philox.py's tests measured 2.8 ulp
# between its own backends; this generator measured 2.8 float32 / 2.8 float64 over 4e6 draws).
NOISE_ULP = 8


def _cpu(table):
    """The CPU variants of a table (the "cupy_*" ones run in test_kernels_cupy.py, on a GPU)."""
    return sorted(v for v in table if not v.startswith("cupy"))


def _inputs(rng, b, zd, dtype):
    mu = rng.standard_normal((b, zd)).astype(dtype)
    logvar = rng.uniform(-1.5, 1.0, size=(b, zd)).astype(dtype)
    return mu, logvar


def _eps_ref(k, b, zd, dtype, seed=SEED, stream=STREAM, offset=0):
    return P.normal_ref(seed, stream, k * b * zd, dtype, offset).reshape(k, b, zd)


@pytest.fixture
def threads():
    """Restore Numba's thread count after a test that changes it."""
    before = numba.get_num_threads()
    yield min(2, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# The fused kernel draws kernels.philox's normals (the generator itself: test_kernels_philox.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 3, 2**33 + 2])
def test_z_is_the_philox_normal_when_mu_0_logvar_0(dtype, offset):
    # z = 0 + 1 * eps exactly, so z exposes the generator: within NOISE_ULP of normal_ref, and
    # bit-identical between the forward and a second call that starts mid-stream.
    k, b, zd = 97, 3, 343  # 99 813 draws, rows straddle blocks and chunks
    zeros = np.zeros((b, zd), dtype)
    z, _, _ = R.reparam_sample(zeros, zeros, k, SEED, STREAM, offset)
    want = _eps_ref(k, b, zd, dtype, offset=offset)
    tol = NOISE_ULP * EPS[np.dtype(dtype)] * np.maximum(np.abs(want), 1)
    assert np.all(np.abs(z - want) <= tol)
    tail, _, _ = R.reparam_sample(zeros, zeros, k - 40, SEED, STREAM, offset + 40 * b * zd)
    np.testing.assert_array_equal(tail, z[40:])


# ---------------------------------------------------------------------------------------------
# Forward: every variant vs the reference
# ---------------------------------------------------------------------------------------------


def _sum_tol(dtype, terms, values, dvalues):
    """Bound on a Z-term density sum computed two ways: reordering (gamma_Z times the sum of the
    terms' magnitudes) plus the x^2/2 terms' sensitivity to x's difference (|x| dx), doubled."""
    e = EPS[np.dtype(dtype)]
    zd = terms.shape[-1]
    return 2 * (zd * e * np.abs(terms).sum(-1) + (np.abs(values) * dvalues).sum(-1))


@pytest.mark.parametrize("variant", _cpu(R.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_forward_variants_match_reference(variant, dtype, shape, offset, rng):
    k, b, zd = shape
    mu, logvar = _inputs(rng, b, zd, dtype)
    z, log_q, log_p = R.VARIANTS[variant](mu, logvar, k, SEED, STREAM, offset)
    zr, qr, pr = R.reparam_sample_ref(mu, logvar, k, SEED, STREAM, offset)
    assert z.dtype == log_q.dtype == log_p.dtype == np.dtype(dtype)
    assert z.shape == (k, b, zd) and log_q.shape == log_p.shape == (k, b)
    eps = _eps_ref(k, b, zd, dtype, offset=offset)
    sigma = np.exp(logvar.astype(np.float64) / 2)
    e = EPS[np.dtype(dtype)]
    ztol = NOISE_ULP * e * (np.abs(mu) + sigma * np.maximum(np.abs(eps), 1))
    assert np.all(np.abs(z - zr) <= ztol)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    terms_q = -half_log_2pi - 0.5 * logvar.astype(np.float64) - 0.5 * eps.astype(np.float64) ** 2
    deps = NOISE_ULP * e * np.maximum(np.abs(eps), 1)
    tol_q = _sum_tol(dtype, terms_q, eps, deps)
    assert np.all(np.abs(log_q.astype(np.float64) - qr) <= tol_q)
    terms_p = -half_log_2pi - 0.5 * zr.astype(np.float64) ** 2
    tol_p = _sum_tol(dtype, terms_p, zr, ztol)
    assert np.all(np.abs(log_p.astype(np.float64) - pr) <= tol_p)


def test_z_out_is_filled_and_returned(rng):
    mu, logvar = _inputs(rng, 5, 7, np.float32)
    z_out = np.full((3, 5, 7), np.nan, np.float32)
    z, _, _ = R.reparam_sample(mu, logvar, 3, 1, 2, 3, z_out=z_out)
    assert z is z_out
    np.testing.assert_array_equal(z_out, R.reparam_sample(mu, logvar, 3, 1, 2, 3)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_densities_match_scipy(dtype, rng):
    mu, logvar = _inputs(rng, 4, 6, dtype)
    for impl in (R.reparam_sample_ref, R.reparam_sample_numba_v1):
        z, log_q, log_p = impl(mu, logvar, 5, SEED, STREAM, 11)
        z64 = z.astype(np.float64)
        want_q = stats.norm.logpdf(z64, loc=mu, scale=np.exp(logvar.astype(np.float64) / 2))
        want_p = stats.norm.logpdf(z64)
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        # log_q uses eps, scipy uses (z - mu) / sigma: they differ by z's rounding only.
        np.testing.assert_allclose(log_q, want_q.sum(-1), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(log_p, want_p.sum(-1), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_statistics(dtype):
    # eps = z at mu = 0, logvar = 0: mean 0 and variance 1 within 4 of their measured standard
    # errors, over 10^6 draws of one fixed stream (deterministic).
    zeros = np.zeros((10, 1000), dtype)
    z, log_q, log_p = R.reparam_sample(zeros, zeros, 100, 7, 3)
    x = z.astype(np.float64).ravel()
    n = x.size
    mean, var = x.mean(), x.var()
    se_mean = math.sqrt(var / n)
    se_var = math.sqrt(np.mean((x - mean) ** 4) - var**2) / math.sqrt(n)
    assert abs(mean) < 4 * se_mean
    assert abs(var - 1) < 4 * se_var
    np.testing.assert_array_equal(log_q, log_p)  # with mu = 0, sigma = 1 the densities agree


def test_samples_do_not_depend_on_thread_count(threads, rng):
    if threads < 2:
        pytest.skip("Numba has a single thread here")
    mu, logvar = _inputs(rng, 20, 50, np.float32)
    dz = rng.standard_normal((300, 20, 50)).astype(np.float32)
    dq, dp = rng.standard_normal((2, 300, 20)).astype(np.float32)
    out = {}
    for t in (1, threads):
        numba.set_num_threads(t)
        fwd = R.reparam_sample(mu, logvar, 300, SEED, STREAM, 5)
        bwd = tuple(
            f(dz, dq, dp, mu, logvar, SEED, STREAM, 5)
            for name, f in sorted(R.BACKWARD_VARIANTS.items())
            if name != "ref" and not name.startswith("cupy")
        )
        out[t] = fwd + sum(bwd, ())
    for a, b in zip(out[1], out[threads]):
        np.testing.assert_array_equal(a, b)


def test_forward_float32_kernel_does_no_float64_arithmetic(rng):
    # The kernel's own float ops carry `reassoc` (its flag set); the noise fill it calls is
    # compiled with strict flags. So a `reassoc` double op would be the kernel's own float32
    # math silently promoted. (The fill's float64 sin/cos is deliberate and documented.)
    fresh = njit(parallel=True, error_model="numpy", fastmath={"reassoc"})(R._forward_v1.py_func)
    mu, logvar = _inputs(rng, 3, 5, np.float32)
    half = np.float32(0.5)
    sigma = np.exp(logvar / np.float32(2))
    c_q = (np.float32(-0.5 * 5 * math.log(2 * math.pi)) - half * logvar.sum(1)).astype(np.float32)
    z = np.empty((6, 5), np.float32)
    lq, lp = np.empty(6, np.float32), np.empty(6, np.float32)
    fresh(mu, sigma, c_q, np.float32(-4.6), half, *P.key_words(1, 2), np.int64(0), 4, 2, z, lq, lp)
    ir = fresh.inspect_llvm(fresh.signatures[0])
    assert re.search(r"f(add|sub|mul|div) reassoc (<\d+ x )?float", ir)  # the check works
    assert not re.search(r"f(add|sub|mul|div) reassoc (<\d+ x )?double", ir)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["all", "dz", "dlog_q", "dlog_p"])
def test_reference_backward_matches_finite_differences(which, rng):
    k, b, zd = 3, 2, 4
    mu, logvar = _inputs(rng, b, zd, np.float64)
    gz = rng.standard_normal((k, b, zd)) / math.sqrt(k * b * zd)
    gq = rng.standard_normal((k, b)) / math.sqrt(k * b)
    gp = rng.standard_normal((k, b)) / math.sqrt(k * b)
    if which != "all":
        gz, gq, gp = (
            g if name == which else np.zeros_like(g)
            for name, g in (("dz", gz), ("dlog_q", gq), ("dlog_p", gp))
        )

    def loss():
        z, lq, lp = R.reparam_sample_ref(mu, logvar, k, SEED, STREAM, 9)
        return np.sum(z * gz) + np.sum(lq * gq) + np.sum(lp * gp)

    dmu, dlogvar = R.reparam_sample_backward_ref(gz, gq, gp, mu, logvar, SEED, STREAM, 9)
    gradcheck(loss, {"mu": mu, "logvar": logvar}, {"mu": dmu, "logvar": dlogvar})


def test_log_q_gradient_is_the_total_derivative(rng):
    # d log_q / d mu = 0 and d log_q / d logvar_j = -1/2 per sample, whatever eps is.
    mu, logvar = _inputs(rng, 3, 4, np.float64)
    dq = np.ones((5, 3))
    dmu, dlogvar = R.reparam_sample_backward_ref(
        np.zeros((5, 3, 4)), dq, np.zeros((5, 3)), mu, logvar, 1
    )
    np.testing.assert_array_equal(dmu, 0)
    np.testing.assert_allclose(dlogvar, -2.5)


def _backward_tol(dtype, dz, dq, dp, mu, logvar, eps):
    """Bound on dmu / dlogvar differences: K-term sums in a different order (gamma_K) over the
    terms' magnitudes, plus the noise's few ulp carried through z."""
    e = EPS[np.dtype(dtype)]
    k = dz.shape[0]
    sigma = np.exp(logvar.astype(np.float64) / 2)
    z = np.abs(mu) + sigma * np.maximum(np.abs(eps), 1)
    g = np.abs(dz) + np.abs(dp)[:, :, None] * z
    scale_mu = g.sum(0)
    scale_lv = (g * sigma * np.maximum(np.abs(eps), 1)).sum(0) + np.abs(dq).sum(0)[:, None]
    c = (k + 4 * NOISE_ULP) * e
    return c * scale_mu, c * scale_lv


@pytest.mark.parametrize("variant", _cpu(R.BACKWARD_VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0, 3])
def test_backward_variants_match_reference(variant, dtype, shape, offset, rng):
    k, b, zd = shape
    mu, logvar = _inputs(rng, b, zd, dtype)
    dz = rng.standard_normal((k, b, zd)).astype(dtype)
    dq, dp = rng.standard_normal((2, k, b)).astype(dtype)
    dmu, dlogvar = R.BACKWARD_VARIANTS[variant](dz, dq, dp, mu, logvar, SEED, STREAM, offset)
    assert dmu.dtype == dlogvar.dtype == np.dtype(dtype)
    assert dmu.shape == dlogvar.shape == (b, zd)
    # Reference in float64 from the float32 noise: the oracle for both dtypes.
    eps = _eps_ref(k, b, zd, dtype, offset=offset).astype(np.float64)
    m64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    sigma = np.exp(lv64 / 2)
    z = m64 + sigma * eps
    g = dz - dp[:, :, None].astype(np.float64) * z
    want_mu = g.sum(0)
    want_lv = 0.5 * (g * sigma * eps).sum(0) - 0.5 * dq.astype(np.float64).sum(0)[:, None]
    tol_mu, tol_lv = _backward_tol(dtype, dz, dq, dp, m64, lv64, eps)
    assert np.all(np.abs(dmu - want_mu) <= tol_mu)
    assert np.all(np.abs(dlogvar - want_lv) <= tol_lv)


def test_backward_none_means_zero(rng):
    mu, logvar = _inputs(rng, 3, 4, np.float32)
    dz = rng.standard_normal((2, 3, 4)).astype(np.float32)
    zeros = np.zeros((2, 3), np.float32)
    got = R.reparam_sample_backward(dz, None, None, mu, logvar, 5)
    want = R.reparam_sample_backward(dz, zeros, zeros, mu, logvar, 5)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.oracle
def test_backward_matches_torch_autograd(rng):
    import torch

    k, b, zd = 4, 3, 5
    mu, logvar = _inputs(rng, b, zd, np.float64)
    dz = rng.standard_normal((k, b, zd))
    dq, dp = rng.standard_normal((2, k, b))
    eps = torch.from_numpy(_eps_ref(k, b, zd, np.float64, offset=2))
    tmu = torch.tensor(mu, requires_grad=True)
    tlv = torch.tensor(logvar, requires_grad=True)
    sigma = torch.exp(tlv / 2)
    z = tmu + sigma * eps
    log_q = torch.distributions.Normal(tmu, sigma).log_prob(z).sum(-1)  # total dependence
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    loss = (
        (z * torch.from_numpy(dz)).sum()
        + (log_q * torch.from_numpy(dq)).sum()
        + (log_p * torch.from_numpy(dp)).sum()
    )
    loss.backward()
    for backend in ("numpy", "numba"):
        dmu, dlogvar = R.reparam_sample_backward(
            dz, dq, dp, mu, logvar, SEED, STREAM, 2, backend=backend
        )
        np.testing.assert_allclose(dmu, tmu.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dlogvar, tlv.grad.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Registry and public wrappers
# ---------------------------------------------------------------------------------------------


def test_registry_and_backends(rng):
    assert kernels.get("reparam_sample", "numpy") is R.reparam_sample_ref
    assert kernels.get("reparam_sample", "numba") is R.VARIANTS[R.DEFAULT]
    assert R.BACKWARD_IMPLEMENTATIONS["numba"] is R.BACKWARD_VARIANTS[R.BACKWARD_DEFAULT]
    mu, logvar = _inputs(rng, 2, 3, np.float64)
    a = R.reparam_sample(mu, logvar, 2, 1, backend="numpy")
    b = R.reparam_sample(mu, logvar, 2, 1, backend="numba")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-13)


def test_non_contiguous_inputs_are_accepted(rng):
    mu, logvar = _inputs(rng, 6, 8, np.float32)
    a = R.reparam_sample(mu[::2, ::2], logvar[::2, ::2], 3, 4)
    b = R.reparam_sample(mu[::2, ::2].copy(), logvar[::2, ::2].copy(), 3, 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_empty_sizes(rng):
    for b, zd in ((0, 4), (3, 0)):
        mu = np.zeros((b, zd), np.float32)
        z, lq, lp = R.reparam_sample(mu, mu, 2, 1)
        assert z.shape == (2, b, zd) and lq.shape == lp.shape == (2, b)
        np.testing.assert_array_equal(lq, 0)
        dmu, dlv = R.reparam_sample_backward(z, lq, lp, mu, mu, 1)
        assert dmu.shape == dlv.shape == (b, zd)


GOOD = dict(mu=np.zeros((2, 3), np.float32), logvar=np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(mu=[[0.0]]), TypeError, "expected mu to be a numpy.ndarray, got list"),
        (dict(mu=np.zeros((2, 3), np.int64)), TypeError, "expected mu to have dtype float32 or"),
        (dict(mu=np.zeros(3, np.float32)), ValueError, "expected mu to have 2 dimensions"),
        (
            dict(logvar=np.zeros((2, 4), np.float32)),
            ValueError,
            r"expected mu and logvar to have the same shape \(B, Z\), got \(2, 3\) and \(2, 4\)",
        ),
        (dict(logvar=np.zeros((2, 3), np.float64)), TypeError, "share one dtype"),
        (dict(mu=np.full((2, 3), np.nan, np.float32)), ValueError, "mu to contain no NaN"),
        (
            dict(k=0),
            InvalidParameterError,
            r"The 'k' parameter of reparam_sample must be an int in "
            r"\[1, inf\). Got 0 instead.",
        ),
        (dict(k=2.0), InvalidParameterError, "'k' parameter"),
        (dict(k=True), InvalidParameterError, "'k' parameter"),
        (dict(seed=-1), InvalidParameterError, "'seed' parameter of reparam_sample must be an int"),
        (dict(seed=1.5), InvalidParameterError, "'seed' parameter"),
        (dict(stream=2**64), InvalidParameterError, "'stream' parameter"),
        (dict(offset=-3), InvalidParameterError, "'offset' parameter"),
        (dict(offset=2**62 - 5), InvalidParameterError, r"offset \+ K\*B\*Z <= 2\*\*62"),
        (
            dict(z_out=np.empty((3, 2, 3), np.float64)),
            ValueError,
            "expected z_out to be a C-contiguous float32 array of shape",
        ),
        (dict(z_out=np.empty((3, 2, 6), np.float32)[:, :, ::2]), ValueError, "contiguous: False"),
        (dict(backend="torch"), ValueError, "expected backend to be one of"),
    ],
)
def test_forward_validation(kwargs, exc, match):
    args = dict(GOOD, k=3, seed=1, stream=0, offset=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        R.reparam_sample(**args)


def test_z_out_overlapping_an_input_is_rejected():
    buf = np.zeros(2 * 3 * 3, np.float32)
    with pytest.raises(ValueError, match="z_out to overlap neither mu nor logvar"):
        R.reparam_sample(buf[:6].reshape(2, 3), GOOD["logvar"], 3, 1, z_out=buf.reshape(3, 2, 3))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(dz=None, dlog_q=None, dlog_p=None), ValueError, "at least one of dz, dlog_q, dlog_p"),
        (
            dict(dz=np.zeros((4, 2, 3), np.float32)),
            ValueError,
            r"expected dlog_q.shape\[0\] == K = 4 \(from dz\), got dlog_q of shape \(5, 2\)",
        ),
        (
            dict(dz=np.zeros((5, 3, 2), np.float32)),
            ValueError,
            r"expected dz to have shape \(K, 2, 3\) \(B, Z from mu\), got \(5, 3, 2\)",
        ),
        (dict(dlog_q=np.zeros((5, 3), np.float32)), ValueError, r"dlog_q to have shape \(K, 2\)"),
        (dict(dlog_p=np.zeros((5, 2), np.float64)), TypeError, "dlog_p to have the dtype of mu"),
        (dict(logvar=np.zeros((2, 2), np.float32)), ValueError, "same shape"),
        (dict(seed=-1), InvalidParameterError, "'seed' parameter of reparam_sample_backward"),
    ],
)
def test_backward_validation(kwargs, exc, match):
    args = dict(
        GOOD,
        dz=np.zeros((5, 2, 3), np.float32),
        dlog_q=np.zeros((5, 2), np.float32),
        dlog_p=np.zeros((5, 2), np.float32),
        seed=1,
    )
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        R.reparam_sample_backward(**args)
