#!/usr/bin/env python3
"""Layer time of the public V2 attention module with three attention cores
(issue 12, item 5): FlashAttention-3's flash_attn_func + the epilogue (the
reference module's own form), SDPA's cuDNN backend + the epilogue, and
torch.ops.diffattn.v2 (the fused op). Same weights and inputs for all three;
the module is the reference's structure (Diff-Transformer-V2's
multihead_flashdiffv2.py as scripts/fixture_modules.py writes it: q / k / v /
lambda projections, interleaved RoPE, the core, out = a[2h] - sigmoid(lam)
a[2h+1], the output projection), run eagerly as a user runs it.

    python3 benchmarks/gpu_v2_layer.py [--out DIR] [--batch 4] [--seq 4096]

Prints a table (forward time in ms: the median over `--repeats` rounds, each
path once per round in a shuffled order, of triton.testing.do_bench's median;
each path's ratio to the op) and writes v2_layer.json under --out. Also
checks that the three paths agree (relative L2 of the layer outputs).
Needs a GPU; FA3 (the fa3-fwd wheel) is optional.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
sys.path.insert(0, HERE)
from fixture_modules import rope_interleaved, rope_tables  # noqa: E402
from gpu_check import rel_l2, time_in_rounds  # noqa: E402

from diffattn import _torch  # noqa: E402,F401  (registers torch.ops.diffattn.v2)


class V2Layer(torch.nn.Module):
    """The reference V2 attention layer with a pluggable core: core(q, k, v,
    lam_logits) -> [B, S, H, D] (the differential epilogue included)."""

    def __init__(self, d_model, heads, kv_heads, head_dim):
        super().__init__()
        self.h, self.hkv, self.d = heads, kv_heads, head_dim
        self.q_proj = torch.nn.Linear(d_model, 2 * heads * head_dim, bias=False)
        self.k_proj = torch.nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v_proj = torch.nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.lambda_proj = torch.nn.Linear(d_model, heads, bias=False)
        self.o_proj = torch.nn.Linear(heads * head_dim, d_model, bias=False)

    def forward(self, x, cos, sin, core):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, 2 * self.h, self.d)
        k = self.k_proj(x).view(b, n, self.hkv, self.d)
        v = self.v_proj(x).view(b, n, self.hkv, self.d)
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        out = core(q.contiguous(), k.contiguous(), v.contiguous(), self.lambda_proj(x))
        return self.o_proj(out.reshape(b, n, self.h * self.d))


def epilogue(a, lam_logits):
    """The reference's differential epilogue on BSHD attention outputs."""
    lam = torch.sigmoid(lam_logits).unsqueeze(-1)
    return a[:, :, 0::2] - lam * a[:, :, 1::2]


def fa3_core():
    try:
        from fa3_fwd_interface import flash_attn_func
    except ImportError:
        return None

    def core(q, k, v, lam):
        a = flash_attn_func(q, k, v, causal=True)
        return epilogue(a[0] if isinstance(a, tuple) else a, lam)

    return core


def cudnn_core(q, k, v, lam):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=True)
    return epilogue(a.transpose(1, 2), lam)


def op_core(q, k, v, lam):
    return torch.ops.diffattn.v2(q, k, v, lam, None, True, None, -1, -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="directory for v2_layer.json")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16, help="pairs H (2H query heads)")
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7,
                    help="timing rounds (each path once per round, in a shuffled order)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rounds' orders")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    layer = V2Layer(args.d_model, args.heads, args.kv_heads, args.head_dim).to(dev, dt)
    x = torch.randn(args.batch, args.seq, args.d_model, device=dev, dtype=dt)
    cos, sin = (t.to(dev, dt) for t in rope_tables(args.seq, args.head_dim))
    cores = {"op": op_core, "cudnn": cudnn_core}
    fa3 = fa3_core()
    if fa3 is not None:
        cores["fa3"] = fa3
    results = {"shape": vars(args), "paths": {}}
    with torch.no_grad():
        outs = {name: layer(x, cos, sin, core) for name, core in cores.items()}
        ref = outs.get("fa3", outs["cudnn"])
        # Rounds of every path in an order shuffled each round (gpu_ab.py:
        # a path timed right after FA3 inherits its clocks); the median.
        ms_of, times, _ = time_in_rounds(
            {name: (lambda core=core: layer(x, cos, sin, core)) for name, core in cores.items()},
            args.repeats, args.seed)
        for name in cores:
            results["paths"][name] = {"ms": ms_of[name],
                                      "rounds_ms": times[name],
                                      "rel_l2_vs_" + ("fa3" if "fa3" in outs else "cudnn"):
                                      rel_l2(outs[name], ref)}
    op_ms = results["paths"]["op"]["ms"]
    print(f"V2 attention layer, B={args.batch} S={args.seq} d_model={args.d_model} "
          f"2H={2 * args.heads} Hkv={args.kv_heads} D={args.head_dim}, bf16, causal, forward:")
    print("| core | layer ms | vs the op | rel L2 vs reference |")
    print("| --- | --- | --- | --- |")
    for name, row in results["paths"].items():
        err = [v for k, v in row.items() if k.startswith("rel_l2")][0]
        print(f"| {name} | {row['ms']:.3f} | {row['ms'] / op_ms:.2f}x | {err:.1e} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "v2_layer.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
