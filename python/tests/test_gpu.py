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


def test_custom_op_is_registered_with_a_fake_kernel():
    q = torch.empty(1, 5, 4, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(1, 7, 2, 64, device="meta", dtype=torch.bfloat16)
    out = torch.ops.diffattn.v2(q, k, k, torch.empty(1, 5, 2, device="meta", dtype=torch.bfloat16),
                                None, True, None, -1, -1)
    assert out.shape == (1, 5, 2, 64)
