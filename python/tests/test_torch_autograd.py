"""torch.ops.diffattn.v2 in training (issue 15): its autograd formula on CPU
tensors against the float64 reference, torch.autograd.gradcheck in float64
(causal, windows, GQA, Sq != Sk, kv_len), the
backward under torch.compile (the fake kernels of diffattn::v2_lse and
diffattn::v2_backward), and the errors of a backward whose saved tensors do
not match. Needs torch (skipped without it)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffattn  # noqa: E402
from diffattn import _torch, reference  # noqa: E402,F401  (registers the ops)

# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window, kv_len)
CASES = [
    (2, 9, 11, 8, 2, 16, 16, True, (-1, -1), None),
    (1, 7, 7, 4, 2, 8, 16, False, (-1, -1), None),
    (2, 6, 10, 4, 1, 8, 8, True, (-1, -1), [10, 3]),
    (1, 12, 12, 12, 2, 8, 8, False, (3, 2), None),
]


def _leaf(shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


def _tensors(case, dtype=torch.float32, lam_dtype=None):
    b, sq, sk, h2, hkv, d, dv, causal, window, kv_len = case
    torch.manual_seed(0)
    q, k, v = _leaf((b, sq, h2, d), dtype), _leaf((b, sk, hkv, d), dtype), _leaf((b, sk, hkv, dv), dtype)
    lam = _leaf((b, sq, h2 // 2), lam_dtype or dtype)
    kv = None if kv_len is None else torch.tensor(kv_len, dtype=torch.int32)
    return q, k, v, lam, kv, (causal, None, window[0], window[1])


@pytest.mark.parametrize("case", CASES, ids=["causal-gqa4", "dv", "kv_len", "window-g6"])
def test_backward_matches_reference(case):
    q, k, v, lam, kv, config = _tensors(case)
    out = torch.ops.diffattn.v2(q, k, v, lam, kv, *config)
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    kw = dict(causal=config[0], window=config[2:],
              kv_len=None if kv is None else kv.numpy())
    ref = reference.v2_backward(*(t.detach().numpy() for t in (q, k, v, lam)), dout.numpy(), **kw)
    for name, t, r in zip(("q", "k", "v", "lam"), (q, k, v, lam), ref):
        assert t.grad.shape == t.shape and t.grad.dtype == t.dtype
        assert np.linalg.norm(t.grad.numpy() - r) <= 2e-5 * max(np.linalg.norm(r), 1e-30), name
    # The forward is the compiled kernel's (the CPU path of diffattn.v2).
    np.testing.assert_allclose(out.detach().numpy(), reference.v2(
        *(t.detach().numpy() for t in (q, k, v, lam)), **kw), rtol=2e-4, atol=2e-4)


# (B, Sq, Sk, 2H, Hkv, D, Dv, causal, window, kv_len): small, so that the
# finite differences stay cheap.
GRADCHECK_CASES = [
    (1, 5, 5, 4, 2, 8, 8, True, (-1, -1), None),      # causal, G = 2
    (1, 6, 9, 4, 2, 8, 4, False, (2, 1), None),       # window, Sq < Sk, Dv < D
    (2, 7, 4, 8, 2, 4, 4, True, (-1, -1), None),      # G = 4, Sq > Sk: rows with no key
    (2, 3, 8, 4, 2, 8, 8, True, (-1, -1), [8, 5]),    # kv_len (decode-like)
    (1, 9, 9, 4, 2, 4, 4, False, (3, 0), [6]),        # window + kv_len
]


@pytest.mark.parametrize("case", GRADCHECK_CASES,
                         ids=["causal", "window-sq<sk", "gqa4-sq>sk", "kv_len", "window-kv_len"])
def test_gradcheck(case):
    """torch.autograd.gradcheck in float64 with its default eps, atol and
    rtol: finite differences of the compiled float64 forward against the
    compiled float64 backward (both compute in f64 throughout)."""
    q, k, v, lam, kv, config = _tensors(case, torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v, lam: torch.ops.diffattn.v2(q, k, v, lam, kv, *config),
        (q, k, v, lam))


def test_float64_forward_and_lse_dtypes():
    q, k, v, lam, kv, config = _tensors(CASES[0], torch.float64)
    out, lse = torch.ops.diffattn.v2_lse(q, k, v, lam, kv, *config)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    with pytest.raises(TypeError, match=r"^lse: CPU tensors must be torch.float64"):
        torch.ops.diffattn.v2_backward(q, k, v, lam, out, out, lse.float(), kv, *config)


def test_f16_and_lam_f32():
    q, k, v, lam, kv, config = _tensors(CASES[0], torch.float16, torch.float32)
    out = torch.ops.diffattn.v2(q, k, v, lam, kv, *config)
    out.float().sum().backward()
    assert (q.grad.dtype, lam.grad.dtype) == (torch.float16, torch.float32)
    assert all(torch.isfinite(t.grad.float()).all() for t in (q, k, v, lam))


def test_backward_under_torch_compile():
    q, k, v, lam, kv, config = _tensors(CASES[2])

    def step(q, k, v, lam):
        return (torch.ops.diffattn.v2(q, k, v, lam, kv, *config) ** 2).sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(q, k, v, lam).backward()
    compiled = [t.grad.clone() for t in (q, k, v, lam)]
    for t in (q, k, v, lam):
        t.grad = None
    step(q, k, v, lam).backward()
    for a, t in zip(compiled, (q, k, v, lam)):
        torch.testing.assert_close(a, t.grad, rtol=0, atol=0)


def test_backward_op_names_mismatched_tensors():
    q, k, v, lam, kv, config = _tensors(CASES[1])
    with torch.no_grad():
        out, lse = torch.ops.diffattn.v2_lse(q, k, v, lam, kv, *config)
        dout = torch.randn_like(out)
        with pytest.raises(ValueError, match=r"^lse: expected shape"):
            torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse[:, :2].contiguous(), kv,
                                           *config)
        with pytest.raises(ValueError, match=r"^dout: expected shape"):
            torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout[:, :3].contiguous(), lse, kv,
                                           *config)
        with pytest.raises(ValueError, match=r"^out_odd: expected shape"):
            torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse, kv, *config,
                                           out[:, :3].contiguous())
        with pytest.raises(TypeError, match=r"^lse: CPU tensors must be torch.float32"):
            torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse.half(), kv, *config)
        with pytest.raises(TypeError, match=r"^q: CPU tensors must be"):
            torch.ops.diffattn.v2(q.bfloat16(), k.bfloat16(), v.bfloat16(), lam.bfloat16(), kv,
                                  *config)


def test_training_ops_have_cpp_cuda_kernels_where_built():
    """A library built from this tree also serves the training ops' CUDA
    calls: the dispatcher's CUDA kernel of each is python/csrc/
    torch_train.cpp's, not the custom op's Python one (which would replace
    it if _torch_autograd registered it after)."""
    from diffattn import _torch_native

    if not _torch_native.active:
        pytest.skip(f"the C++ kernel is not active: {_torch_native.reason}")
    assert _torch_native.training_in_cpp()
    for op in ("_v2_forward_saved", "v2_backward"):
        dump = torch._C._dispatch_dump(f"diffattn::{op}")
        cuda = [line for line in dump.splitlines() if line.startswith("CUDA:")]
        assert len(cuda) == 1 and "torch_train.cpp" in cuda[0], dump


def test_autograd_dispatch_only_for_calls_that_need_grad():
    """With the C++ kernel (diffattn._torch_native), v2's Autograd kernel is
    C++: calls that need grad go to diffattn::_v2_train (the formula), every
    other call straight to the backend kernel, with no Python per call."""
    from diffattn import _torch_native

    q, k, v, lam, kv, config = _tensors(CASES[1])
    out = torch.ops.diffattn.v2(q, k, v, lam, kv, *config)
    name = type(out.grad_fn).__name__
    assert ("_v2_train" in name) == _torch_native.autograd_in_cpp(), name
    plain = torch.ops.diffattn.v2(q.detach(), k.detach(), v.detach(), lam.detach(), kv, *config)
    assert plain.grad_fn is None
    with torch.no_grad():
        assert torch.ops.diffattn.v2(q, k, v, lam, kv, *config).grad_fn is None
    torch.testing.assert_close(plain, out.detach(), rtol=0, atol=0)
