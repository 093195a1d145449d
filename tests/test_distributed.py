"""lvmcore.distributed in one process: sharding, loss scaling, FlatGradients, the sharded fold at
P = 1, checksums and bad input. The multi-process jobs are in test_distributed_mpi.py."""

import sys
import types

import numpy as np
import pytest
from distributed_helpers import VAELogLikelihoodGrid, local_loss_and_grads

from lvmcore.backend import engine_kernel_threads
from lvmcore.distributed import (
    BatchShard,
    Communicator,
    FlatGradients,
    SingleProcess,
    check_data,
    check_parameters,
    checksum,
    fold_logsumexp_grid,
    get_communicator,
    grid_cells,
    select_local_device,
    shard_rows,
)
from lvmcore.exceptions import BackendUnavailableError, InvalidParameterError
from lvmcore.models import IWAE, VAE, VQVAE, CatVAE
from lvmcore.optim import Adam


def _binary(rng, B, D, dtype=np.float64):
    return (rng.random((B, D)) < 0.4).astype(dtype)


# ------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("B", [0, 1, 2, 5, 31, 100])
@pytest.mark.parametrize("P", [1, 2, 3, 4, 7])
def test_shard_rows_tile_the_batch_like_array_split(B, P):
    blocks = [shard_rows(B, r, P) for r in range(P)]
    assert blocks[0][0] == 0 and blocks[-1][1] == B
    assert all(a[1] == b[0] for a, b in zip(blocks[:-1], blocks[1:]))
    want = [len(s) for s in np.array_split(np.arange(B), P)]
    assert [stop - start for start, stop in blocks] == want


@pytest.mark.parametrize(
    "args,err,match",
    [
        ((10, 2, 2), ValueError, r"shard_rows: expected rank in \[0, size=2\), got 2"),
        ((10, 0, 0), InvalidParameterError, "'size' parameter of shard_rows"),
        ((-1, 0, 1), InvalidParameterError, "'batch_size' parameter of shard_rows"),
        ((10, -1, 2), InvalidParameterError, "'rank' parameter of shard_rows"),
        ((10.0, 0, 2), InvalidParameterError, "'batch_size' parameter of shard_rows"),
        ((10, True, 2), InvalidParameterError, "'rank' parameter of shard_rows"),
    ],
)
def test_shard_rows_bad_input(args, err, match):
    with pytest.raises(err, match=match):
        shard_rows(*args)


@pytest.mark.parametrize("P", [1, 2, 3, 5])
def test_grid_cells_cover_the_grid_once_in_row_major_order(P):
    cells = [c for r in range(P) for c in grid_cells(4, 3, r, P)]
    assert cells == [(i, j) for i in range(4) for j in range(3)]
    with pytest.raises(InvalidParameterError, match="'n_chunks' parameter of grid_cells"):
        grid_cells(4, 0, 0, 1)


