"""Gradient signal-to-noise ratio of the IWAE estimators against K.

Rainforth et al. (2018), "Tighter variational bounds are not necessarily better":
the SNR of the plain IWAE gradient for the inference network falls like 1/sqrt(K),
while that of the generative network rises; Tucker et al. (2019) show that DReG
reverses the fall for the inference network.

Usage::

    python -m lvmcore.experiments.snr [--data digits] [--ks 1,3,10,30,100]
        [--draws 200] [--train-steps 300] [--out snr.png]

A model is first trained briefly with plain IWAE (K=5) so the statistics describe a
model that has started learning, then the gradient of one fixed minibatch is drawn
``--draws`` times per estimator and K. Prints a table and writes a plot.
"""

import argparse
import os

import numpy as np

from ..checkpoint import write_atomic
from ..data import load_dataset
from ..diagnostics import gradient_statistics
from ..models import ESTIMATORS, IWAE
from ..optim import Adam
from .common import write_json


def snr_table(x_train, ks, draws, train_steps, batch=10, seed=0, latent=8, hidden=(64,)):
    """Mean SNR of encoder and decoder gradients per estimator and K.

    Returns a list of dicts (estimator, k, encoder_snr, decoder_snr, encoder_variance).
    """
    rng = np.random.default_rng(seed)
    base = IWAE(x_train.shape[1], latent, hidden, k=5, seed=seed, dtype=np.float64)
    base.init_output_bias(x_train)
    opt = Adam(base.parameters(), base.gradients(), lr=3e-3)
    for _ in range(train_steps):
        idx = rng.integers(0, x_train.shape[0], 100)
        base.loss_and_grads(x_train[idx], rng, validate=False)
        opt.step()
    xb = x_train[:batch]
    rows = []
    for estimator in ESTIMATORS:
        for k in ks:
            m = IWAE.from_config({**base.config(), "k": k, "estimator": estimator})
            m.load_parameters(base.parameters())
            st = gradient_statistics(m, xb, np.random.default_rng([seed, k]), n_draws=draws)
            rows.append(
                dict(
                    estimator=estimator,
                    k=k,
                    encoder_snr=st["encoder"]["mean_snr"],
                    decoder_snr=st["decoder"]["mean_snr"],
                    encoder_variance=st["encoder"]["mean_variance"],
                )
            )
    return rows


def plot_snr(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for part, ax in zip(("encoder", "decoder"), axes):
        for est in ESTIMATORS:
            r = [row for row in rows if row["estimator"] == est]
            ax.loglog(
                [row["k"] for row in r], [row[f"{part}_snr"] for row in r], "o-", label=est.upper()
            )
        ax.set_xlabel("K")
        ax.set_ylabel("mean SNR")
        ax.set_title(f"{'inference' if part == 'encoder' else 'generative'} network")
        ax.legend()
    fig.tight_layout()
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format=fmt))
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lvmcore.experiments.snr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default="digits")
    p.add_argument("--ks", default="1,3,10,30,100")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="snr.png")
    a = p.parse_args(argv)
    data = load_dataset(a.data)
    ks = [int(k) for k in a.ks.split(",")]
    rows = snr_table(data.train.astype(np.float64), ks, a.draws, a.train_steps, seed=a.seed)
    print(f"{'estimator':<10}{'K':>6}{'encoder SNR':>14}{'decoder SNR':>14}")
    for r in rows:
        print(f"{r['estimator']:<10}{r['k']:>6}{r['encoder_snr']:>14.4f}{r['decoder_snr']:>14.4f}")
    plot_snr(rows, a.out)
    write_json(a.out.rsplit(".", 1)[0] + ".json", rows)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
