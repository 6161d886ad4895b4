//===- FuseMask.cpp - classify an attention's mask ------------------------===//
//
// The mask phase of diffattn-fuse's matcher (FuseMatcher.h): the mask parts
// recorded on the scores must make exactly the band of keys that a
// diffattn op's causal / window attributes describe,
//   i + (Sk - Sq) - left <= t <= i + (Sk - Sq) + right.
// Two ways to check it:
//   - symbolically: when every part depends on the positions only through
//     comparisons of t - i with constants (iota/arange masks, SDPA's causal
//     bias), the visible set is a function of t - i that is constant beyond
//     the largest threshold, so checking the offsets up to it proves the
//     band for every size (dynamic Sq/Sk included, when Sq == Sk is known);
//   - by evaluation at every (query, key) position (constant mask tensors),
//     for static shapes up to 2^24 positions.
// A row that sees no key is refused, unless the attention carries torch's
// safe-softmax guard and every score of the row is exactly -inf (the graph
// then gives 0, as the op does).
//
//===----------------------------------------------------------------------===//

#include "FuseMatcher.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Interfaces/ValueBoundsOpInterface.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>
#include <limits>

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

/// The most (query, key) positions a mask is evaluated at.
static constexpr int64_t kMaxMaskPoints = int64_t(1) << 24;
/// The largest threshold of a symbolic mask.
static constexpr int64_t kMaxThreshold = int64_t(1) << 24;

namespace {
/// What a mask does at one position: visible (adds 0), masked, and whether
/// the masked score is exactly -inf.
struct Position {
  bool visible;
  bool exactInf;
};
} // namespace

/// Applies the parts (innermost first) at one position; nullopt after a
/// refusal.
static std::optional<Position> applyParts(Matcher &m, ArrayRef<MaskPart> parts,
                                          ArrayRef<double> values) {
  double v = 0.0; // the finite scale * q.k, as a placeholder
  for (auto [p, val] : llvm::reverse(llvm::zip(parts, values))) {
    if (p.additive) {
      v += val * p.mult;
      continue;
    }
    if ((val != 0.0) != p.visibleWhenTrue)
      v = p.fill * p.mult;
  }
  if (v == 0.0)
    return Position{true, false};
  if (v <= -1.0e4)
    return Position{false, std::isinf(v)};
  m.fail(kMask, llvm::formatv("the mask adds {0}, which is neither 0 nor "
                              "-inf (or a large negative constant)",
                              formatNumber(v)));
  return std::nullopt;
}

/// The first leaf of `e` that is not a constant tensor (a runtime mask).
static Expr *findRuntimeLeaf(Expr *e, unsigned depth = 0) {
  if (depth > kMaxDepth)
    return nullptr;
  if (e->kind == ExprKind::Leaf) {
    if (!e->value.getDefiningOp<arith::ConstantOp>())
      return e;
    return nullptr;
  }
  for (Expr *a : e->args)
    if (Expr *l = findRuntimeLeaf(a, depth + 1))
      return l;
  return nullptr;
}

namespace {
/// Reads mask expressions as functions of the offset t - i.
class DeltaReader {
public:
  DeltaReader(ExprBuilder &b, unsigned qDim, unsigned tDim)
      : b(b), qDim(qDim), tDim(tDim) {}

  /// Whether `e` depends on (i, t) only through t - i; collects the
  /// thresholds where it may change.
  bool check(Expr *e, unsigned depth = 0) {
    if (depth > kMaxDepth)
      return false;
    if (std::optional<AffineExpr> a = asAffine(e))
      return offsetCoefficient(*a).has_value();
    switch (e->kind) {
    case ExprKind::Const:
      return true;
    case ExprKind::Leaf:
    case ExprKind::Index:
    case ExprKind::Reduce:
      return false;
    case ExprKind::Arith:
      if (e->op == ArithKind::Other)
        return false;
      if (e->op == ArithKind::CmpI || e->op == ArithKind::CmpF) {
        std::optional<AffineExpr> l = asAffine(e->args[0]);
        std::optional<AffineExpr> r = asAffine(e->args[1]);
        if (l && r)
          return offsetCoefficient(*l - *r).has_value();
      }
      return llvm::all_of(e->args,
                          [&](Expr *a) { return check(a, depth + 1); });
    }
    return false;
  }

