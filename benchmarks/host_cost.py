#!/usr/bin/env python3
"""Host cost of one eager decode step, and graph-replay time per step
(issue 16, items 4-5): diffattn.v2 against SDPA cuDNN + a torch.compile'd
epilogue, at decode shapes (one token, D 128, 32 query / 8 KV heads, bf16,
B x kv_len from gpu_cases.HOST_COST_DECODE).

    python3 benchmarks/host_cost.py --out DIR [--calls 200] [--repeats 15]

Host time per call: `calls` eager calls timed with time.perf_counter and no
synchronisation inside the loop (the GPU work queues behind them), median
over `repeats` loops, each after a synchronisation. Step time: the same loop
plus the synchronisation, per call: what an eager step costs when the host
is the bottleneck. Graph replay: one step captured in a CUDA graph, replayed
`calls` times between CUDA events, per replay.

Paths timed for the op: `diffattn.v2` (the public call: the C++ kernel
where it is built), `torch.ops.diffattn.v2` directly (also under
torch.inference_mode, which skips the autograd dispatch), and, in a child
process with DIFFATTN_TORCH_EXT=off, the Python custom op (the path without
the C++ kernel). Beside them: the floor of a torch op on this host (an
allocation; an ATen op launching one kernel), the C++ kernel's own host time
by phase (diffattn_ext::timing), and torch.profiler's table of the public
call. Prints a table and writes DIR/host_cost.json and DIR/profile.txt.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_cases  # noqa: E402

H2, HKV, D = 32, 8, 128


def inputs(torch, b, kvl):
    q = torch.randn(b, 1, H2, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, kvl, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, kvl, HKV, D, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, 1, H2 // 2, device="cuda", dtype=torch.bfloat16)
    kv_len = torch.full((b,), kvl, device="cuda", dtype=torch.int32)
    return q, k, v, lam, kv_len


def host_and_step_us(torch, fn, calls, repeats):
    """(median host μs per call, median step μs per call)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    host, step = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host.append((t1 - t0) / calls * 1e6)
        step.append((t2 - t0) / calls * 1e6)
    return statistics.median(host), statistics.median(step)


def replay_us(torch, fn, calls):
    """μs per replay of a CUDA graph of one call of fn (warmed up first)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(calls):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def op_paths(torch, diffattn, q, k, v, lam, kv_len):
    return {
        "diffattn.v2": lambda: diffattn.v2(q, k, v, lam, causal=True, kv_len=kv_len),
        "torch.ops.diffattn.v2": lambda: torch.ops.diffattn.v2(q, k, v, lam, kv_len, True, None,
                                                               -1, -1),
    }


def sdpa_path(torch, q, k, v, lam):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))

    @torch.compile
    def epilogue(a, lam):  # a: [B, 2H, 1, D] (SDPA layout), lam: [B, 1, H]
        a = a.transpose(1, 2)
        return a[:, :, 0::2] - torch.sigmoid(lam.float()).to(a.dtype)[..., None] * a[:, :, 1::2]

    def run():
        # One token sees every key: not is_causal (SDPA's is top-left).
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            a = F.scaled_dot_product_attention(qh, kh, vh, enable_gqa=True)
        return epilogue(a, lam)

    return run


def floor_paths(torch, q, lam):
    """What a torch op costs on this host: an allocation, and an ATen op
    launching one kernel (out = a + b), at the op's output size."""
    shape = (q.shape[0], q.shape[1], lam.shape[2], q.shape[3])
    a = torch.randn(shape, device="cuda", dtype=q.dtype)
    b, c = torch.randn_like(a), torch.empty_like(a)
    return {
        "floor: torch.empty": lambda: torch.empty(shape, device=q.device, dtype=q.dtype),
        "floor: torch.add(out=)": lambda: torch.add(a, b, out=c),
    }


def kernel_breakdown(torch, fn, calls):
    """Per call, in μs: the C++ kernel's own host time by phase
    (diffattn_ext::timing) and the runtime's diffattn_launch by phase
    (diffattn_launch_timing: plan look-up, driver and context, pointer
    writes, each stage's driver launch), or None where the C++ kernel is not
    active. Synchronises every 50 calls, so that a full launch queue never
    makes a driver launch wait for the GPU."""
    from diffattn import _runtime

    try:
        torch.ops.diffattn_ext.timing(True)
    except (AttributeError, RuntimeError):
        return None
    runtime_timing = hasattr(_runtime.runtime(), "diffattn_launch_timing")
    if runtime_timing:
        _runtime.launch_timing(True)
    for i in range(calls):
        fn()
        if i % 50 == 49:
            torch.cuda.synchronize()
    n, lookup, alloc, launch, total = torch.ops.diffattn_ext.timing(False)
    phases = _runtime.launch_timing(False) if runtime_timing else {}
    torch.cuda.synchronize()
    if not n:
        return None
    result = dict(lookup_us=lookup / n, alloc_us=alloc / n, launch_us=launch / n,
                  kernel_total_us=total / n)
    launches = phases.get("launches", 0)
    if launches:
        result["runtime"] = {k: v / launches for k, v in phases.items()
                             if k.endswith("_us")}
        result["runtime"]["misses"] = phases["misses"]
    return result


