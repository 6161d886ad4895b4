#!/usr/bin/env bash
# Run 65 (issue 15, the training path's host time): the C++ CUDA kernels of
# the training forward and the backward (python/csrc/torch_train.cpp).
# Builds this tree and HEAD's (old.tar: 0160a7c, the Python CUDA kernels)
# without the compiler; GPU pytest on this tree; host_cost_train.py on both
# trees; the breakdown and the V2 layer's training run on this tree.
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
PYTHONPATH=$build/python_packages python3 -c "from diffattn import _torch, _torch_native as n; print('new:', n.active, n.reason, n.autograd_in_cpp(), n.training_in_cpp())"
PYTHONPATH=$build/python_packages timeout 300 python3 -m pytest python/tests -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "pytest rc=$?"; tail -4 $r/pytest-gpu.log; grep -E "^FAILED|Error" $r/pytest-gpu.log | head -8
for label in new old; do
  pp=$build/python_packages; [ $label = old ] && pp=/tmp/old/build/python_packages
  PYTHONPATH=$pp timeout 150 python3 benchmarks/host_cost_train.py --label $label --out $r/host > $r/host-$label.log 2>&1
  stamp "host $label rc=$?"; cat $r/host-$label.log | grep -v "^$" | tail -8
done
export PYTHONPATH=$build/python_packages
export DIFFATTN_GPU_TARGET=sm_90
timeout 100 python3 benchmarks/gpu_train_breakdown.py --rounds 5 --seed 65 --out $r/brk90 > $r/brk90.log 2>&1
stamp "breakdown sm_90 rc=$?"; tail -6 $r/brk90.log
unset DIFFATTN_GPU_TARGET
timeout 120 python3 benchmarks/train_v2_layer.py --device cuda --preset public --out $r/train > $r/train.log 2>&1
stamp "train rc=$?"; tail -6 $r/train.log
cd $OUT && tar czf r.tgz r && rm -rf r
