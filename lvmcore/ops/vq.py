"""Vector quantization (VQ-VAE): nearest-codebook assignment, straight-through gradient, and the
codebook and commitment losses, as one forward/backward pair.

Shapes: B batch, S code slots per example, E code dimension, M codebook size, N = B * S rows.

Forward::

    k[n]   = argmin_m ||z_e[n] - e_m||^2         (N,)      kernels "nearest_code", ties -> lowest m
    z_q[n] = e_{k[n]}                            (B, S, E)
    codebook_loss = (1/B) sum_{b,s} ||sg[z_e[b,s]] - e_{k[b,s]}||^2
    commitment    = beta (1/B) sum_{b,s} ||z_e[b,s] - sg[e_{k[b,s]}]||^2

Reduction: mean over the batch B of the sum over the S slots and E dimensions, the same reduction
as the reconstruction NLL (mean over B of the sum over D), so that each term is in nats-like units
per example and the weights of the paper (1 and beta) keep their meaning whatever S and E are.
van den Oord et al. (2017, eq. 3) write squared norms per latent; implementations that average
over every element (Sonnet's ``mean((sg[z_e] - z_q)^2)``) divide both terms by S E instead.

Gradient flow
-------------
``sg`` is the stop-gradient: the forward value passes, the gradient does not.

- VQ (straight-through): ``dz_e += dz_q``. z_q is treated as ``z_e + sg[e_k - z_e]``, so the
  decoder's gradient is copied onto the encoder output and the codebook gets none of it.
- Codebook loss moves the codebook only: ``de_m = (2/B) sum_{n: k[n]=m} (e_m - z_e[n])``,
  nothing to z_e.
- Commitment loss moves z_e only: ``dz_e += beta (2/B) (z_e - e_k)``, nothing to the codebook.

These are exact gradients of a surrogate in which the stop-gradient arguments are constants.
``vq_forward(..., frozen=VQFrozen(z_e0, codebook0))`` evaluates that surrogate, with the
``sg[...]`` values taken from ``frozen`` and the assignment from ``index``; at ``frozen`` equal to
the live arguments its values equal the training forward. Finite differences that perturb z_e and
the codebook while ``index`` and ``frozen`` stay fixed therefore check ``vq_backward`` exactly.

The assignment k is piecewise constant, so the loss has no gradient through it; held fixed
(``index=``), the forward is smooth in z_e and the codebook.

References
----------
A. van den Oord, O. Vinyals, K. Kavukcuoglu (2017), "Neural discrete representation learning",
NeurIPS, eq. 3 and appendix A.1.
"""

from typing import NamedTuple

import numpy as np

from .._validation import (
    check_array,
    check_cache,
    check_param,
    check_same_device,
    check_same_dtype,
    get_xp,
    to_numpy,
)
from ..backend import get_backend

__all__ = [
    "VQCache",
    "VQFrozen",
    "VQLosses",
    "vq_forward",
    "vq_backward",
    "code_counts",
    "code_sums",
    "perplexity",
]


class VQLosses(NamedTuple):
    """The two VQ terms, as Python floats (reduction: mean over B of the sum over S and E)."""

    codebook: float  # (1/B) sum ||sg[z_e] - e_k||^2
    commitment: float  # beta (1/B) sum ||z_e - sg[e_k]||^2, beta included


class VQFrozen(NamedTuple):
    """Values of the stop-gradient arguments, for checking gradients (see the module notes)."""

    z_e: object  # (B, S, E) the value of sg[z_e]
    codebook: object  # (M, E)    the value of sg[e]


class VQCache(NamedTuple):
    """What ``vq_backward`` needs."""

    diff: object  # (N, E) z_e - e_k at the forward point, rows in (b, s) order
    index: object  # (N,) int64 assignment k
    n_codes: int  # M
    shape: tuple  # (B, S, E) of z_e
    beta: float


