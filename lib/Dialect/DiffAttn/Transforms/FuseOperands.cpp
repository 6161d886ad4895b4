//===- FuseOperands.cpp - roles, operand plans and emission ---------------===//
//
// The role and emission phases of diffattn-fuse's matcher (FuseMatcher.h),
// shared by V1 and V2: which root dim is batch, query position, head pair and
// value channel (one loop over the 24 orders); how the fused op's BSHD
// operands read the graph's own tensors (a plan: base tensor + affine map,
// materialised as one gather linalg.generic unless it is the identity); and
// the emission that verifies every new op before it replaces anything, so the
// pass never leaves invalid IR behind.
//
//===----------------------------------------------------------------------===//

#include "FuseMatcher.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Transforms/RegionUtils.h"
#include "llvm/ADT/ScopeExit.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

//===----------------------------------------------------------------------===//
// Roles
//===----------------------------------------------------------------------===//

SmallVector<std::array<unsigned, 4>> mlir::diffattn::fusion::roleOrders() {
  SmallVector<std::array<unsigned, 4>> orders = {{0, 1, 2, 3}, {0, 2, 1, 3}};
  std::array<unsigned, 4> p = {0, 1, 2, 3};
  do {
    if (!llvm::is_contained(orders, p))
      orders.push_back(p);
  } while (std::next_permutation(p.begin(), p.end()));
  return orders;
}

bool Matcher::usesOnly(Expr *leaf, ArrayRef<unsigned> allowed, StringRef what) {
  llvm::SmallDenseSet<unsigned, 8> dims;
  b.collectDims(leaf, dims);
  for (unsigned d : dims)
    if (!llvm::is_contained(allowed, d))
      return fail(kRoles, llvm::formatv("{0} is not indexed as expected for "
                                        "its role",
                                        what)
                              .str());
  return true;
}

bool Matcher::termsUseOnly(const Term &t0, const Term &t1, const Roles &r) {
  return usesOnly(t0.q, {r.batch, r.query, r.head, dDim}, "q") &&
         usesOnly(t1.q, {r.batch, r.query, r.head, dDim}, "q") &&
         usesOnly(t0.k, {r.batch, tDim, r.head, dDim}, "k") &&
         usesOnly(t1.k, {r.batch, tDim, r.head, dDim}, "k") &&
         usesOnly(t0.v, {r.batch, tDim, r.head, r.value}, "v") &&
         usesOnly(t1.v, {r.batch, tDim, r.head, r.value}, "v");
}

SmallVector<AffineExpr>
Matcher::headIndex(Expr *leaf, unsigned headDim, AffineExpr h,
                   const DenseMap<unsigned, AffineExpr> &ren) {
  DenseMap<AffineExpr, AffineExpr> map;
  for (auto [d, to] : ren)
    map[b.dim(d)] = to;
  map[b.dim(headDim)] = h;
  SmallVector<AffineExpr> out;
  for (AffineExpr i : leaf->idx)
    out.push_back(b.simplify(i.replace(map)));
  return out;
}

int64_t Matcher::pairsPerKvHead(const Term &t, unsigned headDim,
                                int64_t numPairs,
                                const DenseMap<unsigned, AffineExpr> &ren) {
  MLIRContext *ctx = b.getContext();
  for (int64_t r = numPairs; r > 1; --r) {
    if (numPairs % r)
      continue;
    bool ok = true;
    for (int64_t h = 0; h < numPairs && ok; ++h) {
      AffineExpr first = cst(ctx, (h / r) * r), self = cst(ctx, h);
      ok = headIndex(t.k, headDim, self, ren) ==
               headIndex(t.k, headDim, first, ren) &&
           headIndex(t.v, headDim, self, ren) ==
               headIndex(t.v, headDim, first, ren);
    }
    if (ok)
      return r;
  }
  return 1;
}

static bool isSupportedElementType(Type t) {
  return t.isF32() || t.isF16() || t.isBF16();
}

