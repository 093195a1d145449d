"""Binary image data sets for the Bernoulli-likelihood models.

Two sources, one return type (:class:`Dataset`):

- ``load_digits_binarized`` -- scikit-learn's bundled 8x8 digits, thresholded at 8 of 16.
  Embedded, so it needs no download; the default for examples and quick tests.
- ``load_binarized_mnist`` -- the statically binarized MNIST of Larochelle & Murray (2011),
  the 50,000 / 10,000 / 10,000 split used across the VAE and IWAE literature. It reads the
  original ``binarized_mnist_{train,valid,test}.amat`` text files (``download_binarized_mnist``
  fetches them) or an ``.npz`` holding ``train``, ``valid`` and ``test`` arrays, bit-packed or not.

``load_dataset`` picks one by name (``"digits"``, ``"mnist"``) or by path; ``"digits-levels"``
names the same digits unbinarized (integers 0..16, for the categorical and dequantized models).

Every array is float32 of shape (N, D) with entries exactly 0.0 or 1.0, ready for
``bernoulli_nll``; ``Dataset.shape`` gives the image shape for plotting.

Labels. The digits come with their class ids (0..9); an ``.npz`` may carry ``train_labels``,
``valid_labels`` and ``test_labels`` (integer class ids, one per row of its split: all three or
none). ``Dataset.<split>_labels`` are then int64 arrays of shape (N,) and ``Dataset.n_classes``
is one more than the largest id; without labels they are None. A model that is conditioned on
labels (``Model.needs_labels``) takes them from there (:func:`lvmcore.train.fit`,
``lvmcore eval``).
"""

import hashlib
import os
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validation import check_binary, check_param

__all__ = [
    "Dataset",
    "load_digits_binarized",
    "load_digits_levels",
    "load_binarized_mnist",
    "load_dataset",
    "download_binarized_mnist",
    "DEFAULT_URL",
    "CHECKSUMS",
    "SIZES",
    "MNIST_FILES",
    "LABEL_KEYS",
]

SPLITS = ("train", "valid", "test")
LABEL_KEYS = tuple(f"{split}_labels" for split in SPLITS)
MNIST_FILES = {split: f"binarized_mnist_{split}.amat" for split in SPLITS}
MNIST_IMAGE_SHAPE = (28, 28)
MNIST_D = 784  # 28 * 28 pixels
MNIST_PACKED_D = (MNIST_D + 7) // 8  # 98 bytes per row after np.packbits(X, axis=1)

DEFAULT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"

# SHA-256 of the three public files (sizes 78,400,000 / 15,680,000 / 15,680,000 bytes), from
# tensorflow/datasets, tensorflow_datasets/url_checksums/binarized_mnist.txt. Cross-checked here:
# re-serialising /work/shared/data/binarized_mnist.npz as "0 1 0 ... 0\n" rows reproduces all three
# digests byte for byte.
CHECKSUMS = {
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}

# Exact sizes in bytes of the three public files (784 values "0 " or "1 " per row, with the
# last separator a newline): 50,000, 10,000 and 10,000 rows of 1,568 bytes. A download stops
# reading at this size.
SIZES = {
    "binarized_mnist_train.amat": 78_400_000,
    "binarized_mnist_valid.amat": 15_680_000,
    "binarized_mnist_test.amat": 15_680_000,
}

_DIGITS_N_VALID = 180
_DIGITS_N_TEST = 180
_CHUNK = 1 << 20  # download and hashing block, bytes
_DOWNLOAD_HINT = (
    "Run `lvmcore download-mnist DIR` or lvmcore.data.download_binarized_mnist(DIR), then pass DIR."
)


