#!/usr/bin/env python3
"""Host cost of a training step of the op (forward + backward through
autograd), against SDPA's FlashAttention-2 path + the torch.compile'd
epilogue, at shapes small enough that the host bounds the step.

    python3 benchmarks/host_cost_train.py [--out DIR] [--steps 100] [--repeats 9]

Needs a GPU, the runtime built and the kernels in DIFFATTN_CACHE_DIR
(benchmarks/gpu_prepare.py: kernels are keyed by configuration, and these
shapes share gpu_cases.BACKWARD_BENCH's configurations). Shapes: B x S with
2H = 32, Hkv = 8, D = 128, causal, bf16.

Per path, medians over --repeats loops, each after a synchronisation:

- host_fwd_us: the forward call with inputs that require grad
  (perf_counter around the call, the GPU queue behind a spin kernel);
- host_step_us: forward + torch.autograd.grad, the same way;
- step_us: --steps steps back to back, then a synchronisation, per step:
  what a step costs where the host is the bottleneck;
- and the op's two training ops called alone (the training forward
  diffattn::_v2_forward_saved under no_grad, diffattn::v2_backward): their
  host time (in the host_fwd_us column) and the runtime's diffattn_launch
  by phase, per launch.

Also torch.profiler's CPU table of 20 op steps (DIR/host_cost_train_profileLABEL.txt)
and, where the C++ kernels are active, which path served the training ops.
Prints a table and writes DIR/host_cost_trainLABEL.json (LABEL: --label).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_backward_check import inputs  # noqa: E402
from gpu_check import make_epilogue  # noqa: E402

from diffattn import _torch, _torch_native  # noqa: E402,F401  (registers the ops)

SHAPES = [(1, 256), (2, 1024), (4, 4096)]
H2, HKV, D = 32, 8, 128
SPIN_CYCLES = 4_000_000  # about 2 ms at the H200's clocks


def paths(b, s, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, lam, dout = inputs(b, s, s, H2, HKV, D, torch.bfloat16, g)
    for t in (q, k, v, lam):
        t.requires_grad_()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    epilogue = make_epilogue()
    qh, kh, vh = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    lam2 = lam.detach().clone().requires_grad_()

    def op_fwd():
        return torch.ops.diffattn.v2(q, k, v, lam, None, True, None, -1, -1)

    def op_step():
        return torch.autograd.grad(op_fwd(), (q, k, v, lam), dout)

    def saved_direct():  # the training forward's op alone, as _v2_train calls it
        with torch.no_grad():
            return torch.ops.diffattn._v2_forward_saved(q, k, v, lam, None, True, None, -1, -1)

    with torch.no_grad():
        out, lse, out_odd = saved_direct()

    def backward_direct():  # the backward's op alone, as the formula calls it
        return torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse, None, True, None,
                                              -1, -1, out_odd)

    def fa2_fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            a = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
        return epilogue(a, lam2)

    def fa2_step():
        return torch.autograd.grad(fa2_fwd(), (qh, kh, vh, lam2), dout)

    return dict(op=(op_fwd, op_step), fa2=(fa2_fwd, fa2_step)), dict(
        forward_saved=saved_direct, backward=backward_direct)


def host_us(fn, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        torch.cuda._sleep(SPIN_CYCLES)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def launch_phases(fn, calls=50):
    """The runtime's diffattn_launch host time by phase over `calls` calls
    of fn, per launch (diffattn._runtime.launch_timing)."""
    from diffattn import _runtime

    _runtime.launch_timing(True)
    for _ in range(calls):
        fn()
    phases = _runtime.launch_timing(False)
    torch.cuda.synchronize()
    n = phases.get("launches", 0) or 1
    return {k: round(v / n, 2) for k, v in phases.items() if k.endswith("_us")}


def step_us(fn, steps, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6 / steps)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--label", default="", help="a name for this tree in the table")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    training_in_cpp = getattr(_torch_native, "training_in_cpp", lambda: False)()
    result = dict(label=args.label, torch=torch.__version__, native_active=_torch_native.active,
                  autograd_in_cpp=_torch_native.autograd_in_cpp(),
                  training_in_cpp=training_in_cpp, rows=[])
    print(f"[{args.label}] C++ v2 kernel {_torch_native.active}, autograd dispatch in C++ "
          f"{result['autograd_in_cpp']}, training kernels in C++ {training_in_cpp}", flush=True)
    print("| label | B x S | path | host_fwd_us | host_step_us | step_us |")
    print("| --- | --- | --- | --- | --- | --- |")
    profiled = False
    for index, (b, s) in enumerate(SHAPES):
        timed, direct = paths(b, s, index)
        for name, fn in direct.items():
            for _ in range(3):
                fn()
            row = dict(B=b, S=s, path=f"op: {name} alone", host_us=host_us(fn, args.repeats * 3),
                       launch=launch_phases(fn))
            result["rows"].append(row)
            print(f"| {args.label} | {b} x {s} | {row['path']} | {row['host_us']:.0f} | | | "
                  f"diffattn_launch per launch: {row['launch']}", flush=True)
        for name, (fwd, step) in timed.items():
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            row = dict(B=b, S=s, path=name, host_fwd_us=host_us(fwd, args.repeats * 3),
                       host_step_us=host_us(step, args.repeats * 3),
                       step_us=step_us(step, args.steps, args.repeats))
            result["rows"].append(row)
            print(f"| {args.label} | {b} x {s} | {name} | {row['host_fwd_us']:.0f} | "
                  f"{row['host_step_us']:.0f} | {row['step_us']:.0f} |", flush=True)
            if name == "op" and not profiled:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(20):
                        step()
                    torch.cuda.synchronize()
                table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
                path = os.path.join(args.out, f"host_cost_train_profile{args.label}.txt")
                with open(path, "w") as f:
                    f.write(table)
                profiled = True
    with open(os.path.join(args.out, f"host_cost_train{args.label}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
