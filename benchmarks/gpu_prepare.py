#!/usr/bin/env python3
"""Compiles, on this machine (no GPU needed), every kernel that
benchmarks/gpu_check.py runs, into a kernel cache directory to carry to the
GPU machine:

    python3 benchmarks/gpu_prepare.py .device/cache [--target sm_90 sm_90a]

The cache keys are the ones the torch path computes there (same op
parameters, target and compiler version), so the GPU machine only loads.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_cases  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache")
    ap.add_argument("--target", nargs="+",
                    default=sorted({"sm_90", "sm_90a"} | {t for t, _, _ in gpu_cases.BENCH_TARGETS}),
                    help="targets to compile every kernel for (default: sm_90, sm_90a (an "
                         "H100/H200's default) and the benchmarked ones, "
                         "gpu_cases.BENCH_TARGETS)")
    args = ap.parse_args()
    os.environ["DIFFATTN_CACHE_DIR"] = os.path.abspath(args.cache)
    from diffattn import _gpu

    seen = set()
    t0 = time.time()
    for req in gpu_cases.all_kernel_requests():
        req = dict(req)
        prepare = _gpu.prepare_v2_varlen if req.pop("varlen", False) else _gpu.prepare_v2
        if req.pop("backward", False):
            prepare = _gpu.prepare_v2_backward
        # A request that names its target is compiled for that one only.
        own = req.pop("target", None)
        for target in [own] if own else args.target:
            seen.add(prepare(**req, target=target)[0])
    print(f"{len(seen)} kernel directories in {args.cache} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
