"""Evaluation: the one chunked K-sample log-likelihood, and the report of ``lvmcore eval``.

:func:`log_likelihood` is the importance-sampled estimate of log p(x) for every model that has
importance weights (``model.has_log_likelihood``); :meth:`lvmcore.models.Model.log_likelihood`
calls it. :func:`evaluate` builds the report that ``lvmcore eval`` prints and writes into
``eval.json``, and that the experiment scripts under :mod:`lvmcore.experiments` tabulate.

Randomness
----------
Every draw of an evaluation comes from a generator keyed by the evaluation seed, so a caller can
replay any part of it on its own (the tag is last and never zero: ``SeedSequence`` pads its
entropy with zeros):

    ``default_rng([seed, 0, 0, 5])``   the noise of the bound (``model.bound``)
    ``default_rng([seed, 0, 0, 6])``   the noise of the ELBO (``model.elbo``)
    ``default_rng([seed, 7])``         the NLL subset: ``sort(choice(N, subset, replace=False))``
    ``default_rng([seed, 0, 0, 8])``   the noise of the K-sample NLL (``log_likelihood``)

The training loop's keys (:mod:`lvmcore.train`, streams 1 to 4) never collide with these.

Sharded evaluation
------------------
With a communicator of several processes (``comm=``, ``lvmcore eval --distributed``), the
K-sample log-likelihood's grid of (evaluation batch, K-chunk) cells is split across the
processes and the per-cell log-sum-exps are folded on rank 0 in the single-process order
(:func:`lvmcore.distributed.fold_logsumexp_grid`): the result is bit-identical for every number
of processes, one included. The rest of the report (bound, ELBO, diagnostics) is computed on
rank 0.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ._validation import check_param, to_numpy
from .backend import (
    engine_kernel_threads,
    engine_worker_count,
    engine_worker_threads,
    get_backend,
)
from .distributed import Communicator, SingleProcess, fold_logsumexp_grid

__all__ = [
    "log_likelihood",
    "evaluate",
    "evaluate_report",
    "standard_error",
    "BOUND_STREAM",
    "ELBO_STREAM",
    "SUBSET_STREAM",
    "NLL_STREAM",
]

BOUND_STREAM, ELBO_STREAM, SUBSET_STREAM, NLL_STREAM = 5, 6, 7, 8


def standard_error(values) -> float:
    """Standard error of the mean of a 1-D NumPy array (NaN for fewer than two values)."""
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def log_likelihood(
    model, x, rng, *, k=5000, batch_size=100, chunk_size=None, labels=None, comm=None
):
    r"""Importance-sampled estimate of log p(x) per row with k samples, shape (N,).

    .. math:: \log \frac1k \sum_{s=1}^k \frac{p(x, z_s)}{q(z_s|x)},\quad z_s \sim q(z|x)

    Parameters
    ----------
    model : lvmcore.models.Model
        With ``has_log_likelihood``: its ``log_weight_sampler`` gives the log-weights.
    x : ndarray of shape (N, D)
        On the model's device, in its dtype.
    rng : numpy.random.Generator
        Keys the noise; the model decides how (the VAE draws one seed per batch and indexes
        its Philox stream by sample, the base draws one seed per batch and keys each chunk's
        noise by (seed, chunk start)).
    k : int
        K, samples per row.
    batch_size : int
        Rows per evaluation batch.
    chunk_size : int, optional
        Samples per chunk; about ``model.eval_chunk_rows`` decoder rows when None.
    labels : ndarray of int, shape (N,), optional
        Class ids, for a model that ``needs_labels`` (then log p(x | y) is estimated).
    comm : lvmcore.distributed.Communicator, optional
        Split the (batch, chunk) grid across its processes (every process calls this with the
        same arguments); one process when None.

    Returns
    -------
    ndarray of shape (N,), the model's dtype
        On the model's device; None on the processes other than rank 0 of ``comm``.

    Notes
    -----
    The samples of each batch of rows are taken chunk by chunk; each chunk's log-weights
    (n, B) go through the fused log-mean-exp kernel (``importance_weights``), giving the cell
    :math:`c_{ij} = \mathrm{lme}_{ij} + \log n_j` in float64, and the cells of a batch are
    folded in chunk order, :math:`\ell \leftarrow \mathrm{logaddexp}(\ell, c_{ij})` from
    :math:`-\infty`, then :math:`\ell - \log k`. Peak memory depends on ``chunk_size`` and
    ``batch_size``, not on k (plus 8 bytes per row and chunk for the cells). The cells are
    independent (the samplers' noise is keyed by batch and chunk), so with ``comm`` each
    process computes a contiguous block of them and rank 0 folds them in the same order: the
    result is bit-identical for every number of processes.

    On the CPU, a model whose draws may run at once (``concurrent_draws``: the VAE and IWAE)
    has the chunks of each batch computed on :func:`lvmcore.backend.engine_worker_count`
    threads (``--threads``, ``LVMCORE_BLAS_THREADS``, else the BLAS library's count), each
    with one BLAS and one Numba thread: the cells and their fold do not depend on the count.
    The GEMMs then run on one BLAS thread each, so the result is that of a one-thread
    evaluation, which can differ from a one-process evaluation on several BLAS threads in the
    last bits (OpenBLAS's results depend on its thread count).
    """
    f = "log_likelihood"
    model._check_x(x, f)
    labels = model._check_labels(labels, x.shape[0], f)
    k = check_param(k, "k", f, kind="int", low=1, low_inclusive=True)
    batch_size = check_param(batch_size, "batch_size", f, kind="int", low=1, low_inclusive=True)
    if chunk_size is None:
        rows = max(1, min(batch_size, x.shape[0]))
        chunk_size = max(1, min(k, model.eval_chunk_rows // rows))
    chunk_size = check_param(chunk_size, "chunk_size", f, kind="int", low=1, low_inclusive=True)
    comm = _check_comm(comm, f)
    be = get_backend(x)
    xp = be.xp
    weights = be.kernel("importance_weights")
    n_batches, n_chunks = -(-x.shape[0] // batch_size), -(-k // chunk_size)
    samplers = _Samplers(model, x, rng, batch_size, labels)

    def cell(i, j):
        s = j * chunk_size
        n = min(chunk_size, k - s)
        lw = xp.ascontiguousarray(samplers(i)(s, n))  # (n, B)
        chunk_lme, _ = weights(lw, lw)  # (B,), in place
        return chunk_lme.astype(np.float64) + math.log(n)  # (B,)

    workers = engine_worker_count() if model.concurrent_draws and xp is np else 1
    with engine_kernel_threads(), engine_worker_threads(workers) as pool:
        lse = fold_logsumexp_grid(comm, n_batches, n_chunks, cell, executor=pool)  # on rank 0
    if lse is None:
        return None
    return xp.asarray((lse - math.log(k)).astype(model.dtype))


class _Samplers:
    """The log-weight samplers of the evaluation batches, made in batch order (each takes its
    draws from the one ``rng``), keeping the last: ``samplers(i)`` for non-decreasing i (the
    cells of one batch run together, batch after batch)."""

    def __init__(self, model, x, rng, batch_size, labels=None):
        self.model, self.x, self.rng, self.batch_size = model, x, rng, batch_size
        self.labels = labels
        self.xp = get_backend(x).xp
        self.made, self.draw = 0, None
        self.lock = threading.Lock()  # the chunks of one batch may ask for it at once

    def __call__(self, i):
        xp = self.xp
        with self.lock:
            while self.made <= i:  # batches before this process's first are made for their draws
                b = self.made * self.batch_size
                xb = xp.ascontiguousarray(self.x[b : b + self.batch_size])  # (B, D)
                given = {}
                if self.labels is not None:
                    given["labels"] = self.labels[b : b + self.batch_size]
                self.draw = self.model.log_weight_sampler(xb, self.rng, **given)
                self.made += 1
            return self.draw


def _check_comm(comm, f):
    if comm is None:
        return SingleProcess()
    if not isinstance(comm, Communicator):
        raise TypeError(
            f"{f}: expected comm to be a lvmcore.distributed.Communicator or None, got "
            f"{type(comm).__name__}. Make one with lvmcore.distributed.get_communicator()."
        )
    return comm


def evaluate(
    model,
    x,
    *,
    k=5000,
    seed=0,
    batch_size=1000,
    nll_batch_size=100,
    subset=0,
    labels=None,
    code_prior=None,
    comm=None,
) -> dict:
    """Evaluate a model on the rows of x: the report of ``lvmcore eval`` (its ``eval.json``).

    Parameters
    ----------
    model : lvmcore.models.Model
    x : ndarray of shape (N, D)
        Host or device data; cast once to the model's dtype and copied once to its device.
    k : int
        Importance samples of the log-likelihood; 0 skips it.
    seed : int
        Keys every draw (module docstring).
    batch_size : int
        Rows per chunk of the bound, the ELBO and the model's own report.
    nll_batch_size : int
        Rows per batch of the K-sample log-likelihood.
    subset : int
        Estimate the log-likelihood on this many rows drawn at random (0, or N or more: all).
    labels : ndarray of int, shape (N,), optional
        The rows' class ids, for a model that ``needs_labels`` (and only for one).
    code_prior : lvmcore.nn.CodePrior, optional
        A learned prior over the codes of a VQ-VAE: adds the bound log p(x|z_q(x)) +
        log p_prior(codes(x)) and the prior's bits per code (:func:`lvmcore.vq_prior.
        prior_report`).
    comm : lvmcore.distributed.Communicator, optional
        Shard the K-sample log-likelihood across its processes (module docstring); every
        process calls this with the same arguments and data.

    Returns
    -------
    dict
        ``n``, ``bound_name``, ``bound`` and ``bound_sem`` (mean and standard error over the
        rows, nats), ``elbo``, ``elbo_sem``, ``seed``; for a Gaussian-latent model
        ``active_units``, ``latent_dim``, ``posterior_mean_variance`` and ``kl_per_dim``; the
        model's ``eval_report`` entries; with k > 0 and a log-likelihood ``nll``, ``nll_sem``,
        ``nll_k`` and ``nll_n``. None on the processes other than rank 0 of ``comm``.
    """
    return evaluate_report(
        model,
        x,
        k=k,
        seed=seed,
        batch_size=batch_size,
        nll_batch_size=nll_batch_size,
        subset=subset,
        labels=labels,
        code_prior=code_prior,
        comm=comm,
    )[0]


def evaluate_report(
    model,
    x,
    *,
    k=5000,
    seed=0,
    batch_size=1000,
    nll_batch_size=100,
    subset=0,
    split="test",
    labels=None,
    code_prior=None,
    comm=None,
) -> tuple[dict | None, list]:
    """:func:`evaluate`, and the lines ``lvmcore eval`` prints (each naming ``split``).

    Returns
    -------
    result : dict
        As :func:`evaluate` (None on the processes other than rank 0 of ``comm``).
    lines : list of str
        Empty on the processes other than rank 0.
    """
    f = "evaluate"
    comm = _check_comm(comm, f)
    k = check_param(k, "k", f, kind="int", low=0, low_inclusive=True)
    seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
    batch_size = check_param(batch_size, "batch_size", f, kind="int", low=1, low_inclusive=True)
    nll_batch_size = check_param(
        nll_batch_size, "nll_batch_size", f, kind="int", low=1, low_inclusive=True
    )
    subset = check_param(subset, "subset", f, kind="int", low=0, low_inclusive=True)
    if x.dtype != model.dtype:
        x = x.astype(model.dtype)
    x = model.xp.asarray(x)  # the one copy to the model's device
    if isinstance(labels, np.ndarray) and model.xp is not np:
        labels = model.xp.asarray(labels)  # the labels' one copy, with x's
    labels = model._check_labels(labels, x.shape[0], f)
    given = {} if labels is None else {"labels": labels}
    if not comm.is_root:  # the other processes take part in the K-sample log-likelihood only
        if k > 0 and model.has_log_likelihood:
            _nll_rows(model, x, k, seed, nll_batch_size, subset, comm, labels)
        return None, []

    # The bound the model trains: the ELBO for a VAE, the K-sample bound for an IWAE.
    bound = to_numpy(
        model.bound(
            x, np.random.default_rng([seed, 0, 0, BOUND_STREAM]), batch_size=batch_size, **given
        ),
        np.float64,
    )  # (N,)
    elbo = to_numpy(
        model.elbo(
            x, np.random.default_rng([seed, 0, 0, ELBO_STREAM]), batch_size=batch_size, **given
        ),
        np.float64,
    )  # (N,)
    n = int(bound.shape[0])
    name = model.bound_name
    result = dict(
        n=n,
        bound_name=name,
        bound=float(bound.mean()),
        bound_sem=standard_error(bound),
        elbo=float(elbo.mean()),
        elbo_sem=standard_error(elbo),
        seed=seed,
    )
    if model.has_gaussian_latents:
        from .diagnostics import active_units, kl_per_dimension

        n_active, unit_var = active_units(model, x)
        kl_dims = kl_per_dimension(model, x)
        result.update(
            active_units=n_active,
            latent_dim=int(unit_var.size),
            posterior_mean_variance=unit_var.tolist(),
            kl_per_dim=kl_dims.tolist(),
        )
    lines = [f"{split} ELBO {result['elbo']:.3f} +- {result['elbo_sem']:.3f} nats (n={n})"]
    if name != "ELBO":
        lines.append(f"{split} {name} {result['bound']:.3f} +- {result['bound_sem']:.3f}")
    info, extra = model.eval_report(x, batch_size=batch_size, **given)
    result.update(info)
    lines.extend(f"{split} {line}" for line in extra)
    if code_prior is not None:
        from .vq_prior import prior_report

        info, extra = prior_report(model, code_prior, x, batch_size=batch_size)
        result.update(info)
        lines.extend(f"{split} {line}" for line in extra)
    if k > 0 and not model.has_log_likelihood:
        lines.append(
            f"no K-sample NLL: {model.config().get('model', type(model).__name__)} has no "
            f"importance-sampled log-likelihood"
        )
    elif k > 0:
        ll = to_numpy(
            _nll_rows(model, x, k, seed, nll_batch_size, subset, comm, labels), np.float64
        )
        result.update(
            nll=float(-ll.mean()), nll_sem=standard_error(ll), nll_k=k, nll_n=int(ll.size)
        )
        lines.append(
            f"{split} NLL (K={k}, n={ll.size}) {result['nll']:.3f} +- {result['nll_sem']:.3f} nats"
        )
    if model.has_gaussian_latents:
        lines.append(
            f"active units {n_active} of {unit_var.size}; KL per dimension (nats): "
            + " ".join(f"{v:.2f}" for v in kl_dims)
        )
    return result, lines


def _nll_rows(model, x, k, seed, nll_batch_size, subset, comm, labels=None):
    """The K-sample log-likelihood of the report's rows (a seeded subset of x, or all of it);
    collective over ``comm``, the result on rank 0 (None elsewhere)."""
    n = x.shape[0]
    xs = x
    if subset and subset < n:
        pick = np.sort(
            np.random.default_rng([seed, SUBSET_STREAM]).choice(n, subset, replace=False)
        )
        xs = x[model.xp.asarray(pick)]
        if labels is not None:
            labels = labels[model.xp.asarray(pick)]
    rng = np.random.default_rng([seed, 0, 0, NLL_STREAM])
    given = {} if labels is None else {"labels": labels}
    if comm.size == 1:
        return model.log_likelihood(xs, rng, k=k, batch_size=nll_batch_size, **given)
    return model.log_likelihood(xs, rng, k=k, batch_size=nll_batch_size, comm=comm, **given)
