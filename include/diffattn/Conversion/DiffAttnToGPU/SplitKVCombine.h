//===- SplitKVCombine.h - the split-KV combine kernel -----------*- C++ -*-===//
//
// The second kernel of a split-KV (decode form) launch: it merges the
// partial softmax states that the split kernel's CTAs wrote to the
// workspace (per split, row and head: Dv unnormalised accumulators, the
// row max and the row sum) and applies the differential epilogue. Shared by
// every GPU strategy whose decode kernels split the keys.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_SPLITKVCOMBINE_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_SPLITKVCOMBINE_H

#include "diffattn/Conversion/DiffAttnToGPU/TileConfig.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"

namespace mlir::diffattn {

/// The workspace of a split-KV launch (f32): per batch, KV head, split, row
/// of the group (pair of the group x Sq + query row) and head of the pair,
/// Dv + 2 values: the unnormalised accumulators, the row max, the row sum;
/// laid out [B, Hkv, splits, pairs of a group x Sq, 2, Dv + 2].

/// Fills the body of the combine kernel `func` (arguments: workspace, lam,
/// out, B, Sq, Sk, split_keys; grid (pairs of a group x Sq, Hkv, B), one
/// CTA of Dv threads, thread = output column). With
/// `config.combineSplitsPerStep` splits per step of its merge loop. With
/// `config.programmaticLaunch` it loads lam, then waits for the split
/// kernel (griddepcontrol.wait) before reading the workspace.
void buildSplitKVCombine(OpBuilder &b, Location loc, gpu::GPUFuncOp func,
                         const TileConfig &config);

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_SPLITKVCOMBINE_H
