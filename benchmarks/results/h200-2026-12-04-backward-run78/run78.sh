#!/usr/bin/env bash
# Backward run 78 (issue 15): the final tree's portable kernels (9a1522d:
# the FFMA chain rule, group barriers at D = 128): forward + backward
# beside SDPA's paths in shuffled rounds, and the kernel split.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w12/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_GPU_TARGET=sm_90 DIFFATTN_CACHE_DIR=/tmp/wc/cache
stamp built
timeout 230 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 9 --seed 78 --out $r/bench90 > $r/bench90.log 2>&1
stamp "bench sm_90 rc=$?"; grep "^|" $r/bench90.log | tail -5
timeout 120 python3 benchmarks/gpu_kernel_split.py --iters 5 --seed 78 --out $r/split > $r/split.log 2>&1
stamp "split rc=$?"; grep "^|" $r/split.log
cd $OUT && tar czf r.tgz r && rm -rf r