Type Matcher::commonElementType(const Term &t) {
  Type elemType = elementTypeOf(t.q->value);
  if (!isSupportedElementType(elemType) ||
      elementTypeOf(t.k->value) != elemType ||
      elementTypeOf(t.v->value) != elemType ||
      elementTypeOf(root) != elemType) {
    auto str = [](Type t) {
      std::string s;
      llvm::raw_string_ostream os(s);
      t.print(os);
      return s;
    };
    fail(kOperands,
         llvm::formatv("q, k, v and the result must share one element type "
                       "among f32, f16 and bf16 (they are {0}, {1}, {2} and "
                       "{3})",
                       str(elemType), str(elementTypeOf(t.k->value)),
                       str(elementTypeOf(t.v->value)),
                       str(elementTypeOf(root))));
    return Type();
  }
  return elemType;
}

bool Matcher::checkShapes(ArrayRef<Value> values) {
  for (Value v : values)
    if (!isa<RankedTensorType>(v.getType()))
      return fail(kOperands, "an operand is not a ranked tensor");
  return true;
}

//===----------------------------------------------------------------------===//
// Operand plans
//===----------------------------------------------------------------------===//

/// kDynamic for unknown extents.
static int64_t shapeOf(int64_t extent) {
  return extent < 0 ? ShapedType::kDynamic : extent;
}

bool Matcher::planSizes(OperandPlan &p, StringRef what) {
  p.dynamicFrom.assign(p.shape.size(), -1);
  for (auto [k, size] : llvm::enumerate(p.shape)) {
    if (!ShapedType::isDynamic(size))
      continue;
    for (auto [n, e] : llvm::enumerate(p.map))
      if (auto d = dyn_cast<AffineDimExpr>(e);
          d && d.getPosition() == p.dims[k])
        p.dynamicFrom[k] = n;
    if (p.dynamicFrom[k] < 0)
      return fail(kOperands,
                  llvm::formatv("a dynamic batch or sequence dimension of {0} "
                                "is not read as one dimension of its tensor",
                                what));
  }
  return true;
}

bool Matcher::planQuery(const Term &t0, const Term &t1, const Roles &r,
                        int64_t numPairs, OperandPlan &plan) {
  MLIRContext *ctx = b.getContext();
  unsigned fb = b.newDim(b.extent(r.batch)), fi = b.newDim(b.extent(r.query)),
           fj = b.newDim(2 * numPairs), fd = b.newDim(b.extent(dDim));
  DenseMap<unsigned, AffineExpr> ren = {
      {r.batch, b.dim(fb)}, {r.query, b.dim(fi)}, {dDim, b.dim(fd)}};
  SmallVector<AffineExpr> phi0 = headIndex(t0.q, r.head, cst(ctx, 0), ren);
  SmallVector<AffineExpr> phi1 = headIndex(t1.q, r.head, cst(ctx, 0), ren);
  SmallVector<int64_t> delta;
  for (auto [x, y] : llvm::zip(phi0, phi1)) {
    auto d = dyn_cast<AffineConstantExpr>(b.simplify(y - x));
    if (!d)
      return fail(kOperands, "the two attentions of a pair do not read query "
                             "heads a fixed distance apart");
    delta.push_back(d.getValue());
  }
  auto firstNonZero = llvm::find_if(delta, [](int64_t d) { return d != 0; });
  if (firstNonZero == delta.end())
    return fail(kOperands, "both attentions of a pair read the same query "
                           "head");
  if (*firstNonZero < 0)
    return fail(kOperands, "the subtraction is in the other order: the "
                           "second query head of each pair is the one "
                           "subtracted from");
  // q'[b, i, 2h + s, d] = q[phi_0(h) + s * delta].
  AffineExpr j = b.dim(fj);
  SmallVector<AffineExpr> sym = headIndex(t0.q, r.head, j.floorDiv(2), ren);
  for (auto [k, d] : llvm::enumerate(delta))
    sym[k] = b.simplify(sym[k] + (j % 2) * d);
  for (int64_t h = 0; h < numPairs; ++h) {
    for (int s = 0; s < 2; ++s) {
      SmallVector<AffineExpr> want =
          headIndex(s ? t1.q : t0.q, r.head, cst(ctx, h), ren);
      for (auto [k, e] : llvm::enumerate(sym)) {
        AffineExpr got = b.simplify(e.replace(
            DenseMap<AffineExpr, AffineExpr>{{j, cst(ctx, 2 * h + s)}}));
        if (got != want[k])
          return fail(kOperands, "the query heads of the pairs do not form "
                                 "one strided layout");
      }
    }
  }
  plan.base = t0.q->value;
  plan.map = sym;
  plan.dims = {fb, fi, fj, fd};
  plan.shape = {shapeOf(b.extent(r.batch)), shapeOf(b.extent(r.query)),
                2 * numPairs, shapeOf(b.extent(dDim))};
  return planSizes(plan, "q");
}

