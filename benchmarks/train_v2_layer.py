#!/usr/bin/env python3
"""A real training run through the op (issue 15, item 5): the public V2
attention layer (gpu_v2_layer.V2Layer: projections, interleaved RoPE, the
attention core with the differential epilogue, output projection) inside a
tiny language model (token embedding, the layer with a residual, an LM head)
trained for N steps on random tokens with AdamW, twice from the same initial
weights and batches: once with torch.ops.diffattn.v2 as the core (its
autograd formula, diffattn::v2_backward), once with SDPA (enable_gqa) +
the reference epilogue. Prints both loss curves side by side and their
largest difference, writes train_v2_layer.json under --out, and exits 1 if
the curves do not track (a relative difference above --tolerance). It also
times each run's steps (wall time per step, the whole model's forward,
backward and optimizer step, after --warmup untimed steps of each core on a
throwaway copy of the model, so that one-time costs, CUDA and cuBLAS
initialisation, kernel module loads, torch.compile of the SDPA path's
epilogue, are not counted against whichever core runs first).

    python3 benchmarks/train_v2_layer.py [--device cpu] [--steps 50] [--out DIR]

On the CPU the cores run in float32 (the op's CPU kernels; backward tiled
over key blocks). On CUDA (--device cuda) the model stays float32 and the
cores run in --dtype (default bfloat16: the op's GPU forward, then the
compiler's GPU backward kernels); --preset public takes the public V2
layer's sizes as the Hopper issue runs it (gpu_cases.TRAIN_LAYER: d_model
2048, 16 pairs, 8 KV heads, head dim 128, B 4 x S 4096).
"""
import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
sys.path.insert(0, HERE)
from fixture_modules import rope_tables  # noqa: E402
from gpu_v2_layer import V2Layer, epilogue  # noqa: E402

from diffattn import _torch  # noqa: E402,F401  (registers torch.ops.diffattn.v2 and autograd)


def op_core(q, k, v, lam):
    return torch.ops.diffattn.v2(q, k, v, lam, None, True, None, -1, -1)


def sdpa_core(q, k, v, lam):
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=True)
    return epilogue(a.transpose(1, 2), lam)


def in_dtype(core, dtype):
    """`core` run on its inputs cast to `dtype`, its output cast back."""
    if dtype == torch.float32:
        return core

    def run(q, k, v, lam):
        out = core(*(t.to(dtype).contiguous() for t in (q, k, v, lam)))
        return out.to(q.dtype)

    return run


class TinyLM(torch.nn.Module):
    def __init__(self, vocab, d_model, heads, kv_heads, head_dim):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d_model)
        self.attn = V2Layer(d_model, heads, kv_heads, head_dim)
        self.norm = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens, cos, sin, core):
        x = self.embed(tokens)
        x = x + self.attn(x, cos, sin, core)
        return self.head(self.norm(x))


def train(model, batches, cos, sin, core, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for tokens in batches:
        logits = model(tokens[:, :-1], cos, sin, core)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4, help="pairs H (2H query heads)")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tolerance", type=float, default=1e-2,
                    help="largest allowed |loss_op - loss_sdpa| / loss_sdpa over the steps")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                    help="the cores' dtype (default: float32 on the CPU, bfloat16 on CUDA)")
    ap.add_argument("--preset", choices=("tiny", "public"), default="tiny",
                    help="public: gpu_cases.TRAIN_LAYER's sizes (overrides the size flags)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps of each core before its timed run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.warmup < 0 or args.steps < 1:
        ap.error("--steps must be positive and --warmup not negative")
    if args.preset == "public":
        import gpu_cases

        for key, value in gpu_cases.TRAIN_LAYER.items():
            setattr(args, key, value)
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = TinyLM(args.vocab, args.d_model, args.heads, args.kv_heads, args.head_dim).to(dev)
    # The same batches of random tokens (seq + 1: inputs and next-token targets).
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=dev)
               for _ in range(args.steps)]
    cos, sin = (t.to(dev) for t in rope_tables(args.seq, args.head_dim))
    curves, seconds = {}, {}
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for name, core in (("op", op_core), ("sdpa", sdpa_core)):
        run = in_dtype(core, dtype)
        if args.warmup:
            train(copy.deepcopy(model), batches[:args.warmup], cos, sin, run, args.lr)
        trained = copy.deepcopy(model)
        sync()
        start = time.perf_counter()
        curves[name] = train(trained, batches, cos, sin, run, args.lr)
        sync()
        seconds[name] = time.perf_counter() - start
    diffs = [abs(a - b) / b for a, b in zip(curves["op"], curves["sdpa"])]
    print(f"V2 layer in a tiny LM, {args.steps} AdamW steps on random tokens, B={args.batch} "
          f"S={args.seq} d_model={args.d_model} 2H={2 * args.heads} Hkv={args.kv_heads} "
          f"D={args.head_dim}, {args.device}, cores in {args.dtype}:")
    print("| step | loss (op) | loss (SDPA + epilogue) |")
    print("| --- | --- | --- |")
    for i in sorted(set(range(0, args.steps, 10)) | {args.steps - 1}):
        print(f"| {i} | {curves['op'][i]:.4f} | {curves['sdpa'][i]:.4f} |")
    worst = max(diffs)
    per_step = {name: 1e3 * t / args.steps for name, t in seconds.items()}
    print(f"largest relative difference {worst:.2e} (step {diffs.index(worst)}); "
          f"per step (after {args.warmup} untimed): {per_step['op']:.1f} ms (op) / "
          f"{per_step['sdpa']:.1f} ms (SDPA)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "train_v2_layer.json"), "w") as f:
            json.dump({"args": vars(args), "losses": curves, "seconds": seconds,
                       "ms_per_step": per_step, "max_rel_diff": worst}, f, indent=1)
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
