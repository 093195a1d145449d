"""Codebook maintenance for vector quantization: EMA updates, k-means initialisation and the
re-seeding of dead codes. Pure functions: they return new arrays and take an explicit ``rng``.

Shapes: N rows (encoder outputs z_e flattened over batch and slots), E code dimension,
M codebook size.

None of these is differentiated: they replace the codebook loss (EMA) or move codes between
gradient steps (k-means, dead-code reset). All per-code sums go through
:func:`lvmcore.ops.vq.code_sums` (serial, race-free) and :func:`lvmcore.ops.vq.code_counts`.
"""

import numpy as np

from .._validation import (
    check_array,
    check_param,
    check_rng,
    check_same_device,
    check_same_dtype,
    get_xp,
    to_numpy,
)
from ..backend import get_backend
from .vq import code_counts, code_sums

__all__ = ["ema_codebook_update", "kmeans_codebook", "reseed_codes"]


def ema_codebook_update(cluster_size, code_sum, z, index, decay=0.99, eps=1e-5):
    r"""One exponential-moving-average codebook update (van den Oord et al. 2017, appendix A.1).

    Parameters
    ----------
    cluster_size : ndarray of shape (M,)
        :math:`N_m`, the running (decayed) number of rows assigned to each code. Its sum must be
        positive unless the batch is non-empty.
    code_sum : ndarray of shape (M, E)
        :math:`S_m`, the running (decayed) sum of the rows assigned to each code.
    z : ndarray of shape (N, E)
        This step's encoder outputs.
    index : ndarray of int of shape (N,)
        Their codes (the assignment used in the forward pass).
    decay : float in (0, 1)
        :math:`\gamma`, 0.99 in the paper.
    eps : float in (0, inf)
        Laplace smoothing of the cluster sizes.

    Returns
    -------
    cluster_size, code_sum : ndarray of shapes (M,) and (M, E)
        The updated statistics (new arrays).
    codebook : ndarray of shape (M, E)
        :math:`e_m = S_m / \tilde N_m`.

    Notes
    -----
    With :math:`n_m` the count and :math:`s_m` the sum of this step's rows assigned to m:

    .. math::
        N_m \leftarrow \gamma N_m + (1-\gamma) n_m,\quad
        S_m \leftarrow \gamma S_m + (1-\gamma) s_m,\quad
        \tilde N_m = \frac{N_m + \epsilon}{N + M\epsilon} N,\quad N = \sum_m N_m.

    Laplace smoothing keeps :math:`\tilde N_m > 0` for a code that has not been used for a long
    time (Razavi et al. 2019, "Generating diverse high-fidelity images with VQ-VAE-2", app. A,
    and Sonnet's ``VectorQuantizerEMA``), so the division is always defined; such a code decays
    towards the origin as :math:`\gamma^t / (\gamma^t + \epsilon)`, one reason to re-seed it.
    """
    f = "ema_codebook_update"
    decay = check_param(decay, "decay", f, low=0, high=1, high_inclusive=False)
    eps = check_param(eps, "eps", f, low=0)
    check_array(cluster_size, "cluster_size", f, ndim=1)
    M = cluster_size.shape[0]
    check_array(code_sum, "code_sum", f, shape=(M, None), shape_of="cluster_size")
    check_array(z, "z", f, ndim=2, shape=(None, code_sum.shape[1]), shape_of="code_sum")
    check_same_dtype([cluster_size, code_sum, z], ["cluster_size", "code_sum", "z"], f)
    check_array(index, "index", f, shape=(z.shape[0],), dtype="int", finite=False, shape_of="z")
    names = ["cluster_size", "code_sum", "z", "index"]
    check_same_device([cluster_size, code_sum, z, index], names, f)
    dt = z.dtype.type
    n = code_counts(index, M).astype(z.dtype)  # (M,)
    s = code_sums(index, z, M)  # (M, E)
    cluster_size = dt(decay) * cluster_size + dt(1 - decay) * n  # (M,)
    code_sum = dt(decay) * code_sum + dt(1 - decay) * s  # (M, E)
    total = float(cluster_size.sum())
    if not total > 0:
        raise ValueError(
            f"{f}: expected the cluster sizes to have a positive sum after the "
            f"update, got {total}. Start them at ones (each code counted once) "
            f"and code_sum at the codebook."
        )
    smoothed = (cluster_size + dt(eps)) * dt(total / (total + M * eps))  # (M,)
    return cluster_size, code_sum, code_sum / smoothed[:, None]


