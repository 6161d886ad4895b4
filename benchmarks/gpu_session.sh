#!/usr/bin/env bash
# One GPU-machine session (see docs/performance.md): builds the runtime and
# the package there (no MLIR needed), then runs the GPU pytest tests, the
# GPU check (correctness, a fresh-shape sweep, timing beside the anchors)
# and compute-sanitizer on small launches. Kernels come from
# DIFFATTN_CACHE_DIR (default .device/cache), prepared on a machine with the
# compiler by `python3 benchmarks/gpu_prepare.py .device/cache`.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR] [gpu_check.py options...]
#
# Logs and results go to OUT_DIR (default $OUT, else ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-out}}"
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export DIFFATTN_CACHE_DIR="${DIFFATTN_CACHE_DIR:-$PWD/.device/cache}"
build=/tmp/diffattn-build
status=0
step() { echo "== $*"; }

step "build the runtime and the package"
cmake -G Ninja -S . -B "$build" -DDIFFATTN_ENABLE_COMPILER=OFF >"$out/build.log" 2>&1 &&
  ninja -C "$build" >>"$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
export PYTHONPATH="$build/python_packages${PYTHONPATH:+:$PYTHONPATH}"
# Targets besides the GPU's default whose kernels this GPU runs (sm_90, the
# portable strategy, on a compute capability 9.0 card, whose default is
# sm_90a): checked for correctness and under compute-sanitizer too.
extra_targets=$(python3 -c 'import torch; print("sm_90" if torch.cuda.get_device_capability() == (9, 0) else "")')

if [ -z "${SKIP_PYTEST:-}" ]; then
  step "GPU pytest (marked gpu)"
  python3 -m pytest python/tests -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/pytest-gpu.log" | tail -15
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

for target in default $extra_targets; do
  if [ "$target" != default ]; then
    step "correctness of the $target kernels"
    DIFFATTN_GPU_TARGET=$target python3 benchmarks/gpu_check.py --skip-bench --out "$out/$target" 2>&1 |
      tee "$out/gpu_check-$target.log" | grep -v "^  ok  "
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  fi
  step "compute-sanitizer ($target target)"
  for tool in memcheck racecheck; do
    log="$out/sanitizer-$tool-$target.log"
    env DIFFATTN_GPU_TARGET="${target/default/}" \
      compute-sanitizer --tool "$tool" --error-exitcode 9 python3 benchmarks/gpu_check.py --sanitize-case \
      >"$log" 2>&1
    rc=$?
    echo "  $tool: exit $rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
    [ "$rc" -eq 0 ] || status=1
  done
done

step "GPU check"
python3 benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log" | grep -v "^  ok  "
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
