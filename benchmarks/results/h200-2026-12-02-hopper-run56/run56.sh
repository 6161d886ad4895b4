#!/usr/bin/env bash
# Hopper run 56: keys-ahead (the producer loads K_{j+1} before V_j,
# FlashAttention-3's order) as the default, against keys-ahead=false (old)
# in shuffled rounds (two seeds); validation of the new default
# (gpu_check --skip-bench, memcheck, racecheck, GPU pytest); the V2 layer.
set -uo pipefail
export PYTHONUNBUFFERED=1
r=$OUT/r; mkdir -p $r
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
(cd .device && tar xJf cache.tar.xz) || exit 1
export DIFFATTN_CACHE_DIR=$PWD/.device/cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
build=/tmp/diffattn-build
cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF >$r/build.log 2>&1 && ninja -C $build >>$r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
export PYTHONPATH=$build/python_packages:$PYTHONPATH
el built
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,driver_version --format=csv > $r/gpu.txt
mkdir -p $r/s1
timeout 150 python3 benchmarks/gpu_ab.py --repeats 11 --seed 1 --out $r/s1 > $r/s1/ab.log 2>&1; echo "ab seed 1 rc $?"
el ab1; grep -v "^  " $r/s1/ab.log | tail -6
timeout 120 python3 benchmarks/gpu_check.py --skip-bench --out $r/check > $r/gpu_check.log 2>&1; echo "check rc $?"
grep -v "^  ok  " $r/gpu_check.log | tail -8
el check
for tool in memcheck racecheck; do
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_check.py --sanitize-case > $r/san-$tool.log 2>&1
  echo "$tool rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
el sanitizers
timeout 120 python3 -m pytest python/tests -q -m gpu -p no:cacheprovider > $r/pytest.log 2>&1; echo "pytest rc $?"; tail -2 $r/pytest.log
el pytest
timeout 120 python3 benchmarks/gpu_v2_layer.py --repeats 7 --out $r > $r/layer.log 2>&1; echo "layer rc $?"; tail -4 $r/layer.log
el layer
mkdir -p $r/s2
timeout 110 python3 benchmarks/gpu_ab.py --repeats 9 --seed 2 --out $r/s2 > $r/s2/ab.log 2>&1; echo "ab seed 2 rc $?"
el ab2; grep -v "^  " $r/s2/ab.log | tail -6
tar czf $OUT/results.tgz -C $OUT r