std::string Matcher::queryHeads(const Term &t0, const Term &t1, const Roles &r,
                                int64_t h) {
  MLIRContext *ctx = b.getContext();
  DenseMap<unsigned, AffineExpr> none;
  SmallVector<AffineExpr> a = headIndex(t0.q, r.head, cst(ctx, h), none);
  SmallVector<AffineExpr> c = headIndex(t1.q, r.head, cst(ctx, h), none);
  SmallVector<std::string> x, y;
  for (auto [u, v] : llvm::zip(a, c)) {
    if (u == v)
      continue;
    auto str = [](AffineExpr e) {
      std::string s;
      llvm::raw_string_ostream os(s);
      e.print(os);
      return s;
    };
    x.push_back(str(u));
    y.push_back(str(v));
  }
  auto join = [](ArrayRef<std::string> parts) {
    std::string s = llvm::join(parts, ", ");
    return parts.size() == 1 ? s : "(" + s + ")";
  };
  return llvm::formatv("query heads {0} and {1} (pair {2})", join(x), join(y),
                       h)
      .str();
}

OperandPlan Matcher::kvPlan(Expr *leaf, const Roles &r, unsigned channel,
                            int64_t width, int64_t numKv, int64_t pairsPerKv,
                            Type elementType) {
  OperandPlan p;
  unsigned kb = b.newDim(b.extent(r.batch)), kt = b.newDim(b.extent(tDim)),
           kg = b.newDim(numKv), kd = b.newDim(width);
  DenseMap<unsigned, AffineExpr> ren = {
      {r.batch, b.dim(kb)}, {tDim, b.dim(kt)}, {channel, b.dim(kd)}};
  p.base = leaf->value;
  p.map = headIndex(leaf, r.head, b.dim(kg) * pairsPerKv, ren);
  p.dims = {kb, kt, kg, kd};
  p.shape = {shapeOf(b.extent(r.batch)), shapeOf(b.extent(tDim)), numKv, width};
  p.elementType = elementType;
  return p;
}

Value Matcher::planSize(OpBuilder &builder, Location loc, const OperandPlan &p,
                        unsigned k) {
  return tensor::DimOp::create(builder, loc, p.base, p.dynamicFrom[k]);
}

/// Splits `e` into a plan dim plus a constant.
static std::optional<std::pair<unsigned, int64_t>>
dimPlusConstant(AffineExpr e) {
  int64_t c = 0;
  if (auto bin = dyn_cast<AffineBinaryOpExpr>(e);
      bin && e.getKind() == AffineExprKind::Add) {
    auto k = dyn_cast<AffineConstantExpr>(bin.getRHS());
    if (!k)
      return std::nullopt;
    c = k.getValue();
    e = bin.getLHS();
  }
  if (auto d = dyn_cast<AffineDimExpr>(e))
    return std::make_pair(d.getPosition(), c);
  return std::nullopt;
}

