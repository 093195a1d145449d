"""The IWAE-paper experiment on statically binarized MNIST (Burda et al. 2016, table 1).

VAE, IWAE K=5, IWAE K=50 and IWAE K=50 trained with DReG, all with the paper's
one-stochastic-layer architecture (784-200-200-50 tanh encoder, 50-200-200-784 tanh
Bernoulli decoder), Adam (lr 1e-3, epsilon 1e-4), batch 100, Glorot-uniform weights and
the decoder's output bias at the logit of the training pixel means. The paper's full
schedule is 3280 epochs; choose the budget with ``--epochs``.

Each model is scored by :func:`lvmcore.evaluate.evaluate`, as ``lvmcore eval`` does and with
its random keys: the test NLL (K=5000 importance samples) on a seeded random subset of the test
split (``--nll-subset``; 0 for the whole split), the ELBO over the whole test split, and its
active units. Prints a Markdown table and writes ``results.json`` into ``--out``.

Usage::

    python -m lvmcore.experiments.iwae_paper --data PATH/binarized_mnist.npz --epochs 10
        [--models vae,iwae5,iwae50,dreg50] [--nll-k 5000] [--nll-subset 1000] [--out DIR]
"""

import argparse
import json
import time
from pathlib import Path

from ..data import load_dataset
from ..evaluate import evaluate
from ..models import IWAE, VAE
from ..train import fit

MODELS = {
    "vae": ("VAE", lambda seed: VAE(784, 50, (200, 200), seed=seed)),
    "iwae5": ("IWAE, K=5", lambda seed: IWAE(784, 50, (200, 200), k=5, seed=seed)),
    "iwae50": ("IWAE, K=50", lambda seed: IWAE(784, 50, (200, 200), k=50, seed=seed)),
    "dreg50": (
        "IWAE-DReG, K=50",
        lambda seed: IWAE(784, 50, (200, 200), k=50, estimator="dreg", seed=seed),
    ),
}


def run_one(key, data, epochs, out, seed, nll_k, nll_subset, progress):
    label, build = MODELS[key]
    model = build(seed)
    t0 = time.perf_counter()
    fit(
        model,
        data,
        epochs=epochs,
        batch_size=100,
        lr=1e-3,
        adam_eps=1e-4,
        seed=seed,
        out_dir=out / key,
        overwrite=True,
        progress=progress,
    )
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ev = evaluate(model, data.test, k=nll_k, seed=seed, subset=nll_subset)
    eval_s = time.perf_counter() - t1
    return dict(
        model=key,
        label=label,
        epochs=epochs,
        test_nll=ev["nll"],
        test_nll_sem=ev["nll_sem"],
        nll_k=nll_k,
        nll_n=ev["nll_n"],
        test_elbo=ev["elbo"],
        active_units=ev["active_units"],
        train_seconds=train_s,
        seconds_per_epoch=train_s / epochs,
        eval_seconds=eval_s,
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.iwae_paper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="mnist", help="binarized MNIST (.npz or .amat folder)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--models", default="vae,iwae5,iwae50,dreg50")
    p.add_argument("--nll-k", type=int, default=5000)
    p.add_argument("--nll-subset", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/iwae-paper")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    keys = a.models.split(",")
    unknown = sorted(set(keys) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    data = load_dataset(a.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in keys:
        rows.append(run_one(key, data, a.epochs, out, a.seed, a.nll_k, a.nll_subset, a.progress))
        (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(
        f"| model | epochs | test NLL (K={a.nll_k}, n={rows[0]['nll_n']}) | test ELBO | "
        f"active units | s/epoch | eval s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['epochs']} | {r['test_nll']:.2f} ± {r['test_nll_sem']:.2f} | "
            f"{r['test_elbo']:.2f} | {r['active_units']} | {r['seconds_per_epoch']:.1f} | "
            f"{r['eval_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
