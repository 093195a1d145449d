"""One rank of the mpiexec tests (tests/test_distributed_mpi.py): ``mpiexec -n P python
tests/distributed_worker.py SCENARIO``.

Scenarios: ``suite`` (collectives, checksums, sharded evaluation, data-parallel training, the
NCCL path on the CUDA emulator), ``nccl`` (that last part alone), ``abort`` (rank 1 raises while
the others wait in a barrier), ``families`` (``fit(comm=)`` against one process for every model
family, the naive local batch statistics, variable-length gathers, sharded log-likelihoods),
``emulated`` (``fit(comm=)`` of a VAE on the CUDA emulator, gradients through the emulated
NCCL). Rank 0 prints one line ``RESULT <json>``; a failed check is a value in the JSON, not an
exception, so one run reports every check.
"""

import json
import sys
import time

import numpy as np

from lvmcore.distributed import (
    FlatGradients,
    MPICommunicator,
    check_data,
    check_parameters,
    checksum,
    fold_logsumexp_grid,
    shard_rows,
)


def collectives(comm):
    P, r = comm.size, comm.rank
    out = {}
    buf = np.arange(1000, dtype=np.float32) * (r + 1)
    keep = buf
    comm.allreduce_sum(buf)
    out["exact_sum"] = bool(keep is buf and np.array_equal(buf, np.arange(1000) * P * (P + 1) / 2))
    # 425,284 float32 (1.6 MiB): the IWAE-paper model's gradient, through MPI's large-message path
    for dtype in (np.float32, np.float64):
        parts = [np.random.default_rng(q).standard_normal(425_284).astype(dtype) for q in range(P)]
        buf = parts[r].copy()
        comm.allreduce_sum(buf)
        want = np.sum([p.astype(np.float64) for p in parts], axis=0)
        name = np.dtype(dtype).name
        # every rank holds the same bits, whatever order MPI summed in
        out[f"random_sum_same_on_ranks_{name}"] = (
            len(set(comm.allgather(checksum({"b": buf})))) == 1
        )
        # to rounding: |error| <= (P - 1) ulp of the largest term
        atol = (P - 1) * np.finfo(dtype).eps * 8.0
        out[f"random_sum_{name}"] = bool(np.allclose(buf, want, rtol=0, atol=atol))
    values = comm.allgather(comm.allreduce(0.1 * (r + 1)))
    want = 0.0
    for q in range(P):
        want = want + 0.1 * (q + 1)
    out["scalar_sum"] = all(v == want for v in values)
    out["array_max"] = bool(np.array_equal(comm.allreduce(np.array([r, -r]), op="max"), [P - 1, 0]))
    out["int_sum"] = comm.allreduce(r + 1) == P * (P + 1) // 2
    out["bcast"] = comm.bcast({"from": r} if comm.is_root else None) == {"from": 0}
    g = comm.gather(r)
    out["gather"] = g == list(range(P)) if comm.is_root else g is None
    comm.barrier()
    return out


def _raised_everywhere(comm, check, *args):
    """(every rank raised ValueError, rank 0's message)."""
    try:
        check(comm, *args)
        msg = None
    except ValueError as exc:
        msg = str(exc)
    msgs = comm.allgather(msg)
    return all(m is not None for m in msgs), msgs[0]


def checksums(comm):
    from lvmcore.data import load_dataset
    from lvmcore.models import IWAE

    out = {}
    model = IWAE(64, 4, (16,), k=3)
    params = model.parameters()
    check_parameters(comm, params, when="at start")
    out["params_equal_pass"] = True
    if comm.rank == comm.size - 1:
        w = params["decoder.W0"]
        w[0, 0] = np.nextafter(w[0, 0], np.inf)  # one ulp
    out["params_drift_raises"], out["params_drift_msg"] = _raised_everywhere(
        comm, check_parameters, params, "after epoch 1"
    )
    data = load_dataset("digits")
    arrays = {"train": data.train.copy(), "valid": data.valid}
    check_data(comm, arrays)
    out["data_equal_pass"] = True
    if comm.rank == comm.size - 1:
        arrays["train"][5, 3] = 1 - arrays["train"][5, 3]
    out["data_differ_raises"], out["data_differ_msg"] = _raised_everywhere(comm, check_data, arrays)
    return out


