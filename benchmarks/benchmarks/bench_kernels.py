"""Every kernel over a grid of sizes and dtypes, each variant beside its NumPy reference.

Inputs are built and each kernel is called once in ``setup``, so Numba compilation stays
out of the timings. ``track_gbps`` reports the bytes the kernel must move per second;
``track_fraction_of_bound`` the kernel's fraction of the machine limit that binds it, measured
alternately with it (``machine_bounds``: copy bandwidth, the generator bounds, the SGEMM rate of
x @ E^T alone).
"""

import timeit

import numpy as np

import kernels

from . import machine_bounds as mb
from .common import THREADS, Benchmark, binary, grid, kernel_variant, normal, variants
from .gemm_bound import parameter_shapes

DTYPES = ["float32", "float64"]


def _gbps(fn, nbytes):
    t = min(timeit.repeat(fn, number=1, repeat=5))
    return nbytes / t / 1e9


def _fraction(fn, bound_fn, repeat=5):
    """time(bound) / time(fn), their minima over ``repeat`` alternating calls."""
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(min(timeit.repeat(fn, number=1, repeat=1)))
        tb.append(min(timeit.repeat(bound_fn, number=1, repeat=1)))
    return min(tb) / min(ta)


def _copy_fraction(fn, nbytes):
    """(nbytes / time(fn)) over the copy bandwidth, a 256 MiB copy on the benchmark threads."""
    a = np.ones(1 << 26, dtype=np.float32)
    b = np.empty_like(a)
    frac = _fraction(fn, lambda: mb.copy_parallel(a, b, THREADS))
    return frac * nbytes / (2 * a.nbytes)


class BernoulliLoglik(Benchmark):
    params = [
        variants("bernoulli_loglik"),
        grid([(100, 784), (5000, 784)], [(100, 784), (5000, 784), (50000, 784)]),
        DTYPES,
    ]
    param_names = ["variant", "shape", "dtype"]

    def setup(self, variant, shape, dtype):
        super().setup()
        self.fn = kernel_variant("bernoulli_loglik", variant)
        self.logits = normal(shape, dtype) * 3
        self.x = binary((min(shape[0], 100), shape[1]), dtype)
        self.grad = np.empty_like(self.logits)
        self.bias = normal((shape[1],), dtype)
        self.fn(self.logits, self.x, self.grad)
        self.fn(self.logits, self.x, self.grad, self.bias)

    def time_forward_with_grad(self, variant, shape, dtype):
        self.fn(self.logits, self.x, self.grad)

    def time_forward_with_grad_and_bias(self, variant, shape, dtype):
        # the engine's call: the decoder's output bias added inside the kernel's pass
        self.fn(self.logits, self.x, self.grad, self.bias)

    def time_forward(self, variant, shape, dtype):
        self.fn(self.logits, self.x)

    def track_gbps(self, variant, shape, dtype):
        # reads logits, writes the gradient (x stays in cache)
        return _gbps(lambda: self.fn(self.logits, self.x, self.grad), 2 * self.logits.nbytes)

    track_gbps.unit = "GB/s"

    def track_fraction_of_bound(self, variant, shape, dtype):
        # of the copy bandwidth: the kernel reads the logits and writes the gradient
        fn = lambda: self.fn(self.logits, self.x, self.grad)  # noqa: E731
        return _copy_fraction(fn, 2 * self.logits.nbytes)

    track_fraction_of_bound.unit = "fraction"


class ImportanceWeights(Benchmark):
    params = [
        variants("importance_weights"),
        grid([(50, 100), (5000, 1000)], [(50, 100), (5000, 100), (5000, 1000)]),
        DTYPES,
    ]
    param_names = ["variant", "shape", "dtype"]

    def setup(self, variant, shape, dtype):
        super().setup()
        self.fn = kernel_variant("importance_weights", variant)
        self.log_w = normal(shape, dtype) * 5
        self.out = np.empty_like(self.log_w)
        self.fn(self.log_w, self.out)

    def time_bound_and_weights(self, variant, shape, dtype):
        self.fn(self.log_w, self.out)

    def track_gbps(self, variant, shape, dtype):
        return _gbps(lambda: self.fn(self.log_w, self.out), 2 * self.log_w.nbytes)

    track_gbps.unit = "GB/s"

    def track_fraction_of_bound(self, variant, shape, dtype):
        # of the copy bandwidth: the kernel reads log_w and writes the weights
        return _copy_fraction(lambda: self.fn(self.log_w, self.out), 2 * self.log_w.nbytes)

    track_fraction_of_bound.unit = "fraction"


