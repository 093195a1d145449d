import numpy as np
import pytest

from kernels import adam_update as K
from lvmcore.testing import PARITY_TOLERANCES


@pytest.mark.parametrize("variant", ["numba_v1", "numba_v2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (K.PARALLEL_THRESHOLD + 3,)])
def test_variant_matches_reference(rng, variant, dtype, shape):
    p, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m, v = rng.standard_normal(shape).astype(dtype), rng.random(shape).astype(dtype)
    want = [a.copy() for a in (p, m, v)]
    K.adam_update_ref(*want[:1], g, *want[1:], 1e-3, 0.9, 0.999, 1e-6)
    K.VARIANTS[variant](p, g, m, v, 1e-3, 0.9, 0.999, 1e-6)
    for got, ref in zip((p, m, v), want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, **PARITY_TOLERANCES[np.dtype(dtype)])
