"""The whole VQ-VAE: its hand-written backward against central differences over every parameter
array (assignment and stop-gradient values held fixed), the EMA and dead-code machinery, the
bound, training, checkpoints and the command line."""

import json
import math

import numpy as np
import pytest

from lvmcore import InvalidParameterError, TrainingDivergedError
from lvmcore.checkpoint import load_model, save_checkpoint
from lvmcore.cli import main
from lvmcore.data import load_dataset
from lvmcore.models import MODELS, VQVAE, build_model
from lvmcore.ops.vq import VQFrozen
from lvmcore.optim import Adam
from lvmcore.testing import gradcheck
from lvmcore.train import fit


def _data(rng, B=6, D=7):
    return (rng.random((B, D)) < 0.4).astype(np.float64)


def _model(update, **kw):
    cfg = dict(
        codes=4,
        slots=3,
        code_dim=2,
        hidden=(5,),
        activation="tanh",
        codebook_update=update,
        dtype=np.float64,
        seed=3,
    )
    cfg.update(kw)
    return VQVAE(7, **cfg)


def _codebook_near_encoder_outputs(model, x, rng):
    """Codes at a few encoder outputs plus noise: every code used, assignments with margin."""
    h, _ = model.encoder.forward(x)
    z = h.reshape(-1, model.code_dim)
    pick = rng.choice(z.shape[0], size=model.codes, replace=False)
    model.codebook[...] = z[pick] + 0.05 * rng.standard_normal(model.codebook.shape)


