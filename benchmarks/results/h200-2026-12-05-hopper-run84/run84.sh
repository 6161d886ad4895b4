#!/usr/bin/env bash
# Run 84 (issue 12): the final tree (30d140b, source 2a12e61820f81782) in
# one run, and the end-of-walk marker kNoTile in the default kernels.
# - gpu_check.py --rounds 5: correctness of both strategies on the fixed and
#   fresh shapes, then every prefill path (ours sm_90a and sm_90, cuDNN /
#   FA2 / FA3 + epilogue) and decode in shuffled rounds;
# - gpu_v2_layer.py: the public V2 layer with the op, FA3 + epilogue and
#   cuDNN + epilogue;
# - gpu_ab.py --repeats 9 --clocks 2: "current" beside "knt" (the same tree
#   with WgmmaTile.cpp's endOfWalk returning kNoTile unconditionally: the
#   tile count no longer reloaded from local memory per tile) and FA3 alone
#   / + epilogue, with each entry's SM clock and board power.
# Prepared (compiler machine): .device/w17's cache (gpu_prepare.py --target
#   sm_90a, then sm_90) without its ab entries, plus
#   gpu_ab.py --prepare CACHE --compiler knt=/tmp/knt/diffattn-compile.
# Carry [".device/w18", ".device/a24.sh", ".whl"].
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w18/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages:/tmp/site
stamp built
timeout 200 python3 benchmarks/gpu_check.py --rounds 5 --seed 84 > $r/check.log 2>&1
stamp "check rc=$?"; grep -iE "fail|error|mismatch" $r/check.log | head -5; grep -v "^\s*$" $r/check.log | tail -22
timeout 120 python3 benchmarks/gpu_v2_layer.py --out $r/layer > $r/layer.log 2>&1
stamp "layer rc=$?"; tail -6 $r/layer.log
timeout 240 python3 benchmarks/gpu_ab.py --repeats 9 --seed 84 --clocks 2 --out $r/ab > $r/ab.log 2>&1
stamp "ab rc=$?"; grep -v "^\s*$" $r/ab.log | tail -14
cd $OUT && tar czf r.tgz r && rm -rf r
