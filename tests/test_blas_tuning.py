import os
import subprocess
import sys

from lvmcore import _blas


def _coretype_after_import(env):
    code = "import lvmcore, os; print(os.environ.get('OPENBLAS_CORETYPE'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_sets_skylakex_only_with_every_avx512_subset(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    want = "SkylakeX" if _blas._SKYLAKEX_FLAGS <= _blas._cpu_flags() else "None"
    assert _coretype_after_import(env) == want


def test_never_overrides_the_user_or_an_opt_out():
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell")
    assert _coretype_after_import(env) == "Haswell"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["LVMCORE_BLAS_TUNING"] = "0"
    assert _coretype_after_import(env) == "None"


def test_decision_rules():
    avx512 = set(_blas._SKYLAKEX_FLAGS)
    assert _blas.choose_coretype({}, False, avx512 | {"avx2"}) == "SkylakeX"
    assert _blas.choose_coretype({}, True, avx512) is None          # OpenBLAS already loaded
    assert _blas.choose_coretype({}, False, {"avx2", "fma"}) is None  # no AVX-512
    assert _blas.choose_coretype({}, False, avx512 - {"avx512bw"}) is None
    assert _blas.choose_coretype({"OPENBLAS_CORETYPE": "Zen"}, False, avx512) is None
    assert _blas.choose_coretype({"LVMCORE_BLAS_TUNING": "0"}, False, avx512) is None
