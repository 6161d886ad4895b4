#!/usr/bin/env python3
"""The GPU backward (issue 15), correctness and timing in one run.

On a GPU machine, with the runtime built and the kernels in
DIFFATTN_CACHE_DIR (benchmarks/gpu_prepare.py compiles them elsewhere):

    python3 benchmarks/gpu_backward_check.py [--out DIR] [--skip-bench | --bench-only] [--seed N]

1. Gradients on gpu_cases.BACKWARD_CHECK_CASES: fresh random inputs (the
   seed is printed), out and lse from the GPU forward
   (``diffattn.v2(..., return_lse=True)``), then ``diffattn.v2_backward`` on
   the GPU into memory the caching allocator held NaN in; relative L2 of
   out, lse (finite entries), dq, dk, dv and dlam against the float64
   reference (diffattn.reference) within 4x the forward's tolerance
   (SPEC.md: bf16 1e-2, f16 3e-3); lse must be -inf exactly where the
   reference's is; NaN/Inf fail. Both backward formulations: the
   deterministic one (under torch.use_deterministic_algorithms(True): run
   twice, it must agree bit for bit) and the accumulating one
   (gpu_cases.ACCUMULATE_OPTIONS: dq through f32 reductions, the default
   on sm_90a), each also from the training forward's out and lse with
   out_odd (A_{2h+1}, checked against the reference too), which the
   backward then reads instead of recomputing (what autograd runs).
2. Gradients on gpu_cases.BACKWARD_LARGE against autograd through fp32
   SDPA math (gpu_check.sdpa_reference) on the same bf16 inputs.
3. Forward + backward timing on gpu_cases.BACKWARD_BENCH through autograd
   (torch.autograd.grad of the op's output) beside SDPA (cuDNN and
   FlashAttention-2 backends, enable_gqa) + the torch.compile'd epilogue;
   FLOPs = 3.5 x the forward count (FlashAttention's convention), with
   the default kernels and under torch.use_deterministic_algorithms(True);
   also the backward kernels alone (torch.ops.diffattn.v2_backward with
   the training forward's out_odd, as autograd calls it), both ways. Each
   shape's paths are timed in --rounds rounds (default 5), every path once
   per round in an order shuffled afresh (gpu_check.time_in_rounds, seeded
   by --seed); the tables give the medians, the JSON every round.

Prints tables and writes gpu_backward.json under --out; exits 1 on any
failure.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_cases  # noqa: E402
from gpu_check import (TOLERANCE, TORCH_DTYPE, check_error, time_in_rounds,  # noqa: E402
                       make_epilogue, sdpa_reference)

import diffattn  # noqa: E402
from diffattn import _torch  # noqa: E402,F401  (registers the ops)

GRAD_FACTOR = 4
NAMES = ("dq", "dk", "dv", "dlam")


def poison_allocator(nbytes):
    """Fills `nbytes` of torch's caching allocator with NaN and frees it, so
    that the outputs allocated next most likely start as NaN."""
    t = torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")
    del t


def inputs(b, sq, sk, h2, hkv, d, dt, g):
    q = torch.randn(b, sq, h2, d, device="cuda", generator=g).to(dt)
    k = torch.randn(b, sk, hkv, d, device="cuda", generator=g).to(dt)
    v = torch.randn(b, sk, hkv, d, device="cuda", generator=g).to(dt)
    lam = torch.randn(b, sq, h2 // 2, device="cuda", generator=g).to(dt)
    dout = torch.randn(b, sq, h2 // 2, d, device="cuda", generator=g).to(dt)
    return q, k, v, lam, dout


def op_training_step(q, k, v, lam, dout, causal):
    """One training step of the op: torch.ops.diffattn.v2 forward + backward
    through autograd (torch.autograd.grad) on BSHD leaves q, k, v, lam with
    the output gradient dout. Returns the step's callable, which returns
    (dq, dk, dv, dlam)."""
    def run():
        out = torch.ops.diffattn.v2(q, k, v, lam, None, causal, None, -1, -1)
        return torch.autograd.grad(out, (q, k, v, lam), dout)
    return run


def sdpa_training_steps(q, k, v, lam, dout, causal, epilogue):
    """SDPA's training step beside the op's: scaled_dot_product_attention
    (enable_gqa) + `epilogue` (gpu_check.make_epilogue) forward + backward
    through autograd on BHSD copies of q, k, v and a copy of lam, made once
    here. Returns a function of an SDPBackend that returns that backend's
    step callable."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    qh, kh, vh = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    lam2 = lam.detach().clone().requires_grad_()

    def step(backend):
        def run():
            with sdpa_kernel(backend):
                a = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal,
                                                   enable_gqa=True)
            return torch.autograd.grad(epilogue(a, lam2), (qh, kh, vh, lam2), dout)
        return run
    return step


