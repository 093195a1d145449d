"""Priors: finite differences over z and every parameter (the VampPrior's through the
encoder), scipy's densities, samples against densities, the MAF step, float32, bad input and
the CuPy path through the CUDA emulator's stand-in."""

import numpy as np
import pytest
from cuda_emu import fake_cupy
from scipy import stats
from scipy.special import logsumexp

from lvmcore import InvalidParameterError
from lvmcore.flows import MAFStep
from lvmcore.nn import MLP, GaussianLayer
from lvmcore.priors import (
    FlowPrior,
    MixtureNoise,
    MixturePrior,
    StandardNormalPrior,
    VampPrior,
    mixture_log_prob_backward,
    mixture_log_prob_forward,
    mixture_log_prob_ref,
)
from lvmcore.priors import mixture as mixture_module
from lvmcore.testing import check_vjp, gradcheck

Z = 3


def _mog(rng, Z=Z, C=4, dtype=np.float64):
    prior = MixturePrior(Z, C, rng, dtype=dtype)
    prior.params["logvar"][...] = 0.4 * rng.standard_normal((C, Z))
    prior.params["logits"][...] = rng.standard_normal(C)
    return prior


def _vamp(rng, Z=Z, C=4, D=5, dtype=np.float64):
    enc = GaussianLayer((D, 6, Z), "tanh", rng, dtype=dtype)
    prior = VampPrior((enc.forward, enc.backward), C, D, Z, rng, init_std=1.0, dtype=dtype)
    return prior, enc


def _flow(rng, Z=Z, dtype=np.float64, n_steps=2, scale=0.5, direct=True):
    prior = FlowPrior(
        Z, (5,), rng, n_steps=n_steps, identity_init=False, direct=direct, dtype=dtype
    )
    for k, v in prior.params.items():  # moderate random weights, masks kept
        step, name = k.split(".")
        mask = prior.steps[int(step[4:])].masks.get(name, 1)
        v[...] = scale * rng.standard_normal(v.shape) * mask
    return prior


def _build(kind, rng, dtype=np.float64, **kw):
    """(prior, extra modules whose gradients the prior adds to)."""
    if kind == "standard":
        return StandardNormalPrior(kw.get("Z", Z), dtype=dtype), {}
    if kind == "mog":
        return _mog(rng, dtype=dtype, **kw), {}
    if kind == "vamp":
        prior, enc = _vamp(rng, dtype=dtype, **kw)
        return prior, {"enc": enc}
    return _flow(rng, dtype=dtype, **kw), {}


KINDS = ["standard", "mog", "vamp", "flow"]


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead", [(5,), (2, 3)])
def test_prior_backward_every_parameter_and_z(rng, kind, lead):
    prior, extra = _build(kind, rng)
    z = 1.3 * rng.standard_normal(lead + (Z,))
    log_p, cache = prior.log_prob(z)
    assert log_p.shape == lead
    G = rng.standard_normal(lead)
    prior.zero_grad()
    for m in extra.values():
        m.zero_grad()
    dz = prior.log_prob_backward(G, cache)
    inputs = {"z": z, **{f"prior.{k}": v for k, v in prior.params.items()}}
    analytic = {"z": dz, **{f"prior.{k}": g.copy() for k, g in prior.grads.items()}}
    for name, m in extra.items():
        inputs.update({f"{name}.{k}": v for k, v in m.params.items()})
        analytic.update({f"{name}.{k}": g.copy() for k, g in m.grads.items()})
    gradcheck(lambda: np.sum(prior.log_prob(z)[0] * G), inputs, analytic)


@pytest.mark.parametrize("kind", KINDS)
def test_input_vjp_is_dz_with_every_parameter_held_fixed(rng, kind):
    prior, extra = _build(kind, rng)
    z = rng.standard_normal((4, Z))
    log_p, cache = prior.log_prob(z)
    G = rng.standard_normal(4)
    prior.zero_grad()
    for m in extra.values():
        m.zero_grad()
    dz = prior.input_vjp(G, cache)
    for m in (prior, *extra.values()):
        assert all(np.all(g == 0) for g in m.grads.values())
    np.testing.assert_allclose(dz, prior.log_prob_backward(G, cache), rtol=1e-13, atol=1e-15)


