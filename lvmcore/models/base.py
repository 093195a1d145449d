"""The model contract: what every lvmcore model provides, and the plumbing they share.

A model is a class derived from :class:`Model`, registered by name in
:data:`lvmcore.models.MODELS` (:func:`lvmcore.models.register_model`). The trainer
(:func:`lvmcore.train.fit`), the evaluation routine (:func:`lvmcore.evaluate.evaluate`), the
checkpoints and the command line use a model through this contract only; they never probe it
with ``hasattr``. A new model implements the methods marked *required* below, sets the class
attributes, declares its optional capabilities, and gets the rest from the base.

Shape letters: B batch, D data, H hidden, Z latent, K importance samples, L ELBO samples per
data point, S code slots (VQ-VAE only), M codebook size, E code dimension, N categorical
latents, C categories.

Identity (class attributes)
---------------------------
``name``
    The registry key, e.g. ``"vae"``: ``config()["model"]`` and ``lvmcore train --model NAME``.
``help``
    One line for ``lvmcore train --help``.
``bound_name``
    What :meth:`bound` computes, for reports (``"ELBO"``, ``"IWAE bound (K=50)"``, ...).
``likelihood``
    The decoder's likelihood; ``"bernoulli"`` models take binary data only.

Configuration
-------------
``config() -> dict`` (required)
    The constructor arguments, JSON-able, with ``"model": name``; written into checkpoints.
``from_config(config)``
    Rebuild the model from ``config()`` (base: ``cls(**config)`` without the ``"model"`` key).

Parameters, gradients and the device (shared plumbing, written once here)
------------------------------------------------------------------------
``modules()`` (required) maps a name to an :class:`lvmcore.nn.Module`; arrays that belong to no
module live in the model's own ``params``/``grads`` dicts (the VQ-VAE's codebook).
``parameters()`` and ``gradients()`` are flat dicts with the same keys (``"encoder.W0"``,
``"codebook"``, ...) of the live arrays; ``backward`` *adds* into the gradients, ``zero_grad()``
clears them, ``load_parameters(arrays)`` copies arrays in (checking names and shapes),
``to(xp)`` moves everything to NumPy or CuPy, ``xp`` is the array module, ``dtype`` the
floating dtype and ``data_dim`` the width D of a data row.

State that is not a parameter
-----------------------------
``state_arrays() -> dict`` names the arrays a training step updates by a rule of its own rather
than by the optimizer: the VQ-VAE's EMA statistics and code ages, the categorical VAE's moving
baselines and step counter. ``load_state_arrays(arrays)`` copies them in. They are also entries
of ``parameters()`` with gradients that stay exactly zero, so every optimizer leaves them as
they are (Adam with m = v = 0 moves by 0), checkpoints store them beside the parameters
(``param/<name>``, the one path every model's arrays take) and a resumed run continues bit for
bit. Base: no state.

Computation with explicit noise
-------------------------------
``draw_noise(rng, batch_size, n_samples=None) -> noise`` (required)
    The noise of one step, drawn from the explicit generator through :mod:`lvmcore.noise`;
    ``None`` for a model without noise (VQ-VAE).
``noise_rows(noise, start, stop)``
    The noise of rows [start, stop) of a batch. The batch axis is ``noise_batch_axis`` (1 for
    every model here: (L, B, Z) for the VAE, (K, B, Z) for the IWAE, (K, B, N, C) for the
    categorical VAE), so a data-parallel process can draw the global batch's noise and take
    its rows; ``forward(x[a:b], noise_rows(noise, a, b))`` then gives the rows a:b of every
    per-row quantity of ``forward(x, noise)`` (a test proves it for every model).
``forward(x, noise, **kw) -> (loss, cache)`` (required)
    The loss for fixed noise: deterministic, nothing stored on ``self``.
``backward(cache, dloss=1.0)`` (required)
    Accumulate the gradient of ``dloss * loss`` into ``gradients()``, walking the forward in
    reverse.
``loss_and_grads(x, rng, *, kl_weight=None, validate=True) -> (loss, stats)``
    One training evaluation: zero the gradients, draw the step's noise, forward, backward, then
    update the non-parameter state. ``stats`` holds means over the batch (``bound`` or
    ``elbo``, and the model's own). The base implements it through two hooks:
    ``_step_forward(x, noise, kl_weight)`` and ``_step_end(loss, cache, rng) -> stats``.
``default_kl_weight``
    The KL weight ``forward`` uses when ``kl_weight`` is None: the end point of the trainer's
    KL warm-up (the VAE's ``beta``; 1 elsewhere).

Statistics that span the batch
------------------------------
Some quantities of a step are functions of the whole batch, not of one row: the batch-mean KL
per dimension that decides which dimensions free bits holds at the floor, the VQ-VAE's EMA
cluster sizes and sums, its code counts (dead codes) and the rows that re-seed dead codes, the
categorical VAE's moving baselines (the mean and variance of the learning signal). Each is
computed from the rows returned by :meth:`_batch_rows`, the one reduction point: in one process
it returns its argument; in a data-parallel step (``_data_parallel(shard)``, set by the trainer)
it gathers every process's rows in batch order (``Communicator.allgather_rows``, a
variable-length all-gather), so each process computes the statistic of the whole batch exactly
as one process would and the state stays the same on every process. Per-row terms of the loss
and their gradients stay local: a process's loss and gradient are those of its own rows' mean,
to be weighted by its share of the rows when the gradients are summed. ``_step_noise`` is the
other seam of a data-parallel step: it draws the global batch's noise and keeps this process's
rows (``noise_rows``), so the noise does not depend on the process count. A decision that
depends on the batch (VQ-VAE: is the encoder output finite?) is taken on gathered rows too, so
that every process takes the same branch and calls the same collectives.

Bounds and evaluation
---------------------
``bound(x, rng, batch_size) -> (N,)`` (required)
    The per-example bound the model trains (``bound_name``).
``elbo(x, rng, batch_size) -> (N,)`` (required)
    The per-example ELBO.
``log_likelihood(x, rng, k=5000, batch_size=100, chunk_size=None) -> (N,)``
    The importance-sampled log p(x) with k samples, through the one chunked routine
    :func:`lvmcore.evaluate.log_likelihood`. A model offers it by setting
    ``has_log_likelihood = True`` and implementing ``log_weights(x, noise) -> (K, B)``
    (log w = log p(x|z) + log p(z) - log q(z|x)); ``log_weight_sampler`` may be overridden
    with a faster path (the VAE's fused sampling kernel); ``eval_chunk_rows`` sets the decoder
    rows of a chunk. Otherwise ``log_likelihood`` raises NotImplementedError. A sampler's
    ``draw(start, n)`` depends only on the sampler's creation and (start, n), never on the
    chunks drawn before, so the (batch, chunk) cells of an evaluation can be computed in any
    order and on different processes (sharded evaluation).

Optional capabilities, declared (a flag or a base method with a neutral default)
-------------------------------------------------------------------------------
``init_output_bias(x_train)``
    Data-dependent initialisation, called once by ``fit`` for a fresh run (base: no-op).
``sample(rng, n) -> (n, D)`` and ``reconstruct(x) -> (B, D)``
    Decoder means, for pictures; declared by ``has_sample`` and ``has_reconstruct``.
``encode(x) -> (mu, logvar)``
    Gaussian posterior moments, each (B, Z), with ``latent_dim``: declared by
    ``has_gaussian_latents``; the evaluation then reports active units and the KL per
    dimension (:mod:`lvmcore.diagnostics`).
``eval_report(x, batch_size) -> (dict, lines)``
    What ``lvmcore eval`` adds for this model (base: nothing). A model whose posterior is not
    one diagonal Gaussian (a hierarchy, a flow) reports there what ``has_gaussian_latents``
    gives the others: ``active_units`` and, per stochastic layer, ``active_units_per_layer``,
    ``latent_dims`` and ``kl_per_layer``.
``write_extra_pictures(x, out) -> list of paths``
    Pictures beyond samples, reconstructions and bounds (base: none; VQ-VAE: code usage).

Labels (a model conditioned on a class)
---------------------------------------
``needs_labels`` (class attribute, False by default) declares that the model is conditioned on
a class id per row (the class-conditional VAE), with ``n_classes`` classes. Such a model takes
them as an explicit ``labels=`` argument, an integer array of shape (B,) in [0, n_classes), in
every method that takes data: ``forward``, ``loss_and_grads``, ``bound``, ``elbo``,
``log_likelihood`` (and ``log_weight_sampler``), ``reconstruct``, ``eval_report``,
``write_extra_pictures``, ``encode``, ``decode``, and ``sample`` (optional there: one class
after another when None). The trainer and the evaluation read the flag and pass the data set's
labels (``lvmcore.data.Dataset.<split>_labels``) to such a model, and never to another one;
``_check_labels`` is the one check (missing, wrong length, out of range, not integers). The
base ``loss_and_grads`` hands them on as ``_step_forward(x, noise, kl_weight, labels=...)``.

Latent-space tools
------------------
``has_latent_space`` declares ``encode(x) -> (mu, logvar)``, ``decode(z) -> (N, D)`` (decoder
means) and ``latent_dim``, each with ``labels=`` for a model that needs labels: what
``lvmcore explore`` and :mod:`lvmcore.latent` use. It defaults to ``has_gaussian_latents``.

Command-line flags
------------------
``flags`` is the model's table of :class:`Flag` (its own ``lvmcore train`` flags, in one place).
``add_arguments(group)`` adds them with ``default=None`` (so ``--resume`` can tell a flag given
from one left out), ``flag_defaults()`` maps their destinations to the defaults, and
``from_args(args, data_dim)`` (required for a model the CLI builds) builds the model from the
parsed flags (the shared ones, ``--latent``, ``--hidden``, ``--activation``, ``--likelihood``,
``--dtype``, ``--seed``, and its own), refusing with ``_refuse_flags`` those that do not apply.

A variant serves a registered name when flags of that name ask for it
(:func:`lvmcore.models.register_variant`; ``--model iwae --stochastic-layers 2``): its
``selectors`` name those flags (they are config keys too) and ``selects(settings)`` says
whether a config dict, or the parsed flags as a dict, choose it (base: never).

Arrays and devices
------------------
A model's arrays all live on one device, the one of its parameters: NumPy arrays on the CPU,
CuPy arrays on a GPU. ``to(xp)`` moves them (an explicit copy, before an optimizer is made over
them); every method then takes and returns arrays of that module, and an array of the other
library is a TypeError, never a silent copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_binary,
    check_param,
    check_rng,
    check_same_device,
    get_xp,
)
from .._validation import to_numpy as _to_numpy
from ..backend import engine_kernel_threads

__all__ = ["Model", "Flag", "add_flags"]


class Flag(NamedTuple):
    """One ``lvmcore train`` flag of a model.

    ``option`` is the flag (``"--k"``), ``dest`` the attribute of the parsed arguments,
    ``default`` the value used when it is left out (shown in ``--help``; None: none shown),
    ``help`` one line, and ``kwargs`` the rest of ``argparse.add_argument``'s arguments
    (``type``, ``choices``, ``metavar``, ``action``).
    """

    option: str
    dest: str
    default: Any
    help: str
    kwargs: dict = {}


def add_flags(group, flags) -> None:
    """Add each :class:`Flag` to an argparse parser or group with ``default=None`` (so that a
    flag given can be told from one left out) and its default shown in the help."""
    for f in flags:
        d = f.default
        if d is None or d is False:
            shown = ""
        elif isinstance(d, tuple):
            shown = f" (default: {','.join(str(v) for v in d)})"
        else:
            shown = f" (default: {d})"
        group.add_argument(f.option, dest=f.dest, default=None, help=f.help + shown, **f.kwargs)


def copy_arrays(obj):
    """A copy of a forward cache for another backward pass over it: every array in it (in
    tuples, named tuples, lists and dicts, at any depth) copied; any other object (a backend,
    a noise key, a number) shared."""
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("cupy"):
        return obj.copy()
    if isinstance(obj, tuple):
        items = [copy_arrays(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [copy_arrays(v) for v in obj]
    if isinstance(obj, dict):
        return {k: copy_arrays(v) for k, v in obj.items()}
    return obj


class Model:
    """Base of the models: the contract in the module docstring, and its shared plumbing.

    Subclasses call ``super().__init__()`` first, then build their modules; they define
    ``modules()`` and the required methods, and set the class attributes.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    bound_name: ClassVar[str] = "ELBO"
    likelihood: str = "bernoulli"
    flags: ClassVar[tuple[Flag, ...]] = ()
    noise_batch_axis: ClassVar[int] = 1
    has_log_likelihood: ClassVar[bool] = False
    has_gaussian_latents: ClassVar[bool] = False
    has_sample: ClassVar[bool] = False
    has_reconstruct: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    n_classes: int | None = None
    selectors: ClassVar[tuple[str, ...]] = ()
    # Decoder rows per chunk of the K-sample evaluation (lvmcore.evaluate.log_likelihood):
    # about 2**13 keeps the GEMMs large and the peak memory the same for every K above a few
    # hundred.
    eval_chunk_rows: ClassVar[int] = 1 << 13
    # Whether the draws of one log_weight_sampler may run on several threads at once (each
    # thread with its own buffers, nothing written to the model): then the K-sample
    # evaluation computes a batch's chunks side by side on the CPU. A model that overrides
    # log_weight_sampler, or what its draws call, decides again.
    concurrent_draws: ClassVar[bool] = False
    # This process's part of the global batch during a data-parallel step
    # (lvmcore.distributed.BatchShard, set by _data_parallel); None in one process.
    _shard: Any = None
    data_dim: int
    dtype: np.dtype

    def __init__(self) -> None:
        # Arrays that belong to no module (VQ-VAE: the codebook and its state), keyed
        # without a module prefix in parameters() and gradients().
        self.params: dict = {}
        self.grads: dict = {}

    # ------------------------------------------------------------------ configuration
    def config(self) -> dict:
        """The constructor arguments, JSON-serialisable, with ``"model": name``."""
        raise NotImplementedError(f"{type(self).__name__} does not define config().")

    @classmethod
    def from_config(cls, config: dict) -> Model:
        """Rebuild a model from ``config()`` (parameters are then loaded separately)."""
        config = dict(config)
        config.pop("model", None)
        return cls(**config)

    # ------------------------------------------------------------------ parameters
    def modules(self) -> dict:
        """Dict ``name -> lvmcore.nn.Module`` of the model's modules."""
        raise NotImplementedError(f"{type(self).__name__} does not define modules().")

    def parameters(self) -> dict:
        """Dict ``"<module>.<name>" -> array`` (and the model's own ``params`` unprefixed):
        the live parameters, state arrays included."""
        out = {f"{m}.{k}": v for m, mod in self.modules().items() for k, v in mod.params.items()}
        out.update(self.params)
        return out

    def gradients(self) -> dict:
        """Dict with the same keys as ``parameters()``: the accumulated gradients (those of the
        state arrays stay zero)."""
        out = {f"{m}.{k}": v for m, mod in self.modules().items() for k, v in mod.grads.items()}
        out.update(self.grads)
        return out

    def zero_grad(self) -> None:
        """Set every gradient to zero (``backward`` accumulates)."""
        for mod in self.modules().values():
            mod.zero_grad()
        for g in self.grads.values():
            g[...] = 0

    def _gradient_of(self, run) -> dict:
        """The gradients that ``run()`` accumulates, on their own (copies, by name): the
        accumulated ones are set aside, zeroed for the run and put back after, in place
        (optimizers hold the arrays)."""
        grads = self.gradients()
        saved = {name: g.copy() for name, g in grads.items()}
        self.zero_grad()
        try:
            run()
            return {name: g.copy() for name, g in grads.items()}
        finally:
            for name, g in grads.items():
                g[...] = saved[name]

    def load_parameters(self, arrays: dict) -> None:
        """Copy arrays (e.g. from a checkpoint) into the parameters and state arrays.

        Raises
        ------
        ValueError
            When a parameter is missing from ``arrays`` or has another shape.
        """
        _copy_into(self.parameters(), arrays, "load_parameters", "parameter")

    def state_arrays(self) -> dict:
        """Dict ``name -> array`` of the live non-parameter state (keys as in
        ``parameters()``); empty for a model without state."""
        return {}

    def load_state_arrays(self, arrays: dict) -> None:
        """Copy arrays into the non-parameter state, checking names and shapes."""
        _copy_into(self.state_arrays(), arrays, "load_state_arrays", "state array")

    @property
    def xp(self):
        """The array module of the parameters: ``numpy`` or ``cupy``."""
        return get_xp(self._like())

    def _like(self):
        """One parameter array: on the model's device, to dispatch noise and kernels by."""
        return next(iter(self.parameters().values()))

    def to(self, xp) -> Model:
        """Move every parameter, gradient and state array to the array module ``xp`` (``numpy``
        or ``cupy``, see ``lvmcore.backend.array_module``); returns the model. Optimizers hold
        the arrays they were made with: make them after the move."""
        if getattr(xp, "__name__", None) not in ("numpy", "cupy"):
            raise TypeError(
                f"{type(self).__name__}.to: expected xp to be the numpy or cupy "
                f"module, got {xp!r}. Pass lvmcore.backend.array_module('cuda')."
            )
        for mod in self.modules().values():
            mod.to(xp)
        asarray = xp.asarray if xp is not np else _to_numpy
        self.params = {k: asarray(v) for k, v in self.params.items()}
        self.grads = {k: asarray(v) for k, v in self.grads.items()}
        return self

    def _check_x(self, x, func: str):
        """Data ``x`` (B, D): the model's dtype, on its device, binary for a Bernoulli
        decoder."""
        check_array(x, "x", func, ndim=2, shape=(None, self.data_dim))
        check_same_device((x, self._like()), ("x", "the model's parameters"), func)
        if x.dtype != self.dtype:
            raise TypeError(
                f"{func}: expected x to have the model's dtype {self.dtype}, got "
                f"{x.dtype}. Cast it with x.astype(numpy.{self.dtype})."
            )
        if self.likelihood == "bernoulli":
            check_binary(x, "x", func)
        return x

    def _check_step(self, x, rng, kl_weight, func: str, *, validate=True, rng_optional=False):
        """The arguments of a training step: data ``x`` with at least one row (with
        ``validate``), the generator ``rng`` (None allowed with ``rng_optional``: a step that
        draws nothing) and ``kl_weight`` (None or a number >= 0)."""
        if validate:
            self._check_x(x, func)
            if x.shape[0] == 0:
                raise ValueError(
                    f"{func}: expected x to hold at least one row, got shape {tuple(x.shape)}. "
                    f"A training step averages over the batch; pass a non-empty batch."
                )
        if not (rng is None and rng_optional):
            check_rng(rng, func)
        if kl_weight is not None:
            check_param(kl_weight, "kl_weight", func, low=0, low_inclusive=True)

    def _check_eval(self, x, rng, batch_size, func: str, *, rng_optional=False) -> int:
        """The arguments of an evaluation method (``bound``, ``elbo``, ...): data ``x`` (zero
        rows allowed: the result is then empty), the generator ``rng`` (None allowed with
        ``rng_optional``: a deterministic method) and ``batch_size``, returned as an int >= 1."""
        self._check_x(x, func)
        if not (rng is None and rng_optional):
            check_rng(rng, func)
        return check_param(batch_size, "batch_size", func, kind="int", low=1, low_inclusive=True)

    def _check_sample(self, rng, n, func: str) -> int:
        """The arguments of ``sample``: a generator and a count n >= 0, returned as an int."""
        check_rng(rng, func)
        return check_param(n, "n", func, kind="int", low=0, low_inclusive=True)

    def _check_noise_size(self, batch_size, n_samples, func: str):
        """``draw_noise``'s sizes: batch_size >= 0 and n_samples None or >= 1."""
        batch_size = check_param(
            batch_size, "batch_size", func, kind="int", low=0, low_inclusive=True
        )
        if n_samples is not None:
            n_samples = check_param(
                n_samples, "n_samples", func, kind="int", low=1, low_inclusive=True
            )
        return batch_size, n_samples

    def _rows(self, parts, xp):
        """Concatenate per-chunk results (N,); an empty (0,) array of the model's dtype for
        no chunks (zero rows of data)."""
        return xp.concatenate(parts) if parts else xp.zeros(0, dtype=self.dtype)

    def _check_labels(self, labels, n_rows: int, func: str, name: str = "labels"):
        """Class ids (B,) for a model that needs labels (on its device, integers in
        [0, n_classes), one per row of x); None, and no labels given, for any other model.
        ``name`` is the argument's name in messages."""
        model = self.name or type(self).__name__
        if not self.needs_labels:
            if labels is not None:
                raise ValueError(
                    f"{func}: expected {name}=None ({model} is not conditioned on labels), "
                    f"got an array of shape {tuple(getattr(labels, 'shape', ()))}. Leave "
                    f"{name} out."
                )
            return None
        if labels is None:
            raise ValueError(
                f"{func}: expected {name}, one class id in [0, {self.n_classes}) per row of x "
                f"({n_rows}), got None. {model} is conditioned on labels: pass them, or data "
                f"with labels (the digits, or an .npz with train_labels, valid_labels and "
                f"test_labels)."
            )
        check_array(labels, name, func, dtype="int", ndim=1, finite=False)
        check_same_device((labels, self._like()), (name, "the model's parameters"), func)
        if labels.shape[0] != n_rows:
            raise ValueError(
                f"{func}: expected {name} to have one class id per row of x ({n_rows}), got "
                f"length {labels.shape[0]}."
            )
        bad = (labels < 0) | (labels >= self.n_classes)
        if bool(bad.any()):
            raise ValueError(
                f"{func}: expected {name} to lie in [0, {self.n_classes}) (the model's "
                f"n_classes), got {int(bad.sum())} outside, e.g. {int(labels[bad][0])}. Train "
                f"the model with n_classes above the largest class id."
            )
        return labels

    # ------------------------------------------------------------------ computation
    def draw_noise(self, rng: np.random.Generator, batch_size: int, n_samples: int | None = None):
        """The noise of one step for ``batch_size`` rows (None for a model without noise)."""
        raise NotImplementedError(f"{type(self).__name__} does not define draw_noise().")

    def noise_rows(self, noise, start: int, stop: int):
        """The noise of rows [start, stop) of a batch's ``noise`` (contiguous); None for None.

        The batch axis is ``noise_batch_axis``. A data-parallel process draws the global
        batch's noise and keeps its rows, so its noise does not depend on the process count.
        """
        if noise is None:
            return None
        f = f"{type(self).__name__}.noise_rows"
        axis = self.noise_batch_axis
        check_array(noise, "noise", f, dtype="any", finite=False)
        if noise.ndim <= axis:
            raise ValueError(
                f"{f}: expected noise with a batch axis {axis}, got shape {tuple(noise.shape)}."
            )
        B = noise.shape[axis]
        start = check_param(start, "start", f, kind="int", low=0, low_inclusive=True)
        stop = check_param(stop, "stop", f, kind="int", low=0, low_inclusive=True)
        if not start <= stop <= B:
            raise ValueError(
                f"{f}: expected 0 <= start <= stop <= {B} (the batch size of noise), got "
                f"start={start}, stop={stop}."
            )
        rows = noise[(slice(None),) * axis + (slice(start, stop),)]
        return get_xp(noise).ascontiguousarray(rows)

    def forward(self, x, noise, **kwargs):
        """The loss for fixed noise and the cache for :meth:`backward`."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward().")

    def backward(self, cache, dloss: float = 1.0) -> None:
        """Accumulate the gradient of ``dloss * loss`` into ``gradients()``."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward().")

    @property
    def default_kl_weight(self) -> float:
        """The KL weight ``forward`` uses when ``kl_weight`` is None (the end of a warm-up)."""
        return 1.0

    def loss_and_grads(
        self,
        x,
        rng: np.random.Generator,
        *,
        kl_weight: float | None = None,
        validate=True,
        labels=None,
    ) -> tuple[float, dict]:
        """One training evaluation: zero the gradients, draw the noise, forward, backward, and
        update the state that is not a parameter.

        Parameters
        ----------
        x : ndarray of shape (B, D)
        rng : numpy.random.Generator
            Keys the step's noise (and any other draw of the step).
        kl_weight : float, optional
            Weight of the KL term (the trainer's warm-up); ``default_kl_weight`` when None.
        validate : bool
            Check x and labels (the trainer validates its data once and passes False).
        labels : ndarray of int, shape (B,), optional
            Class ids, for a model that ``needs_labels`` (and only for one).

        Returns
        -------
        loss : float
        stats : dict
            Means over the batch: ``bound`` or ``elbo`` and the model's own statistics.
        """
        f = f"{type(self).__name__}.loss_and_grads"
        self._check_step(x, rng, kl_weight, f, validate=validate)
        if validate or (self.needs_labels and labels is None):
            self._check_labels(labels, x.shape[0], f)
        given = {} if labels is None else {"labels": labels}
        self.zero_grad()
        with engine_kernel_threads():
            noise = self._step_noise(rng, x.shape[0])
            loss, cache = self._step_forward(x, noise, kl_weight, **given)
            self.backward(cache)
        return loss, self._step_end(loss, cache, rng)

    def _step_noise(self, rng: np.random.Generator, batch_size: int):
        """The noise of this process's rows of a training step: ``draw_noise`` in one process;
        in a data-parallel step the global batch's noise, rows ``start:stop`` of the shard (one
        stand-in row for a process without rows)."""
        shard = self._shard
        if shard is None:
            return self.draw_noise(rng, batch_size)
        rows = shard.local_slice
        return self.noise_rows(self.draw_noise(rng, shard.batch_size), rows.start, rows.stop)

    def _step_forward(self, x, noise, kl_weight):
        """The forward of a training step (``loss_and_grads``); a model that needs labels
        takes them as the keyword ``labels``."""
        return self.forward(x, noise, kl_weight=kl_weight)

    def _step_end(self, loss: float, cache, rng: np.random.Generator) -> dict:
        """After the step's backward: update the non-parameter state; return the statistics."""
        raise NotImplementedError(f"{type(self).__name__} does not define _step_end().")

    def _batch_rows(self, array, axis: int = 0):
        """The whole batch's rows of a per-row ``array`` (batch along ``axis``): the one
        reduction point of the statistics that span the batch (module docstring). The identity
        in one process; in a data-parallel step every process's rows in batch order, the same
        on every process (a process without rows contributes none)."""
        shard = self._shard
        if shard is None:
            return array
        return shard.comm.allgather_rows(array, axis=axis, count=shard.rows)

    @contextlib.contextmanager
    def _data_parallel(self, shard) -> Iterator[None]:
        """Within the block, training steps are data-parallel over ``shard``
        (:class:`lvmcore.distributed.BatchShard`): ``_step_noise`` keeps this process's rows of
        the global batch's noise and ``_batch_rows`` gathers over ``shard.comm``."""
        self._shard = shard
        try:
            yield
        finally:
            del self._shard

    # ------------------------------------------------------------------ bounds
    def bound(self, x, rng: np.random.Generator, batch_size: int = 1000):
        """The per-example bound the model trains (``bound_name``), shape (N,)."""
        raise NotImplementedError(f"{type(self).__name__} does not define bound().")

    def elbo(self, x, rng: np.random.Generator, batch_size: int = 1000):
        """The per-example ELBO, shape (N,)."""
        raise NotImplementedError(f"{type(self).__name__} does not define elbo().")

    def log_weights(self, x, noise):
        """log w = log p(x|z) + log p(z) - log q(z|x) for fixed noise, shape (K, B)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no importance weights (has_log_likelihood is False)."
        )

    def log_weight_sampler(self, x, rng: np.random.Generator) -> Callable[[int, int], Any]:
        """For one evaluation batch x (B, D): ``draw(start, n) -> log w (n, B)`` of samples
        start, ..., start + n - 1 of every row.

        ``draw`` may be called for the chunks in any order, on any process: its result depends
        only on ``rng`` at the sampler's creation and on (start, n).

        Base: one seed per batch drawn from ``rng`` here, and for each chunk the noise of
        ``draw_noise(default_rng([seed, start]), B, n)`` through :meth:`log_weights`: the noise
        is keyed by (batch, chunk), so the estimate depends on the chunk size but not on the
        order or place the chunks are computed in. A model may override it with a path whose
        noise is indexed by sample, so that the estimate does not depend on the chunking either
        (the VAE's).
        """
        seed = int(rng.integers(0, 2**63))

        def draw(start, n):
            chunk_rng = np.random.default_rng([seed, start])
            return self.log_weights(x, self.draw_noise(chunk_rng, x.shape[0], n))

        return draw

    def log_likelihood(
        self,
        x,
        rng: np.random.Generator,
        k: int = 5000,
        batch_size: int = 100,
        chunk_size: int | None = None,
        comm=None,
        *,
        labels=None,
    ):
        r"""Importance-sampled estimate of log p(x) per row with k samples, shape (N,).

        :math:`\log \tfrac1k \sum_{s=1}^k p(x, z_s) / q(z_s|x)`, z_s ~ q(z|x), computed by
        :func:`lvmcore.evaluate.log_likelihood` chunk by chunk over k with a running
        log-sum-exp, so peak memory depends on ``chunk_size`` and ``batch_size`` but not on k.
        With a communicator ``comm`` of several processes the (batch, chunk) cells are shared
        among them and the result (bit-identical for every process count) is returned on rank
        0, None elsewhere. A model that needs labels estimates log p(x | y) with ``labels`` y
        (B,).

        Raises
        ------
        NotImplementedError
            For a model without importance weights (``has_log_likelihood`` False).
        """
        if not self.has_log_likelihood:
            raise NotImplementedError(
                f"{type(self).__name__}.log_likelihood: {self.name or type(self).__name__} has "
                f"no importance-sampled log-likelihood (has_log_likelihood is False); report "
                f"its bound() or elbo() instead."
            )
        from ..evaluate import log_likelihood

        check_rng(rng, f"{type(self).__name__}.log_likelihood")
        return log_likelihood(
            self,
            x,
            rng,
            k=k,
            batch_size=batch_size,
            chunk_size=chunk_size,
            labels=labels,
            comm=comm,
        )

    # ------------------------------------------------------------------ capabilities
    def init_output_bias(self, x_train) -> None:
        """Data-dependent initialisation before a fresh run (base: nothing)."""

    def _init_output_bias_to_data_mean(self, x_train, decoder) -> None:
        """Set the last bias of ``decoder`` to the data mean: the logit of the pixel means
        (Bernoulli; clipped to [1e-3, 1 - 1e-3] because a constant pixel has an infinite
        logit) or the mean itself (Gaussian), as in Burda et al. (2016)."""
        xp = get_xp(x_train)
        mean = x_train.mean(axis=0).astype(np.float64)
        if self.likelihood == "bernoulli":
            p = xp.clip(mean, 1e-3, 1 - 1e-3)
            mean = xp.log(p) - xp.log1p(-p)
        decoder.output_bias[...] = mean.astype(self.dtype)

    def sample(self, rng: np.random.Generator, n: int):
        """n samples from the model (decoder means), shape (n, D)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sample (has_sample is False).")

    def reconstruct(self, x):
        """Decoder means at the encoding of x, shape (B, D)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot reconstruct (has_reconstruct is False)."
        )

    def encode(self, x):
        """Gaussian posterior moments (mu, logvar), each (B, Z)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no Gaussian posterior moments "
            f"(has_gaussian_latents is False)."
        )

    @property
    def has_latent_space(self) -> bool:
        """``encode``, ``decode`` and ``latent_dim`` for the latent-space tools (module
        docstring); by default a model with Gaussian latents has them."""
        return self.has_gaussian_latents

    def decode(self, z):
        """Decoder means at latents z (N, Z), shape (N, D)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no decoder from a continuous latent "
            f"(has_latent_space is False)."
        )

    def eval_report(self, x, batch_size: int = 1000) -> tuple[dict, list]:
        """What ``lvmcore eval`` adds for this model: (JSON-able dict, printable lines)."""
        return {}, []

    def write_extra_pictures(self, x, out) -> list:
        """Write pictures beyond samples, reconstructions and bounds into the folder ``out``
        (from the data ``x``); returns their paths."""
        return []

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_arguments(cls, group) -> None:
        """Add the model's own ``lvmcore train`` flags (``flags``) to an argparse group, with
        ``default=None`` and the default in the help."""
        add_flags(group, cls.flags)

    @classmethod
    def flag_defaults(cls) -> dict:
        """Destination -> default of the model's own flags."""
        return {f.dest: f.default for f in cls.flags}

    @classmethod
    def selects(cls, settings: dict) -> bool:
        """Whether ``settings`` (a config, or the parsed flags as a dict) choose this class as a
        variant of its registered name (base: never)."""
        return False

    @classmethod
    def from_args(cls, args, data_dim: int) -> Model:
        """Build the model from parsed ``lvmcore train`` arguments (defaults filled in)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from the command line.")

    @classmethod
    def _refuse_flags(cls, args, dests, what: str | None = None) -> None:
        """Flags that do not apply are an error, never silently ignored: raise ValueError
        naming those of ``dests`` the user gave (``args.given``)."""
        given = [k for k in dests if k in args.given]
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(
                f"expected no {names} with --model {what or cls.name}: it does not apply to "
                f"that model."
            )


def _copy_into(targets: dict, arrays: dict, func: str, what: str) -> None:
    """Copy ``arrays[k]`` into every live array ``targets[k]``, checking names and shapes."""
    missing = sorted(set(targets) - set(arrays))
    if missing:
        raise ValueError(f"{func}: expected arrays for every {what}, missing {missing}.")
    for k, p in targets.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(p.shape):
            raise ValueError(
                f"{func}: expected {k} of shape {tuple(p.shape)}, got {tuple(a.shape)}."
            )
        p[...] = get_xp(p).asarray(a, dtype=p.dtype)
