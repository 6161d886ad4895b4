//===- FuseShapes.cpp - symbolic sizes for dynamic views ------------------===//
//
// Sizes as products of symbols, and the proof that a tensor.reshape of a
// computed shape is a sequence of splits and merges (FuseShapes.h).
//
//===----------------------------------------------------------------------===//

#include "FuseShapes.h"
#include "FuseExpr.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/Interfaces/DestinationStyleOpInterface.h"
#include "llvm/ADT/SmallBitVector.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MathExtras.h"

using namespace mlir;
using namespace mlir::diffattn::fusion;

//===----------------------------------------------------------------------===//
// Products
//===----------------------------------------------------------------------===//

bool SizeSymbol::operator<(const SizeSymbol &o) const {
  if (value != o.value)
    return value.getAsOpaquePointer() < o.value.getAsOpaquePointer();
  return dim < o.dim;
}

bool SizeProduct::isNonNegative() const {
  return coef >= 0 &&
         llvm::all_of(syms, [](const SizeSymbol &s) { return s.dim >= 0; });
}

static std::optional<SizeProduct> multiply(const SizeProduct &a,
                                           const SizeProduct &b) {
  SizeProduct p;
  if (llvm::MulOverflow(a.coef, b.coef, p.coef))
    return std::nullopt;
  if (p.coef == 0)
    return p;
  p.syms.append(a.syms.begin(), a.syms.end());
  p.syms.append(b.syms.begin(), b.syms.end());
  llvm::sort(p.syms);
  return p;
}

/// `a / b` when it is exact: b's symbols are a sub-multiset of a's and its
/// coefficient divides a's. (A zero divisor is undefined behaviour in the
/// graph, so it may be assumed not to occur.)
static std::optional<SizeProduct> divideExact(const SizeProduct &a,
                                              const SizeProduct &b) {
  if (b.coef == 0 || a.coef % b.coef != 0)
    return std::nullopt;
  SizeProduct q;
  q.coef = a.coef / b.coef;
  SmallVector<SizeSymbol, 2> rest(a.syms.begin(), a.syms.end());
  for (const SizeSymbol &s : b.syms) {
    auto it = llvm::find(rest, s);
    if (it == rest.end())
      return std::nullopt;
    rest.erase(it);
  }
  q.syms = rest;
  return q;
}

static std::optional<SizeProduct> fromFoldResult(SizeReasoner &r,
                                                 OpFoldResult f) {
  if (auto attr = dyn_cast<Attribute>(f)) {
    if (auto i = dyn_cast<IntegerAttr>(attr))
      return SizeProduct::constant(i.getInt());
    return std::nullopt;
  }
  return r.valueOf(cast<Value>(f));
}

//===----------------------------------------------------------------------===//
// Values
//===----------------------------------------------------------------------===//

std::optional<SizeProduct> SizeReasoner::sizeOf(Value shaped, int64_t dim) {
  return sizeImpl(shaped, dim, 0);
}

std::optional<SizeProduct> SizeReasoner::valueOf(Value v) {
  return valueImpl(v, 0);
}

std::optional<bool> SizeReasoner::truthOf(Value v) { return truthImpl(v, 0); }

std::optional<SizeProduct> SizeReasoner::sizeImpl(Value shaped, int64_t dim,
                                                  unsigned depth) {
  auto type = dyn_cast<RankedTensorType>(shaped.getType());
  if (!type || dim < 0 || dim >= type.getRank())
    return std::nullopt;
  if (!type.isDynamicDim(dim))
    return SizeProduct::constant(type.getDimSize(dim));
  auto key = std::make_pair(shaped, dim);
  if (auto it = sizeMemo.find(key); it != sizeMemo.end())
    return it->second;
  SizeProduct opaque;
  opaque.syms.push_back({shaped, dim});
  std::optional<SizeProduct> result = opaque;
  Operation *def = shaped.getDefiningOp();
  if (depth > kMaxDepth || !def) {
    // A block argument (or too deep): its own symbol.
  } else if (auto empty = dyn_cast<tensor::EmptyOp>(def)) {
    result = valueImpl(empty.getDynamicSize(dim), depth + 1);
  } else if (auto castOp = dyn_cast<tensor::CastOp>(def)) {
    result = sizeImpl(castOp.getSource(), dim, depth + 1);
  } else if (auto expand = dyn_cast<tensor::ExpandShapeOp>(def)) {
    result = fromFoldResult(*this, expand.getMixedOutputShape()[dim]);
  } else if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(def)) {
    std::optional<SizeProduct> p = SizeProduct::constant(1);
    for (int64_t d : collapse.getReassociationIndices()[dim]) {
      std::optional<SizeProduct> s = sizeImpl(collapse.getSrc(), d, depth + 1);
      p = (p && s) ? multiply(*p, *s) : std::nullopt;
    }
    result = p;
  } else if (auto slice = dyn_cast<tensor::ExtractSliceOp>(def)) {
    llvm::SmallBitVector dropped = slice.getDroppedDims();
    SmallVector<OpFoldResult> sizes = slice.getMixedSizes();
    int64_t r = 0;
    for (auto [d, s] : llvm::enumerate(sizes)) {
      if (dropped.test(d))
        continue;
      if (r++ == dim) {
        result = fromFoldResult(*this, s);
        break;
      }
    }
  } else if (auto reshape = dyn_cast<tensor::ReshapeOp>(def)) {
    Value shape = reshape.getShape();
    if (auto elems = shape.getDefiningOp<tensor::FromElementsOp>()) {
      result = valueImpl(elems.getElements()[dim], depth + 1);
    } else if (auto cst = shape.getDefiningOp<arith::ConstantOp>()) {
      if (auto dense = dyn_cast<DenseIntElementsAttr>(cst.getValue()))
        result = SizeProduct::constant(
            (*(dense.getValues<APInt>().begin() + dim)).getSExtValue());
    }
  } else if (auto concat = dyn_cast<tensor::ConcatOp>(def)) {
    if (static_cast<int64_t>(concat.getDim()) != dim)
      result = sizeImpl(concat.getInputs().front(), dim, depth + 1);
  } else if (auto dps = dyn_cast<DestinationStyleOpInterface>(def)) {
    if (OpOperand *init = dps.getTiedOpOperand(cast<OpResult>(shaped)))
      result = sizeImpl(init->get(), dim, depth + 1);
  }
  sizeMemo[key] = result;
  return result;
}

