"""The ``lvmcore`` command: ``train``, ``eval`` and ``download-mnist``.

Examples
--------
    lvmcore train                                  # Bernoulli VAE on the embedded 8x8 digits
    lvmcore train --data ~/mnist --latent 50 --hidden 200,200 --epochs 100
    lvmcore train --out runs/vae-digits --resume --epochs 600
    lvmcore eval runs/vae-digits
    lvmcore train --model vqvae --codes 512 --slots 8 --codebook-update ema --kmeans-init
    lvmcore download-mnist ~/mnist

Models are built through ``MODEL_BUILDERS``: a new model registers a builder (and, if it needs
them, its own ``train`` flags) with :func:`register_model` and is then available as
``lvmcore train --model NAME``.

User errors (a bad flag value, a missing file, a diverged run) end with one line
``lvmcore: error: ...`` on stderr and exit status 2 (1 for a diverged run), without a traceback.
"""

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import __version__
from .exceptions import BackendUnavailableError, TrainingDivergedError

__all__ = [
    "main",
    "build_parser",
    "register_model",
    "MODEL_BUILDERS",
    "TRAIN_DEFAULTS",
    "MODEL_DEFAULTS",
]

PROG = "lvmcore"


# ----------------------------------------------------------------------------------------------
# Argument types: bad values fail at parse time with argparse's usage line and exit status 2.
# ----------------------------------------------------------------------------------------------


