#!/usr/bin/env bash
# Hopper run 67: the V2 layer (gpu_v2_layer.py) with the op on the new
# default beside FA3 + epilogue and cuDNN + epilogue; then gpu_ab.py: the
# new default (clusters) beside cluster-size=1 (the previous default) and
# cluster variants, with FA3 in the same shuffled rounds; between them the
# gradients through the cluster forward (gpu_backward_check.py).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/c67 && tar xJf .device/cache.tar.xz -C /tmp/c67
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/c67/cache
echo "== V2 layer"
timeout 150 python3 benchmarks/gpu_v2_layer.py --out $r/layer 2>&1 | tee $r/layer.log
echo "rc=$?"
echo "== gradients (the training forward with lse on the new default)"
timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --out $r/bwd 2>&1 | tee $r/bwd.log | grep -v "^  ok  "
echo "rc=$?"
echo "== A/B with FA3"
timeout 330 python3 benchmarks/gpu_ab.py --repeats 5 --seed 67 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
cd $OUT && tar czf results.tgz r
