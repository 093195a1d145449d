"""``lvmcore train --model cvae|mvae|aae``, ``eval``, ``sample``, ``explore`` and ``train-prior`` on
the embedded digits, and their one-line errors."""

import json

import numpy as np
import pytest

from lvmcore.cli import main
from lvmcore.cli.explore import explore_run
from lvmcore.cli.sample import sample_run

FAST = ["--hidden", "16", "--batch-size", "500", "--no-progress", "--epochs", "1"]


def _train(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["train", "--model", name, "--out", str(out), *FAST, *extra]) == 0
    return out


def _error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_cvae_train_eval_sample_explore(tmp_path, capsys):
    out = _train(tmp_path, "cvae", "--latent", "2")
    assert main(["eval", str(out), "--k", "20"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["n_classes"] == 10 and result["nll_k"] == 20 and np.isfinite(result["nll"])
    assert main(["sample", str(out), "--label", "3", "--n", "8"]) == 0
    assert (out / "sample-label3.png").is_file()
    drawn = sample_run(out, n=12, seed=1)
    assert drawn["images"].shape == (12, 64) and list(drawn["labels"][:3]) == [0, 1, 2]
    assert main(["explore", str(out), "--from-label", "1", "--to-label", "7"]) == 0
    for name in ("interpolation", "traversal", "manifold", "latent_scatter", "arithmetic"):
        assert (out / f"{name}.png").is_file(), name
    assert (out / "analogies.png").is_file()
    capsys.readouterr()
    err = _error(capsys, ["sample", str(out), "--label", "10"])
    assert r"expected --label in [0, 10) (the model's classes), got 10" in err
    err = _error(capsys, ["sample", str(out), "--n", "0"])
    assert "argument --n: expected a positive integer, got '0'" in err
    err = _error(capsys, ["explore", str(out), "--from-label", "1"])
    assert "expected --from-label and --to-label together" in err


def test_cvae_refuses_data_without_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    splits = {
        s: (rng.random((n, 784)) < 0.3).astype(np.uint8)
        for s, n in (("train", 20), ("valid", 5), ("test", 5))
    }
    np.savez(tmp_path / "plain.npz", **splits)
    err = _error(
        capsys,
        [
            "train",
            "--model",
            "cvae",
            "--data",
            str(tmp_path / "plain.npz"),
            "--out",
            str(tmp_path / "r"),
            *FAST,
        ],
    )
    assert "expected data with labels for --model cvae" in err
    labels = dict(
        train_labels=np.arange(20) % 3, valid_labels=np.arange(5) % 3, test_labels=np.arange(5) % 3
    )
    np.savez(tmp_path / "labelled.npz", **splits, **labels)
    out = tmp_path / "r2"
    assert (
        main(
            [
                "train",
                "--model",
                "cvae",
                "--data",
                str(tmp_path / "labelled.npz"),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert main(["eval", str(out), "--k", "0"]) == 0
    assert json.loads((out / "eval.json").read_text())["n_classes"] == 3


def test_mvae_and_aae_train_eval_explore(tmp_path, capsys):
    mvae = _train(tmp_path, "mvae", "--latent", "2")
    assert main(["eval", str(mvae), "--k", "20"]) == 0
    result = json.loads((mvae / "eval.json").read_text())
    assert result["cross_ll_bottom_given_top"] < 0 and np.isfinite(result["nll"])
    explore_run(mvae)
    assert (mvae / "cross_generation.png").is_file() and (mvae / "manifold.png").is_file()
    aae = _train(tmp_path, "aae", "--latent", "2", "--target", "mixture", "--components", "4")
    assert (aae / "aggregate_posterior.png").is_file()
    assert main(["eval", str(aae), "--k", "20"]) == 0
    result = json.loads((aae / "eval.json").read_text())
    assert result["elbo"] <= -result["nll"] + 1.0
    assert main(["train", "--out", str(aae), "--resume", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    err = _error(capsys, ["sample", str(aae), "--label", "1"])
    assert "expected no --label: the aae model is not conditioned on labels" in err
    err = _error(
        capsys, ["train", "--model", "mvae", "--kl", "sampled", "--out", str(tmp_path / "x"), *FAST]
    )
    assert "expected no --kl with --model mvae" in err


def test_vqvae_prior_train_eval_sample(tmp_path, capsys):
    out = _train(tmp_path, "vqvae", "--codes", "8", "--slots", "3", "--code-dim", "2")
    assert main(["sample", str(out), "--n", "4"]) == 0  # no prior yet: the uniform one
    assert "uniform code prior" in capsys.readouterr().out
    assert main(["train-prior", str(out), "--epochs", "2", "--hidden", "8"]) == 0
    assert (out / "code_prior.npz").is_file()
    assert main(["eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["uniform_bits_per_code"] == pytest.approx(3.0)
    assert result["prior_bound"] <= result["bound"] and np.isfinite(result["prior_bits_per_code"])
    assert "with the learned prior" in capsys.readouterr().out
    drawn = sample_run(out, n=6)
    assert drawn["codes"].shape == (6, 3) and drawn["path"].endswith("sample-prior.png")
    err = _error(capsys, ["explore", str(out)])
    assert "expected a model with a continuous latent space" in err
    err = _error(capsys, ["train-prior", str(out), "--hidden", "1"])
    assert "expected --hidden widths >= 2" in err
    vae = _train(tmp_path, "vae", "--latent", "2")
    err = _error(capsys, ["train-prior", str(vae)])
    assert "expected the run of a VQ-VAE" in err
