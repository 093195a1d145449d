"""The training loop: minibatch optimisation with checkpoints, metrics and exact resumption.

Randomness. Nothing here reads or sets global random state. Every draw comes from a fresh
``np.random.default_rng([seed, epoch, step, stream])`` keyed by counters, so any step can be
replayed on its own and a resumed run continues bit for bit as an uninterrupted one:

    stream 1  noise of the step ``step`` (0-based within the epoch) of ``epoch`` (1-based)
    stream 2  validation noise, ``[seed, 0, 0, 2]``: the same every epoch, so the validation
              curve moves only with the parameters (common random numbers)
    stream 3  the shuffle of ``epoch``, ``[seed, epoch, 0, 3]``
    stream 4  the samples drawn for ``samples.png``, ``[seed, 0, 0, 4]``

The stream tag is last and never zero because ``SeedSequence`` pads its entropy with zeros:
``[s, e]`` and ``[s, e, 0]`` seed the same generator.

Files written into ``out_dir``:

    checkpoint.npz    model, optimizer and training state after the last finished epoch
                      (see :mod:`lvmcore.checkpoint`), replaced atomically each epoch
    metrics.jsonl     one JSON record per epoch (the same records ``fit`` returns; a
                      non-finite number is written as null), replaced atomically each epoch
    .lvmcore.lock     while ``fit`` runs: the pid and host of the process writing the folder
    samples.png, reconstructions.png, bounds.png    at the end (:mod:`lvmcore.plots`)
    code_usage.png    at the end, for models with discrete codes (VQ-VAE: the model's
                      ``write_extra_pictures``)

Steps. ``fit`` reads as its steps: ``_prepare_run`` (check the data, ``_make_optimizer``, start
a fresh run folder or load the checkpoint to resume), then per epoch ``_train_epoch`` (each step
``_step_gradients`` computes the loss and gradients, ``_apply_update`` refuses a non-finite one
or steps the optimizer), ``_validate`` and ``_checkpoint_epoch``, and at the end
``write_pictures``.

Data-parallel runs (``comm=``, ``lvmcore train --distributed`` under ``mpiexec -n P``): every
process holds the whole data set and runs the same loop. In ``_step_gradients`` each takes its
rows of the global batch (``lvmcore.distributed.shard_rows``: contiguous, uneven when P does
not divide B, as ``numpy.array_split``) and, through the model contract's seams, the matching
rows of the global batch's noise (``_step_noise``) and the whole batch's rows of every batch
statistic (``_batch_rows``); its gradients, those of its rows' mean, enter one in-place
all-reduce of the flat gradient buffer with weight rows / B, and the loss and statistics are
reduced the same way, so ``_apply_update`` sees the same numbers on every process and the
unchanged optimizer step keeps the parameters equal (the single-process run's to float
rounding, whatever P). A process without rows (B < P, the short last batch of an epoch) runs
one stand-in row with weight 0. Rank 0 alone writes the run folder and decides what depends on
it (an earlier run, the checkpoint to resume), sharing the outcome; the data are checksummed at
the start and the parameters after every epoch; the validation bound is computed on rank 0.

Every file of the folder is written whole or not at all: through a temporary file beside it
(``lvmcore.checkpoint.write_atomic``) and ``os.replace``. ``metrics.jsonl`` is rewritten from
the history each epoch rather than appended to: a few kilobytes per epoch, and the file is then
always a prefix of the checkpoint's history, never a torn or interleaved line. Temporary files
that a killed run left behind (its own name pattern, a process no longer running) are removed
when a run starts or resumes in the folder.

One writer per folder: ``fit`` creates the lock file ``.lvmcore.lock`` with ``O_CREAT |
O_EXCL`` before touching anything and removes it when it returns or fails, so a second run
into the same folder fails at once instead of interleaving its files with the first. A lock
left by a process that no longer runs on this host is taken over (with a message on stderr); a
lock of a live process, or of another host, is an error naming the process.

The model is used through the contract of :mod:`lvmcore.models.base` only.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from ._validation import check_array, check_binary, check_param, get_xp, to_numpy
from .checkpoint import load_checkpoint, save_checkpoint, warn_runtime_differences, write_atomic
from .distributed import (
    BatchShard,
    Communicator,
    FlatGradients,
    SingleProcess,
    check_data,
    check_parameters,
    shard_rows,
)
from .exceptions import InvalidParameterError, TrainingDivergedError
from .models.base import Model
from .optim import SGD, Adam

__all__ = [
    "fit",
    "kl_warmup_weight",
    "step_rng",
    "write_pictures",
    "write_text_atomic",
    "json_safe",
    "CHECKPOINT",
    "METRICS",
    "LOCK",
    "RUN_FILES",
]

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
PICTURES = ("samples.png", "reconstructions.png", "bounds.png", "code_usage.png")
RUN_FILES = (CHECKPOINT, METRICS, "eval.json") + PICTURES
LOCK = ".lvmcore.lock"
# lvmcore.checkpoint.create_temp's names: .<file>.<pid>.<8 hex digits>.tmp
_TEMP_NAME = re.compile(r"\.(?P<file>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")

_NOISE, _VALID, _SHUFFLE, _SAMPLES = 1, 2, 3, 4
# Hyper-parameters that fix the data order, the noise and the optimizer state layout: a resumed
# run must keep them. lr, clip_norm, adam_eps and momentum may change (e.g. after a divergence).
_FIXED_ON_RESUME = ("batch_size", "seed", "optimizer", "kl_warmup_epochs")


def step_rng(seed, epoch, step):
    """The generator of one training step's noise: ``default_rng([seed, epoch, step, 1])``.

    ``epoch`` counts from 1, ``step`` from 0 within the epoch.
    """
    return np.random.default_rng([seed, epoch, step, _NOISE])


def kl_warmup_weight(step, beta, warmup_steps):
    """The KL weight of global step ``step`` (counted from 1) under linear warm-up.

    Parameters
    ----------
    step : int
        1 for the first optimizer step of the run, and so on across epochs.
    beta : float
        The weight reached at the end of the warm-up (the model's ``beta``).
    warmup_steps : int
        Length of the warm-up; 0 disables it.

    Returns
    -------
    float
        :math:`\\beta \\min(1, t / T)`: ``beta / T`` at the first step, ``beta`` from step T on.
    """
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup_steps)


def fit(
    model,
    dataset,
    *,
    epochs,
    batch_size=100,
    lr=1e-3,
    optimizer="adam",
    adam_eps=1e-8,
    momentum=0.0,
    clip_norm=None,
    seed=0,
    kl_warmup_epochs=0,
    out_dir=None,
    resume=False,
    overwrite=False,
    progress=True,
    eval_batch_size=1000,
    data_source=None,
    comm=None,
):
    """Train ``model`` on ``dataset.train`` and track its bound on ``dataset.valid``.

    Parameters
    ----------
    model : lvmcore.models.Model
        Used through the model contract (:mod:`lvmcore.models.base`): ``loss_and_grads``,
        ``bound``, ``default_kl_weight``, ``init_output_bias``, and for the pictures
        ``sample``, ``reconstruct`` (when declared) and ``write_extra_pictures``. The run happens
        where the parameters live: call ``model.to(cupy)`` first to train on a GPU.
    dataset : lvmcore.data.Dataset
        ``train`` and ``valid`` arrays of shape (N, D); ``shape`` (image shape) for pictures;
        for a model that ``needs_labels``, ``train_labels`` and ``valid_labels`` (class ids,
        shuffled with their rows and passed to the model as ``labels=``).
        Arrays whose dtype differs from the model's are cast once, up front, and host arrays
        are copied once to the model's device (device arrays for a CPU model are a
        TypeError).
    epochs : int
        Total number of epochs of the run; with ``resume`` the count includes finished ones.
    batch_size : int
        Rows per step; the last step of an epoch takes the remainder.
    lr : float
        Learning rate.
    optimizer : {"adam", "sgd"}
    adam_eps : float
        Adam's epsilon (the IWAE paper uses 1e-4).
    momentum : float in [0, 1)
        SGD momentum; must stay 0 with Adam.
    clip_norm : float, optional
        Clip the global gradient norm to this value.
    seed : int
        Keys every random draw of the run (see the module docstring). The model's own
        initialisation is seeded by the model.
    kl_warmup_epochs : int
        Epochs over which the KL weight rises linearly from 0 to ``model.default_kl_weight``
        (the VAE's ``beta``), per step.
    out_dir : str or os.PathLike, optional
        Run folder for the checkpoint, metrics and pictures; nothing is written when None.
    resume : bool
        Continue the run in ``out_dir`` from its checkpoint: parameters, optimizer state,
        epoch counter and history are loaded; training goes on at the next epoch.
    overwrite : bool
        Start afresh in an ``out_dir`` that holds an earlier run, deleting its files.
    progress : bool
        Show a tqdm progress bar (on stderr) with the running training bound.
    eval_batch_size : int
        Rows per chunk when evaluating the validation bound.
    data_source : str, optional
        How to load the data again (``"digits"``, ``"mnist"`` or a path), recorded in the
        checkpoint for ``lvmcore eval``; defaults to ``dataset.source`` (what ``load_dataset``
        was given), else ``dataset.name`` for the embedded digits.
    comm : lvmcore.distributed.Communicator, optional
        Train data-parallel over its processes (module docstring): every process calls ``fit``
        with the same model, data and arguments. One process when None. The model's gradient
        arrays are rebound to views of one flat buffer (``FlatGradients.bind``).

    Returns
    -------
    list of dict
        One record per epoch of the whole run: ``epoch``, ``step`` (global), ``train_bound``
        (mean over the epoch's examples of the bound each step saw, before its update),
        ``valid_bound`` (None without validation data), ``kl_weight`` (of the epoch's last
        step), ``train_loss``, ``train_<stat>`` for each of the model's step statistics, and
        ``seconds`` (wall time of the epoch, the only entry that is not reproducible).

    Raises
    ------
    InvalidParameterError
        For a hyper-parameter out of range (the message names it).
    ValueError, TypeError
        For data the model cannot take, or a checkpoint that does not match on ``resume``.
    FileExistsError
        When ``out_dir`` holds an earlier run and neither ``resume`` nor ``overwrite`` is set,
        or another process is training into ``out_dir`` (its lock file names it).
    NotADirectoryError
        When ``out_dir`` is a file.
    TrainingDivergedError
        When a step's loss or gradient is NaN or infinite. That step is not applied, and the
        checkpoint in ``out_dir`` stays the one of the last finished epoch (named in the
        message and in the exception's ``checkpoint`` attribute).

    With ``comm``, each of these is raised on every process alike
    (``lvmcore.distributed.raised_on_every_rank``), as is a ValueError when the processes'
    data or parameters differ (checksums at the start and after every epoch).

    Notes
    -----
    A fresh run (not ``resume``) first calls ``model.init_output_bias(dataset.train)``. Each
    epoch shuffles the training set once into a preallocated buffer, so a step's batch is a
    view and the loop allocates nothing beyond what the model does. The data are validated
    once here, and ``loss_and_grads`` is called with ``validate=False``.
    """
    f = "fit"
    if comm is None:
        comm = SingleProcess()
    elif not isinstance(comm, Communicator):
        raise TypeError(
            f"{f}: expected comm to be a lvmcore.distributed.Communicator or None, got "
            f"{type(comm).__name__}. Make one with lvmcore.distributed.get_communicator()."
        )
    hyper = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        adam_eps=adam_eps,
        momentum=momentum,
        clip_norm=clip_norm,
        seed=seed,
        kl_warmup_epochs=kl_warmup_epochs,
        eval_batch_size=eval_batch_size,
    )
    # checked on every process, so that a bad value stops every one of them alike
    hyper = comm.run_everywhere(_check_arguments, f, hyper, resume, out_dir)
    # one writer per run folder: rank 0 takes the lock once the data are checked (so a run
    # refused for its data leaves no trace), and every rank fails alike without it
    locks = []
    try:
        run = _prepare_run(
            model, dataset, hyper, out_dir, resume, overwrite, data_source, comm, f, locks
        )
        from tqdm.auto import tqdm

        with tqdm(
            total=hyper["epochs"] * run.steps_per_epoch,
            initial=run.step,
            disable=not progress or not comm.is_root,
            unit="step",
            dynamic_ncols=True,
            leave=True,
        ) as bar:
            for epoch in range(run.start_epoch, hyper["epochs"] + 1):
                t0 = time.perf_counter()
                record = _train_epoch(run, epoch, bar)
                _validate(run, epoch, record)
                record["seconds"] = time.perf_counter() - t0
                run.history.append(record)
                _checkpoint_epoch(run, epoch)

        if run.out is not None and comm.is_root:
            write_pictures(
                model,
                run.valid,
                run.shape,
                run.history,
                run.out,
                hyper["seed"],
                labels=run.valid_labels,
            )
    finally:
        if comm.is_root:
            for lock in locks:
                _unlock_run(lock)
    return [dict(r) for r in run.history]


# ----------------------------------------------------------------------------------------------
# The steps of a run
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one call of ``fit`` carries from step to step."""

    model: Model
    opt: object  # lvmcore.optim.Adam or SGD over model.parameters()
    hyper: dict  # the validated hyper-parameters, stored in the checkpoint
    train: object  # (N, D) on the model's device, in its dtype
    valid: object  # (N_valid, D)
    xbuf: object  # (N, D): the shuffled training set of the current epoch
    data_info: dict  # stored in the checkpoint: name, source, shape, sizes
    shape: tuple | None  # image shape, for pictures
    steps_per_epoch: int
    warmup_steps: int  # global steps of the KL warm-up (0: none)
    out: Path | None  # the run folder
    history: list  # one record per finished epoch
    start_epoch: int  # the first epoch this call trains (1-based)
    step: int  # global steps taken
    last_good: Path | None  # the checkpoint of the last finished epoch, if any
    comm: Communicator = field(default_factory=SingleProcess)
    flat: FlatGradients | None = None  # the gradients' one buffer, in a data-parallel run
    grad_list: list = field(default_factory=list)
    valid_note: str = ""  # progress-bar suffix
    # class ids of the rows, for a model that needs labels (None otherwise): (N,), (N_valid,),
    # and the shuffled training labels of the current epoch (N,)
    train_labels: object = None
    valid_labels: object = None
    ybuf: object = None

    @property
    def ckpt_path(self):
        return None if self.out is None else self.out / CHECKPOINT


def _check_arguments(f, hyper, resume, out_dir):
    """Validate fit's hyper-parameters and that a resumed run names its folder."""
    hyper = _check_hyper(f, hyper)
    if resume and out_dir is None:
        raise ValueError(
            f"{f}: expected out_dir with resume=True, got out_dir=None. Pass the "
            f"folder of the run to continue."
        )
    return hyper


def _check_hyper(f, hyper):
    """Validate fit's hyper-parameters (a dict, updated in place); returns them (as the
    checkpoint stores them)."""
    pos_int = dict(kind="int", low=1, low_inclusive=True)
    hyper["epochs"] = check_param(hyper["epochs"], "epochs", f, **pos_int)
    hyper["batch_size"] = check_param(hyper["batch_size"], "batch_size", f, **pos_int)
    hyper["lr"] = check_param(hyper["lr"], "lr", f, low=0)
    hyper["optimizer"] = check_param(
        hyper["optimizer"], "optimizer", f, kind="choice", choices=("adam", "sgd")
    )
    hyper["adam_eps"] = check_param(hyper["adam_eps"], "adam_eps", f, low=0)
    hyper["momentum"] = check_param(
        hyper["momentum"], "momentum", f, low=0, low_inclusive=True, high=1, high_inclusive=False
    )
    if hyper["optimizer"] == "adam" and hyper["momentum"] != 0:
        raise InvalidParameterError(
            f"The 'momentum' parameter of {f} applies to optimizer='sgd' only. Got "
            f"momentum={hyper['momentum']!r} with optimizer='adam' instead."
        )
    if hyper["clip_norm"] is not None:
        hyper["clip_norm"] = check_param(hyper["clip_norm"], "clip_norm", f, low=0)
    hyper["seed"] = check_param(hyper["seed"], "seed", f, kind="int", low=0, low_inclusive=True)
    hyper["kl_warmup_epochs"] = check_param(
        hyper["kl_warmup_epochs"], "kl_warmup_epochs", f, kind="int", low=0, low_inclusive=True
    )
    hyper["eval_batch_size"] = check_param(
        hyper["eval_batch_size"], "eval_batch_size", f, **pos_int
    )
    return hyper


def _make_optimizer(model, hyper):
    """The optimizer over the model's live parameters and gradients."""
    params, grads = model.parameters(), model.gradients()
    if hyper["optimizer"] == "adam":
        return Adam(
            params, grads, lr=hyper["lr"], eps=hyper["adam_eps"], clip_norm=hyper["clip_norm"]
        )
    return SGD(
        params, grads, lr=hyper["lr"], momentum=hyper["momentum"], clip_norm=hyper["clip_norm"]
    )


def _prepare_run(model, dataset, hyper, out_dir, resume, overwrite, data_source, comm, f, locks):
    """Check the data, lock the run folder (appending the lock to ``locks``), make the
    optimizer, and start a fresh run folder or load the checkpoint of the run to resume (parameters, optimizer state, history). In a data-parallel run the
    data are checked on every process and compared by checksum, the gradients bound to one
    flat buffer, and the run folder handled on rank 0, which shares the outcome."""
    xp = get_xp(*model.parameters().values())
    train, valid = comm.run_everywhere(_check_dataset, model, dataset, xp, f)
    # any communicator but SingleProcess takes the data-parallel path, even of one process
    # (mpiexec -n 1 on one GPU: the NCCL all-reduce at world size 1)
    distributed = not isinstance(comm, SingleProcess)
    if distributed:
        check_data(comm, {"train": train, "valid": valid})
    if out_dir is not None:  # the caller releases the lock
        locks.append(comm.run_on_root(_lock_run, Path(os.fspath(out_dir)), resume, f))
    n = train.shape[0]
    steps_per_epoch = math.ceil(n / hyper["batch_size"])
    # the views of one buffer are the gradients the optimizer holds: bind before making it
    flat = FlatGradients.bind(model) if distributed else None
    opt = _make_optimizer(model, hyper)
    name = getattr(dataset, "name", None)
    shape = getattr(dataset, "shape", None)
    data_info = dict(
        name=name,
        source=data_source
        if data_source is not None
        else getattr(dataset, "source", None) or (name if name == "digits" else None),
        shape=None if shape is None else [int(s) for s in shape],
        n_train=int(n),
        n_valid=int(valid.shape[0]),
        data_dim=int(train.shape[1]),
    )
    out = None if out_dir is None else Path(os.fspath(out_dir))
    run = _Run(
        model=model,
        opt=opt,
        hyper=hyper,
        train=train,
        valid=valid,
        xbuf=None,
        data_info=data_info,
        shape=shape,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=hyper["kl_warmup_epochs"] * steps_per_epoch,
        out=out,
        history=[],
        start_epoch=1,
        step=0,
        last_good=None,
        comm=comm,
        flat=flat,
    )
    if resume:
        run.history, run.start_epoch, run.step, arrays = comm.run_on_root(
            _resume_on_root, run, distributed, f
        )
        if arrays is not None and not comm.is_root:
            model.load_parameters(arrays[0])
            opt.load_state_dict(arrays[1])
        run.last_good = run.ckpt_path
    else:
        if out is not None:
            comm.run_on_root(_start_fresh, out, overwrite, f)
        model.init_output_bias(train)
    if distributed:
        check_parameters(comm, _run_state(run), when="at the start")
    run.grad_list = list(model.gradients().values())
    run.xbuf = xp.empty_like(train)  # (N, D), reused per epoch
    run.train_labels, run.valid_labels = _check_dataset_labels(model, dataset, train, valid, xp, f)
    if run.train_labels is not None:
        run.ybuf = xp.empty_like(run.train_labels)
    return run


def _resume_on_root(run, distributed, f):
    """Rank 0's part of a resume: load the checkpoint into the model and optimizer and rewrite
    the metrics; returns (history, next epoch, step, arrays), ``arrays`` the parameters and
    optimizer state (host copies) for the other processes in a data-parallel run."""
    history, start_epoch, step = _resume(
        run.ckpt_path, run.model, run.opt, run.hyper, run.data_info, f
    )
    _write_metrics(run.out, history)
    arrays = None
    if distributed:
        arrays = (
            {k: to_numpy(v) for k, v in run.model.parameters().items()},
            {k: to_numpy(v) for k, v in run.opt.state_dict().items()},
        )
    return history, start_epoch, step, arrays


def _run_state(run):
    """The arrays every process must hold alike: parameters (state arrays included) and the
    optimizer's state."""
    state = dict(run.model.parameters())
    state.update({f"optim/{k}": v for k, v in run.opt.state_dict().items()})
    return state


def _train_epoch(run, epoch, bar):
    """One pass over the shuffled training set; returns the epoch's record (training part).

    Each epoch shuffles the training set once into a preallocated buffer, so a step's batch is
    a view and the loop allocates nothing beyond what the model does.
    """
    hyper, model = run.hyper, run.model
    seed, batch_size, n = hyper["seed"], hyper["batch_size"], run.train.shape[0]
    xp = get_xp(run.train)
    perm = np.random.default_rng([seed, epoch, 0, _SHUFFLE]).permutation(n)
    xp.take(run.train, xp.asarray(perm), axis=0, out=run.xbuf)
    if run.ybuf is not None:
        xp.take(run.train_labels, xp.asarray(perm), axis=0, out=run.ybuf)
    bar.set_description(f"epoch {epoch}/{hyper['epochs']}", refresh=False)
    beta = float(model.default_kl_weight)
    sums, loss_sum, seen, w = {}, 0.0, 0, None
    for s in range(run.steps_per_epoch):
        xb = run.xbuf[s * batch_size : (s + 1) * batch_size]  # (B, D) view
        yb = None if run.ybuf is None else run.ybuf[s * batch_size : (s + 1) * batch_size]
        run.step += 1
        w = None if run.warmup_steps == 0 else kl_warmup_weight(run.step, beta, run.warmup_steps)
        loss, stats = _step_gradients(run, xb, step_rng(seed, epoch, s), w, yb)
        _apply_update(run, loss, epoch, s)
        m = xb.shape[0]
        seen += m
        loss_sum += m * float(loss)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + m * float(v)
        bar.update(1)
        bar.set_postfix_str(f"bound {_bound_of(sums) / seen:.3f}{run.valid_note}", refresh=False)
    record = dict(
        epoch=epoch,
        step=run.step,
        train_bound=_bound_of(sums) / seen,
        valid_bound=None,
        kl_weight=beta if w is None else w,
        train_loss=loss_sum / seen,
    )
    record.update({f"train_{k}": v / seen for k, v in sums.items()})
    return record


def _step_gradients(run, xb, rng, kl_weight, labels=None):
    """Compute one step's loss and gradients into ``model.gradients()``; returns (loss, stats).

    The data were validated once by ``fit``, so the model does not check them again. In a
    data-parallel run this process computes the gradients of its rows' mean (its shard of the
    batch ``xb``), and they are all-reduced with weight rows / B into the gradients of the
    batch mean; the loss and the statistics are reduced alike (:func:`_reduce_step`).
    """
    model = run.model
    given = {} if labels is None else {"labels": labels}
    if run.flat is None:
        return model.loss_and_grads(xb, rng, kl_weight=kl_weight, validate=False, **given)
    comm, B = run.comm, xb.shape[0]
    shard = BatchShard(comm, B, *shard_rows(B, comm.rank, comm.size))
    if labels is not None:
        given = {"labels": labels[shard.local_slice]}
    with model._data_parallel(shard):
        loss, stats = model.loss_and_grads(
            xb[shard.local_slice], rng, kl_weight=kl_weight, validate=False, **given
        )
    if not shard.rows:
        model.zero_grad()  # the stand-in row's gradients have weight 0: exactly nothing
    run.flat.allreduce(comm, scale=shard.share)
    return _reduce_step(comm, shard, loss, stats)


def _reduce_step(comm, shard, loss, stats):
    """The batch mean of a step's loss and statistics from every process's mean over its rows:
    sum_r (rows_r / B) value_r, folded in rank order, so every process gets the same bits."""
    parts = comm.allgather((shard.rows, float(loss), {k: float(v) for k, v in stats.items()}))
    total, sums = 0.0, dict.fromkeys(stats, 0.0)
    for rows, part_loss, part_stats in parts:
        if rows:  # a stand-in row counts for nothing, even a non-finite one
            w = rows / shard.batch_size
            total += w * part_loss
            for k, v in part_stats.items():
                sums[k] += w * v
    return total, sums


def _apply_update(run, loss, epoch, s):
    """Refuse a non-finite loss or gradient (the update is then not applied), else step the
    optimizer. In a data-parallel run loss and gradients are the all-reduced ones, so every
    process takes the same decision."""
    ok, norm = _finite_loss_and_grads(loss, run.grad_list)
    if not ok:
        what = (
            f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm} (loss {loss:.6g})"
        )
        with run.comm.raising_together():
            raise _diverged("fit", what, epoch, s + 1, run.steps_per_epoch, run.step, run.last_good)
    run.opt.step()


def _validate(run, epoch, record):
    """The mean bound on the validation split, with the same noise every epoch
    (``[seed, 0, 0, 2]``: common random numbers), into ``record["valid_bound"]``. Computed
    on rank 0 and shared in a data-parallel run."""
    if not run.valid.shape[0]:
        return

    def valid_bound():
        rng = np.random.default_rng([run.hyper["seed"], 0, 0, _VALID])
        given = {} if run.valid_labels is None else {"labels": run.valid_labels}
        bs = run.hyper["eval_batch_size"]
        return float(run.model.bound(run.valid, rng, batch_size=bs, **given).mean())

    vb = valid_bound() if run.comm.size == 1 else run.comm.run_on_root(valid_bound)
    if not math.isfinite(vb):
        with run.comm.raising_together():
            raise _diverged(
                "fit",
                f"validation bound {vb}",
                epoch,
                run.steps_per_epoch,
                run.steps_per_epoch,
                run.step,
                run.last_good,
            )
    record["valid_bound"] = vb
    run.valid_note = f", valid {vb:.3f}"


def _checkpoint_epoch(run, epoch):
    """Replace the checkpoint and then the metrics (with the epoch's record), atomically (rank
    0 of a data-parallel run, after comparing every process's parameters)."""
    if run.flat is not None:
        check_parameters(run.comm, _run_state(run), when=f"after epoch {epoch}")
    if run.out is None:
        return
    if not run.comm.is_root:
        run.last_good = run.ckpt_path
        return
    state = dict(
        epoch=epoch,
        step=run.step,
        seed=run.hyper["seed"],
        hyper=run.hyper,
        dataset=run.data_info,
        history=run.history,
        lvmcore_version=__version__,
    )
    save_checkpoint(run.ckpt_path, run.model, run.opt, state)
    run.last_good = run.ckpt_path
    _write_metrics(run.out, run.history)


def _bound_of(sums):
    # The bound the model trains: its own "bound" statistic when it reports one (IWAE), else
    # the ELBO.
    return sums.get("bound", sums.get("elbo", math.nan))


def _finite_loss_and_grads(loss, grad_list):
    """(ok, global gradient norm; NaN when the loss already failed). One dot per array and one
    device-to-host read in all; an exact element check only when the sum of squares
    overflows."""
    if not math.isfinite(loss):
        return False, math.nan
    xp = get_xp(*grad_list)
    # ravel() is a view: the gradients are contiguous
    sq = float(xp.stack([xp.dot(g.ravel(), g.ravel()) for g in grad_list]).astype(np.float64).sum())
    if math.isfinite(sq):
        return True, math.sqrt(sq)
    # The float32 sum of squares overflows for finite gradients above ~1e19: look closer.
    if all(bool(xp.isfinite(g).all()) for g in grad_list):
        return True, math.sqrt(
            sum(
                float(xp.dot(g.ravel().astype(np.float64), g.ravel().astype(np.float64)))
                for g in grad_list
            )
        )
    return False, math.nan if any(bool(xp.isnan(g).any()) for g in grad_list) else math.inf


def _diverged(f, what, epoch, step_in_epoch, steps_per_epoch, step, last_good):
    if last_good is not None:
        where = (
            f"The checkpoint of the last finished epoch, {last_good}, is untouched; "
            f"continue from it with resume=True (lvmcore train --resume) and a lower lr or "
            f"a clip_norm."
        )
    else:
        where = (
            "No checkpoint was written yet (no finished epoch, or out_dir=None). "
            "Lower lr or set clip_norm."
        )
    return TrainingDivergedError(
        f"{f}: expected a finite loss and gradients, got {what} at epoch {epoch}, step "
        f"{step_in_epoch} of {steps_per_epoch} (global step {step}); the update was not "
        f"applied. {where}",
        checkpoint=None if last_good is None else str(last_good),
    )


def _check_dataset(model, dataset, xp, f):
    """Validate the splits once, cast them to the model's dtype and copy host data to the
    model's device ``xp`` (once, for the whole run); returns (train, valid)."""
    if not (hasattr(dataset, "train") and hasattr(dataset, "valid")):
        raise TypeError(
            f"{f}: expected dataset to have 'train' and 'valid' arrays (an "
            f"lvmcore.data.Dataset), got {type(dataset).__name__}. Load one with "
            f"lvmcore.data.load_dataset('digits')."
        )
    D, dtype = model.data_dim, model.dtype
    out = []
    for split in ("train", "valid"):
        x = getattr(dataset, split)
        check_array(x, f"dataset.{split}", f, ndim=2, shape=(None, D))
        if get_xp(x) is not xp:
            if xp is np:
                raise TypeError(
                    f"{f}: expected dataset.{split} on the model's device (a "
                    f"numpy.ndarray), got a cupy.ndarray. Move the model with "
                    f"model.to(cupy) or the data with cupy.asnumpy(...)."
                )
            x = xp.asarray(x)
        if x.dtype != dtype:
            x = x.astype(dtype)
        if model.likelihood == "bernoulli":
            check_binary(x, f"dataset.{split}", f)
        out.append(x)
    if out[0].shape[0] == 0:
        raise ValueError(
            f"{f}: expected dataset.train to hold at least one row, got shape {out[0].shape}."
        )
    return out


def _check_dataset_labels(model, dataset, train, valid, xp, f):
    """The class ids of the training and validation rows, on the model's device, for a model
    that needs labels: checked once here (present, one per row, in range); (None, None) for
    any other model."""
    if not model.needs_labels:
        return None, None
    out = []
    for split, x in (("train", train), ("valid", valid)):
        y = getattr(dataset, f"{split}_labels", None)
        if y is None:
            raise ValueError(
                f"{f}: expected dataset.{split}_labels (class ids) for the "
                f"{model.name or type(model).__name__} model, which is conditioned on labels, "
                f"got None. Train it on the digits or on an .npz with train_labels, "
                f"valid_labels and test_labels."
            )
        if isinstance(y, np.ndarray) and xp is not np:
            y = xp.asarray(y)
        out.append(model._check_labels(y, x.shape[0], f, name=f"dataset.{split}_labels"))
    return out


def _start_fresh(out, overwrite, f):
    if (out / CHECKPOINT).exists():
        if not overwrite:
            raise FileExistsError(
                f"{f}: expected out_dir to hold no earlier run, got {out / CHECKPOINT}. Pass "
                f"resume=True (--resume) to continue it, overwrite=True (--overwrite) to replace "
                f"it, or choose another out_dir."
            )
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    write_text_atomic(out / METRICS, "")


def _resume(path, model, opt, hyper, data_info, f):
    """Load a checkpoint into model and optimizer; returns (history, next epoch, step)."""
    config, params, optim, state = load_checkpoint(path)
    warn_runtime_differences(state, "resume", like=next(iter(model.parameters().values())))
    mine = json.loads(json.dumps(model.config()))
    if config != mine:
        diff = sorted(k for k in set(config) | set(mine) if config.get(k) != mine.get(k))
        shown = ", ".join(f"{k} {config.get(k)!r} vs {mine.get(k)!r}" for k in diff)
        raise ValueError(
            f"{f}: expected the model to match the one in {path}, got different "
            f"{shown} (checkpoint vs model). Rebuild it with "
            f"lvmcore.checkpoint.load_model or build_model(config)."
        )
    saved = state.get("hyper", {})
    for k in _FIXED_ON_RESUME:
        if k in saved and saved[k] != hyper[k]:
            raise ValueError(
                f"{f}: expected {k}={saved[k]!r} as in the run being resumed "
                f"({path}), got {hyper[k]!r}. Keep it, or start a new run."
            )
    old = state.get("dataset", {})
    for k in ("n_train", "data_dim"):
        if k in old and old[k] != data_info[k]:
            raise ValueError(
                f"{f}: expected the data of the run being resumed ({path}), with "
                f"{k}={old[k]}, got {k}={data_info[k]}. Pass the same data set."
            )
    model.load_parameters(params)
    try:
        opt.load_state_dict(optim)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"{f}: expected {path} to hold {hyper['optimizer']} state for every "
            f"parameter, got: {err!r}."
        ) from None
    return list(state.get("history", [])), int(state["epoch"]) + 1, int(state["step"])


def write_text_atomic(path, text):
    """Write ``text`` (UTF-8) to ``path`` whole or not at all: into a temporary file beside
    it, flushed and fsynced, then moved over ``path`` with ``os.replace``. On any error (a full
    disk, an interrupt) the temporary file is removed and ``path`` keeps its old content."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def json_safe(value):
    """``value`` with every non-finite float (NaN, +-Inf) replaced by None, recursively
    through dicts, lists and tuples: what ``json.dumps(..., allow_nan=False)`` accepts (RFC 8259
    has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _write_metrics(out, history):
    """Rewrite ``metrics.jsonl`` from the whole history, atomically (module docstring)."""
    write_text_atomic(
        out / METRICS, "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in history)
    )


# ----------------------------------------------------------------------------------------------
# One writer per run folder
# ----------------------------------------------------------------------------------------------


def _make_run_folder(out, f):
    """Create the run folder (and its parents); a clear error when a file is in the way."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"{f}: expected out_dir to be a folder (or a path where one can be created), got "
            f"the file {out}. Choose another out_dir."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            f"{f}: expected to create the run folder {out}, got {err.strerror or err} "
            f"({err.filename}). Choose an out_dir under a writable folder."
        ) from None


def _pid_alive(pid):
    """Whether process ``pid`` runs on this host (True when that cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists under another user
        return True
    return True


def _read_lock(path):
    """(text, pid, host) of a lock file; pid and host are None when unreadable or not yet
    written (a process between creating and filling it)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None, None
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return text, None, None
    return text, int(parts[0]), parts[1]


def _take_over(path, text):
    """Remove the stale lock ``path`` if it still holds ``text``: moved aside first (one
    process wins the rename), put back if another process locked the folder meanwhile."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process took it over first
    if _read_lock(aside)[0] != text:
        try:
            os.link(aside, path)  # a live lock moved by mistake: restore it
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _lock_run(out, resume, f):
    """Lock the run folder ``out`` for this process (module docstring); returns (path, text)
    for :func:`_unlock_run`. Creates the folder for a fresh run; then removes temporary files
    that killed runs left in it."""
    if resume and not out.is_dir():
        load_checkpoint(out / CHECKPOINT)  # its FileNotFoundError names the missing run
    _make_run_folder(out, f)
    path = out / LOCK
    host = socket.gethostname()
    mine = f"{os.getpid()} {host}\n"
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            text, pid, where = _read_lock(path)
            if text is None:
                continue  # removed meanwhile: try again
            if pid is None or where != host or _pid_alive(pid):
                held = (
                    f"process {pid} on {where}"
                    if pid is not None
                    else "a process that is still writing it"
                )
                raise FileExistsError(
                    f"{f}: expected no other run writing into {out}, got its lock {path} held "
                    f"by {held}. Wait for that run to end or choose another out_dir; if no "
                    f"such run exists any more, delete {path}."
                ) from None
            _take_over(path, text)
            print(
                f"{f}: took over the lock {path} of process {pid} on {host}, which no longer "
                f"runs (it was killed before it could remove its lock)",
                file=sys.stderr,
            )
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(mine)
            _remove_stale_temps(out)
        except BaseException:  # an interrupt or a full disk: leave no half-written lock
            path.unlink(missing_ok=True)
            raise
        return path, mine
    raise FileExistsError(
        f"{f}: expected to lock {out}, got {path} re-created by other processes five times. "
        f"Start one run per out_dir."
    )


def _unlock_run(lock):
    """Remove the lock file if it is still this process's."""
    if lock is None:
        return
    path, mine = lock
    if _read_lock(path)[0] == mine:
        path.unlink(missing_ok=True)


def _remove_stale_temps(out):
    """Remove the temporary files of the run folder's own files (``RUN_FILES``) whose writer
    no longer runs: what a run killed while writing (SIGKILL, a power cut) leaves behind."""
    removed = []
    for p in out.iterdir():
        m = _TEMP_NAME.fullmatch(p.name)
        if m and m["file"] in RUN_FILES and not _pid_alive(int(m["pid"])) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def write_pictures(model, x, shape, history, out, seed=0, n_samples=64, n_rec=12, labels=None):
    """Write ``bounds.png``, the model's extra pictures (``write_extra_pictures``: the VQ-VAE's
    ``code_usage.png``, its codebook usage on ``x``), ``samples.png`` and
    ``reconstructions.png`` (of the first rows of ``x``) into ``out``; the image pictures need
    ``shape`` and the model's declared ``has_sample`` / ``has_reconstruct``. ``labels`` are the
    class ids of the rows of ``x``, for a model that needs labels."""
    from . import plots

    out = Path(os.fspath(out))
    given = {} if labels is None else {"labels": labels}
    written = [plots.plot_bounds(history, out / "bounds.png")]
    written.extend(model.write_extra_pictures(x, out, **given))
    if shape is None:
        return written
    if model.has_sample:
        rng = np.random.default_rng([seed, 0, 0, _SAMPLES])
        written.append(plots.plot_samples(model.sample(rng, n_samples), shape, out / "samples.png"))
    if model.has_reconstruct and x.shape[0]:
        xr = x[:n_rec]
        given = {} if labels is None else {"labels": labels[:n_rec]}
        written.append(
            plots.plot_reconstructions(
                xr, model.reconstruct(xr, **given), shape, out / "reconstructions.png"
            )
        )
    return written
