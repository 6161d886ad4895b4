"""Tests for diffattn.reference against a direct scalar-loop implementation."""

import math

import numpy as np
import pytest

from diffattn import reference

RTOL = 1e-10


# --------------------------------------------------------------------------
# independent direct implementation (plain python loops, math.exp)
# --------------------------------------------------------------------------

def _visible(i, t, sq, L, causal, window):
    if t >= L:
        return False
    pos = i + (L - sq)
    left, right = window
    if causal and t > pos:
        return False
    if left >= 0 and t < pos - left:
        return False
    if right >= 0 and t > pos + right:
        return False
    return True


def _direct_row(qrow, krows, vrows, visible, scale):
    """One query row against its key/value rows; returns a list of len Dv."""
    dv = len(vrows[0]) if vrows else 0
    ts = [t for t in range(len(krows)) if visible[t]]
    if not ts:
        return [0.0] * dv
    logits = [scale * sum(a * c for a, c in zip(qrow, krows[t])) for t in ts]
    m = max(logits)
    w = [math.exp(x - m) for x in logits]
    z = sum(w)
    return [sum(w[n] * vrows[t][e] for n, t in enumerate(ts)) / z
            for e in range(dv)]


def direct_v2(q, k, v, lam, causal=False, scale=None, window=(-1, -1),
              kv_len=None):
    B, Sq, H2, D = q.shape
    Sk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = H2 // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    ql, kl, vl, laml = q.tolist(), k.tolist(), v.tolist(), lam.tolist()
    out = np.zeros((B, Sq, H2 // 2, Dv))
    for b in range(B):
        L = Sk if kv_len is None else int(kv_len[b])
        for i in range(Sq):
            vis = [_visible(i, t, Sq, L, causal, window) for t in range(Sk)]
            A = []
            for j in range(H2):
                g = j // G
                A.append(_direct_row(ql[b][i][j],
                                     [kl[b][t][g] for t in range(Sk)],
                                     [vl[b][t][g] for t in range(Sk)],
                                     vis, scale))
            for h in range(H2 // 2):
                sig = 1.0 / (1.0 + math.exp(-laml[b][i][h]))
                for e in range(Dv):
                    out[b, i, h, e] = A[2 * h][e] - sig * A[2 * h + 1][e]
    return out


def direct_v1(q, k, v, lam, norm_weight, lambda_init, causal=False,
              scale=None, eps=1e-5):
    B, Sq, H2, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2] // 2
    H = H2 // 2
    ratio = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    ql, kl, vl, wl = q.tolist(), k.tolist(), v.tolist(), norm_weight.tolist()
    out = np.zeros((B, Sq, H, 2 * D))
    for b in range(B):
        for i in range(Sq):
            vis = [_visible(i, t, Sq, Sk, causal, (-1, -1))
                   for t in range(Sk)]
            for h in range(H):
                c = h // ratio
                vrows = [vl[b][t][c] for t in range(Sk)]
                a1 = _direct_row(ql[b][i][2 * h],
                                 [kl[b][t][2 * c] for t in range(Sk)],
                                 vrows, vis, scale)
                a2 = _direct_row(ql[b][i][2 * h + 1],
                                 [kl[b][t][2 * c + 1] for t in range(Sk)],
                                 vrows, vis, scale)
                x = [p - lam * r for p, r in zip(a1, a2)]
                rms = math.sqrt(sum(e * e for e in x) / len(x) + eps)
                for e in range(2 * D):
                    out[b, i, h, e] = (1.0 - lambda_init) * x[e] / rms * wl[e]
    return out


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def make_v2(seed, B, Sq, Sk, H, Hkv, D, Dv):
    r = _rng(seed)
    return (r.standard_normal((B, Sq, 2 * H, D)),
            r.standard_normal((B, Sk, Hkv, D)),
            r.standard_normal((B, Sk, Hkv, Dv)),
            r.standard_normal((B, Sq, H)))


def make_v1(seed, B, Sq, Sk, H, Hkv, D):
    r = _rng(seed)
    return (r.standard_normal((B, Sq, 2 * H, D)),
            r.standard_normal((B, Sk, 2 * Hkv, D)),
            r.standard_normal((B, Sk, Hkv, 2 * D)),
            float(r.uniform(0.1, 0.9)),
            r.uniform(0.5, 1.5, size=2 * D))


def assert_close(got, want):
    assert got.dtype == np.float64
    assert got.shape == want.shape
    assert np.all(np.isfinite(got))
    err = np.linalg.norm(got - want)
    assert err <= RTOL * np.linalg.norm(want), (err, np.linalg.norm(want))


# --------------------------------------------------------------------------
# V2 vs direct
# --------------------------------------------------------------------------

# (B, Sq, Sk, H, Hkv, D, Dv, causal, window, scale, kv_len)
V2_CASES = {
    "plain":            (2, 5, 5, 2, 2, 4, 4, False, (-1, -1), None, None),
    "causal":           (2, 5, 5, 2, 2, 4, 4, True, (-1, -1), None, None),
    "sq<sk":            (2, 3, 7, 2, 2, 4, 4, False, (-1, -1), None, None),
    "sq<sk causal":     (2, 3, 7, 2, 2, 4, 4, True, (-1, -1), None, None),
    "sq>sk":            (1, 7, 4, 2, 2, 4, 4, False, (-1, -1), None, None),
    "sq>sk causal":     (1, 7, 4, 2, 2, 4, 4, True, (-1, -1), None, None),
    "G4":               (2, 4, 6, 2, 1, 4, 4, True, (-1, -1), None, None),
    "G4 H4":            (1, 4, 6, 4, 2, 3, 3, False, (-1, -1), None, None),
    "dv!=d":            (2, 4, 6, 2, 2, 4, 6, True, (-1, -1), None, None),
    "dv<d":             (1, 4, 6, 2, 1, 5, 2, False, (-1, -1), None, None),
    "scale":            (2, 4, 6, 2, 2, 4, 4, False, (-1, -1), 0.37, None),
    "win -1,0":         (2, 6, 8, 2, 2, 4, 4, False, (-1, 0), None, None),
    "win 3,-1":         (2, 6, 8, 2, 2, 4, 4, False, (3, -1), None, None),
    "win 2,1":          (2, 6, 8, 2, 2, 4, 4, False, (2, 1), None, None),
    "win 2,1 causal":   (2, 6, 8, 2, 2, 4, 4, True, (2, 1), None, None),
    "win 3,-1 causal":  (2, 6, 6, 2, 1, 4, 4, True, (3, -1), None, None),
    "win 0,0":          (1, 5, 5, 2, 2, 4, 4, False, (0, 0), None, None),
    "win sq>sk":        (1, 7, 4, 2, 2, 4, 4, False, (1, 2), None, None),
    "decode kv_len":    (4, 1, 6, 2, 2, 4, 4, False, (-1, -1), None,
                         [0, 6, 3, 1]),
    "decode kv_len c":  (4, 1, 6, 2, 1, 4, 5, True, (-1, -1), None,
                         [6, 0, 2, 5]),
    "kv_len multi":     (3, 3, 7, 2, 2, 4, 4, True, (-1, -1), None,
                         [7, 2, 5]),
    "kv_len window":    (3, 3, 7, 2, 2, 4, 4, False, (2, 0), None,
                         [7, 0, 4]),
}


@pytest.mark.parametrize("seed,case", list(enumerate(V2_CASES.values())),
                         ids=list(V2_CASES))
def test_v2_matches_direct(seed, case):
    B, Sq, Sk, H, Hkv, D, Dv, causal, window, scale, kv_len = case
    q, k, v, lam = make_v2(100 + seed, B, Sq, Sk, H, Hkv, D, Dv)
    kv = None if kv_len is None else np.array(kv_len)
    got = reference.v2(q, k, v, lam, causal=causal, scale=scale,
                       window=window, kv_len=kv)
    want = direct_v2(q, k, v, lam, causal=causal, scale=scale,
                     window=window, kv_len=kv)
    assert_close(got, want)


def test_v2_accepts_lower_precision_inputs():
    q, k, v, lam = make_v2(1, 1, 4, 5, 2, 2, 4, 4)
    q, k, v, lam = (x.astype(np.float32) for x in (q, k, v, lam))
    got = reference.v2(q.astype(np.float16), k, v, lam, causal=True)
    want = direct_v2(q.astype(np.float16).astype(np.float64),
                     k.astype(np.float64), v.astype(np.float64),
                     lam.astype(np.float64), causal=True)
    assert_close(got, want)


def test_v2_extreme_lambda_finite():
    # sigmoid(+-1e4) must saturate to exactly 1 / 0 without overflow.
    q, k, v, _ = make_v2(2, 1, 3, 3, 1, 1, 4, 4)
    big = np.full((1, 3, 1), 1e4)
    with np.errstate(all="raise"):
        lo = reference.v2(q, k, v, -big, causal=True)
        hi = reference.v2(q, k, v, big, causal=True)
    assert_close(lo, direct_v2(q, k, v, np.full_like(big, -40.0), causal=True))
    assert_close(hi, direct_v2(q, k, v, np.full_like(big, 40.0), causal=True))


# --------------------------------------------------------------------------
# V1 vs direct
# --------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("H,Hkv", [(2, 2), (2, 1), (4, 2)])
@pytest.mark.parametrize("Sq,Sk", [(5, 5), (3, 6), (6, 4)])
def test_v1_matches_direct(causal, H, Hkv, Sq, Sk):
    seed = 1000 * Sq + 100 * Sk + 10 * H + 2 * Hkv + int(causal)
    q, k, v, lam, w = make_v1(seed, 2, Sq, Sk, H, Hkv, 3)
    got = reference.v1(q, k, v, lam, w, lambda_init=0.2, causal=causal)
    want = direct_v1(q, k, v, lam, w, 0.2, causal=causal)
    assert_close(got, want)


def test_v1_explicit_scale_eps_and_0d_lambda():
    q, k, v, lam, w = make_v1(3, 1, 4, 5, 2, 1, 4)
    got = reference.v1(q, k, v, np.array(lam), w, lambda_init=0.5,
                       causal=True, scale=0.3, eps=1e-3)
    want = direct_v1(q, k, v, lam, w, 0.5, causal=True, scale=0.3, eps=1e-3)
    assert_close(got, want)


# --------------------------------------------------------------------------
# empty rows: exactly zero, never NaN
# --------------------------------------------------------------------------

def test_v2_empty_rows_causal_sq_gt_sk():
    Sq, Sk = 6, 3
    q, k, v, lam = make_v2(4, 2, Sq, Sk, 2, 2, 4, 4)
    with np.errstate(all="raise"):
        out = reference.v2(q, k, v, lam, causal=True)
    assert not np.any(np.isnan(out))
    # query i sits at key position i - 3: rows 0..2 see no key
    assert np.all(out[:, :Sq - Sk] == 0.0)
    assert np.all(np.abs(out[:, Sq - Sk:]).sum(axis=-1) > 0)


def test_v2_empty_rows_kv_len_zero():
    q, k, v, lam = make_v2(5, 3, 2, 5, 2, 1, 4, 4)
    kv_len = np.array([0, 5, 0])
    with np.errstate(all="raise"):
        out = reference.v2(q, k, v, lam, kv_len=kv_len, causal=True)
    assert not np.any(np.isnan(out))
    assert np.all(out[0] == 0.0) and np.all(out[2] == 0.0)
    assert np.all(np.abs(out[1]).sum(axis=-1) > 0)


def test_v2_empty_rows_window_beyond_keys():
    # Sq > Sk, right window 0: early rows are left of every key.
    q, k, v, lam = make_v2(6, 1, 5, 2, 2, 2, 4, 4)
    out = reference.v2(q, k, v, lam, window=(1, 0))
    assert np.all(out[:, :3] == 0.0)
    assert np.all(np.isfinite(out))


def test_v2_kv_len_sk_equals_no_kv_len():
    q, k, v, lam = make_v2(7, 2, 3, 5, 2, 2, 4, 4)
    a = reference.v2(q, k, v, lam, causal=True, kv_len=np.array([5, 5]))
    b = reference.v2(q, k, v, lam, causal=True)
    np.testing.assert_array_equal(a, b)


def test_v1_empty_rows_causal_sq_gt_sk():
    q, k, v, lam, w = make_v1(8, 1, 5, 2, 2, 1, 4)
    with np.errstate(all="raise"):
        out = reference.v1(q, k, v, lam, w, lambda_init=0.3, causal=True)
    assert not np.any(np.isnan(out))
    assert np.all(out[:, :3] == 0.0)
    assert np.all(np.abs(out[:, 3:]).sum(axis=-1) > 0)


# --------------------------------------------------------------------------
# default scale
# --------------------------------------------------------------------------

@pytest.mark.parametrize("D", [3, 4, 16])
def test_v2_default_scale(D):
    q, k, v, lam = make_v2(9, 1, 3, 4, 2, 2, D, 2)
    a = reference.v2(q, k, v, lam)
    b = reference.v2(q, k, v, lam, scale=1.0 / math.sqrt(D))
    c = reference.v2(q, k, v, lam, scale=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    assert not np.allclose(a, c)


def test_v1_default_scale():
    q, k, v, lam, w = make_v1(10, 1, 3, 4, 2, 1, 5)
    a = reference.v1(q, k, v, lam, w, lambda_init=0.1)
    b = reference.v1(q, k, v, lam, w, lambda_init=0.1,
                     scale=1.0 / math.sqrt(5))
    c = reference.v1(q, k, v, lam, w, lambda_init=0.1, scale=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    assert not np.allclose(a, c)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

def _v2_args(H=2, Hkv=2, D=4, Dv=4, B=2, Sq=3, Sk=5):
    return list(make_v2(11, B, Sq, Sk, H, Hkv, D, Dv))


@pytest.mark.parametrize("H,Hkv", [(3, 2), (3, 6), (2, 3), (1, 2), (2, 4)])
def test_v2_bad_group(H, Hkv):
    q, k, v, lam = _v2_args(H=H, Hkv=Hkv)
    with pytest.raises(ValueError, match=r"^k: .*even"):
        reference.v2(q, k, v, lam)


@pytest.mark.parametrize("which,shape,name", [
    ("q", (2, 3, 4), "q"),                  # rank 3
    ("q", (2, 3, 3, 4), "q"),               # odd number of q heads
    ("k", (2, 5, 2, 3), "k"),               # D mismatch
    ("k", (1, 5, 2, 4), "k"),               # B mismatch
    ("k", (2, 5, 2, 4, 1), "k"),            # rank 5
    ("v", (2, 4, 2, 4), "v"),               # Sk mismatch
    ("v", (2, 5, 1, 4), "v"),               # Hkv mismatch
    ("v", (2, 5, 2), "v"),                  # rank 3
    ("lam", (2, 3, 4), "lam"),              # H mismatch
    ("lam", (2, 3), "lam"),                 # rank 2
])
def test_v2_bad_shapes(which, shape, name):
    args = dict(zip("q k v lam".split(), _v2_args()))
    args[which] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        reference.v2(args["q"], args["k"], args["v"], args["lam"])


def test_v2_rank_message():
    q, k, v, lam = _v2_args()
    with pytest.raises(ValueError,
                       match=r"^k: expected rank 4 \[B, Sk, Hkv, D\], "
                             r"got shape \(2, 5, 4\)"):
        reference.v2(q, k[:, :, 0], v, lam)


@pytest.mark.parametrize("kv_len", [
    [1, 2, 3],          # wrong length
    [-1, 2],            # negative
    [2, 6],             # > Sk
    [[1, 2]],           # wrong rank
    [1.0, 2.0],         # not integer
])
def test_v2_bad_kv_len(kv_len):
    q, k, v, lam = _v2_args()
    with pytest.raises(ValueError, match=r"^kv_len: "):
        reference.v2(q, k, v, lam, kv_len=np.array(kv_len))


@pytest.mark.parametrize("window", [(-2, 0), (0,), (1.5, 0), None])
def test_v2_bad_window(window):
    q, k, v, lam = _v2_args()
    with pytest.raises(ValueError, match=r"^window: "):
        reference.v2(q, k, v, lam, window=window)


@pytest.mark.parametrize("which,value,name", [
    ("k", np.zeros((1, 4, 3, 4)), "k"),     # odd number of k heads
    ("k", np.zeros((1, 4, 6, 4)), "k"),     # H=2 not divisible by Hkv=3
    ("k", np.zeros((1, 4, 2, 5)), "k"),     # D mismatch
    ("v", np.zeros((1, 4, 1, 4)), "v"),     # last dim != 2D
    ("v", np.zeros((1, 3, 1, 8)), "v"),     # Sk mismatch
    ("norm_weight", np.ones(4), "norm_weight"),
    ("lam", np.array([0.5]), "lam"),
])
def test_v1_bad_shapes(which, value, name):
    q, k, v, lam, w = make_v1(12, 1, 3, 4, 2, 1, 4)
    args = dict(q=q, k=k, v=v, lam=lam, norm_weight=w)
    args[which] = value
    with pytest.raises(ValueError, match=rf"^{name}: "):
        reference.v1(args["q"], args["k"], args["v"], args["lam"],
                     args["norm_weight"], lambda_init=0.2)
