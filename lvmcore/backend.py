"""Backends: which implementation runs an op, decided by the array type and the user.

The array type decides the device (NumPy arrays run on the CPU, CuPy arrays on a
GPU); the backend decides the implementation of the hot loops:

- ``"numpy"``: the plain reference, always available;
- ``"numba"``: JIT-compiled CPU kernels, the default for NumPy arrays when Numba imports;
- ``"cupy"``: CUDA kernels for CuPy arrays.

Precedence: the ``backend=`` keyword of a call, then ``with use_backend(...)``, then
the ``LVMCORE_BACKEND`` environment variable, then automatic selection. Glue code is
written once against ``backend.xp``; only hot loops dispatch into ``kernels``, through
``Backend.kernel(op)``, which reads the kernel registry (``kernels.get``): one record per
kernel variant, each of which checks its arguments before it runs. ``kernels`` is the lower
package: it never imports ``lvmcore``, and whether CuPy can run is asked of it
(``kernels.cupy_status``), so both packages give the same answer.
"""

import contextlib
import contextvars
import functools
import importlib.util
import os
import threading
from dataclasses import dataclass

import numpy as np

from ._validation import _array_library
from .exceptions import BackendUnavailableError, InvalidParameterError

BACKEND_NAMES = ("numpy", "numba", "cupy")
_DEVICE_OF = {"numpy": "cpu", "numba": "cpu", "cupy": "cuda"}
_requested = contextvars.ContextVar("lvmcore_backend", default=None)


@dataclass(frozen=True)
class Backend:
    """An implementation choice: ``name``, its array module ``xp`` and ``device``."""

    name: str
    xp: object
    device: str

    def kernel(self, op):
        """The implementation of kernel ``op`` (e.g. "bernoulli_loglik") for this backend.

        On the "numba" backend a call whose largest array argument has fewer than
        ``SERIAL_BELOW`` elements runs on the calling thread alone (see
        :func:`serial_when_small`); the results are the same for any thread count.
        """
        import kernels  # imported on first use: ``import lvmcore`` stays light

        func = kernels.get(op, self.name)
        return serial_when_small(func) if self.name == "numba" else func


# Below this many elements in its largest array, a Numba kernel runs on the calling thread.
# Waking a parallel region's workers costs more than a small loop: on the 2-core machine a
# 1000-element prange loop took 47 us on 2 threads and 5 us on 1, and on a loaded machine a
# tiny VAE forward (four bias+activation and one sampling kernel) took 16 ms on 2 threads and
# 0.2 ms on 1. PyTorch's CPU kernels use the same grain (at::internal::GRAIN_SIZE = 32768).
SERIAL_BELOW = 1 << 15


@functools.cache
def serial_when_small(func):
    """``func`` run with one Numba thread when its largest array argument is small.

    The Numba kernels split their work into chunks fixed by the problem size, never by the
    thread count, so this changes speed only, never a bit of the result.
    """
    import numba

    @functools.wraps(func)
    def run(*args, **kwargs):
        work = 0
        for a in args:
            if isinstance(a, np.ndarray) and a.size > work:
                work = a.size
        for a in kwargs.values():
            if isinstance(a, np.ndarray) and a.size > work:
                work = a.size
        if work >= SERIAL_BELOW:
            return func(*args, **kwargs)
        threads = numba.get_num_threads()
        if threads == 1:
            return func(*args, **kwargs)
        numba.set_num_threads(1)
        try:
            return func(*args, **kwargs)
        finally:
            numba.set_num_threads(threads)

    return run


@functools.cache
def _availability(name):
    """Return (available, reason) for one backend; cached because probing CUDA is slow."""
    if name == "numpy":
        return True, "always available"
    if name == "numba":
        if importlib.util.find_spec("numba") is None:
            return False, "numba: not installed (pip install numba)"
        return True, "available"
    if name == "cupy":
        from kernels import cupy_status

        ok, reason = cupy_status()
        if reason == "cupy: not installed":
            reason += " (pip install 'lvmcore[cuda]')"
        return ok, reason
    raise InvalidParameterError(
        f"The 'backend' parameter must be one of {', '.join(map(repr, BACKEND_NAMES))}. "
        f"Got {name!r} instead."
    )


def available_backends():
    """Map every backend name to ``"available"`` or the reason it is not."""
    return {name: _availability(name)[1] for name in BACKEND_NAMES}


# The CPU backends, built once (get_backend runs a dozen times a step); a CuPy backend is
# built per call, from whatever ``cupy`` imports now.
_CPU_BACKENDS = {name: Backend(name, np, "cpu") for name in ("numpy", "numba")}


def _make(name):
    ok, reason = _availability(name)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")
    if name == "cupy":
        import cupy

        return Backend(name, cupy, "cuda")
    return _CPU_BACKENDS[name]


@contextlib.contextmanager
def use_backend(name):
    """Run the block with backend ``name`` unless a call passes ``backend=`` itself."""
    _availability(name)  # validate the name early
    token = _requested.set(name)
    try:
        yield _make(name)
    finally:
        _requested.reset(token)


