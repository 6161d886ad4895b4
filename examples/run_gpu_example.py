#!/usr/bin/env python3
"""The README's main job on a GPU: run the kernels that
`diffattn-compile --target=sm_90a -o DIR` wrote for a model graph
(examples/v2_attention_bf16.mlir: its attention was fused into one
diffattn.v2) or an op-level file (examples/v2_model.mlir), through the
runtime library, on fresh random inputs, against the float64 reference.

    python3 examples/run_gpu_example.py examples/v2_attention_bf16.mlir DIR

B and S come from the op's `%q`, or else from the graph's first argument
(the hidden states [B, S, d_model]).

Exits 0 without running anything where no CUDA GPU (or no torch) is present.
"""
import re
import sys

import numpy as np

import diffattn
from diffattn import _compiler, _gpu


def main():
    model, directory = sys.argv[1], sys.argv[2]
    try:
        import torch
    except ImportError:
        print("no torch here: the GPU run is skipped")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU here: the GPU run is skipped")
        return 0
    chips = {k["chip"] for k in _compiler.load_manifest(directory)["kernels"]}
    capability = torch.cuda.get_device_capability()
    runnable = [c for c in chips if _gpu.runs_on(c, capability)]
    if len(runnable) != len(chips):
        print(f"this GPU is compute capability {capability[0]}.{capability[1]}, the kernels are "
              f"{', '.join(sorted(chips))} cubins: the GPU run is skipped")
        return 0
    text = open(model).read()
    q = re.search(r"%q: tensor<(\d+)x(\d+)x", text)
    if q:
        b, sq = (int(x) for x in q.groups())
        sk = int(re.search(r"%k: tensor<\d+x(\d+)x", text).group(1))
    else:
        x = re.search(r"func\.func @\w+\(%\w+: tensor<(\d+)x(\d+)x", text)
        b, sq = (int(v) for v in x.groups())
        sk = sq
    failures = 0
    for kernel in _compiler.load_manifest(directory)["kernels"]:
        p = kernel["params"]
        dt = {"bf16": torch.bfloat16, "f16": torch.float16}[p["element_type"]]
        h2, hkv, d, dv = p["query_heads"], p["kv_heads"], p["head_dim"], p["value_dim"]
        q = torch.randn(b, sq, h2, d, device="cuda").to(dt)
        k = torch.randn(b, sk, hkv, d, device="cuda").to(dt)
        v = torch.randn(b, sk, hkv, dv, device="cuda").to(dt)
        lam = torch.randn(b, sq, h2 // 2, device="cuda").to(dt)
        out = torch.full((b, sq, h2 // 2, dv), float("nan"), device="cuda", dtype=dt)
        bufs = [(n, p["element_type"], tuple(t.shape), t.data_ptr())
                for n, t in (("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out))]
        scratch = []
        alloc = lambda n: scratch.append(torch.empty(n, device="cuda")) or scratch[-1].data_ptr()
        _gpu.launch_v2(directory, bufs, (b, sq, sk), torch.cuda.current_stream().cuda_stream, alloc)
        torch.cuda.synchronize()
        # The kernel's own configuration, as run_cpu_example.py passes it.
        ref = diffattn.reference.v2(*(t.float().cpu().numpy() for t in (q, k, v, lam)),
                                    causal=p["causal"], scale=p["scale"],
                                    window=(p["window_left"], p["window_right"]))
        got = out.double().cpu().numpy()
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        ok = bool(np.all(np.isfinite(got))) and err <= 1e-2
        failures += not ok
        print(f"{kernel['name']} on {torch.cuda.get_device_name()}: relative L2 error vs float64 "
              f"reference {err:.2e} ({'ok' if ok else 'FAILED'})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
