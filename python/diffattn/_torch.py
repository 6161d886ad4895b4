"""PyTorch integration: ``torch.ops.diffattn.v2`` as a torch.library custom
op, with a fake (meta) implementation so torch.compile keeps it in its
graph. Importing this module registers the op; ``diffattn.v2`` does so on
its first torch call. Where the build made the C++ kernel
(``diffattn._torch_native``), CUDA calls run it instead of ``_run``.
"""

import functools
from typing import Optional

import torch

from . import _gpu, _ops, _torch_autograd, _torch_native

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


def _check_device(q, name, t):
    """ValueError naming `name` unless tensor `t` is on q's device."""
    if t.device != q.device:
        raise ValueError(f"{name}: on {t.device}, but q is on {q.device}")


def _validate(q, k, v, lam, kv_len, block_table=None):
    _check_tensor("q", q, (torch.bfloat16, torch.float16))
    _check_tensor("k", k, (q.dtype,))
    _check_tensor("v", v, (q.dtype,))
    _check_tensor("lam", lam, (q.dtype, torch.float32))
    if kv_len is not None:
        _check_tensor("kv_len", kv_len, (torch.int32,))
    if block_table is not None:
        _check_tensor("block_table", block_table, (torch.int32,))
    for name, t in (("k", k), ("v", v), ("lam", lam), ("kv_len", kv_len),
                    ("block_table", block_table)):
        if t is not None:
            _check_device(q, name, t)


def check_call(q, required, optional, causal, scale, window):
    """The torch front end's checks before any torch.ops call: q and every
    (name, value) of `required` a torch.Tensor, each of `optional` None or
    one, all on q's device (a meta tensor beside real ones would pick the
    op's fake implementation and return an unwritten tensor); `causal` a
    bool, `scale` None or a finite positive number, `window` ints (see
    _ops.check_window). Returns (causal, scale, left, right), scale as the
    f32 value the kernel receives. TypeError / ValueError name the argument."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
    for entries, may_be_none in ((required, False), (optional, True)):
        for name, t in entries:
            if t is None and may_be_none:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor (as q), got {type(t).__name__}")
            _check_device(q, name, t)
    left, right = _ops.check_window(window, causal)
    return bool(causal), _ops.check_scale(scale), left, right


def _same_device(q, *tensors):
    """The fake implementations' device check, for direct torch.ops calls."""
    for t in tensors:
        if t is not None and t.device != q.device:
            raise ValueError(f"diffattn: every tensor must be on q's device ({q.device}), "
                             f"got one on {t.device}")


def _output(out, out_shape, q):
    """`out` checked against `out_shape` and q's dtype, or a new tensor."""
    if out is None:
        return torch.empty(out_shape, dtype=q.dtype, device=q.device)
    _check_tensor("out", out, (q.dtype,))
    if tuple(out.shape) != tuple(out_shape):
        raise ValueError(f"out: expected shape {tuple(out_shape)}, got {tuple(out.shape)}")
    return out


@functools.lru_cache(maxsize=None)
def _target_of(device_index):
    return _gpu.target_for_capability(torch.cuda.get_device_capability(device_index))


def forward_prepare(q, k, v, lam, kv_len, causal, scale, window_left, window_right,
                    block_table=None, return_lse=False, out_odd=False):
    """Validates a forward call and builds or finds its kernel (with
    `return_lse` one that also writes lse, with `out_odd` also out_odd):
    (artifact directory, out shape, (B, Sq, Sk)). Errors name the argument
    (_validate, _gpu.prepare_v2)."""
    _validate(q, k, v, lam, kv_len, block_table)
    return _gpu.prepare_v2(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), _ELEM[q.dtype],
        _ELEM[lam.dtype], causal=causal, scale=scale, window=(window_left, window_right),
        kv_len_shape=None if kv_len is None else tuple(kv_len.shape),
        target=_target_of(q.device.index),
        block_table_shape=None if block_table is None else tuple(block_table.shape),
        return_lse=return_lse, return_out_odd=out_odd)


def _run(q, k, v, lam, kv_len, causal, scale, window_left, window_right, out=None,
         block_table=None):
    directory, out_shape, sizes = forward_prepare(q, k, v, lam, kv_len, causal, scale,
                                                  window_left, window_right, block_table)
    out = _output(out, out_shape, q)
    named = [("q", "x", q), ("k", "x", k), ("v", "x", v), ("lam", "x", lam)]
    if kv_len is not None:
        named.append(("kv_len", "i32", kv_len))
    if block_table is not None:
        named.append(("block_table", "i32", block_table))
    named.append(("out", "x", out))
    _launch(directory, named, sizes, q.device)
    return out


