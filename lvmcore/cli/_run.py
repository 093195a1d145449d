"""What ``sample``, ``explore`` and ``train-prior`` share: reading a trained run (its model, its
recorded state and data), its image shape, and a picture grid with a chosen column count."""

import math
import os
from pathlib import Path

import numpy as np

from ._common import to_device


def load_run(run, device="cpu"):
    """(checkpoint path, model on ``device``, the checkpoint's state) of a run folder or a
    checkpoint file."""
    from ..checkpoint import load_checkpoint, load_model
    from ..train import CHECKPOINT

    run_path = Path(os.fspath(run))
    path = run_path / CHECKPOINT if run_path.is_dir() else run_path
    model = to_device(load_model(path), device)
    _, _, _, state = load_checkpoint(path)
    return path, model, state


def run_dataset(data, state, path):
    """The data set of a run: ``data`` if given, else the source its checkpoint records."""
    from ..data import load_dataset

    data = data or state.get("dataset", {}).get("source")
    if data is None:
        raise ValueError(
            f"expected --data: the run in {path} does not record where its data came from."
        )
    return load_dataset(data)


def image_shape(state, path, dataset=None):
    """The (height, width) of the run's images: the data set's, else the checkpoint's."""
    shape = getattr(dataset, "shape", None) or state.get("dataset", {}).get("shape")
    if not shape or len(shape) != 2:
        raise ValueError(
            f"expected the run in {path} to record an image shape (height, width) for its "
            f"pictures, got {shape!r}. Train it on image data (the digits, MNIST)."
        )
    return tuple(int(s) for s in shape)


def write_grid(images, shape, path, title, ncols=None):
    """Tile images (N, D) in rows of ``ncols`` (about sqrt(N) when None) into a PNG; returns
    the path."""
    from ..plots import _figure, _save, _show_grid, image_grid

    grid = image_grid(images, shape, ncols=ncols)
    width = max(3.0, min(10.0, grid.shape[1] / 10))
    fig = _figure((width, width * grid.shape[0] / grid.shape[1] + 0.5))
    _show_grid(fig.add_subplot(), grid, title)
    return _save(fig, path)


def label_value(value, name, model):
    """A class id given on the command line or in Python, checked against the model: an int in
    [0, n_classes) for a model that needs labels; refused for any other."""
    if not model.needs_labels:
        raise ValueError(
            f"expected no {name}: the {model.name} model is not conditioned on labels. Leave "
            f"{name} out."
        )
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"expected {name} to be an int class id, got {value!r}.")
    if not 0 <= int(value) < model.n_classes:
        raise ValueError(
            f"expected {name} in [0, {model.n_classes}) (the model's classes), got {value}."
        )
    return int(value)


def square(n):
    """The side of the smallest square grid holding n pictures."""
    return max(1, math.isqrt(n - 1) + 1) if n > 0 else 1
