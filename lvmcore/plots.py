"""Pictures of a run: samples, reconstructions and bound curves, written as PNG files.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly: nothing is
displayed, and neither pyplot's global figure list nor the session's backend is touched.
"""

import math
import os

import numpy as np

from ._validation import to_numpy
from .checkpoint import write_atomic

__all__ = ["image_grid", "plot_samples", "plot_reconstructions", "plot_bounds", "plot_code_usage"]


def image_grid(images, shape, ncols=None, pad=1, pad_value=np.nan):
    """Tile flattened images into one 2-D array.

    Parameters
    ----------
    images : ndarray of shape (N, D)
        Rows are images flattened row-major, ``D == prod(shape)``.
    shape : tuple of int
        (height, width) of one image.
    ncols : int, optional
        Images per row; about sqrt(N) when None.
    pad : int
        Pixels between images.
    pad_value : float
        Value of the padding pixels; NaN (the default) is drawn as a light grey line.

    Returns
    -------
    ndarray of shape (rows * (h + pad) - pad, ncols * (w + pad) - pad)
    """
    images = to_numpy(images, np.float64)
    h, w = (int(s) for s in shape)
    if images.ndim != 2 or images.shape[1] != h * w:
        raise ValueError(
            f"image_grid: expected images of shape (N, {h * w}) for images of "
            f"shape {tuple(shape)}, got {images.shape}."
        )
    n = images.shape[0]
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    nrows = max(1, math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), pad_value)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[
            i
        ].reshape(h, w)
    return grid


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _show_grid(ax, grid, title):
    # Probabilities and binary data live in [0, 1]; anything else (Gaussian means) is
    # scaled to its own range.
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    vmin, vmax = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
    from matplotlib import colormaps

    cmap = colormaps["gray_r"].with_extremes(bad="#c8c8c8")  # NaN padding: a light grey line
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


def _save(fig, path):
    """Write ``fig`` to ``path`` atomically: into a temporary file beside it, then a rename.

    A reader (or a crash mid-write) never sees a half-written picture, and an existing file at
    ``path`` stays intact if drawing fails. The format follows the suffix (PNG without one).
    """
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=100, bbox_inches="tight"))
    return path


def plot_samples(images, shape, path, title="Samples (decoder mean)"):
    """Save a grid of model samples.

    Parameters
    ----------
    images : ndarray of shape (N, D)
        E.g. ``model.sample(rng, 64)``.
    shape : tuple of int
        (height, width) with ``height * width == D``.
    path : str or os.PathLike
        The PNG file to write.

    Returns
    -------
    str
        ``path``.
    """
    grid = image_grid(images, shape)
    side = max(3.0, min(8.0, grid.shape[1] / 12))
    fig = _figure((side, side * grid.shape[0] / grid.shape[1] + 0.4))
    _show_grid(fig.add_subplot(), grid, title)
    return _save(fig, path)


def plot_reconstructions(x, x_rec, shape, path, title="Data (top) and reconstructions (bottom)"):
    """Save originals in the top row and their reconstructions beneath them.

    Parameters
    ----------
    x, x_rec : ndarray of shape (N, D)
        Data and ``model.reconstruct(x)``.
    shape : tuple of int
        (height, width) with ``height * width == D``.
    path : str or os.PathLike

    Returns
    -------
    str
        ``path``.
    """
    if np.shape(x) != np.shape(x_rec):
        raise ValueError(
            f"plot_reconstructions: expected x and x_rec to have the same shape, "
            f"got {np.shape(x)} and {np.shape(x_rec)}."
        )
    n = np.shape(x)[0]
    both = np.concatenate([to_numpy(x, np.float64), to_numpy(x_rec, np.float64)])
    grid = image_grid(both, shape, ncols=n)
    width = max(3.0, min(12.0, n * 0.8))
    fig = _figure((width, width * grid.shape[0] / grid.shape[1] + 0.4))
    _show_grid(fig.add_subplot(), grid, title)
    return _save(fig, path)


def plot_bounds(history, path, title="Bound per epoch"):
    """Save the train and validation bound per epoch.

    Parameters
    ----------
    history : list of dict
        Metrics records with ``epoch``, ``train_bound`` and ``valid_bound`` (nats; a missing or
        None value is skipped), as returned by :func:`lvmcore.train.fit`.
    path : str or os.PathLike

    Returns
    -------
    str
        ``path``.
    """
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot()
    for key, label in (("train_bound", "train"), ("valid_bound", "validation")):
        pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if pts:
            ep, val = zip(*pts)
            ax.plot(ep, val, marker="o" if len(pts) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("bound (nats per example)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def plot_code_usage(counts, path, title="Codebook usage"):
    r"""Save a bar chart of how many slots each code takes, codes sorted by usage.

    Parameters
    ----------
    counts : ndarray of shape (M,)
        Rows assigned to each code, e.g. ``VQVAE.code_usage(x)``.
    path : str or os.PathLike

    Returns
    -------
    str
        ``path``.

    Notes
    -----
    Codes are drawn in decreasing order of use (a rank plot), so a collapsed codebook shows as
    a short head and a long flat zero tail; the title gives the perplexity
    :math:`\exp(-\sum_m p_m \log p_m)` and the number of unused (dead) codes.
    """
    c = to_numpy(counts, np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(
            f"plot_code_usage: expected counts of shape (M,) with M >= 1, got shape {c.shape}."
        )
    total = c.sum()
    p = c[c > 0] / total if total > 0 else np.ones(1)
    ppl = float(np.exp(-(p * np.log(p)).sum()))
    dead = int((c == 0).sum())
    order = np.sort(c)[::-1]
    fig = _figure((7.0, 3.5))
    ax = fig.add_subplot()
    ax.bar(np.arange(c.size), order, width=1.0, color="#4c72b0", linewidth=0)
    ax.set_xlim(-0.5, c.size - 0.5)
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("slots assigned")
    ax.set_title(f"{title}: perplexity {ppl:.1f} of {c.size}, {dead} unused")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