@pytest.mark.parametrize("update", ["loss", "ema"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradient_every_parameter(rng, update, activation):
    model = _model(update, activation=activation)
    x = _data(rng)
    model.init_output_bias(x)
    _codebook_near_encoder_outputs(model, x, rng)
    model.zero_grad()
    loss, cache = model.forward(x)
    # the assignment is the nearest code, with a margin far above the FD step
    z = cache.z_e.reshape(-1, 1, model.code_dim)
    d = np.sort(((z - model.codebook[None]) ** 2).sum(-1), axis=1)
    assert (d[:, 1] - d[:, 0]).min() > 1e-4
    model.backward(cache)
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    frozen = VQFrozen(cache.z_e.copy(), model.codebook.copy())
    index = cache.vq.index.copy()
    assert model.forward(x, index=index, frozen=frozen)[0] == pytest.approx(loss, rel=1e-14)
    report = gradcheck(
        lambda: model.forward(x, index=index, frozen=frozen)[0], model.parameters(), analytic
    )
    assert set(report) >= {"encoder.W0", "encoder.b1", "decoder.W1", "codebook"}
    if update == "ema":
        np.testing.assert_array_equal(analytic["codebook"], 0.0)
    else:
        assert np.abs(analytic["codebook"]).max() > 0


def test_decoder_gradient_is_the_true_gradient(rng):
    """No stop-gradient lies between the decoder and the loss: plain FD, no surrogate."""
    model = _model("loss")
    x = _data(rng)
    _codebook_near_encoder_outputs(model, x, rng)
    model.zero_grad()
    _, cache = model.forward(x)
    model.backward(cache)
    dec = {k: v for k, v in model.parameters().items() if k.startswith("decoder.")}
    gradcheck(lambda: model.forward(x)[0], dec, {k: model.gradients()[k].copy() for k in dec})


def test_backward_scales_with_dloss(rng):
    model = _model("loss")
    x = _data(rng)
    _, cache = model.forward(x)
    model.zero_grad()
    model.backward(cache, dloss=1.0)
    g1 = {k: v.copy() for k, v in model.gradients().items()}
    _, cache = model.forward(x)  # a cache serves one backward (it is overwritten)
    model.zero_grad()
    model.backward(cache, dloss=-2.5)
    for k, v in model.gradients().items():
        np.testing.assert_allclose(v, -2.5 * g1[k], rtol=1e-12, atol=1e-15)


def test_bound_elbo_and_stats(rng):
    model = _model("loss")
    x = _data(rng)
    loss, cache = model.forward(x)
    bound = model.bound(x, rng, batch_size=4)
    np.testing.assert_allclose(bound, -cache.nll, rtol=1e-13)
    np.testing.assert_allclose(model.elbo(x, rng), bound - 3 * math.log(4), rtol=1e-13)
    assert loss == pytest.approx(-bound.mean() + cache.losses.codebook + cache.losses.commitment)
    _, stats = model.loss_and_grads(x, rng)
    assert stats["bound"] == pytest.approx(bound.mean())
    assert stats["elbo"] == pytest.approx(bound.mean() - 3 * math.log(4))
    assert 1.0 <= stats["perplexity"] <= 4.0
    assert stats["used_codes"] == len(np.unique(cache.vq.index))


def test_ema_mode_moves_the_codebook_by_ema_only(rng):
    model = _model("ema")
    x = _data(rng, B=20)
    opt = Adam(model.parameters(), model.gradients(), lr=1e-2)
    before = model.codebook.copy()
    model.loss_and_grads(x, rng, update_codebook=False)
    np.testing.assert_array_equal(model.codebook, before)  # gradients only
    opt.step()
    np.testing.assert_array_equal(model.codebook, before)  # zero gradient: Adam leaves it
    _, cache = model.forward(x)
    z = cache.z_e.reshape(-1, 2)
    model.loss_and_grads(x, rng)
    used = np.unique(cache.vq.index)
    n = np.bincount(cache.vq.index, minlength=4)
    size = 0.99 + 0.01 * n
    total = 0.99 * before + 0.01 * np.stack([z[cache.vq.index == m].sum(0) for m in range(4)])
    smoothed = (size + 1e-5) / (size.sum() + 4e-5) * size.sum()
    np.testing.assert_allclose(model.codebook, total / smoothed[:, None], rtol=1e-12)
    assert not np.allclose(model.codebook[used], before[used])


def test_dead_codes_are_counted_and_reset(rng):
    x = _data(rng, B=20)
    for reset in (False, True):
        model = _model("ema", dead_code_steps=3, reset_dead_codes=reset, codes=5)
        _codebook_near_encoder_outputs(model, x, rng)
        model.codebook[4] = 100.0  # never the nearest code
        model.params["ema_code_sum"][4] = 100.0
        stats = [model.loss_and_grads(x, np.random.default_rng(s))[1] for s in range(4)]
        assert [s["dead_codes"] for s in stats[:2]] == [0, 0]
        assert stats[2]["dead_codes"] >= 1
        if reset:
            assert stats[2]["reset_codes"] == stats[2]["dead_codes"]
            z = model.encoder.forward(x)[0].reshape(-1, 2)
            assert np.abs(model.codebook[4]).max() < 10  # re-seeded from an encoder output
            assert model.params["code_age"][4] <= 1
            assert np.any(np.all(np.isclose(z, model.codebook[4], atol=0.5), axis=1))
        else:
            assert stats[3]["reset_codes"] == 0
            np.testing.assert_allclose(model.codebook[4], 100.0, rtol=0.05)
            assert model.params["code_age"][4] == 4


def test_kmeans_init_uses_the_codebook(rng):
    x = (rng.random((300, 7)) < 0.4).astype(np.float32)
    plain = VQVAE(7, codes=16, slots=2, code_dim=3, hidden=(8,), seed=1)
    km = VQVAE(
        7,
        codes=16,
        slots=2,
        code_dim=3,
        hidden=(8,),
        seed=1,
        kmeans_init=True,
        codebook_update="ema",
    )
    plain.init_output_bias(x)
    km.init_output_bias(x)
    assert (km.code_usage(x) > 0).sum() > (plain.code_usage(x) > 0).sum()
    assert (km.code_usage(x) > 0).sum() >= 12
    np.testing.assert_array_equal(km.params["ema_code_sum"], km.codebook)


def test_nonfinite_encoder_output_gives_nan_loss_and_fit_stops(rng):
    model = _model("loss", dtype=np.float32)
    model.encoder.params["W0"][0, 0] = np.nan
    x = _data(rng).astype(np.float32)
    x[:, 0] = 1
    loss, stats = model.loss_and_grads(x, rng)
    assert math.isnan(loss) and math.isnan(stats["perplexity"])
    ds = load_dataset("digits")
    bad = VQVAE(64, codes=8, slots=2, code_dim=2, hidden=(8,))
    bad.encoder.params["W0"][...] = np.nan
    with pytest.raises(TrainingDivergedError, match=r"fit: expected a finite loss"):
        fit(bad, ds, epochs=1, progress=False)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(codes=0), r"The 'codes' parameter of VQVAE must be an int in \[1, inf\). Got 0"),
        (dict(slots=1.5), r"The 'slots' parameter of VQVAE must be an int"),
        (dict(beta=-1.0), r"The 'beta' parameter of VQVAE must be a float in \[0, inf\). Got -1.0"),
        (
            dict(codebook_update="adam"),
            r"The 'codebook_update' parameter of VQVAE must be one of 'loss', 'ema'. Got 'adam'",
        ),
        (dict(ema_decay=1.0), r"The 'ema_decay' parameter of VQVAE must be a float in \(0, 1\)"),
        (
            dict(dead_code_steps=0),
            r"The 'dead_code_steps' parameter of VQVAE must be an int in "
            r"\[1, inf\). Got 0",
        ),
        (dict(reset_dead_codes="yes"), r"The 'reset_dead_codes' parameter of VQVAE must be one of"),
    ],
)
def test_bad_hyper_parameters(kw, message):
    with pytest.raises(InvalidParameterError, match=message):
        VQVAE(7, **kw)


