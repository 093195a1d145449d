"""The IWAE-paper experiment on statically binarized MNIST (Burda et al. 2016, table 1).

VAE, IWAE K=5, IWAE K=50 and IWAE K=50 trained with DReG, all with the paper's
one-stochastic-layer architecture (784-200-200-50 tanh encoder, 50-200-200-784 tanh
Bernoulli decoder), Adam (epsilon 1e-4), Glorot-uniform weights and the decoder's output bias
at the logit of the training pixel means (``fit`` sets it on a fresh run).

Two schedules:

``--schedule short`` (default)
    ``--epochs`` epochs at lr 1e-3, batch 100: a quick comparison of the four models.
``--schedule paper``
    The paper's optimisation schedule (section 5): for i = 0, ..., 7, 3^i epochs at learning
    rate 1e-4 round(10^(1 - i/7), 1) (1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4,
    1e-4; 3280 epochs in all), batch 20, Adam beta1 0.9, beta2 0.999, epsilon 1e-4. beta1 is
    the paper's text's 0.9: its released code used 0.99 with the second moments started at one,
    which lvmcore's Adam (zero-initialised moments with bias correction) does not reproduce.
    One run per model, in ``--out/<model>``: ``fit`` is called stage by stage on the same run
    folder (the learning rate changes between calls; the optimizer state, the epoch counter and
    the data order continue), a checkpoint is written after every epoch, and ``--resume``
    continues an interrupted run from its last finished epoch in the middle of any stage, bit
    for bit as if it had not stopped. ``--stages N`` runs the first N stages only.

    At the end of each stage the test NLL (K = ``--nll-k``) is estimated on a seeded random
    subset of ``--curve-subset`` test images, the same subset every stage, giving the curve of
    test NLL against epochs (``curve.json``, ``curve.png``); after the last stage, the test NLL
    with K = ``--nll-k`` on the whole test split (``--nll-subset 0``), to compare with the
    published 88.71 nats of the one-layer VAE.

Each model is scored by :func:`lvmcore.evaluate.evaluate`, as ``lvmcore eval`` does and with
its random keys. Prints a Markdown table and writes ``results.json`` into ``--out``.

Usage::

    python -m lvmcore.experiments.iwae_paper --data PATH/binarized_mnist.npz --epochs 10
        [--models vae,iwae5,iwae50,dreg50] [--nll-k 5000] [--nll-subset 1000] [--out DIR]
    python -m lvmcore.experiments.iwae_paper --schedule paper --data PATH [--models vae]
        [--stages 8] [--resume] [--curve-subset 1000] [--out DIR]
"""

import argparse
import json
import math
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..data import load_dataset
from ..models import IWAE, VAE
from ..train import CHECKPOINT, fit
from .common import fit_and_evaluate, timed_evaluate, write_json

MODELS = {
    "vae": ("VAE", lambda d, seed: VAE(d, 50, (200, 200), seed=seed)),
    "iwae5": ("IWAE, K=5", lambda d, seed: IWAE(d, 50, (200, 200), k=5, seed=seed)),
    "iwae50": ("IWAE, K=50", lambda d, seed: IWAE(d, 50, (200, 200), k=50, seed=seed)),
    "dreg50": (
        "IWAE-DReG, K=50",
        lambda d, seed: IWAE(d, 50, (200, 200), k=50, estimator="dreg", seed=seed),
    ),
}

# The paper's schedule: 8 stages, 3^i epochs each, batch 20, Adam eps 1e-4.
PAPER_STAGES = 8
PAPER_BATCH = 20
ADAM_EPS = 1e-4
CURVE = "curve.json"


def paper_schedule(stages=PAPER_STAGES):
    """The first ``stages`` stages of the paper's schedule: a list of (epochs, lr).

    Stage i (from 0) runs 3^i epochs at lr = 1e-4 * round(10^(1 - i/7), 1).
    """
    if not isinstance(stages, int) or not 1 <= stages <= PAPER_STAGES:
        raise ValueError(
            f"paper_schedule: expected stages to be an int in [1, {PAPER_STAGES}], got {stages!r}."
        )
    return [(3**i, 1e-4 * round(10 ** (1 - i / 7), 1)) for i in range(stages)]


def stage_ends(schedule):
    """The last epoch (1-based, cumulative) of each stage of ``schedule``."""
    ends, total = [], 0
    for epochs, _ in schedule:
        total += epochs
        ends.append(total)
    return ends


