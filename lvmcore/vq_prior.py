"""A learned prior over a trained VQ-VAE's codes: fit, save beside the run, bound, sample.

Shape letters: N rows, D data, S code slots, M codebook size.

A VQ-VAE's encoder is deterministic: x has one code k(x) (S slots). For any prior p(k) over
codes the generative model is p(x) = sum_k p(k) p(x | z_q(k)), and keeping the one term of the
sum at k(x) gives a proper lower bound

.. math:: \\log p(x) \\ge \\log p(x \\mid z_q(x)) + \\log p_{prior}(k(x)).

With the uniform prior p(k) = M^{-S} it is the VQ-VAE's ``elbo`` (reconstruction - S log M);
with an autoregressive :class:`lvmcore.nn.CodePrior` fitted to the training codes
(:func:`fit_prior`), the second term is the prior's log-likelihood of the codes, and
:func:`prior_report` gives both figures and the prior's NLL in bits per code (the uniform prior
scores log2 M). Ancestral samples of the prior decode to new images (:func:`sample_with_prior`).

The prior file (``code_prior.npz`` beside the run's ``checkpoint.npz``) is written atomically
and read without pickling, with the checks of :mod:`lvmcore.checkpoint` (whose helpers it
reuses): members of known names and bounded sizes, a schema for its configuration and state,
every array of the shape and dtype its configuration implies and finite, and the SHA-256 of the
codebook it was fitted to, so that a prior is never used with a codebook it has not seen.

Layout (``format_version`` 1)::

    format_version   int64 ()     1
    config_json      unicode ()   CodePrior.config()
    state_json       unicode ()   fit settings, history, codebook_sha256, checkpoint_epoch
    param/<name>     float        the prior's MADE weights (W0, b0, ...)
"""

import hashlib
import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import __version__
from ._validation import check_param, get_xp, to_numpy
from .checkpoint import (
    _HEADER_CAP,
    JSON_MEMBER_CAP,
    _bool,
    _check_size,
    _CheckpointError,
    _corrupt,
    _dict,
    _int,
    _json_field,
    _list,
    _read_member,
    _real,
    _scalar,
    _SchemaError,
    _str,
    write_atomic,
)
from .evaluate import standard_error
from .nn.code_prior import CodePrior, fit_code_prior

__all__ = [
    "PRIOR_FILE",
    "fit_prior",
    "save_code_prior",
    "load_code_prior",
    "codes_of",
    "prior_bound",
    "prior_report",
    "sample_with_prior",
    "codebook_digest",
]

PRIOR_FILE = "code_prior.npz"
FORMAT_VERSION = 1
_PARAM = "param/"

CONFIG_SCHEMA = {
    "n_slots": _int(1),
    "n_codes": _int(2),
    "hidden": _list(_int(1)),
    "embedded": _bool,
    "context_dim": _int(0),
    "order": _list(_int(0)),
    "direct": _bool,
    "activation": _str(choices=("tanh", "relu", "softplus", "sigmoid")),
    "dtype": _str(choices=("float32", "float64")),
}
STATE_SCHEMA = {
    "epochs": _int(1),
    "batch_size": _int(1),
    "lr": _real(0, strict_low=True),
    "seed": _int(0),
    "history": _list(_dict(values=_scalar, required=("epoch",))),
    "codebook_sha256": _str(),
    "checkpoint_epoch": _int(0, optional=True),
    "n_train": _int(0),
    "lvmcore_version": _str(),
}
_STATE_REQUIRED = tuple(k for k in STATE_SCHEMA if k != "checkpoint_epoch")


def _check_vqvae(model, func):
    from .models import VQVAE

    if not isinstance(model, VQVAE):
        raise TypeError(
            f"{func}: expected model to be a VQ-VAE (lvmcore.models.VQVAE), got "
            f"{type(model).__name__}. A code prior models the codes of a VQ-VAE; train one with "
            f"lvmcore train --model vqvae."
        )
    return model


def _check_prior(prior, model, func):
    if not isinstance(prior, CodePrior):
        raise TypeError(f"{func}: expected prior to be a CodePrior, got {type(prior).__name__}.")
    if (prior.n_slots, prior.n_codes) != (model.slots, model.codes):
        raise ValueError(
            f"{func}: expected a prior over the model's {model.slots} slots of {model.codes} "
            f"codes, got one over {prior.n_slots} slots of {prior.n_codes} codes."
        )
    return prior


