//===- FuseV1.cpp - the V1 epilogue: c * RMSNorm(A - lam * A') * w --------===//
//
// Matches a diffattn.v1 root (FuseMatcher.h): a constant times the RMSNorm
// (over the value channel) of the difference of two attentions whose query
// and key heads come in pairs and share one value head, times an optional
// weight; then fuses it through the shared role loop and emission.
//
//===----------------------------------------------------------------------===//

#include "FuseMatcher.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

namespace {
/// The V1 epilogue read from the root.
struct V1Epilogue {
  double coef = 1.0;
  Expr *diff = nullptr, *weight = nullptr, *lam = nullptr;
  double lamConst = 1.0;
  double eps = 0.0;
  int normDim = -1;
};
} // namespace

/// c * diff * rsqrt(mean(diff^2) + eps) [* w], with diff = A - lam * A'.
static bool matchEpilogue(Matcher &m, V1Epilogue &ep, Term &t0, Term &t1) {
  ExprBuilder &b = m.b;
  SmallVector<Expr *> factors, originals;
  flattenProduct(b, m.rootElement(), factors, ep.coef, &originals);
  Expr *rms = nullptr;
  for (unsigned i = 0; i < factors.size(); ++i) {
    Expr *f = factors[i];
    if (isArith(f, ArithKind::Rsqrt) && !rms) {
      rms = b.open(f->args[0]);
    } else if (isArith(f, ArithKind::Div) && !rms &&
               isArith(b.open(f->args[1]), ArithKind::Sqrt)) {
      rms = b.open(b.open(f->args[1])->args[0]);
      SmallVector<Expr *> nf, no;
      double nc = 1.0;
      flattenProduct(b, f->args[0], nf, nc, &no);
      ep.coef *= nc;
      factors.append(nf.begin(), nf.end());
      originals.append(no.begin(), no.end());
    } else if (isArith(f, ArithKind::Sub) && !ep.diff) {
      ep.diff = f;
    } else if (!ep.weight && originals[i]->kind == ExprKind::Leaf) {
      ep.weight = originals[i];
    } else {
      return m.fail(kRootShape,
                    "the result is not a scaled RMSNorm of a difference");
    }
  }
  if (!ep.diff || !rms)
    return m.fail(kRootShape,
                  "the result is not a scaled RMSNorm of a difference");
  // rms = mean(diff^2 over the value channel) + eps.
  if (!isArith(rms, ArithKind::Add))
    return m.fail(kEpilogue, "the RMSNorm denominator is not mean + eps");
  Expr *mean = nullptr;
  for (int i = 0; i < 2; ++i) {
    Expr *c = b.open(rms->args[i]);
    if (c->kind == ExprKind::Const) {
      ep.eps = c->cst;
      mean = rms->args[1 - i];
    }
  }
  if (!mean || !(ep.eps > 0.0))
    return m.fail(kEpilogue, "the RMSNorm epsilon is not a positive constant");
  SmallVector<Expr *> mf;
  double meanCoef = 1.0;
  flattenProduct(b, mean, mf, meanCoef);
  if (mf.size() != 1 || !mf[0]->isReduce(ReduceKind::Add) ||
      mf[0]->bound.size() != 1 || !isConstExpr(b.open(mf[0]->args[0]), 0.0))
    return m.fail(kEpilogue, "the RMSNorm statistic is not a mean of squares");
  unsigned r = mf[0]->bound[0];
  SmallVector<Expr *> sq;
  double sqCoef = 1.0;
  flattenProduct(b, mf[0]->args[1], sq, sqCoef);
  meanCoef *= sqCoef;
  if (sq.size() != 2)
    return m.fail(kEpilogue, "the RMSNorm statistic is not a mean of squares");
  // Which root dim the norm reduces: the one whose substitution by the
  // bound dim turns the difference into the squared factors.
  for (unsigned d : m.rootDims) {
    if (b.extent(d) != b.extent(r))
      continue;
    Expr *shifted = b.substitute(ep.diff, {{d, b.dim(r)}});
    if (b.equal(sq[0], shifted) && b.equal(sq[1], shifted)) {
      ep.normDim = d;
      break;
    }
  }
  if (ep.normDim < 0)
    return m.fail(kEpilogue, "the RMSNorm does not normalize the difference "
                             "over one axis");
  if (std::abs(meanCoef * b.extent(ep.normDim) - 1.0) > 1e-6)
    return m.fail(kEpilogue, "the RMSNorm statistic is not a mean");
  // diff = A_a - lam * A_b.
  SmallVector<Expr *> df, dOrig;
  flattenProduct(b, ep.diff->args[1], df, ep.lamConst, &dOrig);
  if (df.size() == 2) {
    for (int i = 0; i < 2 && !ep.lam; ++i) {
      Term probe;
      if (dOrig[1 - i]->kind == ExprKind::Leaf &&
          m.matchTerm(dOrig[i], probe)) {
        ep.lam = dOrig[1 - i];
        t1 = probe;
      }
    }
  } else if (df.size() == 1) {
    m.matchTerm(dOrig[0], t1); // a constant lambda, materialized below
  }
  if (!t1.q || (df.size() == 2 && !ep.lam))
    return m.fail(kEpilogue, "the subtrahend is not lambda times an attention");
  if (ep.lam && ep.lamConst != 1.0)
    return m.fail(kPairing, "lambda is scaled by a constant");
  return m.matchTerm(ep.diff->args[0], t0) && m.sameTerms(t0, t1);
}

