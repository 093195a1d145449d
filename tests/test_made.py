"""MADE: gradients by central differences, masks, and the autoregressive connectivity."""

import numpy as np
import pytest

from lvmcore import InvalidParameterError
from lvmcore.nn import MADE
from lvmcore.nn.made import made_degrees
from lvmcore.testing import gradcheck


def _made(rng, Z=4, hidden=(6, 5), **kw):
    kw.setdefault("dtype", np.float64)
    return MADE(Z, hidden, rng, **kw)


def _rank(made):
    """rank[i]: the position of input i in the order."""
    return made.degrees[0] - 1


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("order", ["natural", "random"])
def test_made_backward_every_parameter_and_input(rng, direct, context_dim, order):
    made = _made(rng, n_outputs_per_dim=2, context_dim=context_dim, order=order, direct=direct)
    x = rng.standard_normal((2, 3, 4))  # (K, B, Z): the context is broadcast over K
    c = rng.standard_normal((3, context_dim)) if context_dim else None
    y, cache = made.forward(x, c)
    assert y.shape == (2, 3, 2, 4)
    G = rng.standard_normal(y.shape)
    made.zero_grad()
    dx, dc = made.backward(G, cache)
    analytic = {k: g.copy() for k, g in made.grads.items()}
    inputs = {**made.params, "x": x}
    analytic["x"] = dx
    if context_dim:
        inputs["c"], analytic["c"] = c, dc
    else:
        assert dc is None
    gradcheck(lambda: np.sum(made.forward(x, c)[0] * G), inputs, analytic)


def test_made_gradients_of_masked_weights_are_masked_and_weights_stay_masked(rng):
    made = _made(rng, n_outputs_per_dim=2, direct=True, context_dim=2)
    x, c = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    y, cache = made.forward(x, c)
    made.zero_grad()
    made.backward(rng.standard_normal(y.shape), cache)
    assert set(made.masks) == {"W0", "W1", "W2", "Wd"}
    for name, mask in made.masks.items():
        assert np.all(made.params[name][mask == 0] == 0), name
        assert np.all(made.grads[name][mask == 0] == 0), name
        assert np.any(made.grads[name][mask == 1] != 0), name


def test_made_masked_weights_are_used_even_if_a_parameter_is_overwritten(rng):
    """Forward multiplies by the mask: loading unmasked values cannot break the order."""
    made = _made(rng)
    x = rng.standard_normal((3, 4))
    y0 = made.forward(x)[0]
    for name in made.masks:
        made.params[name][made.masks[name] == 0] = 7.0
    np.testing.assert_array_equal(made.forward(x)[0], y0)


@pytest.mark.parametrize("order", ["natural", "reverse", "random", (2, 0, 4, 3, 1)])
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_perturbing_an_input_leaves_outputs_at_and_before_it_unchanged(
    rng, order, direct, activation
):
    made = _made(
        rng,
        Z=5,
        hidden=(8, 7),
        n_outputs_per_dim=2,
        order=order,
        direct=direct,
        activation=activation,
    )
    rank = _rank(made)
    x = rng.standard_normal((6, 5))
    y0 = made.forward(x)[0]
    for i in range(5):
        xp = x.copy()
        xp[:, i] += 3.0 * rng.standard_normal(6)
        y1 = made.forward(xp)[0]
        unaffected = rank <= rank[i]  # outputs at and before i in the order
        np.testing.assert_array_equal(y1[..., unaffected], y0[..., unaffected])


@pytest.mark.parametrize("order", ["natural", "reverse", "random"])
@pytest.mark.parametrize("direct", [False, True])
def test_jacobian_pattern_is_exactly_strictly_lower_triangular_in_the_order(rng, order, direct):
    """Every allowed connection exists and no other: dy[p, i]/dx[j] != 0 iff j precedes i."""
    Z = 5
    made = _made(rng, Z=Z, hidden=(Z - 1, 9), n_outputs_per_dim=2, order=order, direct=direct)
    rank = _rank(made)
    x = rng.standard_normal(Z)
    J = np.empty((2, Z, Z))  # (P, output i, input j)
    h = 1e-6
    for j in range(Z):
        e = np.zeros(Z)
        e[j] = h
        J[:, :, j] = (made.forward(x + e)[0] - made.forward(x - e)[0]) / (2 * h)
    allowed = rank[None, :] < rank[:, None]  # (i, j): j before i
    for p in range(2):
        assert np.all(J[p][~allowed] == 0)
        assert np.all(np.abs(J[p][allowed]) > 1e-8)
    # in the order's coordinates the pattern is strictly lower triangular
    perm = made.order
    np.testing.assert_array_equal(allowed[np.ix_(perm, perm)], np.tril(np.ones((Z, Z)), -1) > 0)


