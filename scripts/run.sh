#!/usr/bin/env bash
#===- scripts/run.sh - set up, build, and run the main job or the tests ---===#
#
# The one script behind README's two commands:
#   bash scripts/run.sh example   set everything up, run the main job
#   bash scripts/run.sh test      set everything up, run every test (lit +
#                                 pytest) and print one summary line
#   bash scripts/run.sh setup     only install and build
# Safe to run any number of times: installs are skipped when present and the
# build directory (BUILD_DIR, default ./build) is reused.
#
#===----------------------------------------------------------------------===#
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
LLVM_PREFIX=/usr/lib/llvm-22
APT_PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools llvm-22-tools cmake ninja-build g++
              clang-format)
PIP_PACKAGES=(numpy pytest)

log() { printf '[diffattn] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "apt packages present"
    return
  fi
  log "installing apt packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

install_python_packages() {
  if python3 -c 'import numpy, pytest' 2>/dev/null; then
    log "python packages present"
    return
  fi
  log "installing python packages: ${PIP_PACKAGES[*]}"
  python3 -m pip install -q "${PIP_PACKAGES[@]}"
}

build() {
  log "configuring and building in $BUILD_DIR"
  cmake -G Ninja -S "$ROOT" -B "$BUILD_DIR" \
    -DMLIR_DIR="$LLVM_PREFIX/lib/cmake/mlir" \
    -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD_DIR"
}

# Makes the laid-out package importable by the python3 on PATH.
install_python_path() {
  local site
  site="$(python3 -c 'import site; print(site.getsitepackages()[0])')"
  echo "$BUILD_DIR/python_packages" > "$site/diffattn-build.pth"
  python3 -c 'import diffattn; print("[diffattn] python package", diffattn.__version__, "importable")' >&2
}

setup() {
  install_apt_packages
  install_python_packages
  build
  install_python_path
}

# The main job on a real export: examples/v2_attention.mlir is a full
# Differential Transformer V2 attention module written the way the public
# reference writes it (q/k/v/lambda projections, interleaved RoPE, GQA, the
# sigmoid epilogue) with flash_attn_func replaced by
# F.scaled_dot_product_attention, exported by torch-mlir
# (scripts/export_fixtures.py, group `example`). Fuse its attention
# (printing what was fused), compile the fused op for the CPU and run that
# shared object on the op's shapes against the float64 reference, and run
# the whole module on the CPU fused (the op tiled FlashAttention-style,
# 16 x 16 blocks) and unfused, comparing the outputs. Then the same module
# at a real model's sizes in bf16 (examples/v2_attention_bf16.mlir) is fused
# and compiled to PTX and an sm_90a cubin (the Hopper strategy; needs ptxas
# from the CUDA toolkit, else skipped with a message), and run on an
# H100/H200 if there is one.
run_example() {
  local model="$ROOT/examples/v2_attention.mlir"
  local out="$BUILD_DIR/example-cpu"
  mkdir -p "$out"
  log "the model: $model (torch-mlir export of a V2 attention module with SDPA)"
  log "fusing: diffattn-opt --diffattn-fuse=remarks=true"
  "$BUILD_DIR/bin/diffattn-opt" "$model" --diffattn-fuse=remarks=true \
    -o "$out/v2_attention.fused.mlir" 2>&1 | grep -E "remark" || true
  grep -E "diffattn\.v[12] " "$out/v2_attention.fused.mlir"
  log "compiling the fused op for the CPU: diffattn-compile --target=cpu"
  "$BUILD_DIR/bin/diffattn-compile" "$out/v2_attention.fused.mlir" --target=cpu -o "$out"
  ls "$out"
  log "running the compiled kernel on the fused op's shapes against the float64 reference"
  python3 "$ROOT/examples/run_cpu_example.py" "$out/v2_attention.fused.mlir" "$out"
  log "running the module on the CPU, unfused and fused (the op tiled), and comparing"
  python3 "$ROOT/test/Dialect/DiffAttn/Transforms/run_graph.py" --opt "$BUILD_DIR/bin/diffattn-opt" \
    --runner "$LLVM_PREFIX/bin/mlir-runner" --lib-dir "$LLVM_PREFIX/lib" --tile 16x16 "$model"

  local big="$ROOT/examples/v2_attention_bf16.mlir"
  local gpu_out="$BUILD_DIR/example-sm90a"
  log "the same module at a real model's sizes ($big: d_model 2048, 32 query"
  log "heads, 8 KV heads, head dim 128, bf16): fuse and compile for sm_90a"
  if ! command -v ptxas >/dev/null && [ ! -x /usr/local/cuda/bin/ptxas ] \
      && [ -z "${DIFFATTN_PTXAS:-}" ]; then
    log "no ptxas (CUDA toolkit) on this machine: the sm_90a compile and run are skipped"
    return 0
  fi
  "$BUILD_DIR/bin/diffattn-compile" "$big" --target=sm_90a -o "$gpu_out" --fuse-remarks
  ls "$gpu_out"
  grep -m1 -E "wgmma.mma_async.sync.aligned" "$gpu_out"/*.ptx | cut -c1-100
  log "running it on the GPU (if this machine has one)"
  python3 "$ROOT/examples/run_gpu_example.py" "$big" "$gpu_out"
}

# Runs lit and pytest, then prints one summary line; exits non-zero when any
# test failed or none ran.
run_tests() {
  local logdir="$BUILD_DIR/test-logs"
  mkdir -p "$logdir"
  local lit_rc=0 py_rc=0
  log "lit suite (check-diffattn)"
  cmake --build "$BUILD_DIR" --target check-diffattn 2>&1 | tee "$logdir/lit.log" || lit_rc=$?
  log "pytest"
  python3 -m pytest -q -rs "$ROOT/python/tests" 2>&1 | tee "$logdir/pytest.log" || py_rc=$?
  python3 "$ROOT/scripts/summarize_tests.py" "$logdir/lit.log" "$logdir/pytest.log" \
    --lit-rc "$lit_rc" --pytest-rc "$py_rc"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    setup) setup ;;
    example) setup; run_example ;;
    test) setup; run_tests ;;
    *) echo "usage: $0 setup|example|test" >&2; exit 2 ;;
  esac
}

main "$@"
