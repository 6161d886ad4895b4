//===- Transforms.h - reusable diffattn rewrites ----------------*- C++ -*-===//
//
// The reusable cores of the diffattn passes, callable from other passes and
// from the compile driver. The passes themselves only walk and call these.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_TRANSFORMS_H
#define DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_TRANSFORMS_H

#include "mlir/IR/AffineExpr.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Support/LLVM.h"

namespace mlir::diffattn {

/// The static description of one diffattn.v2 / diffattn.v1 op that every
/// lowering needs: which heads read which K/V heads, the mask, the epilogue.
struct AttentionConfig {
  enum class Kind { V2, V1 };
  Kind kind;
  /// H: output heads; the op has 2H query heads.
  int64_t numPairs;
  /// Heads of `k` and of `v` (V2: both Hkv; V1: k has 2Hkv, v has Hkv).
  int64_t numKeyHeads;
  int64_t numValueHeads;
  /// D (query/key) and the value width (V2: Dv; V1: 2D).
  int64_t headDim;
  int64_t valueDim;
  /// Element type T of q, k, v and the result.
  Type elementType;
  float scale;
  bool causal;
  /// Effective window bounds, -1 = unlimited; `causal` is folded in as
  /// right = 0.
  int64_t windowLeft;
  int64_t windowRight;
  bool hasKvLen;
  /// V1 only.
  float lambdaInit = 0.0f;
  float eps = 0.0f;

  /// Reads the configuration of a verified diffattn.v2 / diffattn.v1.
  static AttentionConfig get(Operation *op);

  /// The key head read by query head `j` (an affine function of `j`).
  AffineExpr keyHead(AffineExpr j) const;
  /// The value head read by query head `j`.
  AffineExpr valueHead(AffineExpr j) const;
  /// True when every key is visible to every query before `kv_len`.
  bool isUnmasked() const { return windowLeft < 0 && windowRight < 0; }
};

/// Every diffattn.v2 / diffattn.v1 nested in `root`, in walk order.
SmallVector<Operation *> collectDiffAttnOps(Operation *root);

/// Builds `key` visibility for query row `row` (all index values):
/// `key < keyLen` and the causal/window bounds around `row + offset`, where
/// `offset = keyLen - Sq` (bottom-right alignment).
Value buildIsVisible(OpBuilder &b, Location loc, const AttentionConfig &config,
                     Value row, Value key, Value offset, Value keyLen);

/// The number of valid keys of one sequence (index typed): `kvLen` (an i32
/// element of the op's `kv_len`) clamped to [0, seqLen], or `seqLen` when
/// `kvLen` is null.
Value buildKeyLength(OpBuilder &b, Location loc, Value kvLen, Value seqLen);

/// The destination the result of `op` is materialized into, when its only
/// use is a `bufferization.materialize_in_destination` into a block
/// argument (as in outlined kernels): lowerings then write the result
/// straight into it. Null otherwise.
Value getResultDestination(Operation *op);

/// Replaces `op`'s result with `result`, which the lowering wrote into
/// `getResultDestination(op)` (or a fresh tensor when that is null), and
/// drops the then redundant materialization.
void replaceWithResult(RewriterBase &rewriter, Operation *op, Value result);

/// Replaces `op` (diffattn.v2 / diffattn.v1) with untiled linalg on tensors.
LogicalResult decomposeDiffAttnOp(RewriterBase &rewriter, Operation *op);

/// Block sizes of the FlashAttention tiling.
struct FlashTileSizes {
  int64_t blockQ;
  int64_t blockK;
};

/// The default block sizes of a target (cpu, sm_80, sm_90, sm_90a, sm_100a);
/// failure for an unknown target.
FailureOr<FlashTileSizes> getDefaultFlashTileSizes(StringRef target);

/// Replaces `op` (diffattn.v2 / diffattn.v1) with its FlashAttention-tiled
/// form (see the DiffAttnTileFlash pass description).
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

/// The name of the attribute that marks an outlined kernel function and
/// holds its manifest entry.
constexpr StringLiteral kKernelAttrName = "diffattn.kernel";

} // namespace mlir::diffattn

#endif // DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_TRANSFORMS_H
