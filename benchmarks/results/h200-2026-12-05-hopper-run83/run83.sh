#!/usr/bin/env bash
# Run 83 (issue 12): the dynamic scheduler's end as kNoTile under
# overlap-tiles (41df83e, limited to that option in the commit after), which
# takes the spilled tile count off the consumers' tile-to-tile path. The
# cache in .device/w17 was prepared for 30d140b (source id in prep logs);
# prepare a new one from any other tree this runs (the lines below). To
# measure kNoTile in the default kernels too, make WgmmaTile.cpp's and
# WgmmaKernel.cpp's end-of-walk choice unconditional first.
# - correctness: the GPU pytest suite on sm_90a (the overlap tests:
#   overlap-tiles=true against false, bit for bit) and compute-sanitizer
#   memcheck/racecheck of the sanitize case;
# - gpu_ab.py, 9 shuffled rounds: "current" (41df83e's default), "base"
#   (12d48ff's compiler: the kernels of runs 73-80), "ov" / "baseov"
#   (overlap-tiles=true with each), FA3 alone and + epilogue; base against
#   current must be bit-identical (rel L2 0).
# Prepared (compiler machine):
#   gpu_prepare.py .device/w17/cache --target sm_90a, then --target sm_90
#   gpu_ab.py --prepare .device/w17/cache --compiler base=/tmp/fresh-ex/build/bin/diffattn-compile \
#     --compiler "baseov=/tmp/fresh-ex/build/bin/diffattn-compile:overlap-tiles=true@128" \
#     --variant ov=overlap-tiles=true@128
# (/tmp/fresh-ex: a build of 12d48ff). Carry [".device/w17", ".device/a23.sh", ".whl"].
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w17/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages
stamp built
timeout 240 python3 -m pytest python/tests -q -m gpu -p no:cacheprovider > $r/pytest-gpu.log 2>&1
stamp "GPU pytest (overlap tests included) rc=$?"; tail -1 $r/pytest-gpu.log; grep -E "^FAILED" $r/pytest-gpu.log | head -8
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/gpu_check.py --sanitize-case > $r/san-$tool.log 2>&1
  stamp "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $r/san-$tool.log | tail -1)"
done
export PYTHONPATH=$PYTHONPATH:/tmp/site
timeout 300 python3 benchmarks/gpu_ab.py --repeats 9 --seed 83 --out $r/ab > $r/ab.log 2>&1
stamp "ab rc=$?"; grep -v "^\s*$" $r/ab.log | tail -6
cd $OUT && tar czf r.tgz r && rm -rf r
