#!/usr/bin/env python3
"""Compiles, on this machine (no GPU needed), every kernel that
benchmarks/gpu_check.py runs, into a kernel cache directory to carry to the
GPU machine:

    python3 benchmarks/gpu_prepare.py .device/cache [--target sm_90 sm_90a]

The cache keys are the ones the torch path computes there (same op
parameters, target and compiler version), so the GPU machine only loads.
The GPU machine, which has no compiler, keys the cache by the source id of
the tree it was given (cmake/SourceId.cmake): the compiler here must be
built from this very tree, so the script refuses to run when it is not
(rebuild with `ninja -C build`), and kernels prepared here are found there
only if no file of include/, lib/ or tools/ changes in between.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_cases  # noqa: E402


def tree_source_id():
    """The source id of this checkout, computed by cmake/SourceId.cmake (the
    script both builds run), or None where cmake cannot run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "source_id.py")
        try:
            subprocess.run(["cmake", f"-DSRC_DIR={root}", f"-DOUT_PYTHON={out}", "-P",
                            os.path.join(root, "cmake", "SourceId.cmake")],
                           check=True, capture_output=True, timeout=120)
            with open(out) as f:
                found = re.search(r'SOURCE_ID = "([0-9a-f]+)"', f.read())
        except (OSError, subprocess.SubprocessError):
            return None
    return found.group(1) if found else None


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
    from diffattn import _compiler, _gpu

    version = _compiler.compiler_version()
    if version is None:
        sys.exit(f"gpu_prepare: no compiler runs at {_compiler.compiler_path()}")
    tree = tree_source_id()
    if tree is not None and f"(source {tree})" not in version:
        sys.exit(f"gpu_prepare: the compiler ({version}) was not built from this tree "
                 f"(source {tree}); rebuild it (ninja -C build): the GPU machine keys its "
                 f"kernel cache by the tree's id")
    print(f"preparing for {version}", flush=True)

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
