#!/usr/bin/env bash
# Backward run 58 (issue 15): the final tree (cd5bcb7): the portable dk/dv
# kernel of run 57's e4 (G of both row tiles, no stmatrix) and the
# statistics kernel's contiguous dq zeroing. Gradients and sanitizers,
# gpu_ab --backward against 326210b (head), forward + backward beside SDPA
# in 7 shuffled rounds, then the backward's profile.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w13/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90
stamp built
timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 58 --out $r/chk90 > $r/chk90.log 2>&1
stamp "grad sm_90 rc=$?"; grep -E "FAIL|Error|error|gradients:" $r/chk90.log | head -8
for tool in memcheck racecheck; do
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_backward_check.py --sanitize-case > $r/san-$tool.log 2>&1
  stamp "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
timeout 120 python3 benchmarks/gpu_ab.py --backward --repeats 7 --seed 58 --out $r/ab90 2>&1 | tee $r/ab90.log | tail -5
stamp "ab bwd sm_90"
timeout 220 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 7 --seed 58 --out $r/bench > $r/bench.log 2>&1
stamp "bench rc=$?"; tail -6 $r/bench.log
timeout 150 bash benchmarks/gpu_profile_backward.sh $r/p acc 0 --gpu-options=deterministic=false > $r/prof.log 2>&1
stamp "profile rc=$?"; rm -f $r/p/*.ncu-rep
grep -E "diffattn_v2_backward|Duration|DRAM Throughput|Memory Throughput" $r/p/acc-details.txt | head -16