def _number(kind, low, low_inclusive, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (
            value != value
            or value < low
            or (value == low and not low_inclusive)
            or value == float("inf")
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


_pos_int = _number(int, 1, True, "a positive integer")
_nonneg_int = _number(int, 0, True, "a non-negative integer")
_pos_float = _number(float, 0.0, False, "a positive number")
_nonneg_float = _number(float, 0.0, True, "a non-negative number")


def _unit_float(text):
    value = _nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _int_list(text):
    """'200,200' -> (200, 200); '' -> () (no hidden layer)."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 200,200, got {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 200,200, got {text!r}"
        )
    return sizes


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class ModelEntry(NamedTuple):
    """How ``lvmcore train --model NAME`` builds a model.

    ``build(args, data_dim) -> model`` reads the parsed flags (``args.given`` holds the
    destinations of the flags the user actually gave); ``add_arguments(group)``, if given, adds
    the model's own flags (e.g. ``--k``) with ``default=None``; ``defaults`` fills those left out.
    """

    build: Callable
    add_arguments: Callable | None = None
    help: str = ""
    defaults: dict = {}


def _build_vae(args, data_dim):
    from .models import VAE

    return VAE(
        data_dim,
        latent_dim=args.latent,
        hidden=args.hidden,
        activation=args.activation,
        likelihood=args.likelihood,
        kl=args.kl,
        n_samples=args.samples,
        beta=args.beta,
        free_bits=args.free_bits,
        seed=args.seed,
        dtype=args.dtype,
    )


def _iwae_arguments(group):
    group.add_argument(
        "--k", type=_pos_int, metavar="K", help="importance samples per example (default: 50)"
    )
    group.add_argument(
        "--estimator",
        choices=("iwae", "stl", "dreg"),
        help="inference-network gradient estimator (default: iwae)",
    )
    group.add_argument(
        "--objective",
        choices=("iwae", "miwae", "ciwae", "piwae"),
        help="bound to train (default: iwae)",
    )
    group.add_argument(
        "--groups",
        type=_pos_int,
        metavar="M",
        help="M groups of K samples for miwae/piwae (default: 1)",
    )
    group.add_argument(
        "--ciwae-beta",
        type=_nonneg_float,
        metavar="BETA",
        help="weight of the ELBO in ciwae (default: 0.5)",
    )


def _build_iwae(args, data_dim):
    from .models import IWAE

    _refuse(args, "iwae", dict(kl=None, samples=None, beta=None, free_bits=None))
    if args.kl_warmup_epochs:
        raise ValueError(
            f"expected --kl-warmup-epochs 0 with --model iwae (KL annealing does "
            f"not apply to an importance-weighted bound), got "
            f"{args.kl_warmup_epochs}."
        )
    return IWAE(
        data_dim,
        latent_dim=args.latent,
        hidden=args.hidden,
        activation=args.activation,
        likelihood=args.likelihood,
        k=args.k,
        estimator=args.estimator,
        objective=args.objective,
        groups=args.groups,
        ciwae_beta=args.ciwae_beta,
        seed=args.seed,
        dtype=args.dtype,
    )


def _vqvae_arguments(group):
    group.add_argument("--codes", type=_pos_int, metavar="M", help="codebook size (default: 512)")
    group.add_argument(
        "--slots", type=_pos_int, metavar="S", help="code slots per example (default: 8)"
    )
    group.add_argument(
        "--code-dim", type=_pos_int, metavar="E", help="dimension of a code (default: 16)"
    )
    group.add_argument(
        "--commitment-beta",
        type=_nonneg_float,
        metavar="BETA",
        help="weight of the commitment loss (default: 0.25)",
    )
    group.add_argument(
        "--codebook-update",
        choices=("loss", "ema"),
        help="move the codebook by the codebook loss or by EMA (default: loss)",
    )
    group.add_argument(
        "--ema-decay",
        type=_unit_float,
        metavar="G",
        help="decay of the EMA codebook update (default: 0.99)",
    )
    group.add_argument(
        "--dead-code-steps",
        type=_pos_int,
        metavar="N",
        help="a code unused for N training steps is dead (default: 100)",
    )
    group.add_argument(
        "--reset-dead-codes",
        action="store_const",
        const=True,
        help="re-seed dead codes from encoder outputs of the current batch",
    )
    group.add_argument(
        "--kmeans-init",
        action="store_const",
        const=True,
        help="initialise the codebook by k-means on the first encoder outputs",
    )


def _build_vqvae(args, data_dim):
    from .models import VQVAE

    _refuse(args, "vqvae", dict(latent=None, kl=None, samples=None, beta=None, free_bits=None))
    if args.likelihood != "bernoulli":
        raise ValueError(
            f"expected --likelihood bernoulli with --model vqvae (its decoder is "
            f"Bernoulli), got {args.likelihood}."
        )
    if args.kl_warmup_epochs:
        raise ValueError(
            f"expected --kl-warmup-epochs 0 with --model vqvae (it has no KL term "
            f"to anneal), got {args.kl_warmup_epochs}."
        )
    return VQVAE(
        data_dim,
        codes=args.codes,
        slots=args.slots,
        code_dim=args.code_dim,
        hidden=args.hidden,
        activation=args.activation,
        beta=args.commitment_beta,
        codebook_update=args.codebook_update,
        ema_decay=args.ema_decay,
        dead_code_steps=args.dead_code_steps,
        reset_dead_codes=args.reset_dead_codes,
        kmeans_init=args.kmeans_init,
        seed=args.seed,
        dtype=args.dtype,
    )


def _refuse(args, model, flags):
    """Flags that do not apply to ``model`` are an error, never silently ignored."""
    given = [k for k in flags if k in args.given]
    if given:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(
            f"expected no {names} with --model {model}: it does not apply to that model."
        )


MODEL_BUILDERS = {
    "vae": ModelEntry(_build_vae, None, "Gaussian-encoder VAE (ELBO)"),
    "iwae": ModelEntry(
        _build_iwae,
        _iwae_arguments,
        "importance-weighted autoencoder",
        dict(k=50, estimator="iwae", objective="iwae", groups=1, ciwae_beta=0.5),
    ),
    "vqvae": ModelEntry(
        _build_vqvae,
        _vqvae_arguments,
        "VQ-VAE: nearest-codebook quantization, straight-through gradient",
        dict(
            codes=512,
            slots=8,
            code_dim=16,
            commitment_beta=0.25,
            codebook_update="loss",
            ema_decay=0.99,
            dead_code_steps=100,
            reset_dead_codes=False,
            kmeans_init=False,
        ),
    ),
}


def register_model(name, build, add_arguments=None, help="", defaults=None):
    """Make ``lvmcore train --model NAME`` build a model with ``build(args, data_dim)``.

    ``add_arguments(group)`` adds the model's own ``train`` flags with ``default=None``;
    ``defaults`` maps their destinations to the values used when they are left out. Their
    names must not clash with the shared ones (``--latent``, ``--hidden``, ...), which every
    builder may read.
    """
    MODEL_BUILDERS[name] = ModelEntry(build, add_arguments, help, dict(defaults or {}))


def _shared_argument(group, flag, *, choices=None, help="", **kwargs):
    """Add ``flag``, or widen it when another model declared it first (``--estimator``, ``--k``).

    Argument groups share their parser's option table, so a second ``add_argument`` of the same
    flag would clash; instead its choices grow and its help gains this model's part. Each
    builder then checks that the value applies to its own model.
    """
    action = group._option_string_actions.get(flag)
    if action is None:
        group.add_argument(flag, choices=choices, help=help, **kwargs)
        return
    if choices is not None and action.choices is not None:
        action.choices = tuple(action.choices) + tuple(
            c for c in choices if c not in action.choices
        )
    if help:
        action.help = f"{action.help}; {help}" if action.help else help


_CATVAE_ESTIMATORS = ("gumbel", "st-gumbel", "reinforce", "nvil", "vimco")


def _catvae_arguments(group):
    group.add_argument(
        "--latents", type=_pos_int, metavar="N", help="categorical latent variables (default: 20)"
    )
    group.add_argument(
        "--categories", type=_pos_int, metavar="C", help="classes per latent variable (default: 10)"
    )
    group.add_argument(
        "--tau",
        type=_pos_float,
        metavar="T",
        help="Gumbel-Softmax temperature, gumbel and st-gumbel (default: 1.0)",
    )
    group.add_argument(
        "--tau-min",
        type=_pos_float,
        metavar="T",
        help="floor of the decaying temperature (needs --tau-decay)",
    )
    group.add_argument(
        "--tau-decay",
        type=_nonneg_float,
        metavar="R",
        help="tau = max(tau-min, tau exp(-R step)) (default: 0, constant)",
    )
    group.add_argument(
        "--tau-every",
        type=_pos_int,
        metavar="N",
        help="update the decaying temperature every N steps (default: 1)",
    )
    _shared_argument(
        group,
        "--estimator",
        choices=_CATVAE_ESTIMATORS,
        help="catvae: gradient estimator (default: gumbel)",
    )
    _shared_argument(
        group,
        "--k",
        type=_pos_int,
        metavar="K",
        help="catvae: samples per example for vimco (default: 5)",
    )


def _build_catvae(args, data_dim):
    from .models import CatVAE

    _refuse(args, "catvae", dict(latent=None, kl=None, samples=None, beta=None, free_bits=None))
    if args.likelihood != "bernoulli":
        raise ValueError(
            f"expected --likelihood bernoulli with --model catvae (its decoder is "
            f"Bernoulli), got {args.likelihood}."
        )
    est = args.estimator
    if est not in _CATVAE_ESTIMATORS:
        raise ValueError(
            f"expected --estimator to be one of {', '.join(_CATVAE_ESTIMATORS)} "
            f"with --model catvae, got {est}."
        )
    if est not in ("gumbel", "st-gumbel"):
        _refuse(
            args,
            f"catvae --estimator {est}",
            dict(tau=None, tau_min=None, tau_decay=None, tau_every=None),
        )
    if est != "vimco":
        _refuse(args, f"catvae --estimator {est}", dict(k=None))
    elif args.kl_warmup_epochs:
        raise ValueError(
            f"expected --kl-warmup-epochs 0 with --estimator vimco (KL annealing "
            f"does not apply to a K-sample bound), got {args.kl_warmup_epochs}."
        )
    return CatVAE(
        data_dim,
        n_latents=args.latents,
        n_categories=args.categories,
        hidden=args.hidden,
        activation=args.activation,
        estimator=est,
        tau=args.tau,
        tau_min=args.tau_min,
        tau_decay=args.tau_decay,
        tau_every=args.tau_every,
        k=args.k if est == "vimco" else 1,
        seed=args.seed,
        dtype=args.dtype,
    )


register_model(
    "catvae",
    _build_catvae,
    _catvae_arguments,
    "categorical VAE (N x C latents): gumbel, st-gumbel, reinforce, nvil, vimco",
    dict(
        latents=20,
        categories=10,
        estimator="gumbel",
        k=5,
        tau=1.0,
        tau_min=None,
        tau_decay=0.0,
        tau_every=1,
    ),
)


def _model_flag_defaults():
    """Every model flag's default: the shared ones and each registered model's own."""
    table = dict(MODEL_DEFAULTS)
    for entry in MODEL_BUILDERS.values():
        table.update(entry.defaults)
    return table


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
MODEL_DEFAULTS = dict(
    latent=8,
    hidden=(64, 64),
    activation="tanh",
    likelihood="bernoulli",
    kl="analytic",
    samples=1,
    beta=1.0,
    free_bits=0.0,
    dtype="float32",
)


def _d(table, key):
    return f" (default: {table[key]})" if table[key] is not None else ""


def _device_argument(parser):
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the arrays live: cpu (NumPy, Numba kernels) or cuda (CuPy "
        "arrays and CUDA kernels on the current GPU; needs "
        "'lvmcore[cuda]'). Checkpoints are the same either way "
        "(default: cpu)",
    )


def _to_device(model, device):
    """Move ``model`` to ``device`` (before its optimizer exists). Raises
    BackendUnavailableError, with the reason, when CUDA is asked for and cannot run."""
    from .backend import array_module

    if device != "cpu":
        model.to(array_module(device))
    return model


def build_parser():
    """The ``lvmcore`` argument parser, with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Latent-variable generative models with hand-derived gradients."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ---------------------------------------------------------------- train
    t = sub.add_parser(
        "train",
        help="train a model and write a run folder",
        description="Train a model; write checkpoint.npz, metrics.jsonl and "
        "samples/reconstructions/bounds pictures into the run folder.",
    )
    t.add_argument(
        "--model",
        choices=sorted(MODEL_BUILDERS),
        default="vae",
        help="model to train (default: vae): "
        + "; ".join(f"{k}: {e.help}" for k, e in MODEL_BUILDERS.items()),
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
    _device_argument(t)
    t.add_argument(
        "--threads",
        type=_pos_int,
        default=None,
        metavar="N",
        help="BLAS threads (default: the BLAS library's choice); 1 is often fastest "
        "for small models and on a busy machine",
    )

    o = t.add_argument_group("training")
    o.add_argument(
        "--epochs",
        type=_pos_int,
        metavar="N",
        help="total epochs, finished ones included" + _d(TRAIN_DEFAULTS, "epochs"),
    )
    o.add_argument(
        "--batch-size",
        type=_pos_int,
        metavar="B",
        help="examples per step" + _d(TRAIN_DEFAULTS, "batch_size"),
    )
    o.add_argument("--lr", type=_pos_float, help="learning rate" + _d(TRAIN_DEFAULTS, "lr"))
    o.add_argument(
        "--optimizer", choices=("adam", "sgd"), help="optimizer" + _d(TRAIN_DEFAULTS, "optimizer")
    )
    o.add_argument(
        "--adam-eps",
        type=_pos_float,
        metavar="EPS",
        help="Adam epsilon" + _d(TRAIN_DEFAULTS, "adam_eps"),
    )
    o.add_argument(
        "--momentum",
        type=_unit_float,
        metavar="M",
        help="SGD momentum" + _d(TRAIN_DEFAULTS, "momentum"),
    )
    o.add_argument(
        "--clip-norm",
        type=_pos_float,
        metavar="C",
        help="clip the global gradient norm (default: off)",
    )
    o.add_argument(
        "--seed",
        type=_nonneg_int,
        metavar="S",
        help="seeds the initialisation and every random draw" + _d(TRAIN_DEFAULTS, "seed"),
    )
    o.add_argument(
        "--kl-warmup-epochs",
        type=_nonneg_int,
        metavar="E",
        help="epochs of linear KL warm-up from 0 to beta" + _d(TRAIN_DEFAULTS, "kl_warmup_epochs"),
    )

    m = t.add_argument_group("model (fixed by the checkpoint with --resume)")
    m.add_argument(
        "--latent",
        type=_pos_int,
        metavar="Z",
        help="latent dimensions" + _d(MODEL_DEFAULTS, "latent"),
    )
    m.add_argument(
        "--hidden",
        type=_int_list,
        metavar="H1,H2,...",
        help="hidden widths, mirrored in the decoder (default: 64,64)",
    )
    m.add_argument(
        "--activation",
        choices=("tanh", "relu", "softplus"),
        help="hidden activation" + _d(MODEL_DEFAULTS, "activation"),
    )
    m.add_argument(
        "--likelihood",
        choices=("bernoulli", "gaussian"),
        help="decoder likelihood" + _d(MODEL_DEFAULTS, "likelihood"),
    )
    m.add_argument(
        "--kl", choices=("analytic", "sampled"), help="KL term, vae only" + _d(MODEL_DEFAULTS, "kl")
    )
    m.add_argument(
        "--samples",
        type=_pos_int,
        metavar="L",
        help="samples of z per example, vae only" + _d(MODEL_DEFAULTS, "samples"),
    )
    m.add_argument(
        "--beta",
        type=_nonneg_float,
        metavar="BETA",
        help="KL weight, vae only" + _d(MODEL_DEFAULTS, "beta"),
    )
    m.add_argument(
        "--free-bits",
        type=_nonneg_float,
        metavar="F",
        help="KL floor per latent dimension in nats, vae only" + _d(MODEL_DEFAULTS, "free_bits"),
    )
    m.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="parameter dtype" + _d(MODEL_DEFAULTS, "dtype"),
    )
    for name, entry in MODEL_BUILDERS.items():
        if entry.add_arguments is not None:
            entry.add_arguments(t.add_argument_group(f"--model {name}"))
    t.set_defaults(func=_cmd_train)

    # ---------------------------------------------------------------- eval
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
        type=_pos_int,
        default=1000,
        metavar="B",
        help="examples per evaluation chunk (default: 1000)",
    )
    e.add_argument(
        "--seed",
        type=_nonneg_int,
        default=0,
        metavar="S",
        help="seed of the evaluation noise (default: 0)",
    )
    e.add_argument(
        "--k",
        type=_nonneg_int,
        default=5000,
        metavar="K",
        help="importance samples for the log-likelihood (default: 5000; 0 skips it)",
    )
    e.add_argument(
        "--subset",
        type=_nonneg_int,
        default=0,
        metavar="N",
        help="estimate the NLL on a seeded random subset of N examples (default: the whole split)",
    )
    e.add_argument(
        "--nll-batch-size",
        type=_pos_int,
        default=100,
        metavar="B",
        help="examples per importance-sampling chunk (default: 100)",
    )
    _device_argument(e)
    e.add_argument(
        "--threads",
        type=_pos_int,
        default=None,
        metavar="N",
        help="BLAS threads (default: the BLAS library's choice)",
    )
    e.set_defaults(func=_cmd_eval)

    # ---------------------------------------------------------------- download-mnist
    dl = sub.add_parser(
        "download-mnist",
        help="download statically binarized MNIST",
        description="Download the three binarized MNIST .amat files "
        "(Larochelle & Murray 2011) and check their SHA-256.",
    )
    dl.add_argument("dest", metavar="DEST", help="folder to write into (created if absent)")
    dl.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    dl.set_defaults(func=_cmd_download)
    return parser


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def _plural(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _data_label(data):
    if data in ("digits", "mnist"):
        return data
    return Path(data).stem or "data"


def _data_source(data):
    """What the checkpoint records: a name, or an absolute path so eval works from anywhere."""
    return data if data in ("digits", "mnist") else os.path.abspath(data)


def _cmd_train(args):
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .models import build_model
    from .train import CHECKPOINT, PICTURES, fit

    model_defaults = _model_flag_defaults()
    args.given = {k for k in (*TRAIN_DEFAULTS, *model_defaults) if getattr(args, k) is not None}
    model_flags = [k for k in model_defaults if k in args.given]
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{args.model}-{_data_label(args.data or 'digits')}"
    )
    if args.resume:
        if model_flags:
            flags = ", ".join("--" + k.replace("_", "-") for k in model_flags)
            raise ValueError(
                f"expected no model flags with --resume, got {flags}. The model "
                f"comes from the checkpoint in {out}; start a new run to change it."
            )
        config, _, _, state = load_checkpoint(out / CHECKPOINT)
        saved = state.get("hyper", {})
        for k, default in TRAIN_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, saved.get(k, default))
        data = args.data or state.get("dataset", {}).get("source")
        if data is None:
            raise ValueError(
                f"expected --data: the run in {out} does not record where its data came from."
            )
        if state.get("epoch", 0) >= args.epochs:
            print(
                f"{PROG}: the run in {out} has finished {state.get('epoch')} of {args.epochs} "
                f"epochs; pass --epochs N with N > {state.get('epoch')} to train it further."
            )
            return 0
        dataset = load_dataset(data)
        model = build_model(config)
    else:
        # The chosen model's own defaults first: models may share a flag (--k, --estimator)
        # with different defaults, and a shared flag is not foreign to the chosen model.
        own = MODEL_BUILDERS[args.model].defaults
        for table in (TRAIN_DEFAULTS, own, model_defaults):
            for k, default in table.items():
                if getattr(args, k) is None:
                    setattr(args, k, default)
        for name, entry in MODEL_BUILDERS.items():
            if name != args.model:
                _refuse(args, args.model, {k: v for k, v in entry.defaults.items() if k not in own})
        data = args.data or "digits"
        dataset = load_dataset(data)
        model = MODEL_BUILDERS[args.model].build(args, dataset.train.shape[1])
        config = model.config()

    _to_device(model, args.device)
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
        )
        if k in config
    )
    print(
        f"{PROG}: {'resuming' if args.resume else 'training'} {config.get('model')} "
        f"({desc}) on {_data_label(data)} ({dataset.train.shape[0]} train, "
        f"{dataset.valid.shape[0]} valid, D={dataset.train.shape[1]}) on {args.device} for "
        f"{_plural(args.epochs, 'epoch')} -> {out}",
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
        data_source=_data_source(data),
    )
    seconds = time.perf_counter() - t0
    if history:
        last = history[-1]
        valid = "n/a" if last["valid_bound"] is None else f"{last['valid_bound']:.3f}"
        print(
            f"{PROG}: {_plural(last['epoch'], 'epoch')} ({_plural(last['step'], 'step')}) "
            f"in {seconds:.1f} s; "
            f"final bound: train {last['train_bound']:.3f}, valid {valid} nats"
        )
    files = [p for p in (CHECKPOINT, "metrics.jsonl") + PICTURES if (out / p).exists()]
    print(f"{PROG}: wrote {out}: {', '.join(files)}")
    return 0


