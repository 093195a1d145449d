"""benchmarks/compare_gpu.py runs end to end: on a GPU when there is one, otherwise through the
CUDA emulator, at its ``--small`` sizes (a check of the script, not a measurement)."""

import re
import sys
from pathlib import Path

import pytest
from cuda_emu import fake_cupy

import lvmcore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_gpu

_REAL = lvmcore.available_backends()["cupy"] == "available"
_EMU_OK, _EMU_WHY = fake_cupy.available()


def _check_output(out):
    assert re.search(r"copy bandwidth \d+ GB/s", out)
    for name in (
        "importance weights",
        "bernoulli loglik",
        "reparam sample",
        "gumbel-softmax",
        "nearest code N=300 E=8 M=512",
        "nearest code N=300 E=8 M=8192",
        "train step B=10 K=3",
        "K=20 log-likelihood",
    ):
        line = next(line for line in out.splitlines() if name in line)
        assert re.search(r"lvmcore +\d+\.\d+ ms", line), line


@pytest.mark.gpu
@pytest.mark.skipif(not _REAL, reason=lvmcore.available_backends()["cupy"])
def test_compare_gpu_runs_on_the_device(capsys):
    assert compare_gpu.main(["--small", "--repeat", "2"]) == 0
    _check_output(capsys.readouterr().out)


@pytest.mark.skipif(not _EMU_OK, reason=_EMU_WHY)
def test_compare_gpu_runs_on_the_emulator(capsys):
    with fake_cupy.installed():
        assert compare_gpu.main(["--small", "--repeat", "1"]) == 0
    _check_output(capsys.readouterr().out)


def test_compare_gpu_without_a_device_says_why(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    from lvmcore.backend import _availability

    _availability.cache_clear()
    try:
        assert compare_gpu.main(["--small"]) == 2
    finally:
        _availability.cache_clear()
    assert "needs a CUDA device through CuPy: cupy: not installed" in capsys.readouterr().err
