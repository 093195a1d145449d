"""The VQ-VAE codebook experiment script end to end, on the embedded digits."""

import json
import math

from lvmcore.experiments import vqvae_mnist


def test_vqvae_script_writes_one_strict_row_per_configuration(tmp_path, capsys):
    out = tmp_path / "vq"
    argv = ["--data", "digits", "--epochs", "1", "--configs", "loss,ema-reset", "--codes", "16"]
    argv += ["--slots", "2", "--code-dim", "4", "--hidden", "16", "--out", str(out)]
    vqvae_mnist.main([*argv, "--no-progress"])
    rows = json.loads(
        (out / "results.json").read_text(), parse_constant=lambda c: 1 / 0
    )  # NaN/Infinity are not JSON
    assert [r["config"] for r in rows] == ["loss", "ema-reset"]
    for r in rows:
        assert r["epochs"] == 1 and 0 <= r["test_dead_codes"] <= 16
        assert 1 <= r["test_perplexity"] <= 16
        assert math.isclose(r["test_elbo"], -r["test_recon_nll"] - 2 * math.log(16))
        assert (out / r["config"] / "checkpoint.npz").exists()
    assert "| EMA + reset |" in capsys.readouterr().out
