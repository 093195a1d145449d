"""IAF and planar flow steps and the flow posterior.

Finite differences over every input and parameter (float64); the log-determinant against the
numerical Jacobian; inverses; densities that integrate to one on a grid (1 and 2 dimensions);
the IAF with zero autoregressive weights as the diagonal posterior; the held-fixed
d log q / dz against finite differences of the density; float32; bad input; device arrays.
"""

import numpy as np
import pytest
from cuda_emu import fake_cupy

from lvmcore import InvalidParameterError
from lvmcore.distributions import DiagNormal
from lvmcore.flows import (
    FlowPosterior,
    IAFStep,
    PlanarStep,
    iaf_posterior,
    planar_backward,
    planar_forward,
    planar_posterior,
)
from lvmcore.ops import softplus
from lvmcore.testing import check_vjp, gradcheck, numerical_gradient

C = 3  # context width


def _iaf(rng, Z=4, context=True, **kw):
    return IAFStep(Z, (6, 5), rng, context_dim=C if context else 0, dtype=np.float64, **kw)


def _planar(rng, Z=4, context=True):
    return PlanarStep(Z, rng, context_dim=C if context else 0, dtype=np.float64)


def _step_gradcheck(step, z, h, rng):
    z_new, logdet, cache = step.forward(z, h)
    G, g = rng.standard_normal(z_new.shape), rng.standard_normal(logdet.shape)
    step.zero_grad()
    dz, dh = step.backward(G, g, cache)
    analytic = {k: v.copy() for k, v in step.grads.items()}
    inputs = {**step.params, "z": z}
    analytic["z"] = dz
    if h is not None:
        inputs["h"], analytic["h"] = h, dh
    else:
        assert dh is None

    def loss():
        a, b, _ = step.forward(z, h)
        return np.sum(a * G) + np.sum(b * g)

    return gradcheck(loss, inputs, analytic)


def _jacobian(step, z, h):
    """Central-difference Jacobian dz'/dz of one row z (Z,), h (C,) or None."""
    Z = z.shape[-1]
    J = np.empty((Z, Z))
    for j in range(Z):
        e = np.zeros(Z)
        e[j] = 1e-6
        hh = None if h is None else h[None]
        J[:, j] = (step.forward((z + e)[None], hh)[0] - step.forward((z - e)[None], hh)[0])[
            0
        ] / 2e-6
    return J


# ------------------------------------------------------------------ IAF step


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_step_backward_every_parameter_and_input(rng, context, direct, reverse):
    step = _iaf(rng, context=context, direct=direct, reverse=reverse)
    z = rng.standard_normal((2, 3, 4))  # (K, B, Z)
    h = rng.standard_normal((3, C)) if context else None
    _step_gradcheck(step, z, h, rng)


@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_logdet_is_the_log_determinant_of_a_triangular_jacobian(rng, reverse):
    step = _iaf(rng, reverse=reverse, direct=True)
    z, h = rng.standard_normal(4), rng.standard_normal(C)
    J = _jacobian(step, z, h)
    _, logdet, cache = step.forward(z[None], h[None])
    np.testing.assert_allclose(logdet[0], np.linalg.slogdet(J)[1], rtol=1e-7)
    P = J[np.ix_(step.order, step.order)]  # in the order's coordinates
    assert np.all(np.triu(P, 1) == 0)
    np.testing.assert_allclose(np.diag(P), cache.s[0][step.order], rtol=1e-7)


def test_iaf_inverse_and_transpose_solve(rng):
    step = _iaf(rng, Z=5, direct=True)
    z, h = rng.standard_normal((2, 3, 5)), rng.standard_normal((3, C))
    z_new, _, cache = step.forward(z, h)
    np.testing.assert_allclose(step.inverse(z_new, h), z, rtol=1e-12, atol=1e-13)
    r = rng.standard_normal(z.shape)
    g = step.solve_transpose(r, cache)
    J = _jacobian(step, z[1, 2], h[2])
    np.testing.assert_allclose(J.T @ g[1, 2], r[1, 2], rtol=1e-7, atol=1e-8)


