"""Checkpoints: exact round trips, plain-NumPy readability, atomic writes, clear errors."""

import json
import os
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from lvmcore.checkpoint import (
    FORMAT_VERSION,
    STATE_SCHEMA,
    compare_runtime,
    load_checkpoint,
    load_model,
    runtime_differences,
    runtime_info,
    save_checkpoint,
    warn_runtime_differences,
)
from lvmcore.exceptions import RuntimeDifferenceWarning
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


# --- tampered and hostile files: refused from the zip directory, then by the schema --------


def _members(path):
    """name -> (raw bytes as stored, compress_type, crc, uncompressed size)."""
    with zipfile.ZipFile(path) as zf:
        return {
            i.filename: (zf.read(i), i.compress_type, i.CRC, i.file_size) for i in zf.infolist()
        }


def _write_zip(path, members):
    """Write a zip by hand from (name, stored bytes, method, crc, uncompressed size), so that a
    member can carry precompressed (deflate) data: a compression bomb costs no time here."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        n = name.encode()
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(n), 0
        )
        out += n + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            method,
            0,
            0,
            crc,
            len(data),
            size,
            len(n),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += n
    eocd = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0
    )
    path.write_bytes(bytes(out + central + eocd))


def _bomb(gib=1):
    """A raw deflate stream of gib GiB of zeros, about 1 MiB long, and its CRC.

    One MiB of zeros compressed and full-flushed is a self-contained block sequence that
    ends on a byte boundary with an empty history, so repeating it inflates to N MiB."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024 * gib):
        crc = zlib.crc32(chunk, crc)
    return block * (1024 * gib) + c.flush(zlib.Z_FINISH), crc, (1 << 30) * gib


@pytest.fixture(scope="module")
def bomb():
    return _bomb()


def _with_member(good, tmp_path, name, data, method=zipfile.ZIP_STORED, crc=None, size=None):
    members = _members(good)
    members[name] = (
        data,
        method,
        zlib.crc32(data) if crc is None else crc,
        len(data) if size is None else size,
    )
    bad = tmp_path / "bad.npz"
    _write_zip(bad, [(k, *v) for k, v in members.items()])
    return bad


@pytest.mark.parametrize(
    "name, match",
    [
        ("junk.npy", r"unknown member 'junk\.npy' \(1073741824 bytes\).*refused unread"),
        (
            "param/decoder.W0.npy",
            r"member param/decoder\.W0 .* at most \d+ bytes .* got "
            r"1073741824 bytes declared",
        ),
        ("state_json.npy", r"member state_json .* at most 67108864 bytes"),
    ],
)
def test_compression_bomb_is_refused_without_decompressing(
    tmp_path, vae_adam, bomb, monkeypatch, name, match
):
    import tracemalloc

    model, opt = vae_adam
    good = save_checkpoint(tmp_path / "good.npz", model, opt, dict(epoch=1))
    data, crc, size = bomb
    bad = _with_member(good, tmp_path, name, data, zipfile.ZIP_DEFLATED, crc, size)
    assert bad.stat().st_size < 2 << 20  # a 1 MiB file holding 1 GiB
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, m, *a, **k: (
            opened.append(getattr(m, "filename", m)) or real_open(self, m, *a, **k)
        ),
    )
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            load_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert name not in opened
    assert peak < 16 << 20


