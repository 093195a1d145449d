"""Tools to look inside a latent space: interpolation, attribute arithmetic, traversals, the 2-D
manifold, and the pictures of each.

Shape letters: N rows, Z latent, D data, n points along a path, R rows of a picture.

Every function takes arrays (NumPy or CuPy; results stay on the input's device) and, for the
pictures, a ``decode`` callable mapping latents (N, Z) to images (N, D) (e.g. a model's
decoder mean), so any model can use them. The picture writers draw through
``lvmcore.plots`` (atomic writes: a temporary file beside the target, then a rename) and return
the arrays they drew.
"""

import math

import numpy as np
from scipy.special import ndtri

from ._validation import check_array, check_param, get_xp, to_numpy
from .plots import _figure, _save, _show_grid, image_grid

__all__ = [
    "lerp",
    "slerp",
    "interpolate",
    "attribute_vector",
    "attribute_arithmetic",
    "prior_quantiles",
    "traverse",
    "quantile_grid",
    "write_interpolation",
    "write_arithmetic",
    "write_traversal",
    "write_manifold",
    "write_latent_scatter",
]

# Below this |sin(angle)| the slerp weights are replaced by their limit (linear weights): the
# error of that limit is O(angle^2) ~ 1e-14 relative, below float64 rounding of the formula.
_SLERP_MIN_SIN = 1e-7


def _check_pair(z0, z1, func):
    check_array(z0, "z0", func, ndim=(1, 2))
    check_array(z1, "z1", func, ndim=(1, 2))
    if tuple(z0.shape) != tuple(z1.shape):
        raise ValueError(
            f"{func}: expected z1 to have z0's shape {tuple(z0.shape)} (the same latent size), "
            f"got {tuple(z1.shape)}. Encode both inputs with the same model."
        )
    if get_xp(z0) is not get_xp(z1):
        raise TypeError(f"{func}: expected z0 and z1 on one device, got a NumPy and a CuPy array.")


def _steps(n, func, xp, dtype):
    n = check_param(n, "n", func, kind="int", low=2, low_inclusive=True)
    return xp.linspace(0.0, 1.0, n).astype(dtype)


def lerp(z0, z1, n=10):
    """Points evenly spaced on the segment from z0 to z1.

    Parameters
    ----------
    z0, z1 : ndarray of shape (Z,) or (N, Z)
    n : int, default 10
        Points, endpoints included (>= 2).

    Returns
    -------
    ndarray of shape (n, *z0.shape)
        ``out[0] == z0`` and ``out[-1] == z1`` exactly.
    """
    func = "lerp"
    _check_pair(z0, z1, func)
    xp = get_xp(z0)
    t = _steps(n, func, xp, z0.dtype).reshape((-1,) + (1,) * z0.ndim)  # (n, 1[, 1])
    return (1 - t) * z0 + t * z1


def slerp(z0, z1, n=10):
    """Points on the great-circle arc from z0 to z1 (spherical linear interpolation).

    Parameters
    ----------
    z0, z1 : ndarray of shape (Z,) or (N, Z)
    n : int, default 10
        Points, endpoints included (>= 2).

    Returns
    -------
    ndarray of shape (n, *z0.shape)
        ``out[0] == z0`` and ``out[-1] == z1`` exactly.

    Notes
    -----
    With :math:`\\cos\\Omega = z_0\\cdot z_1 / (|z_0||z_1|)`,

    .. math::

        z(t) = \\frac{\\sin((1-t)\\Omega)}{\\sin\\Omega} z_0
             + \\frac{\\sin(t\\Omega)}{\\sin\\Omega} z_1 .

    Between endpoints of equal norm r the path keeps norm r, where the straight segment dips
    towards the origin, a region of low prior density in high dimension (White 2016). Where
    :math:`\\sin\\Omega < 10^{-7}` or an endpoint is 0 the linear weights are used: for parallel
    vectors they are the formula's limit; for opposite vectors no single great circle exists
    and the segment (through the origin) is returned.

    References
    ----------
    K. Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985. T. White,
    "Sampling Generative Networks", 2016, sec. 2.1.
    """
    func = "slerp"
    _check_pair(z0, z1, func)
    xp = get_xp(z0)
    t = _steps(n, func, xp, z0.dtype).reshape((-1,) + (1,) * z0.ndim)  # (n, 1[, 1])
    n0 = xp.sqrt((z0 * z0).sum(axis=-1, keepdims=True))  # (..., 1)
    n1 = xp.sqrt((z1 * z1).sum(axis=-1, keepdims=True))
    denom = n0 * n1
    safe = xp.where(denom > 0, denom, 1)
    cos = xp.clip((z0 * z1).sum(axis=-1, keepdims=True) / safe, -1, 1)
    omega = xp.arccos(cos)
    so = xp.sin(omega)
    arc = (so > _SLERP_MIN_SIN) & (denom > 0)  # (..., 1)
    so = xp.where(arc, so, 1)
    w0 = xp.where(arc, xp.sin((1 - t) * omega) / so, 1 - t)  # (n, ..., 1)
    w1 = xp.where(arc, xp.sin(t * omega) / so, t)
    return (w0 * z0 + w1 * z1).astype(z0.dtype)