def with_deterministic(fn):
    """fn() under torch.use_deterministic_algorithms(True) (the
    deterministic backward kernels, diffattn._torch.default_backward_options)."""
    def run():
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return fn()
        finally:
            torch.use_deterministic_algorithms(before)
    return run


def accumulating_backward(q, k, v, lam, out, dout, lse, kv_len, causal, window, out_odd=None):
    """The backward with dq accumulated through bulk reductions
    (gpu_cases.ACCUMULATE_OPTIONS), reading `out_odd` if given."""
    return _torch.backward_cuda(q, k, v, lam, out, dout, lse, kv_len, causal, None, *window,
                                options=gpu_cases.ACCUMULATE_OPTIONS, out_odd=out_odd)


def check_case(case, g):
    b, sq, sk, h2, hkv, d, dtype, causal, window, kv_len = case
    dt = TORCH_DTYPE[dtype]
    q, k, v, lam, dout = inputs(b, sq, sk, h2, hkv, d, dt, g)
    kl = None if kv_len is None else torch.tensor(kv_len, dtype=torch.int32, device="cuda")
    poison_allocator(4 * (q.numel() + k.numel() + v.numel() + lam.numel() + dout.numel()))
    out, lse = diffattn.v2(q, k, v, lam, causal=causal, window=window, kv_len=kl,
                           return_lse=True)
    det = [with_deterministic(lambda: diffattn.v2_backward(
        q, k, v, lam, out, dout, lse, causal=causal, window=window, kv_len=kl))()
        for _ in range(2)]
    grads = accumulating_backward(q, k, v, lam, out, dout, lse, kl, causal, window)
    # The training forward (lse and out_odd) and both backwards reading
    # out_odd: what autograd runs.
    out_t, lse_t, out_odd = _torch.v2_train_cuda(q, k, v, lam, kl, causal, None, *window)
    odd_grads = accumulating_backward(q, k, v, lam, out_t, dout, lse_t, kl, causal, window,
                                      out_odd)
    odd_det = with_deterministic(lambda: _torch.backward_cuda(
        q, k, v, lam, out_t, dout, lse_t, kl, causal, None, *window, out_odd=out_odd))()
    torch.cuda.synchronize()
    deterministic = all(torch.equal(x, y) for x, y in zip(*det))
    np_in = [t.float().cpu().numpy() for t in (q, k, v, lam)]
    kv_np = None if kv_len is None else np.array(kv_len, np.int32)
    ref_out, ref_lse = diffattn.reference.v2(*np_in, causal=causal, window=window, kv_len=kv_np,
                                             return_lse=True)
    ref_grads = diffattn.reference.v2_backward(*np_in, dout.float().cpu().numpy(), causal=causal,
                                               window=window, kv_len=kv_np)
    tol = TOLERANCE[dtype]
    errs = {"out": check_error(out, torch.from_numpy(ref_out).cuda())}
    ref_lse_t = torch.from_numpy(np.asarray(ref_lse)).cuda()
    empty = torch.isneginf(ref_lse_t)
    lse_where = bool(torch.equal(torch.isneginf(lse), empty))
    errs["lse"] = check_error(lse[~empty], ref_lse_t[~empty]) if bool((~empty).any()) else 0.0
    errs["out_t"] = check_error(out_t, torch.from_numpy(ref_out).cuda())
    ref_odd = diffattn.reference._attention(
        np_in[0], np_in[1], np_in[2], scale=1.0 / np.sqrt(d), causal=causal, window=window,
        kv_len=kv_np)[:, :, 1::2]
    errs["out_odd"] = check_error(out_odd, torch.from_numpy(ref_odd).cuda())
    for name, x, y, xo, yo, ref in zip(NAMES, grads, det[0], odd_grads, odd_det, ref_grads):
        errs[name + "_acc"] = check_error(x, torch.from_numpy(ref).cuda())
        errs[name] = check_error(y, torch.from_numpy(ref).cuda())
        errs[name + "_odd_acc"] = check_error(xo, torch.from_numpy(ref).cuda())
        errs[name + "_odd"] = check_error(yo, torch.from_numpy(ref).cuda())
    ok = (lse_where and deterministic and errs["out"] <= tol and errs["lse"] <= tol and
          errs["out_t"] <= tol and errs["out_odd"] <= tol and
          all(errs[n + s] <= GRAD_FACTOR * tol for n in NAMES
              for s in ("", "_acc", "_odd", "_odd_acc")))
    print(f"  {'ok  ' if ok else 'FAIL'} B={b} Sq={sq} Sk={sk} 2H={h2} Hkv={hkv} D={d} {dtype} "
          f"causal={causal} window={window} kv_len={kv_len}: "
          + " ".join(f"{n} {e:.1e}" for n, e in errs.items())
          + ("" if lse_where else " (lse -inf mismatch!)")
          + ("" if deterministic else " (not deterministic!)"), flush=True)
    return dict(case=list(case), errors=errs, lse_inf_match=lse_where,
                deterministic=deterministic, ok=ok)


