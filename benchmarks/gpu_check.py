#!/usr/bin/env python3
"""GPU correctness and timing, in one run (see docs/performance.md).

On a GPU machine, with the package laid out by a build (the runtime needs
no MLIR: cmake -DDIFFATTN_ENABLE_COMPILER=OFF) and the kernels in
DIFFATTN_CACHE_DIR (benchmarks/gpu_prepare.py builds them elsewhere):

    python3 benchmarks/gpu_check.py [--out DIR] [--skip-bench] [--decode-only] [--rounds N]
                                    [--seed N] [--sanitize-case]

1. correctness of every case in gpu_cases.CHECK_CASES, then of a seeded
   random sweep of fresh shapes (B, Sq, Sk, kv_len drawn per run for each
   static configuration those cases prepare; the seed is printed and
   --seed replays it): fresh random normal
   inputs, the output poisoned with NaN first, relative L2 error against the
   float64 reference (diffattn.reference.v2) for small cases and against an
   fp32 SDPA reference with the differential epilogue otherwise; NaN/Inf
   never pass; also through torch.compile (the custom op's fake kernel);
2. prefill timing of SPEC.md's shapes beside SDPA (cuDNN backend) + a
   torch.compile'd epilogue, SDPA (FlashAttention backend) + epilogue and,
   where fa3-fwd is installed, FlashAttention-3 + epilogue, on the same
   inputs: every path of a shape (ours, the anchors, the other targets and
   variants) timed once per round in `--rounds` rounds (default 5), each in
   an order shuffled afresh (seeded by --seed), the median of the rounds'
   triton.testing.do_bench medians; TFLOP/s and ratios;
3. decode timing (one token, ragged-free kv_len) beside the same anchors, as
   K/V bytes read per second;
4. the ceilings of this card: a bf16 matmul and a device copy.

Prints a table and writes it (and a JSON of every number) under --out.
"""
import argparse
import json
import math
import os
import random
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_cases  # noqa: E402

import diffattn  # noqa: E402
from diffattn import _gpu, _torch  # noqa: E402,F401  (registers torch.ops.diffattn.v2)

TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16}
TOLERANCE = {"bf16": 1e-2, "f16": 3e-3}


def visible_mask(sq, sk, causal, window, kv_len, device):
    """[B or 1, Sq, Sk] boolean mask of SPEC.md (bottom-right aligned)."""
    lens = torch.tensor([sk] if kv_len is None else kv_len, device=device)
    i = torch.arange(sq, device=device)[None, :, None]
    t = torch.arange(sk, device=device)[None, None, :]
    L = lens[:, None, None]
    pos = i + (L - sq)
    m = t < L
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if right >= 0:
        m = m & (t <= pos + right)
    if left >= 0:
        m = m & (t >= pos - left)
    return m


def sdpa_reference(q, k, v, lam, causal, window, kv_len):
    """fp32 differential attention on the GPU (SDPA math on upcast inputs)."""
    b, sq, h2, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = h2 // hkv
    qf = q.float().transpose(1, 2)
    kf = k.float().transpose(1, 2).repeat_interleave(g, dim=1)
    vf = v.float().transpose(1, 2).repeat_interleave(g, dim=1)
    mask = visible_mask(sq, sk, causal, window, kv_len, q.device)[:, None]  # [B,1,Sq,Sk]
    s = (qf @ kf.transpose(-1, -2)) / math.sqrt(d)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no key -> 0
    a = (p @ vf).transpose(1, 2)  # [B, Sq, 2H, D]
    return a[:, :, 0::2] - torch.sigmoid(lam.float())[..., None] * a[:, :, 1::2]


def rel_l2(out, ref):
    out, ref = out.double(), ref.double()
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()


def check_error(out, ref):
    """rel_l2 of `out` against `ref`; NaN when `out` is not finite (never
    passes), and the absolute norm of `out` where `ref` is all zeros (every
    row sees no key: no relative error)."""
    if not bool(torch.isfinite(out).all()):
        return float("nan")
    if float(torch.linalg.vector_norm(ref.double())) == 0.0:
        return float(torch.linalg.vector_norm(out.double()))
    return rel_l2(out, ref)