def _models(dtype=np.float64):
    return {
        "vae": VAE(12, 3, (8,), dtype=dtype),
        "vae-sampled": VAE(12, 3, (8,), kl="sampled", n_samples=2, dtype=dtype),
        "iwae": IWAE(12, 3, (8,), k=4, dtype=dtype),
        "iwae-dreg": IWAE(12, 3, (8,), k=4, estimator="dreg", dtype=dtype),
        "iwae-stl": IWAE(12, 3, (8,), k=4, estimator="stl", dtype=dtype),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("B,P", [(8, 2), (7, 3), (2, 3)])
def test_sharded_gradient_is_the_one_process_gradient(name, B, P, rng):
    # The sum over simulated ranks of share_r * (gradient of rank r's mean loss), each rank on
    # its rows and the global batch's noise rows, equals the one-process gradient of the batch
    # mean: the loss scaling is exact for uneven shards and ranks without rows (B=2, P=3).
    x = _binary(rng, B, 12)
    one = _models()[name]
    loss, _ = one.loss_and_grads(x, np.random.default_rng(5))
    want = {k: g.copy() for k, g in one.gradients().items()}
    model = _models()[name]
    flat = FlatGradients(model.gradients())
    total, loss_sum = np.zeros_like(flat.buffer), 0.0
    for r in range(P):
        start, stop = shard_rows(B, r, P)
        with engine_kernel_threads():
            eps = model.draw_noise(np.random.default_rng(5), B)
            part, share = local_loss_and_grads(model, x, eps, start, stop)
        flat.pack()
        total += share * flat.buffer
        loss_sum += part
    np.testing.assert_allclose(loss_sum, loss, rtol=1e-13)
    for k, g in want.items():
        o = flat.offsets[k]
        np.testing.assert_allclose(
            total[o : o + g.size].reshape(g.shape), g, rtol=1e-11, atol=1e-14
        )


# -------------------------------------------------------------------------------- FlatGradients
def test_flat_gradients_copy_mode_packs_reduces_and_unpacks():
    grads = {"W": np.arange(6.0).reshape(2, 3), "b": np.array([1.0, -2.0])}
    flat = FlatGradients(grads)
    assert flat.buffer.shape == (8,) and flat.offsets == {"W": 0, "b": 6} and not flat.bound
    flat.allreduce(SingleProcess(), scale=0.25)
    np.testing.assert_array_equal(grads["W"], np.arange(6.0).reshape(2, 3) / 4)
    np.testing.assert_array_equal(flat.buffer, np.r_[np.arange(6.0) / 4, 0.25, -0.5])


def _all_models():
    return [
        VAE(12, 3, (8,), likelihood="gaussian"),
        IWAE(12, 3, (8,), k=3, estimator="dreg"),
        CatVAE(12, n_latents=3, n_categories=4, hidden=(8,), estimator="nvil"),
        VQVAE(12, codes=5, slots=2, code_dim=3, hidden=(8,), codebook_update="ema"),
    ]


@pytest.mark.parametrize("i", range(4), ids=["vae", "iwae", "catvae", "vqvae"])
def test_bound_gradients_are_views_the_models_write_in_place(i, rng):
    # The proof that views mode is safe: after bind, two training steps of every model family
    # leave model.gradients() the buffer's views, holding the unbound twin's exact values.
    x = _binary(rng, 6, 12, np.float32)
    if i == 0:
        x = rng.standard_normal((6, 12)).astype(np.float32)
    model, twin = _all_models()[i], _all_models()[i]
    flat = FlatGradients.bind(model)
    assert flat.bound
    opt = Adam(model.parameters(), model.gradients())
    opt_twin = Adam(twin.parameters(), twin.gradients())
    for step in range(2):
        model.loss_and_grads(x, np.random.default_rng(step))
        twin.loss_and_grads(x, np.random.default_rng(step))
        grads = model.gradients()
        for k, g in twin.gradients().items():
            assert grads[k] is flat.views[k]
            assert np.shares_memory(grads[k], flat.buffer)
            np.testing.assert_array_equal(grads[k], g)
        flat.allreduce(SingleProcess())
        opt.step()
        opt_twin.step()
    for k, p in twin.parameters().items():
        np.testing.assert_array_equal(model.parameters()[k], p)


def test_bind_refuses_a_model_whose_gradients_live_elsewhere():
    model = VAE(12, 3, (8,))
    extra = np.zeros(3, dtype=np.float32)
    before = model.gradients()
    model.gradients = lambda: {**before, "elsewhere": extra}
    with pytest.raises(TypeError, match=r"FlatGradients.bind: expected every gradient of VAE.*"):
        FlatGradients.bind(model)
    for mod in model.modules().values():  # nothing was rebound
        for k, g in mod.grads.items():
            assert any(g is b for b in before.values()), k


@pytest.mark.parametrize(
    "grads,err,match",
    [
        ({}, TypeError, "FlatGradients: expected grads to be a non-empty dict"),
        ([np.zeros(2)], TypeError, "FlatGradients: expected grads to be a non-empty dict"),
        ({"a": [1.0]}, TypeError, r"expected grads\['a'\] to be a numpy.ndarray"),
        ({"a": np.zeros(2, np.int64)}, TypeError, "dtype float32 or float64"),
        (
            {"a": np.zeros(2), "b": np.zeros(2, np.float32)},
            TypeError,
            r"expected every gradient to have one dtype, got \['float32', 'float64'\]",
        ),
    ],
)
def test_flat_gradients_bad_input(grads, err, match):
    with pytest.raises(err, match=match):
        FlatGradients(grads)


def test_flat_gradients_allreduce_bad_input():
    flat = FlatGradients({"a": np.zeros(2)})
    with pytest.raises(TypeError, match="FlatGradients.allreduce: expected comm to be a Comm"):
        flat.allreduce("world")
    with pytest.raises(InvalidParameterError, match="'scale' parameter"):
        flat.allreduce(SingleProcess(), scale=-0.5)
    with pytest.raises(InvalidParameterError, match="'scale' parameter"):
        flat.allreduce(SingleProcess(), scale=float("nan"))


# --------------------------------------------------------------------------------- communicator
def test_single_process_collectives_are_the_identity():
    comm = get_communicator(False)
    assert isinstance(comm, SingleProcess) and isinstance(comm, Communicator)
    assert (comm.rank, comm.size, comm.is_root, comm.local_rank) == (0, 1, True, 0)
    buf = np.arange(4.0)
    comm.allreduce_sum(buf)
    np.testing.assert_array_equal(buf, np.arange(4.0))
    assert comm.allreduce(2.5) == 2.5 and comm.allreduce(3) == 3
    assert isinstance(comm.allreduce(3), int)
    np.testing.assert_array_equal(comm.allreduce(np.array([1, 2]), op="max"), [1, 2])
    assert comm.allreduce(float("nan")) != comm.allreduce(float("nan"))  # NaN passes through
    assert comm.bcast({"a": 1}) == {"a": 1}
    assert comm.gather(7) == [7] and comm.allgather(7) == [7]
    comm.barrier()


def test_abort_on_error_in_one_process_only_reraises():
    comm = SingleProcess()
    with pytest.raises(KeyError, match="x"), comm.abort_on_error():
        raise KeyError("x")
    with comm.abort_on_error():
        pass


@pytest.mark.parametrize(
    "buf,err,match",
    [
        (np.zeros((2, 2)), ValueError, "expected buffer to have 1 dimensions"),
        (np.zeros(8)[::2], ValueError, "expected buffer to be C-contiguous"),
        (np.zeros(3, np.int32), TypeError, "expected buffer to have dtype float32 or float64"),
        ([1.0, 2.0], TypeError, "expected buffer to be a numpy.ndarray or cupy.ndarray"),
    ],
)
def test_allreduce_sum_bad_input(buf, err, match):
    with pytest.raises(err, match=f"SingleProcess.allreduce_sum: {match}"):
        SingleProcess().allreduce_sum(buf)


def test_allreduce_sum_refuses_a_read_only_buffer():
    buf = np.zeros(3)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="expected buffer to be writeable"):
        SingleProcess().allreduce_sum(buf)


