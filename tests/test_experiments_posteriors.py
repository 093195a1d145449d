"""The posterior experiments script: skips without data, runs a model end to end, tabulates."""

import numpy as np

from lvmcore.data import Dataset
from lvmcore.experiments import posteriors


def test_skips_with_a_message_when_the_data_are_absent(tmp_path, capsys):
    assert posteriors.main(["--data", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 0
    assert "skipping the posterior experiments" in capsys.readouterr().out


def test_run_one_and_the_tables(tmp_path):
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.random((n, 784)) < 0.2).astype(np.float32)

    data = Dataset(split(100), split(20), split(30), "binarized_mnist", (28, 28))
    rows = [
        posteriors.run_one(key, data, 1, tmp_path, 0, 5, 10, False)
        for key in ("vae", "vae-2l", "iaf2")
    ]
    assert [r["active_units"].__len__() for r in rows] == [1, 2, 1]
    for r in rows:
        assert r["nll_n"] == 10 and np.isfinite(r["test_nll"]) and np.isfinite(r["gap"])
        assert r["gap"] == -r["test_nll"] - r["test_elbo"]
    text = "\n".join(posteriors.tables(rows))
    assert text.count("| model | epochs | test NLL (K=5, n=10) |") == 2
    assert "| VAE, 2 layers | 1 |" in text and "| VAE, diagonal | 1 |" in text
    assert "| VAE, IAF T=2 | 1 |" in text
