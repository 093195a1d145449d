"""The K-sample evaluation on several threads: the chunks of a batch side by side, each thread
with its own decoder buffers, the result the one-thread evaluation's bit for bit; and the
sampler contract that makes it (and sharding) possible: a draw depends on (start, n) alone."""

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from test_models_contract import CASES

import kernels
import lvmcore.backend
import lvmcore.evaluate
from lvmcore.distributed import SingleProcess, fold_logsumexp_grid
from lvmcore.exceptions import InvalidParameterError
from lvmcore.models import AAE, CVAE, IWAE, MODELS, MVAE, VAE
from lvmcore.nn import MLP

D = 7


def _workers(monkeypatch, n):
    monkeypatch.setattr(lvmcore.evaluate, "engine_worker_count", lambda: n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_threaded_evaluation_is_the_one_thread_evaluation_bit_for_bit(
    dtype, likelihood, monkeypatch
):
    x = (np.random.default_rng(1).random((23, 50)) < 0.4).astype(dtype)
    model = VAE(50, 4, (9, 6), likelihood=likelihood, seed=2, dtype=dtype)
    model.init_output_bias(x)
    seen = set()
    sampler = model.log_weight_sampler

    def recording_sampler(xb, rng):
        draw = sampler(xb, rng)

        def recorded(start, n):
            seen.add(threading.current_thread().name.split("_")[0])
            return draw(start, n)

        return recorded

    monkeypatch.setattr(model, "log_weight_sampler", recording_sampler)
    results = {}
    for workers in (1, 2, 3):
        _workers(monkeypatch, workers)
        # several batches (the last short), chunks of unequal count per batch, a last short chunk
        results[workers] = model.log_likelihood(
            x, np.random.default_rng(9), k=29, batch_size=10, chunk_size=4
        )
    assert results[1].dtype == dtype and np.isfinite(results[1]).all()
    np.testing.assert_array_equal(results[2], results[1])
    np.testing.assert_array_equal(results[3], results[1])
    assert seen == {"MainThread", "lvmcore-worker"}  # the pool really ran the chunks


def test_threaded_evaluation_of_iwae_and_a_single_chunk(monkeypatch):
    x = (np.random.default_rng(3).random((5, D)) < 0.5).astype(np.float32)
    model = IWAE(D, 3, (5,), k=4, estimator="dreg", seed=1)
    model.init_output_bias(x)
    got = {}
    for workers in (1, 2):
        _workers(monkeypatch, workers)
        got[workers] = (
            model.log_likelihood(x, np.random.default_rng(2), k=40, batch_size=2, chunk_size=7),
            model.log_likelihood(x, np.random.default_rng(2), k=6),  # one chunk a batch
        )
    for a, b in zip(got[1], got[2]):
        np.testing.assert_array_equal(a, b)


def test_models_that_draw_their_own_way_stay_on_one_thread(monkeypatch):
    """Only a model declaring ``concurrent_draws`` gets the pool; the CVAE (its own sampler)
    evaluates on the calling thread whatever the worker count."""
    _workers(monkeypatch, 3)
    names = []
    real = lvmcore.evaluate.engine_worker_threads

    def spy(n):
        names.append(n)
        return real(n)

    monkeypatch.setattr(lvmcore.evaluate, "engine_worker_threads", spy)
    x = (np.random.default_rng(0).random((4, D)) < 0.5).astype(np.float64)
    model = CVAE(D, 3, 2, (5,), seed=1, dtype=np.float64)
    labels = np.array([0, 1, 2, 1])
    model.log_likelihood(x, np.random.default_rng(1), k=5, chunk_size=2, labels=labels)
    vae = VAE(D, 2, (4,), dtype=np.float64)
    vae.log_likelihood(x, np.random.default_rng(1), k=5, chunk_size=2)
    assert names == [1, 3]


def test_concurrent_draws_is_declared_only_by_the_vae_sampler():
    """A class that says its draws may run at once uses the VAE's sampler (a subclass that
    overrides it must decide again, as CVAE and AAE do)."""
    declared = {cls for cls in set(MODELS.values()) | {CVAE, AAE} if cls.concurrent_draws}
    assert VAE in declared and IWAE in declared
    for cls in declared:
        assert cls.log_weight_sampler is VAE.log_weight_sampler, cls.__name__
    assert not CVAE.concurrent_draws and not AAE.concurrent_draws


def _contract_cases():
    cases = {k: v for k, v in CASES.items() if v().has_log_likelihood}
    cases["cvae"] = lambda: CVAE(D, 3, 2, (5,), seed=1, dtype=np.float64)
    cases["mvae"] = lambda: MVAE(D, latent_dim=2, hidden=(4,), dtype=np.float64, seed=1)
    return cases


@pytest.mark.parametrize("name", list(_contract_cases()))
def test_a_draw_depends_on_its_start_and_size_alone(name):
    """The contract of ``log_weight_sampler`` that sharded and threaded evaluation rely on:
    draw(start, n) gives the same log-weights whichever chunks were drawn before."""
    model = _contract_cases()[name]()
    x = (np.random.default_rng(0).random((4, D)) < 0.5).astype(model.dtype)
    if "categorical" in name or "dequantized" in name:
        x = np.random.default_rng(0).integers(0, 3, (4, D)).astype(model.dtype)
    model.init_output_bias(x)
    given = {"labels": np.array([0, 1, 1, 0])} if model.needs_labels else {}
    params = inspect.signature(model.log_weight_sampler).parameters
    assert ("labels" in params) == bool(given)
    draw = model.log_weight_sampler(x, np.random.default_rng(5), **given)
    first = np.array(draw(3, 2))
    draw(0, 3)
    draw(5, 4)
    np.testing.assert_array_equal(np.array(draw(3, 2)), first)
    # and a second sampler from a generator in the same state draws the same
    again = model.log_weight_sampler(x, np.random.default_rng(5), **given)
    np.testing.assert_array_equal(np.array(again(3, 2)), first)


def test_fold_with_an_executor_is_the_fold_without():
    rng = np.random.default_rng(0)
    table = {(i, j): rng.standard_normal(3 + i) for i in range(4) for j in range(5)}
    calls = []

    def cell(i, j):
        calls.append((i, j))
        return table[(i, j)]

    plain = fold_logsumexp_grid(SingleProcess(), 4, 5, cell)
    with ThreadPoolExecutor(3) as pool:
        pooled = fold_logsumexp_grid(SingleProcess(), 4, 5, cell, executor=pool)
    np.testing.assert_array_equal(pooled, plain)
    assert sorted(calls) == sorted(2 * list(table))
    with pytest.raises(TypeError, match="expected executor to be a concurrent.futures.Executor"):
        fold_logsumexp_grid(SingleProcess(), 4, 5, cell, executor=map)


def test_worker_threads_run_one_blas_and_one_numba_thread_and_restore_blas(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        with lvmcore.backend.engine_worker_threads(2) as pool:
            assert pool is not None
            inside = blas_threads()
            numba_threads = set(pool.map(lambda _: numba.get_num_threads(), range(8)))
        assert blas_threads() == before
    assert set(inside) == {1} and numba_threads == {1}
    with lvmcore.backend.engine_worker_threads(1) as pool:
        assert pool is None
    for bad in (0, 2.0, True, "2"):
        with pytest.raises(InvalidParameterError, match="'n' parameter of engine_worker_threads"):
            with lvmcore.backend.engine_worker_threads(bad):
                pass
    # a threading layer that cannot take launches from several threads: no pool
    monkeypatch.setattr(lvmcore.backend, "_numba_layer_takes_threads", lambda: False)
    with lvmcore.backend.engine_worker_threads(4) as pool:
        assert pool is None


def test_worker_count_follows_the_chosen_blas_threads(monkeypatch):
    monkeypatch.setattr(lvmcore.backend.os, "sched_getaffinity", lambda _: set(range(8)))
    with lvmcore.backend.use_blas_threads(3):
        assert lvmcore.backend.engine_worker_count() == 3
    with lvmcore.backend.use_blas_threads(1):
        assert lvmcore.backend.engine_worker_count() == 1
    monkeypatch.setattr(lvmcore.backend.os, "sched_getaffinity", lambda _: {0, 1})
    with lvmcore.backend.use_blas_threads(16):
        assert lvmcore.backend.engine_worker_count() == 2  # at most the CPUs at hand


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_buffers_are_per_thread(dtype):
    """Threads running buffered forwards and backwards of one MLP at once get what each would
    alone; a thread's cache stays valid while another thread runs forwards."""
    mlp = MLP((6, 5, 4), "tanh", np.random.default_rng(0), dtype=dtype)
    xs = [np.random.default_rng(s).standard_normal((9 + s, 6)).astype(dtype) for s in range(4)]

    def alone(x):
        y, cache = mlp.forward_buffered(x)
        y = y.copy()
        for g in mlp.grads.values():
            g[...] = 0
        dx = mlp.backward_buffered(np.ones_like(y), cache).copy()
        return y, dx

    want = [alone(x) for x in xs]
    barrier = threading.Barrier(len(xs))

    def together(x):
        y, cache = mlp.forward_buffered(x)
        barrier.wait()  # every thread's forward has run before any backward
        y = y.copy()
        dx = mlp.backward_buffered(np.ones_like(y), cache).copy()  # no stale-cache error
        return y, dx

    with ThreadPoolExecutor(len(xs)) as pool:
        got = list(pool.map(together, xs))
    for (y, dx), (wy, wdx) in zip(got, want):
        np.testing.assert_array_equal(y, wy)
        np.testing.assert_array_equal(dx, wdx)
    # the calling thread's own stale-cache check still holds
    _, old = mlp.forward_buffered(xs[0])
    mlp.forward_buffered(xs[1])
    with pytest.raises(ValueError, match="earlier call"):
        mlp.backward_buffered(np.ones((9, 4), dtype), old)


def test_every_numba_kernel_releases_the_gil():
    """The evaluation's threads run kernels at once only if each releases the GIL."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    found = 0
    for info in pkgutil.iter_modules(kernels.__path__):
        try:
            module = importlib.import_module(f"kernels.{info.name}")
        except kernels.BackendUnavailableError:  # the CuPy glue, without CuPy
            continue
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
                found += 1
                assert obj.targetoptions.get("nogil"), f"kernels.{info.name}.{name}"
    assert found > 50


def test_a_worker_threads_error_reaches_the_caller_as_on_one_thread(monkeypatch):
    """A diverged encoder: the sampling kernel's ValueError, raised in a worker thread, is the
    caller's error, as in the one-thread evaluation; a diverged decoder gives NaN in both."""
    x = (np.random.default_rng(0).random((9, 12)) < 0.5).astype(np.float32)
    model = VAE(12, 3, (5,))
    model.init_output_bias(x)
    model.decoder.params["W0"][0, 0] = np.nan
    for workers in (1, 2):
        _workers(monkeypatch, workers)
        with np.errstate(invalid="ignore"):
            got = model.log_likelihood(x, np.random.default_rng(0), k=20, chunk_size=3)
        assert np.isnan(got).all()
    model.decoder.params["W0"][0, 0] = 0.0
    model.encoder.params["W0"][0, 0] = np.nan
    for workers in (1, 2):
        _workers(monkeypatch, workers)
        with pytest.raises(ValueError, match="reparam_sample: expected mu to contain no NaN"):
            model.log_likelihood(x, np.random.default_rng(0), k=20, chunk_size=3)
