//===- Wgmma.h - the Hopper (sm_90a) GPU strategy ---------------*- C++ -*-===//
//
// The reusable core of the DiffAttnToWgmmaKernels pass: one outlined
// diffattn kernel to a gpu.module with warpgroup-MMA kernels (sm_90a),
// built from the shared GPU parts of this directory.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_WGMMA_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_WGMMA_H

#include "diffattn/Conversion/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::diffattn {

/// Replaces `kernel` (made by diffattn-outline-kernels, holding one
/// diffattn op) with a gpu.module implementing it with wgmma, or, for the
/// ops this strategy has no kernel for (the decode form, paged caches,
/// packed sequences), with the portable mma.sync strategy's kernels; the
/// manifest entry's launch rule names the strategy used. `options` are the
/// GPU strategy options (Passes.td, DiffAttnGPUStrategyOptions); their tile
/// options (block-k, stages, warps) apply to the wgmma kernels only. Emits
/// a diagnostic and fails for configurations neither strategy or the chip
/// supports.
LogicalResult emitWgmmaKernel(RewriterBase &rewriter, func::FuncOp kernel,
                              const DiffAttnToWgmmaKernelsOptions &options);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_WGMMA_H