def _finished_epochs(run_dir):
    """Epochs finished in the run folder (0 when it holds no checkpoint)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return 0
    return int(load_checkpoint(path)[3]["epoch"])


def _row(key, label, epochs, ev, eval_s, nll_k, train_s):
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
        seconds_per_epoch=train_s / max(epochs, 1),
        eval_seconds=eval_s,
    )


def run_one(key, data, epochs, out, seed, nll_k, nll_subset, progress):
    """The short schedule: ``epochs`` epochs at lr 1e-3, batch 100."""
    label, build = MODELS[key]
    model = build(data.train.shape[1], seed)
    history, ev, train_s, eval_s = fit_and_evaluate(
        model,
        data,
        epochs=epochs,
        seed=seed,
        nll_k=nll_k,
        nll_subset=nll_subset,
        out_dir=out / key,
        progress=progress,
        adam_eps=ADAM_EPS,
    )
    return _row(key, label, epochs, ev, eval_s, nll_k, train_s)


def run_paper(key, data, out, *, stages, seed, nll_k, nll_subset, curve_subset, resume, progress):
    """The paper's schedule for one model in ``out/<key>``, resumable; returns its row.

    Stage by stage: ``fit`` with the stage's lr up to the stage's last epoch (resuming the run
    folder after the first stage, or after an interruption), then the test NLL on the seeded
    subset, appended to ``curve.json``. On ``resume``, finished stages are skipped, and a stage
    that finished but whose evaluation was interrupted is evaluated from its checkpoint.
    """
    label, build = MODELS[key]
    run_dir = out / key
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = paper_schedule(stages)
    ends = stage_ends(schedule)
    done = _finished_epochs(run_dir) if resume else 0
    curve_path = run_dir / CURVE
    curve = json.loads(curve_path.read_text()) if resume and curve_path.exists() else []
    curve = [c for c in curve if c["epoch"] <= done]
    model = build(data.train.shape[1], seed)
    in_memory = False  # does the model hold the run's latest state?

    def load_latest():
        model.load_parameters(load_checkpoint(run_dir / CHECKPOINT)[1])

    for i, ((_, lr), end) in enumerate(zip(schedule, ends)):
        if end > done:
            going_on = in_memory or done > 0
            fit(
                model,
                data,
                epochs=end,
                batch_size=PAPER_BATCH,
                lr=lr,
                adam_eps=ADAM_EPS,
                seed=seed,
                out_dir=run_dir,
                resume=going_on,
                overwrite=not going_on,
                progress=progress,
            )
            in_memory = True
        if any(c["stage"] == i for c in curve) or end < done:
            continue  # evaluated before (or its parameters are gone: the run went past it)
        if not in_memory:
            load_latest()
            in_memory = True
        ev, _ = timed_evaluate(model, data, k=nll_k, seed=seed, subset=curve_subset)
        curve.append(
            dict(stage=i, epoch=end, lr=lr, test_nll=ev["nll"], sem=ev["nll_sem"], n=ev["nll_n"])
        )
        write_json(curve_path, curve)
        plot_curve(curve, run_dir / "curve.png", f"{label}: test NLL (K={nll_k})")
    if not in_memory:
        load_latest()
    # the training time of every epoch of the run, resumed sittings included (the history a
    # checkpoint carries), not only this process's
    history = load_checkpoint(run_dir / CHECKPOINT)[3].get("history", [])
    train_s = sum(float(h.get("seconds", 0.0)) for h in history)
    ev, eval_s = timed_evaluate(model, data, k=nll_k, seed=seed, subset=nll_subset)
    row = _row(key, label, ends[-1], ev, eval_s, nll_k, train_s)
    row["curve"] = curve
    return row


def plot_curve(curve, path, title):
    """Test NLL against epochs (log scale), one point per stage."""
    from ..plots import _figure, _save

    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot()
    ep = [c["epoch"] for c in curve]
    ax.errorbar(ep, [c["test_nll"] for c in curve], yerr=[c["sem"] for c in curve], marker="o")
    if len(ep) > 1 and ep[-1] / ep[0] > 10:
        ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.iwae_paper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="mnist", help="binarized MNIST (.npz or .amat folder)")
    p.add_argument("--schedule", choices=("short", "paper"), default="short")
    p.add_argument("--epochs", type=int, default=10, help="short schedule: epochs")
    p.add_argument("--stages", type=int, default=PAPER_STAGES, help="paper schedule: stages")
    p.add_argument("--resume", action="store_true", help="paper schedule: continue --out")
    p.add_argument("--models", default=None, help="default: all four (short), vae (paper)")
    p.add_argument("--nll-k", type=int, default=5000)
    p.add_argument("--nll-subset", type=int, default=None, help="default: 1000 (short), 0 (paper)")
    p.add_argument("--curve-subset", type=int, default=1000, help="paper: test rows per stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/iwae-paper")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    paper = a.schedule == "paper"
    keys = (a.models or ("vae" if paper else "vae,iwae5,iwae50,dreg50")).split(",")
    unknown = sorted(set(keys) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    if paper and not 1 <= a.stages <= PAPER_STAGES:
        p.error(f"--stages must be in [1, {PAPER_STAGES}], got {a.stages}")
    if a.resume and not paper:
        p.error("--resume applies to --schedule paper")
    nll_subset = a.nll_subset if a.nll_subset is not None else (0 if paper else 1000)
    data = load_dataset(a.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in keys:
        if paper:
            rows.append(
                run_paper(
                    key,
                    data,
                    out,
                    stages=a.stages,
                    seed=a.seed,
                    nll_k=a.nll_k,
                    nll_subset=nll_subset,
                    curve_subset=a.curve_subset,
                    resume=a.resume,
                    progress=a.progress,
                )
            )
        else:
            rows.append(run_one(key, data, a.epochs, out, a.seed, a.nll_k, nll_subset, a.progress))
        write_json(out / "results.json", rows)
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
    for r in rows:
        for c in r.get("curve", []):
            print(
                f"{r['model']} stage {c['stage']} epoch {c['epoch']} lr {c['lr']:.2g}: test NLL "
                f"{c['test_nll']:.2f} ± {c['sem']:.2f} (n={c['n']})"
            )
    if paper and not math.isnan(rows[0]["test_nll"]):
        print("published, one-layer VAE: 88.71 nats")


if __name__ == "__main__":
    main()
