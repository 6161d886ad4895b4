#!/usr/bin/env python3
"""One launch of a prefill and a decode kernel of gpu_cases' benchmark shapes,
for a profiler (Nsight Compute) to look at:

    ncu -k regex:diffattn --launch-skip 1 --launch-count 2 \\
        python3 benchmarks/gpu_profile_case.py [--prefill N] [--decode N] [--fa3]

Each kernel is launched twice (a warm-up, then the profiled launch);
--fa3 adds FlashAttention-3's kernel on the prefill shape (ncu -k
regex:flash). benchmarks/gpu_profile_hopper.sh runs the whole comparison.
"""
import argparse
import os
import shlex
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

from diffattn import _torch  # noqa: E402,F401  (registers torch.ops.diffattn.v2)


def launch_variant(q, k, v, lam, causal, options):
    """Twice, the sm_90a kernel that diffattn-compile `options` make for this
    bf16 call (prepared by gpu_prepare.py from gpu_cases.BENCH_TARGETS)."""
    from diffattn import _gpu

    shapes = tuple(tuple(t.shape) for t in (q, k, v, lam))
    directory, out_shape, sizes = _gpu.prepare_v2(*shapes, "bf16", "bf16", causal=causal,
                                                  target="sm_90a", options=options)
    out = torch.empty(out_shape, dtype=torch.bfloat16, device="cuda")
    bufs = [(name, "bf16", tuple(t.shape), t.data_ptr())
            for name, t in (("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out))]
    # The dynamic tile scheduler's counter (persistent kernels).
    workspace = torch.empty(max(1, _gpu.workspace_elements(directory, sizes)),
                            dtype=torch.float32, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    for _ in range(2):
        _gpu.launch_v2(directory, bufs, sizes, stream, lambda n: workspace.data_ptr())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=0, help="index into BENCH_PREFILL (-1: none)")
    ap.add_argument("--decode", type=int, default=0, help="index into BENCH_DECODE (-1: none)")
    ap.add_argument("--options", default="",
                    help="diffattn-compile options of a strategy variant (e.g. "
                         "--options=--gpu-options=persistent=true): the prefill kernel launched is the "
                         "sm_90a kernel they make, from the prepared cache")
    ap.add_argument("--fa3", action="store_true",
                    help="also launch FlashAttention-3 (fa3-fwd) twice on the prefill shape, for comparison")
    args = ap.parse_args()
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    if args.prefill >= 0:
        b, s, h2, hkv, d, causal = gpu_cases.BENCH_PREFILL[args.prefill]
        q, k, v = (torch.randn(b, s, h, d, **bf16) for h in (h2, hkv, hkv))
        lam = torch.randn(b, s, h2 // 2, **bf16)
        if args.options:
            launch_variant(q, k, v, lam, causal, tuple(shlex.split(args.options)))
        else:
            for _ in range(2):
                torch.ops.diffattn.v2(q, k, v, lam, None, causal, None, -1, -1)
        if args.fa3:
            from fa3_fwd_interface import flash_attn_func
            for _ in range(2):
                flash_attn_func(q, k, v, causal=causal)
    if args.decode >= 0:
        b, kvl, h2, hkv, d = gpu_cases.BENCH_DECODE[args.decode]
        q = torch.randn(b, 1, h2, d, **bf16)
        k, v = (torch.randn(b, kvl, hkv, d, **bf16) for _ in range(2))
        lam = torch.randn(b, 1, h2 // 2, **bf16)
        kl = torch.full((b,), kvl, dtype=torch.int32, device="cuda")
        for _ in range(2):
            torch.ops.diffattn.v2(q, k, v, lam, kl, True, None, -1, -1)
    torch.cuda.synchronize()
    print("profile case done")


if __name__ == "__main__":
    main()
