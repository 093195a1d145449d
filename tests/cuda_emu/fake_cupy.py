"""A stand-in for CuPy that runs lvmcore's CUDA kernels on the CPU, for tests without a GPU.

Arrays are device arrays (``ndarray`` below): NumPy arrays behind a wall that only explicit
transfers cross, as CuPy's are, so engine code that mixes host and device arrays or converts
implicitly fails here as it would on a GPU; ``cupy.*`` functions are NumPy's, limited to the
names CuPy 14 has (cupy_names.py); ``cupyx.scatter_add`` is there too. ``RawModule``
compiles the kernel source with the host C++ compiler against ``cuda_emu.h`` (each CUDA thread a
fiber, see there) and launches the instantiations named in ``name_expressions``; a launch
checks every argument against the kernel's parameter types
(array dtype for a pointer, exact scalar type otherwise), so a wrapper that passes a Python int
or the wrong dtype fails here as it would misbehave on a GPU. ``ElementwiseKernel`` compiles its
operation into a C++ loop over the broadcast arguments. ``memoize`` caches by arguments;
``cuda.Device().attributes`` reports one multiprocessor, so grids stay small and the kernels'
grid-stride loops are exercised.

What this does not check: device memory bounds, races between threads that a barrier would not
have ordered, CUDA's own math library (glibc's logf, sincosf, ... are used instead), and CuPy
itself.
"""

import contextlib
import ctypes
import functools
import hashlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import cupy_names

HERE = os.path.dirname(os.path.abspath(__file__))
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
CXXFLAGS = [
    "-std=c++20",
    "-O1",
    "-pthread",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-U_FORTIFY_SOURCE",  # its longjmp check refuses the switches between fiber stacks
    "-Wno-unknown-pragmas",
    "-Wno-attributes",
]
_CACHE = os.path.join(tempfile.gettempdir(), f"lvmcore-cuda-emu-{os.getuid()}")

_SCALAR_CODES = {
    "f4": np.float32,
    "f8": np.float64,
    "i4": np.int32,
    "i8": np.int64,
    "u4": np.uint32,
    "u8": np.uint64,
    "b1": np.bool_,
}


def available():
    """(ok, reason): whether a C++20 compiler that builds the emulator is usable."""
    if CXX is None:
        return False, "no C++ compiler (g++) on PATH"
    try:
        _compile('#include "cuda_emu.h"\nextern "C" int lvm_emu_probe() { return 1; }\n')
    except RuntimeError as exc:
        return False, f"the C++ compiler cannot build the CUDA emulator: {exc}"
    return True, "available"


