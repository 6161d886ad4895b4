#!/usr/bin/env bash
# Hopper run 69: existing tile options on top of the cluster default at
# D = 128 (three stages with one Q buffer, turns at the loop's edges,
# 232 / 40 registers, the exchange epilogue), in gpu_ab.py's rounds with FA3.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/c69 && tar xJf .device/cache69.tar.xz -C /tmp/c69
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/c69/cache
timeout 300 python3 benchmarks/gpu_ab.py --repeats 7 --seed 69 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
cd $OUT && tar czf results.tgz r
