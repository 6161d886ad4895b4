"""diffattn: differential attention (Differential Transformer V1 and V2).

The package is laid out by the CMake build under build/python_packages.

- ``diffattn.v2(q, k, v, lam, *, causal=False, scale=None, window=(-1, -1),
  kv_len=None, out=None)`` and ``diffattn.v1(q, k, v, lam, norm_weight, *,
  lambda_init, causal=False, scale=None, eps=1e-5, out=None)``: numpy arrays
  (float64, float32, float16, C-contiguous BSHD) run on the CPU through a
  kernel that diffattn-compile builds for the call's static signature and
  caches (see ``diffattn._compiler``); float64 computes in float64. ``out``, when given, is written in place.
- CUDA torch tensors (bf16/f16, contiguous BSHD) run the GPU kernel through
  ``torch.ops.diffattn.v2`` (a torch.library custom op with a fake
  implementation, so torch.compile keeps it in its graph), launched by the
  runtime library on torch's current stream.
- ``diffattn.v2(..., return_lse=True)`` -> ``(out, lse)`` and
  ``diffattn.v2_backward(q, k, v, lam, out, dout, lse, ...)`` -> ``(dq, dk,
  dv, dlam)``: training on the CPU (numpy arrays); with PyTorch,
  ``torch.ops.diffattn.v2`` has an autograd formula for CPU tensors
  (float64 ones compute in float64: ``torch.autograd.gradcheck`` works).
- ``diffattn.reference.v2`` / ``.v2_backward`` / ``.v1``: float64 numpy
  reference implementations of the ops' semantics, for tests.
- ``diffattn.__version__``: the project version the build recorded.
"""

import os
import sys

# The build generates _build_config.py when it lays the package out; the
# source tree's python/diffattn has none and cannot run (it does not know
# where the compiler and the runtime library are).
try:
    from ._build_config import VERSION as __version__
except ModuleNotFoundError as e:
    if e.name != f"{__name__}._build_config":
        raise
    raise ImportError(
        f"diffattn: {os.path.dirname(os.path.abspath(__file__))} is the source tree's "
        f"package, which cannot run before the build lays it out (it has no "
        f"_build_config.py). Build the project with `bash scripts/run.sh setup` (which "
        f"also makes the built package importable), or by hand as README says "
        f"(`cmake -G Ninja -S . -B build -DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir && "
        f"cmake --build build`) and put build/python_packages on PYTHONPATH") from None

from . import _ops, reference
from ._compiler import CacheError, CompileError


def _is_numpy(x):
    import numpy as np

    return isinstance(x, np.ndarray)


def _is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def v2(q, k, v, lam, *, causal=False, scale=None, window=(-1, -1), kv_len=None, out=None,
       block_table=None, return_lse=False):
    """Differential attention V2 (see SPEC.md): numpy arrays run on the CPU,
    CUDA torch tensors (bf16/f16) on the GPU through ``torch.ops.diffattn.v2``.

    With ``block_table`` ([B, MB] int32) k and v are a paged KV cache
    [NB, BS, Hkv, D] (BS a multiple of 16, vLLM's layout): key t of sequence b
    is k[block_table[b, t // BS], t % BS]; ``kv_len`` ([B] int32) is then
    required, and only blocks below kv_len[b] are read (they must lie in
    [0, NB): a ValueError on the CPU, a device-side assertion on the GPU).

    With ``return_lse`` (a bool; contiguous caches; on CUDA tensors no
    ``out=``) the call returns
    ``(out, lse)``: ``lse`` [B, 2H, Sq] float32 (float64 for float64
    arrays, which compute in float64 throughout), the natural-log sum of
    exp(scaled, masked scores) of every query head's row (-inf for a row that
    sees no key), what a backward pass needs. On CUDA tensors the forward
    kernel writes it: sm_90a's wgmma kernel (with ``kv_len``, the portable
    row-block kernel), the portable strategy's row-block kernel elsewhere."""
    if _is_torch(q):
        from . import _torch

        if _ops.check_bool("return_lse", return_lse):
            if out is not None or block_table is not None:
                raise ValueError("return_lse: not supported with out= or block_table "
                                 "(a paged cache)")
            causal, scale, left, right = _torch.check_call(
                q, (("k", k), ("v", v), ("lam", lam)), (("kv_len", kv_len),), causal, scale,
                window)
            return sys.modules["torch"].ops.diffattn.v2_lse(q, k, v, lam, kv_len, causal,
                                                            scale, left, right)
        return _torch.v2(q, k, v, lam, causal=causal, scale=scale, window=window,
                         kv_len=kv_len, out=out, block_table=block_table)
    if not _is_numpy(q):
        raise TypeError(f"q: expected a numpy.ndarray (CPU) or a CUDA torch.Tensor (GPU), "
                        f"got {type(q).__name__}")
    from . import _cpu

    return _cpu.v2(q, k, v, lam, causal=causal, scale=scale, window=window,
                   kv_len=kv_len, out=out, block_table=block_table, return_lse=return_lse)


