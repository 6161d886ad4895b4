//===- FuseMatcher.h - state of one V1/V2 match -----------------*- C++ -*-===//
//
// The matcher behind diffattn-fuse (FusePatterns.h), shared by the files that
// implement its phases:
//   FuseStructure.cpp  the root and each attention: P.V contraction, softmax
//                      (and torch's safe-softmax guard), scores, scale, mask
//                      parts, q/k/v leaves
//   FuseMask.cpp       the mask: evaluated at every position or read
//                      symbolically as a band of key - query offsets
//   FuseOperands.cpp   roles of the root's dims (one loop for V1 and V2),
//                      operand plans, emission (one helper for V1 and V2)
//   FuseV2.cpp, FuseV1.cpp  the two epilogues
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEMATCHER_H
#define DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEMATCHER_H

#include "FuseExpr.h"
#include "FusePatterns.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/PatternMatch.h"

#include <array>
#include <memory>
#include <string>

namespace mlir::diffattn::fusion {

/// Stages of a match; failures at kReportableStage or later are reported.
/// A failure's stage says how far the match got, so the reported reason is
/// the furthest step any attempt reached.
enum Stage {
  kRootShape = 0,
  kEpilogue = 1,
  kContraction = 2,
  kSoftmax = 3,
  kScores = 4,
  kPairing = 5,
  kRoles = 6,
  kMask = 7,
  kOperands = 8,
  kEmit = 9,
};

/// One part of the mask, in the frame of the final scores: an additive term
/// (`e * mult` is 0 or masking), or a predicate under which the score is
/// kept (`visibleWhenTrue`) or replaced by `fill * mult`.
struct MaskPart {
  Expr *e;
  bool additive;
  bool visibleWhenTrue;
  double mult;
  double fill = 0.0;
};

/// One softmax attention: A[...] = sum_T softmax_T(scale * sum_D q k + mask)
/// * v, with q/k/v as leaves over the root dims and the canonical T and D.
struct Term {
  Expr *q = nullptr, *k = nullptr, *v = nullptr;
  double scale = 1.0;
  /// Outermost part first.
  SmallVector<MaskPart> mask;
  /// The probabilities pass through torch's safe-softmax guard: rows whose
  /// masked scores are all -inf give 0 (SPEC's empty-row rule).
  bool guarded = false;
};

/// The band of visible keys, in the op's convention (-1 = unlimited).
struct MaskInfo {
  int64_t left = -1, right = -1;
  bool operator==(const MaskInfo &o) const {
    return left == o.left && right == o.right;
  }
};

/// A fused operand: `base` read at `map` (affine in `dims`) into `shape`.
/// A dynamic extent in `shape` is the size of `base` along `dynamicFrom[k]`.
struct OperandPlan {
  Value base;
  SmallVector<AffineExpr> map;
  SmallVector<unsigned> dims;
  SmallVector<int64_t> shape;
  SmallVector<int64_t> dynamicFrom;
  Type elementType;
};

/// Which root dimension plays which role; `order[role]` is the root dim
/// index of batch (0), query position (1), head/pair (2), value channel (3).
struct Roles {
  unsigned batch, query, head, value;
  std::array<unsigned, 4> order;
};

/// The state of one attempt to match a V1 or V2 root.
class Matcher {
public:
  explicit Matcher(Value root);

  FuseAttempt matchV2(RewriterBase &rewriter);
  FuseAttempt matchV1(RewriterBase &rewriter);

  //===--------------------------------------------------------------------===//
  // Failures
  //===--------------------------------------------------------------------===//

  /// Records a refusal at `stage` (raised to the current floor); keeps the
  /// furthest one. Always returns false.
  bool fail(int stage, const Twine &msg);
  FuseAttempt failure() const;
  /// Whether a refusal at `stage` would be kept (so a message that names
  /// values is only built when it can matter).
  bool wouldKeep(int stage) const {
    return std::max(stage, stageFloor) >= bestStage;
  }
  /// `v` as the printed IR names it (`%arg3`, `%12`).
  std::string name(Value v);

