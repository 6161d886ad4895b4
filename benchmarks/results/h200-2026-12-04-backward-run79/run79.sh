#!/usr/bin/env bash
# Backward run 79 (issue 15): compute-sanitizer memcheck and racecheck on
# the final portable backward kernels (9a1522d: group barriers at D = 128),
# gpu_cases.BACKWARD_SANITIZE_CASES, both formulations.
set -uo pipefail
r=$OUT/r; mkdir -p $r
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w12/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
export PYTHONPATH=$build/python_packages DIFFATTN_GPU_TARGET=sm_90 DIFFATTN_CACHE_DIR=/tmp/wc/cache
stamp built
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_backward_check.py --sanitize-case > $r/san-$tool.log 2>&1
  stamp "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
cd $OUT && tar czf r.tgz r && rm -rf r
