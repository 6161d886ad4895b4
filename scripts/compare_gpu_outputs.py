#!/usr/bin/env python3
"""Compares what two diffattn-compile binaries make for the GPU targets.

    python3 scripts/compare_gpu_outputs.py BASE_COMPILE NEW_COMPILE [--targets sm_80,sm_90]
        [--work DIR] [--ignore-fields strategy,...]

For every .mlir file under test/ and every kernel request of
benchmarks/gpu_cases.py (a one-op module per request, with its extra
diffattn-compile options), both binaries compile for each target. The
check passes when, for every input, both fail or both succeed, and on
success every .ptx file is byte-identical and the manifests are equal once
the fields named by --ignore-fields (which the newer compiler may add) are
removed from the top level and from each kernel entry. The `compiler` field
(its version string) and `source` are always ignored.

This is how a refactoring of the GPU code generation shows it changed no
kernel: run it with the build of the commit before the work as BASE.
Exit status 0 when everything matches; each difference is printed.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

ALWAYS_IGNORED = {"compiler", "source"}


def lit_inputs():
    for dirpath, _, files in os.walk(os.path.join(ROOT, "test")):
        for name in sorted(files):
            if name.endswith(".mlir"):
                yield os.path.join(dirpath, name), ()


def gpu_case_inputs(work):
    import importlib.util

    import gpu_cases

    # diffattn._ops alone (pure Python, no build needed).
    spec = importlib.util.spec_from_file_location(
        "diffattn_ops", os.path.join(ROOT, "python", "diffattn", "_ops.py"))
    _ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_ops)

    for i, req in enumerate(gpu_cases.all_kernel_requests()):
        req = dict(req)
        options = tuple(req.pop("options", ()))
        if req.pop("varlen", False) or req.get("block_table_shape"):
            continue  # ops added after the refactoring this script checked
        _, text, _, _ = _ops.v2_request(
            req["q_shape"], req["k_shape"], req["v_shape"], req["lam_shape"], req["elem"],
            req["lam_elem"], causal=req["causal"], scale=req.get("scale"),
            window=req["window"], kv_len_shape=req["kv_len_shape"])
        path = os.path.join(work, f"gpu_case_{i}.mlir")
        with open(path, "w") as f:
            f.write(text)
        yield path, options


def legacy_flags(options):
    """--gpu-options="k=v ..." as the separate --k=v flags of older drivers."""
    out = []
    for option in options:
        if option.startswith("--gpu-options="):
            out += [f"--{kv}" for kv in option.split("=", 1)[1].split()]
        else:
            out.append(option)
    return tuple(out)


def compile_one(compiler, source, target, options, out):
    r = subprocess.run([compiler, source, f"--target={target}", "-o", out, *options],
                       capture_output=True)
    return r.returncode


def strip(entry, ignored):
    return {k: v for k, v in entry.items() if k not in ignored}


def compare_dirs(base, new, ignored):
    problems = []
    with open(os.path.join(base, "manifest.json")) as f:
        mb = json.load(f)
    with open(os.path.join(new, "manifest.json")) as f:
        mn = json.load(f)
    kb, kn = mb.pop("kernels"), mn.pop("kernels")
    if strip(mb, ignored | ALWAYS_IGNORED) != strip(mn, ignored | ALWAYS_IGNORED):
        problems.append("manifest top-level fields differ")
    if len(kb) != len(kn):
        problems.append(f"{len(kb)} kernels vs {len(kn)}")
    for eb, en in zip(kb, kn):
        if strip(eb, ignored) != strip(en, ignored):
            keys = sorted(k for k in set(eb) | set(en)
                          if k not in ignored and eb.get(k) != en.get(k))
            problems.append(f"kernel {eb.get('name')}: manifest fields differ: {keys}")
    ptx_b = sorted(n for n in os.listdir(base) if n.endswith(".ptx"))
    ptx_n = sorted(n for n in os.listdir(new) if n.endswith(".ptx"))
    if ptx_b != ptx_n:
        problems.append(f"PTX files differ: {ptx_b} vs {ptx_n}")
    for name in set(ptx_b) & set(ptx_n):
        with open(os.path.join(base, name), "rb") as fb, open(os.path.join(new, name), "rb") as fn:
            if fb.read() != fn.read():
                problems.append(f"{name}: PTX differs")
    return problems, len(ptx_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--targets", default="sm_80,sm_90")
    ap.add_argument("--work", default=None)
    ap.add_argument("--ignore-fields", default="pipeline")
    ap.add_argument("--base-legacy-flags", action="store_true",
                    help="give BASE the GPU options as separate flags (--warps=8), as "
                         "diffattn-compile took them before --gpu-options")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    ignored = set(filter(None, args.ignore_fields.split(",")))
    work = args.work or tempfile.mkdtemp(prefix="compare-gpu-")
    os.makedirs(work, exist_ok=True)
    inputs = list(lit_inputs()) + list(gpu_case_inputs(work))
    jobs = []
    for n, (source, options) in enumerate(inputs):
        for target in args.targets.split(","):
            jobs.append((n, source, options, target))

    def run(job):
        n, source, options, target = job
        outs = [os.path.join(work, f"{which}-{n}-{target}") for which in ("base", "new")]
        base_options = legacy_flags(options) if args.base_legacy_flags else options
        rcs = [compile_one(c, source, target, o_, o)
               for c, o_, o in zip((args.base, args.new), (base_options, options), outs)]
        return job, rcs, outs

    failures, compared, kernels = 0, 0, 0
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for (n, source, options, target), rcs, outs in pool.map(run, jobs):
            label = f"{os.path.relpath(source, ROOT)} {' '.join(options)} --target={target}"
            if (rcs[0] == 0) != (rcs[1] == 0):
                failures += 1
                print(f"DIFF {label}: exit {rcs[0]} (base) vs {rcs[1]} (new)")
                continue
            if rcs[0] != 0:
                continue
            problems, count = compare_dirs(*outs, ignored)
            compared += 1
            kernels += count
            for p in problems:
                failures += 1
                print(f"DIFF {label}: {p}")
    print(f"{compared} compiles compared ({kernels} PTX files), {len(jobs)} attempted; "
          f"{failures} differences")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
