"""The GPU path: torch CUDA tensors in, kernels that diffattn-compile built
(for sm_80 / sm_90) launched through the runtime library (libdiffattn_runtime,
the CUDA driver API underneath) on torch's current stream.

Validation happens before anything is compiled or launched; every error
names its argument. Kernels come from the cache (``diffattn._compiler``): a
machine without the compiler loads directories built elsewhere.
"""

import ctypes
import functools
import os
import threading

from . import _build_config, _compiler, _ops

# Element type codes of runtime.h.
_CODES = {"f32": 0, "f16": 1, "bf16": 2, "i32": 3}
# Head dimensions the portable strategy has kernels for (D == Dv).
SUPPORTED_HEAD_DIMS = (64, 128)


class _Buffer(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p), ("dtype", ctypes.c_int32),
                ("rank", ctypes.c_int32), ("shape", ctypes.c_int64 * 4)]


class RuntimeFailure(RuntimeError):
    """The runtime refused or failed a launch; the message is its own."""


_lock = threading.Lock()
_runtime = None
_modules = {}


def runtime_path():
    return os.environ.get("DIFFATTN_RUNTIME") or getattr(_build_config, "DIFFATTN_RUNTIME", "")


def runtime():
    """The loaded runtime library."""
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
            _runtime = lib
        return _runtime


def _error(lib):
    return lib.diffattn_last_error().decode(errors="replace")


def load_module(directory):
    """(module handle, [kernel names]) of a GPU artifact directory."""
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


def target_for_capability(capability):
    """The diffattn-compile target whose cubins run on this compute capability."""
    major, _ = capability
    if major == 9:
        return "sm_90"
    if major == 8:
        return "sm_80"
    raise NotImplementedError(f"no GPU kernels for compute capability {major}.{capability[1]} "
                              f"(the portable strategy targets sm_80 and sm_90)")


def check_gpu_config(q_shape, v_shape):
    d, dv = q_shape[3], v_shape[3]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: head dimension D = {d} has no GPU kernel (supported: "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
    if dv != d:
        raise ValueError(f"v: value dimension Dv = {dv} must equal D = {d} on the GPU")


@functools.lru_cache(maxsize=1024)
def prepare_v2(q_shape, k_shape, v_shape, lam_shape, elem, lam_elem, *, causal=False, scale=None,
               window=(-1, -1), kv_len_shape=None, target="sm_90", options=()):
    """Builds (or finds in the cache) the kernel of a v2 call; returns
    (artifact directory, out shape, (B, Sq, Sk)). Needs no GPU: this is also
    how kernels are prepared for another machine. Memoised per process, so
    repeated calls of one shape cost no file-system look-up. ``options``
    are extra diffattn-compile flags (e.g. ``("--block-k=64",)``, for
    benchmarks of strategy variants); they are part of the cache key."""
    if elem not in ("bf16", "f16"):
        raise TypeError(f"q: expected dtype bfloat16 or float16 on the GPU, got {elem}")
    check_gpu_config(q_shape, v_shape)
    params, text, out_shape, sizes = _ops.v2_request(
        q_shape, k_shape, v_shape, lam_shape, elem, lam_elem, causal=causal, scale=scale,
        window=window, kv_len_shape=kv_len_shape)
    directory = _compiler.ensure_compiled("v2", params, target, text, tuple(options))
    return directory, out_shape, sizes


def workspace_elements(directory, sizes):
    """f32 elements of the scratch buffer the kernel needs (0: none)."""
    handle, names = load_module(directory)
    n = runtime().diffattn_workspace_elements(handle, names[0].encode(), *sizes)
    if n < 0:
        raise RuntimeFailure(_error(runtime()))
    return n


# Per thread: launch plans (the runtime's buffer array, the workspace size)
# by artifact, sizes and buffer shapes; a launch only fills in pointers.
_plans = threading.local()


def launch_v2(directory, named_buffers, sizes, stream, alloc_workspace=None):
    """Launches the kernel of `directory` on `stream`. Where it needs a
    workspace, `alloc_workspace(n)` returns the device pointer of n f32
    elements that stay alive until the work is done (the caller's
    stream-ordered allocator)."""
    named_buffers = list(named_buffers)
    plans = getattr(_plans, "plans", None)
    if plans is None:
        plans = _plans.plans = {}
    key = (directory, tuple(sizes), tuple((n, e, tuple(s)) for n, e, s, _ in named_buffers))
    plan = plans.get(key)
    if plan is None:
        handle, names = load_module(directory)
        if len(names) != 1:
            raise RuntimeFailure(f"{directory}: expected one kernel, found {names}")
        n = workspace_elements(directory, sizes)
        spec = named_buffers + ([("workspace", "f32", (n,), 0)] if n > 0 else [])
        plan = (handle, names[0].encode(), n, make_buffers(spec), len(spec))
        plans[key] = plan
    handle, kernel, n, buffers, count = plan
    for buf, named in zip(buffers, named_buffers):
        buf.data = named[3]
    if n > 0:
        if alloc_workspace is None:
            raise RuntimeFailure(f"kernel {kernel.decode()} needs a workspace of {n} f32 elements")
        buffers[count - 1].data = alloc_workspace(n)
    lib = runtime()
    rc = lib.diffattn_launch(handle, kernel, buffers, count, *sizes, ctypes.c_void_p(stream))
    if rc != 0:
        raise RuntimeFailure(_error(lib))
