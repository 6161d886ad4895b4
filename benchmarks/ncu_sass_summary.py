#!/usr/bin/env python3
"""Summary of an Nsight Compute source page (SASS) exported as CSV
(ncu -i REPORT --page source --csv --print-source sass > FILE): stall
reasons over all samples, executed warp instructions by opcode, and the
lines with the most stall samples; then the same split between lines run
once per tile (prologue, epilogue: at most 3x the most common executed
count, which is the per-tile count of the kernel's straight-line code) and
lines run per key block (the loops), to place the per-tile cost.

    python3 benchmarks/ncu_sass_summary.py FILE [--top N]
"""
import argparse
import csv
from collections import Counter


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    rows = list(csv.reader(open(args.csv)))
    header, data = rows[1], rows[2:]
    col = {h: i for i, h in enumerate(header)}
    samples = col["Warp Stall Sampling (All Samples)"]
    executed = col["Instructions Executed"]
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    count = lambda r, c: int(r[c] or 0)  # noqa: E731
    total = sum(count(r, samples) for r in data)
    print(f"samples {total}, warp instructions executed {sum(count(r, executed) for r in data)}")
    by_reason = {c: sum(count(r, col[c]) for r in data) for c in reasons}
    for c, v in sorted(by_reason.items(), key=lambda x: -x[1])[:8]:
        print(f"  {c:26s}{v:9d} {100 * v / max(total, 1):5.1f}%")
    opcodes = Counter()
    for r in data:
        words = r[1].strip().split()
        if words:
            op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
            opcodes[op.split(".")[0]] += count(r, executed)
    print("executed by opcode (millions):",
          ", ".join(f"{k} {v / 1e6:.1f}" for k, v in opcodes.most_common(22)))
    top = sorted(range(len(data)), key=lambda i: -count(data[i], samples))[:args.top]
    for i in sorted(top):
        r = data[i]
        s = count(r, samples)
        why = sorted(((count(r, col[c]), c) for c in reasons), reverse=True)[:2]
        print(f"{i:5d} {s:7d} {100 * s / max(total, 1):5.1f}% {r[executed]:>10} {r[1].strip()[:60]:60s} "
              + " ".join(f"{c}={v}" for v, c in why))
    per_tile_split(data, col, samples, executed, reasons, total, args.top // 2)


def per_tile_split(data, col, samples, executed, reasons, total, top):
    """Stall samples of the lines run once per tile against those run per
    key block (see the module docstring)."""
    count = lambda r, c: int(r[c] or 0)  # noqa: E731
    counts = Counter(count(r, executed) for r in data if count(r, executed) > 0)
    if not counts:
        return
    mode = counts.most_common(1)[0][0]
    tile = [r for r in data if 0 < count(r, executed) <= 3 * mode]
    tile_samples = sum(count(r, samples) for r in tile)
    tile_executed = sum(count(r, executed) for r in tile)
    all_executed = sum(count(r, executed) for r in data)
    print(f"per-tile lines (executed <= 3 x {mode}): {len(tile)} lines, "
          f"{100 * tile_samples / max(total, 1):.1f}% of the samples, "
          f"{100 * tile_executed / max(all_executed, 1):.1f}% of the executed instructions")
    by_reason = {c: sum(count(r, col[c]) for r in tile) for c in reasons}
    for c, v in sorted(by_reason.items(), key=lambda x: -x[1])[:6]:
        print(f"  {c:26s}{v:9d} {100 * v / max(total, 1):5.1f}% of all samples")
    for r in sorted(tile, key=lambda r: -count(r, samples))[:top]:
        s = count(r, samples)
        why = sorted(((count(r, col[c]), c) for c in reasons), reverse=True)[:2]
        print(f"  {s:7d} {100 * s / max(total, 1):5.1f}% {r[executed]:>10} {r[1].strip()[:60]:60s} "
              + " ".join(f"{c}={v}" for v, c in why))


if __name__ == "__main__":
    main()
