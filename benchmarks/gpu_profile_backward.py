#!/usr/bin/env python3
"""One backward of a gpu_cases.BACKWARD_BENCH shape, for a profiler
(Nsight Compute) to look at its kernels (4 in the accumulating
formulation with out_odd, 3 in the deterministic one):

    ncu -k regex:diffattn_v2_backward --launch-skip 4 --launch-count 4 \\
        python3 benchmarks/gpu_profile_backward.py [--case N]

The backward runs twice (a warm-up, then the profiled launches), after the
training forward (lse and out_odd, which the backward reads; `--recompute`:
the forward with lse only, as before out_odd). `--options` passes compiler options to the
backward's kernels (e.g. "--gpu-options=deterministic=false": the
accumulating kernels: dq zeroing, statistics, dk/dv and the dq conversion).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

import diffattn  # noqa: E402
from diffattn import _torch  # noqa: E402  (registers the ops)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=int, default=0, help="index into gpu_cases.BACKWARD_BENCH")
    ap.add_argument("--options", action="append", default=[],
                    help="a compiler option for the backward's kernels (repeatable)")
    ap.add_argument("--recompute", action="store_true",
                    help="without the training forward's out_odd (the statistics kernel "
                         "recomputes A_2h+1)")
    args = ap.parse_args()
    b, s, h2, hkv, d, causal = gpu_cases.BACKWARD_BENCH[args.case]
    q = torch.randn(b, s, h2, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, s, h2 // 2, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn(b, s, h2 // 2, d, device="cuda", dtype=torch.bfloat16)
    if args.recompute:
        out, lse = diffattn.v2(q, k, v, lam, causal=causal, return_lse=True)
        out_odd = None
    else:
        out, lse, out_odd = _torch.v2_train_cuda(q, k, v, lam, None, causal, None, -1, -1)
    for _ in range(2):
        _torch.backward_cuda(q, k, v, lam, out, dout, lse, None, causal, None, -1, -1,
                             options=tuple(args.options), out_odd=out_odd)
    torch.cuda.synchronize()
    print(f"backward of B={b} S={s} 2H={h2} Hkv={hkv} D={d} causal={causal}: done")


if __name__ == "__main__":
    main()
