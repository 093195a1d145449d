"""VAE and IWAE with a learned prior, a MADE or categorical decoder, or dequantized levels: the
whole loss of every configuration against every parameter array with fixed noise, STL and DReG
as their surrogate gradients (the VampPrior's encoder on both sides), the standard prior
reproducing the VAE (closed-form KL and free bits), input dropout as training-only noise,
I(x; z), resumption through fit, the command line and bad input."""

import json
import math

import numpy as np
import pytest
from posterior_models_helpers import (
    check_path_estimator,
    check_plain_gradient,
    frozen_copy,
    grads,
    jitter,
    paired_inference_difference,
)

from lvmcore import InvalidParameterError
from lvmcore.cli import main
from lvmcore.data import load_dataset
from lvmcore.losses import bernoulli_nll_forward
from lvmcore.models import (
    IWAE,
    VAE,
    PriorDecoderIWAE,
    PriorDecoderVAE,
    build_model,
    model_class,
)
from lvmcore.models.priordecoder import aggregate_mutual_information
from lvmcore.nn.stochastic import gaussian_log_prob_forward
from lvmcore.testing import gradcheck
from lvmcore.train import fit

D, Z, H = 6, 3, (5,)
LEVELS = 5

# One small configuration of each new block: its keyword arguments and the data it models.
CONFIGS = {
    "mog": (dict(prior="mog", prior_components=3), "binary"),
    "vamp": (dict(prior="vamp", prior_components=3), "binary"),
    "flow": (dict(prior="flow", prior_flow_steps=2, prior_flow_hidden=(4,)), "binary"),
    "made": (dict(decoder="made", ar_hidden=(7, 6)), "binary"),
    "made-context-dropout": (
        dict(decoder="made", ar_hidden=(7,), ar_context=2, ar_dropout=0.3),
        "binary",
    ),
    "categorical": (dict(decoder="categorical", levels=LEVELS), "levels"),
    "uniform-logistic": (
        dict(dequantize="uniform", likelihood="logistic", levels=LEVELS),
        "levels",
    ),
    "variational-gaussian": (
        dict(
            dequantize="variational", likelihood="gaussian", levels=LEVELS, dequantizer_hidden=(4,)
        ),
        "levels",
    ),
    "vamp-made": (dict(prior="vamp", prior_components=2, decoder="made"), "binary"),
}


def _x(rng, kind, B=4):
    if kind == "binary":
        return (rng.random((B, D)) < 0.45).astype(np.float64)
    return rng.integers(0, LEVELS, (B, D)).astype(np.float64)


def _vae(rng, case, **kw):
    cfg, _ = CONFIGS[case]
    kw = dict(dict(n_samples=2, beta=0.7, seed=2, dtype=np.float64), **kw)
    return jitter(PriorDecoderVAE(D, Z, H, **cfg, **kw), rng)


def _iwae(rng, case, **kw):
    cfg, _ = CONFIGS[case]
    kw = dict(dict(k=3, seed=1, dtype=np.float64), **kw)
    return jitter(PriorDecoderIWAE(D, Z, H, **cfg, **kw), rng)


# --- the whole loss, every parameter ----------------------------------------------------------


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("kl_weight", [None, 0.3])
def test_elbo_gradient_every_parameter(rng, case, kl_weight):
    model = _vae(rng, case)
    x = _x(rng, CONFIGS[case][1])
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]), kl_weight=kl_weight)


@pytest.mark.parametrize("objective, groups", [("iwae", 1), ("miwae", 2), ("ciwae", 1)])
@pytest.mark.parametrize("case", list(CONFIGS))
def test_plain_iwae_gradient_every_parameter(rng, case, objective, groups):
    model = _iwae(rng, case, objective=objective, groups=groups)
    x = _x(rng, CONFIGS[case][1])
    check_plain_gradient(model, x, model.draw_noise(rng, x.shape[0]))


