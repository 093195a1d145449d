"""The training loop: learning, determinism, exact resumption, divergence, validation."""

import json
import math

import numpy as np
import pytest

from lvmcore import InvalidParameterError, TrainingDivergedError
from lvmcore.checkpoint import load_checkpoint
from lvmcore.data import load_dataset
from lvmcore.models import VAE
from lvmcore.train import CHECKPOINT, METRICS, fit, kl_warmup_weight

N_TRAIN, BATCH = 400, 50
STEPS = N_TRAIN // BATCH  # steps per epoch: 8


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("digits")
    return ds._replace(train=ds.train[:N_TRAIN], valid=ds.valid[:100])


def tiny(seed=0, **kw):
    return VAE(64, latent_dim=2, hidden=(16,), seed=seed, **kw)


def run(model, data, **kw):
    kw = dict(dict(epochs=2, batch_size=BATCH, lr=1e-2, progress=False), **kw)
    return fit(model, data, **kw)


def without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_params(a, b):
    pa, pb = a.parameters(), b.parameters()
    assert sorted(pa) == sorted(pb)
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def test_fit_improves_the_bound(data):
    history = run(tiny(), data, epochs=8)
    assert [r["epoch"] for r in history] == list(range(1, 9))
    assert [r["step"] for r in history] == [STEPS * e for e in range(1, 9)]
    assert history[-1]["valid_bound"] > history[0]["valid_bound"] + 1.0
    assert history[-1]["train_bound"] > history[0]["train_bound"] + 1.0
    for r in history:
        assert math.isclose(r["train_bound"], r["train_elbo"])
        assert math.isclose(r["train_elbo"], r["train_recon"] - r["train_kl"], rel_tol=1e-9)


def test_fit_writes_run_folder(data, tmp_path):
    history = run(tiny(), data, epochs=2, out_dir=tmp_path)
    for name in (CHECKPOINT, METRICS, "samples.png", "reconstructions.png", "bounds.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    lines = (tmp_path / METRICS).read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    state = load_checkpoint(tmp_path / CHECKPOINT).state
    assert (state["epoch"], state["step"]) == (2, 2 * STEPS)
    assert state["history"] == history
    assert state["dataset"]["source"] == "digits"


def test_same_seed_same_run(data):
    a, b = tiny(), tiny()
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    ha = run(a, data, epochs=2, seed=5)
    hb = run(b, data, epochs=2, seed=5)
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002   # global RNG untouched
    assert without_time(ha) == without_time(hb)
    assert_same_params(a, b)
    hc = run(tiny(), data, epochs=2, seed=6)
    assert without_time(hc) != without_time(ha)


@pytest.mark.parametrize(
    "optimizer, extra", [("adam", dict(clip_norm=5.0)), ("sgd", dict(momentum=0.9, lr=0.05))]
)
def test_resume_continues_bit_for_bit(data, tmp_path, optimizer, extra):
    kw = dict(optimizer=optimizer, kl_warmup_epochs=3, seed=3, **extra)
    straight = tiny()
    h_straight = run(straight, data, epochs=3, out_dir=tmp_path / "a", **kw)

    run(tiny(), data, epochs=1, out_dir=tmp_path / "b", **kw)
    resumed = tiny()  # a fresh model: everything comes from the checkpoint
    h_resumed = run(resumed, data, epochs=3, out_dir=tmp_path / "b", resume=True, **kw)

    assert_same_params(straight, resumed)
    assert without_time(h_resumed) == without_time(h_straight)
    ck_a, ck_b = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in "ab")
    for k in ck_a.optim:
        assert np.array_equal(ck_a.optim[k], ck_b.optim[k]), k
    lines = (tmp_path / "b" / METRICS).read_text().splitlines()
    assert without_time([json.loads(line) for line in lines]) == without_time(h_straight)


def test_resume_refuses_changed_batch_size_and_model(data, tmp_path):
    run(tiny(), data, epochs=1, out_dir=tmp_path)
    with pytest.raises(ValueError, match="expected batch_size=50 as in the run being resumed"):
        run(tiny(), data, epochs=2, out_dir=tmp_path, resume=True, batch_size=40)
    with pytest.raises(ValueError, match="latent_dim 2 vs 3"):
        run(VAE(64, latent_dim=3, hidden=(16,)), data, epochs=2, out_dir=tmp_path, resume=True)


def test_existing_run_is_not_overwritten_by_accident(data, tmp_path):
    run(tiny(), data, epochs=1, out_dir=tmp_path)
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        run(tiny(), data, epochs=1, out_dir=tmp_path)
    history = run(tiny(), data, epochs=1, out_dir=tmp_path, overwrite=True)
    assert len((tmp_path / METRICS).read_text().splitlines()) == len(history) == 1