std::optional<SizeProduct> SizeReasoner::valueImpl(Value v, unsigned depth) {
  if (!v || !(v.getType().isIntOrIndex()))
    return std::nullopt;
  if (auto it = valueMemo.find(v); it != valueMemo.end())
    return it->second;
  SizeProduct opaque;
  opaque.syms.push_back({v, -1});
  std::optional<SizeProduct> result = opaque;
  Operation *def = v.getDefiningOp();
  auto operand = [&](unsigned i) {
    return valueImpl(def->getOperand(i), depth + 1);
  };
  if (depth > kMaxDepth || !def) {
    // A block argument (or too deep): its own symbol.
  } else if (auto cst = dyn_cast<arith::ConstantOp>(def)) {
    if (auto i = dyn_cast<IntegerAttr>(cst.getValue()))
      result = SizeProduct::constant(
          i.getType().isInteger(1) ? static_cast<int64_t>(i.getValue() != 0)
                                   : i.getValue().getSExtValue());
  } else if (auto dimOp = dyn_cast<tensor::DimOp>(def)) {
    if (std::optional<int64_t> d = dimOp.getConstantIndex())
      result = sizeImpl(dimOp.getSource(), *d, depth + 1);
  } else if (isa<arith::IndexCastOp, arith::IndexCastUIOp, arith::ExtSIOp,
                 arith::ExtUIOp>(def)) {
    // Sizes fit every integer type the casts go between.
    if (def->getOperand(0).getType().isInteger(1)) {
      if (std::optional<bool> t = truthImpl(def->getOperand(0), depth + 1))
        result = SizeProduct::constant(*t ? 1 : 0);
    } else {
      result = operand(0);
    }
  } else if (isa<arith::MulIOp>(def)) {
    std::optional<SizeProduct> a = operand(0), b = operand(1);
    if (a && b)
      result = multiply(*a, *b);
  } else if (isa<arith::DivSIOp, arith::DivUIOp, arith::FloorDivSIOp,
                 arith::CeilDivSIOp, arith::CeilDivUIOp>(def)) {
    std::optional<SizeProduct> a = operand(0), b = operand(1);
    if (a && b)
      if (std::optional<SizeProduct> q = divideExact(*a, *b))
        result = q;
  } else if (isa<arith::AddIOp, arith::SubIOp>(def)) {
    std::optional<SizeProduct> a = operand(0), b = operand(1);
    bool sub = isa<arith::SubIOp>(def);
    int64_t c = 0;
    if (a && b && a->isConstant() && b->isConstant() &&
        !(sub ? llvm::SubOverflow(a->coef, b->coef, c)
              : llvm::AddOverflow(a->coef, b->coef, c)))
      result = SizeProduct::constant(c);
    else if (a && b && b->isConstant() && b->coef == 0)
      result = a;
    else if (!sub && a && b && a->isConstant() && a->coef == 0)
      result = b;
  } else if (auto sel = dyn_cast<arith::SelectOp>(def)) {
    std::optional<bool> c = truthImpl(sel.getCondition(), depth + 1);
    std::optional<SizeProduct> t = operand(1), f = operand(2);
    if (c)
      result = *c ? t : f;
    else if (t && f && *t == *f)
      result = t;
  }
  valueMemo[v] = result;
  return result;
}

