"""PyTorch integration: ``torch.ops.diffattn.v2`` as a torch.library custom
op, with a fake (meta) implementation so torch.compile keeps it in its
graph. Importing this module registers the op; ``diffattn.v2`` does so on
its first torch call. Where the build made the C++ kernel
(``diffattn._torch_native``), CUDA calls run it instead of ``_run``.
"""

import functools
from typing import Optional

import torch

from . import _gpu, _torch_native

_ELEM = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


def _check_tensor(name, t, dtypes):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cuda:
        raise ValueError(f"{name}: expected a CUDA tensor, got device {t.device}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous (BSHD); call .contiguous()")


def _validate(q, k, v, lam, kv_len):
    _check_tensor("q", q, (torch.bfloat16, torch.float16))
    _check_tensor("k", k, (q.dtype,))
    _check_tensor("v", v, (q.dtype,))
    _check_tensor("lam", lam, (q.dtype, torch.float32))
    if kv_len is not None:
        _check_tensor("kv_len", kv_len, (torch.int32,))
    for name, t in (("k", k), ("v", v), ("lam", lam), ("kv_len", kv_len)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name}: on {t.device}, but q is on {q.device}")


@functools.lru_cache(maxsize=None)
def _target_of(device_index):
    return _gpu.target_for_capability(torch.cuda.get_device_capability(device_index))


def _run(q, k, v, lam, kv_len, causal, scale, window_left, window_right, out=None):
    _validate(q, k, v, lam, kv_len)
    target = _target_of(q.device.index)
    directory, out_shape, sizes = _gpu.prepare_v2(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), _ELEM[q.dtype],
        _ELEM[lam.dtype], causal=causal, scale=scale, window=(window_left, window_right),
        kv_len_shape=None if kv_len is None else tuple(kv_len.shape), target=target)
    if out is None:
        out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
    else:
        _check_tensor("out", out, (q.dtype,))
        if tuple(out.shape) != tuple(out_shape):
            raise ValueError(f"out: expected shape {tuple(out_shape)}, got {tuple(out.shape)}")
    named = [("q", "x", q), ("k", "x", k), ("v", "x", v), ("lam", "x", lam)]
    if kv_len is not None:
        named.append(("kv_len", "i32", kv_len))
    named.append(("out", "x", out))
    buffers = [(n, _ELEM.get(t.dtype, "i32") if e == "x" else e, tuple(t.shape), t.data_ptr())
               for n, e, t in named]
    scratch = []

    def alloc_workspace(n):
        # From torch's stream-ordered caching allocator: freed after use on
        # this stream, never while the kernels still run.
        scratch.append(torch.empty(n, dtype=torch.float32, device=q.device))
        return scratch[-1].data_ptr()

    stream = torch.cuda.current_stream(q.device).cuda_stream
    if q.device.index == torch.cuda.current_device():
        _gpu.launch_v2(directory, buffers, sizes, stream, alloc_workspace)
    else:  # the runtime launches in the current context
        with torch.cuda.device(q.device):
            _gpu.launch_v2(directory, buffers, sizes, stream, alloc_workspace)
    return out


def v2_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
          kv_len: Optional[torch.Tensor], causal: bool, scale: Optional[float],
          window_left: int, window_right: int) -> torch.Tensor:
    return _run(q, k, v, lam, kv_len, causal, scale, window_left, window_right)


def _v2_fake(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    b, sq, h2, _ = q.shape
    return q.new_empty((b, sq, h2 // 2, v.shape[3]))


# The op's schema is v2_op's signature. CUDA calls run the C++ kernel where
# the build made one (diffattn._torch_native: no Python per repeated call);
# otherwise the op is this Python custom op.
if not _torch_native.define_v2(v2_op, _v2_fake):
    v2_op = torch.library.custom_op("diffattn::v2", mutates_args=())(v2_op)
    v2_op.register_fake(_v2_fake)


def v2(q, k, v, lam, *, causal=False, scale=None, window=(-1, -1), kv_len=None, out=None):
    left, right = window
    if out is not None:  # in-place form (tests poison the output): not the custom op
        return _run(q, k, v, lam, kv_len, causal, scale, left, right, out=out)
    return torch.ops.diffattn.v2(q, k, v, lam, kv_len, causal, scale, left, right)
