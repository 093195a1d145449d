"""Hierarchical VAE and IWAE (N >= 2 stochastic layers): the whole loss of every objective and
estimator against every parameter array with fixed noise, DReG unbiased for two layers, the
contract (noise rows, config, evaluation per layer), resumption, the command line, bad input."""

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
from lvmcore.cli import main
from lvmcore.data import load_dataset
from lvmcore.models import (
    HierarchicalIWAE,
    HierarchicalVAE,
    build_model,
    model_class,
)
from lvmcore.models.hvae import EVAL_DRAWS, EVAL_STREAM
from lvmcore.nn.stochastic import gaussian_log_prob_forward
from lvmcore.testing import gradcheck
from lvmcore.train import fit

D = 6
TWO = ((D, 5, 3), (3, 4, 2))
THREE = ((D, 5, 3), (3, 4, 2), (2, 3, 2))
INFERENCE = ("q",)


def _x(rng, B=4):
    return (rng.random((B, D)) < 0.45).astype(np.float64)


def _iwae(rng, layers=TWO, **kw):
    kw = dict(dict(k=3, dtype=np.float64, seed=1), **kw)
    return jitter(HierarchicalIWAE(D, layers, **kw), rng)


def log_q_frozen(frozen, x, cache):
    """log q(z_1, ..., z_N | x) of the frozen copy at the cache's samples."""
    total, h = 0.0, x
    for layer, z in zip(frozen.q, cache.z):
        (mu, logvar), _ = layer.forward(h)
        total = total + gaussian_log_prob_forward(z, mu, logvar)[0]
        h = z
    return total


# --- the whole loss, every parameter ----------------------------------------------------------


@pytest.mark.parametrize("layers", [TWO, THREE], ids=["2 layers", "3 layers"])
@pytest.mark.parametrize("n_samples, kl_weight", [(1, None), (2, 0.3)])
def test_elbo_gradient_every_parameter(rng, layers, n_samples, kl_weight):
    model = jitter(
        HierarchicalVAE(D, layers, n_samples=n_samples, beta=0.7, dtype=np.float64, seed=2), rng
    )
    x = _x(rng)
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]), kl_weight=kl_weight)


@pytest.mark.parametrize("objective, groups", [("iwae", 1), ("miwae", 2), ("ciwae", 1)])
@pytest.mark.parametrize("layers", [TWO, THREE], ids=["2 layers", "3 layers"])
def test_plain_iwae_gradient_every_parameter(rng, objective, groups, layers):
    model = _iwae(rng, layers, objective=objective, groups=groups)
    x = _x(rng)
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]))


def test_piwae_generative_follows_iwae_and_inference_follows_miwae(rng):
    M, K = 2, 3
    piwae = _iwae(rng, k=K, objective="piwae", groups=M)
    iwae = HierarchicalIWAE.from_config({**piwae.config(), "objective": "iwae", "k": M * K})
    miwae = HierarchicalIWAE.from_config({**piwae.config(), "objective": "miwae"})
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
@pytest.mark.parametrize("layers", [TWO, THREE], ids=["2 layers", "3 layers"])
def test_stl_and_dreg_are_their_surrogate_gradients(rng, estimator, objective, groups, layers):
    """The held-fixed gradient of a hierarchy: log q_l at the live samples with a frozen copy of
    every Q_l, so z_{l-1} moves Q_l's output but not its weights (module docstring of hvae)."""
    model = _iwae(rng, layers, estimator=estimator, objective=objective, groups=groups)
    x = _x(rng)
    check_path_estimator(
        model, x, model.draw_noise(rng, x.shape[0]), log_q_frozen, inference_prefixes=INFERENCE
    )


def test_k1_iwae_is_the_elbo(rng):
    vae = jitter(HierarchicalVAE(D, TWO, dtype=np.float64, seed=3), rng)
    cfg = {k: v for k, v in vae.config().items() if k not in ("n_samples", "beta")}
    iwae = HierarchicalIWAE.from_config({**cfg, "model": "iwae", "k": 1})
    iwae.load_parameters(vae.parameters())
    x = _x(rng)
    eps = vae.draw_noise(rng, x.shape[0])
    loss_v, _ = vae.forward(x, eps)
    loss_i, _ = iwae.forward(x, eps)
    assert loss_i == pytest.approx(loss_v, rel=1e-12)
    gv, gi = grads(vae, x, eps), grads(iwae, x, eps)
    for k in gv:
        np.testing.assert_allclose(gi[k], gv[k], rtol=1e-10, atol=1e-13, err_msg=k)


# --- DReG for the hierarchy is unbiased -------------------------------------------------------


def _paired(estimator, k, n):
    plain = HierarchicalIWAE(4, ((4, 3, 2), (2, 3, 2)), k=k, dtype=np.float64, seed=7)
    other = HierarchicalIWAE.from_config({**plain.config(), "estimator": estimator})
    other.load_parameters(plain.parameters())
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    return paired_inference_difference(plain, other, x, INFERENCE, n)


