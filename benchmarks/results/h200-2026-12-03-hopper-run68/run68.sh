#!/usr/bin/env bash
# Hopper run 68: where the new default (2-CTA clusters) stands against
# FA3 at 4 x 4096 D = 128 causal: ncu (tensor-pipe utilisation, stalls,
# per-tile vs per-block stall samples) of the default, cluster-size=1 and
# FA3's kernel; then gpu_ab.py's rounds again, 9 of them.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/c68 && tar xJf .device/cache.tar.xz -C /tmp/c68
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=$build/python_packages:/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/c68/cache
echo "== profile"
VARIANT_OPTIONS="--gpu-options=cluster-size=1" timeout 330 bash benchmarks/gpu_profile_hopper.sh $r/p 0 2>&1 | tee $r/profile.log
echo "rc=$?"
rm -f $r/p/*.ncu-rep
echo "== A/B with FA3"
timeout 200 python3 benchmarks/gpu_ab.py --repeats 9 --seed 68 --out $r/ab 2>&1 | tee $r/ab.log | grep -v "^\s*$"
echo "rc=$?"
cd $OUT && tar czf results.tgz r