def get_backend(*arrays, backend=None):
    """The backend that runs an op on ``arrays``.

    Raises TypeError when the requested backend cannot take the arrays' device
    (e.g. ``"numba"`` for CuPy arrays) and BackendUnavailableError when it cannot run here.
    """
    device = "cuda" if any(_array_library(a) == "cupy" for a in arrays) else "cpu"
    name = backend or _requested.get() or os.environ.get("LVMCORE_BACKEND") or None
    if name is not None and name not in BACKEND_NAMES:
        raise InvalidParameterError(
            f"The 'backend' parameter must be one of {', '.join(map(repr, BACKEND_NAMES))}. "
            f"Got {name!r} instead."
        )
    if name is None or (_DEVICE_OF[name] != device and backend is None):
        # An ambient choice for the other device does not apply to these arrays.
        if device == "cuda":
            name = "cupy"
        else:
            name = "numba" if _availability("numba")[0] else "numpy"
    if _DEVICE_OF[name] != device:
        raise TypeError(
            f"get_backend: expected arrays on {_DEVICE_OF[name]} for backend {name!r}, got "
            f"{'CuPy' if device == 'cuda' else 'NumPy'} arrays. Pass backend="
            f"{'cupy' if device == 'cuda' else 'numba'!r} or move the arrays."
        )
    return _make(name)


_blas_choice = contextvars.ContextVar("lvmcore_blas_threads", default=None)


