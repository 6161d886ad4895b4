#!/usr/bin/env bash
# Hopper run 73 (issue 12): where the remaining forward time is, on the
# current default (2-CTA clusters, dynamic scheduler), beside FA3 alone and
# FA3 + epilogue in the same shuffled rounds:
# - the tail: 4 x 4096 unmasked has 2048 cluster tiles for 66 clusters
#   (31.03 rounds; FA3: 4096 tiles for 132 CTAs, the same), 4 x 4224 has
#   2112 (32.00; FA3 4224 / 132 = 32.00): no last partial round for either;
# - per-tile against per-block cost: unmasked, B x S = 16384, n = S / 128
#   key blocks per tile (run 47's sweep, before the clusters).
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w7/cache.tar.xz -C /tmp/wc
build=$PWD/build-dev
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -30 $r/build.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt; cat $r/gpu.txt
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=$build/python_packages:/tmp/site
stamp built
timeout 480 python3 benchmarks/gpu_ab.py --repeats 9 --seed 73 --clocks 2 --out $r/ab > $r/ab.log 2>&1
stamp "ab rc=$?"; grep -v "^\s*$" $r/ab.log | tail -40
cd $OUT && tar czf r.tgz r && rm -rf r
