"""What the experiment scripts share: a timed fit, then a timed evaluation on the test split,
and their result files written whole."""

import json
import time

from ..evaluate import evaluate
from ..train import fit, json_safe, write_text_atomic


def write_json(path, obj, indent=1):
    """``obj`` as strict JSON (non-finite floats as null) to ``path``, whole or not at all."""
    return write_text_atomic(
        path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"
    )


def timed_evaluate(model, data, *, k, seed, subset=0):
    """``lvmcore.evaluate.evaluate`` on ``data.test`` (K = ``k`` importance samples, its NLL on
    a seeded subset of ``subset`` rows, 0: all); returns (its dict, seconds)."""
    t0 = time.perf_counter()
    ev = evaluate(model, data.test, k=k, seed=seed, subset=subset)
    return ev, time.perf_counter() - t0


def fit_and_evaluate(
    model,
    data,
    *,
    epochs,
    seed,
    nll_k,
    nll_subset=0,
    out_dir=None,
    progress=False,
    batch_size=100,
    lr=1e-3,
    **fit_kw,
):
    """Fit ``model`` on ``data`` for ``epochs`` (``lvmcore.train.fit``; into a fresh run folder
    ``out_dir`` when given, overwriting it) and evaluate it on the test split.

    Returns
    -------
    history : list of dict
        ``fit``'s per-epoch metrics.
    ev : dict
        :func:`timed_evaluate`'s evaluation (K = ``nll_k``, ``nll_subset`` rows).
    train_seconds, eval_seconds : float
    """
    t0 = time.perf_counter()
    history = fit(
        model,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        out_dir=out_dir,
        overwrite=out_dir is not None,
        progress=progress,
        **fit_kw,
    )
    train_seconds = time.perf_counter() - t0
    ev, eval_seconds = timed_evaluate(model, data, k=nll_k, seed=seed, subset=nll_subset)
    return history, ev, train_seconds, eval_seconds
