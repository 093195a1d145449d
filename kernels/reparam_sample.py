"""Reparameterized Gaussian sampling with its densities, fused with the counter-based RNG.

Math
----
For a diagonal Gaussian q(z | x) = N(mu, diag(exp(logvar))) and the prior p(z) = N(0, I), with
standard normal noise eps (K, B, Z) drawn from the engine's Philox stream (``kernels.philox``)::

    sigma       = exp(logvar / 2)                                           (B, Z)
    z[k, b]     = mu[b] + sigma[b] * eps[k, b]                              (K, B, Z)
    log_q[k, b] = sum_j  -log(2 pi)/2 - logvar[b, j]/2 - eps[k, b, j]^2/2    (K, B)
    log_p[k, b] = sum_j  -log(2 pi)/2 - z[k, b, j]^2/2                       (K, B)

log_q is log N(z; mu, sigma^2) with (z - mu) / sigma = eps substituted, so it needs no division.
The noise is ``normal_ref(seed, stream, K*B*Z, dtype, offset)`` reshaped to (K, B, Z): element
(k, b, j) is global element ``offset + (k*B + b)*Z + j`` of the (seed, stream) sequence. A caller
that draws several batches from one stream advances ``offset`` by K*B*Z after each call.

Backward (eps regenerated, never stored)
----------------------------------------
For a loss L with upstream gradients dz (K, B, Z), dlog_q (K, B), dlog_p (K, B), and eps held
fixed (it is a function of (seed, stream, offset) only)::

    dz/dmu = 1,   dz_j/dlogvar_j = sigma_j eps_j / 2 = (z_j - mu_j) / 2
    d log_p/dz_j = -z_j
    d log_q/dmu = 0,   d log_q/dlogvar_j = -1/2        (total derivative, see below)

    g[k, b, j]  = dz[k, b, j] - dlog_p[k, b] z[k, b, j]                    (K, B, Z)
    dmu[b]      = sum_k g[k, b]                                             (B, Z)
    dlogvar[b]  = 1/2 sum_k g[k, b] sigma[b] eps[k, b]  -  1/2 sum_k dlog_q[k, b]

log_q depends on (mu, logvar) both directly and through z; with eps fixed the two paths cancel
except for -logvar/2: d/dmu [log N(mu + sigma eps; mu, sigma^2)] = eps/sigma - eps/sigma = 0. This
is the *total* ("path + score") gradient; STL/DReG estimators that drop the score term pass their
own dlog_q. Backward regenerates eps from (seed, stream, offset) and recomputes z = mu + sigma eps,
so a forward call needs to keep nothing but its arguments. Any of dz, dlog_q, dlog_p may be None
(read as zeros), but not all three (a ValueError: there would be no gradient to take).

Shapes and dtypes
-----------------
mu, logvar (B, Z); k = K >= 1; z (K, B, Z); log_q, log_p (K, B); dmu, dlogvar (B, Z). float32 or
float64, one dtype for every array; the noise has the same dtype (its mapping differs per dtype,
see kernels.philox). B = 0 or Z = 0 is allowed (empty outputs; log_q = log_p = 0 when Z = 0).

Numerics
--------
- The float32 kernels compute in float32 (constants are cast, tested from the IR); two deliberate
  float64 uses: (1) sin/cos of the Box-Muller angle are evaluated in float64 and rounded once
  (``_sincos``: its float32 rounding equals the correctly rounded sin/cos on all 2^23 angles
  the float32 mapping can produce, and it vectorizes); (2) the backward's sums over K accumulate
  in float64 (per K-chunk partials, summed in chunk order, rounded once), so dmu for K = 5000 is
  not limited by a 5000-term float32 sum.
- The log_q/log_p row sums over Z are float32 partial sums that LLVM vectorizes
  (``fastmath={"reassoc"}`` on the forward kernel; the noise fill it calls is compiled with
  explicit strict flags, see below). Against the reference that is a reordering of Z terms.
- sigma = exp(logvar/2) overflows for logvar > 177 (float32) / 1419 (float64): z is then inf, as
  in the reference; validation rejects non-finite mu/logvar, not large ones.

The noise, fused and vectorized
-------------------------------
The noise comes from ``kernels.philox._normals``, the vectorized in-kernel Box-Muller that fills
an L1-resident buffer per chunk of about 4096 elements (4 M float32 normals in 8.5 ms on one
core; see "The vectorized in-kernel noise" in kernels/philox.py). Its words and uniforms are
philox.py's bit for bit; its normals agree with ``normal_ref`` to <= 3 ulp of max(|x|, 1) but
are not bit-identical to ``normal_numba``. Backward regenerates with the same code as forward,
so forward and backward are consistent bit for bit.

Against the machine
-------------------
The kernel is bound by its noise: ``benchmarks/benchmarks/machine_bounds.normal_bound`` does only
the work every element needs, on the same threads (a quarter Philox4x32-10 block and half a
Box-Muller pair per float32 element: log, sqrt and the float64 sincos, the same ``_normals``
into an L1 buffer, summed), about 0.65 G normals/s per core. The forward adds mu + sigma eps,
the two row sums over Z and the store of z (4 bytes per element to DRAM): on one core (CPU
time, (5000, 100, 50) float32, 2026-12-03) 72-73 % of the bound; figures of the 2-thread run at
RECORDS.

Variants
--------
Every variant checks its arguments (types, dtypes, shapes, contiguity of outputs, finite mu and
logvar, the noise arguments) before any loop or launch; the module wrappers ``reparam_sample``
and ``reparam_sample_backward`` pick one by ``backend``.

- ``reparam_sample_ref`` / ``reparam_sample_backward_ref``: NumPy, noise from
  ``philox.normal_ref``, formulas written out term by term. The oracle and the ``"numpy"``
  backend.
- ``reparam_sample_numba_v1``: ``prange`` over chunks of (k, b) rows (about 4096 elements each;
  the chunking does not depend on the thread count, and every row is computed by one
  iteration, so results are identical for any thread count); per chunk: vectorized noise into a
  private buffer, then z, log_q, log_p in one pass over it. DEFAULT (the only forward variant).
- ``reparam_sample_backward_numba_v2``: tasks = (K-chunk, B-tile) with a fixed task grid
  (independent of the thread count); each task regenerates the noise of its contiguous segments
  (whole (k, :) slabs when the tile is all of B, about 4096 elements at a time) and accumulates
  into its own float64 partial (B_tile, Z) slot of a (K-chunks, B, Z) buffer; the partials are
  summed serially in chunk order afterwards. No shared scatter, deterministic. DEFAULT.
- v1 (removed): ``prange`` over b, each iteration owning dmu[b], dlogvar[b] and looping over k,
  regenerating the Z normals of row (k, b) each time. With Z = 50 that is 13 Philox blocks per
  fill, too short for the 8/16-lane vector loop (it runs the scalar remainder), so the noise
  cost several times more: 2.6-3.2x slower than v2 at (5000, 100, 50), 2.0-2.5x at (50, 100, 50)
  (float32, 2 threads, medians, see DEFAULT below).
- ``reparam_sample_cupy_v1`` / ``reparam_sample_backward_cupy_v1`` (kernels/cuda/
  reparam_sample.cu, noise from kernels/cuda/philox.cuh): forward, a group of lanes per (k, b)
  row converting whole Philox blocks, row sums by warp shuffles; backward, a thread per
  (K-chunk, b, j) with float64 partials summed in chunk order, eps regenerated bit for bit as
  the forward drew it. The ``"cupy"`` backend; not yet run on a device.
"""

