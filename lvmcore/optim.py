"""Optimizers that update parameter arrays in place from matching gradient dicts.

Both take ``params`` and ``grads`` as dicts with the same keys (a model's
``parameters()`` and ``gradients()``): the arrays are updated in place, so the model
sees the new values without copying. Their state is a flat dict of arrays
(``state_dict``/``load_state_dict``) so checkpoints can hold it without pickling.
"""

import math
from collections.abc import Mapping

from ._validation import check_array, check_param, check_same_device, get_xp
from .backend import get_backend
from .exceptions import InvalidParameterError


def _check_grads_mapping(grads, func, name="grads"):
    if not isinstance(grads, Mapping):
        raise TypeError(
            f"{func}: expected {name} to be a dict of name -> array (e.g. "
            f"model.gradients()), got {type(grads).__name__}."
        )
    for k, g in grads.items():
        check_array(g, f"{name}[{k!r}]", func, finite=False)
    return grads


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping. Non-finite norms are returned unscaled so the
    caller can detect divergence rather than silently zeroing gradients.

    Parameters
    ----------
    grads : dict of str -> ndarray
        float32 or float64 arrays, scaled in place.
    max_norm : float in (0, inf)
    """
    f = "clip_grad_norm"
    _check_grads_mapping(grads, f)
    max_norm = check_param(max_norm, "max_norm", f, low=0)
    total = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values()))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


class Optimizer:
    """Base of the optimizers: the parameter and gradient dicts, the step count, the state.

    Construction checks what the in-place update relies on: ``params`` and ``grads`` are
    dicts with the same keys; every parameter is a writeable, C-contiguous float32 or
    float64 array (an update of a strided view or of an integer array would go to a copy,
    and the parameter would silently stay unchanged); every gradient has its parameter's
    shape, dtype and array library. ``step`` repeats the cheap part of that check (shapes,
    dtypes and the gradient arrays present), so a gradient replaced by one of another shape
    is an error, never an out-of-bounds read or a silently broadcast update.
    """

    def __init__(self, params, grads, lr, clip_norm=None):
        name = type(self).__name__
        for arg, d in (("params", params), ("grads", grads)):
            if not isinstance(d, Mapping):
                raise TypeError(
                    f"{name}: expected {arg} to be a dict of name -> array (e.g. "
                    f"model.parameters() and model.gradients()), got {type(d).__name__}."
                )
        if set(params) != set(grads):
            raise ValueError(
                f"{name}: expected params and grads with the same "
                f"keys, got {sorted(set(params) ^ set(grads))} in only one."
            )
        if not params:
            raise ValueError(f"{name}: expected at least one parameter, got an empty params.")
        for k, p in params.items():
            pn = f"params[{k!r}]"
            check_array(p, pn, name, finite=False)
            # CuPy arrays have no writeable flag: device memory is always writeable
            writeable = getattr(p.flags, "writeable", True)
            if not p.flags.c_contiguous or not writeable:
                what = "a read-only" if not writeable else "a strided"
                raise ValueError(
                    f"{name}: expected {pn} to be a writeable C-contiguous array (it is "
                    f"updated in place), got {what} array of shape {tuple(p.shape)}. Keep the "
                    f"parameter in its own contiguous array (numpy.ascontiguousarray) and hand "
                    f"that to the model."
                )
        arrays = list(params.values()) + list(grads.values())
        check_same_device(
            arrays, [f"params[{k!r}]" for k in params] + [f"grads[{k!r}]" for k in grads], name
        )
        self.params, self.grads = params, grads
        self._check_grads(name)
        self.lr = check_param(lr, "lr", name, low=0)
        self.clip_norm = (
            None if clip_norm is None else check_param(clip_norm, "clip_norm", name, low=0)
        )
        self.t = 0

    def _check_grads(self, func):
        """Every gradient present, an array of its parameter's shape and dtype: O(#params)."""
        grads = self.grads
        for k, p in self.params.items():
            g = grads.get(k) if isinstance(grads, Mapping) else None
            if g is None:
                raise ValueError(f"{func}: expected a gradient for parameter {k!r}, got none.")
            if getattr(g, "shape", None) != p.shape or getattr(g, "dtype", None) != p.dtype:
                gn = f"grads[{k!r}]"
                check_array(g, gn, func, finite=False)
                raise ValueError(
                    f"{func}: expected {gn} to have its parameter's shape {tuple(p.shape)} and "
                    f"dtype {p.dtype} (those of params[{k!r}]), got shape {tuple(g.shape)} and "
                    f"dtype {g.dtype}. Accumulate into model.gradients(); never replace its "
                    f"arrays."
                )

    def step(self):
        """Apply one update; returns the gradient norm when clipping is on, else None."""
        self._check_grads(f"{type(self).__name__}.step")
        norm = clip_grad_norm(self.grads, self.clip_norm) if self.clip_norm else None
        self.t += 1
        for k, p in self.params.items():
            self._update(k, p, self.grads[k])
        return norm

    def state_dict(self):
        state = {"t": get_xp(*self.params.values()).asarray(self.t)}
        for name, buf in self._buffers().items():
            for k, v in buf.items():
                state[f"{name}.{k}"] = v
        return state

    def load_state_dict(self, state):
        """Load a ``state_dict()``: the step count ``t`` and every buffer, same keys and shapes.

        Raises ValueError for a missing, unknown or mis-shaped entry, a negative step count
        or non-finite values, TypeError for entries that are not real arrays.
        """
        f = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{f}: expected state to be a dict, got {type(state).__name__}.")
        want = {"t"} | {f"{n}.{k}" for n, buf in self._buffers().items() for k in buf}
        missing, extra = sorted(want - set(state)), sorted(set(state) - want)
        if missing or extra:
            raise ValueError(
                f"{f}: expected state with the keys of this optimizer's state_dict(), got "
                f"{len(missing)} missing ({missing[:4]}) and {len(extra)} unknown "
                f"({extra[:4]}). Load the state of an optimizer of the same kind over the "
                f"same parameters."
            )
        t = state["t"]
        t_arr = t if hasattr(t, "dtype") else None
        ok = (t_arr is not None and t_arr.shape == () and t_arr.dtype.kind in "iu") or (
            isinstance(t, int) and not isinstance(t, bool)
        )
        if not ok or int(t) < 0:
            raise ValueError(
                f"{f}: expected state['t'] to be a non-negative integer step count, got {t!r}."
            )
        for name, buf in self._buffers().items():
            for k, v in buf.items():
                key = f"{name}.{k}"
                a = state[key]
                check_array(a, f"state[{key!r}]", f, shape=tuple(v.shape))
                if a.dtype != v.dtype:
                    raise TypeError(
                        f"{f}: expected state[{key!r}] to have dtype {v.dtype} (its "
                        f"parameter's), got {a.dtype}."
                    )
        self.t = int(t)
        for name, buf in self._buffers().items():
            for k, v in buf.items():
                v[...] = get_xp(v).asarray(state[f"{name}.{k}"])  # host state onto the device


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum.

    :math:`v \\leftarrow \\mu v + g`, :math:`p \\leftarrow p - \\eta v`
    (PyTorch's convention); Nesterov uses :math:`g + \\mu v` as the step.
    """

    def __init__(self, params, grads, lr=0.01, momentum=0.0, nesterov=False, clip_norm=None):
        super().__init__(params, grads, lr, clip_norm)
        self.momentum = check_param(
            momentum, "momentum", "SGD", low=0, low_inclusive=True, high=1, high_inclusive=False
        )
        self.nesterov = bool(nesterov)
        self.velocity = {k: get_xp(p).zeros_like(p) for k, p in params.items()}

    def _buffers(self):
        return {"velocity": self.velocity}

    def _update(self, k, p, g):
        if self.momentum == 0:
            p -= p.dtype.type(self.lr) * g
            return
        v = self.velocity[k]
        v *= v.dtype.type(self.momentum)
        v += g
        step = g + v.dtype.type(self.momentum) * v if self.nesterov else v
        p -= p.dtype.type(self.lr) * step


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015, Algorithm 1) with a configurable epsilon.

    :math:`m \\leftarrow \\beta_1 m + (1-\\beta_1) g`,
    :math:`v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2`,
    :math:`p \\leftarrow p - \\eta\\,\\hat m / (\\sqrt{\\hat v} + \\epsilon)` with bias-corrected
    :math:`\\hat m, \\hat v`. The IWAE paper uses epsilon = 1e-4.

    A step updates every parameter in one kernel call (``adam_update_group`` over a
    ``kernels.adam_update.AdamGroup`` of every (p, g, m, v), checked when built): bit for bit
    one ``adam_update`` per parameter, without a dozen calls' checks and dispatch.
    """

    def __init__(
        self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, clip_norm=None, backend=None
    ):
        super().__init__(params, grads, lr, clip_norm)
        self.backend = backend
        try:
            pair = tuple(betas)
        except TypeError:
            pair = ()
        if len(pair) != 2:
            raise InvalidParameterError(
                f"The 'betas' parameter of Adam must be a pair (beta1, beta2) of floats in "
                f"[0, 1). Got {betas!r} instead."
            )
        self.beta1 = check_param(
            pair[0], "betas[0]", "Adam", low=0, low_inclusive=True, high=1, high_inclusive=False
        )
        self.beta2 = check_param(
            pair[1], "betas[1]", "Adam", low=0, low_inclusive=True, high=1, high_inclusive=False
        )
        self.eps = check_param(eps, "eps", "Adam", low=0)
        self.m = {k: get_xp(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: get_xp(p).zeros_like(p) for k, p in params.items()}
        self._adam_group = None  # built at the first step (see _group)

    def _buffers(self):
        return {"m": self.m, "v": self.v}

    def _group(self, be):
        """Every (p, g, m, v) as one ``kernels.adam_update.AdamGroup``, checked when built and
        rebuilt whenever an array was replaced (a loaded state, a swapped gradient)."""
        from kernels.adam_update import AdamGroup

        keys = list(self.params)
        arrays = [[d[k] for k in keys] for d in (self.params, self.grads, self.m, self.v)]
        group = self._adam_group
        lib = "cupy" if be.device == "cuda" else "numpy"
        if group is None or group.lib != lib or not group.holds(*arrays):
            group = AdamGroup(
                *arrays,
                names=[repr(k) for k in keys],
                lib=lib,
                roles=("params", "grads", "m", "v"),
                func="Adam.step",
            )
            self._adam_group = group
        return group

    def step(self):
        """Apply the fused update to every parameter; returns the gradient norm when clipping."""
        self._check_grads("Adam.step")
        norm = clip_grad_norm(self.grads, self.clip_norm) if self.clip_norm else None
        self.t += 1
        # bias corrections folded into the step size and epsilon:
        # lr m_hat / (sqrt(v_hat) + eps) == step_size m / (sqrt(v) + eps_hat)
        step_size = self.lr * math.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        eps_hat = self.eps * math.sqrt(1 - self.beta2**self.t)
        be = get_backend(*self.params.values(), backend=self.backend)
        be.kernel("adam_update_group")(self._group(be), step_size, self.beta1, self.beta2, eps_hat)
        return norm
