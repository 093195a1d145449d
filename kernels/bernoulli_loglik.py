"""Fused Bernoulli log-likelihood from logits, with its gradient, in one pass.

Math
----
For logits l (N, D) and binary data x (B, D), with N = S * B and row r of the logits scored
against x[r % B] (S samples per data point, sample-major: r = s * B + b)::

    loglik[r]  = sum_d  x l - softplus(l),     softplus(l) = max(l, 0) + log1p(exp(-|l|))
    grad[r, d] = d loglik[r] / d l[r, d] = x - sigmoid(l)

with sigmoid(l) = 1 / (1 + t) for l >= 0 and t / (1 + t) for l < 0, where t = exp(-|l|) is
shared with the softplus, and so is 1 / (1 + t). Backward of a loss L: dlogits = dL/dloglik[:, None]
* grad, which ``bernoulli_loglik_backward`` computes (in place allowed).

Shapes: logits (N, D) and x (B, D), both C-contiguous and of one dtype (float32 or float64);
loglik (N,); grad_out (N, D), preallocated by the caller, either ``logits`` itself (the gradient
overwrites the logits in place) or memory that overlaps neither input.

Output bias: with ``bias`` (D,) of the same dtype, every formula reads l = logits[r, d] +
bias[d], added in the data dtype (the value the decoder's own ``logits += bias`` would have
stored, bit for bit): the decoder's last bias add, a pass over (N, D), rides along in this one.

Numerics
--------
- Exact for any finite logit: t = exp(-|l|) is in [0, 1], so nothing overflows; for x = 1 and
  l = -1e4 the term is exactly -1e4, for x = 0 and l = -1e4 exactly 0 (tested).
- float64 (and v2 for both dtypes): log1p(t) = log(w) + c / w with w = fl(1 + t) and
  c = t - (w - 1) its exact rounding error (Fast2Sum, |t| <= 1); 1 / w is the one division and
  serves sigmoid too.
- exp / log are the vectorizable ``kernels.fastmath`` versions (<= 1 ulp); for l below -87.3
  (float32) / -708.4 (float64) t is flushed to 0 instead of becoming subnormal, so sigmoid(l) is
  returned as 0 rather than a subnormal (error below the smallest normal; no subnormal gradients
  reach the backward GEMMs, PERF-NOTES "Denormals").
- float32 in v3 (the default): t = ``fastmath.exp_nonpos_f32(-|l|)`` (exp_f32 bit for bit, with
  the work only positive arguments need left out); log1p(t) = t P(t) with P a degree-9
  polynomial fitted to log1p(t) / t on [0, 1] (at most 1.46 ulp measured, fastmath.log1p_f32
  1.44), since t is in [0, 1] no range reduction is needed; sigmoid = (1 or t) / (1 + t), one
  correctly rounded division (v2 took t * (1 / w), within 1 ulp of it). float64 keeps v2's
  math: a float64 polynomial would need degree ~25.
- Row sums (``fastmath={"reassoc"}`` on the row loop only, so LLVM may split the sum into vector
  partial sums; the element math keeps strict flags, see kernels.fastmath): accumulated in the
  data dtype, 16 lanes x 4 interleaved partial sums of about D / 64 terms each, then a tree:
  <= (D/64 + 6) ulp in the worst case since every term is <= 0 (no cancellation), measured max
  relative error 2.9e-7 at D = 784 (v2 and v3 alike; PARITY_TOLERANCES allow 2e-5). A float64
  accumulator (v1) is good to the last rounding but halves the vector width of the whole loop.
  ``logits`` must be finite: 0 * inf is NaN, and an infinite logit is a model that has already
  diverged (the public wrapper checks with ``check_values=True``).

Against the machine (compare_peers, float32 (50000, 784), x of 1000 rows, 2 threads): the
kernel reads 4 bytes and writes 4 per element, so its limit is the copy bandwidth. One core
computes v3's element math at about 1.4 G elements/s (CPU time, 28 ms for 39 M elements: exp,
one division, a degree-9 polynomial and the selects, 16 lanes at a time; v2 0.83 G/s), i.e.
11 GB/s of the 24-27 GB/s a one-thread copy reaches on the development VM. So it is
compute-bound on one core and needs both cores to approach the copy bandwidth; see the
evidence at RECORDS for the fraction measured.

Variants
--------
Every variant checks its arguments (types, dtypes, shapes, contiguity, the output buffer and
its overlap with the inputs) before any loop or launch; ``bernoulli_loglik`` and
``bernoulli_loglik_backward`` pick one by ``backend`` and add the optional value checks.

- ``bernoulli_loglik_ref``: NumPy, computed in float64 and cast back; the oracle and the
  ``"numpy"`` backend.
- ``bernoulli_loglik_numba_v3``: rows are independent (each writes its own loglik[r] and
  gradient row); a serial loop over a row range, run directly below 2^18 elements and from a
  ``prange`` over chunks of 8 rows above; the inner loop over D is vectorized, the row sums
  accumulate in the data dtype; float32 element math by the polynomial log1p and the
  non-positive exp above. In place (``grad_out is logits``) is a compile-time case of the same
  kernel (the gradient argument is None), so the loop reads and writes one array and still
  vectorizes. DEFAULT (the ``"numba"`` backend); see the evidence at RECORDS.
- v2 (moved to benchmarks/lab/bernoulli_loglik.py): the same kernels with the general
  ``fastmath`` exp and log (log1p(t) = log(1 + t) + c / (1 + t)); 1.6-1.7x slower on float32.
- v1 (in benchmarks/lab/bernoulli_loglik.py): v2 with a float64 row accumulator. Twice as slow
  on float32 (the widening halves the vector width of the whole loop) for an error v2 keeps
  well inside the float32 tolerance.
- ``bernoulli_loglik_backward_ref``, ``bernoulli_loglik_backward_numba_v1``: dlogits =
  dloglik[:, None] * grad, the Numba one a serial or row-chunked loop (in place allowed).
- ``bernoulli_loglik_cupy_v1`` (kernels/cuda/bernoulli_loglik.cu): a group of up to 32 lanes per
  row, per-lane partial sums in the dtype added by warp shuffles, gradient in the same pass; the
  backward ``bernoulli_loglik_backward_cupy_v1`` is an ElementwiseKernel. The ``"cupy"``
  backend; not yet run on a device.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._checks import check_array, check_backend, check_dtype_of, same_buffer
from ._registry import KernelRecord, default_variant, implementations, variants
from .fastmath import _fma, exp, exp_nonpos_f32, log

__all__ = [
    "bernoulli_loglik",
    "bernoulli_loglik_backward",
    "bernoulli_loglik_ref",
    "bernoulli_loglik_numba_v3",
    "bernoulli_loglik_backward_ref",
    "bernoulli_loglik_backward_numba_v1",
    "bernoulli_loglik_cupy_v1",
    "bernoulli_loglik_backward_cupy_v1",
    "RECORDS",
    "VARIANTS",
    "BACKWARD_VARIANTS",
    "IMPLEMENTATIONS",
    "BACKWARD_IMPLEMENTATIONS",
    "DEFAULT",
]

_FUNC = "bernoulli_loglik"
_FUNC_BWD = "bernoulli_loglik_backward"

# Inputs with fewer elements run on the calling thread (see the comment above _rows_grad).
_PARALLEL_MIN = 1 << 18
# Rows per parallel task.
_ROWS_PER_TASK = 8


# --------------------------------------------------------------------------------------------
# Argument checks (every variant runs them; the kernels below assume valid input)
# --------------------------------------------------------------------------------------------


def _check_out(out, name, src, src_name, inputs, func, lib="numpy", contiguous=True):
    """``out`` must match ``src`` in shape and dtype, and be ``src`` itself or overlap none of
    ``inputs`` (a dict name -> array, ``src`` included; NumPy only: CuPy overlap is not
    checked)."""
    check_array(out, name, func, ndim=src.ndim, lib=lib, contiguous=contiguous)
    check_dtype_of(out, name, src, src_name, func)
    if out.shape != src.shape:
        raise ValueError(
            f"{func}: expected {name} to have the shape of {src_name} "
            f"{tuple(src.shape)}, got {tuple(out.shape)}. Allocate it with "
            f"numpy.empty_like({src_name})."
        )
    if lib != "numpy":
        return
    if not out.flags.writeable:
        raise ValueError(f"{func}: expected {name} to be writeable, got a read-only array.")
    in_place = same_buffer(out, src)
    for other, a in inputs.items():
        if (other == src_name and in_place) or not np.may_share_memory(out, a):
            continue
        raise ValueError(
            f"{func}: expected {name} to be {src_name} itself or to overlap no "
            f"input, got an array overlapping {other}. Pass {name}={src_name} to "
            f"overwrite it in place, or a fresh buffer."
        )


def _prepare(func, logits, x, grad_out, bias=None, lib="numpy", contiguous=True):
    """Check a forward call; ``contiguous`` False for the NumPy reference, which takes
    strides."""
    check_array(logits, "logits", func, ndim=2, lib=lib, contiguous=contiguous)
    check_array(x, "x", func, ndim=2, lib=lib, contiguous=contiguous)
    check_dtype_of(x, "x", logits, "logits", func)
    N, D = logits.shape
    B = x.shape[0]
    if x.shape[1] != D:
        raise ValueError(
            f"{func}: expected x.shape[1] == logits.shape[1] ({D}), got x of shape "
            f"{tuple(x.shape)}."
        )
    if bias is not None:
        check_array(bias, "bias", func, ndim=1, lib=lib, contiguous=contiguous)
        check_dtype_of(bias, "bias", logits, "logits", func)
        if bias.shape[0] != D:
            raise ValueError(
                f"{func}: expected bias of shape ({D},), one per column of logits, got "
                f"{tuple(bias.shape)}."
            )
    if B == 0 or N % B != 0:
        raise ValueError(
            f"{func}: expected logits.shape[0] to be a multiple S * B of "
            f"x.shape[0] ({B}), got logits of shape {tuple(logits.shape)}. Order the "
            f"logits sample-major, (S, B, D) reshaped to (S * B, D)."
        )
    if grad_out is not None:
        inputs = {"logits": logits, "x": x}
        if bias is not None:
            inputs["bias"] = bias
        _check_out(grad_out, "grad_out", logits, "logits", inputs, func, lib, contiguous)


def _prepare_backward(func, dloglik, grad, out, lib="numpy", contiguous=True):
    check_array(grad, "grad", func, ndim=2, lib=lib, contiguous=contiguous)
    check_array(dloglik, "dloglik", func, ndim=1, lib=lib, contiguous=contiguous)
    check_dtype_of(dloglik, "dloglik", grad, "grad", func)
    if dloglik.shape[0] != grad.shape[0]:
        raise ValueError(
            f"{func}: expected dloglik of shape ({grad.shape[0]},) to match "
            f"grad.shape[0], got {tuple(dloglik.shape)}."
        )
    if out is not None:
        inputs = {"grad": grad, "dloglik": dloglik}
        _check_out(out, "out", grad, "grad", inputs, func, lib, contiguous)


# --------------------------------------------------------------------------------------------
# Reference (the oracle)
# --------------------------------------------------------------------------------------------


def bernoulli_loglik_ref(logits, x, grad_out=None, bias=None):
    """Plain NumPy, in float64 whatever the input dtype; results cast to the input dtype.

    Parameters
    ----------
    logits : ndarray of shape (N, D)
    x : ndarray of shape (B, D), entries 0 or 1, N = S * B; row r of logits uses x[r % B]
    grad_out : ndarray of shape (N, D), optional
        Receives x - sigmoid(logits); may be ``logits`` itself.
    bias : ndarray of shape (D,), optional
        Added to every row of logits (in their dtype) before anything else.

    Returns
    -------
    loglik : ndarray of shape (N,)
    grad_out : ndarray of shape (N, D) or None
    """
    _prepare(_FUNC, logits, x, grad_out, bias, contiguous=False)
    N, D = logits.shape
    B = x.shape[0]
    if bias is not None:
        logits = logits + bias  # (N, D), the data dtype's rounding, as the kernels add it
    l = logits.astype(np.float64).reshape(N // B, B, D)  # (S, B, D)
    xx = x.astype(np.float64)[None]  # (1, B, D)
    t = np.exp(-np.abs(l))  # (S, B, D), in [0, 1]
    softplus = np.maximum(l, 0.0) + np.log1p(t)
    loglik = (xx * l - softplus).sum(axis=-1).reshape(N).astype(logits.dtype)  # (N,)
    if grad_out is not None:
        sig = np.where(l >= 0, 1.0, t) / (1.0 + t)
        grad_out[...] = (xx - sig).reshape(N, D)  # cast on assignment; logits already read
    return loglik, grad_out


def bernoulli_loglik_backward_ref(dloglik, grad, out=None):
    """dlogits (N, D) = dloglik[:, None] * grad; ``out`` may be ``grad`` itself."""
    _prepare_backward(_FUNC_BWD, dloglik, grad, out, contiguous=False)
    return np.multiply(dloglik[:, None], grad, out=out)


# --------------------------------------------------------------------------------------------
# Numba
# --------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def _term_grad(l, xv, zero, one):
    """(x l - softplus(l), x - sigmoid(l)) for one element; constants typed like l.

    Compiled on its own with strict flags and inlined by LLVM, so the caller's ``reassoc`` cannot
    fold the Fast2Sum correction c = t - (w - 1) to 0.
    """
    t = exp(-abs(l))
    w = one + t
    inv = one / w
    c = t - (w - one)
    softplus = (l if l > zero else zero) + (log(w) + c * inv)
    sig = (one if l >= zero else t) * inv
    return xv * l - softplus, xv - sig


# v3's float32 element math. The same t = exp(-|l|) as _term_grad, bit for bit
# (fastmath.exp_nonpos_f32 is exp_f32 for arguments <= 0, with less work); sigmoid as one
# division, (1 or t) / (1 + t), correctly rounded from t (v2's t * (1 / w) rounds twice: the two
# differ by at most 1 ulp); and log1p(t) straight from t by a polynomial instead of
# log(w) + c / w, which needed the reciprocal too: t lies in [0, 1], where
# log1p(t) / t is smooth, so one degree-9 polynomial (least-squares fit of the relative error,
# float64 error 4.7e-9) does, with no range reduction and no exponent bit work. Measured against
# long double over 2.1 M points of [0, 1] plus every power of two down to 2^-125: at most 1.46
# ulp, as fastmath.log1p_f32 (1.44). float64 data keeps _term_grad (a polynomial would need
# degree ~25 for float64 accuracy).
_F32 = np.float32
_LOG1P32 = tuple(
    _F32(v)
    for v in (
        0.9999999952858488,
        -0.4999990240071168,
        0.33329961831116595,
        -0.24954127669302476,
        0.19675908575031273,
        -0.15305504193364722,
        0.10603505288671687,
        -0.05695805799916925,
        0.019850676541557206,
        -0.00324385084806118,
    )
)


@njit(nogil=True, cache=True, error_model="numpy")
def _log1p_unit_f32(t):
    """log(1 + t) for float32 t in [0, 1]: t * P(t), Horner with fused multiply-adds."""
    c = _LOG1P32
    p = _fma(c[9], t, c[8])
    p = _fma(p, t, c[7])
    p = _fma(p, t, c[6])
    p = _fma(p, t, c[5])
    p = _fma(p, t, c[4])
    p = _fma(p, t, c[3])
    p = _fma(p, t, c[2])
    p = _fma(p, t, c[1])
    p = _fma(p, t, c[0])
    return t * p


@njit(nogil=True, cache=True, error_model="numpy")
def _term_grad_f32(l, xv, zero, one):
    """_term_grad for float32 with log1p(t) by _log1p_unit_f32 and sigmoid as one division."""
    t = exp_nonpos_f32(-abs(l))
    softplus = (l if l > zero else zero) + _log1p_unit_f32(t)
    sig = (one if l >= zero else t) / (one + t)  # correctly rounded from t
    return xv * l - softplus, xv - sig


def _term_grad_v3(l, xv, zero, one):
    """v3's element math: _term_grad_f32 for float32, _term_grad for float64 (Numba only)."""


