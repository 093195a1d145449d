"""VAE and IWAE with a full-covariance, IAF or planar posterior: the whole loss of every
objective and estimator against every parameter array with fixed noise, the full-covariance
model reducing to the diagonal one, DReG unbiased, the contract, ``--posterior diag`` being
today's model bit for bit, resumption, the command line, bad input.

The pPCA exactness check (every log-weight equal to log p(x) under the exact correlated
posterior) needs a linear-Gaussian decoder; these models have a Bernoulli one, so it stays with
the full-covariance block (tests/test_posterior_blocks.py)."""

import json

import numpy as np
import pytest
from posterior_models_helpers import (
    check_path_estimator,
    check_plain_gradient,
    grads,
    jitter,
    paired_inference_difference,
)

from lvmcore import InvalidParameterError
from lvmcore.checkpoint import load_checkpoint
from lvmcore.cli import main
from lvmcore.data import load_dataset
from lvmcore.evaluate import log_likelihood
from lvmcore.models import (
    IWAE,
    VAE,
    VARIANTS,
    FlowIWAE,
    FlowVAE,
    Model,
    build_model,
    family_flags,
    model_class,
    register_variant,
)
from lvmcore.ops.fullcov import fullcov_log_prob_forward
from lvmcore.testing import gradcheck
from lvmcore.train import fit

D = 6
POSTERIORS = ["fullcov", "iaf", "planar"]
INFERENCE = ("encoder", "flow")


def _x(rng, B=4):
    return (rng.random((B, D)) < 0.45).astype(np.float64)


def _iwae(rng, posterior, **kw):
    kw = dict(dict(k=3, dtype=np.float64, seed=1), **kw)
    return jitter(FlowIWAE(D, 3, (5,), posterior=posterior, **kw), rng)


def log_q_frozen(frozen, x, cache):
    """log q(z | x) of the frozen copy at the cache's samples, by the blocks' densities."""
    head, _ = frozen.encoder.forward(x)
    Z = frozen.latent_dim
    if frozen.posterior == "fullcov":
        return fullcov_log_prob_forward(cache.z, head[:, :Z], head[:, Z:])[0]
    h = head[:, 2 * Z :] if frozen.context_dim else None
    return frozen.flow.log_prob(cache.z, head[:, :Z], head[:, Z : 2 * Z], h)


# --- the whole loss, every parameter ----------------------------------------------------------


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("n_samples, kl_weight", [(1, None), (2, 0.3)])
def test_elbo_gradient_every_parameter(rng, posterior, n_samples, kl_weight):
    model = FlowVAE(D, 3, (5,), posterior=posterior, n_samples=n_samples, beta=0.7, seed=2)
    model = jitter(FlowVAE.from_config({**model.config(), "dtype": "float64"}), rng)
    x = _x(rng)
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]), kl_weight=kl_weight)


@pytest.mark.parametrize("objective, groups", [("iwae", 1), ("miwae", 2), ("ciwae", 1)])
@pytest.mark.parametrize("posterior", POSTERIORS)
def test_plain_iwae_gradient_every_parameter(rng, posterior, objective, groups):
    model = _iwae(rng, posterior, objective=objective, groups=groups, flow_steps=None)
    x = _x(rng)
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]))


@pytest.mark.parametrize(
    "posterior, extra",
    [("iaf", dict(context_dim=0, flow_steps=3)), ("planar", dict(context_dim=0, flow_steps=3))],
    ids=["iaf without context", "planar with global parameters"],
)
def test_flows_without_a_context(rng, posterior, extra):
    model = _iwae(rng, posterior, **extra)
    assert not any(k.startswith("flow") and "Wc" in k for k in model.parameters())
    x = _x(rng)
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]))


def test_piwae_generative_follows_iwae_and_inference_follows_miwae(rng):
    M, K = 2, 3
    piwae = _iwae(rng, "iaf", k=K, objective="piwae", groups=M)
    iwae = FlowIWAE.from_config({**piwae.config(), "objective": "iwae", "k": M * K})
    miwae = FlowIWAE.from_config({**piwae.config(), "objective": "miwae"})
    for m in (iwae, miwae):
        m.load_parameters(piwae.parameters())
    x = _x(rng)
    eps = piwae.draw_noise(rng, x.shape[0])
    g = grads(piwae, x, eps)
    gen = {k: v for k, v in iwae.parameters().items() if not k.startswith(INFERENCE)}
    inf = {k: v for k, v in miwae.parameters().items() if k.startswith(INFERENCE)}
    gradcheck(lambda: iwae.forward(x, eps)[0], gen, {k: g[k] for k in gen})
    gradcheck(lambda: miwae.forward(x, eps)[0], inf, {k: g[k] for k in inf})


