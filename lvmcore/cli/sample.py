"""``lvmcore sample RUN [--label L] --n N``: a PNG grid of samples of a trained run.

A class-conditional model samples class ``L`` (every class in turn, one per column, without
``--label``); a VQ-VAE with a prior fitted by ``lvmcore train-prior`` samples its codes from that
prior (from the uniform prior with ``--uniform`` or without one). In Python,
:func:`sample_run` returns the arrays it drew.
"""

import os
from pathlib import Path

import numpy as np

from .._validation import check_param, to_numpy
from ._common import PROG, add_device_argument
from ._run import image_shape, label_value, load_run, square, write_grid
from ._types import nonneg_int, positive_int

__all__ = ["add_parser", "run", "sample_run", "SAMPLE_STREAM"]

SAMPLE_STREAM = 14  # the samples' generator: default_rng([seed, 0, 0, 14])


def add_parser(sub):
    s = sub.add_parser(
        "sample",
        help="draw samples of a trained run into a PNG grid",
        description="Draw N samples of a trained run and write them as a PNG grid into the run "
        "folder (a class with --label for a class-conditional model; the learned code prior of "
        "a VQ-VAE when `lvmcore train-prior` has fitted one).",
    )
    s.add_argument("run", metavar="RUN", help="run folder (or its checkpoint.npz)")
    s.add_argument("--n", type=positive_int, default=64, metavar="N", help="samples (default: 64)")
    s.add_argument(
        "--label",
        type=nonneg_int,
        default=None,
        metavar="L",
        help="class to sample, for a class-conditional model (default: every class in turn)",
    )
    s.add_argument(
        "--uniform",
        action="store_true",
        help="VQ-VAE: draw the codes uniformly even when a learned prior exists",
    )
    s.add_argument("--seed", type=nonneg_int, default=0, metavar="S", help="seed (default: 0)")
    s.add_argument(
        "--out", default=None, metavar="PNG", help="picture to write (default: in the run folder)"
    )
    add_device_argument(s)
    s.set_defaults(func=run)
    return s


def sample_run(run, n=64, label=None, seed=0, out=None, uniform=False, device="cpu"):
    """Draw ``n`` samples of a trained run and write them as a PNG grid.

    Parameters
    ----------
    run : str or os.PathLike
        A run folder or its checkpoint.
    n : int
        Samples, >= 1.
    label : int, optional
        The class, for a model that needs labels (refused for any other).
    seed : int
        Keys the draws: ``default_rng([seed, 0, 0, 14])``.
    out : str or os.PathLike, optional
        The PNG; ``RUN/sample.png`` (``sample-label<L>.png``, ``sample-prior.png``) when None.
    uniform : bool
        For a VQ-VAE, ignore a learned code prior.
    device : {"cpu", "cuda"}

    Returns
    -------
    dict
        ``images`` (n, D) host array, ``labels`` (n,) or None, ``codes`` (n, S) or None,
        ``source`` (what the samples come from), ``path``.
    """
    from ..models import VQVAE
    from ..vq_prior import PRIOR_FILE, load_code_prior, sample_with_prior

    n = check_param(n, "n", "sample_run", kind="int", low=1, low_inclusive=True)
    seed = check_param(seed, "seed", "sample_run", kind="int", low=0, low_inclusive=True)
    path, model, state = load_run(run, device)
    if label is not None:
        label = label_value(label, "--label", model)
    if not model.has_sample:
        raise ValueError(f"expected a model that can sample, got {model.name}.")
    shape = image_shape(state, path)
    rng = np.random.default_rng([seed, 0, 0, SAMPLE_STREAM])
    labels = codes = None
    ncols, name, suffix = square(n), "sample.png", ""
    prior_path = path.parent / PRIOR_FILE
    if isinstance(model, VQVAE) and prior_path.is_file() and not uniform:
        prior, _ = load_code_prior(prior_path, model)
        images, codes = sample_with_prior(model, prior, rng, n)
        source, name = "the learned code prior", "sample-prior.png"
    elif model.needs_labels:
        xp = model.xp
        if label is None:
            labels = xp.arange(n) % model.n_classes
            ncols, suffix = model.n_classes, " (one class per column)"
        else:
            labels = xp.full(n, label, dtype=np.int64)
            name = f"sample-label{label}.png"
        images = model.sample(rng, n, labels=labels)
        source = "the prior, given the class"
    else:
        images = model.sample(rng, n)
        source = "the uniform code prior" if isinstance(model, VQVAE) else "the prior"
    target = Path(os.fspath(out)) if out is not None else path.parent / name
    title = f"{model.name}: {n} samples from {source}{suffix}"
    if label is not None:
        title = f"{model.name}: {n} samples of class {label}"
    written = write_grid(images, shape, target, title, ncols=ncols)
    return dict(
        images=to_numpy(images),
        labels=None if labels is None else to_numpy(labels),
        codes=None if codes is None else to_numpy(codes),
        source=source,
        path=written,
    )


def run(args):
    result = sample_run(
        args.run,
        n=args.n,
        label=args.label,
        seed=args.seed,
        out=args.out,
        uniform=args.uniform,
        device=args.device,
    )
    print(f"{PROG}: {args.n} samples from {result['source']} -> {result['path']}")
    return 0