class Dataset(NamedTuple):
    """A binary image data set split three ways.

    Attributes
    ----------
    train, valid, test : ndarray of shape (N, D), float32
        Images flattened row-major, every entry exactly 0.0 or 1.0; N differs per split.
    name : str
        ``"digits"`` or ``"binarized_mnist"``.
    shape : tuple of int
        Image shape, with ``prod(shape) == D``: (8, 8) for digits, (28, 28) for MNIST.
    train_labels, valid_labels, test_labels : ndarray of int64, shape (N,), or None
        Class ids of the rows of each split, in [0, n_classes); None when the data set has no
        labels (binarized MNIST from ``.amat`` files, an ``.npz`` without them).
    n_classes : int or None
        One more than the largest class id of any split; None without labels.
    source : str or None
        Where ``load_dataset`` found it: the name it was given ("digits", "mnist", ...) or the
        absolute path; training records it, so that ``lvmcore eval`` finds the data again.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    name: str
    shape: tuple
    train_labels: np.ndarray | None = None
    valid_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    n_classes: int | None = None
    source: str | None = None

    def labels(self, split):
        """The labels of ``split`` ("train", "valid" or "test"), or None."""
        if split not in SPLITS:
            raise ValueError(
                f"Dataset.labels: expected split to be one of {list(SPLITS)}, got {split!r}."
            )
        return getattr(self, f"{split}_labels")


# --------------------------------------------------------------------------------------------
# Embedded digits
# --------------------------------------------------------------------------------------------


def load_digits_binarized(seed=0):
    """Scikit-learn's 8x8 digits, binarized at half intensity and split three ways.

    Parameters
    ----------
    seed : int, default 0
        Seed of the ``np.random.default_rng`` permutation that assigns images to splits.
        The same seed gives the same split on every machine.

    Returns
    -------
    Dataset
        ``train`` of shape (1437, 64), ``valid`` (180, 64), ``test`` (180, 64), float32 in
        {0, 1}; ``name="digits"``, ``shape=(8, 8)``; the digit of each row in
        ``train_labels``, ``valid_labels``, ``test_labels`` (int64), ``n_classes=10``.

    Raises
    ------
    InvalidParameterError
        If ``seed`` is not a non-negative int.

    Notes
    -----
    The 1797 images have 4-bit intensities 0..16; a pixel is on when :math:`x \\ge 8`.
    The data ship inside scikit-learn, so nothing is downloaded.
    """
    seed = check_param(seed, "seed", "load_digits_binarized", kind="int", low=0, low_inclusive=True)
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data >= 8).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int64)  # (1797,)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_train = x.shape[0] - _DIGITS_N_VALID - _DIGITS_N_TEST
    cut = [n_train, n_train + _DIGITS_N_VALID]
    train, valid, test = np.split(x[perm], cut)
    labels = np.split(y[perm], cut)
    return Dataset(train, valid, test, "digits", (8, 8), *labels, n_classes=10)


def load_digits_levels(seed=0):
    """Scikit-learn's 8x8 digits at their 17 grey levels (0..16), split as the binarized ones.

    Parameters
    ----------
    seed : int, default 0
        Seed of the split permutation; the same seed puts the same images in each split as
        ``load_digits_binarized``.

    Returns
    -------
    Dataset
        ``train`` (1437, 64), ``valid`` (180, 64), ``test`` (180, 64), float32 holding the
        integers 0..16 (not binary: for the categorical decoder over 17 levels and the
        dequantized models); ``name="digits-levels"``, ``shape=(8, 8)``.
    """
    f = "load_digits_levels"
    seed = check_param(seed, "seed", f, kind="int", low=0, low_inclusive=True)
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)  # (1797, 64), integers 0..16
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_train = x.shape[0] - _DIGITS_N_VALID - _DIGITS_N_TEST
    train, valid, test = np.split(x[perm], [n_train, n_train + _DIGITS_N_VALID])
    return Dataset(train, valid, test, "digits-levels", (8, 8))


# --------------------------------------------------------------------------------------------
# Binarized MNIST
# --------------------------------------------------------------------------------------------


def load_binarized_mnist(path):
    """Statically binarized MNIST (Larochelle & Murray, 2011) from ``.amat`` files or an ``.npz``.

    Parameters
    ----------
    path : str or os.PathLike
        Either a directory holding ``binarized_mnist_train.amat``, ``binarized_mnist_valid.amat``
        and ``binarized_mnist_test.amat`` (whitespace-separated 0/1 text, one image per line),
        or an ``.npz`` file with arrays ``train``, ``valid`` and ``test``, each either unpacked,
        of shape (N, 784) with values 0/1, or bit-packed with ``np.packbits(X, axis=1)``, uint8
        of shape (N, 98); optionally with ``train_labels``, ``valid_labels`` and
        ``test_labels``, integer class ids >= 0, one per row of each split (all three or none).

    Returns
    -------
    Dataset
        ``train``, ``valid``, ``test`` float32 of shape (N, 784) in {0, 1} (N = 50000, 10000,
        10000 for the standard files; any N is read); ``name="binarized_mnist"``,
        ``shape=(28, 28)``; the labels (int64) and ``n_classes`` when the ``.npz`` has them.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist, or a directory lacks one of the three ``.amat`` files.
    ValueError
        If a file cannot be parsed: an unreadable ``.npz``, a missing split, a width other than
        784 (98 when packed), rows of different lengths, or a value other than 0 and 1; labels
        for some splits but not all, of the wrong length, not integers, or negative.

    Notes
    -----
    ``.amat`` files are parsed with vectorised byte operations rather than ``np.loadtxt``:
    every value of the standard files is one character, so the data are the non-whitespace
    bytes and each row's width is a count of them between newlines. On the 78 MB training
    file this takes about 0.5 s against 0.8-1.1 s for ``np.loadtxt`` (NumPy 2.4, C parser),
    and it reports the row of a bad value. Files with longer tokens ("1.0") take a slower
    general path.

    References
    ----------
    H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator",
    AISTATS 2011.
    """
    func = "load_binarized_mnist"
    path = Path(os.fspath(path))
    labels = {}
    if path.is_dir():
        splits = _read_amat_dir(path, func)
    elif path.is_file():
        if path.suffix == ".amat":
            raise ValueError(
                f"{func}: expected a directory holding {_file_list()} or an .npz file, got the "
                f"single file {path}. Pass its directory, {path.parent}."
            )
        splits, labels = _read_npz(path, func)
    else:
        raise FileNotFoundError(
            f"{func}: expected a directory holding {_file_list()} or an .npz file with arrays "
            f"'train', 'valid', 'test', got {path}, which does not exist. {_DOWNLOAD_HINT}"
        )
    if not labels:
        return Dataset(*splits, "binarized_mnist", MNIST_IMAGE_SHAPE)
    n_classes = 1 + max(int(y.max()) for y in labels.values() if y.size)
    return Dataset(
        *splits,
        "binarized_mnist",
        MNIST_IMAGE_SHAPE,
        *(labels[k] for k in LABEL_KEYS),
        n_classes=n_classes,
    )


def _file_list():
    return ", ".join(MNIST_FILES.values())


def _read_amat_dir(directory, func):
    missing = [name for name in MNIST_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{func}: expected {directory} to hold {_file_list()}, got no "
            f"{', '.join(missing)}. {_DOWNLOAD_HINT}"
        )
    return [_read_amat(directory / MNIST_FILES[split], func) for split in SPLITS]


def _read_amat(path, func):
    """One .amat file -> float32 array of shape (N, 784)."""
    raw = path.read_bytes()
    buf = np.frombuffer(raw, dtype=np.uint8)
    is_newline = buf == ord("\n")
    # Whitespace as str.split() sees it in these files: space, tab, CR, LF.
    is_value = ~(is_newline | (buf == ord(" ")) | (buf == ord("\t")) | (buf == ord("\r")))
    if not is_value.any():
        raise ValueError(
            f"{func}: expected {path} to hold rows of {MNIST_D} values 0/1, got an empty file. "
            f"Download it again."
        )
    if (is_value[1:] & is_value[:-1]).any():
        # Some value is longer than one character ("1.0", "255"): take the general path.
        return _read_amat_tokens(raw, path, func)

    # Fast path: every value is one byte, so a row's width is its count of value bytes.
    line_starts = np.concatenate(([0], np.flatnonzero(is_newline) + 1))
    line_starts = line_starts[line_starts < buf.size]
    # reduceat over the uint8 view: on a bool array with dtype=int64 it is ~15x slower.
    widths = np.add.reduceat(is_value.view(np.uint8), line_starts, dtype=np.int64)  # per line
    widths = widths[widths > 0]  # blank lines carry nothing
    _check_widths(widths, path, func)
    chars = np.compress(is_value, buf)  # (N * 784,); ~3x faster than buf[is_value] here
    bad = (chars != ord("0")) & (chars != ord("1"))
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"{func}: expected {path} to hold only the values 0 and 1, got {int(bad.sum())} "
            f"other values, the first {chr(chars[first])!r} in row {first // MNIST_D + 1}. Use the "
            f"statically binarized files; re-download them if they are corrupt."
        )
    return (chars == ord("1")).astype(np.float32).reshape(-1, MNIST_D)


def _read_amat_tokens(raw, path, func):
    """General .amat parse for multi-character values; slower, used only off the standard format."""
    rows = [line.split() for line in raw.splitlines() if line.strip()]
    _check_widths(np.array([len(r) for r in rows]), path, func)
    try:
        x = np.array(rows, dtype=np.float64)  # (N, 784)
    except ValueError as err:
        raise ValueError(
            f"{func}: expected {path} to hold numbers 0 and 1, got text that does not parse "
            f"as numbers ({err}). Re-download the file."
        ) from None
    check_binary(x, str(path), func)
    return x.astype(np.float32)


def _check_widths(widths, path, func):
    """``widths``: values per non-blank row, shape (N,)."""
    if widths.size and (widths != widths[0]).any():
        row = int(np.argmax(widths != widths[0]))
        raise ValueError(
            f"{func}: expected every row of {path} to have the same number of values, got "
            f"{widths[0]} in row 1 but {widths[row]} in row {row + 1}. The file is truncated "
            f"or corrupt; download it again."
        )
    if widths.size and widths[0] != MNIST_D:
        raise ValueError(
            f"{func}: expected {MNIST_D} values (28x28 pixels) per row of {path}, got "
            f"{widths[0]}. Pass binarized MNIST; other data sets have their own loaders."
        )


def _read_npz(path, func):
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{func}: expected {path} to be an .npz archive (a zip file), got a file that is not "
            f"one. Save the splits with np.savez(path, train=..., valid=..., test=...)."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = archive.files
            arrays = {k: archive[k] for k in SPLITS + LABEL_KEYS if k in files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        # Members are read lazily, so a damaged archive can fail here in several ways; all
        # mean the same to the user.
        raise ValueError(
            f"{func}: expected {path} to be a readable .npz archive, got "
            f"{type(err).__name__}: {err}. Re-create the file with np.savez."
        ) from None
    missing = [split for split in SPLITS if split not in arrays]
    if missing:
        raise ValueError(
            f"{func}: expected {path} to hold arrays 'train', 'valid' and 'test', got no "
            f"{', '.join(repr(m) for m in missing)} (it holds {sorted(files)}). Save the splits "
            f"with np.savez(path, train=..., valid=..., test=...)."
        )
    splits = [_unpack_split(arrays[split], f"'{split}' in {path}", func) for split in SPLITS]
    return splits, _read_labels(arrays, splits, path, func)


def _read_labels(arrays, splits, path, func):
    """The ``<split>_labels`` arrays of an archive, checked against their splits: {} or all
    three as int64 (N,)."""
    present = [k for k in LABEL_KEYS if k in arrays]
    if not present:
        return {}
    missing = [k for k in LABEL_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"{func}: expected {path} to hold labels for every split or for none, got "
            f"{', '.join(present)} but no {', '.join(missing)}. Save all three with "
            f"np.savez(path, ..., train_labels=..., valid_labels=..., test_labels=...)."
        )
    out = {}
    for key, x in zip(LABEL_KEYS, splits):
        y = arrays[key]
        name = f"'{key}' in {path}"
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise ValueError(
                f"{func}: expected {name} to be a 1-D array of integer class ids, got "
                f"{y.dtype} of shape {y.shape}. Save it with y.astype(numpy.int64)."
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{func}: expected {name} to have one class id per row of its split "
                f"({x.shape[0]}), got length {y.shape[0]}."
            )
        if y.size and int(y.min()) < 0:
            raise ValueError(
                f"{func}: expected {name} to hold class ids >= 0, got {int((y < 0).sum())} "
                f"negative, e.g. {int(y[y < 0][0])}. Number the classes 0, 1, ..., C - 1."
            )
        out[key] = y.astype(np.int64)
    return out


def _unpack_split(a, name, func):
    """(N, 98) packed uint8 or (N, 784) 0/1 -> float32 (N, 784)."""
    if a.ndim == 2 and a.dtype == np.uint8 and a.shape[1] == MNIST_PACKED_D:
        return np.unpackbits(a, axis=1)[:, :MNIST_D].astype(np.float32)
    if a.ndim != 2 or a.shape[1] != MNIST_D:
        raise ValueError(
            f"{func}: expected {name} to have shape (N, {MNIST_D}) with values 0/1, or to be "
            f"uint8 of shape (N, {MNIST_PACKED_D}) from np.packbits(X, axis=1), got "
            f"{a.dtype} of shape {a.shape}. Flatten images to rows with X.reshape(len(X), -1)."
        )
    if a.dtype.kind not in "biuf":
        raise ValueError(
            f"{func}: expected {name} to hold numbers 0 and 1, got dtype {a.dtype}. "
            f"Save it as uint8 or float32."
        )
    check_binary(a, name, func)
    return a.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Choosing a data set
# --------------------------------------------------------------------------------------------


def load_dataset(name_or_path, *, seed=0):
    """Load a data set by name or path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        ``"digits"``: the embedded 8x8 digits (``load_digits_binarized``).
        ``"digits-levels"``: the same digits at their 17 grey levels (``load_digits_levels``).
        ``"mnist"``: binarized MNIST from the path in the ``LVMCORE_MNIST`` environment variable.
        Anything else: a directory of ``.amat`` files or an ``.npz`` file, read by
        ``load_binarized_mnist``.
    seed : int, default 0
        Split seed for ``"digits"``; the MNIST splits are fixed.

    Returns
    -------
    Dataset

    Raises
    ------
    TypeError
        If ``name_or_path`` is not a str or path.
    FileNotFoundError
        For ``"mnist"`` with ``LVMCORE_MNIST`` unset, or a path that does not exist.
    ValueError
        As ``load_binarized_mnist``.
    """
    func = "load_dataset"
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"{func}: expected name_or_path to be 'digits', 'mnist' or a path, got "
            f"{type(name_or_path).__name__}."
        )
    if name_or_path == "digits":
        return load_digits_binarized(seed=seed)._replace(source="digits")
    if name_or_path == "digits-levels":
        return load_digits_levels(seed=seed)._replace(source="digits-levels")
    if name_or_path == "mnist":
        env = os.environ.get("LVMCORE_MNIST")
        if not env:
            raise FileNotFoundError(
                f"{func}: expected the LVMCORE_MNIST environment variable to name a directory "
                f"holding {_file_list()} or an .npz file, got it unset. Pass the path "
                f"instead of 'mnist', or run `lvmcore download-mnist DIR` and set "
                f"LVMCORE_MNIST=DIR."
            )
        return load_binarized_mnist(env)._replace(source="mnist")
    path = Path(os.fspath(name_or_path))
    if not path.exists():
        raise FileNotFoundError(
            f"{func}: expected 'digits', 'mnist', or the path of a directory of "
            f"binarized_mnist_*.amat files or an .npz file, got {str(name_or_path)!r}, which is "
            f"neither a known name nor an existing path. {_DOWNLOAD_HINT}"
        )
    return load_binarized_mnist(path)._replace(source=str(path.resolve()))


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def download_binarized_mnist(
    dest_dir,
    base_url=DEFAULT_URL,
    checksums=CHECKSUMS,
    progress=True,
    *,
    timeout=60.0,
    sizes=SIZES,
):
    """Download the three binarized MNIST ``.amat`` files and verify their SHA-256.

    Parameters
    ----------
    dest_dir : str or os.PathLike
        Directory to write into; created if absent.
    base_url : str, default DEFAULT_URL
        URL of the folder that holds the files; ``{base_url}/binarized_mnist_train.amat`` etc.
    checksums : dict of str to str, default CHECKSUMS
        Lowercase hex SHA-256 per file name; must cover all three files.
    progress : bool, default True
        Show a tqdm progress bar per file.
    timeout : float, default 60.0
        Seconds to wait on the server before giving up.
    sizes : dict of str to int, default SIZES
        The most bytes to read per file name (the public files' exact sizes). A server that
        announces (Content-Length) or streams more fails at once: nothing beyond this size is
        read or written.

    Returns
    -------
    pathlib.Path
        ``dest_dir``, ready for ``load_binarized_mnist``.

    Raises
    ------
    ValueError
        If ``checksums`` or ``sizes`` lacks a file, a server sends more than its size, or a
        downloaded file's digest differs from its checksum (the partial file is removed; the
        message names the file and both digests or sizes).
    OSError
        If a file cannot be fetched (network error, HTTP error status).

    Notes
    -----
    A file already present with the expected digest is not fetched again; one with another
    digest is replaced. Each file is streamed to a temporary file in ``dest_dir`` and moved into
    place with ``os.replace`` only after its digest checks, so an interrupted or corrupt
    download never leaves a file under the final name.
    """
    func = "download_binarized_mnist"
    missing = [name for name in MNIST_FILES.values() if name not in checksums]
    if missing:
        raise ValueError(
            f"{func}: expected checksums to give a SHA-256 for {_file_list()}, got none for "
            f"{', '.join(missing)}. Add them, or use the default CHECKSUMS."
        )
    if not isinstance(sizes, dict) or any(
        isinstance(sizes.get(n), bool) or not isinstance(sizes.get(n), int) or sizes[n] < 1
        for n in MNIST_FILES.values()
    ):
        raise ValueError(
            f"{func}: expected sizes to give a positive int (bytes) for {_file_list()}, got "
            f"{sizes!r}. Use the default SIZES."
        )
    dest = Path(os.fspath(dest_dir))
    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES.values():
        target = dest / name
        expected = checksums[name].lower()
        if target.is_file() and _sha256_file(target) == expected:
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        _download_one(url, target, expected, sizes[name], progress, timeout, func)
    return dest


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _too_long(func, target, url, limit, got):
    return ValueError(
        f"{func}: expected {target.name} from {url} to be at most {limit} bytes, got {got}. "
        f"The server holds a different file; nothing beyond {limit} bytes was read. Pass "
        f"base_url= a trusted mirror."
    )


def _download_one(url, target, expected, limit, progress, timeout, func):
    from tqdm.auto import tqdm

    # Same directory as the target, so os.replace is an atomic rename on one file system.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise OSError(
                    f"{func}: expected to fetch {url}, got {err}. Check the network or pass "
                    f"base_url= a mirror; or place the files in {target.parent} yourself."
                ) from err
            size = response.headers.get("Content-Length")
            if size is not None and size.strip().isdigit() and int(size) > limit:
                response.close()
                raise _too_long(func, target, url, limit, f"a Content-Length of {int(size)}")
            with (
                response,
                tqdm(
                    total=int(size) if size and size.strip().isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    desc=target.name,
                    disable=not progress,
                ) as bar,
            ):
                left = limit
                # read one byte past the limit at most: a longer stream fails at once, and
                # no byte beyond the limit is written
                while block := response.read(min(_CHUNK, left + 1)):
                    if len(block) > left:
                        raise _too_long(func, target, url, limit, "more (the stream went on)")
                    left -= len(block)
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        actual = digest.hexdigest()
        if actual != expected:
            raise ValueError(
                f"{func}: expected {target.name} from {url} to have SHA-256 {expected}, got "
                f"{actual}. The download is corrupt or the server holds a different file; "
                f"retry, or pass base_url= a trusted mirror."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
