"""``lvmcore train``: build a model from its flags (or a checkpoint), fit it, write a run folder.

The flags every model reads (``--latent``, ``--hidden``, ``--activation``, ``--likelihood``,
``--dtype``) are named here, in ``SHARED_MODEL_FLAGS``; each model names its own in its class
(``Model.flags``, see :mod:`lvmcore.models.base`), and ``lvmcore train --help`` lists them in
one group per model. Every model flag defaults to None at parse time, so ``--resume`` can tell
a flag the user gave from one left out; the defaults are filled in afterwards.

``--distributed`` (under ``mpiexec -n P`` or ``srun``): every rank builds the same model and
loads the same data (checked by checksum), ``fit`` trains data-parallel over the ranks, and
rank 0 alone reads the checkpoint to resume, prints and writes the run folder. A failure some
ranks meet and others do not (a data file one node cannot read) is raised on every rank.
"""

import time
from pathlib import Path

from ..models.base import Flag, add_flags
from ._common import (
    PROG,
    add_device_argument,
    add_distributed_argument,
    add_threads_argument,
    data_label,
    data_source,
    plural,
    recorded_data,
    to_device,
)
from ._types import (
    int_list,
    latent_widths,
    nonneg_int,
    positive_float,
    positive_int,
    unit_float,
)

__all__ = ["add_parser", "run", "TRAIN_DEFAULTS", "MODEL_DEFAULTS", "SHARED_MODEL_FLAGS"]

# Defaults are applied after parsing (flags default to None) so that ``--resume`` can tell
# a flag the user gave from one left out: left-out training flags come from the checkpoint.
TRAIN_DEFAULTS = dict(
    epochs=300,
    batch_size=100,
    lr=1e-3,
    optimizer="adam",
    adam_eps=1e-8,
    momentum=0.0,
    clip_norm=None,
    seed=0,
    kl_warmup_epochs=0,
)
SHARED_MODEL_FLAGS = (
    Flag(
        "--latent",
        "latent",
        8,
        "latent dimensions (one width per stochastic layer with --stochastic-layers N)",
        dict(type=latent_widths, metavar="Z"),
    ),
    Flag(
        "--hidden",
        "hidden",
        (64, 64),
        "hidden widths, mirrored in the decoder",
        dict(type=int_list, metavar="H1,H2,..."),
    ),
    Flag(
        "--activation",
        "activation",
        "tanh",
        "hidden activation",
        dict(choices=("tanh", "relu", "softplus")),
    ),
    Flag(
        "--likelihood",
        "likelihood",
        "bernoulli",
        "decoder likelihood",
        dict(choices=("bernoulli", "gaussian")),
    ),
    Flag("--dtype", "dtype", "float32", "parameter dtype", dict(choices=("float32", "float64"))),
)
MODEL_DEFAULTS = {f.dest: f.default for f in SHARED_MODEL_FLAGS}


def _d(key):
    return f" (default: {TRAIN_DEFAULTS[key]})" if TRAIN_DEFAULTS[key] is not None else ""


class _ModelGroup:
    """The argparse group of one model's flags. A flag another model declared first
    (``--k``, ``--estimator``) is widened instead of added again (argument groups share their
    parser's option table): its choices grow and its help gains this model's part. Each
    model's ``from_args`` then checks that the value applies to it."""

    def __init__(self, group, name):
        self.group, self.name = group, name

    def add_argument(self, option, *, choices=None, help="", **kwargs):
        action = self.group._option_string_actions.get(option)
        if action is None:
            if choices is not None:
                kwargs["choices"] = choices
            self.group.add_argument(option, help=help, **kwargs)
            return
        if choices is not None and action.choices is not None:
            action.choices = tuple(action.choices) + tuple(
                c for c in choices if c not in action.choices
            )
        if help:
            part = f"{self.name}: {help}"
            action.help = f"{action.help}; {part}" if action.help else part