def _launch(directory, named, sizes, device):
    """Launches the kernel of `directory` on the current stream of `device`
    with the tensors `named` ((name, "x" for the tensor's own dtype or a
    manifest dtype, tensor), in the manifest's order) and a workspace from
    torch's allocator where the kernel needs one."""
    buffers = [(n, _ELEM.get(t.dtype, "i32") if e == "x" else e, tuple(t.shape), t.data_ptr())
               for n, e, t in named]
    scratch = []

    def alloc_workspace(n):
        # From torch's stream-ordered caching allocator: freed after use on
        # this stream, never while the kernels still run.
        scratch.append(torch.empty(n, dtype=torch.float32, device=device))
        return scratch[-1].data_ptr()

    stream = torch.cuda.current_stream(device).cuda_stream
    if device.index == torch.cuda.current_device():
        _gpu.launch_v2(directory, buffers, sizes, stream, alloc_workspace)
    else:  # the runtime launches in the current context
        with torch.cuda.device(device):
            _gpu.launch_v2(directory, buffers, sizes, stream, alloc_workspace)


def _forward_saving(q, k, v, lam, kv_len, causal, scale, window_left, window_right,
                    out_odd):
    """One forward kernel that also writes lse [B, 2H, Sq] float32 and, with
    `out_odd`, the pairs' second heads A_{2h+1} [B, Sq, H, Dv]: (out, lse)
    or (out, lse, out_odd)."""
    directory, out_shape, sizes = forward_prepare(
        q, k, v, lam, kv_len, causal, scale, window_left, window_right, return_lse=True,
        out_odd=out_odd)
    b, sq, h2, _ = q.shape
    results = [torch.empty(out_shape, dtype=q.dtype, device=q.device),
               torch.empty((b, h2, sq), dtype=torch.float32, device=q.device)]
    named = [("q", "x", q), ("k", "x", k), ("v", "x", v), ("lam", "x", lam)]
    if kv_len is not None:
        named.append(("kv_len", "i32", kv_len))
    named += [("out", "x", results[0]), ("lse", "f32", results[1])]
    if out_odd:
        results.append(torch.empty(out_shape, dtype=q.dtype, device=q.device))
        named.append(("out_odd", "x", results[2]))
    _launch(directory, named, sizes, q.device)
    return tuple(results)


