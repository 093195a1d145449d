"""VQ-VAE on statically binarized MNIST: codebook updates and dead-code handling compared.

Every configuration trains the same VQ-VAE (784-H-H-S*E encoder, S*E-H-H-784 Bernoulli decoder,
M codes of dimension E, commitment beta 0.25) with Adam (lr 1e-3), batch 100, for the same
number of epochs and seed; they differ only in how the codebook is kept alive:

    loss               codebook moved by Adam along the codebook loss, random uniform init
    loss-reset         + codes unused for --dead-code-steps steps re-seeded from the batch
    ema                codebook moved by EMA (decay 0.99), no reset
    ema-reset          EMA + dead-code re-seeding
    ema-kmeans-reset   EMA + re-seeding + k-means initialisation from the first encoder outputs

Each is scored on the whole test split by :func:`lvmcore.evaluate.evaluate`: the
reconstruction NLL -log p(x|z_q) (nats), the ELBO
under a uniform prior over codes (= -NLL - S log M), the perplexity of the code usage over all
test slots, and the dead codes (codes no test slot is assigned to). Prints a Markdown table and
writes ``results.json`` (and each run's folder, with ``code_usage.png``) into ``--out``.

Usage::

    python -m lvmcore.experiments.vqvae_mnist --data PATH/binarized_mnist.npz --epochs 3
        [--codes 512] [--slots 8] [--code-dim 16] [--hidden 200,200] [--dead-code-steps 100]
        [--configs loss,loss-reset,ema,ema-reset,ema-kmeans-reset] [--threads 1] [--out DIR]
"""

import argparse
import contextlib
import math
from pathlib import Path

from ..data import load_dataset
from ..models import VQVAE
from .common import fit_and_evaluate, write_json

CONFIGS = {
    "loss": ("loss", dict(codebook_update="loss")),
    "loss-reset": ("loss + reset", dict(codebook_update="loss", reset_dead_codes=True)),
    "ema": ("EMA", dict(codebook_update="ema")),
    "ema-reset": ("EMA + reset", dict(codebook_update="ema", reset_dead_codes=True)),
    "ema-kmeans-reset": (
        "EMA + k-means + reset",
        dict(codebook_update="ema", reset_dead_codes=True, kmeans_init=True),
    ),
}


def run_one(key, data, a, out):
    label, kw = CONFIGS[key]
    model = VQVAE(
        data.train.shape[1],
        codes=a.codes,
        slots=a.slots,
        code_dim=a.code_dim,
        hidden=a.hidden,
        dead_code_steps=a.dead_code_steps,
        seed=a.seed,
        **kw,
    )
    history, info, train_s, _ = fit_and_evaluate(
        model,
        data,
        epochs=a.epochs,
        seed=a.seed,
        nll_k=0,
        out_dir=out / key,
        progress=a.progress,
    )
    last = history[-1]
    return dict(
        config=key,
        label=label,
        epochs=a.epochs,
        test_recon_nll=info["recon_nll"],
        test_recon_nll_sem=info["recon_nll_sem"],
        test_elbo=-info["recon_nll"] - a.slots * math.log(a.codes),
        test_perplexity=info["perplexity"],
        test_dead_codes=info["dead_codes"],
        train_perplexity_last_epoch=last["train_perplexity"],
        train_dead_codes_last_epoch=last["train_dead_codes"],
        train_seconds=train_s,
        seconds_per_epoch=train_s / a.epochs,
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.vqvae_mnist",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="mnist", help="binarized MNIST (.npz or .amat folder)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--codes", type=int, default=512)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--hidden", default="200,200")
    p.add_argument("--dead-code-steps", type=int, default=100)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS threads (1 is fastest for these small GEMMs on a busy machine)",
    )
    p.add_argument("--out", default="runs/vqvae-mnist")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    a.hidden = tuple(int(h) for h in a.hidden.split(",") if h.strip())
    keys = a.configs.split(",")
    unknown = sorted(set(keys) - set(CONFIGS))
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    data = load_dataset(a.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    limit = contextlib.nullcontext()
    if a.threads is not None:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=a.threads, user_api="blas")
    rows = []
    with limit:
        for key in keys:
            rows.append(run_one(key, data, a, out))
            write_json(out / "results.json", rows)
    print(
        f"M={a.codes} codes, S={a.slots} slots, E={a.code_dim}, hidden {a.hidden}, "
        f"{a.epochs} epochs, dead after {a.dead_code_steps} steps; test split, n="
        f"{data.test.shape[0]}"
    )
    print()
    print(
        "| codebook | test recon NLL | test ELBO (uniform prior) | test perplexity | "
        "dead codes (test) | s/epoch |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['test_recon_nll']:.2f} ± {r['test_recon_nll_sem']:.2f} | "
            f"{r['test_elbo']:.2f} | {r['test_perplexity']:.1f} | "
            f"{r['test_dead_codes']} / {a.codes} | {r['seconds_per_epoch']:.1f} |"
        )


if __name__ == "__main__":
    main()
