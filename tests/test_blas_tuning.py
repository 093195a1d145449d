from lvmcore._blas import _AVX512, blas_advice


def test_advice_only_for_avx2_cores_on_avx512_cpus():
    assert "SkylakeX" in blas_advice({"OPENBLAS_CORETYPE": "Haswell"}, _AVX512 | {"avx2"})
    assert blas_advice({"OPENBLAS_CORETYPE": "SkylakeX"}, _AVX512) is None
    assert blas_advice({}, _AVX512) is None
    assert blas_advice({"OPENBLAS_CORETYPE": "Haswell"}, {"avx2", "fma"}) is None
