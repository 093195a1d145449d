from lvmcore._blas import _AVX512, blas_advice, busy_machine_advice


def test_advice_only_for_avx2_cores_on_avx512_cpus():
    assert "SkylakeX" in blas_advice({"OPENBLAS_CORETYPE": "Haswell"}, _AVX512 | {"avx2"})
    assert blas_advice({"OPENBLAS_CORETYPE": "SkylakeX"}, _AVX512) is None
    assert blas_advice({}, _AVX512) is None
    assert blas_advice({"OPENBLAS_CORETYPE": "Haswell"}, {"avx2", "fma"}) is None


def test_busy_machine_advice_only_when_the_load_meets_the_cpus_and_no_count_was_chosen():
    note = busy_machine_advice(None, loadavg=3.4, cpus=2)
    assert "load average 3.4 for 2 CPUs" in note and "--threads 1" in note
    assert busy_machine_advice(None, loadavg=1.2, cpus=2) is None
    assert busy_machine_advice(1, loadavg=9.0, cpus=2) is None  # a count was chosen
    assert busy_machine_advice(None, loadavg=5.0, cpus=1) is None  # one CPU: one thread anyway
    assert busy_machine_advice(None, loadavg=5.0, cpus=2, blas_threads=1) is None


def test_the_command_line_says_when_the_machine_is_busy(tmp_path, capsys, monkeypatch):
    from lvmcore.cli import main

    monkeypatch.delenv("LVMCORE_BLAS_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr("lvmcore.backend.process_blas_threads", lambda: 2)
    args = ["train", "--epochs", "1", "--latent", "2", "--hidden", "8", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "the machine is busy" in capsys.readouterr().out
    assert main([*args, "--threads", "1", "--out", str(tmp_path / "b")]) == 0
    assert "the machine is busy" not in capsys.readouterr().out