def test_allreduce_and_collectives_bad_input():
    comm = SingleProcess()
    with pytest.raises(InvalidParameterError, match="'op' parameter of SingleProcess.allreduce"):
        comm.allreduce(1.0, op="prod")
    with pytest.raises(TypeError, match="expected value to be an int, a float or a numpy"):
        comm.allreduce("1.0")
    with pytest.raises(TypeError, match="expected value to be an int, a float or a numpy"):
        comm.allreduce(True)
    with pytest.raises(ValueError, match=r"SingleProcess.bcast: expected root to be a rank in"):
        comm.bcast(1, root=1)
    with pytest.raises(ValueError, match=r"SingleProcess.gather: expected root to be a rank in"):
        comm.gather(1, root=-1)


def test_get_communicator_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'lvmcore\[mpi\]'"):
        get_communicator(True)
    assert isinstance(get_communicator(False), SingleProcess)
    with pytest.raises(TypeError, match="get_communicator: expected distributed to be a bool"):
        get_communicator("yes")


def _fake_cupy_runtime(monkeypatch, n_devices):
    used = []
    device = types.SimpleNamespace
    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: n_devices),
        Device=lambda i: device(use=lambda: used.append(i)),
    )
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    return used


@pytest.mark.parametrize(
    "n_devices,local_rank,local_size,want",
    [(1, 0, 1, 0), (1, 3, 4, 0), (4, 2, 4, 2), (8, 1, 2, 1)],
)
def test_select_local_device_one_gpu_per_rank(monkeypatch, n_devices, local_rank, local_size, want):
    used = _fake_cupy_runtime(monkeypatch, n_devices)
    comm = SingleProcess()
    comm.local_rank, comm.local_size = local_rank, local_size
    assert select_local_device(comm) == want and used == [want]


