//===- Passes.td - diffattn conversion passes --------------*- tablegen -*-===//
//
// Conversions from the diffattn dialect to GPU kernels, one pass per
// strategy.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_PASSES_TD
#define DIFFATTN_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def DiffAttnToMmaSyncKernels
    : Pass<"diffattn-to-mma-sync-kernels", "ModuleOp"> {
  let summary = "Emit portable tensor-core (mma.sync) GPU kernels for "
                "outlined diffattn kernels";
  let description = [{
    The portable GPU strategy (sm_80 and later). Replaces every kernel
    function made by `diffattn-outline-kernels` with a `gpu.module` holding
    one `gpu.func` kernel that maps the FlashAttention tiled form onto the
    GPU:

    - the query-block and pair loops become the grid (x: blocks of 64 rows
      of a KV group, a row being a (pair of the group, query row) couple;
      y: KV heads; z: batch); one CTA of 4 warps handles 64 rows with both
      heads of each row's pair, each warp 16 rows, so the differential
      epilogue needs no data from another thread's registers, and in decode
      (few query rows) one CTA holds every pair of the group, reading each
      K/V byte once for all its query heads;
    - the key-block loop stays a loop (`scf.for`) whose bounds skip fully
      masked blocks; K and V tiles go global -> shared through `cp.async`
      (`nvgpu.device_async_copy`, zero-filling keys past the sequence) in a
      two-stage pipeline; every K and V fragment feeds both heads;
    - Q·Kᵀ and P·V are `nvvm.mma.sync` m16n8k16 with f32 accumulation,
      fed by `nvgpu.ldmatrix` (V transposed); P stays in registers, converted
      from the accumulator layout of Q·Kᵀ to the operand layout of P·V;
    - the online softmax runs in registers (row max and sum reduced across
      the four lanes of a row with `gpu.shuffle`, `exp2` with the scale
      folded in); only blocks that straddle the mask are masked;
    - the epilogue divides by the row sums, applies sigmoid(lam) and writes
      the pair's single output head.

    Ops in the decode form (with `kv_len`) get split-KV kernels: each CTA
    covers one split of `split-keys` keys and writes the partial softmax
    state of its rows (accumulators, max, sum) to a workspace; a second
    kernel (`<name>_combine`, one CTA of Dv threads per row) merges the
    splits and applies the epilogue.

    The kernel's manifest entry (`diffattn.kernel`) gains the launch rule:
    grid, block size, dynamic shared memory and the kernel parameter list.
    Configurations the strategy does not support (V1, f32, head dimensions
    other than 64 and 128, Dv != D) are diagnosed.
  }];
  let options = [
    Option<"blockK", "block-k", "int64_t", /*default=*/"0",
           "Keys per block (0: the default: 64 for D = 64, 32 for D = 128)">,
    Option<"splitKeys", "split-keys", "int64_t", /*default=*/"512",
           "Keys per split of the decode form's split-KV kernels (a "
           "multiple of block-k)">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::gpu::GPUDialect",
    "::mlir::LLVM::LLVMDialect", "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect", "::mlir::NVVM::NVVMDialect",
    "::mlir::nvgpu::NVGPUDialect", "::mlir::scf::SCFDialect",
    "::mlir::vector::VectorDialect"
  ];
}

#endif // DIFFATTN_CONVERSION_PASSES_TD
