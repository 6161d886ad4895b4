#!/usr/bin/env bash
# Backward run 45 (issue 15): the accumulating portable dk/dv kernel in
# FlashAttention-2's warp layout (branch portable-bwd-wide): gradients on
# every check case (both formulations, sm_90), then gpu_ab --backward:
# current (deterministic) against wide (deterministic=false).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/wc && tar xJf .device/w1/cache.tar.xz -C /tmp/wc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/wc/cache
export DIFFATTN_GPU_TARGET=sm_90
timeout 240 python3 benchmarks/gpu_backward_check.py --skip-bench --out $r/chk > $r/chk.log 2>&1
echo "check rc=$?"
grep -E "FAIL|fail|Error|error" $r/chk.log | head -20
tail -25 $r/chk.log
timeout 280 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 45 --out $r/ab 2>&1 | tee $r/ab.log | tail -30
echo "rc=$?"
