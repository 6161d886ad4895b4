//===- SequenceCheck.h - the packed-sequence offsets check kernel -*- C++
//-*-===//
//
// A kernel that checks packed sequences' offsets (cu_seqlens_q,
// cu_seqlens_k) before a strategy's main kernel runs, for strategies whose
// main kernel cannot raise the device-side assertion itself: on sm_90a, a
// call (`__assertfail`) anywhere in a kernel makes ptxas serialise every
// wgmma.mma_async of it (ptxas C7510, "wgmma pipeline crossing function
// boundary at a function call"), which cost packed sequences 22% of their
// FLOP rate (Hopper run 17).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_SEQUENCECHECK_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_SEQUENCECHECK_H

#include "mlir/Dialect/GPU/IR/GPUDialect.h"

namespace mlir::diffattn {

/// Threads per CTA of the check kernel; its grid is ceil(B / this) CTAs.
constexpr int64_t kSequenceCheckThreads = 128;

/// Creates, at `b`'s insertion point (in a gpu.module), the check kernel
/// `name`: arguments cu_seqlens_q, cu_seqlens_k (memref<?xi32>, [B + 1]),
/// then B, Sq, Sk (max_seqlen_q, max_seqlen_k), total_q, total_k (index);
/// thread b of the grid checks sequence b of both (GPUKernelBuilder::
/// sequenceRange) and raises the same device-side assertion as the
/// kernels that check for themselves.
gpu::GPUFuncOp buildSequenceCheckKernel(OpBuilder &b, Location loc,
                                        StringRef name);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_SEQUENCECHECK_H
