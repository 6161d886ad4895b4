#!/usr/bin/env bash
# Hopper run 71: the refactored timing scripts (56eaac3: gpu_v2_layer.py
# and gpu_ab.py through gpu_check.time_in_rounds) on the GPU for the first
# time, on the current default kernels: the public V2 layer with the op
# beside FA3 + epilogue and cuDNN + epilogue, then gpu_ab.py's rounds of
# the default beside cluster-size=1 (the previous default), FA3 alone and
# FA3 + epilogue.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/c71 && tar xJf .device/cache.tar.xz -C /tmp/c71
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/c71/cache
echo "== V2 layer"
timeout 150 python3 benchmarks/gpu_v2_layer.py --out $r/layer 2>&1 | tee $r/layer.log
echo "rc=$?"
echo "== A/B with FA3"
timeout 300 python3 benchmarks/gpu_ab.py --repeats 7 --seed 71 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