@pytest.mark.parametrize(
    "kl, floor, case",
    [
        ("analytic", False, "made"),
        ("sampled", False, "made-context-dropout"),
        ("analytic", True, "made"),
        ("sampled", True, "categorical"),
    ],
)
def test_standard_prior_kl_by_unit_gradient(rng, kl, floor, case):
    """The closed-form KL and free bits with a MADE or categorical decoder; the floor (set
    between two units' batch-mean KL) holds one unit, whose KL gets no gradient, and not
    another."""
    model = _vae(rng, case, kl=kl, free_bits=1e-6 if floor else 0.0)
    x = _x(rng, CONFIGS[case][1])
    eps = model.draw_noise(rng, x.shape[0])
    if floor:
        _, cache = model.forward(x, eps)
        mean_kl = np.sort(model._kl_per_dim(cache.terms).mean(axis=0))
        model.free_bits = float(mean_kl[0] + mean_kl[1]) / 2
        _, cache = model.forward(x, eps)
        assert 0 < cache.kl_term.active.sum() < Z
    check_plain_gradient(model, x, eps, kl_weight=0.6)


@pytest.mark.parametrize("kl, free_bits", [("analytic", 0.0), ("sampled", 0.0), ("analytic", 0.4)])
def test_standard_prior_factorized_decoder_is_the_vae(rng, kl, free_bits):
    """The class with the plain VAE's prior and decoder gives the VAE's loss and gradients: the
    by-unit KL of the log-weight terms is the VAE's own."""
    vae = jitter(VAE(D, Z, H, kl=kl, n_samples=2, free_bits=free_bits, dtype=np.float64), rng)
    other = PriorDecoderVAE(D, Z, H, kl=kl, n_samples=2, free_bits=free_bits, dtype=np.float64)
    other.load_parameters(vae.parameters())
    assert set(other.parameters()) == set(vae.parameters())
    x = _x(rng, "binary", B=5)
    eps = vae.draw_noise(rng, 5)
    assert other.forward(x, eps, kl_weight=0.8)[0] == pytest.approx(
        vae.forward(x, eps, kl_weight=0.8)[0], rel=1e-12
    )
    ga, gb = grads(vae, x, eps, kl_weight=0.8), grads(other, x, eps, kl_weight=0.8)
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-10, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(other.log_weights(x, eps), vae.log_weights(x, eps), rtol=1e-12)


@pytest.mark.parametrize("case", ["mog", "flow", "categorical"])
def test_k1_iwae_is_the_elbo(rng, case):
    vae = _vae(rng, case, n_samples=1, beta=1.0)
    cfg = {k: v for k, v in vae.config().items() if k not in ("n_samples", "beta", "kl")}
    cfg.pop("free_bits")
    iwae = PriorDecoderIWAE.from_config({**cfg, "model": "iwae", "k": 1})
    iwae.load_parameters(vae.parameters())
    if vae.kl == "analytic":  # the IWAE's KL is the sampled one
        vae = PriorDecoderVAE.from_config({**vae.config(), "kl": "sampled"})
        vae.load_parameters(iwae.parameters())
    x = _x(rng, CONFIGS[case][1])
    eps = vae.draw_noise(rng, x.shape[0])
    assert iwae.forward(x, eps)[0] == pytest.approx(vae.forward(x, eps)[0], rel=1e-12)
    gv, gi = grads(vae, x, eps), grads(iwae, x, eps)
    for k in gv:
        np.testing.assert_allclose(gi[k], gv[k], rtol=1e-10, atol=1e-13, err_msg=k)


# --- STL and DReG -----------------------------------------------------------------------------