def _compile(code):
    """Shared library of ``code`` (cached by content); returns a ctypes.CDLL."""
    with open(os.path.join(HERE, "cuda_emu.h"), "rb") as f:  # the emulator is part of the key
        header = f.read()
    key = hashlib.sha256((" ".join(CXXFLAGS) + "\n" + code).encode() + header).hexdigest()[:24]
    os.makedirs(_CACHE, exist_ok=True)
    lib = os.path.join(_CACHE, f"{key}.so")
    if not os.path.exists(lib):
        src = os.path.join(_CACHE, f"{key}.cpp")
        with open(src, "w") as f:
            f.write(code)
        tmp = f"{lib}.{os.getpid()}.tmp"
        proc = subprocess.run(
            [CXX, *CXXFLAGS, f"-I{HERE}", src, "-o", tmp], capture_output=True, text=True
        )
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
                    f"emu::signature(&{expr}); return s.c_str(); }}\n"
                )
            self._lib = _compile("".join(parts))
        return self._lib

    def get_function(self, name):
        if name not in self.name_expressions:
            raise KeyError(
                f"fake cupy: {name!r} is not in name_expressions {self.name_expressions}"
            )
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
            raise TypeError(
                f"fake cupy: {self.name} takes {len(self._codes)} arguments, got {len(args)}"
            )
        keep, ptrs = [], []
        for i, (a, code) in enumerate(zip(args, self._codes)):
            if code.startswith("p"):
                if not isinstance(a, ndarray):
                    raise TypeError(
                        f"fake cupy: {self.name} argument {i} must be a device "
                        f"array (parameter {code}), got {type(a).__name__}"
                    )
                a = a._a
                want = np.dtype(_SCALAR_CODES[code[1:]])
                if a.dtype != want:
                    raise TypeError(
                        f"fake cupy: {self.name} argument {i} must have dtype {want}, got {a.dtype}"
                    )
                if not a.flags.c_contiguous:
                    raise ValueError(f"fake cupy: {self.name} argument {i} is not contiguous")
                holder = ctypes.c_void_p(a.ctypes.data)
                keep.append(holder)
                ptrs.append(ctypes.addressof(holder))
            else:
                want = np.dtype(_SCALAR_CODES[code])
                if not isinstance(a, np.generic) or a.dtype != want:
                    raise TypeError(
                        f"fake cupy: {self.name} argument {i} must be a NumPy "
                        f"scalar of dtype {want}, got {type(a).__name__} {a!r}"
                    )
                holder = np.array(a)
                keep.append(holder)
                ptrs.append(holder.ctypes.data)
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        rc = self._launch(*_dim3(grid, "grid"), *_dim3(block, "block"), argv)
        if rc == 1:
            raise ValueError(
                f"fake cupy: {self.name}: block size must be a multiple of 32, got {block}"
            )
        if rc != 0:
            raise RuntimeError(
                f"fake cupy: {self.name}: the threads of a block wait at barriers that never "
                f"open (__syncthreads/__syncwarp/shuffles called a different number of times)"
            )


# --------------------------------------------------------------------------------------------
# ElementwiseKernel
# --------------------------------------------------------------------------------------------

_CTYPE = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
    np.dtype(np.bool_): "bool",
}


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
        if any(isinstance(a, np.ndarray) for a in args):
            raise TypeError(
                f"fake cupy: {self.name}: a numpy.ndarray was passed to a device "
                f"kernel; move it with cupy.asarray"
            )
        wrapped = [a for a in args if isinstance(a, ndarray)]
        args = tuple(a._a if isinstance(a, ndarray) else a for a in args)
        n_in, n_out = len(self.inp), len(self.outp)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"fake cupy: {self.name} takes {n_in} or {n_in + n_out} arguments")
        types_ = {}
        for (typ, _name), a in zip(self.inp + self.outp, args):
            if isinstance(a, np.ndarray) and len(typ) == 1:  # a type placeholder
                if typ in types_ and types_[typ] != a.dtype:
                    raise TypeError(
                        f"fake cupy: {self.name}: {typ} is both {types_[typ]} and {a.dtype}"
                    )
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
                    raise ValueError(
                        f"fake cupy: {self.name}: output {name} must be {dt} of shape {shape}"
                    )
            else:
                o = np.empty(shape, dt)
            work = o if o.flags.c_contiguous else np.ascontiguousarray(o)
            if work is not o:
                writeback.append((o, work))
            bufs.append(work)
            outs.append(o)
            decls.append(f"{_CTYPE[dt]}& {name} = (({_CTYPE[dt]}*)a[{n_in + j}])[i];")
        typedefs = "".join(f"typedef {_CTYPE[dt]} {typ};\n" for typ, dt in types_.items())
        code = (
            "#include <cmath>\nusing std::sqrt; using std::exp; using std::log; "
            "using std::log1p; using std::fabs;\n"
            + typedefs
            + 'extern "C" void ew(long long n, void** a) {\n'
            "  for (long long i = 0; i < n; ++i) {\n    "
            + "\n    ".join(decls)
            + "\n    "
            + self.operation
            + ";\n  }\n}\n"
        )
        lib = _compile(code)
        lib.ew.restype = None
        lib.ew.argtypes = [ctypes.c_longlong, ctypes.c_void_p]
        argv = (ctypes.c_void_p * len(bufs))(*(b.ctypes.data for b in bufs))
        if n:
            lib.ew(n, argv)
        for o, work in writeback:
            o[...] = work
        outs = [_wrap(o, wrapped) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)


