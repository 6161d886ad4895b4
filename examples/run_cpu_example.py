#!/usr/bin/env python3
"""The README's main job on the CPU: compile a model file's differential
attention with diffattn-compile, then run every kernel it produced on fresh
random inputs against the float64 reference.

    python3 examples/run_cpu_example.py examples/v2_model.mlir OUT_DIR

The shapes to run come from the model's function signature (the kernels
themselves take B, Sq and Sk at run time).
"""
import re
import subprocess
import sys

import numpy as np

import diffattn
from diffattn import _compiler, _cpu


def main():
    model, out_dir = sys.argv[1], sys.argv[2]
    compiler = _compiler.compiler_path()
    print(f"$ {compiler} {model} --target=cpu -o {out_dir}", flush=True)
    subprocess.run([compiler, model, "--target=cpu", "-o", out_dir], check=True)

    text = open(model).read()
    # The q operand's static shape gives B and Sq; k's gives Sk.
    q_shape = [int(x) for x in re.search(r"%q: tensor<(\d+)x(\d+)x\d+x\d+x", text).groups()]
    sk = int(re.search(r"%k: tensor<\d+x(\d+)x", text).group(1))
    b, sq = q_shape

    rng = np.random.default_rng()
    failures = 0
    for name, (fn, kernel) in _cpu.load_kernels(out_dir).items():
        p = kernel["params"]
        dtype = {"f32": np.float32, "f16": np.float16}[p["element_type"]]
        h2, hkv, d, dv = p["query_heads"], p["kv_heads"], p["head_dim"], p["value_dim"]
        if kernel["kind"] != "v2":
            print(f"{name}: skipped (the example runner drives V2 kernels)")
            continue
        q = rng.standard_normal((b, sq, h2, d)).astype(dtype)
        k = rng.standard_normal((b, sk, hkv, d)).astype(dtype)
        v = rng.standard_normal((b, sk, hkv, dv)).astype(dtype)
        lam = rng.standard_normal((b, sq, h2 // 2)).astype(dtype)
        out = np.full((b, sq, h2 // 2, dv), np.nan, dtype)
        _cpu.call_kernel(fn, kernel, [("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out)],
                         (b, sq, sk))
        window = (p["window_left"], p["window_right"])
        ref = diffattn.reference.v2(q, k, v, lam, causal=p["causal"], scale=p["scale"], window=window)
        err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
        tol = {np.float32: 1e-5, np.float16: 3e-3}[dtype]
        ok = np.all(np.isfinite(out)) and err <= tol
        failures += not ok
        print(f"{name}: B={b} Sq={sq} Sk={sk} relative L2 error vs float64 reference "
              f"{err:.2e} ({'ok' if ok else 'FAILED'}, tolerance {tol:g})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
