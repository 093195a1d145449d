"""The kernel registry and the package boundary: one record per variant, one dispatched
variant per (op, backend), and ``kernels`` standing alone (no ``lvmcore`` import, no op module
importing a sibling op)."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

KERNELS = Path(kernels.__file__).resolve().parent
MODULES = sorted(p.stem for p in KERNELS.glob("*.py") if p.stem != "__init__")
OP_MODULES = sorted(set(kernels.OPS.values()) - {"philox"})


@pytest.mark.parametrize("op", sorted(kernels.OPS))
def test_one_dispatched_variant_per_op_and_backend(op):
    records = kernels.records(op)
    assert records and all(r.op == op and r.status in kernels.STATUSES for r in records)
    for backend in kernels.BACKENDS:
        chosen = [r for r in records if r.backend == backend and r.status != "alternative"]
        assert len(chosen) == 1, (op, backend, chosen)
        assert kernels.get(op, backend) is chosen[0].func
        assert (chosen[0].status == "reference") == (backend == "numpy")
    assert len({r.variant for r in records}) == len(records)


@pytest.mark.parametrize(
    "op", sorted(set(kernels.OPS) - {"philox_uniform", "philox_normal", "philox_gumbel"})
)
def test_variant_names_and_module_docstrings(op):
    module = importlib.import_module(f"kernels.{kernels.OPS[op]}")
    for r in kernels.records(op):
        assert r.func.__name__ == f"{op}_{r.variant}"
        assert r.func.__name__ in module.__doc__, f"{module.__name__} does not list {r.variant}"
    assert "DEFAULT" in module.__doc__


def test_unknown_kernels_and_backends_are_named():
    with pytest.raises(NotImplementedError, match="no kernel named 'fft'"):
        kernels.get("fft", "numba")
    with pytest.raises(NotImplementedError, match="has no 'jax' implementation"):
        kernels.get("nearest_code", "jax")


def test_importing_every_kernel_module_imports_no_lvmcore():
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}:\n"
        "    importlib.import_module('kernels.' + m) if m != '_cupy' else None\n"
        "bad = [m for m in sys.modules if m == 'lvmcore' or m.startswith('lvmcore.')]\n"
        "assert not bad, bad\n"
    )
    root = str(KERNELS.parent)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


@pytest.mark.parametrize("name", MODULES)
def test_no_kernel_file_imports_lvmcore_or_a_sibling_op(name):
    text = (KERNELS / f"{name}.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+lvmcore\b", text, re.M)
    siblings = set(OP_MODULES) - {name}
    for match in re.finditer(r"^\s*from\s+(?:kernels)?\.(\w+)\s+import", text, re.M):
        assert match.group(1) not in siblings, f"{name} imports the op module {match.group(1)}"
