//===- AttentionConfig.h - the static description of a diffattn op -*- C++
//-*-===//
//
// What every pass and GPU strategy reads off a diffattn.v2 / diffattn.v1 op
// (head mapping, mask, epilogue constants), how ops are collected, and the
// attribute that marks an outlined kernel. Part of the dialect-level utility
// library MLIRDiffAttnUtils, which knows nothing of any target.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_UTILS_ATTENTIONCONFIG_H
#define DIFFATTN_DIALECT_DIFFATTN_UTILS_ATTENTIONCONFIG_H

#include "mlir/IR/AffineExpr.h"
#include "mlir/IR/Operation.h"
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
  /// What the lowerings compute scores, softmax statistics and sums in, and
  /// the element type of `lse`: f64 when T is f64, else f32
  /// (getAccumulatorType).
  Type accumulatorType;
  /// The softmax scale in f32 (what the f32-accumulating lowerings and the
  /// GPU strategies use) and in f64 (the attribute's value, or 1/sqrt(D)
  /// computed in double).
  float scale;
  double scaleF64;
  /// The scale as a constant of the float type `type`: scaleF64 for f64,
  /// else `scale`.
  double scaleIn(Type type) const { return type.isF64() ? scaleF64 : scale; }
  bool causal;
  /// Effective window bounds, -1 = unlimited; `causal` is folded in as
  /// right = 0.
  int64_t windowLeft;
  int64_t windowRight;
  bool hasKvLen;
  /// diffattn.v2 returns out_odd (A_{2h+1}), or diffattn.v2_backward reads
  /// it.
  bool hasOutOdd = false;
  /// diffattn.v2_paged: keys per block of the pool (BS); 0 for a contiguous
  /// cache.
  int64_t pagedBlockSize = 0;
  bool isPaged() const { return pagedBlockSize > 0; }
  /// diffattn.v2_varlen: packed sequences delimited by cu_seqlens_q/k.
  bool varlen = false;
  /// V1 only.
  float lambdaInit = 0.0f;
  float eps = 0.0f;

  /// Reads the configuration of a verified diffattn.v2 / diffattn.v1.
  static AttentionConfig get(Operation *op);
  /// (diffattn.v2_backward reads as the forward it differentiates.)

  /// The key head read by query head `j` (an affine function of `j`).
  AffineExpr keyHead(AffineExpr j) const;
  /// The value head read by query head `j`.
  AffineExpr valueHead(AffineExpr j) const;
  /// True when every key is visible to every query before `kv_len`.
  bool isUnmasked() const { return windowLeft < 0 && windowRight < 0; }
  /// True when a later query row sees at least the keys an earlier one sees
  /// (a right bound, no left bound: causal and its shifted forms), so that
  /// the work of a row block grows with its rows and that of a key block
  /// shrinks with its keys.
  bool isCausalLike() const { return windowRight >= 0 && windowLeft < 0; }
};

/// Every diffattn op (v2, v2_paged, v2_varlen, v1, v2_backward) nested in
/// `root`, in walk order.
SmallVector<Operation *> collectDiffAttnOps(Operation *root);

/// The name of the attribute that marks an outlined kernel function and
/// holds its manifest entry.
constexpr StringLiteral kKernelAttrName = "diffattn.kernel";

} // namespace mlir::diffattn

#endif // DIFFATTN_DIALECT_DIFFATTN_UTILS_ATTENTIONCONFIG_H
