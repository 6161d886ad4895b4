#!/usr/bin/env bash
# Hopper run 64: cluster-size=2 (2-CTA clusters, TMA multicast K/V) beside
# the default and the schedules it needs (static persistent, one CTA per
# tile): correctness on odd shapes against the default kernel, the
# occupancy of clusters, timing with FA3, then the sanitizers.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/c64/cache ] || { mkdir -p /tmp/c64 && tar xJf .device/cache.tar.xz -C /tmp/c64; }
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
echo "== correctness: odd shapes, no FA3"
export PYTHONPATH=$build/python_packages
DIFFATTN_CACHE_DIR=/tmp/c64/cacheodd timeout 90 python3 benchmarks/gpu_ab.py --repeats 1 --seed 1 --out $r/odd 2>&1 | tee $r/odd.log | grep -v "^\s*$"
echo "rc=$?"
echo "== timing with FA3"
export PYTHONPATH=$build/python_packages:/tmp/site
DIFFATTN_CACHE_DIR=/tmp/c64/cache timeout 300 python3 benchmarks/gpu_ab.py --repeats 5 --seed 64 --clocks 1.5 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
echo "== sanitizers (diffattn kernels only)"
export PYTHONPATH=$build/python_packages
for tool in memcheck racecheck; do
  DIFFATTN_CACHE_DIR=/tmp/c64/cachesan timeout 100 compute-sanitizer --tool $tool --kernel-name kns=diffattn_v2_bf16 --print-limit 20 python3 benchmarks/gpu_ab.py --repeats 1 --out $r/san-$tool > $r/san-$tool.log 2>&1
  echo "$tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error|hazard" $r/san-$tool.log | head -5
done
cd $OUT && tar czf results.tgz r
