"""The engine on CuPy arrays end to end: every model trained and evaluated with ``--device cuda``.

Runs on a CUDA device when CuPy has one (``cuda``); everywhere else through the CUDA emulator's
stand-in for CuPy (``emulated``, tests/cuda_emu), whose device arrays refuse implicit host copies
and NumPy operands as CuPy's do, so a host/device mix anywhere in the engine fails here on the
CPU too, and whose kernels are the CUDA sources compiled for the host.

Each run on the device is compared with the same run on the CPU: the noise is the same Philox
stream on both (lvmcore.noise), so the bounds agree to float rounding, not just in distribution.
"""

import json
import sys

import numpy as np
import pytest
from cuda_emu import fake_cupy

import lvmcore
from lvmcore import noise
from lvmcore.backend import _availability
from lvmcore.cli import main
from lvmcore.data import load_dataset
from lvmcore.exceptions import RuntimeDifferenceWarning
from lvmcore.models import IWAE, VAE, VQVAE, CatVAE
from lvmcore.train import fit

_REAL = lvmcore.available_backends()["cupy"] == "available"
_EMU_OK, _EMU_WHY = fake_cupy.available()
# Bounds of a device run against the CPU run: float32 sums in another order (cuBLAS, CUDA's
# logf/expf) over one or two epochs of the digits.
RTOL = 2e-4


@pytest.fixture(
    params=[
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not _REAL, reason=lvmcore.available_backends()["cupy"]),
            ],
        ),
        pytest.param("emulated", marks=pytest.mark.skipif(not _EMU_OK, reason=_EMU_WHY)),
    ]
)
def cupy(request):
    """CuPy on a GPU, or the emulator's stand-in installed as ``cupy`` for the test."""
    if request.param == "cuda":
        import cupy

        yield cupy
    else:
        with fake_cupy.installed() as fake:
            yield fake


