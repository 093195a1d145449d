"""Notice when OpenBLAS is held to narrower kernels than the CPU offers, or when its threads
will wait for cores.

NumPy's bundled OpenBLAS picks its kernels from the CPU, unless ``OPENBLAS_CORETYPE``
names a core. An environment that sets ``OPENBLAS_CORETYPE=Haswell`` on an AVX-512
machine (as this project's machines do) holds SGEMM to the AVX2 kernels: measured here
45-72 against 95-142 GFLOP/s on a (32768 x 200) @ (200 x 784) float32 product, one
thread, for the decoder-shaped GEMMs that dominate training and evaluation. lvmcore never
overrides the setting; the command line prints this advice once so the user can choose.
"""

import os

_AVX512 = {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
_AVX2_CORES = {"haswell", "zen", "sandybridge", "nehalem", "prescott", "core2", "atom"}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def blas_advice(environ=None, cpu_flags=None):
    """A one-line note when OPENBLAS_CORETYPE forces pre-AVX-512 kernels on an AVX-512 CPU,
    else None."""
    environ = os.environ if environ is None else environ
    core = environ.get("OPENBLAS_CORETYPE", "")
    if core.lower() not in _AVX2_CORES:
        return None
    if not _AVX512 <= (_cpu_flags() if cpu_flags is None else cpu_flags):
        return None
    return (
        f"note: OPENBLAS_CORETYPE={core} holds NumPy's OpenBLAS to AVX2 kernels on this "
        f"AVX-512 CPU; its SGEMM runs about 2x faster with OPENBLAS_CORETYPE=SkylakeX "
        f"(or with the variable unset)."
    )


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_machine_advice(chosen_threads=None, loadavg=None, cpus=None, blas_threads=None):
    """A one-line note when the machine is already busy (its 1-minute load average at or above
    this process's CPUs) and engine steps will run their GEMMs on the BLAS library's own thread
    count (``chosen_threads`` None: neither ``--threads`` nor ``LVMCORE_BLAS_THREADS``) of more
    than one (``blas_threads``, when known), else None.

    On the 2-vCPU development machine shared with other jobs, every engine step ran 1.5-6x
    faster on one BLAS thread than on two (the second thread of each GEMM waits for a core);
    on the idle machine two were faster (``lvmcore.backend.engine_kernel_threads``).
    """
    if chosen_threads is not None or (blas_threads is not None and blas_threads <= 1):
        return None
    if loadavg is None:
        try:
            loadavg = os.getloadavg()[0]
        except OSError:  # not available here
            return None
    cpus = _cpus() if cpus is None else cpus
    if cpus < 2 or loadavg < cpus:
        return None
    return (
        f"note: the machine is busy (1-minute load average {loadavg:.1f} for {cpus} CPUs): "
        f"BLAS threads will wait for cores, and --threads 1 (or LVMCORE_BLAS_THREADS=1) may "
        f"run faster."
    )
