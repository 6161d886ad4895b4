//===- FuseExprNodes.cpp - expression nodes and affine folding
//--------------===//
//
// The node constructors of the diffattn-fuse element expressions (FuseExpr.h),
// constant folding of arithmetic nodes, and the affine simplifier that uses
// the extents of the global dimensions to fold the floordiv/mod that
// reshapes introduce.
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

std::optional<double> mlir::diffattn::fusion::applyArith(ArithKind op,
                                                         int64_t pred,
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
  if (op == ArithKind::Mul && isConstExpr(args[1], 1.0))
    return args[0];
  if (op == ArithKind::Mul && isConstExpr(args[0], 1.0))
    return args[1];
  if ((op == ArithKind::Add || op == ArithKind::Sub) &&
      isConstExpr(args[1], 0.0))
    return args[0];
  if (op == ArithKind::Add && isConstExpr(args[0], 0.0))
    return args[1];
  if (op == ArithKind::Div && isConstExpr(args[1], 1.0))
    return args[0];
  Expr *e = create(ExprKind::Arith);
  e->op = op;
  e->pred = pred;
  e->floatResult = floatResult;
  e->args.assign(args.begin(), args.end());
  return e;
}

Expr *ExprBuilder::reduce(ReduceKind kind, ArrayRef<unsigned> bound, Expr *init,
                          Expr *body) {
  Expr *e = create(ExprKind::Reduce);
  e->reduceKind = kind;
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