def test_iaf_with_zero_autoregressive_weights_is_the_diagonal_posterior(rng):
    """W0 = Wd = 0: m and s depend on h only, z' = s z + (1 - s) m is affine in z and log q
    is the diagonal Gaussian N(s mu + (1 - s) m, (s sigma)^2)."""
    Z, B, K = 4, 3, 5
    flow = iaf_posterior(Z, 2, (6,), rng, context_dim=C, direct=True, dtype=np.float64)
    for step in flow.steps:
        step.params["W0"][...] = 0
        step.params["Wd"][...] = 0
        step.params[f"b{len(step.hidden)}"][...] = rng.standard_normal(2 * Z)
    mu, logvar = rng.standard_normal((B, Z)), rng.standard_normal((B, Z))
    eps, h = rng.standard_normal((K, B, Z)), rng.standard_normal((B, C))
    (z, log_q), _ = flow.forward(mu, logvar, eps, h)
    mean, std = mu, np.exp(0.5 * logvar)
    for step in flow.steps:
        y = step.forward(np.zeros((B, Z)), h)[2]  # m and s do not depend on z
        mean, std = y.s * mean + y.oms * y.m, y.s * std
    np.testing.assert_allclose(z, mean + std * eps, rtol=1e-12)
    np.testing.assert_allclose(log_q, DiagNormal(mean, 2 * np.log(std)).log_prob(z), rtol=1e-12)


def test_iaf_starts_near_the_identity_with_forget_bias(rng):
    step = IAFStep(3, (4,), rng, forget_bias=1.0, dtype=np.float64)
    for k in step.params:
        step.params[k][...] = 0
    z = rng.standard_normal((2, 3))
    z_new, logdet, _ = step.forward(z)
    s = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(z_new, s * z, rtol=1e-14)
    np.testing.assert_allclose(logdet, 3 * np.log(s), rtol=1e-14)


# ------------------------------------------------------------------ planar step


@pytest.mark.parametrize("context", [False, True])
def test_planar_step_backward_every_parameter_and_input(rng, context):
    step = _planar(rng, context=context)
    z = rng.standard_normal((2, 3, 4))
    h = rng.standard_normal((3, C)) if context else None
    _step_gradcheck(step, z, h, rng)


@pytest.mark.parametrize("wu", [-6.0, 0.3, 4.0])
def test_planar_op_backward_through_the_constraint_on_u(rng, wu):
    """u set so that w.u = wu: far below -1 the constraint changes u_hat the most."""
    w = rng.standard_normal(4)
    u = rng.standard_normal(4)
    u += (wu - w @ u) * w / (w @ w)
    z, b = rng.standard_normal((3, 4)), np.array(0.4)
    check_vjp(
        lambda z, u, w, b: (lambda a, ld, c: ((a, ld), c))(*planar_forward(z, u, w, b)),
        lambda d, c: planar_backward(d[0], d[1], c),
        [z, u, w, b],
        names=["z", "u", "w", "b"],
    )
    _, _, cache = planar_forward(z, u, w, b)
    np.testing.assert_allclose(w @ cache.u_hat, softplus(np.array(wu)) - 1, rtol=1e-12)


def test_planar_constraint_keeps_the_map_invertible(rng):
    """With w.u << -1 the unconstrained map folds; the constrained one keeps det > 0."""
    w = np.array([1.0, 0.5])
    u = -30 * w
    z = np.linspace(-3, 3, 7)[:, None] * w / np.linalg.norm(w)  # along w, where it folds
    z_new, logdet, cache = planar_forward(z, u, w, np.array(0.0))
    assert np.all(np.isfinite(logdet)) and np.all(cache.det > 0)
    proj = z_new @ w
    assert np.all(np.diff(proj) > 0)  # monotone along w
    # at t = 0 the determinant is softplus(w.u) = e^-37.5: exact, where 1 + m(w.u) cancels
    np.testing.assert_allclose(logdet[3], np.log(softplus(w @ u)), rtol=1e-14)
    u = -3 * w  # a milder fold, whose determinant finite differences resolve
    _, logdet, _ = planar_forward(z, u, w, np.array(0.0))
    for i in (1, 3, 4):
        J = _jacobian(PlanarLike(u, w), z[i], None)
        np.testing.assert_allclose(logdet[i], np.linalg.slogdet(J)[1], rtol=1e-6)


