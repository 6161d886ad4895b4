#!/usr/bin/env bash
# Hopper run 70: gpu_check.py with its prefill table timed in shuffled
# rounds (--rounds 5): correctness, then every path of each SPEC.md shape
# (ours, cuDNN / FA2 / FA3 + epilogue, the sm_90 portable kernel, the
# variants) in the same rounds, then decode.
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
timeout 330 python3 benchmarks/gpu_check.py --rounds 5 --seed 71 --out $r/check 2>&1 | tee $r/gpu_check.log | grep -v "^  ok  "
echo "rc=$?"
cd $OUT && tar czf results.tgz r
