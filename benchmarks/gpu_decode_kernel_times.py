#!/usr/bin/env python3
"""Per-kernel GPU times of one decode call, ours beside SDPA cuDNN + the
epilogue, on gpu_cases' first two decode shapes (torch.profiler, 20 calls,
L2 flushed before each):

    PYTHONPATH=... DIFFATTN_CACHE_DIR=... python3 benchmarks/gpu_decode_kernel_times.py

Shows where a call's time goes: the split kernel, the combine kernel (or
none, with one split) and how far it overlaps the split kernel, against
cuDNN's kernel and epilogue kernels.
"""
import collections
import os
import sys

import torch
from torch.nn.attention import SDPBackend
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402
import gpu_check  # noqa: E402

from diffattn import _torch  # noqa: E402,F401  (registers torch.ops.diffattn.v2)


def kernel_times(fn, flush, calls=20):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    flushes = {id(e) for e in events if "fill" in e.name.lower() or "zero" in e.name.lower()}
    times = collections.defaultdict(list)
    for e in events:
        if id(e) not in flushes:
            times[e.name].append(e.device_time)
    # Start of each kernel relative to the end of the one before it in the
    # same call (negative: it started before that one ended).
    work = sorted((e for e in events if id(e) not in flushes), key=lambda e: e.time_range.start)
    gaps = collections.defaultdict(list)
    for before, after in zip(work, work[1:]):
        gap = after.time_range.start - before.time_range.end
        if gap < 20:  # same call
            gaps[after.name].append(gap)
    return times, gaps


def main():
    epilogue = gpu_check.make_epilogue()
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for b, kvl, h2, hkv, d in gpu_cases.BENCH_DECODE[:2]:
        q, k, v, lam, kl, (qh, kh, vh) = gpu_check.decode_inputs(b, kvl, h2, hkv, d)
        runs = (("ours", lambda: torch.ops.diffattn.v2(q, k, v, lam, kl, True, None, -1, -1)),
                ("cuDNN + epilogue", gpu_check.sdpa_anchor(SDPBackend.CUDNN_ATTENTION, qh, kh, vh,
                                                           lam, False, epilogue)))
        for name, fn in runs:
            times, gaps = kernel_times(fn, flush)
            print(f"== B={b} kv_len={kvl}: {name}")
            for kernel, ts in times.items():
                gap = gaps.get(kernel)
                after = f", starts {sum(gap) / len(gap):+.1f} us after the previous one ends" if gap else ""
                print(f"  {sum(ts) / len(ts):8.2f} us  {kernel[:90]}{after}")


if __name__ == "__main__":
    main()
