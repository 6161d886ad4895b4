#!/usr/bin/env bash
# Backward run 49 (issue 15): the final tree (run 48's v4 as the
# accumulating dk/dv kernel: both heads' S per row tile, P_c exact):
# gradients on every check case (both formulations, sm_90), gpu_ab
# --backward (deterministic against acc = deterministic=false), forward +
# backward beside SDPA cuDNN / FA2.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/wc && tar xJf .device/w5/cache.tar.xz -C /tmp/wc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/wc/cache
export DIFFATTN_GPU_TARGET=sm_90
timeout 200 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 49 --out $r/chk > $r/chk.log 2>&1
echo "check rc=$?"
grep -E "FAIL|Error|error|gradients:" $r/chk.log | head -20
timeout 200 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 49 --out $r/ab 2>&1 | tee $r/ab.log | tail -8
echo "ab rc=$?"
timeout 150 python3 benchmarks/gpu_backward_check.py --bench-only --out $r/bench > $r/bench.log 2>&1
echo "bench rc=$?"
tail -8 $r/bench.log
