#!/usr/bin/env python3
"""Serving-shaped decode (issue 16, item 6): a stack of V2 attention layers
(d_model 2048, 32 query heads = 16 pairs, 8 KV heads, head dim 128, bf16)
decoding one token per sequence against a KV cache, each step captured as
one CUDA graph and replayed; tokens per second for three paths:

- project: diffattn.v2 on a paged cache (torch.ops.diffattn.v2_paged:
  pools [blocks, block_size, 8, 128] per layer, blocks scattered over the
  pool, block_table [B, blocks per sequence], kv_len [B]); its epilogue is
  in the kernel;
- cudnn: SDPA with the cuDNN backend over the 32 query heads (GQA),
  contiguous caches [B, 8, S, 128], then a torch.compile'd epilogue
  a1 - sigmoid(lam) * a2;
- fa3: FlashAttention-3's kv-cache path (fa3_fwd_interface.
  flash_attn_with_kvcache, PyPI fa3-fwd 0.0.3; it appends the new key and
  value itself), contiguous caches [B, S, 8, 128], the same compiled
  epilogue.

A layer: x [B, 1, 2048] -> q, k, v, lam (one bf16 matmul with the
concatenated weights), the new k / v written at position S - 1 of the
cache, attention over the S keys (causal: the new token sees them all),
out [B, 1, 16, 128] -> o-projection, residual. Every path runs the same
weights and the same cached keys; before timing, one step of each path is
compared with the project's (relative L2 of the stack's output, and of
the first layer's attention output), and a path whose error is over
--tolerance fails the run (exit 1). Timing: one step captured in a CUDA
graph, replayed --steps times between CUDA events after a warm-up, the
median of --repeats such loops; the same position is rewritten at every
replay, so each replay is a decode step at context S.

    python3 benchmarks/serving_decode.py --out DIR [--layers 16]
        [--shapes 1:16384,4:16384,32:8192] [--block-size 256]

Prints a table and writes DIR/serving_decode.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

D_MODEL, H2, HKV, D = 2048, 32, 8, 128
H = H2 // 2
QKV = H2 * D + 2 * HKV * D + H  # q, k, v, lam columns of the fused projection
BF16 = torch.bfloat16


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


class Weights:
    def __init__(self, layers, gen):
        def rand(*shape, scale):
            return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(BF16)

        self.qkv = [rand(D_MODEL, QKV, scale=D_MODEL ** -0.5) for _ in range(layers)]
        self.o = [rand(H * D, D_MODEL, scale=(H * D) ** -0.5) for _ in range(layers)]


def split_qkv(x, w):
    """q [B, 1, 32, 128], k, v [B, 1, 8, 128], lam [B, 1, 16] of x [B, 1, 2048]."""
    b = x.shape[0]
    y = x @ w
    q = y[..., :H2 * D].view(b, 1, H2, D)
    k = y[..., H2 * D:H2 * D + HKV * D].view(b, 1, HKV, D)
    v = y[..., H2 * D + HKV * D:H2 * D + 2 * HKV * D].view(b, 1, HKV, D)
    lam = y[..., H2 * D + 2 * HKV * D:]
    return q.contiguous(), k, v, lam.contiguous()


@torch.compile(dynamic=True)
def epilogue(a, lam):
    """a [B, 1, 32, D] (BSHD), lam [B, 1, 16] -> [B, 1, 16, D]."""
    return a[:, :, 0::2] - torch.sigmoid(lam.float()).to(a.dtype)[..., None] * a[:, :, 1::2]


class Project:
    """diffattn.v2 on a paged cache."""
    name = "project (paged)"

    def __init__(self, history, b, s, block_size, gen):
        import diffattn

        self.v2 = diffattn.v2
        blocks = s // block_size
        n_pool = b * blocks
        # Scattered blocks: sequence i's j-th block is pool block perm[i * blocks + j].
        perm = torch.randperm(n_pool, device="cuda", generator=gen)
        self.block_table = perm.view(b, blocks).to(torch.int32).contiguous()
        self.kv_len = torch.full((b,), s, dtype=torch.int32, device="cuda")
        self.k_pool, self.v_pool = [], []
        for hk, hv in history:  # [B, S, 8, 128] each
            kp = torch.empty(n_pool, block_size, HKV, D, device="cuda", dtype=BF16)
            vp = torch.empty_like(kp)
            kp[perm] = hk.reshape(n_pool, block_size, HKV, D)
            vp[perm] = hv.reshape(n_pool, block_size, HKV, D)
            self.k_pool.append(kp)
            self.v_pool.append(vp)
        # Where position S - 1 of each sequence lives.
        self.new_block = self.block_table[:, (s - 1) // block_size].long()
        self.new_slot = (s - 1) % block_size

    def attend(self, layer, q, k, v, lam):
        self.k_pool[layer][self.new_block, self.new_slot] = k[:, 0]
        self.v_pool[layer][self.new_block, self.new_slot] = v[:, 0]
        return self.v2(q, self.k_pool[layer], self.v_pool[layer], lam, causal=True,
                       kv_len=self.kv_len, block_table=self.block_table)


class Cudnn:
    """SDPA (cuDNN backend) over contiguous [B, 8, S, 128] caches + epilogue."""
    name = "sdpa cudnn + epi"

    def __init__(self, history, b, s):
        self.k = [hk.transpose(1, 2).contiguous() for hk, _ in history]
        self.v = [hv.transpose(1, 2).contiguous() for _, hv in history]
        self.s = s

    def attend(self, layer, q, k, v, lam):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self.k[layer][:, :, self.s - 1] = k[:, 0]
        self.v[layer][:, :, self.s - 1] = v[:, 0]
        # One token sees every key: no mask (SDPA's is_causal is top-left).
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            a = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[layer], self.v[layer],
                                               enable_gqa=True)
        return epilogue(a.transpose(1, 2), lam)


class Fa3:
    """flash_attn_with_kvcache over contiguous [B, S, 8, 128] caches + epilogue."""
    name = "fa3 kv-cache + epi"

    def __init__(self, history, b, s):
        from fa3_fwd_interface import flash_attn_with_kvcache

        self.fn = flash_attn_with_kvcache
        self.k = [hk.clone() for hk, _ in history]
        self.v = [hv.clone() for _, hv in history]
        self.seqlens = torch.full((b,), s - 1, dtype=torch.int32, device="cuda")

    def attend(self, layer, q, k, v, lam):
        a = self.fn(q, self.k[layer], self.v[layer], k=k, v=v, cache_seqlens=self.seqlens,
                    causal=True)
        if isinstance(a, tuple):
            a = a[0]
        return epilogue(a, lam)


def make_step(path, weights, x, out, first_attn):
    """One decode step of the stack: reads x, writes out (and layer 0's
    attention output to first_attn)."""
    def step():
        h = x
        for layer in range(len(weights.qkv)):
            q, k, v, lam = split_qkv(h, weights.qkv[layer])
            a = path.attend(layer, q, k, v, lam)  # [B, 1, 16, 128]
            if layer == 0:
                first_attn.copy_(a)
            h = h + a.reshape(h.shape[0], 1, H * D) @ weights.o[layer]
        out.copy_(h)
    return step


def time_graph(step, steps, repeats):
    """(median ms per replay, graph) of a CUDA graph of one step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(steps):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / steps)
    return statistics.median(times), graph