class MixtureLogprob(Benchmark):
    """The mixture (and VampPrior) log-density: N = K B rows, C components, Z latent units.
    (5000, 500, 40) is an IWAE step with K = 50, B = 100 under Tomczak and Welling's VampPrior
    (500 pseudo-inputs, 40 units)."""

    params = [
        variants("mixture_logprob"),
        grid([(5000, 10, 40), (5000, 500, 40)], [(100, 10, 8), (5000, 10, 40), (5000, 500, 40)]),
        DTYPES,
    ]
    param_names = ["variant", "ncz", "dtype"]

    def setup(self, variant, ncz, dtype):
        super().setup()
        n, c, z = ncz
        if variant == "ref" and n * c * z > 2 * 10**7:
            raise NotImplementedError("the NumPy reference is too slow at this size")
        self.fn = kernel_variant("mixture_logprob", variant)
        self.bwd = kernel_variant("mixture_logprob_backward", variant)
        self.z = normal((n, z), dtype)
        self.mu = normal((c, z), dtype, seed=1)
        self.logvar = normal((c, z), dtype, seed=2) * 0.3
        self.log_w = np.full(c, -np.log(c), dtype=dtype)
        self.dlog_p = normal((n,), dtype, seed=3)
        _, self.resp = self.fn(self.z, self.mu, self.logvar, self.log_w)
        self.bwd(self.dlog_p, self.z, self.mu, self.logvar, self.resp)

    def time_forward(self, variant, ncz, dtype):
        self.fn(self.z, self.mu, self.logvar, self.log_w)

    def time_backward(self, variant, ncz, dtype):
        self.bwd(self.dlog_p, self.z, self.mu, self.logvar, self.resp)

    def time_backward_dz_only(self, variant, ncz, dtype):
        self.bwd(self.dlog_p, self.z, self.mu, self.logvar, self.resp, False)

    def track_gflops(self, variant, ncz, dtype):
        # 3 flops per (row, component, unit) in the forward's quadratic form
        n, c, z = ncz
        t = min(
            timeit.repeat(
                lambda: self.fn(self.z, self.mu, self.logvar, self.log_w), number=1, repeat=3
            )
        )
        return 3 * n * c * z / t / 1e9

    track_gflops.unit = "GFLOP/s"


class ReparamSample(Benchmark):
    params = [
        variants("reparam_sample"),
        grid([(50, 20, 50), (5000, 100, 50)], [(1, 100, 50), (50, 20, 50), (5000, 100, 50)]),
        DTYPES,
    ]
    param_names = ["variant", "kbz", "dtype"]

    def setup(self, variant, kbz, dtype):
        super().setup()
        k, b, z = kbz
        if variant == "ref" and k * b * z > 10**6:
            raise NotImplementedError("the NumPy reference is too slow at this size")
        self.fn = kernel_variant("reparam_sample", variant)
        self.bwd = kernels.get("reparam_sample_backward", "numpy" if variant == "ref" else "numba")
        self.k = k
        self.mu, self.logvar = normal((b, z), dtype), normal((b, z), dtype, seed=1) * 0.3
        self.z = np.empty((k, b, z), dtype=dtype)
        self.dz = normal((k, b, z), dtype, seed=2)
        self.dl = normal((k, b), dtype, seed=3)
        self.fn(self.mu, self.logvar, k, 7, 0, 0, self.z)
        self.bwd(self.dz, self.dl, self.dl, self.mu, self.logvar, 7)

    def time_forward(self, variant, kbz, dtype):
        self.fn(self.mu, self.logvar, self.k, 7, 0, 0, self.z)

    def time_backward(self, variant, kbz, dtype):
        self.bwd(self.dz, self.dl, self.dl, self.mu, self.logvar, 7)

    def track_fraction_of_bound(self, variant, kbz, dtype):
        # of the normal generator bound (Philox + Box-Muller per element, nothing stored)
        fn = lambda: self.fn(self.mu, self.logvar, self.k, 7, 0, 0, self.z)  # noqa: E731
        return _fraction(fn, mb.normal_bound(self.z.size, np.dtype(dtype)))

    track_fraction_of_bound.unit = "fraction"


