#!/usr/bin/env bash
# Hopper run 80, part 2 (issue 12): overlap-tiles=true beside the default
# ("current", overlap-tiles=false) and FA3 alone and + epilogue, gpu_ab.py's
# shuffled rounds on BENCH_PREFILL (the outputs compared too):
# - D = 128: "ov" (128-key blocks, auto's choice where it turns on);
# - D = 64, where auto leaves it off at the default 192-key blocks (ptxas
#   serialises the wgmma there): "ov64" at 176 keys, "ov64k128" at 128, and
#   "bk176" (176 keys without it) to separate the block size's effect.
# Prepared with a19.sh's cache (its gpu_ab.py --prepare line); carry
# [".device/w15", ".device/a20.sh", ".whl"].
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w15/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages:/tmp/site
stamp built
timeout 420 python3 benchmarks/gpu_ab.py --repeats 9 --seed 80 --out $r/ab > $r/ab.log 2>&1
stamp "ab rc=$?"; grep -v "^\s*$" $r/ab.log | tail -22
cd $OUT && tar czf r.tgz r && rm -rf r
