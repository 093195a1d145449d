"""lvmcore.noise: the models' Philox noise on the CPU, and its argument checks (the same noise
on a device is tested in test_engine_cuda.py)."""

import numpy as np
import pytest

from kernels import philox
from lvmcore import noise
from lvmcore.backend import use_backend
from lvmcore.models import VAE

LIKE = np.zeros(1, np.float32)


@pytest.mark.parametrize(
    "draw, ref",
    [
        (noise.uniform, philox.uniform_ref),
        (noise.standard_normal, philox.normal_ref),
        (noise.standard_gumbel, philox.gumbel_ref),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_is_the_philox_stream_of_one_seed_from_rng(draw, ref, dtype):
    got = draw(np.random.default_rng(3), (4, 5, 3), dtype, LIKE)
    seed = int(np.random.default_rng(3).integers(0, 2**64, dtype=np.uint64))
    want = ref(seed, 0, 60, dtype).reshape(4, 5, 3)
    assert got.dtype == dtype and got.shape == (4, 5, 3)
    np.testing.assert_allclose(
        got, want, rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps
    )
    with use_backend("numpy"):  # the reference backend: the same bits
        np.testing.assert_array_equal(draw(np.random.default_rng(3), (4, 5, 3), dtype, LIKE), want)


def test_successive_draws_differ_and_empty_shapes_work():
    rng = np.random.default_rng(0)
    a = noise.standard_normal(rng, (100,), np.float32, LIKE)
    b = noise.standard_normal(rng, (100,), np.float32, LIKE)
    assert not np.array_equal(a, b)
    assert noise.uniform(rng, (0, 3), np.float64, LIKE).shape == (0, 3)
    assert noise.uniform(rng, 7, np.float64, LIKE).shape == (7,)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(rng=0), TypeError, "rng to be a numpy.random.Generator"),
        (dict(shape=(3, -1)), ValueError, "shape to be non-negative integers"),
        (dict(shape=(2.5,)), ValueError, "shape to be non-negative integers"),
        (dict(dtype=np.int32), TypeError, "dtype float32 or float64"),
        (dict(like=[0.0]), TypeError, "like to be a numpy.ndarray or cupy.ndarray"),
    ],
)
def test_bad_arguments_are_named(kwargs, err, match):
    args = dict(rng=np.random.default_rng(0), shape=(3,), dtype=np.float32, like=LIKE)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        noise.standard_normal(args["rng"], args["shape"], args["dtype"], args["like"])


def test_model_to_rejects_what_is_not_an_array_module():
    with pytest.raises(TypeError, match="expected xp to be the numpy or cupy module, got 'cuda'"):
        VAE(6, 2, hidden=(4,)).to("cuda")


# ---------------------------------------------------------------------------------------------
# One key for a fused kernel and for the noise it drew
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "normal", "gumbel"])
def test_philox_fill_of_a_key_is_the_draw_of_that_rng(kind):
    draw = {"uniform": noise.uniform, "normal": noise.standard_normal}.get(
        kind, noise.standard_gumbel
    )
    key = noise.philox_key(np.random.default_rng(9))
    assert key[1] == 0 and 0 <= key[0] < 2**64
    np.testing.assert_array_equal(
        noise.philox_fill(kind, key, (3, 4), np.float32, LIKE),
        draw(np.random.default_rng(9), (3, 4), np.float32, LIKE),
    )


def test_philox_fill_checks_its_arguments():
    with pytest.raises(ValueError, match="expected kind to be one of"):
        noise.philox_fill("poisson", (1, 0), (3,), np.float32, LIKE)
    with pytest.raises(TypeError, match="rng to be a numpy.random.Generator"):
        noise.philox_key(3)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_readable_reparameterization_equals_the_fused_kernel(backend, dtype, rng):
    """One home for the Gaussian reparameterization: eps from the noise front door through
    ops.reparam_forward gives the z of the fused reparam_sample kernel on the same key (bit for
    bit on the reference backend, to the fused generator's few ulp on Numba)."""
    from lvmcore.backend import get_backend
    from lvmcore.ops import reparam_forward

    K, B, Z = 4, 3, 5
    mu = rng.standard_normal((B, Z)).astype(dtype)
    logvar = (0.5 * rng.standard_normal((B, Z))).astype(dtype)
    with use_backend(backend):
        key = noise.philox_key(np.random.default_rng(11))
        eps = noise.philox_fill("normal", key, (K, B, Z), dtype, mu)
        z_read, _ = reparam_forward(mu, logvar, eps)
        z_fused, log_q, log_p = get_backend(mu).kernel("reparam_sample")(mu, logvar, K, *key)
    if backend == "numpy":
        np.testing.assert_array_equal(z_fused, z_read)
    else:
        tol = 8 * np.finfo(dtype).eps * (np.abs(mu) + np.exp(logvar / 2) * np.maximum(abs(eps), 1))
        assert np.all(np.abs(z_fused - z_read) <= tol)
    half_log_2pi = 0.5 * np.log(2 * np.pi)
    want_q = (-half_log_2pi - 0.5 * logvar - 0.5 * eps.astype(np.float64) ** 2).sum(-1)
    np.testing.assert_allclose(log_q, want_q, rtol=1e-5 if dtype == np.float32 else 1e-12)
    want_p = (-half_log_2pi - 0.5 * z_read.astype(np.float64) ** 2).sum(-1)
    np.testing.assert_allclose(log_p, want_p, rtol=1e-5 if dtype == np.float32 else 1e-12)