@overload(_term_grad_v3)
def _term_grad_v3_overload(l, xv, zero, one):
    if l == types.float32:
        return lambda l, xv, zero, one: _term_grad_f32(l, xv, zero, one)
    return lambda l, xv, zero, one: _term_grad(l, xv, zero, one)


# Each kernel is a serial loop over a row range, called directly for small inputs and from a
# ``prange`` wrapper over chunks of rows for large ones: a parallel region costs 2-17 us on a warm
# pool and, on a loaded machine, a scheduler tick (4 ms) whenever the worker is not running, so
# below _PARALLEL_MIN elements one thread is faster.
#
# fastmath={"reassoc"} lets LLVM split the row sum into vector partial sums; nothing else in these
# loops reassociates (the element math lives in _term_grad / kernels.fastmath with strict flags).
# No nnan/ninf: NaN logits must propagate to the loglik. ``acc0`` is the accumulator's zero: its
# type (float64, or the data dtype) picks the accumulation precision; ``poly`` None keeps v2's
# element math (_term_grad), anything else takes v3's (_term_grad_v3). Both are compile-time
# choices (Numba prunes a branch on ``is None`` by the argument's type).


@njit(nogil=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
def _rows_grad(logits, x, grad, loglik, r0, r1, acc0, zero, one, poly, bias):
    """loglik[r] and the gradient row for rows r0..r1, written to ``grad``, or over ``logits``
    when ``grad`` is None. None is resolved at compile time, so in place the loop reads and
    writes one array, a distance-0 dependence that vectorizes; two arguments aliasing one buffer
    would fail LLVM's runtime overlap check and run the scalar loop (20x slower, measured).
    ``bias`` None (compile time too) or (D,), added to each row's logits."""
    if grad is None:
        out = logits
    else:
        out = grad
    D = logits.shape[1]
    B = x.shape[0]
    for r in range(r0, r1):
        b = r % B
        acc = acc0
        for d in range(D):
            if bias is None:
                l = logits[r, d]
            else:
                l = logits[r, d] + bias[d]
            if poly is None:
                term, g = _term_grad(l, x[b, d], zero, one)
            else:
                term, g = _term_grad_v3(l, x[b, d], zero, one)
            out[r, d] = g
            acc += term
        loglik[r] = acc


@njit(nogil=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
def _rows_loglik(logits, x, loglik, r0, r1, acc0, zero, one, poly, bias):
    """loglik[r] only, rows r0..r1 (the sigmoid is dead code and disappears)."""
    D = logits.shape[1]
    B = x.shape[0]
    for r in range(r0, r1):
        b = r % B
        acc = acc0
        for d in range(D):
            if bias is None:
                l = logits[r, d]
            else:
                l = logits[r, d] + bias[d]
            if poly is None:
                term, _ = _term_grad(l, x[b, d], zero, one)
            else:
                term, _ = _term_grad_v3(l, x[b, d], zero, one)
            acc += term
        loglik[r] = acc


# Rows are independent: each chunk writes its own loglik[r] and gradient rows, no shared slots.
@njit(nogil=True, cache=True, parallel=True)
def _rows_grad_par(logits, x, grad, loglik, rows, acc0, zero, one, poly, bias):
    N = logits.shape[0]
    for c in prange((N + rows - 1) // rows):
        r0, r1 = c * rows, min(c * rows + rows, N)
        _rows_grad(logits, x, grad, loglik, r0, r1, acc0, zero, one, poly, bias)


@njit(nogil=True, cache=True, parallel=True)
def _rows_loglik_par(logits, x, loglik, rows, acc0, zero, one, poly, bias):
    N = logits.shape[0]
    for c in prange((N + rows - 1) // rows):
        r0, r1 = c * rows, min(c * rows + rows, N)
        _rows_loglik(logits, x, loglik, r0, r1, acc0, zero, one, poly, bias)


def _run(logits, x, grad_out, acc0, poly=None, bias=None):
    N, D = logits.shape
    dt = logits.dtype.type
    loglik = np.empty(N, dtype=logits.dtype)  # (N,)
    parallel = N * D >= _PARALLEL_MIN and N > _ROWS_PER_TASK
    c = (acc0, dt(0), dt(1), poly, bias)
    if grad_out is None:
        if parallel:
            _rows_loglik_par(logits, x, loglik, _ROWS_PER_TASK, *c)
        else:
            _rows_loglik(logits, x, loglik, 0, N, *c)
        return loglik, None
    grad = None if same_buffer(grad_out, logits) else grad_out  # None: in place
    if parallel:
        _rows_grad_par(logits, x, grad, loglik, _ROWS_PER_TASK, *c)
    else:
        _rows_grad(logits, x, grad, loglik, 0, N, *c)
    return loglik, grad_out


def bernoulli_loglik_numba_v3(logits, x, grad_out=None, bias=None):
    """Numba, v2 with log1p(exp(-|l|)) by a polynomial in t = exp(-|l|) for float32 (float64
    runs v2's math); the contract of ``bernoulli_loglik_ref``."""
    _prepare(_FUNC, logits, x, grad_out, bias)
    return _run(logits, x, grad_out, logits.dtype.type(0), poly=True, bias=bias)


@njit(nogil=True, cache=True)
def _scale_rows(dloglik, grad, out, r0, r1):
    """out[r] = dloglik[r] * grad[r] for rows r0..r1; over ``grad`` when ``out`` is None."""
    if out is None:
        dst = grad
    else:
        dst = out
    for r in range(r0, r1):
        s = dloglik[r]
        for d in range(grad.shape[1]):
            dst[r, d] = s * grad[r, d]


@njit(nogil=True, cache=True, parallel=True)
def _scale_rows_par(dloglik, grad, out, rows):
    N = grad.shape[0]
    for c in prange((N + rows - 1) // rows):
        _scale_rows(dloglik, grad, out, c * rows, min(c * rows + rows, N))


def bernoulli_loglik_backward_numba_v1(dloglik, grad, out=None):
    """Numba version of ``bernoulli_loglik_backward_ref``."""
    _prepare_backward(_FUNC_BWD, dloglik, grad, out)
    if out is None:
        out = np.empty_like(grad)  # (N, D)
    dst = None if same_buffer(out, grad) else out  # None: in place
    N, D = grad.shape
    if N * D >= _PARALLEL_MIN and N > _ROWS_PER_TASK:
        _scale_rows_par(dloglik, grad, dst, _ROWS_PER_TASK)
    else:
        _scale_rows(dloglik, grad, dst, 0, N)
    return out


# --------------------------------------------------------------------------------------------
# CuPy (kernels/cuda/bernoulli_loglik.cu; CuPy is imported only when these run)
# --------------------------------------------------------------------------------------------

_CUPY_NAMES = tuple(
    f"lvm_bernoulli_loglik_v1<{t}, {g}, {b}>"
    for t in ("float", "double")
    for g in ("true", "false")
    for b in ("true", "false")
)


def bernoulli_loglik_cupy_v1(logits, x, grad_out=None, bias=None):
    """CuPy: a group of up to 32 lanes per row, partial sums in the dtype combined by warp
    shuffles, the gradient written in the same pass. Contract of ``bernoulli_loglik_ref`` on
    cupy arrays; checks types, dtypes, shapes and contiguity (not values)."""
    func = "bernoulli_loglik_cupy_v1"
    _prepare(func, logits, x, grad_out, bias, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    N, D = logits.shape
    B = x.shape[0]
    loglik = cupy.empty(N, dtype=logits.dtype)  # (N,)
    if N == 0:
        return loglik, grad_out
    W = _cupy.group_width(D)
    name = _CUPY_NAMES[4 * (logits.dtype == np.float64) + 2 * (grad_out is None) + (bias is None)]
    kernel = _cupy.raw_module("bernoulli_loglik.cu", _CUPY_NAMES).get_function(name)
    kernel(
        (_cupy.grid(N * W, _cupy.THREADS),),
        (_cupy.THREADS,),
        (
            logits,
            x,
            logits if bias is None else bias,  # not read without BIAS
            loglik if grad_out is None else grad_out,
            loglik,
            np.int64(N),
            np.int64(D),
            np.int64(B),
            np.int32(W),
        ),
    )
    return loglik, grad_out


def bernoulli_loglik_backward_cupy_v1(dloglik, grad, out=None):
    """CuPy ElementwiseKernel ``out = dloglik[:, None] * grad``; ``out`` may be ``grad``."""
    func = "bernoulli_loglik_backward_cupy_v1"
    _prepare_backward(func, dloglik, grad, out, lib="cupy")
    from . import _cupy

    cupy = _cupy.cupy
    if out is None:
        out = cupy.empty_like(grad)  # (N, D)
    scale = _cupy.elementwise(
        "T s, T g", "T out", "out = s * g", "lvm_bernoulli_loglik_backward_v1"
    )
    scale(dloglik[:, None], grad, out)
    return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

# DEFAULT: numba_v3. Evidence, 2026-12-03, development VM (AMD EPYC Zen 4, 2 vCPUs, shared with
# other jobs: pytest runs and a training run kept both cores busy), float32 (50000, 784), x of
# B = 1000 rows, grad_out preallocated, one thread, CPU time of the thread (what the other jobs
# disturb least), medians of 9-15:
#   v3 28.2 ms (11.1 GB/s read + written) [34.5 ms in the loaded compare_peers run below],
#   v2 47.7 ms (6.6 GB/s), copy bandwidth of one thread 23-25 GB/s.
#   compare_peers --threads 1 --clock cpu (same day): v3 at 39 % of the copy bandwidth,
#   23.7x NumPy, 18.6x PyTorch (BCE-with-logits + sigmoid, no autograd).
# Earlier (Nov 2026, Zen 5 VM, CPU time, 1 thread, D = 784, B = 100): N = 100 v2 0.085 ms,
# v1 0.145, PyTorch 0.199; N = 5000 v2 4.26, v1 8.29, PyTorch 12.9; N = 50000 v2 39.9, v1 78.7,
# PyTorch 404. The fraction on two threads: see the module docstring, "Against the machine".
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", bernoulli_loglik_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v3", bernoulli_loglik_numba_v3, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", bernoulli_loglik_cupy_v1, "default"),
    KernelRecord(_FUNC_BWD, "numpy", "ref", bernoulli_loglik_backward_ref, "reference"),
    KernelRecord(_FUNC_BWD, "numba", "numba_v1", bernoulli_loglik_backward_numba_v1, "default"),
    KernelRecord(_FUNC_BWD, "cupy", "cupy_v1", bernoulli_loglik_backward_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
BACKWARD_VARIANTS = variants(RECORDS, _FUNC_BWD)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
BACKWARD_IMPLEMENTATIONS = implementations(RECORDS, _FUNC_BWD)
DEFAULT = default_variant(RECORDS, _FUNC)


# --------------------------------------------------------------------------------------------
# Public wrappers: pick the variant by backend (every variant checks its own arguments)
# --------------------------------------------------------------------------------------------


def bernoulli_loglik(logits, x, grad_out=None, *, bias=None, backend="numba", check_values=False):
    """Per-row Bernoulli log-likelihood from logits, and optionally its gradient in place.

    Parameters
    ----------
    logits : ndarray of shape (N, D), float32 or float64, C-contiguous, finite
    x : ndarray of shape (B, D), same dtype, C-contiguous, entries 0 or 1
        N must be a multiple S * B; row r of ``logits`` is scored against ``x[r % B]``, so S
        samples per data point (sample-major order) need no tiled copy of x.
    grad_out : ndarray of shape (N, D), optional
        Receives d loglik / d logits = x - sigmoid(logits). May be ``logits`` itself (the logits
        are overwritten); otherwise it must overlap neither input.
    bias : ndarray of shape (D,), optional
        Same dtype; the formulas read logits + bias (a decoder's output bias, added here
        instead of in a pass of its own). The gradient is then that of logits + bias.
    backend : {"numba", "numpy", "cupy"}
    check_values : bool
        Also check that logits and bias are finite and x is binary (one extra pass over each).

    Returns
    -------
    loglik : ndarray of shape (N,)
    grad_out : ndarray of shape (N, D) or None
        The array passed in, filled.

    Raises
    ------
    TypeError
        Not NumPy arrays, or dtypes not float32/float64 or not matching.
    ValueError
        Wrong dimensions or shapes, non-contiguous arrays, overlapping output, and with
        ``check_values`` non-finite logits or non-binary x.
    """
    func = _FUNC
    impl = check_backend(backend, IMPLEMENTATIONS, func)
    if check_values:
        _prepare(func, logits, x, grad_out, bias, lib="cupy" if backend == "cupy" else "numpy")
        for name, a in (("logits", logits), ("bias", bias)):
            bad = None if a is None else ~np.isfinite(a)
            if bad is not None and bad.any():
                raise ValueError(
                    f"{func}: expected {name} to contain no NaN or Inf values, got "
                    f"{int(bad.sum())} of {a.size}. Check the decoder output."
                )
        nonbin = (x != 0) & (x != 1)
        if nonbin.any():
            raise ValueError(
                f"{func}: expected x to be binary (every entry 0 or 1), got "
                f"{int(nonbin.sum())} other values, e.g. "
                f"{float(x[nonbin][0])!r}. Binarize the data (x > 0.5)."
            )
    if bias is None:
        return impl(logits, x, grad_out)
    return impl(logits, x, grad_out, bias)


def bernoulli_loglik_backward(dloglik, grad, out=None, *, backend="numba"):
    """dlogits = dloglik[:, None] * grad.

    Parameters
    ----------
    dloglik : ndarray of shape (N,)
        Gradient of the loss with respect to ``loglik``.
    grad : ndarray of shape (N, D)
        ``grad_out`` of the forward pass, x - sigmoid(logits).
    out : ndarray of shape (N, D), optional
        May be ``grad`` itself; otherwise it must overlap neither input.

    Returns
    -------
    dlogits : ndarray of shape (N, D)
    """
    return check_backend(backend, BACKWARD_IMPLEMENTATIONS, _FUNC_BWD)(dloglik, grad, out)
