#!/usr/bin/env bash
# Backward run 43 (issue 15): the portable (sm_90) backward's tile shapes,
# timed in shuffled rounds against the current kernels in one process:
# kw8 = dk/dv CTAs of 8 warps (128 keys), rw8 = dq CTAs of 8 warps (128
# group rows), both8 = both, rs3 = dq with 3 K/V stages, all = the three;
# acc = deterministic=false (bulk reductions), accred = the same with
# red.global.add.v2.f32 from registers in place of staging + bulk reduce.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/bc && tar xJf .device/bcache.tar.xz -C /tmp/bc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/bc/bcache
DIFFATTN_GPU_TARGET=sm_90 timeout 420 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 43 --out $r/ab 2>&1 | tee $r/ab.log
echo "rc=$?"