class GumbelSoftmax(Benchmark):
    params = [
        variants("gumbel_softmax"),
        grid([(100000, 10), (10000, 512)], [(1000, 10), (100000, 10), (10000, 512)]),
        DTYPES,
    ]
    param_names = ["variant", "shape", "dtype"]

    def setup(self, variant, shape, dtype):
        super().setup()
        self.fn = kernel_variant("gumbel_softmax", variant)
        self.bwd = kernels.get("gumbel_softmax_backward", "numpy" if variant == "ref" else "numba")
        self.logits = normal(shape, dtype)
        self.y = np.empty_like(self.logits)
        self.dy = normal(shape, dtype, seed=4)
        self.fn(self.logits, 0.5, 3, 0, 0, False, self.y)
        self.bwd(self.dy, self.y, 0.5)

    def time_forward(self, variant, shape, dtype):
        self.fn(self.logits, 0.5, 3, 0, 0, False, self.y)

    def time_backward(self, variant, shape, dtype):
        self.bwd(self.dy, self.y, 0.5)

    def track_fraction_of_bound(self, variant, shape, dtype):
        # of the Gumbel generator bound (Philox, two logs and an exp per element)
        fn = lambda: self.fn(self.logits, 0.5, 3, 0, 0, False, self.y)  # noqa: E731
        return _fraction(fn, mb.gumbel_bound(self.logits.size, np.dtype(dtype)))

    track_fraction_of_bound.unit = "fraction"


class NearestCode(Benchmark):
    params = [
        variants("nearest_code"),
        grid(
            [(65536, 64, 512)],
            [
                (65536, 64, 64),
                (65536, 64, 512),
                (65536, 64, 8192),
                (1048576, 64, 512),
                (65536, 16, 512),
                (65536, 256, 512),
            ],
        ),
        ["float32"],
    ]
    param_names = ["variant", "nem", "dtype"]
    timeout = 300

    def setup(self, variant, nem, dtype):
        super().setup()
        n, e, m = nem
        if variant == "ref" and n * m > 65536 * 512:
            raise NotImplementedError("the NumPy reference is too slow at this size")
        self.fn = kernel_variant("nearest_code", variant)
        self.x, self.codebook = normal((n, e), dtype), normal((m, e), dtype, seed=5)
        self.fn(self.x[:100], self.codebook)

    def time_search(self, variant, nem, dtype):
        self.fn(self.x, self.codebook)

    def peakmem_search(self, variant, nem, dtype):
        self.fn(self.x, self.codebook)

    def track_gflops(self, variant, nem, dtype):
        n, e, m = nem
        t = min(timeit.repeat(lambda: self.fn(self.x, self.codebook), number=1, repeat=3))
        return 2 * n * m * e / t / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_fraction_of_bound(self, variant, nem, dtype):
        # of the SGEMM rate of x @ E^T alone, in the Numba kernel's own tiles
        bound = mb.sgemm_tiles(self.x, self.codebook, THREADS)
        return _fraction(lambda: self.fn(self.x, self.codebook), bound, repeat=3)

    track_fraction_of_bound.unit = "fraction"


class AdamUpdate(Benchmark):
    params = [variants("adam_update"), [156800, 1 << 22], DTYPES]
    param_names = ["variant", "size", "dtype"]

    def setup(self, variant, size, dtype):
        super().setup()
        self.fn = kernel_variant("adam_update", variant)
        self.p, self.g = normal((size,), dtype).copy(), normal((size,), dtype, seed=6)
        self.m, self.v = np.zeros_like(self.p), np.ones_like(self.p)
        self.fn(self.p, self.g, self.m, self.v, 1e-3, 0.9, 0.999, 1e-8)

    def time_step(self, variant, size, dtype):
        self.fn(self.p, self.g, self.m, self.v, 1e-3, 0.9, 0.999, 1e-8)


class AdamUpdateGroup(Benchmark):
    """One optimizer step of the IWAE-paper model (12 arrays, 0.42 M parameters): every array
    in one adam_update_group call, beside twelve adam_update calls of the same arrays."""

    params = [variants("adam_update_group") + ["twelve calls"], DTYPES]
    param_names = ["variant", "dtype"]

    def setup(self, variant, dtype):
        super().setup()
        from kernels.adam_update import AdamGroup

        shapes = parameter_shapes()
        self.quads = [
            (
                normal(s, dtype).copy(),
                normal(s, dtype, seed=6),
                np.zeros(s, dtype),
                np.ones(s, dtype),
            )
            for s in shapes
        ]
        if variant == "twelve calls":
            single = kernel_variant("adam_update", "numba_v2")
            quads = self.quads

            def run():
                for q in quads:
                    single(*q, 1e-3, 0.9, 0.999, 1e-8)

        else:
            fn = kernel_variant("adam_update_group", variant)
            group = AdamGroup(*(list(a) for a in zip(*self.quads)))

            def run():
                fn(group, 1e-3, 0.9, 0.999, 1e-8)

        self.run = run
        run()

    def time_step(self, variant, dtype):
        self.run()