def interpolate(z0, z1, n=10, method="slerp"):
    """``slerp`` or ``lerp`` by name; shape (n, *z0.shape)."""
    method = check_param(method, "method", "interpolate", kind="choice", choices=("slerp", "lerp"))
    return (slerp if method == "slerp" else lerp)(z0, z1, n)


def _check_labels(labels, n_rows, func, name="labels", n_classes=None):
    check_array(labels, name, func, dtype="any", ndim=1, finite=False)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"{func}: expected {name} to be an integer array of class ids, got dtype "
            f"{labels.dtype}. Cast it with {name}.astype(numpy.int64)."
        )
    if labels.shape[0] != n_rows:
        raise ValueError(
            f"{func}: expected {name} to have one entry per latent row ({n_rows}), got length "
            f"{labels.shape[0]}."
        )
    hi = "inf" if n_classes is None else n_classes
    bad = (labels < 0) if n_classes is None else ((labels < 0) | (labels >= n_classes))
    if bool(bad.any()):
        raise ValueError(
            f"{func}: expected {name} to lie in [0, {hi}), got {int(bad.sum())} outside, e.g. "
            f"{int(labels[bad][0])}."
        )
    return labels


def _check_label_value(value, name, func):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{func}: expected {name} to be an int class id, got {value!r}.")
    return int(value)


def attribute_vector(z, labels, a, b):
    """The mean latent of label ``a`` minus the mean latent of label ``b``.

    Parameters
    ----------
    z : ndarray of shape (N, Z)
        Latents (e.g. posterior means) of labelled inputs.
    labels : ndarray of int, shape (N,)
    a, b : int
        Class ids, each present in ``labels``.

    Returns
    -------
    ndarray of shape (Z,)
        :math:`\\bar z_a - \\bar z_b`, the direction that turns b into a on average.
    """
    func = "attribute_vector"
    check_array(z, "z", func, ndim=2)
    _check_labels(labels, z.shape[0], func)
    means = []
    for name, value in (("a", a), ("b", b)):
        value = _check_label_value(value, name, func)
        rows = labels == value
        count = int(rows.sum())
        if count == 0:
            present = sorted(set(to_numpy(labels).tolist()))
            raise ValueError(
                f"{func}: expected label {name}={value} to occur in labels, got none of it "
                f"(labels present: {present[:20]})."
            )
        means.append(z[rows].sum(axis=0) / count)
    return means[0] - means[1]


def attribute_arithmetic(z, labels, a, b, z_query, scales=(1.0,)):
    """Add the attribute vector a - b to query latents.

    Parameters
    ----------
    z, labels, a, b
        As for :func:`attribute_vector`.
    z_query : ndarray of shape (Q, Z)
        Latents of the inputs to change.
    scales : sequence of float, default (1.0,)
        Multiples of the vector to add (0 keeps the query).

    Returns
    -------
    ndarray of shape (len(scales), Q, Z)
        ``out[s] = z_query + scales[s] * (mean z_a - mean z_b)``.
    """
    func = "attribute_arithmetic"
    v = attribute_vector(z, labels, a, b)
    check_array(z_query, "z_query", func, ndim=2)
    if z_query.shape[1] != z.shape[1]:
        raise ValueError(
            f"{func}: expected z_query.shape[1] == z.shape[1] ({z.shape[1]}), got z_query of "
            f"shape {tuple(z_query.shape)}. Encode the queries with the same model."
        )
    scales = [check_param(s, "scales", func) for s in scales]
    if not scales:
        raise ValueError(f"{func}: expected scales to hold at least one value, got none.")
    s = get_xp(z).asarray(scales, dtype=z.dtype).reshape(-1, 1, 1)
    return z_query[None] + s * v


