#!/usr/bin/env bash
# Backward run 56 (issue 15, diagnosis): the portable forward's spread
# between rounds at D = 128 causal. gpu_ab.py on the sm_90 forward in 11
# shuffled rounds with NVML's clock and power per entry (--clocks), beside
# two tile choices (w8: 8 warps x 64 keys, the unmasked default; k64: 4
# warps x 64 keys).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
rm -rf /tmp/wc11 && mkdir -p /tmp/wc11 && tar xJf .device/w11/cache.tar.xz -C /tmp/wc11
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site DIFFATTN_CACHE_DIR=/tmp/wc11/cache DIFFATTN_GPU_TARGET=sm_90
timeout 400 python3 benchmarks/gpu_ab.py --repeats 11 --seed 56 --clocks 2 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$" | tail -30
echo "ab rc=$?"
tar czf /tmp/r.tgz -C $OUT r && rm -rf $r && mv /tmp/r.tgz $OUT/w11.tgz