def _log_q_frozen(frozen, x, cache):
    (mu, logvar), _ = frozen.encoder.forward(frozen._encoder_input(x))
    return gaussian_log_prob_forward(cache.z, mu, logvar)[0]


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
@pytest.mark.parametrize("case", ["mog", "flow", "made", "categorical", "variational-gaussian"])
def test_stl_and_dreg_are_their_surrogate_gradients(rng, case, estimator):
    """The prior's, decoder's and dequantizer's parameters take the decoder's weights (plain);
    the encoder takes the estimator's weights along the path of the sample."""
    model = _iwae(rng, case, estimator=estimator)
    x = _x(rng, CONFIGS[case][1])
    check_path_estimator(
        model, x, model.draw_noise(rng, x.shape[0]), _log_q_frozen, inference_prefixes="encoder"
    )


def _log_px_given_z(model, x, z):
    """log p(x|z) (S, B) of a factorized Bernoulli decoder at given samples."""
    S, B, _ = z.shape
    logits, _ = model.decoder.forward(z.reshape(S * B, Z))
    return -bernoulli_nll_forward(logits, x, need_grad=False)[0].reshape(S, B)


@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
def test_vamp_prior_gradient_reaches_the_encoder_on_both_sides(rng, estimator):
    """With the VampPrior the encoder is generative too: log p(z) depends on it through the
    pseudo-inputs. Every parameter's gradient is that of the surrogate

        -sum_s a_s [log p(x|zbar_s) + log p(zbar_s)]                    (live p, frozen samples)
        -sum_s e_s [log pbar(x|z_s) + log pbar(z_s) - log qbar(z_s|x)]   (live samples)

    with a the decoder's weights, e the estimator's (a for the plain one, whose score term
    -sum a_s log q(z_s|x) at fixed samples is added) and bars frozen copies."""
    model = _iwae(rng, "vamp", estimator=estimator)
    x = _x(rng, "binary")
    eps = model.draw_noise(rng, x.shape[0])
    g = grads(model, x, eps)
    frozen = frozen_copy(model)
    _, (fc, bw, _) = model.forward(x, eps)
    a = bw.decoder.copy()
    e = {"iwae": bw.encoder, "stl": bw.encoder, "dreg": bw.encoder_dreg}[estimator].copy()
    zbar = fc.z.copy()

    def surrogate():
        _, c = model._terms_forward(x, eps, need_grad=False)  # live samples z_s(phi)
        generative = _log_px_given_z(model, x, zbar) + model.prior_block.log_prob(zbar)[0]
        path = (
            _log_px_given_z(frozen, x, c.z)
            + frozen.prior_block.log_prob(c.z)[0]
            - _log_q_frozen(frozen, x, c)
        )
        loss = -float((a * generative).sum()) - float((e * path).sum())
        if estimator == "iwae":  # the score term the path estimators drop
            (mu, logvar), _ = model.encoder.forward(x)
            score = gaussian_log_prob_forward(zbar, mu, logvar)[0]
            loss += float((a * score).sum())
        return loss

    assert any(k.startswith("prior.u") for k in g) and any(k.startswith("encoder") for k in g)
    gradcheck(surrogate, model.parameters(), g)


@pytest.mark.parametrize("case", ["mog", "vamp"])
def test_dreg_is_unbiased_small(case):
    """Paired with the plain estimator on the same noise: the generative gradients (the prior's
    included) agree draw by draw, the encoder's in the mean (4.5 measured standard errors per
    coordinate, as for the other posteriors). With the VampPrior the encoder is also generative:
    its prior-side gradient takes the decoder's weights in both estimators."""
    cfg, _ = CONFIGS[case]
    plain = PriorDecoderIWAE(4, 2, (3,), k=3, dtype=np.float64, seed=7, **cfg)
    other = PriorDecoderIWAE.from_config({**plain.config(), "estimator": "dreg"})
    other.load_parameters(plain.parameters())
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    if case == "vamp":  # the encoder is on both sides: compare the totals in the mean
        z = _paired_totals(plain, other, x, n=150)
    else:
        z = paired_inference_difference(plain, other, x, ("encoder",), n=150)
    assert np.abs(z).max() < 4.5, f"largest |z| = {np.abs(z).max():.2f}"


