"""diffattn.reference.v2_backward and v2(return_lse=True) (issue 15's
float64 reference): gradients against central finite differences of the
reference forward, and the log-sum-exp against a direct computation."""

import math

import numpy as np
import pytest

from diffattn import reference
from test_reference import _visible

# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window, kv_len)
CASES = [
    (2, 5, 7, 4, 2, 3, 3, True, (-1, -1), None),          # G = 2, Sq < Sk
    (1, 6, 6, 8, 2, 4, 2, False, (-1, -1), None),         # G = 4, Dv != D
    (1, 7, 4, 4, 1, 3, 3, True, (-1, -1), None),          # Sq > Sk: empty rows
    (2, 6, 9, 4, 2, 3, 3, False, (2, 1), None),           # sliding window
    (3, 2, 6, 4, 2, 3, 3, True, (-1, -1), [0, 3, 6]),     # ragged kv_len, one empty
]
IDS = ["gqa2-sq<sk", "gqa4-dv", "empty-rows", "window", "kv_len"]


def _inputs(case, seed):
    b, sq, sk, h2, hkv, d, dv, causal, window, kv_len = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, sq, h2, d))
    k = rng.standard_normal((b, sk, hkv, d))
    v = rng.standard_normal((b, sk, hkv, dv))
    lam = rng.standard_normal((b, sq, h2 // 2))
    dout = rng.standard_normal((b, sq, h2 // 2, dv))
    kw = dict(causal=causal, window=window,
              kv_len=None if kv_len is None else np.array(kv_len))
    return q, k, v, lam, dout, kw


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_finite_differences(case):
    q, k, v, lam, dout, kw = _inputs(case, seed=7)
    grads = reference.v2_backward(q, k, v, lam, dout, **kw)
    args = [q, k, v, lam]

    def loss():
        return float(np.sum(dout * reference.v2(*args, **kw)))

    eps = 1e-6
    for which, (x, g) in enumerate(zip(args, grads)):
        assert g.shape == x.shape
        flat, gflat = x.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(gflat[i] - numeric) <= 1e-6 * (1 + abs(numeric)), (
                f"input {which} element {i}: analytic {gflat[i]} numeric {numeric}")


def test_ignored_and_masked_keys_get_zero_gradients():
    q, k, v, lam, dout, kw = _inputs(CASES[4], seed=3)
    _, dk, dv, _ = reference.v2_backward(q, k, v, lam, dout, **kw)
    for b, n in enumerate(kw["kv_len"]):
        assert np.all(dk[b, n:] == 0) and np.all(dv[b, n:] == 0)
    # A row that sees no key (kv_len 0) has zero dq and dlam.
    dq, _, _, dlam = reference.v2_backward(q, k, v, lam, dout, **kw)
    assert np.all(dq[0] == 0) and np.all(dlam[0] == 0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lse_is_the_rows_log_sum_exp(case):
    q, k, v, lam, _, kw = _inputs(case, seed=11)
    out, lse = reference.v2(q, k, v, lam, return_lse=True, **kw)
    assert np.array_equal(out, reference.v2(q, k, v, lam, **kw))
    b, sq, h2, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    assert lse.shape == (b, h2, sq)
    scale = 1.0 / math.sqrt(d)
    lens = kw["kv_len"] if kw["kv_len"] is not None else [sk] * b
    for bi in range(b):
        for j in range(h2):
            for i in range(sq):
                seen = [t for t in range(sk)
                        if _visible(i, t, sq, lens[bi], kw["causal"], kw["window"])]
                if not seen:
                    assert lse[bi, j, i] == -np.inf
                    continue
                s = [scale * float(q[bi, i, j] @ k[bi, t, j // (h2 // hkv)]) for t in seen]
                m = max(s)
                want = m + math.log(sum(math.exp(x - m) for x in s))
                assert abs(lse[bi, j, i] - want) <= 1e-12 * (1 + abs(want))


def test_backward_checks_dout():
    q, k, v, lam, dout, kw = _inputs(CASES[0], seed=1)
    with pytest.raises(ValueError, match="dout"):
        reference.v2_backward(q, k, v, lam, dout[:, :, :1], **kw)
    with pytest.raises(ValueError, match="lam"):
        reference.v2_backward(q, k, v, lam[:, :1], dout, **kw)