import math

import numpy as np
from numba import njit, prange

from ._checks import (
    check_array,
    check_backend,
    check_noise_args,
    check_out,
    check_param,
    check_same_dtype,
)
from ._registry import KernelRecord, default_variant, implementations, variants
from .philox import _normals, key_words, normal_ref, per_block

__all__ = [
    "reparam_sample",
    "reparam_sample_backward",
    "reparam_sample_ref",
    "reparam_sample_backward_ref",
    "reparam_sample_numba_v1",
    "reparam_sample_backward_numba_v2",
    "reparam_sample_cupy_v1",
    "reparam_sample_backward_cupy_v1",
    "VARIANTS",
    "BACKWARD_VARIANTS",
    "IMPLEMENTATIONS",
    "BACKWARD_IMPLEMENTATIONS",
    "DEFAULT",
    "BACKWARD_DEFAULT",
]

_FUNC = "reparam_sample"
_FUNC_BWD = "reparam_sample_backward"
_LOG_2PI = math.log(2.0 * math.pi)
# Elements per chunk of the Numba kernels: a 16 KiB float32 noise buffer stays in L1 (32 KiB)
# next to the rows it feeds; large enough that the vector loop's scalar remainder is negligible.
_CHUNK = 4096
# Backward (v2): aim for at least this many tasks, so 2 (or 8) threads stay balanced.
_MIN_TASKS = 16


# --------------------------------------------------------------------------------------------
# Argument checks (every variant runs them; the kernels below assume valid input)
# --------------------------------------------------------------------------------------------


