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

Loading trusts nothing in the file. ``load_checkpoint`` reads the zip directory first and
refuses, before decompressing anything, a member with an unknown name or an uncompressed
size above what the schema allows: the size of the parameter of that name in the model
``config_json`` describes (the same for optimizer buffers), 64 MiB for each JSON member.
It then validates the whole schema: ``state_json`` keys and their types (``STATE_SCHEMA``;
unknown keys are refused), every parameter present with the shape and float dtype of the
model, no NaN or Inf, no complex or integer arrays. Every error is a ValueError naming the
file and the member.

The runtime (``state["runtime"]``, see :func:`runtime_info`): the BLAS library, its version,
kernel architecture and thread count; the Numba threading layer and thread count; NumPy's
version; the device. Results depend on the BLAS thread count (OpenBLAS's SGEMM sums in a
different order for another count), so a resumed or evaluated run compares its runtime
with the recorded one: :func:`runtime_differences` lists what differs, and
:func:`warn_runtime_differences` turns that list into one ``RuntimeDifferenceWarning``.
"""

import json
import math
import os
import re
import secrets
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validation import _array_library, to_numpy
from .exceptions import RuntimeDifferenceWarning

__all__ = [
    "FORMAT_VERSION",
    "STATE_SCHEMA",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "optimizer_settings",
    "runtime_info",
    "compare_runtime",
    "runtime_differences",
    "warn_runtime_differences",
]

FORMAT_VERSION = 1
_PARAM = "param/"
_OPTIM = "optim/"
JSON_MEMBER_CAP = 64 << 20  # bytes: the largest config_json or state_json member read
_HEADER_CAP = 1 << 14  # bytes: room for a .npy header (numpy caps it at 10000)
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_OPTIM_BUFFERS = {"adam": ("m", "v"), "sgd": ("velocity",)}


# --------------------------------------------------------------------------------------------
# The schema of state_json
# --------------------------------------------------------------------------------------------


class _SchemaError(ValueError):
    """One schema violation; ``where`` is the path to the value (e.g. state.hyper.lr)."""


def _fail(where, want, value):
    raise _SchemaError(f"{where} to be {want}, got {value!r}"[:300])


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(low=0, *, optional=False):
    def check(v, where):
        if v is None and optional:
            return
        if not _is_int(v) or v < low:
            _fail(where, f"an int >= {low}" + (" or null" if optional else ""), v)

    return check


def _real(low=None, high=None, *, strict_low=False, strict_high=False, optional=False):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = f"{'(' if strict_low or low is None else '['}{lo}, {hi}{')' if strict_high or high is None else ']'}"

    def check(v, where):
        if v is None and optional:
            return
        ok = _is_real(v) and math.isfinite(v)
        if ok and low is not None:
            ok = v > low if strict_low else v >= low
        if ok and high is not None:
            ok = v < high if strict_high else v <= high
        if not ok:
            _fail(where, f"a finite number in {interval}" + (" or null" if optional else ""), v)

    return check


def _str(*, optional=False, choices=None):
    def check(v, where):
        if v is None and optional:
            return
        if not isinstance(v, str) or (choices is not None and v not in choices):
            want = "a string" if choices is None else f"one of {sorted(choices)}"
            _fail(where, want + (" or null" if optional else ""), v)

    return check


def _bool(v, where):
    if not isinstance(v, bool):
        _fail(where, "true or false", v)


def _list(item, *, optional=False):
    def check(v, where):
        if v is None and optional:
            return
        if not isinstance(v, list):
            _fail(where, "a list" + (" or null" if optional else ""), v)
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")

    return check


def _scalar(v, where):
    """A JSON number (non-finite allowed: a reported value), string, bool or null."""
    if not (v is None or isinstance(v, (int, float, str, bool))):
        _fail(where, "a number, string, bool or null", v)


def _json(v, where, depth=0):
    """Any JSON value of bounded nesting (informational records)."""
    if depth > 8:
        _fail(where, "nested at most 8 levels deep", "a deeper value")
    if isinstance(v, dict):
        for k, x in v.items():
            _json(x, f"{where}.{k}", depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _json(x, f"{where}[{i}]", depth + 1)
    else:
        _scalar(v, where)


def _dict(fields=None, *, values=None, required=()):
    """A dict whose keys are ``fields`` (each checked by its checker; unknown keys refused),
    or, with ``values``, any string keys whose values pass ``values``."""
    fields = fields or {}

    def check(v, where):
        if not isinstance(v, dict):
            _fail(where, "a JSON object", v)
        missing = [k for k in required if k not in v]
        if missing:
            _fail(where, f"an object with the keys {list(required)}", f"no {missing[0]!r}")
        for k, x in v.items():
            if k in fields:
                fields[k](x, f"{where}.{k}")
            elif values is not None:
                values(x, f"{where}.{k}")
            else:
                raise _SchemaError(
                    f"{where} to hold only the keys {sorted(fields)}, got the unknown key {k!r}"
                )

    return check


_HYPER = {
    "epochs": _int(1),
    "batch_size": _int(1),
    "lr": _real(0, strict_low=True),
    "optimizer": _str(choices=("adam", "sgd")),
    "adam_eps": _real(0, strict_low=True),
    "momentum": _real(0, 1, strict_high=True),
    "clip_norm": _real(0, strict_low=True, optional=True),
    "seed": _int(0),
    "kl_warmup_epochs": _int(0),
    "eval_batch_size": _int(1),
}
_DATASET = {
    "name": _str(optional=True),
    "source": _str(optional=True),
    "shape": _list(_int(1), optional=True),
    "n_train": _int(0),
    "n_valid": _int(0),
    "data_dim": _int(1),
}
_OPTIMIZER = {
    "name": _str(choices=tuple(_OPTIM_BUFFERS)),
    "lr": _real(0, strict_low=True),
    "clip_norm": _real(0, strict_low=True, optional=True),
    "beta1": _real(0, 1, strict_high=True),
    "beta2": _real(0, 1, strict_high=True),
    "eps": _real(0, strict_low=True),
    "momentum": _real(0, 1, strict_high=True),
    "nesterov": _bool,
}

#: The keys ``state_json`` may hold, each with its check. A key that is not here is refused
#: on save and on load; a new key of the training state is added here, with its type.
STATE_SCHEMA = {
    "epoch": _int(0),
    "step": _int(0),
    "seed": _int(0),
    "hyper": _dict(_HYPER),
    "dataset": _dict(_DATASET),
    "history": _list(_dict(values=_scalar, required=("epoch",))),
    "lvmcore_version": _str(),
    "optimizer": _dict(_OPTIMIZER, required=("name", "lr")),
    "runtime": _dict(values=_json),
}


def _check_state(state):
    """Raise _SchemaError for the first violation of STATE_SCHEMA in ``state``."""
    _dict(STATE_SCHEMA)(state, "state")
    if any(k in state for k in ("history", "hyper", "dataset")) and not (
        "epoch" in state and "step" in state
    ):
        raise _SchemaError(
            "state of a training run (history, hyper or dataset) to hold epoch and step, got "
            "no " + ("step" if "epoch" in state else "epoch")
        )


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


# --------------------------------------------------------------------------------------------
# The runtime a checkpoint was written under
# --------------------------------------------------------------------------------------------


def _device_name(like):
    if like is None or _array_library(like) != "cupy":
        return "cpu"
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return "cuda:" + (name.decode() if isinstance(name, bytes) else str(name))
    except Exception:  # a name is a courtesy; the device kind is what matters
        return "cuda"


def runtime_info(like=None):
    """What the results of a run may depend on, as a JSON-serialisable dict.

    Parameters
    ----------
    like : array, optional
        An array on the device the model runs on (``"cpu"`` when None or a NumPy array).

    Returns
    -------
    dict
        ``device``; ``numpy`` (version); ``lvmcore`` (version); ``blas``: one entry per BLAS
        library loaded (threadpoolctl's ``internal_api``, ``version``, ``architecture``,
        ``threading_layer``, ``process_threads`` (the library's own setting), ``num_threads``
        (the threads an engine step's GEMMs run on: ``process_threads`` lowered to
        ``lvmcore.backend.engine_blas_threads()`` where the library takes the lower count from
        the calling thread, read back from the library) and the library's file name); ``numba``:
        ``version``, ``threading_layer`` (None until a parallel kernel has run),
        ``num_threads`` and ``kernel_threads`` (``LVMCORE_KERNEL_THREADS``, the threads
        engine steps give their kernels).

    Notes
    -----
    What holds: the Numba kernels give the same bits for any thread count; OpenBLAS's SGEMM
    does not (it splits the sums differently per thread count), so parameters trained with
    another BLAS thread count differ in the last digits, and a resume under another count
    is not bit-exact. The record lets :func:`compare_runtime` say so.
    """
    from threadpoolctl import threadpool_info

    from . import __version__
    from .backend import _blas_at_most, engine_blas_threads

    def blas_threads():
        return {
            d.get("filepath"): int(d.get("num_threads") or 0)
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        }

    # The count a step's GEMMs run on, read back under the step's own limit rather than
    # computed: OpenBLAS 0.3.31 ignores a count set from any thread but the main one.
    with _blas_at_most(engine_blas_threads()):
        in_step = blas_threads()
    blas = []
    for d in threadpool_info():
        if d.get("user_api") != "blas":
            continue
        entry = {k: d.get(k) for k in ("internal_api", "version", "architecture")}
        entry["threading_layer"] = d.get("threading_layer")
        own = int(d.get("num_threads") or 0)
        entry["process_threads"] = own
        entry["num_threads"] = in_step.get(d.get("filepath"), own)
        entry["library"] = os.path.basename(d.get("filepath") or "") or None
        blas.append(entry)
    blas.sort(key=lambda e: str(e["library"]))
    try:
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet in this process
            layer = None
        nb = dict(
            version=numba.__version__,
            threading_layer=layer,
            num_threads=int(numba.get_num_threads()),
            kernel_threads=os.environ.get("LVMCORE_KERNEL_THREADS", "1"),
        )
    except ImportError:
        nb = None
    return dict(
        device=_device_name(like), numpy=np.__version__, lvmcore=__version__, blas=blas, numba=nb
    )


# The note of the differences that cannot change a result (Numba's thread settings).
SAME_RESULTS_NOTE = " (the Numba kernels give the same results for any thread count)"


def compare_runtime(saved, current=None):
    """Human-readable differences between a recorded runtime and the current one.

    Parameters
    ----------
    saved : dict or None
        ``state["runtime"]`` of a checkpoint (None: none was recorded).
    current : dict, optional
        :func:`runtime_info` of the process now (computed when None).

    Returns
    -------
    list of str
        One line per difference, e.g. ``"BLAS threads (openblas libscipy_openblas64_.so): 2
        when saved, 1 now; results depend on the BLAS thread count, set
        LVMCORE_BLAS_THREADS=2 (or --threads 2) to reproduce them bit for bit"``; empty when
        nothing differs.
    """
    if not isinstance(saved, dict):
        return [
            "runtime: none recorded in the checkpoint (written by an older lvmcore); results "
            "may differ in the last digits if the BLAS library or its thread count changed"
        ]
    now = runtime_info() if current is None else current
    lines = []

    def differ(label, a, b, note=""):
        if a != b:
            lines.append(f"{label}: {a} when saved, {b} now{note}")

    differ("device", saved.get("device"), now.get("device"))
    differ("NumPy version", saved.get("numpy"), now.get("numpy"))
    old_blas = {str(e.get("library")): e for e in saved.get("blas") or [] if isinstance(e, dict)}
    new_blas = {str(e.get("library")): e for e in now.get("blas") or []}
    if set(old_blas) != set(new_blas):
        differ("BLAS libraries", sorted(old_blas), sorted(new_blas), "; GEMM results may differ")
    for lib in sorted(set(old_blas) & set(new_blas)):
        a, b = old_blas[lib], new_blas[lib]
        name = f"{a.get('internal_api')} {lib}"
        differ(f"BLAS version ({name})", a.get("version"), b.get("version"))
        differ(
            f"BLAS kernels ({name})",
            a.get("architecture"),
            b.get("architecture"),
            "; GEMM results may differ in the last digits",
        )
        threads_a, threads_b = a.get("num_threads"), b.get("num_threads")
        differ(
            f"BLAS threads ({name})",
            threads_a,
            threads_b,
            f"; results depend on the BLAS thread count, set LVMCORE_BLAS_THREADS={threads_a} "
            f"(or --threads {threads_a}) to reproduce them bit for bit",
        )
    old_nb, new_nb = saved.get("numba") or {}, now.get("numba") or {}
    differ("Numba version", old_nb.get("version"), new_nb.get("version"))
    same = SAME_RESULTS_NOTE
    if old_nb.get("threading_layer") and new_nb.get("threading_layer"):
        differ(
            "Numba threading layer",
            old_nb.get("threading_layer"),
            new_nb.get("threading_layer"),
            same,
        )
    differ("Numba threads", old_nb.get("num_threads"), new_nb.get("num_threads"), same)
    differ(
        "LVMCORE_KERNEL_THREADS", old_nb.get("kernel_threads"), new_nb.get("kernel_threads"), same
    )
    return lines


def runtime_differences(checkpoint, like=None):
    """:func:`compare_runtime` for a checkpoint: its recorded runtime against this process.

    Parameters
    ----------
    checkpoint : Checkpoint, dict, str or os.PathLike
        What :func:`load_checkpoint` returned, its ``state`` dict, or a checkpoint's path.
    like : array, optional
        An array on the device the run continues on (for the device line).

    Returns
    -------
    list of str
        One line per difference; empty when the runtime is the recorded one.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_checkpoint(checkpoint)
    state = checkpoint.state if isinstance(checkpoint, Checkpoint) else checkpoint
    if not isinstance(state, dict):
        raise TypeError(
            f"runtime_differences: expected checkpoint to be a Checkpoint, its state dict or a "
            f"path, got {type(checkpoint).__name__}."
        )
    return compare_runtime(state.get("runtime"), runtime_info(like))


def warn_runtime_differences(checkpoint, context="resume", like=None):
    """Warn once (``RuntimeDifferenceWarning``) when the runtime differs from the recorded one.

    For the training loop on ``resume`` and for evaluation: ``context`` names what is being
    done ("resume", "evaluation"). Returns the list of differences; the warning is given only
    when one of them can change a result (differences in Numba's thread settings alone cannot:
    the Numba kernels give the same bits for any thread count).
    """
    lines = runtime_differences(checkpoint, like)
    if any(not line.endswith(SAME_RESULTS_NOTE) for line in lines):
        warnings.warn(
            RuntimeDifferenceWarning(
                f"{context}: this checkpoint was written under another runtime, so results may "
                f"differ in the last digits from an uninterrupted run:\n  " + "\n  ".join(lines)
            ),
            stacklevel=2,
        )
    return lines


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
        JSON-serialisable training state (epoch, step, seed, hyper-parameters, history), with
        the keys and types of ``STATE_SCHEMA``. ``"optimizer"`` (the optimizer's settings) and
        ``"runtime"`` (:func:`runtime_info`) are added.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``state`` or the model's config is not JSON-serialisable.
    ValueError
        If ``state`` does not follow ``STATE_SCHEMA`` (an unknown key, a value of the wrong
        type): what could not be loaded again is not written.
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
    if state is not None and not isinstance(state, dict):
        raise TypeError(f"{func}: expected state to be a dict, got {type(state).__name__}.")
    state = dict(state or {})
    if optimizer is not None:
        state["optimizer"] = optimizer_settings(optimizer)
    params = model.parameters()
    state["runtime"] = runtime_info(next(iter(params.values()), None))
    try:
        _check_state(json.loads(json.dumps(state)))
    except _SchemaError as err:
        raise ValueError(
            f"{func}: expected {err}. Add a new key with its type to "
            f"lvmcore.checkpoint.STATE_SCHEMA, or leave it out."
        ) from None
    except (TypeError, ValueError):
        pass  # not JSON-serialisable: reported below
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
    for k, v in params.items():
        arrays[_PARAM + k] = to_numpy(v)
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays[_OPTIM + k] = to_numpy(v)

    return write_atomic(path, lambda f: np.savez(f, **arrays))


def write_atomic(path, write):
    """Write a file whole or not at all: ``write(f)`` fills a binary file object open on a new
    temporary file beside ``path``, which is flushed, fsynced and moved over ``path`` with
    ``os.replace`` (the rename then fsynced too). On any error (a full disk, an interrupt,
    ``write`` raising) the temporary file is removed and ``path`` keeps its old content; a
    reader never sees a half-written file. Returns ``path`` as a ``Path``."""
    path = Path(os.fspath(path))
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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
        ``state_json``, has unparseable JSON, was written by a newer format version, holds a
        member of an unknown name or larger than the schema allows (refused from the zip
        directory, before anything is decompressed), a state that breaks ``STATE_SCHEMA``, a
        config that builds no model, or parameters and optimizer buffers missing, of another
        shape or dtype than the model's, complex, integer, NaN or Inf. Every message names
        ``path`` and the member.

    Notes
    -----
    Memory is bounded by what the schema allows: each JSON member by ``JSON_MEMBER_CAP``
    (64 MiB), each array by the size of the model parameter it holds. A member's size is
    taken from the zip directory and checked before it is opened, and the reader never
    returns more than that declared size (a member inflating beyond it fails its CRC).
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
        with zipfile.ZipFile(path) as zf:
            return _read_checkpoint(zf, path, func)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as err:
        raise _corrupt(path, err, func) from None
    except ValueError as err:
        if isinstance(err, _CheckpointError):
            raise ValueError(str(err)) from None
        # numpy's header parser and a damaged member fail in several ways; all mean the
        # same to the user
        raise _corrupt(path, err, func) from None


class _CheckpointError(ValueError):
    """A schema violation, already worded for the user."""


def _corrupt(path, err, func):
    return ValueError(
        f"{func}: expected {path} to be a readable .npz checkpoint, got "
        f"{type(err).__name__}: {err}. The file is corrupt or not a checkpoint; use an "
        f"earlier copy or train again."
    )


def _read_checkpoint(zf, path, func):
    def fail(msg):
        return _CheckpointError(f"{func}: expected {msg}")

    # 1. the zip directory: names and sizes, before any member is read
    infos = {}
    for info in zf.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name is None or name in infos:
            raise fail(
                f"{path} to hold .npy members of distinct names, got "
                f"{'a second ' if name in infos else ''}member {info.filename!r}. It is not an "
                f"lvmcore checkpoint, or it was altered."
            )
        infos[name] = info
    missing = [k for k in ("format_version", "config_json", "state_json") if k not in infos]
    if missing:
        raise fail(
            f"{path} to hold format_version, config_json and state_json, got "
            f"no {', '.join(missing)} (it holds {sorted(infos)[:8]}). It is not an lvmcore "
            f"checkpoint."
        )
    for name, info in infos.items():
        prefix = name[: name.find("/") + 1]
        key = name[len(prefix) :]
        known = name in ("format_version", "config_json", "state_json") or (
            prefix in (_PARAM, _OPTIM) and _KEY.fullmatch(key)
        )
        if not known:
            raise fail(
                f"{path} to hold only format_version, config_json, state_json, param/<name> "
                f"and optim/<name> members, got the unknown member {info.filename!r} "
                f"({info.file_size} bytes). It was not written by lvmcore; it is refused "
                f"unread."
            )
    _check_size(infos["format_version"], _HEADER_CAP + 64, "format_version", path, fail)
    for name in ("config_json", "state_json"):
        _check_size(infos[name], JSON_MEMBER_CAP, name, path, fail)

    # 2. the small members: format version, config, state
    version = _read_member(zf, infos["format_version"], path, fail)
    if version.shape != () or version.dtype.kind not in "iu":
        raise fail(
            f"format_version in {path} to be a 0-d integer, got {version.dtype} of shape "
            f"{version.shape}."
        )
    if int(version) > FORMAT_VERSION:
        raise fail(
            f"a checkpoint of format version <= {FORMAT_VERSION}, got version "
            f"{int(version)} in {path}. Upgrade lvmcore to read it."
        )
    config = _json_field(
        _read_member(zf, infos["config_json"], path, fail), "config_json", path, fail
    )
    state = _json_field(_read_member(zf, infos["state_json"], path, fail), "state_json", path, fail)
    if not isinstance(config, dict) or "model" not in config:
        raise fail(
            f"config_json in {path} to be a model config with a 'model' key, got "
            f"{str(config)[:80]!r}."
        )
    try:
        _check_state(state)
    except _SchemaError as err:
        raise fail(f"state_json in {path} to follow the checkpoint schema: {err}.") from None

    # 3. what the arrays must be: the model the config describes
    from .models import build_model

    try:
        model = build_model(config)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
        raise fail(
            f"config_json in {path} to describe a model, got {str(config)[:120]!r}, which "
            f"builds none: {type(err).__name__}: {err}"
        ) from None
    want = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in model.parameters().items()}
    del model
    params = {k[len(_PARAM) :] for k in infos if k.startswith(_PARAM)}
    optim_keys = {k[len(_OPTIM) :] for k in infos if k.startswith(_OPTIM)}
    if params - set(want):
        extra = sorted(params - set(want))
        raise fail(
            f"{path} to hold only the parameters of its {config['model']!r} model, got the "
            f"unknown member param/{extra[0]} ({len(extra)} unknown in all)."
        )
    if set(want) - params:
        absent = sorted(set(want) - params)
        raise fail(
            f"{path} to hold every parameter of its {config['model']!r} model, got no "
            f"param/{absent[0]} ({len(absent)} missing in all). The file is incomplete; use an "
            f"earlier copy or train again."
        )
    expected = {_PARAM + k: v for k, v in want.items()}
    opt = state.get("optimizer")
    if optim_keys and opt is None:
        raise fail(
            f"{path} to record the optimizer (state_json 'optimizer') of its optim/ members, "
            f"got none."
        )
    if optim_keys:
        buffers = _OPTIM_BUFFERS[opt["name"]]
        for key in optim_keys:
            buf, _, pkey = key.partition(".")
            if key == "t":
                expected[_OPTIM + key] = ((), None)
            elif buf in buffers and pkey in want:
                expected[_OPTIM + key] = want[pkey]
            else:
                raise fail(
                    f"{path} to hold only the {opt['name']} state of its parameters "
                    f"(optim/t, " + ", ".join(f"optim/{b}.<name>" for b in buffers) + f"), got "
                    f"the unknown member optim/{key}."
                )
        if _OPTIM + "t" not in expected:
            raise fail(f"{path} to hold the optimizer's step count optim/t, got none.")

    # 4. the arrays: sizes from the directory first, then header, then values
    arrays = {}
    for name, (shape, dtype) in expected.items():
        nbytes = (8 if dtype is None else dtype.itemsize) * math.prod(shape)
        _check_size(infos[name], nbytes + _HEADER_CAP, name, path, fail)
        a = _read_member(zf, infos[name], path, fail, shape=shape, dtype=dtype)
        if dtype is None:  # optim/t, the step count
            if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
                raise fail(
                    f"{name} in {path} to be a 0-d non-negative integer, got {a.dtype} "
                    f"{a.tolist()!r}."
                )
        elif not bool(np.isfinite(a).all()):
            raise fail(
                f"{name} in {path} to contain no NaN or Inf values, got "
                f"{int((~np.isfinite(a)).sum())} of {a.size}. The run diverged before this "
                f"checkpoint or the file was altered; use an earlier copy."
            )
        arrays[name] = a
    params = {k[len(_PARAM) :]: v for k, v in arrays.items() if k.startswith(_PARAM)}
    optim = {k[len(_OPTIM) :]: v for k, v in arrays.items() if k.startswith(_OPTIM)}
    return Checkpoint(config, params, optim, state)


def _check_size(info, cap, name, path, fail):
    """Refuse a member from its directory entry alone: declared size above ``cap``."""
    if info.file_size > cap:
        raise fail(
            f"member {name} in {path} to hold at most {cap} bytes (what the schema allows), "
            f"got {info.file_size} bytes declared ({info.compress_size} compressed). It is "
            f"refused without being read."
        )


def _read_member(zf, info, path, fail, shape=None, dtype=None):
    """One .npy member: header checked (against ``shape`` and ``dtype`` when given) before the
    data are read; object dtypes refused, so nothing is ever unpickled."""
    name = info.filename[:-4]
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise fail(f"member {name} in {path} in .npy format 1.0 or 2.0, got {version}.")
        if got_dtype.hasobject:
            raise fail(f"member {name} in {path} to hold no Python objects, got {got_dtype}.")
        if shape is not None:
            kind_ok = got_dtype.kind in "iu" if dtype is None else got_dtype == dtype
            if tuple(got_shape) != tuple(shape) or not kind_ok:
                what = "an integer" if dtype is None else str(dtype)
                raise fail(
                    f"member {name} in {path} to hold {name[name.find('/') + 1 :]} of shape "
                    f"{tuple(shape)} and dtype {what}, as its config implies, got shape "
                    f"{tuple(got_shape)} and dtype {got_dtype}."
                )
        nbytes = got_dtype.itemsize * math.prod(got_shape)
        header = f.tell()
        if info.file_size != header + nbytes:
            raise fail(
                f"member {name} in {path} to be {header + nbytes} bytes as its header says, "
                f"got {info.file_size}. The file is corrupt."
            )
        buf = bytearray(nbytes)
        if f.readinto(buf) != nbytes:
            raise fail(f"member {name} in {path} to hold {nbytes} bytes of data. It is corrupt.")
    a = np.frombuffer(buf, dtype=got_dtype)
    a = a.reshape(got_shape[::-1]).T if fortran else a.reshape(got_shape)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a if a.flags.c_contiguous else a.copy(order="C")


def _json_field(a, name, path, fail):
    if a.shape != () or a.dtype.kind != "U":
        raise fail(f"{name} in {path} to be a 0-d unicode array, got {a.dtype} of shape {a.shape}.")
    try:
        return json.loads(a[()])
    except (ValueError, RecursionError) as err:
        raise fail(
            f"{name} in {path} to hold JSON, got text that does not parse ({err}). The file is "
            f"corrupt."
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