def fold(comm):
    from distributed_helpers import VAELogLikelihoodGrid

    from lvmcore.backend import engine_kernel_threads
    from lvmcore.data import load_dataset
    from lvmcore.models import VAE

    out = {}
    rows = [7, 7, 7, 3]

    def cell(i, j):  # any values, -inf rows included: only the order of the fold matters
        v = np.random.default_rng([i, j]).standard_normal(rows[i]) * 30.0
        v[(np.arange(rows[i]) + j) % 3 == 0] = -np.inf
        return v

    got = fold_logsumexp_grid(comm, 4, 5, cell)
    if comm.is_root:
        want = []
        for i in range(4):
            lse = np.full(rows[i], -np.inf)
            for j in range(5):
                lse = np.logaddexp(lse, cell(i, j))
            want.append(lse)
        out["synthetic_bit_identical"] = got.tobytes() == np.concatenate(want).tobytes()
    else:
        out["synthetic_none_off_root"] = got is None
    model = VAE(64, 4, (16,))
    x = load_dataset("digits").valid[:25]
    with engine_kernel_threads():
        grid = VAELogLikelihoodGrid(model, x, np.random.default_rng(7), 30, 10, 8)
        lse = fold_logsumexp_grid(comm, grid.n_batches, grid.n_chunks, grid.cell)
    if comm.is_root:
        ref = model.log_likelihood(x, np.random.default_rng(7), k=30, batch_size=10, chunk_size=8)
        out["vae_bit_identical"] = grid.finish(lse).tobytes() == ref.tobytes()
    return out


def train(comm, model_name, dtype, steps=20):
    """Hand-written data-parallel training against one process: (max relative parameter
    difference, max loss difference, parameters equal on every rank)."""
    from distributed_helpers import local_loss_and_grads

    from lvmcore.backend import engine_kernel_threads
    from lvmcore.data import load_dataset
    from lvmcore.models import IWAE, VAE
    from lvmcore.optim import Adam

    def build():
        if model_name == "vae":
            return VAE(64, 8, (32,), dtype=dtype)
        return IWAE(64, 8, (32,), k=5, estimator="dreg", dtype=dtype)

    x = load_dataset("digits").train.astype(dtype)
    # 19 steps of 31 rows (uneven over 2 and 3 ranks) and a last short one of 2 rows (a rank
    # without rows at P = 3), as the remainder batch of an epoch
    sizes = [31] * (steps - 1) + [2]
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def rng(s):
        return np.random.default_rng([0, 1, s, 1])

    ref = build()
    opt = Adam(ref.parameters(), ref.gradients(), lr=3e-3)
    ref_losses = []
    for s in range(steps):
        loss, _ = ref.loss_and_grads(x[starts[s] : starts[s + 1]], rng(s))
        opt.step()
        ref_losses.append(loss)

    model = build()
    flat = FlatGradients.bind(model)  # before the optimizer: it holds the gradient arrays
    opt = Adam(model.parameters(), model.gradients(), lr=3e-3)
    losses = []
    for s in range(steps):
        xb = x[starts[s] : starts[s + 1]]
        B = xb.shape[0]
        start, stop = shard_rows(B, comm.rank, comm.size)
        with engine_kernel_threads():
            eps = model.draw_noise(rng(s), B)  # the global batch's noise, sliced per rank
            part, share = local_loss_and_grads(model, xb, eps, start, stop)
        losses.append(comm.allreduce(part))
        flat.allreduce(comm, scale=share)
        opt.step()
    try:
        check_parameters(comm, model.parameters(), when=f"after {steps} steps")
        same = True
    except ValueError:
        same = False
    got, want = model.parameters(), ref.parameters()
    rel = max(
        float(np.max(np.abs(got[k] - want[k])) / max(1e-30, float(np.max(np.abs(want[k])))))
        for k in want
    )
    dloss = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    return {"param_rel_diff": rel, "loss_rel_diff": dloss, "ranks_equal": same}


