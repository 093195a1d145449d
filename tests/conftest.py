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