def kmeans_codebook(z, n_codes, rng, iters=10):
    """Codebook from k-means on rows z: k-means++ seeding, then ``iters`` Lloyd iterations.

    Parameters
    ----------
    z : ndarray of shape (N, E), N >= M
        Encoder outputs (e.g. of the first training batches). Must be finite.
    n_codes : int
        M.
    rng : numpy.random.Generator
        Draws the k-means++ seeding (Arthur and Vassilvitskii 2007): the first centre a uniform
        row, each next one a row drawn with probability proportional to its squared distance
        to the nearest centre so far. M passes of N E flops; unlike M uniform rows it rarely
        puts two centres in one cluster and none in another.
    iters : int
        Lloyd iterations (assign with the ``nearest_code`` kernel, move each centre to the mean
        of its rows); stops early when no assignment changes.

    Returns
    -------
    ndarray of shape (M, E)
        The centres. A centre that loses all its rows keeps its previous position.

    Raises
    ------
    ValueError
        Fewer rows than codes (N < M), or non-finite z.
    """
    f = "kmeans_codebook"
    M = check_param(n_codes, "n_codes", f, kind="int", low=1, low_inclusive=True)
    iters = check_param(iters, "iters", f, kind="int", low=0, low_inclusive=True)
    check_array(z, "z", f, ndim=2)
    rng = check_rng(rng, f)
    if z.shape[1] < 1:
        raise ValueError(
            f"{f}: expected z to have at least one column (E >= 1), got z of shape "
            f"{tuple(z.shape)}."
        )
    N = z.shape[0]
    if N < M:
        raise ValueError(
            f"{f}: expected at least as many rows as codes ({M}), got z of shape "
            f"{tuple(z.shape)}. Pass more encoder outputs or use fewer codes."
        )
    search = get_backend(z).kernel("nearest_code")
    centres = _kmeans_plus_plus(z, M, rng)  # (M, E)
    previous = None
    for _ in range(iters):
        index, _ = search(z, centres)  # (N,)
        if previous is not None and bool((index == previous).all()):
            break
        counts = code_counts(index, M)  # (M,)
        sums = code_sums(index, z, M)  # (M, E)
        used = counts > 0
        centres[used] = sums[used] / counts[used, None].astype(z.dtype)
        previous = index
    return centres


def _kmeans_plus_plus(z, M, rng):
    """k-means++ seeding: M rows of z (copies), (M, E)."""
    xp = get_xp(z)
    z64 = z.astype(np.float64)  # (N, E)
    N = z.shape[0]
    centres = xp.empty((M, z.shape[1]), dtype=z.dtype)  # (M, E)
    first = int(rng.integers(N))
    centres[0] = z[first]
    d2 = ((z64 - z64[first]) ** 2).sum(axis=1)  # (N,)
    for m in range(1, M):
        total = float(d2.sum())
        # every row already sits on a centre (duplicated data): any row will do
        pick = int(rng.integers(N)) if total <= 0 else int(rng.choice(N, p=to_numpy(d2 / total)))
        centres[m] = z[pick]
        d2 = xp.minimum(d2, ((z64 - z64[pick]) ** 2).sum(axis=1))
    return centres


def reseed_codes(codebook, dead, z, rng):
    """Replace the dead codes by randomly chosen rows of z.

    Parameters
    ----------
    codebook : ndarray of shape (M, E)
    dead : ndarray of bool of shape (M,)
        The codes to re-seed.
    z : ndarray of shape (N, E)
        Recent encoder outputs (the current batch). N >= 1 when any code is dead.
    rng : numpy.random.Generator
        Picks the rows: without replacement when N >= the number of dead codes, so re-seeded
        codes start distinct; with replacement otherwise.

    Returns
    -------
    codebook : ndarray of shape (M, E)
        A copy with the dead rows replaced.
    reseeded : ndarray of int64 of shape (R,)
        The indices of the re-seeded codes, increasing.
    """
    f = "reseed_codes"
    check_array(codebook, "codebook", f, ndim=2, finite=False)
    M, E = codebook.shape
    check_array(dead, "dead", f, shape=(M,), dtype=bool, finite=False, shape_of="codebook")
    check_array(z, "z", f, ndim=2, shape=(None, E), finite=False, shape_of="codebook")
    check_same_device([codebook, dead, z], ["codebook", "dead", "z"], f)
    check_same_dtype([codebook, z], ["codebook", "z"], f)
    rng = check_rng(rng, f)
    xp = get_xp(codebook)
    reseeded = xp.flatnonzero(dead)  # (R,)
    codebook = codebook.copy()
    R = int(reseeded.size)
    if R == 0:
        return codebook, reseeded
    N = z.shape[0]
    if N == 0:
        raise ValueError(
            f"reseed_codes: expected rows to re-seed {R} dead codes from, got z of "
            f"shape {tuple(z.shape)}."
        )
    rows = rng.choice(N, size=R, replace=N < R)  # (R,)
    codebook[reseeded] = z[xp.asarray(rows)]
    return codebook, reseeded