def v2_backward(q, k, v, lam, out, dout, lse, *, causal=False, scale=None, window=(-1, -1),
                kv_len=None):
    """Gradients of :func:`v2`: ``(dq, dk, dv, dlam)``, each shaped and typed
    like q, k, v and lam, from the forward's inputs and options, its output
    ``out`` [B, Sq, H, Dv], the output's gradient ``dout`` (same shape and
    dtype) and its log-sum-exp ``lse`` [B, 2H, Sq] float32, float64 for
    float64 q (``v2(..., return_lse=True)``). The formula is FlashAttention-2's backward with the
    differential epilogue's chain rule (diffattn.v2_backward in
    docs/DiffAttnOps.md; ``diffattn.reference.v2_backward`` is the float64
    reference): dk and dv sum over the query heads of each KV group; masked
    keys, keys at t >= kv_len[b] and rows that see no key get zero
    gradients. ``causal``, ``scale``, ``window`` and ``kv_len`` must be the
    forward's: only the shapes and dtypes of the saved tensors can be
    checked, so an ``lse`` from another configuration gives wrong
    gradients without an error (as in FlashAttention).

    numpy arrays (float64, float32, float16) run on the CPU through the
    compiler's backward kernel, tiled over blocks of 64 query rows x 64
    keys, skipping key blocks a row block cannot see (memory B x 2H x 64 x
    64 f32, f64 for float64, per intermediate). CUDA torch tensors
    (bfloat16, float16; D = Dv = 64 or 128) run the compiler's GPU kernels
    through ``torch.ops.diffattn.v2_backward`` (docs/training.md): on
    Hopper (sm_90a, and the portable sm_90 kernels) the kernels with dq
    accumulated in float32 by reductions (row statistics, dk/dv with dq,
    dq's conversion; the order
    of dq's sums varies between runs, as in FlashAttention), or with
    ``torch.use_deterministic_algorithms(True)`` the deterministic ones
    (row statistics, dq, dk/dv; no atomics, bit-identical across runs),
    which other GPUs always get. Raises TypeError /
    ValueError naming the tensor whose dtype or shape does not match the
    forward's configuration, before anything is compiled."""
    if _is_torch(q):
        from . import _torch  # registers the ops

        causal, scale, left, right = _torch.check_call(
            q, (("k", k), ("v", v), ("lam", lam), ("out", out), ("dout", dout), ("lse", lse)),
            (("kv_len", kv_len),), causal, scale, window)
        return sys.modules["torch"].ops.diffattn.v2_backward(
            q, k, v, lam, out, dout, lse, kv_len, causal, scale, left, right)
    if not _is_numpy(q):
        raise TypeError(f"q: expected a numpy.ndarray (CPU) or a torch.Tensor, "
                        f"got {type(q).__name__}")
    from . import _cpu

    return _cpu.v2_backward(q, k, v, lam, out, dout, lse, causal=causal, scale=scale,
                            window=window, kv_len=kv_len)


def v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
              causal=False, scale=None, window=(-1, -1), out=None):
    """Differential attention V2 on packed variable-length sequences, as
    ``flash_attn_varlen_func`` takes them: q [Tq, 2H, D], k/v [Tk, Hkv, D],
    lam [Tq, H], ``cu_seqlens_q``/``_k`` [B + 1] int32 offsets (start at 0,
    non-decreasing), ``max_seqlen_q``/``_k`` ints at least every sequence's
    length. Sequence b attends q[cu_q[b]:cu_q[b+1]] to k[cu_k[b]:cu_k[b+1]]
    (masks aligned per sequence). Returns [Tq, H, Dv]. numpy arrays run on
    the CPU (bad offsets are a ValueError), CUDA tensors on the GPU (a
    device-side assertion)."""
    if _is_torch(q):
        from . import _torch

        return _torch.v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k, causal=causal, scale=scale, window=window,
                                out=out)
    if not _is_numpy(q):
        raise TypeError(f"q: expected a numpy.ndarray (CPU) or a CUDA torch.Tensor (GPU), "
                        f"got {type(q).__name__}")
    from . import _cpu

    return _cpu.v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          causal=causal, scale=scale, window=window, out=out)


def v1(q, k, v, lam, norm_weight, *, lambda_init, causal=False, scale=None, eps=1e-5, out=None):
    """Differential attention V1 (see SPEC.md): numpy arrays run on the CPU."""
    if not _is_numpy(q):
        raise TypeError(f"q: expected a numpy.ndarray (V1 runs on the CPU; its GPU kernels "
                        f"are not implemented), got {type(q).__name__}")
    from . import _cpu

    return _cpu.v1(q, k, v, lam, norm_weight, lambda_init=lambda_init, causal=causal,
                   scale=scale, eps=eps, out=out)


if "torch" in sys.modules:  # make torch.ops.diffattn.v2 available right away
    try:
        from . import _torch  # noqa: F401
    except Exception:  # torch without torch.library custom ops: registered on first use
        pass

__all__ = ["v1", "v2", "v2_backward", "v2_varlen", "reference", "CacheError", "CompileError",
           "__version__"]
