"""Categorical VAE on statically binarized MNIST: Gumbel-Softmax, straight-through Gumbel and
REINFORCE with the NVIL baseline, with the same architecture and the same budget.

Usage::

    python -m lvmcore.experiments.catvae_mnist [--data mnist|PATH] [--epochs 10]
        [--estimators gumbel,st-gumbel,nvil] [--latents 20] [--categories 10]
        [--hidden 512,256] [--batch-size 100] [--lr 1e-3] [--tau 1 --tau-min 0.5
        --tau-decay 1e-4 --tau-every 1000] [--k 0] [--nll-subset 1000] [--train-subset N]
        [--threads 1] [--seed 0] [--json PATH]

The model of Jang et al. (2017, sec. 4.2): 20 categorical latents of 10 classes, uniform
prior, Bernoulli decoder, encoder 784-512-256-(20x10) and the mirrored decoder (tanh here).
Each estimator trains from the same initialisation (same seed) with Adam for the same number
of epochs and the same data order; the Gumbel estimators anneal the temperature as
tau = max(tau_min, tau exp(-r t)), updated every ``--tau-every`` steps. The test ELBO is that of
the *discrete* model (an exact sample z ~ q and the analytic KL), whatever the estimator
trained; with ``--k K`` the importance-sampled log-likelihood (q as proposal) is added on a
seeded subset of the test set. Both come from :func:`lvmcore.evaluate.evaluate`, with the random
keys of ``lvmcore eval``. Prints a Markdown table of test ELBO and wall time.

``--data mnist`` reads the path in $LVMCORE_MNIST; a path to the .amat folder or an .npz works
too (e.g. ``--data /work/shared/data/binarized_mnist.npz``).

Reference: Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017
(Table 2: negative ELBO on binarized MNIST after full training: Gumbel-Softmax 101.5, ST
Gumbel-Softmax 111.5, NVIL 113.1, for a 200-unit Bernoulli VAE; numbers from far longer
training than the budget here).
"""

import argparse

from ..data import Dataset, load_dataset
from ..models import CatVAE
from .common import fit_and_evaluate, write_json

__all__ = ["run_estimator", "main"]


def run_estimator(
    dataset,
    estimator,
    *,
    epochs,
    latents=20,
    categories=10,
    hidden=(512, 256),
    batch_size=100,
    lr=1e-3,
    tau=1.0,
    tau_min=0.5,
    tau_decay=1e-4,
    tau_every=1000,
    seed=0,
    k=0,
    nll_subset=1000,
):
    """Train one CatVAE with ``estimator`` and evaluate it on ``dataset.test``.

    Returns
    -------
    dict
        ``estimator``, ``steps``, ``train_seconds``, ``test_elbo`` and ``test_elbo_sem``
        (nats, mean over the test set), ``valid_bound`` (last epoch), ``eval_seconds``, and with
        ``k > 0`` ``test_nll`` / ``test_nll_sem`` on ``nll_subset`` test rows.
    """
    relaxed = estimator in ("gumbel", "st-gumbel")
    model = CatVAE(
        dataset.train.shape[1],
        latents,
        categories,
        hidden,
        estimator=estimator,
        tau=tau,
        tau_min=tau_min if relaxed and tau_decay else None,
        tau_decay=tau_decay if relaxed else 0.0,
        tau_every=tau_every,
        seed=seed,
    )
    history, ev, train_seconds, eval_seconds = fit_and_evaluate(
        model,
        dataset,
        epochs=epochs,
        seed=seed,
        nll_k=k,
        nll_subset=nll_subset,
        batch_size=batch_size,
        lr=lr,
    )
    row = dict(
        estimator=estimator,
        steps=history[-1]["step"],
        train_seconds=train_seconds,
        valid_bound=history[-1]["valid_bound"],
        final_tau=model.temperature(),
        test_elbo=ev["elbo"],
        test_elbo_sem=ev["elbo_sem"],
    )
    if k > 0:
        row.update(test_nll=ev["nll"], test_nll_sem=ev["nll_sem"], nll_k=k, nll_n=ev["nll_n"])
    row["eval_seconds"] = eval_seconds
    return row


def _table(rows, k):
    head = "| estimator | test ELBO (nats) | "
    if k:
        head += f"test NLL (K={k}, n={rows[0].get('nll_n')}) | "
    head += "steps | final tau | train wall time (s) | eval wall time (s) |"
    lines = [head, "|---|---:|" + ("---:|" if k else "") + "---:|---:|---:|---:|"]
    for r in rows:
        tau = f"{r['final_tau']:.3f}" if r["estimator"] in ("gumbel", "st-gumbel") else "-"
        cells = [r["estimator"], f"{r['test_elbo']:.2f} +- {r['test_elbo_sem']:.2f}"]
        if k:
            cells.append(f"{r['test_nll']:.2f} +- {r['test_nll_sem']:.2f}")
        cells += [str(r["steps"]), tau, f"{r['train_seconds']:.1f}", f"{r['eval_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.catvae_mnist",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="mnist", help="mnist ($LVMCORE_MNIST) or a path")
    p.add_argument("--estimators", default="gumbel,st-gumbel,nvil")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latents", type=int, default=20)
    p.add_argument("--categories", type=int, default=10)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--tau-min", type=float, default=0.5)
    p.add_argument("--tau-decay", type=float, default=1e-4)
    p.add_argument("--tau-every", type=int, default=1000)
    p.add_argument(
        "--k", type=int, default=0, help="importance samples for the test NLL (0 skips it)"
    )
    p.add_argument("--nll-subset", type=int, default=1000)
    p.add_argument(
        "--train-subset", type=int, default=0, help="first N training rows (0: all 50,000)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="BLAS threads (default 1: these GEMMs are small)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    data = load_dataset(args.data)
    if args.train_subset:
        data = Dataset(
            data.train[: args.train_subset],
            data.valid,
            data.test,
            data.name,
            data.shape,
            source=data.source,
        )
    hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    rows = []
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for est in args.estimators.split(","):
            rows.append(
                run_estimator(
                    data,
                    est,
                    epochs=args.epochs,
                    latents=args.latents,
                    categories=args.categories,
                    hidden=hidden,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    tau=args.tau,
                    tau_min=args.tau_min,
                    tau_decay=args.tau_decay,
                    tau_every=args.tau_every,
                    seed=args.seed,
                    k=args.k,
                    nll_subset=args.nll_subset,
                )
            )
            print(f"{est}: done in {rows[-1]['train_seconds']:.1f} s", flush=True)
    print(
        f"\nCategorical VAE {args.latents} x {args.categories}, hidden {hidden}, "
        f"{args.epochs} epochs of {data.train.shape[0]} examples, batch {args.batch_size}, "
        f"Adam lr {args.lr:g}, seed {args.seed}\n"
    )
    print(_table(rows, args.k))
    if args.json:
        write_json(args.json, rows, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
