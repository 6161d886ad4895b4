"""A/B timing of the CPU kernels of two diffattn-compile builds: diffattn.v2
and diffattn.v2_backward (f32, causal, 2H = 8, Hkv = 4) on the same inputs,
each (build, call, shape) in a fresh process with its own kernel cache, the
builds alternating in `--rounds` rounds, so that both meet the same machine
state (on the 2-core development VM, processes running identical machine
code differ by up to 30%: docs/performance.md, CPU 2026-12-04).

    python3 benchmarks/cpu_ab.py --old /tmp/old/diffattn-compile \\
        [--new build/bin/diffattn-compile] [--dims 32 64 128] \\
        [--shapes 4x128 1x512] [--rounds 3]

Prints, per (call, D, shape), the median time of each round for both builds
and the ratio of the rounds' medians (old / new: above 1 is a speed-up), the
range of the per-round ratios in brackets. Time per process: the median of
`--repeats` calls (backward: half as many) after one warm-up call (which
compiles the kernel into the build's cache), in cpu_tiled_vs_decomposed.py's
child process.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_tiled_vs_decomposed  # noqa: E402


def time_call(compiler, cache, call, d, b, s, calls):
    """Median ms of `calls` calls in a fresh process using `compiler`
    (cpu_tiled_vs_decomposed's child: the tiled kernels, f32, causal,
    2H = 8, Hkv = 4, outputs poisoned and checked finite)."""
    result = cpu_tiled_vs_decomposed.run((b, s, 8, 4, d, True), "flash", calls, cache,
                                         backward=call == "backward", compiler=compiler)
    return result["median_s"] * 1e3


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the earlier diffattn-compile")
    parser.add_argument("--new", default=os.path.join(here, "..", "build", "bin",
                                                      "diffattn-compile"))
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--shapes", nargs="+", default=["4x128", "1x512"],
                        help="BxS")
    parser.add_argument("--calls", nargs="+", choices=["forward", "backward"],
                        default=["forward", "backward"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15,
                        help="calls per process (backward: half as many, at least 3)")
    args = parser.parse_args()
    for path in (args.old, args.new):
        if not os.access(path, os.X_OK):
            parser.error(f"no diffattn-compile at {path}")
    shapes = [tuple(int(x) for x in spec.split("x")) for spec in args.shapes]
    with tempfile.TemporaryDirectory() as tmp:
        caches = {name: os.path.join(tmp, name) for name in ("old", "new")}
        compilers = {"old": args.old, "new": args.new}
        times = {}
        for r in range(args.rounds):
            for call in args.calls:
                calls = args.repeats if call == "forward" else max(3, args.repeats // 2)
                for b, s in shapes:
                    for d in args.dims:
                        for name in ("old", "new"):
                            times.setdefault((call, d, b, s, name), []).append(
                                time_call(compilers[name], caches[name], call, d, b, s,
                                          calls))
        print("| call | D | B x S | old ms (rounds) | new ms (rounds) | old / new |")
        print("| --- | --- | --- | --- | --- | --- |")
        for call in args.calls:
            for d in args.dims:
                for b, s in shapes:
                    old, new = times[(call, d, b, s, "old")], times[(call, d, b, s, "new")]
                    ratios = [o / n for o, n in zip(old, new)]
                    print(f"| {call} | {d} | {b} x {s} | "
                          f"{' / '.join(f'{t:.2f}' for t in old)} | "
                          f"{' / '.join(f'{t:.2f}' for t in new)} | "
                          f"**{statistics.median(old) / statistics.median(new):.2f}x** "
                          f"({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