def codebook_digest(model):
    """SHA-256 of the VQ-VAE's codebook (its bytes on the host): what a prior was fitted to."""
    return hashlib.sha256(np.ascontiguousarray(to_numpy(model.codebook)).tobytes()).hexdigest()


def codes_of(model, x, batch_size=1000):
    """The codes k(x) of every row, (N, S) int64, ``batch_size`` rows at a time."""
    func = "codes_of"
    _check_vqvae(model, func)
    batch_size = check_param(batch_size, "batch_size", func, kind="int", low=1, low_inclusive=True)
    model._check_x(x, func)
    xp = get_xp(x)
    if not x.shape[0]:
        return xp.zeros((0, model.slots), dtype=np.int64)
    return xp.concatenate(
        [model.quantize(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    )


def fit_prior(
    model,
    x_train,
    rng,
    *,
    x_valid=None,
    hidden=(256,),
    epochs=20,
    batch_size=128,
    lr=1e-3,
    embedded=True,
    direct=False,
):
    """Fit a :class:`CodePrior` to the codes of a trained VQ-VAE's training rows.

    Parameters
    ----------
    model : lvmcore.models.VQVAE
    x_train : ndarray of shape (N, D)
        In the model's dtype and on its device.
    rng : numpy.random.Generator
        Draws the prior's initial weights and shuffles the codes each epoch.
    x_valid : ndarray of shape (N', D), optional
        Its codes are scored after every epoch.
    hidden : sequence of int
        The MADE's hidden widths (each >= S - 1).
    epochs, batch_size, lr
        Adam on the mean negative log-likelihood (:func:`lvmcore.nn.fit_code_prior`).
    embedded : bool
        Feed each slot's code as its codebook vector (E inputs per slot) rather than one-hot
        (M inputs per slot).
    direct : bool
        The MADE's direct input-to-logit connection.

    Returns
    -------
    prior : CodePrior
    history : list of dict
        Per epoch: ``epoch``, ``train_bits``, ``valid_bits`` (bits per code).
    """
    func = "fit_prior"
    _check_vqvae(model, func)
    codes = codes_of(model, x_train)
    valid = None if x_valid is None else codes_of(model, x_valid)
    prior = CodePrior(
        model.slots,
        model.codes,
        hidden,
        rng,
        embedding=model.codebook if embedded else None,
        direct=direct,
        dtype=model.dtype,
    )
    prior.to(model.xp)
    history = fit_code_prior(
        prior, codes, rng, epochs=epochs, batch_size=batch_size, lr=lr, valid_codes=valid
    )
    return prior, history


# --------------------------------------------------------------------------------------------
# The prior file
# --------------------------------------------------------------------------------------------


def save_code_prior(path, prior, model, state=None):
    """Write a fitted prior into one ``.npz``, atomically (a temporary file beside ``path``,
    flushed and fsynced, then renamed over it).

    Parameters
    ----------
    path : str or os.PathLike
        E.g. ``RUN/code_prior.npz``; its directory must exist.
    prior : CodePrior
    model : lvmcore.models.VQVAE
        The model whose codes it models: the SHA-256 of its codebook is stored.
    state : dict, optional
        ``epochs``, ``batch_size``, ``lr``, ``seed``, ``history``, ``checkpoint_epoch``,
        ``n_train`` (the keys of ``STATE_SCHEMA``; ``codebook_sha256`` and
        ``lvmcore_version`` are added).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        When ``state`` breaks the schema (nothing is written then).
    """
    func = "save_code_prior"
    _check_vqvae(model, func)
    _check_prior(prior, model, func)
    path = Path(os.fspath(path))
    state = dict(state or {})
    state.update(codebook_sha256=codebook_digest(model), lvmcore_version=__version__)
    try:
        _dict(STATE_SCHEMA, required=_STATE_REQUIRED)(json.loads(json.dumps(state)), "state")
        _dict(CONFIG_SCHEMA, required=tuple(CONFIG_SCHEMA))(prior.config(), "config")
    except _SchemaError as err:
        raise ValueError(f"{func}: expected {err}.") from None
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "config_json": np.array(json.dumps(prior.config())),
        "state_json": np.array(json.dumps(state)),
    }
    for k, v in prior.params.items():
        arrays[_PARAM + k] = to_numpy(v)
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def load_code_prior(path, model):
    """Read a prior written by :func:`save_code_prior` for ``model``, without unpickling.

    Parameters
    ----------
    path : str or os.PathLike
    model : lvmcore.models.VQVAE
        The model it must belong to (slots, codes and the codebook's SHA-256).

    Returns
    -------
    prior : CodePrior
        On the model's device.
    state : dict

    Raises
    ------
    FileNotFoundError
        No file at ``path`` (the message says how to make one).
    ValueError
        A file that is not such an archive, an unknown or oversized member, a configuration
        or state that breaks the schema, arrays of another shape or dtype or with NaN or Inf,
        or a prior fitted to another codebook. Every message names ``path``.
    """
    func = "load_code_prior"
    _check_vqvae(model, func)
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{func}: expected a code prior at {path}, got nothing. Fit one with "
            f"`lvmcore train-prior {path.parent}`."
        )
    try:
        with zipfile.ZipFile(path) as zf:
            prior, state = _read_prior(zf, path, func, model)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as err:
        raise _corrupt(path, err, func) from None
    except ValueError as err:
        if isinstance(err, _CheckpointError):
            raise ValueError(str(err)) from None
        raise _corrupt(path, err, func) from None
    return prior, state


