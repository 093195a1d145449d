"""Latent-space tools: interpolation, arithmetic, quantiles, traversals and their pictures."""

import os

import numpy as np
import pytest
from scipy.stats import norm

from lvmcore import InvalidParameterError
from lvmcore.latent import (
    attribute_arithmetic,
    attribute_vector,
    interpolate,
    lerp,
    prior_quantiles,
    quantile_grid,
    slerp,
    traverse,
    write_arithmetic,
    write_interpolation,
    write_latent_scatter,
    write_manifold,
    write_traversal,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def _decoder(rng, Z, D=16):
    A = rng.standard_normal((Z, D))
    calls = []

    def decode(z):
        calls.append(z.shape)
        return 1 / (1 + np.exp(-(z @ A)))

    return decode, calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 5)])
@pytest.mark.parametrize("fn", [slerp, lerp])
def test_interpolation_endpoints_are_exact(rng, dtype, shape, fn):
    z0, z1 = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    path = fn(z0, z1, 7)
    assert path.shape == (7, *shape) and path.dtype == dtype
    np.testing.assert_array_equal(path[0], z0)
    np.testing.assert_array_equal(path[-1], z1)


def test_slerp_keeps_the_norm_of_equal_norm_endpoints_where_lerp_does_not(rng):
    z0, z1 = rng.standard_normal((2, 16))
    z0 *= 3 / np.linalg.norm(z0)
    z1 *= 3 / np.linalg.norm(z1)
    np.testing.assert_allclose(np.linalg.norm(slerp(z0, z1, 11), axis=-1), 3.0, rtol=1e-12)
    assert np.linalg.norm(lerp(z0, z1, 11)[5]) < 3.0 - 0.1


def test_slerp_walks_the_arc_at_constant_angular_speed():
    z0, z1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    t = np.linspace(0, 1, 9)
    want = np.stack([np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)], axis=1)
    np.testing.assert_allclose(slerp(z0, z1, 9), want, rtol=1e-14, atol=1e-15)


def test_slerp_of_parallel_opposite_and_zero_vectors_is_the_segment(rng):
    z = rng.standard_normal(6)
    for z1 in (3.0 * z, z.copy(), -2.0 * z, np.zeros(6)):
        out = slerp(z, z1, 5)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, lerp(z, z1, 5), rtol=1e-12, atol=1e-15)
    # nearly parallel: the arc formula and its linear limit agree
    z1 = 2.0 * z + 1e-5 * rng.standard_normal(6)
    np.testing.assert_allclose(slerp(z, z1, 5), lerp(z, z1, 5), rtol=1e-8)


def test_interpolate_dispatches_by_name(rng):
    z0, z1 = rng.standard_normal((2, 4))
    np.testing.assert_array_equal(interpolate(z0, z1, 4, "lerp"), lerp(z0, z1, 4))
    np.testing.assert_array_equal(interpolate(z0, z1, 4), slerp(z0, z1, 4))


def test_attribute_arithmetic_on_synthetic_latents(rng):
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, -3.0, 2.0]])
    labels = rng.integers(0, 3, size=300)
    z = centres[labels] + 0.1 * rng.standard_normal((300, 3))
    v = attribute_vector(z, labels, 1, 2)
    want = z[labels == 1].mean(axis=0) - z[labels == 2].mean(axis=0)
    np.testing.assert_allclose(v, want, rtol=1e-12)
    np.testing.assert_allclose(v, centres[1] - centres[2], atol=0.05)
    z_query = centres[[2, 2]] + 0.01
    out = attribute_arithmetic(z, labels, 1, 2, z_query, scales=(0.0, 1.0))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0], z_query)
    np.testing.assert_allclose(out[1], z_query + v, rtol=1e-14)
    np.testing.assert_allclose(out[1], centres[[1, 1]], atol=0.06)  # a "2" turned into a "1"


def test_prior_quantiles_and_grid_values():
    q = prior_quantiles(5, 0.1, 0.9)
    np.testing.assert_allclose(q, norm.ppf(np.linspace(0.1, 0.9, 5)), rtol=1e-14)
    np.testing.assert_allclose(q, -q[::-1], atol=1e-15)
    assert prior_quantiles(1)[0] == 0.0
    g = quantile_grid(3)
    a = norm.ppf(0.95)
    np.testing.assert_allclose(
        g,
        [[-a, a], [0, a], [a, a], [-a, 0], [0, 0], [a, 0], [-a, -a], [0, -a], [a, -a]],
        atol=1e-15,
        rtol=1e-14,
    )


def test_traverse_sets_one_dimension_at_a_time(rng):
    z = rng.standard_normal(4)
    values = np.array([-1.0, 0.5, 2.0])
    out = traverse(z, values)
    assert out.shape == (4, 3, 4)
    for d in range(4):
        np.testing.assert_array_equal(out[d, :, d], values)
        others = np.delete(np.arange(4), d)
        np.testing.assert_array_equal(out[d][:, others], np.broadcast_to(z[others], (3, 3)))


def test_write_interpolation_draws_a_png_and_returns_its_arrays(rng, tmp_path):
    decode, calls = _decoder(rng, 3)
    z0, z1 = rng.standard_normal((2, 2, 3))
    out = write_interpolation(decode, z0, z1, (4, 4), tmp_path / "interp.png", n=6)
    assert _is_png(out["path"]) and os.listdir(tmp_path) == ["interp.png"]
    assert out["z"].shape == (2, 6, 3) and out["images"].shape == (2, 6, 16)
    np.testing.assert_allclose(out["z"][1], slerp(z0[1], z1[1], 6))
    np.testing.assert_allclose(out["images"][0, 0], decode(z0[:1])[0])
    assert calls[0] == (12, 3)


