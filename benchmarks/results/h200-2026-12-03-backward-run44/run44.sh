#!/usr/bin/env bash
# Backward run 44 (issue 15): ncu profile of the portable (sm_90) backward
# kernels at 4 x 4096 causal, D = 128: the deterministic default and the
# accumulating form (deterministic=false); tensor (hmma) pipe, shared
# memory wavefronts, ldmatrix count, stalls.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/bc && tar xJf .device/bcache.tar.xz -C /tmp/bc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/bc/bcache
export DIFFATTN_GPU_TARGET=sm_90
echo "== deterministic"
timeout 250 bash benchmarks/gpu_profile_backward.sh $r/p det 0
echo "== accumulating"
timeout 250 bash benchmarks/gpu_profile_backward.sh $r/p acc 0 --gpu-options=deterministic=false
rm -f $r/p/*.ncu-rep
