"""Numerics of diffattn.v2 / diffattn.v1 on the CPU against the float64
reference: fresh random normal inputs, output buffers poisoned with NaN
first, relative L2 error within SPEC.md's tolerance, never NaN or Inf."""
import numpy as np
import pytest

import diffattn
from diffattn import _cpu
from conftest import TOLERANCE, rel_l2


def _v2_inputs(rng, b, sq, sk, h2, hkv, d, dv, dtype, lam_dtype=None):
    q = rng.standard_normal((b, sq, h2, d)).astype(dtype)
    k = rng.standard_normal((b, sk, hkv, d)).astype(dtype)
    v = rng.standard_normal((b, sk, hkv, dv)).astype(dtype)
    lam = rng.standard_normal((b, sq, h2 // 2)).astype(lam_dtype or dtype)
    return q, k, v, lam


def _check(out, ref, dtype):
    assert np.all(np.isfinite(out)), "NaN/Inf in the output (or an unwritten element)"
    err = rel_l2(out, ref)
    assert err <= TOLERANCE[np.dtype(dtype)], f"relative L2 error {err:.3e}"


# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window)
V2_CASES = [
    # D in {32, 64, 128}; Sq, Sk not multiples of the 64 block
    (2, 37, 53, 8, 2, 32, 32, False, (-1, -1)),
    (2, 37, 53, 8, 2, 32, 32, True, (-1, -1)),
    (1, 100, 100, 4, 2, 64, 64, True, (-1, -1)),
    (1, 129, 65, 4, 2, 64, 64, False, (-1, -1)),
    (1, 65, 130, 4, 1, 128, 128, True, (-1, -1)),
    (1, 130, 65, 4, 1, 128, 128, True, (-1, -1)),  # Sq > Sk causal: empty rows
    (3, 1, 77, 4, 2, 64, 64, True, (-1, -1)),      # a single query row
    (1, 200, 31, 4, 2, 32, 32, True, (-1, -1)),    # Sq >> Sk causal
    (1, 31, 200, 4, 2, 32, 32, True, (-1, -1)),    # Sq << Sk causal
    # Dv != D
    (2, 45, 45, 4, 2, 32, 16, True, (-1, -1)),
    (1, 70, 90, 4, 2, 16, 48, False, (-1, -1)),
    # G in {2, 4, 8}
    (1, 66, 66, 4, 2, 32, 32, True, (-1, -1)),     # G = 2
    (1, 66, 66, 8, 2, 32, 32, True, (-1, -1)),     # G = 4
    (1, 66, 66, 16, 2, 32, 32, True, (-1, -1)),    # G = 8
    (2, 50, 70, 16, 2, 32, 32, False, (-1, -1)),   # G = 8
    # windows (left, right)
    (1, 90, 90, 4, 2, 32, 32, False, (16, 16)),
    (1, 90, 90, 4, 2, 32, 32, True, (20, 0)),
    (2, 70, 100, 4, 2, 32, 32, False, (-1, 5)),
    (1, 100, 70, 4, 2, 32, 32, False, (7, -1)),
    (1, 150, 150, 8, 4, 64, 64, True, (64, 0)),
    (1, 40, 40, 4, 2, 32, 32, False, (0, 0)),      # the diagonal only
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", V2_CASES, ids=lambda c: "b{}_sq{}_sk{}_h{}_kv{}_d{}_dv{}_{}_w{}_{}".format(
    *c[:7], "causal" if c[7] else "full", *c[8]))
def test_v2_prefill(rng, case, dtype):
    b, sq, sk, h2, hkv, d, dv, causal, window = case
    q, k, v, lam = _v2_inputs(rng, b, sq, sk, h2, hkv, d, dv, dtype)
    out = np.full((b, sq, h2 // 2, dv), np.nan, dtype)
    diffattn.v2(q, k, v, lam, causal=causal, window=window, out=out)
    _check(out, diffattn.reference.v2(q, k, v, lam, causal=causal, window=window), dtype)


# (B, Sq, Smax, 2H, Hkv, D, kv_len)
DECODE_CASES = [
    (4, 1, 300, 8, 2, 64, [0, 1, 150, 300]),
    (3, 4, 257, 8, 2, 64, [4, 130, 257]),
    (2, 16, 200, 16, 2, 32, [16, 200]),
    (5, 2, 129, 4, 2, 128, [2, 65, 64, 128, 129]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"b{c[0]}_sq{c[1]}_smax{c[2]}_h{c[3]}_kv{c[4]}_d{c[5]}")
def test_v2_decode_ragged(rng, case, causal, dtype):
    b, sq, smax, h2, hkv, d, lens = case
    q, k, v, lam = _v2_inputs(rng, b, sq, smax, h2, hkv, d, d, dtype, lam_dtype=np.float32)
    kv_len = np.array(lens, dtype=np.int32)
    out = np.full((b, sq, h2 // 2, d), np.nan, dtype)
    diffattn.v2(q, k, v, lam, causal=causal, kv_len=kv_len, out=out)
    ref = diffattn.reference.v2(q, k, v, lam, causal=causal, kv_len=kv_len)
    _check(out, ref, dtype)
    # Keys past kv_len are never read: poisoning them changes nothing.
    k_poisoned, v_poisoned = k.copy(), v.copy()
    for i, n in enumerate(lens):
        k_poisoned[i, n:] = 1e4
        v_poisoned[i, n:] = np.nan
    again = np.full_like(out, np.nan)
    diffattn.v2(q, k_poisoned, v_poisoned, lam, causal=causal, kv_len=kv_len, out=again)
    _check(again, ref, dtype)


def test_v2_scale_and_f32_lam(rng):
    q, k, v, lam = _v2_inputs(rng, 2, 33, 47, 8, 2, 32, 32, np.float16, lam_dtype=np.float32)
    out = np.full((2, 33, 4, 32), np.nan, np.float16)
    diffattn.v2(q, k, v, lam, causal=True, scale=0.3, out=out)
    _check(out, diffattn.reference.v2(q, k, v, lam, causal=True, scale=0.3), np.float16)


@pytest.mark.parametrize("d", [1, 3, 17, 100, 160, 256])
def test_v2_any_head_dim(rng, d):
    q, k, v, lam = _v2_inputs(rng, 1, 21, 35, 4, 2, d, d, np.float32)
    out = np.full((1, 21, 2, d), np.nan, np.float32)
    diffattn.v2(q, k, v, lam, causal=True, out=out)
    _check(out, diffattn.reference.v2(q, k, v, lam, causal=True), np.float32)


def test_v2_rows_without_keys_are_zero(rng):
    # Sq > Sk causal: the first Sq - Sk rows see no key.
    q, k, v, lam = _v2_inputs(rng, 1, 80, 20, 4, 2, 16, 16, np.float32)
    out = np.full((1, 80, 2, 16), np.nan, np.float32)
    diffattn.v2(q, k, v, lam, causal=True, out=out)
    assert np.all(out[:, :60] == 0.0)
    _check(out, diffattn.reference.v2(q, k, v, lam, causal=True), np.float32)


# (B, Sq, Sk, H, Hkv, D, causal)
V1_CASES = [
    (2, 37, 53, 4, 2, 32, True),
    (2, 37, 53, 4, 2, 32, False),
    (1, 70, 30, 2, 1, 16, True),     # Sq > Sk causal
    (1, 65, 65, 4, 4, 64, True),     # H == Hkv
    (2, 20, 90, 4, 1, 16, False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", V1_CASES, ids=lambda c: "b{}_sq{}_sk{}_h{}_kv{}_d{}_{}".format(
    *c[:6], "causal" if c[6] else "full"))
def test_v1(rng, case, dtype):
    b, sq, sk, h, hkv, d, causal = case
    q = rng.standard_normal((b, sq, 2 * h, d)).astype(dtype)
    k = rng.standard_normal((b, sk, 2 * hkv, d)).astype(dtype)
    v = rng.standard_normal((b, sk, hkv, 2 * d)).astype(dtype)
    w = rng.standard_normal((2 * d,)).astype(dtype)
    lam = float(rng.uniform(0.1, 0.9))
    out = np.full((b, sq, h, 2 * d), np.nan, dtype)
    diffattn.v1(q, k, v, lam, w, lambda_init=0.2, causal=causal, out=out)
    ref = diffattn.reference.v1(q, k, v, lam, w, lambda_init=0.2, causal=causal)
    _check(out, ref, dtype)


@pytest.mark.parametrize("kind", ["v2", "v1"])
def test_decomposed_lowering_matches_reference(rng, kind):
    """The untiled oracle lowering computes the same function."""
    if kind == "v2":
        q, k, v, lam = _v2_inputs(rng, 2, 41, 57, 8, 2, 32, 24, np.float32)
        out = np.full((2, 41, 4, 24), np.nan, np.float32)
        _cpu.v2(q, k, v, lam, causal=True, window=(30, 0), out=out, lowering="decompose")
        ref = diffattn.reference.v2(q, k, v, lam, causal=True, window=(30, 0))
    else:
        q = rng.standard_normal((1, 33, 4, 16)).astype(np.float32)
        k = rng.standard_normal((1, 47, 2, 16)).astype(np.float32)
        v = rng.standard_normal((1, 47, 1, 32)).astype(np.float32)
        w = rng.standard_normal((32,)).astype(np.float32)
        out = np.full((1, 33, 2, 32), np.nan, np.float32)
        _cpu.v1(q, k, v, 0.4, w, lambda_init=0.3, causal=True, out=out, lowering="decompose")
        ref = diffattn.reference.v1(q, k, v, 0.4, w, lambda_init=0.3, causal=True)
    _check(out, ref, np.float32)