  /// The largest |threshold| seen.
  int64_t bound() const { return maxThreshold; }

private:
  /// An integer-valued expression as an affine function of the dims.
  std::optional<AffineExpr> asAffine(Expr *e, unsigned depth = 0) {
    if (depth > kMaxDepth)
      return std::nullopt;
    MLIRContext *ctx = b.getContext();
    switch (e->kind) {
    case ExprKind::Const:
      if (e->cst != std::floor(e->cst) || std::abs(e->cst) > 1e15)
        return std::nullopt;
      return getAffineConstantExpr(static_cast<int64_t>(e->cst), ctx);
    case ExprKind::Index:
      return b.simplify(e->index);
    case ExprKind::Arith: {
      auto arg = [&](unsigned i) { return asAffine(e->args[i], depth + 1); };
      switch (e->op) {
      case ArithKind::Cast:
        return arg(0);
      case ArithKind::Add:
      case ArithKind::Sub: {
        std::optional<AffineExpr> l = arg(0), r = arg(1);
        if (!l || !r)
          return std::nullopt;
        return b.simplify(e->op == ArithKind::Add ? *l + *r : *l - *r);
      }
      case ArithKind::Neg: {
        std::optional<AffineExpr> l = arg(0);
        if (!l)
          return std::nullopt;
        return b.simplify(-*l);
      }
      case ArithKind::Mul: {
        std::optional<AffineExpr> l = arg(0), r = arg(1);
        if (!l || !r ||
            (!isa<AffineConstantExpr>(*l) && !isa<AffineConstantExpr>(*r)))
          return std::nullopt;
        return b.simplify(*l * *r);
      }
      default:
        return std::nullopt;
      }
    }
    default:
      return std::nullopt;
    }
  }

  /// For a*t + c*i + k with a == -c (and no other dim): a; records the
  /// threshold |k / a|. Constants give 0.
  std::optional<int64_t> offsetCoefficient(AffineExpr a) {
    int64_t ct = 0, ci = 0, k = 0;
    if (!linear(a, 1, ct, ci, k))
      return std::nullopt;
    if (ct != -ci)
      return std::nullopt;
    int64_t t = ct == 0 ? 0 : std::abs(k) / std::abs(ct) + 1;
    if (t > kMaxThreshold)
      return std::nullopt;
    maxThreshold = std::max(maxThreshold, t);
    return ct;
  }

  bool linear(AffineExpr a, int64_t mult, int64_t &ct, int64_t &ci,
              int64_t &k) {
    if (auto c = dyn_cast<AffineConstantExpr>(a)) {
      k += mult * c.getValue();
      return true;
    }
    if (auto d = dyn_cast<AffineDimExpr>(a)) {
      if (d.getPosition() == tDim)
        ct += mult;
      else if (d.getPosition() == qDim)
        ci += mult;
      else
        return false;
      return true;
    }
    auto bin = dyn_cast<AffineBinaryOpExpr>(a);
    if (!bin)
      return false;
    if (a.getKind() == AffineExprKind::Add)
      return linear(bin.getLHS(), mult, ct, ci, k) &&
             linear(bin.getRHS(), mult, ct, ci, k);
    if (a.getKind() == AffineExprKind::Mul) {
      if (auto c = dyn_cast<AffineConstantExpr>(bin.getRHS()))
        return linear(bin.getLHS(), mult * c.getValue(), ct, ci, k);
      if (auto c = dyn_cast<AffineConstantExpr>(bin.getLHS()))
        return linear(bin.getRHS(), mult * c.getValue(), ct, ci, k);
    }
    return false;
  }

  ExprBuilder &b;
  unsigned qDim, tDim;
  int64_t maxThreshold = 0;
};
} // namespace

