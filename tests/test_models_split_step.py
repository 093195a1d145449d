"""A fused VAE/IWAE training step decoded in two halves on two threads (lvmcore.models.vae,
"Two threads in one step"): the same loss and, to float rounding, the same gradients as the
one-thread step, for every estimator and KL form; and only where it applies."""

import numpy as np
import pytest

import lvmcore.backend
import lvmcore.models.vae as vae_module
from lvmcore.models import IWAE, VAE

D = 23


def _data(dtype, B=7):
    return (np.random.default_rng(0).random((B, D)) < 0.4).astype(dtype)


def _step(model, x, split, monkeypatch):
    calls = []
    real = vae_module.VAE._decode_split

    def counting(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(vae_module.VAE, "_decode_split", counting)
    monkeypatch.setattr(vae_module, "split_step", lambda rows: split)
    loss, stats = model.loss_and_grads(x, np.random.default_rng(5), validate=False)
    grads = {k: g.copy() for k, g in model.gradients().items()}
    return loss, stats, grads, len(calls)


CASES = {
    "vae-L3": lambda dt: VAE(D, 4, (9, 6), n_samples=3, seed=1, dtype=dt),
    "vae-L2-sampled-kl-free-bits": lambda dt: VAE(
        D, 4, (9,), n_samples=2, kl="sampled", free_bits=0.1, seed=1, dtype=dt
    ),
    "iwae-k5": lambda dt: IWAE(D, 4, (9, 6), k=5, seed=1, dtype=dt),
    "iwae-stl": lambda dt: IWAE(D, 4, (9, 6), k=4, estimator="stl", seed=1, dtype=dt),
    "iwae-dreg": lambda dt: IWAE(D, 4, (9, 6), k=4, estimator="dreg", seed=1, dtype=dt),
    "miwae": lambda dt: IWAE(D, 4, (9,), k=3, objective="miwae", groups=2, seed=1, dtype=dt),
}


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("name", list(CASES))
def test_split_step_is_the_one_thread_step(name, dtype, rtol, monkeypatch):
    x = _data(dtype)
    model = CASES[name](dtype)
    model.init_output_bias(x)
    loss, stats, grads, n = _step(model, x, False, monkeypatch)
    assert n == 0
    loss2, stats2, grads2, n2 = _step(model, x, True, monkeypatch)
    assert n2 == 1  # the step did decode on two threads
    assert loss2 == pytest.approx(loss, rel=rtol)
    assert stats2.keys() == stats.keys()
    for k in grads:
        np.testing.assert_allclose(grads2[k], grads[k], rtol=rtol, atol=rtol, err_msg=k)
    # twice in a row: the helper thread's buffers are reused, the caches stay valid
    loss3, _, grads3, _ = _step(model, x, True, monkeypatch)
    assert loss3 == loss2
    for k in grads:
        np.testing.assert_array_equal(grads3[k], grads2[k], err_msg=k)


def test_split_halves_are_whole_samples_with_an_odd_count(monkeypatch):
    """K = 5: rows [0, 2B) here and [2B, 5B) on the helper; B odd."""
    x = _data(np.float64, B=5)
    model = IWAE(D, 3, (8,), k=5, seed=2, dtype=np.float64)
    model.init_output_bias(x)
    seen = []
    real = vae_module.VAE._decode_split

    def recording(self, z, *args):
        out = real(self, z, *args)
        seen.append(out[0].split)
        return out

    monkeypatch.setattr(vae_module.VAE, "_decode_split", recording)
    monkeypatch.setattr(vae_module, "split_step", lambda rows: True)
    model.loss_and_grads(x, np.random.default_rng(1), validate=False)
    assert seen == [2 * 5]


@pytest.mark.parametrize(
    "make",
    [
        lambda: VAE(D, 3, (8,), seed=1, dtype=np.float64),  # one sample: nothing to split
        lambda: VAE(D, 3, (8,), n_samples=2, likelihood="gaussian", seed=1, dtype=np.float64),
    ],
    ids=["one-sample", "gaussian"],
)
def test_steps_that_do_not_split(make, monkeypatch):
    x = _data(np.float64)
    model = make()
    _, _, _, n = _step(model, x, True, monkeypatch)
    assert n == 0


def test_split_step_decision(monkeypatch):
    monkeypatch.setattr(lvmcore.backend, "engine_worker_count", lambda: 2)
    assert lvmcore.backend.split_step(lvmcore.backend.SPLIT_MIN_ROWS)
    assert not lvmcore.backend.split_step(lvmcore.backend.SPLIT_MIN_ROWS - 1)
    monkeypatch.setattr(lvmcore.backend, "engine_worker_count", lambda: 1)
    assert not lvmcore.backend.split_step(10**6)
    monkeypatch.setattr(lvmcore.backend, "engine_worker_count", lambda: 2)
    monkeypatch.setattr(lvmcore.backend, "_numba_layer_takes_threads", lambda: False)
    assert not lvmcore.backend.split_step(10**6)


def test_split_step_runs_its_gemms_on_one_blas_thread_and_restores(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    x = _data(np.float32)
    model = IWAE(D, 3, (8,), k=4, seed=1)
    model.init_output_bias(x)
    inside = []
    real = vae_module.VAE._decode_split

    def recording(self, *args):
        inside.append(blas())
        return real(self, *args)

    monkeypatch.setattr(vae_module.VAE, "_decode_split", recording)
    monkeypatch.setattr(vae_module, "split_step", lambda rows: True)
    with threadpool_limits(2, user_api="blas"):
        before = blas()
        model.loss_and_grads(x, np.random.default_rng(1), validate=False)
        assert blas() == before
    assert inside and set(inside[0]) == {1}


def test_a_forked_child_gets_its_own_helper_thread():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    helper = lvmcore.backend.step_helper()
    assert helper.submit(lambda: 7).result(timeout=10) == 7
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(_in_child).get(timeout=60) == 7


def _in_child():
    return lvmcore.backend.step_helper().submit(lambda: 7).result(timeout=10)
