"""The C++ kernel of ``torch.ops.diffattn.v2`` (``python/csrc/torch_op.cpp``,
``libdiffattn_torch.so``), where the build made one.

An eager call through a ``torch.library.custom_op`` runs Python on every
call (its autograd wrapper, validation, the launch through ctypes): about
100-170 us of host time per decode step. With the C++ kernel a repeated call
costs the dispatcher, two allocations from torch's caching allocator and the
launch: the configuration's launch plan (module, kernel, sizes, buffer
shapes) is cached in C++, keyed by every tensor's dtype, device, sizes and
contiguity and by the options.

How it is put together (``define_v2``):

- ``diffattn::v2`` is defined here with ``torch.library`` (the schema
  inferred from the annotated Python kernel, as ``custom_op`` would), with
  the fake kernel for torch.compile and the Python kernel as its
  CompositeExplicitAutograd kernel (what non-CUDA tensors reach, so they
  get the Python kernel's errors).
- ``diffattn::_v2_plan`` (same arguments, returns ``int[]``) is the
  resolver: the first call of a configuration asks it, from C++, for the
  plan. It validates the call (TypeError / ValueError naming the argument),
  finds or builds the kernel in the kernel cache (``diffattn._compiler``)
  and loads its module with the runtime. Later calls of the configuration
  do not reach Python.
- ``torch.ops.diffattn_ext.install(runtime)`` registers the C++ kernel for
  the CUDA dispatch key. It refuses (and the Python kernel serves CUDA
  tensors) when the schema defined here does not match the C++ kernel's
  signature, e.g. after an argument was added to the op in Python only.
- Training (``python/csrc/torch_train.cpp``): the resolvers
  ``diffattn::_v2_forward_saved_plan`` and ``diffattn::_v2_backward_plan``
  (the arguments of ``_v2_forward_saved`` and ``v2_backward``), then
  ``torch.ops.diffattn_ext.install_training()`` registers C++ CUDA kernels
  for those two ops, so that a forward + backward through autograd
  launches its kernels without the Python CUDA kernels' validation, cache
  look-up and ctypes launch. Their autograd formula stays in Python
  (``diffattn._torch_autograd``). ``training_in_cpp()`` says whether they
  are installed.

``DIFFATTN_TORCH_EXT`` overrides the library's path; ``0`` / ``off``
disables it (the op is then the Python custom op, as without the library).
Which path serves calls: ``active`` and ``reason``.
"""

import os
import warnings

import torch

from . import _build_config, _runtime
from ._torch_autograd import lse_dtype

#: Whether the C++ kernel serves CUDA calls of torch.ops.diffattn.v2.
active = False
#: Why not, when it does not ("" when it does).
reason = "diffattn._torch not imported yet"
#: Whether the C++ library serves the training ops' CUDA calls.
training_active = False
#: How many configurations the C++ kernel asked Python to plan (tests).
resolver_calls = 0

_libraries = []  # torch.library.Library objects: registrations live with them


def library_path():
    """The C++ kernel's library this package loads ("" for none)."""
    env = os.environ.get("DIFFATTN_TORCH_EXT", "").strip()
    if env:
        return "" if _disabled() else env
    return getattr(_build_config, "DIFFATTN_TORCH_EXT", "")


def _disabled():
    return os.environ.get("DIFFATTN_TORCH_EXT", "").strip().lower() in ("0", "off", "false", "no")


