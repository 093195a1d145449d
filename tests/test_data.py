"""Tests for lvmcore.data: loaders, their error messages, and the checked download."""

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from lvmcore.data import (
    CHECKSUMS,
    MNIST_FILES,
    Dataset,
    download_binarized_mnist,
    load_binarized_mnist,
    load_dataset,
    load_digits_binarized,
)
from lvmcore.data import SIZES as MNIST_SIZES
from lvmcore.exceptions import InvalidParameterError

SHARED_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binarized_mnist.npz"
SIZES = {"train": 7, "valid": 3, "test": 2}  # small N: the loaders must not assume 50000 rows


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _random_splits(rng):
    return {s: (rng.random((n, 784)) < 0.3).astype(np.uint8) for s, n in SIZES.items()}


def _amat_text(x, sep=" ", newline="\n"):
    return newline.join(sep.join(str(v) for v in row) for row in x) + newline


def _write_amat_dir(directory, splits, **fmt):
    directory.mkdir(parents=True, exist_ok=True)
    for split, x in splits.items():
        (directory / MNIST_FILES[split]).write_text(_amat_text(x, **fmt))
    return directory


def _assert_same(ds, splits):
    assert isinstance(ds, Dataset)
    assert ds.name == "binarized_mnist" and ds.shape == (28, 28)
    for split, x in splits.items():
        got = getattr(ds, split)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got, x)


def _sorted_rows(x):
    return x[np.lexsort(x.T[::-1])]


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------


def test_digits_shapes_binary_and_a_partition():
    from sklearn.datasets import load_digits

    ds = load_digits_binarized()
    assert ds.name == "digits" and ds.shape == (8, 8)
    assert [a.shape for a in ds[:3]] == [(1437, 64), (180, 64), (180, 64)]
    for a in ds[:3]:
        assert a.dtype == np.float32
        assert set(np.unique(a)) <= {0.0, 1.0}
    full = (load_digits().data >= 8).astype(np.float32)
    np.testing.assert_array_equal(_sorted_rows(np.vstack(ds[:3])), _sorted_rows(full))


def test_digits_split_is_deterministic_per_seed():
    a, b, c = load_digits_binarized(seed=3), load_digits_binarized(seed=3), load_digits_binarized(4)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.train, c.train)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_digits_rejects_bad_seed(seed):
    with pytest.raises(InvalidParameterError, match="'seed' parameter of load_digits_binarized"):
        load_digits_binarized(seed=seed)


# --------------------------------------------------------------------------------------------
# .amat directories
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt",
    [
        {},  # the published format: "0 1 ... 0\n"
        {"newline": "\r\n"},
        {"sep": "\t"},
        {"sep": "  ", "newline": "\n\n"},  # runs of spaces and blank lines
    ],
    ids=["standard", "crlf", "tabs", "blank-lines"],
)
def test_amat_round_trip(tmp_path, rng, fmt):
    splits = _random_splits(rng)
    _assert_same(load_binarized_mnist(_write_amat_dir(tmp_path / "d", splits, **fmt)), splits)


def test_amat_round_trip_multichar_values(tmp_path, rng):
    splits = _random_splits(rng)
    d = tmp_path / "d"
    d.mkdir()
    for split, x in splits.items():
        # "1.0 0.0 ..." rows and no final newline: the general (multi-character) parser
        text = "\n".join(" ".join(f"{v:.1f}" for v in row) for row in x)
        (d / MNIST_FILES[split]).write_text(text)
    _assert_same(load_binarized_mnist(str(d)), splits)


def test_amat_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected a directory holding .* does not exist"):
        load_binarized_mnist(tmp_path / "nowhere")


def test_amat_missing_file_named(tmp_path, rng):
    d = _write_amat_dir(tmp_path / "d", _random_splits(rng))
    (d / "binarized_mnist_valid.amat").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"load_binarized_mnist: expected .*d to hold .* got no "
        r"binarized_mnist_valid\.amat\. Run `lvmcore download-mnist",
    ):
        load_binarized_mnist(d)