def _paired_totals(plain, other, x, n, seed=11):
    rows = []
    for m in (plain, other):
        r = np.random.default_rng(seed)
        draws = []
        for _ in range(n):
            g = grads(m, x, m.draw_noise(r, x.shape[0]))
            draws.append(np.concatenate([v.ravel() for _, v in sorted(g.items())]))
        rows.append(np.array(draws))
    d = rows[1] - rows[0]
    se = d.std(axis=0, ddof=1) / np.sqrt(n)
    assert (se > 0).sum() > 10
    return d.mean(axis=0) / np.maximum(se, 1e-15)


def test_vamp_prior_lists_the_encoder_once():
    model = PriorDecoderVAE(D, Z, H, prior="vamp", prior_components=4)
    names = list(model.parameters())
    assert sorted(k for k in names if k.startswith("prior")) == ["prior.u"]
    assert len(names) == len(set(names)) and model.parameters()["prior.u"].shape == (4, D)


# --- input dropout ----------------------------------------------------------------------------


def test_input_dropout_is_replayable_training_noise(rng):
    model = _vae(rng, "made-context-dropout")
    x = _x(rng, "binary", B=6)
    eps = model.draw_noise(rng, 6)
    assert eps.shape == (2, 6, Z + D)
    u = eps[..., Z:]
    assert ((u > 0) & (u < 1)).all() and (u < 0.3).any()
    loss, _ = model.forward(x, eps)
    assert model.forward(x, eps.copy())[0] == loss  # the noise alone decides it
    # dropout changes the training loss; the evaluation path never drops
    kept = eps.copy()
    kept[..., Z:] = 0.99
    assert model.forward(x, kept)[0] != loss
    np.testing.assert_array_equal(model.log_weights(x, eps), model.log_weights(x, kept))
    bound = model.bound(x, np.random.default_rng(1))
    assert np.isfinite(bound).all()


# --- evaluation -------------------------------------------------------------------------------


def test_mutual_information_is_between_zero_and_log_n(rng):
    N = 50
    mu = rng.standard_normal((N, 2))
    eps = rng.standard_normal((4, N, 2))
    collapsed = aggregate_mutual_information(np.zeros((N, 2)), np.zeros((N, 2)), eps)
    assert collapsed == pytest.approx(0.0, abs=1e-12)
    sharp = aggregate_mutual_information(100 * mu, np.full((N, 2), -6.0), eps)
    assert sharp == pytest.approx(math.log(N), abs=1e-6)
    mid = aggregate_mutual_information(mu, np.zeros((N, 2)), eps)
    assert 0 < mid < math.log(N)


@pytest.mark.parametrize("case", ["vamp", "categorical", "variational-gaussian"])
def test_eval_report(rng, case):
    model = _iwae(rng, case)
    x = _x(rng, CONFIGS[case][1], B=12)
    info, lines = model.eval_report(x, batch_size=5)
    assert info["latent_dims"] == [Z] and 0 <= info["active_units"] <= Z
    assert 0 <= info["mutual_information"] <= math.log(12) + 1e-9
    assert np.isfinite(info["kl"]) and lines[0].startswith("active units ")
    if CONFIGS[case][1] == "levels":
        elbo = float(model.elbo(x, np.random.default_rng(0)).mean())
        assert info["nats_to_bits_per_dim"] == pytest.approx(1 / (D * math.log(2)))
        # the report's own draws: close to, not equal to, a fresh ELBO
        assert info["elbo_bits_per_dim"] == pytest.approx(-elbo / (D * math.log(2)), rel=0.2)
    assert model.has_gaussian_latents == (case != "vamp")


def test_dequantized_likelihood_is_a_bound_on_the_discrete_one(rng):
    """More importance samples tighten the dequantized bound towards log P(x), from below: the
    K-sample estimates increase on average with K and stay below 0 (a probability)."""
    model = _iwae(rng, "variational-gaussian")
    x = _x(rng, "levels", B=8)
    lls = [model.log_likelihood(x, np.random.default_rng(3), k=k).mean() for k in (1, 10, 200)]
    assert lls[0] < lls[1] < lls[2] < 0


