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
