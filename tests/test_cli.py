"""The ``lvmcore`` command line: train, eval, resume, and one-line errors."""

import json
import math
import subprocess
import sys

import pytest

import lvmcore.data
import lvmcore.train
from lvmcore import TrainingDivergedError
from lvmcore.checkpoint import load_checkpoint
from lvmcore.cli import main

TINY = ["--latent", "2", "--hidden", "16", "--batch-size", "200", "--no-progress"]
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "samples.png", "reconstructions.png", "bounds.png")


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), "--seed", "1", *TINY]) == 0
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    stdout = capsys.readouterr().out
    assert "2 epochs (16 steps)" in stdout and f"wrote {out}" in stdout

    assert main(["eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "test" and result["n"] == 180 and result["epoch"] == 2
    assert result["bound_name"] == "ELBO"
    assert math.isfinite(result["bound"]) and result["bound"] < 0
    assert "test ELBO" in capsys.readouterr().out


def test_train_iwae_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    main(
        [
            "train",
            "--model",
            "iwae",
            "--k",
            "3",
            "--estimator",
            "dreg",
            "--epochs",
            "1",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert main(["eval", str(out), "--split", "valid"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["bound_name"] == "IWAE bound (K=3)" and result["n"] == 180
    assert math.isfinite(result["bound"])
    assert main(["eval", str(out), "--k", "200", "--subset", "40"]) == 0
    result = json.loads((out / "eval.json").read_text())
    # K-sample NLL <= -bound(K=3) <= -ELBO up to noise; diagnostics are reported
    assert result["nll_k"] == 200 and result["nll_n"] == 40 and math.isfinite(result["nll"])
    assert result["elbo"] < result["bound"]
    assert 0 <= result["active_units"] <= 2 and len(result["kl_per_dim"]) == 2
    assert "NLL (K=200, n=40)" in capsys.readouterr().out
    for argv, flag in (
        (["--model", "iwae", "--beta", "2"], "--beta"),
        (["--model", "vae", "--k", "5"], "--k"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["train", "--out", str(tmp_path / "x"), *argv, *TINY])
        assert info.value.code == 2
        assert f"expected no {flag} with --model" in capsys.readouterr().err


def test_resume_from_the_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    main(["train", "--epochs", "1", "--out", out, "--lr", "0.01", *TINY])
    # Left-out training flags (--lr, --batch-size) and the data come from the checkpoint.
    main(["train", "--epochs", "2", "--out", out, "--resume", "--no-progress"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2]
    state = load_checkpoint(tmp_path / "run" / "checkpoint.npz").state
    assert state["hyper"]["lr"] == 0.01 and state["hyper"]["batch_size"] == 200
    assert main(["train", "--out", out, "--resume"]) == 0  # already at 2 of 2 epochs
    assert "pass --epochs N with N > 2" in capsys.readouterr().out


def test_download_mnist_calls_the_data_module(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        lvmcore.data,
        "download_binarized_mnist",
        lambda dest, progress=True: calls.append((dest, progress)) or dest,
    )
    assert main(["download-mnist", str(tmp_path), "--no-progress"]) == 0
    assert calls == [(str(tmp_path), False)]
    assert f"train --data {tmp_path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["train", "--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
        (["train", "--hidden", "a,b"], "argument --hidden: expected comma-separated positive"),
        (["train", "--likelihood", "poisson"], "argument --likelihood: invalid choice"),
        (["train", "--momentum", "1.5"], "argument --momentum: expected a number in [0, 1)"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_user_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", str(tmp_path / "missing")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lvmcore: error: ") and err.count("\n") == 1
    assert str(tmp_path / "missing") in err and "Traceback" not in err

    out = str(tmp_path / "run")
    main(["train", "--epochs", "1", "--out", out, *TINY])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "1", "--out", out, *TINY])  # would overwrite the run
    assert info.value.code == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "2", "--out", out, "--resume", "--latent", "3"])
    assert info.value.code == 2
    assert "expected no model flags with --resume, got --latent" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "1", "--data", str(tmp_path / "nope"), "--out", out])
    assert info.value.code == 2
    assert "lvmcore: error: load_dataset: expected 'digits', 'mnist'" in capsys.readouterr().err


def test_divergence_exits_1(tmp_path, monkeypatch, capsys):
    def diverging_fit(*args, **kwargs):
        raise TrainingDivergedError("fit: expected a finite loss, got nan at epoch 2, step 3")

    monkeypatch.setattr(lvmcore.train, "fit", diverging_fit)
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *TINY])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == "lvmcore: error: fit: expected a finite loss, got nan at epoch 2, step 3\n"


def test_python_m_lvmcore(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvmcore",
            "train",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--threads",
            "1",
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 epoch (8 steps)" in proc.stdout
    assert (out / "checkpoint.npz").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "lvmcore", "eval", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert math.isfinite(json.loads((out / "eval.json").read_text())["bound"])


def test_train_help_lists_each_models_flags_in_its_own_group(capsys):
    from lvmcore.models import MODELS

    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    groups = {}
    for block in text.split("\n\n"):
        head, _, body = block.partition("\n")
        if head.startswith("--model ") and head.endswith(":"):
            groups[head[len("--model ") : -1]] = body
    seen = set()
    for name, cls in MODELS.items():
        own = [f.option for f in cls.flags if f.option not in seen]
        for option in own:
            assert f"  {option} " in groups[name] or f"  {option}\n" in groups[name], option
        seen.update(f.option for f in cls.flags)
    # a flag two models declare is listed once, with both models' help
    assert "catvae: samples per example for vimco (default: 5)" in " ".join(groups["iwae"].split())
