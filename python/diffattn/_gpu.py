"""The GPU path: torch CUDA tensors in, kernels that diffattn-compile built
(for sm_80 / sm_90) launched through the runtime library (libdiffattn_runtime,
the CUDA driver API underneath) on torch's current stream.

This module is the policy: which kernel a call needs, the target of a
device, validation, the kernel cache and launch plans. The ctypes binding of
the runtime's C API is ``diffattn._runtime``.

Validation happens before anything is compiled or launched; every error
names its argument. Kernels come from the cache (``diffattn._compiler``): a
machine without the compiler loads directories built elsewhere.
"""

import functools
import os
import threading

from . import _compiler, _ops, _runtime
# RuntimeFailure is what this module's launches raise; callers catch it as
# _gpu.RuntimeFailure.
from ._runtime import RuntimeFailure, load_module

# Head dimensions the portable strategy has kernels for (D == Dv).
SUPPORTED_HEAD_DIMS = (64, 128)


#: Environment variable that overrides the target picked for a GPU (e.g.
#: ``sm_90`` for the portable strategy on an H100/H200, whose default is
#: ``sm_90a``). The target is part of the kernel cache key.
TARGET_ENV = "DIFFATTN_GPU_TARGET"

# Compute capability -> the default target, and the targets whose cubins a
# capability runs (an sm_XY cubin runs on X.Z for Z >= Y; an arch-specific
# sm_XYa one on X.Y only).
# 9.0 (H100, H200) gets the Hopper strategy (wgmma), faster on every
# prefill shape of SPEC.md (docs/performance.md); decode, paged caches and
# packed sequences compile to the portable kernels there too.
_DEFAULT_TARGET = {(9, 0): "sm_90a", 9: "sm_90", 8: "sm_80"}
_TARGETS = ("sm_80", "sm_90", "sm_90a")


def runs_on(target, capability):
    """Whether cubins of `target` (e.g. "sm_90a") run on a GPU of compute
    capability `capability` ((major, minor)): sm_XY on X.Z for Z >= Y, the
    arch-specific sm_XYa on X.Y only."""
    digits = target[3:].rstrip("a")
    major, minor = int(digits[:-1]), int(digits[-1])
    if target.endswith("a"):
        return tuple(capability) == (major, minor)
    return capability[0] == major and capability[1] >= minor


def target_for_capability(capability):
    """The diffattn-compile target for a GPU of this compute capability:
    ``$DIFFATTN_GPU_TARGET`` if set (ValueError if its cubins cannot run
    there), else the capability's default. NotImplementedError for
    capabilities without kernels."""
    major, minor = capability
    override = os.environ.get(TARGET_ENV)
    if override:
        if override not in _TARGETS:
            raise ValueError(f"{TARGET_ENV}={override!r}: expected one of {', '.join(_TARGETS)}")
        if not runs_on(override, capability):
            raise ValueError(f"{TARGET_ENV}={override}: its cubins do not run on compute "
                             f"capability {major}.{minor}")
        return override
    target = _DEFAULT_TARGET.get((major, minor), _DEFAULT_TARGET.get(major))
    if target is None:
        raise NotImplementedError(f"no GPU kernels for compute capability {major}.{minor} "
                                  f"(the compiler targets sm_80, sm_90 and sm_90a)")
    return target


