#!/usr/bin/env bash
# Backward run 55 (issue 15): forward + backward beside SDPA in shuffled
# rounds (gpu_backward_check.py --rounds, new), the portable kernels of
# 7d60c60 (run 54's cache: the kernels have not changed since).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc9 && mkdir -p /tmp/wc9 && tar xJf .device/w9/cache.tar.xz -C /tmp/wc9
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_CACHE_DIR=/tmp/wc9/cache DIFFATTN_GPU_TARGET=sm_90
stamp built
timeout 400 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 7 --seed 55 --out $r/bench > $r/bench.log 2>&1
stamp "bench rc=$?"; tail -8 $r/bench.log
tar czf /tmp/r.tgz -C $OUT r && rm -rf $r && mv /tmp/r.tgz $OUT/w10.tgz