def test_degrees_follow_the_order_and_cover_every_hidden_degree():
    degrees = made_degrees(4, (3, 7), np.array([2, 0, 3, 1]))
    np.testing.assert_array_equal(degrees[0], [2, 4, 1, 3])
    for d in degrees[1:]:
        assert set(d.tolist()) == {1, 2, 3}
    assert np.all(made_degrees(1, (2,), np.array([0]))[1] == 0)


def test_output_bias_is_the_output_layers_bias_parameter(rng):
    made = MADE(3, (4, 4), rng, dtype=np.float64)
    assert made.output_bias is made.params[f"b{made.n_layers - 1}"]
    assert made.output_bias.shape == (3,)


def test_made_with_one_input_depends_on_the_context_only(rng):
    made = MADE(1, (3,), rng, context_dim=2, n_outputs_per_dim=2, dtype=np.float64)
    c = rng.standard_normal((4, 2))
    y1 = made.forward(rng.standard_normal((4, 1)), c)[0]
    y2 = made.forward(rng.standard_normal((4, 1)), c)[0]
    np.testing.assert_array_equal(y1, y2)


def test_random_order_is_seeded():
    a = MADE(6, (8,), np.random.default_rng(3), order="random").order
    b = MADE(6, (8,), np.random.default_rng(3), order="random").order
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(6))


def test_context_broadcast_equals_repeated_context(rng):
    made = _made(rng, context_dim=3, n_outputs_per_dim=2)
    x, c = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 3))
    G = rng.standard_normal((2, 3, 2, 4))
    y1, c1 = made.forward(x, c)
    made.zero_grad()
    _, dc1 = made.backward(G, c1)
    g1 = {k: v.copy() for k, v in made.grads.items()}
    y2, c2 = made.forward(x, np.broadcast_to(c, (2, 3, 3)).copy())
    made.zero_grad()
    _, dc2 = made.backward(G, c2)
    np.testing.assert_allclose(y1, y2, rtol=1e-14)
    np.testing.assert_allclose(dc1, dc2.sum(axis=0), rtol=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], made.grads[k], rtol=1e-12, atol=1e-15)


def test_input_vjp_is_backward_dx_without_touching_gradients(rng):
    made = _made(rng, n_outputs_per_dim=2, direct=True, context_dim=2)
    x, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    y, cache = made.forward(x, c)
    G = rng.standard_normal(y.shape)
    made.zero_grad()
    dx_only = made.input_vjp(G, cache)
    assert all(not g.any() for g in made.grads.values())
    dx, _ = made.backward(G, cache)
    np.testing.assert_allclose(dx_only, dx, rtol=1e-14)


def test_made_float32_matches_float64(rng):
    m64 = MADE(
        4,
        (6,),
        np.random.default_rng(1),
        n_outputs_per_dim=2,
        context_dim=2,
        direct=True,
        dtype=np.float64,
    )
    m32 = MADE(
        4,
        (6,),
        np.random.default_rng(1),
        n_outputs_per_dim=2,
        context_dim=2,
        direct=True,
        dtype=np.float32,
    )
    x, c = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    G = rng.standard_normal((5, 2, 4))
    y64, k64 = m64.forward(x, c)
    y32, k32 = m32.forward(x.astype(np.float32), c.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    dx64, dc64 = m64.backward(G, k64)
    dx32, dc32 = m32.backward(G.astype(np.float32), k32)
    assert dx32.dtype == dc32.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-5)
    for k in m64.grads:
        assert m32.grads[k].dtype == np.float32
        np.testing.assert_allclose(m32.grads[k], m64.grads[k], rtol=1e-4, atol=1e-5)