def run_shape(args, b, s, gen):
    weights = Weights(args.layers, gen)
    # The cached keys and values of every layer (position S - 1 is the new
    # token's, written by each step).
    history = [(torch.randn(b, s, HKV, D, device="cuda", generator=gen).to(BF16),
                torch.randn(b, s, HKV, D, device="cuda", generator=gen).to(BF16))
               for _ in range(args.layers)]
    x = torch.randn(b, 1, D_MODEL, device="cuda", generator=gen).to(BF16)
    paths = [("project", lambda: Project(history, b, s, args.block_size, gen))]
    if "cudnn" in args.peers:
        paths.append(("cudnn", lambda: Cudnn(history, b, s)))
    if "fa3" in args.peers:
        paths.append(("fa3", lambda: Fa3(history, b, s)))
    rows, reference = [], None
    kv_bytes = 2 * b * s * HKV * D * 2 * args.layers
    for key, make in paths:
        row = dict(B=b, kv_len=s, layers=args.layers, path=key)
        try:
            path = make()
            row["name"] = path.name
            out = torch.empty_like(x)
            first = torch.empty(b, 1, H, D, device="cuda", dtype=BF16)
            step = make_step(path, weights, x, out, first)
            step()  # eager: compiles, loads kernels, and the correctness sample
            torch.cuda.synchronize()
            sample = (out.clone(), first.clone())
            if reference is None:
                reference = sample
            else:
                row["rel_l2_out_vs_project"] = rel_l2(sample[0], reference[0])
                row["rel_l2_attn_vs_project"] = rel_l2(sample[1], reference[1])
                row["correct"] = (row["rel_l2_out_vs_project"] <= args.tolerance and
                                  row["rel_l2_attn_vs_project"] <= args.tolerance)
            ms, graph = time_graph(step, args.steps, args.repeats)
            # The replay computes what the eager step did (same inputs).
            torch.cuda.synchronize()
            row["rel_l2_replay_vs_eager"] = rel_l2(out, sample[0])
            row.update(ms_per_step=ms, tokens_per_s=b / ms * 1e3,
                       kv_tbps=kv_bytes / (ms * 1e-3) / 1e12)
            del graph
            if key == "project":
                row["correct"] = row["rel_l2_replay_vs_eager"] <= 1e-3
        except Exception as e:  # a peer that does not run here: say why
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            row["correct"] = False
        rows.append(row)
        print(json.dumps(row), flush=True)
        path = None
        torch.cuda.empty_cache()
    base = next((r for r in rows if r["path"] == "project" and "ms_per_step" in r), None)
    for r in rows:
        if base and "ms_per_step" in r:
            r["project_speedup"] = r["ms_per_step"] / base["ms_per_step"]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--shapes", default="1:16384,4:16384,32:8192", help="B:kv_len,...")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--peers", default="cudnn,fa3")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=2e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=os.environ.get("DIFFATTN_COMMIT", ""))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    results = dict(commit=args.commit, torch=torch.__version__,
                   device=torch.cuda.get_device_name(), layers=args.layers,
                   block_size=args.block_size, d_model=D_MODEL, query_heads=H2, kv_heads=HKV,
                   head_dim=D, rows=[])
    t0 = time.time()
    for shape in args.shapes.split(","):
        b, s = (int(t) for t in shape.split(":"))
        if s % args.block_size:
            sys.exit(f"kv_len {s} is not a multiple of --block-size {args.block_size}")
        results["rows"] += run_shape(args, b, s, gen)
        torch.cuda.empty_cache()
    results["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "serving_decode.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{args.layers} layers, d_model {D_MODEL}, {H2} query / {HKV} KV heads, D {D}, bf16; "
          f"one CUDA graph per decode step (paged block size {args.block_size})")
    print(f"{'B x kv_len':>11} | {'path':<20} | {'ms/step':>8} | {'tokens/s':>9} | "
          f"{'KV TB/s':>7} | {'vs project':>10} | rel L2 vs project (out / attn)")
    for r in results["rows"]:
        head = f"{r['B']:>3} x {r['kv_len']:<5} | {r.get('name', r['path']):<20}"
        if "error" in r:
            print(f"{head} | {r['error']}")
            continue
        err = (f"{r['rel_l2_out_vs_project']:.2e} / {r['rel_l2_attn_vs_project']:.2e}"
               if "rel_l2_out_vs_project" in r else "-")
        print(f"{head} | {r['ms_per_step']:8.3f} | {r['tokens_per_s']:9.0f} | "
              f"{r['kv_tbps']:7.2f} | {r['project_speedup']:9.2f}x | {err}")
    bad = [r for r in results["rows"] if not r.get("correct", False)]
    for r in bad:
        print(f"NOT CORRECT: {r['B']} x {r['kv_len']} {r['path']}: "
              f"{r.get('error') or {k: v for k, v in r.items() if k.startswith('rel_l2')}}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
