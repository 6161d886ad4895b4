"""float64 on the CPU path (issue 15): the compiled kernels compute in f64
when q, k, v are float64 (scores, softmax statistics, sums and lse), so the
forward, its log-sum-exp and the backward of both lowerings (tiled and the
untiled oracle) agree with the float64 reference to rel. L2 1e-12 -- five
orders of magnitude below what the same kernels reach in float32, which
these tests would not pass. V1, paged caches and packed sequences take
float64 too; the GPU path refuses it with an error naming q."""

import numpy as np
import pytest

import diffattn
from diffattn import _cpu, _gpu, reference

TOL = 1e-12

# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window, kv_len)
CASES = [
    (2, 7, 9, 4, 2, 8, 8, True, (-1, -1), None),
    (1, 70, 150, 8, 2, 16, 16, True, (-1, -1), None),        # several key and row blocks
    (1, 20, 10, 8, 1, 16, 16, True, (-1, -1), None),         # Sq > Sk: rows with no key
    (1, 33, 130, 4, 2, 16, 8, False, (20, 5), None),         # window across blocks, Dv < D
    (2, 20, 200, 8, 2, 16, 16, True, (-1, -1), [200, 129]),  # ragged kv_len
    (3, 9, 20, 12, 2, 8, 8, False, (-1, -1), [0, 5, 20]),    # G = 6, one empty sequence
]
IDS = ["causal", "blocks", "empty-rows", "window", "kv_len", "gqa6-kv_len0"]


