"""The ``lvmcore`` command: ``train``, ``eval`` and ``download-mnist``, one module each.

Examples
--------
    lvmcore train                                  # Bernoulli VAE on the embedded 8x8 digits
    lvmcore train --data ~/mnist --latent 50 --hidden 200,200 --epochs 100
    lvmcore train --out runs/vae-digits --resume --epochs 600
    lvmcore eval runs/vae-digits
    lvmcore train --model vqvae --codes 512 --slots 8 --codebook-update ema --kmeans-init
    lvmcore download-mnist ~/mnist
    mpiexec -n 4 lvmcore train --distributed --model iwae --k 50 --data ~/mnist
    mpiexec -n 4 lvmcore eval runs/iwae-mnist --distributed --k 5000

Models come from the one registry, :data:`lvmcore.models.MODELS`: a model registered there
(:func:`lvmcore.models.register_model`) is available as ``lvmcore train --model NAME`` with the
flags its class declares (:mod:`lvmcore.models.base`).

Layout: ``_types`` (argument types), ``_common`` (flags and helpers the subcommands share),
``train``, ``eval``, ``download`` (one subcommand each: ``add_parser(sub)`` and ``run(args)``).

User errors (a bad flag value, a missing file, a diverged run) end with one line
``lvmcore: error: ...`` on stderr and exit status 2 (1 for a diverged run), without a traceback.

With ``--distributed`` (``train``, ``eval``) the command runs as one rank of an MPI job: rank 0
alone prints and writes files. An error every rank meets alike (a decision rank 0 takes and
shares, a check on all-reduced values, a checksum mismatch) ends every rank with that status and
rank 0's one line; an exception on some ranks only aborts the whole job within seconds, with
the failing rank's traceback.
"""

import argparse
import contextlib
import sys

from .. import __version__
from ..distributed import SingleProcess, get_communicator
from ..exceptions import BackendUnavailableError, TrainingDivergedError
from ._common import PROG

__all__ = ["main", "build_parser", "PROG"]


def build_parser():
    """The ``lvmcore`` argument parser, with one sub-parser per command."""
    from . import download, train
    from . import eval as evaluation

    parser = argparse.ArgumentParser(
        prog=PROG, description="Latent-variable generative models with hand-derived gradients."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(sub)
    evaluation.add_parser(sub)
    download.add_parser(sub)
    return parser


@contextlib.contextmanager
def _blas_threads(n):
    """Limit BLAS threads to ``n`` for the command (None: leave them alone).

    Small GEMMs gain nothing from threads, and an oversubscribed machine makes spinning BLAS
    threads very slow (a 784-200-200-50 VAE step: 13 ms with 1 thread, 110 ms with 2 on a
    loaded 2-core machine). threadpoolctl ships with scikit-learn, a dependency.
    """
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def main(argv=None):
    """Run the ``lvmcore`` command line; returns 0 on success.

    Errors exit through ``SystemExit``: status 2 for bad arguments and user errors (invalid
    values, missing or corrupt files), 1 for a diverged training run, 130 on Ctrl-C. Each prints
    one line ``lvmcore: error: ...`` to stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    comm = SingleProcess()

    def end(status, message):
        # every rank ends with the status; rank 0 alone says why
        parser.exit(status, message if comm.is_root else None)

    try:
        # the job's communicator (SingleProcess without --distributed, or outside mpiexec)
        comm = get_communicator(bool(getattr(args, "distributed", False)))
        args.comm = comm
        if args.command in ("train", "eval") and comm.is_root:
            from .._blas import blas_advice

            advice = blas_advice()
            if advice:
                print(f"{PROG}: {advice}")
        with comm.abort_on_error(), _blas_threads(getattr(args, "threads", None)):
            return args.func(args)
    except TrainingDivergedError as err:
        end(1, f"{PROG}: error: {err}\n")
    except KeyboardInterrupt:
        hint = (
            " (the run folder keeps the checkpoint of the last finished epoch; continue "
            "with --resume)"
            if args.command == "train"
            else ""
        )
        end(130, f"{PROG}: interrupted{hint}\n")
    except (OSError, ValueError, TypeError, BackendUnavailableError) as err:
        # User errors: invalid values (InvalidParameterError is a ValueError), missing or
        # corrupt files, network failures. Programming errors of other kinds keep their
        # traceback.
        end(2, f"{PROG}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
