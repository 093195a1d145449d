"""A stand-in for CuPy that runs lvmcore's CUDA kernels on the CPU, for tests without a GPU.

Arrays are NumPy arrays (``ndarray`` is ``numpy.ndarray``; everything not defined here is
NumPy's). ``RawModule`` compiles the kernel source with the host C++ compiler against
``cuda_emu.h`` (each CUDA thread a std::thread, see there) and launches the instantiations named
in ``name_expressions``; a launch checks every argument against the kernel's parameter types
(array dtype for a pointer, exact scalar type otherwise), so a wrapper that passes a Python int
or the wrong dtype fails here as it would misbehave on a GPU. ``ElementwiseKernel`` compiles its
operation into a C++ loop over the broadcast arguments. ``memoize`` caches by arguments;
``cuda.Device().attributes`` reports one multiprocessor, so grids stay small and the kernels'
grid-stride loops are exercised.

What this does not check: device memory bounds, races between threads that a barrier would not
have ordered, CUDA's own math library (glibc's logf, sincosf, ... are used instead), and CuPy
itself.
"""
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
CXXFLAGS = ["-std=c++20", "-O1", "-pthread", "-fPIC", "-shared", "-ffp-contract=off",
            "-Wno-unknown-pragmas", "-Wno-attributes"]
_CACHE = os.path.join(tempfile.gettempdir(), f"lvmcore-cuda-emu-{os.getuid()}")

_SCALAR_CODES = {"f4": np.float32, "f8": np.float64, "i4": np.int32, "i8": np.int64,
                 "u4": np.uint32, "u8": np.uint64, "b1": np.bool_}


def available():
    """(ok, reason): whether a C++20 compiler with <barrier> is usable."""
    if CXX is None:
        return False, "no C++ compiler (g++) on PATH"
    try:
        _compile('#include "cuda_emu.h"\nextern "C" int lvm_emu_probe() { return 1; }\n')
    except RuntimeError as exc:
        return False, f"the C++ compiler cannot build the CUDA emulator: {exc}"
    return True, "available"


def _compile(code):
    """Shared library of ``code`` (cached by content); returns a ctypes.CDLL."""
    key = hashlib.sha256((" ".join(CXXFLAGS) + "\n" + code).encode()).hexdigest()[:24]
    os.makedirs(_CACHE, exist_ok=True)
    lib = os.path.join(_CACHE, f"{key}.so")
    if not os.path.exists(lib):
        src = os.path.join(_CACHE, f"{key}.cpp")
        with open(src, "w") as f:
            f.write(code)
        tmp = f"{lib}.{os.getpid()}.tmp"
        proc = subprocess.run([CXX, *CXXFLAGS, f"-I{HERE}", src, "-o", tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{CXX} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(lib)


# --------------------------------------------------------------------------------------------
# RawModule
# --------------------------------------------------------------------------------------------

class RawModule:
    def __init__(self, code=None, options=(), name_expressions=None, **kwargs):
        if code is None:
            raise NotImplementedError("fake cupy: RawModule(path=...) is not supported")
        self.code = code
        self.options = tuple(options)
        self.name_expressions = list(name_expressions or ())
        self._lib = None

    def _build(self):
        if self._lib is None:
            parts = ['#include "cuda_emu.h"\n#include <string>\n', self.code, "\n"]
            for i, expr in enumerate(self.name_expressions):
                parts.append(
                    f'extern "C" int lvm_emu_launch_{i}(unsigned gx, unsigned gy, unsigned gz, '
                    f"unsigned bx, unsigned by, unsigned bz, void** argv) {{ return "
                    f"emu::launch(&{expr}, dim3(gx, gy, gz), dim3(bx, by, bz), argv); }}\n"
                    f'extern "C" const char* lvm_emu_sig_{i}() {{ static std::string s = '
                    f"emu::signature(&{expr}); return s.c_str(); }}\n")
            self._lib = _compile("".join(parts))
        return self._lib

    def get_function(self, name):
        if name not in self.name_expressions:
            raise KeyError(f"fake cupy: {name!r} is not in name_expressions "
                           f"{self.name_expressions}")
        i = self.name_expressions.index(name)
        lib = self._build()
        launch = getattr(lib, f"lvm_emu_launch_{i}")
        launch.restype = ctypes.c_int
        launch.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p]
        sig = getattr(lib, f"lvm_emu_sig_{i}")
        sig.restype = ctypes.c_char_p
        codes = sig().decode().rstrip(",").split(",")
        return _Function(name, launch, [c for c in codes if c])


def _dim3(v, what):
    v = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(v) <= 3 or not all(isinstance(x, (int, np.integer)) and x >= 1 for x in v):
        raise ValueError(f"fake cupy: bad {what} {v!r}")
    return tuple(int(x) for x in v) + (1,) * (3 - len(v))


class _Function:
    def __init__(self, name, launch, codes):
        self.name = name
        self._launch = launch
        self._codes = codes

    def __call__(self, grid, block, args, shared_mem=0, **kwargs):
        args = tuple(args)
        if len(args) != len(self._codes):
            raise TypeError(f"fake cupy: {self.name} takes {len(self._codes)} arguments, got "
                            f"{len(args)}")
        keep, ptrs = [], []
        for i, (a, code) in enumerate(zip(args, self._codes)):
            if code.startswith("p"):
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"fake cupy: {self.name} argument {i} must be an array "
                                    f"(parameter {code}), got {type(a).__name__}")
                want = np.dtype(_SCALAR_CODES[code[1:]])
                if a.dtype != want:
                    raise TypeError(f"fake cupy: {self.name} argument {i} must have dtype "
                                    f"{want}, got {a.dtype}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"fake cupy: {self.name} argument {i} is not contiguous")
                holder = ctypes.c_void_p(a.ctypes.data)
                keep.append(holder)
                ptrs.append(ctypes.addressof(holder))
            else:
                want = np.dtype(_SCALAR_CODES[code])
                if not isinstance(a, np.generic) or a.dtype != want:
                    raise TypeError(f"fake cupy: {self.name} argument {i} must be a NumPy "
                                    f"scalar of dtype {want}, got {type(a).__name__} {a!r}")
                holder = np.array(a)
                keep.append(holder)
                ptrs.append(holder.ctypes.data)
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        rc = self._launch(*_dim3(grid, "grid"), *_dim3(block, "block"), argv)
        if rc != 0:
            raise ValueError(f"fake cupy: {self.name}: block size must be a multiple of 32, got "
                             f"{block}")


# --------------------------------------------------------------------------------------------
# ElementwiseKernel
# --------------------------------------------------------------------------------------------

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
          np.dtype(np.int32): "int", np.dtype(np.int64): "long long",
          np.dtype(np.bool_): "bool"}


