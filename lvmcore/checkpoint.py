"""Checkpoints: one ``.npz`` file per run, readable with plain NumPy and no pickling.

Layout (``format_version`` 1):

    format_version        int64, shape ()            1
    config_json           unicode, shape ()          the model's ``config()`` as JSON
    state_json            unicode, shape ()          training state as JSON (epoch, step, seed,
                                                     hyper-parameters, optimizer settings, history)
    param/<module>.<name> float32/float64            every model parameter, e.g. param/encoder.W0
    optim/<key>           arrays                     the optimizer's ``state_dict()``, e.g. optim/t,
                                                     optim/m.encoder.W0, optim/v.encoder.W0

``save_checkpoint`` writes a temporary file in the target's directory, flushes and fsyncs it,
and moves it into place with ``os.replace``, so the file under the final name is always a
complete checkpoint: either the previous one or the new one, never a half-written mix.
"""

import json
import os
import secrets
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validation import to_numpy

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "optimizer_settings",
]

FORMAT_VERSION = 1
_PARAM = "param/"
_OPTIM = "optim/"


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns; unpacks as ``config, params, optim, state``.

    Attributes
    ----------
    config : dict
        The model's ``config()``; ``lvmcore.models.build_model(config)`` rebuilds it.
    params : dict of str to ndarray
        Parameters keyed as ``model.parameters()`` (``"encoder.W0"``, ...).
    optim : dict of str to ndarray
        The optimizer's ``state_dict()`` (empty when none was saved).
    state : dict
        The training state passed to ``save_checkpoint``, plus ``"optimizer"`` (name and
        settings) when an optimizer was saved.
    """

    config: dict
    params: dict
    optim: dict
    state: dict


def optimizer_settings(optimizer):
    """Name and hyper-parameters of an ``lvmcore.optim`` optimizer, JSON-serialisable."""
    settings = dict(
        name=type(optimizer).__name__.lower(), lr=optimizer.lr, clip_norm=optimizer.clip_norm
    )
    for attr in ("beta1", "beta2", "eps", "momentum", "nesterov"):
        if hasattr(optimizer, attr):
            settings[attr] = getattr(optimizer, attr)
    return settings


def save_checkpoint(path, model, optimizer=None, state=None):
    """Write a model, its optimizer state and the training state into one ``.npz``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file, e.g. ``runs/vae-digits/checkpoint.npz``. Its directory must exist.
    model : object with ``config()`` and ``parameters()``
        E.g. :class:`lvmcore.models.VAE`.
    optimizer : lvmcore.optim.Optimizer, optional
        Its ``state_dict()`` is stored under ``optim/<key>`` and its settings in
        ``state["optimizer"]``.
    state : dict, optional
        JSON-serialisable training state (epoch, step, seed, hyper-parameters, history).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``state`` or the model's config is not JSON-serialisable.
    OSError
        If the file cannot be written; an existing checkpoint at ``path`` is then untouched.

    Notes
    -----
    The data go to a temporary file in the same directory (so the final rename stays on one
    file system), which is flushed and fsynced before ``os.replace`` moves it over ``path``;
    the directory is fsynced afterwards so the rename itself survives a crash. On any error
    the temporary file is removed.
    """
    func = "save_checkpoint"
    path = Path(os.fspath(path))
    state = dict(state or {})
    if optimizer is not None:
        state["optimizer"] = optimizer_settings(optimizer)
    try:
        config_json = json.dumps(model.config())
        state_json = json.dumps(state)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{func}: expected the model config and state to be JSON-serialisable, "
            f"got {err}. Store plain ints, floats, strings, lists and dicts."
        ) from None
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "config_json": np.array(config_json),
        "state_json": np.array(state_json),
    }
    for k, v in model.parameters().items():
        arrays[_PARAM + k] = to_numpy(v)
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays[_OPTIM + k] = to_numpy(v)

    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def create_temp(path):
    """Create a new, unique temporary file beside ``path``; returns (fd, temp path).

    Unlike ``tempfile.mkstemp`` (mode 0600) the file gets the mode the user's umask gives a
    new file, so the run folder's files stay readable as usual after ``os.replace``.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            ), tmp
        except FileExistsError:
            continue
    raise FileExistsError(
        f"create_temp: expected a free temporary name beside {path}, got none in 100 tries."
    )


