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

Expr *ExprBuilder::stepView(Expr *e) {
  Operation *def = e->value.getDefiningOp();
  if (!def)
    return nullptr;
  if (auto expand = dyn_cast<tensor::ExpandShapeOp>(def)) {
    ArrayRef<int64_t> shape = expand.getResultType().getShape();
    SmallVector<AffineExpr> src;
    for (const ReassociationIndices &group : expand.getReassociationIndices()) {
      AffineExpr acc = e->idx[group.front()];
      for (int64_t d : ArrayRef<int64_t>(group).drop_front()) {
        if (ShapedType::isDynamic(shape[d]))
          return nullptr;
        acc = acc * shape[d] + e->idx[d];
      }
      src.push_back(acc);
    }
    return leaf(expand.getSrc(), src);
  }
  if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(def)) {
    ArrayRef<int64_t> shape = collapse.getSrcType().getShape();
    SmallVector<AffineExpr> src(shape.size());
    for (auto [g, group] :
         llvm::enumerate(collapse.getReassociationIndices())) {
      int64_t stride = 1;
      for (int64_t k = group.size() - 1; k >= 0; --k) {
        int64_t d = group[k];
        AffineExpr part = e->idx[g];
        if (stride != 1)
          part = part.floorDiv(stride);
        if (k != 0) {
          if (ShapedType::isDynamic(shape[d]))
            return nullptr;
          part = part % shape[d];
          stride *= shape[d];
        }
        src[d] = part;
      }
    }
    return leaf(collapse.getSrc(), src);
  }
  if (auto slice = dyn_cast<tensor::ExtractSliceOp>(def)) {
    ArrayRef<int64_t> offsets = slice.getStaticOffsets();
    ArrayRef<int64_t> strides = slice.getStaticStrides();
    if (!isStaticShape(offsets) || !isStaticShape(strides))
      return nullptr;
    llvm::SmallBitVector dropped = slice.getDroppedDims();
    SmallVector<AffineExpr> src;
    unsigned r = 0;
    for (unsigned d = 0, n = offsets.size(); d < n; ++d) {
      if (dropped.test(d)) {
        src.push_back(getAffineConstantExpr(offsets[d], ctx));
        continue;
      }
      src.push_back(e->idx[r++] * strides[d] + offsets[d]);
    }
    return leaf(slice.getSource(), src);
  }
  if (auto cast = dyn_cast<tensor::CastOp>(def))
    return leaf(cast.getSource(), e->idx);
  return nullptr;
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
      return e;
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
