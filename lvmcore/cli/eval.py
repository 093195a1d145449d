"""``lvmcore eval RUN``: the report of :func:`lvmcore.evaluate.evaluate_report` on a data split,
printed and written into ``RUN/eval.json``. A model conditioned on labels gets the split's
labels; a VQ-VAE with a learned code prior beside its checkpoint (``lvmcore train-prior``) is
also evaluated with that prior."""

import json
import time
from pathlib import Path

from ._common import PROG, add_device_argument, add_threads_argument, to_device
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
    e.set_defaults(func=run)
    return e


def run(args):
    from ..checkpoint import load_checkpoint, load_model
    from ..data import load_dataset
    from ..evaluate import evaluate_report
    from ..models import VQVAE
    from ..train import CHECKPOINT
    from ..vq_prior import PRIOR_FILE, load_code_prior

    run_path = Path(args.run)
    path = run_path / CHECKPOINT if run_path.is_dir() else run_path
    model = to_device(load_model(path), args.device)
    _, _, _, state = load_checkpoint(path)
    data = args.data or state.get("dataset", {}).get("source")
    if data is None:
        raise ValueError(
            f"expected --data: the run in {path} does not record where its data came from."
        )
    dataset = load_dataset(data)
    x = getattr(dataset, args.split)
    labels = dataset.labels(args.split) if model.needs_labels else None
    code_prior = None
    if isinstance(model, VQVAE) and (path.parent / PRIOR_FILE).is_file():
        code_prior, _ = load_code_prior(path.parent / PRIOR_FILE, model)
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
        labels=labels,
        code_prior=code_prior,
    )
    result = dict(checkpoint=str(path), epoch=state.get("epoch"), data=str(data), split=args.split)
    result.update(report)
    result["seconds"] = time.perf_counter() - t0
    out = path.parent / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{PROG}: {path} (epoch {state.get('epoch')}), {result['seconds']:.1f} s")
    for line in lines:
        print(f"  {line}")
    print(f"  wrote {out}")
    return 0