class PlanarLike:
    """planar_forward with fixed parameters, for _jacobian."""

    def __init__(self, u, w):
        self.u, self.w = u, w

    def forward(self, z, h):
        return planar_forward(z, self.u, self.w, np.array(0.0))


def test_planar_logdet_inverse_and_transpose_solve(rng):
    step = _planar(rng)
    z, h = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, C))
    z_new, logdet, cache = step.forward(z, h)
    J = _jacobian(step, z[0, 1], h[1])
    np.testing.assert_allclose(logdet[0, 1], np.linalg.slogdet(J)[1], rtol=1e-7)
    np.testing.assert_allclose(step.inverse(z_new, h), z, rtol=1e-12, atol=1e-12)
    r = rng.standard_normal(z.shape)
    g = step.solve_transpose(r, cache)
    np.testing.assert_allclose(J.T @ g[0, 1], r[0, 1], rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------ flow posterior


def _posterior(kind, rng, Z=3, T=2, context=True):
    c = C if context else 0
    if kind == "iaf":
        return iaf_posterior(Z, T, (5,), rng, context_dim=c, direct=True, dtype=np.float64)
    if kind == "planar":
        return planar_posterior(Z, T, rng, context_dim=c, dtype=np.float64)
    steps = [
        IAFStep(Z, (5,), rng, context_dim=c, dtype=np.float64),
        PlanarStep(Z, rng, dtype=np.float64),
        IAFStep(Z, (5,), rng, context_dim=c, reverse=True, dtype=np.float64),
    ]
    return FlowPosterior(steps)


@pytest.mark.parametrize("kind", ["iaf", "planar", "mixed"])
@pytest.mark.parametrize("context", [False, True])
def test_flow_posterior_backward_every_parameter_and_input(rng, kind, context):
    flow = _posterior(kind, rng, context=context)
    B, Z, K = 2, 3, 4
    mu, logvar = rng.standard_normal((B, Z)), 0.5 * rng.standard_normal((B, Z))
    eps = rng.standard_normal((K, B, Z))
    h = rng.standard_normal((B, C)) if context else None
    (z, log_q), cache = flow.forward(mu, logvar, eps, h)
    G, g = rng.standard_normal(z.shape), rng.standard_normal(log_q.shape)
    flow.zero_grad()
    dmu, dlogvar, dh = flow.backward((G, g), cache)
    analytic = {k: v.copy() for k, v in flow.grads.items()}
    analytic.update(mu=dmu, logvar=dlogvar)
    inputs = {**flow.params, "mu": mu, "logvar": logvar}
    if context:
        inputs["h"], analytic["h"] = h, dh

    def loss():
        (a, b), _ = flow.forward(mu, logvar, eps, h)
        return np.sum(a * G) + np.sum(b * g)

    gradcheck(loss, inputs, analytic)


@pytest.mark.parametrize("kind", ["iaf", "planar", "mixed"])
def test_flow_dlogq_dz_is_the_gradient_of_the_density_with_q_fixed(rng, kind):
    flow = _posterior(kind, rng, T=3 if kind != "mixed" else 2)
    B, Z, K = 2, 3, 2
    mu, logvar = rng.standard_normal((B, Z)), 0.5 * rng.standard_normal((B, Z))
    eps, h = rng.standard_normal((K, B, Z)), rng.standard_normal((B, C))
    (z, log_q), cache = flow.forward(mu, logvar, eps, h)
    flow.zero_grad()
    g = flow.dlogq_dz(cache)
    assert all(not v.any() for v in flow.grads.values())
    zz = z.copy()
    np.testing.assert_allclose(flow.log_prob(zz, mu, logvar, h), log_q, rtol=1e-11)
    num = numerical_gradient(lambda: flow.log_prob(zz, mu, logvar, h).sum(), zz, eps=1e-5)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-6)


