"""The ctypes binding of the runtime library's C API
(``runtime/include/diffattn/runtime.h``, ``libdiffattn_runtime.so``).

Pure binding: loading the library and declaring its functions' types, the
``diffattn_buffer`` struct, one module handle per artifact directory, and
turning the runtime's failures into ``RuntimeFailure`` carrying its message.
Which kernels to build and launch is ``diffattn._gpu``'s business.

The library is the one of the build tree that laid this package out, unless
``DIFFATTN_RUNTIME`` names another.
"""

import ctypes
import os
import threading

from . import _build_config

# Element type codes of runtime.h (DIFFATTN_F32, ...), by manifest dtype.
_CODES = {"f32": 0, "f16": 1, "bf16": 2, "i32": 3}


class _Buffer(ctypes.Structure):
    """runtime.h's diffattn_buffer."""
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p), ("dtype", ctypes.c_int32),
                ("rank", ctypes.c_int32), ("shape", ctypes.c_int64 * 4)]


class RuntimeFailure(RuntimeError):
    """The runtime refused or failed a launch; the message is its own."""


_lock = threading.Lock()
_runtime = None
_modules = {}


def runtime_path():
    """The runtime library this package loads."""
    return os.environ.get("DIFFATTN_RUNTIME") or getattr(_build_config, "DIFFATTN_RUNTIME", "")


def runtime():
    """The loaded runtime library, its functions typed as in runtime.h."""
    global _runtime
    with _lock:
        if _runtime is None:
            path = runtime_path()
            if not path or not os.path.isfile(path):
                raise RuntimeFailure(f"the diffattn runtime library is not at {path!r} "
                                     f"(build the project or set DIFFATTN_RUNTIME)")
            lib = ctypes.CDLL(path)
            lib.diffattn_module_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
            lib.diffattn_module_load.restype = ctypes.c_int
            lib.diffattn_module_num_kernels.argtypes = [ctypes.c_void_p]
            lib.diffattn_module_num_kernels.restype = ctypes.c_int
            lib.diffattn_module_kernel_name.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.diffattn_module_kernel_name.restype = ctypes.c_char_p
            for name in ("diffattn_check", "diffattn_launch"):
                fn = getattr(lib, name)
                fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_Buffer), ctypes.c_int,
                               ctypes.c_int64, ctypes.c_int64, ctypes.c_int64] + \
                              ([ctypes.c_void_p] if name == "diffattn_launch" else [])
                fn.restype = ctypes.c_int
            lib.diffattn_workspace_elements.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                        ctypes.c_int64, ctypes.c_int64,
                                                        ctypes.c_int64]
            lib.diffattn_workspace_elements.restype = ctypes.c_int64
            lib.diffattn_last_error.restype = ctypes.c_char_p
            lib.diffattn_launch_timing.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_double),
                                                   ctypes.c_int]
            lib.diffattn_launch_timing.restype = ctypes.c_int
            _runtime = lib
        return _runtime


def _error(lib):
    return lib.diffattn_last_error().decode(errors="replace")


def load_module(directory):
    """(module handle, [kernel names]) of a GPU artifact directory, loaded
    once per process."""
    lib = runtime()
    with _lock:
        if directory not in _modules:
            handle = ctypes.c_void_p()
            if lib.diffattn_module_load(directory.encode(), ctypes.byref(handle)) != 0:
                raise RuntimeFailure(_error(lib))
            names = [lib.diffattn_module_kernel_name(handle, i).decode()
                     for i in range(lib.diffattn_module_num_kernels(handle))]
            _modules[directory] = (handle, names)
        return _modules[directory]


def make_buffers(named):
    """runtime.h buffers from (name, dtype code name, shape, device pointer)."""
    buffers = (_Buffer * len(named))()
    for buf, (name, elem, shape, ptr) in zip(buffers, named):
        buf.name = name.encode()
        buf.data = ptr
        buf.dtype = _CODES[elem]
        buf.rank = len(shape)
        for i, s in enumerate(shape):
            buf.shape[i] = s
    return buffers


def workspace_elements(handle, kernel, sizes):
    """diffattn_workspace_elements: f32 elements of the scratch buffer
    kernel ``kernel`` (bytes) of module ``handle`` needs for sizes
    (B, Sq, Sk); 0: none."""
    lib = runtime()
    n = lib.diffattn_workspace_elements(handle, kernel, *sizes)
    if n < 0:
        raise RuntimeFailure(_error(lib))
    return n


def launch(handle, kernel, buffers, count, sizes, stream):
    """diffattn_launch: checks the first ``count`` of ``buffers`` (from
    make_buffers) for sizes (B, Sq, Sk) and launches kernel ``kernel``
    (bytes) of module ``handle`` on the CUstream ``stream`` (an int)."""
    lib = runtime()
    rc = lib.diffattn_launch(handle, kernel, buffers, count, *sizes, ctypes.c_void_p(stream))
    if rc != 0:
        raise RuntimeFailure(_error(lib))


LAUNCH_TIMING_FIELDS = ("launches", "misses", "lookup_us", "context_us", "params_us",
                        "stage0_us", "later_stages_us", "total_us")


def launch_timing(enable):
    """diffattn_launch_timing: the host time of diffattn_launch by phase
    since the last call (a dict of LAUNCH_TIMING_FIELDS, sums over the
    launches); resets the sums and turns the timing on or off."""
    lib = runtime()
    values = (ctypes.c_double * len(LAUNCH_TIMING_FIELDS))()
    n = lib.diffattn_launch_timing(1 if enable else 0, values, len(values))
    return dict(zip(LAUNCH_TIMING_FIELDS, list(values)[:n]))
