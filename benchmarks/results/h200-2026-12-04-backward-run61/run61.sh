#!/usr/bin/env bash
# Backward run 61 (issue 15), part 1: the dq accumulator zeroed by a kernel of
# its own (dq_zero) before a read-only statistics kernel. Gradients on
# sm_90 (portable) and sm_90a, sanitizers, gpu_ab --backward against HEAD's
# accumulating kernels (head) in shuffled rounds.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc /tmp/wca && mkdir -p /tmp/wc /tmp/wca && tar xJf .device/w1/cache.tar.xz -C /tmp/wc
[ -f .device/w2/cache.tar.xz ] && tar xJf .device/w2/cache.tar.xz -C /tmp/wca
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
stamp built
DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 61 --out $r/chk90 > $r/chk90.log 2>&1
stamp "grad sm_90 rc=$?"; grep -E "FAIL|Error|error|gradients:" $r/chk90.log | head -8
if [ -d /tmp/wca/cache ]; then
  DIFFATTN_CACHE_DIR=/tmp/wca/cache timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 61 --out $r/chk90a > $r/chk90a.log 2>&1
  stamp "grad sm_90a rc=$?"; grep -E "FAIL|Error|error|gradients:" $r/chk90a.log | head -8
fi
for tool in memcheck racecheck; do
  DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_backward_check.py --sanitize-case > $r/san-$tool.log 2>&1
  stamp "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_ab.py --backward --repeats 9 --seed 61 --out $r/ab90 2>&1 | tee $r/ab90.log | tail -5
stamp "ab bwd sm_90"
cd $OUT && tar czf r.tgz r && rm -rf r