def test_write_traversal_sorts_rows_by_kl(rng, tmp_path):
    decode, _ = _decoder(rng, 4)
    z, kl = rng.standard_normal(4), np.array([0.1, 2.0, 0.0, 0.7])
    out = write_traversal(decode, z, (4, 4), tmp_path / "trav.png", kl=kl, n=5, max_dims=3)
    assert _is_png(out["path"])
    np.testing.assert_array_equal(out["order"], [1, 3, 0])
    np.testing.assert_array_equal(out["kl"], [2.0, 0.7, 0.1])
    assert out["z"].shape == (3, 5, 4) and out["images"].shape == (3, 5, 16)
    np.testing.assert_array_equal(out["z"][0, :, 1], prior_quantiles(5))
    np.testing.assert_allclose(out["images"][1], decode(out["z"][1]))
    plain = write_traversal(decode, z, (4, 4), tmp_path / "plain.png", n=3)
    np.testing.assert_array_equal(plain["order"], np.arange(4))


def test_write_manifold_decodes_the_quantile_grid(rng, tmp_path):
    decode, _ = _decoder(rng, 2)
    out = write_manifold(decode, (4, 4), tmp_path / "manifold.png", n=5)
    assert _is_png(out["path"])
    np.testing.assert_array_equal(out["z"], quantile_grid(5))
    assert out["images"].shape == (25, 16) and out["grid"].shape == (20, 20)
    np.testing.assert_allclose(out["grid"][:4, 4:8], out["images"][1].reshape(4, 4))


def test_write_latent_scatter_and_arithmetic(rng, tmp_path):
    z, labels = rng.standard_normal((50, 3)), rng.integers(0, 4, size=50)
    out = write_latent_scatter(
        z, tmp_path / "scatter.png", labels, n_classes=4, dims=(2, 0), reference=z[:10]
    )
    assert _is_png(out["path"])
    np.testing.assert_array_equal(out["z"], z[:, [2, 0]])
    np.testing.assert_array_equal(out["labels"], labels)
    assert out["reference"].shape == (10, 2)
    out = write_latent_scatter(z[:, :2], tmp_path / "plain.png")
    assert _is_png(out["path"]) and out["labels"] is None
    decode, _ = _decoder(rng, 3)
    out = write_arithmetic(decode, z, labels, 1, 2, z[:3], (4, 4), tmp_path / "arith.png")
    assert _is_png(out["path"])
    assert out["z"].shape == (3, 4, 3) and out["images"].shape == (3, 4, 16)
    np.testing.assert_allclose(out["z"][:, 2], z[:3] + attribute_vector(z, labels, 1, 2))


def test_latent_tools_reject_bad_input(rng, tmp_path):
    z0, z1 = rng.standard_normal((2, 4))
    with pytest.raises(ValueError, match=r"slerp: expected z1 to have z0's shape \(4,\)"):
        slerp(z0, z1[:3])
    with pytest.raises(InvalidParameterError, match="'n' parameter of lerp"):
        lerp(z0, z1, 0)
    with pytest.raises(InvalidParameterError, match="'method' parameter of interpolate"):
        interpolate(z0, z1, 3, "cubic")
    z, labels = rng.standard_normal((10, 4)), np.arange(10) % 3
    with pytest.raises(ValueError, match=r"attribute_vector: expected labels to have one entry"):
        attribute_vector(z, labels[:9], 0, 1)
    with pytest.raises(ValueError, match=r"attribute_vector: expected label a=7 to occur"):
        attribute_vector(z, labels, 7, 1)
    with pytest.raises(ValueError, match=r"attribute_vector: expected labels to lie in \[0, inf"):
        attribute_vector(z, labels - 1, 0, 1)
    with pytest.raises(TypeError, match="attribute_vector: expected labels to be an integer"):
        attribute_vector(z, labels.astype(float), 0, 1)
    with pytest.raises(TypeError, match="attribute_vector: expected b to be an int class id"):
        attribute_vector(z, labels, 0, 1.0)
    with pytest.raises(ValueError, match=r"attribute_arithmetic: expected z_query.shape\[1\]"):
        attribute_arithmetic(z, labels, 0, 1, z[:, :3])
    with pytest.raises(InvalidParameterError, match="'n' parameter of prior_quantiles"):
        prior_quantiles(0)
    with pytest.raises(ValueError, match="prior_quantiles: expected low < high"):
        prior_quantiles(3, 0.9, 0.1)
    with pytest.raises(InvalidParameterError, match="'high' parameter of prior_quantiles"):
        prior_quantiles(3, 0.1, 1.0)
    decode, _ = _decoder(rng, 4, D=9)
    with pytest.raises(ValueError, match=r"write_interpolation: expected decode to return images"):
        write_interpolation(decode, z0, z1, (4, 4), tmp_path / "x.png")
    with pytest.raises(TypeError, match="write_interpolation: expected decode to be a callable"):
        write_interpolation(None, z0, z1, (3, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"write_traversal: expected kl to have one entry"):
        write_traversal(decode, z0, (3, 3), tmp_path / "x.png", kl=np.ones(3))
    with pytest.raises(ValueError, match=r"write_latent_scatter: expected z of shape \(N, 2\)"):
        write_latent_scatter(z, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"write_latent_scatter: expected labels to lie in \[0, 2"):
        write_latent_scatter(z[:, :2], tmp_path / "x.png", labels, n_classes=2)
    with pytest.raises(ValueError, match="write_latent_scatter: expected dims to be two indices"):
        write_latent_scatter(z, tmp_path / "x.png", dims=(0, 4))
    assert not os.listdir(tmp_path)  # nothing half-written is left behind
