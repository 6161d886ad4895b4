#!/usr/bin/env bash
# Nsight Compute profile of the two kernels that compute the S-sized
# products of a training step (issue 15), the op's and SDPA's
# FlashAttention-2 path's side by side at one gpu_cases.BACKWARD_BENCH
# shape: the forward (the op's diffattn_v2_<config>, FA2's flash_fwd_kernel)
# and the backward's products (the op's _dkdv, FA2's
# flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel), the second step's of each
# (the first warms up). Sections: speed of light, compute workload (IPC),
# warp states, launch statistics; metrics: both tensor pipes (gmma for
# wgmma, hmma for mma.sync), shared-memory wavefronts against their peak,
# ldmatrix count. ncu locks the clocks, so the cycles compare.
# Kernels come from DIFFATTN_CACHE_DIR (benchmarks/gpu_prepare.py); the
# package must be importable (PYTHONPATH); DIFFATTN_GPU_TARGET=sm_90 for
# the portable kernels on a Hopper GPU.
#
#   bash benchmarks/gpu_profile_products.sh OUT_DIR [CASE]
set -uo pipefail
cd "$(dirname "$0")/.."
out="$1"
case_index="${2:-1}"
mkdir -p "$out"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
metrics=sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
metrics+=,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed
metrics+=,smsp__inst_executed_op_ldsm.sum,smsp__inst_executed.sum,sm__cycles_elapsed.max
for path in op fa2; do
  case $path in
    op) regex='regex:(_dkdv$|^diffattn_v2_(bf16|f16)_)' ;;
    fa2) regex='regex:(flash_fwd_kernel|flash_bwd_dq_dk_dv)' ;;
  esac
  rep="$out/products-$path-case$case_index"
  "$ncu" -k "$regex" --launch-skip 2 --launch-count 2 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section LaunchStats --metrics "$metrics" --import-source no -f -o "$rep" \
    python3 benchmarks/gpu_kernel_split.py --plain --iters 2 --case "$case_index" \
    --paths "$path" >"$rep.log" 2>&1
  echo "rc=$?" >>"$rep.log"
  "$ncu" -i "$rep.ncu-rep" --page details >"$rep-details.txt" 2>&1
  grep -E "^  [a-z_]|Duration|Registers Per|Executed Ipc Active|Issue Slots Busy|Stall|pipe_tensor|mem_shared|op_ldsm|inst_executed.sum|cycles_elapsed" \
    "$rep-details.txt"
done