def _check_inputs(func, mu, logvar, lib="numpy"):
    # CuPy arrays are recognised without importing CuPy, so a NumPy array handed to a "cupy"
    # variant gets a TypeError on any machine; raw CUDA kernels read memory linearly, so their
    # inputs must be C-contiguous (the NumPy/Numba variants copy strided ones).
    check_array(mu, "mu", func, ndim=2, lib=lib, contiguous=lib == "cupy")
    check_array(logvar, "logvar", func, ndim=2, lib=lib, contiguous=lib == "cupy")
    if logvar.shape != mu.shape:
        raise ValueError(
            f"{func}: expected mu and logvar to have the same shape (B, Z), got "
            f"{tuple(mu.shape)} and {tuple(logvar.shape)}."
        )
    check_same_dtype([mu, logvar], ["mu", "logvar"], func)
    # one pass over (B, Z) each (on a device: one reduction and a sync), next to K*B*Z outputs
    check_array(mu, "mu", func, lib=lib, finite=True)
    check_array(logvar, "logvar", func, lib=lib, finite=True)


def _check_k(k, func):
    return check_param(k, "k", func, kind="int", low=1, low_inclusive=True)


def _prepare(func, mu, logvar, k, seed, stream, offset, z_out):
    """Check a forward call; return its arguments with mu, logvar made C-contiguous."""
    _check_inputs(func, mu, logvar)
    k = _check_k(k, func)
    seed, stream, offset = check_noise_args(
        func, seed, stream, offset, k * mu.size, "K*B*Z", f" (k={k}, mu of shape {mu.shape})"
    )
    b, zd = mu.shape
    if z_out is not None:
        check_out(z_out, "z_out", func, (k, b, zd), mu.dtype)
        if np.may_share_memory(z_out, mu) or np.may_share_memory(z_out, logvar):
            raise ValueError(
                f"{func}: expected z_out to overlap neither mu nor logvar, got an "
                f"overlapping array. Pass a fresh buffer."
            )
    return (np.ascontiguousarray(mu), np.ascontiguousarray(logvar), k, seed, stream, offset, z_out)


def _check_backward(func, dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset, lib="numpy"):
    """Check a backward call; return (K, seed, stream, offset)."""
    _check_inputs(func, mu, logvar, lib)
    b, zd = mu.shape
    k = k_from = None
    for name, a, nd in (("dz", dz, 3), ("dlog_q", dlog_q, 2), ("dlog_p", dlog_p, 2)):
        if a is None:
            continue
        check_array(a, name, func, ndim=nd, lib=lib, contiguous=lib == "cupy")
        if a.dtype != mu.dtype:
            raise TypeError(
                f"{func}: expected {name} to have the dtype of mu ({mu.dtype}), got "
                f"{a.dtype}. Cast them to one dtype."
            )
        if a.shape[1:] != (b, zd)[: nd - 1]:
            want = f"(K, {b}, {zd})" if nd == 3 else f"(K, {b})"
            raise ValueError(
                f"{func}: expected {name} to have shape {want} (B, Z from mu), got "
                f"{tuple(a.shape)}."
            )
        if k is not None and a.shape[0] != k:
            raise ValueError(
                f"{func}: expected {name}.shape[0] == K = {k} (from {k_from}), got "
                f"{name} of shape {tuple(a.shape)}. All upstream gradients come from one "
                f"forward call."
            )
        k, k_from = a.shape[0], name
    if k is None:
        raise ValueError(
            f"{func}: expected at least one of dz, dlog_q, dlog_p, got all None. "
            f"With no upstream gradient dmu = dlogvar = 0."
        )
    if k < 1:
        raise ValueError(
            f"{func}: expected K >= 1 samples in the upstream gradients, got K = {k} (from "
            f"{k_from})."
        )
    seed, stream, offset = check_noise_args(func, seed, stream, offset, k * mu.size, "K*B*Z")
    return k, seed, stream, offset


def _prepare_backward(func, dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset):
    """Check a backward call; return its arguments, None gradients as zeros, all contiguous."""
    k, seed, stream, offset = _check_backward(
        func, dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset
    )
    b, zd = mu.shape
    dtype = mu.dtype
    dz = np.zeros((k, b, zd), dtype) if dz is None else np.ascontiguousarray(dz)
    dlog_q = np.zeros((k, b), dtype) if dlog_q is None else np.ascontiguousarray(dlog_q)
    dlog_p = np.zeros((k, b), dtype) if dlog_p is None else np.ascontiguousarray(dlog_p)
    return (
        dz,
        dlog_q,
        dlog_p,
        np.ascontiguousarray(mu),
        np.ascontiguousarray(logvar),
        seed,
        stream,
        offset,
    )