def check_case(case, g):
    """Runs one correctness case (gpu_cases.CHECK_CASES' tuple layout) on
    fresh random inputs from generator `g`, the output poisoned with NaN;
    returns its result row and prints one line."""
    b, sq, sk, h2, hkv, d, dtype, causal, window, kv_len = case
    dt = TORCH_DTYPE[dtype]
    q = torch.randn(b, sq, h2, d, device="cuda", generator=g).to(dt)
    k = torch.randn(b, sk, hkv, d, device="cuda", generator=g).to(dt)
    v = torch.randn(b, sk, hkv, d, device="cuda", generator=g).to(dt)
    lam = torch.randn(b, sq, h2 // 2, device="cuda", generator=g).to(dt)
    kl = None if kv_len is None else torch.tensor(kv_len, dtype=torch.int32, device="cuda")
    out = torch.full((b, sq, h2 // 2, d), float("nan"), dtype=dt, device="cuda")
    diffattn.v2(q, k, v, lam, causal=causal, window=window, kv_len=kl, out=out)
    torch.cuda.synchronize()
    small = b * sq * sk * h2 <= 2_000_000
    if small:
        ref = diffattn.reference.v2(q.float().cpu().numpy(), k.float().cpu().numpy(),
                                    v.float().cpu().numpy(), lam.float().cpu().numpy(),
                                    causal=causal, window=window,
                                    kv_len=None if kv_len is None else np.array(kv_len, np.int32))
        ref_t = torch.from_numpy(ref).cuda()
        against = "reference"
    else:
        ref_t = sdpa_reference(q, k, v, lam, causal, window, kv_len)
        against = "sdpa-fp32"
    finite = bool(torch.isfinite(out).all())
    err = check_error(out, ref_t)
    # Through the custom op (no out=): the same result.
    via_op = torch.ops.diffattn.v2(q, k, v, lam, kl, causal, None, window[0], window[1])
    same = bool(torch.equal(via_op, out))
    ok = finite and err <= TOLERANCE[dtype] and same
    print(f"  {'ok  ' if ok else 'FAIL'} B={b} Sq={sq} Sk={sk} 2H={h2} Hkv={hkv} D={d} {dtype} "
          f"causal={causal} window={window} kv_len={kv_len}: rel L2 {err:.2e} vs {against}"
          f"{'' if same else ' (custom op differs!)'}", flush=True)
    return dict(case=list(case), error=err, finite=finite, against=against,
                custom_op_equal=same, ok=ok)


def sweep_cases(seed, per_config=2):
    """Fresh shapes for every static configuration the GPU check prepares
    (heads, D, dtype, mask, window, kv_len or not: what a kernel is
    specialised on): B, Sq, Sk and kv_len drawn from a generator seeded with
    `seed`, `per_config` draws each. Decode-form configurations (kv_len) draw
    Sq in 1..16 and kv_len in 0..Sk."""
    rng = np.random.default_rng(seed)
    configs = []
    for b, sq, sk, h2, hkv, d, dtype, causal, window, kv_len in gpu_cases.CHECK_CASES:
        config = (h2, hkv, d, dtype, causal, window, kv_len is not None)
        if config not in configs:
            configs.append(config)
    cases = []
    for h2, hkv, d, dtype, causal, window, decode in configs:
        for _ in range(per_config):
            b = int(rng.integers(1, 5))
            sq = int(rng.integers(1, 17)) if decode else int(rng.integers(1, 300))
            sk = int(rng.integers(1, 700))
            lens = [int(x) for x in rng.integers(0, sk + 1, size=b)] if decode else None
            cases.append((b, sq, sk, h2, hkv, d, dtype, causal, window, lens))
    return cases


def check(results, seed):
    print("== correctness", flush=True)
    g = torch.Generator(device="cuda").manual_seed(seed)
    rows = [check_case(case, g) for case in gpu_cases.CHECK_CASES]
    print(f"== correctness on fresh shapes (seed {seed}; rerun with --seed {seed})", flush=True)
    sweep = [check_case(case, g) for case in sweep_cases(seed)]
    results["sweep_seed"] = seed
    results["sweep"] = sweep
    rows += sweep

    # torch.compile keeps the op in its graph (the fake kernel gives shapes).
    q = torch.randn(2, 128, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 128, 2, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 128, 2, 64, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(2, 128, 4, device="cuda", dtype=torch.bfloat16)

    def block(q, k, v, lam):
        return diffattn.v2(q * 1.0, k, v, lam, causal=True) * 2.0

    compiled = torch.compile(block, fullgraph=True)
    err = rel_l2(compiled(q, k, v, lam), block(q, k, v, lam))
    rows.append(dict(case="torch.compile(fullgraph=True)", error=err, ok=err < 1e-6))
    print(f"  {'ok  ' if err < 1e-6 else 'FAIL'} torch.compile(fullgraph=True) of a block "
          f"calling the op: rel L2 {err:.2e} vs eager", flush=True)
    results["correctness"] = rows
    return all(r["ok"] for r in rows)


def round_orders(names, repeats, seed):
    """`repeats` orders of `names`, each shuffled afresh (random.Random seeded
    with f"{seed}/{round}"): timing rounds in these orders give every entry
    every neighbour, where a rotation of one order kept the same ones (Hopper
    runs 51-52: the entry always timed after FA3 + epilogue ran 2-4% slower
    in most rounds)."""
    orders = []
    for r in range(repeats):
        order = list(names)
        random.Random(f"{seed}/{r}").shuffle(order)
        orders.append(order)
    return orders


def bench_fn(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")  # ms


def make_epilogue():
    @torch.compile
    def epilogue(a, lam):  # a: [B, 2H, S, D] (SDPA layout), lam: [B, S, H]
        a = a.transpose(1, 2)
        return a[:, :, 0::2] - torch.sigmoid(lam.float()).to(a.dtype)[..., None] * a[:, :, 1::2]

    return epilogue


def fa3_anchor():
    """FlashAttention-3 (PyPI fa3-fwd, Hopper only) + a torch.compile'd
    epilogue on BSHD inputs, or None where it is not installed or not a
    Hopper GPU."""
    try:
        from fa3_fwd_interface import flash_attn_func
    except ImportError:
        return None
    if torch.cuda.get_device_capability()[0] != 9:
        return None

    @torch.compile
    def epilogue(a, lam):  # a: [B, S, 2H, D], lam: [B, S, H]
        return a[:, :, 0::2] - torch.sigmoid(lam.float()).to(a.dtype)[..., None] * a[:, :, 1::2]

    def run(q, k, v, lam, causal):
        a = flash_attn_func(q, k, v, causal=causal)
        return epilogue(a[0] if isinstance(a, tuple) else a, lam)

    return run


def sdpa_anchor(backend, q, k, v, lam, causal, epilogue):
    from torch.nn.attention import sdpa_kernel

    def run():
        with sdpa_kernel(backend):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return epilogue(a, lam)

    return run


def decode_inputs(b, kvl, h2, hkv, d):
    """Fresh bf16 inputs of a one-token decode step over a full cache of kvl
    keys: q, k, v, lam and kv_len as the op takes them (BSHD), and q, k, v
    transposed to BHSD as the SDPA anchors take them."""
    q = torch.randn(b, 1, h2, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, kvl, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, kvl, hkv, d, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, 1, h2 // 2, device="cuda", dtype=torch.bfloat16)
    kl = torch.full((b,), kvl, dtype=torch.int32, device="cuda")
    bhsd = tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))
    return q, k, v, lam, kl, bhsd


def direct_launch(directory, out_shape, sizes, named):
    """A launch of the prepared kernel `directory` (from _gpu.prepare_v2)
    straight through the runtime on the tensors `named` ((name, dtype,
    tensor) in argument order): returns (launch, out), `out` a bf16 tensor
    of `out_shape` poisoned with NaN, which each launch() writes."""
    out = torch.full(out_shape, float("nan"), dtype=torch.bfloat16, device="cuda")
    workspace = torch.empty(_gpu.workspace_elements(directory, sizes), dtype=torch.float32,
                            device="cuda")
    bufs = [(name, dtype, tuple(t.shape), t.data_ptr())
            for name, dtype, t in list(named) + [("out", "bf16", out)]]
    stream = torch.cuda.current_stream().cuda_stream

    def launch():
        _gpu.launch_v2(directory, bufs, sizes, stream, lambda n: workspace.data_ptr())

    return launch, out


def variant_launch(shapes, named, mine, options, target="sm_90", **call):
    """The kernel that diffattn-compile `options` make for a bf16 call with
    these (q, k, v, lam) shapes and keyword arguments of _gpu.prepare_v2,
    launched directly on the tensors `named` ((name, dtype, tensor) in
    argument order): returns (launch, err), err its output's relative L2
    error against the default kernel's output `mine` after one launch."""
    directory, out_shape, sizes = _gpu.prepare_v2(
        *shapes, "bf16", "bf16", window=(-1, -1), target=target, options=options, **call)
    launch, out = direct_launch(directory, out_shape, sizes, named)
    launch()
    return launch, rel_l2(out, mine)


def time_variant(shapes, named, mine, options, target="sm_90", repeat=True, **call):
    """Median time (ms) of variant_launch's kernel (with repeat=False no
    timing: None) and its relative L2 error against `mine`."""
    launch, err = variant_launch(shapes, named, mine, options, target, **call)
    return (bench_fn(launch) if repeat else None), err


def time_in_rounds(launches, rounds, seed):
    """Median over `rounds` rounds of each launch's bench_fn time (ms),
    every round timing each entry of `launches` ({name: callable}) once in
    an order shuffled afresh (round_orders(list(launches), rounds, seed)):
    an entry inherits no fixed neighbour's clocks or heat (Hopper runs
    51-53; one call per path in a fixed order put the 16K shape at 0.94x
    FA3 + epilogue where gpu_ab.py's rounds gave 1.017x in Hopper runs
    66-67). Returns ({name: median ms}, {name: [ms per round]}, the rounds'
    orders)."""
    times = {name: [] for name in launches}
    orders = round_orders(list(launches), rounds, seed)
    for order in orders:
        for name in order:
            times[name].append(bench_fn(launches[name]))
    return {name: statistics.median(t) for name, t in times.items()}, times, orders


def bench(results, prefill=True, rounds=5, seed=0):
    from torch.nn.attention import SDPBackend

    print("== ceilings", flush=True)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm = 2 * 8192 ** 3 / bench_fn(lambda: x @ y) / 1e9
    src = torch.randn(2 ** 30 // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 2 / bench_fn(lambda: dst.copy_(src)) / 1e9  # bytes/ms/1e9 = TB/s
    results["ceilings"] = dict(bf16_matmul_tflops=mm, copy_tbps=copy)
    print(f"  bf16 matmul {mm:.0f} TFLOP/s, device copy (read + write) {copy:.2f} TB/s", flush=True)
    del x, y, src, dst

    epilogue = make_epilogue()
    fa3 = fa3_anchor()
    capability = torch.cuda.get_device_capability()
    targets = [(t, o, dims) for t, o, dims in gpu_cases.BENCH_TARGETS
               if _gpu.runs_on(t, capability)]
    print("== prefill (bf16)", flush=True)
    rows = []
    for index, (b, s, h2, hkv, d, causal) in enumerate(gpu_cases.BENCH_PREFILL if prefill else []):
        q = torch.randn(b, s, h2, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(b, s, h2 // 2, device="cuda", dtype=torch.bfloat16)
        qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        pairs = s * (s + 1) // 2 if causal else s * s
        flops = 4 * b * h2 * d * pairs
        shapes = ((b, s, h2, d), (b, s, hkv, d), (b, s, hkv, d), (b, s, h2 // 2))
        named = [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam)]
        # Every path of this shape, checked against ours once, then timed
        # together in shuffled rounds (time_in_rounds).
        launches = {"ours": lambda: torch.ops.diffattn.v2(q, k, v, lam, None, causal, None, -1, -1)}
        mine = launches["ours"]()
        row = dict(shape=[b, s, h2, hkv, d, causal], rounds=rounds)
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            try:
                run = sdpa_anchor(backend, qh, kh, vh, lam, causal, epilogue)
                row[f"{name}_vs_ours_rel_l2"] = rel_l2(mine, run())
                launches[name] = run
            except Exception as e:  # a backend missing on this build
                row[f"{name}_error"] = str(e).splitlines()[0][:200]
        if fa3 is not None:
            launches["fa3"] = lambda: fa3(q, k, v, lam, causal)  # noqa: E731
            row["fa3_vs_ours_rel_l2"] = rel_l2(mine, launches["fa3"]())
        errors = {}
        for t, topts, dims in targets:
            if dims is not None and d not in dims:
                continue
            # The same op compiled for another target (its own strategy).
            name = "target_" + " ".join((t,) + tuple(topts))
            launches[name], errors[name] = variant_launch(shapes, named, mine, topts, target=t,
                                                          causal=causal)
        if (b, s, causal) in gpu_cases.BENCH_VARLEN and (h2, hkv, d) == (32, 8, 128):
            # The same tokens packed as b sequences of s (diffattn.v2_varlen).
            cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device="cuda")
            qp, kp, vp, lp = (t.reshape((b * s,) + tuple(t.shape[2:])) for t in (q, k, v, lam))
            packed = diffattn.v2_varlen(qp, kp, vp, lp, cu, cu, s, s, causal=causal)
            errors["varlen"] = rel_l2(packed.reshape(mine.shape), mine)
            launches["varlen"] = lambda: torch.ops.diffattn.v2_varlen(  # noqa: E731
                qp, kp, vp, lp, cu, cu, s, s, causal, None, -1, -1)
        for vd, options in gpu_cases.BENCH_VARIANTS:
            if vd == d:
                name = " ".join(options)
                launches[name], errors[name] = variant_launch(shapes, named, mine, options,
                                                              causal=causal)
        ms_of, rounds_ms, _ = time_in_rounds(launches, rounds, f"{seed}/{index}")
        row["rounds_ms"] = rounds_ms
        ours = ms_of["ours"]
        row.update(ours_ms=ours, ours_tflops=flops / ours / 1e9)
        for name in ("cudnn", "fa2", "fa3"):
            if name in ms_of:
                ms = ms_of[name]
                row.update({f"{name}_ms": ms, f"{name}_tflops": flops / ms / 1e9,
                            f"ratio_vs_{name}": ms / ours})
        for name, err in errors.items():
            ms = ms_of[name]
            if name.startswith("target_"):
                entry = dict(ms=ms, tflops=flops / ms / 1e9, rel_l2_vs_default=err,
                             vs_default=ours / ms)
                for anchor in ("cudnn", "fa2", "fa3"):
                    if f"{anchor}_ms" in row:
                        entry[f"ratio_vs_{anchor}"] = row[f"{anchor}_ms"] / ms
                row[name] = entry
                print(f"    {name[len('target_'):]}: {flops / ms / 1e9:.0f} TFLOP/s ({ms:.3f} ms), "
                      f"{ours / ms:.2f}x the default target, "
                      f"{entry.get('ratio_vs_cudnn', float('nan')):.2f}x cuDNN+epi, "
                      f"{entry.get('ratio_vs_fa3', float('nan')):.2f}x FA3+epi, rel L2 vs default "
                      f"{err:.1e}", flush=True)
            elif name == "varlen":
                row["varlen"] = dict(ms=ms, tflops=flops / ms / 1e9, vs_batched=ours / ms,
                                     rel_l2_vs_batched=err)
                print(f"    varlen (packed, {b} x {s}): {flops / ms / 1e9:.0f} TFLOP/s "
                      f"({ms:.3f} ms), {ours / ms:.3f}x the batched kernel", flush=True)
            else:
                row[name] = dict(ms=ms, tflops=flops / ms / 1e9, rel_l2_vs_default=err)
                print(f"    variant {name}: {flops / ms / 1e9:.0f} TFLOP/s ({ms:.3f} ms), "
                      f"rel L2 vs default {err:.1e}", flush=True)
        rows.append(row)
        print(f"  B={b} S={s} 2H={h2} Hkv={hkv} D={d} {'causal' if causal else 'full'}: ours "
              f"{row['ours_tflops']:.0f} TFLOP/s ({ours:.3f} ms); cuDNN+epi "
              f"{row.get('cudnn_tflops', float('nan')):.0f} ({row.get('ratio_vs_cudnn', float('nan')):.2f}x); "
              f"FA2+epi {row.get('fa2_tflops', float('nan')):.0f} ({row.get('ratio_vs_fa2', float('nan')):.2f}x); "
              f"FA3+epi {row.get('fa3_tflops', float('nan')):.0f} ({row.get('ratio_vs_fa3', float('nan')):.2f}x)",
              flush=True)
        del q, k, v, lam, qh, kh, vh, launches, mine
    results["prefill"] = rows

    print("== decode (bf16, one token)", flush=True)
    rows = []
    for b, kvl, h2, hkv, d in gpu_cases.BENCH_DECODE:
        q, k, v, lam, kl, (qh, kh, vh) = decode_inputs(b, kvl, h2, hkv, d)
        nbytes = 2 * b * hkv * kvl * d * 2
        ours = bench_fn(lambda: torch.ops.diffattn.v2(q, k, v, lam, kl, True, None, -1, -1))
        row = dict(shape=[b, kvl, h2, hkv, d], ours_ms=ours, ours_tbps=nbytes / ours / 1e9)
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            try:
                run = sdpa_anchor(backend, qh, kh, vh, lam, False, epilogue)
                ms = bench_fn(run)
                row[f"{name}_ms"] = ms
                row[f"{name}_tbps"] = nbytes / ms / 1e9
                row[f"ratio_vs_{name}"] = ms / ours
            except Exception as e:
                row[f"{name}_error"] = str(e).splitlines()[0][:200]
        mine = torch.ops.diffattn.v2(q, k, v, lam, kl, True, None, -1, -1)
        for options in gpu_cases.BENCH_DECODE_VARIANTS:
            ms, err = time_variant(
                ((b, 1, h2, d), (b, kvl, hkv, d), (b, kvl, hkv, d), (b, 1, h2 // 2)),
                [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam),
                 ("kv_len", "i32", kl)],
                mine, options, causal=True, kv_len_shape=(b,))
            row[" ".join(options)] = dict(ms=ms, tbps=nbytes / ms / 1e9, rel_l2_vs_default=err)
            print(f"    variant {' '.join(options)}: {nbytes / ms / 1e9:.2f} TB/s ({ms:.3f} ms), "
                  f"rel L2 vs default {err:.1e}", flush=True)
        for pb, pkvl, bs in gpu_cases.BENCH_PAGED_DECODE:
            if (pb, pkvl) != (b, kvl) or (h2, hkv, d) != (32, 8, 128):
                continue
            kc, vc, table = paged_cache(k, v, [kvl] * b, bs)
            paged = torch.ops.diffattn.v2_paged(q, kc, vc, lam, kl, table, True, None, -1, -1)
            ms = bench_fn(lambda: torch.ops.diffattn.v2_paged(q, kc, vc, lam, kl, table, True,
                                                              None, -1, -1))
            row[f"paged_bs{bs}"] = dict(ms=ms, tbps=nbytes / ms / 1e9, vs_contiguous=ours / ms,
                                        rel_l2_vs_contiguous=rel_l2(paged, mine))
            print(f"    paged, block size {bs}: {nbytes / ms / 1e9:.2f} TB/s ({ms:.3f} ms), "
                  f"{ours / ms:.3f}x the contiguous cache, rel L2 vs contiguous "
                  f"{rel_l2(paged, mine):.1e}", flush=True)
            del kc, vc
        rows.append(row)
        print(f"  B={b} kv_len={kvl}: ours {row['ours_tbps']:.2f} TB/s ({ours:.3f} ms); cuDNN+epi "
              f"{row.get('cudnn_tbps', float('nan')):.2f} ({row.get('ratio_vs_cudnn', float('nan')):.2f}x); "
              f"FA2+epi {row.get('fa2_tbps', float('nan')):.2f} ({row.get('ratio_vs_fa2', float('nan')):.2f}x)",
              flush=True)
        del q, k, v, qh, kh, vh
    results["decode"] = rows


def paged_cache(k, v, kv_len, bs, sentinel=-7):
    """k, v [B, Sk, Hkv, D] as a paged cache: (k_cache, v_cache [NB, BS, Hkv,
    D], block_table [B, MB] int32 on the GPU), each sequence's blocks at
    random places of the pool and its table row padded with `sentinel` (an
    out-of-range entry) past its last block."""
    b, sk = k.shape[0], k.shape[1]
    mb = (sk + bs - 1) // bs
    used = [(int(n) + bs - 1) // bs for n in kv_len]
    nb = sum(used) + 1
    perm = torch.randperm(nb).tolist()
    k_cache = torch.zeros((nb, bs) + tuple(k.shape[2:]), dtype=k.dtype, device=k.device)
    v_cache = torch.zeros_like(k_cache)
    table = torch.full((b, mb), sentinel, dtype=torch.int32)
    j = 0
    for i in range(b):
        for s in range(used[i]):
            rows = min(bs, sk - s * bs)
            k_cache[perm[j], :rows] = k[i, s * bs:s * bs + rows]
            v_cache[perm[j], :rows] = v[i, s * bs:s * bs + rows]
            table[i, s] = perm[j]
            j += 1
    return k_cache, v_cache, table.to(k.device)


def sanitize_case():
    """A small launch for compute-sanitizer (memcheck / racecheck)."""
    torch.manual_seed(0)
    persistent_case, persistent_options = gpu_cases.SANITIZE_PERSISTENT
    wgmma = _gpu.target_for_capability(torch.cuda.get_device_capability()) == "sm_90a"
    for b, sq, sk, h2, hkv, d, causal, kv in gpu_cases.SANITIZE_CASES:
        q = torch.randn(b, sq, h2, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
        lam = torch.randn(b, sq, h2 // 2, device="cuda", dtype=torch.bfloat16)
        kl = None if kv is None else torch.tensor(kv, dtype=torch.int32, device="cuda")
        out = diffattn.v2(q, k, v, lam, causal=causal, kv_len=kl)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        if wgmma and kv is None and (b, sq, sk, h2, hkv, d, causal) == persistent_case:
            # One CTA per tile, against the default (persistent) kernel,
            # which must match it bit for bit.
            _, err = time_variant(
                ((b, sq, h2, d), (b, sk, hkv, d), (b, sk, hkv, d), (b, sq, h2 // 2)),
                [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam)],
                out, persistent_options, target="sm_90a", causal=causal, repeat=False)
            assert err == 0.0, f"one CTA per tile differs from the default: rel L2 {err}"
            # Cross-tile pipelining (overlap-tiles) under the sanitizer too:
            # the same bits.
            _, err = time_variant(
                ((b, sq, h2, d), (b, sk, hkv, d), (b, sk, hkv, d), (b, sq, h2 // 2)),
                [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam)],
                out, gpu_cases.overlap_options("", True), target="sm_90a", causal=causal,
                repeat=False)
            assert err == 0.0, f"overlap-tiles=true differs from the default: rel L2 {err}"
    # A paged launch: blocks scattered over the pool, table rows padded with
    # an out-of-range sentinel past each sequence's last block.
    b, sk, lens = 3, 100, [3, 100, 40]
    q = torch.randn(b, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, sk, 8, 128, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, 1, 16, device="cuda", dtype=torch.bfloat16)
    kc, vc, table = paged_cache(k, v, lens, 16)
    kl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = diffattn.v2(q, kc, vc, lam, causal=True, kv_len=kl, block_table=table)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    # A packed variable-length launch (an empty sequence among them).
    cu = torch.tensor([0, 3, 73, 73], dtype=torch.int32, device="cuda")
    q = torch.randn(75, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(75, 8, 128, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(75, 16, device="cuda", dtype=torch.bfloat16)
    out = diffattn.v2_varlen(q, k, k, lam, cu, cu, 70, 70, causal=True)
    torch.cuda.synchronize()
    assert torch.isfinite(out[:73]).all()
    print("sanitize case done")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="time only the decode shapes")
    ap.add_argument("--sanitize-case", action="store_true")
    ap.add_argument("--rounds", type=int, default=5,
                    help="prefill timing rounds (every path once per round, in a shuffled order; "
                         "the median of the rounds)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the inputs and of the fresh-shape sweep (default: the time)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py: no CUDA GPU here (it checks and times the GPU kernels; "
                 "gpu_prepare.py is the part that runs on a machine without one)")
    if args.sanitize_case:
        sanitize_case()
        return
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   date=time.strftime("%Y-%m-%d"))
    seed = args.seed if args.seed is not None else int(time.time()) % (2 ** 31)
    ok = check(results, seed)
    if not args.skip_bench:
        bench(results, prefill=not args.decode_only, rounds=args.rounds, seed=seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("correctness:", "all passed" if ok else "FAILURES")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
