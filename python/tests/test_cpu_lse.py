"""diffattn.v2(..., return_lse=True) on the CPU (issue 15): the compiled
kernels' log-sum-exp [B, 2H, Sq] against the float64 reference, through the
tiled (flash) and the untiled (decompose) lowerings, with their output
unchanged; rows that see no key give -inf; paged caches, and out= on torch
tensors, refuse the flag."""

import numpy as np
import pytest

import diffattn
from diffattn import _cpu, reference

# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window, kv_len)
CASES = [
    (2, 70, 90, 4, 2, 16, 16, True, (-1, -1), None),       # G = 2, Sq < Sk, odd lengths
    (1, 33, 33, 8, 2, 32, 16, False, (-1, -1), None),      # G = 4, Dv != D
    (1, 80, 20, 4, 1, 16, 16, True, (-1, -1), None),       # Sq > Sk: rows with no key
    (2, 65, 130, 4, 2, 16, 16, False, (17, 5), None),      # sliding window, two key blocks
    (3, 9, 70, 8, 4, 16, 16, True, (-1, -1), [0, 31, 70]),  # ragged kv_len, one empty
    (1, 130, 130, 16, 2, 32, 32, True, (-1, -1), None),    # G = 8, several row blocks
]
IDS = ["gqa2-sq<sk", "gqa4-dv", "empty-rows", "window", "kv_len", "gqa8"]


def case_inputs(case, seed, dtype=np.float32):
    """q, k, v, lam of `dtype` and the call's keyword arguments for a CASES
    entry (also test_cpu_out_odd's)."""
    b, sq, sk, h2, hkv, d, dv, causal, window, kv_len = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, sq, h2, d), dtype=dtype)
    k = rng.standard_normal((b, sk, hkv, d), dtype=dtype)
    v = rng.standard_normal((b, sk, hkv, dv), dtype=dtype)
    lam = rng.standard_normal((b, sq, h2 // 2), dtype=dtype)
    kw = dict(causal=causal, window=window,
              kv_len=None if kv_len is None else np.array(kv_len, dtype=np.int32))
    return q, k, v, lam, kw


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lse_matches_reference(case, lowering):
    q, k, v, lam, kw = case_inputs(case, seed=11)
    out, lse = _cpu.v2(q, k, v, lam, lowering=lowering, return_lse=True, **kw)
    ref_out, ref_lse = reference.v2(q, k, v, lam, return_lse=True, **kw)
    b, sq, h2 = q.shape[:3]
    assert lse.shape == (b, h2, sq) and lse.dtype == np.float32
    # Rows that see no key: -inf in both, and only there.
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    finite = np.isfinite(ref_lse)
    assert finite.any()
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)
    # The output is the one the plain call computes.
    plain = _cpu.v2(q, k, v, lam, lowering=lowering, **kw)
    np.testing.assert_array_equal(out, plain)
    np.testing.assert_allclose(out, ref_out, rtol=2e-4, atol=2e-4)


def test_public_api_returns_out_and_lse():
    q, k, v, lam, kw = case_inputs(CASES[0], seed=3)
    result = diffattn.v2(q, k, v, lam, return_lse=True, **kw)
    assert isinstance(result, tuple) and len(result) == 2
    assert isinstance(diffattn.v2(q, k, v, lam, **kw), np.ndarray)


def test_lse_with_a_paged_cache_is_a_value_error():
    q = np.zeros((1, 1, 4, 16), np.float32)
    cache = np.zeros((2, 16, 2, 16), np.float32)
    lam = np.zeros((1, 1, 2), np.float32)
    with pytest.raises(ValueError, match="return_lse"):
        diffattn.v2(q, cache, cache, lam, kv_len=np.array([5], np.int32),
                    block_table=np.zeros((1, 1), np.int32), return_lse=True)


def test_lse_with_out_on_torch_tensors_is_a_value_error():
    """torch tensors take return_lse (diffattn::v2_lse, on CPU and CUDA
    tensors) but not together with out= (the custom op allocates both)."""
    torch = pytest.importorskip("torch")
    q = torch.zeros((1, 1, 4, 16))
    kv = torch.zeros((1, 1, 2, 16))
    lam = torch.zeros((1, 1, 2))
    with pytest.raises(ValueError, match="^return_lse: not supported with out="):
        diffattn.v2(q, kv, kv, lam, return_lse=True, out=torch.zeros((1, 1, 2, 16)))
    out, lse = diffattn.v2(q, kv, kv, lam, return_lse=True)
    assert out.shape == (1, 1, 2, 16) and lse.shape == (1, 4, 1)
