#!/usr/bin/env bash
# Backward run 77 (issue 15): the portable dk/dv kernel with named barriers
# in place of the CTA barrier after the chain rule (warp pairs for dk / dv,
# row halves for dq: phases 3 and 4 take the tiles whose dS their own
# barrier group wrote), so that warps do not all run their exponentials
# at once. Gradients (sm_90, both formulations), then gpu_ab.py
# --backward against 1410770's kernels (base).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && for t in cache ab90; do tar xJf .device/w11/$t.tar.xz -C /tmp/wc; done
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_GPU_TARGET=sm_90
stamp built
DIFFATTN_CACHE_DIR=/tmp/wc/cache timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 77 --out $r/g90 > $r/grad90.log 2>&1
stamp "gradients sm_90 rc=$?"; grep -v "^  ok" $r/grad90.log | tail -6
DIFFATTN_CACHE_DIR=/tmp/wc/ab90 timeout 240 python3 benchmarks/gpu_ab.py --backward --repeats 9 --seed 77 --out $r/ab90 > $r/ab90.log 2>&1
stamp "ab sm_90 rc=$?"; grep -v "^\s*$" $r/ab90.log | tail -8
cd $OUT && tar czf r.tgz r && rm -rf r
