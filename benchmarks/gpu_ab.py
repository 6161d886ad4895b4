"""A/B timing of kernels: the same prefill calls (gpu_cases.BENCH_PREFILL,
bf16, the default GPU target) compiled by this tree's compiler with its
defaults ("current"), by earlier builds of it, and with strategy options,
timed in one process on the same inputs, each once per round, in an order
shuffled afresh each round (`--seed`), so that a kernel change is measured
against the kernel before it on the same machine at the same time (between
machines, or minutes apart, a few percent is noise). The order matters:
under the earlier rotation of one fixed order (the same neighbours every
round) the first entry, which came right after "fa3+epi" in every round
but the first, ran 2-4% slower in the later rounds while the others held
steady (Hopper runs 51-52); with shuffled orders (run 53) no entry shows a
neighbour or drift effect beyond the rounds' 1-2% spread.

On a machine with the compilers (no GPU needed):

    python3 benchmarks/gpu_ab.py --prepare .device/cache \\
        --compiler base=/tmp/base/diffattn-compile \\
        --compiler "base-persistent=/tmp/base/diffattn-compile:persistent=true@128" \\
        --variant "two-stages=stages=2 block-k=176@128"

compiles the calls with each named compiler (keys carry each compiler's
--version line) and with each variant's strategy options (this tree's
compiler with --gpu-options=OPTIONS; `@D,D...` limits a variant to those
head dimensions), and with this tree's defaults ("current"), into the
cache and records them in CACHE/ab-compilers.json. On the GPU machine
(DIFFATTN_CACHE_DIR = that cache, no compiler there):

    python3 benchmarks/gpu_ab.py --out DIR

times "current" and every recorded entry on every shape (`--repeats`
rounds; the median of the rounds' medians), checks that their outputs agree
(relative L2 against the current kernel's), prints a table and writes
DIR/gpu_ab.json. `--shape BxS[xD][:full]` (with --prepare, repeatable) times
these prefill shapes (2H = 32, Hkv = 8, D = 128 unless given; causal
unless `:full`) instead of BENCH_PREFILL; a sweep of S at a fixed B x S
keeps the tile count fixed and varies the key blocks per tile, which
separates a kernel's per-tile cost from its per-block cost. Where
fa3-fwd is installed (Hopper), FlashAttention-3's kernel alone ("fa3")
and with the differential epilogue ("fa3+epi", gpu_check.fa3_anchor) are
timed in the same rounds on the prefill shapes. With `--backward` (both steps) the calls are the
backward's (gpu_cases.BACKWARD_BENCH, diffattn.v2_backward's kernels alone
on the training forward's out, lse and out_odd, as autograd calls them; the
outputs compared are dq, dk, dv, dlam)
and the table goes to DIR/gpu_ab-backward.json. `--clocks SECONDS` then
runs each entry of each shape back to back for SECONDS and records the SM
clock, board power and power-cap share NVML reported meanwhile
(gpu_clocks.py): two kernels timed at the board's clocks may not run at
the same clock.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

from diffattn import _compiler, _gpu  # noqa: E402

RECORD = "ab-compilers.json"


def record_path(cache, backward):
    """The record of the prepared entries: one for the prefill calls, one for
    the backward's, so that both fit one cache."""
    return os.path.join(cache, "ab-compilers-backward.json" if backward else RECORD)


