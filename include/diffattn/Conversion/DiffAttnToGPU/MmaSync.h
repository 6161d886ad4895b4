//===- MmaSync.h - the portable tensor-core GPU strategy --------*- C++ -*-===//
//
// The reusable core of the DiffAttnToMmaSyncKernels pass: one outlined
// diffattn kernel to a gpu.module with mma.sync kernels (sm_80 and later),
// built from the shared GPU parts of this directory.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_MMASYNC_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_MMASYNC_H

#include "diffattn/Conversion/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::diffattn {

/// Replaces `kernel` (made by diffattn-outline-kernels, holding one
/// diffattn op) with a gpu.module implementing it with mma.sync, and
/// records the launch rule in the kernel's manifest entry. `options` are
/// the GPU strategy options (Passes.td, DiffAttnGPUStrategyOptions). Emits
/// a diagnostic and fails for configurations the strategy or the chip does
/// not support.
LogicalResult emitMmaSyncKernel(RewriterBase &rewriter, func::FuncOp kernel,
                                const DiffAttnToMmaSyncKernelsOptions &options);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_MMASYNC_H
