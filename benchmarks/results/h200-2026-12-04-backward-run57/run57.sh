#!/usr/bin/env bash
# Backward run 57 (issue 15): the portable accumulating dk/dv kernel with
# G and both heads' S in one k loop, G of both row tiles per V fragment
# (e4), and stmatrix stores of dS / P_c (e4s); the tree's rule: e4s for
# causal-like masks at D >= 128, e4 otherwise. Gradients and sanitizers on
# the tree's kernels, gpu_ab --backward against 326210b (head) and the
# variants, then forward + backward beside SDPA in shuffled rounds.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w12/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90
stamp built
timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 57 --out $r/chk90 > $r/chk90.log 2>&1
stamp "grad sm_90 rc=$?"; grep -E "FAIL|Error|error|gradients:" $r/chk90.log | head -8
for tool in memcheck racecheck; do
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_backward_check.py --sanitize-case > $r/san-$tool.log 2>&1
  stamp "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
timeout 150 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 57 --out $r/ab90 2>&1 | tee $r/ab90.log | tail -8
stamp "ab bwd sm_90"
timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 5 --seed 57 --out $r/bench > $r/bench.log 2>&1
stamp "bench rc=$?"; tail -7 $r/bench.log
