"""Richer priors on statically binarized MNIST, and bits per dimension of the digits at 17 grey
levels: two tables at a chosen epoch budget.

``priors``: the one-layer VAE (784-200-200-(32), mirrored, tanh, Bernoulli decoder, diagonal
posterior, trained by the ELBO) with the standard normal prior (closed-form KL), a learned
mixture of ``--components`` Gaussians, the VampPrior with ``--pseudo-inputs`` pseudo-inputs
(Tomczak and Welling 2018) and a MAF prior of two steps (the VLAE's autoregressive-flow prior);
the learned priors' KL is the sampled one.

``levels``: the digits at their 17 grey levels (``--data digits-levels``, D = 64), modelled by
the categorical decoder (a softmax over the 17 levels per pixel, exact), and by continuous
decoders of the dequantized data y = (x + u) / 17: uniform u with a logistic and with a
Gaussian decoder, and the variational (logit-normal) q(u|x) with a logistic decoder. Every
number is a bound on the discrete log-likelihood, in bits per dimension (lower is better).

Each model is trained with Adam (lr 1e-3, epsilon 1e-4, batch 100) from the decoder's output
bias at the data's marginals, and scored by :func:`lvmcore.evaluate.evaluate` with its random
keys: the test NLL with ``--nll-k`` importance samples on a seeded random subset of the test
split, the ELBO over the whole split, and the model's own report (the sampled KL, active units,
I(x; z) over the first 1000 test rows; see
:meth:`lvmcore.models.PriorDecoderVAE.eval_report`). ``--train-subset`` trains on the first N
training rows only, for a budget of minutes. Prints Markdown tables and writes
``results.json`` into ``--out``. Published orientation values (static MNIST, 40 latent units,
gated layers, 2000 epochs): VampPrior 85.57 (pythae's reproduction 85.79); at short budgets the
ordering, not the values, is what to look at.

Usage::

    python -m lvmcore.experiments.priors --epochs 3 [--data PATH/binarized_mnist.npz]
        [--tables priors,levels] [--train-subset 10000] [--nll-k 1000] [--nll-subset 500]
        [--levels-epochs 100] [--out DIR]

Without the MNIST file the ``priors`` table is skipped with a message.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..data import load_dataset
from ..models import PriorDecoderVAE
from .common import fit_and_evaluate, write_json

DEFAULT_DATA = "../shared/data/binarized_mnist.npz"
LATENT, HIDDEN = 32, (200, 200)


def prior_models(components, pseudo_inputs):
    """key -> (label, factory(seed, D)) of the ``priors`` table."""

    def vae(**kw):
        return lambda s, D: PriorDecoderVAE(D, LATENT, HIDDEN, seed=s, **kw)

    return {
        "standard": ("standard N(0, I)", vae()),
        "mog": (
            f"mixture of {components} Gaussians",
            vae(prior="mog", prior_components=components),
        ),
        "vamp": (
            f"VampPrior, {pseudo_inputs} pseudo-inputs",
            vae(prior="vamp", prior_components=pseudo_inputs),
        ),
        "flow": ("MAF prior, 2 steps", vae(prior="flow", prior_flow_steps=2)),
    }


def level_models():
    """key -> (label, factory(seed, D)) of the ``levels`` table (D = 64, 17 levels)."""

    def vae(**kw):
        return lambda s, D: PriorDecoderVAE(D, 16, (128, 128), levels=17, seed=s, **kw)

    return {
        "categorical": ("categorical decoder, 17 levels", vae(decoder="categorical")),
        "uniform-logistic": (
            "uniform dequantization, logistic decoder",
            vae(dequantize="uniform", likelihood="logistic"),
        ),
        "uniform-gaussian": (
            "uniform dequantization, Gaussian decoder",
            vae(dequantize="uniform", likelihood="gaussian"),
        ),
        "variational-logistic": (
            "variational dequantization, logistic decoder",
            vae(dequantize="variational", likelihood="logistic"),
        ),
    }


def train_and_evaluate(
    key, label, model, data, *, epochs, out, seed, nll_k, nll_subset, progress, **fit_kw
):
    """Fit ``model`` on ``data`` for ``epochs`` and evaluate it on the test split; returns its
    row: the evaluation's numbers, timings, and bits per dimension where the model reports
    them."""
    _, ev, train_s, eval_s = fit_and_evaluate(
        model,
        data,
        epochs=epochs,
        seed=seed,
        nll_k=nll_k,
        nll_subset=nll_subset,
        out_dir=out / key,
        progress=progress,
        adam_eps=1e-4,
        **fit_kw,
    )
    row = dict(
        model=key,
        label=label,
        epochs=epochs,
        train_rows=int(data.train.shape[0]),
        test_nll=ev["nll"],
        test_nll_sem=ev["nll_sem"],
        nll_k=nll_k,
        nll_n=ev["nll_n"],
        test_elbo=ev["elbo"],
        kl=ev["kl"],
        active_units=ev["active_units"],
        latent_dim=model.latent_dim,
        mutual_information=ev.get("mutual_information"),
        mutual_information_rows=ev.get("mutual_information_rows"),
        train_seconds=train_s,
        eval_seconds=eval_s,
    )
    if "kl_per_dim" in ev:  # the standard prior's closed-form KL of each unit
        row["units_kl_above_0.1"] = sum(v > 0.1 for v in ev["kl_per_dim"])
    if "nats_to_bits_per_dim" in ev:
        f = ev["nats_to_bits_per_dim"]
        row.update(nll_bpd=ev["nll"] * f, elbo_bpd=-ev["elbo"] * f)
    return row


def _subset(data, n):
    return data if not n or n >= data.train.shape[0] else data._replace(train=data.train[:n])


def priors_table(rows) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    lines = [
        "",
        f"| prior | epochs | test NLL (K={r0['nll_k']}, n={r0['nll_n']}) | test ELBO | KL | "
        f"active units | I(x; z) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['epochs']} | {r['test_nll']:.2f} ± {r['test_nll_sem']:.2f} | "
            f"{r['test_elbo']:.2f} | {r['kl']:.2f} | {r['active_units']} of {r['latent_dim']} | "
            f"{r['mutual_information']:.2f} | {r['train_seconds']:.0f} |"
        )
    return lines


def levels_table(rows) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    lines = [
        "",
        f"| model of the 17-level digits | epochs | test NLL bits/dim (K={r0['nll_k']}) | "
        f"test ELBO bits/dim | KL (nats) | active units | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['epochs']} | {r['nll_bpd']:.3f} | {r['elbo_bpd']:.3f} | "
            f"{r['kl']:.2f} | {r['active_units']} of {r['latent_dim']} | "
            f"{r['train_seconds']:.0f} |"
        )
    lines.append(f"\n(uniform over the 17 levels: {math.log2(17):.3f} bits per dimension)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.priors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="binarized MNIST (.npz or .amat folder)")
    p.add_argument("--tables", default="priors,levels", help="from priors,levels")
    p.add_argument("--epochs", type=int, default=3, help="the epoch budget of every prior model")
    p.add_argument("--levels-epochs", type=int, default=100, help="epochs of the levels models")
    p.add_argument("--models", default=None, help="keys of the priors table (default: all)")
    p.add_argument("--components", type=int, default=50, help="C of the mixture prior")
    p.add_argument("--pseudo-inputs", type=int, default=500, help="C of the VampPrior")
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N rows (0: all)")
    p.add_argument("--nll-k", type=int, default=5000)
    p.add_argument("--nll-subset", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/priors")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    tables = a.tables.split(",")
    if set(tables) - {"priors", "levels"}:
        p.error(f"unknown tables {sorted(set(tables) - {'priors', 'levels'})}")
    for name in ("epochs", "levels_epochs", "components", "pseudo_inputs", "nll_k"):
        if getattr(a, name) < 1:
            p.error(f"expected --{name.replace('_', '-')} >= 1, got {getattr(a, name)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(seed=a.seed, nll_k=a.nll_k, nll_subset=a.nll_subset, progress=a.progress)
    rows = {"priors": [], "levels": []}

    def save():
        write_json(out / "results.json", rows)

    if "priors" in tables:
        models = prior_models(a.components, a.pseudo_inputs)
        keys = a.models.split(",") if a.models else list(models)
        if set(keys) - set(models):
            p.error(f"unknown models {sorted(set(keys) - set(models))}; from {sorted(models)}")
        if a.data not in ("mnist", "digits") and not Path(a.data).exists():
            print(f"skipping the priors table: {a.data} not found. Pass --data PATH.")
        else:
            data = _subset(load_dataset(a.data), a.train_subset)
            for key in keys:
                label, build = models[key]
                rows["priors"].append(
                    train_and_evaluate(
                        key,
                        label,
                        build(a.seed, data.train.shape[1]),
                        data,
                        epochs=a.epochs,
                        out=out,
                        **common,
                    )
                )
                save()
                print(f"{key}: done ({rows['priors'][-1]['train_seconds']:.0f} s)", flush=True)
    if "levels" in tables:
        data = load_dataset("digits-levels")
        for key, (label, build) in level_models().items():
            rows["levels"].append(
                train_and_evaluate(
                    key,
                    label,
                    build(a.seed, data.train.shape[1]),
                    data,
                    epochs=a.levels_epochs,
                    out=out,
                    **common,
                )
            )
            save()
            print(f"{key}: done ({rows['levels'][-1]['train_seconds']:.0f} s)", flush=True)
    print("\n".join(priors_table(rows["priors"]) + levels_table(rows["levels"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