def test_amat_single_file_points_to_its_directory(tmp_path, rng):
    d = _write_amat_dir(tmp_path / "d", _random_splits(rng))
    with pytest.raises(ValueError, match=r"got the single file .* Pass its directory"):
        load_binarized_mnist(d / "binarized_mnist_train.amat")


def _corrupt_train(tmp_path, rng, text):
    d = _write_amat_dir(tmp_path / "d", _random_splits(rng))
    (d / "binarized_mnist_train.amat").write_text(text)
    return d


@pytest.mark.parametrize(
    "text, match",
    [
        (
            _amat_text(np.zeros((4, 783), np.uint8)),
            r"expected 784 values \(28x28 pixels\) per row of .*binarized_mnist_train\.amat, got 783",
        ),
        (
            _amat_text(np.zeros((4, 784), np.uint8)).replace("0", "2", 1),
            r"expected .*train\.amat to hold only the values 0 and 1, got 1 other values, the first "
            r"'2' in row 1",
        ),
        (
            _amat_text(np.zeros((4, 784), np.uint8)) + "1 0 1\n",
            r"expected every row of .*train\.amat to have the same number of values, got 784 in row 1 "
            r"but 3 in row 5\. The file is truncated",
        ),
        ("", r"expected .*train\.amat to hold rows of 784 values 0/1, got an empty file"),
        (" \n\n", r"got an empty file"),
        (_amat_text(np.full((2, 784), 0.5)), r"expected .*train\.amat to be binary"),
        (
            _amat_text(np.zeros((2, 784), np.uint8)).replace("0", "xy", 1),
            r"expected .*train\.amat to hold numbers 0 and 1, got text that does not parse",
        ),
        (_amat_text(np.zeros((2, 783))), r"expected 784 values .* got 783"),  # multi-char path
    ],
    ids=[
        "width",
        "non-binary",
        "ragged",
        "empty",
        "whitespace-only",
        "non-binary-float",
        "not-a-number",
        "width-float",
    ],
)
def test_amat_errors(tmp_path, rng, text, match):
    d = _corrupt_train(tmp_path, rng, text)
    with pytest.raises(ValueError, match="load_binarized_mnist: .*" + match):
        load_binarized_mnist(d)


# --------------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda x: np.packbits(x, axis=1),
        lambda x: x,
        lambda x: x.astype(np.float32),
        lambda x: x.astype(bool),
    ],
    ids=["packed", "uint8", "float32", "bool"],
)
def test_npz_round_trip(tmp_path, rng, encode):
    splits = _random_splits(rng)
    path = tmp_path / "m.npz"
    np.savez(path, **{s: encode(x) for s, x in splits.items()})
    _assert_same(load_binarized_mnist(path), splits)


def test_npz_compressed_round_trip(tmp_path, rng):
    splits = _random_splits(rng)
    path = tmp_path / "m.npz"
    np.savez_compressed(path, **{s: np.packbits(x, axis=1) for s, x in splits.items()})
    _assert_same(load_binarized_mnist(str(path)), splits)


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"this is not an archive")
    with pytest.raises(
        ValueError, match=r"expected .*m\.npz to be an \.npz archive \(a zip file\)"
    ):
        load_binarized_mnist(path)


def test_npz_truncated(tmp_path, rng):
    path = tmp_path / "m.npz"
    np.savez(path, **_random_splits(rng))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])  # keeps a readable-looking zip tail
    with pytest.raises(ValueError, match=r"load_binarized_mnist: expected .*m\.npz to be"):
        load_binarized_mnist(path)


def test_npz_missing_split(tmp_path, rng):
    splits = _random_splits(rng)
    path = tmp_path / "m.npz"
    np.savez(path, train=splits["train"], validation=splits["valid"], test=splits["test"])
    with pytest.raises(
        ValueError,
        match=r"to hold arrays 'train', 'valid' and 'test', got no "
        r"'valid' \(it holds \['test', 'train', 'validation'\]\)",
    ):
        load_binarized_mnist(path)