def test_select_local_device_more_ranks_than_gpus(monkeypatch):
    _fake_cupy_runtime(monkeypatch, 2)
    comm = SingleProcess()
    comm.local_rank, comm.local_size = 0, 3
    with pytest.raises(ValueError, match="expected at most one rank per GPU, got 3 ranks"):
        select_local_device(comm)
    with pytest.raises(TypeError, match="select_local_device: expected comm to be a Comm"):
        select_local_device(None)


# ---------------------------------------------------------------------------- sharded evaluation
def test_fold_at_one_process_is_the_sequential_loop():
    def cell(i, j):
        return np.random.default_rng([i, j]).standard_normal(3 + i) * 20

    got = fold_logsumexp_grid(SingleProcess(), 3, 4, cell)
    want = []
    for i in range(3):
        lse = np.full(3 + i, -np.inf)
        for j in range(4):
            lse = np.logaddexp(lse, cell(i, j))
        want.append(lse)
    assert got.tobytes() == np.concatenate(want).tobytes()
    assert fold_logsumexp_grid(SingleProcess(), 0, 2, cell).shape == (0,)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n,k,batch_size,chunk_size", [(25, 30, 10, 8), (7, 5, 7, 5), (9, 1, 4, 1)])
def test_fold_of_vae_cells_is_bit_identical_to_log_likelihood(
    likelihood, n, k, batch_size, chunk_size, rng
):
    model = VAE(12, 3, (8,), likelihood=likelihood)
    if likelihood == "bernoulli":
        x = _binary(rng, n, 12, np.float32)
    else:
        x = rng.standard_normal((n, 12)).astype(np.float32)
    ref = model.log_likelihood(
        x, np.random.default_rng(3), k=k, batch_size=batch_size, chunk_size=chunk_size
    )
    with engine_kernel_threads():
        grid = VAELogLikelihoodGrid(model, x, np.random.default_rng(3), k, batch_size, chunk_size)
        lse = fold_logsumexp_grid(SingleProcess(), grid.n_batches, grid.n_chunks, grid.cell)
    assert grid.finish(lse).tobytes() == ref.tobytes()


def test_fold_bad_input():
    comm = SingleProcess()
    with pytest.raises(TypeError, match="fold_logsumexp_grid: expected comm to be a Comm"):
        fold_logsumexp_grid(None, 1, 1, lambda i, j: np.zeros(1))
    with pytest.raises(TypeError, match="expected cell to be callable"):
        fold_logsumexp_grid(comm, 1, 1, "cell")
    with pytest.raises(TypeError, match=r"expected cell\(0, 0\) to have dtype float64"):
        fold_logsumexp_grid(comm, 1, 1, lambda i, j: np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"expected cell\(0, 0\) to have 1 dimensions"):
        fold_logsumexp_grid(comm, 1, 1, lambda i, j: np.zeros((2, 2)))
    with pytest.raises(
        ValueError, match=r"every chunk of batch 0 to give 2 rows, got cell\(0, 1\)"
    ):
        fold_logsumexp_grid(comm, 1, 2, lambda i, j: np.zeros(2 + j))
    with pytest.raises(ValueError, match="fold_logsumexp_grid: expected root to be a rank"):
        fold_logsumexp_grid(comm, 1, 1, lambda i, j: np.zeros(1), root=1)


# ------------------------------------------------------------------------------------ checksums
def test_checksum_sees_one_ulp_names_dtypes_and_shapes():
    a = {"w": np.arange(6.0).reshape(2, 3)}
    base = checksum(a)
    assert checksum({"w": a["w"].copy()}) == base
    assert checksum({"w": np.nextafter(a["w"], 10)}) != base
    assert checksum({"v": a["w"]}) != base
    assert checksum({"w": a["w"].astype(np.float32)}) != base
    assert checksum({"w": a["w"].reshape(3, 2)}) != base
    assert checksum({"w": np.asfortranarray(a["w"])}) == base  # values, not memory layout
    with pytest.raises(TypeError, match="checksum: expected arrays to be a dict"):
        checksum([a["w"]])
    with pytest.raises(TypeError, match=r"checksum: expected arrays\['w'\] to be a numpy"):
        checksum({"w": [1.0]})


