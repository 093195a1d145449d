"""Checkpoints: exact round trips, plain-NumPy readability, atomic writes, clear errors."""

import json
import os

import numpy as np
import pytest

from lvmcore.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from lvmcore.models import VAE
from lvmcore.optim import SGD, Adam


def _trained(model, opt, seed=0, steps=3):
    """A few optimizer steps on random binary data, so parameters and state are non-trivial."""
    rng = np.random.default_rng(seed)
    x = (rng.random((8, model.data_dim)) < 0.4).astype(model.dtype)
    for _ in range(steps):
        model.loss_and_grads(x, rng)
        opt.step()
    return model, opt


@pytest.fixture
def vae_adam():
    model = VAE(12, latent_dim=3, hidden=(5, 4), seed=1)
    return _trained(model, Adam(model.parameters(), model.gradients(), lr=1e-2, eps=1e-4))


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    model = VAE(12, latent_dim=3, hidden=(5, 4), seed=1, dtype=dtype)
    model, opt = _trained(model, Adam(model.parameters(), model.gradients(), lr=1e-2))
    state = dict(epoch=3, step=42, seed=7, history=[dict(epoch=1, valid_bound=-1.5)])
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, state)

    config, params, optim, loaded_state = load_checkpoint(path)
    assert config == model.config()
    _assert_same_arrays(params, model.parameters())
    _assert_same_arrays(optim, opt.state_dict())
    assert {k: loaded_state[k] for k in state} == state
    assert loaded_state["optimizer"]["name"] == "adam"
    assert loaded_state["optimizer"]["lr"] == 1e-2

    rebuilt = load_model(path)
    _assert_same_arrays(rebuilt.parameters(), model.parameters())
    opt2 = Adam(rebuilt.parameters(), rebuilt.gradients(), lr=1e-2)
    opt2.load_state_dict(optim)
    _assert_same_arrays(opt2.state_dict(), opt.state_dict())


def test_round_trip_gaussian_decoder_and_sgd(tmp_path):
    model = VAE(6, latent_dim=2, hidden=(4,), likelihood="gaussian", seed=3)
    opt = SGD(model.parameters(), model.gradients(), lr=1e-2, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    model.loss_and_grads(x, rng)
    opt.step()
    save_checkpoint(tmp_path / "checkpoint.npz", model, opt, {})
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert "decoder.logvar" in ck.params
    _assert_same_arrays(ck.params, model.parameters())
    _assert_same_arrays(ck.optim, opt.state_dict())
    assert ck.state["optimizer"]["momentum"] == 0.9
    _assert_same_arrays(load_model(tmp_path).parameters(), model.parameters())


def test_file_reads_with_plain_numpy_and_no_pickle(tmp_path, vae_adam):
    model, opt = vae_adam
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, dict(epoch=1))
    with np.load(path, allow_pickle=False) as f:
        files = set(f.files)
        assert int(f["format_version"]) == FORMAT_VERSION
        assert f["config_json"].shape == () and f["config_json"].dtype.kind == "U"
        assert json.loads(f["config_json"][()]) == model.config()
        assert json.loads(f["state_json"][()])["epoch"] == 1
        assert np.array_equal(f["param/encoder.W0"], model.parameters()["encoder.W0"])
        assert f["param/encoder.W0"].shape == (12, 5)
        assert int(f["optim/t"]) == 3
    assert {f"param/{k}" for k in model.parameters()} <= files
    assert {f"optim/{k}" for k in opt.state_dict()} <= files


def test_write_is_atomic_and_failure_keeps_old_checkpoint(tmp_path, vae_adam, monkeypatch):
    model, opt = vae_adam
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, opt, dict(epoch=1))
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no temporary left behind
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    model.parameters()["encoder.W0"][...] += 1
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, dict(epoch=2))
    assert os.listdir(tmp_path) == ["checkpoint.npz"]
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert load_checkpoint(path).state["epoch"] == 1


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_checkpoint(tmp_path / "nothing.npz")
    with pytest.raises(FileNotFoundError, match="checkpoint.npz"):
        load_model(tmp_path)  # a run folder without one


def test_corrupt_files_give_clear_errors(tmp_path, vae_adam):
    model, opt = vae_adam
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match=r"garbage\.npz.*corrupt or not a checkpoint"):
        load_checkpoint(garbage)

    good = save_checkpoint(tmp_path / "good.npz", model, opt, {})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz"):
        load_checkpoint(truncated)

    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz to hold format_version.*not an lvmcore"):
        load_checkpoint(other)


def test_mis_shaped_parameter_names_path(tmp_path, vae_adam):
    model, opt = vae_adam
    good = save_checkpoint(tmp_path / "good.npz", model, opt, {})
    with np.load(good, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/decoder.W0"] = arrays["param/decoder.W0"][:, :-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad\.npz.*decoder\.W0 of shape"):
        load_model(tmp_path / "bad.npz")


def test_newer_format_is_refused(tmp_path, vae_adam):
    model, opt = vae_adam
    good = save_checkpoint(tmp_path / "good.npz", model, opt, {})
    with np.load(good, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["format_version"] = np.array(FORMAT_VERSION + 1)
    np.savez(tmp_path / "new.npz", **arrays)
    with pytest.raises(ValueError, match="Upgrade lvmcore"):
        load_checkpoint(tmp_path / "new.npz")
