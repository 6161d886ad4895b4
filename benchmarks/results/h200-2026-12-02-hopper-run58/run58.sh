#!/usr/bin/env bash
# Hopper run 58: consumer-registers 232 and 224 (producer 40 and 56: its
# spills, 106,788 local requests in run 57, gone at 224) against the default.

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
for seed in 1 2; do
  mkdir -p $r/s$seed
  timeout 220 python3 benchmarks/gpu_ab.py --repeats 11 --seed $seed --out $r/s$seed > $r/s$seed/ab.log 2>&1; echo "ab seed $seed rc $?"
  el ab$seed; grep -v "^  " $r/s$seed/ab.log | tail -6
done
tar czf $OUT/results.tgz -C $OUT r
