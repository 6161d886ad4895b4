#!/usr/bin/env bash
# Run 69: the review's refactoring of the C++ launch plans (findOrResolve,
# LaunchData, the resolver check in callResolver) and of the Python forward
# preparation (forward_prepare): the whole GPU pytest suite on sm_90a.
set -uo pipefail
r=$OUT/r; mkdir -p $r
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w6/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages
python3 -W error::UserWarning -c "from diffattn import _torch, _torch_native as n; print('native', n.active, n.autograd_in_cpp(), n.training_in_cpp())"
stamp built
timeout 300 python3 -m pytest python/tests -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "pytest rc=$?"; tail -1 $r/pytest-gpu.log; grep -E "^FAILED|Error" $r/pytest-gpu.log | head -8
cd $OUT && tar czf r.tgz r && rm -rf r
