"""The fused sampling path of the VAE and the IWAE (``reparam_sample`` and its regenerating
backward, fed a NoiseKey) against the readable path (``ops.reparam`` on the noise array of the
same key): equal to float rounding in float64 and float32, for every objective and estimator;
its own finite-difference check; a training step and an evaluation on one Philox stream."""

import numpy as np
import pytest

from lvmcore.backend import get_backend, use_backend
from lvmcore.models import IWAE, VAE, CatVAE
from lvmcore.models.noise_key import NoiseKey, draw_key
from lvmcore.models.vae import FusedReparam
from lvmcore.testing import gradcheck

D = 9

VAE_CONFIGS = [
    dict(kl="analytic", n_samples=1),
    dict(kl="sampled", n_samples=3),
    dict(kl="analytic", n_samples=2, beta=0.3, free_bits=0.05),
    dict(kl="sampled", n_samples=2, free_bits=0.05, activation="softplus"),
    dict(likelihood="gaussian", kl="sampled", n_samples=2, activation="relu"),
]
IWAE_CONFIGS = [
    dict(k=4, objective=o, groups=g, estimator=e)
    for o, g in (("iwae", 1), ("miwae", 2), ("ciwae", 1), ("piwae", 2))
    for e in ("iwae", "stl", "dreg")
] + [dict(k=3, likelihood="gaussian", estimator=e) for e in ("iwae", "dreg")]


def _model(cfg, dtype, seed=3):
    cls = IWAE if "k" in cfg else VAE
    model = cls(D, 3, (6, 5), dtype=dtype, seed=seed, **cfg)
    # biases away from zero: a ReLU row whose inputs are all inactive would otherwise sit
    # exactly on the kink (pre-activation = bias = 0), where central differences halve
    bias = np.random.default_rng(seed)
    for k, v in model.parameters().items():
        if k.split(".")[1].startswith("b"):
            v += (0.3 * bias.standard_normal(v.shape)).astype(dtype)
    return model


def _data(rng, model, B=5):
    if model.likelihood == "bernoulli":
        x = (rng.random((B, D)) < 0.4).astype(model.dtype)
    else:
        x = rng.standard_normal((B, D)).astype(model.dtype)
    model.init_output_bias(x)
    return x


def _grads(model, x, noise):
    model.zero_grad()
    loss, cache = model.forward(x, noise)
    model.backward(cache)
    return loss, {k: v.copy() for k, v in model.gradients().items()}


def _ids(c):
    return "-".join(str(v) for v in c.values())


