#!/usr/bin/env bash
# Run 66 (issue 15, the training path's host time), after run 65: lse's and
# out_odd's gradients no longer materialised; host_cost_train.py also times
# the two training ops alone with the runtime's launch phases. This tree and
# HEAD's (old.tar: 0160a7c).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w5/cache.tar.xz -C /tmp/wc
rm -rf /tmp/old && mkdir -p /tmp/old && tar xf .device/w5/old.tar -C /tmp/old
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
(cmake -G Ninja -S /tmp/old -B /tmp/old/build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C /tmp/old/build) > $r/build-old.log 2>&1 || { tail -30 $r/build-old.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache
stamp built
PYTHONPATH=$build/python_packages timeout 200 python3 -m pytest python/tests/test_gpu_backward.py python/tests/test_gpu_serving.py -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "pytest rc=$?"; tail -2 $r/pytest-gpu.log; grep -E "^FAILED|Error" $r/pytest-gpu.log | head -8
for label in new old; do
  pp=$build/python_packages; [ $label = old ] && pp=/tmp/old/build/python_packages
  PYTHONPATH=$pp timeout 200 python3 benchmarks/host_cost_train.py --label $label --out $r/host > $r/host-$label.log 2>&1
  stamp "host $label rc=$?"; grep "^|" $r/host-$label.log | grep -v "\-\-\-"
done
cd $OUT && tar czf r.tgz r && rm -rf r
