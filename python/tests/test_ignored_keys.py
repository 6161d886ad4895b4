"""Keys past kv_len are ignored on every path, even when the cache holds NaN
or Inf there (uninitialised cache memory is normal in serving): the float64
reference, the untiled oracle (--lowering=decompose), the tiled CPU kernel
and, where torch sees a CUDA GPU, the GPU kernels. No path may read such a
key into a product (0 * NaN is NaN)."""
import numpy as np
import pytest

import diffattn
from conftest import rel_l2

CPU_PATHS = ["reference", "decompose", "flash"]


def _gpu_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _run(path, q, k, v, lam, kv_len, causal):
    if path == "reference":
        return diffattn.reference.v2(q, k, v, lam, causal=causal, kv_len=kv_len)
    if path in ("decompose", "flash"):
        from diffattn import _cpu

        return _cpu.v2(q, k, v, lam, causal=causal, kv_len=kv_len.astype(np.int32),
                       lowering=path).astype(np.float64)
    import torch

    t = [torch.from_numpy(np.ascontiguousarray(x)).cuda().to(torch.bfloat16) for x in (q, k, v, lam)]
    out = torch.full((q.shape[0], q.shape[1], q.shape[2] // 2, v.shape[3]), float("nan"),
                     device="cuda", dtype=torch.bfloat16)
    diffattn.v2(*t, causal=causal, out=out,
                kv_len=torch.from_numpy(kv_len.astype(np.int32)).cuda())
    return out.double().cpu().numpy()


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_single_key_with_poisoned_tail(path, poison):
    # B=1, Sq=1, Smax=2, 2H=2, Hkv=1, D=1; kv_len=[1]: the one visible key has
    # k=1, v=2; lam=0 gives sigmoid 1/2, so out = 2 - 0.5 * 2 = 1.
    q = np.ones((1, 1, 2, 1), np.float32)
    k = np.array([1.0, poison], np.float32).reshape(1, 2, 1, 1)
    v = np.array([2.0, poison], np.float32).reshape(1, 2, 1, 1)
    lam = np.zeros((1, 1, 1), np.float32)
    out = _run(path, q, k, v, lam, np.array([1]), causal=True)
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(1.0, rel=1e-6)


PATHS = CPU_PATHS + [pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not _gpu_available(), reason="needs torch and a CUDA GPU")])]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("causal", [True, False])
def test_ragged_cache_with_nan_and_inf_tails(rng, path, causal):
    b, sq, smax, h2, hkv, d = 3, 4, 80, 8, 2, 64
    q = rng.standard_normal((b, sq, h2, d)).astype(np.float32)
    k = rng.standard_normal((b, smax, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, smax, hkv, d)).astype(np.float32)
    lam = rng.standard_normal((b, sq, h2 // 2)).astype(np.float32)
    kv_len = np.array([5, 80, 37])
    if path == "gpu":  # what the GPU sees: bf16 inputs
        q, k, v, lam = (x.astype(np.float32) for x in
                        (_bf16(q), _bf16(k), _bf16(v), _bf16(lam)))
    expected = diffattn.reference.v2(q, k, v, lam, causal=causal, kv_len=kv_len)
    for i, n in enumerate(kv_len):  # poison every key past kv_len
        k[i, n:] = np.nan if i % 2 else np.inf
        v[i, n:] = -np.inf if i % 2 else np.nan
    got = _run(path, q, k, v, lam, kv_len, causal)
    assert np.all(np.isfinite(got))
    assert rel_l2(got, expected) < (1e-2 if path == "gpu" else 1e-5)


def _bf16(x):
    """x rounded to bf16 (round to nearest even), as float32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)
