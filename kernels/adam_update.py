"""Adam's parameter update, fused into one pass over p, g, m and v.

Math (Kingma and Ba 2015, Algorithm 1, with the bias corrections folded into the step
size and epsilon so the kernel needs no per-step arrays):

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - step_size * m / (sqrt(v) + eps_hat)

with step_size = lr sqrt(1 - b2^t) / (1 - b1^t) and eps_hat = eps sqrt(1 - b2^t), which
equals p - lr m_hat / (sqrt(v_hat) + eps).

Shapes: any; all four arrays share one shape and dtype (float32 or float64); p, m and v are
updated in place. NumPy evaluates the same formula as eight passes with temporaries; one fused pass
reads and writes each element once.

Checks: every variant checks the four arrays (type, dtype, equal shapes and dtypes; for the
NumPy/Numba variants also C-contiguous p, m, v, since a strided view would be flattened into a
copy and the update lost, writeable, and no overlap between them) and the scalars (finite;
beta1, beta2 in [0, 1); eps_hat >= 0) before any loop.

Variants:
    adam_update_ref        NumPy, the oracle; the "numpy" backend
    adam_update_numba_v1   serial loop; the path v2 takes below 2**20 elements (alternative:
                           no backend dispatches to it directly)
    adam_update_numba_v2   prange over contiguous blocks above 2**20 elements, v1 below;
                           DEFAULT, the "numba" backend
    adam_update_cupy_v1    CuPy ElementwiseKernel, one fused pass on the GPU; the "cupy"
                           backend (not yet run on a device)

A whole optimizer's update in one call, ``adam_update_group(group, step_size, beta1, beta2,
eps_hat)``: ``AdamGroup(ps, gs, ms, vs)`` checks every (p, g, m, v) once, as a single update
checks them, and holds them; each call then checks only the scalars.
A model's step updates a dozen arrays: called one by one, the checks and the dispatch cost
more than the arithmetic (IWAE-paper model, 12 arrays, 0.42 M parameters, float32, one thread:
0.40 ms a step through twelve calls, 0.15 ms in one).

Variants of adam_update_group:
    adam_update_group_ref        adam_update_ref on each quadruple; the "numpy" backend
    adam_update_group_numba_v1   one Numba call over every array below PARALLEL_THRESHOLD (the
                                 loop of v1, bit for bit), v2's blocks for each larger one;
                                 DEFAULT, the "numba" backend
    adam_update_group_cupy_v1    adam_update_cupy_v1 on each quadruple; the "cupy" backend
"""

import numpy as np
from numba import njit, prange

from ._checks import check_array, check_param
from ._registry import KernelRecord, default_variant, implementations, variants

__all__ = [
    "AdamGroup",
    "adam_update_group_ref",
    "adam_update_group_numba_v1",
    "adam_update_group_cupy_v1",
    "adam_update_ref",
    "adam_update_numba_v1",
    "adam_update_numba_v2",
    "adam_update_cupy_v1",
    "PARALLEL_THRESHOLD",
    "RECORDS",
    "VARIANTS",
    "GROUP_VARIANTS",
    "IMPLEMENTATIONS",
    "DEFAULT",
]

_FUNC = "adam_update"


def _check(func, p, g, m, v, step_size, beta1, beta2, eps_hat, lib="numpy"):
    """The arguments of one update; returns the scalars as floats."""
    _check_arrays(func, p, g, m, v, lib)
    return _check_scalars(func, step_size, beta1, beta2, eps_hat)


def _check_arrays(func, p, g, m, v, lib="numpy", names=("p", "g", "m", "v"), g_contiguous=False):
    """The four arrays of one update (``names`` label them in messages)."""
    for name, a, role in zip(names, (p, g, m, v), "pgmv"):
        # p, m, v are flattened and written in place by the Numba loops: a strided view would
        # be flattened into a copy and its update lost. g is only read (a strided g is copied);
        # CuPy's ElementwiseKernel follows strides itself.
        check_array(
            a, name, func, lib=lib, contiguous=lib == "numpy" and (role != "g" or g_contiguous)
        )
        if role != "p" and (a.shape != p.shape or a.dtype != p.dtype):
            raise ValueError(
                f"{func}: expected {name} to match {names[0]} ({p.dtype} {tuple(p.shape)}), got "
                f"{a.dtype} {tuple(a.shape)}. Each parameter needs its own gradient and "
                f"moment buffers of its shape."
            )
    if lib == "numpy":
        for name, a, role in zip(names, (p, g, m, v), "pgmv"):
            if role != "g" and not a.flags.writeable:
                raise ValueError(
                    f"{func}: expected {name} to be writeable, got a read-only array. It is "
                    f"updated in place."
                )
        arrays = list(zip(names, (p, g, m, v)))
        for i, (a_name, a) in enumerate(arrays):
            for b_name, b in arrays[i + 1 :]:
                if a.size and np.may_share_memory(a, b):
                    raise ValueError(
                        f"{func}: expected {a_name} and {b_name} to be separate arrays, got "
                        f"overlapping ones. Give every parameter its own gradient and moment "
                        f"buffers."
                    )


