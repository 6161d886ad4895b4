//===- FuseExprViews.cpp - looking through views, expansion
//-----------------===//
//
// How a leaf of an element expression (FuseExpr.h) is followed through layout
// ops (reshapes, slices, casts, copies, transposes, broadcasts, gathers with
// constant indices) and how linalg payloads, reductions and linalg.softmax
// expand into expression nodes.
//
//===----------------------------------------------------------------------===//
#include "FuseExpr.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/AffineExprVisitor.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/SmallBitVector.h"

#include <cmath>
#include <limits>
#include <numeric>

using namespace mlir;
using namespace mlir::diffattn::fusion;

//===----------------------------------------------------------------------===//
// Views
//===----------------------------------------------------------------------===//

static bool isStaticShape(ArrayRef<int64_t> shape) {
  return llvm::none_of(shape, ShapedType::isDynamic);
}

/// Static sizes of `type`'s dims `dims`, kDynamic where unknown.
static SmallVector<int64_t> sizesOf(RankedTensorType type,
                                    ArrayRef<int64_t> dims) {
  return llvm::to_vector(
      llvm::map_range(dims, [&](int64_t d) { return type.getDimSize(d); }));
}

Expr *ExprBuilder::stepView(Expr *e) {
  Operation *def = e->value.getDefiningOp();
  if (!def)
    return nullptr;
  // Splits and merges: each group's index is linearized and split again;
  // only the first non-unit dim of a group may be dynamic (its size is
  // implied by the others').
  if (auto expand = dyn_cast<tensor::ExpandShapeOp>(def)) {
    SmallVector<AffineExpr> src;
    for (auto [g, group] : llvm::enumerate(expand.getReassociationIndices())) {
      SmallVector<AffineExpr> idx;
      for (int64_t d : group)
        idx.push_back(e->idx[d]);
      std::optional<SmallVector<AffineExpr>> s =
          regroupIndex(idx, sizesOf(expand.getResultType(), group),
                       {expand.getSrcType().getDimSize(g)}, ctx);
      if (!s)
        return nullptr;
      src.append(*s);
    }
    return leaf(expand.getSrc(), src);
  }
  if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(def)) {
    SmallVector<AffineExpr> src(collapse.getSrcType().getRank());
    for (auto [g, group] :
         llvm::enumerate(collapse.getReassociationIndices())) {
      std::optional<SmallVector<AffineExpr>> s =
          regroupIndex({e->idx[g]}, {collapse.getResultType().getDimSize(g)},
                       sizesOf(collapse.getSrcType(), group), ctx);
      if (!s)
        return nullptr;
      for (auto [d, x] : llvm::zip(group, *s))
        src[d] = x;
    }
    return leaf(collapse.getSrc(), src);
  }
  // A reshape of a computed shape: read only when it is proven to be
  // splits and merges (FuseShapes.h).
  if (auto reshape = dyn_cast<tensor::ReshapeOp>(def)) {
    std::string why;
    std::optional<SmallVector<ReshapeGroup>> groups =
        reshapeGroups(reshape, sizeReasoner, why);
    if (!groups)
      return nullptr;
    auto srcType = cast<RankedTensorType>(reshape.getSource().getType());
    auto staticSize = [&](Value v, int64_t d) {
      std::optional<SizeProduct> s = sizeReasoner.sizeOf(v, d);
      return s && s->isConstant() ? s->coef : ShapedType::kDynamic;
    };
    SmallVector<AffineExpr> src(srcType.getRank());
    for (const ReshapeGroup &g : *groups) {
      SmallVector<AffineExpr> idx;
      SmallVector<int64_t> dstSizes, srcSizes;
      for (int64_t d : g.dst) {
        idx.push_back(e->idx[d]);
        dstSizes.push_back(staticSize(reshape.getResult(), d));
      }
      for (int64_t d : g.src)
        srcSizes.push_back(staticSize(reshape.getSource(), d));
      std::optional<SmallVector<AffineExpr>> s =
          regroupIndex(idx, dstSizes, srcSizes, ctx);
      if (!s)
        return nullptr;
      for (auto [d, x] : llvm::zip(g.src, *s))
        src[d] = x;
    }
    return leaf(reshape.getSource(), src);
  }
  if (auto slice = dyn_cast<tensor::ExtractSliceOp>(def)) {
    ArrayRef<int64_t> offsets = slice.getStaticOffsets();
    ArrayRef<int64_t> strides = slice.getStaticStrides();
    if (!isStaticShape(offsets) || !isStaticShape(strides))
      return nullptr;
    llvm::SmallBitVector dropped = slice.getDroppedDims();
    // A dynamic size must be the whole source dim: the leaf's dim keeps its
    // range, which the fused op reads from the source's size.
    RankedTensorType resultType = slice.getResultType();
    SmallVector<AffineExpr> src;
    unsigned r = 0;
    for (unsigned d = 0, n = offsets.size(); d < n; ++d) {
      if (dropped.test(d)) {
        src.push_back(getAffineConstantExpr(offsets[d], ctx));
        continue;
      }
      if (resultType.isDynamicDim(r) &&
          (offsets[d] != 0 || strides[d] != 1 ||
           !sizeReasoner.equal(sizeReasoner.sizeOf(slice.getResult(), r),
                               sizeReasoner.sizeOf(slice.getSource(), d))))
        return nullptr;
      src.push_back(e->idx[r++] * strides[d] + offsets[d]);
    }
    return leaf(slice.getSource(), src);
  }
  if (auto cast = dyn_cast<tensor::CastOp>(def))
    return leaf(cast.getSource(), e->idx);
  return nullptr;
}