def test_checks_pass_in_one_process():
    model = IWAE(12, 3, (8,), k=2)
    check_parameters(SingleProcess(), model.parameters(), when="after epoch 1")
    check_data(SingleProcess(), {"train": np.zeros((4, 12))})


# ------------------------------------------------------------- variable-length gather, decisions
def test_allgather_rows_in_one_process_is_the_identity_or_the_first_rows():
    comm = SingleProcess()
    a = np.arange(12.0).reshape(3, 4)
    assert comm.allgather_rows(a) is a
    np.testing.assert_array_equal(comm.allgather_rows(a, axis=1, count=2), a[:, :2])
    assert comm.allgather_rows(a, count=0).shape == (0, 4)
    flags = np.array([True, False])
    assert comm.allgather_rows(flags, axis=-1) is flags


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(axis=2), ValueError, r"expected axis in \[-2, 2\) for an array of shape \(3, 4\)"),
        (dict(axis=1.0), TypeError, "expected axis to be an int, got float"),
        (dict(count=4), ValueError, r"expected count <= 3 \(the rows of array along axis 0\)"),
        (dict(count=-1), InvalidParameterError, "'count' parameter"),
    ],
)
def test_allgather_rows_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        SingleProcess().allgather_rows(np.zeros((3, 4)), **kwargs)
    with pytest.raises(TypeError, match=r"allgather_rows: expected array to be a numpy"):
        SingleProcess().allgather_rows([1.0, 2.0])


def test_decisions_in_one_process_run_once_and_mark_their_errors():
    from lvmcore.distributed import raised_on_every_rank

    comm = SingleProcess()
    calls = []
    assert comm.run_on_root(lambda a, b: calls.append(a) or a + b, 2, 3) == 5
    assert comm.run_everywhere(lambda: calls.append(0) or "x") == "x"
    assert calls == [2, 0]
    for run in (comm.run_on_root, comm.run_everywhere):
        with pytest.raises(FileExistsError, match="held") as info:
            run(lambda: (_ for _ in ()).throw(FileExistsError("held")))
        assert raised_on_every_rank(info.value)
    with pytest.raises(KeyError) as info, comm.raising_together():
        raise KeyError("k")
    assert raised_on_every_rank(info.value)
    assert not raised_on_every_rank(KeyError("k"))


def test_batch_shard_of_a_rank_without_rows_runs_one_stand_in_row():
    comm = SingleProcess()
    shard = BatchShard(comm, 2, *shard_rows(2, 2, 3))
    assert (shard.rows, shard.share, shard.local_slice) == (0, 0.0, slice(0, 1))
    shard = BatchShard(comm, 7, *shard_rows(7, 1, 3))
    assert (shard.start, shard.stop, shard.share, shard.local_slice) == (3, 5, 2 / 7, slice(3, 5))


def test_step_noise_of_a_shard_is_its_rows_of_the_global_draw():
    model = CatVAE(12, n_latents=2, n_categories=3, hidden=(8,), estimator="vimco", k=2)
    whole = model.draw_noise(np.random.default_rng(4), 7)
    for r, (start, stop) in enumerate(shard_rows(7, r, 3) for r in range(3)):
        with model._data_parallel(BatchShard(SingleProcess(), 7, start, stop)):
            part = model._step_noise(np.random.default_rng(4), stop - start)
        assert part.tobytes() == np.ascontiguousarray(whole[:, start:stop]).tobytes(), r
    assert model._shard is None  # the seam is closed again after the block


# ------------------------------------------------------------- the reduction point, rank by rank
class _Recorder(SingleProcess):
    """One process that records every array a step gathers through _batch_rows."""

    def __init__(self):
        self.seen = []

    def allgather_rows(self, array, axis=0, count=None):
        self.seen.append((array.copy(), axis))
        return array