def nccl(comm):
    """The device all-reduce through NCCL on emulated CuPy arrays (tests/cuda_emu)."""
    from cuda_emu import fake_cupy
    from distributed_helpers import install_fake_nccl

    P, r = comm.size, comm.rank
    out = {}
    with fake_cupy.installed() as cp, install_fake_nccl(cp) as calls:
        buf = cp.asarray(np.arange(12, dtype=np.float32) * (r + 1))
        comm.allreduce_sum(buf)
        out["device_sum"] = bool(np.array_equal(buf.get(), np.arange(12) * P * (P + 1) / 2))
        grads = {
            "W": cp.asarray(np.full((3, 2), r + 1.0)),
            "b": cp.asarray(np.full(4, 2.0 * (r + 1))),
        }
        flat = FlatGradients(grads)
        flat.allreduce(comm, scale=0.5)
        tri = P * (P + 1) / 2
        out["device_flat_copy"] = bool(
            np.array_equal(grads["W"].get(), np.full((3, 2), 0.5 * tri))
            and np.array_equal(grads["b"].get(), np.full(4, tri))
        )
        out["nccl_calls"] = [list(c) for c in calls]

        def cell(i, j):
            return cp.asarray(np.full(2, float(i + j)))

        got = fold_logsumexp_grid(comm, 2, 3, cell)
        if comm.is_root:
            want = [
                np.logaddexp(np.logaddexp(np.logaddexp(-np.inf, i), i + 1), i + 2) for i in (0, 1)
            ]
            out["device_fold"] = bool(np.array_equal(got, np.repeat(want, 2)))
    return out


def suite(comm):
    t0 = time.perf_counter()
    out = {"size": comm.size, "seconds": {}}

    def timed(name, func, *args):
        t = time.perf_counter()
        result = func(comm, *args)
        out["seconds"][name] = round(time.perf_counter() - t, 3)
        return result

    out["collectives"] = timed("collectives", collectives)
    out["checksums"] = timed("checksums", checksums)
    out["fold"] = timed("fold", fold)
    out["train"] = {
        f"{name}_{np.dtype(dt).name}": timed(f"train_{name}_{np.dtype(dt).name}", train, name, dt)
        for name in ("vae", "iwae")
        for dt in (np.float64, np.float32)
    }
    out["nccl"] = timed("nccl", nccl)
    out["seconds"]["all"] = round(time.perf_counter() - t0, 3)
    return out


# Every model family, float64, small: (name, constructor keyword arguments). The runs train
# 2 epochs of 64 rows in batches of 31 (31, 31, 2: uneven over 2 and 3 ranks, and a last batch
# that leaves a rank without rows at P = 3).
FAMILIES = {
    # a floor between the batch-mean KLs of the dimensions, and between the halves' means of
    # some: a rank's own rows would hold other dimensions at the floor than the whole batch
    "vae-free-bits": ("vae", dict(latent_dim=6, free_bits=0.11)),
    "vae-sampled-free-bits": ("vae", dict(latent_dim=6, kl="sampled", n_samples=2, free_bits=0.11)),
    "iwae-iwae": ("iwae", dict(latent_dim=4, k=3, estimator="iwae")),
    "iwae-stl": ("iwae", dict(latent_dim=4, k=3, estimator="stl")),
    "iwae-dreg": ("iwae", dict(latent_dim=4, k=3, estimator="dreg")),
    "catvae-gumbel": ("catvae", dict(n_latents=3, n_categories=4, estimator="gumbel")),
    "catvae-reinforce": ("catvae", dict(n_latents=3, n_categories=4, estimator="reinforce")),
    "catvae-nvil": ("catvae", dict(n_latents=3, n_categories=4, estimator="nvil")),
    "catvae-vimco": ("catvae", dict(n_latents=3, n_categories=4, estimator="vimco", k=3)),
    "vqvae-loss": ("vqvae", dict(codes=12, slots=2, code_dim=3, codebook_update="loss")),
    "vqvae-ema-reset": (
        "vqvae",
        dict(
            codes=24,
            slots=2,
            code_dim=3,
            codebook_update="ema",
            dead_code_steps=2,
            reset_dead_codes=True,
        ),
    ),
}
# The same runs with each rank's batch statistics taken over its own rows only: the mistake
# the tests must catch.
NAIVE = ("vae-free-bits", "catvae-nvil", "vqvae-ema-reset")