Expr *ExprBuilder::zeroIgnoredLoops(Expr *e) {
  // A linalg op whose element does not depend on some loop (a broadcast
  // that the expressions cannot read, e.g. a gather of an unproven index):
  // its element at any position of that loop is the one at 0.
  auto linalgOp = e->value.getDefiningOp<linalg::LinalgOp>();
  if (!linalgOp || !linalgOp.hasPureTensorSemantics() ||
      linalgOp.getNumReductionLoops() != 0 || !linalgOp.getBlock())
    return e;
  Block *body = linalgOp.getBlock();
  for (OpOperand &init : linalgOp.getDpsInitsMutable())
    if (!linalgOp.getMatchingBlockArgument(&init).use_empty())
      return e;
  unsigned numLoops = linalgOp.getNumLoops();
  llvm::SmallBitVector used(numLoops);
  for (OpOperand *in : linalgOp.getDpsInputOperands()) {
    AffineMap map = linalgOp.getMatchingIndexingMap(in);
    for (unsigned d = 0; d < numLoops; ++d)
      if (map.isFunctionOfDim(d))
        used.set(d);
  }
  body->walk([&](linalg::IndexOp idx) {
    if (idx.getDim() < numLoops)
      used.set(idx.getDim());
  });
  AffineMap outMap =
      linalgOp.getIndexingMapMatchingResult(cast<OpResult>(e->value));
  SmallVector<AffineExpr> idx(e->idx.begin(), e->idx.end());
  bool changed = false;
  for (auto [pos, r] : llvm::enumerate(outMap.getResults())) {
    auto d = dyn_cast<AffineDimExpr>(r);
    if (!d || used.test(d.getPosition()) || pos >= idx.size() ||
        idx[pos] == getAffineConstantExpr(0, ctx))
      continue;
    idx[pos] = getAffineConstantExpr(0, ctx);
    changed = true;
  }
  return changed ? leaf(e->value, idx) : e;
}

Expr *ExprBuilder::normalize(Expr *e) {
  for (unsigned depth = 0; depth < kMaxDepth; ++depth) {
    if (e->kind != ExprKind::Leaf || !isa<RankedTensorType>(e->value.getType()))
      return e;
    Operation *def = e->value.getDefiningOp();
    if (!def)
      return e;
    if (auto cst = dyn_cast<arith::ConstantOp>(def)) {
      auto dense = dyn_cast<DenseElementsAttr>(cst.getValue());
      if (dense && dense.isSplat()) {
        Type et = dense.getElementType();
        if (isa<FloatType>(et))
          return constant(dense.getSplatValue<APFloat>().convertToDouble());
        if (et.isInteger(1))
          return constant(dense.getSplatValue<bool>() ? 1.0 : 0.0);
        if (isa<IntegerType>(et))
          return constant(
              static_cast<double>(dense.getSplatValue<APInt>().getSExtValue()));
      }
      return e;
    }
    if (Expr *next = stepView(e)) {
      e = next;
      continue;
    }
    // Copies, transposes, broadcasts, fills and gathers are linalg ops whose
    // payload yields an input element or a scalar.
    auto linalgOp = dyn_cast<linalg::LinalgOp>(def);
    if (!linalgOp || linalgOp.getNumReductionLoops() != 0)
      return e;
    Expr *p = peelLinalg(e);
    if (p->kind == ExprKind::Const)
      return p;
    if (p->kind != ExprKind::Leaf || p == e)
      return zeroIgnoredLoops(e);
    e = p;
  }
  return e;
}

