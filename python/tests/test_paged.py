"""diffattn.v2 on a paged KV cache (block_table, vLLM's layout): the CPU
lowerings and, where torch sees a CUDA GPU, the GPU kernels agree with the
float64 reference on caches whose blocks are scattered over the pool, with
block-table entries past each sequence's last block holding an
out-of-range sentinel; the same computation as on the contiguous cache;
bad block tables are errors."""
import numpy as np
import pytest

import diffattn
from conftest import rel_l2

SENTINEL = -7


def _gpu_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def paged_inputs(rng, b, sq, h2, hkv, d, bs, kv_len, pool_extra=3, dtype=np.float32):
    """q, k_cache, v_cache, lam, kv_len, block_table and the contiguous
    caches they hold: each sequence's blocks at random places of the pool,
    the rest of its table row the sentinel."""
    kv_len = np.asarray(kv_len, np.int32)
    mb = max(int((kv_len.max() + bs - 1) // bs), 1) + 1
    used = [(int(n) + bs - 1) // bs for n in kv_len]
    nb = sum(used) + pool_extra
    perm = rng.permutation(nb)
    table = np.full((b, mb), SENTINEL, np.int32)
    k_cache = rng.standard_normal((nb, bs, hkv, d)).astype(dtype)
    v_cache = rng.standard_normal((nb, bs, hkv, d)).astype(dtype)
    k = np.zeros((b, mb * bs, hkv, d), dtype)
    v = np.zeros((b, mb * bs, hkv, d), dtype)
    j = 0
    for i in range(b):
        for s in range(used[i]):
            table[i, s] = perm[j]
            k[i, s * bs:(s + 1) * bs] = k_cache[perm[j]]
            v[i, s * bs:(s + 1) * bs] = v_cache[perm[j]]
            j += 1
    q = rng.standard_normal((b, sq, h2, d)).astype(dtype)
    lam = rng.standard_normal((b, sq, h2 // 2)).astype(dtype)
    return q, k_cache, v_cache, lam, kv_len, table, k, v


CASES = [  # (B, Sq, 2H, Hkv, D, BS, kv_len)
    (3, 1, 8, 2, 32, 16, [5, 80, 37]),
    (2, 4, 8, 2, 32, 32, [4, 90]),        # chunked prefill against the cache
    (2, 3, 16, 2, 16, 16, [0, 33]),       # an empty sequence, G = 8
]


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_cpu_paged_matches_reference_and_contiguous(rng, case, lowering):
    from diffattn import _cpu

    b, sq, h2, hkv, d, bs, kv_len = case
    q, kc, vc, lam, lens, table, k, v = paged_inputs(rng, b, sq, h2, hkv, d, bs, kv_len)
    ref = diffattn.reference.v2(q, kc, vc, lam, causal=True, kv_len=lens, block_table=table)
    contiguous = diffattn.reference.v2(q, k, v, lam, causal=True, kv_len=lens)
    assert rel_l2(ref, contiguous) == 0.0
    out = _cpu.v2(q, kc, vc, lam, causal=True, kv_len=lens, block_table=table, lowering=lowering)
    assert np.all(np.isfinite(out))
    assert rel_l2(out, ref) < 1e-5


def test_cpu_paged_window(rng):
    q, kc, vc, lam, lens, table, k, v = paged_inputs(rng, 2, 4, 8, 2, 32, 16, [50, 70])
    ref = diffattn.reference.v2(q, k, v, lam, window=(20, 0), kv_len=lens)
    out = diffattn.v2(q, kc, vc, lam, window=(20, 0), kv_len=lens, block_table=table)
    assert rel_l2(out, ref) < 1e-5


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda t: t.__setitem__((1, 0), 10_000), ValueError,
     r"block_table: entry \[1, 0\] = 10000 is outside the pool"),
    (lambda t: t.__setitem__((0, 0), -1), ValueError, r"block_table: entry \[0, 0\] = -1"),
], ids=["past-pool", "negative"])
def test_cpu_block_table_outside_the_pool_is_a_value_error(rng, mutate, exc, match):
    q, kc, vc, lam, lens, table, _, _ = paged_inputs(rng, 2, 1, 8, 2, 32, 16, [20, 40])
    mutate(table)
    with pytest.raises(exc, match=match):
        diffattn.v2(q, kc, vc, lam, kv_len=lens, block_table=table)
    with pytest.raises(exc, match="block_table: entry"):
        diffattn.reference.v2(q, kc, vc, lam, kv_len=lens, block_table=table)


def test_cpu_paged_argument_errors(rng):
    q, kc, vc, lam, lens, table, _, _ = paged_inputs(rng, 2, 1, 8, 2, 32, 16, [20, 40])
    with pytest.raises(ValueError, match="kv_len: required with block_table"):
        diffattn.v2(q, kc, vc, lam, block_table=table)
    with pytest.raises(TypeError, match="block_table: expected a 2-D int32"):
        diffattn.v2(q, kc, vc, lam, kv_len=lens, block_table=table.astype(np.int64))
    with pytest.raises(ValueError, match=r"kv_len: every value must lie in \[0, Sk = 64\]"):
        diffattn.v2(q, kc, vc, lam, kv_len=np.array([20, 65], np.int32), block_table=table)
    bad_bs = np.zeros((kc.shape[0], 8, 2, 32), np.float32)
    with pytest.raises(ValueError, match="k: the block size .* multiple of 16, got 8"):
        diffattn.v2(q, bad_bs, bad_bs, lam, kv_len=lens, block_table=table)


GPU = pytest.mark.skipif(not _gpu_available(), reason="needs torch and a CUDA GPU")


def _torch_inputs(rng, b, sq, hkv, bs, kv_len, d=128, h2=32):
    import torch

    arrays = paged_inputs(rng, b, sq, h2, hkv, d, bs, kv_len)
    q, kc, vc, lam, lens, table, k, v = arrays
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).cuda()  # noqa: E731
    bf = lambda x: t(x).to(torch.bfloat16)  # noqa: E731
    return (bf(q), bf(kc), bf(vc), bf(lam), t(lens), t(table)), arrays


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("b,sq,bs,kv_len", [(3, 1, 16, [5, 300, 137]), (2, 4, 256, [4, 700]),
                                            (4, 1, 64, [1, 64, 65, 1000])])
def test_gpu_paged_matches_reference(rng, b, sq, bs, kv_len):
    import torch

    (q, kc, vc, lam, lens, table), arrays = _torch_inputs(rng, b, sq, 8, bs, kv_len)
    out = torch.full((b, sq, 16, 128), float("nan"), device="cuda", dtype=torch.bfloat16)
    diffattn.v2(q, kc, vc, lam, causal=True, kv_len=lens, block_table=table, out=out)
    ref = diffattn.reference.v2(*(x.float().cpu().numpy() for x in (q, kc, vc, lam)),
                                causal=True, kv_len=arrays[4], block_table=arrays[5])
    got = out.double().cpu().numpy()
    assert np.all(np.isfinite(got))
    assert rel_l2(got, ref) < 1e-2
    via_op = diffattn.v2(q, kc, vc, lam, causal=True, kv_len=lens, block_table=table)
    assert torch.equal(via_op, out)


_BAD_TABLE_CHILD = r"""
import sys, numpy as np, torch, diffattn
sys.path.insert(0, sys.argv[1])
from test_paged import paged_inputs
rng = np.random.default_rng(0)
q, kc, vc, lam, lens, table, _, _ = paged_inputs(rng, 2, 1, 32, 8, 128, 16, [20, 40])
table[1, 1] = int(sys.argv[2])
t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).cuda()
bf = lambda x: t(x).to(torch.bfloat16)
out = diffattn.v2(bf(q), bf(kc), bf(vc), bf(lam), causal=True, kv_len=t(lens), block_table=t(table))
try:
    torch.cuda.synchronize()
except Exception as e:
    print("ERROR:", e)
    sys.exit(3)
print("FINITE:", bool(torch.isfinite(out).all()))
"""


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("entry", [10_000, -3])
def test_gpu_block_table_outside_the_pool_is_a_device_side_error(entry):
    """An entry for a key below kv_len that points outside the pool is
    caught like an out-of-range kv_len: a device-side assertion naming
    block_table, surfacing at the next synchronisation."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", _BAD_TABLE_CHILD, here, str(entry)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "device-side assert" in r.stdout
    assert "block_table[b, t / BS] outside the pool" in r.stdout + r.stderr
