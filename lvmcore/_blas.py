"""Pick OpenBLAS's AVX-512 kernels on CPUs that have AVX-512 but are detected as Haswell.

NumPy's bundled OpenBLAS (DYNAMIC_ARCH) reads the CPU model to choose its kernels. On
AVX-512 machines it does not recognise (seen here: an AMD EPYC, Zen 4 class, under a
hypervisor) it falls back to the AVX2 "Haswell" kernels, which run SGEMM at about half
the speed of its "SkylakeX" kernels: measured 65-72 against 136-142 GFLOP/s on a
(32768 x 200) @ (200 x 784) float32 product, one thread.

OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when NumPy first loads it, so this only takes
effect when lvmcore is imported before NumPy (as the ``lvmcore`` command is). It never
overrides a value the user set, it only names SkylakeX when the CPU reports every
AVX-512 subset those kernels use, and ``LVMCORE_BLAS_TUNING=0`` turns it off.
"""
import os
import sys

_SKYLAKEX_FLAGS = {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_coretype(environ, numpy_loaded, cpu_flags):
    """The OPENBLAS_CORETYPE to set, or None: the decision alone, without side effects."""
    if environ.get("LVMCORE_BLAS_TUNING", "1") == "0" or "OPENBLAS_CORETYPE" in environ:
        return None
    if numpy_loaded:  # OpenBLAS is already loaded and has chosen its kernels
        return None
    return "SkylakeX" if _SKYLAKEX_FLAGS <= cpu_flags else None


def tune_openblas_coretype():
    """Set OPENBLAS_CORETYPE=SkylakeX when it is safe and still has an effect.

    Returns the value set, or None when nothing was changed.
    """
    value = choose_coretype(os.environ, "numpy" in sys.modules, _cpu_flags())
    if value is not None:
        os.environ["OPENBLAS_CORETYPE"] = value
    return value
