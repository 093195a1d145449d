"""``lvmcore train-prior RUN``: fit an autoregressive prior over a trained VQ-VAE's codes and save
it beside the checkpoint (``RUN/code_prior.npz``), for ``lvmcore eval`` and ``lvmcore sample``."""

import time

import numpy as np

from ._common import PROG, add_device_argument, add_threads_argument
from ._run import load_run, run_dataset
from ._types import int_list, nonneg_int, positive_float, positive_int

__all__ = ["add_parser", "run", "PRIOR_STREAM"]

PRIOR_STREAM = 15  # the prior's initialisation and shuffles: default_rng([seed, 0, 0, 15])


def add_parser(sub):
    p = sub.add_parser(
        "train-prior",
        help="fit a learned prior over a trained VQ-VAE's codes",
        description="Fit an autoregressive prior (a MADE with categorical outputs) on the codes "
        "of a trained VQ-VAE's training data and write RUN/code_prior.npz; `lvmcore eval` then "
        "reports the bound with the learned prior and `lvmcore sample` samples from it.",
    )
    p.add_argument("run", metavar="RUN", help="run folder of a VQ-VAE (or its checkpoint.npz)")
    p.add_argument(
        "--epochs", type=positive_int, default=30, metavar="N", help="epochs (default: 30)"
    )
    p.add_argument(
        "--hidden",
        type=int_list,
        default=(256,),
        metavar="H1,H2,...",
        help="the prior's hidden widths, each >= slots - 1 (default: 256)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=128, metavar="B", help="(default: 128)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam step size (default: 1e-3)")
    p.add_argument(
        "--one-hot",
        dest="embedded",
        action="store_false",
        help="feed codes one-hot instead of as their codebook vectors",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, metavar="S", help="seed (default: 0)")
    p.add_argument(
        "--data",
        default=None,
        metavar="digits|mnist|PATH",
        help="data set (default: the one the run was trained on)",
    )
    add_device_argument(p)
    add_threads_argument(p)
    p.set_defaults(func=run)
    return p


def run(args):
    from ..models import VQVAE
    from ..vq_prior import PRIOR_FILE, fit_prior, save_code_prior

    path, model, state = load_run(args.run, args.device)
    if not isinstance(model, VQVAE):
        raise ValueError(
            f"expected the run of a VQ-VAE (train one with `{PROG} train --model vqvae`), got a "
            f"{model.name} run in {path}."
        )
    if not args.hidden or min(args.hidden) < model.slots - 1:
        raise ValueError(
            f"expected --hidden widths >= {model.slots - 1} (the slots before the last), got "
            f"{','.join(map(str, args.hidden)) or 'none'}."
        )
    dataset = run_dataset(args.data, state, path)
    xp = model.xp
    train = xp.asarray(dataset.train.astype(model.dtype))
    valid = xp.asarray(dataset.valid.astype(model.dtype)) if dataset.valid.shape[0] else None
    rng = np.random.default_rng([args.seed, 0, 0, PRIOR_STREAM])
    t0 = time.perf_counter()
    prior, history = fit_prior(
        model,
        train,
        rng,
        x_valid=valid,
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        embedded=args.embedded,
    )
    out = save_code_prior(
        path.parent / PRIOR_FILE,
        prior,
        model,
        dict(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            history=history,
            checkpoint_epoch=state.get("epoch"),
            n_train=int(train.shape[0]),
        ),
    )
    last = history[-1]
    valid_bits = "n/a" if last["valid_bits"] is None else f"{last['valid_bits']:.3f}"
    print(
        f"{PROG}: code prior over {model.slots} slots of {model.codes} codes, "
        f"{args.epochs} epochs in {time.perf_counter() - t0:.1f} s: train "
        f"{last['train_bits']:.3f}, valid {valid_bits} bits per code (uniform "
        f"{np.log2(model.codes):.3f}) -> {out}"
    )
    return 0
