"""diffattn.v2_backward on the CPU (issue 15): the compiled gradients (dq,
dk, dv, dlam) of both lowerings (tiled over blocks of 64 query rows x 64
keys, and the untiled oracle) against the float64 reference on 39
configurations (G = 2..8, odd lengths, Sq != Sk both ways, several row
blocks with Sq not a multiple of the block, key blocks wholly masked for a
row block, windows, ragged kv_len, Dv != D, f16, lam in f32), smaller
blocks (many partial and skipped blocks, gradients poisoned first), keys
past kv_len that hold NaN, and the errors that name the tensor whose shape
or dtype does not match the forward's configuration."""

import numpy as np
import pytest

import diffattn
from diffattn import _compiler, _cpu, _ops, reference

# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window, kv_len)
CASES = [
    (1, 1, 1, 2, 1, 8, 8, False, (-1, -1), None),
    (2, 7, 9, 4, 2, 8, 8, False, (-1, -1), None),
    (2, 7, 9, 4, 2, 8, 8, True, (-1, -1), None),
    (1, 33, 33, 8, 2, 32, 16, False, (-1, -1), None),
    (1, 33, 33, 8, 2, 32, 16, True, (-1, -1), None),
    (1, 20, 10, 8, 1, 16, 16, True, (-1, -1), None),       # Sq > Sk: rows with no key
    (2, 10, 31, 8, 1, 16, 16, True, (-1, -1), None),       # G = 8
    (1, 17, 17, 16, 2, 16, 16, False, (-1, -1), None),     # G = 8, H = 8
    (1, 19, 23, 12, 2, 16, 8, True, (-1, -1), None),       # G = 6
    (2, 13, 29, 4, 2, 16, 16, False, (5, 3), None),        # sliding window
    (1, 40, 40, 4, 1, 16, 16, False, (7, 0), None),        # left window, causal-like right
    (1, 24, 24, 8, 4, 8, 8, True, (4, -1), None),          # causal + left window
    (1, 30, 12, 4, 2, 8, 8, False, (0, 2), None),          # right window, Sq > Sk
    (3, 9, 20, 8, 4, 16, 16, True, (-1, -1), [0, 5, 20]),  # ragged kv_len, one empty
    (2, 5, 37, 4, 2, 16, 16, False, (-1, -1), [37, 1]),
    (2, 1, 64, 8, 2, 32, 32, True, (-1, -1), [63, 17]),    # decode-like row
    (2, 3, 50, 4, 1, 16, 8, True, (10, -1), [50, 25]),     # window + kv_len
    (1, 65, 70, 4, 2, 32, 32, True, (-1, -1), None),
    (1, 65, 70, 4, 2, 32, 32, False, (-1, -1), None),
    (2, 11, 11, 4, 2, 64, 64, True, (-1, -1), None),       # D = 64
    (1, 9, 14, 4, 2, 128, 64, False, (-1, -1), None),      # D = 128, Dv < D
    (1, 6, 6, 4, 2, 16, 48, True, (-1, -1), None),         # Dv > D
    (4, 3, 5, 4, 2, 8, 8, False, (-1, -1), None),
    (1, 50, 3, 4, 2, 8, 8, False, (-1, -1), None),         # Sq >> Sk
    (1, 3, 50, 4, 2, 8, 8, True, (-1, -1), None),          # Sk >> Sq
    (1, 12, 12, 4, 2, 8, 8, False, (0, 0), None),          # only the diagonal
    (2, 18, 27, 8, 2, 16, 16, False, (3, 4), [27, 9]),
    (1, 21, 21, 12, 3, 8, 8, True, (-1, -1), None),        # G = 4, Hkv = 3
    (1, 15, 15, 4, 2, 16, 16, True, (-1, -1), [0]),        # kv_len 0: every row empty
    (2, 8, 16, 4, 2, 16, 16, True, (2, -1), None),
    (2, 20, 200, 8, 2, 16, 16, True, (-1, -1), [200, 129]),  # four key blocks, ragged
    (1, 33, 130, 4, 2, 16, 8, False, (20, 5), None),        # window across blocks
    (1, 70, 150, 8, 2, 16, 16, True, (-1, -1), None),       # last block partial
    # Several blocks of 64 query rows (Sq not a multiple of 64), some key
    # blocks wholly masked for a row block and skipped:
    (1, 130, 130, 4, 2, 16, 16, True, (-1, -1), None),      # causal: later key blocks
    (1, 200, 60, 4, 2, 16, 16, True, (-1, -1), None),       # row blocks with no key at all
    (2, 150, 150, 4, 2, 16, 16, False, (20, 0), None),      # window: earlier key blocks
    (2, 100, 180, 8, 2, 16, 8, True, (30, -1), [180, 70]),  # window + ragged kv_len
    (2, 70, 300, 4, 2, 8, 8, False, (0, 5), [300, 0]),      # narrow window, empty sequence
    (1, 129, 70, 8, 2, 16, 8, False, (-1, -1), None),       # unmasked, one row past 128
]
IDS = [f"c{i:02d}" for i in range(len(CASES))]