def test_mixture_op_backward_every_argument(rng):
    C = 3
    mu, logvar = rng.standard_normal((C, Z)), 0.3 * rng.standard_normal((C, Z))
    logw = np.log(rng.dirichlet(np.ones(C)))
    z = rng.standard_normal((2, 4, Z))
    check_vjp(
        mixture_log_prob_forward,
        mixture_log_prob_backward,
        [z, mu, logvar, logw],
        names=["z", "mu", "logvar", "log_weights"],
    )


def test_vamp_prior_through_a_plain_mlp_encoder(rng):
    """Any (forward, backward) pair serves: here an nn.MLP whose 2Z outputs are split."""
    D, C = 4, 3
    mlp = MLP((D, 5, 2 * Z), "softplus", rng, dtype=np.float64)

    def forward(u):
        y, cache = mlp.forward(u)
        return (y[:, :Z], y[:, Z:]), cache

    def backward(dout, cache):
        return mlp.backward(np.concatenate(dout, axis=1), cache)

    prior = VampPrior((forward, backward), C, D, Z, rng, init_std=1.0, dtype=np.float64)
    z = rng.standard_normal((2, 3, Z))
    log_p, cache = prior.log_prob(z)
    G = rng.standard_normal(log_p.shape)
    prior.zero_grad()
    mlp.zero_grad()
    dz = prior.log_prob_backward(G, cache)
    inputs = {"z": z, "u": prior.params["u"], **mlp.params}
    analytic = {
        "z": dz,
        "u": prior.grads["u"].copy(),
        **{k: g.copy() for k, g in mlp.grads.items()},
    }
    gradcheck(lambda: np.sum(prior.log_prob(z)[0] * G), inputs, analytic)


# ------------------------------------------------------------------ densities


def _scipy_mixture(z, mu, logvar, log_weights):
    comps = [
        stats.multivariate_normal(mu[c], np.diag(np.exp(logvar[c]))).logpdf(z) + log_weights[c]
        for c in range(mu.shape[0])
    ]
    return logsumexp(np.stack(comps, axis=-1), axis=-1)


def test_mixture_prior_log_density_is_scipys(rng):
    prior = _mog(rng, C=5)
    z = 2.0 * rng.standard_normal((7, Z))
    p = prior.params
    logw = p["logits"] - logsumexp(p["logits"])
    want = _scipy_mixture(z, p["mu"], p["logvar"], logw)
    np.testing.assert_allclose(prior.log_prob(z)[0], want, rtol=1e-12)
    np.testing.assert_allclose(prior.weights, np.exp(logw), rtol=1e-12)


def test_vamp_prior_log_density_is_scipys_over_the_encoded_pseudo_inputs(rng):
    prior, enc = _vamp(rng, C=6)
    (mu, logvar), _ = enc.forward(prior.params["u"])
    z = rng.standard_normal((3, 2, Z))
    want = _scipy_mixture(z, mu, logvar, np.full(6, -np.log(6)))
    np.testing.assert_allclose(prior.log_prob(z)[0], want, rtol=1e-12)


def test_mixture_ref_far_from_every_component_and_blockwise(rng, monkeypatch):
    """Every component's density underflows (log-sum-exp shift) and the row blocks agree."""
    mu = np.array([[0.0, 0.0], [1.0, -1.0]])
    logvar = np.array([[-6.0, -6.0], [-5.0, -6.0]])
    logw = np.log([0.3, 0.7])
    z = np.array([[40.0, -30.0], [0.5, 0.5], [1.0, -1.0]])
    log_p, resp = mixture_log_prob_ref(z, mu, logvar, logw)
    assert np.all(np.isfinite(log_p))
    np.testing.assert_allclose(log_p, _scipy_mixture(z, mu, logvar, logw), rtol=1e-13)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-15)
    monkeypatch.setattr(mixture_module, "_BLOCK", 1)  # one row per block
    log_p1, resp1 = mixture_log_prob_ref(z, mu, logvar, logw)
    np.testing.assert_array_equal(log_p1, log_p)
    np.testing.assert_array_equal(resp1, resp)


def test_mixture_log_weight_minus_inf_switches_a_component_off(rng):
    mu, logvar = rng.standard_normal((2, Z)), np.zeros((2, Z))
    z = rng.standard_normal((4, Z))
    logw = np.array([0.0, -np.inf])
    log_p, cache = mixture_log_prob_forward(z, mu, logvar, logw)
    np.testing.assert_allclose(log_p, stats.multivariate_normal(mu[0]).logpdf(z), rtol=1e-13)
    _, dmu, _, dlw = mixture_log_prob_backward(np.ones(4), cache)
    assert np.all(dmu[1] == 0) and dlw[1] == 0


