"""Richer posteriors on statically binarized MNIST: one versus two stochastic layers, and the
diagonal versus full-covariance versus IAF posteriors, at the same epochs.

Two tables, every model trained with the same schedule (Adam, lr 1e-3, epsilon 1e-4, batch 100,
Glorot-uniform weights, the decoder's output bias at the logit of the pixel means, tanh):

``layers``: the IWAE paper's two architectures (Burda et al. 2016, sec. 5): one stochastic
layer (784-200-200-(50), mirrored) and two (784-200-200-(100)-100-100-(50), mirrored), each
trained as a VAE, an IWAE with K = 5 and an IWAE with K = 50.

``posteriors``: the one-layer VAE with a diagonal, a full-covariance and an IAF posterior with
T = 2 and T = 4 steps (MADE 100-100 per step, context h of width 50 from the encoder; Kingma et
al. 2016), all trained by the ELBO, so the gap between the test NLL and the ELBO is what the
posterior closes. ``planar4`` (four planar steps) is available with ``--models``.

Each model is scored by :func:`lvmcore.evaluate.evaluate`, as ``lvmcore eval`` does and with its
random keys: the test NLL with ``--nll-k`` importance samples from the model's own posterior on a
seeded random subset of the test split (``--nll-subset``), the ELBO over the whole test split,
the gap -NLL - ELBO (nats; the bias of the ELBO as an estimate of log p(x), up to the NLL's own
bias) and the active units (per stochastic layer). Prints Markdown tables and writes
``results.json`` into ``--out``. The published values (IWAE paper, dynamically binarized MNIST,
3280 epochs: two-layer VAE 85.33, IWAE K=5 83.89, K=50 82.90) are for orientation: at short
budgets the ordering, not the values, should hold.

Usage::

    python -m lvmcore.experiments.posteriors --epochs 3 [--data PATH/binarized_mnist.npz]
        [--models vae,vae-2l,...] [--nll-k 5000] [--nll-subset 500] [--out DIR]

Without the data file it prints why and exits with status 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load_dataset
from ..models import IWAE, VAE, FlowVAE, HierarchicalIWAE, HierarchicalVAE
from .common import fit_and_evaluate, write_json

DEFAULT_DATA = "../shared/data/binarized_mnist.npz"
TWO = ((784, 200, 200, 100), (100, 100, 100, 50))

# key -> (table, label, factory(seed))
MODELS = {
    "vae": ("layers", "VAE, 1 layer", lambda s: VAE(784, 50, (200, 200), seed=s)),
    "vae-2l": ("layers", "VAE, 2 layers", lambda s: HierarchicalVAE(784, TWO, seed=s)),
    "iwae5": ("layers", "IWAE K=5, 1 layer", lambda s: IWAE(784, 50, (200, 200), k=5, seed=s)),
    "iwae5-2l": ("layers", "IWAE K=5, 2 layers", lambda s: HierarchicalIWAE(784, TWO, k=5, seed=s)),
    "iwae50": ("layers", "IWAE K=50, 1 layer", lambda s: IWAE(784, 50, (200, 200), k=50, seed=s)),
    "iwae50-2l": (
        "layers",
        "IWAE K=50, 2 layers",
        lambda s: HierarchicalIWAE(784, TWO, k=50, seed=s),
    ),
    "fullcov": (
        "posteriors",
        "VAE, full covariance",
        lambda s: FlowVAE(784, 50, (200, 200), posterior="fullcov", seed=s),
    ),
    "iaf2": (
        "posteriors",
        "VAE, IAF T=2",
        lambda s: FlowVAE(784, 50, (200, 200), posterior="iaf", flow_steps=2, seed=s),
    ),
    "iaf4": (
        "posteriors",
        "VAE, IAF T=4",
        lambda s: FlowVAE(784, 50, (200, 200), posterior="iaf", flow_steps=4, seed=s),
    ),
    "planar4": (
        "posteriors",
        "VAE, planar T=4",
        lambda s: FlowVAE(784, 50, (200, 200), posterior="planar", flow_steps=4, seed=s),
    ),
}
DEFAULT_MODELS = "vae,vae-2l,iwae5,iwae5-2l,iwae50,iwae50-2l,fullcov,iaf2,iaf4"


def run_one(key, data, epochs, out, seed, nll_k, nll_subset, progress):
    """Train one model for ``epochs`` and evaluate it; returns its row of the tables."""
    table, label, build = MODELS[key]
    model = build(seed)
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
    )
    per_layer = ev.get("active_units_per_layer", [ev["active_units"]])
    return dict(
        model=key,
        table=table,
        label=label,
        epochs=epochs,
        test_nll=ev["nll"],
        test_nll_sem=ev["nll_sem"],
        nll_k=nll_k,
        nll_n=ev["nll_n"],
        test_elbo=ev["elbo"],
        gap=-ev["nll"] - ev["elbo"],
        active_units=per_layer,
        train_seconds=train_s,
        eval_seconds=eval_s,
    )


def tables(rows) -> list[str]:
    """The Markdown tables of ``rows`` (as :func:`run_one` returns them), one per table."""
    lines = []
    for table in ("layers", "posteriors"):
        mine = [
            r
            for r in rows
            if r["table"] == table or (table == "posteriors" and r["model"] == "vae")
        ]
        if not mine or (table == "posteriors" and len(mine) == 1 and mine[0]["model"] == "vae"):
            continue
        r0 = mine[0]
        lines += [
            "",
            f"| model | epochs | test NLL (K={r0['nll_k']}, n={r0['nll_n']}) | test ELBO | gap | "
            f"active units | train s | eval s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in mine:
            label = "VAE, diagonal" if table == "posteriors" and r["model"] == "vae" else r["label"]
            lines.append(
                f"| {label} | {r['epochs']} | {r['test_nll']:.2f} ± {r['test_nll_sem']:.2f} | "
                f"{r['test_elbo']:.2f} | {r['gap']:.2f} | "
                f"{' + '.join(map(str, r['active_units']))} | {r['train_seconds']:.0f} | "
                f"{r['eval_seconds']:.0f} |"
            )
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.posteriors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="binarized MNIST (.npz or .amat folder)")
    p.add_argument("--epochs", type=int, default=3, help="the epoch budget of every model")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"from {','.join(MODELS)}")
    p.add_argument("--nll-k", type=int, default=5000)
    p.add_argument("--nll-subset", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/posteriors")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    keys = a.models.split(",")
    unknown = sorted(set(keys) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    if a.epochs < 1:
        p.error(f"expected --epochs >= 1, got {a.epochs}")
    if a.data not in ("mnist",) and not Path(a.data).exists():
        print(
            f"skipping the posterior experiments: {a.data} not found. Pass --data PATH (a "
            f"binarized_mnist.npz, or a folder from 'lvmcore download-mnist')."
        )
        return 0
    data = load_dataset(a.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in keys:
        rows.append(run_one(key, data, a.epochs, out, a.seed, a.nll_k, a.nll_subset, a.progress))
        write_json(out / "results.json", rows)
        print(f"{key}: done ({rows[-1]['train_seconds']:.0f} s training)", flush=True)
    print("\n".join(tables(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