def _inputs(case, seed, dtype=np.float32, lam_dtype=None):
    b, sq, sk, h2, hkv, d, dv, causal, window, kv_len = case
    rng = np.random.default_rng(seed)
    draw = lambda *shape: rng.standard_normal(shape).astype(dtype)  # noqa: E731
    q, k, v = draw(b, sq, h2, d), draw(b, sk, hkv, d), draw(b, sk, hkv, dv)
    lam = rng.standard_normal((b, sq, h2 // 2)).astype(lam_dtype or dtype)
    dout = draw(b, sq, h2 // 2, dv)
    kw = dict(causal=causal, window=window,
              kv_len=None if kv_len is None else np.array(kv_len, dtype=np.int32))
    return q, k, v, lam, dout, kw


def _rel_l2(got, ref):
    ref = np.asarray(ref, np.float64)
    err = np.linalg.norm(np.asarray(got, np.float64) - ref)
    norm = np.linalg.norm(ref)
    return err / norm if norm > 0 else err


def _backward(q, k, v, lam, dout, kw, lowering="flash"):
    out, lse = _cpu.v2(q, k, v, lam, return_lse=True, lowering="decompose", **kw)
    if lowering == "flash":
        return diffattn.v2_backward(q, k, v, lam, out, dout, lse, **kw)
    return _cpu.v2_backward(q, k, v, lam, out, dout, lse, lowering=lowering, **kw)


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_reference(case, lowering):
    q, k, v, lam, dout, kw = _inputs(case, seed=5)
    grads = _backward(q, k, v, lam, dout, kw, lowering)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)
    for name, got, want, like in zip(("dq", "dk", "dv", "dlam"), grads, ref, (q, k, v, lam)):
        assert got.shape == like.shape and got.dtype == like.dtype, name
        assert np.all(np.isfinite(got)), name
        assert _rel_l2(got, want) < 2e-5, (name, _rel_l2(got, want))


def _backward_blocks(q, k, v, lam, out, dout, lse, block_q, block_k, kv_len=None, **kw):
    """The tiled backward compiled with --block-q / --block-k, its gradients
    poisoned with NaN before the call (so an unwritten element fails)."""
    params, text, sizes = _ops.v2_backward_request(
        q.shape, k.shape, v.shape, lam.shape, out.shape, dout.shape, lse.shape,
        _cpu._DTYPES[q.dtype], _cpu._DTYPES[lam.dtype], scale=None,
        kv_len_shape=None if kv_len is None else kv_len.shape, **kw)
    directory = _compiler.ensure_compiled(
        "v2_backward", params, "cpu", text, (f"--block-q={block_q}", f"--block-k={block_k}"))
    (fn, kernel), = _cpu.load_kernels(directory).values()
    grads = [np.full_like(x, np.nan) for x in (q, k, v, lam)]
    buffers = [("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out), ("dout", dout),
               ("lse", lse)] + ([("kv_len", kv_len)] if kv_len is not None else [])
    _cpu.call_kernel(fn, kernel, buffers + list(zip(("dq", "dk", "dv", "dlam"), grads)), sizes)
    return grads


@pytest.mark.parametrize("block_q, block_k", [(16, 16), (8, 32), (32, 8)])
@pytest.mark.parametrize("case", [CASES[9], CASES[12], CASES[17], CASES[30], CASES[34], CASES[36]],
                         ids=["window", "sq>sk-window", "causal", "kv_len", "sq>>sk", "window-kv_len"])
def test_small_blocks(case, block_q, block_k):
    """Blocks smaller than the shapes: many row blocks, partial last blocks,
    key blocks skipped for some row blocks (and row blocks seeing no key);
    every gradient element written (poisoned first)."""
    q, k, v, lam, dout, kw = _inputs(case, seed=3)
    out, lse = _cpu.v2(q, k, v, lam, return_lse=True, lowering="decompose", **kw)
    grads = _backward_blocks(q, k, v, lam, out, dout, lse, block_q, block_k, **kw)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)
    for name, got, want in zip(("dq", "dk", "dv", "dlam"), grads, ref):
        assert np.all(np.isfinite(got)), name
        assert _rel_l2(got, want) < 2e-5, (name, _rel_l2(got, want))


@pytest.mark.parametrize("lam_dtype", [np.float16, np.float32], ids=["lam-f16", "lam-f32"])
@pytest.mark.parametrize("case", [CASES[2], CASES[13]], ids=["causal", "kv_len"])
def test_f16_gradients(case, lam_dtype):
    """f16 tensors: f32 arithmetic, each gradient rounded once to its
    operand's dtype (dlam stays f32 when lam is f32)."""
    q, k, v, lam, dout, kw = _inputs(case, seed=9, dtype=np.float16, lam_dtype=lam_dtype)
    grads = _backward(q, k, v, lam, dout, kw)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)
    for name, got, want, like in zip(("dq", "dk", "dv", "dlam"), grads, ref, (q, k, v, lam)):
        assert got.dtype == like.dtype, name
        assert _rel_l2(got, want) < 5e-3, (name, _rel_l2(got, want))


def test_keys_past_kv_len_are_never_read():
    """NaN in the cache past kv_len changes nothing, and those keys get zero
    dk and dv (SPEC.md: keys at t >= kv_len are ignored); four key blocks."""
    q, k, v, lam, dout, kw = _inputs(CASES[30], seed=2)
    clean = _backward(q, k, v, lam, dout, kw)
    kv_len = kw["kv_len"]
    k_bad, v_bad = k.copy(), v.copy()
    for b, n in enumerate(kv_len):
        k_bad[b, n:] = np.nan
        v_bad[b, n:] = np.inf
    out, lse = _cpu.v2(q, k, v, lam, return_lse=True, lowering="decompose", **kw)
    poisoned = diffattn.v2_backward(q, k_bad, v_bad, lam, out, dout, lse, **kw)
    for name, a, b in zip(("dq", "dk", "dv", "dlam"), clean, poisoned):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for b, n in enumerate(kv_len):
        assert not clean[1][b, n:].any() and not clean[2][b, n:].any()


def test_rows_without_keys_get_zero_gradients():
    q, k, v, lam, dout, kw = _inputs(CASES[5], seed=4)  # Sq = 20 > Sk = 10, causal
    dq, _, _, dlam = _backward(q, k, v, lam, dout, kw)
    empty = slice(0, 10)  # rows i < Sq - Sk see no key (bottom-right causal)
    assert not dq[:, empty].any() and not dlam[:, empty].any()
    assert dq[:, 10:].any()


def test_gradient_is_the_derivative_of_the_compiled_forward():
    """dlam against a central difference of the compiled forward itself
    (float32), so the backward and the forward kernels agree."""
    q, k, v, lam, dout, kw = _inputs(CASES[3], seed=8)
    _, _, _, dlam = _backward(q, k, v, lam, dout, kw)
    eps = 1e-2
    idx = (0, 4, 1)
    plus, minus = lam.copy(), lam.copy()
    plus[idx] += eps
    minus[idx] -= eps
    f = lambda l: float(np.sum(_cpu.v2(q, k, v, l, lowering="decompose", **kw).astype(np.float64)  # noqa: E731
                               * dout))
    numeric = (f(plus) - f(minus)) / (2 * eps)
    assert abs(dlam[idx] - numeric) < 1e-3 * max(1.0, abs(numeric))


# Bad input: each error names the tensor, before anything is compiled.
def _good():
    q, k, v, lam, dout, kw = _inputs(CASES[1], seed=1)
    out = np.zeros(dout.shape, np.float32)
    lse = np.zeros((q.shape[0], q.shape[2], q.shape[1]), np.float32)
    return dict(q=q, k=k, v=v, lam=lam, out=out, dout=dout, lse=lse), kw


@pytest.mark.parametrize("name, change, error, match", [
    ("out", lambda a: a[:, :-1].copy(), ValueError, r"out: expected shape \(2, 7, 2, 8\)"),
    ("dout", lambda a: a[..., :4].copy(), ValueError, r"dout: expected shape"),
    ("lse", lambda a: a.transpose(0, 2, 1).copy(), ValueError, r"lse: expected shape \(2, 4, 7\)"),
    ("lse", lambda a: a.astype(np.float16), TypeError, r"lse: expected a 3-D float32"),
    ("dout", lambda a: a.astype(np.float16), TypeError, r"dout: expected dtype float32"),
    ("out", lambda a: np.asfortranarray(a), ValueError, r"out: must be C-contiguous"),
    ("k", lambda a: a[:, :, :1].copy(), ValueError, r"k: Hkv = 1 KV heads|v: dimension 2"),
    ("lam", lambda a: a[:, :3].copy(), ValueError, r"lam: expected shape"),
])
def test_mismatched_tensors_are_named(name, change, error, match):
    args, kw = _good()
    args[name] = change(args[name])
    with pytest.raises(error, match=match):
        diffattn.v2_backward(**args, **kw)


def test_other_bad_options():
    args, kw = _good()
    with pytest.raises(ValueError, match=r"kv_len: every value"):
        diffattn.v2_backward(**args, **dict(kw, kv_len=np.array([9, 10], np.int32)))
    with pytest.raises(TypeError, match=r"kv_len"):
        diffattn.v2_backward(**args, **dict(kw, kv_len=np.array([9, 9], np.int64)))
    with pytest.raises(ValueError, match=r"lowering: expected one of"):
        _cpu.v2_backward(*args.values(), lowering="magic", **kw)
    with pytest.raises(TypeError, match=r"q: expected a numpy.ndarray"):
        diffattn.v2_backward(**dict(args, q=args["q"].tolist()), **kw)


def test_dlam_keeps_precision_for_large_lam():
    """sigmoid'(lam) as sigmoid(lam) sigmoid(-lam): with lam = 17 or 30,
    sigmoid(lam) rounds to 1 in f32, and 1 - sigmoid(lam) would make dlam 0."""
    q, k, v, lam, dout, kw = _inputs(CASES[1], seed=6)
    lam[:] = 17.0
    lam[0, 0] = 30.0
    lam[0, 1] = -30.0
    _, _, _, dlam = _backward(q, k, v, lam, dout, kw)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)[3]
    assert np.all(dlam[ref != 0] != 0)
    np.testing.assert_allclose(dlam, ref, rtol=1e-3, atol=0)  # r itself sums with cancellation