def _fsync_dir(directory):
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`, without unpickling anything.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Checkpoint
        ``(config, params, optim, state)``, a NamedTuple.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable ``.npz``, lacks ``format_version``, ``config_json`` or
        ``state_json``, has unparseable JSON, or was written by a newer format version. Every
        message names ``path``.
    """
    func = "load_checkpoint"
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{func}: expected a checkpoint file at {path}, got "
            f"{'a directory' if path.is_dir() else 'nothing'}. Train first (lvmcore train "
            f"--out DIR) and pass DIR/checkpoint.npz."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        # Members are decoded lazily, so a damaged archive fails here in several ways; all
        # mean the same to the user.
        raise ValueError(
            f"{func}: expected {path} to be a readable .npz checkpoint, got "
            f"{type(err).__name__}: {err}. The file is corrupt or not a checkpoint; use an "
            f"earlier copy or train again."
        ) from None
    missing = [k for k in ("format_version", "config_json", "state_json") if k not in arrays]
    if missing:
        raise ValueError(
            f"{func}: expected {path} to hold format_version, config_json and state_json, got "
            f"no {', '.join(missing)} (it holds {sorted(arrays)[:8]}). It is not an lvmcore "
            f"checkpoint."
        )
    version = arrays.pop("format_version")
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(
            f"{func}: expected format_version in {path} to be a 0-d integer, got "
            f"{version.dtype} of shape {version.shape}."
        )
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{func}: expected a checkpoint of format version <= {FORMAT_VERSION}, got version "
            f"{int(version)} in {path}. Upgrade lvmcore to read it."
        )
    config = _json_field(arrays.pop("config_json"), "config_json", path, func)
    state = _json_field(arrays.pop("state_json"), "state_json", path, func)
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(
            f"{func}: expected config_json in {path} to be a model config with a "
            f"'model' key, got {str(config)[:80]!r}."
        )
    params = {k[len(_PARAM) :]: v for k, v in arrays.items() if k.startswith(_PARAM)}
    optim = {k[len(_OPTIM) :]: v for k, v in arrays.items() if k.startswith(_OPTIM)}
    if not params:
        raise ValueError(
            f"{func}: expected {path} to hold model parameters (param/...), got "
            f"none. The file is incomplete; use an earlier copy or train again."
        )
    return Checkpoint(config, params, optim, state)


def _json_field(a, name, path, func):
    if a.shape != () or a.dtype.kind != "U":
        raise ValueError(
            f"{func}: expected {name} in {path} to be a 0-d unicode array, got "
            f"{a.dtype} of shape {a.shape}."
        )
    try:
        return json.loads(a[()])
    except ValueError as err:
        raise ValueError(
            f"{func}: expected {name} in {path} to hold JSON, got text that does "
            f"not parse ({err}). The file is corrupt."
        ) from None


def load_model(path):
    """Rebuild the model stored in a checkpoint, with its trained parameters.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint, or a run directory holding ``checkpoint.npz``.

    Returns
    -------
    model
        Built with ``lvmcore.models.build_model(config)``, then ``load_parameters(params)``.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`load_checkpoint`; also ValueError, naming ``path``, when the config names an
        unknown model or a parameter is missing or mis-shaped.
    """
    from .models import build_model

    path = Path(os.fspath(path))
    if path.is_dir():
        path = path / "checkpoint.npz"
    config, params, _, _ = load_checkpoint(path)
    try:
        model = build_model(config)
        model.load_parameters(params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"load_model: expected {path} to hold a model matching its own config, got: {err}"
        ) from None
    return model