  //===--------------------------------------------------------------------===//
  // Structure (FuseStructure.cpp)
  //===--------------------------------------------------------------------===//

  bool setupRoot();
  /// The root element as an expression over rootDims.
  Expr *rootElement();
  /// A failure to report: the matcher stage and why.
  struct Refusal {
    int stage;
    const char *message;
  };
  /// Matches `e` as a sum over one dimension of a product: binds that
  /// dimension to `dim` (a new global dim the first time, else one of the
  /// same extent) and splits the product.
  bool matchSumOfProducts(Expr *e, unsigned &dim,
                          SmallVectorImpl<Expr *> &factors,
                          SmallVectorImpl<Expr *> &originals, Refusal notSum,
                          Refusal extentMismatch, Refusal notProduct);
  bool splitProduct(Expr *body, SmallVectorImpl<Expr *> &factors,
                    SmallVectorImpl<Expr *> &originals);
  bool matchTerm(Expr *e, Term &t);
  /// Refuses (at kSoftmax) a softmax-fed `leaf` whose producer is opaque to
  /// the expression view, naming it.
  bool failOpaque(Expr *leaf, StringRef what);
  bool matchProbabilities(Expr *p, Term &t);
  bool matchSoftmax(Expr *p, Term &t, Expr *&scores);
  bool matchGuard(Expr *cond, Expr *scores);
  bool matchScores(Expr *x, Term &t);
  Expr *baseLeaf(Expr *e, double *scale);
  Expr *matchSigmoid(Expr *e);
  bool sameTerms(const Term &a, const Term &b);
  /// Whether `e` holds an exp summed over some axis within a few levels
  /// (a softmax-shaped reduction), so that a refusal below it is reported.
  bool looksLikeSoftmax(Expr *e);

  //===--------------------------------------------------------------------===//
  // Masks (FuseMask.cpp)
  //===--------------------------------------------------------------------===//

  std::optional<MaskInfo> classifyMask(Term &t, unsigned qDim);
  std::optional<MaskInfo> classifyMaskSymbolic(Term &t, unsigned qDim,
                                               bool &tried);
  /// The mask both attentions use, or nullopt (after a refusal where they
  /// differ or one is not a supported mask).
  std::optional<MaskInfo> commonMask(Term &t0, Term &t1, unsigned qDim);

  //===--------------------------------------------------------------------===//
  // Roles, operands, emission (FuseOperands.cpp)
  //===--------------------------------------------------------------------===//

  /// Heads read by `leaf` for pair h: its index with the head dim replaced
  /// by h and the other dims renamed.
  SmallVector<AffineExpr> headIndex(Expr *leaf, unsigned headDim, AffineExpr h,
                                    const DenseMap<unsigned, AffineExpr> &ren);
  /// R pairs per KV head: the largest R under which every pair reads the
  /// key and value heads of the first pair of its group (1 if none larger).
  int64_t pairsPerKvHead(const Term &t, unsigned headDim, int64_t numPairs,
                         const DenseMap<unsigned, AffineExpr> &ren);
  bool usesOnly(Expr *leaf, ArrayRef<unsigned> allowed, StringRef what);
  /// Whether both attentions' q, k and v read only the dims of their roles.
  bool termsUseOnly(const Term &t0, const Term &t1, const Roles &r);
  /// q's element type when q, k, v and the root share one supported
  /// element type; else a refusal and a null type.
  Type commonElementType(const Term &t);
  /// The query operand: heads 2h and 2h+1 read t0's and t1's query head of
  /// pair h. `headNames` receives, per pair, the two query heads as the
  /// graph numbers them (for remarks).
  bool planQuery(const Term &t0, const Term &t1, const Roles &r,
                 int64_t numPairs, OperandPlan &plan);
  /// The query heads of pair h as the graph numbers them ("heads 3 and 7").
  std::string queryHeads(const Term &t0, const Term &t1, const Roles &r,
                         int64_t h);
  /// A K or V operand [B, Sk, numKv, width] read from `leaf`.
  OperandPlan kvPlan(Expr *leaf, const Roles &r, unsigned channel,
                     int64_t width, int64_t numKv, int64_t pairsPerKv,
                     Type elementType);
  /// Shapes: static, or dynamic only in batch and sequence dims.
  bool checkShapes(ArrayRef<Value> values);
  /// Fills `p.dynamicFrom`: for each dynamic extent, the base dim read by
  /// that plan dim alone; refuses (naming `what`) when there is none.
  bool planSizes(OperandPlan &p, StringRef what);
  /// Size `k` of a plan's tensor: the static extent or a tensor.dim.
  Value planSize(OpBuilder &builder, Location loc, const OperandPlan &p,
                 unsigned k);
  Value materialize(OpBuilder &builder, Location loc, const OperandPlan &p);

