#!/usr/bin/env bash
set -uo pipefail
r=$OUT/r; mkdir -p $r
export PYTHONUNBUFFERED=1
[ -d /tmp/c62c/cachedbg ] || { mkdir -p /tmp/c62c && tar xJf .device/cache.tar.xz -C /tmp/c62c; }
build=/tmp/diffattn-build
(cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF && ninja -C $build) > $r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
export PYTHONPATH=$build/python_packages
DIFFATTN_CACHE_DIR=/tmp/c62c/cachedbg timeout 200 python3 .device/debug62.py 2>&1 | tee $r/debug.log