def test_unknown_members_and_keys_are_refused(tmp_path, vae_adam):
    model, opt = vae_adam
    good = save_checkpoint(tmp_path / "good.npz", model, opt, dict(epoch=1))
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    extra = dict(arrays, **{"param/encoder.W9": np.zeros(3, np.float32)})
    np.savez(tmp_path / "x.npz", **extra)
    with pytest.raises(
        ValueError, match=r"x\.npz to hold only the parameters .* unknown member param/encoder\.W9"
    ):
        load_checkpoint(tmp_path / "x.npz")
    extra = dict(arrays, **{"optim/q.encoder.W0": arrays["optim/m.encoder.W0"]})
    np.savez(tmp_path / "o.npz", **extra)
    with pytest.raises(
        ValueError, match=r"only the adam state .* unknown member optim/q\.encoder\.W0"
    ):
        load_checkpoint(tmp_path / "o.npz")
    missing = {k: v for k, v in arrays.items() if k != "param/decoder.b1"}
    np.savez(tmp_path / "m.npz", **missing)
    with pytest.raises(
        ValueError, match=r"m\.npz to hold every parameter .* got no param/decoder\.b1"
    ):
        load_checkpoint(tmp_path / "m.npz")


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda a: a.astype(np.complex64),
            r"param/encoder\.W0 .* dtype float32, as its config implies, got .* complex64",
        ),
        (lambda a: a.astype(np.int32), r"param/encoder\.W0 .* dtype float32, .* got .* int32"),
        (lambda a: a.astype(np.float64), r"dtype float32, as its config implies, got .* float64"),
        (
            lambda a: np.where(a > 0, np.nan, a).astype(a.dtype),
            r"param/encoder\.W0 in .* to contain no NaN or Inf",
        ),
        (lambda a: np.array([a], dtype=object), r"param/encoder\.W0 in .* no Python objects"),
    ],
)
def test_tampered_parameters_are_refused(tmp_path, vae_adam, make, match):
    model, opt = vae_adam
    good = save_checkpoint(tmp_path / "good.npz", model, opt, dict(epoch=1))
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/encoder.W0"] = make(arrays["param/encoder.W0"])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(tmp_path / "bad.npz")


def _tamper_json(good, tmp_path, name, edit):
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    doc = json.loads(arrays[name][()])
    edit(doc)
    arrays[name] = np.array(json.dumps(doc))
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.update(hyper=[1, 2]), r"state\.hyper to be a JSON object, got \[1, 2\]"),
        (lambda s: s.update(epoch="3"), r"state\.epoch to be an int >= 0, got '3'"),
        (lambda s: s.update(epoch=True), r"state\.epoch to be an int >= 0, got True"),
        (lambda s: s.pop("step"), r"state of a training run .* epoch and step, got no step"),
        (lambda s: s.update(history={"epoch": 1}), r"state\.history to be a list"),
        (
            lambda s: s["hyper"].update(lr=-1.0),
            r"state\.hyper\.lr to be a finite number in \(0, inf\)",
        ),
        (lambda s: s["hyper"].update(lr=float("nan")), r"state\.hyper\.lr to be a finite number"),
        (lambda s: s["dataset"].update(n_train=None), r"state\.dataset\.n_train to be an int >= 0"),
        (lambda s: s["optimizer"].update(name="rmsprop"), r"state\.optimizer\.name to be one of"),
        (lambda s: s.update(payload="x"), r"state to hold only the keys .* unknown key 'payload'"),
        (lambda s: s["hyper"].update(extra=1), r"state\.hyper to hold only the keys .* 'extra'"),
    ],
)
def test_tampered_state_json_is_a_value_error_naming_the_member(tmp_path, vae_adam, edit, match):
    model, opt = vae_adam
    state = dict(
        epoch=1,
        step=3,
        seed=0,
        history=[dict(epoch=1, train_bound=-5.0, valid_bound=None)],
        hyper=dict(lr=1e-2, batch_size=8, optimizer="adam", clip_norm=None),
        dataset=dict(
            name="digits", source="digits", shape=[8, 8], n_train=8, n_valid=0, data_dim=12
        ),
        lvmcore_version="0.1.0",
    )
    good = save_checkpoint(tmp_path / "good.npz", model, opt, state)
    bad = _tamper_json(good, tmp_path, "state_json", edit)
    with pytest.raises(
        ValueError,
        match=r"load_checkpoint: expected state_json in .*bad\.npz to follow the checkpoint schema: "
        + match,
    ):
        load_checkpoint(bad)


