//===- FuseExpr.cpp - element-level view of tensor graphs -----------------===//
//
// Builds element expressions from linalg-on-tensors graphs for the
// diffattn-fuse matchers (see FuseExpr.h): layout ops fold into affine
// indices, elementwise payloads and reductions expand on demand, and the
// affine simplifier uses dimension extents to fold what reshapes introduce.
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

/// Bounds the recursion of every walk over expressions and graphs.
static constexpr unsigned kMaxDepth = 96;
/// The most points an index table or a reduction may be evaluated at.
static constexpr int64_t kMaxEvalPoints = 1 << 16;

//===----------------------------------------------------------------------===//
// Nodes
//===----------------------------------------------------------------------===//

unsigned ExprBuilder::newDim(int64_t extent) {
  extents.push_back(extent);
  return extents.size() - 1;
}

AffineExpr ExprBuilder::dim(unsigned d) const {
  return getAffineDimExpr(d, ctx);
}

Expr *ExprBuilder::create(ExprKind kind) {
  nodes.emplace_back();
  Expr *e = &nodes.back();
  e->kind = kind;
  return e;
}

Expr *ExprBuilder::leaf(Value v, ArrayRef<AffineExpr> idx) {
  Expr *e = create(ExprKind::Leaf);
  e->value = v;
  for (AffineExpr i : idx)
    e->idx.push_back(simplify(i));
  return e;
}

Expr *ExprBuilder::constant(double c) {
  Expr *e = create(ExprKind::Const);
  e->cst = c;
  return e;
}

Expr *ExprBuilder::index(AffineExpr i) {
  i = simplify(i);
  if (auto c = dyn_cast<AffineConstantExpr>(i))
    return constant(static_cast<double>(c.getValue()));
  Expr *e = create(ExprKind::Index);
  e->index = i;
  return e;
}

static bool cmpF(int64_t pred, double a, double b) {
  using P = arith::CmpFPredicate;
  bool unordered = std::isnan(a) || std::isnan(b);
  switch (static_cast<P>(pred)) {
  case P::AlwaysFalse:
    return false;
  case P::OEQ:
    return !unordered && a == b;
  case P::OGT:
    return !unordered && a > b;
  case P::OGE:
    return !unordered && a >= b;
  case P::OLT:
    return !unordered && a < b;
  case P::OLE:
    return !unordered && a <= b;
  case P::ONE:
    return !unordered && a != b;
  case P::ORD:
    return !unordered;
  case P::UEQ:
    return unordered || a == b;
  case P::UGT:
    return unordered || a > b;
  case P::UGE:
    return unordered || a >= b;
  case P::ULT:
    return unordered || a < b;
  case P::ULE:
    return unordered || a <= b;
  case P::UNE:
    return unordered || a != b;
  case P::UNO:
    return unordered;
  case P::AlwaysTrue:
    return true;
  }
  return false;
}

static bool cmpI(int64_t pred, double a, double b) {
  using P = arith::CmpIPredicate;
  switch (static_cast<P>(pred)) {
  case P::eq:
    return a == b;
  case P::ne:
    return a != b;
  case P::slt:
  case P::ult:
    return a < b;
  case P::sle:
  case P::ule:
    return a <= b;
  case P::sgt:
  case P::ugt:
    return a > b;
  case P::sge:
  case P::uge:
    return a >= b;
  }
  return false;
}

