//===- Transforms.h - reusable diffattn rewrites ----------------*- C++ -*-===//
//
// The reusable cores of the diffattn passes, callable from other passes and
// from the compile driver. The passes themselves only walk and call these.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_TRANSFORMS_H
#define DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_TRANSFORMS_H

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"
#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Support/LLVM.h"

namespace mlir::diffattn {
class V2BackwardOp;

/// The destination the result of `op` is materialized into, when its only
/// use is a `bufferization.materialize_in_destination` into a block
/// argument (as in outlined kernels): lowerings then write the result
/// straight into it. Null otherwise.
/// `index` picks the result (diffattn.v2's log-sum-exp is result 1).
Value getResultDestination(Operation *op, unsigned index = 0);

/// Replaces `op`'s results with `results`, which the lowering wrote into
/// `getResultDestination(op, i)` (or fresh tensors where that is null), and
/// drops the then redundant materializations.
void replaceWithResults(RewriterBase &rewriter, Operation *op,
                        ValueRange results);
inline void replaceWithResult(RewriterBase &rewriter, Operation *op,
                              Value result) {
  replaceWithResults(rewriter, op, result);
}

/// A diffattn.v2 of `operands` (q, k, v, lam[, kv_len]) and `resultType`
/// with `op`'s attributes (causal, scale, windows), created before `op`
/// and verified; for the serving ops' rewrites to diffattn.v2.
FailureOr<Operation *> createV2Like(RewriterBase &rewriter, Operation *op,
                                    ValueRange operands, Type resultType);

/// Replaces a diffattn.v2_paged `op` with diffattn.v2 on its logical cache,
/// gathered from the block pool (keys past kv_len read nothing and are 0);
/// returns the new op, or `op` itself for any other op.
FailureOr<Operation *> materializePagedKVCache(RewriterBase &rewriter,
                                               Operation *op);

/// Replaces a diffattn.v2_varlen `op` with diffattn.v2 on a padded batch
/// (queries aligned to the end of each slot, keys to its start, kv_len the
/// key lengths) and a copy of each sequence's rows into the packed output;
/// returns the new diffattn.v2, or `op` itself for any other op.
FailureOr<Operation *> materializeVarlenBatch(RewriterBase &rewriter,
                                              Operation *op);

/// Both of the above: the diffattn.v2 (or v1) op a tensor-level lowering of
/// `op` starts from.
FailureOr<Operation *> materializeServingLayouts(RewriterBase &rewriter,
                                                 Operation *op);

/// Replaces `op` (diffattn.v2 / diffattn.v1 / diffattn.v2_backward) with
/// untiled linalg on tensors.
LogicalResult decomposeDiffAttnOp(RewriterBase &rewriter, Operation *op);

/// Block sizes of the FlashAttention tiling.
struct FlashTileSizes {
  int64_t blockQ;
  int64_t blockK;
};

/// Replaces `op` with linalg on tensors computing its gradients
/// (V2Backward.cpp): over blocks of `sizes.blockQ` query rows, each over
/// the blocks of `sizes.blockK` keys that some of its rows see
/// (FlashAttention-2's backward; memory B x 2H x blockQ x blockK of the
/// accumulator type per term, plus the dk and dv sums), or over all rows
/// (keys) at once where the block size is <= 0 or the dimension fits one
/// block.
LogicalResult lowerV2Backward(RewriterBase &rewriter, V2BackwardOp op,
                              FlashTileSizes sizes);

/// The default block sizes of a target (cpu, sm_80, sm_90, sm_90a, sm_100a);
/// failure for an unknown target.
FailureOr<FlashTileSizes> getDefaultFlashTileSizes(StringRef target);

/// Replaces `op` (diffattn.v2 / diffattn.v1 / diffattn.v2_backward) with its
/// FlashAttention-tiled form (see the DiffAttnTileFlash pass description).
LogicalResult tileDiffAttnOp(RewriterBase &rewriter, Operation *op,
                             FlashTileSizes sizes);

/// Replaces the contents of `module` with one kernel function per distinct
/// diffattn op configuration (see DiffAttnOutlineKernels). Fails with a
/// diagnostic when the module holds no diffattn op.
LogicalResult outlineDiffAttnKernels(ModuleOp module);

/// Options of fuseDiffAttn.
struct FuseOptions {
  /// Emit a remark on every fused op (what was fused) and on every
  /// attention-like subgraph left alone (why).
  bool emitRemarks = false;
};

/// Replaces every differential attention (V1 or V2) written out in linalg on
/// tensors under `root` with diffattn.v1 / diffattn.v2, leaving the
/// projections around it in place (see DiffAttnFuse). Graphs that do not
/// match exactly are left unchanged. Returns the number of ops created.
FailureOr<unsigned> fuseDiffAttn(Operation *root,
                                 const FuseOptions &options = {});

} // namespace mlir::diffattn

#endif // DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_TRANSFORMS_H
