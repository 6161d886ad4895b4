#!/usr/bin/env bash
# Run 67 (issue 15): the final tree. GPU pytest (backward + serving, the
# resolvers' shared helper); forward + backward beside SDPA in shuffled
# rounds through autograd (now the C++ training kernels) on sm_90a (the
# 1.0x cuDNN target, last measured in run 42) and on sm_90 (the portable
# 1.2x FA2 target).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w5/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages
stamp built
timeout 200 python3 -m pytest python/tests/test_gpu_backward.py python/tests/test_gpu_serving.py -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "pytest rc=$?"; tail -1 $r/pytest-gpu.log; grep -E "^FAILED|Error" $r/pytest-gpu.log | head -8
timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 7 --seed 67 --out $r/bench90a > $r/bench90a.log 2>&1
stamp "bench sm_90a rc=$?"; grep "^|" $r/bench90a.log | tail -5
export DIFFATTN_GPU_TARGET=sm_90
timeout 230 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 9 --seed 67 --out $r/bench90 > $r/bench90.log 2>&1
stamp "bench sm_90 rc=$?"; grep "^|" $r/bench90.log | tail -5
cd $OUT && tar czf r.tgz r && rm -rf r
