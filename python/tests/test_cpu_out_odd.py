"""diffattn.v2's out_odd result and diffattn.v2_backward's out_odd operand
on the CPU (issue 15): the training forward saves the pairs' second heads
A_{2h+1} beside out and lse, and the backward may read them instead of
recomputing them (the GPU kernels do; the CPU lowerings recompute, so their
gradients must not change). Both lowerings, against the float64
reference."""

import numpy as np
import pytest

from diffattn import _cpu, reference
from test_cpu_lse import CASES, IDS, case_inputs


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_out_odd_is_the_second_heads_output(case, lowering):
    q, k, v, lam, kw = case_inputs(case, seed=5)
    out, lse, odd = _cpu.v2(q, k, v, lam, lowering=lowering, return_lse=True,
                            return_out_odd=True, **kw)
    assert odd.shape == out.shape and odd.dtype == out.dtype
    # out and lse are what the call without out_odd computes.
    out2, lse2 = _cpu.v2(q, k, v, lam, lowering=lowering, return_lse=True, **kw)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(lse, lse2)
    scale = 1.0 / np.sqrt(q.shape[-1])
    a = reference._attention(*(x.astype(np.float64) for x in (q, k, v)), scale=scale,
                             causal=kw["causal"], window=kw["window"], kv_len=kw["kv_len"])
    want = a[:, :, 1::2]
    np.testing.assert_allclose(odd, want, rtol=2e-4, atol=2e-4)
    # out = A_{2h} - sigmoid(lam) A_{2h+1}, with A_{2h+1} the saved one.
    sig = 1.0 / (1.0 + np.exp(-lam.astype(np.float64)))
    np.testing.assert_allclose(out, a[:, :, 0::2] - sig[..., None] * odd, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("lowering", ["flash", "decompose"])
def test_backward_with_out_odd_matches_without(lowering):
    q, k, v, lam, kw = case_inputs(CASES[0], seed=7)
    out, lse, odd = _cpu.v2(q, k, v, lam, lowering=lowering, return_lse=True,
                            return_out_odd=True, **kw)
    dout = np.random.default_rng(8).standard_normal(out.shape).astype(np.float32)
    with_odd = _cpu.v2_backward(q, k, v, lam, out, dout, lse, lowering=lowering, out_odd=odd,
                                **kw)
    without = _cpu.v2_backward(q, k, v, lam, out, dout, lse, lowering=lowering, **kw)
    for a, b in zip(with_odd, without):
        np.testing.assert_array_equal(a, b)
    ref = reference.v2_backward(q, k, v, lam, dout, **kw)
    for got, want in zip(with_odd, ref):
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_f64_out_odd():
    q, k, v, lam, kw = case_inputs(CASES[1], seed=9, dtype=np.float64)
    _, _, odd = _cpu.v2(q, k, v, lam, return_lse=True, return_out_odd=True, **kw)
    a = reference._attention(q, k, v, scale=1.0 / np.sqrt(q.shape[-1]), causal=kw["causal"],
                             window=kw["window"], kv_len=kw["kv_len"])
    np.testing.assert_allclose(odd, a[:, :, 1::2], rtol=1e-12, atol=1e-12)


def test_out_odd_errors():
    q, k, v, lam, kw = case_inputs(CASES[0], seed=1)
    with pytest.raises(ValueError, match="return_out_odd: needs return_lse"):
        _cpu.v2(q, k, v, lam, return_out_odd=True, **kw)
    out, lse, odd = _cpu.v2(q, k, v, lam, return_lse=True, return_out_odd=True, **kw)
    with pytest.raises(ValueError, match=r"out_odd: expected shape \(2, 70, 2, 16\)"):
        _cpu.v2_backward(q, k, v, lam, out, out, lse, out_odd=odd[:, :-1].copy(), **kw)
    with pytest.raises(TypeError, match="out_odd"):
        _cpu.v2_backward(q, k, v, lam, out, out, lse, out_odd=odd.astype(np.float64), **kw)
    with pytest.raises(TypeError, match="out_odd: expected a numpy.ndarray"):
        _cpu.v2_backward(q, k, v, lam, out, out, lse, out_odd=[1.0], **kw)
