#!/usr/bin/env python3
"""CPU benchmark: the FlashAttention-tiled kernel against the decomposed
(untiled) lowering of the same diffattn.v2 op, both compiled by
diffattn-compile, on the same inputs; with --backward, the same for
diffattn.v2_backward (tiled over blocks of query rows and of keys, the
key blocks no row of a block sees skipped, against all keys at once; GFLOP/s counts 2.5x the forward's FLOPs, FlashAttention's
convention, and the memory is the growth during the backward calls).

Each (shape, lowering) runs in a fresh process, so its peak memory (growth
of the maximum resident set from after the inputs are allocated to after the
calls: the kernel's temporaries plus the loaded shared object) is its own. Time is the median
of --repeats calls after one warm-up call (which also compiles the kernel).

    python3 benchmarks/cpu_tiled_vs_decomposed.py [--repeats 5] [--markdown] [--backward]

Not a test: it prints a table (and, with --markdown, the rows for
docs/performance.md).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
from diffattn import _cpu
b, s, h2, hkv, d, causal, lowering, repeats, backward = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
q = rng.standard_normal((b, s, h2, d), dtype=np.float32)
k = rng.standard_normal((b, s, hkv, d), dtype=np.float32)
v = rng.standard_normal((b, s, hkv, d), dtype=np.float32)
lam = rng.standard_normal((b, s, h2 // 2), dtype=np.float32)
out = np.empty((b, s, h2 // 2, d), np.float32)
if backward:  # the forward's out and lse (tiled), and an output gradient
    out, lse = _cpu.v2(q, k, v, lam, causal=causal, return_lse=True)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    call = lambda: _cpu.v2_backward(q, k, v, lam, out, dout, lse, causal=causal,
                                    lowering=lowering)
else:
    call = lambda: _cpu.v2(q, k, v, lam, causal=causal, out=out, lowering=lowering)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # inputs resident
call()  # compile + warm up
times = []
for _ in range(repeats):
    out.fill(np.nan) if not backward else None
    t0 = time.perf_counter()
    result = call()
    times.append(time.perf_counter() - t0)
    assert all(np.all(np.isfinite(x)) for x in (result if backward else (out,)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"median_s": statistics.median(times), "peak_growth_mib": (peak - base) / 1024,
                  "inputs_mib": (q.nbytes + k.nbytes + v.nbytes + lam.nbytes + out.nbytes) / 2**20}))
"""

SHAPES = [  # B, S, 2H, Hkv, D, causal
    (1, 512, 4, 2, 64, True),
    (1, 1024, 4, 2, 64, True),
    (1, 2048, 4, 2, 64, True),
    (1, 4096, 4, 2, 64, True),
    (1, 2048, 4, 2, 64, False),
    (2, 1024, 8, 2, 128, True),
]


def flops(b, s, h2, d, causal, backward=False):
    pairs = s * (s + 1) // 2 if causal else s * s
    return 4 * b * h2 * d * pairs * (2.5 if backward else 1)


def run(shape, lowering, repeats, cache, backward=False, compiler=None):
    """One (shape, lowering) in a fresh process with kernel cache `cache` (and
    the diffattn-compile at `compiler`, else the package's): the child's
    median seconds, peak memory growth and input size."""
    env = dict(os.environ, DIFFATTN_CACHE_DIR=cache)
    if compiler:
        env["DIFFATTN_COMPILE"] = compiler
    arg = json.dumps([*shape, lowering, repeats, backward])
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed for {shape} {lowering}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--backward", action="store_true",
                    help="time diffattn.v2_backward instead of the forward (shapes up to S = 2048)")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="diffattn-bench-cache-")
    rows = []
    header = f"{'shape (B x S, 2H/Hkv, D)':28} {'mask':6} {'tiled ms':>9} {'GFLOP/s':>8} {'peak MiB':>9} " \
             f"{'decomp ms':>10} {'GFLOP/s':>8} {'peak MiB':>9} {'speedup':>8}"
    print(header)
    # The untiled backward holds several [B, 2H, S, S] f32 terms at once:
    # S = 4096 would need gigabytes.
    shapes = [x for x in SHAPES if x[1] <= 2048] if args.backward else SHAPES
    print("diffattn.v2_backward" if args.backward else "diffattn.v2")
    for shape in shapes:
        b, s, h2, hkv, d, causal = shape
        tiled = run(shape, "flash", args.repeats, cache, args.backward)
        dec = run(shape, "decompose", args.repeats, cache, args.backward)
        f = flops(b, s, h2, d, causal, args.backward)
        row = dict(shape=f"{b} x {s}, {h2}/{hkv}, {d}", mask="causal" if causal else "none",
                   tiled_ms=tiled["median_s"] * 1e3, tiled_gflops=f / tiled["median_s"] / 1e9,
                   tiled_mib=tiled["peak_growth_mib"], dec_ms=dec["median_s"] * 1e3,
                   dec_gflops=f / dec["median_s"] / 1e9, dec_mib=dec["peak_growth_mib"],
                   speedup=dec["median_s"] / tiled["median_s"], inputs_mib=tiled["inputs_mib"])
        rows.append(row)
        print(f"{row['shape']:28} {row['mask']:6} {row['tiled_ms']:9.1f} {row['tiled_gflops']:8.2f} "
              f"{row['tiled_mib']:9.1f} {row['dec_ms']:10.1f} {row['dec_gflops']:8.2f} {row['dec_mib']:9.1f} "
              f"{row['speedup']:7.2f}x", flush=True)
    if args.markdown:
        print("\n| shape (B x S, 2H/Hkv, D) | mask | tiled ms | tiled GFLOP/s | tiled peak MiB | "
              "decomposed ms | decomposed GFLOP/s | decomposed peak MiB | speedup |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['shape']} | {r['mask']} | {r['tiled_ms']:.1f} | {r['tiled_gflops']:.2f} | "
                  f"{r['tiled_mib']:.1f} | {r['dec_ms']:.1f} | {r['dec_gflops']:.2f} | {r['dec_mib']:.1f} | "
                  f"{r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