def check_large(shape, g):
    b, s, h2, hkv, d, causal = shape
    q, k, v, lam, dout = inputs(b, s, s, h2, hkv, d, torch.bfloat16, g)
    out, lse = diffattn.v2(q, k, v, lam, causal=causal, return_lse=True)
    grads = diffattn.v2_backward(q, k, v, lam, out, dout, lse, causal=causal)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, lam)]
    ref = sdpa_reference(*leaves, causal, (-1, -1), None)
    ref_grads = torch.autograd.grad(ref, leaves, dout.float())
    errs = {"out": check_error(out, ref.detach())}
    errs.update({n: check_error(x, r) for n, x, r in zip(NAMES, grads, ref_grads)})
    tol = TOLERANCE["bf16"]
    ok = errs["out"] <= tol and all(errs[n] <= GRAD_FACTOR * tol for n in NAMES)
    print(f"  {'ok  ' if ok else 'FAIL'} B={b} S={s} 2H={h2} Hkv={hkv} D={d} causal={causal}: "
          + " ".join(f"{n} {e:.1e}" for n, e in errs.items()) + " vs fp32 SDPA autograd",
          flush=True)
    del ref, ref_grads, leaves
    torch.cuda.empty_cache()
    return dict(shape=list(shape), errors=errs, ok=ok)