# --- the contract and the registry ------------------------------------------------------------


def test_variants_are_selected_by_their_flags():
    assert model_class("vae", {"prior": "mog"}) is PriorDecoderVAE
    assert model_class("iwae", {"decoder": "made"}) is PriorDecoderIWAE
    assert model_class("vae", {"dequantize": "uniform"}) is PriorDecoderVAE
    assert model_class("vae", {"prior": "standard", "decoder": "factorized"}) is VAE
    assert model_class("iwae", {"dequantize": "none"}) is IWAE
    for case, (cfg, _) in CONFIGS.items():
        for cls in (PriorDecoderVAE, PriorDecoderIWAE):
            model = cls(D, Z, H, **cfg)
            config = json.loads(json.dumps(model.config()))
            rebuilt = build_model(config)
            assert type(rebuilt) is cls and rebuilt.config() == model.config(), case


# --- training: resumption, command line -------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds._replace(train=ds.train[:200], valid=ds.valid[:50], test=ds.test[:50])


@pytest.fixture(scope="module")
def levels():
    ds = load_dataset("digits-levels")
    return ds._replace(train=ds.train[:200], valid=ds.valid[:50], test=ds.test[:50])


@pytest.mark.parametrize(
    "family, cfg, data",
    [
        ("iwae-dreg", dict(prior="vamp", prior_components=4), "digits"),
        ("vae", dict(decoder="made", ar_context=5, ar_dropout=0.2), "digits"),
        ("vae", dict(dequantize="variational", likelihood="logistic", levels=17), "levels"),
    ],
    ids=["iwae vamp dreg", "vae made dropout", "vae variational dequantization"],
)
def test_fit_resumes_bit_for_bit(digits, levels, tmp_path, family, cfg, data):
    dataset = digits if data == "digits" else levels

    def make():
        if family == "vae":
            return PriorDecoderVAE(64, 3, (12,), seed=3, **cfg)
        return PriorDecoderIWAE(64, 3, (12,), k=3, estimator="dreg", seed=3, **cfg)

    kw = dict(batch_size=50, lr=1e-2, progress=False, seed=4)
    straight = make()
    h1 = fit(straight, dataset, epochs=2, out_dir=tmp_path / "a", **kw)
    fit(make(), dataset, epochs=1, out_dir=tmp_path / "b", **kw)
    resumed = make()
    h2 = fit(resumed, dataset, epochs=2, out_dir=tmp_path / "b", resume=True, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h1]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h2]
    for k, v in straight.parameters().items():
        assert np.array_equal(v, resumed.parameters()[k]), k


