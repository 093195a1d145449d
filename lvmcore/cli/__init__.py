"""The ``lvmcore`` command: ``train``, ``eval``, ``sample``, ``explore``, ``train-prior`` and
``download-mnist``, one module each.

Examples
--------
    lvmcore train                                  # Bernoulli VAE on the embedded 8x8 digits
    lvmcore train --data ~/mnist --latent 50 --hidden 200,200 --epochs 100
    lvmcore train --out runs/vae-digits --resume --epochs 600
    lvmcore eval runs/vae-digits
    lvmcore train --model vqvae --codes 512 --slots 8 --codebook-update ema --kmeans-init
    lvmcore train-prior runs/vqvae-digits          # a learned prior over its codes
    lvmcore train --model cvae --out runs/cvae     # class-conditional, on the labelled digits
    lvmcore sample runs/cvae --label 3 --n 64      # runs/cvae/sample-label3.png
    lvmcore explore runs/vae-digits                # interpolation.png, traversal.png, ...
    lvmcore download-mnist ~/mnist
    mpiexec -n 4 lvmcore train --distributed --model iwae --k 50 --data ~/mnist
    mpiexec -n 4 lvmcore eval runs/iwae-mnist --distributed --k 5000

Models come from the one registry, :data:`lvmcore.models.MODELS`: a model registered there
(:func:`lvmcore.models.register_model`) is available as ``lvmcore train --model NAME`` with the
flags its class declares (:mod:`lvmcore.models.base`).

Layout: ``_types`` (argument types), ``_common`` (flags and helpers the subcommands share),
``train``, ``eval``, ``sample``, ``explore``, ``train_prior``, ``download`` (one subcommand
each: ``add_parser(sub)`` and ``run(args)``); ``_run`` (reading a trained run, for the last
three).

User errors (a bad flag value, a missing file, a diverged run) end with one line
``lvmcore: error: ...`` on stderr and exit status 2 (1 for a diverged run), without a traceback.

With ``--distributed`` (``train``, ``eval``) the command runs as one rank of an MPI job: rank 0
alone prints and writes files. An error every rank meets alike (a decision rank 0 takes and
shares, a check on all-reduced values, a checksum mismatch) ends every rank with that status and
rank 0's one line; an exception on some ranks only aborts the whole job within seconds, with
the failing rank's traceback.

Interrupts: Ctrl-C (SIGINT) and SIGTERM, which schedulers send before SIGKILL, stop a command
the same way: the file being written is abandoned (its temporary file removed, the previous
version left in place), the run folder's lock is released, and the command prints one line
``lvmcore: interrupted ...`` and exits 130 for SIGINT, 143 (128 + 15) for SIGTERM, as a shell
reports a process killed by that signal.
"""

import argparse
import contextlib
import re
import signal
import sys

from .. import __version__
from ..distributed import SingleProcess, get_communicator
from ..exceptions import BackendUnavailableError, TrainingDivergedError
from ._common import PROG

__all__ = ["main", "build_parser", "PROG"]


def build_parser():
    """The ``lvmcore`` argument parser, with one sub-parser per command."""
    from . import download, explore, sample, train, train_prior
    from . import eval as evaluation

    parser = argparse.ArgumentParser(
        prog=PROG, description="Latent-variable generative models with hand-derived gradients."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(sub)
    evaluation.add_parser(sub)
    sample.add_parser(sub)
    explore.add_parser(sub)
    train_prior.add_parser(sub)
    download.add_parser(sub)
    return parser


@contextlib.contextmanager
def _blas_threads(n):
    """Limit BLAS threads to ``n`` for the command, engine steps included (None: leave them
    alone; steps then follow ``lvmcore.backend.engine_blas_threads``).

    An oversubscribed machine makes spinning BLAS threads very slow (a 784-200-200-50 VAE
    step: 13 ms with 1 thread, 110 ms with 2 on a loaded 2-core machine); on an idle one the
    steps with K=50 run 1.4-1.6x faster on 2. threadpoolctl ships with scikit-learn, a
    dependency.
    """
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    from ..backend import use_blas_threads

    with threadpool_limits(limits=n, user_api="blas"), use_blas_threads(n):
        yield


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM into :class:`_Terminated` while the command runs (main thread only)."""

    def handler(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# A negative number in any notation argparse does not recognise as one ("-1e-3", "-inf"): it
# would take it for an option and answer "expected one argument".
_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-inf(inity)?|-nan", re.I)


def _join_negative_values(argv):
    """``["--lr", "-1e-3"]`` -> ``["--lr=-1e-3"]``: a negative number after a long option is
    that option's value, so the option's own type can refuse it with its range message
    ("argument --lr: expected a positive number, got '-1e-3'")."""
    out = []
    for token in argv:
        prev = out[-1] if out else ""
        if (
            _NEGATIVE_NUMBER.fullmatch(token)
            and prev.startswith("--")
            and "=" not in prev
            and prev != "--"
        ):
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


def main(argv=None):
    """Run the ``lvmcore`` command line; returns 0 on success.

    Errors exit through ``SystemExit``: status 2 for bad arguments and user errors (invalid
    values, missing or corrupt files), 1 for a diverged training run, 130 on Ctrl-C and 143 on
    SIGTERM. Each prints one line to stderr (``lvmcore: error: ...``, ``lvmcore:
    interrupted ...``).
    """
    parser = build_parser()
    argv = _join_negative_values(sys.argv[1:] if argv is None else list(argv))
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
            from .._blas import blas_advice, busy_machine_advice
            from ..backend import engine_blas_threads, process_blas_threads

            chosen = getattr(args, "threads", None) or engine_blas_threads()
            busy = busy_machine_advice(chosen, blas_threads=process_blas_threads())
            for advice in (blas_advice(), busy):
                if advice:
                    print(f"{PROG}: {advice}")
        with (
            comm.abort_on_error(),
            _sigterm_as_interrupt(),
            _blas_threads(getattr(args, "threads", None)),
        ):
            return args.func(args)
    except TrainingDivergedError as err:
        end(1, f"{PROG}: error: {err}\n")
    except KeyboardInterrupt as err:
        hint = (
            " (the run folder keeps the checkpoint of the last finished epoch; continue "
            "with --resume)"
            if args.command == "train"
            else ""
        )
        end(143 if isinstance(err, _Terminated) else 130, f"{PROG}: interrupted{hint}\n")
    except (OSError, ValueError, TypeError, BackendUnavailableError) as err:
        # User errors: invalid values (InvalidParameterError is a ValueError), missing or
        # corrupt files, network failures. Programming errors of other kinds keep their
        # traceback.
        end(2, f"{PROG}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