# --------------------------------------------------------------------------------------------
# Device arrays
# --------------------------------------------------------------------------------------------

_IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
    "construct a NumPy array explicitly."
)


class ndarray(NDArrayOperatorsMixin):
    """A "device" array: a NumPy array behind a wall that only explicit transfers cross.

    As with CuPy: ``numpy.asarray(a)`` raises TypeError (``a.get()`` / ``cupy.asnumpy(a)``
    copy to the host); a NumPy array met in an operation, a ``cupy.*`` function or an
    assignment raises TypeError (``cupy.asarray`` copies to the device); NumPy functions called
    on device arrays dispatch to the ``cupy`` ones (``__array_function__``); reductions and
    element indexing give 0-d device arrays; ``float(a)``/``bool(a)`` synchronize and work on
    one-element arrays. Only names CuPy has (cupy_names.py) are offered.
    """

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100

    def __init__(self, a):
        if not isinstance(a, np.ndarray) or isinstance(a, ndarray):
            raise TypeError("fake cupy: construct device arrays with cupy.asarray/empty/...")
        self._a = a

    # -- attributes ---------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T))
    device = property(lambda self: _Device())

    def __getattr__(self, name):
        if name.startswith("_") or name not in cupy_names.NDARRAY:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        def method(*args, **kwargs):
            return _call(attr, args, kwargs, name)

        return method

    def get(self, stream=None, order="C", out=None):
        """Copy to the host (the explicit way)."""
        return np.array(self._a, order=order, copy=True)

    def set(self, arr):
        """Copy a host array into this one (the explicit way)."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, ndarray):
            raise TypeError("fake cupy: ndarray.set takes a numpy.ndarray")
        self._a[...] = arr

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (_wrap(self._a[i]) for i in range(len(self._a)))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return repr(self._a).replace("array(", "cupy.ndarray(", 1)

    # Python scalars synchronize, as in CuPy (one-element arrays only).
    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __index__(self):
        raise TypeError("fake cupy: a device array is not an index; use int(a)")

    def __copy__(self):
        return _wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return _wrap(self._a.copy())

    def __reduce__(self):
        raise TypeError("fake cupy: pickling a device array is a host copy; use .get()")

    # -- indexing -----------------------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, "indexing")])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, "indexing")] = _unwrap(value, "assignment")

    # -- NumPy protocols ----------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc.__name__ not in cupy_names.MODULE:
            return NotImplemented
        return _call(getattr(ufunc, method), inputs, kwargs, ufunc.__name__)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ not in cupy_names.MODULE:
            raise TypeError(
                f"fake cupy: CuPy has no {func.__name__!r} (numpy.{func.__name__} "
                f"called on a cupy.ndarray)"
            )
        return _call(func, args, kwargs, func.__name__)


ndarray.__module__ = "cupy"


def _unwrap(x, where):
    """The NumPy object behind ``x``; host arrays are refused as CuPy refuses them."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(
            f"fake cupy: a numpy.ndarray was passed to a device operation "
            f"({where}); CuPy raises TypeError here. Move it with cupy.asarray."
        )
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return x


def _wrap(x, inputs=()):
    """Device arrays for NumPy results (scalars become 0-d arrays, as CuPy's reductions give);
    a result that is an input's own buffer comes back as that input's device array."""
    if isinstance(x, np.ndarray):
        for w in inputs:
            if x is w._a:
                return w
        return ndarray(x)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x))
    if isinstance(x, (list, tuple)):
        return type(x)(_wrap(v, inputs) for v in x)
    return x


def _inputs(args, kwargs):
    found = []

    def visit(x):
        if isinstance(x, ndarray):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)

    visit(args)
    visit(kwargs)
    return found


def _call(func, args, kwargs, name):
    inputs = _inputs(args, kwargs)
    return _wrap(func(*_unwrap(args, name), **_unwrap(kwargs, name)), inputs)


