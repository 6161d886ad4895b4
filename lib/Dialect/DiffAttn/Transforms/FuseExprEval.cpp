//===- FuseExprEval.cpp - substitution, comparison, evaluation
//--------------===//
//
// Operations over whole element expressions (FuseExpr.h): substituting
// dimensions, structural equality, the dims an expression reads, full
// expansion and evaluation at concrete positions, and the small helpers the
// matchers share (products, masking constants, dumps).
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
      r = b.reduce(e->reduceKind, e->bound,
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
    if (a->reduceKind != b->reduceKind || a->bound.size() != b->bound.size())
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
    return reduce(e->reduceKind, e->bound, expandAll(e->args[0], depth + 1),
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
      switch (e->reduceKind) {
      case ReduceKind::Add:
        *acc += *v;
        break;
      case ReduceKind::Max:
        *acc = std::max(*acc, *v);
        break;
      case ReduceKind::And:
        *acc = (*acc != 0.0 && *v != 0.0) ? 1.0 : 0.0;
        break;
      case ReduceKind::Or:
        *acc = (*acc != 0.0 || *v != 0.0) ? 1.0 : 0.0;
        break;
      }
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
    if (o->op == ArithKind::Pow && isConstExpr(b.open(o->args[1]), 2.0)) {
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
    os << (e->reduceKind == ReduceKind::Max   ? "max"
           : e->reduceKind == ReduceKind::And ? "all"
           : e->reduceKind == ReduceKind::Or  ? "any"
                                              : "sum")
       << "[";
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
