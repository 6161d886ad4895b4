#!/usr/bin/env python3
"""Small-batch decode under CUDA-graph replay (issue 16, item 3): time per
step and K/V bytes per second of one-token decode (D 128, 32 query / 8 KV
heads, bf16) at B 1-4, for the default kernel and the diffattn-compile
--gpu-options variants of gpu_cases.SMALL_DECODE_VARIANTS (split-target-ctas:
the CTAs the runtime aims the key splits at; combine-splits-per-step: the
combine's merge step). Each variant's output is compared with the
default's (relative L2) on the same inputs. Each step is one call captured
in a CUDA graph and replayed `--calls` times between CUDA events (the same
inputs every replay, as in benchmarks/host_cost.py: at these sizes K/V
partly stay in the 60 MB L2).

With --floors, beside each shape: what a graph replay of one trivial
kernel costs, and of one torch reduction that reads the same K/V bytes
once (torch.sum over a tensor of that size): the time a single streaming
kernel needs at that size on this machine.

    python3 benchmarks/gpu_small_decode.py [--out DIR] [--calls 200] [--floors]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

from diffattn import _gpu  # noqa: E402
from host_cost import replay_us as _replay_us  # noqa: E402


def replay_us(fn, calls):
    """μs per replay of a CUDA graph of one call of fn (host_cost.py's)."""
    return _replay_us(torch, fn, calls)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--floors", action="store_true",
                    help="also time a trivial kernel and a read of the K/V bytes")
    ap.add_argument("--shapes", default=None,
                    help="B:kv_len,... instead of gpu_cases.SMALL_DECODE (e.g. 8:32768,32:8192)")
    args = ap.parse_args()
    shapes = gpu_cases.SMALL_DECODE if args.shapes is None else [
        tuple(int(x) for x in s.split(":")) for s in args.shapes.split(",")]
    rows = []
    for b, kvl in shapes:
        q = torch.randn(b, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, kvl, 8, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, kvl, 8, 128, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(b, 1, 16, device="cuda", dtype=torch.bfloat16)
        kl = torch.full((b,), kvl, dtype=torch.int32, device="cuda")
        nbytes = 2 * b * 8 * kvl * 128 * 2
        row = dict(shape=[b, kvl])
        reference = None
        for variant in [None] + list(gpu_cases.SMALL_DECODE_VARIANTS):
            options = () if variant is None else (f"--gpu-options={variant}",)
            directory, out_shape, sizes = _gpu.prepare_v2(
                tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), "bf16",
                "bf16", causal=True, kv_len_shape=(b,), options=options)
            out = torch.empty(out_shape, dtype=torch.bfloat16, device="cuda")
            named = [(n, e, tuple(t.shape), t.data_ptr()) for n, e, t in
                     (("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam),
                      ("kv_len", "i32", kl), ("out", "bf16", out))]
            scratch = []

            def alloc(n):
                scratch.append(torch.empty(n, dtype=torch.float32, device="cuda"))
                return scratch[-1].data_ptr()

            # The stream is read at each call: capture runs on a side stream.
            us = replay_us(lambda: _gpu.launch_v2(directory, named, sizes,
                                                  torch.cuda.current_stream().cuda_stream,
                                                  alloc), args.calls)
            name = "default" if variant is None else variant
            row[name] = dict(us=us, tbps=nbytes / us / 1e6)
            torch.cuda.synchronize()
            if reference is None:
                reference = out.float().clone()
            else:
                row[name]["rel_l2_vs_default"] = ((out.float() - reference).norm() /
                                                  reference.norm()).item()
            print(f"B={b} kv_len={kvl} {name}: {us:.1f} us per step, "
                  f"{nbytes / us / 1e6:.2f} TB/s"
                  + (f", rel L2 vs default {row[name]['rel_l2_vs_default']:.1e}"
                     if "rel_l2_vs_default" in row[name] else ""), flush=True)
        if args.floors:
            tiny = torch.zeros(1, device="cuda")
            kv = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
            for name, fn in (("floor: one trivial kernel", lambda: tiny.add_(1)),
                             ("floor: torch.sum over the K/V bytes",
                              lambda: torch.sum(kv, dtype=torch.float32))):
                us = replay_us(fn, args.calls)
                row[name] = dict(us=us, tbps=nbytes / us / 1e6)
                print(f"B={b} kv_len={kvl} {name}: {us:.1f} us per replay, "
                      f"{nbytes / us / 1e6:.2f} TB/s", flush=True)
            del kv
        rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "small_decode.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