  /// The role loop shared by V1 and V2: for each assignment of batch, query,
  /// head and value roles to the root's dims (BSHD first), checks that the
  /// q/k/v leaves read only their roles' dims, that `accept` takes it,
  /// reads the common mask and plans q; then `finish` plans the rest and
  /// emits. Returns the first success, else the furthest refusal.
  FuseAttempt forEachRoles(RewriterBase &rewriter, Term &t0, Term &t1,
                           function_ref<bool(const Roles &)> accept,
                           function_ref<std::optional<FuseAttempt>(
                               const Roles &, const MaskInfo &, OperandPlan &)>
                               finish);

  /// The emission shared by V1 and V2: materialises `plans` after the root,
  /// calls `build` with their values, verifies every new op (rolling all of
  /// them back with a refusal if any does not verify), replaces the root
  /// (transposed back to its own dim order) and erases the dead producers.
  std::optional<FuseAttempt> emitFused(
      RewriterBase &rewriter, const Roles &roles, ArrayRef<OperandPlan> plans,
      function_ref<Operation *(OpBuilder &, Location, ArrayRef<Value>)> build);

  ExprBuilder b;
  Value root;
  SmallVector<unsigned> rootDims;
  unsigned tDim = ~0u, dDim = ~0u;

private:
  Value replaceRoot(RewriterBase &rewriter, Value fused,
                    ArrayRef<unsigned> roles);

  int bestStage = 0;
  std::string bestMessage = "not a differential attention";
  /// Refusals are raised to at least this stage (set once a softmax-shaped
  /// reduction has been seen under the epilogue).
  int stageFloor = 0;
  std::unique_ptr<AsmState> asmState;

  friend struct StageFloorScope;
};

/// Raises a matcher's stage floor for a scope.
struct StageFloorScope {
  StageFloorScope(Matcher &m, int floor) : m(m), saved(m.stageFloor) {
    m.stageFloor = std::max(m.stageFloor, floor);
  }
  ~StageFloorScope() { m.stageFloor = saved; }
  Matcher &m;
  int saved;
};

/// The 24 orders in which the root's four dims can play batch, query
/// position, head and value channel; the identity (BSHD) first, then the
/// head-major layout (BHSD).
SmallVector<std::array<unsigned, 4>> roleOrders();

/// "causal", "no mask", "window (l, r)", ...
std::string describeMask(const MaskInfo &m);
/// Sets causal / window attributes of a fused op.
void setMaskAttrs(Operation *op, const MaskInfo &m);

inline AffineExpr cst(MLIRContext *ctx, int64_t v) {
  return getAffineConstantExpr(v, ctx);
}

inline Type elementTypeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getElementType();
}

/// A float for remarks: `%g`, so 1e-05 stays 1e-05 and 0.5 stays 0.5.
std::string formatNumber(double x);

} // namespace mlir::diffattn::fusion

#endif // DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEMATCHER_H
