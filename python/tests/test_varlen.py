"""diffattn.v2_varlen: packed variable-length sequences (flash_attn_varlen_func's
layout) on the CPU lowerings and, where torch sees a CUDA GPU, the GPU
kernels, against the float64 reference (sequence by sequence diffattn.v2,
masks aligned per sequence); bad offsets are errors."""
import numpy as np
import pytest

import diffattn
from conftest import rel_l2


def _gpu_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def packed_inputs(rng, lq, lk, h2, hkv, d, pad_q=2, pad_k=1, dtype=np.float32):
    """Packed q, k, v, lam (with `pad_q` / `pad_k` tokens past the last
    sequence) and the offsets of sequences of lengths `lq` / `lk`."""
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    tq, tk = int(cq[-1]) + pad_q, int(ck[-1]) + pad_k
    q = rng.standard_normal((tq, h2, d)).astype(dtype)
    k = rng.standard_normal((tk, hkv, d)).astype(dtype)
    v = rng.standard_normal((tk, hkv, d)).astype(dtype)
    lam = rng.standard_normal((tq, h2 // 2)).astype(dtype)
    return q, k, v, lam, cq, ck


CASES = [  # (query lengths, key lengths, causal, window)
    ([5, 0, 17, 3], [9, 4, 17, 40], True, (-1, -1)),   # Sq < Sk, an empty sequence
    ([12, 30], [12, 7], True, (-1, -1)),                # Sq > Sk: rows seeing no key
    ([8, 21, 1], [8, 21, 33], False, (-1, -1)),
    ([40, 9], [40, 50], False, (10, 3)),                # sliding window
]


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_cpu_varlen_matches_reference(rng, case, lowering):
    from diffattn import _cpu

    lq, lk, causal, window = case
    q, k, v, lam, cq, ck = packed_inputs(rng, lq, lk, 8, 2, 32)
    ref = diffattn.reference.v2_varlen(q, k, v, lam, cq, ck, causal=causal, window=window)
    out = np.full((q.shape[0], 4, 32), np.nan, np.float32)
    _cpu.v2_varlen(q, k, v, lam, cq, ck, max(lq), max(lk), causal=causal, window=window,
                   out=out, lowering=lowering)
    n = int(cq[-1])
    assert np.all(np.isfinite(out[:n]))
    assert np.all(np.isnan(out[n:]))            # tokens of no sequence are not written
    assert rel_l2(out[:n], ref[:n]) < 1e-5


def test_varlen_equals_batched_for_equal_lengths(rng):
    b, s = 3, 24
    q, k, v, lam, cq, ck = packed_inputs(rng, [s] * b, [s] * b, 8, 2, 32, pad_q=0, pad_k=0)
    packed = diffattn.v2_varlen(q, k, v, lam, cq, ck, s, s, causal=True)
    batched = diffattn.v2(q.reshape(b, s, 8, 32), k.reshape(b, s, 2, 32),
                          v.reshape(b, s, 2, 32), lam.reshape(b, s, 4), causal=True)
    assert rel_l2(packed.reshape(b, s, 4, 32), batched.astype(np.float64)) < 1e-6


@pytest.mark.parametrize("cq,ck,max_q,match", [
    ([0, 5, 3, 10], [0, 5, 8, 12], 17, "cu_seqlens_q: must be non-decreasing, got 5 then 3"),
    ([1, 5, 9, 12], [0, 5, 8, 12], 17, "cu_seqlens_q: must start at 0"),
    ([0, 5, 9, 99], [0, 5, 8, 12], 99, "cu_seqlens_q: ends at 99, past the"),
    ([0, 5, 9, 12], [0, 5, 8, 12], 4, "a sequence of 5 tokens is longer than max_seqlen = 4"),
], ids=["decreasing", "start", "past-total", "max-seqlen"])
def test_cpu_bad_offsets_are_value_errors(rng, cq, ck, max_q, match):
    q, k, v, lam, _, _ = packed_inputs(rng, [5, 4, 3], [5, 3, 4], 8, 2, 32)
    with pytest.raises(ValueError, match=match):
        diffattn.v2_varlen(q, k, v, lam, np.array(cq, np.int32), np.array(ck, np.int32),
                           max_q, 17)


def test_cpu_varlen_argument_errors(rng):
    q, k, v, lam, cq, ck = packed_inputs(rng, [5, 4], [5, 3], 8, 2, 32)
    with pytest.raises(TypeError, match="cu_seqlens_q: expected a 1-D int32"):
        diffattn.v2_varlen(q, k, v, lam, cq.astype(np.int64), ck, 5, 5)
    with pytest.raises(ValueError, match=r"cu_seqlens_k: expected shape \(3,\)"):
        diffattn.v2_varlen(q, k, v, lam, cq, ck[:2], 5, 5)
    with pytest.raises(ValueError, match=r"max_seqlen_q: must lie in \[0, 2147483647\]"):
        diffattn.v2_varlen(q, k, v, lam, cq, ck, -1, 5)
    with pytest.raises(ValueError, match=r"max_seqlen_k: must lie in \[0, 2147483647\]"):
        diffattn.v2_varlen(q, k, v, lam, cq, ck, 5, 2**64 + 5)
    with pytest.raises(TypeError, match="max_seqlen_q: expected an int, got float"):
        diffattn.v2_varlen(q, k, v, lam, cq, ck, 5.0, 5)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: expected \[B \+ 1\] offsets, at least one"):
        empty = np.zeros(0, np.int32)
        diffattn.v2_varlen(q, k, v, lam, empty, empty, 5, 5)
    # numpy integers are ints (rows past cu_seqlens_q[B] are left as allocated).
    out = diffattn.v2_varlen(q, k, v, lam, cq, ck, np.int64(5), np.int32(5))
    rows = int(cq[-1])
    assert np.array_equal(out[:rows], diffattn.v2_varlen(q, k, v, lam, cq, ck, 5, 5)[:rows])
    with pytest.raises(ValueError, match=r"lam: expected shape \(11, 4\)"):
        diffattn.v2_varlen(q, k, v, lam[:3], cq, ck, 5, 5)


GPU = pytest.mark.skipif(not _gpu_available(), reason="needs torch and a CUDA GPU")


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_varlen_matches_reference(rng, causal):
    import torch

    lq, lk = [77, 1, 0, 300, 129], [90, 64, 5, 300, 64]
    q, k, v, lam, cq, ck = packed_inputs(rng, lq, lk, 32, 8, 128)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).cuda()  # noqa: E731
    bf = [t(x).to(torch.bfloat16) for x in (q, k, v, lam)]
    out = torch.full((q.shape[0], 16, 128), float("nan"), device="cuda", dtype=torch.bfloat16)
    diffattn.v2_varlen(*bf, t(cq), t(ck), max(lq), max(lk), causal=causal, out=out)
    ref = diffattn.reference.v2_varlen(*(x.float().cpu().numpy() for x in bf), cq, ck,
                                       causal=causal)
    n = int(cq[-1])
    got = out.double().cpu().numpy()
    assert np.all(np.isfinite(got[:n]))
    assert rel_l2(got[:n], ref[:n]) < 1e-2
    via_op = diffattn.v2_varlen(*bf, t(cq), t(ck), max(lq), max(lk), causal=causal)
    assert torch.equal(via_op[:n], out[:n])


_BAD_OFFSETS_CHILD = r"""
import sys, numpy as np, torch, diffattn
cq = torch.tensor([int(x) for x in sys.argv[1].split(",")], dtype=torch.int32, device="cuda")
ck = torch.tensor([0, 10, 20], dtype=torch.int32, device="cuda")
q = torch.randn(20, 32, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(20, 8, 128, device="cuda", dtype=torch.bfloat16)
lam = torch.randn(20, 16, device="cuda", dtype=torch.bfloat16)
out = diffattn.v2_varlen(q, k, k, lam, cq, ck, 10, 10, causal=True)
try:
    torch.cuda.synchronize()
except Exception as e:
    print("ERROR:", e)
    sys.exit(3)
print("FINITE:", bool(torch.isfinite(out).all()))
"""


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("offsets", ["0,12,8", "0,10,99", "0,15,20"],
                         ids=["decreasing", "past-total", "past-max-seqlen"])
def test_gpu_bad_offsets_are_a_device_side_error(offsets):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _BAD_OFFSETS_CHILD, offsets],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "device-side assert" in r.stdout
    assert "cu_seqlens must be non-decreasing" in r.stdout + r.stderr
