#!/usr/bin/env python3
"""Where the time of one training step of the op goes (issue 15): the
forward + backward through autograd split into its kernels and the host
time of its Python dispatch, beside SDPA's FlashAttention-2 path + the
torch.compile'd epilogue, on gpu_cases.BACKWARD_BENCH (bf16).

    python3 benchmarks/gpu_train_breakdown.py [--rounds N] [--seed N] [--out DIR]

Needs a GPU, the runtime built and the kernels in DIFFATTN_CACHE_DIR
(benchmarks/gpu_prepare.py); DIFFATTN_GPU_TARGET=sm_90 for the portable
kernels on a Hopper GPU.

triton.testing.do_bench (gpu_check.bench_fn) writes 256 MB to flush L2
before each timed call, so the GPU idles while the host dispatches the
call's first kernel: host time up to the first launch is part of what it
measures. The "queued" entries put a spin kernel (torch.cuda._sleep) of
about 1 ms in front of the call inside the timed region and subtract the
spin kernel's own median: the call's GPU time with its dispatch hidden, as
in a training loop whose host runs ahead of the GPU. Entries, each timed
in --rounds shuffled rounds (gpu_check.time_in_rounds), medians in ms:

- fwd: the training forward alone (out, lse, out_odd; one kernel);
- bwd: diffattn.v2_backward with out_odd (its kernels), as autograd calls it;
- op: forward + backward through autograd (torch.autograd.grad), and
  op_queued;
- fa2: SDPA's FlashAttention-2 backend + epilogue through autograd, and
  fa2_queued;
- host_us: the host time of one op call (perf_counter around the call,
  issued behind a spin kernel, no synchronisation inside), median of 20.

Prints a table and writes gpu_train_breakdown.json under --out.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402
from gpu_backward_check import inputs, op_training_step, sdpa_training_steps  # noqa: E402
from gpu_check import make_epilogue, time_in_rounds  # noqa: E402

from diffattn import _torch  # noqa: E402  (registers the ops)

SPIN_CYCLES = 2_000_000  # about 1 ms at the H200's clocks


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend

    epilogue = make_epilogue()
    rows = []
    print("| B x S, D | mask | fwd | bwd | fwd + bwd | op | op_queued | op - op_queued "
          "| host_us | fa2 | fa2_queued | fa2 / op | fa2_queued / op_queued |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, (b, s, h2, hkv, d, causal) in enumerate(gpu_cases.BACKWARD_BENCH):
        g = torch.Generator(device="cuda").manual_seed(args.seed + index)
        q, k, v, lam, dout = inputs(b, s, s, h2, hkv, d, torch.bfloat16, g)
        for t in (q, k, v, lam):
            t.requires_grad_()
        def fwd():
            # What autograd runs: the C++ kernel where the build made it.
            return torch.ops.diffattn._v2_forward_saved(q, k, v, lam, None, causal, None, -1, -1)

        with torch.no_grad():
            out, lse, out_odd = fwd()

        def bwd():
            return torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse, None, causal,
                                                  None, -1, -1, out_odd)

        op = op_training_step(q, k, v, lam, dout, causal)
        fa2 = sdpa_training_steps(q, k, v, lam, dout, causal, epilogue)(
            SDPBackend.FLASH_ATTENTION)

        def queued(fn):
            def run():
                torch.cuda._sleep(SPIN_CYCLES)
                return fn()
            return run

        def spin():
            torch.cuda._sleep(SPIN_CYCLES)

        launches = dict(fwd=fwd, bwd=bwd, op=op, op_queued=queued(op), fa2=fa2,
                        fa2_queued=queued(fa2), spin=spin)
        for fn in launches.values():
            fn()
        torch.cuda.synchronize()
        medians, per_round, orders = time_in_rounds(launches, args.rounds, args.seed + index)
        for name in ("op_queued", "fa2_queued"):
            medians[name] -= medians["spin"]
        host = []
        for _ in range(20):
            torch.cuda.synchronize()
            torch.cuda._sleep(4 * SPIN_CYCLES)
            t0 = time.perf_counter()
            op()
            host.append((time.perf_counter() - t0) * 1e6)
        torch.cuda.synchronize()
        m = medians
        row = dict(shape=[b, s, h2, hkv, d, causal], medians_ms=m, rounds_ms=per_round,
                   rounds_order=orders, host_us=statistics.median(host))
        rows.append(row)
        print(f"| {b} x {s}, {d} | {'causal' if causal else 'none'} | {m['fwd']:.3f} | "
              f"{m['bwd']:.3f} | {m['fwd'] + m['bwd']:.3f} | {m['op']:.3f} | "
              f"{m['op_queued']:.3f} | {m['op'] - m['op_queued']:.3f} | "
              f"{row['host_us']:.0f} | {m['fa2']:.3f} | {m['fa2_queued']:.3f} | "
              f"{m['fa2'] / m['op']:.3f}x | {m['fa2_queued'] / m['op_queued']:.3f}x |",
              flush=True)
        del q, k, v, lam, dout, out, lse, out_odd, op, fa2, launches
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_train_breakdown.json"), "w") as f:
        json.dump(dict(rows=rows, target=os.environ.get("DIFFATTN_GPU_TARGET", "default")), f,
                  indent=1)


if __name__ == "__main__":
    main()