def shapes(b, s, h2, hkv, d):
    return (b, s, h2, d), (b, s, hkv, d), (b, s, hkv, d), (b, s, h2 // 2)


def use_compiler(version_line):
    """Makes the package's cache keys those of the compiler that prints
    `version_line` (None: this tree's)."""
    _compiler.compiler_version = (lambda: version_line) if version_line else _ORIGINAL_VERSION
    _gpu.prepare_v2.cache_clear()
    _gpu.prepare_v2_backward.cache_clear()


_ORIGINAL_VERSION = _compiler.compiler_version


def applies(entry, d):
    return entry["dims"] is None or d in entry["dims"]


def backward_shapes(b, s, h2, hkv, d):
    out = (b, s, h2 // 2, d)
    # With out_odd: the backward autograd runs after the training forward.
    return dict(q_shape=(b, s, h2, d), k_shape=(b, s, hkv, d), v_shape=(b, s, hkv, d),
                lam_shape=(b, s, h2 // 2), out_shape=out, dout_shape=out, lse_shape=(b, h2, s),
                out_odd_shape=out)


def prepare_call(backward, b, s, h2, hkv, d, causal, target, options):
    """Compiles (or finds) one call's kernel: the prefill forward, or with
    `backward` diffattn.v2_backward; returns prepare_v2's or
    prepare_v2_backward's result."""
    if backward:
        return _gpu.prepare_v2_backward(**backward_shapes(b, s, h2, hkv, d), elem="bf16",
                                        lam_elem="bf16", causal=causal, target=target,
                                        options=tuple(options))
    return _gpu.prepare_v2(*shapes(b, s, h2, hkv, d), "bf16", "bf16", causal=causal,
                           target=target, options=tuple(options))


def calls(backward, record=None):
    """The calls timed: the record's `--shape`s, else the backward's
    (BACKWARD_BENCH) or BENCH_PREFILL."""
    if record and record.get("shapes"):
        return [tuple(x) for x in record["shapes"]]
    return gpu_cases.BACKWARD_BENCH if backward else gpu_cases.BENCH_PREFILL


def parse_shape(spec):
    """`BxS[xD][:full|:causal]` -> (B, S, 32, 8, D, causal); D = 128 and
    causal unless given. Raises ValueError."""
    dims, _, mask = spec.partition(":")
    if mask not in ("", "causal", "full"):
        raise ValueError(f"mask {mask!r} is not 'causal' or 'full'")
    parts = [int(x) for x in dims.split("x")]
    if len(parts) not in (2, 3) or min(parts) <= 0:
        raise ValueError("expected BxS or BxSxD with positive sizes")
    b, s = parts[:2]
    d = parts[2] if len(parts) == 3 else 128
    return (b, s, 32, 8, d, mask != "full")


def prepare(cache, entries, target, backward=False, shapes_=None):
    """Compiles the calls of every entry (name -> compiler path or None for
    this tree's, options, head dimensions or None) into `cache`: the calls
    of `shapes_`, else BENCH_PREFILL's or with `backward` BACKWARD_BENCH's
    (prefill calls, or with `backward` diffattn.v2_backward's). The current
    compiler's defaults ("current", which every timing compares against) are
    compiled too, with `backward` also the training forward (out, lse,
    out_odd) that the timing step runs on each shape before the backward
    kernels; kernels already in `cache` (gpu_prepare.py's) are found, not
    compiled again."""
    os.environ["DIFFATTN_CACHE_DIR"] = cache
    os.makedirs(cache, exist_ok=True)
    own = os.environ.get("DIFFATTN_COMPILE")
    record = {}
    wanted = dict(shapes=[list(x) for x in shapes_]) if shapes_ else {}
    todo = {"current": (None, (), None), **entries}
    for name, (path, options, dims) in todo.items():
        if path:
            os.environ["DIFFATTN_COMPILE"] = path
        elif own:
            os.environ["DIFFATTN_COMPILE"] = own
        else:
            os.environ.pop("DIFFATTN_COMPILE", None)
        _compiler._compiler_version.cache_clear()
        version = _ORIGINAL_VERSION()
        if version is None:
            sys.exit(f"{name}: the compiler {_compiler.compiler_path()} does not run")
        entry = dict(compiler=version if path else None, options=list(options), dims=dims)
        use_compiler(entry["compiler"])
        count = 0
        for b, s, h2, hkv, d, causal in calls(backward, wanted):
            if applies(entry, d):
                prepare_call(backward, b, s, h2, hkv, d, causal, target, options)
                count += 1
            if backward and name == "current":
                _gpu.prepare_v2(*shapes(b, s, h2, hkv, d), "bf16", "bf16", causal=causal,
                                target=target, return_lse=True, return_out_odd=True)
        if name != "current":
            record[name] = entry
        print(f"{name}: {version} {' '.join(options)}: {count} kernels", flush=True)
    with open(record_path(cache, backward), "w") as f:
        json.dump(dict(target=target, entries=record, **wanted), f, indent=1)


def run(out_dir, repeats, backward, seed=0, clocks=0.0):
    cache = _compiler.cache_dir()
    path = record_path(cache, backward)
    if not os.path.exists(path):
        sys.exit(f"gpu_ab: no {path}: prepare the kernel cache first with "
                 f"`gpu_ab.py --prepare CACHE{' --backward' if backward else ''}` "
                 f"and run with DIFFATTN_CACHE_DIR=CACHE")
    with open(path) as f:
        record = json.load(f)

    import torch

    import gpu_check

    if clocks > 0:
        import pynvml  # noqa: F401 -- fail before any timing without nvidia-ml-py

        import gpu_clocks
    target = record["target"]
    current = dict(compiler=None, options=[], dims=None)
    entries = [("current", current)] + sorted(record["entries"].items())
    rows = []
    fa3 = None if backward else gpu_check.fa3_anchor()
    if fa3 is not None:
        from fa3_fwd_interface import flash_attn_func
    for b, s, h2, hkv, d, causal in calls(backward, record):
        q = torch.randn(b, s, h2, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(b, s, h2 // 2, device="cuda", dtype=torch.bfloat16)
        pairs = s * (s + 1) // 2 if causal else s * s
        # The backward's FLOPs: 2.5 x the forward's (FlashAttention's).
        flops = (2.5 if backward else 1) * 4 * b * h2 * d * pairs
        named = [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam)]
        if backward:
            from diffattn import _torch

            # The training forward's saved tensors, as autograd keeps them.
            out, lse, out_odd = _torch.v2_train_cuda(q, k, v, lam, None, causal, None, -1, -1)
            dout = torch.randn_like(out)
        launches, outs = {}, {}
        compilers = [(name, e) for name, e in entries if applies(e, d)]
        for name, entry in compilers:
            use_compiler(entry["compiler"])
            if backward:
                directory, sizes = prepare_call(True, b, s, h2, hkv, d, causal, target,
                                                entry["options"])
                grads = [torch.full_like(x, float("nan")) for x in (q, k, v, lam)]
                bnamed = named + [("out", "bf16", out), ("dout", "bf16", dout),
                                  ("lse", "f32", lse), ("out_odd", "bf16", out_odd)] + [
                    (n, "bf16", x) for n, x in zip(("dq", "dk", "dv", "dlam"), grads)]

                def launch(directory=directory, sizes=sizes, bnamed=bnamed, device=q.device):
                    _torch._launch(directory, bnamed, sizes, device)
            else:
                directory, out_shape, sizes = prepare_call(False, b, s, h2, hkv, d, causal,
                                                           target, entry["options"])[:3]
                launch, result = gpu_check.direct_launch(directory, out_shape, sizes, named)
            launch()
            torch.cuda.synchronize()
            if backward:
                result = torch.cat([x.float().flatten() for x in grads])
            launches[name], outs[name] = launch, result
        use_compiler(None)
        anchors = []
        if fa3 is not None:
            # FlashAttention-3's kernel alone (no epilogue: what the op's
            # attention part is up against), and the whole path.
            launches["fa3"] = lambda: flash_attn_func(q, k, v, causal=causal)  # noqa: E731
            launches["fa3+epi"] = lambda: fa3(q, k, v, lam, causal)  # noqa: E731
            outs["fa3+epi"] = launches["fa3+epi"]()
            anchors = [("fa3", None), ("fa3+epi", None)]
        # A fresh order each round: a drift within rounds (backward run 37),
        # or what an entry inherits from the one before it (Hopper runs
        # 51-52, after FA3), falls on every entry alike. (launches holds the
        # compilers, then the anchors, in that order.)
        ms_of, times, rounds_order = gpu_check.time_in_rounds(launches, repeats,
                                                              f"{seed}/{len(rows)}")
        row = dict(shape=[b, s, h2, hkv, d, causal], rounds_order=rounds_order)
        for name, _ in compilers + anchors:
            ms = ms_of[name]
            row[name] = dict(ms=ms, tflops=flops / ms / 1e9, rounds_ms=times[name])
            if name in outs:
                row[name]["rel_l2_vs_current"] = gpu_check.rel_l2(outs[name], outs["current"])
        if clocks > 0:
            # Each entry alone for `clocks` seconds, in this shape's first
            # round's order: the SM clock and power it runs at.
            uuid = getattr(torch.cuda.get_device_properties(q.device), "uuid", None)
            for name in rounds_order[0]:
                row[name]["clocks"] = gpu_clocks.sustained(
                    launches[name], clocks, torch.cuda.synchronize, uuid)
                c = row[name]["clocks"]
                if not c["samples"]:
                    print(f"  {name}: no NVML sample in {clocks} s", flush=True)
                    continue
                print(f"  {name}: SM {c['sm_mhz']:.0f} MHz (min {c['sm_mhz_min']}), "
                      f"{c['power_w']:.0f} W, power-capped {100 * c['power_capped']:.0f}% "
                      f"of {c['samples']} samples, thermal {100 * c['thermal']:.0f}%, "
                      f"{1e3 / c['calls_per_s']:.3f} ms per call", flush=True)
        rows.append(row)
        cur = row["current"]["ms"]
        text = ", ".join(f"{name} {row[name]['tflops']:.0f} ({cur / row[name]['ms']:.3f}x of "
                         f"current, rel L2 {row[name].get('rel_l2_vs_current', float('nan')):.1e})"
                         for name, _ in compilers[1:] + anchors)
        print(f"B={b} S={s} 2H={h2} Hkv={hkv} D={d} {'causal' if causal else 'full'}: current "
              f"{row['current']['tflops']:.0f} TFLOP/s ({cur:.3f} ms); {text}", flush=True)
        del q, k, v, lam, launches, outs
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu_ab-backward.json" if backward else "gpu_ab.json"),
              "w") as f:
        json.dump(dict(target=target, seed=seed, entries=record["entries"],
                       shapes=[list(x) for x in calls(backward, record)],
                       **{"backward" if backward else "prefill": rows}), f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", metavar="CACHE",
                    help="compile the calls with each --compiler into CACHE")
    ap.add_argument("--compiler", action="append", default=[],
                    metavar="NAME=PATH[:OPTIONS[@D,...]]",
                    help="an earlier diffattn-compile build, named, with its defaults or "
                         "with strategy options as --variant's (with --prepare)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS[@D,...]",
                    help="this tree's compiler with --gpu-options=OPTIONS, named, optionally "
                         "for these head dimensions only (with --prepare)")
    ap.add_argument("--target", default="sm_90a", help="the target compiled for (--prepare)")
    ap.add_argument("--backward", action="store_true",
                    help="the backward's calls (gpu_cases.BACKWARD_BENCH: diffattn.v2_backward "
                         "alone, TFLOP/s = 2.5 x the forward's FLOPs / time) instead of the "
                         "prefill's, each with its own record in the cache")
    ap.add_argument("--shape", action="append", default=[], metavar="BxS[xD][:full]",
                    help="a shape to time instead of BENCH_PREFILL (or with --backward "
                         "BACKWARD_BENCH; with --prepare; 2H = 32, Hkv = 8; D = 128 and "
                         "causal unless given)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"),
                    help="where gpu_ab.json goes (timing)")
    ap.add_argument("--repeats", type=int, default=7, help="timing rounds")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the rounds' entry orders (each round shuffles the entries)")
    ap.add_argument("--clocks", type=float, default=0.0, metavar="SECONDS",
                    help="after each shape's rounds, run each entry back to back for SECONDS "
                         "and record the SM clock, board power and power-cap share NVML "
                         "reports meanwhile (gpu_clocks.py; needs nvidia-ml-py)")
    args = ap.parse_args()
    if args.prepare:
        entries = {}
        for flag, specs in (("--compiler", args.compiler), ("--variant", args.variant)):
            for spec in specs:
                name, sep, value = spec.partition("=")
                if not sep or not name or not value or name == "current" or name in entries:
                    ap.error(f"{flag} {spec!r}: expected NAME=VALUE with a new NAME, not "
                             f"'current'")
                path = None
                if flag == "--compiler":
                    path, colon, value = value.partition(":")
                    if not colon:
                        entries[name] = (path, (), None)
                        continue
                options, at, dims = value.partition("@")
                try:
                    dims = [int(x) for x in dims.split(",")] if at else None
                except ValueError:
                    ap.error(f"--variant {spec!r}: head dimensions after @ must be integers")
                entries[name] = (path, (f"--gpu-options={options}",), dims)
        if not entries and not args.shape:
            ap.error("--prepare needs at least one --compiler, --variant or --shape")
        try:
            shapes_ = [parse_shape(x) for x in args.shape]
        except ValueError as e:
            ap.error(f"--shape: {e}")
        prepare(args.prepare, entries, args.target, args.backward, shapes_)
    else:
        if args.compiler or args.variant or args.shape:
            ap.error("--compiler, --variant and --shape go with --prepare")
        run(args.out, args.repeats, args.backward, args.seed, args.clocks)


if __name__ == "__main__":
    main()
