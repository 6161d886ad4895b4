//===- TileConfig.h - the tile configuration of a GPU kernel ----*- C++ -*-===//
//
// What a GPU kernel of one diffattn.v2 op is specialised on beyond the op
// itself: CTA shape (warps, query rows), key blocks and pipeline stages,
// shared memory, and the split-KV (decode) choices. Strategies fill it with
// their measured defaults and the user's options, then check it against the
// chip's limits (Chips.h). The launch rule, the split-KV combine kernel and
// the epilogue read it.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_TILECONFIG_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_TILECONFIG_H

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"
#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"

#include "mlir/IR/Operation.h"
#include "mlir/IR/Types.h"

namespace mlir::diffattn {

/// The strategy-independent tile configuration of one kernel.
struct TileConfig {
  AttentionConfig attn;
  /// The chip the kernel is built for.
  const GPUChipInfo *chip = nullptr;
  /// Warps per CTA.
  int64_t warps = 0;
  int64_t threads() const { return 32 * warps; }
  /// Rows of a KV group per CTA (a row being a (pair, query row) or a
  /// (query head, query row) couple, as the strategy maps them).
  int64_t blockQ = 0;
  /// Tile rows of a KV group per query row (the group's pairs, or its
  /// query heads).
  int64_t rowsPerQuery = 0;
  /// Keys per block, and K/V blocks per pipeline.
  int64_t blockK = 0, stages = 0;
  int64_t queryHeads = 0, pairs = 0, kvHeads = 0, headDim = 0, valueDim = 0;
  int64_t pairsPerGroup() const { return pairs / kvHeads; }
  /// Dynamic shared memory per CTA (bytes).
  int64_t sharedBytes = 0;
  Type elementType, lamType;
  /// Lazy rescaling: the softmax offsets move only when a probability would
  /// exceed 2^rescaleThreshold (0: they move with every block).
  float rescaleThreshold = 0;
  /// Of every 8 of a thread's 8-column slices of a block's scores, how many
  /// take exp2 from the FMA pipe (OnlineSoftmax, exp2-emulation).
  int64_t exp2Emulation = 0;
  /// Split-KV (decode form): each CTA covers one split of the keys for its
  /// rows and writes their partial softmax state (accumulators, max, sum)
  /// to a workspace; a second kernel combines the splits and applies the
  /// epilogue.
  bool splitKV = false;
  /// Keys per split: fixed at compile time, or 0 for the runtime's choice
  /// (a multiple of splitMultiple aiming at splitTargetCtas CTAs).
  int64_t fixedSplitKeys = 0;
  int64_t splitMultiple = 0;
  int64_t splitTargetCtas = 0;
  /// Split-KV: the largest Sq for which one CTA holds every row of its KV
  /// group, so that a launch with one split writes the output directly
  /// (the combine stage is skipped); 0 if never.
  int64_t directSqMax = 0;
  /// Split-KV: the combine kernel is a programmatic dependent launch.
  bool programmaticLaunch = false;
  /// Split-KV: splits the combine kernel merges per step of its loop.
  int64_t combineSplitsPerStep = 8;
  /// The kernel also writes diffattn.v2's log-sum-exp result (mma.sync row
  /// blocks, wgmma): lse[b, j, i] = ln sum_t exp(scale S_j[i, t]),
  /// [B, 2H, Sq] f32.
  bool writesLse = false;
  /// f32 elements of one partial row state: Dv accumulators, max, sum.
  int64_t partialWidth() const { return valueDim + 2; }
};

/// Sets the online softmax's options (rescale-threshold, exp2-emulation) of
/// `config` from a strategy's `options` (Passes.td), or fails with a
/// diagnostic on `op` naming the option out of range.
template <typename Options>
LogicalResult setSoftmaxOptions(Operation *op, const Options &options,
                                TileConfig &config) {
  config.rescaleThreshold = static_cast<float>(options.rescaleThreshold);
  if (!(config.rescaleThreshold >= 0 && config.rescaleThreshold <= 16))
    return op->emitOpError()
           << "rescale-threshold = " << options.rescaleThreshold
           << " is not supported (expected 0 to 16)";
  config.exp2Emulation = options.exp2Emulation;
  if (config.exp2Emulation < 0 || config.exp2Emulation > 8)
    return op->emitOpError()
           << "exp2-emulation = " << options.exp2Emulation
           << " is not supported (expected 0 to 8 of every 8 slices)";
  return success();
}

/// Fails with a diagnostic on `op` when `config` needs more dynamic shared
/// memory per CTA than its chip has (`what` names the options that sized
/// it, e.g. "block-k = 64 and stages = 3").
LogicalResult checkChipLimits(Operation *op, const TileConfig &config,
                              StringRef what);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_TILECONFIG_H