def test_nan_loss_raises_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    reference = tiny()
    run(reference, data, epochs=1, seed=2)  # the state at the end of epoch 1

    model = tiny()
    calls = []
    real = model.loss_and_grads

    def nan_at_epoch2_step3(x, rng, **kw):
        calls.append(1)
        loss, stats = real(x, rng, **kw)
        return (math.nan if len(calls) == STEPS + 3 else loss), stats

    monkeypatch.setattr(model, "loss_and_grads", nan_at_epoch2_step3)
    with pytest.raises(
        TrainingDivergedError,
        match=r"loss nan.*at epoch 2, step 3 of 8 "
        r"\(global step 11\)",
    ) as info:
        run(model, data, epochs=3, seed=2, out_dir=tmp_path)
    ck_path = tmp_path / CHECKPOINT
    assert info.value.checkpoint == str(ck_path)
    assert str(ck_path) in str(info.value)
    config, params, _, state = load_checkpoint(ck_path)
    assert state["epoch"] == 1 and state["step"] == STEPS
    for k, p in reference.parameters().items():
        assert np.array_equal(params[k], p), k
    assert len((tmp_path / METRICS).read_text().splitlines()) == 1


def test_nan_gradient_raises_before_the_update(data, monkeypatch):
    model = tiny()
    real = model.loss_and_grads

    def nan_grad(x, rng, **kw):
        out = real(x, rng, **kw)
        model.gradients()["decoder.W0"][0, 0] = np.inf
        return out

    monkeypatch.setattr(model, "loss_and_grads", nan_grad)
    with pytest.raises(
        TrainingDivergedError,
        match="gradient norm inf .*at epoch 1, step 1.*No checkpoint was written",
    ) as info:
        run(model, data, epochs=1)
    assert info.value.checkpoint is None
    # The first step was refused, so only the output bias (set before training) moved.
    fresh = tiny()
    fresh.init_output_bias(data.train)
    assert_same_params(model, fresh)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(epochs=0), r"'epochs' parameter of fit must be an int in \[1, inf\)\. Got 0"),
        (dict(lr=-1), r"'lr' parameter of fit must be a float in \(0, inf\)\. Got -1"),
        (dict(batch_size=0), r"'batch_size' parameter of fit must be an int in \[1, inf\)"),
        (dict(optimizer="rmsprop"), r"'optimizer' parameter of fit must be one of 'adam', 'sgd'"),
        (dict(momentum=0.5), r"'momentum' parameter of fit applies to optimizer='sgd' only"),
        (dict(kl_warmup_epochs=-1), r"'kl_warmup_epochs' parameter of fit"),
        (dict(clip_norm=0.0), r"'clip_norm' parameter of fit"),
    ],
)
def test_bad_hyper_parameters(data, kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        run(tiny(), data, **kw)


def test_bad_data_and_arguments(data):
    with pytest.raises(
        ValueError, match=r"expected dataset\.train to have shape \(\*, 63\), got \(400, 64\)"
    ):
        run(VAE(63, latent_dim=2, hidden=(4,)), data)
    grey = data._replace(train=data.train * 0.5)
    with pytest.raises(ValueError, match=r"dataset\.train to be binary"):
        run(tiny(), grey)
    with pytest.raises(ValueError, match="expected out_dir with resume=True"):
        run(tiny(), data, resume=True)
    with pytest.raises(TypeError, match="expected dataset to have 'train' and 'valid'"):
        run(tiny(), data.train)


def test_kl_warmup_weight_schedule():
    assert kl_warmup_weight(1, 1.0, 0) == 1.0
    assert kl_warmup_weight(1, 2.0, 4) == 0.5
    assert [kl_warmup_weight(t, 1.0, 4) for t in range(1, 7)] == [0.25, 0.5, 0.75, 1, 1, 1]


def test_fit_applies_warmup_per_step(data, monkeypatch):
    model = tiny(beta=2.0)
    seen = []
    real = model.loss_and_grads

    def spy(x, rng, kl_weight=None, **kw):
        seen.append(kl_weight)
        return real(x, rng, kl_weight=kl_weight, **kw)

    monkeypatch.setattr(model, "loss_and_grads", spy)
    history = run(model, data, epochs=3, kl_warmup_epochs=2)
    T = 2 * STEPS
    assert seen == [2.0 * min(1.0, t / T) for t in range(1, 3 * STEPS + 1)]
    assert [r["kl_weight"] for r in history] == [1.0, 2.0, 2.0]
