#!/usr/bin/env bash
# Backward run 62 (issue 15), part 2: forward + backward beside SDPA in
# shuffled rounds (portable sm_90 and sm_90a), the training step's breakdown
# (gpu_train_breakdown.py), and the accumulating backward's kernel profile.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc /tmp/wca && mkdir -p /tmp/wc /tmp/wca && tar xJf .device/w1/cache.tar.xz -C /tmp/wc
[ -f .device/w2/cache.tar.xz ] && tar xJf .device/w2/cache.tar.xz -C /tmp/wca
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
stamp built
DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_train_breakdown.py --rounds 7 --seed 62 --out $r/brk90 > $r/brk90.log 2>&1
stamp "breakdown sm_90 rc=$?"; cat $r/brk90.log | tail -6
DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 7 --seed 62 --out $r/bench90 > $r/bench90.log 2>&1
stamp "bench sm_90 rc=$?"; tail -6 $r/bench90.log
DIFFATTN_CACHE_DIR=/tmp/wc/cache DIFFATTN_GPU_TARGET=sm_90 KERNELS=4 timeout 120 bash benchmarks/gpu_profile_backward.sh $r/p acc 0 --gpu-options=deterministic=false > $r/prof.log 2>&1
stamp "profile rc=$?"; rm -f $r/p/*.ncu-rep
grep -E "diffattn_v2_backward|Duration|DRAM Throughput|Memory Throughput" $r/p/acc-details.txt | head -24
cd $OUT && tar czf r.tgz r && rm -rf r