//===----------------------------------------------------------------------===//
// Expansion
//===----------------------------------------------------------------------===//

Expr *ExprBuilder::scalarExpr(Value v) {
  if (auto cst = v.getDefiningOp<arith::ConstantOp>()) {
    if (auto f = dyn_cast<FloatAttr>(cst.getValue()))
      return constant(f.getValueAsDouble());
    if (auto i = dyn_cast<IntegerAttr>(cst.getValue())) {
      if (i.getType().isInteger(1))
        return constant(i.getValue().getBoolValue() ? 1.0 : 0.0);
      return constant(static_cast<double>(i.getValue().getSExtValue()));
    }
  }
  return leaf(v, {});
}

std::optional<unsigned> ExprBuilder::broadcastIndex(linalg::LinalgOp op,
                                                    arith::SelectOp sel) {
  // select(n == 1, 0, i) (or select(n != 1, i, 0)) for the loop index i of
  // a loop whose range is n: i itself, since i is 0 whenever n is 1.
  if (!sel.getType().isIntOrIndex())
    return std::nullopt;
  auto cmp = sel.getCondition().getDefiningOp<arith::CmpIOp>();
  if (!cmp || (cmp.getPredicate() != arith::CmpIPredicate::eq &&
               cmp.getPredicate() != arith::CmpIPredicate::ne))
    return std::nullopt;
  bool eq = cmp.getPredicate() == arith::CmpIPredicate::eq;
  Value zero = eq ? sel.getTrueValue() : sel.getFalseValue();
  Value i = eq ? sel.getFalseValue() : sel.getTrueValue();
  auto isConst = [&](Value v, int64_t c) {
    std::optional<SizeProduct> p = sizeReasoner.valueOf(v);
    return p && p->isConstant() && p->coef == c;
  };
  Value n;
  if (isConst(cmp.getRhs(), 1))
    n = cmp.getLhs();
  else if (isConst(cmp.getLhs(), 1))
    n = cmp.getRhs();
  if (!n || !isConst(zero, 0))
    return std::nullopt;
  while (auto c = i.getDefiningOp<arith::IndexCastOp>())
    i = c.getIn();
  auto idx = i.getDefiningOp<linalg::IndexOp>();
  if (!idx || idx->getParentOp() != op.getOperation() ||
      !sizeReasoner.equal(sizeReasoner.loopSize(op, idx.getDim()),
                          sizeReasoner.valueOf(n)))
    return std::nullopt;
  return idx.getDim();
}

std::string ExprBuilder::whyOpaque(Operation *op) {
  if (auto reshape = dyn_cast<tensor::ReshapeOp>(op)) {
    std::string why;
    if (!reshapeGroups(reshape, sizeReasoner, why))
      return why;
  }
  return "";
}