@pytest.mark.parametrize("cfg", VAE_CONFIGS + IWAE_CONFIGS, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_path_equals_the_readable_path(cfg, dtype, rng):
    model = _model(cfg, dtype)
    x = _data(rng, model)
    key = model.draw_key(np.random.default_rng(7), x.shape[0])
    eps = model.draw_noise(np.random.default_rng(7), x.shape[0])
    np.testing.assert_array_equal(key.fill(model.dtype, x), eps)  # one stream, two forms
    loss_f, g_f = _grads(model, x, key)
    loss_r, g_r = _grads(model, x, eps)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    assert loss_f == pytest.approx(loss_r, rel=tol, abs=tol)
    for k in g_r:
        scale = float(np.abs(g_r[k]).max()) + 1e-30
        np.testing.assert_allclose(g_f[k], g_r[k], rtol=tol, atol=tol * scale, err_msg=k)


@pytest.mark.parametrize(
    "cfg",
    VAE_CONFIGS
    + [c for c in IWAE_CONFIGS if c["estimator"] == "iwae" and c.get("objective") != "piwae"],
    ids=_ids,
)
def test_fused_backward_is_the_gradient_of_the_fused_forward(cfg, rng):
    """The plain estimator is the exact gradient of the fixed-noise bound (STL and DReG are
    estimators of it, and PIWAE trains its two networks on two bounds: those are checked
    against the readable path above)."""
    model = _model(cfg, np.float64)
    x = _data(rng, model)
    key = model.draw_key(rng, x.shape[0])
    _, analytic = _grads(model, x, key)
    gradcheck(lambda: model.forward(x, key)[0], model.parameters(), analytic)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_training_step_is_the_fused_path_on_the_step_generator(backend, rng):
    """loss_and_grads draws the key that draw_noise would have drawn from the same generator,
    and runs the fused kernel (bit for bit the readable path on the reference backend)."""
    model = IWAE(D, 3, (6,), k=4, estimator="dreg", dtype=np.float32, seed=1)
    x = _data(rng, model)
    with use_backend(backend):
        model.zero_grad()
        loss, _ = model.loss_and_grads(x, np.random.default_rng(5))
        step = {k: v.copy() for k, v in model.gradients().items()}
        want_loss, want = _grads(model, x, model.draw_noise(np.random.default_rng(5), 5))
        _, cache = model.forward(x, model.draw_key(np.random.default_rng(5), 5))
    assert isinstance(cache[0].reparam, FusedReparam)
    assert loss == pytest.approx(want_loss, rel=2e-5)
    for k in want:
        scale = float(np.abs(want[k]).max())
        np.testing.assert_allclose(step[k], want[k], rtol=2e-4, atol=2e-4 * scale, err_msg=k)


def test_a_step_and_an_evaluation_read_one_stream(rng):
    """Sample s of row b is element (s*B + b)*Z + j of the seed's normal stream in the step
    (a NoiseKey) and in the K-sample evaluation (log_weight_sampler): the same z, bit for bit,
    and the same log w to float rounding (the step's fused activations against the
    evaluation's readable ones)."""
    from kernels import reparam_sample

    model = VAE(D, 3, (6,), dtype=np.float32, seed=2)
    x = _data(rng, model, B=4)
    K = 6
    seed = int(np.random.default_rng(9).integers(0, 2**63))  # the evaluation's per-batch seed
    key = NoiseKey("normal", seed, 0, (K, 4, 3))
    draw = model.log_weight_sampler(x, np.random.default_rng(9))
    want = draw(0, K)
    _, cache = model.forward(x, key)
    # draw(0, K)'s call of the kernel, on the step's moments
    z_eval, _, _ = reparam_sample.reparam_sample(cache.mu, cache.logvar, K, seed, 0, 0 * 4 * 3)
    np.testing.assert_array_equal(cache.z, z_eval)
    np.testing.assert_allclose(model.log_weights(x, key), want, rtol=1e-5)
    np.testing.assert_allclose(model.log_weights(x, key)[2:5], draw(2, 3), rtol=1e-5)


def test_a_diverged_encoder_reaches_the_loss_as_nan(rng):
    """The kernel refuses non-finite moments; the fused path hands them to the readable path
    so that the trainer sees a NaN loss (and stops on it) instead of an argument error."""
    model = IWAE(D, 3, (6,), k=2, dtype=np.float32)
    x = _data(rng, model)
    model.encoder.params["W0"][0, 0] = np.nan
    loss, _ = model.loss_and_grads(x, rng)
    assert np.isnan(loss)


def test_bad_keys_are_named(rng):
    model = VAE(D, 3, (6,), dtype=np.float32)
    x = _data(rng, model)
    with pytest.raises(ValueError, match=r"expected a normal NoiseKey of shape \(K, 5, 3\)"):
        model.forward(x, NoiseKey("normal", 1, 0, (2, 4, 3)))
    with pytest.raises(ValueError, match="got kind 'gumbel'"):
        model.forward(x, NoiseKey("gumbel", 1, 0, (2, 5, 3)))
    with pytest.raises(ValueError, match="expected kind to be one of"):
        draw_key("uniform", rng, (2, 5, 3))
    with pytest.raises(ValueError, match="shape to be non-negative integers"):
        draw_key("normal", rng, (2, -5, 3))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        draw_key("normal", 3, (2, 5, 3))


def test_fused_path_runs_the_backend_of_the_data(rng):
    model = VAE(D, 3, (6,), dtype=np.float32)
    x = _data(rng, model)
    for backend in ("numpy", "numba"):
        with use_backend(backend):
            _, c = model.forward(x, model.draw_key(rng, 5))
        assert c.reparam.backend == get_backend(x, backend=backend)


# --- the categorical VAE on the Gumbel kernels --------------------------------------------------

CAT_CONFIGS = [
    dict(estimator="gumbel", tau=0.7),
    dict(estimator="st-gumbel", tau=0.5),
    dict(estimator="reinforce"),
    dict(estimator="nvil"),
    dict(estimator="vimco", k=3),
]


def _catvae(cfg, dtype):
    model = CatVAE(D, 4, 3, (6,), dtype=dtype, seed=2, **cfg)
    bias = np.random.default_rng(2)
    for k, v in model.parameters().items():
        if not k.startswith("state") and k.split(".")[1].startswith("b"):
            v += (0.3 * bias.standard_normal(v.shape)).astype(dtype)
    return model


@pytest.mark.parametrize("cfg", CAT_CONFIGS, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_catvae_fused_path_equals_the_readable_path(cfg, dtype, rng):
    model = _catvae(cfg, dtype)
    x = _data(rng, model, B=6)
    key = model.draw_key(np.random.default_rng(7), x.shape[0])
    g = model.draw_noise(np.random.default_rng(7), x.shape[0])
    np.testing.assert_array_equal(key.fill(model.dtype, x), g)
    loss_f, g_f = _grads(model, x, key)
    _, cache = model.forward(x, key)
    assert (cache.y_soft is not None) == (cfg["estimator"] in ("gumbel", "st-gumbel"))
    loss_r, g_r = _grads(model, x, g)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    assert loss_f == pytest.approx(loss_r, rel=tol, abs=tol)
    for k in g_r:
        scale = float(np.abs(g_r[k]).max()) + 1e-30
        np.testing.assert_allclose(g_f[k], g_r[k], rtol=tol, atol=tol * scale, err_msg=k)


def test_catvae_fused_relaxed_backward_is_the_gradient_of_its_forward(rng):
    model = _catvae(dict(estimator="gumbel", tau=0.8), np.float64)
    x = _data(rng, model, B=4)
    key = model.draw_key(rng, 4)
    _, analytic = _grads(model, x, key)
    params = {k: v for k, v in model.parameters().items() if not k.startswith("state")}
    gradcheck(lambda: model.forward(x, key)[0], params, analytic)


@pytest.mark.parametrize("estimator", ["gumbel", "st-gumbel", "vimco"])
def test_catvae_step_runs_the_fused_kernels_and_survives_a_nan_encoder(estimator, rng):
    cfg = dict(estimator=estimator, k=3) if estimator == "vimco" else dict(estimator=estimator)
    model = _catvae(cfg, np.float32)
    x = _data(rng, model, B=6)
    loss, stats = model.loss_and_grads(x, np.random.default_rng(4))
    step = {k: v.copy() for k, v in model.gradients().items()}
    want_loss, want = _grads(model, x, model.draw_noise(np.random.default_rng(4), 6))
    assert loss == pytest.approx(want_loss, rel=2e-5) and stats["tau"] == model.tau
    for k in want:
        scale = float(np.abs(want[k]).max()) + 1e-30
        np.testing.assert_allclose(step[k], want[k], rtol=2e-4, atol=2e-4 * scale, err_msg=k)
    model.encoder.params["W0"][0, 0] = np.nan
    assert np.isnan(model.loss_and_grads(x, rng)[0])


@pytest.mark.parametrize("kind", ["stl", "dreg", "vae-sampled"])
def test_fused_step_at_a_posterior_narrower_than_the_spacing_of_its_mean(kind):
    """mu = 8, logvar = -30 (std 3e-7, below the float32 spacing of 8): z - mu is rounding
    noise there, so the fused step must take eps from its key, not from (z - mu) / std; it
    then agrees with the readable float32 path on the same noise."""
    from lvmcore.models import IWAE, VAE

    D, Z = 10, 2
    if kind == "vae-sampled":
        model = VAE(D, Z, (5,), kl="sampled", n_samples=2, seed=3)
    else:
        model = IWAE(D, Z, (5,), k=4, estimator=kind, seed=3)
    model.encoder.params["W1"][...] = 0
    model.encoder.params["b1"][...] = np.array([8.0] * Z + [-30.0] * Z, np.float32)
    x = (np.random.default_rng(0).random((3, D)) < 0.4).astype(np.float32)
    runs = []
    for noise in (
        model.draw_noise(np.random.default_rng(4), 3),
        model.draw_key(np.random.default_rng(4), 3),
    ):
        model.zero_grad()
        loss, cache = model.forward(x, noise)
        model.backward(cache)
        runs.append((loss, {k: v.copy() for k, v in model.gradients().items()}))
    (loss_r, readable), (loss_f, fused) = runs
    assert loss_f == pytest.approx(loss_r, rel=1e-5)
    for name, want in readable.items():
        scale = np.abs(want).max()
        assert np.abs(fused[name] - want).max() <= 1e-4 * scale + 1e-30, name