def add_parser(sub):
    from ..models import MODELS, family_flags

    t = sub.add_parser(
        "train",
        help="train a model and write a run folder",
        description="Train a model; write checkpoint.npz, metrics.jsonl and "
        "samples/reconstructions/bounds pictures into the run folder.",
    )
    t.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="vae",
        help="model to train (default: vae): "
        + "; ".join(f"{k}: {cls.help}" for k, cls in MODELS.items()),
    )
    t.add_argument(
        "--data",
        default=None,
        metavar="digits|mnist|PATH",
        help="'digits' (embedded, default), 'mnist' (path in $LVMCORE_MNIST), or a "
        "folder of binarized_mnist_*.amat files / an .npz",
    )
    t.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (default: runs/<model>-<data>)"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out; left-out training flags and the data come "
        "from its checkpoint",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --out instead of refusing",
    )
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_device_argument(t)
    add_threads_argument(t, "; 1 is often fastest for small models and on a busy machine")
    add_distributed_argument(t, "train data-parallel")

    o = t.add_argument_group("training")
    o.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="total epochs, finished ones included" + _d("epochs"),
    )
    o.add_argument(
        "--batch-size", type=positive_int, metavar="B", help="examples per step" + _d("batch_size")
    )
    o.add_argument("--lr", type=positive_float, help="learning rate" + _d("lr"))
    o.add_argument("--optimizer", choices=("adam", "sgd"), help="optimizer" + _d("optimizer"))
    o.add_argument(
        "--adam-eps", type=positive_float, metavar="EPS", help="Adam epsilon" + _d("adam_eps")
    )
    o.add_argument("--momentum", type=unit_float, metavar="M", help="SGD momentum" + _d("momentum"))
    o.add_argument(
        "--clip-norm",
        type=positive_float,
        metavar="C",
        help="clip the global gradient norm (default: off)",
    )
    o.add_argument(
        "--seed",
        type=nonneg_int,
        metavar="S",
        help="seeds the initialisation and every random draw" + _d("seed"),
    )
    o.add_argument(
        "--kl-warmup-epochs",
        type=nonneg_int,
        metavar="E",
        help="epochs of linear KL warm-up from 0 to beta" + _d("kl_warmup_epochs"),
    )

    add_flags(
        t.add_argument_group("model (fixed by the checkpoint with --resume)"), SHARED_MODEL_FLAGS
    )
    for name in MODELS:
        flags = family_flags(name)  # the model's own, then those of its variants
        if flags:
            add_flags(_ModelGroup(t.add_argument_group(f"--model {name}"), name), flags)
    t.set_defaults(func=run)
    return t


def _model_flag_defaults():
    """Every model flag's default: the shared ones and each registered model's and variant's."""
    from ..models import MODELS, family_flags

    table = dict(MODEL_DEFAULTS)
    for name in MODELS:
        table.update({f.dest: f.default for f in family_flags(name)})
    return table


