#!/usr/bin/env bash
# Backward run 75 (issue 15, the portable target at 16K): where a training
# step's time goes, kernel by kernel, in the op (portable kernels, sm_90)
# and in SDPA's FA2 path + epilogue; the rate of each path's product
# kernels per S-sized product; the backward kernels' clocks under the cap;
# ncu of both paths' product kernels at 16K and at 4 x 4096 unmasked.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w9/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages DIFFATTN_GPU_TARGET=sm_90
stamp built
timeout 200 python3 benchmarks/gpu_kernel_split.py --iters 5 --seed 75 --out $r/split > $r/split.log 2>&1
stamp "split rc=$?"; cat $r/split.log | tail -30
timeout 150 python3 benchmarks/gpu_ab.py --backward --repeats 3 --seed 75 --clocks 2 --out $r/ab > $r/ab.log 2>&1
stamp "ab rc=$?"; grep -v "^\s*$" $r/ab.log | tail -25
for c in 1 3; do
  timeout 150 bash benchmarks/gpu_profile_products.sh $r/ncu $c > $r/ncu-$c.log 2>&1
  stamp "ncu case $c rc=$?"; cat $r/ncu-$c.log | head -120
done
rm -f $r/ncu/*.ncu-rep
cd $OUT && tar czf r.tgz r && rm -rf r
