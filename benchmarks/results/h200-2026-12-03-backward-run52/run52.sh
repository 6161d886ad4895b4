#!/usr/bin/env bash
# Backward run 52 (issue 15): run 51's acc (stmatrix dS/P_c stores + 8-byte
# staging stores) split: aln (only the 8-byte staging stores), against r50
# (74b01e2) and the deterministic kernels; gpu_ab --backward with the SM
# clock and power of each entry (--clocks).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
mkdir -p /tmp/wc && tar xJf .device/w8/cache.tar.xz -C /tmp/wc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/wc/cache
export DIFFATTN_GPU_TARGET=sm_90
timeout 300 python3 benchmarks/gpu_ab.py --backward --repeats 7 --seed 52 --clocks 2 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$" | tail -30
echo "ab rc=$?"
tar czf /tmp/r52.tgz -C $OUT r && rm -rf $r && mv /tmp/r52.tgz $OUT/