/// The value of an arithmetic node over concrete operands.
static std::optional<double> applyArith(ArithKind op, int64_t pred,
                                        ArrayRef<double> v) {
  switch (op) {
  case ArithKind::Add:
    return v[0] + v[1];
  case ArithKind::Sub:
    return v[0] - v[1];
  case ArithKind::Mul:
    return v[0] * v[1];
  case ArithKind::Div:
    return v[0] / v[1];
  case ArithKind::Neg:
    return -v[0];
  case ArithKind::Exp:
    return std::exp(v[0]);
  case ArithKind::Max:
    return std::max(v[0], v[1]);
  case ArithKind::Min:
    return std::min(v[0], v[1]);
  case ArithKind::Select:
    return v[0] != 0.0 ? v[1] : v[2];
  case ArithKind::CmpF:
    return cmpF(pred, v[0], v[1]) ? 1.0 : 0.0;
  case ArithKind::CmpI:
    return cmpI(pred, v[0], v[1]) ? 1.0 : 0.0;
  case ArithKind::Rsqrt:
    return 1.0 / std::sqrt(v[0]);
  case ArithKind::Sqrt:
    return std::sqrt(v[0]);
  case ArithKind::Pow:
    return std::pow(v[0], v[1]);
  case ArithKind::Cast:
    return v[0];
  case ArithKind::And:
    return static_cast<double>(static_cast<int64_t>(v[0]) &
                               static_cast<int64_t>(v[1]));
  case ArithKind::Or:
    return static_cast<double>(static_cast<int64_t>(v[0]) |
                               static_cast<int64_t>(v[1]));
  case ArithKind::Xor:
    return static_cast<double>(static_cast<int64_t>(v[0]) ^
                               static_cast<int64_t>(v[1]));
  case ArithKind::IDiv:
    if (static_cast<int64_t>(v[1]) == 0)
      return std::nullopt;
    return static_cast<double>(static_cast<int64_t>(v[0]) /
                               static_cast<int64_t>(v[1]));
  case ArithKind::Rem:
    if (static_cast<int64_t>(v[1]) == 0)
      return std::nullopt;
    return static_cast<double>(static_cast<int64_t>(v[0]) %
                               static_cast<int64_t>(v[1]));
  case ArithKind::Other:
    return std::nullopt;
  }
  return std::nullopt;
}

static bool isConst(Expr *e, double c) {
  return e->kind == ExprKind::Const && e->cst == c;
}

Expr *ExprBuilder::arith(ArithKind op, ArrayRef<Expr *> args, int64_t pred,
                         bool floatResult) {
  // Fold constants and the identities that keep masks and scales readable.
  if (op != ArithKind::Other &&
      llvm::all_of(args, [](Expr *a) { return a->kind == ExprKind::Const; })) {
    SmallVector<double> vals;
    for (Expr *a : args)
      vals.push_back(a->cst);
    if (std::optional<double> r = applyArith(op, pred, vals))
      return constant(*r);
  }
  if (op == ArithKind::Select && args[0]->kind == ExprKind::Const)
    return args[0]->cst != 0.0 ? args[1] : args[2];
  if (op == ArithKind::Mul && isConst(args[1], 1.0))
    return args[0];
  if (op == ArithKind::Mul && isConst(args[0], 1.0))
    return args[1];
  if ((op == ArithKind::Add || op == ArithKind::Sub) && isConst(args[1], 0.0))
    return args[0];
  if (op == ArithKind::Add && isConst(args[0], 0.0))
    return args[1];
  if (op == ArithKind::Div && isConst(args[1], 1.0))
    return args[0];
  Expr *e = create(ExprKind::Arith);
  e->op = op;
  e->pred = pred;
  e->floatResult = floatResult;
  e->args.assign(args.begin(), args.end());
  return e;
}

Expr *ExprBuilder::reduce(bool isMax, ArrayRef<unsigned> bound, Expr *init,
                          Expr *body) {
  Expr *e = create(ExprKind::Reduce);
  e->isMax = isMax;
  e->bound.assign(bound.begin(), bound.end());
  e->args = {init, body};
  return e;
}

//===----------------------------------------------------------------------===//
// Affine simplification with extents
//===----------------------------------------------------------------------===//

namespace {
struct IntRange {
  int64_t lo, hi;
};
} // namespace