def _check_levels(low, high, func):
    low = check_param(low, "low", func, low=0, high=1, high_inclusive=False)
    high = check_param(high, "high", func, low=0, high=1, high_inclusive=False)
    if not low < high:
        raise ValueError(f"{func}: expected low < high, got low={low} and high={high}.")
    return low, high


def prior_quantiles(n, low=0.05, high=0.95):
    """Standard-normal quantiles at n levels evenly spaced in [low, high].

    Parameters
    ----------
    n : int
        n >= 1 (one level: the median, 0).
    low, high : float in (0, 1), low < high

    Returns
    -------
    ndarray of float64, shape (n,)
        :math:`\\Phi^{-1}(p_i)`, :math:`p_i = \\mathrm{linspace}(low, high, n)`; symmetric
        about 0 when ``low == 1 - high``.
    """
    func = "prior_quantiles"
    n = check_param(n, "n", func, kind="int", low=1, low_inclusive=True)
    low, high = _check_levels(low, high, func)
    p = np.full(1, 0.5) if n == 1 else np.linspace(low, high, n)
    return ndtri(p)


def traverse(z, values):
    """Copies of z with one dimension at a time set to each value.

    Parameters
    ----------
    z : ndarray of shape (Z,)
    values : ndarray of shape (V,)
        E.g. ``prior_quantiles(V)``.

    Returns
    -------
    ndarray of shape (Z, V, Z)
        ``out[d, v] = z`` with ``out[d, v, d] = values[v]``.
    """
    func = "traverse"
    check_array(z, "z", func, ndim=1)
    values = get_xp(z).asarray(values, dtype=z.dtype)
    check_array(values, "values", func, ndim=1)
    if values.shape[0] < 1:
        raise ValueError(f"{func}: expected at least one value, got an empty array.")
    xp = get_xp(z)
    Z, V = z.shape[0], values.shape[0]
    out = xp.broadcast_to(z, (Z, V, Z)).copy()  # (Z, V, Z)
    out[xp.arange(Z), :, xp.arange(Z)] = values
    return out


def quantile_grid(n, low=0.05, high=0.95):
    """Latents of a 2-D latent space at an n-by-n grid of prior quantiles.

    Returns
    -------
    ndarray of float64, shape (n*n, 2)
        Row ``i*n + j`` is ``(q[j], q[n-1-i])`` with ``q = prior_quantiles(n, low, high)``:
        in the picture's row i and column j, z_1 grows to the right and z_2 upwards.
    """
    q = prior_quantiles(n, low, high)
    n = q.shape[0]
    z1 = np.tile(q, n)
    z2 = np.repeat(q[::-1], n)
    return np.stack([z1, z2], axis=1)


# --- pictures ----------------------------------------------------------------------------------


def _decode(decode, z, n_pixels, func):
    if not callable(decode):
        raise TypeError(
            f"{func}: expected decode to be a callable from latents (N, Z) to images (N, D), got "
            f"{type(decode).__name__}."
        )
    images = decode(z)
    if getattr(images, "ndim", None) != 2 or tuple(images.shape) != (z.shape[0], n_pixels):
        raise ValueError(
            f"{func}: expected decode to return images of shape ({z.shape[0]}, {n_pixels}) for "
            f"latents of shape {tuple(z.shape)} and images of the given shape, got "
            f"{tuple(getattr(images, 'shape', ()))}."
        )
    return to_numpy(images, np.float64)


def _check_shape(shape, func):
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{func}: expected shape to be (height, width), got {shape!r}.") from None
    if h < 1 or w < 1:
        raise ValueError(f"{func}: expected shape to be positive (height, width), got {shape!r}.")
    return h, w


def _save_grid(grid, path, title, width):
    fig = _figure((width, width * grid.shape[0] / grid.shape[1] + 0.5))
    _show_grid(fig.add_subplot(), grid, title)
    return _save(fig, path)


