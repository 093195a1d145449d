"""The GPU parity tests of test_kernels_cupy.py, run on the CPU through a CUDA emulator.

No GPU is needed: ``cupy`` is replaced, for each test, by tests/cuda_emu/fake_cupy.py, whose
RawModule compiles kernels/cuda/*.cu with the host C++ compiler against cuda_emu.h (every CUDA
thread a std::thread, __syncthreads / __syncwarp / __shfl_xor_sync as barriers) and whose arrays
are device arrays that refuse implicit host conversion and NumPy operands, as CuPy's do. So
the CuPy wrappers (argument checks, launch sizes, argument types, tiling), the engine's dispatch
by array type and the kernels' index arithmetic, group reductions and Philox words run exactly as written; the
Philox uniforms are compared bit for bit. What this cannot show: CUDA's own math library
(glibc's logf / sincosf stand in), memory-model or out-of-bounds errors a barrier would hide,
performance, and CuPy itself. Those need test_kernels_cupy.py on a device.

Skipped when no C++20 compiler with <barrier> is available.
"""

import pytest
from cuda_emu import fake_cupy
from test_kernels_cupy import *  # noqa: F403  (the test bodies; `cp` is redefined below)

_OK, _WHY = fake_cupy.available()
pytestmark = [pytest.mark.skipif(not _OK, reason=_WHY)]


@pytest.fixture
def cp():
    """The stand-in CuPy, installed as ``cupy`` for one test (see fake_cupy.installed)."""
    with fake_cupy.installed() as fake:
        yield fake
