import os
from pathlib import Path

# Numba's on-disk cache in one folder inside the checkout (ignored by git), set before anything
# imports numba: the compiled kernels then survive between test runs, and the subprocesses the
# CLI and MPI tests start find what this process compiled.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".numba_cache")
)

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


@pytest.fixture(params=["device", "emulated"])
def cp(request):
    """The CuPy a test runs on, twice: real CuPy on a GPU (skipped, with the reason, without
    one) and the CUDA emulator's stand-in (tests/cuda_emu, skipped without a C++20 compiler).
    test_kernels_cupy.py and test_kernels_cuda_emulated.py define their own, one each."""
    if request.param == "device":
        import lvmcore

        status = lvmcore.available_backends()["cupy"]
        if status != "available":
            pytest.skip(status)
        import cupy

        yield cupy
        return
    from cuda_emu import fake_cupy

    ok, why = fake_cupy.available()
    if not ok:
        pytest.skip(why)
    with fake_cupy.installed() as fake:
        yield fake


def pytest_collection_modifyitems(config, items):
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    skip_oracle = pytest.mark.skip(reason="torch is not installed (pip install 'lvmcore[oracle]')")
    for item in items:
        if "oracle" in item.keywords and not have_torch:
            item.add_marker(skip_oracle)
