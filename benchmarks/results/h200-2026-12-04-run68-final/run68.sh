#!/usr/bin/env bash
# Run 68: the final tree (review fixes). The whole GPU pytest suite; the
# inference op's host cost per decode step (v2's C++ kernel now shares
# launch_plan.cpp with the training kernels: no regression expected).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w5/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages
stamp built
timeout 300 python3 -m pytest python/tests -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "pytest rc=$?"; tail -1 $r/pytest-gpu.log; grep -E "^FAILED|Error" $r/pytest-gpu.log | head -8
timeout 200 python3 benchmarks/host_cost.py --out $r/host --no-child --repeats 9 > $r/host.log 2>&1
stamp "host_cost rc=$?"; grep -E "diffattn|sdpa|floor" $r/host.log | head -24
cd $OUT && tar czf r.tgz r && rm -rf r