def _device_function(name, func):
    @functools.wraps(func)
    def call(*args, **kwargs):
        return _call(func, args, kwargs, name)

    return call


class _DeviceUfunc:
    """A NumPy ufunc on device arrays, with the methods CuPy's ufuncs have."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._ufunc, args, kwargs, self.__name__)

    def __getattr__(self, name):
        if name not in (
            "reduce",
            "reduceat",
            "accumulate",
            "at",
            "outer",
            "nin",
            "nout",
            "nargs",
            "types",
        ):
            raise AttributeError(f"fake cupy: ufunc has no attribute {name!r}")
        attr = getattr(self._ufunc, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _call(attr, args, kwargs, f"{self.__name__}.{name}")


def asarray(a, dtype=None, order=None, **kwargs):
    """Device array of ``a``: a host array or list is copied to the device (the explicit way)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0, **kwargs):
    if isinstance(a, ndarray):
        return _wrap(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin), (a,))
    return ndarray(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, **kwargs):
    """Host copy of a device array (a host array is returned as NumPy would)."""
    return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


def memoize(for_each_device=False):
    def deco(f):
        return functools.lru_cache(maxsize=None)(f)

    return deco


class _Device:
    id = 0
    attributes = {"MultiProcessorCount": 1, "MaxGridDimX": 2**31 - 1}

    def synchronize(self):
        pass


def _make_cuda():
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = _Device
    cuda.runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"CUDA emulator (tests/cuda_emu)"},
    )
    return cuda


class _DeviceNamespace(types.ModuleType):
    """``cupy`` (or ``cupy.linalg``): NumPy's functions of the names CuPy has, on device
    arrays; types and constants as NumPy's (``cupy.float32 is numpy.float32``, as in CuPy)."""

    def __init__(self, name, host, names):
        super().__init__(name)
        self._host = host
        self._names = names

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._names or not hasattr(self._host, name):
            raise AttributeError(f"fake cupy: module {self.__name__!r} has no attribute {name!r}")
        attr = getattr(self._host, name)
        if isinstance(attr, type) or not callable(attr):
            return attr
        fn = _DeviceUfunc(attr) if isinstance(attr, np.ufunc) else _device_function(name, attr)
        setattr(self, name, fn)
        return fn


def make():
    """A fresh fake ``cupy`` module object (install it in sys.modules yourself)."""
    m = _DeviceNamespace("cupy", np, cupy_names.MODULE)
    m.__file__ = __file__
    m.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    m.ndarray = ndarray
    m.RawModule = RawModule
    m.ElementwiseKernel = ElementwiseKernel
    m.memoize = memoize
    m.cuda = _make_cuda()
    m.linalg = _DeviceNamespace("cupy.linalg", np.linalg, cupy_names.LINALG)
    m.asarray = asarray
    m.array = array
    m.asnumpy = asnumpy
    m.__version__ = "emulated"
    m.is_fake = True
    return m


@contextlib.contextmanager
def installed(blocks_per_sm=2):
    """Run the block with a fresh stand-in installed as ``cupy``: lvmcore's backend probe sees
    a CUDA device and kernels._cupy is imported afresh against the stand-in; everything (a real
    CuPy included) is put back afterwards. ``blocks_per_sm`` caps the emulated grids (each
    emulated block starts up to 1024 threads). Yields the module."""
    import kernels
    from lvmcore import backend

    fake = make()
    saved = {name: sys.modules.get(name) for name in ("cupy", "kernels._cupy")}
    saved_attr = kernels.__dict__.pop("_cupy", None)
    sys.modules.pop("kernels._cupy", None)
    sys.modules["cupy"] = fake
    backend._availability.cache_clear()
    try:
        from kernels import _cupy

        _cupy.BLOCKS_PER_SM = blocks_per_sm
        yield fake
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        kernels.__dict__.pop("_cupy", None)
        if saved_attr is not None:
            kernels._cupy = saved_attr
        backend._availability.cache_clear()
