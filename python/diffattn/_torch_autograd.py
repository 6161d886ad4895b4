"""Training through ``torch.ops.diffattn.v2`` (issue 15): the op's CPU kernel
(float64 / float32 / float16 CPU tensors, run by the compiled CPU kernels;
float64 computes in float64 throughout, so ``torch.autograd.gradcheck``
runs with its default tolerances), the ops
``diffattn::v2_lse`` -> (out, lse) and ``diffattn::v2_backward`` -> (dq, dk,
dv, dlam), their fake (meta) implementations for torch.compile, and v2's
autograd formula (``torch.library.register_autograd``), so that
``loss.backward()`` works eagerly and under torch.compile.

Shapes and layouts are diffattn.v2's: q [B, Sq, 2H, D], k [B, Sk, Hkv, D],
v [B, Sk, Hkv, Dv], lam [B, Sq, H], out and dout [B, Sq, H, Dv], lse [B, 2H,
Sq] float32 (float64 for float64 q); each gradient has its input's shape and
dtype.

Where v2's Autograd kernel is the C++ one (``diffattn._torch_native``), a
call that needs grad runs ``diffattn::_v2_train``, the forward with lse
(v2_lse's kernels), and keeps lse for the backward; otherwise (the
Python custom op) the op returns only ``out`` and the backward first
recomputes the log-sum-exp (``diffattn::v2_lse``, one more forward pass).
The backward then runs the compiler's backward kernels: on CPU tensors the
tiled CPU kernel (blocks of 64 query rows x 64 keys), on CUDA tensors the
portable strategy's three GPU kernels (``diffattn._torch`` registers their
CUDA implementations). The backward is
not itself differentiable (no double backward).
"""

from typing import Optional, Tuple

import torch

from . import _cpu

_CPU_DTYPES = (torch.float64, torch.float32, torch.float16)


def lse_dtype(dtype):
    """The log-sum-exp's dtype for q of `dtype`: the kernels' accumulator
    type, float64 for float64, else float32 (CUDA: bf16/f16, so float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _numpy(name, t, dtypes=_CPU_DTYPES):
    """`t` (a CPU tensor of one of `dtypes`) as a contiguous numpy array."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise NotImplementedError(
            f"{name}: on {t.device}; diffattn's ops run on CPU and CUDA tensors")
    if t.dtype not in dtypes:
        why = " (numpy has no bfloat16)" if t.dtype == torch.bfloat16 else ""
        raise TypeError(f"{name}: CPU tensors must be {' or '.join(map(str, dtypes))}{why}, "
                        f"got {t.dtype}")
    return t.detach().contiguous().numpy()


def _inputs(q, k, v, lam, kv_len):
    arrays = [_numpy(n, t) for n, t in (("q", q), ("k", k), ("v", v), ("lam", lam))]
    arrays.append(None if kv_len is None else _numpy("kv_len", kv_len, (torch.int32,)))
    return arrays


