"""What the subcommands share: the program name, the ``--device``, ``--threads`` and
``--distributed`` flags, the move of a model to its device (one GPU per process), and the names
of data sources."""

import os
from pathlib import Path

from ._types import positive_int

PROG = "lvmcore"


# The data sets lvmcore.data.load_dataset knows by name (a checkpoint records the name, not a path)
NAMED_DATA = ("digits", "digits-levels", "mnist")


def add_device_argument(parser):
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the arrays live: cpu (NumPy, Numba kernels) or cuda (CuPy "
        "arrays and CUDA kernels on the current GPU; needs "
        "'lvmcore[cuda]'). Checkpoints are the same either way "
        "(default: cpu)",
    )


def add_threads_argument(parser, extra=""):
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="BLAS threads (default: the BLAS library's choice)" + extra,
    )


def add_distributed_argument(parser, what):
    parser.add_argument(
        "--distributed",
        action="store_true",
        help=f"{what} over the processes of mpiexec -n P (or srun); one process outside "
        "them. Rank 0 alone prints and writes the run folder. Needs 'lvmcore[mpi]' "
        "(docs/distributed.md)",
    )


def to_device(model, device, comm=None):
    """Move ``model`` to ``device`` (before its optimizer exists); in a data-parallel run on
    CUDA each process first takes the GPU of its local rank (one process per GPU). Raises
    BackendUnavailableError, with the reason, when CUDA is asked for and cannot run."""
    from ..backend import array_module

    if device != "cpu":
        xp = array_module(device)
        if comm is not None and comm.size > 1:
            from ..distributed import select_local_device

            select_local_device(comm)
        model.to(xp)
    return model


def plural(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def data_label(data):
    if data in NAMED_DATA:
        return data
    return Path(data).stem or "data"


def data_source(data):
    """What the checkpoint records: a name, or an absolute path so eval works from anywhere."""
    return data if data in NAMED_DATA else os.path.abspath(data)


def recorded_data(data, state, where):
    """The data set to use: ``--data`` when given, else the source the checkpoint recorded
    (its ``state``); ValueError when neither says."""
    data = data or state.get("dataset", {}).get("source")
    if data is None:
        raise ValueError(
            f"expected --data: the run in {where} does not record where its data came from."
        )
    return data
