#!/usr/bin/env bash
# Backward run 46 (issue 15): where the wide accumulating dk/dv kernel's
# time goes. gpu_ab --backward: current (deterministic), wide
# (deterministic=false), and three edited compilers: nored (the dq product
# without its red.global additions), nodq (neither), joint (both heads' S
# in one pass, sharing K's fragments); then ncu of wide at 4 x 4096 causal.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/wc && tar xJf .device/w2/cache.tar.xz -C /tmp/wc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/wc/cache
export DIFFATTN_GPU_TARGET=sm_90
timeout 300 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 46 --out $r/ab 2>&1 | tee $r/ab.log | tail -30
echo "rc=$?"
timeout 200 bash benchmarks/gpu_profile_backward.sh $r/p wide 0 --gpu-options=deterministic=false 2>&1 | tail -30
head -30 $r/p/wide-dkdv-sass-summary.txt
