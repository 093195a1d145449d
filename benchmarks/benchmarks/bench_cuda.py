"""The CUDA kernels and a training step on a GPU (CuPy arrays). Every benchmark is skipped where
CuPy has no CUDA device. Each timed call ends with a device synchronisation, so the figures
are the kernels' run time, not their launch time."""

import numpy as np

from .common import Benchmark, binary, grid, mnist_like, normal


class CudaBenchmark(Benchmark):
    def setup(self, *params):
        from lvmcore.backend import available_backends

        why = available_backends()["cupy"]
        if why != "available":
            raise NotImplementedError(why)
        import cupy

        import kernels

        self.cp = cupy
        self.get = lambda op: kernels.get(op, "cupy")

    def sync(self):
        self.cp.cuda.Device().synchronize()


class CudaImportanceWeights(CudaBenchmark):
    params = [grid([(5000, 1000)], [(5000, 1000), (5000, 50000)])]
    param_names = ["k_b"]

    def setup(self, k_b):
        super().setup()
        self.lw = self.cp.asarray(5 * normal(k_b, np.float32))
        self.out = self.cp.empty_like(self.lw)
        self.fn = self.get("importance_weights")
        self.fn(self.lw, self.out)

    def time_importance_weights(self, k_b):
        self.fn(self.lw, self.out)
        self.sync()


class CudaBernoulliLoglik(CudaBenchmark):
    params = [grid([(50000, 784)], [(50000, 784), (320000, 784)])]
    param_names = ["n_d"]

    def setup(self, n_d):
        super().setup()
        self.logits = self.cp.asarray(3 * normal(n_d, np.float32))
        self.x = self.cp.asarray(binary((n_d[0] // 50, n_d[1]), np.float32))
        self.grad = self.cp.empty_like(self.logits)
        self.fn = self.get("bernoulli_loglik")
        self.fn(self.logits, self.x, self.grad)

    def time_bernoulli_loglik(self, n_d):
        self.fn(self.logits, self.x, self.grad)
        self.sync()


class CudaReparamSample(CudaBenchmark):
    params = [grid([(5000, 100, 50)], [(5000, 100, 50), (5000, 1000, 50)])]
    param_names = ["k_b_z"]

    def setup(self, k_b_z):
        super().setup()
        k, b, z = k_b_z
        self.mu = self.cp.asarray(normal((b, z), np.float32))
        self.lv = self.cp.asarray(0.3 * normal((b, z), np.float32, seed=1))
        self.z = self.cp.empty((k, b, z), np.float32)
        self.fn = self.get("reparam_sample")
        self.fn(self.mu, self.lv, k, 1, 0, 0, self.z)

    def time_reparam_sample(self, k_b_z):
        self.fn(self.mu, self.lv, k_b_z[0], 1, 0, 0, self.z)
        self.sync()


class CudaGumbelSoftmax(CudaBenchmark):
    params = [[(100000, 10), (10000, 512)]]
    param_names = ["shape"]

    def setup(self, shape):
        super().setup()
        self.logits = self.cp.asarray(normal(shape, np.float32))
        self.y = self.cp.empty_like(self.logits)
        self.fn = self.get("gumbel_softmax")
        self.fn(self.logits, 0.5, 1, 0, 0, False, self.y)

    def time_gumbel_softmax(self, shape):
        self.fn(self.logits, 0.5, 1, 0, 0, False, self.y)
        self.sync()


class CudaNearestCode(CudaBenchmark):
    params = [[1 << 20], [512, 8192]]
    param_names = ["n", "m"]

    def setup(self, n, m):
        super().setup()
        self.x = self.cp.asarray(normal((n, 64), np.float32))
        self.cb = self.cp.asarray(normal((m, 64), np.float32, seed=2))
        self.fn = self.get("nearest_code")
        self.fn(self.x, self.cb)

    def time_nearest_code(self, n, m):
        self.fn(self.x, self.cb)
        self.sync()


class CudaTrainStep(CudaBenchmark):
    """One IWAE-paper optimizer step on the GPU: forward, hand-written backward, Adam."""

    params = [[(100, 1), (100, 50)]]
    param_names = ["batch_k"]

    def setup(self, batch_k):
        super().setup()
        from lvmcore.models import IWAE, VAE
        from lvmcore.optim import Adam

        batch, k = batch_k
        self.model = (VAE(784, 50, (200, 200)) if k == 1 else IWAE(784, 50, (200, 200), k=k)).to(
            self.cp
        )
        x = self.cp.asarray(mnist_like(1000, np.float32))
        self.model.init_output_bias(x)
        self.opt = Adam(self.model.parameters(), self.model.gradients(), lr=1e-3, eps=1e-4)
        self.rng = np.random.default_rng(0)
        self.batches = [x[i : i + batch] for i in range(0, 1000, batch)]
        self.i = 0
        for _ in range(20):  # NVRTC compilation and a few real steps stay out of the timings
            self.time_step(batch_k)

    def time_step(self, batch_k):
        xb = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.model.loss_and_grads(xb, self.rng, validate=False)
        self.opt.step()
        self.sync()


class CudaPhiloxFill(CudaBenchmark):
    """The models' noise on the GPU (lvmcore.noise)."""

    params = [["uniform", "normal", "gumbel"], [250000, 1 << 26]]
    param_names = ["kind", "n"]

    def setup(self, kind, n):
        super().setup()
        self.fn = self.get(f"philox_{kind}")
        self.out = self.cp.empty(n, np.float32)
        self.fn(1, 0, n, np.dtype(np.float32), out=self.out)

    def time_fill(self, kind, n):
        self.fn(1, 0, n, np.dtype(np.float32), out=self.out)
        self.sync()
