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

#include <string>

namespace mlir::diffattn {

/// Options of the portable mma.sync strategy.
struct MmaSyncStrategyOptions {
  /// Keys per block; 0 picks the default for the head dimension.
  int64_t blockK = 0;
  /// Keys per split of the split-KV kernels of the decode form (kv_len);
  /// 0: chosen at each launch by the runtime, aiming at splitTargetCtas
  /// CTAs.
  int64_t splitKeys = 0;
  /// CTAs a split-KV launch aims for when the runtime picks the split:
  /// about one wave (2 per SM of a 132-SM H100/H200).
  int64_t splitTargetCtas = 264;
  /// K/V blocks per pipeline (in flight: stages - 1); 0 picks the default.
  int64_t stages = 0;
  /// Warps per CTA (4 or 8); 0 picks the default (8 for D = 128 without a
  /// causal-like mask, else 4).
  int64_t warps = 0;
  /// Lazy softmax rescaling: keep the running max (and skip rescaling the
  /// accumulators) until a probability would exceed 2^threshold; 0 rescales
  /// with every block.
  double rescaleThreshold = 8;
  /// Split-KV kernels: copy whole K/V tiles with cp.async's L2::128B
  /// prefetch qualifier (inline PTX).
  bool l2Prefetch = false;
  /// Layout of the Q/K/V tiles in shared memory: "padded" (each row padded
  /// by 16 bytes), "swizzled" (unpadded, 16-byte chunks XOR-swizzled by the
  /// row) or "auto" (swizzled for split-KV, padded for row blocks).
  std::string smemLayout = "auto";
  /// Split-KV: the combine kernel may be launched while the split kernel
  /// still runs (programmatic dependent launch, sm_90 and later): the split
  /// kernel lets it start once every CTA has left its key loop, and the
  /// combine kernel waits for the split kernel's results itself.
  bool programmaticLaunch = false;
};

/// Replaces `kernel` (made by diffattn-outline-kernels, holding one
/// diffattn op) with a gpu.module implementing it with mma.sync. Emits a
/// diagnostic and fails for configurations the strategy does not support.
LogicalResult emitMmaSyncKernel(RewriterBase &rewriter, func::FuncOp kernel,
                                const MmaSyncStrategyOptions &options);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_H
