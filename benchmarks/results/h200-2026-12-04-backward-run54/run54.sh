#!/usr/bin/env bash
# Backward run 54 (issue 15): 7d60c60's kernels (the portable dk/dv and dq
# CTAs renumbered under causal masks; everything else as 74b01e2):
# forward + backward with the portable kernels beside SDPA, then the
# accumulating dk/dv kernel's profile at 4 x 4096 causal.
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
timeout 240 python3 benchmarks/gpu_backward_check.py --bench-only --out $r/bench > $r/bench.log 2>&1
stamp "bench rc=$?"; tail -8 $r/bench.log
timeout 200 bash benchmarks/gpu_profile_backward.sh $r/p acc 0 --gpu-options=deterministic=false > $r/prof.log 2>&1
stamp "profile rc=$?"
rm -f $r/p/*.ncu-rep
head -24 $r/p/acc-dkdv-sass-summary.txt
grep -E "Duration|hmma|mem_shared|op_ldsm" $r/p/acc-details.txt | head -12
tar czf /tmp/r.tgz -C $OUT r && rm -rf $r && mv /tmp/r.tgz $OUT/w9.tgz
