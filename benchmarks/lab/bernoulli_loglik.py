"""bernoulli_loglik, variants 1 and 2 (lost to the shipped v3).

The shipped module (kernels/bernoulli_loglik.py) keeps v3. All three run the same row kernels
(``_run``: a serial loop over a row range, or a ``prange`` over chunks of rows) and differ in
the row accumulator and the element math:

- v1 widens every float32 term to float64 before the add: its float32 loglik is good to the
  final rounding (max relative error 6e-8 at D = 784), but the widening halves the vector width
  of the whole loop.
- v2 accumulates in the data dtype (max relative error 2.9e-7 at D = 784, far inside the
  float32 parity tolerance of 2e-5) with v1's element math: t = exp(-|l|), w = 1 + t, one
  reciprocal 1 / w shared by sigmoid and softplus = max(l, 0) + log(w) + c / w (c the rounding
  error of w), with the general ``kernels.fastmath`` exp and log.
- v3 (shipped) keeps v2's accumulator and, for float32, takes log1p(t) straight from t by a
  polynomial (t is in [0, 1]: no range reduction), the exp for arguments <= 0 only
  (``fastmath.exp_nonpos_f32``) and sigmoid as one division; about 1.6x v2.

Timings, float32, D = 784, x of B = 100 rows, grad_out preallocated; CPU time on 1 thread,
medians of 30 (2 vCPU AMD EPYC Zen 5 VM, AVX-512, shared; Nov 2026):

    N = 100     v1 0.145 ms   v2 0.085 ms   PyTorch 0.199 ms
    N = 5000    v1 8.29 ms    v2 4.26 ms    PyTorch 12.9 ms
    N = 50000   v1 78.7 ms    v2 39.9 ms    PyTorch 404 ms

(50000, 784) with x of B = 1000 rows, CPU time of one thread, medians of 9 (development VM, AMD
EPYC Zen 4, 2 vCPUs shared with other jobs; 2026-12-03): v2 47.7 ms (6.6 GB/s read + written),
v3 28.2 ms (11.1 GB/s), v3 in place 28.7 ms.

Run: ``python benchmarks/lab/bernoulli_loglik.py`` checks v1 and v2 against the reference,
then times them and the shipped default.
"""

import sys
from pathlib import Path

import numpy as np

from kernels import bernoulli_loglik as BL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import report


def bernoulli_loglik_numba_v1(logits, x, grad_out=None):
    """The shipped row kernels with a float64 row accumulator and v2's element math; contract
    of ``kernels.bernoulli_loglik.bernoulli_loglik_ref``."""
    BL._prepare("bernoulli_loglik_numba_v1", logits, x, grad_out)
    return BL._run(logits, x, grad_out, np.float64(0.0))


def bernoulli_loglik_numba_v2(logits, x, grad_out=None):
    """The shipped row kernels with the accumulator in the data dtype and the general exp/log
    element math (``_term_grad``); contract of ``bernoulli_loglik_ref``."""
    BL._prepare("bernoulli_loglik_numba_v2", logits, x, grad_out)
    return BL._run(logits, x, grad_out, logits.dtype.type(0))


def check(rng):
    for dtype in (np.float32, np.float64):
        logits = (3 * rng.standard_normal((6, 37))).astype(dtype)
        x = (rng.random((3, 37)) < 0.5).astype(dtype)
        want_ll, want_g = BL.bernoulli_loglik_ref(logits, x, np.empty_like(logits))
        tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        for variant in (bernoulli_loglik_numba_v1, bernoulli_loglik_numba_v2):
            ll, g = variant(logits, x, np.empty_like(logits))
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
                ("v2 (general exp, log)", lambda: bernoulli_loglik_numba_v2(logits, x, grad)),
                ("v3 (shipped)", lambda: BL.bernoulli_loglik_numba_v3(logits, x, grad)),
            ],
        )


if __name__ == "__main__":
    main()
