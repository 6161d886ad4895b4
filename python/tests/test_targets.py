"""The GPU target of a compute capability (diffattn._gpu.target_for_capability,
DIFFATTN_GPU_TARGET) and, on a GPU, that the runtime refuses a cubin its GPU
cannot run with a clear error and that an H100/H200 gets the Hopper
strategy's kernels."""
import json
import os

import pytest

from diffattn import _gpu


@pytest.mark.parametrize("capability,target", [((9, 0), "sm_90a"), ((9, 1), "sm_90"),
                                               ((8, 0), "sm_80"), ((8, 9), "sm_80")])
def test_default_target(monkeypatch, capability, target):
    monkeypatch.delenv(_gpu.TARGET_ENV, raising=False)
    assert _gpu.target_for_capability(capability) == target


def test_no_target_for_older_gpus(monkeypatch):
    monkeypatch.delenv(_gpu.TARGET_ENV, raising=False)
    with pytest.raises(NotImplementedError, match="compute capability 7.5"):
        _gpu.target_for_capability((7, 5))


def test_override(monkeypatch):
    monkeypatch.setenv(_gpu.TARGET_ENV, "sm_90")
    assert _gpu.target_for_capability((9, 0)) == "sm_90"
    monkeypatch.setenv(_gpu.TARGET_ENV, "sm_90a")
    assert _gpu.target_for_capability((9, 0)) == "sm_90a"


@pytest.mark.parametrize("target,capability", [("sm_90a", (9, 1)), ("sm_90a", (8, 0)),
                                               ("sm_90", (8, 9)), ("sm_80", (9, 0))])
def test_override_that_cannot_run(monkeypatch, target, capability):
    monkeypatch.setenv(_gpu.TARGET_ENV, target)
    with pytest.raises(ValueError, match=f"{_gpu.TARGET_ENV}={target}: its cubins do not run"):
        _gpu.target_for_capability(capability)


def test_unknown_override(monkeypatch):
    monkeypatch.setenv(_gpu.TARGET_ENV, "sm_75")
    with pytest.raises(ValueError, match="expected one of sm_80, sm_90, sm_90a"):
        _gpu.target_for_capability((9, 0))


def _hopper():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("needs an H100/H200 (compute capability 9.0)")
    return torch


@pytest.mark.gpu
def test_runtime_refuses_a_cubin_of_another_chip():
    torch = _hopper()
    shapes = ((1, 64, 8, 64), (1, 64, 2, 64), (1, 64, 2, 64), (1, 64, 4))
    directory, out_shape, sizes = _gpu.prepare_v2(*shapes, "bf16", "bf16", target="sm_80")
    q, k, v, lam = (torch.zeros(s, dtype=torch.bfloat16, device="cuda") for s in shapes)
    out = torch.empty(out_shape, dtype=torch.bfloat16, device="cuda")
    bufs = [(n, "bf16", tuple(t.shape), t.data_ptr())
            for n, t in (("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out))]
    with pytest.raises(_gpu.RuntimeFailure, match="is a sm_80 cubin, which runs on compute "
                       "capability 8.0 and later 8.x; this GPU is 9.0"):
        _gpu.launch_v2(directory, bufs, sizes, torch.cuda.current_stream().cuda_stream)


@pytest.mark.gpu
def test_hopper_gets_wgmma_prefill_and_portable_decode(monkeypatch):
    torch = _hopper()
    monkeypatch.delenv(_gpu.TARGET_ENV, raising=False)
    target = _gpu.target_for_capability(torch.cuda.get_device_capability())
    assert target == "sm_90a"
    shapes = ((1, 64, 8, 64), (1, 64, 2, 64), (1, 64, 2, 64), (1, 64, 4))
    for kv_len_shape, strategy in ((None, "wgmma"), ((1,), "mma_sync")):
        directory, _, _ = _gpu.prepare_v2(*shapes, "bf16", "bf16", causal=True,
                                          kv_len_shape=kv_len_shape, target=target)
        with open(os.path.join(directory, "manifest.json")) as f:
            kernel = json.load(f)["kernels"][0]
        assert kernel["chip"] == "sm_90a"
        assert kernel["launch"]["strategy"] == strategy
