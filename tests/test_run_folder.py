"""The run folder under hostile use: one writer at a time (a lock), signals, stale temporary
files, atomic and strict-JSON files, the runtime record, and the command line's refusals."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lvmcore.checkpoint
import lvmcore.train
from lvmcore.checkpoint import load_checkpoint, load_model
from lvmcore.cli import main
from lvmcore.data import load_dataset
from lvmcore.exceptions import RuntimeDifferenceWarning
from lvmcore.models import VAE
from lvmcore.train import CHECKPOINT, LOCK, METRICS, fit

TINY = ["--latent", "2", "--hidden", "8", "--batch-size", "200", "--no-progress"]


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds._replace(train=ds.train[:200], valid=ds.valid[:50])


def tiny_fit(data, out, **kw):
    model = VAE(64, latent_dim=2, hidden=(8,))
    kw = dict(dict(epochs=1, batch_size=100, progress=False, out_dir=out), **kw)
    return model, fit(model, data, **kw)


def temps(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def cli(*argv, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "lvmcore", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )


def start_long_run(out):
    """A ``lvmcore train`` into ``out`` that runs for minutes; returns once it has written
    its first checkpoint."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvmcore", "train", "--epochs", "100000", "--out", str(out)] + TINY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not (out / CHECKPOINT).is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out_, err = proc.communicate()
            pytest.fail(f"the run did not start: {out_} {err}")
        time.sleep(0.1)
    return proc


# --- one writer per folder -------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    first = start_long_run(out)
    try:
        assert (out / LOCK).read_text().split() == [str(first.pid), socket.gethostname()]
        t0 = time.monotonic()
        for argv in (["--overwrite", *TINY], ["--resume", "--epochs", "100001"]):
            second = cli("train", "--out", str(out), *argv)
            assert second.returncode == 2, second.stderr
            assert "expected no other run writing into" in second.stderr, second.stderr
            assert f"held by process {first.pid} on {socket.gethostname()}" in second.stderr
        assert time.monotonic() - t0 < 120
        # the refused runs changed nothing: the first still holds the lock
        assert (out / LOCK).read_text().split()[0] == str(first.pid)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert not (out / LOCK).exists()
    lines = (out / METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, len(lines) + 1))


def test_overwrite_is_refused_while_another_process_holds_the_lock(digits, tmp_path):
    out = tmp_path / "run"
    tiny_fit(digits, out)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{live.pid} {socket.gethostname()}\n")
        before = (out / CHECKPOINT).read_bytes()
        with pytest.raises(FileExistsError, match=rf"held by process {live.pid} on"):
            tiny_fit(digits, out, overwrite=True)
        assert (out / CHECKPOINT).read_bytes() == before  # nothing was deleted
    finally:
        live.kill()
        live.wait()


