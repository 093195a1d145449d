"""``lvmcore explore RUN``: pictures of a trained model's latent space, written into the run folder.

With no further flags: ``interpolation.png`` (spherical interpolation between the posterior
means of pairs of inputs), ``traversal.png`` (each latent dimension swept over prior quantiles
around an input, sorted by its KL) and, for a 2-D latent, ``manifold.png`` (the decoder over a
grid of prior quantiles) and ``latent_scatter.png`` (the encoded inputs coloured by label, over
draws of the prior). ``--from-label A --to-label B`` adds ``arithmetic.png`` (inputs of class B
moved along mean z[A] - mean z[B]). A class-conditional model adds ``analogies.png`` (each input's
z decoded under every class), the multimodal VAE ``cross_generation.png`` (each half predicted
from the other). In Python, :func:`explore_run` returns the arrays each picture drew
(:mod:`lvmcore.latent`).
"""

from pathlib import Path

import numpy as np
from scipy.special import ndtri

from .._validation import check_param, to_numpy
from ._common import PROG, add_device_argument
from ._run import image_shape, load_run, run_dataset, write_grid
from ._types import nonneg_int, positive_int

__all__ = ["add_parser", "run", "explore_run", "PRIOR_DRAWS_STREAM"]

PRIOR_DRAWS_STREAM = 16  # the prior draws of latent_scatter.png: default_rng([seed, 0, 0, 16])


def add_parser(sub):
    e = sub.add_parser(
        "explore",
        help="pictures of a trained model's latent space",
        description="Write interpolation.png and traversal.png (and manifold.png and "
        "latent_scatter.png for a 2-D latent) into the run folder; arithmetic.png with "
        "--from-label and --to-label.",
    )
    e.add_argument("run", metavar="RUN", help="run folder (or its checkpoint.npz)")
    e.add_argument("--from-label", type=nonneg_int, default=None, metavar="A", help="class A")
    e.add_argument(
        "--to-label",
        type=nonneg_int,
        default=None,
        metavar="B",
        help="class B: arithmetic.png moves inputs of class B by mean z[A] - mean z[B]",
    )
    e.add_argument(
        "--split",
        choices=("test", "valid", "train"),
        default="test",
        help="the inputs (default: test)",
    )
    e.add_argument(
        "--rows", type=positive_int, default=6, metavar="R", help="rows of a picture (default: 6)"
    )
    e.add_argument(
        "--steps",
        type=positive_int,
        default=10,
        metavar="N",
        help="points along an interpolation, endpoints included (default: 10)",
    )
    e.add_argument("--seed", type=nonneg_int, default=0, metavar="S", help="seed (default: 0)")
    e.add_argument(
        "--data",
        default=None,
        metavar="digits|mnist|PATH",
        help="data set (default: the one the run was trained on)",
    )
    add_device_argument(e)
    e.set_defaults(func=run)
    return e