def test_one_unit_component_and_a_fresh_flow_are_the_standard_normal(rng):
    z = rng.standard_normal((6, Z))
    want = stats.multivariate_normal(np.zeros(Z)).logpdf(z)
    mog = MixturePrior(Z, 1, rng, init_std=0.0, dtype=np.float64)
    flow = FlowPrior(Z, (4,), rng, dtype=np.float64)
    for prior in (StandardNormalPrior(Z, dtype=np.float64), mog, flow):
        np.testing.assert_allclose(prior.log_prob(z)[0], want, rtol=1e-13)


# ------------------------------------------------------------------ samples against densities


def _chi_square_2d(prior, rng, n=20000, lim=5.0, bins=6, sub=24):
    """p-value of the samples' 2-d histogram against the density integrated per bin."""
    z = prior.sample(rng, n)
    edges = np.linspace(-lim, lim, bins + 1)
    counts, _, _ = np.histogram2d(z[:, 0], z[:, 1], bins=[edges, edges])
    h = (edges[1] - edges[0]) / sub
    mid = -lim + h * (np.arange(bins * sub) + 0.5)  # midpoint rule on a fine grid
    gx, gy = np.meshgrid(mid, mid, indexing="ij")
    dens = np.exp(prior.log_prob(np.stack([gx, gy], -1).reshape(-1, 2))[0])
    probs = dens.reshape(bins, sub, bins, sub).sum(axis=(1, 3)) * h * h
    observed, expected = counts.ravel(), n * probs.ravel()
    outside = n - expected.sum()
    if outside >= 5:
        observed = np.append(observed, n - counts.sum())
        expected = np.append(expected, outside)
    keep = expected >= 5
    stat = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    return stats.chi2.sf(stat, keep.sum() - 1)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_follow_the_density(kind):
    rng = np.random.default_rng(11)
    kw = {"scale": 0.3, "direct": False} if kind == "flow" else {}
    prior, _ = _build(kind, rng, Z=2, **kw)
    if kind == "mog":
        prior.params["mu"][...] *= 1.5
    assert _chi_square_2d(prior, np.random.default_rng(12)) > 1e-3


def test_samples_follow_a_one_dimensional_mixture():
    rng = np.random.default_rng(3)
    prior = MixturePrior(1, 3, rng, init_std=2.0, dtype=np.float64)
    prior.params["logits"][...] = [0.0, 1.0, -1.0]
    z = prior.sample(np.random.default_rng(4), 20000)[:, 0]
    edges = np.linspace(-6, 6, 25)
    w, mu, sd = prior.weights, prior.params["mu"][:, 0], np.exp(0.5 * prior.params["logvar"][:, 0])
    cdf = (w * stats.norm.cdf((edges[:, None] - mu) / sd)).sum(axis=1)
    expected = 20000 * np.diff(cdf)
    counts, _ = np.histogram(z, edges)
    keep = expected >= 5
    stat = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
    assert stats.chi2.sf(stat, keep.sum() - 1) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_with_explicit_noise_is_replayable(rng, kind):
    prior, _ = _build(kind, rng)
    noise = prior.draw_noise(np.random.default_rng(1), 5)
    a = prior.sample(noise, 5)
    np.testing.assert_array_equal(a, prior.sample(noise, 5))
    np.testing.assert_array_equal(a, prior.sample(np.random.default_rng(1), 5))
    assert a.shape == (5, Z) and a.dtype == np.float64


def test_mixture_sample_picks_components_by_the_inverse_cdf(rng):
    prior = _mog(rng, C=3)
    w = prior.weights
    u = np.array([0.0, w[0] - 1e-9, w[0] + 1e-9, 1 - 1e-12])
    eps = np.zeros((4, Z))
    z = prior.sample(MixtureNoise(u, eps), 4)
    np.testing.assert_array_equal(z, prior.params["mu"][[0, 0, 1, 2]])


# ------------------------------------------------------------------ the MAF step