std::optional<bool> SizeReasoner::truthImpl(Value v, unsigned depth) {
  if (!v || !v.getType().isInteger(1) || depth > kMaxDepth)
    return std::nullopt;
  Operation *def = v.getDefiningOp();
  if (!def)
    return std::nullopt;
  if (auto cst = dyn_cast<arith::ConstantOp>(def)) {
    if (auto i = dyn_cast<IntegerAttr>(cst.getValue()))
      return i.getValue() != 0;
    return std::nullopt;
  }
  if (isa<arith::AndIOp, arith::OrIOp, arith::XOrIOp>(def)) {
    std::optional<bool> a = truthImpl(def->getOperand(0), depth + 1);
    std::optional<bool> b = truthImpl(def->getOperand(1), depth + 1);
    if (isa<arith::AndIOp>(def) && ((a && !*a) || (b && !*b)))
      return false;
    if (isa<arith::OrIOp>(def) && ((a && *a) || (b && *b)))
      return true;
    if (!a || !b)
      return std::nullopt;
    if (isa<arith::AndIOp>(def))
      return *a && *b;
    if (isa<arith::OrIOp>(def))
      return *a || *b;
    return *a != *b;
  }
  auto cmp = dyn_cast<arith::CmpIOp>(def);
  if (!cmp)
    return std::nullopt;
  std::optional<SizeProduct> a = valueImpl(cmp.getLhs(), depth + 1);
  std::optional<SizeProduct> b = valueImpl(cmp.getRhs(), depth + 1);
  if (!a || !b)
    return std::nullopt;
  using P = arith::CmpIPredicate;
  P pred = cmp.getPredicate();
  if (a->isConstant() && b->isConstant()) {
    int64_t x = a->coef, y = b->coef;
    switch (pred) {
    case P::eq:
      return x == y;
    case P::ne:
      return x != y;
    case P::slt:
      return x < y;
    case P::sle:
      return x <= y;
    case P::sgt:
      return x > y;
    case P::sge:
      return x >= y;
    case P::ult:
      return static_cast<uint64_t>(x) < static_cast<uint64_t>(y);
    case P::ule:
      return static_cast<uint64_t>(x) <= static_cast<uint64_t>(y);
    case P::ugt:
      return static_cast<uint64_t>(x) > static_cast<uint64_t>(y);
    case P::uge:
      return static_cast<uint64_t>(x) >= static_cast<uint64_t>(y);
    }
  }
  if (*a == *b) {
    switch (pred) {
    case P::eq:
    case P::sle:
    case P::sge:
    case P::ule:
    case P::uge:
      return true;
    default:
      return false;
    }
  }
  // A size against 0: never negative.
  bool aZero = a->isConstant() && a->coef == 0;
  bool bZero = b->isConstant() && b->coef == 0;
  if (bZero && a->isNonNegative()) {
    if (pred == P::sge || pred == P::uge)
      return true;
    if (pred == P::slt || pred == P::ult)
      return false;
  }
  if (aZero && b->isNonNegative()) {
    if (pred == P::sle || pred == P::ule)
      return true;
    if (pred == P::sgt || pred == P::ugt)
      return false;
  }
  return std::nullopt;
}

std::optional<SizeProduct> SizeReasoner::loopSize(linalg::LinalgOp op,
                                                  unsigned loop) {
  SmallVector<int64_t> ranges = op.getStaticLoopRanges();
  if (loop >= ranges.size())
    return std::nullopt;
  if (!ShapedType::isDynamic(ranges[loop]))
    return SizeProduct::constant(ranges[loop]);
  // The outputs first: their shape is the iteration space of a gather.
  SmallVector<OpOperand *> operands;
  for (OpOperand &o : op.getDpsInitsMutable())
    operands.push_back(&o);
  for (OpOperand *o : op.getDpsInputOperands())
    operands.push_back(o);
  for (OpOperand *o : operands) {
    if (!isa<RankedTensorType>(o->get().getType()))
      continue;
    AffineMap map = op.getMatchingIndexingMap(o);
    for (auto [pos, r] : llvm::enumerate(map.getResults()))
      if (auto d = dyn_cast<AffineDimExpr>(r); d && d.getPosition() == loop)
        return sizeOf(o->get(), pos);
  }
  return std::nullopt;
}

//===----------------------------------------------------------------------===//
// Reshapes
//===----------------------------------------------------------------------===//

