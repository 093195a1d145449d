"""The K-sample evaluation's memory does not grow with K: the VAE's chunked path
(``log_weight_sampler`` through ``lvmcore.evaluate.log_likelihood``) reuses the decoder's buffers
across chunks and makes no (K, B, D) array."""

import tracemalloc

import numpy as np
import pytest

import lvmcore.evaluate
from lvmcore.models import VAE


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_peak_memory_of_the_k_sample_evaluation_is_flat_in_k(dtype, workers, monkeypatch):
    """On one thread and on two (each worker thread with its own decoder buffers, made when
    the evaluation's pool starts, so the same for every K)."""
    monkeypatch.setattr(lvmcore.evaluate, "engine_worker_count", lambda: workers)
    B, D, chunk = 4, 784, 16
    x = (np.random.default_rng(0).random((B, D)) < 0.3).astype(dtype)
    model = VAE(D, 8, (32, 32), dtype=dtype)
    model.init_output_bias(x)

    def evaluate(k):
        return lambda: model.log_likelihood(x, np.random.default_rng(1), k=k, chunk_size=chunk)

    evaluate(chunk)()  # the decoder's buffers are allocated once, at the first chunk
    small, large = _peak_bytes(evaluate(2 * chunk)), _peak_bytes(evaluate(64 * chunk))
    # 32x the samples: the same buffers; only the per-chunk partial sums the fold keeps (B
    # float64 in an array object per chunk, lvmcore.distributed.fold_logsumexp_grid) grow,
    # far below one chunk's decoder output (200 KB in float32), let alone a (K, B, D) array
    # With two workers the small run may have had one thread take both chunks while the
    # large one has both threads' buffers (x, h0, h1 and y: 856 values a row) and temporaries
    # at once: allow a second thread's worth twice over, still 30x below a (K, B, D) array
    per_thread = chunk * B * (8 + 32 + 32 + D) * np.dtype(dtype).itemsize
    assert large - small < (64 - 2) * 512 + (workers - 1) * 2 * per_thread
    assert 64 * chunk * B * D * np.dtype(dtype).itemsize > 25 * (64 * 512 + 2 * per_thread)
    assert chunk * B * D * np.dtype(dtype).itemsize >= 200_000
    if workers == 1:  # the calling thread's buffers (a worker's go with its thread)
        assert model.decoder._buffers.arrays["y"].shape[0] == chunk * B