def _check_scalars(func, step_size, beta1, beta2, eps_hat):
    step_size = check_param(step_size, "step_size", func)
    beta1 = check_param(
        beta1, "beta1", func, low=0, low_inclusive=True, high=1, high_inclusive=False
    )
    beta2 = check_param(
        beta2, "beta2", func, low=0, low_inclusive=True, high=1, high_inclusive=False
    )
    eps_hat = check_param(eps_hat, "eps_hat", func, low=0, low_inclusive=True)
    return step_size, beta1, beta2, eps_hat


def adam_update_ref(p, g, m, v, step_size, beta1, beta2, eps_hat):
    """One Adam step in place, NumPy (the oracle): arguments as the module docstring."""
    step_size, beta1, beta2, eps_hat = _check(_FUNC, p, g, m, v, step_size, beta1, beta2, eps_hat)
    t = p.dtype.type
    m *= t(beta1)
    m += t(1 - beta1) * g
    v *= t(beta2)
    v += t(1 - beta2) * (g * g)
    p -= t(step_size) * m / (np.sqrt(v) + t(eps_hat))


# Vectorization. The loop runs over slices indexed from 0 (no negative-index wraparound to
# check) under error_model="numpy" (a division raises no ZeroDivisionError, so the loop body has
# no branch): LLVM then emits packed sqrt and division. Indexed from ``lo`` under the default
# error model the loop stayed scalar, 10x slower (2.4-3.9 against 0.3 ns per element, measured
# on the 2-core machine, one thread); the packed sqrt and division round as the scalar ones do.
@njit(nogil=True, cache=True, fastmath={"contract", "arcp"}, error_model="numpy")
def _adam_serial(p, g, m, v, step_size, b1, b2, eps_hat, lo, hi):
    one = p.dtype.type(1)
    ps, gs, ms, vs = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for i in range(hi - lo):
        gi = gs[i]
        mi = b1 * ms[i] + (one - b1) * gi
        vi = b2 * vs[i] + (one - b2) * gi * gi
        ms[i] = mi
        vs[i] = vi
        ps[i] -= step_size * mi / (np.sqrt(vi) + eps_hat)


@njit(nogil=True, cache=True, parallel=True)
def _adam_blocks(p, g, m, v, step_size, b1, b2, eps_hat, block):
    n = p.size
    nblocks = (n + block - 1) // block
    for j in prange(nblocks):  # blocks are disjoint: no shared writes
        _adam_serial(p, g, m, v, step_size, b1, b2, eps_hat, j * block, min(n, (j + 1) * block))


def _scalars(p, step_size, beta1, beta2, eps_hat):
    t = p.dtype.type  # keep float32 arithmetic in float32
    return t(step_size), t(beta1), t(beta2), t(eps_hat)


def _serial(p, g, m, v, step_size, beta1, beta2, eps_hat):
    args = _scalars(p, step_size, beta1, beta2, eps_hat)
    _adam_serial(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *args, 0, p.size)


def adam_update_numba_v1(p, g, m, v, step_size, beta1, beta2, eps_hat):
    """One Adam step in place, Numba, one serial loop over the elements."""
    scalars = _check(_FUNC, p, g, m, v, step_size, beta1, beta2, eps_hat)
    _serial(p, g, m, v, *scalars)


# Below this a parallel region costs more than it saves (2 to 17 us per region on 2 cores).
PARALLEL_THRESHOLD = 1 << 20


def adam_update_numba_v2(p, g, m, v, step_size, beta1, beta2, eps_hat):
    """One Adam step in place, Numba: v1's loop below PARALLEL_THRESHOLD elements, contiguous
    blocks in a prange above."""
    scalars = _check(_FUNC, p, g, m, v, step_size, beta1, beta2, eps_hat)
    if p.size < PARALLEL_THRESHOLD:
        return _serial(p, g, m, v, *scalars)
    args = _scalars(p, *scalars)
    _adam_blocks(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *args, 1 << 14)


