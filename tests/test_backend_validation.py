import numpy as np
import pytest

import lvmcore
from lvmcore import BackendUnavailableError, InvalidParameterError
from lvmcore._validation import check_array, check_param, check_same_device
from lvmcore.backend import available_backends, get_backend, use_backend


def test_available_backends_reports_reasons():
    avail = available_backends()
    assert set(avail) == {"numpy", "numba", "cupy"}
    assert avail["numpy"] == "always available"
    assert all(isinstance(v, str) and v for v in avail.values())


def test_precedence_keyword_context_env(monkeypatch):
    x = np.zeros(3)
    monkeypatch.delenv("LVMCORE_BACKEND", raising=False)
    assert get_backend(x).name == "numba"
    monkeypatch.setenv("LVMCORE_BACKEND", "numpy")
    assert get_backend(x).name == "numpy"
    with use_backend("numba"):
        assert get_backend(x).name == "numba"
        assert get_backend(x, backend="numpy").name == "numpy"
    assert get_backend(x).xp is np


def test_unknown_and_unavailable_backends():
    with pytest.raises(InvalidParameterError, match="'backend' parameter must be one of"):
        get_backend(np.zeros(1), backend="jax")
    if available_backends()["cupy"] != "available":
        with pytest.raises(BackendUnavailableError, match="backend 'cupy' is unavailable: cupy"):
            with use_backend("cupy"):
                lvmcore.backend.array_module("cuda")


def test_numba_backend_refuses_gpu_arrays_message():
    class FakeCupy:
        __module__ = "cupy._core.core"

    with pytest.raises(TypeError, match="on one device"):
        check_same_device([np.zeros(1), FakeCupy()], ["x", "W"], "linear_forward")


def test_check_array_messages():
    with pytest.raises(
        ValueError,
        match=r"f: expected x to have 2 dimensions, got an array of "
        r"shape \(3,\)",
    ):
        check_array(np.zeros(3), "x", "f", ndim=2)
    with pytest.raises(TypeError, match="dtype float32 or float64, got int32"):
        check_array(np.zeros(3, np.int32), "x", "f")
    with pytest.raises(ValueError, match="no NaN or Inf values, got 1 of 3"):
        check_array(np.array([0.0, np.inf, 1.0]), "x", "f")
    check_array(np.array([0.0, -np.inf]), "logw", "f", allow_inf=True)
    with pytest.raises(ValueError, match="no NaN values"):
        check_array(np.array([np.nan, -np.inf]), "logw", "f", allow_inf=True)


def test_check_param_messages():
    msg = r"The 'temperature' parameter of g must be a float in \(0, inf\). Got 0.0 instead."
    with pytest.raises(InvalidParameterError, match=msg):
        check_param(0.0, "temperature", "g", low=0)
    with pytest.raises(InvalidParameterError, match="must be an int in"):
        check_param(2.5, "k", "g", kind="int", low=1, low_inclusive=True)
    with pytest.raises(InvalidParameterError, match="must be an int in"):
        check_param(True, "k", "g", kind="int", low=1, low_inclusive=True)
    with pytest.raises(InvalidParameterError):
        check_param(float("nan"), "lr", "g", low=0)
    assert check_param(np.int64(3), "k", "g", kind="int") == 3


def test_small_numba_kernel_calls_run_on_the_calling_thread():
    """Backend.kernel runs a call whose arrays are all small on one Numba thread (a parallel
    region's wake-up costs more than a small loop), a large call on the caller's threads, and
    restores the thread count afterwards, also when the kernel raises; the result is the
    kernel's own, bit for bit."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    from lvmcore.backend import SERIAL_BELOW, serial_when_small

    seen = []

    def probe(x, *, out=None):
        seen.append(numba.get_num_threads())
        if out is not None and out.size == 1:
            raise ValueError("probe: refused")
        return x.sum()

    run = serial_when_small(probe)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        small, large = np.ones(SERIAL_BELOW - 1), np.ones(SERIAL_BELOW)
        assert run(small) == small.sum()
        assert run(small, out=large) == small.sum()  # keyword arrays count as work too
        assert run(large) == large.sum()
        with pytest.raises(ValueError, match="probe: refused"):
            run(small, out=np.ones(1))
        assert seen == [1, 2, 2, 1]
        assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(before)

    # the engine's kernels: the same bits on either side of the threshold
    kernel = get_backend("numba").kernel("bias_act")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 33))
    b = rng.standard_normal(33)
    import kernels

    want = kernels.get("bias_act", "numba")(a, b, "tanh")
    np.testing.assert_array_equal(kernel(a, b, "tanh"), want)