class _Replay(SingleProcess):
    """Rank ``rank`` of ``size``, simulated in one process: each gather returns the whole batch's
    array recorded in the one-process step, after checking that this rank's rows are in it at
    their place (so the replay proves the rows a rank contributes)."""

    def __init__(self, rank, size, recorded, start):
        self.rank, self.size, self.start = rank, size, start
        self.recorded = iter(recorded)

    def allgather_rows(self, array, axis=0, count=None):
        whole, whole_axis = next(self.recorded)
        assert whole_axis == axis
        n = array.shape[axis] if count is None else count
        mine = np.take(array, np.arange(n), axis=axis)
        theirs = np.take(whole, np.arange(self.start, self.start + n), axis=axis)
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-13)
        return whole


def _free_bits_between_shards(x, P):
    """A free-bits floor between the whole batch's mean KL of one latent dimension and rank 0's
    rows' mean of it: that dimension is held at the floor by one and not by the other."""
    from lvmcore.distributions.kl import kl_normal_std_per_dim

    mu, logvar = VAE(12, 3, (8,), dtype=np.float64).encode(x)
    kl = kl_normal_std_per_dim(mu, logvar)
    start, stop = shard_rows(x.shape[0], 0, P)
    whole, mine = kl.mean(axis=0), kl[start:stop].mean(axis=0)
    j = int(np.argmax(np.abs(whole - mine)))
    return float((whole[j] + mine[j]) / 2)


_REDUCED = {
    "vae-free-bits": lambda fb: VAE(12, 3, (8,), free_bits=fb, dtype=np.float64),
    "vae-sampled-free-bits": lambda fb: VAE(
        12, 3, (8,), kl="sampled", n_samples=2, free_bits=fb, dtype=np.float64
    ),
    "catvae-reinforce": lambda fb: CatVAE(12, 2, 3, (8,), estimator="reinforce", dtype=np.float64),
    "catvae-nvil": lambda fb: CatVAE(
        12, 2, 3, (8,), estimator="nvil", baseline_hidden=5, dtype=np.float64
    ),
    "vqvae-ema-reset": lambda fb: VQVAE(
        12,
        codes=9,
        slots=2,
        code_dim=3,
        hidden=(8,),
        codebook_update="ema",
        dead_code_steps=1,
        reset_dead_codes=True,
        dtype=np.float64,
    ),  # fmt: skip
}


def _one_step(model, x, comm, start, stop, naive=False):
    if naive:  # every rank's statistics over its own rows: the mistake to catch
        model._batch_rows = lambda array, axis=0: array
    shard = BatchShard(comm, x.shape[0], start, stop)
    with model._data_parallel(shard):
        model.loss_and_grads(x[shard.local_slice], np.random.default_rng(5))
    return shard


@pytest.mark.parametrize("name", list(_REDUCED))
@pytest.mark.parametrize("B,P", [(9, 2), (7, 3), (2, 3)])
def test_each_rank_computes_the_whole_batch_statistics_at_the_reduction_point(name, B, P, rng):
    # Rank by rank, with the gathers replayed from the one-process step: the sum over ranks of
    # share_r * gradient_r is the one-process gradient, and every rank's state after the step
    # (EMA codebook and counters, re-seeded codes, moving baselines) is the one-process state.
    # The same ranks with their own rows' statistics (naive) fail one of the two comparisons.
    x = _binary(rng, B, 12)
    fb = _free_bits_between_shards(x, P)
    one, rec = _REDUCED[name](fb), _Recorder()
    _one_step(one, x, rec, 0, B)
    want = {k: g.copy() for k, g in one.gradients().items()}
    for naive in (False, True):
        total = {k: np.zeros_like(g) for k, g in want.items()}
        state_ok = True
        for r in range(P):
            model = _REDUCED[name](fb)
            start, stop = shard_rows(B, r, P)
            shard = _one_step(model, x, _Replay(r, P, rec.seen, start), start, stop, naive)
            for k, p in one.parameters().items():
                state_ok &= np.allclose(model.parameters()[k], p, rtol=1e-12, atol=1e-13)
            if shard.rows:
                for k, g in model.gradients().items():
                    total[k] += shard.share * g
        grads_ok = all(np.allclose(total[k], g, rtol=1e-10, atol=1e-12) for k, g in want.items())
        if not naive:
            assert state_ok and grads_ok, (state_ok, grads_ok)
        elif B > P or name.startswith("vae"):
            # (at B=2, P=3 the naive categorical baselines and one-row codebooks can agree)
            assert not (state_ok and grads_ok), "the naive statistics went unnoticed"


