#!/usr/bin/env bash
# Run 81 (issue 12; the bad-input changes of 362c71f-4e1a780 on the GPU):
# the whole GPU pytest suite on sm_90a (the torch front end's new argument
# and device checks run before every CUDA call), then gpu_check.py's
# correctness sweep (fixed and fresh shapes, both strategies) without timing.
# Cache: .device/w15 (4e1a780, source 2b50b74f281123fd); carry
# [".device/w15", ".device/a21.sh"].
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w15/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages
python3 -W error::UserWarning -c "from diffattn import _torch, _torch_native as n; print('native', n.active, n.autograd_in_cpp(), n.training_in_cpp())"
stamp built
timeout 330 python3 -m pytest python/tests -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "pytest rc=$?"; tail -1 $r/pytest-gpu.log; grep -E "^FAILED|Error" $r/pytest-gpu.log | head -8
timeout 200 python3 benchmarks/gpu_check.py --skip-bench --seed 81 --out $r/check > $r/check.log 2>&1
stamp "gpu_check rc=$?"; grep -E "FAIL|correctness" $r/check.log | tail -5
cd $OUT && tar czf r.tgz r && rm -rf r