def test_dreg_is_unbiased_for_two_layers_small():
    """Same noise for DReG and the plain estimator, so the paired difference has mean zero.
    The tolerance is 4.5 standard errors of the mean difference, measured from the samples, per
    coordinate (Bonferroni over the ~60 coordinates: a false alarm near 4e-4). 150 draws keep it
    under 3 s; the slow test takes 4000 at K = 5."""
    z = _paired("dreg", 3, n=150)
    assert np.abs(z).max() < 4.5, f"largest |z| = {np.abs(z).max():.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("estimator, k", [("dreg", 5), ("stl", 1)])
def test_dreg_is_unbiased_for_two_layers(estimator, k):
    """As the small test with K = 5 and 4000 draws; STL at K = 1 (unbiased there) too."""
    z = _paired(estimator, k, n=4000)
    assert np.abs(z).max() < 4.5, f"largest |z| = {np.abs(z).max():.2f}"


def test_stl_is_biased_for_k_above_one():
    """The same check must fail for STL at K > 1 (Tucker et al. 2019, sec. 3): it has power."""
    z = _paired("stl", 5, n=150)
    assert np.abs(z).max() > 6


# --- the contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["vae", "iwae"])
def test_contract_noise_rows_config_and_bounds(rng, factory):
    model = (
        HierarchicalVAE(D, THREE, n_samples=2, dtype=np.float64, seed=1)
        if factory == "vae"
        else HierarchicalIWAE(D, TWO, k=3, estimator="dreg", dtype=np.float64, seed=1)
    )
    x = _x(rng, B=10)
    model.init_output_bias(x)
    noise = model.draw_noise(rng, x.shape[0])
    assert noise.shape == (model.n_draws, 10, sum(model.latent_dims))
    _, full = model.forward(x, noise)
    whole = model.log_weights(x, noise)
    for a, b in ((0, 3), (3, 10), (4, 5)):
        part = model.log_weights(x[a:b], model.noise_rows(noise, a, b))
        np.testing.assert_allclose(part, whole[:, a:b], rtol=1e-12, atol=1e-12)
    config = json.loads(json.dumps(model.config()))
    assert config["model"] == factory and model_class(factory, config) is type(model)
    rebuilt = build_model(config)
    rebuilt.load_parameters(model.parameters())
    assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
    np.testing.assert_array_equal(rebuilt.log_weights(x, noise), whole)
    assert model.state_arrays() == {} and not model.has_gaussian_latents
    for method in ("bound", "elbo"):
        values = getattr(model, method)(x, np.random.default_rng(3), batch_size=4)
        assert values.shape == (10,) and np.isfinite(values).all()
    ll = model.log_likelihood(x, np.random.default_rng(4), k=400, batch_size=4)
    assert ll.shape == (10,) and ll.mean() > model.elbo(x, np.random.default_rng(5)).mean()
    assert model.sample(rng, 3).shape == (3, D) and model.reconstruct(x).shape == x.shape
    loss, stats = model.loss_and_grads(x, rng)
    assert np.isfinite(loss) and set(stats) == (
        {"elbo", "recon", "kl"} if factory == "vae" else {"bound"}
    )


def test_eval_report_per_layer(rng):
    model = HierarchicalVAE(D, TWO, dtype=np.float64, seed=1)
    x = _x(rng, B=30)
    model.init_output_bias(x)
    # the second layer's posterior mean ignores z_1: its variance over the data is exactly 0
    q2 = model.q[1]
    last = q2.n_layers - 1
    q2.params[f"W{last}"][:, : q2.n_latent] = 0
    info, lines = model.eval_report(x, batch_size=7)
    assert info["latent_dims"] == [3, 2] and len(info["kl_per_layer"]) == 2
    assert info["active_units_per_layer"][1] == 0
    assert info["active_units"] == sum(info["active_units_per_layer"])
    np.testing.assert_allclose(info["posterior_mean_variance"][1], 0.0, atol=1e-12)
    # the layers' KL terms add up to the KL of the ELBO with the same noise
    total = []
    r = np.random.default_rng([1, 0, 0, EVAL_STREAM])
    for i in range(0, 30, 7):
        eps = model.draw_noise(r, x[i : i + 7].shape[0], EVAL_DRAWS)
        t, _ = model._terms_forward(x[i : i + 7], eps, need_grad=False)
        total.append((t.log_qz - t.log_pz).mean(axis=0))
    assert sum(info["kl_per_layer"]) == pytest.approx(np.concatenate(total).mean(), rel=1e-9)
    assert lines[0].startswith("active units per layer ")


# --- training: resumption, command line -------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds._replace(train=ds.train[:200], valid=ds.valid[:50], test=ds.test[:50])