# --------------------------------------------------------------------------------------------
# Reference (plain NumPy, the oracle)
# --------------------------------------------------------------------------------------------


def reparam_sample_ref(mu, logvar, k, seed, stream=0, offset=0, z_out=None):
    """Reparameterized samples and their log-densities, NumPy reference.

    Parameters
    ----------
    mu, logvar : ndarray of shape (B, Z), float32 or float64 (one dtype), finite
        Mean and log-variance of the diagonal Gaussian q.
    k : int >= 1
        Number of samples K per row.
    seed, stream : int in [0, 2**64)
        Philox key and stream (kernels.philox).
    offset : int >= 0
        Global index of eps[0, 0, 0] in the (seed, stream) sequence.
    z_out : ndarray of shape (K, B, Z), optional
        Preallocated C-contiguous output of mu's dtype.

    Returns
    -------
    z : ndarray of shape (K, B, Z)
        mu + exp(logvar / 2) * eps.
    log_q : ndarray of shape (K, B)
        log N(z; mu, diag(exp(logvar))), summed over Z.
    log_p : ndarray of shape (K, B)
        log N(z; 0, I), summed over Z.
    """
    mu, logvar, k, seed, stream, offset, z_out = _prepare(
        _FUNC, mu, logvar, k, seed, stream, offset, z_out
    )
    b, zd = mu.shape
    dtype = mu.dtype.type
    eps = normal_ref(seed, stream, k * b * zd, mu.dtype, offset).reshape(k, b, zd)  # (K, B, Z)
    sigma = np.exp(logvar / dtype(2))  # (B, Z)
    z = np.empty((k, b, zd), mu.dtype) if z_out is None else z_out
    np.add(mu, sigma * eps, out=z)  # (K, B, Z)
    half, half_log_2pi = dtype(0.5), dtype(0.5 * _LOG_2PI)
    log_q = np.sum(-half_log_2pi - half * logvar - half * eps * eps, axis=-1)  # (K, B)
    log_p = np.sum(-half_log_2pi - half * z * z, axis=-1)  # (K, B)
    return z, log_q.astype(mu.dtype, copy=False), log_p.astype(mu.dtype, copy=False)


def reparam_sample_backward_ref(dz, dlog_q, dlog_p, mu, logvar, seed, stream=0, offset=0):
    """Gradients of L = sum dz z + sum dlog_q log_q + sum dlog_p log_p, NumPy reference.

    Parameters
    ----------
    dz : ndarray of shape (K, B, Z)
    dlog_q, dlog_p : ndarray of shape (K, B)
    mu, logvar : ndarray of shape (B, Z)
        The forward's inputs; with (seed, stream, offset) they determine eps and z.
    seed, stream, offset : int
        As in the forward call.

    Returns
    -------
    dmu, dlogvar : ndarray of shape (B, Z)

    Notes
    -----
    g = dz - dlog_p[..., None] z;  dmu = sum_k g;
    dlogvar = sum_k g sigma eps / 2 - sum_k dlog_q / 2 (module docstring, "Backward").
    """
    dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset = _prepare_backward(
        _FUNC_BWD, dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset
    )
    k, b, zd = dz.shape
    dtype = mu.dtype.type
    eps = normal_ref(seed, stream, k * b * zd, mu.dtype, offset).reshape(k, b, zd)  # (K, B, Z)
    sigma = np.exp(logvar / dtype(2))  # (B, Z)
    z = mu + sigma * eps  # (K, B, Z)
    g = dz - dlog_p[:, :, None] * z  # (K, B, Z)
    half = dtype(0.5)
    dmu = g.sum(axis=0)  # (B, Z)
    dlogvar = half * (g * sigma * eps).sum(axis=0) - half * dlog_q.sum(axis=0)[:, None]
    return dmu.astype(mu.dtype, copy=False), dlogvar.astype(mu.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, parallel=True, error_model="numpy", fastmath={"reassoc"})