def _family_model(name):
    from lvmcore.models import build_model

    kind, kw = FAMILIES[name]
    kw = dict(kw, hidden=(16,))
    if kind == "catvae" and kw["estimator"] == "nvil":
        kw["baseline_hidden"] = 8
    return build_model(dict(model=kind, data_dim=64, dtype="float64", seed=3, **kw))


def _family_fit(name, comm, naive=False):
    """Parameters (host copies) after 2 epochs of fit, and whether check_parameters raised."""
    from lvmcore.data import Dataset, load_dataset
    from lvmcore.train import fit

    d = load_dataset("digits")
    data = Dataset(d.train[:64], d.valid[:20], d.test[:1], d.name, d.shape)
    model = _family_model(name)
    if naive:
        model._batch_rows = lambda array, axis=0: array  # local statistics: wrong
    drifted = False
    try:
        fit(model, data, epochs=2, batch_size=31, lr=3e-3, progress=False, comm=comm, seed=4)
    except ValueError as exc:
        if "check_parameters" not in str(exc):
            raise
        drifted = True
    return {k: np.array(v) for k, v in model.parameters().items()}, drifted


def _rel_diff(got, want):
    return max(
        float(np.max(np.abs(got[k] - want[k])) / max(1e-30, float(np.max(np.abs(want[k])))))
        for k in want
    )


def families(comm):
    """fit(comm=) of every model family against fit in one process, and the naive version."""
    from lvmcore.distributed import SingleProcess

    P, r = comm.size, comm.rank
    names = list(FAMILIES)
    # the one-process references, shared out among the ranks
    mine = {n: _family_fit(n, SingleProcess())[0] for i, n in enumerate(names) if i % P == r}
    refs = {}
    for part in comm.allgather(mine):
        refs.update(part)
    out = {"params": {}, "naive": {}, "naive_drifted": {}}
    for n in names:
        got, drifted = _family_fit(n, comm)
        out["params"][n] = None if drifted else _rel_diff(got, refs[n])
    for n in NAIVE:
        got, drifted = _family_fit(n, comm, naive=True)
        out["naive"][n] = _rel_diff(got, refs[n])
        out["naive_drifted"][n] = drifted
    out["gather"] = gathers(comm)
    out["log_likelihood"] = sharded_log_likelihoods(comm)
    out["emulated"] = emulated(comm)
    return out


def gathers(comm):
    """allgather_rows: uneven blocks, other axes, int and bool dtypes, a rank contributing
    nothing."""
    P, r = comm.size, comm.rank
    out = {}
    rows = [np.arange(3 * q, 3 * q + q + 1, dtype=np.float64) for q in range(P)]
    got = comm.allgather_rows(rows[r])
    out["uneven_1d"] = bool(np.array_equal(got, np.concatenate(rows)))
    a = np.arange(2 * (r + 1) * 3).reshape(2, r + 1, 3) + 100 * r  # batch on axis 1, int64
    got = comm.allgather_rows(a, axis=1)
    want = np.concatenate(
        [np.arange(2 * (q + 1) * 3).reshape(2, q + 1, 3) + 100 * q for q in range(P)], axis=1
    )
    out["axis_1_int64"] = bool(got.dtype == np.int64 and np.array_equal(got, want))
    flags = np.array([True, r % 2 == 0, False])
    got = comm.allgather_rows(flags, count=0 if r == 1 else 3)
    want = np.concatenate([np.array([True, q % 2 == 0, False]) for q in range(P) if q != 1])
    out["bool_count"] = bool(got.dtype == np.bool_ and np.array_equal(got, want))
    try:
        comm.allgather_rows(np.zeros((2, 3 + (r == P - 1))))
        out["shape_mismatch_raises"] = False
    except ValueError as exc:
        out["shape_mismatch_raises"] = "one dtype and one shape besides axis 0" in str(exc)
    return out