def write_interpolation(decode, z0, z1, shape, path, n=10, method="slerp", title=None):
    """Picture of the decoded path between two latents (one strip per row of z0).

    Parameters
    ----------
    decode : callable (N, Z) -> (N, D)
    z0, z1 : ndarray of shape (Z,) or (R, Z)
    shape : tuple of int
        (height, width) of one image, height * width == D.
    path : str or os.PathLike
    n : int, default 10
    method : {"slerp", "lerp"}

    Returns
    -------
    dict
        ``z`` (R, n, Z) the latents, ``images`` (R, n, D) their decodings, ``path``.
    """
    func = "write_interpolation"
    h, w = _check_shape(shape, func)
    zs = interpolate(z0, z1, n, method)  # (n, [R,] Z)
    zs = zs[:, None] if zs.ndim == 2 else zs  # (n, R, Z)
    zs = zs.swapaxes(0, 1)  # (R, n, Z)
    R, n, Z = zs.shape
    images = _decode(decode, zs.reshape(R * n, Z), h * w, func)
    grid = image_grid(images, (h, w), ncols=n)
    title = title or f"{method} interpolation"
    path = _save_grid(grid, path, title, max(4.0, min(12.0, 0.9 * n)))
    return dict(z=zs, images=images.reshape(R, n, h * w), path=path)


def write_arithmetic(decode, z, labels, a, b, z_query, shape, path, scales=(0.0, 0.5, 1.0, 1.5)):
    """Picture of query latents moved along the attribute vector a - b.

    One row per query, one column per scale (0: the query's own decoding).

    Returns
    -------
    dict
        ``z`` (Q, len(scales), Z), ``images`` (Q, len(scales), D), ``vector`` (Z,), ``path``.
    """
    func = "write_arithmetic"
    h, w = _check_shape(shape, func)
    moved = attribute_arithmetic(z, labels, a, b, z_query, scales).swapaxes(0, 1)  # (Q, S, Z)
    Q, S, Z = moved.shape
    images = _decode(decode, moved.reshape(Q * S, Z), h * w, func)
    grid = image_grid(images, (h, w), ncols=S)
    shown = ", ".join(f"{float(s):g}" for s in scales)
    title = f"z + s (mean z[{a}] - mean z[{b}]), s = {shown}"
    path = _save_grid(grid, path, title, max(4.0, min(12.0, 1.2 * S)))
    return dict(
        z=moved,
        images=images.reshape(Q, S, h * w),
        vector=attribute_vector(z, labels, a, b),
        path=path,
    )


def write_traversal(
    decode, z, shape, path, kl=None, n=9, low=0.05, high=0.95, max_dims=None, title=None
):
    """Picture of each latent dimension swept over prior quantiles around z, by KL.

    Parameters
    ----------
    decode : callable (N, Z) -> (N, D)
    z : ndarray of shape (Z,)
        The point to traverse around (e.g. an input's posterior mean).
    shape : tuple of int
    path : str or os.PathLike
    kl : ndarray of shape (Z,), optional
        KL per dimension (e.g. ``lvmcore.diagnostics``' per-dimension KL); rows are sorted by it,
        largest first, and labelled with it. Natural order when None.
    n : int, default 9
        Values per dimension: ``prior_quantiles(n, low, high)``.
    max_dims : int, optional
        Draw only the first max_dims rows of the order.

    Returns
    -------
    dict
        ``z`` (R, n, Z), ``images`` (R, n, D), ``values`` (n,), ``order`` (R,) the dimension of
        each row, ``kl`` (R,) or None, ``path``.
    """
    func = "write_traversal"
    h, w = _check_shape(shape, func)
    check_array(z, "z", func, ndim=1)
    Z = z.shape[0]
    values = prior_quantiles(n, low, high)
    if kl is None:
        order = np.arange(Z)
    else:
        check_array(kl, "kl", func, ndim=1)
        if kl.shape[0] != Z:
            raise ValueError(
                f"{func}: expected kl to have one entry per latent dimension ({Z}), got shape "
                f"{tuple(kl.shape)}."
            )
        order = np.argsort(-to_numpy(kl, np.float64), kind="stable")
    if max_dims is not None:
        order = order[
            : check_param(max_dims, "max_dims", func, kind="int", low=1, low_inclusive=True)
        ]
    xp = get_xp(z)
    zs = traverse(z, values)[xp.asarray(order)]  # (R, n, Z)
    R = zs.shape[0]
    images = _decode(decode, zs.reshape(R * n, Z), h * w, func)
    grid = image_grid(images, (h, w), ncols=n)
    kl_rows = None if kl is None else to_numpy(kl, np.float64)[order]
    fig = _figure((max(4.0, min(12.0, 0.9 * n)) + 1.0, max(2.0, 0.9 * R) + 0.5))
    ax = fig.add_subplot()
    _show_grid(ax, grid, title or f"Traversal over prior quantiles {low:g}..{high:g}")
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([r * (h + 1) + h / 2 - 0.5 for r in range(R)])
    if kl_rows is None:
        labels = [f"z{d}" for d in order]
    else:
        labels = [f"z{d} KL {k:.2f}" for d, k in zip(order, kl_rows)]
    ax.set_yticklabels(labels, fontsize=7)
    for side in ax.spines.values():
        side.set_visible(False)
    path = _save(fig, path)
    return dict(
        z=zs,
        images=images.reshape(R, n, h * w),
        values=values,
        order=order,
        kl=kl_rows,
        path=path,
    )


