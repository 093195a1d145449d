"""The prior and collapse experiment scripts end to end at a toy budget on the embedded digits
(the MNIST runs of docs/results-priors.md use the same code with larger budgets)."""

import json
import math

from lvmcore.experiments import collapse, priors


def test_collapse_script(tmp_path, capsys):
    argv = ["--data", "digits", "--epochs", "1", "--nll-k", "5", "--nll-subset", "20"]
    argv += ["--models", "factorized,made-freebits,made-context", "--context", "4"]
    assert collapse.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in rows] == ["factorized", "made-freebits", "made-context"]
    for r in rows:
        assert 0 <= r["mutual_information"] <= math.log(r["mutual_information_rows"]) + 1e-9
        assert r["kl"] >= 0 and 0 <= r["active_units"] <= r["latent_dim"]
        assert r["test_nll"] > 0 and r["nll_k"] == 5 and r["nll_n"] == 20
    out = capsys.readouterr().out
    assert "| (d) MADE + free bits (0.25 nats/unit) | 1 |" in out


def test_priors_script(tmp_path, capsys):
    argv = ["--data", "digits", "--epochs", "1", "--levels-epochs", "1", "--nll-k", "5"]
    argv += ["--nll-subset", "20", "--models", "standard,vamp,flow", "--pseudo-inputs", "5"]
    assert priors.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in rows["priors"]] == ["standard", "vamp", "flow"]
    assert [r["model"] for r in rows["levels"]] == list(priors.level_models())
    for r in rows["levels"]:
        assert 0 < r["nll_bpd"] < 10 and 0 < r["elbo_bpd"] < 10
    out = capsys.readouterr().out
    assert "| VampPrior, 5 pseudo-inputs | 1 |" in out and "bits/dim" in out


def test_missing_data_is_skipped_with_a_message(tmp_path, capsys):
    missing = str(tmp_path / "nope.npz")
    assert collapse.main(["--data", missing, "--out", str(tmp_path / "c")]) == 0
    assert "skipping the collapse experiment" in capsys.readouterr().out