def _integral(flow, Z, h, lim=9.0, n=361):
    """Trapezoid integral of q(z_T) over [-lim, lim]^Z (Z = 1 or 2), one data row."""
    mu, logvar = np.array([[0.3, -0.2][:Z]]), np.array([[-0.4, 0.2][:Z]])
    t = np.linspace(-lim, lim, n)
    grid = np.stack(np.meshgrid(*([t] * Z), indexing="ij"), axis=-1).reshape(-1, 1, Z)
    q = np.exp(flow.log_prob(grid, mu, logvar, h)).reshape((n,) * Z)
    for _ in range(Z):
        q = np.trapezoid(q, t, axis=0)
    return float(q)


@pytest.mark.parametrize("Z", [1, 2])
@pytest.mark.parametrize("kind", ["iaf", "planar"])
def test_flow_density_integrates_to_one(Z, kind):
    rng = np.random.default_rng(11)
    h = rng.standard_normal((1, C))
    if kind == "iaf":
        flow = iaf_posterior(Z, 2, (4,), rng, context_dim=C, direct=True, dtype=np.float64)
    else:
        flow = planar_posterior(Z, 3, rng, dtype=np.float64)
        for step, wu in zip(flow.steps, (-0.8, 0.5, 1.5)):  # one contracting step (w.u < 0)
            w, u = rng.standard_normal(Z) + 0.5, rng.standard_normal(Z)
            step.params["w"][...] = w
            step.params["u"][...] = u + (wu - w @ u) * w / (w @ w)
            step.params["b"][...] = 0.3
        h = None
    n = 721 if Z == 1 else 241
    assert _integral(flow, Z, h, n=n) == pytest.approx(1.0, abs=1e-7)


def test_iaf_posterior_reverses_the_order_between_steps(rng):
    flow = iaf_posterior(4, 3, (5,), rng)
    orders = [s.order.tolist() for s in flow.steps]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]


def test_flow_posterior_shares_the_steps_arrays(rng):
    flow = _posterior("mixed", rng)
    step0 = flow.steps[0]
    assert flow.params["step0.W0"] is step0.params["W0"]
    assert flow.grads["step1.u"] is flow.steps[1].grads["u"]
    assert len(flow.params) == sum(len(s.params) for s in flow.steps)
    flow.zero_grad()
    assert all(not v.any() for v in flow.grads.values())


@pytest.mark.parametrize("kind", ["iaf", "planar"])
def test_flow_float32_matches_float64(rng, kind):
    B, Z, K = 2, 3, 4
    args = (
        rng.standard_normal((B, Z)),
        0.5 * rng.standard_normal((B, Z)),
        rng.standard_normal((K, B, Z)),
        rng.standard_normal((B, C)),
    )
    out = {}
    for dt in (np.float32, np.float64):
        r = np.random.default_rng(4)
        if kind == "iaf":
            flow = iaf_posterior(Z, 2, (5,), r, context_dim=C, dtype=dt)
        else:
            flow = planar_posterior(Z, 2, r, context_dim=C, dtype=dt)
        (z, log_q), cache = flow.forward(*(a.astype(dt) for a in args))
        grads = flow.backward((z, log_q), cache)
        out[dt] = (z, log_q, *grads, flow.dlogq_dz(cache), *flow.grads.values())
    for a32, a64 in zip(out[np.float32], out[np.float64]):
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=2e-4, atol=2e-5)


