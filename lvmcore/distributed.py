"""Data-parallel training and sharded evaluation over MPI (mpi4py) and NCCL (CuPy).

Every rank runs the same program on its rows of each global batch; the ranks meet only in
collectives, and every collective goes through a :class:`Communicator`:

    SingleProcess      size 1; every reduction is the identity (the default, and what
                       ``get_communicator(True)`` gives outside ``mpiexec``)
    MPICommunicator    mpi4py's COMM_WORLD: host buffers and Python objects through MPI;
                       CuPy buffers through NCCL, whose id is broadcast by MPI (no device
                       pointer ever reaches MPI: the package-index MPI is not CUDA-aware)

One data-parallel step (B the global batch, P ranks, rank r), as ``lvmcore.train.fit`` runs it
with ``comm=``::

    shard = BatchShard(comm, B, *shard_rows(B, r, P))   # this rank's rows, maybe uneven
    with model._data_parallel(shard):                   # the model contract's two seams:
        loss_r, stats_r = model.loss_and_grads(x[shard.local_slice], rng)
        #   _step_noise: the global batch's noise, rows start:stop (noise_rows)
        #   _batch_rows: batch statistics over every rank's rows (allgather_rows)
    flat.allreduce(comm, scale=shard.share)             # grads of sum_r share_r * loss_r
    optimizer.step()                                    # unchanged, on every rank

so the all-reduced gradient is the gradient of the single-process mean over the B rows, and
the parameters stay equal on every rank (:func:`check_parameters` says when they do not).

Decisions and errors. A decision that could differ between ranks (the run folder, a checkpoint
to resume, a file to load) is taken once and shared: :meth:`Communicator.run_on_root` (rank 0
decides, every rank gets its result or its exception) and :meth:`Communicator.run_everywhere`
(every rank tries; if one fails, every rank raises). Such an exception, and any other that every
rank raises by construction (:meth:`Communicator.raising_together`: the checksums, a diverged
step after the all-reduce), ends every rank normally; any other exception inside
:meth:`Communicator.abort_on_error` aborts the job.

Sharded evaluation assigns the cells of the (evaluation batch, K-chunk) grid to ranks and folds
the per-cell log-sum-exps on the root in the single-process order
(:func:`fold_logsumexp_grid`), so the result is bit-identical for every P.

Shape letters: B batch, K importance samples, P ranks, N evaluation rows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import itertools
import math
import numbers
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from typing import Any, NamedTuple

import numpy as np

from ._validation import _array_library, check_array, check_param, check_same_device, get_xp
from .exceptions import BackendUnavailableError

__all__ = [
    "Communicator",
    "SingleProcess",
    "MPICommunicator",
    "get_communicator",
    "select_local_device",
    "raised_on_every_rank",
    "FlatGradients",
    "BatchShard",
    "shard_rows",
    "grid_cells",
    "fold_logsumexp_grid",
    "checksum",
    "check_parameters",
    "check_data",
]

_MPI_HINT = (
    "Install it with pip install 'lvmcore[mpi]' (mpi4py and the mpich wheel), or on a "
    "cluster build mpi4py against the site's MPI (pip install --no-binary mpi4py mpi4py), "
    "then start the job with mpiexec -n P (or srun)."
)
_OPS = ("sum", "max", "min")
_EVERY_RANK = "lvmcore_raised_on_every_rank"  # attribute set on an exception every rank raises


def raised_on_every_rank(exc: BaseException) -> bool:
    """True when ``exc`` was raised on every rank alike (by :meth:`Communicator.run_on_root`,
    :meth:`Communicator.run_everywhere` or inside :meth:`Communicator.raising_together`), so each
    rank may end normally with it; False for an exception of one rank, which must abort the job.
    """
    return bool(getattr(exc, _EVERY_RANK, False))


def _mark_every_rank(exc):
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _EVERY_RANK, True)
    return exc


def _portable(exc):
    """``exc`` if it survives pickling (to be sent to the other ranks), else a RuntimeError with
    its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------- communicators