def _plan(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    """diffattn::_v2_plan: the launch plan of one configuration, as
    [module handle, B, Sq, Sk, workspace f32 elements, out shape (4)].
    Raises the Python kernel's errors for an invalid call. (The same steps
    as the Python kernel, diffattn._torch._run, up to its launch.)"""
    from . import _torch

    directory, out_shape, sizes = _torch.forward_prepare(
        q, k, v, lam, kv_len, causal, scale, window_left, window_right)
    return _module_plan(directory, sizes) + list(out_shape)


def _module_plan(directory, sizes):
    """[module handle, B, Sq, Sk, workspace f32 elements] of the artifact
    `directory` (loaded with the runtime) for `sizes`; counts a resolver
    call."""
    global resolver_calls
    handle, names = _runtime.load_module(directory)
    if len(names) != 1:
        raise _runtime.RuntimeFailure(f"{directory}: expected one kernel, found {names}")
    workspace = _runtime.workspace_elements(handle, names[0].encode(), sizes)
    resolver_calls += 1
    return [handle.value, *sizes, workspace]


def _plan_forward_saved(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    """diffattn::_v2_forward_saved_plan: the launch plan of one training
    forward configuration, as [module handle, B, Sq, Sk, workspace f32
    elements, out shape (4)]. Raises the Python kernel's errors for an
    invalid call."""
    from . import _torch

    directory, out_shape, sizes = _torch.forward_prepare(
        q, k, v, lam, kv_len, causal, scale, window_left, window_right, return_lse=True,
        out_odd=True)
    return _module_plan(directory, sizes) + list(out_shape)


def _plan_backward(q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left,
                   window_right, out_odd=None):
    """diffattn::_v2_backward_plan: the launch plan of one backward
    configuration (the kernels _torch.default_backward_options picks), as
    [module handle, B, Sq, Sk, workspace f32 elements]. Raises the Python
    kernel's errors, naming the tensor, for an invalid call."""
    from . import _torch

    directory, sizes = _torch.backward_prepare(
        q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left, window_right,
        options=_torch.default_backward_options(q.device.index), out_odd=out_odd)
    return _module_plan(directory, sizes)


def _arguments(op_name):
    """The argument list of a defined op's schema, "(Tensor q, ...)"."""
    schema = str(getattr(torch.ops.diffattn, op_name).default._schema)
    return schema[schema.index("("):schema.rindex(" -> ")]


def training_in_cpp():
    """Whether the C++ library serves the CUDA calls of
    diffattn::_v2_forward_saved and diffattn::v2_backward (the training
    forward and the backward; python/csrc/torch_train.cpp)."""
    return training_active


def _install_training(lib):
    """Defines the training ops' resolvers and registers their C++ CUDA
    kernels; returns "" or why not (the Python kernels then serve)."""
    if not hasattr(torch.ops.diffattn_ext, "install_training"):
        return "the C++ library predates the training kernels"
    for op, plan_op, resolver in (
            ("_v2_forward_saved", "_v2_forward_saved_plan", _plan_forward_saved),
            ("v2_backward", "_v2_backward_plan", _plan_backward)):
        lib.define(plan_op + _arguments(op) + " -> int[]")
        lib.impl(plan_op, resolver, "CompositeExplicitAutograd")
    return torch.ops.diffattn_ext.install_training()


def _v2_train(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    # Below autograd here: the forward with its log-sum-exp and (on CUDA)
    # the pairs' second heads, which the backward then needs not recompute.
    return torch.ops.diffattn._v2_forward_saved(q, k, v, lam, kv_len, causal, scale,
                                                window_left, window_right)


def _v2_train_fake(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    b, sq, h2, _ = q.shape
    out_shape = (b, sq, h2 // 2, v.shape[3])
    return (q.new_empty(out_shape), q.new_empty((b, h2, sq), dtype=lse_dtype(q.dtype)),
            q.new_empty(out_shape if q.device.type == "cuda" else (0,)))


def autograd_in_cpp():
    """Whether diffattn::v2's Autograd kernel is the C++ one (its formula
    then lives on diffattn::_v2_train)."""
    return active and bool(torch.ops.diffattn_ext.autograd_in_cpp())


def define_v2(kernel, fake):
    """Defines torch.ops.diffattn.v2 with the C++ kernel for CUDA tensors.

    ``kernel`` is the op's Python kernel, annotated (its signature is the
    op's schema); ``fake`` its fake kernel. Returns False, defining nothing,
    when the library is not built or cannot be loaded: the caller then
    defines the op as a Python custom op. Returns True once the op is
    defined; ``active`` says whether the C++ kernel serves CUDA calls (if
    it refused, the Python kernel does, and ``reason`` says why)."""
    global active, reason
    path = library_path()
    if not path:
        reason = ("DIFFATTN_TORCH_EXT disables the C++ kernel" if _disabled() else
                  "the C++ kernel is not built (python3 had no torch when the package was built)")
        return False
    if not os.path.isfile(path):
        reason = f"no C++ kernel library at {path}"
        return False
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:
        reason = f"cannot load {path}: {e}"
        warnings.warn(f"diffattn: {reason}; torch.ops.diffattn.v2 runs its Python kernel")
        return False

    schema = torch.library.infer_schema(kernel, mutates_args=())
    lib = torch.library.Library("diffattn", "FRAGMENT")
    _libraries.append(lib)
    lib.define("v2" + schema, tags=(torch.Tag.pt2_compliant_tag,))
    lib.define("_v2_plan" + schema[:schema.rindex("->")] + "-> int[]")
    lib.impl("_v2_plan", _plan, "CompositeExplicitAutograd")
    lib.impl("v2", kernel, "CompositeExplicitAutograd")
    torch.library.register_fake("diffattn::v2", fake, lib=lib)
    # diffattn::_v2_train: the forward with lse, (out, lse, out_odd), which carries
    # v2's autograd formula (diffattn._torch_autograd); the C++ Autograd
    # kernel of v2 sends the calls that need grad there (returning out) and
    # every other call straight to the backend kernel (no Python per call).
    lib.define("_v2_train" + schema[:schema.rindex("->")] + "-> (Tensor, Tensor, Tensor)")
    lib.impl("_v2_train", _v2_train, "CompositeExplicitAutograd")
    torch.library.register_fake("diffattn::_v2_train", _v2_train_fake, lib=lib)
    why = torch.ops.diffattn_ext.install(_runtime.runtime_path())
    if why:
        reason = why
        warnings.warn(f"diffattn: the C++ kernel of torch.ops.diffattn.v2 is not used: {why}")
        return True
    active, reason = True, ""
    # v2 is defined by now: nothing raised here may leave the import half
    # done (a second import would define v2 again), so any failure means
    # the Python CUDA kernels serve the training ops.
    try:
        why = _install_training(lib)
    except Exception as e:  # noqa: BLE001 (an older or broken library)
        why = f"{type(e).__name__}: {e}"
    global training_active
    training_active = not why
    if why:
        warnings.warn(f"diffattn: the training ops run their Python CUDA kernels: {why}")
    return True