def test_tampered_config_json_is_a_value_error(tmp_path, vae_adam):
    model, opt = vae_adam
    good = save_checkpoint(tmp_path / "good.npz", model, opt, {})
    bad = _tamper_json(
        good,
        tmp_path,
        "config_json",
        lambda c: c.update(decoder_variance=-1.0, likelihood="gaussian"),
    )
    with pytest.raises(
        ValueError, match=r"config_json in .*bad\.npz to describe a model, .* builds none"
    ):
        load_checkpoint(bad)
    bad = _tamper_json(good, tmp_path, "config_json", lambda c: c.update(hidden=[6, 4]))
    with pytest.raises(
        ValueError,
        match=r"param/encoder\.W0 in .* to hold encoder\.W0 of shape \(12, 6\) .* got shape \(12, 5\)",
    ):
        load_checkpoint(bad)


def test_save_refuses_a_state_it_could_not_load_again(tmp_path, vae_adam):
    model, opt = vae_adam
    with pytest.raises(
        ValueError,
        match=r"save_checkpoint: expected state to hold only the keys .* 'notes'.*checkpoint\.STATE_SCHEMA",
    ):
        save_checkpoint(tmp_path / "ck.npz", model, opt, dict(epoch=1, notes="x"))
    assert not (tmp_path / "ck.npz").exists()
    assert "notes" not in STATE_SCHEMA


# --- the runtime a checkpoint was written under --------------------------------------------


def test_runtime_is_recorded_and_compared(tmp_path, vae_adam):
    model, opt = vae_adam
    ck = load_checkpoint(save_checkpoint(tmp_path / "ck.npz", model, opt, dict(epoch=1)))
    rt = ck.state["runtime"]
    assert rt["device"] == "cpu" and rt["numpy"] == np.__version__
    assert rt["blas"] and all(isinstance(b["num_threads"], int) for b in rt["blas"])
    assert rt["numba"]["num_threads"] >= 1
    assert runtime_differences(ck) == [] and runtime_differences(tmp_path / "ck.npz") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_runtime_differences(ck, "resume") == []

    other = json.loads(json.dumps(rt))
    other["blas"][0]["num_threads"] += 3
    other["numpy"] = "1.0.0"
    other["device"] = "cuda:Some GPU"
    lines = compare_runtime(other, runtime_info())
    assert any(line.startswith("device: cuda:Some GPU when saved, cpu now") for line in lines)
    assert any("NumPy version: 1.0.0 when saved" in line for line in lines)
    threads = [line for line in lines if line.startswith("BLAS threads")]
    assert len(threads) == 1 and "results depend on the BLAS thread count" in threads[0]
    with pytest.warns(
        RuntimeDifferenceWarning, match=r"resume: this checkpoint was written under another runtime"
    ):
        assert len(warn_runtime_differences(dict(runtime=other), "resume")) == len(lines)
    assert "none recorded" in compare_runtime(None)[0]


def test_numba_thread_settings_alone_are_listed_but_not_warned_about(tmp_path, vae_adam):
    """The Numba kernels give the same bits for any thread count: a resume under other Numba
    thread settings is reported by compare_runtime but warns only beside a difference that can
    change a result."""
    model, opt = vae_adam
    rt = load_checkpoint(save_checkpoint(tmp_path / "ck.npz", model, opt, dict(epoch=1))).state
    other = json.loads(json.dumps(rt["runtime"]))
    other["numba"]["num_threads"] += 1
    other["numba"]["kernel_threads"] = "7"
    lines = compare_runtime(other, runtime_info())
    assert [line.split(":")[0] for line in lines] == ["Numba threads", "LVMCORE_KERNEL_THREADS"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_runtime_differences(dict(runtime=other), "resume") == lines
    other["numpy"] = "1.0.0"
    with pytest.warns(RuntimeDifferenceWarning, match=r"NumPy version.*\n  Numba threads"):
        assert len(warn_runtime_differences(dict(runtime=other), "resume")) == 3