def test_flows_reject_bad_input(rng):
    with pytest.raises(
        InvalidParameterError,
        match="'flow_steps' parameter of iaf_posterior "
        r"must be an int in \[1, inf\). Got 0",
    ):
        iaf_posterior(3, 0, (4,), rng)
    with pytest.raises(InvalidParameterError, match="'flow_steps' parameter of planar_posterior"):
        planar_posterior(3, -1, rng)
    with pytest.raises(ValueError, match="FlowPosterior: expected steps to hold at least one"):
        FlowPosterior([])
    with pytest.raises(ValueError, match="FlowPosterior: expected every step to have one latent"):
        FlowPosterior([PlanarStep(3, rng), PlanarStep(4, rng)])
    with pytest.raises(TypeError, match=r"FlowPosterior: expected steps\[0\] to be a flow step"):
        FlowPosterior([object()])
    flow = iaf_posterior(3, 2, (4,), rng, context_dim=C, dtype=np.float64)
    mu, logvar, eps = np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((4, 2, 3))
    h = np.zeros((2, C))
    with pytest.raises(ValueError, match="IAFStep.forward: expected h of shape"):
        flow.forward(mu, logvar, eps)
    with pytest.raises(ValueError, match=r"IAFStep.forward: expected h.shape\[-1\] == 3"):
        flow.forward(mu, logvar, eps, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"IAFStep.forward: expected h.shape\[:-1\]"):
        flow.forward(mu, logvar, eps, np.zeros((3, C)))
    with pytest.raises(ValueError, match="gaussian_rsample_forward: expected eps to have shape"):
        flow.forward(mu, logvar, np.zeros((4, 2, 2)), h)
    bad = h.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="IAFStep.forward: expected h to contain no NaN"):
        flow.forward(mu, logvar, eps, bad)
    with pytest.raises(ValueError, match="FlowPosterior.forward: expected h None"):
        planar_posterior(3, 1, rng, dtype=np.float64).forward(mu, logvar, eps, h)
    with pytest.raises(ValueError, match="PlanarStep.forward: expected h None"):
        PlanarStep(3, rng, dtype=np.float64).forward(eps, h)
    with pytest.raises(ValueError, match=r"MADE: expected every hidden width >= n_in - 1 \(2\)"):
        IAFStep(3, (1,), rng)
    with pytest.raises(ValueError, match="planar_forward: expected w to be non-zero"):
        planar_forward(eps, np.ones(3), np.zeros(3), np.array(0.0))
    with pytest.raises(ValueError, match="planar_forward: expected u and w to have the same"):
        planar_forward(eps, np.ones((2, 3)), np.ones(3), np.array(0.0))
    with pytest.raises(
        ValueError,
        match=r"planar_forward: expected u.shape\[-1\] == 3, got u of "
        r"shape \(2,\). u, w and z share the latent width Z.",
    ):
        planar_forward(eps, np.ones(2), np.ones(3), np.array(0.0))
    with pytest.raises(ValueError, match=r"planar_forward: expected b to have shape \(\)"):
        planar_forward(eps, np.ones(3), np.ones(3), np.zeros(2))
    z_new, logdet, cache = IAFStep(3, (4,), rng, dtype=np.float64).forward(eps)
    with pytest.raises(ValueError, match="IAFStep.backward: expected dlogdet to have"):
        flow.steps[0].backward(z_new, logdet[0], cache)


def test_flow_posterior_on_device_arrays_matches_the_host():
    """Through the emulator's CuPy stand-in: no host copy anywhere, same numbers."""
    rng = np.random.default_rng(2)
    B, Z, K = 2, 3, 2
    args = [rng.standard_normal(s) for s in ((B, Z), (B, Z), (K, B, Z), (B, C))]
    results = []
    for device in ("host", "device"):
        flow = _posterior("mixed", np.random.default_rng(9))
        if device == "host":
            a = args
            (z, log_q), cache = flow.forward(*a)
            grads = flow.backward((z, log_q), cache)
            results.append(
                [z, log_q, *grads, flow.dlogq_dz(cache), flow.log_prob(z, a[0], a[1], a[3])]
            )
            results[-1] += [g.copy() for g in flow.grads.values()]
            continue
        with fake_cupy.installed() as cp:
            flow.to(cp)
            a = [cp.asarray(x) for x in args]
            (z, log_q), cache = flow.forward(*a)
            assert type(z) is cp.ndarray
            grads = flow.backward((z, log_q), cache)
            res = [z, log_q, *grads, flow.dlogq_dz(cache), flow.log_prob(z, a[0], a[1], a[3])]
            res += list(flow.grads.values())
            results.append([cp.asnumpy(r) for r in res])
    for d, h in zip(results[1], results[0]):
        np.testing.assert_allclose(d, h, rtol=1e-12, atol=1e-13)
