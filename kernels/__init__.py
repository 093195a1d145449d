"""Hot-path kernels: one module per op, each a NumPy reference, a Numba kernel and a CuPy kernel.

``kernels`` is the lower package: it imports nothing from ``lvmcore`` (which calls it through
``lvmcore.backend``). Importing it is cheap: a kernel module, and Numba with it, is imported on
first use.

The registry
------------
Every variant of every kernel is one ``KernelRecord(op, backend, variant, func, status)``,
declared in its module's ``RECORDS`` tuple. ``get(op, backend)`` returns the function the
backend ("numpy", "numba" or "cupy") runs; ``records(op)`` lists every variant, including
alternatives that no backend dispatches to (benchmarks and tests iterate over them). Every
function the registry holds checks its arguments before any Numba loop or CUDA launch.

Shared numerics live in one place each: ``philox`` (the counter-based generator, its fills
and the vectorized in-kernel noise), ``fastmath`` (vectorizable exp/log), ``_checks`` (argument
checks and error wording), ``_cupy`` (CuPy plumbing). Op modules import from these, never from
each other.
"""

import importlib

from ._checks import BackendUnavailableError, InvalidParameterError, cupy_status
from ._registry import STATUSES, KernelRecord

__all__ = [
    "get",
    "records",
    "OPS",
    "BACKENDS",
    "KernelRecord",
    "STATUSES",
    "InvalidParameterError",
    "BackendUnavailableError",
    "cupy_status",
]

BACKENDS = ("numpy", "numba", "cupy")

# op -> the module (under kernels/) that declares its records
OPS = {
    "adam_update": "adam_update",
    "adam_update_group": "adam_update",
    "bias_act": "bias_act",
    "bias_act_backward": "bias_act",
    "bernoulli_loglik": "bernoulli_loglik",
    "bernoulli_loglik_backward": "bernoulli_loglik",
    "iaf_gate": "iaf_gate",
    "iaf_gate_backward": "iaf_gate",
    "importance_weights": "importance_weights",
    "mixture_logprob": "mixture_logprob",
    "mixture_logprob_backward": "mixture_logprob",
    "reparam_sample": "reparam_sample",
    "reparam_sample_backward": "reparam_sample",
    "gumbel_softmax": "gumbel_softmax",
    "gumbel_softmax_backward": "gumbel_softmax",
    "gumbel_max": "gumbel_softmax",
    "nearest_code": "nearest_code",
    "philox_uniform": "philox",
    "philox_normal": "philox",
    "philox_gumbel": "philox",
}


def _module(op):
    if op not in OPS:
        raise NotImplementedError(f"kernels.get: no kernel named {op!r}; known: {sorted(OPS)}")
    return importlib.import_module(f"kernels.{OPS[op]}")


def records(op=None):
    """Every ``KernelRecord`` (of ``op`` when given), in declaration order."""
    ops = sorted(OPS) if op is None else [op]
    seen, out = set(), []
    for name in ops:
        module = _module(name)
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        out.extend(r for r in module.RECORDS if op is None or r.op == op)
    return out


# (op, backend) -> the function it runs: the registry is fixed once its module is imported
_CHOSEN = {}


def get(op, backend):
    """The implementation of ``op`` that ``backend`` ("numpy", "numba" or "cupy") runs."""
    func = _CHOSEN.get((op, backend))
    if func is not None:
        return func
    found = [r for r in _module(op).RECORDS if r.op == op and r.status != "alternative"]
    for r in found:
        if r.backend == backend:
            _CHOSEN[op, backend] = r.func
            return r.func
    raise NotImplementedError(
        f"kernels.get: kernel {op!r} has no {backend!r} implementation; has "
        f"{sorted(r.backend for r in found)}"
    )