@contextlib.contextmanager
def use_blas_threads(n):
    """Give engine steps ``n`` BLAS threads inside the block (None: no choice made here).

    The command line's ``--threads N`` sets this and the BLAS library's own limit together, so
    an explicit choice beats ``LVMCORE_BLAS_THREADS`` and the two-CPU default.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidParameterError(
            f"The 'n' parameter of use_blas_threads must be an int in [1, inf) or None. "
            f"Got {n!r} instead."
        )
    token = _blas_choice.set(n)
    try:
        yield
    finally:
        _blas_choice.reset(token)


def engine_blas_threads():
    """The BLAS threads of an engine step's GEMMs when a count was chosen: the count of an
    enclosing :func:`use_blas_threads` (the command line's ``--threads``), else
    ``LVMCORE_BLAS_THREADS`` when it is an integer. None when it is unset or ``auto``: the
    process's own BLAS setting.

    Raises
    ------
    InvalidParameterError
        ``LVMCORE_BLAS_THREADS`` neither ``auto`` nor an integer >= 1.
    """
    chosen = _blas_choice.get()
    if chosen is not None:
        return chosen
    raw = os.environ.get("LVMCORE_BLAS_THREADS", "auto").strip().lower()
    if raw in ("", "auto"):
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InvalidParameterError(
            f"The LVMCORE_BLAS_THREADS environment variable must be 'auto' or an int in "
            f"[1, inf). Got {raw!r} instead."
        )
    return n


@functools.cache
def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded at the first engine step (built
    once: about 10 ms; setting a thread count through them then costs about a microsecond)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a declared dependency; without it the step leaves BLAS alone
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


def process_blas_threads():
    """The largest thread count of the BLAS libraries loaded (None when none is known)."""
    counts = [lib.num_threads for lib in _blas_libraries()]
    return max(counts) if counts else None


@contextlib.contextmanager
def engine_kernel_threads():
    """Run the block (a model's training step, the K-sample evaluation) on the engine's thread
    split: its Numba kernels on ``LVMCORE_KERNEL_THREADS`` threads (default 1) and its GEMMs on
    :func:`engine_blas_threads` BLAS threads when a count was chosen, else on the process's
    BLAS setting.

    Inside a model step the kernels sit between BLAS calls, and OpenBLAS's workers keep
    spinning for a while after each GEMM: a Numba parallel region launched then fights
    them for the cores. Measured on the 2-core machine with 2 BLAS threads, an IWAE step
    at batch 20, K=50 took 21.5 ms with 2 Numba threads and 9.2 ms with 1, and K=5000
    evaluation ran at 50 against 57 images/s. The kernels give the same results for any
    thread count, so this changes speed only.

    BLAS: on the idle 2-vCPU machine (2026-12-03; one run of ``benchmarks/compare_peers.py``
    each, every GEMM on two threads against one), the IWAE-paper step at (B, K) = (20, 50) took
    13.1 against 17.8 ms, (100, 50) 52.5 against 81.3, the categorical VAE step 7.5 against
    11.3, K=5000 evaluation of 20 images 0.37 against 0.57 s; at (100, 1) the two were even
    (5.8-5.9 ms, interleaved). Running only the smaller products on one thread gained nothing
    measurable. On the same machine shared with other jobs, one thread was 1.5-6x faster (the
    second thread of each GEMM waits for a core): ``LVMCORE_BLAS_THREADS=1`` (or
    ``--threads 1``) is the setting for a busy machine. OpenBLAS's results depend on its
    thread count in the last digits: a step's depend on the chosen count, else on the
    process's.
    Standalone kernel calls and GEMMs outside engine steps keep their threads. OpenBLAS 0.3.31
    (NumPy's wheels) ignores a thread count set from any thread but the main one, so a step
    run from another thread keeps the process's BLAS count whatever was chosen.
    """
    blas = engine_blas_threads()
    try:
        import numba
    except ImportError:
        numba = None
    with _blas_at_most(blas):
        if numba is not None:
            want = int(os.environ.get("LVMCORE_KERNEL_THREADS", "1"))
            old = numba.get_num_threads()
            numba.set_num_threads(max(1, min(want, numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            if numba is not None:
                numba.set_num_threads(old)


# The BLAS thread count is process-wide, and engine blocks limiting it may overlap in time (a
# user's threads each running an evaluation, a step inside an evaluation): every active limit is
# registered here, the libraries run on the smallest of them, and the count they had before the
# first one comes back only when the last one ends, whichever thread ends last.
_blas_limit_lock = threading.Lock()
_blas_limits = []  # the active limits, one entry per block
_blas_before = {}  # library controller -> its count before the first active limit


def _apply_blas_limits():
    """Set every BLAS library to the smallest active limit (at most its count before), or back
    to that count when none is active. Call with ``_blas_limit_lock`` held."""
    for lib in _blas_libraries():
        if _blas_limits:
            before = _blas_before.setdefault(lib, lib.num_threads)
            want = min(before, min(_blas_limits))
        elif lib in _blas_before:
            want = _blas_before.pop(lib)
        else:
            continue
        if lib.num_threads != want:
            lib.set_num_threads(want)


@contextlib.contextmanager
def _blas_at_most(n):
    """Every BLAS library on at most ``n`` threads inside the block (None: unchanged). The count
    is process-wide: overlapping blocks, from any threads, run on the smallest active limit,
    and the count from before the first of them is restored when the last one ends."""
    if n is None:
        yield
        return
    with _blas_limit_lock:
        _blas_limits.append(n)
        _apply_blas_limits()
    try:
        yield
    finally:
        with _blas_limit_lock:
            _blas_limits.remove(n)
            _apply_blas_limits()


def engine_worker_count():
    """Threads for engine work that splits into independent pieces (the K-sample evaluation's
    chunks): the engine's chosen BLAS thread count (:func:`engine_blas_threads`), else the
    BLAS library's own, at most the CPUs this process may run on; 1 when neither is known."""
    n = engine_blas_threads() or process_blas_threads() or 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n, cpus))


@functools.cache
def _numba_layer_takes_threads():
    """Whether Numba's threading layer may launch parallel kernels from several threads at
    once: "omp" and "tbb" may, "workqueue" aborts the process when they do."""
    try:
        import numba
        from numba.np.ufunc.parallel import _launch_threads
    except ImportError:  # no Numba: nothing to launch
        return True
    try:
        _launch_threads()  # starts the layer without compiling anything
        return numba.threading_layer() in ("omp", "tbb")
    except Exception:  # a Numba without this private entry point: stay on one thread
        return False


@contextlib.contextmanager
def engine_worker_threads(n):
    """A pool of ``n`` threads for independent pieces of engine work, each piece running its
    GEMMs on one BLAS thread and its Numba kernels on one thread.

    Yields a ``concurrent.futures.ThreadPoolExecutor``, or None (run the pieces on the calling
    thread as usual) when ``n`` < 2, when Numba's threading layer cannot take kernel launches
    from several threads, or when the BLAS count cannot be lowered from the calling thread
    (OpenBLAS 0.3.31 takes a thread count only from the main thread: an evaluation started
    from another thread runs its chunks one at a time). The BLAS libraries' thread count is
    process-wide, so it is set to one for the block and restored after; NumPy's GEMMs and the
    Numba kernels (compiled with ``nogil``) release the GIL, so the pieces run on the cores at
    once.

    Two whole chunks side by side keep both cores busy with GEMMs and the elementwise kernels
    alike, where one chunk at a time on two BLAS threads leaves the kernels between the GEMMs
    on one core (their second Numba thread would meet OpenBLAS's spinning worker, see
    :func:`engine_kernel_threads`).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameterError(
            f"The 'n' parameter of engine_worker_threads must be an int in [1, inf). Got {n!r} "
            f"instead."
        )
    if n < 2 or not _numba_layer_takes_threads():
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    with _blas_at_most(1):
        if any(lib.num_threads > 1 for lib in _blas_libraries()):
            # the count did not go down: OpenBLAS 0.3.31 (pthreads) ignores a count set from
            # any thread but the main one, and n workers of multi-threaded GEMMs would fight
            # for the cores
            yield None
            return
        with ThreadPoolExecutor(
            n, thread_name_prefix="lvmcore-worker", initializer=_one_numba_thread
        ) as pool:
            yield pool


def _one_numba_thread():
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(1)  # a thread's own setting: the calling thread keeps its count


def array_module(name_or_device):
    """The array module for a device name ("cpu" or "cuda")."""
    if name_or_device in ("cpu", "numpy", "numba"):
        return np
    if name_or_device in ("cuda", "cupy", "gpu"):
        return _make("cupy").xp
    raise InvalidParameterError(
        f"The 'device' parameter must be one of 'cpu', 'cuda'. Got {name_or_device!r} instead."
    )