Expr *ExprBuilder::buildPayload(Operation *op, Value v,
                                ArrayRef<AffineExpr> loops,
                                DenseMap<Value, Expr *> &memo, unsigned depth) {
  if (auto it = memo.find(v); it != memo.end())
    return it->second;
  auto linalgOp = cast<linalg::LinalgOp>(op);
  Block *body = linalgOp.getBlock();
  auto fail = [&]() { return arith(ArithKind::Other, {}); };
  Expr *result = nullptr;
  if (depth > kMaxDepth) {
    result = fail();
  } else if (auto ba = dyn_cast<BlockArgument>(v)) {
    if (ba.getOwner() != body) {
      result = scalarExpr(v);
    } else if (v == forbiddenArg) {
      result = fail();
    } else {
      OpOperand *operand = linalgOp.getMatchingOpOperand(ba);
      if (isa<RankedTensorType>(operand->get().getType())) {
        AffineMap map = linalgOp.getMatchingIndexingMap(operand);
        SmallVector<AffineExpr> idx;
        for (AffineExpr r : map.getResults())
          idx.push_back(r.replaceDims(loops));
        result = leaf(operand->get(), idx);
      } else {
        result = scalarExpr(operand->get());
      }
    }
  } else if (!op->isProperAncestor(v.getDefiningOp())) {
    result = scalarExpr(v);
  } else {
    Operation *def = v.getDefiningOp();
    auto arg = [&](unsigned i) {
      return buildPayload(op, def->getOperand(i), loops, memo, depth + 1);
    };
    auto bin = [&](ArithKind k) { return arith(k, {arg(0), arg(1)}); };
    auto un = [&](ArithKind k) { return arith(k, {arg(0)}); };
    if (isa<arith::ConstantOp>(def)) {
      result = scalarExpr(v);
    } else if (isa<arith::AddFOp, arith::AddIOp>(def)) {
      result = bin(ArithKind::Add);
    } else if (isa<arith::SubFOp, arith::SubIOp>(def)) {
      result = bin(ArithKind::Sub);
    } else if (isa<arith::MulFOp, arith::MulIOp>(def)) {
      result = bin(ArithKind::Mul);
    } else if (isa<arith::DivFOp>(def)) {
      result = bin(ArithKind::Div);
    } else if (isa<arith::DivSIOp, arith::DivUIOp>(def)) {
      result = bin(ArithKind::IDiv);
    } else if (isa<arith::RemSIOp, arith::RemUIOp>(def)) {
      result = bin(ArithKind::Rem);
    } else if (isa<arith::MaximumFOp, arith::MaxNumFOp, arith::MaxSIOp>(def)) {
      result = bin(ArithKind::Max);
    } else if (isa<arith::MinimumFOp, arith::MinNumFOp, arith::MinSIOp>(def)) {
      result = bin(ArithKind::Min);
    } else if (isa<arith::NegFOp>(def)) {
      result = un(ArithKind::Neg);
    } else if (isa<math::ExpOp>(def)) {
      result = un(ArithKind::Exp);
    } else if (isa<math::RsqrtOp>(def)) {
      result = un(ArithKind::Rsqrt);
    } else if (isa<math::SqrtOp>(def)) {
      result = un(ArithKind::Sqrt);
    } else if (isa<math::PowFOp, math::FPowIOp>(def)) {
      result = bin(ArithKind::Pow);
    } else if (isa<arith::AndIOp>(def)) {
      result = bin(ArithKind::And);
    } else if (isa<arith::OrIOp>(def)) {
      result = bin(ArithKind::Or);
    } else if (isa<arith::XOrIOp>(def)) {
      result = bin(ArithKind::Xor);
    } else if (auto sel = dyn_cast<arith::SelectOp>(def)) {
      if (std::optional<unsigned> loop = broadcastIndex(linalgOp, sel))
        result = index(loops[*loop]);
      else
        result = arith(ArithKind::Select, {arg(0), arg(1), arg(2)});
    } else if (auto cmp = dyn_cast<arith::CmpFOp>(def)) {
      result = arith(ArithKind::CmpF, {arg(0), arg(1)},
                     static_cast<int64_t>(cmp.getPredicate()), false);
    } else if (auto cmp = dyn_cast<arith::CmpIOp>(def)) {
      result = arith(ArithKind::CmpI, {arg(0), arg(1)},
                     static_cast<int64_t>(cmp.getPredicate()), false);
    } else if (isa<arith::ExtFOp>(def)) {
      result = arith(ArithKind::Cast, {arg(0)}, kExactCast, true);
    } else if (isa<arith::TruncFOp, arith::SIToFPOp, arith::UIToFPOp>(def)) {
      result = arith(ArithKind::Cast, {arg(0)}, 0, true);
    } else if (isa<arith::IndexCastOp, arith::IndexCastUIOp, arith::ExtSIOp,
                   arith::ExtUIOp, arith::TruncIOp, arith::FPToSIOp>(def)) {
      result = arith(ArithKind::Cast, {arg(0)}, 0, false);
    } else if (auto idx = dyn_cast<linalg::IndexOp>(def)) {
      result = index(loops[idx.getDim()]);
    } else if (auto extract = dyn_cast<tensor::ExtractOp>(def)) {
      // A gather: each index must be an affine function of the loops, read
      // directly (linalg.index) or from a constant index table.
      SmallVector<AffineExpr> idx;
      for (unsigned i = 1, n = def->getNumOperands(); i < n && !result; ++i) {
        Expr *ie = arg(i);
        while (ie->kind == ExprKind::Arith && ie->op == ArithKind::Cast)
          ie = ie->args[0];
        if (ie->kind == ExprKind::Index) {
          // A loop index reading a dynamic range: the source's dim must be
          // that range, or the leaf's dim would read the source's size.
          auto loop = llvm::find(loops, ie->index);
          int64_t pos = i - 1;
          if (loop != loops.end() &&
              (ShapedType::isDynamic(
                   linalgOp.getStaticLoopRanges()[loop - loops.begin()]) ||
               extract.getTensor().getType().isDynamicDim(pos)) &&
              !sizeReasoner.equal(
                  sizeReasoner.loopSize(linalgOp, loop - loops.begin()),
                  sizeReasoner.sizeOf(extract.getTensor(), pos))) {
            result = fail();
            break;
          }
          idx.push_back(ie->index);
          continue;
        }
        if (ie->kind == ExprKind::Const) {
          idx.push_back(
              getAffineConstantExpr(static_cast<int64_t>(ie->cst), ctx));
          continue;
        }
        // Fit an affine function of the loops on every point of the box of
        // loops the table read depends on.
        Expr *full = expandAll(ie);
        llvm::SmallDenseSet<unsigned, 8> used;
        collectDims(full, used);
        SmallVector<unsigned> dims(used.begin(), used.end());
        llvm::sort(dims);
        int64_t points = 1;
        for (unsigned d : dims) {
          if (extents[d] <= 0 || points * extents[d] > kMaxEvalPoints) {
            points = -1;
            break;
          }
          points *= extents[d];
        }
        if (points < 0) {
          result = fail();
          break;
        }
        SmallVector<int64_t> vals(extents.size(), 0);
        std::optional<double> base = evaluate(full, vals);
        if (!base) {
          result = fail();
          break;
        }
        AffineExpr fit =
            getAffineConstantExpr(static_cast<int64_t>(*base), ctx);
        SmallVector<int64_t> coefs;
        for (unsigned d : dims) {
          vals.assign(extents.size(), 0);
          int64_t c = 0;
          if (extents[d] > 1) {
            vals[d] = 1;
            std::optional<double> at = evaluate(full, vals);
            if (!at) {
              result = fail();
              break;
            }
            c = static_cast<int64_t>(*at - *base);
          }
          coefs.push_back(c);
          fit = fit + dim(d) * c;
        }
        if (result)
          break;
        // Verify every point of the box.
        SmallVector<int64_t> counter(dims.size(), 0);
        bool ok = true;
        for (int64_t p = 0; p < points && ok; ++p) {
          vals.assign(extents.size(), 0);
          int64_t expect = static_cast<int64_t>(*base);
          for (auto [k, d] : llvm::enumerate(dims)) {
            vals[d] = counter[k];
            expect += coefs[k] * counter[k];
          }
          std::optional<double> at = evaluate(full, vals);
          ok = at && static_cast<int64_t>(*at) == expect;
          for (unsigned k = 0; k < dims.size(); ++k) {
            if (++counter[k] < extents[dims[k]])
              break;
            counter[k] = 0;
          }
        }
        if (!ok) {
          result = fail();
          break;
        }
        idx.push_back(fit);
      }
      if (!result)
        result = leaf(extract.getTensor(), idx);
    } else {
      result = fail();
    }
  }
  memo[v] = result;
  return result;
}

