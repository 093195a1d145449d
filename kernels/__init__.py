"""Hot-path kernels: one module per op, each a NumPy reference, a Numba kernel and a CuPy kernel.

``get(op, backend)`` returns the implementation of ``op`` for a backend name. Only
``lvmcore.backend`` imports this package.
"""

import importlib

# op name -> module holding VARIANTS (a dict backend name -> callable)
_MODULES = {}


def register(op, module):
    _MODULES[op] = module


# A kernel's companion entry points live in the same module under their own tables.
_TABLES = {"_backward": "BACKWARD_IMPLEMENTATIONS", "_max": "MAX_IMPLEMENTATIONS"}


# The noise fills of kernels.philox: (seed, stream, n, dtype, offset=0, *, out=None) -> (n,).
_PHILOX = {
    "philox_uniform": "UNIFORM_IMPLEMENTATIONS",
    "philox_normal": "NORMAL_IMPLEMENTATIONS",
    "philox_gumbel": "GUMBEL_IMPLEMENTATIONS",
}


def get(op, backend):
    """The implementation of ``op`` for ``backend``; ``<op>_backward`` (and ``gumbel_max``)
    come from the module's BACKWARD_IMPLEMENTATIONS (MAX_IMPLEMENTATIONS) table, and
    ``philox_uniform``, ``philox_normal``, ``philox_gumbel`` are the noise fills."""
    base, table = op, "IMPLEMENTATIONS"
    for suffix, name in _TABLES.items():
        if op.endswith(suffix) and op[: -len(suffix)] in _MODULES:
            base, table = op[: -len(suffix)], name
    if op == "gumbel_max":
        base, table = "gumbel_softmax", "MAX_IMPLEMENTATIONS"
    if op in _PHILOX:
        module = importlib.import_module("kernels.philox")
        table = _PHILOX[op]
    elif base in _MODULES:
        module = importlib.import_module(_MODULES[base])
    else:
        raise NotImplementedError(
            f"kernels.get: no kernel named {op!r}; known: {sorted([*_MODULES, *_PHILOX])}"
        )
    impls = getattr(module, table)
    if backend not in impls:
        raise NotImplementedError(
            f"kernels.get: kernel {op!r} has no {backend!r} implementation; has {sorted(impls)}"
        )
    return impls[backend]


register("nearest_code", "kernels.nearest_code")
register("bernoulli_loglik", "kernels.bernoulli_loglik")
register("importance_weights", "kernels.importance_weights")
register("adam_update", "kernels.adam_update")
register("reparam_sample", "kernels.reparam_sample")
register("gumbel_softmax", "kernels.gumbel_softmax")
