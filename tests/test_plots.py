"""The pictures a run writes: whole PNG files, replaced atomically."""

import os

import numpy as np
import pytest

import lvmcore.checkpoint
from lvmcore.plots import plot_reconstructions, plot_samples


def test_plot_samples_writes_a_png(tmp_path):
    path = plot_samples(np.random.default_rng(0).random((6, 12)), (3, 4), tmp_path / "s.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_picture_that_cannot_be_written_leaves_the_old_one_whole(tmp_path, monkeypatch):
    path = tmp_path / "r.png"
    x = np.random.default_rng(1).random((4, 6))
    plot_reconstructions(x, x, (2, 3), path)
    before = path.read_bytes()
    real = lvmcore.checkpoint.create_temp

    def full_disk(p):
        fd, tmp = real(p)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(lvmcore.checkpoint, "create_temp", full_disk)
    with pytest.raises(OSError, match="No space left"):
        plot_reconstructions(x, 1 - x, (2, 3), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["r.png"]


def test_plot_reconstructions_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="same shape"):
        plot_reconstructions(np.zeros((2, 6)), np.zeros((3, 6)), (2, 3), tmp_path / "r.png")
    assert os.listdir(tmp_path) == []
