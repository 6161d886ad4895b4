#!/usr/bin/env bash
# Hopper run 66: cluster-size's automatic value (2 for persistent CTAs with
# TMA loads, batched sequences and an even number of pairs per KV group).
# The whole GPU session on it: GPU pytest, gpu_check.py's correctness set
# (odd lengths, Sq != Sk, windows, G = 2..8, f16/bf16, the lse forward) on
# sm_90a and sm_90, compute-sanitizer memcheck/racecheck, then gpu_check's
# timing beside cuDNN, FA2 and FA3 (+ epilogue) and decode.
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/c66 && tar xJf .device/cache.tar.xz -C /tmp/c66
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > $r/gpu.txt
cat $r/gpu.txt
export PYTHONPATH=/tmp/site
export DIFFATTN_CACHE_DIR=/tmp/c66/cache
timeout 540 bash benchmarks/gpu_session.sh $r/s
echo "session rc=$?"
cd $OUT && tar czf results.tgz r
