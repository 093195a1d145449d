"""The IWAE paper's schedule (lvmcore.experiments.iwae_paper --schedule paper): its arithmetic,
and a resumed run that continues bit for bit, on a tiny budget (the embedded digits, two
stages: 1 + 3 epochs)."""

import json

import numpy as np
import pytest

from lvmcore.checkpoint import load_checkpoint
from lvmcore.data import load_dataset
from lvmcore.experiments import iwae_paper as E
from lvmcore.train import fit


def test_schedule_arithmetic():
    sched = E.paper_schedule()
    assert [e for e, _ in sched] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert sum(e for e, _ in sched) == 3280 == E.stage_ends(sched)[-1]
    lrs = [lr for _, lr in sched]
    want = [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    assert E.stage_ends(E.paper_schedule(3)) == [1, 4, 13]
    for bad in (0, 9, 2.0):
        with pytest.raises(ValueError, match="expected stages to be an int in"):
            E.paper_schedule(bad)


ARGS = ["--schedule", "paper", "--data", "digits", "--nll-k", "3", "--curve-subset", "12"]
ARGS += ["--nll-subset", "20", "--no-progress"]


def _params(run):
    return load_checkpoint(run / "vae" / "checkpoint.npz")[1]


def test_resumed_schedule_continues_bit_for_bit(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    E.main([*ARGS, "--stages", "2", "--out", str(whole)])
    capsys.readouterr()
    # interrupted after stage 0, then again in the middle of stage 1 (epoch 2 of 1..4)
    E.main([*ARGS, "--stages", "1", "--out", str(parts)])
    model = E.MODELS["vae"][1](64, 0)
    lr1 = E.paper_schedule(2)[1][1]
    data = load_dataset("digits")
    fit(
        model,
        data,
        epochs=2,
        batch_size=20,
        lr=lr1,
        adam_eps=1e-4,
        out_dir=parts / "vae",
        resume=True,
        progress=False,
    )
    E.main([*ARGS, "--stages", "2", "--resume", "--out", str(parts)])
    out = capsys.readouterr().out
    a, b = _params(whole), _params(parts)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    state = load_checkpoint(parts / "vae" / "checkpoint.npz")[3]
    assert state["epoch"] == 4 and len(state["history"]) == 4  # a checkpoint per epoch
    curve_a = json.loads((whole / "vae" / "curve.json").read_text())
    curve_b = json.loads((parts / "vae" / "curve.json").read_text())
    assert [c["epoch"] for c in curve_b] == [1, 4] and curve_a == curve_b
    assert [c["lr"] for c in curve_b] == [1e-3, lr1]
    assert (parts / "vae" / "curve.png").exists()
    assert "vae stage 1 epoch 4" in out and "published, one-layer VAE: 88.71" in out
    results = json.loads((parts / "results.json").read_text())
    assert results[0]["epochs"] == 4 and results[0]["nll_n"] == 20
    # the training time is every epoch's, over the three sittings
    assert results[0]["train_seconds"] == pytest.approx(sum(h["seconds"] for h in state["history"]))
    assert results[0]["seconds_per_epoch"] == pytest.approx(results[0]["train_seconds"] / 4)
    # resuming a finished run trains nothing and reports the same
    E.main([*ARGS, "--stages", "2", "--resume", "--out", str(parts)])
    again = json.loads((parts / "results.json").read_text())
    assert again[0]["test_nll"] == results[0]["test_nll"]


def test_bad_flags(capsys):
    with pytest.raises(SystemExit):
        E.main(["--schedule", "paper", "--stages", "0", "--data", "digits"])
    with pytest.raises(SystemExit):
        E.main(["--resume", "--data", "digits"])
    assert "--stages must be in [1, 8]" in capsys.readouterr().err


def test_short_schedule_still_runs(tmp_path, capsys):
    E.main(
        ["--data", "digits", "--epochs", "1", "--models", "vae,dreg50", "--nll-k", "3"]
        + ["--nll-subset", "10", "--out", str(tmp_path), "--no-progress"]
    )
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in rows] == ["vae", "dreg50"] and rows[0]["nll_n"] == 10
    assert "| IWAE-DReG, K=50 | 1 |" in capsys.readouterr().out


def test_a_run_records_its_data_so_eval_needs_no_data_flag(tmp_path, rng, capsys, monkeypatch):
    """The schedule trains on a data file; its checkpoint records the file's absolute path
    (load_dataset's ``source``), so ``lvmcore eval`` on the run folder, from another
    directory, finds the data without --data."""
    from lvmcore.cli import main

    splits = {
        s: (rng.random((n, 784)) < 0.2).astype(np.uint8)
        for s, n in (("train", 60), ("valid", 20), ("test", 20))
    }
    np.savez(tmp_path / "tiny.npz", **{s: np.packbits(x, axis=1) for s, x in splits.items()})
    monkeypatch.chdir(tmp_path)
    args = ["--schedule", "paper", "--data", "tiny.npz", "--nll-k", "3", "--curve-subset", "5"]
    E.main([*args, "--nll-subset", "5", "--no-progress", "--stages", "1", "--out", "run"])
    state = load_checkpoint(tmp_path / "run" / "vae" / "checkpoint.npz")[3]
    assert state["dataset"]["source"] == str((tmp_path / "tiny.npz").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "vae"), "--k", "3", "--subset", "5"]) == 0
    assert "test NLL" in capsys.readouterr().out
    assert load_dataset("digits").source == "digits"
