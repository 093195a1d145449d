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