# CuPy: one ElementwiseKernel (the least powerful kernel type that does it), built on first use.
# The scalars are cast to the dtype on the host, as the Numba variants do, so float32 stays
# float32; (1 - beta) is formed in float64 and rounded once, as in adam_update_ref.
_CUPY_ADAM = (
    "T g, T step_size, T b1, T omb1, T b2, T omb2, T eps_hat",
    "T p, T m, T v",
    "T mi = b1 * m + omb1 * g; T vi = b2 * v + omb2 * g * g; m = mi; v = vi; "
    "p -= step_size * mi / (sqrt(vi) + eps_hat)",
    "lvm_adam_update_v1",
)


def adam_update_cupy_v1(p, g, m, v, step_size, beta1, beta2, eps_hat):
    """One Adam step in place on the GPU, one ElementwiseKernel pass."""
    func = "adam_update_cupy_v1"
    step_size, beta1, beta2, eps_hat = _check(
        func, p, g, m, v, step_size, beta1, beta2, eps_hat, lib="cupy"
    )
    from . import _cupy

    t = p.dtype.type
    _cupy.elementwise(*_CUPY_ADAM)(
        g, t(step_size), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps_hat), p, m, v
    )


# --------------------------------------------------------------------------------------------
# A whole optimizer's update in one call
# --------------------------------------------------------------------------------------------

_FUNC_GROUP = "adam_update_group"


class AdamGroup:
    """The (p, g, m, v) arrays of one optimizer, checked once; what ``adam_update_group``
    updates.

    Parameters
    ----------
    ps, gs, ms, vs : sequences of arrays, of one length
        Quadruple i: a parameter, its gradient and its two moment buffers, as one
        ``adam_update`` call takes them (float32 or float64, one shape and dtype per
        quadruple; p, m, v writeable, and for NumPy arrays C-contiguous and non-overlapping).
        Dtypes may differ between quadruples.
    names : sequence of str, optional
        A label per quadruple for messages (e.g. the parameter names); its index otherwise.
    lib : {"numpy", "cupy"}
    roles : four str, default ("p", "g", "m", "v")
        What messages call the four arrays: ``"g[W0]"`` names quadruple W0's gradient.
    func : str
        The caller named in messages.

    Notes
    -----
    The group holds the arrays, never copies: updates land in them. An optimizer whose arrays
    change (a parameter replaced, a state loaded) builds a new group; ``holds`` says whether
    the group still holds the given arrays.
    """

    __slots__ = ("quads", "lib", "_numba")

    def __init__(
        self, ps, gs, ms, vs, names=None, lib="numpy", roles=("p", "g", "m", "v"), func="AdamGroup"
    ):
        if lib not in ("numpy", "cupy"):
            raise ValueError(f"{func}: expected lib to be 'numpy' or 'cupy', got {lib!r}.")
        seqs = [list(a) if isinstance(a, (list, tuple)) else None for a in (ps, gs, ms, vs)]
        for name, seq in zip(("ps", "gs", "ms", "vs"), seqs):
            if seq is None:
                raise TypeError(f"{func}: expected {name} to be a list or tuple of arrays.")
        if len({len(seq) for seq in seqs}) != 1:
            raise ValueError(
                f"{func}: expected ps, gs, ms and vs of one length, got "
                f"{[len(seq) for seq in seqs]}. Pass one gradient and two moment buffers per "
                f"parameter."
            )
        if names is not None and not isinstance(names, (list, tuple)):
            raise TypeError(f"{func}: expected names to be a list or tuple of str.")
        labels = [str(i) for i in range(len(seqs[0]))] if names is None else [str(n) for n in names]
        if len(labels) != len(seqs[0]):
            raise ValueError(f"{func}: expected one name per parameter, got {len(labels)}.")
        for label, quad in zip(labels, zip(*seqs)):
            _check_arrays(
                func,
                *quad,
                lib=lib,
                names=tuple(f"{w}[{label}]" for w in roles),
            )
        self.quads = tuple(zip(*seqs))
        self.lib = lib
        self._numba = None  # the flat views the Numba variant reads, built on first use

    def holds(self, ps, gs, ms, vs):
        """Whether the group holds exactly these arrays, in this order (identity)."""
        quads = self.quads
        if not len(ps) == len(gs) == len(ms) == len(vs) == len(quads):
            return False
        return all(
            q[0] is p and q[1] is g and q[2] is m and q[3] is v
            for q, p, g, m, v in zip(quads, ps, gs, ms, vs)
        )

    def _numba_lists(self):
        """Per dtype, typed lists of the flat views of the small quadruples; the others (above
        PARALLEL_THRESHOLD, or with a strided g, which each update copies as adam_update
        does)."""
        if self._numba is None:
            from numba import typed

            small, rest = {}, []
            for quad in self.quads:
                if quad[0].size >= PARALLEL_THRESHOLD or not quad[1].flags.c_contiguous:
                    rest.append(quad)
                    continue
                flat = tuple(a.reshape(-1) for a in quad)  # views: all C-contiguous
                lists = small.setdefault(flat[0].dtype, tuple(typed.List() for _ in range(4)))
                for lst, a in zip(lists, flat):
                    lst.append(a)
            self._numba = (small, tuple(rest))
        return self._numba


