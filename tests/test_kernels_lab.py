"""The variants that lost their benchmark live in benchmarks/lab/, out of the shipped package;
they still import the shipped kernels' private helpers, so each lab script's own check (its
variant against the shipped reference, before it times anything) runs here at small sizes."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

LAB = Path(__file__).resolve().parents[1] / "benchmarks" / "lab"


def _load(name):
    # Registered in sys.modules under a fixed name before it runs: Numba's on-disk cache
    # re-imports a cached function's module by name when it loads it.
    key = f"lvmcore_lab_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, LAB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name", ["bernoulli_loglik", "gumbel_softmax", "importance_weights", "nearest_code"]
)
def test_lab_variant_matches_the_shipped_reference(name, rng):
    _load(name).check(rng)


def test_lab_bernoulli_v1_flushes_sigmoid_instead_of_subnormal():
    lab = _load("bernoulli_loglik")
    logits = np.linspace(-104, -86, 4097, dtype=np.float32).reshape(1, -1)
    x = np.zeros_like(logits)
    grad = np.empty_like(logits)
    lab.bernoulli_loglik_numba_v1(logits, x, grad)
    tiny = np.finfo(np.float32).tiny
    assert not np.any((grad != 0) & (np.abs(grad) < tiny))


def test_lab_variants_check_their_arguments():
    with pytest.raises(ValueError, match="C-contiguous"):
        _load("importance_weights").importance_weights_numba_v1(np.zeros((4, 6))[:, ::2])
    with pytest.raises(ValueError, match=r"codebook\.shape\[1\] == x\.shape\[1\]"):
        _load("nearest_code").nearest_code_numba_v1(np.zeros((3, 4)), np.zeros((2, 5)))
