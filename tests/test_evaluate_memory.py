"""The K-sample evaluation's memory does not grow with K: the VAE's chunked path
(``log_weight_sampler`` through ``lvmcore.evaluate.log_likelihood``) reuses the decoder's buffers
across chunks and makes no (K, B, D) array."""

import tracemalloc

import numpy as np
import pytest

from lvmcore.models import VAE


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_peak_memory_of_the_k_sample_evaluation_is_flat_in_k(dtype):
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
    assert large - small < (64 - 2) * 512
    assert chunk * B * D * np.dtype(dtype).itemsize >= 200_000
    assert model.decoder._buffers.arrays["y"].shape[0] == chunk * B
