"""Posterior collapse on statically binarized MNIST, shown and cured: the factorized decoder
against a MADE decoder that can model the pixels without the latent code, and three remedies.

Every model is the one-layer VAE (784-200-200 encoder, 32 latent units, diagonal posterior,
standard normal prior with the closed-form KL, tanh, trained by the ELBO with Adam, lr 1e-3,
epsilon 1e-4, batch 100):

- ``factorized``: the factorized Bernoulli decoder (200-200, mirrored): it needs z;
- ``made``: a MADE decoder p(x|z) = prod_i p(x_i | x_<i, z), one hidden layer of D units
  (``--ar-hidden``), every pixel seeing all the pixels before it in raster order, z as its
  context (entering the hidden layer);
- ``made-warmup``: the same with the KL weight rising linearly from 0 to 1 over
  ``--warmup-epochs`` (Bowman et al. 2016; Sonderby et al. 2016);
- ``made-freebits``: the same with a floor of ``--free-bits`` nats on the batch-mean KL of each
  latent unit (Kingma et al. 2016, eq. 15);
- ``made-context``: the MADE decoder limited to the previous ``--context`` pixels (a weakened
  decoder, the flat-data analogue of PixelVAE's small receptive field);
- ``made-dropout`` (not run by default): the full-context MADE with its autoregressive inputs
  dropped with probability ``--dropout`` in training (Bowman et al.'s word dropout).

Columns: the test NLL (``--nll-k`` importance samples on a seeded subset of the test split), the
test ELBO, the KL (:math:`E_q[\\log q(z|x) - \\log p(z)]`, sampled), the active units (units
whose posterior mean varies over the test data by more than 0.01; Burda et al. 2016), the
units whose closed-form KL averaged over the test data exceeds 0.1 nats (a unit can pass the
first test while carrying a hundredth of a nat), and
I(x; z), the mutual information between the data and the code under q(x, z) = p(x) q(z|x),
estimated by :func:`lvmcore.models.priordecoder.aggregate_mutual_information` over the first
1000 test rows (the aggregate posterior as the mixture of their posteriors; at most log 1000 =
6.9 nats). Collapse is KL and I(x; z) near 0 with no active unit.

Usage::

    python -m lvmcore.experiments.collapse --epochs 3 [--data PATH/binarized_mnist.npz]
        [--models factorized,made,...] [--train-subset 10000] [--nll-k 500]
        [--free-bits 0.25] [--context 28] [--warmup-epochs E] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load_dataset
from ..models import PriorDecoderVAE
from .common import write_json
from .priors import DEFAULT_DATA, HIDDEN, LATENT, _subset, train_and_evaluate

DEFAULT_MODELS = "factorized,made,made-warmup,made-freebits,made-context"


def collapse_models(free_bits, context, dropout, ar_hidden=None):
    """key -> (label, factory(seed, D), extra fit arguments)."""

    def vae(**kw):
        if kw.get("decoder") == "made" and ar_hidden:
            kw["ar_hidden"] = ar_hidden
        return lambda s, D: PriorDecoderVAE(D, LATENT, HIDDEN, seed=s, **kw)

    return {
        "factorized": ("(a) factorized decoder", vae(), {}),
        "made": ("(b) MADE decoder, full context", vae(decoder="made"), {}),
        "made-warmup": ("(c) MADE + KL warm-up", vae(decoder="made"), {"warmup": True}),
        "made-freebits": (
            f"(d) MADE + free bits ({free_bits} nats/unit)",
            vae(decoder="made", free_bits=free_bits),
            {},
        ),
        "made-context": (
            f"(e) MADE, context of {context} pixels",
            vae(decoder="made", ar_context=context),
            {},
        ),
        "made-dropout": (
            f"(f) MADE + input dropout {dropout}",
            vae(decoder="made", ar_dropout=dropout),
            {},
        ),
    }


def table(rows) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    lines = [
        "",
        f"| model | epochs | test NLL (K={r0['nll_k']}, n={r0['nll_n']}) | test ELBO | KL | "
        f"active units | units with KL > 0.1 | I(x; z) | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['epochs']} | {r['test_nll']:.2f} ± {r['test_nll_sem']:.2f} | "
            f"{r['test_elbo']:.2f} | {r['kl']:.2f} | {r['active_units']} of {r['latent_dim']} | "
            f"{r['units_kl_above_0.1']} | {r['mutual_information']:.2f} | "
            f"{r['train_seconds']:.0f} |"
        )
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.collapse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="binarized MNIST (.npz or .amat folder)")
    p.add_argument("--epochs", type=int, default=3, help="the epoch budget of every model")
    p.add_argument("--models", default=DEFAULT_MODELS, help="keys, comma-separated")
    p.add_argument("--warmup-epochs", type=int, default=None, help="(c): default --epochs")
    p.add_argument("--free-bits", type=float, default=0.25, help="(d): nats per latent unit")
    p.add_argument("--context", type=int, default=28, help="(e): pixels each pixel sees")
    p.add_argument("--dropout", type=float, default=0.5, help="(f): input dropout probability")
    p.add_argument(
        "--ar-hidden", default=None, help="hidden widths of the MADE decoder (default: D)"
    )
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N rows (0: all)")
    p.add_argument("--nll-k", type=int, default=500)
    p.add_argument("--nll-subset", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/collapse")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    ar_hidden = tuple(int(h) for h in a.ar_hidden.split(",")) if a.ar_hidden else None
    models = collapse_models(a.free_bits, a.context, a.dropout, ar_hidden)
    keys = a.models.split(",")
    if set(keys) - set(models):
        p.error(f"unknown models {sorted(set(keys) - set(models))}; from {sorted(models)}")
    if a.epochs < 1 or a.nll_k < 1:
        p.error(f"expected --epochs and --nll-k >= 1, got {a.epochs} and {a.nll_k}")
    if a.data not in ("mnist", "digits") and not Path(a.data).exists():
        print(f"skipping the collapse experiment: {a.data} not found. Pass --data PATH.")
        return 0
    data = _subset(load_dataset(a.data), a.train_subset)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    warmup = a.epochs if a.warmup_epochs is None else a.warmup_epochs
    rows = []
    for key in keys:
        label, build, extra = models[key]
        fit_kw = {"kl_warmup_epochs": warmup} if extra.get("warmup") else {}
        rows.append(
            train_and_evaluate(
                key,
                label,
                build(a.seed, data.train.shape[1]),
                data,
                epochs=a.epochs,
                out=out,
                seed=a.seed,
                nll_k=a.nll_k,
                nll_subset=a.nll_subset,
                progress=a.progress,
                **fit_kw,
            )
        )
        write_json(out / "results.json", rows)
        print(f"{key}: done ({rows[-1]['train_seconds']:.0f} s)", flush=True)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