/// Whether the query length of `q` (indexed by qDim) equals the key length
/// of `k` (indexed by tDim), as far as the IR can prove it.
static bool provablySameLength(ExprBuilder &b, Expr *q, unsigned qDim, Expr *k,
                               unsigned tDim) {
  auto position = [](Expr *leaf, unsigned d) -> int64_t {
    for (auto [n, e] : llvm::enumerate(leaf->idx))
      if (auto de = dyn_cast<AffineDimExpr>(e); de && de.getPosition() == d)
        return n;
    return -1;
  };
  int64_t qp = position(q, qDim), kp = position(k, tDim);
  if (qp < 0 || kp < 0)
    return false;
  // Sizes as products of symbols see through torch-mlir's i64 shape
  // arithmetic; ValueBounds through affine size computations.
  SizeReasoner &sizes = b.sizes();
  if (sizes.equal(sizes.sizeOf(q->value, qp), sizes.sizeOf(k->value, kp)))
    return true;
  FailureOr<bool> eq = ValueBoundsConstraintSet::areEqual(
      ValueBoundsConstraintSet::Variable(q->value, qp),
      ValueBoundsConstraintSet::Variable(k->value, kp));
  return succeeded(eq) && *eq;
}

std::optional<MaskInfo> Matcher::classifyMaskSymbolic(Term &t, unsigned qDim,
                                                      bool &tried) {
  tried = false;
  SmallVector<Expr *> parts;
  DeltaReader reader(b, qDim, tDim);
  for (MaskPart &p : t.mask) {
    Expr *full = b.expandAll(p.e);
    if (!reader.check(full))
      return std::nullopt;
    parts.push_back(full);
  }
  tried = true;
  // Visible offsets t - i, from -M - 1 to M + 1; beyond that nothing changes.
  int64_t m = reader.bound() + 1;
  const int64_t base = int64_t(1) << 30; // keep positions non-negative
  std::optional<int64_t> lo, hi;
  bool gap = false;
  for (int64_t delta = -m; delta <= m; ++delta) {
    SmallVector<int64_t> values(b.numDims(), 0);
    values[qDim] = base;
    values[tDim] = base + delta;
    SmallVector<double> vals;
    for (Expr *full : parts) {
      std::optional<double> v = b.evaluate(full, values);
      if (!v) {
        fail(kMask, "the mask is not a compile-time function of the "
                    "positions");
        return std::nullopt;
      }
      vals.push_back(*v);
    }
    std::optional<Position> pos = applyParts(*this, t.mask, vals);
    if (!pos)
      return std::nullopt;
    if (!pos->visible)
      continue;
    if (hi && *hi != delta - 1)
      gap = true;
    if (!lo)
      lo = delta;
    hi = delta;
  }
  if (!lo || gap) {
    fail(kMask, lo ? "the mask is neither causal nor a sliding window"
                   : "the mask hides every key");
    return std::nullopt;
  }
  bool loInf = *lo == -m, hiInf = *hi == m;
  int64_t sq = b.extent(qDim), sk = b.extent(tDim);
  int64_t off = 0;
  if (sq > 0 && sk > 0) {
    off = sk - sq;
  } else if (!(loInf && hiInf) &&
             !provablySameLength(b, t.q, qDim, t.k, tDim)) {
    fail(kMask, "the mask is a band of key - query offsets, but the query "
                "and key lengths are dynamic and not provably equal (the op "
                "aligns the band to the last query)");
    return std::nullopt;
  }
  // Rows that see nothing: static sizes only (with Sq == Sk the band holds
  // the diagonal, checked below).
  if (sq > 0 && sk > 0) {
    bool emptyRow = (!hiInf && *hi < 0) || (!loInf && sq - 1 + *lo > sk - 1);
    if (emptyRow) {
      fail(kMask, "the mask hides every key from some query");
      return std::nullopt;
    }
  }
  MaskInfo info;
  info.right = hiInf ? -1 : *hi - off;
  info.left = loInf ? -1 : off - *lo;
  if (sq > 0 && info.right >= sq - 1)
    info.right = -1;
  if (sk > 0 && info.left >= sk - 1)
    info.left = -1;
  if (info.right < -1 || info.left < -1 ||
      (sq <= 0 && ((!hiInf && *hi < 0) || (!loInf && *lo > 0)))) {
    fail(kMask, "the mask is a band that does not hold the aligned diagonal "
                "(neither causal nor a sliding window of the op)");
    return std::nullopt;
  }
  return info;
}