def _forward_v1(mu, sigma, c_q, c_p, half, k0, k1, s0, s1, offset, per, rows, z, log_q, log_p):
    # z (K*B, Z), log_q / log_p (K*B,): row r = k*B + b. c_q (B,) = -Z log(2pi)/2 - sum logvar/2,
    # c_p = -Z log(2pi)/2. Chunks of `rows` rows, fixed by the wrapper (not by the thread count);
    # every row is finished inside one iteration, so nothing is shared. reassoc only lets LLVM
    # vectorize the two row sums; the noise fill is a separate function with strict flags.
    nrows, zd = z.shape
    bsz = mu.shape[0]
    nchunks = (nrows + rows - 1) // rows
    for c in prange(nchunks):
        r0 = c * rows
        r1 = min(r0 + rows, nrows)
        g0 = offset + r0 * zd
        first = g0 // per
        nblk = (offset + r1 * zd - 1) // per - first + 1
        buf = np.empty(nblk * per, dtype=z.dtype)
        _normals(buf, k0, k1, s0, s1, first)
        e0 = g0 - first * per
        for r in range(r0, r1):
            b = r % bsz
            eps = buf[e0 + (r - r0) * zd : e0 + (r - r0 + 1) * zd]
            mur = mu[b]
            sgr = sigma[b]
            zr = z[r]
            aq = half - half  # typed zero
            ap = half - half
            for j in range(zd):
                e = eps[j]
                v = mur[j] + sgr[j] * e
                zr[j] = v
                aq += e * e
                ap += v * v
            log_q[r] = c_q[b] - half * aq
            log_p[r] = c_p - half * ap


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _backward_v2(
    dz, dlog_p, mu, sigma, k0, k1, s0, s1, offset, per, nkc, bt, kstep, acc_mu, acc_lv
):
    # Task t = (K-chunk kc, B-tile bc), a grid fixed by the wrapper. Task (kc, bc) owns
    # acc_mu[kc, b0:b1], acc_lv[kc, b0:b1] (float64, zeroed): no two tasks write one slot, and
    # the wrapper sums acc over kc in order, so the result is the same for any thread count.
    # A segment is the flat range of rows (k .. k2-1, b0 .. b1-1); it is contiguous because
    # kstep > 1 only when the tile is all of B.
    nrows, zd = dz.shape
    bsz = mu.shape[0]
    kk = nrows // bsz
    nbc = (bsz + bt - 1) // bt
    for t in prange(nkc * nbc):
        kc = t // nbc
        bc = t - kc * nbc
        ka = kc * kk // nkc
        kb = (kc + 1) * kk // nkc
        b0 = bc * bt
        b1 = min(b0 + bt, bsz)
        buf = np.empty(((kstep - 1) * bsz + (b1 - b0)) * zd + 2 * per, dtype=dz.dtype)
        am = acc_mu[kc]
        al = acc_lv[kc]
        for k in range(ka, kb, kstep):
            k2 = min(k + kstep, kb)
            g0 = offset + (k * bsz + b0) * zd
            first = g0 // per
            nblk = (offset + ((k2 - 1) * bsz + b1) * zd - 1) // per - first + 1
            _normals(buf[: nblk * per], k0, k1, s0, s1, first)
            e0 = g0 - first * per
            for kq in range(k, k2):
                for b in range(b0, b1):
                    r = kq * bsz + b
                    p = dlog_p[r]
                    off = e0 + ((kq - k) * bsz + (b - b0)) * zd
                    dzr = dz[r]
                    mur = mu[b]
                    sgr = sigma[b]
                    amr = am[b]
                    alr = al[b]
                    for j in range(zd):
                        e = buf[off + j]
                        se = sgr[j] * e
                        g = dzr[j] - p * (mur[j] + se)
                        amr[j] += np.float64(g)
                        alr[j] += np.float64(g * se)


