#!/usr/bin/env bash
# Nsight Compute profile of the backward's kernels (issue 15) at one
# gpu_cases.BACKWARD_BENCH shape: the kernels of one backward (speed
# of light, pipes, warp states, memory), then the dk/dv kernel alone with
# its SASS stall samples summarised by benchmarks/ncu_sass_summary.py.
# Tensor pipes: gmma (wgmma, sm_90a) and hmma (mma.sync, the portable
# kernels: DIFFATTN_GPU_TARGET=sm_90); shared memory: the LSU's shared
# wavefronts against their peak and the ldmatrix instructions.
# Kernels come from DIFFATTN_CACHE_DIR (benchmarks/gpu_prepare.py); the
# package must be importable (PYTHONPATH). Extra arguments are compiler
# options for the backward (e.g. --gpu-options=deterministic=false).
# KERNELS is the number of kernels one backward launches (the first
# call's are skipped): by default 4 when the options hold
# deterministic=false (dq_zero, stats, dk/dv, dq_convert: the accumulating
# formulation with the training forward's out_odd, which
# gpu_profile_backward.py passes), else 3 (the deterministic stats, dq,
# dk/dv).
#
#   bash benchmarks/gpu_profile_backward.sh OUT_DIR NAME [CASE] [OPTION...]
set -uo pipefail
cd "$(dirname "$0")/.."
out="$1"
name="$2"
case_index="${3:-0}"
shift $(( $# >= 3 ? 3 : $# ))
opts=()
for o in "$@"; do opts+=("--options=$o"); done
mkdir -p "$out"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
rep="$out/$name"
case "$*" in
  *deterministic=false*) kernels="${KERNELS:-4}" ;;
  *) kernels="${KERNELS:-3}" ;;
esac
"$ncu" -k 'regex:diffattn_v2_backward' --launch-skip "$kernels" --launch-count "$kernels" \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
  --section WarpStateStats --section LaunchStats --section Occupancy \
  --section MemoryWorkloadAnalysis \
  --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed_op_ldsm.sum \
  --import-source no -f -o "$rep" \
  python3 benchmarks/gpu_profile_backward.py --case "$case_index" "${opts[@]}" >"$rep.log" 2>&1
"$ncu" -i "$rep.ncu-rep" --page details >"$rep-details.txt" 2>&1
"$ncu" -k 'regex:_dkdv' --launch-skip 1 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --import-source no -f -o "$rep-dkdv" \
  python3 benchmarks/gpu_profile_backward.py --case "$case_index" "${opts[@]}" >>"$rep.log" 2>&1
"$ncu" -i "$rep-dkdv.ncu-rep" --page source --csv --print-source sass >"$rep-dkdv-sass.csv" 2>&1
python3 benchmarks/ncu_sass_summary.py "$rep-dkdv-sass.csv" >"$rep-dkdv-sass-summary.txt" 2>&1
rm -f "$rep-dkdv-sass.csv"
grep -E "diffattn_v2_backward|Duration|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|mma_cycles|mem_shared|op_ldsm|Shared Memory" \
  "$rep-details.txt"