@pytest.mark.parametrize(
    "bad, match",
    [
        (
            np.zeros((3, 700), np.float32),
            r"expected 'train' in .*m\.npz to have shape \(N, 784\) .* "
            r"got float32 of shape \(3, 700\)",
        ),
        (np.zeros((3, 97), np.uint8), r"uint8 of shape \(N, 98\) .* got uint8 of shape \(3, 97\)"),
        (np.zeros((3, 28, 28), np.uint8), r"got uint8 of shape \(3, 28, 28\)\. Flatten"),
        (np.full((3, 784), 0.5, np.float32), r"expected 'train' in .*m\.npz to be binary"),
        (np.full((3, 784), 255, np.uint8), r"to be binary .* e\.g\. 255\.0"),
        (np.full((3, 784), "1"), r"to hold numbers 0 and 1, got dtype <U1"),
    ],
    ids=["width", "packed-width", "3d", "non-binary", "uint8-255", "strings"],
)
def test_npz_bad_split(tmp_path, rng, bad, match):
    splits = _random_splits(rng)
    path = tmp_path / "m.npz"
    np.savez(path, train=bad, valid=splits["valid"], test=splits["test"])
    with pytest.raises(ValueError, match="load_binarized_mnist: .*" + match):
        load_binarized_mnist(path)


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


def test_load_dataset_digits():
    ds, ref = load_dataset("digits", seed=2), load_digits_binarized(seed=2)
    np.testing.assert_array_equal(ds.test, ref.test)


def test_load_dataset_mnist_from_env(tmp_path, rng, monkeypatch):
    splits = _random_splits(rng)
    path = tmp_path / "m.npz"
    np.savez(path, **splits)
    monkeypatch.setenv("LVMCORE_MNIST", str(path))
    _assert_same(load_dataset("mnist"), splits)


def test_load_dataset_mnist_without_env(monkeypatch):
    monkeypatch.delenv("LVMCORE_MNIST", raising=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"load_dataset: expected the LVMCORE_MNIST "
        r"environment variable .* got it unset\. Pass the "
        r"path .* `lvmcore download-mnist DIR`",
    ):
        load_dataset("mnist")


@pytest.mark.parametrize("as_str", [True, False])
def test_load_dataset_path(tmp_path, rng, as_str):
    splits = _random_splits(rng)
    d = _write_amat_dir(tmp_path / "d", splits)
    _assert_same(load_dataset(str(d) if as_str else d), splits)


def test_load_dataset_unknown_name():
    with pytest.raises(
        FileNotFoundError,
        match=r"expected 'digits', 'mnist', or the path .* got "
        r"'digts', which is neither a known name",
    ):
        load_dataset("digts")


def test_load_dataset_type_error():
    with pytest.raises(TypeError, match=r"load_dataset: expected name_or_path .* got int"):
        load_dataset(3)


# --------------------------------------------------------------------------------------------
# Download, against a loopback HTTP server
# --------------------------------------------------------------------------------------------


_STREAMED = []  # bytes the endless mirror of the server fixture managed to send


