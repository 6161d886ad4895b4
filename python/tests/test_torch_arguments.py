"""The torch front end's argument checks (diffattn.v2, v2_backward and
v2_varlen on torch tensors): TypeError / ValueError naming the argument
before any torch.ops call or compile, never the dispatcher's RuntimeError,
and no silent result from tensors on different devices (a meta tensor beside
CPU ones would select the op's fake implementation, whose output is never
written). Runs on CPU tensors; needs torch (skipped without it)."""

import pytest

torch = pytest.importorskip("torch")

import diffattn  # noqa: E402
from diffattn import _torch  # noqa: E402,F401  (registers the ops)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """Any compile attempt fails loudly: validation must come first."""
    monkeypatch.setenv("DIFFATTN_COMPILE", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DIFFATTN_CACHE_DIR", str(tmp_path / "empty-cache"))


def _args():
    torch.manual_seed(0)
    return (torch.randn(1, 8, 4, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16),
            torch.rand(1, 8, 2))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(window=3), ValueError, "window: expected a pair"),
    (dict(window=(1, 2, 3)), ValueError, "window: expected a pair"),
    (dict(window=(1.5, 0)), ValueError, "window: expected a pair"),
    (dict(window=(2**63, 0)), ValueError, r"window: left must be -1 \(unlimited\) or in \[0, "),
    (dict(causal="no"), TypeError, "causal: expected a bool, got str"),
    (dict(causal=None), TypeError, "causal: expected a bool, got NoneType"),
    (dict(scale="0.5"), TypeError, "scale: expected a real number, got str"),
    (dict(scale=float("nan")), ValueError, "scale: must be finite and > 0"),
    (dict(kv_len=[3]), TypeError, "kv_len: expected a torch.Tensor"),
    (dict(return_lse="yes"), TypeError, "return_lse: expected a bool"),
], ids=["window-int", "window-triple", "window-float", "window-int64", "causal-str",
        "causal-none", "scale-str", "scale-nan", "kv-len-list", "return-lse-str"])
def test_v2_rejects_bad_options(no_compiler, kwargs, exc, match):
    q, k, v, lam = _args()
    with pytest.raises(exc, match=match):
        diffattn.v2(q, k, v, lam, **kwargs)


@pytest.mark.parametrize("which", ["k", "lam"])
def test_v2_rejects_mixed_devices(no_compiler, which):
    args = dict(zip(("q", "k", "v", "lam"), _args()))
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=f"{which}: on meta, but q is on cpu"):
        diffattn.v2(*args.values())
    with pytest.raises(ValueError, match=f"{which}: on meta, but q is on cpu"):
        diffattn.v2(*args.values(), return_lse=True)
    # Straight to the op: its fake implementation refuses as well.
    with pytest.raises(ValueError, match="every tensor must be on q's device"):
        torch.ops.diffattn.v2(*args.values(), None, False, None, -1, -1)


def test_v2_rejects_non_tensors(no_compiler):
    q, k, v, lam = _args()
    with pytest.raises(TypeError, match="k: expected a torch.Tensor .as q., got ndarray"):
        diffattn.v2(q, k.numpy(), v, lam)
    with pytest.raises(TypeError, match="v: expected a torch.Tensor .as q., got str"):
        diffattn.v2(q, k, "v", lam)


def test_backward_rejects_bad_arguments(no_compiler):
    q, k, v, lam = _args()
    out = torch.zeros(1, 8, 2, 16)
    lse = torch.zeros(1, 4, 8)
    with pytest.raises(ValueError, match="window: expected a pair"):
        diffattn.v2_backward(q, k, v, lam, out, out, lse, window=5)
    with pytest.raises(TypeError, match="out: expected a torch.Tensor .as q., got NoneType"):
        diffattn.v2_backward(q, k, v, lam, None, out, lse)
    with pytest.raises(ValueError, match="dout: on meta, but q is on cpu"):
        diffattn.v2_backward(q, k, v, lam, out, out.to("meta"), lse)


def test_varlen_rejects_bad_arguments(no_compiler):
    q, k, v = torch.randn(8, 4, 16), torch.randn(8, 2, 16), torch.randn(8, 2, 16)
    lam = torch.rand(8, 2)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="window: expected a pair"):
        diffattn.v2_varlen(q, k, v, lam, cu, cu, 5, 5, window=5)
    with pytest.raises(TypeError, match="max_seqlen_q: expected an int, got float"):
        diffattn.v2_varlen(q, k, v, lam, cu, cu, 5.0, 5)
    with pytest.raises(ValueError, match=r"max_seqlen_k: must lie in \[0, 2147483647\]"):
        diffattn.v2_varlen(q, k, v, lam, cu, cu, 5, 2**64 + 5)
    with pytest.raises(ValueError, match="cu_seqlens_k: on meta, but q is on cpu"):
        diffattn.v2_varlen(q, k, v, lam, cu, cu.to("meta"), 5, 5)
