"""bernoulli_loglik, variant 1: the row sum accumulated in float64 (lost to the shipped v2).

The shipped module (kernels/bernoulli_loglik.py) keeps v2, whose row accumulator is in the data
dtype. v1 widens every float32 term to float64 before the add: its float32 loglik is good to
the final rounding (max relative error 6e-8 at D = 784, against v2's 2.9e-7), but the widening
halves the vector width of the whole loop, and v2's error sits far inside the float32 parity
tolerance (2e-5).

Timings (2 vCPU AMD EPYC Zen 5 VM, AVX-512, shared; float32, D = 784, x of B = 100 rows,
grad_out preallocated; CPU time on 1 thread, medians of 30; Nov 2026):

    N = 100     v1 0.145 ms   v2 0.085 ms   PyTorch 0.199 ms
    N = 5000    v1 8.29 ms    v2 4.26 ms    PyTorch 12.9 ms
    N = 50000   v1 78.7 ms    v2 39.9 ms    PyTorch 404 ms

Run: ``python benchmarks/lab/bernoulli_loglik.py`` checks v1 against the reference, then times
v1 and the shipped default.
"""

import sys
from pathlib import Path

import numpy as np

from kernels import bernoulli_loglik as BL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report


def bernoulli_loglik_numba_v1(logits, x, grad_out=None):
    """The shipped kernels with a float64 row accumulator; contract of
    ``kernels.bernoulli_loglik.bernoulli_loglik_ref``."""
    BL._prepare("bernoulli_loglik_numba_v1", logits, x, grad_out)
    return BL._run(logits, x, grad_out, np.float64(0.0))


def check(rng):
    for dtype in (np.float32, np.float64):
        logits = (3 * rng.standard_normal((6, 37))).astype(dtype)
        x = (rng.random((3, 37)) < 0.5).astype(dtype)
        want_ll, want_g = BL.bernoulli_loglik_ref(logits, x, np.empty_like(logits))
        ll, g = bernoulli_loglik_numba_v1(logits, x, np.empty_like(logits))
        tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ll, want_ll, **tol)
        np.testing.assert_allclose(g, want_g, **tol)


def main():
    rng = np.random.default_rng(0)
    check(rng)
    for n in (100, 5000):
        logits = rng.standard_normal((n, 784)).astype(np.float32)
        x = (rng.random((100, 784)) < 0.13).astype(np.float32)
        grad = np.empty_like(logits)
        report(
            f"N={n}",
            [
                ("v1 (float64 accumulator)", lambda: bernoulli_loglik_numba_v1(logits, x, grad)),
                ("v2 (shipped)", lambda: BL.bernoulli_loglik_numba_v2(logits, x, grad)),
            ],
        )


if __name__ == "__main__":
    main()