def _build(config, model):
    """The CodePrior a configuration describes (weights to be loaded), on the host."""
    kw = {k: config[k] for k in ("context_dim", "order", "direct", "activation")}
    prior = CodePrior(
        config["n_slots"],
        config["n_codes"],
        config["hidden"],
        np.random.default_rng(0),
        embedding=model.codebook if config["embedded"] else None,
        dtype=np.dtype(config["dtype"]),
        **kw,
    )
    return prior.to(model.xp)


def _read_prior(zf, path, func, model):
    def fail(msg):
        return _CheckpointError(f"{func}: expected {msg}")

    # 1. the zip directory: names and sizes, before any member is read
    infos = {}
    for info in zf.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        known = name in ("format_version", "config_json", "state_json") or (
            name is not None and name.startswith(_PARAM)
        )
        if not known or name in infos:
            raise fail(
                f"{path} to hold only format_version, config_json, state_json and param/<name> "
                f"members, once each, got {info.filename!r}. It is not an lvmcore code prior; "
                f"it is refused unread."
            )
        infos[name] = info
    missing = [k for k in ("format_version", "config_json", "state_json") if k not in infos]
    if missing:
        raise fail(f"{path} to hold {', '.join(missing)}. It is not an lvmcore code prior.")
    _check_size(infos["format_version"], _HEADER_CAP + 64, "format_version", path, fail)
    for name in ("config_json", "state_json"):
        _check_size(infos[name], JSON_MEMBER_CAP, name, path, fail)

    # 2. version, configuration and state, against their schemas and the model
    version = _read_member(zf, infos["format_version"], path, fail)
    if version.shape != () or version.dtype.kind not in "iu" or int(version) > FORMAT_VERSION:
        raise fail(
            f"format_version in {path} to be a 0-d integer <= {FORMAT_VERSION}, got "
            f"{version.dtype} {version.tolist()!r}."
        )
    config = _json_field(
        _read_member(zf, infos["config_json"], path, fail), "config_json", path, fail
    )
    state = _json_field(_read_member(zf, infos["state_json"], path, fail), "state_json", path, fail)
    try:
        _dict(CONFIG_SCHEMA, required=tuple(CONFIG_SCHEMA))(config, "config")
        _dict(STATE_SCHEMA, required=_STATE_REQUIRED)(state, "state")
    except _SchemaError as err:
        raise fail(f"{path} to follow the code prior schema: {err}.") from None
    if config["context_dim"] != 0:
        raise fail(f"config.context_dim in {path} to be 0 (an unconditional prior), got it not.")
    if (config["n_slots"], config["n_codes"]) != (model.slots, model.codes):
        raise fail(
            f"the prior in {path} to model {model.slots} slots of {model.codes} codes (the "
            f"VQ-VAE's), got {config['n_slots']} slots of {config['n_codes']} codes."
        )
    if state["codebook_sha256"] != codebook_digest(model):
        raise fail(
            f"the prior in {path} to have been fitted to this VQ-VAE's codebook, got one "
            f"fitted to another (the run was trained further, or the prior belongs to another "
            f"run). Fit it again with `lvmcore train-prior {path.parent}`."
        )
    try:
        prior = _build(config, model)
    except (ValueError, TypeError) as err:
        raise fail(f"config_json in {path} to describe a code prior, got: {err}") from None

    # 3. the arrays: the names, shapes and dtype the configuration implies, finite
    want = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in prior.params.items()}
    names = {k[len(_PARAM) :] for k in infos if k.startswith(_PARAM)}
    if names != set(want):
        odd = sorted(names ^ set(want))
        raise fail(
            f"{path} to hold exactly the parameters of its configuration, got param/{odd[0]} "
            f"{'unknown' if odd[0] in names else 'missing'} ({len(odd)} such)."
        )
    for k, (shape, dtype) in want.items():
        name = _PARAM + k
        _check_size(infos[name], dtype.itemsize * math.prod(shape) + _HEADER_CAP, name, path, fail)
        a = _read_member(zf, infos[name], path, fail, shape=shape, dtype=dtype)
        if not bool(np.isfinite(a).all()):
            raise fail(
                f"{name} in {path} to contain no NaN or Inf values, got "
                f"{int((~np.isfinite(a)).sum())} of {a.size}."
            )
        prior.params[k][...] = get_xp(prior.params[k]).asarray(a)
    return prior, state