def _params(spec):
    out = []
    for p in filter(None, (s.strip() for s in spec.split(","))):
        *typ, name = p.split()
        if typ[:1] == ["raw"]:
            raise NotImplementedError("fake cupy: raw parameters are not supported")
        out.append((" ".join(typ), name))
    return out


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", **kwargs):
        self.inp = _params(in_params)
        self.outp = _params(out_params)
        self.operation = operation
        self.name = name

    def __call__(self, *args, size=None):
        n_in, n_out = len(self.inp), len(self.outp)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"fake cupy: {self.name} takes {n_in} or {n_in + n_out} arguments")
        types_ = {}
        for (typ, name), a in zip(self.inp + self.outp, args):
            if isinstance(a, np.ndarray) and len(typ) == 1:   # a type placeholder
                if typ in types_ and types_[typ] != a.dtype:
                    raise TypeError(f"fake cupy: {self.name}: {typ} is both {types_[typ]} and "
                                    f"{a.dtype}")
                types_.setdefault(typ, a.dtype)

        def dtype_of(typ):
            return types_[typ] if len(typ) == 1 else np.dtype(typ)

        arrays = [a for a in args if isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
        n = int(np.prod(shape))
        bufs, decls, outs, writeback = [], [], [], []
        for i, (typ, name) in enumerate(self.inp):
            a, dt = args[i], dtype_of(typ)
            if isinstance(a, np.ndarray):
                bufs.append(np.ascontiguousarray(np.broadcast_to(a, shape).astype(dt, copy=False)))
                decls.append(f"const {_CTYPE[dt]} {name} = ((const {_CTYPE[dt]}*)a[{i}])[i];")
            else:
                bufs.append(np.array(a, dtype=dt))
                decls.append(f"const {_CTYPE[dt]} {name} = *(const {_CTYPE[dt]}*)a[{i}];")
        for j, (typ, name) in enumerate(self.outp):
            dt = dtype_of(typ)
            if len(args) > n_in:
                o = args[n_in + j]
                if o.shape != shape or o.dtype != dt:
                    raise ValueError(f"fake cupy: {self.name}: output {name} must be {dt} of "
                                     f"shape {shape}")
            else:
                o = np.empty(shape, dt)
            work = o if o.flags.c_contiguous else np.ascontiguousarray(o)
            if work is not o:
                writeback.append((o, work))
            bufs.append(work)
            outs.append(o)
            decls.append(f"{_CTYPE[dt]}& {name} = (({_CTYPE[dt]}*)a[{n_in + j}])[i];")
        typedefs = "".join(f"typedef {_CTYPE[dt]} {typ};\n" for typ, dt in types_.items())
        code = ("#include <cmath>\nusing std::sqrt; using std::exp; using std::log; "
                "using std::log1p; using std::fabs;\n" + typedefs +
                'extern "C" void ew(long long n, void** a) {\n'
                "  for (long long i = 0; i < n; ++i) {\n    " + "\n    ".join(decls) +
                "\n    " + self.operation + ";\n  }\n}\n")
        lib = _compile(code)
        lib.ew.restype = None
        lib.ew.argtypes = [ctypes.c_longlong, ctypes.c_void_p]
        argv = (ctypes.c_void_p * len(bufs))(*(b.ctypes.data for b in bufs))
        if n:
            lib.ew(n, argv)
        for o, work in writeback:
            o[...] = work
        return outs[0] if len(outs) == 1 else tuple(outs)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

def memoize(for_each_device=False):
    def deco(f):
        return functools.lru_cache(maxsize=None)(f)
    return deco


class _Device:
    id = 0
    attributes = {"MultiProcessorCount": 1, "MaxGridDimX": 2 ** 31 - 1}

    def synchronize(self):
        pass


def _make_cuda():
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = _Device
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    return cuda


class _FakeCupy(types.ModuleType):
    def __getattr__(self, name):
        return getattr(np, name)


def make():
    """A fresh fake ``cupy`` module object (install it in sys.modules yourself)."""
    m = _FakeCupy("cupy")
    m.__file__ = __file__
    m.ndarray = np.ndarray
    m.RawModule = RawModule
    m.ElementwiseKernel = ElementwiseKernel
    m.memoize = memoize
    m.cuda = _make_cuda()
    m.asnumpy = lambda a, *args, **kw: np.asarray(a)
    m.asarray = np.asarray
    m.is_fake = True
    return m