def vq_forward(z_e, codebook, beta=0.25, index=None, frozen=None):
    """Quantize z_e to its nearest codes; return z_q, the two VQ losses and a cache.

    Parameters
    ----------
    z_e : ndarray of shape (B, S, E), float32 or float64
        Encoder outputs, S code slots per example. Must be finite.
    codebook : ndarray of shape (M, E), same dtype and array library as z_e
        The codes e_m, M >= 1. Must be finite.
    beta : float in [0, inf)
        Weight of the commitment loss (0.25 in van den Oord et al. 2017).
    index : ndarray of int of shape (B * S,) or (B, S), optional
        A fixed assignment (for finite-difference checks). When None, the nearest code of every
        row, from the ``nearest_code`` kernel of z_e's backend: the lowest index among exact
        duplicate codes (see ``kernels.nearest_code`` for distinct codes at equal distance).
    frozen : VQFrozen, optional
        Values of sg[z_e] and sg[e] (gradient checks only; None uses the live arguments).

    Returns
    -------
    z_q : ndarray of shape (B, S, E)
        e_k, the quantized vectors (with ``frozen``: ``z_e + (frozen e_k - frozen z_e)``).
    losses : VQLosses
        ``codebook`` and ``commitment`` (beta included).
    cache : VQCache

    Raises
    ------
    ValueError
        z_e not 3-D or codebook not 2-D, E of the codebook differing from z_e's, M = 0, NaN or Inf
        in either, or an ``index`` of the wrong shape or out of [0, M).
    TypeError
        Non-float dtypes, z_e and codebook of different dtypes or array libraries.
    InvalidParameterError
        beta negative or not finite.

    Notes
    -----
    With d = z_e - e_k (N, E): codebook loss = commitment / beta = sum(d^2) / B. Backward is in
    :func:`vq_backward`; the gradient flow is in the module docstring.
    """
    f = "vq_forward"
    beta = check_param(beta, "beta", f, low=0, low_inclusive=True)
    check_array(z_e, "z_e", f, ndim=3)
    check_array(codebook, "codebook", f, ndim=2)
    check_same_device([z_e, codebook], ["z_e", "codebook"], f)
    check_same_dtype([z_e, codebook], ["z_e", "codebook"], f)
    B, S, E = z_e.shape
    if B < 1 or E < 1:
        raise ValueError(
            f"{f}: expected z_e to have at least one row and one code dimension (B >= 1, "
            f"E >= 1: the losses are means over B), got z_e of shape {tuple(z_e.shape)}."
        )
    M = codebook.shape[0]
    if codebook.shape[1] != E:
        raise ValueError(
            f"{f}: expected codebook.shape[1] == z_e.shape[2] ({E}), got codebook of "
            f"shape {tuple(codebook.shape)} and z_e of shape {tuple(z_e.shape)}. "
            f"The code dimension E must match the encoder's output per slot."
        )
    if M < 1:
        raise ValueError(
            f"{f}: expected codebook to have at least one row (M >= 1), got "
            f"codebook of shape {tuple(codebook.shape)}."
        )
    flat = z_e.reshape(B * S, E)  # (N, E)
    if index is None:
        index, _ = get_backend(z_e).kernel("nearest_code")(flat, codebook)  # (N,)
    else:
        index = _check_index(index, B, S, M, f)
    e_k = codebook[index]  # (N, E)
    diff = flat - e_k  # (N, E)
    sq = float((diff * diff).sum()) / B
    if frozen is None:
        z_q = e_k.reshape(B, S, E)  # (B, S, E)
        losses = VQLosses(sq, beta * sq)
    else:
        fz = frozen.z_e.reshape(B * S, E)  # (N, E)
        fe = frozen.codebook[index]  # (N, E)
        z_q = (flat + (fe - fz)).reshape(B, S, E)  # (B, S, E)
        d_cb = fz - e_k  # moves e only
        d_cm = flat - fe  # moves z_e only
        losses = VQLosses(float((d_cb * d_cb).sum()) / B, beta * float((d_cm * d_cm).sum()) / B)
    return z_q, losses, VQCache(diff, index, M, (B, S, E), beta)


def vq_backward(dz_q, cache, dcodebook_loss=1.0, dcommit=1.0):
    """Gradients of ``sum(dz_q * z_q) + dcodebook_loss * codebook + dcommit * commitment``.

    Parameters
    ----------
    dz_q : ndarray of shape (B, S, E)
        Gradient of the loss with respect to z_q (from the decoder).
    cache : VQCache
        Uses ``diff`` = z_e - e_k (N, E), ``index`` (N,), ``n_codes``, ``shape`` and ``beta``.
    dcodebook_loss : float
        Weight of the codebook loss in the total (0 when the codebook is updated by EMA).
    dcommit : float
        Weight of the commitment loss (beta is already inside it).

    Returns
    -------
    dz_e : ndarray of shape (B, S, E)
        ``dz_q + dcommit * beta * (2/B) * (z_e - e_k)``: straight-through plus commitment.
    dcodebook : ndarray of shape (M, E)
        ``-dcodebook_loss * (2/B) * sum_{n: k[n]=m} (z_e[n] - e_m)`` per code m; rows of unused
        codes are 0. The decoder's gradient never reaches the codebook.

    Notes
    -----
    d/dz_e of beta/B ||z_e - sg[e_k]||^2 is beta (2/B)(z_e - e_k); d/de_m of
    1/B sum_{k[n]=m} ||sg[z_e[n]] - e_m||^2 is (2/B) sum (e_m - z_e[n]). The per-code sum is a
    serial, race-free scatter-add (:func:`code_sums`).
    """
    f = "vq_backward"
    diff, index, M, (B, S, E), beta = check_cache(cache, VQCache, f)
    xp = get_xp(diff)
    check_array(
        dz_q, "dz_q", f, shape=(B, S, E), dtype=diff.dtype, finite=False, xp=xp, ref="z_e's"
    )
    dcodebook_loss = check_param(dcodebook_loss, "dcodebook_loss", f, low=None)
    dcommit = check_param(dcommit, "dcommit", f, low=None)
    dt = diff.dtype.type
    dz_e = dz_q.reshape(B * S, E)  # (N, E)
    if dcommit != 0 and beta != 0:
        dz_e = dz_e + dt(dcommit * beta * 2.0 / B) * diff
    else:
        dz_e = dz_e.copy()
    if dcodebook_loss != 0:
        dcodebook = code_sums(index, diff, M) * dt(-dcodebook_loss * 2.0 / B)  # (M, E)
    else:
        dcodebook = xp.zeros((M, E), dtype=diff.dtype)
    return dz_e.reshape(B, S, E), dcodebook