def test_made_rejects_bad_configuration(rng):
    with pytest.raises(ValueError, match=r"MADE: expected every hidden width >= n_in - 1 \(4\)"):
        MADE(5, (3,), rng)
    with pytest.raises(ValueError, match="MADE: expected hidden to list at least one"):
        MADE(5, (), rng)
    with pytest.raises(InvalidParameterError, match="'n_in' parameter of MADE"):
        MADE(0, (3,), rng)
    with pytest.raises(InvalidParameterError, match="'order' parameter of MADE must be one of"):
        MADE(3, (3,), rng, order="sideways")
    with pytest.raises(ValueError, match=r"MADE: expected order to be .* a permutation of range"):
        MADE(3, (3,), rng, order=(0, 0, 1))
    with pytest.raises(InvalidParameterError, match="'n_outputs_per_dim' parameter of MADE"):
        MADE(3, (3,), rng, n_outputs_per_dim=0)


def test_made_rejects_bad_input(rng):
    made = _made(rng, context_dim=2)
    x, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match=r"MADE.forward: expected x.shape\[-1\] == 4"):
        made.forward(x[:, :3], c)
    with pytest.raises(ValueError, match="MADE.forward: expected context of shape"):
        made.forward(x)
    with pytest.raises(ValueError, match=r"MADE.forward: expected context.shape\[:-1\]"):
        made.forward(x, c[:2])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="MADE.forward: expected x to contain no NaN"):
        made.forward(bad, c)
    with pytest.raises(TypeError, match="MADE.forward: expected x to have dtype float64"):
        made.forward(x.astype(np.float32), c)
    with pytest.raises(ValueError, match="MADE.forward: expected context None"):
        _made(rng).forward(x, c)
    y, cache = made.forward(x, c)
    with pytest.raises(ValueError, match="MADE.backward: expected dy to have the forward"):
        made.backward(y[:2], cache)


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("order", ["natural", "random"])
def test_grouped_inputs_share_their_dimensions_degree(rng, direct, order):
    """With input_width W, the W columns of input j reach output i only if j precedes i."""
    Z, W = 4, 3
    made = _made(
        rng, Z=Z, hidden=(7, 5), n_outputs_per_dim=2, input_width=W, order=order, direct=direct
    )
    rank = _rank(made)
    x = rng.standard_normal((5, Z * W))
    y0 = made.forward(x)[0]
    assert y0.shape == (5, 2, Z)
    for j in range(Z):
        for w in range(W):
            xp = x.copy()
            xp[:, j * W + w] += 2.0
            y1 = made.forward(xp)[0]
            after = rank > rank[j]
            np.testing.assert_array_equal(y1[..., ~after], y0[..., ~after])
            assert np.all(np.abs(y1[..., after] - y0[..., after]).max(axis=0) > 0)


@pytest.mark.parametrize("context_dim", [0, 2])
def test_grouped_inputs_backward_every_parameter_and_input(rng, context_dim):
    made = _made(
        rng,
        Z=3,
        hidden=(5,),
        n_outputs_per_dim=3,
        input_width=2,
        direct=True,
        context_dim=context_dim,
    )
    x = rng.standard_normal((2, 4, 6))
    c = rng.standard_normal((4, context_dim)) if context_dim else None
    y, cache = made.forward(x, c)
    G = rng.standard_normal(y.shape)
    made.zero_grad()
    dx, dc = made.backward(G, cache)
    assert dx.shape == x.shape
    np.testing.assert_allclose(made.input_vjp(G, cache), dx, rtol=1e-14)
    inputs, analytic = {**made.params, "x": x}, {**made.grads, "x": dx}
    if context_dim:
        inputs["c"], analytic["c"] = c, dc
    gradcheck(lambda: np.sum(made.forward(x, c)[0] * G), inputs, analytic)


def test_input_width_is_validated(rng):
    with pytest.raises(InvalidParameterError, match="'input_width' parameter of MADE"):
        MADE(3, (3,), rng, input_width=0)
    made = _made(rng, Z=3, hidden=(3,), input_width=2)
    with pytest.raises(ValueError, match=r"MADE.forward: expected x.shape\[-1\] == 6"):
        made.forward(rng.standard_normal((2, 3)))
