"""The GPU parity tests of test_kernels_cupy.py, run on the CPU through a CUDA emulator.

No GPU is needed: ``cupy`` is replaced, for each test, by tests/cuda_emu/fake_cupy.py, whose
RawModule compiles kernels/cuda/*.cu with the host C++ compiler against cuda_emu.h (every CUDA
thread a std::thread, __syncthreads / __syncwarp / __shfl_xor_sync as barriers) and whose arrays
are NumPy arrays. So the CuPy wrappers (argument checks, launch sizes, argument types, tiling)
and the kernels' index arithmetic, group reductions and Philox words run exactly as written; the
Philox uniforms are compared bit for bit. What this cannot show: CUDA's own math library
(glibc's logf / sincosf stand in), memory-model or out-of-bounds errors a barrier would hide,
performance, and CuPy itself. Those need test_kernels_cupy.py on a device.

Skipped when no C++20 compiler with <barrier> is available.
"""
import sys

import pytest

import kernels
from cuda_emu import fake_cupy
from test_kernels_cupy import *  # noqa: F401,F403  (the test bodies; `cp` is redefined below)

_OK, _WHY = fake_cupy.available()
pytestmark = [pytest.mark.skipif(not _OK, reason=_WHY)]


@pytest.fixture
def cp(monkeypatch):
    """The stand-in CuPy, installed as ``cupy`` for one test; kernels._cupy is imported afresh
    against it (and the real one, if any, put back afterwards)."""
    fake = fake_cupy.make()
    saved_module = sys.modules.pop("kernels._cupy", None)
    saved_attr = kernels.__dict__.pop("_cupy", None)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from kernels import _cupy
    # fewer blocks per launch: each emulated block starts up to 1024 threads
    monkeypatch.setattr(_cupy, "BLOCKS_PER_SM", 2)
    try:
        yield fake
    finally:
        sys.modules.pop("kernels._cupy", None)
        kernels.__dict__.pop("_cupy", None)
        if saved_module is not None:
            sys.modules["kernels._cupy"] = saved_module
        if saved_attr is not None:
            kernels._cupy = saved_attr
