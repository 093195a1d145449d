"""The README's Python examples run as written."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_python_api_example_trains_and_evaluates(capsys):
    code = _python_blocks()[0]
    assert "loss_and_grads" in code
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    values = dict(re.findall(r"^(test [^\n]*?) (-?\d+\.\d+)", out, flags=re.M))
    assert len(values) == 3 and all(np.isfinite(float(v)) for v in values.values())


def test_checkpoint_reading_example(tmp_path, monkeypatch):
    from lvmcore.cli import main

    monkeypatch.chdir(tmp_path)
    main(["train", "--epochs", "1", "--no-progress", "--latent", "3", "--hidden", "8"])
    code = _python_blocks()[1]
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    from lvmcore.checkpoint import load_model

    model = load_model("runs/vae-digits")
    np.testing.assert_allclose(scope["probs"], model.reconstruct(scope["x"]), rtol=1e-5, atol=1e-6)
