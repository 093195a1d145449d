"""Every CUDA source in kernels/cuda compiles with nvcc, without a GPU.

Each ``.cu`` file is compiled to PTX for sm_90 with the options CuPy's RawModule uses (C++17,
``-ftz=true``) and warnings as errors. The files end with explicit instantiations of every
template kernel, so the float and double bodies are really compiled; the test also checks that
those instantiations are exactly the ``name_expressions`` the Python wrappers ask CuPy for, so a
kernel renamed on one side only fails here rather than on the first GPU run. Skipped when nvcc
is not on PATH.
"""

import importlib
import importlib.resources
import re
import shutil
import subprocess

import pytest

NVCC = shutil.which("nvcc")
CUDA_DIR = importlib.resources.files("kernels").joinpath("cuda")
SOURCES = sorted(p.name for p in CUDA_DIR.iterdir() if p.name.endswith(".cu"))
# Source file -> the kernel module whose _CUPY_NAMES are looked up in it.
MODULES = {
    "bernoulli_loglik.cu": "kernels.bernoulli_loglik",
    "gumbel_softmax.cu": "kernels.gumbel_softmax",
    "iaf_gate.cu": "kernels.iaf_gate",
    "importance_weights.cu": "kernels.importance_weights",
    "mixture_logprob.cu": "kernels.mixture_logprob",
    "nearest_code.cu": "kernels.nearest_code",
    "philox.cu": "kernels.philox",
    "reparam_sample.cu": "kernels.reparam_sample",
}

needs_nvcc = pytest.mark.skipif(
    NVCC is None,
    reason="nvcc not found on PATH (install the CUDA toolkit to compile-check the kernels)",
)


def _mangle(expr):
    """Itanium mangling of ``lvm_name<T>`` / ``lvm_name<T, bool>`` up to the parameter list:
    ``_Z<len>lvm_name<I>...<E>`` (what nvcc names the .entry)."""
    name, args = re.fullmatch(r"(\w+)<(.*)>", expr).groups()
    code = {"float": "f", "double": "d", "true": "Lb1E", "false": "Lb0E"}
    return f"_Z{len(name)}{name}I" + "".join(code[a.strip()] for a in args.split(",")) + "E"


def test_every_source_is_registered():
    assert SOURCES, "no kernels/cuda/*.cu found (package data missing?)"
    assert set(SOURCES) == set(MODULES)


def test_sources_need_no_standard_headers():
    # NVRTC (CuPy's RawModule) has no C++ standard library headers; only the folder's own
    # quoted includes, which kernels._cupy inlines, are allowed.
    for path in CUDA_DIR.iterdir():
        if path.name.endswith((".cu", ".cuh")):
            text = path.read_text()
            assert not re.search(r"^\s*#\s*include\s*<", text, re.M), path.name
            for header in re.findall(r'^\s*#\s*include\s*"([^"]+)"', text, re.M):
                assert CUDA_DIR.joinpath(header).is_file(), (path.name, header)


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_with_nvcc(source, tmp_path):
    src = CUDA_DIR.joinpath(source)
    ptx = tmp_path / (source[:-3] + ".ptx")
    cmd = [
        NVCC,
        "-std=c++17",
        "-arch=sm_90",
        "-ftz=true",
        "--ptx",
        "-Werror",
        "all-warnings",
        "-o",
        str(ptx),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx.read_text()))
    names = importlib.import_module(MODULES[source])._CUPY_NAMES
    wanted = {_mangle(n) for n in names}
    found = {w for w in wanted if any(e.startswith(w) for e in entries)}
    assert found == wanted, f"instantiations missing from {source}: {sorted(wanted - found)}"
    assert len(entries) == len(names), (
        f"{source} instantiates kernels no wrapper uses: {sorted(entries)}"
    )
