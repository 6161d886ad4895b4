#!/usr/bin/env bash
# Hopper run 74 (issue 12, item 3): FlashAttention-3's unmasked tile at
# D = 128 (128 x 176, 2 stages, 2-CTA clusters) on our kernel: block-k 176
# and 192 with one Q buffer (two no longer fit in shared memory), and
# block-k 128 with one Q buffer, beside the default on
# gpu_cases.BENCH_PREFILL, with FA3 alone and FA3 + epilogue in the same
# shuffled rounds.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w8/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages:/tmp/site
stamp built
timeout 480 python3 benchmarks/gpu_ab.py --repeats 9 --seed 74 --out $r/ab > $r/ab.log 2>&1
stamp "ab rc=$?"; grep -v "^\s*$" $r/ab.log | tail -40
cd $OUT && tar czf r.tgz r && rm -rf r