@pytest.mark.parametrize("context_dim", [0, 2])
def test_maf_step_backward_every_parameter_input_and_context(rng, context_dim):
    step = MAFStep(
        Z, (5, 4), rng, context_dim=context_dim, identity_init=False, direct=True, dtype=np.float64
    )
    z = rng.standard_normal((2, 3, Z))
    h = rng.standard_normal((3, context_dim)) if context_dim else None
    u, logdet, cache = step.forward(z, h)
    Gu, Gl = rng.standard_normal(u.shape), rng.standard_normal(logdet.shape)
    step.zero_grad()
    dz, dh = step.backward(Gu, Gl, cache)
    inputs, analytic = (
        {**step.params, "z": z},
        {**{k: g.copy() for k, g in step.grads.items()}, "z": dz},
    )
    if context_dim:
        inputs["h"], analytic["h"] = h, dh

    def loss():
        u2, l2, _ = step.forward(z, h)
        return np.sum(u2 * Gu) + np.sum(l2 * Gl)

    gradcheck(loss, inputs, analytic)
    np.testing.assert_allclose(step.input_vjp(Gu, Gl, cache), dz, rtol=1e-13)


def test_maf_step_inverse_and_log_determinant(rng):
    step = MAFStep(4, (6,), rng, reverse=True, identity_init=False, dtype=np.float64)
    z = rng.standard_normal((3, 4))
    u, logdet, _ = step.forward(z)
    np.testing.assert_allclose(step.inverse(u), z, rtol=1e-12, atol=1e-13)
    for r in range(3):  # log|det du/dz| against a central-difference Jacobian
        J = np.empty((4, 4))
        for j in range(4):
            e = np.zeros(4)
            e[j] = 1e-6
            J[:, j] = (step.forward(z[r] + e)[0] - step.forward(z[r] - e)[0]) / 2e-6
        assert np.allclose(np.triu(J[::-1, ::-1], 1), 0, atol=1e-9)  # triangular in the order
        np.testing.assert_allclose(np.linalg.slogdet(J)[1], logdet[r], rtol=1e-7)


def test_flow_prior_sample_inverts_the_density_map(rng):
    prior = _flow(rng)
    eps = prior.draw_noise(np.random.default_rng(2), 6)
    z = prior.sample(eps, 6)
    _, cache = prior.log_prob(z)
    np.testing.assert_allclose(cache.u, eps, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ float32


@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_float64(kind):
    p64, _ = _build(kind, np.random.default_rng(7))
    p32, _ = _build(kind, np.random.default_rng(7), dtype=np.float32)
    z = np.random.default_rng(8).standard_normal((4, 2, Z))
    l64, c64 = p64.log_prob(z)
    l32, c32 = p32.log_prob(z.astype(np.float32))
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=2e-5, atol=2e-5)
    G = np.ones((4, 2))
    dz32 = p32.log_prob_backward(G.astype(np.float32), c32)
    assert dz32.dtype == np.float32
    np.testing.assert_allclose(dz32, p64.log_prob_backward(G, c64), rtol=1e-4, atol=1e-5)
    for k, g in p32.grads.items():
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, p64.grads[k], rtol=1e-4, atol=1e-4)
    s = p32.sample(np.random.default_rng(1), 3)
    assert s.dtype == np.float32 and s.shape == (3, Z)


# ------------------------------------------------------------------ bad input


def test_bad_hyper_parameters_name_the_argument(rng):
    with pytest.raises(InvalidParameterError, match="'n_components' parameter of MixturePrior"):
        MixturePrior(Z, 0, rng)
    enc = GaussianLayer((5, Z), "tanh", rng)
    with pytest.raises(InvalidParameterError, match="'n_components' parameter of VampPrior"):
        VampPrior((enc.forward, enc.backward), 0, 5, Z, rng)
    with pytest.raises(InvalidParameterError, match="'n_steps' parameter of FlowPrior"):
        FlowPrior(Z, (4,), rng, n_steps=0)
    with pytest.raises(InvalidParameterError, match="'n_latent' parameter of StandardNormalPrior"):
        StandardNormalPrior(0)
    with pytest.raises(TypeError, match="StandardNormalPrior: expected dtype float32 or float64"):
        StandardNormalPrior(2, dtype=np.int32)


