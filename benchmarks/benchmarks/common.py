"""Shared pieces of the asv suite: thread settings, cached deterministic inputs, and a
base class that skips (NotImplementedError in setup) what cannot run here.

Run offline in the current environment:  cd benchmarks && asv run --python=same
Set LVMCORE_BENCH_FULL=1 for the full size grid. Thread counts are pinned to
LVMCORE_BENCH_THREADS (default 2) for Numba and BLAS, so figures compare across runs.
"""

import functools
import os

import numpy as np

FULL = os.environ.get("LVMCORE_BENCH_FULL") == "1"
THREADS = int(os.environ.get("LVMCORE_BENCH_THREADS", "2"))


def pin_threads():
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(THREADS)


def grid(small, full):
    return full if FULL else small


@functools.cache
def normal(shape, dtype, seed=0):
    """Deterministic standard-normal input (append-only: seeds fixed forever)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@functools.cache
def binary(shape, dtype, p=0.13, seed=1):
    return (np.random.default_rng(seed).random(shape) < p).astype(dtype)


@functools.cache
def mnist_like(n=1000, dtype=np.float32):
    """Binarized MNIST when the shared copy is present, else binary noise of the same shape."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "binarized_mnist.npz"
    if path.exists():
        x = np.unpackbits(np.load(path)["train"][:n], axis=1)[:, :784]
        return x.astype(dtype)
    return binary((n, 784), dtype)


def variants(op):
    """The CPU variants of kernel ``op`` by name (the NumPy reference, the Numba default and
    any alternative), read from the kernel registry (``kernels.records``)."""
    import kernels

    return [r.variant for r in kernels.records(op) if r.backend != "cupy"]


def kernel_variant(op, name):
    """The function of variant ``name`` of kernel ``op``, from the kernel registry."""
    import kernels

    (func,) = (r.func for r in kernels.records(op) if r.variant == name)
    return func


class Benchmark:
    """Skip by raising NotImplementedError in setup (asv's convention)."""

    def setup(self, *params):
        pin_threads()