# --------------------------------------------------------------------------------------------
# Using the prior
# --------------------------------------------------------------------------------------------


def prior_bound(model, prior, x, batch_size=1000):
    """log p(x | z_q(x)) + log p_prior(k(x)) per row, (N,): a lower bound on log p(x) of the
    model with this prior (module docstring)."""
    func = "prior_bound"
    _check_vqvae(model, func)
    _check_prior(prior, model, func)
    recon = model.bound(x, batch_size=batch_size)  # (N,), checks x
    codes = codes_of(model, x, batch_size)
    log_p = [prior.log_prob(codes[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if not log_p:
        return recon
    return recon + get_xp(recon).concatenate(log_p).astype(recon.dtype)


def prior_report(model, prior, x, batch_size=1000):
    """The learned-prior figures of ``lvmcore eval`` for a VQ-VAE, beside the uniform ones.

    Returns
    -------
    info : dict
        ``prior_bound`` and ``prior_bound_sem`` (mean and standard error of
        log p(x|z_q) + log p_prior(k), nats), ``uniform_bound`` (the same with the uniform
        prior: reconstruction - S log M), ``prior_bits_per_code`` (the prior's NLL of the
        split's codes) and ``uniform_bits_per_code`` (log2 M).
    lines : list of str
    """
    bound = to_numpy(prior_bound(model, prior, x, batch_size), np.float64)
    uniform = to_numpy(model.elbo(x, batch_size=batch_size), np.float64)
    S, M = model.slots, model.codes
    codes = codes_of(model, x, batch_size)
    bits = prior.nll_bits(codes) if x.shape[0] else math.nan
    info = dict(
        prior_bound=float(bound.mean()) if bound.size else math.nan,
        prior_bound_sem=standard_error(bound),
        uniform_bound=float(uniform.mean()) if uniform.size else math.nan,
        prior_bits_per_code=bits,
        uniform_bits_per_code=math.log2(M),
    )
    lines = [
        f"bound log p(x|z_q) + log p_prior(codes) {info['prior_bound']:.3f} +- "
        f"{info['prior_bound_sem']:.3f} nats with the learned prior, "
        f"{info['uniform_bound']:.3f} with the uniform prior (- S log M = "
        f"{-S * math.log(M):.2f})",
        f"code prior NLL {bits:.3f} bits per code (uniform: {math.log2(M):.3f})",
    ]
    return info, lines


def sample_with_prior(model, prior, rng, n):
    """n ancestral samples of the prior decoded by the VQ-VAE: (images (n, D), codes (n, S))."""
    func = "sample_with_prior"
    _check_vqvae(model, func)
    _check_prior(prior, model, func)
    n = check_param(n, "n", func, kind="int", low=1, low_inclusive=True)
    codes, _ = prior.sample(rng, n)
    return model.decode_codes(codes), codes