std::optional<SmallVector<AffineExpr>> mlir::diffattn::fusion::regroupIndex(
    ArrayRef<AffineExpr> dstIdx, ArrayRef<int64_t> dstSizes,
    ArrayRef<int64_t> srcSizes, MLIRContext *ctx) {
  // Linearize the result index (unit dims are always 0).
  std::optional<AffineExpr> linear;
  for (auto [i, size] : llvm::zip(dstIdx, dstSizes)) {
    if (size == 1)
      continue;
    if (!linear) {
      linear = i;
      continue;
    }
    if (ShapedType::isDynamic(size))
      return std::nullopt;
    linear = *linear * size + i;
  }
  bool srcNonUnit = llvm::any_of(srcSizes, [](int64_t s) { return s != 1; });
  if (!linear && srcNonUnit)
    return std::nullopt;
  SmallVector<AffineExpr> src(srcSizes.size(), getAffineConstantExpr(0, ctx));
  if (!srcNonUnit)
    return linear ? std::nullopt : std::optional<SmallVector<AffineExpr>>(src);
  // Split it over the source dims, the first non-unit one unbounded.
  int64_t first = llvm::find_if(srcSizes, [](int64_t s) { return s != 1; }) -
                  srcSizes.begin();
  int64_t stride = 1;
  for (int64_t d = srcSizes.size() - 1; d >= first; --d) {
    if (srcSizes[d] == 1)
      continue;
    AffineExpr part = stride == 1 ? *linear : linear->floorDiv(stride);
    if (d == first) {
      src[d] = part;
      break;
    }
    if (ShapedType::isDynamic(srcSizes[d]))
      return std::nullopt;
    src[d] = part % srcSizes[d];
    stride *= srcSizes[d];
  }
  return src;
}

/// Products of `sizes[from, to)`; nullopt when one is unknown.
static std::optional<SizeProduct>
productOf(ArrayRef<std::optional<SizeProduct>> sizes, size_t from, size_t to) {
  std::optional<SizeProduct> p = SizeProduct::constant(1);
  for (size_t k = from; k < to && p; ++k)
    p = sizes[k] ? multiply(*p, *sizes[k]) : std::nullopt;
  return p;
}

static int64_t staticOf(const std::optional<SizeProduct> &s) {
  return s && s->isConstant() ? s->coef : ShapedType::kDynamic;
}

std::optional<SmallVector<ReshapeGroup>>
mlir::diffattn::fusion::reshapeGroups(tensor::ReshapeOp op, SizeReasoner &sizes,
                                      std::string &why) {
  auto srcType = cast<RankedTensorType>(op.getSource().getType());
  auto dstType = cast<RankedTensorType>(op.getResult().getType());
  size_t n = srcType.getRank(), m = dstType.getRank();
  SmallVector<std::optional<SizeProduct>> src, dst;
  for (size_t k = 0; k < n; ++k)
    src.push_back(sizes.sizeOf(op.getSource(), k));
  for (size_t k = 0; k < m; ++k)
    dst.push_back(sizes.sizeOf(op.getResult(), k));
  // A cut (i, j): the source's dims before i hold as many elements as the
  // result's before j. The reshape keeps the element count, so equal
  // products after the cut prove it as well (when a product is 0 the
  // tensor is empty and any reading is vacuous).
  auto isCut = [&](size_t i, size_t j) {
    return sizes.equal(productOf(src, 0, i), productOf(dst, 0, j)) ||
           sizes.equal(productOf(src, i, n), productOf(dst, j, m));
  };
  SmallVector<ReshapeGroup> groups;
  size_t i = 0, j = 0;
  while (i < n || j < m) {
    // The nearest cut after (i, j): the finest grouping.
    std::optional<std::pair<size_t, size_t>> next;
    for (size_t total = i + j + 1; total <= n + m && !next; ++total)
      for (size_t a = i; a <= n && a <= total && !next; ++a) {
        size_t c = total - a;
        if (c >= j && c <= m && isCut(a, c))
          next = std::make_pair(a, c);
      }
    if (!next) {
      why = "its shape is not provably a split or merge of its source's dims";
      return std::nullopt;
    }
    ReshapeGroup g;
    SmallVector<int64_t> srcSizes, dstSizes;
    for (size_t k = i; k < next->first; ++k) {
      g.src.push_back(k);
      srcSizes.push_back(staticOf(src[k]));
    }
    for (size_t k = j; k < next->second; ++k) {
      g.dst.push_back(k);
      dstSizes.push_back(staticOf(dst[k]));
    }
    SmallVector<AffineExpr> probe;
    MLIRContext *ctx = op.getContext();
    for (size_t k = 0; k < g.dst.size(); ++k)
      probe.push_back(getAffineDimExpr(k, ctx));
    if (!regroupIndex(probe, dstSizes, srcSizes, ctx)) {
      why = llvm::formatv("it regroups source dims [{0}, {1}) as result dims "
                          "[{2}, {3}) with a dynamic size that is not the "
                          "first of its group",
                          i, next->first, j, next->second)
                .str();
      return std::nullopt;
    }
    groups.push_back(std::move(g));
    i = next->first;
    j = next->second;
  }
  return groups;
}