Value Matcher::materialize(OpBuilder &builder, Location loc,
                           const OperandPlan &planIn) {
  MLIRContext *ctx = builder.getContext();
  OperandPlan p = planIn;
  // Where the plan reads a dim of the base as `plan dim + c` (q/k/v sliced
  // from a packed projection, or a narrower read), slice the base first: a
  // linalg operand must span exactly its loops' ranges.
  auto baseType = cast<RankedTensorType>(p.base.getType());
  // Per base dim: the constant offset and static extent of a `dim + c` read.
  SmallVector<std::optional<std::pair<int64_t, int64_t>>> window;
  bool needSlice = false;
  for (auto [n, e] : llvm::enumerate(p.map)) {
    window.push_back(std::nullopt);
    std::optional<std::pair<unsigned, int64_t>> dc = dimPlusConstant(e);
    auto pos = dc ? llvm::find(p.dims, dc->first) : p.dims.end();
    if (pos == p.dims.end())
      continue;
    int64_t extent = p.shape[pos - p.dims.begin()];
    int64_t baseSize = baseType.getDimSize(n);
    if (ShapedType::isDynamic(extent) || ShapedType::isDynamic(baseSize))
      continue; // dynamic dims are read whole (planSizes made sure of it)
    window.back() = std::make_pair(dc->second, extent);
    p.map[n] = b.dim(dc->first);
    needSlice |= dc->second != 0 || extent != baseSize;
  }
  if (needSlice) {
    SmallVector<OpFoldResult> offsets, sizes,
        strides(p.map.size(), builder.getIndexAttr(1));
    for (auto [n, w] : llvm::enumerate(window)) {
      if (w) {
        offsets.push_back(builder.getIndexAttr(w->first));
        sizes.push_back(builder.getIndexAttr(w->second));
        continue;
      }
      offsets.push_back(builder.getIndexAttr(0));
      int64_t baseSize = baseType.getDimSize(n);
      sizes.push_back(
          ShapedType::isDynamic(baseSize)
              ? OpFoldResult(
                    tensor::DimOp::create(builder, loc, p.base, n).getResult())
              : OpFoldResult(builder.getIndexAttr(baseSize)));
    }
    p.base = tensor::ExtractSliceOp::create(builder, loc, p.base, offsets,
                                            sizes, strides);
    baseType = cast<RankedTensorType>(p.base.getType());
  }
  bool identity = baseType.getShape() == ArrayRef<int64_t>(p.shape) &&
                  baseType.getElementType() == p.elementType &&
                  p.map.size() == p.dims.size();
  for (auto [k, e] : llvm::enumerate(p.map))
    identity = identity && k < p.dims.size() &&
               (e == b.dim(p.dims[k]) ||
                (p.shape[k] == 1 && e == getAffineConstantExpr(0, ctx)));
  if (identity)
    return p.base;
  DenseMap<AffineExpr, AffineExpr> local;
  for (auto [k, d] : llvm::enumerate(p.dims))
    local[b.dim(d)] = getAffineDimExpr(k, ctx);
  SmallVector<AffineExpr> results;
  for (AffineExpr e : p.map)
    results.push_back(e.replace(local));
  AffineMap inMap = AffineMap::get(p.dims.size(), 0, results, ctx);
  AffineMap outMap = AffineMap::getMultiDimIdentityMap(p.dims.size(), ctx);
  SmallVector<Value> dynSizes;
  for (auto [k, size] : llvm::enumerate(p.shape))
    if (ShapedType::isDynamic(size))
      dynSizes.push_back(planSize(builder, loc, p, k));
  Value init =
      tensor::EmptyOp::create(builder, loc, p.shape, p.elementType, dynSizes);
  SmallVector<utils::IteratorType> iters(p.dims.size(),
                                         utils::IteratorType::parallel);
  auto gather = linalg::GenericOp::create(
      builder, loc, init.getType(), ValueRange{p.base}, ValueRange{init},
      ArrayRef<AffineMap>{inMap, outMap}, iters,
      [&](OpBuilder &nb, Location nloc, ValueRange args) {
        Value v = args[0];
        Type from = v.getType();
        if (from != p.elementType) {
          if (from.getIntOrFloatBitWidth() <
              p.elementType.getIntOrFloatBitWidth())
            v = arith::ExtFOp::create(nb, nloc, p.elementType, v);
          else
            v = arith::TruncFOp::create(nb, nloc, p.elementType, v);
        }
        linalg::YieldOp::create(nb, nloc, v);
      });
  return gather.getResult(0);
}

