#!/usr/bin/env bash
# Backward run 60 (issue 15): the portable forward's existing options on the
# power-capped causal D = 128 kernel: exp2-emulation 1 and 2 (FMA-pipe exp2),
# stages=3, rescale-threshold=16, against the defaults (current),
# gpu_ab.py forward rounds with NVML clocks.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
rm -rf /tmp/wc15 && mkdir -p /tmp/wc15 && tar xJf .device/w15/cache.tar.xz -C /tmp/wc15
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site DIFFATTN_CACHE_DIR=/tmp/wc15/cache DIFFATTN_GPU_TARGET=sm_90
stamp built
timeout 300 python3 benchmarks/gpu_ab.py --repeats 9 --seed 60 --clocks 2 --out $r/ab 2>&1 | tee $r/ab.log | grep -v '^\s*$' | tail -24
stamp "ab rc=$?"
tar czf /tmp/r.tgz -C $OUT r && rm -rf $r && mv /tmp/r.tgz $OUT/w15.tgz
