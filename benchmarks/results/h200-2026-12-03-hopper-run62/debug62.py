"""Per-pair error of each prepared entry against the current kernel (gpu_ab's
cache): which rank's rows (pair parity) are wrong, and how."""
import json, os, sys
sys.path.insert(0, "benchmarks")
import torch
import gpu_ab, gpu_check
from diffattn import _compiler
cache = _compiler.cache_dir()
record = json.load(open(os.path.join(cache, "ab-compilers.json")))
entries = [("current", dict(compiler=None, options=[], dims=None))] + sorted(record["entries"].items())
torch.manual_seed(0)
for b, s, h2, hkv, d, causal in gpu_ab.calls(False, record):
    q = torch.randn(b, s, h2, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s, hkv, d, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, s, h2 // 2, device="cuda", dtype=torch.bfloat16)
    named = [("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam)]
    outs = {}
    for name, e in entries:
        if not gpu_ab.applies(e, d):
            continue
        directory, out_shape, sizes = gpu_ab.prepare_call(False, b, s, h2, hkv, d, causal, record["target"], e["options"])[:3]
        launch, out = gpu_check.direct_launch(directory, out_shape, sizes, named)
        try:
            launch(); torch.cuda.synchronize()
        except Exception as ex:
            print(f"{b}x{s} D{d} {name}: {ex}"); continue
        outs[name] = out.float()
    ref = outs["current"]
    for name, o in outs.items():
        if name == "current":
            continue
        errs = []
        for p in range(h2 // 2):
            r, x = ref[:, :, p], o[:, :, p]
            nan = torch.isnan(x).float().mean().item()
            e = ((x - r).nan_to_num(1e4).norm() / r.norm()).item()
            errs.append(f"{e:.1e}" + (f"/nan{nan:.2f}" if nan else ""))
        # rows: error per query-row block of 64 for pair 1
        print(f"{b}x{s} D{d} {'causal' if causal else 'full'} {name}: per pair {' '.join(errs)}")
        for pp in (1,):
            x = o[0, :, pp]
            nb = [(torch.isnan(x[i:i+64]).float().mean().item()) for i in range(0, s, 64)]
            cb = [(torch.isnan(x[:, j:j+64]).float().mean().item()) for j in range(0, d, 64)]
            rb = [(((x[i:i+64] - ref[0, i:i+64, pp]).nan_to_num(1e4).norm() / ref[0, i:i+64, pp].norm()).item()) for i in range(0, s, 64)]
            print(f"   pair{pp} nan by rowblock {['%.2f' % v for v in nb]} by colblock {['%.2f' % v for v in cb]} err by rowblock {['%.1e' % v for v in rb]}")
            # Is the wrong output another pair's / row block's value?
            for qq in range(h2 // 2):
                for i in range(0, s, 64):
                    for i2 in range(0, s, 64):
                        a_, b_ = x[i:i+64], ref[0, i2:i2+64, qq]
                        if a_.shape == b_.shape and not torch.isnan(a_).any() and ((a_ - b_).norm() / b_.norm()).item() < 1e-2 and (qq, i2) != (pp, i):
                            print(f"   pair{pp} rows {i}.. equal ref pair {qq} rows {i2}..")
        x, r = o[0, :, 1], ref[0, :, 1]
        rowerr = ((x - r).nan_to_num(1e4).norm(dim=-1) / r.norm(dim=-1).clamp_min(1e-6))
        print("   pair1 rows err>1e-2:", (rowerr > 1e-2).nonzero().flatten().tolist()[:40])
        cols = ((o[0, :, 0] - ref[0, :, 0]).nan_to_num(1e4).abs().amax(dim=0) > 1e-2).nonzero().flatten().tolist()
        print("   pair0 bad cols:", cols[:70])
