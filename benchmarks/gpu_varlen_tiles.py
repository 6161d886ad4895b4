#!/usr/bin/env python3
"""Packed variable-length prefill (diffattn.v2_varlen) against the batched
kernel on the same tokens (B sequences of S, D 128, 32 query / 8 KV heads,
bf16): the FLOP rate of the batched kernel beside the varlen kernel of this
GPU's target, the portable strategy's (sm_90) varlen kernel and the
variants in gpu_cases.VARLEN_KERNEL_VARIANTS. Kernels come from
DIFFATTN_CACHE_DIR (benchmarks/gpu_prepare.py prepares them):

    python3 benchmarks/gpu_varlen_tiles.py [--out DIR]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402
from gpu_check import bench_fn, rel_l2  # noqa: E402

import diffattn  # noqa: E402
from diffattn import _gpu  # noqa: E402



def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    rows = []
    for b, s, causal in gpu_cases.BENCH_VARLEN:
        q = torch.randn(b, s, 32, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, s, 8, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, s, 8, 128, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(b, s, 16, device="cuda", dtype=torch.bfloat16)
        flops = 4 * b * 32 * 128 * (s * (s + 1) // 2 if causal else s * s)
        batched = bench_fn(lambda: torch.ops.diffattn.v2(q, k, v, lam, None, causal, None, -1, -1))
        mine = torch.ops.diffattn.v2(q, k, v, lam, None, causal, None, -1, -1)
        cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device="cuda")
        qp, kp, vp, lp = (t.reshape((b * s,) + tuple(t.shape[2:])) for t in (q, k, v, lam))
        row = dict(shape=[b, s, causal], batched_tflops=flops / batched / 1e9)
        target = _gpu.target_for_capability(torch.cuda.get_device_capability())
        kernels = [(target, ())] + ([("sm_90", ())] if target != "sm_90" else [])
        kernels += [(t, o) for t, o in gpu_cases.VARLEN_KERNEL_VARIANTS if t == target]
        for kernel_target, options in kernels:
            directory, out_shape, sizes = _gpu.prepare_v2_varlen(
                tuple(qp.shape), tuple(kp.shape), tuple(vp.shape), tuple(lp.shape), (b + 1,),
                (b + 1,), "bf16", "bf16", s, s, causal=causal, options=options,
                target=kernel_target)
            out = torch.empty(out_shape, dtype=torch.bfloat16, device="cuda")
            bufs = [(n, e, tuple(t.shape), t.data_ptr()) for n, e, t in
                    (("q", "bf16", qp), ("k", "bf16", kp), ("v", "bf16", vp), ("lam", "bf16", lp),
                     ("cu_seqlens_q", "i32", cu), ("cu_seqlens_k", "i32", cu),
                     ("out", "bf16", out))]
            stream = torch.cuda.current_stream().cuda_stream
            launch = lambda: _gpu.launch_v2(directory, bufs, sizes, stream)  # noqa: E731
            launch()
            err = rel_l2(out.reshape(mine.shape), mine)
            ms = bench_fn(launch)
            name = " ".join((kernel_target,) + tuple(options))
            row[name] = dict(tflops=flops / ms / 1e9, vs_batched=batched / ms, rel_l2=err)
            print(f"B={b} S={s} {'causal' if causal else 'full'} varlen {name}: "
                  f"{flops / ms / 1e9:.0f} TFLOP/s, {batched / ms:.3f}x batched "
                  f"({flops / batched / 1e9:.0f}), rel L2 {err:.1e}", flush=True)
        rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "varlen_tiles.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