static int64_t floorDivInt(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/// Splits `e` into sum(coef * term) + constant.
static void linearize(AffineExpr e, int64_t mult,
                      SmallVectorImpl<std::pair<AffineExpr, int64_t>> &terms,
                      int64_t &cst) {
  if (auto bin = dyn_cast<AffineBinaryOpExpr>(e)) {
    if (e.getKind() == AffineExprKind::Add) {
      linearize(bin.getLHS(), mult, terms, cst);
      linearize(bin.getRHS(), mult, terms, cst);
      return;
    }
    if (e.getKind() == AffineExprKind::Mul) {
      if (auto c = dyn_cast<AffineConstantExpr>(bin.getRHS())) {
        linearize(bin.getLHS(), mult * c.getValue(), terms, cst);
        return;
      }
      if (auto c = dyn_cast<AffineConstantExpr>(bin.getLHS())) {
        linearize(bin.getRHS(), mult * c.getValue(), terms, cst);
        return;
      }
    }
  }
  if (auto c = dyn_cast<AffineConstantExpr>(e)) {
    cst += mult * c.getValue();
    return;
  }
  terms.push_back({e, mult});
}

static std::optional<IntRange> rangeOf(AffineExpr e,
                                       ArrayRef<int64_t> extents) {
  if (auto d = dyn_cast<AffineDimExpr>(e)) {
    int64_t ext =
        d.getPosition() < extents.size() ? extents[d.getPosition()] : -1;
    if (ext <= 0)
      return std::nullopt;
    return IntRange{0, ext - 1};
  }
  if (auto c = dyn_cast<AffineConstantExpr>(e))
    return IntRange{c.getValue(), c.getValue()};
  auto bin = dyn_cast<AffineBinaryOpExpr>(e);
  if (!bin)
    return std::nullopt;
  std::optional<IntRange> l = rangeOf(bin.getLHS(), extents);
  std::optional<IntRange> r = rangeOf(bin.getRHS(), extents);
  if (!l || !r)
    return std::nullopt;
  switch (e.getKind()) {
  case AffineExprKind::Add:
    return IntRange{l->lo + r->lo, l->hi + r->hi};
  case AffineExprKind::Mul: {
    if (r->lo != r->hi)
      return std::nullopt;
    int64_t c = r->lo;
    return c >= 0 ? IntRange{l->lo * c, l->hi * c}
                  : IntRange{l->hi * c, l->lo * c};
  }
  case AffineExprKind::FloorDiv:
    if (r->lo != r->hi || r->lo <= 0)
      return std::nullopt;
    return IntRange{floorDivInt(l->lo, r->lo), floorDivInt(l->hi, r->lo)};
  case AffineExprKind::Mod:
    if (r->lo != r->hi || r->lo <= 0)
      return std::nullopt;
    if (l->lo >= 0 && l->hi < r->lo)
      return *l;
    return IntRange{0, r->lo - 1};
  default:
    return std::nullopt;
  }
}

static AffineExpr simplifyRec(AffineExpr e, ArrayRef<int64_t> extents,
                              unsigned depth);

/// floordiv (wantDiv) or mod of `lhs` by the constant `c`.
static AffineExpr simplifyDivMod(AffineExpr lhs, int64_t c, bool wantDiv,
                                 ArrayRef<int64_t> extents, unsigned depth) {
  MLIRContext *ctx = lhs.getContext();
  SmallVector<std::pair<AffineExpr, int64_t>> terms;
  int64_t cst = 0;
  linearize(lhs, 1, terms, cst);
  AffineExpr quot = getAffineConstantExpr(floorDivInt(cst, c), ctx);
  AffineExpr rest = getAffineConstantExpr(cst - floorDivInt(cst, c) * c, ctx);
  int64_t restConst = cst - floorDivInt(cst, c) * c;
  SmallVector<std::pair<AffineExpr, int64_t>> restTerms;
  for (auto [term, coef] : terms) {
    if (coef % c == 0) {
      quot = quot + term * (coef / c);
    } else {
      rest = rest + term * coef;
      restTerms.push_back({term, coef});
    }
  }
  std::optional<IntRange> r = rangeOf(rest, extents);
  if (r && floorDivInt(r->lo, c) == floorDivInt(r->hi, c)) {
    int64_t k = floorDivInt(r->lo, c);
    return wantDiv ? quot + k : rest - k * c;
  }
  // A common factor of the divisor and every remaining coefficient.
  int64_t g = c;
  for (auto [term, coef] : restTerms)
    g = std::gcd(g, std::abs(coef));
  if (g > 1 && depth < kMaxDepth) {
    AffineExpr scaled = getAffineConstantExpr(restConst / g, ctx);
    for (auto [term, coef] : restTerms)
      scaled = scaled + term * (coef / g);
    int64_t r0 = restConst % g;
    AffineExpr inner =
        simplifyDivMod(scaled, c / g, wantDiv, extents, depth + 1);
    return wantDiv ? quot + inner : inner * g + r0;
  }
  return wantDiv ? (quot * c + rest).floorDiv(c) : rest % c;
}

static AffineExpr simplifyRec(AffineExpr e, ArrayRef<int64_t> extents,
                              unsigned depth) {
  if (auto d = dyn_cast<AffineDimExpr>(e)) {
    if (d.getPosition() < extents.size() && extents[d.getPosition()] == 1)
      return getAffineConstantExpr(0, e.getContext());
    return e;
  }
  auto bin = dyn_cast<AffineBinaryOpExpr>(e);
  if (!bin || depth > kMaxDepth)
    return e;
  AffineExpr l = simplifyRec(bin.getLHS(), extents, depth + 1);
  AffineExpr r = simplifyRec(bin.getRHS(), extents, depth + 1);
  switch (e.getKind()) {
  case AffineExprKind::Add:
    return l + r;
  case AffineExprKind::Mul:
    return l * r;
  case AffineExprKind::FloorDiv:
  case AffineExprKind::Mod: {
    auto c = dyn_cast<AffineConstantExpr>(r);
    if (!c || c.getValue() <= 0)
      return e.getKind() == AffineExprKind::Mod ? l % r : l.floorDiv(r);
    return simplifyDivMod(l, c.getValue(),
                          e.getKind() == AffineExprKind::FloorDiv, extents,
                          depth + 1);
  }
  case AffineExprKind::CeilDiv:
    return l.ceilDiv(r);
  default:
    return e;
  }
}

AffineExpr ExprBuilder::simplify(AffineExpr e) const {
  AffineExpr s = simplifyRec(e, extents, 0);
  s = simplifyAffineExpr(s, extents.size(), 0);
  // A second round folds what the canonicalization exposed.
  return simplifyAffineExpr(simplifyRec(s, extents, 0), extents.size(), 0);
}

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

/// Block argument of the reduction being expanded whose appearance makes the
/// expansion invalid (the accumulator must only be combined).
static thread_local Value forbiddenArg;

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
    } else if (isa<arith::ExtFOp, arith::TruncFOp, arith::SIToFPOp,
                   arith::UIToFPOp>(def)) {
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
  bool isMax;
  if (isa<arith::AddFOp, arith::AddIOp>(combine))
    isMax = false;
  else if (isa<arith::MaximumFOp, arith::MaxNumFOp>(combine))
    isMax = true;
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
  return reduce(isMax, bound, initExpr, finish(x));
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
      reduce(true, {rMax}, constant(-std::numeric_limits<double>::infinity()),
             at(dim(rMax)));
  Expr *num =
      arith(ArithKind::Exp, {arith(ArithKind::Sub, {at(e->idx[d]), max})});
  Expr *den = reduce(
      false, {rSum}, constant(0.0),
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

//===----------------------------------------------------------------------===//
// Substitution, comparison, dims
//===----------------------------------------------------------------------===//

static Expr *substituteImpl(ExprBuilder &b, Expr *e,
                            const DenseMap<AffineExpr, AffineExpr> &repl,
                            DenseMap<Expr *, Expr *> &memo, unsigned depth) {
  if (auto it = memo.find(e); it != memo.end())
    return it->second;
  Expr *r = e;
  if (depth <= kMaxDepth) {
    switch (e->kind) {
    case ExprKind::Leaf: {
      SmallVector<AffineExpr> idx;
      for (AffineExpr i : e->idx)
        idx.push_back(i.replace(repl));
      r = b.leaf(e->value, idx);
      break;
    }
    case ExprKind::Const:
      break;
    case ExprKind::Index:
      r = b.index(e->index.replace(repl));
      break;
    case ExprKind::Arith: {
      SmallVector<Expr *> args;
      for (Expr *a : e->args)
        args.push_back(substituteImpl(b, a, repl, memo, depth + 1));
      r = b.arith(e->op, args, e->pred, e->floatResult);
      break;
    }
    case ExprKind::Reduce:
      r = b.reduce(e->isMax, e->bound,
                   substituteImpl(b, e->args[0], repl, memo, depth + 1),
                   substituteImpl(b, e->args[1], repl, memo, depth + 1));
      break;
    }
  }
  memo[e] = r;
  return r;
}

Expr *ExprBuilder::substitute(Expr *e,
                              const DenseMap<unsigned, AffineExpr> &repl) {
  if (repl.empty())
    return e;
  DenseMap<AffineExpr, AffineExpr> map;
  for (auto [d, to] : repl)
    map[dim(d)] = to;
  DenseMap<Expr *, Expr *> memo;
  return substituteImpl(*this, e, map, memo, 0);
}

bool ExprBuilder::equal(Expr *a, Expr *b) {
  DenseMap<unsigned, AffineExpr> rename;
  return equalImpl(a, b, rename, 0);
}

bool ExprBuilder::equalImpl(Expr *a, Expr *b,
                            DenseMap<unsigned, AffineExpr> &rename,
                            unsigned depth) {
  if (depth > kMaxDepth)
    return false;
  if (a == b && rename.empty())
    return true;
  DenseMap<AffineExpr, AffineExpr> map;
  for (auto [d, to] : rename)
    map[dim(d)] = to;
  auto mapped = [&](AffineExpr x) { return simplify(x.replace(map)); };
  a = normalize(a);
  b = normalize(b);
  if (a->kind == ExprKind::Leaf && b->kind == ExprKind::Leaf &&
      a->value == b->value && a->idx.size() == b->idx.size()) {
    bool same = true;
    for (auto [x, y] : llvm::zip(a->idx, b->idx))
      same &= x == mapped(y);
    if (same)
      return true;
  }
  if (a->kind == ExprKind::Leaf || b->kind == ExprKind::Leaf) {
    Expr *pa = a->kind == ExprKind::Leaf ? peel(a) : a;
    Expr *pb = b->kind == ExprKind::Leaf ? peel(b) : b;
    if (pa == a && pb == b)
      return false;
    return equalImpl(pa, pb, rename, depth + 1);
  }
  if (a->kind != b->kind)
    return false;
  switch (a->kind) {
  case ExprKind::Leaf:
    return false;
  case ExprKind::Const:
    return a->cst == b->cst || (std::isnan(a->cst) && std::isnan(b->cst));
  case ExprKind::Index:
    return a->index == mapped(b->index);
  case ExprKind::Arith: {
    if (a->op != b->op || a->pred != b->pred ||
        a->floatResult != b->floatResult || a->args.size() != b->args.size() ||
        a->op == ArithKind::Other)
      return false;
    bool same = true;
    for (auto [x, y] : llvm::zip(a->args, b->args))
      same = same && equalImpl(x, y, rename, depth + 1);
    if (same)
      return true;
    bool commutative = a->op == ArithKind::Add || a->op == ArithKind::Mul ||
                       a->op == ArithKind::Max || a->op == ArithKind::Min;
    return commutative &&
           equalImpl(a->args[0], b->args[1], rename, depth + 1) &&
           equalImpl(a->args[1], b->args[0], rename, depth + 1);
  }
  case ExprKind::Reduce: {
    if (a->isMax != b->isMax || a->bound.size() != b->bound.size())
      return false;
    for (auto [x, y] : llvm::zip(a->bound, b->bound))
      if (extents[x] != extents[y])
        return false;
    DenseMap<unsigned, AffineExpr> inner(rename);
    for (auto [x, y] : llvm::zip(a->bound, b->bound))
      inner[y] = dim(x);
    return equalImpl(a->args[0], b->args[0], rename, depth + 1) &&
           equalImpl(a->args[1], b->args[1], inner, depth + 1);
  }
  }
  return false;
}

static void collectDimsImpl(Expr *e, llvm::SmallDenseSet<unsigned, 8> &dims,
                            unsigned depth) {
  if (depth > kMaxDepth)
    return;
  auto addExpr = [&](AffineExpr x) {
    x.walk([&](AffineExpr s) {
      if (auto d = dyn_cast<AffineDimExpr>(s))
        dims.insert(d.getPosition());
    });
  };
  switch (e->kind) {
  case ExprKind::Leaf:
    for (AffineExpr i : e->idx)
      addExpr(i);
    return;
  case ExprKind::Const:
    return;
  case ExprKind::Index:
    addExpr(e->index);
    return;
  case ExprKind::Arith:
    for (Expr *a : e->args)
      collectDimsImpl(a, dims, depth + 1);
    return;
  case ExprKind::Reduce: {
    collectDimsImpl(e->args[0], dims, depth + 1);
    llvm::SmallDenseSet<unsigned, 8> inner;
    collectDimsImpl(e->args[1], inner, depth + 1);
    for (unsigned d : inner)
      if (!llvm::is_contained(e->bound, d))
        dims.insert(d);
    return;
  }
  }
}

void ExprBuilder::collectDims(Expr *e, llvm::SmallDenseSet<unsigned, 8> &dims) {
  collectDimsImpl(e, dims, 0);
}

bool ExprBuilder::usesDim(Expr *e, unsigned d) {
  llvm::SmallDenseSet<unsigned, 8> dims;
  collectDims(e, dims);
  return dims.contains(d);
}

Expr *ExprBuilder::expandAll(Expr *e, unsigned depth) {
  if (depth > kMaxDepth)
    return e;
  switch (e->kind) {
  case ExprKind::Leaf: {
    Expr *p = peel(e);
    if (p == e ||
        (p->kind == ExprKind::Leaf && p->value == e->value && p->idx == e->idx))
      return p;
    return expandAll(p, depth + 1);
  }
  case ExprKind::Const:
  case ExprKind::Index:
    return e;
  case ExprKind::Arith: {
    SmallVector<Expr *> args;
    for (Expr *a : e->args)
      args.push_back(expandAll(a, depth + 1));
    return arith(e->op, args, e->pred, e->floatResult);
  }
  case ExprKind::Reduce:
    return reduce(e->isMax, e->bound, expandAll(e->args[0], depth + 1),
                  expandAll(e->args[1], depth + 1));
  }
  return e;
}

//===----------------------------------------------------------------------===//
// Evaluation
//===----------------------------------------------------------------------===//

std::optional<int64_t> ExprBuilder::evaluate(AffineExpr e,
                                             ArrayRef<int64_t> values) {
  if (auto d = dyn_cast<AffineDimExpr>(e)) {
    if (d.getPosition() >= values.size())
      return std::nullopt;
    return values[d.getPosition()];
  }
  if (auto c = dyn_cast<AffineConstantExpr>(e))
    return c.getValue();
  auto bin = dyn_cast<AffineBinaryOpExpr>(e);
  if (!bin)
    return std::nullopt;
  std::optional<int64_t> l = evaluate(bin.getLHS(), values);
  std::optional<int64_t> r = evaluate(bin.getRHS(), values);
  if (!l || !r)
    return std::nullopt;
  switch (e.getKind()) {
  case AffineExprKind::Add:
    return *l + *r;
  case AffineExprKind::Mul:
    return *l * *r;
  case AffineExprKind::FloorDiv:
    if (*r == 0)
      return std::nullopt;
    return floorDivInt(*l, *r);
  case AffineExprKind::CeilDiv:
    if (*r == 0)
      return std::nullopt;
    return -floorDivInt(-*l, *r);
  case AffineExprKind::Mod: {
    if (*r == 0)
      return std::nullopt;
    int64_t m = *l % *r;
    return m < 0 ? m + std::abs(*r) : m;
  }
  default:
    return std::nullopt;
  }
}

std::optional<double> ExprBuilder::evaluate(Expr *e, ArrayRef<int64_t> values) {
  SmallVector<int64_t> vals(values.begin(), values.end());
  vals.resize(std::max<size_t>(vals.size(), extents.size()), 0);
  return evalImpl(e, vals, 0);
}

std::optional<double> ExprBuilder::evalImpl(Expr *e,
                                            SmallVectorImpl<int64_t> &values,
                                            unsigned depth) {
  if (depth > kMaxDepth)
    return std::nullopt;
  switch (e->kind) {
  case ExprKind::Const:
    return e->cst;
  case ExprKind::Index: {
    std::optional<int64_t> v = evaluate(e->index, values);
    if (!v)
      return std::nullopt;
    return static_cast<double>(*v);
  }
  case ExprKind::Leaf: {
    auto type = dyn_cast<RankedTensorType>(e->value.getType());
    auto cst = e->value.getDefiningOp<arith::ConstantOp>();
    if (!type || !cst || !type.hasStaticShape())
      return std::nullopt;
    auto dense = dyn_cast<DenseElementsAttr>(cst.getValue());
    if (!dense)
      return std::nullopt;
    int64_t flat = 0;
    for (auto [i, size] : llvm::zip(e->idx, type.getShape())) {
      std::optional<int64_t> v = evaluate(i, values);
      if (!v || *v < 0 || *v >= size)
        return std::nullopt;
      flat = flat * size + *v;
    }
    if (dense.isSplat())
      flat = 0;
    Type et = dense.getElementType();
    if (isa<FloatType>(et))
      return (*(dense.value_begin<APFloat>() + flat)).convertToDouble();
    if (et.isInteger(1))
      return (*(dense.value_begin<bool>() + flat)) ? 1.0 : 0.0;
    if (isa<IntegerType>(et))
      return static_cast<double>(
          (*(dense.value_begin<APInt>() + flat)).getSExtValue());
    return std::nullopt;
  }
  case ExprKind::Arith: {
    SmallVector<double> vals;
    for (Expr *a : e->args) {
      std::optional<double> v = evalImpl(a, values, depth + 1);
      if (!v)
        return std::nullopt;
      vals.push_back(*v);
    }
    return applyArith(e->op, e->pred, vals);
  }
  case ExprKind::Reduce: {
    std::optional<double> acc = evalImpl(e->args[0], values, depth + 1);
    if (!acc)
      return std::nullopt;
    int64_t points = 1;
    for (unsigned d : e->bound) {
      if (extents[d] <= 0 || points * extents[d] > kMaxEvalPoints)
        return std::nullopt;
      points *= extents[d];
    }
    SmallVector<int64_t> saved;
    for (unsigned d : e->bound)
      saved.push_back(values[d]);
    for (int64_t p = 0; p < points; ++p) {
      int64_t rem = p;
      for (unsigned d : e->bound) {
        values[d] = rem % extents[d];
        rem /= extents[d];
      }
      std::optional<double> v = evalImpl(e->args[1], values, depth + 1);
      if (!v)
        return std::nullopt;
      *acc = e->isMax ? std::max(*acc, *v) : *acc + *v;
    }
    for (auto [d, s] : llvm::zip(e->bound, saved))
      values[d] = s;
    return acc;
  }
  }
  return std::nullopt;
}

//===----------------------------------------------------------------------===//
// Helpers for the matchers
//===----------------------------------------------------------------------===//

static void flattenImpl(ExprBuilder &b, Expr *e,
                        SmallVectorImpl<Expr *> &factors, double &coefficient,
                        SmallVectorImpl<Expr *> *originals, unsigned depth) {
  Expr *o = b.open(e);
  if (depth < kMaxDepth && o->kind == ExprKind::Const) {
    coefficient *= o->cst;
    return;
  }
  if (depth < kMaxDepth && o->kind == ExprKind::Arith) {
    if (o->op == ArithKind::Mul) {
      flattenImpl(b, o->args[0], factors, coefficient, originals, depth + 1);
      flattenImpl(b, o->args[1], factors, coefficient, originals, depth + 1);
      return;
    }
    if (o->op == ArithKind::Neg) {
      coefficient = -coefficient;
      flattenImpl(b, o->args[0], factors, coefficient, originals, depth + 1);
      return;
    }
    if (o->op == ArithKind::Pow && isConst(b.open(o->args[1]), 2.0)) {
      flattenImpl(b, o->args[0], factors, coefficient, originals, depth + 1);
      flattenImpl(b, o->args[0], factors, coefficient, originals, depth + 1);
      return;
    }
    if (o->op == ArithKind::Div) {
      Expr *den = b.open(o->args[1]);
      if (den->kind == ExprKind::Const && den->cst != 0.0) {
        coefficient /= den->cst;
        flattenImpl(b, o->args[0], factors, coefficient, originals, depth + 1);
        return;
      }
    }
  }
  factors.push_back(o);
  if (originals)
    originals->push_back(b.normalize(e));
}

void mlir::diffattn::fusion::flattenProduct(
    ExprBuilder &b, Expr *e, SmallVectorImpl<Expr *> &factors,
    double &coefficient, SmallVectorImpl<Expr *> *originals) {
  flattenImpl(b, e, factors, coefficient, originals, 0);
}

bool mlir::diffattn::fusion::isMaskingConstant(Expr *e) {
  return e->kind == ExprKind::Const && e->cst <= -1.0e4;
}

static void dumpImpl(Expr *e, llvm::raw_ostream &os, unsigned depth) {
  if (depth > 12) {
    os << "...";
    return;
  }
  switch (e->kind) {
  case ExprKind::Leaf:
    os << "leaf(";
    if (auto r = dyn_cast<OpResult>(e->value))
      os << r.getOwner()->getName() << "@" << r.getOwner()->getLoc();
    else
      os << "arg";
    os << ")[";
    llvm::interleaveComma(e->idx, os, [&](AffineExpr a) { os << a; });
    os << "]";
    return;
  case ExprKind::Const:
    os << e->cst;
    return;
  case ExprKind::Index:
    os << "idx(" << e->index << ")";
    return;
  case ExprKind::Arith:
    os << "op" << static_cast<int>(e->op) << "(";
    llvm::interleaveComma(e->args, os,
                          [&](Expr *a) { dumpImpl(a, os, depth + 1); });
    os << ")";
    return;
  case ExprKind::Reduce:
    os << (e->isMax ? "max" : "sum") << "[";
    llvm::interleaveComma(e->bound, os);
    os << "](";
    dumpImpl(e->args[0], os, depth + 1);
    os << "; ";
    dumpImpl(e->args[1], os, depth + 1);
    os << ")";
    return;
  }
}

void mlir::diffattn::fusion::dumpExpr(Expr *e) {
  dumpImpl(e, llvm::errs(), 0);
  llvm::errs() << "\n";
}
