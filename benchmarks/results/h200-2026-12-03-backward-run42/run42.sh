#!/usr/bin/env bash
# Backward run 42 (issue 15) on the cluster default: forward + backward
# through autograd beside SDPA cuDNN / FA2 + epilogue, with the sm_90a
# kernels (the training forward now in 2-CTA clusters) and with the
# portable ones; then the public V2 layer trained for 50 steps with the op
# and with SDPA from the same weights.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/c70 && tar xJf .device/cache.tar.xz -C /tmp/c70
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/c70/cache
echo "== sm_90a fwd+bwd"
timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --out $r/bwd90a 2>&1 | tee $r/bwd90a.log | grep -v "^  ok  "
echo "rc=$?"
echo "== sm_90 (portable) fwd+bwd"
DIFFATTN_GPU_TARGET=sm_90 timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --out $r/bwd90 2>&1 | tee $r/bwd90.log | grep -v "^  ok  "
echo "rc=$?"
echo "== training"
timeout 150 python3 benchmarks/train_v2_layer.py --device cuda --preset public --out $r/train 2>&1 | tail -12 | tee $r/train.log
echo "rc=$?"
cd $OUT && tar czf results.tgz r