def v2_lse_cuda(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    """diffattn::v2_lse on CUDA tensors: (out, lse [B, 2H, Sq] float32) from
    one forward kernel that also writes lse (see diffattn.v2)."""
    return _forward_saving(q, k, v, lam, kv_len, causal, scale, window_left, window_right,
                           out_odd=False)


def v2_train_cuda(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    """diffattn::_v2_forward_saved on CUDA tensors: (out, lse [B, 2H, Sq]
    float32, out_odd [B, Sq, H, Dv]) from one forward kernel that also
    writes lse and the pairs' second heads A_{2h+1}, which the backward
    then reads instead of recomputing them (diffattn.v2's ODS)."""
    return _forward_saving(q, k, v, lam, kv_len, causal, scale, window_left, window_right,
                           out_odd=True)


#: The accumulating backward's compiler options (defined in _gpu).
ACCUMULATE_OPTIONS = _gpu.ACCUMULATE_OPTIONS


def default_backward_options(device_index):
    """The backward kernels a call gets: on sm_90a and sm_90 (the portable
    kernels on Hopper, DIFFATTN_GPU_TARGET=sm_90) the accumulating ones
    (ACCUMULATE_OPTIONS; FlashAttention's default, measured faster on both:
    docs/performance.md, backward runs 22 and 49), unless
    ``torch.use_deterministic_algorithms(True)`` is in effect; elsewhere
    (sm_80, which has no bulk reductions; sm_100a, not measured), and then,
    the deterministic ones (no atomics, bit-identical across runs)."""
    if (_target_of(device_index) in ("sm_90a", "sm_90")
            and not torch.are_deterministic_algorithms_enabled()):
        return ACCUMULATE_OPTIONS
    return ()


def v2_backward_cuda(q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left,
                     window_right, out_odd=None):
    """diffattn::v2_backward on CUDA tensors: (dq, dk, dv, dlam) shaped and
    typed like q, k, v, lam, from the compiler's backward kernels
    (default_backward_options picks them). Errors name the tensor whose
    shape or dtype does not match the forward's configuration. With out_odd
    (v2_train_cuda's third result) the kernels read it instead of
    recomputing A_{2h+1}."""
    return backward_cuda(q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left,
                         window_right, options=default_backward_options(q.device.index),
                         out_odd=out_odd)


def backward_prepare(q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left,
                     window_right, options=(), out_odd=None):
    """Validates a backward call and builds or finds its kernels:
    (artifact directory, (B, Sq, Sk)). Errors name the tensor whose dtype,
    device or shape does not match the forward's configuration."""
    _validate(q, k, v, lam, kv_len)
    _check_tensor("out", out, (q.dtype,))
    _check_tensor("dout", dout, (q.dtype,))
    _check_tensor("lse", lse, (torch.float32,))
    saved = [("out", out), ("dout", dout), ("lse", lse)]
    if out_odd is not None:
        _check_tensor("out_odd", out_odd, (q.dtype,))
        saved.append(("out_odd", out_odd))
    for name, t in saved:
        if t.device != q.device:
            raise ValueError(f"{name}: on {t.device}, but q is on {q.device}")
    return _gpu.prepare_v2_backward(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), tuple(out.shape),
        tuple(dout.shape), tuple(lse.shape), _ELEM[q.dtype], _ELEM[lam.dtype], causal=causal,
        scale=scale, window=(window_left, window_right),
        kv_len_shape=None if kv_len is None else tuple(kv_len.shape),
        target=_target_of(q.device.index), options=tuple(options),
        out_odd_shape=None if out_odd is None else tuple(out_odd.shape))


def backward_cuda(q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left,
                  window_right, options=(), out_odd=None):
    """v2_backward_cuda with compiler options (`options`, as
    _gpu.prepare_v2_backward's: _gpu.ACCUMULATE_OPTIONS selects the
    accumulating kernels on sm_90 and later; `out_odd`, if given, the
    forward's A_{2h+1} as v2_train_cuda returns it)."""
    directory, sizes = backward_prepare(q, k, v, lam, out, dout, lse, kv_len, causal, scale,
                                        window_left, window_right, options, out_odd)
    grads = [torch.empty_like(x) for x in (q, k, v, lam)]
    named = [("q", "x", q), ("k", "x", k), ("v", "x", v), ("lam", "x", lam), ("out", "x", out),
             ("dout", "x", dout), ("lse", "f32", lse)]
    if kv_len is not None:
        named.append(("kv_len", "i32", kv_len))
    if out_odd is not None:
        named.append(("out_odd", "x", out_odd))
    named += list(zip(("dq", "dk", "dv", "dlam"), ("x",) * 4, grads))
    _launch(directory, named, sizes, q.device)
    return tuple(grads)


def v2_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
          kv_len: Optional[torch.Tensor], causal: bool, scale: Optional[float],
          window_left: int, window_right: int) -> torch.Tensor:
    return _run(q, k, v, lam, kv_len, causal, scale, window_left, window_right)