def _inputs(case, seed, lam_dtype=np.float64):
    b, sq, sk, h2, hkv, d, dv, causal, window, kv_len = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, sq, h2, d))
    k = rng.standard_normal((b, sk, hkv, d))
    v = rng.standard_normal((b, sk, hkv, dv))
    lam = rng.standard_normal((b, sq, h2 // 2)).astype(lam_dtype)
    dout = rng.standard_normal((b, sq, h2 // 2, dv))
    kw = dict(causal=causal, window=window,
              kv_len=None if kv_len is None else np.array(kv_len, dtype=np.int32))
    return q, k, v, lam, dout, kw


def _rel_l2(got, ref):
    err = np.linalg.norm(got - ref)
    norm = np.linalg.norm(ref)
    return err / norm if norm > 0 else err


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_lse(case, lowering):
    q, k, v, lam, _, kw = _inputs(case, seed=3)
    out = np.full((q.shape[0], q.shape[1], q.shape[2] // 2, v.shape[3]), np.nan)
    got, lse = _cpu.v2(q, k, v, lam, lowering=lowering, return_lse=True, **kw)
    _cpu.v2(q, k, v, lam, lowering=lowering, out=out, **kw)  # poisoned first
    ref, ref_lse = reference.v2(q, k, v, lam, return_lse=True, **kw)
    assert got.dtype == np.float64 and lse.dtype == np.float64
    np.testing.assert_array_equal(out, got)
    assert _rel_l2(got, ref) < TOL, _rel_l2(got, ref)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    finite = np.isfinite(ref_lse)
    assert _rel_l2(lse[finite], ref_lse[finite]) < TOL


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward(case, lowering):
    q, k, v, lam, dout, kw = _inputs(case, seed=5)
    out, lse = _cpu.v2(q, k, v, lam, return_lse=True, lowering=lowering, **kw)
    grads = _cpu.v2_backward(q, k, v, lam, out, dout, lse, lowering=lowering, **kw)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)
    for name, got, want in zip(("dq", "dk", "dv", "dlam"), grads, ref):
        assert got.dtype == np.float64, name
        assert _rel_l2(got, want) < TOL, (name, _rel_l2(got, want))


def test_lam_f32_with_f64_operands():
    """lam may stay float32 (T or f32): it is read as f64 and dlam returned
    as float32, rounded once."""
    q, k, v, lam, dout, kw = _inputs(CASES[1], seed=7, lam_dtype=np.float32)
    out, lse = diffattn.v2(q, k, v, lam, return_lse=True, **kw)
    assert _rel_l2(out, reference.v2(q, k, v, lam, **kw)) < TOL
    dq, _, _, dlam = diffattn.v2_backward(q, k, v, lam, out, dout, lse, **kw)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)
    assert dlam.dtype == np.float32 and dq.dtype == np.float64
    assert _rel_l2(dq, ref[0]) < TOL
    assert _rel_l2(dlam, ref[3]) < 1e-7  # one f32 rounding


def test_explicit_scale_is_its_f32_value():
    """An explicit scale is an f32 attribute: exact in f64 when the value
    is an f32 (0.375), so the result matches the reference to 1e-12."""
    q, k, v, lam, _, kw = _inputs(CASES[0], seed=1)
    got = diffattn.v2(q, k, v, lam, scale=0.375, **kw)
    assert _rel_l2(got, reference.v2(q, k, v, lam, scale=0.375, **kw)) < TOL


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
def test_v1(lowering):
    rng = np.random.default_rng(2)
    b, sq, sk, h, hkv, d = 2, 19, 70, 4, 2, 16
    q = rng.standard_normal((b, sq, 2 * h, d))
    k = rng.standard_normal((b, sk, 2 * hkv, d))
    v = rng.standard_normal((b, sk, hkv, 2 * d))
    w = rng.standard_normal(2 * d)
    # lam, lambda_init and eps are f32 values, exact in f64.
    kw = dict(lambda_init=0.25, causal=True, eps=2.0 ** -16)
    got = _cpu.v1(q, k, v, 0.5, w, lowering=lowering, **kw)
    assert got.dtype == np.float64
    assert _rel_l2(got, reference.v1(q, k, v, 0.5, w, **kw)) < TOL


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
def test_paged_and_varlen(lowering):
    rng = np.random.default_rng(4)
    b, sq, h2, hkv, d, bs = 2, 3, 8, 2, 16, 16
    lens = np.array([40, 21], np.int32)
    k = rng.standard_normal((b, 48, hkv, d))
    v = rng.standard_normal((b, 48, hkv, d))
    q = rng.standard_normal((b, sq, h2, d))
    lam = rng.standard_normal((b, sq, h2 // 2))
    table = np.array([[5, 0, 3], [1, 4, 2]], np.int32)
    kc = np.zeros((6, bs, hkv, d))
    vc = np.zeros((6, bs, hkv, d))
    for i in range(b):
        for j in range(3):
            kc[table[i, j]] = k[i, j * bs:(j + 1) * bs]
            vc[table[i, j]] = v[i, j * bs:(j + 1) * bs]
    got = _cpu.v2(q, kc, vc, lam, causal=True, kv_len=lens, block_table=table,
                  lowering=lowering)
    ref = reference.v2(q, k, v, lam, causal=True, kv_len=lens)
    assert _rel_l2(got, ref) < TOL

    cu_q = np.array([0, 5, 12], np.int32)
    cu_k = np.array([0, 9, 30], np.int32)
    qp = rng.standard_normal((12, h2, d))
    kp = rng.standard_normal((30, hkv, d))
    vp = rng.standard_normal((30, hkv, d))
    lp = rng.standard_normal((12, h2 // 2))
    got = _cpu.v2_varlen(qp, kp, vp, lp, cu_q, cu_k, 7, 21, causal=True, lowering=lowering)
    ref = reference.v2_varlen(qp, kp, vp, lp, cu_q, cu_k, causal=True)
    assert _rel_l2(got, ref) < TOL


def test_lse_dtype_must_follow_q():
    q, k, v, lam, dout, kw = _inputs(CASES[0], seed=1)
    out, lse = diffattn.v2(q, k, v, lam, return_lse=True, **kw)
    with pytest.raises(TypeError, match=r"^lse: expected a 3-D float64 numpy array"):
        diffattn.v2_backward(q, k, v, lam, out, dout, lse.astype(np.float32), **kw)
    with pytest.raises(TypeError, match=r"^dout: expected dtype float64 \(as q\)"):
        diffattn.v2_backward(q, k, v, lam, out, dout.astype(np.float32), lse, **kw)


def test_gpu_path_refuses_f64():
    """The GPU kernels are f16/bf16 only: float64 is a TypeError naming q
    before anything is compiled (diffattn-compile's diagnostic for an f64
    op on a GPU target is in test/Target/GPU/errors.test)."""
    shapes = ((1, 64, 4, 64), (1, 64, 2, 64), (1, 64, 2, 64), (1, 64, 2))
    with pytest.raises(TypeError, match=r"^q: expected dtype bfloat16 or float16 on the GPU, "
                                        r"got f64"):
        _gpu.prepare_v2(*shapes, "f64", "f64", target="sm_90a")
    with pytest.raises(TypeError, match=r"^q: expected dtype bfloat16 or float16 on the GPU"):
        _gpu.prepare_v2_backward(*shapes, (1, 64, 2, 64), (1, 64, 2, 64), (1, 4, 64), "f64",
                                 "f64", target="sm_80")
