#!/usr/bin/env bash
# Run 63 (issues 12, 15) on this tree: the portable forward's 4-byte
# epilogue stores and the statistics kernel's (query row, pair) rows.
# Forward correctness on sm_90a and sm_90 (gpu_check.py's fixed and fresh
# shapes), gradients on sm_90, memcheck of the forward and the backward,
# gpu_ab (forward) against 85103bd's compiler (head: 2-byte stores).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w3/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_CACHE_DIR=/tmp/wc/cache
stamp built
timeout 150 python3 benchmarks/gpu_check.py --skip-bench --seed 63 --out $r/chk90a > $r/chk90a.log 2>&1
stamp "check sm_90a rc=$?"; grep -E "FAIL|Error|error|passed|failed" $r/chk90a.log | tail -4
DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_check.py --skip-bench --seed 63 --out $r/chk90 > $r/chk90.log 2>&1
stamp "check sm_90 rc=$?"; grep -E "FAIL|Error|error|passed|failed" $r/chk90.log | tail -4
DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 63 --out $r/grad90 > $r/grad90.log 2>&1
stamp "grad sm_90 rc=$?"; grep -E "FAIL|Error|error|gradients:" $r/grad90.log | head -4
DIFFATTN_GPU_TARGET=sm_90 timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/gpu_check.py --sanitize-case > $r/san-fwd.log 2>&1
stamp "memcheck fwd rc=$? $(grep -E 'ERROR SUMMARY' $r/san-fwd.log | tail -1)"
DIFFATTN_GPU_TARGET=sm_90 timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/gpu_backward_check.py --sanitize-case > $r/san-bwd.log 2>&1
stamp "memcheck bwd rc=$? $(grep -E 'ERROR SUMMARY' $r/san-bwd.log | tail -1)"
DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_ab.py --repeats 9 --seed 63 --out $r/ab90 2>&1 | tee $r/ab90.log | tail -6
stamp "ab fwd sm_90"
cd $OUT && tar czf r.tgz r && rm -rf r
