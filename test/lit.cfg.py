# -*- Python -*-
"""lit configuration of the diffattn test suite.

Substitutions: the project's tools (diffattn-opt, and later diffattn-compile)
from the build tree, FileCheck/not/count from LLVM, %diffattn_src_root and
%diffattn_obj_root. Features: `gpu` is present only when a CUDA driver and
device are visible, so GPU execution tests skip cleanly in CI.
"""

import os
import shutil
import subprocess

import lit.formats
import lit.util
from lit.llvm import llvm_config
from lit.llvm.subst import ToolSubst

config.name = "DIFFATTN"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.excludes = ["CMakeLists.txt", "README.txt", "lit.cfg.py", "lit.site.cfg.py", "Inputs"]

config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.diffattn_obj_root, "test")

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%diffattn_src_root", config.diffattn_src_root))
config.substitutions.append(("%diffattn_obj_root", config.diffattn_obj_root))
config.substitutions.append(("%python", config.python_executable or "python3"))

llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
llvm_config.use_default_substitutions()

tool_dirs = [config.diffattn_tools_dir, config.llvm_tools_dir]
tools = [
    ToolSubst("diffattn-opt", unresolved="fatal"),
    ToolSubst("diffattn-compile", unresolved="fatal"),
]
llvm_config.add_tool_substitutions(tools, tool_dirs)
# End-to-end fusion tests run whole graphs with mlir-runner and the MLIR
# runner utility libraries (test/Dialect/DiffAttn/Transforms/run_graph.py).
_llvm_lib_dir = os.path.join(os.path.dirname(config.llvm_tools_dir), "lib")
config.substitutions.append((
    "%run_graph",
    "%s %s --opt %s --runner %s --lib-dir %s" % (
        config.python_executable or "python3",
        os.path.join(config.diffattn_src_root, "test", "Dialect", "DiffAttn", "Transforms", "run_graph.py"),
        os.path.join(config.diffattn_tools_dir, "diffattn-opt"),
        os.path.join(config.llvm_tools_dir, "mlir-runner"),
        _llvm_lib_dir)))
# The plugin (tools/diffattn-plugin) and Debian's stock mlir-opt, which
# loads it.
config.substitutions.append((
    "%diffattn_plugin",
    os.path.join(config.diffattn_obj_root, "lib", "libDiffAttnPlugin.so")))
config.substitutions.append((
    "%stock_mlir_opt", os.path.join(config.llvm_tools_dir, "mlir-opt")))
if shutil.which("clang-format"):
    config.available_features.add("clang-format")
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.diffattn_tools_dir, append_path=True)


def _has_cuda_device():
    """True when nvidia-smi sees at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


if _has_cuda_device():
    config.available_features.add("gpu")
_ptxas = shutil.which("ptxas") or (
    "/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas") else None)
if _ptxas:
    config.available_features.add("ptxas")
    # Tests that read ptxas's own report (-v) run it themselves.
    config.substitutions.append(("%ptxas", _ptxas))