class Communicator:
    """The collectives a data-parallel run needs; subclasses bind them to a transport.

    Every method is collective (all ranks call it, in the same order) except the properties.
    Reductions of Python objects are folded in rank order, so every rank gets the same bits.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that writes files and folds sharded results."""
        return self.rank == 0

    # -- the transport: overridden --------------------------------------------------------------
    def _allreduce_host(self, buffer: np.ndarray) -> None:
        raise NotImplementedError

    def _allreduce_device(self, buffer) -> None:
        raise NotImplementedError

    def _allgatherv_host(self, rows: np.ndarray, counts: list[int]) -> np.ndarray:
        """Every rank's C-contiguous ``rows`` (n_r, ...) concatenated in rank order; ``counts``
        holds every rank's n_r."""
        raise NotImplementedError

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` of rank ``root`` on every rank (pickled; for small objects and decisions)."""
        raise NotImplementedError

    def gather(self, obj: Any, root: int = 0) -> list | None:
        """The list of every rank's ``obj`` in rank order on ``root``; None elsewhere."""
        raise NotImplementedError

    def allgather(self, obj: Any) -> list:
        """The list of every rank's ``obj`` in rank order, on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank has called it."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job at once with exit status ``code``."""
        raise NotImplementedError

    # -- built on the transport -----------------------------------------------------------------
    def allreduce_sum(self, buffer) -> None:
        """Sum ``buffer`` over the ranks, in place, on every rank.

        MPICH's algorithms and NCCL's ring give every rank the same bits (each element is
        reduced once, then copied); :func:`check_parameters` catches a transport that does not.

        Parameters
        ----------
        buffer : ndarray of shape (n,), float32 or float64, C-contiguous and writeable
            A NumPy buffer goes through MPI; a CuPy buffer through NCCL on the current
            stream (select the device first, see :func:`select_local_device`).

        Notes
        -----
        One flat buffer per step (:class:`FlatGradients`) makes one collective call: its cost is
        the latency plus ``2 (P - 1) / P * nbytes`` over the link (ring or recursive halving),
        with no per-array overhead. NaN and Inf are summed like any value, so a divergence on one
        rank is seen by all of them after the call.
        """
        f = f"{type(self).__name__}.allreduce_sum"
        check_array(buffer, "buffer", f, ndim=1, finite=False)
        if not buffer.flags.c_contiguous:
            raise ValueError(
                f"{f}: expected buffer to be C-contiguous, got strides {buffer.strides}. "
                f"Reduce one preallocated flat buffer (FlatGradients.buffer), not a view."
            )
        if _array_library(buffer) == "cupy":
            self._allreduce_device(buffer)
            return
        if not buffer.flags.writeable:
            raise ValueError(f"{f}: expected buffer to be writeable, got a read-only array.")
        self._allreduce_host(buffer)

    def allreduce(self, value, op: str = "sum"):
        """Reduce a Python scalar or a small NumPy array over the ranks; returns the result.

        Parameters
        ----------
        value : int, float, numpy scalar or numpy.ndarray
            The same type and shape on every rank. NaN and Inf pass through.
        op : {"sum", "max", "min"}

        Returns
        -------
        The reduced value, bit-identical on every rank: the values are gathered and folded in
        rank order (``((v0 + v1) + v2) + ...``), never in a transport-chosen order.
        """
        f = f"{type(self).__name__}.allreduce"
        op = check_param(op, "op", f, kind="choice", choices=_OPS)
        if _array_library(value) == "cupy":
            raise TypeError(
                f"{f}: expected value to be a Python number or a numpy.ndarray, got a "
                f"cupy.ndarray. Copy small values to the host (value.get()); reduce large device "
                f"buffers with allreduce_sum."
            )
        is_array = isinstance(value, np.ndarray)
        if not (is_array or (isinstance(value, numbers.Number) and not isinstance(value, bool))):
            raise TypeError(
                f"{f}: expected value to be an int, a float or a numpy.ndarray, got "
                f"{type(value).__name__}."
            )
        values = self.allgather(value)
        if is_array:
            shapes = {np.shape(v) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"{f}: expected value to have one shape on every rank, got shapes "
                    f"{[np.shape(v) for v in values]} (in rank order)."
                )
        combine = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]
        out = functools.reduce(combine, values)
        if is_array:
            return out
        return int(out) if isinstance(value, numbers.Integral) else float(out)

    def allgather_rows(self, array, axis: int = 0, count: int | None = None):
        """Every rank's rows of ``array`` along ``axis``, concatenated in rank order, on every
        rank: a variable-length all-gather (``MPI_Allgatherv``).

        This is the cross-rank reduction point of the statistics that span a batch
        (``Model._batch_rows``): with the rows of a global batch split into contiguous blocks
        in rank order (:func:`shard_rows`), the result is the whole batch's array, bit for bit
        the one a single process would hold, and the same on every rank.

        Parameters
        ----------
        array : ndarray
            Any dtype (float, int, bool), NumPy or CuPy; a CuPy array goes through the host
            (the package-index MPI is not CUDA-aware) and comes back as CuPy.
        axis : int
            The batch axis.
        count : int, optional
            How many of this rank's rows to contribute (the first ``count`` along ``axis``);
            all when None. 0 for a rank without rows of the batch that ran one stand-in row
            (:class:`BatchShard`).

        Returns
        -------
        ndarray with ``sum_r count_r`` rows along ``axis``; the other axes and the dtype as
        ``array``'s. In one process, ``array`` itself (or its first ``count`` rows).

        Raises
        ------
        ValueError
            On every rank, when the ranks' arrays differ in dtype or in the other axes.
        """
        f = f"{type(self).__name__}.allgather_rows"
        check_array(array, "array", f, dtype="any", finite=False)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"{f}: expected axis to be an int, got {type(axis).__name__}.")
        if not -array.ndim <= axis < array.ndim:
            raise ValueError(
                f"{f}: expected axis in [-{array.ndim}, {array.ndim}) for an array of shape "
                f"{tuple(array.shape)}, got {axis}."
            )
        axis = int(axis) % array.ndim
        n = array.shape[axis]
        if count is not None:
            count = check_param(count, "count", f, kind="int", low=0, low_inclusive=True)
            if count > n:
                raise ValueError(
                    f"{f}: expected count <= {n} (the rows of array along axis {axis}), got "
                    f"{count}."
                )
            n = count
        xp = get_xp(array)
        rows = xp.moveaxis(array, axis, 0)[:n]  # (n, ...)
        if self.size == 1:
            return array if n == array.shape[axis] else xp.moveaxis(rows, 0, axis)
        # the sizes first: every rank learns every count, dtype and row shape
        meta = self.allgather((n, rows.shape[1:], rows.dtype.str))
        layouts = {(shape, dtype) for _, shape, dtype in meta}
        if len(layouts) > 1:
            raise _mark_every_rank(
                ValueError(
                    f"{f}: expected one dtype and one shape besides axis {axis} on every rank, "
                    f"got {[(tuple(m[1]), m[2]) for m in meta]} (in rank order)."
                )
            )
        host = rows.get() if _array_library(rows) == "cupy" else rows
        out = self._allgatherv_host(np.ascontiguousarray(host), [m[0] for m in meta])
        if xp is not np:
            out = xp.asarray(out)
        return xp.moveaxis(out, 0, axis)

    def run_on_root(self, func: Callable[..., Any], *args, root: int = 0) -> Any:
        """Run ``func(*args)`` on ``root`` alone; every rank returns its result or raises its
        exception.

        For a decision that must be the same on every rank and is taken where the files are
        written: "this folder already holds a run", the checkpoint to resume. The result is
        broadcast (pickled: keep it small, or send arrays only when needed). The exception is
        re-raised on every rank (marked :func:`raised_on_every_rank`), so every rank fails
        the same way.
        """
        _check_root(root, self.size, f"{type(self).__name__}.run_on_root")
        if self.size == 1:
            try:
                return func(*args)
            except Exception as exc:
                _mark_every_rank(exc)
                raise
        payload = None
        if self.rank == root:
            try:
                payload = ("ok", func(*args))
            except Exception as exc:
                payload = ("error", _portable(exc))
                self.bcast(payload, root=root)
                _mark_every_rank(exc)
                raise
        kind, value = self.bcast(payload, root=root)
        if kind == "error":
            raise _mark_every_rank(value)
        return value

    def run_everywhere(self, func: Callable[..., Any], *args) -> Any:
        """Run ``func(*args)`` on every rank; if it raises on any rank, raise on every rank.

        For work each rank does for itself that can fail on some ranks only (loading the data
        from a file system a node does not see). The exception of the first failing rank is
        raised everywhere, its message naming the failing ranks.
        """
        try:
            result, error = func(*args), None
        except Exception as exc:
            result, error = None, exc
        if self.size == 1:
            if error is not None:
                raise _mark_every_rank(error)
            return result
        errors = self.allgather(None if error is None else _portable(error))
        failed = [r for r, e in enumerate(errors) if e is not None]
        if not failed:
            return result
        first = errors[failed[0]] if error is None else error
        where = f" [on rank(s) {failed} of {self.size}]"
        try:
            exc = type(first)(f"{first}{where}")
        except Exception:
            exc = RuntimeError(f"{type(first).__name__}: {first}{where}")
        raise _mark_every_rank(exc) from (error if error is not None else None)

    @contextlib.contextmanager
    def raising_together(self) -> Iterator[None]:
        """Mark an exception raised in the block as raised on every rank.

        For a block whose outcome is the same on every rank by construction (a check on
        all-reduced values, a comparison of gathered checksums), so that
        :meth:`abort_on_error` lets every rank end with it normally instead of aborting.
        """
        try:
            yield
        except Exception as exc:
            _mark_every_rank(exc)
            raise

    @contextlib.contextmanager
    def abort_on_error(self) -> Iterator[None]:
        """Run the block; an exception on any rank ends the whole job within seconds.

        Without it, the other ranks would wait forever in their next collective. The failing
        rank prints its traceback (prefixed with its rank) to stderr and calls
        ``MPI.COMM_WORLD.Abort(1)``, which ``mpiexec`` and ``srun`` turn into the end of every
        rank and a non-zero exit status. ``SystemExit(0)`` passes through, and so does an
        exception every rank raises alike (:func:`raised_on_every_rank`): each rank then ends
        normally with it. A single process only re-raises. (``python -m mpi4py script.py``
        installs the same behaviour for a whole script.)
        """
        try:
            yield
        except SystemExit as exc:
            if exc.code in (None, 0) or self.size == 1 or raised_on_every_rank(exc):
                raise
            self._fail(exc)
        except BaseException as exc:
            if self.size == 1 or raised_on_every_rank(exc):
                raise
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        head = f"lvmcore: rank {self.rank} of {self.size} failed; aborting every rank.\n"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(head + text)
        sys.stderr.flush()
        self.abort(1)


class SingleProcess(Communicator):
    """One process: ``size`` 1, reductions are the identity, nothing is communicated."""

    def _allreduce_host(self, buffer):
        pass

    def _allreduce_device(self, buffer):
        pass

    def _allgatherv_host(self, rows, counts):
        return rows

    def bcast(self, obj, root=0):
        _check_root(root, 1, "SingleProcess.bcast")
        return obj

    def gather(self, obj, root=0):
        _check_root(root, 1, "SingleProcess.gather")
        return [obj]

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.exit(code)

    def __repr__(self):
        return "SingleProcess()"


class MPICommunicator(Communicator):
    """mpi4py's ``COMM_WORLD`` (or ``comm``), with NCCL for CuPy buffers.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm, optional
        Defaults to ``MPI.COMM_WORLD``.

    Notes
    -----
    Host buffers go through ``MPI_Allreduce`` in place. CuPy buffers go through a NCCL
    communicator made at the first device all-reduce: rank 0 draws the NCCL unique id, MPI
    broadcasts it (a host tuple), and every rank joins with ``NcclCommunicator(P, id, rank)`` on
    its current device. The pip ``mpich`` wheel is not CUDA-aware, so no device pointer is ever
    given to MPI. ``local_rank`` and ``local_size`` count the ranks on this node (a shared-memory
    split of the communicator), for one GPU per rank.
    """

    def __init__(self, comm=None):
        MPI = _import_mpi("MPICommunicator")
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._nccl = None  # (module, communicator), made at the first device all-reduce

    def _allreduce_host(self, buffer):
        self._comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)

    def _allgatherv_host(self, rows, counts):
        # as bytes, so that every dtype (float, int, bool) travels unchanged
        inner = rows.itemsize * math.prod(rows.shape[1:])
        out = np.empty((sum(counts),) + rows.shape[1:], dtype=rows.dtype)
        sizes = [c * inner for c in counts]
        displs = [sum(sizes[:r]) for r in range(len(sizes))]
        send = rows.reshape(-1).view(np.uint8)
        self._comm.Allgatherv(
            [send, self._MPI.BYTE], [out.reshape(-1).view(np.uint8), sizes, displs, self._MPI.BYTE]
        )
        return out

    def _allreduce_device(self, buffer):
        import cupy

        nccl, comm = self._nccl_comm()
        code = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        ptr = buffer.data.ptr
        # in place on the current stream: the optimizer step that follows is ordered after it
        stream = cupy.cuda.get_current_stream().ptr
        comm.allReduce(ptr, ptr, buffer.size, code[buffer.dtype], nccl.NCCL_SUM, stream)

    def _nccl_comm(self):
        if self._nccl is None:
            # every rank learns whether every rank can use NCCL before anyone waits on the id
            try:
                nccl = importlib.import_module("cupy.cuda.nccl")
                why = None if getattr(nccl, "available", True) else "NCCL is not available"
            except ImportError as exc:
                nccl, why = None, f"{type(exc).__name__}: {exc}"
            failed = [(r, w) for r, w in enumerate(self.allgather(why)) if w is not None]
            if failed:
                raise BackendUnavailableError(
                    f"MPICommunicator.allreduce_sum: expected cupy.cuda.nccl on every rank for "
                    f"a CuPy buffer, got {failed[0][1]} on rank(s) "
                    f"{[r for r, _ in failed]}. Install NCCL for CuPy (pip install "
                    f"nvidia-nccl-cu12), or train on the CPU."
                )
            uid = self.bcast(nccl.get_unique_id() if self.is_root else None)
            self._nccl = (nccl, nccl.NcclCommunicator(self.size, uid, self.rank))
        return self._nccl

    def bcast(self, obj, root=0):
        _check_root(root, self.size, "MPICommunicator.bcast")
        return self._comm.bcast(obj, root=root)

    def gather(self, obj, root=0):
        _check_root(root, self.size, "MPICommunicator.gather")
        return self._comm.gather(obj, root=root)

    def allgather(self, obj):
        return self._comm.allgather(obj)

    def barrier(self):
        self._comm.Barrier()

    def abort(self, code=1):
        self._comm.Abort(code)

    def __repr__(self):
        return f"MPICommunicator(rank={self.rank}, size={self.size})"


def _check_root(root, size, func):
    if isinstance(root, bool) or not isinstance(root, numbers.Integral) or not 0 <= root < size:
        raise ValueError(f"{func}: expected root to be a rank in [0, {size}), got {root!r}.")


def _import_mpi(func):
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{func}: expected mpi4py for a distributed run, got {type(exc).__name__}: {exc}. "
            f"{_MPI_HINT}"
        ) from None
    return MPI


def get_communicator(distributed: bool = False) -> Communicator:
    """The communicator of this run.

    Parameters
    ----------
    distributed : bool
        False: :class:`SingleProcess`. True (``--distributed``): :class:`MPICommunicator` over
        ``COMM_WORLD``; when the process was not started by ``mpiexec``/``srun`` (world size 1)
        it is a :class:`SingleProcess` instead, with a one-line notice on stderr.

    Raises
    ------
    BackendUnavailableError
        With ``distributed=True`` when mpi4py cannot be imported (the message says how to
        install it), or when the launcher started several processes but mpi4py sees one (an
        mpi4py built against another MPI than the launcher's).
    """
    if not isinstance(distributed, bool):
        raise TypeError(
            f"get_communicator: expected distributed to be a bool, got "
            f"{type(distributed).__name__}."
        )
    if not distributed:
        return SingleProcess()
    MPI = _import_mpi("get_communicator")
    if MPI.COMM_WORLD.Get_size() == 1:
        launched = _launcher_size()
        if launched > 1:
            # every process would train alone and write the same run folder
            raise BackendUnavailableError(
                f"get_communicator: expected mpi4py to see the {launched} processes the "
                f"launcher started, got a world of size 1: mpi4py is built against another MPI "
                f"than this mpiexec/srun. Use the mpiexec of that MPI (python -m mpi4py "
                f"--mpi-lib-version names it), or rebuild mpi4py against the site's MPI "
                f"(pip install --no-binary mpi4py mpi4py)."
            )
        sys.stderr.write(
            "lvmcore: --distributed in a single process (not started by mpiexec -n P or "
            "srun): running as one process.\n"
        )
        return SingleProcess()
    return MPICommunicator(MPI.COMM_WORLD)


def select_local_device(comm: Communicator) -> int:
    """Make GPU ``comm.local_rank`` the current CuPy device (one process per GPU); returns it.

    When each rank sees a single device (``CUDA_VISIBLE_DEVICES`` set per task, as Slurm's
    ``--gpus-per-task=1`` does) that device is used. Call it before the model is moved to the
    GPU and before the first device all-reduce, which binds NCCL to the current device.

    Raises
    ------
    ValueError
        When this node runs more ranks than it has visible GPUs (NCCL does not allow two ranks
        on one GPU).
    """
    if not isinstance(comm, Communicator):
        raise TypeError(
            f"select_local_device: expected comm to be a Communicator, got "
            f"{type(comm).__name__}. Make one with get_communicator()."
        )
    import cupy

    n = int(cupy.cuda.runtime.getDeviceCount())
    if n == 1:
        device = 0
    elif comm.local_size <= n:
        device = comm.local_rank
    else:
        raise ValueError(
            f"select_local_device: expected at most one rank per GPU, got {comm.local_size} "
            f"ranks on this node and {n} visible GPUs. Start at most {n} ranks per node "
            f"(mpiexec -ppn {n}, or srun --gpus-per-task=1)."
        )
    cupy.cuda.Device(device).use()
    return device


# ------------------------------------------------------------------------------------ gradients
class FlatGradients:
    """Every gradient of a model in one contiguous, preallocated buffer, for one all-reduce.

    Two modes:

    - ``FlatGradients(grads)`` (copy): ``buffer`` is allocated once; :meth:`allreduce` copies the
      arrays in (``pack``), reduces, and copies the sums back (``unpack``). Works for any dict.
    - ``FlatGradients.bind(model)`` (views): the model's gradient arrays are replaced by views
      into ``buffer``, so the backward pass writes straight into it and no copy is made. This
      holds because every model only updates its gradients in place (``zero_grad`` writes
      ``g[...] = 0``, backward ``g += ...``, ``clip_grad_norm`` ``g *= s``); the arrays are
      rebound only by ``_add_param`` (construction) and ``to(xp)``. Bind after ``model.to(xp)``
      and before the optimizer is made over ``model.gradients()``.

    Parameters
    ----------
    grads : dict of str -> ndarray
        One dtype (float32 or float64), one device. The key order (the dict's) is the layout,
        the same on every rank because every rank builds the same model.

    Attributes
    ----------
    buffer : ndarray of shape (n,)
        n = total number of gradient entries; on the gradients' device.
    views : dict of str -> ndarray
        The gradient-shaped views of ``buffer``.
    """

    def __init__(self, grads: Mapping[str, Any]):
        f = "FlatGradients"
        if not isinstance(grads, Mapping) or not grads:
            raise TypeError(
                f"{f}: expected grads to be a non-empty dict of arrays (model.gradients()), "
                f"got {type(grads).__name__} {grads!r:.60}."
            )
        arrays = list(grads.values())
        for k, g in grads.items():
            check_array(g, f"grads[{k!r}]", f, finite=False)
        check_same_device(arrays, [f"grads[{k!r}]" for k in grads], f)
        dtypes = sorted({str(g.dtype) for g in arrays})
        if len(dtypes) > 1:
            raise TypeError(
                f"{f}: expected every gradient to have one dtype, got {dtypes}. Build the model "
                f"with one dtype."
            )
        xp = get_xp(*arrays)
        self.grads = dict(grads)
        self.keys = tuple(grads)
        self.shapes = {k: tuple(g.shape) for k, g in grads.items()}
        sizes = [int(g.size) for g in arrays]
        self.offsets, total = {}, 0
        for k, n in zip(self.keys, sizes):
            self.offsets[k], total = total, total + n
        self.buffer = xp.zeros(total, dtype=arrays[0].dtype)  # (n,)
        self.views = {
            k: self.buffer[o : o + n].reshape(self.shapes[k])
            for (k, o), n in zip(self.offsets.items(), sizes)
        }
        self.bound = False

    @classmethod
    def bind(cls, model) -> FlatGradients:
        """Views mode: rebind ``model``'s gradient arrays to views into one buffer.

        The arrays are found by identity in the ``grads`` dicts of ``model.modules()`` and of
        the model itself (VQ-VAE's codebook); their current values are kept. Afterwards
        ``model.gradients()[k] is flat.views[k]`` for every key, which is checked.

        Raises
        ------
        TypeError
            When a gradient of ``model.gradients()`` lives elsewhere (nothing is rebound then);
            use the copy mode, ``FlatGradients(model.gradients())``.
        """
        grads = model.gradients()
        flat = cls(grads)
        key_of = {id(g): k for k, g in grads.items()}
        owners = [m.grads for m in model.modules().values()]
        if isinstance(getattr(model, "grads", None), dict):
            owners.append(model.grads)
        rebound = []
        for d in owners:
            for name, g in list(d.items()):
                key = key_of.get(id(g))
                if key is not None:
                    flat.views[key][...] = g
                    d[name] = flat.views[key]
                    rebound.append((d, name, g))
        after = model.gradients()
        missing = [k for k in flat.keys if after.get(k) is not flat.views[k]]
        if missing:
            for d, name, g in rebound:
                d[name] = g
            raise TypeError(
                f"FlatGradients.bind: expected every gradient of {type(model).__name__} in the "
                f"grads dict of one of its modules, got {missing} elsewhere. Use the copy mode, "
                f"FlatGradients(model.gradients())."
            )
        flat.grads = after
        flat.bound = True
        return flat

    def pack(self) -> None:
        """Copy the gradients into ``buffer`` (nothing to do in views mode)."""
        if not self.bound:
            for k in self.keys:
                self.views[k][...] = self.grads[k]

    def unpack(self) -> None:
        """Copy ``buffer`` back into the gradients (nothing to do in views mode)."""
        if not self.bound:
            for k in self.keys:
                self.grads[k][...] = self.views[k]

    def allreduce(self, comm: Communicator, scale: float = 1.0) -> None:
        """Replace every gradient by the sum over ranks of ``scale * gradient``, in place.

        Parameters
        ----------
        comm : Communicator
        scale : float >= 0
            This rank's share of the global loss: ``(stop - start) / B`` for its rows of a
            batch of B (see :func:`shard_rows`), so that the sum over ranks is the gradient of
            the mean over the whole batch. 0 for a rank without rows.
        """
        if not isinstance(comm, Communicator):
            raise TypeError(
                f"FlatGradients.allreduce: expected comm to be a Communicator, got "
                f"{type(comm).__name__}. Make one with get_communicator()."
            )
        scale = check_param(scale, "scale", "FlatGradients.allreduce", low=0, low_inclusive=True)
        self.pack()
        if scale != 1.0:
            self.buffer *= self.buffer.dtype.type(scale)
        comm.allreduce_sum(self.buffer)
        self.unpack()


# ------------------------------------------------------------------------------------- sharding
def shard_rows(batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a global batch that rank ``rank`` of ``size`` takes.

    Contiguous blocks in rank order; when ``size`` does not divide ``batch_size`` the first
    ``batch_size % size`` ranks take one row more (``numpy.array_split``'s rule), and a rank can
    get no rows when ``batch_size < size`` (e.g. the short last batch of an epoch).

    Returns
    -------
    start, stop : int
        ``0 <= start <= stop <= batch_size``; the blocks of ranks 0..size-1 tile the batch.

    Notes
    -----
    Uneven shards are allowed and exact: rank r's loss is the mean over its n_r rows, and it
    enters the all-reduce with weight n_r / B (``FlatGradients.allreduce(comm, scale=n_r / B)``),
    so :math:`\\sum_r \\tfrac{n_r}{B} \\tfrac{1}{n_r} \\sum_{b \\in r} \\ell_b
    = \\tfrac1B \\sum_b \\ell_b`, the single-process mean, whatever P. A rank without rows
    zeroes its gradients, skips the model and still joins the all-reduce (weight 0).
    """
    f = "shard_rows"
    batch_size = check_param(batch_size, "batch_size", f, kind="int", low=0, low_inclusive=True)
    size = check_param(size, "size", f, kind="int", low=1, low_inclusive=True)
    rank = check_param(rank, "rank", f, kind="int", low=0, low_inclusive=True)
    if rank >= size:
        raise ValueError(f"{f}: expected rank in [0, size={size}), got {rank}.")
    q, r = divmod(batch_size, size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


class BatchShard(NamedTuple):
    """This rank's part of one global batch of a data-parallel step.

    ``comm`` the communicator, ``batch_size`` B of the global batch, ``[start, stop)`` this
    rank's rows (:func:`shard_rows`). A model given one (``Model._data_parallel``) draws the
    global batch's noise and keeps rows ``start:stop`` (``_step_noise``), and gathers its batch
    statistics over every rank (``_batch_rows`` -> :meth:`Communicator.allgather_rows`).

    A rank without rows (B < P: the short last batch of an epoch) still takes part in every
    collective of the step: it runs the model on one stand-in row (``local_slice``, the batch's
    first row), contributes none of its rows to the batch statistics and enters the
    all-reduce with zero gradients and weight 0.
    """

    comm: Communicator
    batch_size: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """n_r, this rank's rows of the batch."""
        return self.stop - self.start

    @property
    def share(self) -> float:
        """n_r / B: this rank's weight in the all-reduce of the gradients of its rows' mean."""
        return self.rows / self.batch_size

    @property
    def local_slice(self) -> slice:
        """The rows of the batch this rank runs: its own, or one stand-in row when it has none."""
        return slice(self.start, self.stop) if self.rows else slice(0, 1)


def grid_cells(n_batches: int, n_chunks: int, rank: int, size: int) -> list[tuple[int, int]]:
    """The cells (batch i, chunk j) of an ``n_batches x n_chunks`` grid that ``rank`` computes.

    Cells are numbered row-major (all chunks of batch 0, then batch 1, ...) and split into
    contiguous blocks by :func:`shard_rows`, so a rank mostly meets few batches (one encoder
    pass each) and the work per rank differs by at most one cell.
    """
    f = "grid_cells"
    n_batches = check_param(n_batches, "n_batches", f, kind="int", low=0, low_inclusive=True)
    n_chunks = check_param(n_chunks, "n_chunks", f, kind="int", low=1, low_inclusive=True)
    start, stop = shard_rows(n_batches * n_chunks, rank, size)
    return [divmod(c, n_chunks) for c in range(start, stop)]


def fold_logsumexp_grid(
    comm: Communicator,
    n_batches: int,
    n_chunks: int,
    cell: Callable[[int, int], Any],
    root: int = 0,
    executor: Executor | None = None,
) -> np.ndarray | None:
    """Sharded K-sample evaluation: compute the grid's cells on all ranks, fold on ``root``.

    Parameters
    ----------
    comm : Communicator
    n_batches, n_chunks : int
        The grid: evaluation batch i (of B_i rows) by K-chunk j.
    cell : callable (i, j) -> ndarray of shape (B_i,)
        The partial log-sum-exp over chunk j's samples of each row of batch i, in float64
        (e.g. ``log_mean_exp(log_w_chunk) + log(n_j)``). It must not depend on which rank calls
        it: its noise is keyed by (batch, sample offset), not by rank. Called by each rank for
        its cells of :func:`grid_cells`, in row-major order. A CuPy result is copied to the host.
    root : int
    executor : concurrent.futures.Executor, optional
        Computes the cells of one batch at the same time (``executor.map``), batch after batch;
        ``cell`` must then be safe to call from several threads for cells of one batch. The
        cells and their fold are the same as without it.

    Returns
    -------
    ndarray of shape (N,), float64, on ``root``; None on the other ranks
        Per row of the N = sum_i B_i rows, in batch order:
        :math:`\\mathrm{lse} = \\mathrm{logaddexp}(\\ldots\\mathrm{logaddexp}(
        \\mathrm{logaddexp}(-\\infty, c_{i0}), c_{i1})\\ldots, c_{i,J-1})`.
        Subtract :math:`\\log K` for the log-mean-exp estimate of log p(x).

    Notes
    -----
    The fold is the one-process loop's (``lse = logaddexp(lse, c_ij)`` over j = 0, 1, ...,
    starting from -inf, in NumPy float64) applied to the same cell values, so the result is
    bit-identical for every P, P = 1 included: the single-process evaluation must call this
    function too (with :class:`SingleProcess`) for that to hold on every device.
    """
    f = "fold_logsumexp_grid"
    if not isinstance(comm, Communicator):
        raise TypeError(
            f"{f}: expected comm to be a Communicator, got {type(comm).__name__}. Make one "
            f"with get_communicator()."
        )
    if not callable(cell):
        raise TypeError(f"{f}: expected cell to be callable (i, j) -> array, got {cell!r}.")
    _check_root(root, comm.size, f)
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"{f}: expected executor to be a concurrent.futures.Executor or None, got "
            f"{type(executor).__name__}."
        )
    mine = {}
    for i, ijs in itertools.groupby(
        grid_cells(n_batches, n_chunks, comm.rank, comm.size), key=lambda ij: ij[0]
    ):
        ijs = list(ijs)
        if executor is None or len(ijs) == 1:
            parts = [cell(*ij) for ij in ijs]
        else:
            parts = list(executor.map(cell, *zip(*ijs)))
        for (i, j), part in zip(ijs, parts):
            check_array(part, f"cell({i}, {j})", f, ndim=1, dtype=np.float64, finite=False)
            host = part.get() if _array_library(part) == "cupy" else part  # MPI sees host
            mine[(i, j)] = np.ascontiguousarray(host)
    gathered = comm.gather(mine, root=root)
    if comm.rank != root:
        return None
    cells = {}
    for part in gathered:
        cells.update(part)
    out = []
    for i in range(n_batches):
        lse = np.full(cells[(i, 0)].shape, -np.inf)
        for j in range(n_chunks):
            c = cells[(i, j)]
            if c.shape != lse.shape:
                raise ValueError(
                    f"{f}: expected every chunk of batch {i} to give {lse.shape[0]} rows, got "
                    f"cell({i}, {j}) of shape {c.shape}."
                )
            lse = np.logaddexp(lse, c)
        out.append(lse)
    return np.concatenate(out) if out else np.empty(0)


# ------------------------------------------------------------------------------------ checksums
def checksum(arrays: Mapping[str, Any]) -> str:
    """A hex digest (BLAKE2b, 128 bits) of named arrays: names, dtypes, shapes and bytes.

    Equal digests mean bit-identical arrays with the same layout; CuPy arrays are copied to
    the host to be hashed.
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"checksum: expected arrays to be a dict of name -> array, got {type(arrays).__name__}."
        )
    h = hashlib.blake2b(digest_size=16)
    for k, a in arrays.items():
        check_array(a, f"arrays[{k!r}]", "checksum", dtype="any", finite=False)
        host = np.ascontiguousarray(a.get() if _array_library(a) == "cupy" else a)
        h.update(f"{k}|{host.dtype.str}|{host.shape}|".encode())
        h.update(host.data)
    return h.hexdigest()


def _compare(comm, digest, func, what, hint):
    digests = comm.allgather(digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        # every rank sees the same digests, so every rank raises this (and ends normally)
        raise _mark_every_rank(
            ValueError(
                f"{func}: expected {what} to be identical on every rank, got a checksum on "
                f"rank(s) {odd} ({digests[odd[0]][:12]}...) that differs from rank 0's "
                f"({digests[0][:12]}...). {hint}"
            )
        )


def check_parameters(comm: Communicator, params: Mapping[str, Any], when: str = "") -> None:
    """Raise on every rank when the parameters differ between ranks.

    Parameters
    ----------
    comm : Communicator
    params : dict of str -> ndarray
        ``model.parameters()`` (state arrays such as EMA sums included) or the optimizer's
        state.
    when : str
        Named in the message, e.g. ``"after epoch 3"``.

    Raises
    ------
    ValueError
        On every rank, naming the ranks that drifted.
    """
    _compare(
        comm,
        checksum(params),
        "check_parameters",
        "the parameters" + (f" {when}" if when else ""),
        "The ranks have drifted apart: a statistic that spans the batch (free bits' batch-mean "
        "KL, EMA codebook sums, moving baselines) was used before it was reduced across ranks, "
        "or the ranks applied different updates. Each batch statistic must go through the "
        "model's cross-rank reduction.",
    )


def check_data(comm: Communicator, arrays: Mapping[str, Any]) -> None:
    """Raise on every rank when the data differ between ranks (call it once, at start-up).

    Parameters
    ----------
    comm : Communicator
    arrays : dict of str -> ndarray
        E.g. ``{"train": dataset.train, "valid": dataset.valid}`` after the casts a run makes.

    Raises
    ------
    ValueError
        On every rank, naming the ranks whose data differ from rank 0's.
    """
    _compare(
        comm,
        checksum(arrays),
        "check_data",
        "the data",
        "Every rank must load the same data set: pass the same --data path (on a file system "
        "every node sees) and the same preprocessing options to every rank.",
    )


def _launcher_size() -> int:
    """The number of processes the launcher says it started (1 when none says so): Hydra
    (MPICH, Intel MPI) and Slurm's PMI set ``PMI_SIZE``, Open MPI ``OMPI_COMM_WORLD_SIZE``."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1
