#!/usr/bin/env bash
# Hopper run 57: profile only. 4 x 4096 D128 causal, ours (d3c75cf's kernels)
# and FA3: the usual sections plus shared-memory tables, and every stall
# column of the key loop's wgmma, wait and barrier lines.
set -uo pipefail
export PYTHONUNBUFFERED=1
r=$OUT/r; mkdir -p $r
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
(cd .device && tar xJf cache.tar.xz) || exit 1
export DIFFATTN_CACHE_DIR=$PWD/.device/cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
build=/tmp/diffattn-build
cmake -G Ninja -S . -B $build -DDIFFATTN_ENABLE_COMPILER=OFF >$r/build.log 2>&1 && ninja -C $build >>$r/build.log 2>&1 || { tail -20 $r/build.log; exit 1; }
export PYTHONPATH=$build/python_packages:$PYTHONPATH
el built
timeout 300 bash benchmarks/gpu_profile_hopper.sh $r/p 0 > $r/profile.log 2>&1; echo "profile rc $?"
el profile
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu)
for who in ours fa3; do
  extra=(); [ $who = fa3 ] && extra=(--fa3)
  k='regex:^diffattn.*[^r]$'; [ $who = fa3 ] && k='regex:device_kernel|flash'
  timeout 120 "$ncu" -k "$k" --launch-skip 1 --launch-count 1 --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
    --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_gmma_cycles_active.avg,sm__cycles_elapsed.avg \
    python3 benchmarks/gpu_profile_case.py --prefill 0 --decode -1 "${extra[@]}" > $r/mem-$who.txt 2>&1; echo "mem $who rc $?"
done
el mem
python3 - "$r/p/prefill0-sass-stalls.csv" "$r/p/prefill0-fa3-sass-stalls.csv" > $r/loop-lines.txt <<'PY'
import csv, sys
from collections import Counter
for path in sys.argv[1:]:
    rows = list(csv.reader(open(path)))
    header, data = rows[1], rows[2:]
    col = {h: i for i, h in enumerate(header)}
    ex = col["Instructions Executed"]; sm = col["Warp Stall Sampling (All Samples)"]
    n = lambda r, c: int(float(r[c] or 0))
    counts = Counter(n(r, ex) for r in data if n(r, ex) > 0)
    loop = max(counts, key=lambda c: (counts[c] if c > 100000 else 0))
    print("==", path, "loop count", loop, "columns:", [h for h in header if "tall" in h or "ampl" in h])
    for i, r in enumerate(data):
        if n(r, ex) == loop and any(w in r[1] for w in ("HGMMA", "DEPBAR", "BAR.", "SYNCS", "WARPGROUP", "MUFU.EX2 R2")):
            nz = {h: r[col[h]] for h in header if ("stall" in h.lower() or "ampl" in h) and r[col[h]] not in ("", "0")}
            print(i, r[1].strip()[:70], nz)
PY
head -c 20000 $r/loop-lines.txt | head -80
rm -f $r/p/*.ncu-rep
gzip -9 $r/p/*.csv
tar czf $OUT/results.tgz -C $OUT r