class PhiloxFill(Benchmark):
    """The models' noise (lvmcore.noise): Philox fills, the Numba kernel beside the NumPy
    reference; the (50, 100, 50) size is one IWAE-paper step's eps at K=50."""

    params = [
        ["numba", "numpy"],
        ["uniform", "normal", "gumbel"],
        grid([5000, 250000], [5000, 250000, 1 << 24]),
        DTYPES,
    ]
    param_names = ["backend", "kind", "n", "dtype"]

    def setup(self, backend, kind, n, dtype):
        super().setup()
        self.fn = kernels.get(f"philox_{kind}", backend)
        self.out = np.empty(n, dtype)
        self.fn(1, 0, n, np.dtype(dtype), out=self.out)

    def time_fill(self, backend, kind, n, dtype):
        self.fn(1, 0, n, np.dtype(dtype), out=self.out)

    def track_gbps(self, backend, kind, n, dtype):
        return _gbps(lambda: self.fn(1, 0, n, np.dtype(dtype), out=self.out), self.out.nbytes)

    track_gbps.unit = "GB/s"


class BiasAct(Benchmark):
    """A hidden layer's bias + activation pass over its GEMM output, and the backward pass
    (da and db), in place; the NumPy reference allocates."""

    params = [
        variants("bias_act"),
        grid([(5000, 200)], [(100, 200), (5000, 200), (8192, 200)]),
        ["tanh", "relu", "softplus"],
        DTYPES,
    ]
    param_names = ["variant", "shape", "act", "dtype"]

    def setup(self, variant, shape, act, dtype):
        super().setup()
        self.fwd = kernel_variant("bias_act", variant)
        self.bwd = kernel_variant("bias_act_backward", variant)
        self.a = normal(shape, dtype).copy()
        self.b = normal((shape[1],), dtype, seed=1)
        self.y = self.fwd(self.a, self.b, act)
        self.dy = normal(shape, dtype, seed=2).copy()
        self.out = np.empty_like(self.a)
        self.fwd(self.a, self.b, act, self.out)
        self.bwd(self.dy, self.y, act, None, self.out)

    def time_forward(self, variant, shape, act, dtype):
        self.fwd(self.a, self.b, act, self.out)

    def time_backward(self, variant, shape, act, dtype):
        self.bwd(self.dy, self.y, act, None, self.out)

    def track_gbps(self, variant, shape, act, dtype):
        # forward: reads a, writes y; backward: reads dy and y, writes da
        return _gbps(lambda: self.fwd(self.a, self.b, act, self.out), 2 * self.a.nbytes)

    track_gbps.unit = "GB/s"


class IAFGate(Benchmark):
    """An IAF step's gate over its MADE output (N = K B rows of Z), and its backward: the full
    one (dy and dz, both upstream gradients) and the Jacobian-transpose solve's sweep (dy from
    g alone, no dz). (1, 100, 50) is a VAE step, (50, 100, 50) an IWAE step at K = 50; the
    outputs are preallocated, the NumPy reference allocates."""

    params = [
        variants("iaf_gate"),
        grid([(1, 100, 50), (50, 100, 50)], [(1, 100, 50), (50, 100, 50), (5000, 1, 50)]),
        DTYPES,
    ]
    param_names = ["variant", "kbz", "dtype"]

    def setup(self, variant, kbz, dtype):
        super().setup()
        k, b, z = kbz
        n = k * b
        self.fwd = kernel_variant("iaf_gate", variant)
        self.bwd = kernel_variant("iaf_gate_backward", variant)
        self.y = normal((n, 2, z), dtype) * 3
        self.z = normal((n, z), dtype, seed=1)
        self.dz_new = normal((n, z), dtype, seed=2)
        self.dlogdet = normal((n,), dtype, seed=3)
        self.outs = [np.empty((n, z), dtype) for _ in range(3)] + [np.empty(n, dtype)]
        _, self.s, self.oms, _ = self.fwd(self.y, self.z, 1.0)
        self.dy, self.dz = np.empty((n, 2, z), dtype), np.empty((n, z), dtype)
        self.fwd(self.y, self.z, 1.0, *self.outs)
        self.time_backward(variant, kbz, dtype)
        self.time_backward_solve_sweep(variant, kbz, dtype)

    def time_forward(self, variant, kbz, dtype):
        self.fwd(self.y, self.z, 1.0, *self.outs)

    def time_backward(self, variant, kbz, dtype):
        self.bwd(self.dz_new, self.dlogdet, self.y, self.z, self.s, self.oms, self.dy, self.dz)

    def time_backward_solve_sweep(self, variant, kbz, dtype):
        self.bwd(self.dz_new, None, self.y, self.z, self.s, self.oms, self.dy, None, False)

    def track_gbps(self, variant, kbz, dtype):
        # forward: reads y and z (3 N Z), writes z_new, s, 1 - s (3 N Z)
        return _gbps(lambda: self.time_forward(variant, kbz, dtype), 6 * self.z.nbytes)

    track_gbps.unit = "GB/s"