def _run(argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr().out


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _eval(run):
    return json.loads((run / "eval.json").read_text())


MODELS = {
    "vae": ["--model", "vae"],
    "vae-gaussian-sampled-kl": [
        "--model",
        "vae",
        "--likelihood",
        "gaussian",
        "--kl",
        "sampled",
        "--samples",
        "2",
        "--free-bits",
        "0.1",
    ],
    "iwae-dreg": ["--model", "iwae", "--k", "5", "--estimator", "dreg"],
    "iwae-piwae": ["--model", "iwae", "--k", "4", "--objective", "piwae", "--groups", "2"],
    "vqvae-ema": [
        "--model",
        "vqvae",
        "--codes",
        "32",
        "--slots",
        "4",
        "--code-dim",
        "8",
        "--codebook-update",
        "ema",
    ],
    "vqvae-kmeans-reset": [
        "--model",
        "vqvae",
        "--codes",
        "64",
        "--slots",
        "2",
        "--code-dim",
        "4",
        "--kmeans-init",
        "--reset-dead-codes",
        "--dead-code-steps",
        "1",
    ],
    "catvae-gumbel": ["--model", "catvae", "--estimator", "gumbel"],
    "catvae-nvil": ["--model", "catvae", "--estimator", "nvil"],
}


@pytest.mark.parametrize("name", list(MODELS))
def test_train_and_eval_on_the_device_match_the_cpu(cupy, name, tmp_path, capsys):
    common = ["train", *MODELS[name], "--epochs", "1", "--batch-size", "200", "--no-progress"]
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    _run([*common, "--out", str(cpu)], capsys)
    out = _run([*common, "--out", str(gpu), "--device", "cuda"], capsys)
    assert "on cuda" in out
    for a, b in zip(_metrics(gpu), _metrics(cpu), strict=True):
        for key in ("train_bound", "valid_bound", "train_loss"):
            assert a[key] == pytest.approx(b[key], rel=RTOL), key

    # The device run's checkpoint is an ordinary NumPy checkpoint.
    with np.load(gpu / "checkpoint.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)

    ev = ["eval", "--k", "20", "--subset", "30", "--batch-size", "90"]
    _run([*ev, str(gpu), "--device", "cuda"], capsys)
    on_device = _eval(gpu)
    with pytest.warns(RuntimeDifferenceWarning, match="device: cuda.* when saved, cpu now"):
        _run([*ev, str(gpu)], capsys)  # the device run, evaluated on the CPU
    on_cpu = _eval(gpu)
    with pytest.warns(RuntimeDifferenceWarning, match="device: cpu when saved, cuda"):
        _run([*ev, str(cpu), "--device", "cuda"], capsys)  # the CPU run, on the device
    cpu_on_device = _eval(cpu)
    _run([*ev, str(cpu)], capsys)
    cpu_on_cpu = _eval(cpu)
    for key in ("bound", "elbo", "nll"):
        if key in on_cpu:
            assert on_device[key] == pytest.approx(on_cpu[key], rel=RTOL), key
            assert cpu_on_device[key] == pytest.approx(cpu_on_cpu[key], rel=RTOL), key
            assert on_cpu[key] == pytest.approx(cpu_on_cpu[key], rel=RTOL), key


def test_resume_moves_between_devices(cupy, tmp_path, capsys):
    """A run started on the CPU goes on on the device and back, with the same bounds as a run
    that stayed on the CPU (parameters and Adam state travel through the checkpoint)."""
    common = ["train", "--model", "iwae", "--k", "3", "--batch-size", "300", "--no-progress"]
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    _run([*common, "--epochs", "3", "--out", str(straight)], capsys)
    _run([*common, "--epochs", "1", "--out", str(moved)], capsys)
    resume = ["train", "--resume", "--out", str(moved), "--no-progress"]
    with pytest.warns(RuntimeDifferenceWarning, match="device: cpu when saved, cuda"):
        _run([*resume, "--epochs", "2", "--device", "cuda"], capsys)
    with pytest.warns(RuntimeDifferenceWarning, match="device: cuda.* when saved, cpu now"):
        _run([*resume, "--epochs", "3"], capsys)
    for a, b in zip(_metrics(moved), _metrics(straight), strict=True):
        assert a["valid_bound"] == pytest.approx(b["valid_bound"], rel=RTOL)


def test_models_move_to_the_device_and_back(cupy):
    for model in (
        VAE(12, 3, hidden=(7,)),
        IWAE(12, 3, hidden=(7,), k=4),
        VQVAE(12, codes=5, slots=2, code_dim=3, hidden=(7,)),
        CatVAE(12, n_latents=2, n_categories=3, hidden=(7,), estimator="nvil"),
    ):
        host = {k: v.copy() for k, v in model.parameters().items()}
        model.to(cupy)
        assert model.xp is cupy
        assert all(isinstance(v, cupy.ndarray) for v in model.parameters().values())
        assert all(isinstance(v, cupy.ndarray) for v in model.gradients().values())
        model.to(np)
        assert model.xp is np
        for k, v in model.parameters().items():
            np.testing.assert_array_equal(v, host[k])


def test_mixing_host_and_device_arrays_is_a_type_error(cupy, rng):
    data = load_dataset("digits")
    model = VAE(data.train.shape[1], 4, hidden=(16,)).to(cupy)
    x = data.train[:10].astype(np.float32)
    with pytest.raises(TypeError, match="x is numpy, the model's parameters is cupy"):
        model.loss_and_grads(x, rng)
    with pytest.raises(TypeError, match="x is numpy, the model's parameters is cupy"):
        model.log_likelihood(x, rng, k=3)
    host_model = VAE(data.train.shape[1], 4, hidden=(16,))
    device_data = type(data)(
        **{**data._asdict(), "train": cupy.asarray(data.train), "valid": cupy.asarray(data.valid)}
    )
    with pytest.raises(TypeError, match="dataset.train on the model's device"):
        fit(host_model, device_data, epochs=1)


def test_device_noise_is_the_cpu_noise(cupy):
    """lvmcore.noise: uniforms bit for bit, normals and Gumbels to float rounding."""
    like_host, like_device = np.zeros(1, np.float32), cupy.zeros(1, np.float32)
    for dtype in (np.float32, np.float64):
        for draw, exact in (
            (noise.uniform, True),
            (noise.standard_normal, False),
            (noise.standard_gumbel, False),
        ):
            a = draw(np.random.default_rng(5), (3, 7, 5), dtype, like_host)
            b = cupy.asnumpy(draw(np.random.default_rng(5), (3, 7, 5), dtype, like_device))
            assert a.dtype == b.dtype == dtype and a.shape == b.shape == (3, 7, 5)
            if exact:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(
                    a, b, rtol=16 * np.finfo(dtype).eps, atol=16 * np.finfo(dtype).eps
                )


def test_cuda_without_cupy_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    _availability.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "train",
                    "--device",
                    "cuda",
                    "--epochs",
                    "1",
                    "--out",
                    str(tmp_path / "r"),
                    "--no-progress",
                ]
            )
    finally:
        _availability.cache_clear()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "backend 'cupy' is unavailable: cupy: not installed" in err
    assert "lvmcore[cuda]" in err
    assert not (tmp_path / "r").exists()