def _cmd_eval(args):
    import numpy as np

    from ._validation import to_numpy
    from .checkpoint import load_checkpoint, load_model
    from .data import load_dataset
    from .diagnostics import active_units, kl_per_dimension
    from .train import CHECKPOINT

    run = Path(args.run)
    path = run / CHECKPOINT if run.is_dir() else run
    model = _to_device(load_model(path), args.device)
    _, _, _, state = load_checkpoint(path)
    data = args.data or state.get("dataset", {}).get("source")
    if data is None:
        raise ValueError(
            f"expected --data: the run in {path} does not record where its data came from."
        )
    x = getattr(load_dataset(data), args.split)
    dtype = getattr(model, "dtype", x.dtype)
    x = x.astype(dtype) if x.dtype != dtype else x
    x = model.xp.asarray(x)  # the one copy to the model's device
    t0 = time.perf_counter()
    rng = np.random.default_rng([args.seed, 0, 0, 5])
    # The bound the model trains: the ELBO for a VAE, the K-sample bound for an IWAE.
    bound = to_numpy(model.bound(x, rng, batch_size=args.batch_size), np.float64)  # (N,)
    elbo = to_numpy(
        model.elbo(x, np.random.default_rng([args.seed, 0, 0, 6]), batch_size=args.batch_size),
        np.float64,
    )
    n = int(bound.shape[0])
    name = _bound_name(model)
    result = dict(
        checkpoint=str(path),
        epoch=state.get("epoch"),
        data=str(data),
        split=args.split,
        n=n,
        bound_name=name,
        bound=float(bound.mean()),
        bound_sem=_sem(bound),
        elbo=float(elbo.mean()),
        elbo_sem=_sem(elbo),
        seed=args.seed,
    )
    # Active units and KL per dimension need a Gaussian encoder (encode -> mu, logvar).
    gaussian = hasattr(model, "encode") and hasattr(model, "latent_dim")
    if gaussian:
        n_active, unit_var = active_units(model, x)
        kl_dims = kl_per_dimension(model, x)
        result.update(
            active_units=n_active,
            latent_dim=int(unit_var.size),
            posterior_mean_variance=unit_var.tolist(),
            kl_per_dim=kl_dims.tolist(),
        )
    lines = [f"{args.split} ELBO {result['elbo']:.3f} +- {result['elbo_sem']:.3f} nats (n={n})"]
    if name != "ELBO":
        lines.append(f"{args.split} {name} {result['bound']:.3f} +- {result['bound_sem']:.3f}")
    if hasattr(model, "eval_report"):  # model-specific summaries (VQ-VAE: code usage)
        info, extra = model.eval_report(x, batch_size=args.batch_size)
        result.update(info)
        lines.extend(f"{args.split} {line}" for line in extra)
    if args.k > 0 and not hasattr(model, "log_likelihood"):
        lines.append(
            f"no K-sample NLL: {_config_name(model)} has no importance-sampled log-likelihood"
        )
    elif args.k > 0:
        xs = x
        if args.subset and args.subset < n:
            pick = np.sort(
                np.random.default_rng([args.seed, 7]).choice(n, args.subset, replace=False)
            )
            xs = x[model.xp.asarray(pick)]
        ll = to_numpy(
            model.log_likelihood(
                xs,
                np.random.default_rng([args.seed, 0, 0, 8]),
                k=args.k,
                batch_size=args.nll_batch_size,
            ),
            np.float64,
        )
        result.update(nll=float(-ll.mean()), nll_sem=_sem(ll), nll_k=args.k, nll_n=int(ll.size))
        lines.append(
            f"{args.split} NLL (K={args.k}, n={ll.size}) {result['nll']:.3f} +- "
            f"{result['nll_sem']:.3f} nats"
        )
    if gaussian:
        lines.append(
            f"active units {n_active} of {unit_var.size}; KL per dimension (nats): "
            + " ".join(f"{v:.2f}" for v in kl_dims)
        )
    result["seconds"] = time.perf_counter() - t0
    out = path.parent / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{PROG}: {path} (epoch {state.get('epoch')}), {result['seconds']:.1f} s")
    for line in lines:
        print(f"  {line}")
    print(f"  wrote {out}")
    return 0


