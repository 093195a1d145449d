"""Labels through the data layer: the digits' classes, an .npz's train/valid/test_labels, and
fit handing them to a model conditioned on them (shuffled with their rows), with clear errors
when they are missing, of the wrong length or out of range."""

import numpy as np
import pytest

from lvmcore.data import load_binarized_mnist, load_dataset, load_digits_binarized
from lvmcore.models import CVAE, VAE
from lvmcore.train import fit


def test_digits_carry_their_classes():
    ds = load_digits_binarized()
    assert ds.n_classes == 10
    for split in ("train", "valid", "test"):
        y = ds.labels(split)
        assert y.dtype == np.int64 and y.shape == (getattr(ds, split).shape[0],)
        assert set(np.unique(y)) <= set(range(10))
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data >= 8).astype(np.float32), digits.target
    # every (image, label) pair of a split is one of the original pairs
    row = {tuple(a): set() for a in x}
    for a, b in zip(x, y):
        row[tuple(a)].add(int(b))
    assert all(int(b) in row[tuple(a)] for a, b in zip(ds.test, ds.test_labels))
    with pytest.raises(ValueError, match="Dataset.labels: expected split to be one of"):
        ds.labels("dev")


def _npz(tmp_path, name="d.npz", **extra):
    rng = np.random.default_rng(0)
    splits = {
        s: (rng.random((n, 784)) < 0.3).astype(np.uint8)
        for s, n in (("train", 5), ("valid", 3), ("test", 2))
    }
    np.savez(tmp_path / name, **splits, **extra)
    return tmp_path / name


def test_npz_labels_are_read_and_checked(tmp_path):
    labels = dict(
        train_labels=np.array([0, 1, 2, 0, 1]),
        valid_labels=np.array([2, 2, 0], dtype=np.uint8),
        test_labels=np.array([4, 0]),
    )
    ds = load_dataset(_npz(tmp_path, **labels))
    assert ds.n_classes == 5 and ds.valid_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.test_labels, [4, 0])
    assert load_dataset(_npz(tmp_path, "plain.npz")).train_labels is None
    with pytest.raises(ValueError, match="labels for every split or for none, got train_labels"):
        load_binarized_mnist(_npz(tmp_path, "part.npz", train_labels=labels["train_labels"]))
    bad = dict(labels, valid_labels=np.array([0, 1]))
    with pytest.raises(
        ValueError,
        match=r"'valid_labels' in .* one class id per row of its split \(3\), got length 2",
    ):
        load_binarized_mnist(_npz(tmp_path, "short.npz", **bad))
    bad = dict(labels, test_labels=np.array([-1, 0]))
    with pytest.raises(ValueError, match="class ids >= 0, got 1 negative"):
        load_binarized_mnist(_npz(tmp_path, "neg.npz", **bad))
    bad = dict(labels, train_labels=np.zeros(5))
    with pytest.raises(ValueError, match="1-D array of integer class ids, got float64"):
        load_binarized_mnist(_npz(tmp_path, "float.npz", **bad))


@pytest.fixture(scope="module")
def digits():
    ds = load_digits_binarized()
    return ds._replace(
        train=ds.train[:200],
        valid=ds.valid[:50],
        train_labels=ds.train_labels[:200],
        valid_labels=ds.valid_labels[:50],
    )


def test_fit_passes_shuffled_labels_to_a_labelled_model(digits, monkeypatch):
    model = CVAE(64, 10, 2, (16,), seed=1)
    seen = []
    real = model.loss_and_grads

    def spy(x, rng, **kw):
        seen.append((x.copy(), kw["labels"].copy()))
        return real(x, rng, **kw)

    monkeypatch.setattr(model, "loss_and_grads", spy)
    history = fit(model, digits, epochs=1, batch_size=50, lr=1e-2, progress=False)
    assert len(seen) == 4 and np.isfinite(history[-1]["valid_bound"])
    pairs = {tuple(a) + (int(b),) for a, b in zip(digits.train, digits.train_labels)}
    for xb, yb in seen:  # each row travels with its own label
        assert all(tuple(a) + (int(b),) in pairs for a, b in zip(xb, yb))
    assert not np.array_equal(np.concatenate([y for _, y in seen]), digits.train_labels)
    # a label-free model is given none
    vae = VAE(64, 2, (16,))
    calls = []
    monkeypatch.setattr(vae, "loss_and_grads", lambda x, rng, **kw: calls.append(kw) or (1.0, {}))
    fit(vae, digits._replace(valid=digits.valid[:0]), epochs=1, batch_size=100, progress=False)
    assert calls and all("labels" not in kw for kw in calls)


def test_fit_refuses_missing_short_and_out_of_range_labels(digits):
    model = CVAE(64, 10, 2, (16,))
    with pytest.raises(
        ValueError, match=r"fit: expected dataset.train_labels \(class ids\) for the cvae"
    ):
        fit(model, digits._replace(train_labels=None), epochs=1, progress=False)
    with pytest.raises(
        ValueError, match="expected dataset.valid_labels to have one class id per row of x"
    ):
        fit(model, digits._replace(valid_labels=digits.valid_labels[:10]), epochs=1, progress=False)
    small = CVAE(64, 5, 2, (16,))
    with pytest.raises(ValueError, match=r"expected dataset.train_labels to lie in \[0, 5\)"):
        fit(small, digits, epochs=1, progress=False)
