"""README's main job, CPU part (scripts/run.sh example): the bundled V2
module export fused by diffattn-opt, compiled by diffattn-compile
--target=cpu, and the shared object run by examples/run_cpu_example.py
against the float64 reference; a kernel that writes nothing (its output is
poisoned with NaN) or a wrong one fails the script."""

import json
import os
import subprocess
import sys

from diffattn import _build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(_build_config.DIFFATTN_COMPILE)


def _fuse(tmp_path):
    """examples/v2_attention.mlir fused by diffattn-opt, as run.sh does."""
    fused = tmp_path / "fused.mlir"
    subprocess.run([os.path.join(BIN, "diffattn-opt"),
                    os.path.join(ROOT, "examples", "v2_attention.mlir"), "--diffattn-fuse",
                    "-o", str(fused)], check=True)
    return fused


def _compile_and_run(source, fused, directory, edit_manifest=None):
    """diffattn-compile --target=cpu of `source` into `directory` (its
    manifest then passed through `edit_manifest`), then the example script
    on `fused`'s shapes; the finished process."""
    subprocess.run([_build_config.DIFFATTN_COMPILE, str(source), "--target=cpu", "-o",
                    str(directory)], check=True)
    if edit_manifest:
        manifest = json.loads((directory / "manifest.json").read_text())
        edit_manifest(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", "run_cpu_example.py"),
                           str(fused), str(directory)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def test_example_cpu_kernel_matches_reference(tmp_path):
    fused = _fuse(tmp_path)
    run = _compile_and_run(fused, fused, tmp_path / "cpu")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "B 2, Sq 64, Sk 64: relative L2 error vs float64 reference" in run.stdout
    assert "(ok)" in run.stdout


def test_example_cpu_reports_a_wrong_kernel(tmp_path):
    """The script's check can fail: a kernel compiled without the causal
    mask, under a manifest that says causal, is reported FAILED."""
    fused = _fuse(tmp_path)
    noncausal = tmp_path / "noncausal.mlir"
    noncausal.write_text(fused.read_text().replace("{causal, ", "{"))

    def claim_causal(manifest):  # claims what the kernel does not compute
        manifest["kernels"][0]["params"]["causal"] = True

    run = _compile_and_run(noncausal, fused, tmp_path / "cpu", claim_causal)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED" in run.stdout
