#!/usr/bin/env python3
"""Per-kernel GPU time of one training step (forward + backward) of the op
and of SDPA's FlashAttention-2 path + the torch.compile'd epilogue, from
torch.profiler's CUDA activity records, on gpu_cases.BACKWARD_BENCH (bf16):
which kernel of each path takes the time, and at what rate per S-sized
product (issue 15's portable target, >= 1.2x the FA2 path).

    python3 benchmarks/gpu_kernel_split.py [--iters N] [--case I ...] [--paths op fa2]
                                           [--plain] [--out DIR]

Needs a GPU, the runtime built and the kernels in DIFFATTN_CACHE_DIR
(benchmarks/gpu_prepare.py); DIFFATTN_GPU_TARGET=sm_90 for the portable
kernels on a Hopper GPU.

Each path runs --iters forward + backward steps (torch.autograd.grad, the
same inputs) after two warm-up steps, back to back under the profiler; a
kernel's time is the sum of its records divided by --iters (ms per step).

Rates: an S-sized product over the whole problem is 2 x B x 2H x V x D
flops, V the (query, key) pairs a head sees (Sq Sk, or Sq (Sq + 1) / 2
causal). Per pair of heads the op's forward computes 4 such products (S
and P V of both heads) and its backward 8 (S of both, G = dO V^T shared by
both, dv once for the pair's shared V, dk and dq of both); the FA2 path 4
and 10 (5 per head: S, dP, dV, dK, dQ). So at equal time per product the
FA2 path takes 14 / 12 = 1.167x the op's time: the op reaches 1.2x only
by running its products faster than FlashAttention-2 does, or where the
FA2 path's other kernels (the epilogue, GQA's expansion and reduction,
dq's conversion) weigh. The table gives, per path, its forward and its
backward products' kernel time (the kernel whose name says so: the op's
`diffattn_v2_<config>` / `..._dkdv`, FA2's `flash_fwd` / `flash_bwd_dq_dk_dv`), their rates
in TFLOP/s of product flops, and the time of everything else.

Prints a table and the five longest kernels of each path, and writes
gpu_kernel_split.json under --out. `--plain` runs the steps without the
profiler and prints nothing (for Nsight Compute to wrap:
benchmarks/gpu_profile_products.sh).
"""
import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

# torch and the op come in with main(): the kernel-name matchers below are
# tested on machines without torch (python/tests/test_gpu_kernel_split.py).


def kernel_times(fn, iters):
    """{kernel name: ms per call of fn} from torch.profiler's CUDA records."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    times = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.name] += event.device_time_total / 1000.0 / iters
    return dict(times)


def pick(times, match):
    """Total ms of the kernels whose name `match` accepts."""
    return sum(t for name, t in times.items() if match(name))


# The op's kernels are named after their function (diffattn-compile):
# diffattn_v2_<config> for the forward, diffattn_v2_backward_<config>_<stage>
# for the backward's stages.
def op_forward(name):
    return name.startswith("diffattn_v2_") and "backward" not in name


def op_products(name):
    return name.startswith("diffattn_v2_backward") and name.endswith("_dkdv")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=int, nargs="+", default=None,
                    help="indices into gpu_cases.BACKWARD_BENCH (default: all)")
    ap.add_argument("--paths", nargs="+", choices=("op", "fa2"), default=["op", "fa2"])
    ap.add_argument("--plain", action="store_true",
                    help="run --iters steps of each path without the profiler, no output")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    cases = range(len(gpu_cases.BACKWARD_BENCH)) if args.case is None else args.case
    for i in cases:
        if not 0 <= i < len(gpu_cases.BACKWARD_BENCH):
            ap.error(f"--case {i}: gpu_cases.BACKWARD_BENCH has "
                     f"{len(gpu_cases.BACKWARD_BENCH)} shapes")
    import torch
    from torch.nn.attention import SDPBackend

    from gpu_backward_check import inputs, op_training_step, sdpa_training_steps
    from gpu_check import make_epilogue

    from diffattn import _torch  # noqa: F401  (registers the ops)

    epilogue = make_epilogue()
    rows = []
    if not args.plain:
        print("| B x S, D | mask | path | total ms | fwd kernel ms | fwd TFLOP/s per product "
              "| bwd kernel ms | bwd TFLOP/s per product | other ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index in cases:
        b, s, h2, hkv, d, causal = gpu_cases.BACKWARD_BENCH[index]
        g = torch.Generator(device="cuda").manual_seed(args.seed + index)
        q, k, v, lam, dout = inputs(b, s, s, h2, hkv, d, torch.bfloat16, g)
        for t in (q, k, v, lam):
            t.requires_grad_()
        op = op_training_step(q, k, v, lam, dout, causal)
        fa2 = sdpa_training_steps(q, k, v, lam, dout, causal, epilogue)(
            SDPBackend.FLASH_ATTENTION)

        visible = s * (s + 1) // 2 if causal else s * s
        product = 2.0 * b * h2 * visible * d  # flops of one S-sized product
        row = dict(shape=[b, s, h2, hkv, d, causal], product_flops=product, paths={})
        for name, fn, fwd_match, bwd_match, products in (
                ("op", op, op_forward, op_products, (4, 8)),
                ("fa2", fa2, lambda n: "flash_fwd" in n, lambda n: "flash_bwd_dq_dk_dv" in n,
                 (4, 10))):
            if name not in args.paths:
                continue
            if args.plain:
                for _ in range(args.iters):
                    fn()
                torch.cuda.synchronize()
                continue
            times = kernel_times(fn, args.iters)
            total = sum(times.values())
            fwd_ms, bwd_ms = pick(times, fwd_match), pick(times, bwd_match)
            if not fwd_ms or not bwd_ms:
                sys.exit(f"gpu_kernel_split: no {name} {'forward' if not fwd_ms else 'backward'} "
                         f"product kernel among {sorted(times)}")
            # Per pair of heads the products number products[i]; per head
            # half that: product (one head's) x products / 2 flops.
            fwd_rate = product * products[0] / 2 / (fwd_ms * 1e9)
            bwd_rate = product * products[1] / 2 / (bwd_ms * 1e9)
            row["paths"][name] = dict(kernels_ms=times, total_ms=total, fwd_ms=fwd_ms,
                                      bwd_ms=bwd_ms, fwd_tflops=fwd_rate, bwd_tflops=bwd_rate)
            print(f"| {b} x {s}, {d} | {'causal' if causal else 'none'} | {name} | {total:.3f} "
                  f"| {fwd_ms:.3f} | {fwd_rate:.0f} | {bwd_ms:.3f} | {bwd_rate:.0f} "
                  f"| {total - fwd_ms - bwd_ms:.3f} |", flush=True)
        if not args.plain:
            rows.append(row)
        del q, k, v, lam, dout, op, fa2, fn
        torch.cuda.empty_cache()
    if args.plain:
        return
    for row in rows:
        for name, path in row["paths"].items():
            top = sorted(path["kernels_ms"].items(), key=lambda kv: -kv[1])[:5]
            print(f"{row['shape']} {name}: " +
                  "; ".join(f"{t:.3f} ms {n[:90]}" for n, t in top))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_kernel_split.json"), "w") as f:
        json.dump(dict(rows=rows, target=os.environ.get("DIFFATTN_GPU_TARGET", "default")), f,
                  indent=1)


if __name__ == "__main__":
    main()
