//===- FuseV2.cpp - the V2 epilogue: A - sigmoid(lam) * A' ----------------===//
//
// Matches a diffattn.v2 root (FuseMatcher.h): the difference of two
// attentions of paired query heads sharing one KV head, the second gated by
// sigmoid(lambda); then fuses it through the shared role loop and emission.
//
//===----------------------------------------------------------------------===//

#include "FuseMatcher.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

/// Explains why a difference whose subtrahend is not sigmoid(lam) * A is no
/// V2: a raw lambda, or the difference the other way.
static void explainEpilogue(Matcher &m, Expr *top, ArrayRef<Expr *> factors,
                            ArrayRef<Expr *> originals) {
  ExprBuilder &b = m.b;
  Term t0, t1;
  bool lhsTerm = m.matchTerm(top->args[0], t0);
  if (lhsTerm && factors.size() == 2) {
    for (int i = 0; i < 2; ++i) {
      Term probe;
      if (m.matchTerm(originals[i], probe)) {
        m.fail(kPairing, "lambda is not passed through a sigmoid (V2 needs "
                         "sigmoid(lambda))");
        return;
      }
    }
  }
  SmallVector<Expr *> lf, lo;
  double lc = 1.0;
  flattenProduct(b, top->args[0], lf, lc, &lo);
  if (lf.size() == 2 && lc == 1.0) {
    for (int i = 0; i < 2; ++i) {
      Term probe;
      if (m.matchSigmoid(lf[i]) && m.matchTerm(lo[1 - i], probe) &&
          m.matchTerm(top->args[1], t1)) {
        m.fail(kPairing, "the subtraction is in the other order "
                         "(sigmoid(lambda) * A - A)");
        return;
      }
    }
  }
  m.fail(lhsTerm ? kPairing : kEpilogue,
         "the subtrahend is not sigmoid(lambda) times an attention");
}

FuseAttempt Matcher::matchV2(RewriterBase &rewriter) {
  if (!setupRoot())
    return failure();
  Expr *top = b.open(rootElement());
  if (!isArith(top, ArithKind::Sub)) {
    fail(kRootShape, "the result is not a difference");
    return failure();
  }
  // lhs - factors(rhs): one factor sigmoid(lam), one an attention.
  SmallVector<Expr *> factors, originals;
  double coef = 1.0;
  flattenProduct(b, top->args[1], factors, coef, &originals);
  Expr *lam = nullptr;
  int termIdx = -1;
  if (factors.size() == 2 && coef == 1.0) {
    for (int i = 0; i < 2 && !lam; ++i) {
      if (Expr *arg = matchSigmoid(factors[i])) {
        lam = arg;
        termIdx = 1 - i;
      }
    }
  }
  if (!lam) {
    explainEpilogue(*this, top, factors, originals);
    return failure();
  }
  Term t0, t1;
  if (!matchTerm(top->args[0], t0) || !matchTerm(originals[termIdx], t1))
    return failure();
  if (!sameTerms(t0, t1))
    return failure();
  if (!checkShapes({root, t0.q->value, t0.k->value, t0.v->value, lam->value}))
    return failure();
  Type elemType = commonElementType(t0);
  if (!elemType)
    return failure();
  Type lamType = elementTypeOf(lam->value);
  if (lamType != elemType && !lamType.isF32()) {
    fail(kOperands, "lambda's element type is neither q's nor f32");
    return failure();
  }
  MLIRContext *ctx = b.getContext();
  auto accept = [&](const Roles &r) {
    return usesOnly(lam, {r.batch, r.query, r.head}, "lambda");
  };
  auto finish = [&](const Roles &r, const MaskInfo &mask,
                    OperandPlan &q) -> std::optional<FuseAttempt> {
    int64_t numPairs = b.extent(r.head);
    q.elementType = elemType;
    // Both heads of a pair must read the same key and value head.
    DenseMap<unsigned, AffineExpr> same;
    for (int64_t h = 0; h < numPairs; ++h) {
      bool sameK = headIndex(t0.k, r.head, cst(ctx, h), same) ==
                   headIndex(t1.k, r.head, cst(ctx, h), same);
      bool sameV = headIndex(t0.v, r.head, cst(ctx, h), same) ==
                   headIndex(t1.v, r.head, cst(ctx, h), same);
      if (!sameK || !sameV) {
        if (wouldKeep(kOperands))
          fail(kOperands, llvm::formatv("{0} do not share a {1} head",
                                        queryHeads(t0, t1, r, h),
                                        sameK ? "value" : "key"));
        return std::nullopt;
      }
    }
    int64_t pairsPerKv = pairsPerKvHead(t0, r.head, numPairs, same);
    int64_t numKv = numPairs / pairsPerKv;
    OperandPlan k =
        kvPlan(t0.k, r, dDim, b.extent(dDim), numKv, pairsPerKv, elemType);
    OperandPlan v = kvPlan(t0.v, r, r.value, b.extent(r.value), numKv,
                           pairsPerKv, elemType);
    OperandPlan l;
    unsigned lb = b.newDim(b.extent(r.batch)), li = b.newDim(b.extent(r.query)),
             lh = b.newDim(numPairs);
    l.base = lam->value;
    l.map = headIndex(lam, r.head, b.dim(lh),
                      {{r.batch, b.dim(lb)}, {r.query, b.dim(li)}});
    l.dims = {lb, li, lh};
    l.shape = {q.shape[0], q.shape[1], numPairs};
    l.elementType = lamType;
    if (!planSizes(k, "k") || !planSizes(v, "v") || !planSizes(l, "lambda"))
      return std::nullopt;
    auto outType = RankedTensorType::get(
        {q.shape[0], q.shape[1], numPairs, b.extent(r.value)}, elemType);
    double scale = t0.scale;
    std::optional<FuseAttempt> a = emitFused(
        rewriter, r, {q, k, v, l},
        [&](OpBuilder &builder, Location loc, ArrayRef<Value> ops) {
          auto op = V2Op::create(builder, loc, outType, ops[0], ops[1], ops[2],
                                 ops[3], /*kv_len=*/Value(), /*causal=*/false,
                                 builder.getF32FloatAttr(scale));
          setMaskAttrs(op, mask);
          return op.getOperation();
        });
    if (!a)
      return std::nullopt;
    a->description =
        llvm::formatv("fused differential attention V2: {0} query heads in "
                      "{1} pairs, {2} KV heads, head dim {3}, value dim {4}, "
                      "{5}, scale {6}{7}",
                      2 * numPairs, numPairs, numKv, b.extent(dDim),
                      b.extent(r.value), describeMask(mask),
                      formatNumber(scale),
                      t0.guarded ? ", safe-softmax guard absorbed" : "")
            .str();
    return a;
  };
  return forEachRoles(rewriter, t0, t1, accept, finish);
}

FuseAttempt mlir::diffattn::fusion::tryFuseV2(RewriterBase &rewriter,
                                              Value root) {
  Matcher m(root);
  return m.matchV2(rewriter);
}