def reparam_sample_numba_v1(mu, logvar, k, seed, stream=0, offset=0, z_out=None):
    """Numba, fused noise + z + densities, parallel over chunks of rows. Contract of
    ``reparam_sample_ref`` (noise to <= 3 ulp, sums reordered)."""
    mu, logvar, k, seed, stream, offset, z_out = _prepare(
        _FUNC, mu, logvar, k, seed, stream, offset, z_out
    )
    b, zd = mu.shape
    dtype = mu.dtype.type
    z = np.empty((k, b, zd), mu.dtype) if z_out is None else z_out  # (K, B, Z)
    log_q = np.empty((k, b), mu.dtype)  # (K, B)
    log_p = np.empty((k, b), mu.dtype)  # (K, B)
    if b == 0:
        return z, log_q, log_p
    if zd == 0:
        log_q[...] = 0
        log_p[...] = 0
        return z, log_q, log_p
    half = dtype(0.5)
    sigma = np.exp(logvar / dtype(2))  # (B, Z), the reference's values
    c_p = dtype(-0.5 * zd * _LOG_2PI)
    c_q = (c_p - half * logvar.sum(axis=1)).astype(mu.dtype)  # (B,)
    k0, k1, s0, s1 = key_words(seed, stream)
    rows = max(1, _CHUNK // zd)
    _forward_v1(
        mu,
        sigma,
        c_q,
        c_p,
        half,
        k0,
        k1,
        s0,
        s1,
        np.int64(offset),
        per_block(mu.dtype),
        rows,
        z.reshape(k * b, zd),
        log_q.reshape(-1),
        log_p.reshape(-1),
    )
    return z, log_q, log_p


def _finish_backward(acc_mu, acc_lv, dlog_q, dtype):
    """Sum the float64 partials in order and round once: dmu, dlogvar (B, Z)."""
    dmu = acc_mu.sum(axis=0) if acc_mu.ndim == 3 else acc_mu  # (B, Z)
    lv = acc_lv.sum(axis=0) if acc_lv.ndim == 3 else acc_lv  # (B, Z)
    dlogvar = 0.5 * lv - 0.5 * dlog_q.sum(axis=0, dtype=np.float64)[:, None]
    return dmu.astype(dtype), dlogvar.astype(dtype)


def _backward_grid(k, b, zd):
    """(nkc, bt, kstep) of backward v2: B-tiles of about _CHUNK elements, enough K-chunks for
    _MIN_TASKS tasks, and whole-slab segments of about _CHUNK elements when one tile is all B."""
    ntiles = max(1, -(-(b * zd) // _CHUNK))
    bt = -(-b // ntiles)
    nbc = -(-b // bt)
    nkc = max(1, min(k, -(-_MIN_TASKS // nbc)))
    kstep = max(1, _CHUNK // (b * zd)) if nbc == 1 else 1
    return nkc, bt, kstep


def reparam_sample_backward_numba_v2(dz, dlog_q, dlog_p, mu, logvar, seed, stream=0, offset=0):
    """Numba, tasks over (K-chunk, B-tile) with float64 partials. Contract of
    ``reparam_sample_backward_ref``."""
    dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset = _prepare_backward(
        _FUNC_BWD, dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset
    )
    k, b, zd = dz.shape
    if b == 0 or zd == 0:
        z2 = np.zeros((b, zd), np.float64)
        return _finish_backward(z2, z2, dlog_q, mu.dtype)
    nkc, bt, kstep = _backward_grid(k, b, zd)
    acc_mu = np.zeros((nkc, b, zd), np.float64)
    acc_lv = np.zeros((nkc, b, zd), np.float64)
    sigma = np.exp(logvar / mu.dtype.type(2))  # (B, Z)
    k0, k1, s0, s1 = key_words(seed, stream)
    _backward_v2(
        dz.reshape(k * b, zd),
        dlog_p.reshape(-1),
        mu,
        sigma,
        k0,
        k1,
        s0,
        s1,
        np.int64(offset),
        per_block(mu.dtype),
        nkc,
        bt,
        kstep,
        acc_mu,
        acc_lv,
    )
    return _finish_backward(acc_mu, acc_lv, dlog_q, mu.dtype)


# --------------------------------------------------------------------------------------------
# CuPy (kernels/cuda/reparam_sample.cu; CuPy is imported only when these run)
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = (
    "lvm_reparam_sample_v1<float>",
    "lvm_reparam_sample_v1<double>",
    "lvm_reparam_sample_backward_v1<float>",
    "lvm_reparam_sample_backward_v1<double>",
)
# Backward: K is cut into chunks until about this many threads per SM have a (chunk, b, j).
_CUPY_BWD_THREADS_PER_SM = 2048


def reparam_sample_cupy_v1(mu, logvar, k, seed, stream=0, offset=0, z_out=None):
    """CuPy: a group of lanes per (k, b) row converts the Philox blocks overlapping the row into
    normals, writes z and reduces log_q, log_p by warp shuffles. Contract of
    ``reparam_sample_ref`` on cupy arrays (noise to a few ulp; arguments checked, values not)."""
    func = "reparam_sample_cupy_v1"
    _check_inputs(func, mu, logvar, lib="cupy")
    k = _check_k(k, func)
    seed, stream, offset = check_noise_args(
        func, seed, stream, offset, k * mu.size, "K*B*Z", f" (k={k}, mu of shape {mu.shape})"
    )
    if z_out is not None:
        check_array(z_out, "z_out", func, ndim=3, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    b, zd = mu.shape
    dtype = mu.dtype.type
    if z_out is None:
        z_out = cupy.empty((k, b, zd), dtype=mu.dtype)  # (K, B, Z)
    else:
        _cupy.check_out(z_out, "z_out", func, (k, b, zd), mu.dtype)
    log_q = cupy.empty((k, b), dtype=mu.dtype)  # (K, B)
    log_p = cupy.empty((k, b), dtype=mu.dtype)  # (K, B)
    if b == 0:
        return z_out, log_q, log_p
    if zd == 0:
        log_q.fill(0)
        log_p.fill(0)
        return z_out, log_q, log_p
    per = per_block(mu.dtype)
    W = _cupy.group_width(-(-(zd - 1) // per) + 1)  # Philox blocks a row can touch
    rows = k * b
    name = _CUPY_NAMES[mu.dtype == np.float64]
    kernel = _cupy.raw_module("reparam_sample.cu", _CUPY_NAMES).get_function(name)
    kernel(
        (_cupy.grid(rows * W, _cupy.THREADS),),
        (_cupy.THREADS,),
        (
            mu,
            logvar,
            z_out,
            log_q,
            log_p,
            np.int64(rows),
            np.int64(b),
            np.int64(zd),
            np.int64(offset),
            *key_words(seed, stream),
            dtype(-0.5 * zd * _LOG_2PI),
            np.int32(W),
        ),
    )
    return z_out, log_q, log_p


def reparam_sample_backward_cupy_v1(dz, dlog_q, dlog_p, mu, logvar, seed, stream=0, offset=0):
    """CuPy: a thread per (K-chunk, b, j) regenerates its normals and accumulates in float64;
    the chunks are summed in order. Contract of ``reparam_sample_backward_ref`` on cupy arrays
    (a None upstream gradient reads as zeros)."""
    func = "reparam_sample_backward_cupy_v1"
    k, seed, stream, offset = _check_backward(
        func, dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset, lib="cupy"
    )
    from . import _cupy

    cupy = _cupy.cupy
    b, zd = mu.shape
    dz = cupy.zeros((k, b, zd), mu.dtype) if dz is None else dz
    dlog_q = cupy.zeros((k, b), mu.dtype) if dlog_q is None else dlog_q
    dlog_p = cupy.zeros((k, b), mu.dtype) if dlog_p is None else dlog_p
    plane = b * zd
    if plane == 0 or k == 0:
        acc_mu = acc_lv = cupy.zeros((1, b, zd), np.float64)
    else:
        want = _cupy.sm_count() * _CUPY_BWD_THREADS_PER_SM
        nkc = max(1, min(k, -(-want // plane)))
        acc_mu = cupy.empty((nkc, b, zd), np.float64)  # (K-chunks, B, Z), every slot written
        acc_lv = cupy.empty((nkc, b, zd), np.float64)
        name = _CUPY_NAMES[2 + (mu.dtype == np.float64)]
        kernel = _cupy.raw_module("reparam_sample.cu", _CUPY_NAMES).get_function(name)
        kernel(
            (_cupy.grid(nkc * plane, _cupy.THREADS),),
            (_cupy.THREADS,),
            (
                dz,
                dlog_p,
                mu,
                logvar,
                acc_mu,
                acc_lv,
                np.int64(k),
                np.int64(b),
                np.int64(zd),
                np.int64(nkc),
                np.int64(offset),
                *key_words(seed, stream),
            ),
        )
    dmu = acc_mu.sum(axis=0)  # (B, Z)
    dlogvar = 0.5 * acc_lv.sum(axis=0) - 0.5 * dlog_q.sum(axis=0, dtype=np.float64)[:, None]
    return dmu.astype(mu.dtype), dlogvar.astype(mu.dtype)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

# Against the normal generator bound (benchmarks/benchmarks/machine_bounds.py), 2026-12-03, same
# VM shared with jobs that kept both cores busy, (5000, 100, 50) float32, one thread, CPU time:
# forward 52.8-54.2 ms against 38.1-38.7 ms for the bound (72-73 %); compare_peers --threads 1
# --clock cpu (same day, loaded): 70 % of the bound, 5.7x PyTorch.
# DEFAULT: numba_v1 (forward, the only variant) and numba_v2 (backward). Evidence, 2026-11-21,
# project VM (2 vCPU AMD EPYC Zen 4, AVX-512, shared and loaded: load average 3-4 during the
# runs), float32, 2 Numba / 2 torch threads, medians of 33 calls (min in brackets), z_out
# preallocated; peer: torch `mu + torch.exp(0.5*logvar) * torch.randn(K, B, Z)` (no densities):
#   (K, B, Z) = (5000, 100, 50): forward 46-60 ms [35-37] vs torch 314-404 ms [223-272]
#     (6.7-6.8x; 2.2 GB/s of z written); backward v2 72-92 ms [56-70], v1 196-291 ms [143-191].
#   (K, B, Z) = (50, 100, 50): forward 0.35-0.44 ms [0.21] vs torch 1.25-1.32 ms (2.8-3.8x);
#     backward v2 0.41-0.43 ms, v1 0.86-1.03 ms.
# The noise alone (vectorized fill, one core) is 8.5 ms per 4 M float32 normals.
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", reparam_sample_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v1", reparam_sample_numba_v1, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", reparam_sample_cupy_v1, "default"),
    KernelRecord(_FUNC_BWD, "numpy", "ref", reparam_sample_backward_ref, "reference"),
    KernelRecord(_FUNC_BWD, "numba", "numba_v2", reparam_sample_backward_numba_v2, "default"),
    KernelRecord(_FUNC_BWD, "cupy", "cupy_v1", reparam_sample_backward_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
BACKWARD_VARIANTS = variants(RECORDS, _FUNC_BWD)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
BACKWARD_IMPLEMENTATIONS = implementations(RECORDS, _FUNC_BWD)
DEFAULT = default_variant(RECORDS, _FUNC)
BACKWARD_DEFAULT = default_variant(RECORDS, _FUNC_BWD)


# --------------------------------------------------------------------------------------------
# Public wrappers: validate once, then dispatch
# --------------------------------------------------------------------------------------------


def reparam_sample(mu, logvar, k, seed, stream=0, offset=0, z_out=None, *, backend="numba"):
    """Draw K reparameterized samples per row and their log q and log p, in one pass.

    Parameters
    ----------
    mu, logvar : ndarray of shape (B, Z), float32 or float64 (one dtype), finite
    k : int >= 1
        Samples per row (K).
    seed, stream : int in [0, 2**64)
        Philox key and stream.
    offset : int >= 0
        Global element index of eps[0, 0, 0]; offset + K*B*Z <= 2**62.
    z_out : ndarray of shape (K, B, Z), optional
        Preallocated C-contiguous output of mu's dtype (reuse it across steps: fresh memory is
        written at only 3-4 GB/s).
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    z : ndarray of shape (K, B, Z)
    log_q, log_p : ndarray of shape (K, B)

    Raises
    ------
    TypeError
        Non-ndarray or non-float arrays, or mu and logvar of different dtypes.
    ValueError
        Shapes (mu, logvar not 2-D or not equal; z_out wrong), non-finite mu/logvar, z_out
        overlapping an input.
    kernels.InvalidParameterError
        k not an int >= 1; seed, stream not ints in [0, 2**64); offset not an int >= 0 or
        offset + K*B*Z > 2**62.

    Notes
    -----
    z = mu + exp(logvar/2) eps, eps[k, b, j] = normal_ref(seed, stream, K*B*Z, dtype,
    offset)[(k*B + b)*Z + j]; log_q = sum_j [-log(2pi)/2 - logvar_j/2 - eps_j^2/2];
    log_p = sum_j [-log(2pi)/2 - z_j^2/2]. See the module docstring.
    """
    impl = check_backend(backend, IMPLEMENTATIONS, _FUNC)
    return impl(mu, logvar, k, seed, stream, offset, z_out)


def reparam_sample_backward(
    dz, dlog_q, dlog_p, mu, logvar, seed, stream=0, offset=0, *, backend="numba"
):
    """Gradients of reparam_sample's outputs with respect to mu and logvar, eps regenerated.

    Parameters
    ----------
    dz : ndarray of shape (K, B, Z) or None
        dL/dz. None means zero.
    dlog_q, dlog_p : ndarray of shape (K, B) or None
        dL/dlog_q, dL/dlog_p. None means zero.
    mu, logvar : ndarray of shape (B, Z)
        The forward call's inputs.
    seed, stream, offset : int
        The forward call's noise arguments (the same eps is regenerated).
    backend : {"numba", "numpy", "cupy"}

    Returns
    -------
    dmu, dlogvar : ndarray of shape (B, Z)

    Notes
    -----
    With g = dz - dlog_p[..., None] * z (z recomputed as mu + sigma eps)::

        dmu     = sum_k g
        dlogvar = 1/2 sum_k g sigma eps - 1/2 sum_k dlog_q

    log_q's gradient is total (through z and directly): zero for mu, -1/2 for each logvar_j.
    """
    impl = check_backend(backend, BACKWARD_IMPLEMENTATIONS, _FUNC_BWD)
    return impl(dz, dlog_q, dlog_p, mu, logvar, seed, stream, offset)
