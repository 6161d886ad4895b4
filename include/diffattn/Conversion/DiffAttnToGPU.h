//===- DiffAttnToGPU.h - GPU kernel strategies ------------------*- C++ -*-===//
//
// The GPU strategies' reusable cores: each turns one outlined diffattn
// kernel function into a gpu.module with one kernel and records its launch
// rule in the kernel's manifest entry.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::diffattn {

/// Options of the portable mma.sync strategy.
struct MmaSyncStrategyOptions {
  /// Keys per block; 0 picks the default for the head dimension.
  int64_t blockK = 0;
  /// Keys per split of the split-KV kernels of the decode form (kv_len).
  int64_t splitKeys = 512;
};

/// Replaces `kernel` (made by diffattn-outline-kernels, holding one
/// diffattn op) with a gpu.module implementing it with mma.sync. Emits a
/// diagnostic and fails for configurations the strategy does not support.
LogicalResult emitMmaSyncKernel(RewriterBase &rewriter, func::FuncOp kernel,
                                const MmaSyncStrategyOptions &options);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_H
