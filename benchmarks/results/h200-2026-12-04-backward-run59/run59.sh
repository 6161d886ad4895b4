#!/usr/bin/env bash
# Hopper-machine run 59 (issue 15): the portable (sm_90) forward with Q of
# one head (q1) or both heads (q2) of the pair held in registers across the
# key loop instead of reloaded with ldmatrix each block, against the tree's
# kernels (current), gpu_ab.py forward rounds with NVML clocks.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
rm -rf /tmp/wc14 && mkdir -p /tmp/wc14 && tar xJf .device/w14/cache.tar.xz -C /tmp/wc14
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site DIFFATTN_CACHE_DIR=/tmp/wc14/cache DIFFATTN_GPU_TARGET=sm_90
stamp built
timeout 300 python3 benchmarks/gpu_ab.py --repeats 9 --seed 59 --clocks 2 --out $r/ab 2>&1 | tee $r/ab.log | grep -v '^\s*$' | tail -24
stamp "ab rc=$?"
tar czf /tmp/r.tgz -C $OUT r && rm -rf $r && mv /tmp/r.tgz $OUT/w14.tgz
