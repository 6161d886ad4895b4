#!/usr/bin/env bash
# Hopper run 72: persistent grids of 128 CTAs (p128: a compiler whose
# persistent CTA count is 128 instead of the 132 SMs) beside the default.
# At 4 x 4096 unmasked the 4096 equal tiles take 32 rounds either way
# (4096 / 132 = 31.03); 128 CTAs leave 4 SMs idle throughout instead of
# 128 idle in the last round, which under the 700 W cap may buy clock.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/c72 && tar xJf .device/cache.tar.xz -C /tmp/c72
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/c72/cache
timeout 400 python3 benchmarks/gpu_ab.py --repeats 9 --seed 72 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