TINY = ["--latent", "3", "--hidden", "12", "--batch-size", "300", "--no-progress"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "iwae", "--k", "3", "--estimator", "dreg", "--prior", "vamp"],
        ["--prior", "flow", "--prior-flow-steps", "1", "--prior-flow-hidden", "4"],
        ["--decoder", "made", "--ar-context", "4", "--ar-dropout", "0.25", "--free-bits", "0.1"],
        ["--decoder", "categorical", "--data", "digits-levels"],
        ["--dequantize", "uniform", "--likelihood", "gaussian", "--data", "digits-levels"],
    ],
    ids=["iwae vamp", "vae flow prior", "vae made", "vae categorical", "vae uniform dequantized"],
)
def test_cli_trains_resumes_and_evaluates(tmp_path, capsys, argv):
    out = str(tmp_path / "r")
    assert main(["train", *argv, "--epochs", "1", "--out", out, *TINY]) == 0
    # a named data set other than digits and mnist is given again to --resume and eval: the
    # checkpoint records it as a path (lvmcore.cli._common.data_source)
    data = argv[argv.index("--data") + 1] if "--data" in argv else "digits"
    again = ["--out", out, "--resume", "--epochs", "2", "--no-progress", "--data", data]
    assert main(["train", *again]) == 0
    assert main(["eval", out, "--k", "20", "--data", data]) == 0
    result = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert result["epoch"] == 2 and result["latent_dims"] == [3]
    assert np.isfinite(result["nll"]) and np.isfinite(result["mutual_information"])
    printed = capsys.readouterr().out
    assert "I(x; z)" in printed
    if data == "digits-levels":
        assert "bits per dimension" in printed and 0 < result["elbo_bits_per_dim"] < 20


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prior", "mog", "--prior-components", "0"], "argument --prior-components: expected"),
        (["--decoder", "made", "--ar-context", "0"], "argument --ar-context: expected a positive"),
        (["--decoder", "made", "--ar-dropout", "1"], "argument --ar-dropout: expected a number"),
        (["--prior-components", "3"], "expected no --prior-components with --model vae"),
        (["--prior", "mog", "--ar-context", "3"], "expected no --ar-context here"),
        (["--prior", "vamp", "--free-bits", "0.2"], "expected --free-bits 0 with --prior vamp"),
        (["--prior", "flow", "--kl", "analytic"], "expected --kl sampled with --prior flow"),
        (["--prior", "mog", "--posterior", "iaf"], "expected --posterior diag with --prior mog"),
        (["--decoder", "made", "--stochastic-layers", "2"], "expected --stochastic-layers 1"),
        (["--decoder", "categorical", "--levels", "1"], "'levels' parameter of PriorDecoderVAE"),
        (
            ["--decoder", "categorical", "--levels", "5", "--data", "digits-levels"],
            "levels in [0, 5)",
        ),
        (["--dequantize", "uniform"], "expected a continuous decoder with dequantize='uniform'"),
        (["--decoder", "made", "--likelihood", "gaussian"], "expected no --likelihood here"),
        (["--prior", "mog", "--flow-steps", "2"], "expected no --flow-steps with --model vae"),
    ],
)
def test_cli_refuses_bad_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", *argv, *TINY])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_input(rng):
    with pytest.raises(InvalidParameterError, match="'prior_components' parameter of Prior"):
        PriorDecoderVAE(D, Z, prior="mog", prior_components=0)
    with pytest.raises(InvalidParameterError, match="'ar_context' parameter of PriorDecoderIWAE"):
        PriorDecoderIWAE(D, Z, decoder="made", ar_context=0)
    with pytest.raises(InvalidParameterError, match="'levels' parameter of PriorDecoderVAE"):
        PriorDecoderVAE(D, Z, decoder="categorical", levels=1)
    with pytest.raises(ValueError, match="expected ar_context=None \\(it applies to the made"):
        PriorDecoderVAE(D, Z, prior="mog", ar_context=3)
    with pytest.raises(ValueError, match="expected kl='sampled' and free_bits=0 with prior='mog'"):
        PriorDecoderVAE(D, Z, prior="mog", kl="analytic")
    with pytest.raises(ValueError, match="expected every hidden width >= n_in - 1"):
        PriorDecoderVAE(D, Z, decoder="made", ar_hidden=(2,))
    model = PriorDecoderIWAE(D, Z, H, decoder="categorical", levels=LEVELS, dtype=np.float64)
    x = _x(rng, "levels")
    for bad, what in ((0.5, "non-integer"), (LEVELS, "outside"), (-1.0, "outside")):
        y = x.copy()
        y[1, 2] = bad
        with pytest.raises(ValueError, match=f"PriorDecoderIWAE.elbo: expected x to hold .*{what}"):
            model.elbo(y, rng)
    with pytest.raises(ValueError, match="PriorDecoderIWAE.log_weights: expected noise of shape"):
        model.log_weights(x, np.zeros((2, 4, Z + 1)))
    made = PriorDecoderVAE(D, Z, H, decoder="made", dtype=np.float64)
    with pytest.raises(ValueError, match="PriorDecoderVAE.loss_and_grads: expected x to be binary"):
        made.loss_and_grads(_x(rng, "levels"), rng)