def explore_run(
    run,
    *,
    from_label=None,
    to_label=None,
    split="test",
    rows=6,
    steps=10,
    seed=0,
    data=None,
    device="cpu",
):
    """Write the latent-space pictures of a trained run into its folder (module docstring).

    Returns
    -------
    dict
        picture name (``"interpolation"``, ``"traversal"``, ...) -> what its writer in
        :mod:`lvmcore.latent` returned (the latents, the decoded images, ``path``).
    """
    from .. import latent
    from ..distributions.kl import kl_normal_std_per_dim
    from ..models import AAE, MVAE

    f = "explore_run"
    rows = check_param(rows, "rows", f, kind="int", low=1, low_inclusive=True)
    steps = check_param(steps, "steps", f, kind="int", low=2, low_inclusive=True)
    seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
    if (from_label is None) != (to_label is None):
        raise ValueError(
            "expected --from-label and --to-label together (arithmetic needs both classes), "
            f"got only {'--from-label' if to_label is None else '--to-label'}."
        )
    path, model, state = load_run(run, device)
    if not model.has_latent_space:
        raise ValueError(
            f"expected a model with a continuous latent space (a Gaussian encoder and a decoder "
            f"of z), got {model.name}, whose latents are discrete. Explore a vae, iwae, cvae, "
            f"mvae or aae run."
        )
    dataset = run_dataset(data, state, path)
    shape = image_shape(state, path, dataset)
    xp = model.xp
    x = xp.asarray(getattr(dataset, split).astype(model.dtype))
    y_host = dataset.labels(split)
    y = None if y_host is None else xp.asarray(y_host)
    if x.shape[0] < 2 * rows:
        raise ValueError(
            f"expected at least {2 * rows} rows in the {split} split, got {x.shape[0]}."
        )
    given = model._check_labels(y if model.needs_labels else None, x.shape[0], f)

    def encode(xs, ys=None):
        return model.encode(xs, labels=ys) if model.needs_labels else model.encode(xs)

    def decoder(ys=None):
        """decode(z) with every row under the labels ``ys`` (a label model only)."""
        if not model.needs_labels:
            return model.decode
        return lambda z: model.decode(z, labels=ys)

    mu, logvar = encode(x, given)
    out_dir, results = path.parent, {}
    # interpolation between the inputs 0..R-1 and R..2R-1
    y0 = None if given is None else xp.repeat(given[:rows], steps)
    results["interpolation"] = latent.write_interpolation(
        decoder(y0), mu[:rows], mu[rows : 2 * rows], shape, out_dir / "interpolation.png", n=steps
    )
    # traversal around the first input, dimensions sorted by their KL over the split
    kl = kl_normal_std_per_dim(mu, logvar).astype(np.float64).mean(axis=0)  # (Z,)
    n_values = 9
    yt = None if given is None else xp.full(model.latent_dim * n_values, int(given[0]))
    results["traversal"] = latent.write_traversal(
        decoder(yt), mu[0], shape, out_dir / "traversal.png", kl=kl, n=n_values
    )
    if model.latent_dim == 2:
        n_grid = 15
        ym = None if given is None else xp.full(n_grid * n_grid, int(given[0]))
        note = "" if given is None else f", class {int(given[0])}"
        scale = 1.0
        if isinstance(model, AAE) and model.target == "mixture":
            # the grid of N(0, 1) quantiles, widened to reach the circle of the mixture target
            _, means, variances = model.mixture
            reach = np.sqrt((means**2).sum(axis=1)).max() + 2 * np.sqrt(variances.max())
            scale = float(reach / ndtri(0.95))
            note += f", scaled by {scale:.2f} to the mixture target"
        results["manifold"] = latent.write_manifold(
            lambda z: decoder(ym)(xp.asarray((scale * z).astype(model.dtype))),
            shape,
            out_dir / "manifold.png",
            n=n_grid,
            title=f"Decoded manifold over prior quantiles{note}",
        )
        rng = np.random.default_rng([seed, 0, 0, PRIOR_DRAWS_STREAM])
        if isinstance(model, AAE):
            ref, what = model.sample_target(rng, 2000), f"{model.target} target"
        else:
            ref, what = rng.standard_normal((2000, 2)).astype(model.dtype), "N(0, I)"
        results["latent_scatter"] = latent.write_latent_scatter(
            mu,
            out_dir / "latent_scatter.png",
            labels=y,
            n_classes=dataset.n_classes,
            reference=xp.asarray(ref),
            title=f"Posterior means of the {split} split over draws of {what} (grey)",
        )
    if from_label is not None:
        if y is None:
            raise ValueError(
                f"expected labels in the data for --from-label/--to-label, got a {split} split "
                f"without them. Use the digits or an .npz with labels."
            )
        for name, v in (("--from-label", from_label), ("--to-label", to_label)):
            if not 0 <= v < (dataset.n_classes or 0):
                raise ValueError(
                    f"expected {name} in [0, {dataset.n_classes}) (the data's classes), got {v}."
                )
        query = xp.nonzero(y == to_label)[0][:rows]
        scales = (0.0, 0.5, 1.0, 1.5)
        yq = None if given is None else xp.repeat(given[query], len(scales))
        results["arithmetic"] = latent.write_arithmetic(
            decoder(yq),
            mu,
            y,
            from_label,
            to_label,
            mu[query],
            shape,
            out_dir / "arithmetic.png",
            scales=scales,
        )
    if model.needs_labels:
        results["analogies"] = _analogies(model, x[:rows], given[:rows], shape, out_dir)
    if isinstance(model, MVAE):
        results["cross_generation"] = _cross_generation(model, x[:rows], shape, out_dir)
    return results


def _analogies(model, x, labels, shape, out_dir):
    """Each input (first column) encoded under its own class and decoded under every class."""
    xp = model.xp
    C, R = model.n_classes, x.shape[0]
    mu, _ = model.encode(x, labels=labels)  # (R, Z)
    z = xp.repeat(mu, C, axis=0)  # (R*C, Z)
    decoded = model.decode(z, labels=xp.tile(xp.arange(C), R)).reshape(R, C, -1)
    images = xp.concatenate([x[:, None], decoded], axis=1).reshape(R * (C + 1), -1)
    path = write_grid(
        images,
        shape,
        out_dir / "analogies.png",
        f"Input, then its z decoded under each class 0..{C - 1}",
        ncols=C + 1,
    )
    return dict(z=mu, images=to_numpy(images), path=path)


def _cross_generation(model, x, shape, out_dir):
    """Each row: the input, the bottom predicted from the top, the top predicted from the
    bottom."""
    xp = model.xp
    top, bottom = x[:, : model.split], x[:, model.split :]
    from_top = model.predict(top, 0)
    from_bottom = model.predict(bottom, 1)
    images = xp.stack([x, from_top, from_bottom], axis=1).reshape(3 * x.shape[0], -1)
    names = model.names
    path = write_grid(
        images,
        shape,
        out_dir / "cross_generation.png",
        f"Input; {names[1]} from {names[0]}; {names[0]} from {names[1]}",
        ncols=3,
    )
    return dict(images=to_numpy(images), path=path)


def run(args):
    results = explore_run(
        args.run,
        from_label=args.from_label,
        to_label=args.to_label,
        split=args.split,
        rows=args.rows,
        steps=args.steps,
        seed=args.seed,
        data=args.data,
        device=args.device,
    )
    print(f"{PROG}: wrote " + ", ".join(str(Path(r["path"])) for r in results.values()))
    return 0
