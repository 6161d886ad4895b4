#!/usr/bin/env bash
# Run 82 (issue 12): why overlap-tiles=true measured 0.984-0.991x the
# default in run 80: ncu profile of 4 x 4096 D128 causal, the default, the
# overlap-tiles variant and FA3 (gpu_profile_hopper.sh: details pages and
# per-instruction stall samples split into per-tile and per-key-block lines).
# Cache: .device/w15 (4e1a780); carry [".device/w15", ".device/a22.sh", ".whl"].
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/wc && mkdir -p /tmp/wc && tar xJf .device/w15/cache.tar.xz -C /tmp/wc
export DIFFATTN_CACHE_DIR=/tmp/wc/cache PYTHONPATH=/tmp/site
VARIANT_OPTIONS="--gpu-options=overlap-tiles=true" timeout 540 bash benchmarks/gpu_profile_hopper.sh $r 0 > $r/profile.log 2>&1
stamp "profile rc=$?"
grep -E "Duration|Executed Ipc|per-tile|per-key|total" $r/profile.log | head -40
rm -f $r/*.ncu-rep
for f in $r/*-sass-stalls.csv; do gzip -f "$f"; done
cd $OUT && tar czf r.tgz r && rm -rf r