def test_a_lock_of_another_host_is_refused(digits, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text("1234 some-other-host\n")
    with pytest.raises(FileExistsError, match="held by process 1234 on some-other-host"):
        tiny_fit(digits, out)
    assert (out / LOCK).read_text() == "1234 some-other-host\n"


def test_a_stale_lock_is_taken_over_with_a_message(digits, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / LOCK).write_text(f"{pid} {socket.gethostname()}\n")
    tiny_fit(digits, out)
    assert f"took over the lock {out / LOCK} of process {pid}" in capsys.readouterr().err
    assert not (out / LOCK).exists()  # released at the end
    assert load_checkpoint(out / CHECKPOINT).state["epoch"] == 1


def test_the_lock_is_released_when_fit_fails(digits, tmp_path):
    out = tmp_path / "run"
    tiny_fit(digits, out)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_fit(digits, out, epochs=2, resume=True, batch_size=50)
    assert not (out / LOCK).exists()
    tiny_fit(digits, out, epochs=2, resume=True)


# --- signals and temporary files ---------------------------------------------------------------


def test_sigterm_stops_like_ctrl_c_and_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = start_long_run(out)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().endswith(
        "lvmcore: interrupted (the run folder keeps the checkpoint of the last finished epoch; "
        "continue with --resume)"
    )
    assert "Traceback" not in stderr
    assert temps(out) == [] and not (out / LOCK).exists()
    ck = load_checkpoint(out / CHECKPOINT)
    model = load_model(out / CHECKPOINT)
    assert ck.state["epoch"] >= 1 and model.data_dim == 64
    resumed = cli("train", "--out", str(out), "--resume", "--epochs", str(ck.state["epoch"] + 1))
    assert resumed.returncode == 0, resumed.stderr


def test_sigterm_inside_a_checkpoint_write_removes_its_temporary_file(digits, tmp_path):
    out = tmp_path / "run"
    tiny_fit(digits, out)
    before = (out / CHECKPOINT).read_bytes()
    real_savez = np.savez

    def savez_then_term(f, **arrays):
        real_savez(f, **arrays)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the temporary file is open

    from lvmcore.cli import _sigterm_as_interrupt, _Terminated

    with pytest.MonkeyPatch.context() as mp, _sigterm_as_interrupt():
        mp.setattr(lvmcore.checkpoint.np, "savez", savez_then_term)
        with pytest.raises(_Terminated):
            tiny_fit(digits, out, epochs=2, resume=True)
    assert temps(out) == [] and not (out / LOCK).exists()
    assert (out / CHECKPOINT).read_bytes() == before


def test_stale_temporary_files_are_removed_on_start_and_resume(digits, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    live = os.getppid()  # a running process: its files may still be written
    stale = [f".checkpoint.npz.{pid}.0123abcd.tmp", f".metrics.jsonl.{pid}.deadbeef.tmp"]
    kept = [
        f".checkpoint.npz.{live}.0123abcd.tmp",  # writer alive
        f".notes.txt.{pid}.0123abcd.tmp",  # not a file of the run folder
        "checkpoint.npz.tmp",  # not the temporary-name pattern
    ]
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 10)
    tiny_fit(digits, out)
    assert temps(out) == sorted(kept)
    (out / f".samples.png.{pid}.00000000.tmp").write_bytes(b"x")
    tiny_fit(digits, out, epochs=2, resume=True)
    assert temps(out) == sorted(kept)


# --- atomic, strict files ----------------------------------------------------------------------


def full_disk_for(monkeypatch, name):
    """Make every atomic write of a file called ``name`` meet a full disk: its temporary file's
    descriptor writes to /dev/full (ENOSPC on flush); other files are written as usual."""
    real = lvmcore.checkpoint.create_temp

    def create_temp(path):
        fd, tmp = real(path)
        if os.path.basename(os.fspath(path)) != name:
            return fd, tmp
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(lvmcore.checkpoint, "create_temp", create_temp)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_leaves_the_previous_metrics_whole(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tiny_fit(digits, out)
    before = (out / METRICS).read_text()
    full_disk_for(monkeypatch, METRICS)
    with pytest.raises(OSError, match="No space left"):
        tiny_fit(digits, out, epochs=2, resume=True)
    assert (out / METRICS).read_text() == before and len(before.splitlines()) == 1
    assert temps(out) == []


def test_metrics_are_strict_json_lines(digits, tmp_path):
    out = tmp_path / "run"
    _, history = tiny_fit(digits, out, epochs=2)
    lines = (out / METRICS).read_text().splitlines()
    assert [strict_json(line)["epoch"] for line in lines] == [1, 2]
    assert lvmcore.train.json_safe({"a": [float("nan"), 1.0, float("-inf")]}) == {
        "a": [None, 1.0, None]
    }


def mnist_like(path, n_test):
    rng = np.random.default_rng(0)
    rows = lambda n: (rng.random((n, 784)) > 0.5).astype(np.uint8)  # noqa: E731
    np.savez(path, train=rows(40), valid=rows(10), test=rows(n_test))
    return path


def test_eval_json_of_a_one_row_split_is_strict_json(tmp_path, capsys):
    data = mnist_like(tmp_path / "one.npz", 1)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--data", str(data), "--out", str(out), *TINY]) == 0
    assert main(["eval", str(out), "--k", "3"]) == 0
    result = strict_json((out / "eval.json").read_text())
    assert result["n"] == 1 and result["elbo_sem"] is None and result["nll_sem"] is None
    assert np.isfinite(result["elbo"])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_eval_json_is_replaced_atomically(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    assert main(["eval", str(out), "--k", "0"]) == 0
    before = (out / "eval.json").read_text()
    full_disk_for(monkeypatch, "eval.json")
    with pytest.raises(SystemExit) as info:
        main(["eval", str(out), "--k", "0", "--seed", "3"])
    assert info.value.code == 2 and "No space left" in capsys.readouterr().err
    assert (out / "eval.json").read_text() == before and temps(out) == []


def test_eval_of_an_empty_split_is_a_clear_error(tmp_path, capsys):
    data = mnist_like(tmp_path / "empty.npz", 0)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--data", str(data), "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["eval", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "expected the test split of" in err and "to hold at least one row, got (0, 784)" in err
    assert not (out / "eval.json").exists()


# --- the runtime record ------------------------------------------------------------------------


def other_runtime(monkeypatch):
    """This process's runtime with the BLAS thread count changed (as after another
    OPENBLAS_NUM_THREADS), as lvmcore.checkpoint sees it."""
    real = lvmcore.checkpoint.runtime_info

    def changed(like=None):
        info = real(like)
        info["blas"] = [dict(e, num_threads=e["num_threads"] + 7) for e in info["blas"]]
        return info

    monkeypatch.setattr(lvmcore.checkpoint, "runtime_info", changed)


def test_resume_under_another_runtime_warns(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tiny_fit(digits, out)
    if not load_checkpoint(out / CHECKPOINT).state["runtime"]["blas"]:
        pytest.skip("no BLAS library seen by threadpoolctl")
    other_runtime(monkeypatch)
    with pytest.warns(RuntimeDifferenceWarning, match=r"resume: .*\n  BLAS threads"):
        tiny_fit(digits, out, epochs=2, resume=True)


def test_resume_under_the_same_runtime_is_silent(digits, tmp_path, recwarn):
    out = tmp_path / "run"
    tiny_fit(digits, out)
    tiny_fit(digits, out, epochs=2, resume=True)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeDifferenceWarning)]


def test_eval_under_another_runtime_warns(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    if not load_checkpoint(out / CHECKPOINT).state["runtime"]["blas"]:
        pytest.skip("no BLAS library seen by threadpoolctl")
    other_runtime(monkeypatch)
    with pytest.warns(RuntimeDifferenceWarning, match=r"evaluation: .*\n  BLAS threads"):
        assert main(["eval", str(out), "--k", "0"]) == 0


# --- the command line --------------------------------------------------------------------------


def test_resume_with_another_model_is_refused_naming_both(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "iwae", "--resume", "--out", str(out), "--epochs", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "expected --model vae (the model of the run in" in err and "got --model iwae" in err
    assert load_checkpoint(out / CHECKPOINT).state["epoch"] == 1
    # naming the run's own model is fine
    args = ["train", "--model", "vae", "--resume", "--out", str(out), "--epochs", "2"]
    assert main([*args, "--no-progress"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hidden", "16,,16"], "argument --hidden: expected comma-separated positive integers"),
        (["--hidden", "16,"], "argument --hidden: expected comma-separated positive integers"),
        (["--data", ""], "argument --data: expected digits, mnist or a path, got ''"),
        (["--out", ""], "argument --out: expected a folder, got ''"),
        (["--lr", "-1e-3"], "argument --lr: expected a positive number, got '-1e-3'"),
        (["--lr=-1e-3"], "argument --lr: expected a positive number, got '-1e-3'"),
        (["--clip-norm", "-inf"], "argument --clip-norm: expected a positive number, got '-inf'"),
        (["--lr", "-.5"], "argument --lr: expected a positive number, got '-.5'"),
    ],
)
def test_bad_flag_values_exit_2_with_the_range(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_refuses_empty_data(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "somewhere", "--data", ""])
    assert info.value.code == 2
    assert "argument --data: expected digits, mnist or a path, got ''" in capsys.readouterr().err


def test_hidden_empty_still_means_no_hidden_layer():
    from lvmcore.cli._types import int_list

    assert int_list("") == () and int_list("16, 8") == (16, 8)


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "1", "--out", str(target), *TINY])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"expected out_dir to be a folder (or a path where one can be created), got the file {target}"
        in err
    )
    assert "Errno" not in err
    assert target.read_text() == "not a folder"
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "1", "--out", str(target / "sub"), *TINY])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "expected to create the run folder" in err and "Errno" not in err