def profile(torch, fn, path):
    """torch.profiler's table of `fn` (50 calls): CPU time by op, and the
    driver's launch calls where CUPTI records them."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    fn()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    with open(path, "w") as f:
        f.write(table)
    return table


def child(args):
    """A child process (its environment set by the parent): with
    DIFFATTN_TORCH_EXT=off the Python custom op, else torch.ops.diffattn.v2
    with its phases (e.g. under DIFFATTN_LAUNCH_PLANS=0). One JSON line."""
    import torch

    import diffattn
    from diffattn import _torch_native

    rows = {}
    for b, kvl in gpu_cases.HOST_COST_DECODE:
        q, k, v, lam, kv_len = inputs(torch, b, kvl)
        paths = op_paths(torch, diffattn, q, k, v, lam, kv_len)
        fn = paths["torch.ops.diffattn.v2" if _torch_native.active else "diffattn.v2"]
        host, step = host_and_step_us(torch, fn, args.calls, args.repeats)
        rows[f"{b}x{kvl}"] = dict(host_us=host, step_us=step)
        if _torch_native.active:
            rows[f"{b}x{kvl}"].update(kernel_breakdown(torch, fn, args.calls) or {})
    print("CHILD " + json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--commit", default=os.environ.get("DIFFATTN_COMMIT", ""))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-child", action="store_true",
                    help="skip the Python custom op's child process")
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    import diffattn
    from diffattn import _torch_native

    os.makedirs(args.out, exist_ok=True)
    from diffattn import _torch  # noqa: F401  (defines the op)

    results = dict(commit=args.commit, torch=torch.__version__,
                   device=torch.cuda.get_device_name(), calls=args.calls, repeats=args.repeats,
                   native_active=_torch_native.active, native_reason=_torch_native.reason,
                   rows=[])
    print(f"C++ kernel active: {_torch_native.active} {_torch_native.reason}", flush=True)

    def run_child(label, **env):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--calls",
                               str(args.calls), "--repeats", str(args.repeats)],
                              capture_output=True, text=True, env=dict(os.environ, **env),
                              timeout=600)
        for line in proc.stdout.splitlines():
            if line.startswith("CHILD "):
                return json.loads(line[len("CHILD "):])
        print(f"{label} child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return {}

    python_op, no_plans = {}, {}
    if not args.no_child:
        python_op = run_child("python custom op", DIFFATTN_TORCH_EXT="off")
        if _torch_native.active:
            no_plans = run_child("runtime plans off", DIFFATTN_LAUNCH_PLANS="0")

    header = (f"{'B x kv_len':>11} | {'path':<26} | {'host us/call':>12} | {'eager step us':>13} | "
              f"{'graph replay us':>15}")
    lines = [header, "-" * len(header)]
    for b, kvl in gpu_cases.HOST_COST_DECODE:
        first = len(lines)
        q, k, v, lam, kv_len = inputs(torch, b, kvl)
        paths = op_paths(torch, diffattn, q, k, v, lam, kv_len)
        paths["sdpa cudnn + compiled epi"] = sdpa_path(torch, q, k, v, lam)
        paths["torch.ops [inference_mode]"] = paths["torch.ops.diffattn.v2"]
        paths.update(floor_paths(torch, q, lam))
        for name, fn in paths.items():
            row = dict(B=b, kv_len=kvl, path=name)
            mode = torch.inference_mode() if "inference_mode" in name else contextlib.nullcontext()
            try:
                with mode:
                    row["host_us"], row["step_us"] = host_and_step_us(torch, fn, args.calls,
                                                                      args.repeats)
                    if not name.startswith("floor"):
                        row["replay_us"] = replay_us(torch, fn, args.calls)
                    if name.startswith("torch.ops"):
                        breakdown = kernel_breakdown(torch, fn, args.calls)
                        if breakdown:
                            row.update(breakdown)
            except Exception as e:  # a peer that does not run here: record why
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            results["rows"].append(row)
        if f"{b}x{kvl}" in python_op:
            results["rows"].append(dict(B=b, kv_len=kvl, path="python custom op (no C++)",
                                        **python_op[f"{b}x{kvl}"]))
        if f"{b}x{kvl}" in no_plans:
            results["rows"].append(dict(B=b, kv_len=kvl, path="torch.ops, runtime plans off",
                                        **no_plans[f"{b}x{kvl}"]))
        for row in results["rows"]:
            if row["B"] != b or row["kv_len"] != kvl:
                continue
            if "error" in row:
                lines.append(f"{b:>3} x {kvl:<5} | {row['path']:<26} | {row['error']}")
                continue
            replay = f"{row['replay_us']:15.1f}" if "replay_us" in row else f"{'-':>15}"
            inside = ""
            if "kernel_total_us" in row:
                inside = (f" | C++ kernel {row['kernel_total_us']:.1f} = look-up "
                          f"{row['lookup_us']:.1f} + alloc {row['alloc_us']:.1f} + launch "
                          f"{row['launch_us']:.1f}")
            if "runtime" in row:
                rt = row["runtime"]
                inside += (f" | launch = plan {rt['lookup_us']:.2f} + ctx {rt['context_us']:.2f}"
                           f" + ptrs {rt['params_us']:.2f} + drv {rt['stage0_us']:.2f}"
                           f" + drv2 {rt['later_stages_us']:.2f} (total {rt['total_us']:.2f})")
            lines.append(f"{b:>3} x {kvl:<5} | {row['path']:<26} | {row['host_us']:12.1f} | "
                         f"{row['step_us']:13.1f} | {replay}{inside}")
        print("\n".join(lines[first:]), flush=True)
    print("\n" + "\n".join(lines))
    b, kvl = gpu_cases.HOST_COST_DECODE[0]
    q, k, v, lam, kv_len = inputs(torch, b, kvl)
    try:
        print(f"\ntorch.profiler, diffattn.v2 at {b} x {kvl}, 50 calls:\n" + profile(
            torch, op_paths(torch, diffattn, q, k, v, lam, kv_len)["diffattn.v2"],
            os.path.join(args.out, "profile.txt")))
    except Exception as e:
        print(f"torch.profiler failed: {type(e).__name__}: {e}")
    with open(os.path.join(args.out, "host_cost.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
