"""Optimizers that update parameter arrays in place from matching gradient dicts.

Both take ``params`` and ``grads`` as dicts with the same keys (a model's
``parameters()`` and ``gradients()``): the arrays are updated in place, so the model
sees the new values without copying. Their state is a flat dict of arrays
(``state_dict``/``load_state_dict``) so checkpoints can hold it without pickling.
"""

import math

from ._validation import check_param, get_xp
from .backend import get_backend


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping. Non-finite norms are returned unscaled so the
    caller can detect divergence rather than silently zeroing gradients.
    """
    max_norm = check_param(max_norm, "max_norm", "clip_grad_norm", low=0)
    total = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values()))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


class Optimizer:
    def __init__(self, params, grads, lr, clip_norm=None):
        if set(params) != set(grads):
            raise ValueError(
                f"{type(self).__name__}: expected params and grads with the same "
                f"keys, got {sorted(set(params) ^ set(grads))} in only one."
            )
        self.params, self.grads = params, grads
        self.lr = check_param(lr, "lr", type(self).__name__, low=0)
        self.clip_norm = (
            None
            if clip_norm is None
            else check_param(clip_norm, "clip_norm", type(self).__name__, low=0)
        )
        self.t = 0

    def step(self):
        """Apply one update; returns the gradient norm when clipping is on, else None."""
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
        self.t = int(state["t"])
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
    """

    def __init__(
        self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, clip_norm=None, backend=None
    ):
        super().__init__(params, grads, lr, clip_norm)
        self.backend = backend
        self.beta1 = check_param(
            betas[0], "betas[0]", "Adam", low=0, low_inclusive=True, high=1, high_inclusive=False
        )
        self.beta2 = check_param(
            betas[1], "betas[1]", "Adam", low=0, low_inclusive=True, high=1, high_inclusive=False
        )
        self.eps = check_param(eps, "eps", "Adam", low=0)
        self.m = {k: get_xp(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: get_xp(p).zeros_like(p) for k, p in params.items()}

    def _buffers(self):
        return {"m": self.m, "v": self.v}

    def step(self):
        norm = clip_grad_norm(self.grads, self.clip_norm) if self.clip_norm else None
        self.t += 1
        # bias corrections folded into the step size and epsilon:
        # lr m_hat / (sqrt(v_hat) + eps) == step_size m / (sqrt(v) + eps_hat)
        step_size = self.lr * math.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        eps_hat = self.eps * math.sqrt(1 - self.beta2**self.t)
        update = get_backend(*self.params.values(), backend=self.backend).kernel("adam_update")
        for k, p in self.params.items():
            update(
                p, self.grads[k], self.m[k], self.v[k], step_size, self.beta1, self.beta2, eps_hat
            )
        return norm