def test_vamp_prior_refuses_pseudo_inputs_or_an_encoder_of_the_wrong_width(rng):
    enc = GaussianLayer((5, Z), "tanh", rng)
    pair = (enc.forward, enc.backward)
    with pytest.raises(
        ValueError,
        match=r"VampPrior: expected pseudo_inputs to have shape .* \(4, 5\), got \(4, 6\)",
    ):
        VampPrior(pair, 4, 5, Z, rng, pseudo_inputs=np.zeros((4, 6), np.float32))
    with pytest.raises(TypeError, match="expected encoder to be a pair"):
        VampPrior(enc, 4, 5, Z, rng)
    prior = VampPrior(pair, 4, 5, Z + 1, rng)  # the encoder gives Z, the prior expects Z + 1
    with pytest.raises(
        ValueError, match="expected the encoder's mu at the pseudo-inputs to have shape"
    ):
        prior.log_prob(np.zeros((2, Z + 1), np.float32))
    wide = VampPrior((enc.forward, enc.backward), 4, 6, Z, rng)  # D = 6 for a 5-wide encoder
    with pytest.raises(
        ValueError, match=r"the encoder refused the pseudo-inputs u of shape \(4, 6\)"
    ):
        wide.log_prob(np.zeros((2, Z), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_z_dlog_p_and_noise_name_the_argument(rng, kind):
    prior, _ = _build(kind, rng)
    name = type(prior).__name__
    with pytest.raises(ValueError, match=rf"{name}.log_prob: expected z.shape\[-1\] == {Z}"):
        prior.log_prob(np.zeros((2, Z + 1)))
    with pytest.raises(TypeError, match=f"{name}.log_prob: expected z to have dtype float64"):
        prior.log_prob(np.zeros((2, Z), np.float32))
    with pytest.raises(ValueError, match=f"{name}.log_prob: expected z to contain no NaN"):
        prior.log_prob(np.full((2, Z), np.nan))
    _, cache = prior.log_prob(np.zeros((2, Z)))
    with pytest.raises(ValueError, match=f"{name}.log_prob_backward: expected dlog_p to have"):
        prior.log_prob_backward(np.ones(3), cache)
    with pytest.raises(ValueError, match=f"{name}.sample: expected n to be a non-negative int"):
        prior.sample(rng, -1)
    with pytest.raises((ValueError, TypeError), match=f"{name}.sample: expected"):
        prior.sample(np.zeros((4, Z)), 5)


def test_bad_mixture_noise(rng):
    prior = _mog(rng)
    with pytest.raises(ValueError, match="expected noise.u to hold uniforms in"):
        prior.sample(MixtureNoise(np.full(2, 1.0), np.zeros((2, Z))), 2)
    with pytest.raises(ValueError, match=r"expected noise.eps to have shape \(2, 3\)"):
        prior.sample(MixtureNoise(np.zeros(2), np.zeros((2, 2))), 2)


def test_mixture_op_refuses_mismatched_components(rng):
    mu = np.zeros((2, Z))
    with pytest.raises(ValueError, match=r"expected logvar to have mu's shape \(2, 3\)"):
        mixture_log_prob_forward(np.zeros((1, Z)), mu, np.zeros((3, Z)), np.zeros(2))
    with pytest.raises(ValueError, match=r"expected log_weights to have shape \(2,\)"):
        mixture_log_prob_forward(np.zeros((1, Z)), mu, mu, np.zeros(3))
    with pytest.raises(ValueError, match="expected mu to have at least one row"):
        mixture_log_prob_forward(np.zeros((1, Z)), mu[:0], mu[:0], np.zeros(0))


# ------------------------------------------------------------------ device (CuPy) path


def test_priors_on_device_arrays_match_the_host():
    """Through the emulator's CuPy stand-in: no host copy anywhere, same numbers."""
    host = {}
    z = np.random.default_rng(9).standard_normal((2, 3, Z))
    G = np.random.default_rng(10).standard_normal((2, 3))
    for kind in KINDS:
        prior, extra = _build(kind, np.random.default_rng(6))
        noise = prior.draw_noise(np.random.default_rng(1), 4)
        lp, c = prior.log_prob(z)
        host[kind] = (lp, prior.log_prob_backward(G, c), prior.sample(noise, 4), noise)
    with fake_cupy.installed() as cp:
        for kind in KINDS:
            prior, extra = _build(kind, np.random.default_rng(6))
            prior.to(cp)
            for m in extra.values():
                m.to(cp)
            lp, c = prior.log_prob(cp.asarray(z))
            assert type(lp) is cp.ndarray
            dz = prior.log_prob_backward(cp.asarray(G), c)
            noise = host[kind][3]
            noise = (
                MixtureNoise(*map(cp.asarray, noise))
                if isinstance(noise, tuple)
                else cp.asarray(noise)
            )
            s = prior.sample(noise, 4)
            for a, b in zip((lp, dz, s), host[kind][:3]):
                np.testing.assert_allclose(cp.asnumpy(a), b, rtol=1e-12, atol=1e-13)
            with pytest.raises(TypeError, match="expected z on the parameters' device"):
                prior.log_prob(z)
