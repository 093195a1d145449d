"""Whole training steps and K=5000 evaluation of the IWAE-paper architecture
(784-200-200-50 tanh encoder, mirrored Bernoulli decoder, Adam eps 1e-4).

``track_gemm_ratio`` is the bound itself: the step's (or the evaluation's) time over the time of
its own GEMMs alone (``gemm_bound``), both measured in the same run (min of 7 repeats each);
1.0 is the GEMM bound.
"""

import timeit

import numpy as np

from lvmcore.models import IWAE, VAE
from lvmcore.optim import Adam

from .common import Benchmark, grid, mnist_like
from .gemm_bound import eval_gemms, step_gemms


def _best(fn, repeat=7):
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def _model(k, dtype=np.float32):
    if k == 1:
        return VAE(784, 50, (200, 200), seed=0, dtype=dtype)
    return IWAE(784, 50, (200, 200), k=k, seed=0, dtype=dtype)


class TrainStep(Benchmark):
    """One optimizer step: forward, hand-written backward, Adam."""

    params = [[(100, 1), (20, 50), (100, 50)], ["float32"]]
    param_names = ["batch_k", "dtype"]

    def setup(self, batch_k, dtype):
        super().setup()
        batch, k = batch_k
        self.model = _model(k, np.dtype(dtype))
        x = mnist_like(1000, np.dtype(dtype))
        self.model.init_output_bias(x)
        self.opt = Adam(self.model.parameters(), self.model.gradients(), lr=1e-3, eps=1e-4)
        self.rng = np.random.default_rng(0)
        self.batches = [x[i : i + batch] for i in range(0, 1000, batch)]
        self.i = 0
        for _ in range(30):  # JIT compilation and a few real steps stay out of the timings
            self.time_step(batch_k, dtype)

    def time_step(self, batch_k, dtype):
        xb = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.model.loss_and_grads(xb, self.rng, validate=False)
        self.opt.step()

    def peakmem_step(self, batch_k, dtype):
        self.time_step(batch_k, dtype)

    def track_gemm_ratio(self, batch_k, dtype):
        gemms = step_gemms(*batch_k, np.dtype(dtype))
        gemms()
        return _best(lambda: self.time_step(batch_k, dtype)) / _best(gemms)

    track_gemm_ratio.unit = "step / GEMMs"


class Evaluate(Benchmark):
    """Importance-sampled log-likelihood with K samples for 20 test images.

    peakmem_ stays flat from K=500 to K=5000 because evaluation runs in chunks over K
    with a running log-sum-exp."""

    params = [grid([500, 5000], [500, 1000, 5000, 20000])]
    param_names = ["k"]
    timeout = 300

    def setup(self, k):
        super().setup()
        self.model = _model(1)
        x = mnist_like(1000)
        self.model.init_output_bias(x)
        self.x = x[:20]
        self.model.log_likelihood(self.x[:1], np.random.default_rng(0), k=8)

    def time_log_likelihood(self, k):
        self.model.log_likelihood(self.x, np.random.default_rng(0), k=k)

    def peakmem_log_likelihood(self, k):
        self.model.log_likelihood(self.x, np.random.default_rng(0), k=k)

    def track_gemm_ratio(self, k):
        gemms, _ = eval_gemms(20, k, chunk_rows=self.model.eval_chunk_rows)
        gemms()
        run = lambda: self.time_log_likelihood(k)  # noqa: E731
        return _best(run, 3) / _best(gemms, 3)

    track_gemm_ratio.unit = "evaluation / GEMMs"