@pytest.mark.parametrize("objective, groups", [("iwae", 1), ("piwae", 2)])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
@pytest.mark.parametrize("posterior", POSTERIORS)
def test_stl_and_dreg_are_their_surrogate_gradients(rng, posterior, estimator, objective, groups):
    """The blocks' held-fixed gradient inside the model: log q of a frozen copy (the flow's by
    inverting it) at the live samples."""
    model = _iwae(rng, posterior, estimator=estimator, objective=objective, groups=groups)
    x = _x(rng)
    check_path_estimator(
        model, x, model.draw_noise(rng, x.shape[0]), log_q_frozen, inference_prefixes=INFERENCE
    )


@pytest.mark.parametrize("posterior", POSTERIORS)
def test_k1_iwae_is_the_elbo(rng, posterior):
    vae = jitter(FlowVAE(D, 3, (5,), posterior=posterior, dtype=np.float64, seed=3), rng)
    cfg = {k: v for k, v in vae.config().items() if k not in ("n_samples", "beta")}
    iwae = FlowIWAE.from_config({**cfg, "model": "iwae", "k": 1})
    iwae.load_parameters(vae.parameters())
    x = _x(rng)
    eps = vae.draw_noise(rng, x.shape[0])
    assert iwae.forward(x, eps)[0] == pytest.approx(vae.forward(x, eps)[0], rel=1e-12)
    gv, gi = grads(vae, x, eps), grads(iwae, x, eps)
    for k in gv:
        np.testing.assert_allclose(gi[k], gv[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_fullcov_model_with_a_diagonal_factor_is_the_diagonal_model(rng):
    """Encoder heads mapped so that L = diag(exp(logvar / 2)): every log-weight and the
    K-sample log-likelihood of the full-covariance IWAE equal the diagonal IWAE's (drawn with the
    same proposal noise)."""
    Z, H = 3, (5,)
    diag = jitter(IWAE(D, Z, H, k=4, dtype=np.float64, seed=5), rng)
    full = FlowIWAE(D, Z, H, posterior="fullcov", k=4, dtype=np.float64, seed=5)
    p, q = diag.parameters(), full.parameters()
    for k in q:
        if k.startswith("decoder") or k in ("encoder.W0", "encoder.b0"):
            q[k][...] = p[k]
    k_diag = np.arange(Z) * (np.arange(Z) + 3) // 2  # row-major positions of L_ii
    for name in ("encoder.W1", "encoder.b1"):
        q[name][...] = 0
        q[name][..., :Z] = p[name][..., :Z]
        q[name][..., Z + k_diag] = 0.5 * p[name][..., Z:]
    x = _x(rng, B=5)
    eps = diag.draw_noise(rng, 5)
    np.testing.assert_allclose(full.log_weights(x, eps), diag.log_weights(x, eps), rtol=1e-12)
    # and so the K-sample estimate with the same proposal draws (the base sampler, fresh noise
    # per chunk, for both)
    la = log_likelihood_with(full, x)
    lb = log_likelihood_with(diag, x, sampler=Model.log_weight_sampler)
    np.testing.assert_allclose(la, lb, rtol=1e-12)


def log_likelihood_with(model, x, sampler=None):
    if sampler is not None:
        model.log_weight_sampler = sampler.__get__(model)
    return log_likelihood(model, x, np.random.default_rng(2), k=40, chunk_size=15)


# --- DReG is unbiased -------------------------------------------------------------------------


@pytest.mark.parametrize("posterior", ["iaf", "fullcov"])
def test_dreg_is_unbiased_small(posterior):
    """Paired with the plain estimator on the same noise (tolerance: 4.5 measured standard errors
    per coordinate, as for the diagonal IWAE)."""
    plain = FlowIWAE(4, 2, (3,), posterior=posterior, k=3, dtype=np.float64, seed=7)
    other = FlowIWAE.from_config({**plain.config(), "estimator": "dreg"})
    other.load_parameters(plain.parameters())
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    z = paired_inference_difference(plain, other, x, INFERENCE, n=150)
    assert np.abs(z).max() < 4.5, f"largest |z| = {np.abs(z).max():.2f}"


# --- the contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("family", ["vae", "iwae"])
def test_contract_noise_rows_config_and_bounds(rng, posterior, family):
    model = (
        FlowVAE(D, 3, (5,), posterior=posterior, n_samples=2, dtype=np.float64, seed=1)
        if family == "vae"
        else FlowIWAE(D, 3, (5,), posterior=posterior, k=3, estimator="stl", dtype=np.float64)
    )
    x = _x(rng, B=10)
    model.init_output_bias(x)
    noise = model.draw_noise(rng, 10)
    whole = model.log_weights(x, noise)
    for a, b in ((0, 3), (3, 10), (4, 5)):
        part = model.log_weights(x[a:b], model.noise_rows(noise, a, b))
        np.testing.assert_allclose(part, whole[:, a:b], rtol=1e-12, atol=1e-12)
    config = json.loads(json.dumps(model.config()))
    assert config["model"] == family and config["posterior"] == posterior
    assert model_class(family, config) is type(model)
    rebuilt = build_model(config)
    rebuilt.load_parameters(model.parameters())
    assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
    np.testing.assert_array_equal(rebuilt.log_weights(x, noise), whole)
    for method in ("bound", "elbo"):
        values = getattr(model, method)(x, np.random.default_rng(3), batch_size=4)
        assert values.shape == (10,) and np.isfinite(values).all()
    ll = model.log_likelihood(x, np.random.default_rng(4), k=400, batch_size=4)
    assert ll.shape == (10,) and ll.mean() > model.elbo(x, np.random.default_rng(5)).mean()
    assert model.sample(rng, 3).shape == (3, D) and model.reconstruct(x).shape == x.shape
    info, lines = model.eval_report(x, batch_size=4)
    assert info["latent_dims"] == [3] and len(info["kl_per_layer"]) == 1
    assert info["kl_per_layer"][0] > 0 and 0 <= info["active_units"] <= 3
    assert lines[0].startswith("active units ")


def test_diag_is_todays_model_bit_for_bit(tmp_path):
    """``--posterior diag`` (and ``--stochastic-layers 1``) build VAE and IWAE themselves."""
    assert model_class("vae", {"posterior": "diag", "stochastic_layers": 1}) is VAE
    assert model_class("iwae", {"posterior": None}) is IWAE
    assert model_class("iwae", {"posterior": "iaf"}) is FlowIWAE
    tiny = ["--latent", "2", "--hidden", "8", "--batch-size", "300", "--no-progress"]
    for name, extra in (("a", []), ("b", ["--posterior", "diag", "--stochastic-layers", "1"])):
        argv = ["train", "--model", "iwae", "--k", "2", "--epochs", "1", *tiny, *extra]
        assert main([*argv, "--out", str(tmp_path / name)]) == 0
    a, b = (load_checkpoint(tmp_path / n / "checkpoint.npz") for n in "ab")
    assert a.config == b.config and a.config["model"] == "iwae" and "posterior" not in a.config
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


# --- training: resumption, command line -------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds._replace(train=ds.train[:200], valid=ds.valid[:50], test=ds.test[:50])


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("family", ["vae", "iwae-dreg"])
def test_fit_resumes_bit_for_bit(digits, tmp_path, posterior, family):
    def make():
        if family == "vae":
            return FlowVAE(64, 3, (12,), posterior=posterior, seed=3)
        return FlowIWAE(64, 3, (12,), posterior=posterior, k=3, estimator="dreg", seed=3)

    kw = dict(batch_size=50, lr=1e-2, progress=False, seed=4)
    straight = make()
    h1 = fit(straight, digits, epochs=2, out_dir=tmp_path / "a", **kw)
    fit(make(), digits, epochs=1, out_dir=tmp_path / "b", **kw)
    resumed = make()
    h2 = fit(resumed, digits, epochs=2, out_dir=tmp_path / "b", resume=True, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h1]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h2]
    for k, v in straight.parameters().items():
        assert np.array_equal(v, resumed.parameters()[k]), k


TINY = ["--latent", "3", "--hidden", "12", "--batch-size", "300", "--no-progress"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--posterior", "iaf", "--flow-steps", "2", "--flow-hidden", "6"],
        ["--model", "iwae", "--posterior", "fullcov", "--k", "3", "--estimator", "dreg"],
        ["--posterior", "planar", "--flow-steps", "3"],
    ],
    ids=["vae iaf", "iwae fullcov dreg", "vae planar"],
)
def test_cli_trains_resumes_and_evaluates(tmp_path, capsys, argv):
    out = str(tmp_path / "r")
    assert main(["train", *argv, "--epochs", "1", "--out", out, *TINY]) == 0
    posterior = argv[argv.index("--posterior") + 1]
    assert f"posterior={posterior}" in capsys.readouterr().out
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert main(["eval", out, "--k", "20"]) == 0
    result = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert result["epoch"] == 2 and result["latent_dims"] == [3]
    assert np.isfinite(result["nll"]) and np.isfinite(result["kl_per_layer"][0])
    assert f"({posterior} posterior)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--posterior", "iaf", "--flow-steps", "0"], "argument --flow-steps: expected a positive"),
        (
            ["--posterior", "fullcov", "--flow-steps", "2"],
            "expected no --flow-steps with --posterior fullcov",
        ),
        (
            ["--posterior", "planar", "--flow-hidden", "4"],
            "expected no --flow-hidden with --posterior planar",
        ),
        (["--flow-steps", "2"], "expected no --flow-steps with --model vae"),
        (
            ["--posterior", "iaf", "--latent", "4,2"],
            "expected one --latent width with --model vae --posterior iaf",
        ),
        (["--posterior", "iaf", "--flow-hidden", "1"], "expected every hidden width >= n_in - 1"),
        (
            ["--posterior", "iaf", "--kl", "sampled"],
            "expected no --kl with --model vae --posterior iaf",
        ),
        (["--posterior", "normal"], "argument --posterior: invalid choice"),
    ],
)
def test_cli_refuses_bad_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", *argv, "--no-progress"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_input(rng):
    with pytest.raises(InvalidParameterError, match="'flow_steps' parameter of FlowVAE"):
        FlowVAE(D, 3, posterior="iaf", flow_steps=0)
    with pytest.raises(InvalidParameterError, match="'flow_steps' parameter of FlowIWAE"):
        FlowIWAE(D, 3, posterior="planar", flow_steps=-1)
    with pytest.raises(ValueError, match="expected flow_steps=None with posterior='fullcov'"):
        FlowVAE(D, 3, posterior="fullcov", flow_steps=2)
    with pytest.raises(ValueError, match="expected flow_hidden=None with posterior='planar'"):
        FlowVAE(D, 3, posterior="planar", flow_hidden=(4,))
    with pytest.raises(ValueError, match="the diagonal posterior is lvmcore.models.VAE"):
        FlowIWAE(D, 3, posterior="diag")
    with pytest.raises(InvalidParameterError, match="'posterior' parameter of FlowVAE"):
        FlowVAE(D, 3, posterior="radial")
    model = FlowIWAE(D, 3, (5,), posterior="iaf", k=2, dtype=np.float64)
    x = _x(rng)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="FlowIWAE.loss_and_grads: expected x to contain no NaN"):
        model.loss_and_grads(bad, rng)
    with pytest.raises(ValueError, match="FlowIWAE.elbo: expected x to contain no NaN"):
        model.elbo(bad, rng)
    with pytest.raises(ValueError, match=r"FlowIWAE.log_weights: expected noise of shape"):
        model.log_weights(x, np.zeros((2, 4, 2)))
    with pytest.raises(TypeError, match="expected noise of the model's dtype float64"):
        model.forward(x, np.zeros((2, 4, 3), dtype=np.float32))
    with pytest.raises(
        ValueError, match=r"FlowIWAE.log_weights: expected x to have shape \(\*, 6\)"
    ):
        model.log_weights(x[:, :5], np.zeros((2, 4, 3)))


def test_variant_registry_checks_its_arguments():
    with pytest.raises(TypeError, match="model_class: expected settings to be a dict"):
        model_class("vae", [("posterior", "iaf")])
    with pytest.raises(ValueError, match="get_model_class: expected a model name"):
        model_class("flowvae", {"posterior": "iaf"})
    with pytest.raises(TypeError, match="register_variant: expected cls to be a subclass"):
        register_variant(dict)

    class Stray(FlowVAE):
        name = "hvae"

    with pytest.raises(ValueError, match="expected cls.name to be a registered name"):
        register_variant(Stray)

    class Unselected(FlowVAE):
        selectors = ()

    with pytest.raises(ValueError, match=r"expected Unselected.selectors to name the flags"):
        register_variant(Unselected)
    assert register_variant(FlowVAE) is FlowVAE  # registering again is harmless
    assert VARIANTS["vae"].count(FlowVAE) == 1
    assert [f.dest for f in family_flags("iwae")][:5] == [f.dest for f in IWAE.flags]