@pytest.fixture
def server(tmp_path, rng, monkeypatch):
    """Serve small .amat files on 127.0.0.1; yields (base_url, checksums, splits, requests)."""
    for var in ("no_proxy", "NO_PROXY"):  # a proxy in the environment must not see loopback
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    served = _write_amat_dir(tmp_path / "served", _random_splits(rng))
    splits = {s: np.loadtxt(served / MNIST_FILES[s], ndmin=2) for s in SIZES}
    checksums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in served.iterdir()}
    requests = []
    _STREAMED.clear()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            if self.path.startswith("/endless/"):  # a hostile mirror: no length, no end
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(200):  # 200 MiB, unless the client hangs up first
                        self.wfile.write(bytes(1 << 20))
                        _STREAMED.append(1 << 20)
                except OSError:
                    pass
                return
            super().do_GET()

        def log_message(self, format, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", checksums, splits, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_writes_verified_files(tmp_path, server):
    base_url, checksums, splits, requests = server
    dest = download_binarized_mnist(
        tmp_path / "dest" / "nested", base_url, checksums, progress=True
    )
    assert sorted(p.name for p in dest.iterdir()) == sorted(MNIST_FILES.values())
    assert sorted(requests) == sorted("/" + name for name in MNIST_FILES.values())
    _assert_same(load_binarized_mnist(dest), splits)


def test_download_skips_files_present_and_replaces_wrong_ones(tmp_path, server):
    base_url, checksums, splits, requests = server
    dest = download_binarized_mnist(tmp_path / "dest", base_url, checksums, progress=False)
    assert len(requests) == 3
    download_binarized_mnist(dest, base_url, checksums, progress=False)
    assert len(requests) == 3
    (dest / "binarized_mnist_test.amat").write_text("stale\n")
    download_binarized_mnist(dest, base_url, checksums, progress=False)
    assert requests[3:] == ["/binarized_mnist_test.amat"]
    _assert_same(load_binarized_mnist(dest), splits)


def test_download_checksum_mismatch_leaves_no_file(tmp_path, server):
    base_url, checksums, _, _ = server
    actual = checksums["binarized_mnist_valid.amat"]
    wrong = dict(checksums, **{"binarized_mnist_valid.amat": "0" * 64})
    dest = tmp_path / "dest"
    with pytest.raises(
        ValueError,
        match=rf"download_binarized_mnist: expected "
        rf"binarized_mnist_valid\.amat from .* to have SHA-256 "
        rf"{'0' * 64}, got {actual}\. The download is corrupt",
    ):
        download_binarized_mnist(dest, base_url, wrong, progress=False)
    # train came before valid and stays; no valid, no temporary file
    assert [p.name for p in dest.iterdir()] == ["binarized_mnist_train.amat"]


def test_download_http_error_leaves_no_file(tmp_path, server):
    base_url, checksums, _, _ = server
    dest = tmp_path / "dest"
    with pytest.raises(
        OSError,
        match=r"download_binarized_mnist: expected to fetch "
        r"http://127\.0\.0\.1:\d+/missing/binarized_mnist_train\.amat"
        r", got HTTP Error 404",
    ):
        download_binarized_mnist(dest, base_url + "missing", checksums, progress=False)
    assert list(dest.iterdir()) == []


def test_download_requires_every_checksum(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"expected checksums to give a SHA-256 for .* got none "
        r"for binarized_mnist_test\.amat",
    ):
        download_binarized_mnist(
            tmp_path,
            checksums={
                "binarized_mnist_train.amat": "0" * 64,
                "binarized_mnist_valid.amat": "0" * 64,
            },
        )
    assert list(tmp_path.iterdir()) == []


def test_default_checksums_cover_the_files():
    assert set(CHECKSUMS) == set(MNIST_FILES.values())
    for digest in CHECKSUMS.values():
        assert len(digest) == 64 and int(digest, 16) >= 0


# --------------------------------------------------------------------------------------------
# The shared copy of the real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_mnist():
    if not SHARED_NPZ.is_file():
        pytest.skip(f"{SHARED_NPZ} is absent")
    return load_binarized_mnist(SHARED_NPZ)


def test_shared_npz_shapes_and_means(shared_mnist):
    ds = shared_mnist
    assert [a.shape for a in ds[:3]] == [(50000, 784), (10000, 784), (10000, 784)]
    assert all(a.dtype == np.float32 for a in ds[:3])
    # Means published with the data (shared/data/README.md).
    assert ds.train.mean(dtype=np.float64) == pytest.approx(0.1306, abs=5e-5)
    assert ds.valid.mean(dtype=np.float64) == pytest.approx(0.1311, abs=5e-5)
    assert ds.test.mean(dtype=np.float64) == pytest.approx(0.1325, abs=5e-5)


def _published_amat_bytes(x):
    """(N, 784) 0/1 -> the published .amat layout, "0 1 ... 0\n" per row (1568 bytes)."""
    chars = np.full((x.shape[0], 2 * 784), ord(" "), np.uint8)  # (N, 1568)
    chars[:, 0::2] = x.astype(np.uint8) + ord("0")
    chars[:, -1] = ord("\n")
    return chars.tobytes()


def test_shared_npz_reproduces_published_checksums(shared_mnist):
    # Serialised in the published layout, the shared splits hash to CHECKSUMS (taken from
    # TensorFlow Datasets): the checksums and the shared copy describe the same 70,000 images.
    for split in SIZES:
        data = _published_amat_bytes(getattr(shared_mnist, split))
        assert hashlib.sha256(data).hexdigest() == CHECKSUMS[MNIST_FILES[split]]


@pytest.mark.slow
def test_shared_npz_full_size_amat_round_trip(tmp_path, shared_mnist):
    for split in SIZES:
        data = _published_amat_bytes(getattr(shared_mnist, split))
        (tmp_path / MNIST_FILES[split]).write_bytes(data)
    reread = load_binarized_mnist(tmp_path)
    for split in SIZES:
        np.testing.assert_array_equal(getattr(reread, split), getattr(shared_mnist, split))


def _count_writes(monkeypatch):
    """Record every byte download_binarized_mnist writes to its temporary files."""
    import lvmcore.data as data_module

    written = []
    real_fdopen = data_module.os.fdopen

    class Counting:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            written.append(len(b))
            return self.f.write(b)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(data_module.os, "fdopen", lambda *a, **k: Counting(real_fdopen(*a, **k)))
    return written


def test_download_stops_at_the_expected_size_of_an_endless_stream(tmp_path, server, monkeypatch):
    # A mirror streaming 200 MiB for a file of known size used to be written out in full
    # before the checksum failed; now reading stops one byte past the size.
    base_url, checksums, _, _ = server
    written = _count_writes(monkeypatch)
    limit = 3 * (1 << 20) + 5
    sizes = dict(MNIST_SIZES, **{"binarized_mnist_train.amat": limit})
    dest = tmp_path / "dest"
    with pytest.raises(
        ValueError,
        match=r"download_binarized_mnist: expected binarized_mnist_train\.amat from "
        r"http://127\.0\.0\.1:\d+/endless/binarized_mnist_train\.amat to be at most 3145733 "
        r"bytes, got more \(the stream went on\)\. .* nothing beyond 3145733 bytes was read",
    ):
        download_binarized_mnist(dest, base_url + "endless", checksums, progress=False, sizes=sizes)
    assert sum(written) <= limit
    assert list(dest.iterdir()) == []  # no file, no temporary
    assert sum(_STREAMED) < 100 * (1 << 20)  # the client hung up long before the 200 MiB


def test_download_refuses_a_longer_content_length_before_reading(tmp_path, server, monkeypatch):
    base_url, checksums, _, _ = server
    written = _count_writes(monkeypatch)
    sizes = dict(MNIST_SIZES, **{"binarized_mnist_valid.amat": 100})
    dest = tmp_path / "dest"
    with pytest.raises(
        ValueError,
        match=r"expected binarized_mnist_valid\.amat from .* to be at most 100 bytes, got a "
        r"Content-Length of \d+",
    ):
        download_binarized_mnist(dest, base_url, checksums, progress=False, sizes=sizes)
    assert [p.name for p in dest.iterdir()] == ["binarized_mnist_train.amat"]
    train_size = (dest / "binarized_mnist_train.amat").stat().st_size
    assert sum(written) == train_size  # nothing of the valid file was written
    with pytest.raises(ValueError, match=r"expected sizes to give a positive int"):
        download_binarized_mnist(dest, base_url, checksums, progress=False, sizes={})


def test_default_sizes_are_those_of_the_public_files():
    # 784 characters "0"/"1" and 784 separators per row
    assert MNIST_SIZES == {
        "binarized_mnist_train.amat": 50_000 * 1568,
        "binarized_mnist_valid.amat": 10_000 * 1568,
        "binarized_mnist_test.amat": 10_000 * 1568,
    }
