import numpy as np
import pytest

from lvmcore.nn import MLP, Linear, glorot_uniform
from lvmcore.testing import gradcheck


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus", "sigmoid"])
def test_mlp_backward_every_parameter_and_input(rng, activation):
    mlp = MLP((4, 6, 5, 3), activation, rng, dtype=np.float64)
    x = rng.standard_normal((7, 4))
    G = rng.standard_normal((7, 3))
    y, cache = mlp.forward(x)
    mlp.zero_grad()
    dx = mlp.backward(G, cache)
    analytic = {k: g.copy() for k, g in mlp.grads.items()}
    analytic["x"] = dx
    gradcheck(lambda: np.sum(mlp.forward(x)[0] * G), {**mlp.params, "x": x}, analytic)


def test_mlp_backward_accumulates_and_skips_dx(rng):
    mlp = MLP((3, 4, 2), "tanh", rng, dtype=np.float64)
    x, G = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    _, cache = mlp.forward(x)
    mlp.zero_grad()
    mlp.backward(G, cache)
    once = {k: g.copy() for k, g in mlp.grads.items()}
    assert mlp.backward(G, cache, need_dx=False) is None
    for k in once:
        np.testing.assert_allclose(mlp.grads[k], 2 * once[k], rtol=1e-14)
    mlp.zero_grad()
    assert all(not g.any() for g in mlp.grads.values())


def test_linear_module_matches_op(rng):
    lin = Linear(3, 2, rng, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    y, c = lin.forward(x)
    np.testing.assert_allclose(y, x @ lin.params["W"] + lin.params["b"])
    lin.backward(np.ones((4, 2)), c)
    np.testing.assert_allclose(lin.grads["b"], [4.0, 4.0])


def test_output_bias_is_the_last_layers_bias_parameter(rng):
    mlp = MLP([3, 5, 4], "tanh", rng, dtype=np.float64)
    assert mlp.output_bias is mlp.params["b1"]
    mlp.output_bias[...] = 2.0  # writing into it sets the parameter the forward adds
    x = rng.standard_normal((2, 3))
    y, _ = mlp.forward(x)
    mlp.params["b1"][...] = 0.0
    np.testing.assert_allclose(y - mlp.forward(x)[0], 2.0)


def test_glorot_uniform_range_and_variance(rng):
    W = glorot_uniform(rng, 300, 200, np.float64)
    a = np.sqrt(6 / 500)
    assert W.shape == (300, 200) and np.abs(W).max() <= a
    assert W.var() == pytest.approx(a * a / 3, rel=0.02)


def test_mlp_rejects_bad_sizes(rng):
    with pytest.raises(ValueError, match="'sizes' parameter of MLP must be an int in"):
        MLP((4, 0, 2), "tanh", rng)
    with pytest.raises(ValueError, match="'activation' parameter of MLP must be one of"):
        MLP((4, 2), "gelu", rng)


# --- the buffered form: the same MLP through reused buffers and the bias_act kernel -------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("sizes", [(4, 6, 5, 3), (4, 3)])
def test_buffered_mlp_equals_the_readable_one(rng, activation, dtype, scaled, sizes):
    from lvmcore.testing import PARITY_TOLERANCES

    mlp = MLP(sizes, activation, rng, dtype=dtype)
    for k, v in mlp.params.items():
        if k.startswith("b"):
            v += (0.3 * rng.standard_normal(v.shape)).astype(dtype)
    x = rng.standard_normal((7, 4)).astype(dtype)
    G = rng.standard_normal((7, sizes[-1])).astype(dtype)
    s = rng.standard_normal(7).astype(dtype) if scaled else None
    y, cache = mlp.forward(x)
    mlp.zero_grad()
    dx = mlp.backward(G if s is None else G * s[:, None], cache)
    want = {k: g.copy() for k, g in mlp.grads.items()}
    yb, cb = mlp.forward_buffered(x)
    tol = dict(PARITY_TOLERANCES[np.dtype(dtype)])
    np.testing.assert_allclose(yb, y, **tol)
    mlp.zero_grad()
    dxb = mlp.backward_buffered(G, cb, row_scale=s)
    tol["atol"] *= 10  # sums over rows in other orders
    np.testing.assert_allclose(dxb, dx, **tol)
    for k in want:
        np.testing.assert_allclose(mlp.grads[k], want[k], err_msg=k, **tol)


def test_buffered_mlp_gradient_and_reuse(rng):
    mlp = MLP((4, 6, 5, 3), "tanh", rng, dtype=np.float64)
    x = rng.standard_normal((7, 4))
    G, s = rng.standard_normal((7, 3)), rng.random(7)
    y, cache = mlp.forward_buffered(x)
    mlp.zero_grad()
    dx = mlp.backward_buffered(G, cache, row_scale=s).copy()
    analytic = {k: g.copy() for k, g in mlp.grads.items()}
    analytic["x"] = dx
    loss = lambda: np.sum(mlp.forward_buffered(x)[0] * G * s[:, None])  # noqa: E731
    gradcheck(loss, {**mlp.params, "x": x}, analytic)
    # the buffers are reused: same arrays for the same row count, views for fewer rows
    y1, c1 = mlp.forward_buffered(x)
    y2, c2 = mlp.forward_buffered(x[:3])
    assert np.shares_memory(y1, y2) and y2.flags.c_contiguous and y2.shape == (3, 3)
    with pytest.raises(ValueError, match="expected the cache of the MLP's last buffered forward"):
        mlp.backward_buffered(G, c1)
    assert mlp.backward(G[:3], c2, need_dx=False) is None  # backward dispatches on the cache
    with pytest.raises(ValueError, match=r"expected dy to have shape \(3, 3\)"):
        mlp.backward_buffered(G, mlp.forward_buffered(x[:3])[1])
    for act in ("tanh", "relu", "softplus", "sigmoid"):  # the exact form: forward's bits
        exact = MLP((4, 6, 5, 3), act, rng, dtype=np.float32)
        xe = x.astype(np.float32)
        np.testing.assert_array_equal(
            exact.forward_buffered(xe, fused=False)[0], exact.forward(xe)[0]
        )
    z = mlp.input_buffer(5)
    z[...] = x[:5]
    np.testing.assert_allclose(mlp.forward_buffered(z)[0], mlp.forward(x[:5])[0], rtol=1e-14)
    # the output bias left out for the pass that reads y next: y + b is the full output, bit
    # for bit, and the backward is the same
    full = mlp.forward_buffered(x)[0].copy()
    mlp.zero_grad()
    mlp.backward_buffered(G, mlp.forward_buffered(x)[1], row_scale=s)
    want = {k: g.copy() for k, g in mlp.grads.items()}
    y_nb, c_nb = mlp.forward_buffered(x, output_bias=False)
    np.testing.assert_array_equal(y_nb + mlp.params["b2"], full)
    mlp.zero_grad()
    mlp.backward_buffered(G, c_nb, row_scale=s)
    for k in want:
        np.testing.assert_array_equal(mlp.grads[k], want[k], err_msg=k)
    for bad in ({"fused": "no"}, {"output_bias": None}):
        with pytest.raises(TypeError, match=f"expected {next(iter(bad))} to be True or False"):
            mlp.forward_buffered(x, **bad)
