#!/usr/bin/env bash
# Nsight Compute profile of the sm_90a prefill kernel beside
# FlashAttention-3's on the same shape (issue #12 asks what the profile
# shows: tensor-pipe utilisation, stalls, registers). On the GPU machine,
# with kernels prepared by `python3 benchmarks/gpu_prepare.py .device/cache`
# and the fa3-fwd wheel installed on PYTHONPATH:
#
#   bash benchmarks/gpu_profile_hopper.sh OUT_DIR [PREFILL_INDEX ...]
#
# PREFILL_INDEX indexes gpu_cases.BENCH_PREFILL (default 0 1: 4x4096 d128
# causal and unmasked). Writes, per index: the ncu report, its details
# page for both kernels and their per-instruction stall samples (SASS),
# split between per-tile and per-key-block lines; with VARIANT_OPTIONS
# set (diffattn-compile options), the same for that variant of ours.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-out}}"
shift || true
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(0 1)
mkdir -p "$out"
export DIFFATTN_CACHE_DIR="${DIFFATTN_CACHE_DIR:-$PWD/.device/cache}"
build=/tmp/diffattn-build
if [ ! -d "$build/python_packages" ]; then
  cmake -G Ninja -S . -B "$build" -DDIFFATTN_ENABLE_COMPILER=OFF >"$out/build.log" 2>&1 &&
    ninja -C "$build" >>"$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
fi
export PYTHONPATH="$build/python_packages${PYTHONPATH:+:$PYTHONPATH}"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
for i in "${cases[@]}"; do
  rep="$out/prefill$i"
  # Sections: speed of light, compute (pipe utilisation), scheduler and
  # warp state (stall reasons), instruction statistics, source counters.
  # Our tile kernel (a persistent launch's first stage, the tile counter's
  # reset, ends in ...counter: names ending in r are skipped).
  "$ncu" -k 'regex:^diffattn.*[^r]$' --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats --section InstructionStats --section SourceCounters \
    --section LaunchStats --section Occupancy \
    --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_gmma.sum,smsp__inst_executed.sum,sm__cycles_elapsed.avg \
    --import-source no -f -o "$rep" \
    python3 benchmarks/gpu_profile_case.py --prefill "$i" --decode -1 >"$rep.log" 2>&1
  # A strategy variant of ours (VARIANT_OPTIONS, e.g.
  # "--gpu-options=persistent=true"), when asked for.
  if [ -n "${VARIANT_OPTIONS:-}" ]; then
    "$ncu" -k 'regex:^diffattn.*[^r]$' --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section SchedulerStats --section WarpStateStats \
      --section InstructionStats --section SourceCounters --section LaunchStats \
      --import-source no -f -o "$rep-variant" \
      python3 benchmarks/gpu_profile_case.py --prefill "$i" --decode -1 \
      --options="$VARIANT_OPTIONS" >"$rep-variant.log" 2>&1
  fi
  # FA3 separately (its launch 2 of 2; CUTLASS names it device_kernel).
  "$ncu" -k 'regex:device_kernel|flash' --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats --section InstructionStats --section SourceCounters \
    --section LaunchStats --section Occupancy \
    --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_gmma.sum,smsp__inst_executed.sum,sm__cycles_elapsed.avg \
    --import-source no -f -o "$rep-fa3" \
    python3 benchmarks/gpu_profile_case.py --prefill "$i" --decode -1 --fa3 >"$rep-fa3.log" 2>&1
  reps=("$rep" "$rep-fa3")
  [ -f "$rep-variant.ncu-rep" ] && reps+=("$rep-variant")
  for r in "${reps[@]}"; do
    "$ncu" -i "$r.ncu-rep" --page details >"$r-details.txt" 2>&1
    grep -E "^  [a-z_]|Duration|Tensor|gmma|Registers|Issue Slots|Stall|Warp Cycles|Executed Ipc|Theoretical Occ|Achieved Occ|No Eligible|inst_executed|cycles_elapsed" \
      "$r-details.txt" | head -60
  done
  # Per-instruction stall samples of both kernels, with the split between
  # per-tile and per-key-block lines (ncu_sass_summary.py).
  for r in "${reps[@]}"; do
    "$ncu" -i "$r.ncu-rep" --page source --csv --print-source sass >"$r-sass-stalls.csv" 2>&1
    python3 benchmarks/ncu_sass_summary.py "$r-sass-stalls.csv" >"$r-sass-summary.txt"
    head -12 "$r-sass-summary.txt"
    sed -n '/^per-tile lines/,$p' "$r-sass-summary.txt" | head -12
  done
done
ls "$out"
