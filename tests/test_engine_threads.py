"""The thread split of engine steps (lvmcore.backend.engine_kernel_threads): BLAS threads from
LVMCORE_BLAS_THREADS or --threads when chosen, else the process's setting, restored after the
step."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from lvmcore import backend
from lvmcore.exceptions import InvalidParameterError
from lvmcore.models import VAE


def _blas_threads():
    return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS loaded
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def test_the_step_runs_blas_on_the_engine_count_and_restores_it(monkeypatch, two_blas_threads):
    monkeypatch.setenv("LVMCORE_BLAS_THREADS", "1")
    before = _blas_threads()
    with backend.engine_kernel_threads():
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before
    monkeypatch.setenv("LVMCORE_BLAS_THREADS", "8")  # never more than the process allows
    with backend.engine_kernel_threads():
        assert _blas_threads() == before


def test_auto_leaves_the_count_to_the_process(monkeypatch):
    monkeypatch.delenv("LVMCORE_BLAS_THREADS", raising=False)
    assert backend.engine_blas_threads() is None
    monkeypatch.setenv("LVMCORE_BLAS_THREADS", "auto")
    assert backend.engine_blas_threads() is None
    monkeypatch.setenv("LVMCORE_BLAS_THREADS", "3")
    assert backend.engine_blas_threads() == 3


def test_auto_keeps_the_process_setting_inside_the_step(monkeypatch, two_blas_threads):
    monkeypatch.delenv("LVMCORE_BLAS_THREADS", raising=False)
    before = _blas_threads()
    with backend.engine_kernel_threads():
        assert _blas_threads() == before


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_a_bad_count_is_named(monkeypatch, bad):
    monkeypatch.setenv("LVMCORE_BLAS_THREADS", bad)
    with pytest.raises(InvalidParameterError, match="LVMCORE_BLAS_THREADS"):
        backend.engine_blas_threads()


def test_a_step_restores_the_threads_when_it_fails(monkeypatch, two_blas_threads):
    monkeypatch.setenv("LVMCORE_BLAS_THREADS", "1")
    model = VAE(6, 2, (4,))
    x = (np.random.default_rng(1).random((3, 6)) < 0.5).astype(np.float32)
    before = _blas_threads()
    seen = []

    def failing_backward(cache, dloss=1.0):
        seen.append(_blas_threads())
        raise RuntimeError("inside the step")

    monkeypatch.setattr(model, "backward", failing_backward)
    with pytest.raises(RuntimeError, match="inside the step"):
        model.loss_and_grads(x, np.random.default_rng(0))
    assert set(seen[0]) == {1} and _blas_threads() == before


def test_an_explicit_thread_count_beats_the_default_and_is_recorded(monkeypatch):
    """--threads N (use_blas_threads) gives engine steps N BLAS threads over
    LVMCORE_BLAS_THREADS and the automatic choice, and the runtime record holds the count a
    step's GEMMs run on, beside the library's own."""
    from lvmcore.backend import engine_blas_threads, use_blas_threads
    from lvmcore.checkpoint import runtime_info

    monkeypatch.setenv("LVMCORE_BLAS_THREADS", "3")
    assert engine_blas_threads() == 3
    with use_blas_threads(2):
        assert engine_blas_threads() == 2
        for entry in runtime_info()["blas"]:
            assert entry["num_threads"] == min(entry["process_threads"], 2)
    assert engine_blas_threads() == 3
    with pytest.raises(InvalidParameterError, match="use_blas_threads"):
        with use_blas_threads(0):
            pass
