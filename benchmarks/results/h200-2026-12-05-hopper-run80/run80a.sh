#!/usr/bin/env bash
# Hopper run 80, part 1 (issue 12): overlap-tiles (cross-tile pipelining in
# the sm_90a forward, off by default until this run and a20.sh decide).
# Correctness, no timing:
# - python/tests/test_gpu_overlap_tiles.py: overlap-tiles=true against
#   false, bit for bit, on gpu_cases.OVERLAP_CASES (several tiles per
#   persistent CTA; 1, 2, 4, 8 pairs per KV group; windows; f16/bf16);
# - compute-sanitizer memcheck and racecheck of gpu_check.py's sanitize
#   case, which now also runs the overlap kernel (bit-exact against the
#   default);
# - the portable sm_90 backward's gradients (4ad5368, pending since the
#   sixth session of 2026-12-04).
# Prepare on the compiler machine, from the tree this runs (the cache is
# keyed by its source id):
#   PYTHONPATH=build/python_packages python3 benchmarks/gpu_prepare.py .device/w15/cache --target sm_90a sm_90
#   PYTHONPATH=build/python_packages python3 benchmarks/gpu_ab.py --prepare .device/w15/cache \
#     --variant ov=overlap-tiles=true@128 --variant "ov64=overlap-tiles=true block-k=176@64" \
#     --variant "ov64k128=overlap-tiles=true block-k=128@64" --variant bk176=block-k=176@64
#   (cd .device/w15 && tar cJf cache.tar.xz cache && rm -rf cache)
# and carry [".device/w15", ".device/a19.sh"]. .device/w15 holds that cache for
# 4e1a780 (source 2b50b74f281123fd): valid while include/, lib/, tools/ are unchanged.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w15/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages
stamp built
timeout 200 python3 -m pytest -q -p no:cacheprovider python/tests/test_gpu_overlap_tiles.py > $r/pytest.log 2>&1
stamp "overlap pytest rc=$?"; tail -3 $r/pytest.log
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_check.py --sanitize-case > $r/san-$tool.log 2>&1
  stamp "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"; tail -2 $r/san-$tool.log
done
DIFFATTN_GPU_TARGET=sm_90 timeout 150 python3 benchmarks/gpu_backward_check.py --skip-bench --seed 80 --out $r/g90 > $r/grad90.log 2>&1
stamp "gradients sm_90 rc=$?"; grep -v "^  ok" $r/grad90.log | tail -4
cd $OUT && tar czf r.tgz r && rm -rf r