def write_manifold(decode, shape, path, n=15, low=0.05, high=0.95, title=None):
    """Picture of a 2-D latent space decoded at a grid of prior quantiles.

    Returns
    -------
    dict
        ``z`` (n*n, 2) from :func:`quantile_grid`, ``images`` (n*n, D), ``grid`` the tiled
        picture, ``path``.
    """
    func = "write_manifold"
    h, w = _check_shape(shape, func)
    z = quantile_grid(n, low, high)
    images = _decode(decode, z, h * w, func)
    n = math.isqrt(z.shape[0])
    grid = image_grid(images, (h, w), ncols=n, pad=0)
    path = _save_grid(grid, path, title or "Decoded manifold (prior quantiles)", 8.0)
    return dict(z=z, images=images, grid=grid, path=path)


def write_latent_scatter(
    z, path, labels=None, n_classes=None, dims=None, reference=None, title=None
):
    """Scatter of latents in two dimensions, coloured by label, over an optional reference cloud.

    Parameters
    ----------
    z : ndarray of shape (N, Z)
        Z == 2, or choose two dimensions with ``dims``.
    path : str or os.PathLike
    labels : ndarray of int, shape (N,), optional
    n_classes : int, optional
        Labels must lie in [0, n_classes) (and the colours are spread over that many classes).
    dims : (int, int), optional
        The two dimensions to draw; required when Z != 2.
    reference : ndarray of shape (M, Z), optional
        E.g. samples of the prior, drawn in grey beneath (the adversarial autoencoder's picture
        of aggregate posterior against prior).

    Returns
    -------
    dict
        ``z`` (N, 2) and ``labels`` (N,) or None as drawn, ``reference`` (M, 2) or None, ``path``.
    """
    func = "write_latent_scatter"
    check_array(z, "z", func, ndim=2)
    Z = z.shape[1]
    if dims is None:
        if Z != 2:
            raise ValueError(
                f"{func}: expected z of shape (N, 2) or dims naming two of its {Z} dimensions, "
                f"got shape {tuple(z.shape)}. Pass e.g. dims=(0, 1)."
            )
        dims = (0, 1)
    dims = tuple(dims)
    if len(dims) != 2 or any(
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d < Z for d in dims
    ):
        raise ValueError(f"{func}: expected dims to be two indices in [0, {Z}), got {dims!r}.")
    if n_classes is not None:
        n_classes = check_param(n_classes, "n_classes", func, kind="int", low=1, low_inclusive=True)
    pts = to_numpy(z, np.float64)[:, list(dims)]
    lab = None
    if labels is not None:
        _check_labels(labels, z.shape[0], func, n_classes=n_classes)
        lab = to_numpy(labels).astype(np.int64)
    ref = None
    if reference is not None:
        check_array(reference, "reference", func, ndim=2)
        if reference.shape[1] != Z:
            raise ValueError(
                f"{func}: expected reference.shape[1] == z.shape[1] ({Z}), got reference of "
                f"shape {tuple(reference.shape)}."
            )
        ref = to_numpy(reference, np.float64)[:, list(dims)]
    fig = _figure((6.0, 5.5))
    ax = fig.add_subplot()
    if ref is not None:
        ax.scatter(
            ref[:, 0], ref[:, 1], s=3, c="#b0b0b0", alpha=0.5, linewidths=0, label="reference"
        )
    if lab is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, c="#4c72b0", linewidths=0)
    else:
        k = n_classes or int(lab.max()) + 1
        sc = ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=4,
            c=lab,
            cmap="tab10" if k <= 10 else "tab20",
            vmin=-0.5,
            vmax=k - 0.5,
            linewidths=0,
        )
        fig.colorbar(sc, ax=ax, ticks=range(k), label="label")
    ax.set_xlabel(f"z{dims[0]}")
    ax.set_ylabel(f"z{dims[1]}")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or "Latents")
    ax.grid(True, alpha=0.3)
    return dict(z=pts, labels=lab, reference=ref, path=_save(fig, path))