def _check_index(index, B, S, M, f):
    check_array(index, "index", f, dtype="int", finite=False)
    if tuple(index.shape) not in ((B * S,), (B, S)):
        raise ValueError(
            f"{f}: expected index of shape ({B * S},) or ({B}, {S}), got {tuple(index.shape)}."
        )
    index = index.reshape(B * S).astype(np.int64, copy=False)
    _check_index_range(index, M, "index", f)
    return index


def _check_index_range(index, M, name, f):
    """Every entry of the integer array ``index`` in [0, M)."""
    if index.size and (int(index.min()) < 0 or int(index.max()) >= M):
        raise ValueError(
            f"{f}: expected every {name} in [0, {M}), got values in "
            f"[{int(index.min())}, {int(index.max())}]."
        )


def _check_codes(index, n_codes, f, rows=None):
    """index (N,) of ints in [0, n_codes); rows, if given, (N, E) floats on index's device."""
    M = check_param(n_codes, "n_codes", f, kind="int", low=0, low_inclusive=True)
    check_array(index, "index", f, ndim=1, dtype="int", finite=False)
    _check_index_range(index, M, "index", f)
    if rows is not None:
        check_array(
            rows, "rows", f, ndim=2, shape=(index.shape[0], None), finite=False, shape_of="index"
        )
        check_same_device([index, rows], ["index", "rows"], f)
    return M


# ------------------------------------------------------------------------------------------------
# Per-code reductions, shared by the backward, the EMA update, k-means and the usage statistics
# ------------------------------------------------------------------------------------------------


def code_counts(index, n_codes):
    """How many rows each code got: ``bincount(index, minlength=M)``, int64 (M,).

    ``index`` is a 1-D integer array with every entry in [0, n_codes).
    """
    M = _check_codes(index, n_codes, "code_counts")
    return get_xp(index).bincount(index, minlength=M)


def code_sums(index, rows, n_codes):
    """Per-code sum of rows: ``out[m] = sum_{n: index[n]=m} rows[n]``, shape (M, E).

    Race-free on both devices: a stable sort of the N indices and ``add.reduceat`` over the
    sorted rows, so each code's rows are added in one fixed order and the result is the same bit
    for bit on every run (``np.add.at`` gives the same sums but is ~4x slower for rows; a
    ``prange`` scatter, or ``cupyx.scatter_add``'s atomics, would add in a varying order). Cost
    O(N log N + N E).

    ``index`` (N,) is an integer array with every entry in [0, n_codes); ``rows`` (N, E) a
    float32 or float64 array on the same device.
    """
    M = _check_codes(index, n_codes, "code_sums", rows)
    xp = get_xp(rows)
    E = rows.shape[1]
    out = xp.zeros((M, E), dtype=rows.dtype)  # (M, E)
    if index.size == 0:
        return out
    # CuPy's argsort is always stable and takes no other kind
    order = np.argsort(index, kind="stable") if xp is np else xp.argsort(index)  # (N,)
    sorted_index = index[order]
    new = xp.concatenate([xp.ones(1, dtype=bool), sorted_index[1:] != sorted_index[:-1]])
    starts = xp.flatnonzero(new)  # (U,)
    out[sorted_index[starts]] = xp.add.reduceat(rows[order], starts, axis=0)  # (U, E)
    return out


def perplexity(counts):
    r"""Perplexity of a code-usage histogram: :math:`\exp(-\sum_m p_m \log p_m)`, p = counts/sum.

    1 when one code takes every row, M when all M codes are used equally; 0 log 0 = 0. An empty
    histogram (no rows) has perplexity 1 by this convention (entropy 0).
    """
    f = "perplexity"
    check_array(counts, "counts", f, ndim=1, dtype="any", finite=False)
    if counts.dtype.kind not in "iuf" or counts.dtype == np.float16:
        raise TypeError(
            f"{f}: expected counts to be an integer or float32/float64 array, got "
            f"{counts.dtype}. Pass code_counts(index, M)."
        )
    c = to_numpy(counts, np.float64)
    if not (np.isfinite(c).all() and (c >= 0).all()):
        raise ValueError(
            f"{f}: expected counts to be finite and non-negative, got values in "
            f"[{c.min()}, {c.max()}]. Pass code_counts(index, M)."
        )
    total = c.sum()
    if total <= 0:
        return 1.0
    p = c[c > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))