@pytest.mark.parametrize("kind", ["vae", "iwae-dreg"])
def test_fit_resumes_bit_for_bit(digits, tmp_path, kind):
    def make():
        layers = ((64, 16, 4), (4, 8, 2))
        if kind == "vae":
            return HierarchicalVAE(64, layers, seed=3)
        return HierarchicalIWAE(64, layers, k=3, estimator="dreg", seed=3)

    kw = dict(batch_size=50, lr=1e-2, progress=False, seed=4)
    if kind == "vae":
        kw["kl_warmup_epochs"] = 2
    straight = make()
    h1 = fit(straight, digits, epochs=2, out_dir=tmp_path / "a", **kw)
    fit(make(), digits, epochs=1, out_dir=tmp_path / "b", **kw)
    resumed = make()
    h2 = fit(resumed, digits, epochs=2, out_dir=tmp_path / "b", resume=True, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h1]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h2]
    for k, v in straight.parameters().items():
        assert np.array_equal(v, resumed.parameters()[k]), k


TINY = ["--hidden", "12", "--batch-size", "200", "--no-progress", "--epochs", "1"]


def test_cli_trains_resumes_and_evaluates_two_layers(tmp_path, capsys):
    out = str(tmp_path / "h")
    argv = ["train", "--model", "iwae", "--stochastic-layers", "2", "--latent", "4,2", "--k", "3"]
    assert main([*argv, "--estimator", "dreg", "--out", out, *TINY]) == 0
    assert "layers=[[64, 12, 4], [4, 6, 2]]" in capsys.readouterr().out
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert main(["eval", out, "--k", "20"]) == 0
    result = json.loads((tmp_path / "h" / "eval.json").read_text())
    assert result["bound_name"] == "IWAE bound (K=3)" and result["epoch"] == 2
    assert result["latent_dims"] == [4, 2] and len(result["kl_per_layer"]) == 2
    assert np.isfinite(result["nll"]) and result["nll"] < -result["elbo"] + 1e-9
    text = capsys.readouterr().out
    assert "test active units per layer" in text and "test NLL (K=20" in text

    out = str(tmp_path / "v")
    assert main(["train", "--stochastic-layers", "2", "--out", out, *TINY]) == 0
    assert "layers=[[64, 12, 8], [8, 6, 4]]" in capsys.readouterr().out  # 8 halved


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stochastic-layers", "2", "--latent", "6"], "expected --latent to list 2 widths"),
        (["--stochastic-layers", "2", "--latent", "6,3,2"], "expected --latent to list 2 widths"),
        (["--latent", "6,3"], "expected one --latent width with --model vae"),
        (["--model", "iwae", "--latent", "6,3"], "expected one --latent width with --model iwae"),
        (
            ["--stochastic-layers", "2", "--posterior", "iaf"],
            "expected --posterior diag with --stochastic-layers 2",
        ),
        (["--upper-hidden", "4"], "expected no --upper-hidden with --model vae"),
        (
            ["--stochastic-layers", "2", "--kl", "sampled"],
            "expected no --kl with --model vae --stochastic-layers 2",
        ),
        (["--model", "vqvae", "--stochastic-layers", "2"], "expected no --stochastic-layers"),
        (["--latent", "0"], "argument --latent: expected a positive integer, or one per"),
        (["--latent", "4,x"], "argument --latent: expected a positive integer, or one per"),
        (
            ["--model", "iwae", "--stochastic-layers", "2", "--kl-warmup-epochs", "1"],
            "expected --kl-warmup-epochs 0 with --model iwae",
        ),
    ],
)
def test_cli_refuses_bad_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "r"), *argv, *TINY])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# --- bad input --------------------------------------------------------------------------------


def test_bad_layers_and_data(rng):
    with pytest.raises(
        ValueError,
        match=r"expected layers\[1\]\[0\] == layers\[0\]\[-1\] \(3\), got 4: the layer sizes do not chain",
    ):
        HierarchicalVAE(D, ((D, 5, 3), (4, 4, 2)))
    with pytest.raises(ValueError, match=r"expected layers\[0\]\[0\] == data_dim \(6\), got 7"):
        HierarchicalIWAE(D, ((7, 5, 3), (3, 4, 2)))
    with pytest.raises(ValueError, match="at least 2 stochastic layers, got 1"):
        HierarchicalVAE(D, ((D, 5, 3),))
    with pytest.raises(InvalidParameterError, match=r"'layers\[1\]' parameter of HierarchicalVAE"):
        HierarchicalVAE(D, ((D, 5, 3), (3, 0, 2)))
    with pytest.raises(InvalidParameterError, match="'likelihood' parameter of HierarchicalIWAE"):
        HierarchicalIWAE(D, TWO, likelihood="gaussian")
    with pytest.raises(InvalidParameterError, match="'estimator' parameter of HierarchicalIWAE"):
        HierarchicalIWAE(D, TWO, estimator="rws")
    model = HierarchicalIWAE(D, TWO, k=2, dtype=np.float64)
    x = _x(rng)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(
        ValueError, match="HierarchicalIWAE.loss_and_grads: expected x to contain no NaN"
    ):
        model.loss_and_grads(bad, rng)
    with pytest.raises(
        ValueError, match=r"HierarchicalIWAE.forward: expected noise of shape \(S, 4, 5\)"
    ):
        model.forward(x, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="expected kl_weight None or 1"):
        model.forward(x, model.draw_noise(rng, 4), kl_weight=0.5)