def test_bad_inputs(rng):
    model = _model("loss")
    with pytest.raises(
        ValueError,
        match=r"VQVAE.loss_and_grads: expected x to have shape "
        r"\(\*, 7\), got \(6, 5\)",
    ):
        model.loss_and_grads(_data(rng, D=5), rng)
    with pytest.raises(ValueError, match=r"VQVAE.loss_and_grads: expected kl_weight None"):
        model.loss_and_grads(_data(rng), rng, kl_weight=0.5)
    with pytest.raises(ValueError, match=r"expected x to be binary"):
        model.bound(_data(rng) * 0.5, rng)


def test_config_checkpoint_round_trip(rng, tmp_path):
    model = _model("ema", dtype=np.float32, reset_dead_codes=True, kmeans_init=True)
    x = _data(rng, B=20).astype(np.float32)
    model.loss_and_grads(x, rng)
    assert MODELS["vqvae"] is VQVAE
    save_checkpoint(tmp_path / "c.npz", model)
    back = load_model(tmp_path / "c.npz")
    assert back.config() == model.config() == build_model(model.config()).config()
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[k], v)
    np.testing.assert_array_equal(back.reconstruct(x), model.reconstruct(x))


def test_fit_resumes_bit_for_bit_with_ema_and_reset(tmp_path):
    ds = load_dataset("digits")

    def build():
        return VQVAE(
            64,
            codes=32,
            slots=2,
            code_dim=4,
            hidden=(16,),
            codebook_update="ema",
            dead_code_steps=5,
            reset_dead_codes=True,
            kmeans_init=True,
            seed=2,
        )

    full = fit(build(), ds, epochs=2, batch_size=200, out_dir=tmp_path / "a", progress=False)
    fit(build(), ds, epochs=1, batch_size=200, out_dir=tmp_path / "b", progress=False)
    resumed = fit(
        build(), ds, epochs=2, batch_size=200, out_dir=tmp_path / "b", resume=True, progress=False
    )
    for a, b in zip(full, resumed):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert {"train_perplexity", "train_dead_codes", "train_used_codes"} <= set(full[-1])
    assert (tmp_path / "a" / "code_usage.png").stat().st_size > 0
    assert (tmp_path / "a" / "reconstructions.png").exists()


def test_training_improves_the_bound(rng):
    x = load_dataset("digits").train[:500]
    for update in ("loss", "ema"):
        model = VQVAE(
            64,
            codes=32,
            slots=4,
            code_dim=4,
            hidden=(32,),
            codebook_update=update,
            kmeans_init=True,
            seed=0,
        )
        model.init_output_bias(x)
        opt = Adam(model.parameters(), model.gradients(), lr=3e-3)
        start = model.bound(x).mean()
        for step in range(100):
            model.loss_and_grads(x[(step % 5) * 100 : (step % 5 + 1) * 100], rng)
            opt.step()
        assert model.bound(x).mean() > start + 3.0


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "vqvae",
                "--codes",
                "16",
                "--slots",
                "2",
                "--code-dim",
                "3",
                "--hidden",
                "16",
                "--epochs",
                "1",
                "--batch-size",
                "200",
                "--codebook-update",
                "ema",
                "--reset-dead-codes",
                "--kmeans-init",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "training vqvae" in capsys.readouterr().out
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reconstruction NLL" in printed and "code perplexity" in printed
    result = json.loads((out / "eval.json").read_text())
    assert result["codes"] == 16 and 0 <= result["dead_codes"] <= 16
    assert result["elbo"] == pytest.approx(result["bound"] - 2 * math.log(16), rel=1e-5)
    assert "nll" not in result and "active_units" not in result


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--latent", "4"], r"expected no --latent with --model vqvae"),
        (["--likelihood", "gaussian"], r"expected --likelihood bernoulli with --model vqvae"),
        (["--kl-warmup-epochs", "2"], r"expected --kl-warmup-epochs 0 with --model vqvae"),
    ],
)
def test_cli_refuses_flags_that_do_not_apply(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--model",
                "vqvae",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
                *argv,
            ]
        )
    assert exc.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_cli_refuses_vqvae_flags_for_other_models(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--model",
                "vae",
                "--codes",
                "8",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
    assert "expected no --codes with --model vae" in capsys.readouterr().err