def sharded_log_likelihoods(comm):
    """model.log_likelihood(comm=) bit-identical to one process for the VAE (Philox by
    sample), the categorical VAE and the MVAE (noise keyed by batch and chunk), and for the
    VAE with each rank's cells on two threads ("vae-threads")."""
    import lvmcore.evaluate
    from lvmcore.data import load_dataset
    from lvmcore.models import MVAE, VAE, CatVAE

    x = load_dataset("digits").valid[:23].astype(np.float64)
    out = {}
    one_thread = lvmcore.evaluate.engine_worker_count
    for name, model in (
        ("vae", VAE(64, 3, (8,), dtype=np.float64)),
        ("vae-threads", VAE(64, 3, (8,), dtype=np.float64)),
        ("catvae", CatVAE(64, 3, 4, (8,), estimator="vimco", k=2, dtype=np.float64)),
        ("mvae", MVAE(64, latent_dim=2, hidden=(8,), dtype=np.float64)),
    ):
        kw = dict(k=17, batch_size=5, chunk_size=4)
        if name == "vae-threads":
            lvmcore.evaluate.engine_worker_count = lambda: 2
        try:
            got = model.log_likelihood(x, np.random.default_rng(11), comm=comm, **kw)
        finally:
            lvmcore.evaluate.engine_worker_count = one_thread
        if comm.is_root:
            ref = model.log_likelihood(x, np.random.default_rng(11), **kw)
            out[name] = got.tobytes() == ref.tobytes()
        else:
            out[name] = got is None
    return out


def emulated(comm):
    """fit(comm=) of a free-bits VAE on emulated CuPy arrays: the flat device buffer through
    the emulated NCCL, batch statistics gathered through the host; against the CPU run."""
    from cuda_emu import fake_cupy
    from distributed_helpers import install_fake_nccl

    from lvmcore.data import Dataset, load_dataset
    from lvmcore.distributed import SingleProcess
    from lvmcore.models import VAE
    from lvmcore.train import fit

    ok, why = fake_cupy.available()
    if not ok:
        return {"skipped": why}

    d = load_dataset("digits")
    data = Dataset(d.train[:40], d.valid[:10], d.test[:1], d.name, d.shape)

    def run(comm, xp=None):
        model = VAE(64, 4, (16,), free_bits=0.5, seed=1)
        if xp is not None:
            model.to(xp)
        fit(model, data, epochs=1, batch_size=13, lr=3e-3, progress=False, comm=comm)
        return {k: (v.get() if xp is not None else v) for k, v in model.parameters().items()}

    ref = run(SingleProcess())
    with fake_cupy.installed() as cp, install_fake_nccl(cp) as calls:
        got = run(comm, cp)
    return {
        "param_rel_diff": _rel_diff(got, ref),
        "nccl_calls": len(calls),
    }


def cli(comm):
    """``lvmcore.cli.main`` on every rank for each command line of the JSON list in
    ``sys.argv[2]``, recording per rank its exit status, what it printed, and every file it
    wrote, replaced, removed or made under the folder ``sys.argv[3]`` (an audit hook)."""
    import contextlib
    import io
    import os

    from lvmcore.cli import main as lvmcore_main

    watched = os.path.abspath(sys.argv[3])
    writes = []

    def under(path):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return path == watched or path.startswith(watched + os.sep)

    def hook(event, args):
        if event == "open" and args[0] is not None and under(args[0]):
            mode, flags = args[1], args[2] or 0
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else False
            writing |= bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                writes.append(f"open {os.path.basename(os.fsdecode(args[0]))}")
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir") and under(args[0]):
            writes.append(f"{event} {os.path.basename(os.fsdecode(args[0]))}")

    sys.addaudithook(hook)
    out = []
    for argv in json.loads(sys.argv[2]):
        writes.clear()
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = lvmcore_main(argv)
            except SystemExit as exc:
                status = exc.code
        mine = {"status": status, "out": stdout.getvalue(), "err": stderr.getvalue()}
        mine["writes"] = sorted(set(writes))
        out.append(comm.gather(mine))
    return out


def abort(comm):
    if comm.rank == 1:
        raise RuntimeError("deliberate failure on rank 1")
    comm.barrier()  # the other ranks wait here: without the abort they would wait forever
    return {"finished": True}


SCENARIOS = {
    "suite": suite,
    "nccl": lambda c: {"nccl": nccl(c)},
    "abort": abort,
    "families": families,
    "emulated": emulated,
    "cli": cli,
}


def main():
    comm = MPICommunicator()  # not get_communicator: the scenarios run at P = 1 too
    with comm.abort_on_error():
        result = SCENARIOS[sys.argv[1]](comm)
    if comm.is_root:
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
