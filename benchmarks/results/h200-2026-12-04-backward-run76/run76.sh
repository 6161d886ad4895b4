#!/usr/bin/env bash
# Backward run 76 (issue 15): the chain rule's odd-head dS and P_c as one
# FFMA each on negated records (64 instructions fewer per block and thread
# in the portable dk/dv kernel). Gradients on both targets (both
# formulations), gpu_ab.py --backward against 3f8b93a's accumulating
# kernels (headacc) on sm_90 and sm_90a, the portable forward + backward
# beside SDPA's paths, and the kernel split again.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && for t in cache ab90 ab90a; do tar xJf .device/w10/$t.tar.xz -C /tmp/wc; done
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
stamp built
DIFFATTN_CACHE_DIR=/tmp/wc/cache timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 76 --out $r/g90a > $r/grad90a.log 2>&1
stamp "gradients sm_90a rc=$?"; tail -3 $r/grad90a.log
DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 76 --out $r/g90 > $r/grad90.log 2>&1
stamp "gradients sm_90 rc=$?"; tail -3 $r/grad90.log
DIFFATTN_CACHE_DIR=/tmp/wc/ab90 timeout 200 python3 benchmarks/gpu_ab.py --backward --repeats 7 --seed 76 --out $r/ab90 > $r/ab90.log 2>&1
stamp "ab sm_90 rc=$?"; grep -v "^\s*$" $r/ab90.log | tail -12
DIFFATTN_CACHE_DIR=/tmp/wc/ab90a timeout 150 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 76 --out $r/ab90a > $r/ab90a.log 2>&1
stamp "ab sm_90a rc=$?"; grep -v "^\s*$" $r/ab90a.log | tail -12
export DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90
timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 7 --seed 76 --out $r/bench90 > $r/bench90.log 2>&1
stamp "bench sm_90 rc=$?"; grep "^|" $r/bench90.log | tail -5
timeout 120 python3 benchmarks/gpu_kernel_split.py --iters 5 --seed 76 --out $r/split > $r/split.log 2>&1
stamp "split rc=$?"; grep "^|" $r/split.log
cd $OUT && tar czf r.tgz r && rm -rf r
