#!/usr/bin/env bash
# One GPU-machine session for the backward (issue 15): builds the runtime
# and the package (no MLIR needed), then runs benchmarks/gpu_backward_check.py
# (gradients on 30+ shapes against the float64 reference and on large ones
# against fp32 SDPA autograd, then forward + backward timing beside SDPA's
# cuDNN and FA2 paths), compute-sanitizer memcheck and racecheck on small
# backward launches, and the training run (benchmarks/train_v2_layer.py
# --device cuda --preset public). Kernels come from DIFFATTN_CACHE_DIR
# (default .device/cache; benchmarks/gpu_prepare.py compiles them).
#
#   bash benchmarks/gpu_backward_session.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export DIFFATTN_CACHE_DIR="${DIFFATTN_CACHE_DIR:-$PWD/.device/cache}"
build=/tmp/diffattn-build
status=0
step() { echo "== $*"; }

step "build the runtime and the package"
if [ ! -f "$build/build.ninja" ] || ! ninja -C "$build" >"$out/build.log" 2>&1; then
  cmake -G Ninja -S . -B "$build" -DDIFFATTN_ENABLE_COMPILER=OFF >"$out/build.log" 2>&1 &&
    ninja -C "$build" >>"$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
fi
export PYTHONPATH="$build/python_packages${PYTHONPATH:+:$PYTHONPATH}"

step "gradients and timing"
python3 benchmarks/gpu_backward_check.py --out "$out" 2>&1 | tee "$out/gpu_backward.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer (backward cases)"
for tool in memcheck racecheck; do
  log="$out/sanitizer-backward-$tool.log"
  compute-sanitizer --tool "$tool" --error-exitcode 9 \
    python3 benchmarks/gpu_backward_check.py --sanitize-case >"$log" 2>&1
  rc=$?
  echo "  $tool: exit $rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
  [ "$rc" -eq 0 ] || status=1
done

step "training run (public V2 layer, 50 steps, op vs SDPA)"
python3 benchmarks/train_v2_layer.py --device cuda --preset public --out "$out" 2>&1 |
  tee "$out/train.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
