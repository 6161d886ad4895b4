#!/usr/bin/env bash
# Backward run 51 (issue 15): the accumulating dk/dv kernel storing dS and
# P_c with stmatrix x4 and dq's staging with 8-byte stores throughout (acc),
# against run 50's kernel (r50 = 74b01e2's compiler) and the deterministic
# kernels (current): gradients, sanitizers, gpu_ab --backward, forward +
# backward beside SDPA, the dk/dv profile. Results tarred (file count).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
mkdir -p /tmp/wc && tar xJf .device/w7/cache.tar.xz -C /tmp/wc
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages
export DIFFATTN_CACHE_DIR=/tmp/wc/cache
export DIFFATTN_GPU_TARGET=sm_90
timeout 200 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 51 --out $r/chk > $r/chk.log 2>&1
echo "check rc=$?"
grep -E "FAIL|Error|error|gradients:" $r/chk.log | head -20
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_backward_check.py --sanitize-case > $r/san-$tool.log 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
timeout 200 python3 benchmarks/gpu_ab.py --backward --repeats 5 --seed 51 --out $r/ab 2>&1 | tee $r/ab.log | tail -8
echo "ab rc=$?"
timeout 150 python3 benchmarks/gpu_backward_check.py --bench-only --out $r/bench > $r/bench.log 2>&1
echo "bench rc=$?"
tail -8 $r/bench.log
timeout 180 bash benchmarks/gpu_profile_backward.sh $r/p acc 0 --gpu-options=deterministic=false > $r/prof.log 2>&1
echo "profile rc=$?"
rm -f $r/p/*.ncu-rep
head -30 $r/p/acc-dkdv-sass-summary.txt
grep -E "Duration|hmma|mem_shared|op_ldsm" $r/p/acc-details.txt | head -20
tar czf /tmp/r51.tgz -C $OUT r && rm -rf $r && mv /tmp/r51.tgz $OUT/
