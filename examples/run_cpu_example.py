#!/usr/bin/env python3
"""The README's main job, CPU part: run the kernels that
`diffattn-compile --target=cpu -o DIR` wrote for a fused model graph (the
shared objects and manifest.json in DIR), on fresh random inputs of the
fused op's shapes with the output poisoned (NaN), against the float64
reference (diffattn.reference).

    python3 examples/run_cpu_example.py FUSED.mlir DIR

B, Sq and Sk come from the first diffattn op's `q` and `k` operand types in
FUSED.mlir (what `diffattn-opt --diffattn-fuse` wrote). Exits 1 when a
kernel's output is not finite or its relative L2 error exceeds 1e-5 (f32)
or 1e-10 (f64), or when DIR holds no kernel this script runs (f32/f64 V2).
"""
import re
import sys

import numpy as np

import diffattn
from diffattn import _cpu

_NUMPY = {"f32": np.float32, "f64": np.float64}


def main():
    fused, directory = sys.argv[1], sys.argv[2]
    op = re.search(r"diffattn\.v[12] [^\n]*: \(tensor<(\d+)x(\d+)x\d+x\d+x\w+>, "
                   r"tensor<\d+x(\d+)x", open(fused).read())
    if not op:
        print(f"{fused}: no fused diffattn op with static shapes")
        return 1
    b, sq, sk = (int(x) for x in op.groups())
    rng = np.random.default_rng(0)
    failures = ran = 0
    kernels = _cpu.load_kernels(directory)
    for name, (fn, kernel) in kernels.items():
        p = kernel["params"]
        if kernel["kind"] != "v2" or p["element_type"] not in _NUMPY:
            print(f"{name}: {kernel['kind']} {p['element_type']} is not run by this script")
            continue
        dt = _NUMPY[p["element_type"]]
        h2, hkv, d, dv = p["query_heads"], p["kv_heads"], p["head_dim"], p["value_dim"]
        q = rng.standard_normal((b, sq, h2, d)).astype(dt)
        k = rng.standard_normal((b, sk, hkv, d)).astype(dt)
        v = rng.standard_normal((b, sk, hkv, dv)).astype(dt)
        lam = rng.standard_normal((b, sq, h2 // 2)).astype(dt)
        out = np.full((b, sq, h2 // 2, dv), np.nan, dtype=dt)
        _cpu.call_kernel(fn, kernel, [("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out)],
                         (b, sq, sk))
        ref = diffattn.reference.v2(q, k, v, lam, causal=p["causal"], scale=p["scale"],
                                    window=(p["window_left"], p["window_right"]))
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        ok = bool(np.all(np.isfinite(out))) and err <= (1e-5 if dt == np.float32 else 1e-10)
        failures += not ok
        ran += 1
        print(f"{name} ({directory}): B {b}, Sq {sq}, Sk {sk}: relative L2 error vs float64 "
              f"reference {err:.2e} ({'ok' if ok else 'FAILED'})")
    if not ran:
        print(f"{directory}: no kernel ran")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