def bench(results, rounds=5, seed=0):
    from torch.nn.attention import SDPBackend

    epilogue = make_epilogue()
    rows = []
    print("== forward + backward (bf16, autograd; TFLOP/s = 3.5 x forward FLOPs / time)")
    print("| B x S, D | mask | op fwd+bwd | op fwd+bwd deterministic | op bwd kernels "
          "| deterministic bwd kernels | bwd kernels recomputing A_2h+1 | SDPA cuDNN + epi "
          "| SDPA FA2 + epi | vs cuDNN | vs FA2 | deterministic vs cuDNN |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, (b, s, h2, hkv, d, causal) in enumerate(gpu_cases.BACKWARD_BENCH):
        dt = torch.bfloat16
        q, k, v, lam, dout = (t.requires_grad_(i < 4) for i, t in
                              enumerate(inputs(b, s, s, h2, hkv, d, dt, None)))
        pairs = s * (s + 1) // 2 if causal else s * s
        flops = 3.5 * 4 * b * h2 * d * pairs

        ours = op_training_step(q, k, v, lam, dout, causal)

        with torch.no_grad():
            # The training forward's saved tensors (what autograd keeps).
            out, lse, out_odd = _torch.v2_train_cuda(q, k, v, lam, None, causal, None, -1, -1)

        def bwd_only():
            return torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse, None, causal,
                                                  None, -1, -1, out_odd)

        def bwd_recompute():
            # The same kernels without out_odd: the statistics kernel
            # recomputes A_{2h+1} (the form before out_odd; A/B in one run).
            return torch.ops.diffattn.v2_backward(q, k, v, lam, out, dout, lse, None, causal,
                                                  None, -1, -1)

        sdpa = sdpa_training_steps(q, k, v, lam, dout, causal, epilogue)
        row = dict(shape=[b, s, h2, hkv, d, causal])
        launches = {"ours_ms": ours, "ours_det_ms": with_deterministic(ours),
                    "ours_bwd_ms": bwd_only, "ours_bwd_det_ms": with_deterministic(bwd_only),
                    "ours_bwd_recompute_ms": bwd_recompute}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("fa2", SDPBackend.FLASH_ATTENTION)):
            run = sdpa(backend)
            try:
                run()
                launches[f"{name}_ms"] = run
            except RuntimeError as e:  # backend unavailable for this shape
                row[f"{name}_ms"] = None
                print(f"    {name}: {str(e).splitlines()[0]}")
        # Every path once per round, in an order shuffled afresh each round
        # (gpu_check.time_in_rounds); the medians of the rounds.
        medians, per_round, orders = time_in_rounds(launches, rounds, seed + index)
        row.update(medians, rounds_ms=per_round, rounds_order=orders)
        tf = {key: flops / row[key] / 1e9 if row.get(key) else None
              for key in ("ours_ms", "ours_det_ms", "cudnn_ms", "fa2_ms")}
        row.update(ours_tflops=tf["ours_ms"], ours_det_tflops=tf["ours_det_ms"],
                   cudnn_tflops=tf["cudnn_ms"], fa2_tflops=tf["fa2_ms"])
        ratio = {n: row[f"{n}_ms"] / row["ours_ms"] if row.get(f"{n}_ms") else None
                 for n in ("cudnn", "fa2")}
        det_ratio = row["cudnn_ms"] / row["ours_det_ms"] if row.get("cudnn_ms") else None
        row.update(vs_cudnn=ratio["cudnn"], vs_fa2=ratio["fa2"], det_vs_cudnn=det_ratio)
        fmt = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
        rat = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
        print(f"| {b} x {s}, {d} | {'causal' if causal else 'none'} | {fmt(tf['ours_ms'])} "
              f"({row['ours_ms']:.2f} ms) | {fmt(tf['ours_det_ms'])} "
              f"({row['ours_det_ms']:.2f} ms) | {row['ours_bwd_ms']:.2f} ms | "
              f"{row['ours_bwd_det_ms']:.2f} ms | {row['ours_bwd_recompute_ms']:.2f} ms | "
              f"{fmt(tf['cudnn_ms'])} | "
              f"{fmt(tf['fa2_ms'])} | {rat(ratio['cudnn'])} | {rat(ratio['fa2'])} | "
              f"{rat(det_ratio)} |", flush=True)
        rows.append(row)
        del q, k, v, lam, dout, sdpa, ours, run, launches, out, lse, out_odd
        torch.cuda.empty_cache()
    results["bench"] = rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--skip-bench", action="store_true")
    what.add_argument("--bench-only", action="store_true",
                    help="only the timing (3.), e.g. of the portable kernels under "
                         "DIFFATTN_GPU_TARGET=sm_90; checks no gradient")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the inputs and of the timing rounds' orders")
    ap.add_argument("--rounds", type=int, default=5,
                    help="timing rounds (3.): each path once per round in a shuffled "
                         "order, the median reported")
    ap.add_argument("--sanitize-case", action="store_true",
                    help="only gpu_cases.BACKWARD_SANITIZE_CASES (for compute-sanitizer)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % (2 ** 31)
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    if args.sanitize_case:
        rows = [check_case(gpu_cases.BACKWARD_CHECK_CASES[i], g)
                for i in gpu_cases.BACKWARD_SANITIZE_CASES]
        sys.exit(0 if all(r["ok"] for r in rows) else 1)
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   date=time.strftime("%Y-%m-%d"), seed=seed,
                   target=os.environ.get("DIFFATTN_GPU_TARGET", "default"))
    if args.bench_only:
        bench(results, args.rounds, seed)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_backward-bench.json"), "w") as f:
            json.dump(results, f, indent=1)
        return
    print(f"== gradients vs the float64 reference (seed {seed}; tolerance 4x SPEC's)")
    results["cases"] = [check_case(c, g) for c in gpu_cases.BACKWARD_CHECK_CASES]
    print("== gradients vs fp32 SDPA autograd")
    results["large"] = [check_large(s, g) for s in gpu_cases.BACKWARD_LARGE]
    ok = all(r["ok"] for r in results["cases"] + results["large"])
    passed = sum(r["ok"] for r in results["cases"] + results["large"])
    print(f"gradients: {passed} of {len(results['cases']) + len(results['large'])} passed")
    if not args.skip_bench:
        bench(results, args.rounds, seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_backward.json"), "w") as f:
        json.dump(results, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
