"""GPU execution (marked `gpu`: skipped without torch and a CUDA device).
The full check and benchmark is benchmarks/gpu_check.py; this is the short
version that a GPU machine's test run includes."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

import diffattn  # noqa: E402


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("causal", [True, False])
def test_v2_matches_reference(dtype, tol, causal):
    q = torch.randn(2, 77, 8, 64, device="cuda").to(dtype)
    k = torch.randn(2, 90, 2, 64, device="cuda").to(dtype)
    v = torch.randn(2, 90, 2, 64, device="cuda").to(dtype)
    lam = torch.randn(2, 77, 4, device="cuda").to(dtype)
    out = torch.full((2, 77, 4, 64), float("nan"), device="cuda", dtype=dtype)
    diffattn.v2(q, k, v, lam, causal=causal, out=out)
    ref = diffattn.reference.v2(*(t.float().cpu().numpy() for t in (q, k, v, lam)), causal=causal)
    got = out.double().cpu().numpy()
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < tol


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_out_at_any_element_offset(offset):
    """The forward kernels store a row's two adjacent columns with one
    4-byte store when `out` is 4-byte aligned, else with two 2-byte stores:
    an `out` that starts one element into its buffer (2-byte aligned) must
    give the same values, and the element before it must stay untouched."""
    q = torch.randn(2, 77, 8, 64, device="cuda").to(torch.bfloat16)
    k = torch.randn(2, 90, 2, 64, device="cuda").to(torch.bfloat16)
    v = torch.randn(2, 90, 2, 64, device="cuda").to(torch.bfloat16)
    lam = torch.randn(2, 77, 4, device="cuda").to(torch.bfloat16)
    n = 2 * 77 * 4 * 64
    flat = torch.full((n + 1,), float("nan"), device="cuda", dtype=torch.bfloat16)
    flat[0] = 7.0
    out = flat[offset:offset + n].view(2, 77, 4, 64)
    assert (out.data_ptr() % 4 == 0) == (offset == 0)
    diffattn.v2(q, k, v, lam, causal=True, out=out)
    ref = diffattn.reference.v2(*(t.float().cpu().numpy() for t in (q, k, v, lam)), causal=True)
    got = out.double().cpu().numpy()
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2
    if offset:
        assert flat[0].item() == 7.0


def test_custom_op_is_registered_with_a_fake_kernel():
    q = torch.empty(1, 5, 4, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(1, 7, 2, 64, device="meta", dtype=torch.bfloat16)
    out = torch.ops.diffattn.v2(q, k, k, torch.empty(1, 5, 2, device="meta", dtype=torch.bfloat16),
                                None, True, None, -1, -1)
    assert out.shape == (1, 5, 2, 64)


_KV_LEN_CHILD = r"""
import sys, torch, diffattn
sq = int(sys.argv[2])
q = torch.randn(2, sq, 8, 64, device="cuda", dtype=torch.bfloat16)
k = torch.randn(2, 64, 2, 64, device="cuda", dtype=torch.bfloat16)
lam = torch.randn(2, sq, 4, device="cuda", dtype=torch.bfloat16)
kv_len = torch.tensor([int(x) for x in sys.argv[1].split(",")], device="cuda", dtype=torch.int32)
out = diffattn.v2(q, k, k, lam, causal=True, kv_len=kv_len)
try:
    torch.cuda.synchronize()
except Exception as e:  # the device-side assertion surfaces here
    print("ERROR:", e)
    sys.exit(3)
print("FINITE:", bool(torch.isfinite(out).all()))
"""


def _kv_len_call(kv_len, sq):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _KV_LEN_CHILD, kv_len, str(sq)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sq", [1, 16], ids=["decode", "chunk"])
@pytest.mark.parametrize("kv_len", ["4000,3", "-50,3", "3,65"])
def test_out_of_range_kv_len_is_a_device_side_error(kv_len, sq):
    """SPEC.md: 0 <= kv_len[b] <= Sk, checked at run time without a host
    synchronisation: the kernel raises a device-side assertion that names
    kv_len, and the error surfaces at the next synchronisation (PyTorch's
    convention for device-side index errors). The child process's CUDA
    context is lost after it, as with any device-side assertion."""
    r = _kv_len_call(kv_len, sq)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "device-side assert" in r.stdout
    assert "kv_len[b] out of range [0, Sk]" in r.stdout + r.stderr


@pytest.mark.parametrize("sq", [1, 16], ids=["decode", "chunk"])
def test_valid_kv_len_in_a_fresh_process_is_unaffected(sq):
    r = _kv_len_call("64,0", sq)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FINITE: True" in r.stdout
