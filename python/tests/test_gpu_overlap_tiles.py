"""overlap-tiles (cross-tile pipelining in the sm_90a forward, Passes.td):
the kernel with it must write the same bits as the kernel without it, on
shapes whose persistent CTAs run several tiles each (gpu_cases.OVERLAP_CASES).
Marked `gpu`: skipped without torch and an sm_90 (H100/H200) device. The
kernels come from the cache (benchmarks/gpu_prepare.py compiles them) or
from the compiler where one runs."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available()
                                 or torch.cuda.get_device_capability() != (9, 0),
                                 reason="needs an sm_90 (Hopper) GPU")]

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import gpu_cases  # noqa: E402

from diffattn import _gpu  # noqa: E402

TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16}


def _run(case, options, inputs):
    """One launch of the sm_90a kernel `options` make for `case` on
    `inputs` (q, k, v, lam); returns its output, poisoned with NaN before."""
    b, sq, sk, h2, hkv, d, dtype, causal, window, _ = case
    q, k, v, lam = inputs
    directory, out_shape, sizes = _gpu.prepare_v2(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), dtype, dtype,
        causal=causal, window=window, target="sm_90a", options=options)
    out = torch.full(out_shape, float("nan"), dtype=TORCH_DTYPE[dtype], device="cuda")
    workspace = torch.empty(_gpu.workspace_elements(directory, sizes), dtype=torch.float32,
                            device="cuda")
    bufs = [(name, dtype, tuple(t.shape), t.data_ptr())
            for name, t in (("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out))]
    _gpu.launch_v2(directory, bufs, sizes, torch.cuda.current_stream().cuda_stream,
                   lambda n: workspace.data_ptr())
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("case", gpu_cases.OVERLAP_CASES,
                         ids=lambda c: "B{}_Sq{}_Sk{}_2H{}_Hkv{}_D{}_{}_{}_w{}_{}_{}".format(
                             *c[:7], "causal" if c[7] else "full", *c[8],
                             c[9].replace(" ", "_") or "defaults"))
def test_overlap_tiles_writes_the_same_bits(case):
    b, sq, sk, h2, hkv, d, dtype, causal, window, extra = case
    g = torch.Generator(device="cuda").manual_seed(sq * 31 + sk)
    dt = TORCH_DTYPE[dtype]
    inputs = (torch.randn(b, sq, h2, d, device="cuda", generator=g).to(dt),
              torch.randn(b, sk, hkv, d, device="cuda", generator=g).to(dt),
              torch.randn(b, sk, hkv, d, device="cuda", generator=g).to(dt),
              torch.randn(b, sq, h2 // 2, device="cuda", generator=g).to(dt))
    off = _run(case, gpu_cases.overlap_options(extra, False), inputs)
    on = _run(case, gpu_cases.overlap_options(extra, True), inputs)
    assert bool(torch.isfinite(off).all())
    assert torch.equal(on, off)