//===----------------------------------------------------------------------===//
// The role loop
//===----------------------------------------------------------------------===//

FuseAttempt Matcher::forEachRoles(
    RewriterBase &rewriter, Term &t0, Term &t1,
    function_ref<bool(const Roles &)> accept,
    function_ref<std::optional<FuseAttempt>(const Roles &, const MaskInfo &,
                                            OperandPlan &)>
        finish) {
  (void)rewriter;
  for (const std::array<unsigned, 4> &order : roleOrders()) {
    // On a tie, the earlier (more plausible: BSHD, then BHSD) reading of
    // the dims keeps its message.
    int savedStage = bestStage;
    std::string savedMessage = bestMessage;
    auto restoreTie = llvm::scope_exit([&] {
      if (bestStage == savedStage && savedStage > 0)
        bestMessage = savedMessage;
    });
    Roles r{rootDims[order[0]], rootDims[order[1]], rootDims[order[2]],
            rootDims[order[3]], order};
    if (!termsUseOnly(t0, t1, r) || !accept(r))
      continue;
    if (!b.usesDim(t0.q, r.query) && b.extent(r.query) != 1)
      continue;
    int64_t numPairs = b.extent(r.head);
    if (numPairs <= 0 || b.extent(dDim) <= 0 || b.extent(r.value) <= 0) {
      fail(kRoles, "the head count or a head dimension is dynamic");
      continue;
    }
    std::optional<MaskInfo> mask = commonMask(t0, t1, r.query);
    if (!mask)
      continue;
    OperandPlan q;
    if (!planQuery(t0, t1, r, numPairs, q))
      continue;
    if (std::optional<FuseAttempt> a = finish(r, *mask, q))
      return *a;
  }
  return failure();
}

//===----------------------------------------------------------------------===//
// Emission
//===----------------------------------------------------------------------===//

namespace {
/// Records the ops a builder inserts.
struct InsertionRecorder : public OpBuilder::Listener {
  void notifyOperationInserted(Operation *op, OpBuilder::InsertPoint) override {
    ops.push_back(op);
  }
  SmallVector<Operation *> ops;
};
} // namespace

Value Matcher::replaceRoot(RewriterBase &rewriter, Value fused,
                           ArrayRef<unsigned> roles) {
  // roles[k]: which fused dimension root dimension k is.
  bool identity = true;
  for (auto [k, r] : llvm::enumerate(roles))
    identity &= k == r;
  if (identity)
    return fused;
  auto rootType = cast<RankedTensorType>(root.getType());
  Location loc = root.getLoc();
  SmallVector<Value> dynSizes;
  for (auto [k, size] : llvm::enumerate(rootType.getShape()))
    if (ShapedType::isDynamic(size))
      dynSizes.push_back(tensor::DimOp::create(rewriter, loc, fused, roles[k]));
  Value init = tensor::EmptyOp::create(rewriter, loc, rootType.getShape(),
                                       rootType.getElementType(), dynSizes);
  SmallVector<int64_t> perm(roles.begin(), roles.end());
  return linalg::TransposeOp::create(rewriter, loc, fused, init, perm)
      .getResult()[0];
}

/// Whether `op` is unused and erasing it changes nothing but the checks its
/// own payload makes: trivially dead, or a linalg op on tensors whose only
/// effects are cf.assert (torch-mlir guards, e.g. its reciprocal asserts a
/// non-zero input) on a computation that nothing reads any more.
static bool isDeadProducer(Operation *op) {
  if (isOpTriviallyDead(op))
    return true;
  auto linalgOp = dyn_cast<linalg::LinalgOp>(op);
  if (!op->use_empty() || !linalgOp || !linalgOp.hasPureTensorSemantics())
    return false;
  WalkResult r = op->walk([&](Operation *nested) {
    if (nested == op || isa<cf::AssertOp>(nested) || isMemoryEffectFree(nested))
      return WalkResult::advance();
    return WalkResult::interrupt();
  });
  return !r.wasInterrupted();
}

