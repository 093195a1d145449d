"""benchmarks/benchmarks/gemm_bound.py replays exactly the GEMMs of lvmcore's fused training
step and of its chunked evaluation: the same products (shapes and transposes), nothing else."""

import sys
from pathlib import Path

import numpy as np
import pytest

from lvmcore.models import IWAE, VAE, CatVAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmarks import gemm_bound


def _record(monkeypatch):
    calls = []
    real = np.matmul

    def matmul(a, b, *args, **kwargs):
        calls.append((a.shape, b.shape, a.flags.c_contiguous, b.flags.c_contiguous))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(np, "matmul", matmul)
    return calls


@pytest.mark.parametrize("batch, k", [(3, 1), (2, 4)])
def test_step_gemms_are_the_steps(monkeypatch, batch, k):
    model = VAE(784, 50, (200, 200)) if k == 1 else IWAE(784, 50, (200, 200), k=k)
    x = (np.random.default_rng(0).random((batch, 784)) < 0.2).astype(np.float32)
    model.loss_and_grads(x, np.random.default_rng(1))  # buffers allocated
    run = gemm_bound.step_gemms(batch, k)
    calls = _record(monkeypatch)
    model.loss_and_grads(x, np.random.default_rng(1))
    ours = sorted(calls)
    calls.clear()
    run()
    assert sorted(calls) == ours
    flops = sum(2 * a[0] * b[-1] * a[-1] if len(a) == 2 else 2 * b[0] * b[1] for a, b, *_ in ours)
    assert gemm_bound.step_flops(batch, k) == flops


def test_step_gemms_are_the_categorical_vaes_step(monkeypatch):
    model = CatVAE(784, 20, 10, (512, 256), estimator="gumbel")
    x = (np.random.default_rng(0).random((3, 784)) < 0.2).astype(np.float32)
    model.loss_and_grads(x, np.random.default_rng(1))
    run = gemm_bound.step_gemms(3, 1, sizes=gemm_bound.CATVAE_SIZES)
    calls = _record(monkeypatch)
    model.loss_and_grads(x, np.random.default_rng(1))
    ours = sorted(calls)
    calls.clear()
    run()
    assert sorted(calls) == ours
    flops = sum(2 * a[0] * b[-1] * a[-1] if len(a) == 2 else 2 * b[0] * b[1] for a, b, *_ in ours)
    assert gemm_bound.step_flops(3, 1, sizes=gemm_bound.CATVAE_SIZES) == flops


def test_eval_gemms_are_the_evaluations(monkeypatch):
    model = VAE(784, 50, (200, 200))
    x = (np.random.default_rng(0).random((5, 784)) < 0.2).astype(np.float32)
    model.log_likelihood(x, np.random.default_rng(1), k=7, batch_size=3)
    run, flops = gemm_bound.eval_gemms(5, 7, batch=3, chunk_rows=model.eval_chunk_rows)
    calls = _record(monkeypatch)
    model.log_likelihood(x, np.random.default_rng(1), k=7, batch_size=3)
    decoder = sorted(c[:2] for c in calls)  # (the encoder runs once per batch, through ``@``)
    calls.clear()
    run()
    assert flops == sum(2 * a[0] * a[1] * b[1] for a, b, *_ in calls)
    assert sorted(c[:2] for c in calls if c[0][0] not in (3, 2)) == decoder  # 3 + 2 rows


def test_parameter_shapes_are_the_models():
    """The benchmarks' one list of the IWAE-paper and categorical models' parameter shapes."""
    iwae_paper = [p.shape for p in VAE(784, 50, (200, 200)).parameters().values()]
    assert gemm_bound.parameter_shapes() == iwae_paper
    catvae = CatVAE(784, 20, 10, (512, 256), estimator="gumbel")  # as compare_peers times it
    want = [p.shape for k, p in catvae.parameters().items() if not k.startswith("state.")]
    assert gemm_bound.parameter_shapes(gemm_bound.CATVAE_SIZES) == want
