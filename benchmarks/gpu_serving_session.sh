#!/usr/bin/env bash
# One GPU-machine session for the serving items of issue 16 (host cost,
# small-batch decode, the serving benchmark), kept inside one device call:
# builds the runtime and the torch kernel there (no MLIR), installs the FA3
# wheel from .whl/ if present, then runs, each step's output under OUT:
#   1. GPU pytest of the serving paths (CUDA-graph capture, paged cache,
#      the C++ kernel) and of the decode kernels;
#   2. launch_cost.cpp: diffattn_launch's host cost alone (no torch), with
#      and without the runtime's launch plans;
#   3. gpu_small_decode.py: B 1-4 (and 8, 32) decode under graph replay,
#      default split target and variants;
#   4. host_cost.py: the eager op's host cost with the phase breakdown;
#   5. serving_decode.py: the layer stack, tokens/s beside cuDNN and FA3;
#   6. compute-sanitizer memcheck on the small launches.
# Kernels come from DIFFATTN_CACHE_DIR (default .device/cache), prepared
# here by `python3 benchmarks/gpu_prepare.py .device/cache`.
#
#   bash benchmarks/gpu_serving_session.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export DIFFATTN_CACHE_DIR="${DIFFATTN_CACHE_DIR:-$PWD/.device/cache}"
build=/tmp/diffattn-build
log="$out/session.log"
status=0
step() { echo "== $* ($(date +%T))" | tee -a "$log"; }

step "build the runtime, the package and the torch kernel"
cmake -G Ninja -S . -B "$build" -DDIFFATTN_ENABLE_COMPILER=OFF >>"$log" 2>&1 &&
  ninja -C "$build" >>"$log" 2>&1 || { tail -30 "$log"; exit 1; }
export PYTHONPATH="$build/python_packages"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$log" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
g++ -O2 -std=c++17 benchmarks/launch_cost.cpp -I runtime/include -L "$build/lib" \
  -ldiffattn_runtime -ldl -Wl,-rpath,"$build/lib" -o /tmp/launch_cost >>"$log" 2>&1 || status=1

step "GPU pytest: serving paths and decode kernels"
python3 -m pytest -q -m gpu -p no:cacheprovider python/tests/test_gpu_serving.py \
  python/tests/test_paged.py python/tests/test_gpu.py 2>&1 | tee -a "$log" | tail -4
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "launch_cost: diffattn_launch alone, plans on / off"
dir=$(python3 -c "
from diffattn import _gpu
print(_gpu.prepare_v2((1, 1, 32, 128), (1, 64, 8, 128), (1, 64, 8, 128), (1, 1, 16), 'bf16',
      'bf16', causal=True, kv_len_shape=(1,))[0])")
for shape in "1 4096" "1 16384" "4 4096" "4 16384"; do
  for plans in 1 0; do
    DIFFATTN_LAUNCH_PLANS=$plans /tmp/launch_cost "$dir" $shape 5000 | tee -a "$out/launch_cost.jsonl"
  done
done

step "small-batch decode under graph replay"
python3 benchmarks/gpu_small_decode.py --out "$out" \
  --shapes 1:4096,1:16384,1:32768,2:8192,4:4096,4:16384,8:32768,32:8192 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "host cost of the eager op"
python3 benchmarks/host_cost.py --out "$out" --repeats 9 --no-child 2>&1 | tee -a "$log" |
  grep -v "^ *$" | tail -32
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "serving benchmark"
python3 benchmarks/serving_decode.py --out "$out" 2>&1 | tee -a "$log" | grep -v '^{'
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer memcheck, small launches"
compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/gpu_check.py \
  --sanitize-case >"$out/memcheck.log" 2>&1
rc=$?
echo "  memcheck: exit $rc, $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)" | tee -a "$log"
[ "$rc" -eq 0 ] || status=1
step "done, status $status"
exit $status