def check_gpu_config(q_shape, v_shape):
    d, dv = q_shape[3], v_shape[3]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: head dimension D = {d} has no GPU kernel (supported: "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
    if dv != d:
        raise ValueError(f"v: value dimension Dv = {dv} must equal D = {d} on the GPU")


@functools.lru_cache(maxsize=1024)
def prepare_v2(q_shape, k_shape, v_shape, lam_shape, elem, lam_elem, *, causal=False, scale=None,
               window=(-1, -1), kv_len_shape=None, target="sm_90", options=(),
               block_table_shape=None, return_lse=False, return_out_odd=False):
    """Builds (or finds in the cache) the kernel of a v2 call; returns
    (artifact directory, out shape, (B, Sq, Sk)), Sk being MB * BS for a
    paged cache (`block_table_shape` [B, MB]). Needs no GPU: this is also
    how kernels are prepared for another machine. Memoised per process, so
    repeated calls of one shape cost no file-system look-up. ``options``
    are extra diffattn-compile flags (e.g. ``("--gpu-options=block-k=64",)``, for
    benchmarks of strategy variants); they are part of the cache key. With
    `return_lse` the kernel also writes the log-sum-exp [B, 2H, Sq] f32
    (sm_90a's wgmma kernel without kv_len, else the portable strategy's
    row-block kernel); with `return_out_odd` also out_odd [B, Sq, H, Dv]
    (the pairs' second heads; see diffattn.v2's ODS)."""
    if elem not in ("bf16", "f16"):
        raise TypeError(f"q: expected dtype bfloat16 or float16 on the GPU, got {elem}")
    check_gpu_config(q_shape, v_shape)
    params, text, out_shape, sizes = _ops.v2_request(
        q_shape, k_shape, v_shape, lam_shape, elem, lam_elem, causal=causal, scale=scale,
        window=window, kv_len_shape=kv_len_shape, block_table_shape=block_table_shape,
        return_lse=return_lse, return_out_odd=return_out_odd)
    directory = _compiler.ensure_compiled("v2", params, target, text, tuple(options))
    # The runtime takes B, Sq, Sk; a paged pool's size comes from its buffers.
    return directory, out_shape, sizes[:3]


#: The compiler options of the accumulating backward (Passes.td,
#: ``deterministic``): dq added to an f32 accumulator by reductions. The
#: PyTorch path's default on sm_90a and sm_90 (_torch.default_backward_options).
ACCUMULATE_OPTIONS = ("--gpu-options=deterministic=false",)


@functools.lru_cache(maxsize=1024)
def prepare_v2_backward(q_shape, k_shape, v_shape, lam_shape, out_shape, dout_shape, lse_shape,
                        elem, lam_elem, *, causal=False, scale=None, window=(-1, -1),
                        kv_len_shape=None, target="sm_90", options=(), out_odd_shape=None):
    """prepare_v2 for diffattn.v2_backward (three kernels: the portable
    strategy's, or on sm_90a the wgmma ones): returns (artifact directory,
    (B, Sq, Sk)).
    Shapes are checked as diffattn.v2_backward does, each error naming its
    tensor. With `out_odd_shape` the kernels read the forward's out_odd
    (prepare_v2's return_out_odd) instead of recomputing A_{2h+1}."""
    if elem not in ("bf16", "f16"):
        raise TypeError(f"q: expected dtype bfloat16 or float16 on the GPU, got {elem}")
    check_gpu_config(q_shape, v_shape)
    params, text, sizes = _ops.v2_backward_request(
        q_shape, k_shape, v_shape, lam_shape, out_shape, dout_shape, lse_shape, elem, lam_elem,
        causal=causal, scale=scale, window=window, kv_len_shape=kv_len_shape,
        out_odd_shape=out_odd_shape)
    directory = _compiler.ensure_compiled("v2_backward", params, target, text, tuple(options))
    return directory, sizes[:3]


def prepare_v2_varlen(q_shape, k_shape, v_shape, lam_shape, cu_q_shape, cu_k_shape, elem,
                      lam_elem, max_seqlen_q, max_seqlen_k, *, causal=False, scale=None,
                      window=(-1, -1), target="sm_90", options=()):
    """prepare_v2 for packed sequences (diffattn.v2_varlen); the sizes are
    (B, max_seqlen_q, max_seqlen_k), the packed lengths come from the
    buffers."""
    if elem not in ("bf16", "f16"):
        raise TypeError(f"q: expected dtype bfloat16 or float16 on the GPU, got {elem}")
    check_gpu_config((1,) + tuple(q_shape), (1,) + tuple(v_shape))
    params, text, out_shape, sizes = _ops.v2_varlen_request(
        q_shape, k_shape, v_shape, lam_shape, cu_q_shape, cu_k_shape, elem, lam_elem,
        max_seqlen_q, max_seqlen_k, causal=causal, scale=scale, window=window)
    directory = _compiler.ensure_compiled("v2", params, target, text, tuple(options))
    return directory, out_shape, sizes[:3]


def workspace_elements(directory, sizes):
    """f32 elements of the scratch buffer the kernel needs (0: none)."""
    handle, names = load_module(directory)
    return _runtime.workspace_elements(handle, names[0].encode(), sizes)


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
        plan = (handle, names[0].encode(), n, _runtime.make_buffers(spec), len(spec))
        plans[key] = plan
    handle, kernel, n, buffers, count = plan
    for buf, named in zip(buffers, named_buffers):
        buf.data = named[3]
    if n > 0:
        if alloc_workspace is None:
            raise RuntimeFailure(f"kernel {kernel.decode()} needs a workspace of {n} f32 elements")
        buffers[count - 1].data = alloc_workspace(n)
    _runtime.launch(handle, kernel, buffers, count, sizes, stream)