/// Erases `op` if it is now dead, then whatever fed it and died with it.
static void eraseDeadProducers(RewriterBase &rewriter, Operation *op) {
  SmallVector<Operation *> work = {op};
  llvm::SmallPtrSet<Operation *, 32> erased;
  while (!work.empty()) {
    Operation *cur = work.pop_back_val();
    if (!cur || erased.contains(cur))
      continue;
    if (!isDeadProducer(cur))
      continue;
    SetVector<Operation *> feeders;
    for (Value operand : cur->getOperands())
      if (Operation *def = operand.getDefiningOp())
        feeders.insert(def);
    cur->walk([&](Operation *nested) {
      for (Value operand : nested->getOperands())
        if (Operation *def = operand.getDefiningOp();
            def && !cur->isAncestor(def))
          feeders.insert(def);
    });
    erased.insert(cur);
    rewriter.eraseOp(cur);
    for (Operation *f : feeders)
      if (!erased.contains(f))
        work.push_back(f);
  }
}

std::optional<FuseAttempt> Matcher::emitFused(
    RewriterBase &rewriter, const Roles &roles, ArrayRef<OperandPlan> plans,
    function_ref<Operation *(OpBuilder &, Location, ArrayRef<Value>)> build) {
  InsertionRecorder recorder;
  Operation *fused = nullptr;
  {
    OpBuilder::InsertionGuard guard(rewriter);
    OpBuilder::Listener *saved = rewriter.getListener();
    rewriter.setListener(&recorder);
    rewriter.setInsertionPointAfterValue(root);
    Location loc = root.getLoc();
    SmallVector<Value> values;
    for (const OperandPlan &p : plans)
      values.push_back(materialize(rewriter, loc, p));
    fused = build(rewriter, loc, values);
    rewriter.setListener(saved);
  }
  // Verify before anything is replaced: a refusal leaves the graph as it was.
  std::string diag;
  bool valid = true;
  {
    ScopedDiagnosticHandler handler(root.getContext(), [&](Diagnostic &d) {
      if (diag.empty())
        diag = d.str();
      return success();
    });
    for (Operation *op : recorder.ops)
      if (!op->getParentOp() || op->getParentOp() == fused->getParentOp())
        valid = valid && succeeded(verify(op));
  }
  if (!valid) {
    for (Operation *op : llvm::reverse(recorder.ops))
      if (op->getParentOp() == fused->getParentOp())
        rewriter.eraseOp(op);
    fail(kEmit, "the fused op would not verify (" + diag + ")");
    return std::nullopt;
  }
  SmallVector<unsigned> order(4);
  for (unsigned role = 0; role < 4; ++role)
    order[roles.order[role]] = role;
  Operation *rootOp = root.getDefiningOp();
  {
    OpBuilder::InsertionGuard guard(rewriter);
    rewriter.setInsertionPointAfter(fused);
    Value replacement = replaceRoot(rewriter, fused->getResult(0), order);
    rewriter.replaceAllUsesWith(root, replacement);
  }
  eraseDeadProducers(rewriter, rootOp);
  FuseAttempt a;
  a.fused = true;
  a.fusedOp = fused;
  return a;
}

//===----------------------------------------------------------------------===//
// Attributes and descriptions
//===----------------------------------------------------------------------===//

std::string mlir::diffattn::fusion::describeMask(const MaskInfo &m) {
  if (m.right == 0)
    return m.left < 0
               ? "causal"
               : llvm::formatv("causal, window_left = {0}", m.left).str();
  if (m.left < 0 && m.right < 0)
    return "no mask";
  return llvm::formatv("window ({0}, {1})", m.left, m.right).str();
}

void mlir::diffattn::fusion::setMaskAttrs(Operation *op, const MaskInfo &m) {
  Builder builder(op->getContext());
  if (m.right == 0) {
    op->setAttr("causal", builder.getUnitAttr());
    if (m.left >= 0)
      op->setAttr("window_left", builder.getI64IntegerAttr(m.left));
    return;
  }
  if (m.left >= 0)
    op->setAttr("window_left", builder.getI64IntegerAttr(m.left));
  if (m.right >= 0)
    op->setAttr("window_right", builder.getI64IntegerAttr(m.right));
}
