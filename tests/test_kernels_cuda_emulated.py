"""The GPU parity tests of test_kernels_cupy.py, run on the CPU through a CUDA emulator.

No GPU is needed: ``cupy`` is replaced, for each test, by tests/cuda_emu/fake_cupy.py, whose
RawModule compiles kernels/cuda/*.cu with the host C++ compiler against cuda_emu.h (every CUDA
thread a fiber, __syncthreads / __syncwarp / __shfl_xor_sync as barriers) and whose arrays
are device arrays that refuse implicit host conversion and NumPy operands, as CuPy's do. So
the CuPy wrappers (argument checks, launch sizes, argument types, tiling), the engine's dispatch
by array type and the kernels' index arithmetic, group reductions and Philox words run exactly as written; the
Philox uniforms are compared bit for bit. What this cannot show: CUDA's own math library
(glibc's logf / sincosf stand in), memory-model or out-of-bounds errors a barrier would hide,
performance, and CuPy itself. Those need test_kernels_cupy.py on a device.

Skipped when no C++20 compiler is available.
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


_BARRIERS = r"""
extern "C" __global__ void reverse_in_block(const float* x, float* y) {
    __shared__ float buf[64];
    const unsigned int t = threadIdx.x;
    buf[t] = x[blockIdx.x * 64 + t];
    __syncthreads();  // every write to buf lands before any thread reads another's slot
    y[blockIdx.x * 64 + t] = buf[63 - t];
}

extern "C" __global__ void warp_sum(const float* x, float* y) {
    float v = x[blockIdx.x * 64 + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    y[blockIdx.x * 64 + threadIdx.x] = v;
}

extern "C" __global__ void early_return(float* y) {
    if (threadIdx.x == 0) return;  // thread 0 never reaches the barrier the others wait at
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}
"""


def test_emulator_barriers_order_shared_memory_and_shuffles():
    """__syncthreads orders a block's shared-memory traffic across fibers, shuffles see their
    lanes' values, and a barrier that can never open is an error rather than a hang."""
    import numpy as np

    with fake_cupy.installed() as fake:
        mod = fake.RawModule(
            code=_BARRIERS, name_expressions=["reverse_in_block", "warp_sum", "early_return"]
        )
        x = np.arange(3 * 64, dtype=np.float32)
        xd, yd = fake.asarray(x), fake.zeros(3 * 64, dtype=fake.float32)
        mod.get_function("reverse_in_block")((3,), (64,), (xd, yd))
        np.testing.assert_array_equal(fake.asnumpy(yd), x.reshape(3, 64)[:, ::-1].ravel())

        mod.get_function("warp_sum")((3,), (64,), (xd, yd))
        want = np.repeat(x.reshape(6, 32).sum(axis=1), 32)
        np.testing.assert_array_equal(fake.asnumpy(yd), want)

        with pytest.raises(RuntimeError, match="barriers that never open"):
            mod.get_function("early_return")((1,), (64,), (yd,))
