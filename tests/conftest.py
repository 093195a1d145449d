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