def _sem(values):
    import numpy as np

    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")


def _config_name(model):
    return model.config().get("model", type(model).__name__)


def _bound_name(model):
    if hasattr(model, "bound_name"):
        return model.bound_name
    config = model.config()
    if config.get("model") == "vae":
        return "ELBO"
    if "k" in config:
        return f"{config.get('objective', config['model']).upper()} bound (K={config['k']})"
    return f"{config.get('model')} bound"


def _cmd_download(args):
    from .data import download_binarized_mnist

    dest = download_binarized_mnist(args.dest, progress=args.progress)
    print(f"{PROG}: binarized MNIST is in {dest}; train on it with `{PROG} train --data {dest}`")
    return 0


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
    if args.command in ("train", "eval"):
        from ._blas import blas_advice

        advice = blas_advice()
        if advice:
            print(f"{PROG}: {advice}")
    try:
        with _blas_threads(getattr(args, "threads", None)):
            return args.func(args)
    except TrainingDivergedError as err:
        parser.exit(1, f"{PROG}: error: {err}\n")
    except KeyboardInterrupt:
        hint = (
            " (the run folder keeps the checkpoint of the last finished epoch; continue "
            "with --resume)"
            if args.command == "train"
            else ""
        )
        parser.exit(130, f"{PROG}: interrupted{hint}\n")
    except (OSError, ValueError, TypeError, BackendUnavailableError) as err:
        # User errors: invalid values (InvalidParameterError is a ValueError), missing or
        # corrupt files, network failures. Programming errors of other kinds keep their
        # traceback.
        parser.exit(2, f"{PROG}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
