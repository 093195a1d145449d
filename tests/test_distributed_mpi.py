"""lvmcore.distributed across processes: ``mpiexec -n P`` jobs on loopback, started from pytest.

Each job runs tests/distributed_worker.py on every rank; rank 0 prints its checks as one JSON
line. Skipped when mpi4py or mpiexec is missing (pip install 'lvmcore[mpi]').

The jobs: the groundwork's ``suite`` at P = 2, 3; ``families`` at P = 2, 3 (fit(comm=) of every
model family against one process, the naive statistics, gathers, sharded log-likelihoods, the
CUDA emulator); ``lvmcore train/eval --distributed`` through the command line (P = 2, then a
resume at P = 3), with different data on two ranks, and outside mpiexec; the abort.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'lvmcore[mpi]')")

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).with_name("distributed_worker.py"))
# the mpiexec beside this Python (the mpich wheel's) matches mpi4py's MPI; else the one on PATH
_BESIDE = Path(sys.executable).with_name("mpiexec")
MPIEXEC = str(_BESIDE) if _BESIDE.exists() else shutil.which("mpiexec")

pytestmark = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec found (pip install 'lvmcore[mpi]' brings MPICH's)"
)


def _loopback_flags():
    """Keep the job on this machine and the loopback interface."""
    out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    if "HYDRA" in text:  # MPICH, Intel MPI
        return ["-launcher", "fork", "-hosts", "localhost", "-iface", "lo"]
    if "Open MPI" in text or "OpenRTE" in text:
        return ["--oversubscribe", "--host", "localhost", "--mca", "btl_tcp_if_include", "lo"]
    return []


def _env(**extra):
    env = dict(os.environ)
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        env.pop(var, None)
    # one thread of each kind per rank: 2 and 3 ranks already fill the 2-core machine
    env.update(OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", LVMCORE_KERNEL_THREADS="1")
    # the workers import this checkout's lvmcore, not another installed copy
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def mpiexec(n, scenario, *args, timeout=90):
    """Run the worker's ``scenario`` on ``n`` ranks; ``n`` may also be a list of (ranks, extra
    arguments) for one job whose parts get different arguments (MPMD)."""
    parts = [(n, args)] if isinstance(n, int) else n
    cmd = [MPIEXEC, *_loopback_flags()]
    for i, (ranks, extra) in enumerate(parts):
        cmd += [":"] if i else []
        cmd += ["-n", str(ranks), sys.executable, WORKER, scenario, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env()
    )
    return proc, time.perf_counter() - t0


def _result(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"mpiexec failed (status {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module", params=[2, 3], ids=["P=2", "P=3"])
def suite(request):
    proc, _ = mpiexec(request.param, "suite")
    return _result(proc)


def test_allreduce_of_a_flat_buffer_is_the_sum_on_every_rank(suite):
    bad = [name for name, ok in suite["collectives"].items() if not ok]
    assert not bad, f"P={suite['size']}: failed {bad}"


def test_parameter_drift_raises_on_every_rank(suite):
    c = suite["checksums"]
    assert c["params_equal_pass"] and c["params_drift_raises"]
    assert (
        "check_parameters: expected the parameters after epoch 1 to be identical"
        in (c["params_drift_msg"])
    )
    assert f"rank(s) [{suite['size'] - 1}]" in c["params_drift_msg"]


def test_different_data_on_one_rank_raises_on_every_rank(suite):
    c = suite["checksums"]
    assert c["data_equal_pass"] and c["data_differ_raises"]
    assert "check_data: expected the data to be identical on every rank" in c["data_differ_msg"]


def test_sharded_evaluation_is_bit_identical_to_one_process(suite):
    assert suite["fold"] == {"synthetic_bit_identical": True, "vae_bit_identical": True}


@pytest.mark.parametrize("model", ["vae", "iwae"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 3e-6)])
def test_data_parallel_training_matches_one_process(suite, model, dtype, tol):
    # 20 Adam steps of VAE / IWAE-DReG, uneven shards and a rank without rows included; the only
    # difference from one process is the order of the gradient sums (float rounding)
    r = suite["train"][f"{model}_{dtype}"]
    assert r["ranks_equal"], "the ranks' parameters drifted apart"
    assert r["param_rel_diff"] < tol, r
    assert r["loss_rel_diff"] < tol, r


def test_device_allreduce_goes_through_nccl_on_the_emulator(suite):
    n = suite["nccl"]
    assert n["device_sum"] and n["device_flat_copy"] and n["device_fold"]
    assert n["nccl_calls"] == [[12, 7], [10, 8]]  # (count, ncclFloat32), (count, ncclFloat64)


def test_device_allreduce_at_world_size_1():
    proc, _ = mpiexec(1, "nccl")
    n = _result(proc)["nccl"]
    assert n["device_sum"] and n["device_flat_copy"] and n["device_fold"]


def test_an_exception_on_one_rank_ends_the_job_within_seconds():
    proc, seconds = mpiexec(3, "abort", timeout=60)
    assert proc.returncode != 0
    assert seconds < 20, f"the job took {seconds:.1f} s to end"
    assert "lvmcore: rank 1 of 3 failed; aborting every rank." in proc.stderr
    assert "RuntimeError: deliberate failure on rank 1" in proc.stderr
    assert "RESULT" not in proc.stdout


def _plain_python(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_env(**env),
    )


def test_distributed_outside_mpiexec_runs_as_one_process_and_says_so():
    proc = _plain_python(
        "from lvmcore.distributed import get_communicator\n"
        "c = get_communicator(True)\n"
        "print(type(c).__name__, c.rank, c.size)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SingleProcess", "0", "1"]
    notice = [line for line in proc.stderr.splitlines() if line.startswith("lvmcore:")]
    assert notice == [
        "lvmcore: --distributed in a single process (not started by mpiexec -n P or srun): "
        "running as one process."
    ]


def test_mpi4py_of_another_mpi_than_the_launcher_is_an_error():
    # Open MPI's launcher says 2 processes, but this MPICH-built mpi4py sees a world of 1
    proc = _plain_python(
        "from lvmcore.distributed import get_communicator\nget_communicator(True)",
        OMPI_COMM_WORLD_SIZE="2",
    )
    assert proc.returncode != 0
    assert "BackendUnavailableError: get_communicator: expected mpi4py to see the 2 processes" in (
        proc.stderr
    )


# ------------------------------------------------------------- every model family, fit(comm=)
@pytest.fixture(scope="module", params=[2, 3], ids=["P=2", "P=3"])
def families(request):
    proc, _ = mpiexec(request.param, "families", timeout=120)
    return _result(proc)


def test_every_model_family_trains_data_parallel_as_in_one_process(families):
    # fit(comm=), 2 epochs of batches 31, 31, 2 (uneven shards; a rank without rows at P=3),
    # float64: VAE with free bits (analytic and sampled KL), IWAE (iwae, stl, dreg), CatVAE
    # (gumbel, reinforce, nvil, vimco), VQ-VAE (codebook loss; EMA with dead-code resets)
    off = {k: v for k, v in families["params"].items() if v is None or not v < 1e-12}
    assert not off, f"differ from one process (None: the ranks drifted apart): {off}"


def test_naive_local_batch_statistics_fail_the_comparison(families):
    # the same runs with each rank's statistics over its own rows: free bits stays equal on
    # every rank (the gradients are all-reduced) and is caught only by the comparison with one
    # process; the EMA codebook and the NVIL baselines also drift apart between ranks
    naive = families["naive"]
    assert all(diff > 1e-3 for diff in naive.values()), naive
    assert families["naive_drifted"] == {
        "vae-free-bits": False,
        "catvae-nvil": True,
        "vqvae-ema-reset": True,
    }


def test_variable_length_gather_and_sharded_log_likelihood(families):
    assert all(families["gather"].values()), families["gather"]
    want = {"vae": True, "vae-threads": True, "catvae": True, "mvae": True}
    assert families["log_likelihood"] == want


def _emulated_checks(e):
    if "skipped" in e:
        pytest.skip(f"CUDA emulator: {e['skipped']}")
    assert e["nccl_calls"] == 4  # one device all-reduce per step: 40 rows in batches of 13
    assert e["param_rel_diff"] < 2e-4  # float32 on the emulated device against the CPU


def test_device_training_all_reduces_through_nccl_on_the_emulator(families):
    _emulated_checks(families["emulated"])


def test_device_training_at_world_size_1_takes_the_nccl_path():
    proc, _ = mpiexec(1, "emulated")
    _emulated_checks(_result(proc))


# --------------------------------------------------------------------- the command line
TRAIN = ["--hidden", "16", "--latent", "4", "--no-progress"]
EVAL = ["--k", "300", "--nll-batch-size", "20"]  # 9 batches x 2 chunks of K: 18 cells


def _cli(n, commands, watched, timeout=90):
    """Each command line on n ranks (one job); per command, each rank's status, output and
    writes under ``watched``."""
    proc, _ = mpiexec(n, "cli", json.dumps(commands), str(watched), timeout=timeout)
    return _result(proc)


def _params(run):
    from lvmcore.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint.npz").params


def _only_rank_0_speaks_and_writes(ranks):
    for r, m in enumerate(ranks[1:], 1):
        assert (m["out"], m["err"], m["writes"]) == ("", "", []), f"rank {r}: {m}"


def test_train_resume_under_another_p_and_eval_from_the_command_line(tmp_path, capsys):
    from lvmcore.cli import main

    run, ref = tmp_path / "run", tmp_path / "ref"
    train = ["train", "--distributed", "--out", str(run)]
    evaluate = ["eval", str(run), "--distributed", *EVAL]
    # 2 epochs at P = 2, sharded eval; a second start in the folder is refused by every rank
    a = _cli(2, [[*train, "--epochs", "2", *TRAIN], evaluate, [*train, "--epochs", "2"]], tmp_path)
    for ranks in a[:2]:
        assert [m["status"] for m in ranks] == [0, 0], ranks
        _only_rank_0_speaks_and_writes(ranks)
    root = a[0][0]
    assert "on cpu x 2 processes (data-parallel) for 2 epochs" in root["out"]
    assert any(w.startswith("os.rename .checkpoint.npz.") for w in root["writes"])
    # every run-folder file is written through a temporary file beside it and a rename
    for name in ("metrics.jsonl", "samples.png", "bounds.png"):
        assert any(w.startswith(f"open .{name}.") for w in root["writes"]), (name, root["writes"])
    refused = a[2]
    assert [m["status"] for m in refused] == [2, 2]
    assert "error: fit: expected out_dir to hold no earlier run" in refused[0]["err"]
    _only_rank_0_speaks_and_writes(refused)
    sharded_p2 = json.loads((run / "eval.json").read_text())
    assert sharded_p2["processes"] == 2
    assert main(["eval", str(run), *EVAL]) == 0  # one process: the same bits
    one = json.loads((run / "eval.json").read_text())
    assert (one["nll"], one["nll_sem"], one["elbo"]) == (
        sharded_p2["nll"],
        sharded_p2["nll_sem"],
        sharded_p2["elbo"],
    )

    # resumed to 4 epochs at P = 3: the run of 4 epochs in one process, to float rounding
    b = _cli(3, [[*train, "--resume", "--epochs", "4", "--no-progress"], evaluate], tmp_path)
    for ranks in b:
        assert [m["status"] for m in ranks] == [0, 0, 0], ranks
        _only_rank_0_speaks_and_writes(ranks)
    assert main(["train", "--out", str(ref), "--epochs", "4", *TRAIN]) == 0
    got, want = _params(run), _params(ref)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=2e-5, atol=2e-6, err_msg=k)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_metrics = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    for m, w in zip(metrics, ref_metrics, strict=True):
        assert m["train_bound"] == pytest.approx(w["train_bound"], rel=1e-5)
        assert m["valid_bound"] == pytest.approx(w["valid_bound"], rel=1e-5)
    sharded_p3 = json.loads((run / "eval.json").read_text())
    assert main(["eval", str(run), *EVAL]) == 0
    one = json.loads((run / "eval.json").read_text())
    assert (one["nll"], one["nll_sem"]) == (sharded_p3["nll"], sharded_p3["nll_sem"])
    capsys.readouterr()

    # outside mpiexec, --distributed runs as one process and says so
    proc = subprocess.run(
        [sys.executable, "-m", "lvmcore", "eval", str(run), "--distributed", "--k", "20"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "--distributed in a single process (not started by mpiexec" in proc.stderr
    assert "test NLL (K=20, n=180)" in proc.stdout


def test_different_data_on_two_ranks_stops_both_before_anything_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((40, 784)) < 0.3).astype(np.uint8)
    np.savez(tmp_path / "a.npz", train=x[:30], valid=x[30:], test=x[30:])
    x[3, 5] ^= 1  # one pixel
    np.savez(tmp_path / "b.npz", train=x[:30], valid=x[30:], test=x[30:])
    run = tmp_path / "run"
    parts = [
        (1, [json.dumps([["train", "--distributed", "--data", str(p), "--out", str(run)]]), str(run)])
        for p in (tmp_path / "a.npz", tmp_path / "b.npz")
    ]  # fmt: skip
    proc, _ = mpiexec(parts, "cli")
    (ranks,) = _result(proc)
    assert [m["status"] for m in ranks] == [2, 2]
    assert "error: check_data: expected the data to be identical on every rank" in ranks[0]["err"]
    assert "rank(s) [1]" in ranks[0]["err"]
    _only_rank_0_speaks_and_writes(ranks)
    assert ranks[0]["writes"] == [] and not run.exists()