Expr *ExprBuilder::peelLinalg(Expr *e) {
  auto linalgOp = e->value.getDefiningOp<linalg::LinalgOp>();
  if (!linalgOp || !linalgOp.hasPureTensorSemantics() ||
      linalgOp->getNumRegions() != 1 || !linalgOp.getBlock())
    return e;
  auto result = cast<OpResult>(e->value);
  AffineMap outMap = linalgOp.getIndexingMapMatchingResult(result);
  if (!outMap.isProjectedPermutation(/*allowZeroInResults=*/true) ||
      outMap.getNumResults() != e->idx.size())
    return e;
  SmallVector<int64_t> ranges = linalgOp.getStaticLoopRanges();
  SmallVector<utils::IteratorType> iters = linalgOp.getIteratorTypesArray();
  SmallVector<unsigned> loopDims;
  SmallVector<AffineExpr> loops;
  for (int64_t r : ranges) {
    loopDims.push_back(newDim(ShapedType::isDynamic(r) ? -1 : r));
    loops.push_back(dim(loopDims.back()));
  }
  DenseMap<AffineExpr, AffineExpr> repl;
  llvm::SmallBitVector covered(ranges.size());
  for (auto [pos, r] : llvm::enumerate(outMap.getResults())) {
    auto dimExpr = dyn_cast<AffineDimExpr>(r);
    if (!dimExpr)
      continue;
    unsigned d = dimExpr.getPosition();
    repl[loops[d]] = e->idx[pos];
    covered.set(d);
  }
  SmallVector<unsigned> bound;
  for (unsigned d = 0; d < ranges.size(); ++d) {
    if (covered.test(d))
      continue;
    if (iters[d] != utils::IteratorType::reduction)
      return e;
    bound.push_back(loopDims[d]);
  }
  Block *body = linalgOp.getBlock();
  Value yielded = body->getTerminator()->getOperand(result.getResultNumber());
  DenseMap<Value, Expr *> memo;
  auto finish = [&](Expr *x) {
    DenseMap<unsigned, AffineExpr> sub;
    for (auto [from, to] : repl)
      sub[cast<AffineDimExpr>(from).getPosition()] = to;
    return substitute(x, sub);
  };
  if (bound.empty()) {
    Value saved = forbiddenArg;
    forbiddenArg = Value();
    Expr *x = buildPayload(linalgOp, yielded, loops, memo, 0);
    forbiddenArg = saved;
    return finish(x);
  }
  // A reduction: the yielded value combines the accumulator with a term.
  OpOperand *init = linalgOp.getDpsInitOperand(result.getResultNumber());
  BlockArgument acc = linalgOp.getMatchingBlockArgument(init);
  Operation *combine = yielded.getDefiningOp();
  if (!combine || combine->getNumOperands() != 2 || combine->getBlock() != body)
    return e;
  ReduceKind kind;
  if (isa<arith::AddFOp, arith::AddIOp>(combine))
    kind = ReduceKind::Add;
  else if (isa<arith::MaximumFOp, arith::MaxNumFOp>(combine))
    kind = ReduceKind::Max;
  else if (isa<arith::AndIOp>(combine) &&
           combine->getResult(0).getType().isInteger(1))
    kind = ReduceKind::And;
  else if (isa<arith::OrIOp>(combine) &&
           combine->getResult(0).getType().isInteger(1))
    kind = ReduceKind::Or;
  else
    return e;
  Value term;
  if (combine->getOperand(0) == acc)
    term = combine->getOperand(1);
  else if (combine->getOperand(1) == acc)
    term = combine->getOperand(0);
  else
    return e;
  Value saved = forbiddenArg;
  forbiddenArg = acc;
  Expr *x = buildPayload(linalgOp, term, loops, memo, 0);
  forbiddenArg = saved;
  if (x->kind == ExprKind::Arith && x->op == ArithKind::Other)
    return e;
  Expr *initExpr = leaf(init->get(), e->idx);
  return reduce(kind, bound, initExpr, finish(x));
}

