"""benchmarks/gpu_kernel_split.py's kernel-name matchers, on the CPU: the
kernels diffattn-compile names for a training forward (lse, out_odd) and
the accumulating backward are the ones the script takes for the op's
forward and backward product kernels, on both GPU targets, and nothing
else is (a renamed kernel would otherwise drop out of the split's rates:
the script stops when a path's product kernel is missing)."""
import json
import os
import subprocess
import sys

import pytest

from diffattn import _compiler

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_kernel_split  # noqa: E402

pytestmark = pytest.mark.skipif(_compiler.compiler_version() is None,
                                reason="needs diffattn-compile")
INPUTS = os.path.join(ROOT, "test", "Tools", "diffattn-compile", "Inputs")


def kernel_names(tmp_path, source, target, options=()):
    out = tmp_path / f"{os.path.basename(source)}-{target}"
    subprocess.run([_compiler.compiler_path(), os.path.join(INPUTS, source),
                    f"--target={target}", *options, "-o", str(out)],
                   check=True, capture_output=True, text=True)
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    names = []
    for kernel in manifest["kernels"]:
        launch = kernel.get("launch", {})
        stages = launch.get("stages") or [launch]
        names += [stage["function"] for stage in stages if "function" in stage]
    return names


@pytest.mark.parametrize("target", ["sm_90", "sm_90a"])
def test_matchers_pick_the_forward_and_the_dkdv_kernel(tmp_path, target):
    forward = kernel_names(tmp_path, "v2_out_odd_d128.mlir", target)
    backward = kernel_names(tmp_path, "v2_backward_out_odd_d128.mlir", target,
                            ["--gpu-options=deterministic=false"])
    assert forward and len(backward) == 4, (forward, backward)
    assert all(gpu_kernel_split.op_forward(n) for n in forward)
    assert not any(gpu_kernel_split.op_products(n) for n in forward)
    assert not any(gpu_kernel_split.op_forward(n) for n in backward)
    assert [n for n in backward if gpu_kernel_split.op_products(n)] == \
        [n for n in backward if n.endswith("_dkdv")]
    times = {n: 1.0 for n in forward + backward}
    assert gpu_kernel_split.pick(times, gpu_kernel_split.op_products) == 1.0
