#!/usr/bin/env bash
# Run 64 (issue 15) on this tree: forward correctness on sm_90 (the D = 64
# epilogue), gradients on sm_90a, gpu_ab (forward) against 85103bd (head),
# gpu_ab --backward against f3c0d00's accumulating kernels (f3c: the
# statistics kernel over the row kernels' grid), the training step's
# breakdown, forward + backward beside SDPA in shuffled rounds (portable
# kernels, sm_90), the backward kernels' durations (ncu).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w4/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export PYTHONPATH=$build/python_packages DIFFATTN_CACHE_DIR=/tmp/wc/cache
stamp built
timeout 130 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 64 --out $r/grad90a > $r/grad90a.log 2>&1
stamp "grad sm_90a rc=$?"; grep -E "FAIL|Error|error|gradients:" $r/grad90a.log | head -4
export DIFFATTN_GPU_TARGET=sm_90
timeout 100 python3 benchmarks/gpu_check.py --skip-bench --seed 64 --out $r/chk90 > $r/chk90.log 2>&1
stamp "check sm_90 rc=$?"; grep -E "FAIL|Error|error|passed|failed" $r/chk90.log | tail -3
timeout 100 python3 benchmarks/gpu_ab.py --repeats 7 --seed 64 --out $r/ab90 2>&1 | tee $r/ab90.log | tail -5
stamp "ab fwd sm_90"
timeout 130 python3 benchmarks/gpu_ab.py --backward --repeats 7 --seed 64 --out $r/abb90 2>&1 | tee $r/abb90.log | tail -5
stamp "ab bwd sm_90"
timeout 100 python3 benchmarks/gpu_train_breakdown.py --rounds 5 --seed 64 --out $r/brk90 > $r/brk90.log 2>&1
stamp "breakdown sm_90 rc=$?"; tail -6 $r/brk90.log
timeout 200 python3 benchmarks/gpu_backward_check.py --bench-only --rounds 7 --seed 64 --out $r/bench90 > $r/bench90.log 2>&1
stamp "bench sm_90 rc=$?"; tail -6 $r/bench90.log
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu)
timeout 90 $ncu -k 'regex:diffattn_v2_backward' --launch-skip 4 --launch-count 4 --section SpeedOfLight python3 benchmarks/gpu_profile_backward.py --case 0 --options=--gpu-options=deterministic=false > $r/prof.log 2>&1
stamp "profile rc=$?"; grep -E "diffattn_v2_backward|Duration|DRAM Throughput" $r/prof.log | head -16
cd $OUT && tar czf r.tgz r && rm -rf r
