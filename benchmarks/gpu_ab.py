"""A/B timing of compilers: the same prefill calls (gpu_cases.BENCH_PREFILL,
bf16, the default GPU target's default kernel) compiled by this tree's
compiler and by earlier builds of it, timed in one process on the same
inputs, so that a kernel change is measured against the kernel before it
on the same machine (between machines a few percent is noise).

On a machine with the compilers (no GPU needed):

    python3 benchmarks/gpu_ab.py --prepare .device/cache \\
        --compiler base=/tmp/base/diffattn-compile [--compiler NAME=PATH ...]

compiles the calls with each named compiler into the cache (keys carry each
compiler's --version line) and records the names and version lines in
CACHE/ab-compilers.json; `gpu_prepare.py` prepares this tree's kernels. On
the GPU machine (DIFFATTN_CACHE_DIR = that cache, no compiler there):

    python3 benchmarks/gpu_ab.py --out DIR

times "current" (this tree) and every recorded compiler on every shape
(`--repeats` rounds, each compiler once per round in turn; the median of
the rounds' medians), checks that their outputs agree (relative L2 against
the current kernel's), prints a table and writes DIR/gpu_ab.json.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

from diffattn import _compiler, _gpu  # noqa: E402

RECORD = "ab-compilers.json"


def shapes(b, s, h2, hkv, d):
    return (b, s, h2, d), (b, s, hkv, d), (b, s, hkv, d), (b, s, h2 // 2)


def use_compiler(version_line):
    """Makes the package's cache keys those of the compiler that prints
    `version_line` (None: this tree's)."""
    _compiler.compiler_version = (lambda: version_line) if version_line else _ORIGINAL_VERSION
    _gpu.prepare_v2.cache_clear()


_ORIGINAL_VERSION = _compiler.compiler_version


def prepare(cache, compilers, target):
    os.environ["DIFFATTN_CACHE_DIR"] = cache
    record = {}
    for name, path in compilers:
        os.environ["DIFFATTN_COMPILE"] = path
        _compiler._compiler_version.cache_clear()
        version = _ORIGINAL_VERSION()
        if version is None:
            sys.exit(f"--compiler {name}: {path} does not run")
        use_compiler(version)
        for b, s, h2, hkv, d, causal in gpu_cases.BENCH_PREFILL:
            _gpu.prepare_v2(*shapes(b, s, h2, hkv, d), "bf16", "bf16", causal=causal,
                            target=target)
        record[name] = version
        print(f"{name}: {version}: {len(gpu_cases.BENCH_PREFILL)} kernels", flush=True)
    with open(os.path.join(cache, RECORD), "w") as f:
        json.dump(dict(target=target, compilers=record), f, indent=1)


def run(out_dir, repeats):
    import torch

    import gpu_check

    cache = _compiler.cache_dir()
    with open(os.path.join(cache, RECORD)) as f:
        record = json.load(f)
    target = record["target"]
    compilers = [("current", None)] + sorted(record["compilers"].items())
    rows = []
    for b, s, h2, hkv, d, causal in gpu_cases.BENCH_PREFILL:
        q = torch.randn(b, s, h2, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(b, s, h2 // 2, device="cuda", dtype=torch.bfloat16)
        pairs = s * (s + 1) // 2 if causal else s * s
        flops = 4 * b * h2 * d * pairs
        named = [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam)]
        launches, outs = {}, {}
        for name, version in compilers:
            use_compiler(version)
            directory, out_shape, sizes = _gpu.prepare_v2(
                *shapes(b, s, h2, hkv, d), "bf16", "bf16", causal=causal, target=target)
            out = torch.full(out_shape, float("nan"), dtype=torch.bfloat16, device="cuda")
            workspace = torch.empty(_gpu.workspace_elements(directory, sizes),
                                    dtype=torch.float32, device="cuda")
            bufs = [(n, dt, tuple(t.shape), t.data_ptr())
                    for n, dt, t in named + [("out", "bf16", out)]]
            stream = torch.cuda.current_stream().cuda_stream

            def launch(directory=directory, bufs=bufs, sizes=sizes, stream=stream,
                       workspace=workspace):
                _gpu.launch_v2(directory, bufs, sizes, stream, lambda n: workspace.data_ptr())

            launch()
            torch.cuda.synchronize()
            launches[name], outs[name] = launch, out
        use_compiler(None)
        times = {name: [] for name, _ in compilers}
        for _ in range(repeats):
            for name, _ in compilers:
                times[name].append(gpu_check.bench_fn(launches[name]))
        row = dict(shape=[b, s, h2, hkv, d, causal])
        for name, _ in compilers:
            ms = statistics.median(times[name])
            row[name] = dict(ms=ms, tflops=flops / ms / 1e9, rounds_ms=times[name],
                             rel_l2_vs_current=gpu_check.rel_l2(outs[name], outs["current"]))
        rows.append(row)
        cur = row["current"]["ms"]
        text = ", ".join(f"{name} {row[name]['tflops']:.0f} ({cur / row[name]['ms']:.3f}x of "
                         f"current, rel L2 {row[name]['rel_l2_vs_current']:.1e})"
                         for name, _ in compilers[1:])
        print(f"B={b} S={s} 2H={h2} Hkv={hkv} D={d} {'causal' if causal else 'full'}: current "
              f"{row['current']['tflops']:.0f} TFLOP/s ({cur:.3f} ms); {text}", flush=True)
        del q, k, v, lam, launches, outs
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu_ab.json"), "w") as f:
        json.dump(dict(target=target, compilers=record["compilers"], prefill=rows), f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", metavar="CACHE",
                    help="compile the calls with each --compiler into CACHE")
    ap.add_argument("--compiler", action="append", default=[], metavar="NAME=PATH",
                    help="an earlier diffattn-compile build, named (with --prepare)")
    ap.add_argument("--target", default="sm_90a", help="the target compiled for (--prepare)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"),
                    help="where gpu_ab.json goes (timing)")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds")
    args = ap.parse_args()
    if args.prepare:
        compilers = []
        for spec in args.compiler:
            name, sep, path = spec.partition("=")
            if not sep or not name or name == "current":
                ap.error(f"--compiler {spec!r}: expected NAME=PATH with NAME not 'current'")
            compilers.append((name, path))
        if not compilers:
            ap.error("--prepare needs at least one --compiler NAME=PATH")
        prepare(args.prepare, compilers, args.target)
    else:
        if args.compiler:
            ap.error("--compiler goes with --prepare")
        run(args.out, args.repeats)


if __name__ == "__main__":
    main()