def _v2_fake(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    _same_device(q, k, v, lam, kv_len)
    b, sq, h2, _ = q.shape
    return q.new_empty((b, sq, h2 // 2, v.shape[3]))


# The op's schema is v2_op's signature. CUDA calls run the C++ kernel where
# the build made one (diffattn._torch_native: no Python per repeated call);
# otherwise the op is this Python custom op.
if not _torch_native.define_v2(v2_op, _v2_fake):
    v2_op = torch.library.custom_op("diffattn::v2", mutates_args=())(v2_op)
    v2_op.register_fake(_v2_fake)

# CPU tensors, diffattn::v2_lse and diffattn::v2_backward (CPU and CUDA
# kernels), and v2's autograd formula (training).
_torch_autograd.register(
    v2_lse_cuda, v2_backward_cuda, v2_train_cuda,
    "diffattn::_v2_train" if _torch_native.autograd_in_cpp() else "diffattn::v2",
    training_in_cpp=_torch_native.training_in_cpp())


@torch.library.custom_op("diffattn::v2_paged", mutates_args=())
def v2_paged_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                lam: torch.Tensor, kv_len: torch.Tensor, block_table: torch.Tensor,
                causal: bool, scale: Optional[float], window_left: int,
                window_right: int) -> torch.Tensor:
    """diffattn.v2 on a paged KV cache: k_cache, v_cache [NB, BS, Hkv, D],
    block_table [B, MB] int32, kv_len [B] int32 (see diffattn.v2)."""
    return _run(q, k_cache, v_cache, lam, kv_len, causal, scale, window_left, window_right,
                block_table=block_table)


@v2_paged_op.register_fake
def _v2_paged_fake(q, k_cache, v_cache, lam, kv_len, block_table, causal, scale, window_left,
                   window_right):
    _same_device(q, k_cache, v_cache, lam, kv_len, block_table)
    b, sq, h2, _ = q.shape
    return q.new_empty((b, sq, h2 // 2, v_cache.shape[3]))


def v2(q, k, v, lam, *, causal=False, scale=None, window=(-1, -1), kv_len=None, out=None,
       block_table=None):
    causal, scale, left, right = check_call(
        q, (("k", k), ("v", v), ("lam", lam)),
        (("kv_len", kv_len), ("block_table", block_table), ("out", out)), causal, scale, window)
    if block_table is not None and kv_len is None:
        raise ValueError("kv_len: required with block_table (a paged cache)")
    if out is not None:  # in-place form (tests poison the output): not the custom op
        return _run(q, k, v, lam, kv_len, causal, scale, left, right, out=out,
                    block_table=block_table)
    if block_table is not None:
        return torch.ops.diffattn.v2_paged(q, k, v, lam, kv_len, block_table, causal, scale,
                                           left, right)
    return torch.ops.diffattn.v2(q, k, v, lam, kv_len, causal, scale, left, right)


def _run_varlen(q, k, v, lam, cu_q, cu_k, max_q, max_k, causal, scale, window_left,
                window_right, out=None):
    _validate(q, k, v, lam, None)
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        _check_tensor(name, t, (torch.int32,))
        _check_device(q, name, t)
    directory, out_shape, sizes = _gpu.prepare_v2_varlen(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), tuple(cu_q.shape),
        tuple(cu_k.shape), _ELEM[q.dtype], _ELEM[lam.dtype], max_q, max_k, causal=causal,
        scale=scale, window=(window_left, window_right), target=_target_of(q.device.index))
    out = _output(out, out_shape, q)
    named = [("q", _ELEM[q.dtype], q), ("k", _ELEM[k.dtype], k), ("v", _ELEM[v.dtype], v),
             ("lam", _ELEM[lam.dtype], lam), ("cu_seqlens_q", "i32", cu_q),
             ("cu_seqlens_k", "i32", cu_k), ("out", _ELEM[out.dtype], out)]
    buffers = [(n, e, tuple(t.shape), t.data_ptr()) for n, e, t in named]
    stream = torch.cuda.current_stream(q.device).cuda_stream
    with torch.cuda.device(q.device):
        _gpu.launch_v2(directory, buffers, sizes, stream)
    return out


@torch.library.custom_op("diffattn::v2_varlen", mutates_args=())
def v2_varlen_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
                 cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                 max_seqlen_k: int, causal: bool, scale: Optional[float], window_left: int,
                 window_right: int) -> torch.Tensor:
    """diffattn.v2 on packed variable-length sequences: q [Tq, 2H, D],
    k/v [Tk, Hkv, D], lam [Tq, H], cu_seqlens [B + 1] int32 (see
    diffattn.v2_varlen). Rows past cu_seqlens_q[B] are left as allocated."""
    return _run_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                       causal, scale, window_left, window_right)


@v2_varlen_op.register_fake
def _v2_varlen_fake(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    causal, scale, window_left, window_right):
    _same_device(q, k, v, lam, cu_seqlens_q, cu_seqlens_k)
    return q.new_empty((q.shape[0], q.shape[1] // 2, v.shape[2]))


def v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
              causal=False, scale=None, window=(-1, -1), out=None):
    causal, scale, left, right = check_call(
        q, (("k", k), ("v", v), ("lam", lam), ("cu_seqlens_q", cu_seqlens_q),
            ("cu_seqlens_k", cu_seqlens_k)), (("out", out),), causal, scale, window)
    max_seqlen_q = _ops.check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _ops.check_max_seqlen("max_seqlen_k", max_seqlen_k)
    if out is not None:
        return _run_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                           max_seqlen_k, causal, scale, left, right, out=out)
    return torch.ops.diffattn.v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k,
                                        max_seqlen_q, max_seqlen_k, causal, scale, left, right)