Expr *ExprBuilder::peelSoftmax(Expr *e) {
  auto softmax = e->value.getDefiningOp<linalg::SoftmaxOp>();
  if (!softmax)
    return e;
  int64_t d = softmax.getDimension();
  Value input = softmax.getInput();
  int64_t ext = cast<RankedTensorType>(input.getType()).getDimSize(d);
  auto at = [&](AffineExpr pos) {
    SmallVector<AffineExpr> idx(e->idx.begin(), e->idx.end());
    idx[d] = pos;
    return leaf(input, idx);
  };
  unsigned rMax = newDim(ShapedType::isDynamic(ext) ? -1 : ext);
  unsigned rSum = newDim(ShapedType::isDynamic(ext) ? -1 : ext);
  Expr *max =
      reduce(ReduceKind::Max, {rMax},
             constant(-std::numeric_limits<double>::infinity()), at(dim(rMax)));
  Expr *num =
      arith(ArithKind::Exp, {arith(ArithKind::Sub, {at(e->idx[d]), max})});
  Expr *den = reduce(
      ReduceKind::Add, {rSum}, constant(0.0),
      arith(ArithKind::Exp, {arith(ArithKind::Sub, {at(dim(rSum)), max})}));
  return arith(ArithKind::Div, {num, den});
}

Expr *ExprBuilder::peel(Expr *e) {
  e = normalize(e);
  if (e->kind != ExprKind::Leaf || !isa<RankedTensorType>(e->value.getType()))
    return e;
  Operation *def = e->value.getDefiningOp();
  if (!def)
    return e;
  if (isa<linalg::SoftmaxOp>(def))
    return peelSoftmax(e);
  if (isa<linalg::LinalgOp>(def))
    return peelLinalg(e);
  return e;
}

Expr *ExprBuilder::open(Expr *e) {
  for (unsigned depth = 0; depth < kMaxDepth; ++depth) {
    Expr *p = peel(e);
    if (p->kind == ExprKind::Arith && p->op == ArithKind::Cast &&
        p->floatResult && p->args.size() == 1) {
      e = p->args[0];
      continue;
    }
    return p;
  }
  return e;
}