def run(args):
    from ..distributed import SingleProcess
    from ..train import CHECKPOINT, PICTURES, fit

    comm = getattr(args, "comm", None) or SingleProcess()
    model_defaults = _model_flag_defaults()
    args.given = {k for k in (*TRAIN_DEFAULTS, *model_defaults) if getattr(args, k) is not None}
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{args.model}-{data_label(args.data or 'digits')}"
    )
    if args.resume:
        comm.run_everywhere(_check_resume_flags, args, model_defaults, out)
        # rank 0 reads the checkpoint (the run folder may be on its file system only)
        config, state = comm.run_on_root(_checkpoint_info, out / CHECKPOINT)
        saved = state.get("hyper", {})
        for k, default in TRAIN_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, saved.get(k, default))
        data = comm.run_everywhere(recorded_data, args.data, state, out)
        if state.get("epoch", 0) >= args.epochs:
            if comm.is_root:
                print(
                    f"{PROG}: the run in {out} has finished {state.get('epoch')} of "
                    f"{args.epochs} epochs; pass --epochs N with N > {state.get('epoch')} to "
                    f"train it further."
                )
            return 0
        dataset, model = comm.run_everywhere(_resumed_model, config, data, args.device, comm)
    else:
        data = args.data or "digits"
        dataset, model = comm.run_everywhere(_new_model, args, model_defaults, data, comm)
        config = model.config()

    desc = ", ".join(
        f"{k}={config[k]}"
        for k in (
            "latent_dim",
            "hidden",
            "likelihood",
            "kl",
            "codes",
            "slots",
            "code_dim",
            "codebook_update",
            "n_latents",
            "n_categories",
            "estimator",
            "layers",
            "posterior",
            "flow_steps",
        )
        if config.get(k) is not None
    )
    ranks = f" x {comm.size} processes (data-parallel)" if comm.size > 1 else ""
    if comm.is_root:
        print(
            f"{PROG}: {'resuming' if args.resume else 'training'} {config.get('model')} "
            f"({desc}) on {data_label(data)} ({dataset.train.shape[0]} train, "
            f"{dataset.valid.shape[0]} valid, D={dataset.train.shape[1]}) on {args.device}"
            f"{ranks} for {plural(args.epochs, 'epoch')} -> {out}",
            flush=True,
        )
    t0 = time.perf_counter()
    history = fit(
        model,
        dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        adam_eps=args.adam_eps,
        momentum=args.momentum,
        clip_norm=args.clip_norm,
        seed=args.seed,
        kl_warmup_epochs=args.kl_warmup_epochs,
        out_dir=out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        data_source=data_source(data),
        comm=comm,
    )
    seconds = time.perf_counter() - t0
    if not comm.is_root:
        return 0
    if history:
        last = history[-1]
        valid = "n/a" if last["valid_bound"] is None else f"{last['valid_bound']:.3f}"
        print(
            f"{PROG}: {plural(last['epoch'], 'epoch')} ({plural(last['step'], 'step')}) "
            f"in {seconds:.1f} s; "
            f"final bound: train {last['train_bound']:.3f}, valid {valid} nats"
        )
    files = [p for p in (CHECKPOINT, "metrics.jsonl") + PICTURES if (out / p).exists()]
    print(f"{PROG}: wrote {out}: {', '.join(files)}")
    return 0


def _check_resume_flags(args, model_defaults, out):
    model_flags = [k for k in model_defaults if k in args.given]
    if model_flags:
        flags = ", ".join("--" + k.replace("_", "-") for k in model_flags)
        raise ValueError(
            f"expected no model flags with --resume, got {flags}. The model "
            f"comes from the checkpoint in {out}; start a new run to change it."
        )


def _checkpoint_info(path):
    """(config, state) of the checkpoint to resume."""
    from ..checkpoint import load_checkpoint

    config, _, _, state = load_checkpoint(path)
    return config, state


def _resumed_model(config, data, device, comm):
    """The data set and the model of ``config`` on its device (its parameters come from the
    checkpoint in ``fit``)."""
    from ..data import load_dataset
    from ..models import build_model

    dataset = load_dataset(data)
    return dataset, to_device(build_model(config), device, comm)


def _new_model(args, model_defaults, data, comm):
    """The data set and the model the flags ask for, on its device."""
    from ..data import load_dataset
    from ..models import family_selectors, model_class

    # The flags that select a variant of the name (--stochastic-layers, --posterior) pick
    # the class; left at their defaults they give the registered class itself.
    cls = model_class(args.model, vars(args))
    selectors = family_selectors(args.model)
    # The chosen model's own defaults first: models may share a flag (--k, --estimator)
    # with different defaults, and a shared flag is not foreign to the chosen model.
    own = cls.flag_defaults()
    for table in (TRAIN_DEFAULTS, own, model_defaults):
        for k, default in table.items():
            if getattr(args, k) is None:
                setattr(args, k, default)
    chosen = args.model + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k)}" for k in selectors if k in args.given
    )
    cls._refuse_flags(
        args,
        [
            k
            for k in model_defaults
            if k not in own and k not in selectors and k not in MODEL_DEFAULTS
        ],
        what=chosen,
    )
    if isinstance(args.latent, tuple) and "stochastic_layers" not in own:
        raise ValueError(
            f"expected one --latent width with --model {chosen} (one stochastic layer), "
            f"got {','.join(map(str, args.latent))}. Give one width per layer with "
            f"--stochastic-layers {len(args.latent)}."
        )
    dataset = load_dataset(data)
    model = cls.from_args(args, dataset.train.shape[1])
    return dataset, to_device(model, args.device, comm)