FuseAttempt Matcher::matchV1(RewriterBase &rewriter) {
  if (!setupRoot())
    return failure();
  V1Epilogue ep;
  Term t0, t1;
  if (!matchEpilogue(*this, ep, t0, t1))
    return failure();
  SmallVector<Value> values = {root, t0.q->value, t0.k->value, t0.v->value};
  if (ep.lam)
    values.push_back(ep.lam->value);
  if (ep.weight)
    values.push_back(ep.weight->value);
  if (!checkShapes(values))
    return failure();
  Type elemType = commonElementType(t0);
  if (!elemType)
    return failure();
  if (ep.weight && !isa<FloatType>(elementTypeOf(ep.weight->value))) {
    fail(kOperands, "the RMSNorm weight is not a float tensor");
    return failure();
  }
  MLIRContext *ctx = b.getContext();
  auto accept = [&](const Roles &r) {
    if (r.value != static_cast<unsigned>(ep.normDim))
      return false;
    return (!ep.lam || usesOnly(ep.lam, {}, "lambda")) &&
           (!ep.weight || usesOnly(ep.weight, {r.value}, "the RMSNorm weight"));
  };
  auto finish = [&](const Roles &r, const MaskInfo &mask,
                    OperandPlan &q) -> std::optional<FuseAttempt> {
    int64_t numPairs = b.extent(r.head);
    if (b.extent(r.value) != 2 * b.extent(dDim)) {
      fail(kOperands, "the value width is not twice the head dim (V1)");
      return std::nullopt;
    }
    if (mask.right != 0 && !(mask.left < 0 && mask.right < 0)) {
      fail(kOperands, "diffattn.v1 supports causal or unmasked attention "
                      "only");
      return std::nullopt;
    }
    if (mask.right == 0 && mask.left >= 0) {
      fail(kOperands, "diffattn.v1 has no sliding window");
      return std::nullopt;
    }
    q.elementType = elemType;
    DenseMap<unsigned, AffineExpr> same;
    // k: the two attentions' key heads a fixed distance apart; v shared.
    SmallVector<int64_t> kDelta;
    bool ok = true;
    {
      SmallVector<AffineExpr> k0 = headIndex(t0.k, r.head, cst(ctx, 0), same);
      SmallVector<AffineExpr> k1 = headIndex(t1.k, r.head, cst(ctx, 0), same);
      for (auto [x, y] : llvm::zip(k0, k1)) {
        auto d = dyn_cast<AffineConstantExpr>(b.simplify(y - x));
        if (!d) {
          ok = false;
          break;
        }
        kDelta.push_back(d.getValue());
      }
    }
    for (int64_t h = 0; h < numPairs && ok; ++h) {
      SmallVector<AffineExpr> k0 = headIndex(t0.k, r.head, cst(ctx, h), same);
      SmallVector<AffineExpr> k1 = headIndex(t1.k, r.head, cst(ctx, h), same);
      for (auto [n, x] : llvm::enumerate(k0))
        ok = ok && b.simplify(x + kDelta[n]) == k1[n];
    }
    if (!ok) {
      fail(kOperands, "the key heads of the two attentions are not a fixed "
                      "distance apart");
      return std::nullopt;
    }
    for (int64_t h = 0; h < numPairs; ++h) {
      if (headIndex(t0.v, r.head, cst(ctx, h), same) !=
          headIndex(t1.v, r.head, cst(ctx, h), same)) {
        if (wouldKeep(kOperands))
          fail(kOperands, llvm::formatv("the two attentions of {0} read "
                                        "different value heads",
                                        queryHeads(t0, t1, r, h)));
        return std::nullopt;
      }
    }
    int64_t pairsPerKv = pairsPerKvHead(t0, r.head, numPairs, same);
    int64_t numKv = numPairs / pairsPerKv;
    OperandPlan k;
    {
      unsigned kb = b.newDim(b.extent(r.batch)), kt = b.newDim(b.extent(tDim)),
               kj = b.newDim(2 * numKv), kd = b.newDim(b.extent(dDim));
      DenseMap<unsigned, AffineExpr> ren = {
          {r.batch, b.dim(kb)}, {tDim, b.dim(kt)}, {dDim, b.dim(kd)}};
      AffineExpr j = b.dim(kj);
      k.map = headIndex(t0.k, r.head, j.floorDiv(2) * pairsPerKv, ren);
      for (auto [n, d] : llvm::enumerate(kDelta))
        k.map[n] = b.simplify(k.map[n] + (j % 2) * d);
      k.base = t0.k->value;
      k.dims = {kb, kt, kj, kd};
      k.shape = {q.shape[0],
                 b.extent(tDim) < 0 ? ShapedType::kDynamic : b.extent(tDim),
                 2 * numKv, b.extent(dDim)};
      k.elementType = elemType;
    }
    OperandPlan v = kvPlan(t0.v, r, r.value, b.extent(r.value), numKv,
                           pairsPerKv, elemType);
    if (!planSizes(k, "k") || !planSizes(v, "v"))
      return std::nullopt;
    SmallVector<OperandPlan, 5> plans = {q, k, v};
    if (ep.lam) {
      OperandPlan l;
      l.base = ep.lam->value;
      l.map.assign(ep.lam->idx.begin(), ep.lam->idx.end());
      l.elementType = Float32Type::get(ctx);
      plans.push_back(l);
    }
    if (ep.weight) {
      OperandPlan w;
      unsigned wd = b.newDim(b.extent(r.value));
      w.base = ep.weight->value;
      w.map = headIndex(ep.weight, r.head, cst(ctx, 0), {{r.value, b.dim(wd)}});
      w.dims = {wd};
      w.shape = {b.extent(r.value)};
      Type wt = elementTypeOf(ep.weight->value);
      w.elementType = wt == elemType || wt.isF32() ? wt : elemType;
      plans.push_back(w);
    }
    auto outType = RankedTensorType::get(
        {q.shape[0], q.shape[1], numPairs, b.extent(r.value)}, elemType);
    double lambdaInit = 1.0 - ep.coef;
    int64_t width = b.extent(r.value);
    std::optional<FuseAttempt> a = emitFused(
        rewriter, r, plans,
        [&](OpBuilder &builder, Location loc, ArrayRef<Value> ops) {
          unsigned next = 3;
          Value lv = ep.lam ? ops[next++] : Value();
          if (!lv)
            lv = arith::ConstantOp::create(
                builder, loc,
                DenseElementsAttr::get(
                    RankedTensorType::get({}, builder.getF32Type()),
                    static_cast<float>(ep.lamConst)));
          Value wv = ep.weight ? ops[next++] : Value();
          if (!wv)
            wv = arith::ConstantOp::create(
                builder, loc,
                DenseElementsAttr::get(RankedTensorType::get({width}, elemType),
                                       builder.getFloatAttr(elemType, 1.0)));
          auto op = V1Op::create(builder, loc, outType, ops[0], ops[1], ops[2],
                                 lv, wv, /*causal=*/mask.right == 0,
                                 builder.getF32FloatAttr(t0.scale),
                                 APFloat(static_cast<float>(lambdaInit)),
                                 APFloat(static_cast<float>(ep.eps)));
          return op.getOperation();
        });
    if (!a)
      return std::nullopt;
    a->description =
        llvm::formatv("fused differential attention V1: {0} query heads in "
                      "{1} pairs, {2} KV heads, head dim {3}, {4}, scale {5}, "
                      "lambda_init {6}, eps {7}{8}",
                      2 * numPairs, numPairs, numKv, b.extent(dDim),
                      describeMask(mask), formatNumber(t0.scale),
                      formatNumber(lambdaInit), formatNumber(ep.eps),
                      t0.guarded ? ", safe-softmax guard absorbed" : "")
            .str();
    return a;
  };
  return forEachRoles(rewriter, t0, t1, accept, finish);
}

FuseAttempt mlir::diffattn::fusion::tryFuseV1(RewriterBase &rewriter,
                                              Value root) {
  Matcher m(root);
  return m.matchV1(rewriter);
}
