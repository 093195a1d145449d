"""Hot-path kernels: one module per op, each a NumPy reference, a Numba kernel and a CuPy kernel.

``get(op, backend)`` returns the implementation of ``op`` for a backend name. Only
``lvmcore.backend`` imports this package.
"""
import importlib

# op name -> module holding VARIANTS (a dict backend name -> callable)
_MODULES = {}


def register(op, module):
    _MODULES[op] = module


def get(op, backend):
    if op not in _MODULES:
        raise NotImplementedError(f"kernels.get: no kernel named {op!r}; known: {sorted(_MODULES)}")
    module = importlib.import_module(_MODULES[op])
    impls = module.IMPLEMENTATIONS
    if backend not in impls:
        raise NotImplementedError(
            f"kernels.get: kernel {op!r} has no {backend!r} implementation; has {sorted(impls)}")
    return impls[backend]


register("adam_update", "kernels.adam_update")
register("nearest_code", "kernels.nearest_code")