def test_vqvae_decides_divergence_over_the_whole_batch(rng):
    # one rank's rows alone are finite, the batch's are not: both ranks stop with NaN, so both
    # call the same collectives
    model = VQVAE(12, codes=5, slots=2, code_dim=3, hidden=(8,), dtype=np.float64)
    x = _binary(rng, 4, 12)
    calls = []

    class Comm(SingleProcess):
        def allgather_rows(self, array, axis=0, count=None):
            calls.append(array.shape)
            return np.concatenate([array, np.zeros_like(array)])  # the other rank: not finite

    with model._data_parallel(BatchShard(Comm(), 8, 0, 4)):
        loss, stats = model.loss_and_grads(x, np.random.default_rng(0))
    assert np.isnan(loss) and np.isnan(stats["bound"]) and calls == [(4,)]


def test_fit_refuses_a_communicator_of_another_kind():
    from lvmcore.data import load_dataset
    from lvmcore.train import fit

    with pytest.raises(TypeError, match="fit: expected comm to be a lvmcore.distributed.Commun"):
        fit(VAE(64, 2, (4,)), load_dataset("digits"), epochs=1, comm="world", progress=False)


class _OneProcess(Communicator):
    """A communicator of one process that is not SingleProcess: fit takes the data-parallel
    path with it, as with MPICommunicator at world size 1 (mpiexec -n 1, one GPU)."""

    def _allreduce_host(self, buffer):
        pass

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]


def test_fit_on_the_data_parallel_path_at_one_process_is_the_plain_run_bit_for_bit():
    # the flat gradient buffer (views), the reduction of loss and statistics, the shards, the
    # gathers and the checksums change nothing in one process
    from lvmcore.data import Dataset, load_dataset
    from lvmcore.train import fit

    d = load_dataset("digits")
    data = Dataset(d.train[:50], d.valid[:10], d.test[:1], d.name, d.shape)
    runs = []
    for comm in (None, _OneProcess()):
        model = VQVAE(64, codes=6, slots=2, code_dim=3, hidden=(8,), codebook_update="ema")
        history = fit(model, data, epochs=2, batch_size=16, progress=False, comm=comm)
        runs.append(([{k: v for k, v in h.items() if k != "seconds"} for h in history], model))
    assert runs[0][0] == runs[1][0]
    assert checksum(runs[0][1].parameters()) == checksum(runs[1][1].parameters())
    grads = runs[1][1].gradients()  # the second model's gradients are views of one buffer
    base = grads["encoder.W0"].base
    assert all(g.base is base for g in grads.values())


def test_cli_distributed_without_mpi4py_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from lvmcore.cli import main

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    out = tmp_path / "run"
    for argv in (
        ["train", "--distributed", "--out", str(out)],
        ["eval", str(out), "--distributed"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("lvmcore: error: get_communicator: expected mpi4py")
        assert "pip install 'lvmcore[mpi]'" in err
    assert not out.exists()


def test_cli_moves_each_rank_to_the_gpu_of_its_local_rank_first(monkeypatch):
    import lvmcore.backend
    import lvmcore.distributed
    from lvmcore.cli._common import to_device

    calls = []
    monkeypatch.setattr(lvmcore.backend, "array_module", lambda device: calls.append(device) or 7)
    monkeypatch.setattr(lvmcore.distributed, "select_local_device", lambda c: calls.append(c))

    class Model:
        def to(self, xp):
            calls.append(("to", xp))

    comm = _OneProcess()
    comm.size = 2
    to_device(Model(), "cuda", comm)
    assert calls == ["cuda", comm, ("to", 7)]
    calls.clear()
    to_device(Model(), "cuda", SingleProcess())  # one process: the current device
    assert calls == ["cuda", ("to", 7)]
