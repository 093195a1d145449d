"""``lvmcore eval RUN``: the report of :func:`lvmcore.evaluate.evaluate_report` on a data split,
printed and written into ``RUN/eval.json``.

``--distributed`` (under ``mpiexec -n P``): rank 0 reads the checkpoint and shares it, every
rank loads the split (checked by checksum), the K-sample log-likelihood's (batch, chunk) grid is
split across the ranks (bit-identical to one process), and rank 0 prints and writes
``eval.json``."""

import json
import time
from pathlib import Path

from ._common import (
    PROG,
    add_device_argument,
    add_distributed_argument,
    add_threads_argument,
    recorded_data,
    to_device,
)
from ._types import nonneg_int, positive_int


def add_parser(sub):
    e = sub.add_parser(
        "eval",
        help="evaluate a trained run on a data split",
        description="Report the ELBO of a trained run on a split and write RUN/eval.json.",
    )
    e.add_argument("run", metavar="RUN", help="run folder (or its checkpoint.npz)")
    e.add_argument(
        "--data",
        default=None,
        metavar="digits|mnist|PATH",
        help="data set (default: the one the run was trained on)",
    )
    e.add_argument(
        "--split",
        choices=("test", "valid", "train"),
        default="test",
        help="split to evaluate (default: test)",
    )
    e.add_argument(
        "--batch-size",
        type=positive_int,
        default=1000,
        metavar="B",
        help="examples per evaluation chunk (default: 1000)",
    )
    e.add_argument(
        "--seed",
        type=nonneg_int,
        default=0,
        metavar="S",
        help="seed of the evaluation noise (default: 0)",
    )
    e.add_argument(
        "--k",
        type=nonneg_int,
        default=5000,
        metavar="K",
        help="importance samples for the log-likelihood (default: 5000; 0 skips it)",
    )
    e.add_argument(
        "--subset",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="estimate the NLL on a seeded random subset of N examples (default: the whole split)",
    )
    e.add_argument(
        "--nll-batch-size",
        type=positive_int,
        default=100,
        metavar="B",
        help="examples per importance-sampling chunk (default: 100)",
    )
    add_device_argument(e)
    add_threads_argument(e)
    add_distributed_argument(e, "share the K-sample log-likelihood")
    e.set_defaults(func=run)
    return e


def run(args):
    from ..distributed import SingleProcess, check_data
    from ..evaluate import evaluate_report
    from ..train import CHECKPOINT

    comm = getattr(args, "comm", None) or SingleProcess()
    run_path = Path(args.run)
    path = run_path / CHECKPOINT if run_path.is_dir() else run_path
    config, params, state = comm.run_on_root(_read_run, path)
    data = comm.run_everywhere(recorded_data, args.data, state, path)
    model, x = comm.run_everywhere(_model_and_split, config, params, data, args, comm)
    if comm.size > 1:
        check_data(comm, {args.split: x})
    t0 = time.perf_counter()
    report, lines = evaluate_report(
        model,
        x,
        k=args.k,
        seed=args.seed,
        batch_size=args.batch_size,
        nll_batch_size=args.nll_batch_size,
        subset=args.subset,
        split=args.split,
        comm=comm,
    )
    if not comm.is_root:
        return 0
    result = dict(checkpoint=str(path), epoch=state.get("epoch"), data=str(data), split=args.split)
    result.update(report)
    result["seconds"] = time.perf_counter() - t0
    if comm.size > 1:
        result["processes"] = comm.size
    out = path.parent / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ranks = f", {comm.size} processes" if comm.size > 1 else ""
    print(f"{PROG}: {path} (epoch {state.get('epoch')}), {result['seconds']:.1f} s{ranks}")
    for line in lines:
        print(f"  {line}")
    print(f"  wrote {out}")
    return 0


def _read_run(path):
    """(config, parameters, state) of the checkpoint, checked by building its model."""
    from .._validation import to_numpy
    from ..checkpoint import load_checkpoint, load_model

    model = load_model(path)
    state = load_checkpoint(path).state
    return model.config(), {k: to_numpy(v) for k, v in model.parameters().items()}, state


def _model_and_split(config, params, data, args, comm):
    from ..data import load_dataset
    from ..models import build_model

    model = build_model(config)
    model.load_parameters(params)
    return to_device(model, args.device, comm), getattr(load_dataset(data), args.split)
