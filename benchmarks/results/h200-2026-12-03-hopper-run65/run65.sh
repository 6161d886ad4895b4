#!/usr/bin/env bash
# Hopper run 65: cluster-size=2 (2-CTA clusters, TMA multicast K/V) beside
# the default and the schedules it needs (static persistent, one CTA per
# tile): correctness on odd shapes against the default kernel, the
# occupancy of clusters, timing with FA3, then the sanitizers.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/c65/cache ] || { mkdir -p /tmp/c65 && tar xJf .device/cache.tar.xz -C /tmp/c65; }
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
echo "== timing with FA3"
export PYTHONPATH=$build/python_packages:/tmp/site
DIFFATTN_CACHE_DIR=/tmp/c65/cache timeout 150 python3 benchmarks/gpu_ab.py --repeats 7 --seed 65 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
cd $OUT && tar czf results.tgz r