def _v2_cpu(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    q_, k_, v_, lam_, kv_ = _inputs(q, k, v, lam, kv_len)
    return torch.from_numpy(_cpu.v2(q_, k_, v_, lam_, causal=causal, scale=scale,
                                    window=(window_left, window_right), kv_len=kv_))


@torch.library.custom_op("diffattn::v2_lse", mutates_args=())
def v2_lse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
              kv_len: Optional[torch.Tensor], causal: bool, scale: Optional[float],
              window_left: int, window_right: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """diffattn.v2 and its log-sum-exp: (out [B, Sq, H, Dv], lse [B, 2H, Sq]
    float32, float64 for float64 q; -inf where a row sees no key). CPU
    tensors here; CUDA tensors run diffattn._torch.v2_lse_cuda."""
    q_, k_, v_, lam_, kv_ = _inputs(q, k, v, lam, kv_len)
    out, lse = _cpu.v2(q_, k_, v_, lam_, causal=causal, scale=scale,
                       window=(window_left, window_right), kv_len=kv_, return_lse=True)
    return torch.from_numpy(out), torch.from_numpy(lse)


@v2_lse_op.register_fake
def _v2_lse_fake(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    b, sq, h2, _ = q.shape
    return (q.new_empty((b, sq, h2 // 2, v.shape[3])),
            q.new_empty((b, h2, sq), dtype=lse_dtype(q.dtype)))


@torch.library.custom_op("diffattn::_v2_forward_saved", mutates_args=())
def v2_forward_saved_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
                        kv_len: Optional[torch.Tensor], causal: bool, scale: Optional[float],
                        window_left: int, window_right: int
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training forward: (out, lse, out_odd). On CUDA (diffattn._torch.
    v2_train_cuda) out_odd [B, Sq, H, Dv] holds the pairs' second heads
    A_{2h+1}, which the backward reads instead of recomputing them; here
    (CPU tensors, whose backward recomputes them) it is empty."""
    out, lse = v2_lse_op(q, k, v, lam, kv_len, causal, scale, window_left, window_right)
    return out, lse, q.new_empty((0,))


@v2_forward_saved_op.register_fake
def _v2_forward_saved_fake(q, k, v, lam, kv_len, causal, scale, window_left, window_right):
    out, lse = _v2_lse_fake(q, k, v, lam, kv_len, causal, scale, window_left, window_right)
    return out, lse, (out.new_empty(out.shape) if q.device.type == "cuda" else q.new_empty((0,)))


@torch.library.custom_op("diffattn::v2_backward", mutates_args=())
def v2_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
                   out: torch.Tensor, dout: torch.Tensor, lse: torch.Tensor,
                   kv_len: Optional[torch.Tensor], causal: bool, scale: Optional[float],
                   window_left: int, window_right: int, out_odd: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """diffattn.v2_backward: (dq, dk, dv, dlam) shaped and typed like q, k,
    v, lam (see diffattn.v2_backward). CPU tensors here (CUDA tensors run
    diffattn._torch.v2_backward_cuda); errors name the tensor that does not
    match the forward's configuration. `out_odd`, the forward's A_{2h+1}
    shaped like out (diffattn::_v2_forward_saved on CUDA), spares the CUDA
    kernels its recomputation; the CPU kernels recompute it (only its
    shape is checked here)."""
    if out_odd is not None and tuple(out_odd.shape) != tuple(out.shape):
        raise ValueError(f"out_odd: expected shape {tuple(out.shape)} (as out), "
                         f"got {tuple(out_odd.shape)}")
    q_, k_, v_, lam_, kv_ = _inputs(q, k, v, lam, kv_len)
    grads = _cpu.v2_backward(q_, k_, v_, lam_, _numpy("out", out), _numpy("dout", dout),
                             _numpy("lse", lse, (lse_dtype(q.dtype),)), causal=causal,
                             scale=scale,
                             window=(window_left, window_right), kv_len=kv_)
    return tuple(torch.from_numpy(g) for g in grads)


@v2_backward_op.register_fake
def _v2_backward_fake(q, k, v, lam, out, dout, lse, kv_len, causal, scale, window_left,
                      window_right, out_odd=None):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(lam))


def _setup_context(ctx, inputs, output):
    q, k, v, lam, kv_len, causal, scale, window_left, window_right = inputs
    ctx.save_for_backward(q, k, v, lam, kv_len, output)
    ctx.config = (causal, scale, window_left, window_right)


def _gradients(ctx, q, k, v, lam, kv_len, out, lse, dout, out_odd=None):
    """v2's input gradients (and None for its options) from the saved
    tensors, lse and, where the forward saved it, out_odd."""
    if out_odd is not None and out_odd.numel() == 0:
        out_odd = None  # not saved (CPU): the backward recomputes A_{2h+1}
    dq, dk, dv, dlam = torch.ops.diffattn.v2_backward(
        q, k, v, lam, out, dout.contiguous(), lse, kv_len, *ctx.config, out_odd)
    return dq, dk, dv, dlam, None, None, None, None, None


def _backward(ctx, dout):
    q, k, v, lam, kv_len, out = ctx.saved_tensors
    _, lse = torch.ops.diffattn.v2_lse(q, k, v, lam, kv_len, *ctx.config)
    return _gradients(ctx, q, k, v, lam, kv_len, out, lse, dout)


def _setup_context_train(ctx, inputs, output):
    q, k, v, lam, kv_len, causal, scale, window_left, window_right = inputs
    out, lse, out_odd = output
    ctx.mark_non_differentiable(lse, out_odd)
    # lse and out_odd get no gradient: without this autograd would fill a
    # zero tensor of each shape for the backward on every step (two fill
    # kernels, about 70 us of host time each on an H200 host,
    # host_cost_train.py's profile).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, lam, kv_len, out, lse, out_odd)
    ctx.config = (causal, scale, window_left, window_right)


def _backward_train(ctx, dout, _dlse, _dout_odd):
    # lse and out_odd came with the forward (diffattn::_v2_train): no second
    # forward, and on CUDA no recomputed A_{2h+1}.
    if dout is None:  # out took no part in the loss (grads not materialised)
        return (None,) * 9
    q, k, v, lam, kv_len, out, lse, out_odd = ctx.saved_tensors
    return _gradients(ctx, q, k, v, lam, kv_len, out, lse, dout, out_odd)


def register(v2_lse_cuda, v2_backward_cuda, v2_train_cuda, formula_op="diffattn::v2",
             training_in_cpp=False):
    """Registers v2's CPU kernel, the CUDA kernels of v2_lse and v2_backward
    (``diffattn._torch``'s launchers) and v2's autograd formula (once), on
    `formula_op`: diffattn::v2 itself, or diffattn::_v2_train where v2's
    Autograd kernel is the C++ one (``_torch_native.autograd_in_cpp``),
    which calls it for the calls that need grad. With `training_in_cpp`
    (``_torch_native.training_in_cpp``) the C++ library already serves the
    CUDA calls of _v2_forward_saved and v2_backward, and their Python CUDA
    kernels are not registered (they would replace the C++ ones)."""
    torch.library.register_kernel("diffattn::v2", "cpu", _v2_cpu)
    torch.library.register_kernel("diffattn::v2_lse", "cuda", v2_lse_cuda)
    if not training_in_cpp:
        torch.library.register_kernel("diffattn::v2_backward", "cuda", v2_backward_cuda)
        torch.library.register_kernel("diffattn::_v2_forward_saved", "cuda", v2_train_cuda)
    if formula_op == "diffattn::_v2_train":
        # (out, lse, out_odd) = the training forward; v2's C++ Autograd
        # kernel returns out.
        torch.library.register_autograd(formula_op, _backward_train,
                                        setup_context=_setup_context_train)
    else:
        torch.library.register_autograd(formula_op, _backward, setup_context=_setup_context)