def _check_group(func, group, lib="numpy"):
    if not isinstance(group, AdamGroup):
        raise TypeError(
            f"{func}: expected group to be a kernels.adam_update.AdamGroup, got "
            f"{type(group).__name__}. Build one with AdamGroup(ps, gs, ms, vs)."
        )
    if group.lib != lib:
        raise TypeError(
            f"{func}: expected a group of {lib} arrays, got one of {group.lib} arrays. Build "
            f"the group with lib={lib!r} or call the {group.lib} backend."
        )


def adam_update_group_ref(group, step_size, beta1, beta2, eps_hat):
    """Every quadruple of ``group`` updated in place by ``adam_update_ref`` (the oracle)."""
    _check_group(_FUNC_GROUP, group)
    scalars = _check_scalars(_FUNC_GROUP, step_size, beta1, beta2, eps_hat)
    for p, g, m, v in group.quads:
        adam_update_ref(p, g, m, v, *scalars)


@njit(nogil=True, cache=True, fastmath={"contract", "arcp"}, error_model="numpy")
def _adam_lists(ps, gs, ms, vs, step_size, b1, b2, eps_hat):
    for i in range(len(ps)):
        p = ps[i]
        _adam_serial(p, gs[i], ms[i], vs[i], step_size, b1, b2, eps_hat, 0, p.size)


def adam_update_group_numba_v1(group, step_size, beta1, beta2, eps_hat):
    """Every quadruple of ``group`` updated in place: one Numba call for all the arrays below
    PARALLEL_THRESHOLD (per dtype), v2's parallel blocks for each larger one; bit for bit
    ``adam_update_numba_v2`` on each quadruple."""
    _check_group(_FUNC_GROUP, group)
    scalars = _check_scalars(_FUNC_GROUP, step_size, beta1, beta2, eps_hat)
    small, rest = group._numba_lists()
    for dtype, lists in small.items():
        t = dtype.type
        _adam_lists(*lists, *(t(x) for x in scalars))
    for p, g, m, v in rest:
        if p.size < PARALLEL_THRESHOLD:
            _serial(p, g, m, v, *scalars)
        else:
            _adam_blocks(
                p.reshape(-1),
                g.reshape(-1),
                m.reshape(-1),
                v.reshape(-1),
                *_scalars(p, *scalars),
                1 << 14,
            )


def adam_update_group_cupy_v1(group, step_size, beta1, beta2, eps_hat):
    """Every quadruple of a group of CuPy arrays updated in place by ``adam_update_cupy_v1``."""
    _check_group("adam_update_group_cupy_v1", group, lib="cupy")
    scalars = _check_scalars("adam_update_group_cupy_v1", step_size, beta1, beta2, eps_hat)
    for p, g, m, v in group.quads:
        adam_update_cupy_v1(p, g, m, v, *scalars)


# DEFAULT numba_v2: on the IWAE-paper model (12 arrays, 0.42 M parameters, float32) one Adam
# step takes about 0.25 ms against about 1.8 ms for the eight-pass NumPy update (2 threads);
# 0.56 against 1.95 ms on a loaded day (2026-12-03, one thread), the loop at 0.3 ns per element
# on arrays in cache (vectorized: see _adam_serial).
RECORDS = (
    KernelRecord(_FUNC, "numpy", "ref", adam_update_ref, "reference"),
    KernelRecord(_FUNC, "numba", "numba_v1", adam_update_numba_v1, "alternative"),
    KernelRecord(_FUNC, "numba", "numba_v2", adam_update_numba_v2, "default"),
    KernelRecord(_FUNC, "cupy", "cupy_v1", adam_update_cupy_v1, "default"),
    KernelRecord(_FUNC_GROUP, "numpy", "ref", adam_update_group_ref, "reference"),
    KernelRecord(_FUNC_GROUP, "numba", "numba_v1", adam_update_group_numba_v1, "default"),
    KernelRecord(_FUNC_GROUP, "cupy", "cupy_v1", adam_update_group_cupy_v1, "default"),
)
VARIANTS = variants(RECORDS, _FUNC)
IMPLEMENTATIONS = implementations(RECORDS, _FUNC)
DEFAULT = default_variant(RECORDS, _FUNC)
GROUP_VARIANTS = variants(RECORDS, _FUNC_GROUP)
