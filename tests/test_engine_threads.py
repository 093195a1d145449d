"""The thread split of engine steps (lvmcore.backend.engine_kernel_threads): BLAS threads from
LVMCORE_BLAS_THREADS or --threads when chosen, else the process's setting, restored after the
step."""

import threading

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


class _GlobalCountBLAS:
    """A BLAS controller whose count is one process-wide value, settable from any thread (as
    for OpenBLAS before 0.3.30 or BLIS; OpenBLAS 0.3.31 ignores a count set from a thread other
    than the main one)."""

    def __init__(self, n):
        self.num_threads = n
        self.history = [n]

    def set_num_threads(self, n):
        self.num_threads = n
        self.history.append(n)


def test_overlapping_limits_keep_the_smallest_until_the_last_one_ends(monkeypatch):
    """A block that ends while another thread's block still runs must not restore the count
    under it; the count from before the first block comes back when the last one ends."""
    lib = _GlobalCountBLAS(4)
    monkeypatch.setattr(backend, "_blas_libraries", lambda: (lib,))
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with backend._blas_at_most(2):
            seen["first alone"] = lib.num_threads
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def second():
        a_inside.wait(10)
        with backend._blas_at_most(1):
            seen["both"] = lib.num_threads
            b_inside.set()
            a_left.wait(10)
            seen["after the first left"] = lib.num_threads

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"first alone": 2, "both": 1, "after the first left": 1}
    assert lib.num_threads == 4 and not backend._blas_limits and not backend._blas_before
    # nested in one thread: the smallest active limit holds; a limit above the count is none
    with backend._blas_at_most(1):
        with backend._blas_at_most(8):
            assert lib.num_threads == 1
        assert lib.num_threads == 1
    with backend._blas_at_most(8):
        assert lib.num_threads == 4
    with pytest.raises(RuntimeError, match="inside"):
        with backend._blas_at_most(3):
            raise RuntimeError("inside")
    assert lib.num_threads == 4 and not backend._blas_limits
    assert lib.history == [4, 2, 1, 4, 1, 4, 3, 4]


class _MainThreadOnlyBLAS(_GlobalCountBLAS):
    """A controller that ignores a count set from any thread but the main one (OpenBLAS
    0.3.31 with pthreads, as measured)."""

    def set_num_threads(self, n):
        if threading.current_thread() is threading.main_thread():
            super().set_num_threads(n)


def test_workers_only_when_the_blas_count_goes_down(monkeypatch):
    """engine_worker_threads runs no pool when the BLAS count cannot be lowered from the
    calling thread: workers would each run multi-threaded GEMMs."""
    monkeypatch.setattr(backend, "_numba_layer_takes_threads", lambda: True)
    lib = _MainThreadOnlyBLAS(2)
    monkeypatch.setattr(backend, "_blas_libraries", lambda: (lib,))
    with backend.engine_worker_threads(2) as pool:
        assert pool is not None and lib.num_threads == 1
    assert lib.num_threads == 2
    got = []

    def from_another_thread():
        with backend.engine_worker_threads(2) as pool:
            got.append((pool, lib.num_threads))

    t = threading.Thread(target=from_another_thread)
    t.start()
    t.join(20)
    assert got == [(None, 2)] and lib.num_threads == 2 and not backend._blas_limits


def test_a_real_blas_from_another_thread_gets_one_thread_or_no_pool(two_blas_threads):
    got = []

    def from_another_thread():
        with backend.engine_worker_threads(2) as pool:
            got.append(None if pool is None else set(pool.map(lambda _: max(_blas_threads()), [0])))

    t = threading.Thread(target=from_another_thread)
    t.start()
    t.join(20)
    assert got in ([None], [{1}])


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


def test_the_runtime_record_holds_the_count_a_step_gets_from_another_thread(two_blas_threads):
    """From a thread that is not the main one, OpenBLAS 0.3.31 keeps its own count whatever the
    engine chose: the record holds the count the library took, read back, not the choice."""
    from lvmcore.backend import use_blas_threads
    from lvmcore.checkpoint import runtime_info

    got = []

    def record_and_measure():
        with use_blas_threads(1):
            entries = runtime_info()["blas"]
            with backend.engine_kernel_threads():
                in_step = _blas_threads()
            got.append(([e["num_threads"] for e in entries], in_step, entries))

    record_and_measure()  # main thread: the count goes down
    t = threading.Thread(target=record_and_measure)
    t.start()
    t.join(20)
    (main_rec, main_step, _), (other_rec, other_step, other_entries) = got
    assert main_rec == main_step == [1] * len(main_rec)
    assert sorted(other_rec) == sorted(other_step)
    assert all(e["process_threads"] == 2 for e in other_entries)
    assert max(_blas_threads()) == 2 and not backend._blas_limits