std::optional<MaskInfo> Matcher::classifyMask(Term &t, unsigned qDim) {
  MaskInfo info;
  if (t.mask.empty())
    return info;
  // Masks may read the query and key positions only.
  for (MaskPart &p : t.mask) {
    Expr *full = b.expandAll(p.e);
    if (Expr *leaf = findRuntimeLeaf(full)) {
      if (wouldKeep(kMask))
        fail(kMask, llvm::formatv("the mask reads the runtime tensor {0}; "
                                  "diffattn ops take causal and sliding-"
                                  "window masks only",
                                  name(leaf->value)));
      return std::nullopt;
    }
    llvm::SmallDenseSet<unsigned, 8> dims;
    b.collectDims(full, dims);
    for (unsigned d : dims) {
      if (d != qDim && d != tDim) {
        fail(kMask, "the mask depends on more than the query and key "
                    "positions");
        return std::nullopt;
      }
    }
  }
  bool tried = false;
  if (std::optional<MaskInfo> sym = classifyMaskSymbolic(t, qDim, tried))
    return sym;
  // Evaluate at every position (static shapes); its verdict replaces the
  // symbolic one, which cannot see a guarded row of -inf scores.
  int64_t sq = b.extent(qDim), sk = b.extent(tDim);
  if (sq <= 0 || sk <= 0) {
    if (!tried)
      fail(kMask, "the mask is not a function of key - query offsets and "
                  "the shapes are dynamic");
    return std::nullopt;
  }
  if (sq * sk > kMaxMaskPoints) {
    if (!tried)
      fail(kMask, "the mask is too large to verify");
    return std::nullopt;
  }
  SmallVector<Expr *> parts;
  for (MaskPart &p : t.mask)
    parts.push_back(b.expandAll(p.e));
  std::vector<bool> visible(sq * sk);
  SmallVector<int64_t> values(b.numDims(), 0);
  for (int64_t i = 0; i < sq; ++i) {
    bool any = false, allInf = true;
    for (int64_t k = 0; k < sk; ++k) {
      values[qDim] = i;
      values[tDim] = k;
      SmallVector<double> vals;
      for (Expr *full : parts) {
        std::optional<double> v = b.evaluate(full, values);
        if (!v) {
          fail(kMask, "the mask is not a compile-time function of the "
                      "positions");
          return std::nullopt;
        }
        vals.push_back(*v);
      }
      std::optional<Position> pos = applyParts(*this, t.mask, vals);
      if (!pos)
        return std::nullopt;
      visible[i * sk + k] = pos->visible;
      any |= pos->visible;
      allInf &= !pos->visible && pos->exactInf;
    }
    if (!any && !(t.guarded && allInf)) {
      fail(kMask,
           llvm::formatv("the mask hides every key from query {0}{1}", i,
                         t.guarded ? "" : " (the graph gives NaN there)"));
      return std::nullopt;
    }
  }
  // Infer the band [i + off - left, i + off + right] of visible keys.
  int64_t off = sk - sq;
  int64_t right = std::numeric_limits<int64_t>::min();
  int64_t left = std::numeric_limits<int64_t>::min();
  for (int64_t i = 0; i < sq; ++i) {
    for (int64_t k = 0; k < sk; ++k) {
      if (!visible[i * sk + k])
        continue;
      int64_t delta = k - i - off;
      right = std::max(right, delta);
      left = std::max(left, -delta);
    }
  }
  for (int64_t i = 0; i < sq; ++i) {
    for (int64_t k = 0; k < sk; ++k) {
      int64_t delta = k - i - off;
      bool inBand = -left <= delta && delta <= right;
      if (inBand != visible[i * sk + k]) {
        fail(kMask, "the mask is neither causal nor a sliding window");
        return std::nullopt;
      }
    }
  }
  info.right = right >= sq - 1 ? -1 : right;
  info.left = left >= sk - 1 ? -1 : left;
  if (info.right < -1 || info.left < -1) {
    fail(kMask, "the mask is neither causal nor a sliding window");
    return std::nullopt;
  }
  return info;
}

std::optional<MaskInfo> Matcher::commonMask(Term &t0, Term &t1, unsigned qDim) {
  std::optional<MaskInfo> m0 = classifyMask(t0, qDim);
  if (!m0)
    return std::nullopt;
  std::optional<MaskInfo> m1 = classifyMask(t1, qDim);
  if (!m1)
    return std::nullopt;
  if (!(*m0 == *m1)) {
    fail(kMask, llvm::formatv("the two attentions use different masks ({0} "
                              "and {1})",
                              describeMask(*m0), describeMask(*m1)));
    return std::nullopt;
  }
  return m0;
}
