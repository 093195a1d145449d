"""lvmcore.distributed across processes: ``mpiexec -n P`` jobs on loopback, started from pytest.

Each job runs tests/distributed_worker.py on every rank; rank 0 prints its checks as one JSON
line. Skipped when mpi4py or mpiexec is missing (pip install 'lvmcore[mpi]').
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
    env.update(OPENBLAS_NUM_THREADS="1", LVMCORE_KERNEL_THREADS="1")
    # the workers import this checkout's lvmcore, not another installed copy
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def mpiexec(n, scenario, timeout=90):
    cmd = [MPIEXEC, *_loopback_flags(), "-n", str(n), sys.executable, WORKER, scenario]
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
