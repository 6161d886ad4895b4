//===- FusePatterns.cpp - V1/V2 subgraph matchers -------------------------===//
//
// Recognises differential attention in element expressions (FuseExpr.h) and
// rewrites it to diffattn.v2 / diffattn.v1.
//
// A match has two phases. The structural phase reads the root element as
//   V2: A_a - sigmoid(lam) * A_b
//   V1: c * RMSNorm(A_a - lam * A_b) * w
// where each A is sum_t softmax_t(scale * q.k + mask) * v with the softmax
// written out (max/sub/exp/sum/div, a reciprocal, or linalg.softmax), and
// records each attention's q, k and v leaves (tensor + affine index), scale
// and mask. The role phase decides which root dimensions are batch, query
// position, head and value channel, and from the leaves' indices derives the
// BSHD operands of the fused op: the query heads of each pair, the KV head of
// each pair (GQA broadcasts fold into the index), and the mask, evaluated on
// every (query, key) position and classified as causal, windowed or absent.
// Every rule that would make the fused op compute something else is checked;
// a broken rule leaves the graph alone with a message.
//
//===----------------------------------------------------------------------===//

#include "FusePatterns.h"
#include "FuseExpr.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>
#include <numeric>

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

namespace {

/// The most (query, key) positions a mask is evaluated at.
constexpr int64_t kMaxMaskPoints = int64_t(1) << 24;

/// Stages of a match; failures at kReportableStage or later are reported.
enum Stage {
  kRootShape = 0,
  kEpilogue = 1,
  kContraction = 2,
  kSoftmax = 3,
  kScores = 4,
  kPairing = 5,
  kRoles = 6,
  kOperands = 7,
};

/// One part of the mask: an additive term (`e * mult` is 0 or masking), or a
/// predicate under which the score is kept (`visibleWhenTrue`) or replaced
/// by a masking constant.
struct MaskPart {
  Expr *e;
  bool additive;
  bool visibleWhenTrue;
  double mult;
};

/// One softmax attention: A[...] = sum_T softmax_T(scale * sum_D q k + mask)
/// * v, with q/k/v as leaves over the root dims and the canonical T and D.
struct Term {
  Expr *q = nullptr, *k = nullptr, *v = nullptr;
  double scale = 1.0;
  SmallVector<MaskPart> mask;
};

struct MaskInfo {
  int64_t left = -1, right = -1;
  bool operator==(const MaskInfo &o) const {
    return left == o.left && right == o.right;
  }
};

/// A fused operand: `base` read at `map` (affine in `dims`) into `shape`.
struct OperandPlan {
  Value base;
  SmallVector<AffineExpr> map;
  SmallVector<unsigned> dims;
  SmallVector<int64_t> shape;
  Type elementType;
};

class Matcher {
public:
  Matcher(Value root) : b(root.getContext()), root(root) {}

  FuseAttempt matchV2(RewriterBase &rewriter);
  FuseAttempt matchV1(RewriterBase &rewriter);

private:
  bool fail(int stage, const Twine &msg) {
    if (stage >= bestStage) {
      bestStage = stage;
      bestMessage = msg.str();
    }
    return false;
  }
  FuseAttempt failure() {
    FuseAttempt a;
    a.stage = bestStage;
    a.message = bestMessage;
    return a;
  }

  bool setupRoot();
  /// A failure to report: the matcher stage and why.
  struct Refusal {
    int stage;
    const char *message;
  };
  /// Matches `e` as a sum over one dimension of a product: binds that
  /// dimension to `dim` (a new global dim the first time, else one of the
  /// same extent) and splits the product. Refuses with `notSum`,
  /// `extentMismatch` or `notProduct`.
  bool matchSumOfProducts(Expr *e, unsigned &dim,
                          SmallVectorImpl<Expr *> &factors,
                          SmallVectorImpl<Expr *> &originals, Refusal notSum,
                          Refusal extentMismatch, Refusal notProduct);
  bool splitProduct(Expr *body, SmallVectorImpl<Expr *> &factors,
                    SmallVectorImpl<Expr *> &originals);
  bool matchTerm(Expr *e, Term &t);
  bool matchSoftmax(Expr *p, Term &t);
  bool matchScores(Expr *x, Term &t);
  Expr *baseLeaf(Expr *e, double *scale);
  Expr *matchSigmoid(Expr *e);
  bool sameTerms(const Term &a, const Term &b, bool sameKey);

  std::optional<MaskInfo> classifyMask(Term &t, unsigned qDim);
  /// Heads read by `leaf` for each pair h: its index with the head dim
  /// replaced by h and the other dims renamed.
  SmallVector<AffineExpr> headIndex(Expr *leaf, unsigned headDim, AffineExpr h,
                                    const DenseMap<unsigned, AffineExpr> &ren);
  /// R pairs per KV head: the largest R under which every pair reads the
  /// key and value heads of the first pair of its group (1 if none larger).
  int64_t pairsPerKvHead(const Term &t, unsigned headDim, int64_t numPairs,
                         const DenseMap<unsigned, AffineExpr> &ren);
  bool usesOnly(Expr *leaf, ArrayRef<unsigned> allowed, StringRef what);
  /// Whether both attentions' q, k and v read only the dims of their roles
  /// (batch rb, query row ri, pair rh, value channel re; keys, head dim).
  bool termsUseOnly(const Term &t0, const Term &t1, unsigned rb, unsigned ri,
                    unsigned rh, unsigned re);
  /// The mask both attentions use, or nullopt (after a refusal where they
  /// differ or one is not a supported mask).
  std::optional<MaskInfo> commonMask(Term &t0, Term &t1, unsigned qDim);
  /// q's element type when q, k, v and the root share one supported
  /// element type; else a refusal and a null type.
  Type commonElementType(const Term &t);
  bool planQuery(const Term &t0, const Term &t1, unsigned rb, unsigned ri,
                 unsigned rh, int64_t numPairs, OperandPlan &plan);
  bool checkStatic(ArrayRef<Value> values);
  Value materialize(OpBuilder &builder, Location loc, const OperandPlan &p);
  /// Replaces the root with the fused op (its dims in `order`'s roles) and
  /// erases the root's producers nothing else uses.
  FuseAttempt commitFusion(RewriterBase &rewriter, Operation *fused,
                           const std::array<unsigned, 4> &order);
  Value replaceRoot(RewriterBase &rewriter, Value fused,
                    ArrayRef<unsigned> roles);

  ExprBuilder b;
  Value root;
  SmallVector<unsigned> rootDims;
  unsigned tDim = ~0u, dDim = ~0u;
  int bestStage = 0;
  std::string bestMessage = "not a differential attention";
};

} // namespace

//===----------------------------------------------------------------------===//
// Structure
//===----------------------------------------------------------------------===//

static bool isConstExpr(Expr *e, double c) {
  return e->kind == ExprKind::Const && e->cst == c;
}

static bool isArith(Expr *e, ArithKind k) {
  return e->kind == ExprKind::Arith && e->op == k;
}

bool Matcher::setupRoot() {
  auto type = dyn_cast<RankedTensorType>(root.getType());
  if (!type || type.getRank() != 4)
    return fail(kRootShape, "the result is not a 4-d tensor");
  for (int64_t s : type.getShape())
    rootDims.push_back(b.newDim(ShapedType::isDynamic(s) ? -1 : s));
  return true;
}

Expr *Matcher::baseLeaf(Expr *e, double *scale) {
  for (unsigned depth = 0; depth < 32; ++depth) {
    e = b.normalize(e);
    if (e->kind != ExprKind::Leaf || !isa<RankedTensorType>(e->value.getType()))
      return nullptr;
    auto linalgOp = e->value.getDefiningOp<linalg::LinalgOp>();
    if (!linalgOp || linalgOp.getNumReductionLoops() != 0)
      return e;
    Expr *p = b.peel(e);
    if (isArith(p, ArithKind::Cast) && p->floatResult &&
        p->args[0]->kind == ExprKind::Leaf) {
      e = p->args[0];
      continue;
    }
    if (!scale)
      return e;
    SmallVector<Expr *> factors, originals;
    double coef = 1.0;
    flattenProduct(b, p, factors, coef, &originals);
    if (factors.size() == 1 && coef > 0.0 && coef != 1.0 &&
        originals[0]->kind == ExprKind::Leaf) {
      *scale *= coef;
      e = originals[0];
      continue;
    }
    return e;
  }
  return nullptr;
}

/// The two operands of a contraction body `a * b` (casts stripped): opened
/// and as read (normalized leaves).
bool Matcher::matchSumOfProducts(Expr *e, unsigned &dim,
                                 SmallVectorImpl<Expr *> &factors,
                                 SmallVectorImpl<Expr *> &originals,
                                 Refusal notSum, Refusal extentMismatch,
                                 Refusal notProduct) {
  if (e->kind != ExprKind::Reduce || e->isMax || e->bound.size() != 1 ||
      !isConstExpr(b.open(e->args[0]), 0.0))
    return fail(notSum.stage, notSum.message);
  unsigned bound = e->bound[0];
  if (dim == ~0u)
    dim = b.newDim(b.extent(bound));
  else if (b.extent(dim) != b.extent(bound))
    return fail(extentMismatch.stage, extentMismatch.message);
  Expr *body = b.substitute(e->args[1], {{bound, b.dim(dim)}});
  if (!splitProduct(body, factors, originals))
    return fail(notProduct.stage, notProduct.message);
  return true;
}

bool Matcher::splitProduct(Expr *body, SmallVectorImpl<Expr *> &factors,
                           SmallVectorImpl<Expr *> &originals) {
  Expr *m = b.open(body);
  if (!isArith(m, ArithKind::Mul))
    return false;
  for (Expr *a : m->args) {
    Expr *o = b.normalize(a);
    for (unsigned k = 0; k < 8; ++k) {
      Expr *p = b.peel(o);
      if (!isArith(p, ArithKind::Cast) || !p->floatResult)
        break;
      o = b.normalize(p->args[0]);
    }
    originals.push_back(o);
    factors.push_back(b.open(o));
  }
  return true;
}

bool Matcher::matchTerm(Expr *e, Term &t) {
  SmallVector<Expr *> factors, originals;
  if (!matchSumOfProducts(
          b.open(e), tDim, factors, originals,
          {kEpilogue, "an operand of the difference is not a P*V product"},
          {kPairing, "the two attentions have different key lengths"},
          {kContraction, "the contraction is not probabilities times values"}))
    return false;
  for (int order = 0; order < 2; ++order) {
    Term candidate;
    int savedStage = bestStage;
    if (!matchSoftmax(factors[order], candidate))
      continue;
    candidate.v = baseLeaf(originals[1 - order], nullptr);
    if (!candidate.v)
      return fail(kScores, "the values are not read from a tensor");
    if (!b.usesDim(candidate.v, tDim))
      return fail(kScores, "the values do not depend on the key position");
    (void)savedStage;
    t = candidate;
    return true;
  }
  return false;
}

bool Matcher::matchSoftmax(Expr *p, Term &t) {
  Expr *num = nullptr, *den = nullptr;
  if (isArith(p, ArithKind::Div)) {
    num = b.open(p->args[0]);
    den = b.open(p->args[1]);
  } else if (isArith(p, ArithKind::Mul)) {
    for (int i = 0; i < 2 && !den; ++i) {
      Expr *inv = b.open(p->args[i]);
      if (isArith(inv, ArithKind::Div) &&
          isConstExpr(b.open(inv->args[0]), 1.0)) {
        den = b.open(inv->args[1]);
        num = b.open(p->args[1 - i]);
      }
    }
  }
  if (!num || !den || !isArith(num, ArithKind::Exp))
    return fail(kContraction, "the probabilities are not a softmax");
  if (den->kind != ExprKind::Reduce || den->isMax || den->bound.size() != 1 ||
      !isConstExpr(b.open(den->args[0]), 0.0))
    return fail(kContraction, "the softmax denominator is not a sum");
  // The denominator must sum the numerator over the key axis (the axis the
  // probabilities are contracted with the values over).
  unsigned r = den->bound[0];
  Expr *expected = b.substitute(num, {{tDim, b.dim(r)}});
  if (b.extent(r) != b.extent(tDim) || !b.equal(den->args[1], expected))
    return fail(kSoftmax, "the softmax is not taken over the key axis");
  // exp(x - m) / sum(exp(x - m)) is softmax(x) for any m constant along the
  // key axis (usually the row max).
  Expr *z = b.open(num->args[0]);
  Expr *x = z;
  if (isArith(z, ArithKind::Sub)) {
    Expr *m = b.expandAll(z->args[1]);
    if (!b.usesDim(m, tDim))
      x = z->args[0];
  }
  return matchScores(x, t);
}

bool Matcher::matchScores(Expr *x, Term &t) {
  double mult = 1.0;
  for (unsigned depth = 0; depth < 32; ++depth) {
    x = b.open(x);
    if (isArith(x, ArithKind::Select)) {
      Expr *a = b.open(x->args[1]), *c = b.open(x->args[2]);
      if (isMaskingConstant(a)) {
        t.mask.push_back({x->args[0], false, false, 1.0});
        x = x->args[2];
        continue;
      }
      if (isMaskingConstant(c)) {
        t.mask.push_back({x->args[0], false, true, 1.0});
        x = x->args[1];
        continue;
      }
      return fail(kScores, "a select on the scores does not mask with -inf");
    }
    if (isArith(x, ArithKind::Add)) {
      // The side holding the q.k contraction continues; the other is an
      // additive mask.
      int scoreSide = -1;
      for (int i = 0; i < 2; ++i) {
        Expr *s = b.open(x->args[i]);
        for (unsigned k = 0; k < 8; ++k) {
          SmallVector<Expr *> f;
          double c = 1.0;
          flattenProduct(b, s, f, c);
          if (f.size() == 1 && f[0] != s) {
            s = f[0];
            continue;
          }
          if (isArith(s, ArithKind::Select) || isArith(s, ArithKind::Add)) {
            s = b.open(s->args[isArith(s, ArithKind::Select) ? 2 : 0]);
            continue;
          }
          break;
        }
        if (s->kind == ExprKind::Reduce && !s->isMax)
          scoreSide = i;
      }
      if (scoreSide < 0)
        return fail(kScores, "the scores are not a q*k contraction");
      t.mask.push_back({x->args[1 - scoreSide], true, true, mult});
      x = x->args[scoreSide];
      continue;
    }
    if (isArith(x, ArithKind::Mul) || isArith(x, ArithKind::Div) ||
        isArith(x, ArithKind::Neg)) {
      SmallVector<Expr *> f;
      double c = 1.0;
      flattenProduct(b, x, f, c);
      if (f.size() != 1 || c <= 0.0)
        return fail(kScores, "the scores are scaled by a non-constant or "
                             "non-positive factor");
      t.scale *= c;
      mult *= c;
      x = f[0];
      continue;
    }
    break;
  }
  SmallVector<Expr *> factors, originals;
  if (!matchSumOfProducts(
          x, dDim, factors, originals,
          {kScores, "the scores are not a q*k contraction"},
          {kPairing, "the two attentions have different head dims"},
          {kScores, "the scores are not a q*k contraction"}))
    return false;
  Expr *l0 = baseLeaf(originals[0], &t.scale);
  Expr *l1 = baseLeaf(originals[1], &t.scale);
  if (!l0 || !l1)
    return fail(kScores, "q or k is not read from a tensor");
  bool k0 = b.usesDim(l0, tDim), k1 = b.usesDim(l1, tDim);
  if (k0 == k1)
    return fail(kScores, "cannot tell the queries from the keys");
  t.q = k0 ? l1 : l0;
  t.k = k0 ? l0 : l1;
  return true;
}

Expr *Matcher::matchSigmoid(Expr *e) {
  // 1 / (1 + exp(-x))
  e = b.open(e);
  if (!isArith(e, ArithKind::Div) || !isConstExpr(b.open(e->args[0]), 1.0))
    return nullptr;
  Expr *den = b.open(e->args[1]);
  if (!isArith(den, ArithKind::Add))
    return nullptr;
  for (int i = 0; i < 2; ++i) {
    if (!isConstExpr(b.open(den->args[i]), 1.0))
      continue;
    Expr *ex = b.open(den->args[1 - i]);
    if (!isArith(ex, ArithKind::Exp))
      return nullptr;
    SmallVector<Expr *> f, orig;
    double c = 1.0;
    flattenProduct(b, ex->args[0], f, c, &orig);
    if (f.size() != 1 || c != -1.0)
      return nullptr;
    Expr *arg = orig[0];
    // Strip casts of the argument.
    for (unsigned k = 0; k < 8; ++k) {
      Expr *p = b.peel(arg);
      if (isArith(p, ArithKind::Cast) && p->floatResult)
        arg = b.normalize(p->args[0]);
      else
        break;
    }
    return arg->kind == ExprKind::Leaf ? arg : nullptr;
  }
  return nullptr;
}

bool Matcher::sameTerms(const Term &a, const Term &c, bool sameKey) {
  if (a.q->value != c.q->value)
    return fail(kPairing, "the two attentions read different query tensors");
  if (a.k->value != c.k->value)
    return fail(kPairing, "the two attentions read different key tensors");
  if (a.v->value != c.v->value)
    return fail(kPairing, "the two attentions read different value tensors");
  (void)sameKey;
  if (std::abs(a.scale - c.scale) > 1e-6 * std::abs(a.scale))
    return fail(kPairing, "the two attentions use different scales");
  return true;
}

//===----------------------------------------------------------------------===//
// Roles and operands
//===----------------------------------------------------------------------===//

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

std::optional<MaskInfo> Matcher::classifyMask(Term &t, unsigned qDim) {
  MaskInfo info;
  if (t.mask.empty())
    return info;
  int64_t sq = b.extent(qDim), sk = b.extent(tDim);
  if (sq <= 0 || sk <= 0) {
    fail(kOperands, "the mask has dynamic extents");
    return std::nullopt;
  }
  if (sq * sk > kMaxMaskPoints) {
    fail(kOperands, "the mask is too large to verify");
    return std::nullopt;
  }
  SmallVector<Expr *> parts;
  for (MaskPart &p : t.mask) {
    Expr *full = b.expandAll(p.e);
    llvm::SmallDenseSet<unsigned, 8> dims;
    b.collectDims(full, dims);
    for (unsigned d : dims) {
      if (d != qDim && d != tDim) {
        fail(kRoles, "the mask depends on more than the query and key "
                     "positions");
        return std::nullopt;
      }
    }
    parts.push_back(full);
  }
  std::vector<bool> visible(sq * sk);
  SmallVector<int64_t> values(b.numDims(), 0);
  for (int64_t i = 0; i < sq; ++i) {
    for (int64_t k = 0; k < sk; ++k) {
      values[qDim] = i;
      values[tDim] = k;
      bool vis = true;
      for (auto [p, full] : llvm::zip(t.mask, parts)) {
        std::optional<double> v = b.evaluate(full, values);
        if (!v) {
          fail(kOperands, "the mask is not a compile-time function of the "
                          "positions");
          return std::nullopt;
        }
        if (p.additive) {
          double val = *v * p.mult;
          if (val == 0.0)
            continue;
          if (val <= -1.0e4) {
            vis = false;
            continue;
          }
          fail(kOperands, "the mask adds values other than 0 and -inf");
          return std::nullopt;
        }
        if ((*v != 0.0) != p.visibleWhenTrue)
          vis = false;
      }
      visible[i * sk + k] = vis;
    }
  }
  // Infer the band [i + off - left, i + off + right] of visible keys.
  int64_t off = sk - sq;
  int64_t right = std::numeric_limits<int64_t>::min();
  int64_t left = std::numeric_limits<int64_t>::min();
  for (int64_t i = 0; i < sq; ++i) {
    bool any = false;
    for (int64_t k = 0; k < sk; ++k) {
      if (!visible[i * sk + k])
        continue;
      any = true;
      int64_t delta = k - i - off;
      right = std::max(right, delta);
      left = std::max(left, -delta);
    }
    if (!any) {
      fail(kOperands,
           llvm::formatv("the mask hides every key from query {0}", i).str());
      return std::nullopt;
    }
  }
  for (int64_t i = 0; i < sq; ++i) {
    for (int64_t k = 0; k < sk; ++k) {
      int64_t delta = k - i - off;
      bool inBand = -left <= delta && delta <= right;
      if (inBand != visible[i * sk + k]) {
        fail(kOperands, "the mask is neither causal nor a sliding window");
        return std::nullopt;
      }
    }
  }
  info.right = right >= sq - 1 ? -1 : right;
  info.left = left >= sk - 1 ? -1 : left;
  if (info.right < -1 || info.left < -1) {
    fail(kOperands, "the mask is neither causal nor a sliding window");
    return std::nullopt;
  }
  return info;
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

static AffineExpr cst(MLIRContext *ctx, int64_t v);

int64_t Matcher::pairsPerKvHead(const Term &t, unsigned headDim,
                                int64_t numPairs,
                                const DenseMap<unsigned, AffineExpr> &ren) {
  MLIRContext *ctx = b.dim(headDim).getContext();
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

static AffineExpr cst(MLIRContext *ctx, int64_t v) {
  return getAffineConstantExpr(v, ctx);
}

bool Matcher::planQuery(const Term &t0, const Term &t1, unsigned rb,
                        unsigned ri, unsigned rh, int64_t numPairs,
                        OperandPlan &plan) {
  MLIRContext *ctx = b.getContext();
  unsigned fb = b.newDim(b.extent(rb)), fi = b.newDim(b.extent(ri)),
           fj = b.newDim(2 * numPairs), fd = b.newDim(b.extent(dDim));
  DenseMap<unsigned, AffineExpr> ren = {
      {rb, b.dim(fb)}, {ri, b.dim(fi)}, {dDim, b.dim(fd)}};
  SmallVector<AffineExpr> phi0 = headIndex(t0.q, rh, cst(ctx, 0), ren);
  SmallVector<AffineExpr> phi1 = headIndex(t1.q, rh, cst(ctx, 0), ren);
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
  SmallVector<AffineExpr> sym = headIndex(t0.q, rh, j.floorDiv(2), ren);
  for (auto [k, d] : llvm::enumerate(delta))
    sym[k] = b.simplify(sym[k] + (j % 2) * d);
  for (int64_t h = 0; h < numPairs; ++h) {
    for (int s = 0; s < 2; ++s) {
      SmallVector<AffineExpr> want =
          headIndex(s ? t1.q : t0.q, rh, cst(ctx, h), ren);
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
  plan.shape = {b.extent(rb), b.extent(ri), 2 * numPairs, b.extent(dDim)};
  return true;
}

bool Matcher::checkStatic(ArrayRef<Value> values) {
  for (Value v : values) {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    if (!t || !t.hasStaticShape())
      return fail(kOperands, "dynamic shapes are not supported by the fusion");
  }
  return true;
}

static bool isSupportedElementType(Type t) {
  return t.isF32() || t.isF16() || t.isBF16();
}

static Type elementTypeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getElementType();
}

Type Matcher::commonElementType(const Term &t) {
  Type elemType = elementTypeOf(t.q->value);
  if (!isSupportedElementType(elemType) ||
      elementTypeOf(t.k->value) != elemType ||
      elementTypeOf(t.v->value) != elemType ||
      elementTypeOf(root) != elemType) {
    fail(kOperands, "q, k, v and the result must share one element type "
                    "among f32, f16 and bf16");
    return Type();
  }
  return elemType;
}

bool Matcher::termsUseOnly(const Term &t0, const Term &t1, unsigned rb,
                           unsigned ri, unsigned rh, unsigned re) {
  return usesOnly(t0.q, {rb, ri, rh, dDim}, "q") &&
         usesOnly(t1.q, {rb, ri, rh, dDim}, "q") &&
         usesOnly(t0.k, {rb, tDim, rh, dDim}, "k") &&
         usesOnly(t1.k, {rb, tDim, rh, dDim}, "k") &&
         usesOnly(t0.v, {rb, tDim, rh, re}, "v") &&
         usesOnly(t1.v, {rb, tDim, rh, re}, "v");
}

std::optional<MaskInfo> Matcher::commonMask(Term &t0, Term &t1, unsigned qDim) {
  std::optional<MaskInfo> m0 = classifyMask(t0, qDim);
  if (!m0)
    return std::nullopt;
  std::optional<MaskInfo> m1 = classifyMask(t1, qDim);
  if (!m1)
    return std::nullopt;
  if (!(*m0 == *m1)) {
    fail(kOperands, "the two attentions use different masks");
    return std::nullopt;
  }
  return m0;
}

Value Matcher::materialize(OpBuilder &builder, Location loc,
                           const OperandPlan &p) {
  MLIRContext *ctx = builder.getContext();
  auto baseType = cast<RankedTensorType>(p.base.getType());
  bool identity = baseType.getShape() == ArrayRef<int64_t>(p.shape) &&
                  baseType.getElementType() == p.elementType;
  for (auto [k, e] : llvm::enumerate(p.map))
    identity =
        identity && (e == b.dim(p.dims[k]) ||
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
  Value init = tensor::EmptyOp::create(builder, loc, p.shape, p.elementType);
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
  Value init = tensor::EmptyOp::create(rewriter, loc, rootType.getShape(),
                                       rootType.getElementType());
  SmallVector<int64_t> perm(roles.begin(), roles.end());
  return linalg::TransposeOp::create(rewriter, loc, fused, init, perm)
      .getResult()[0];
}

/// Erases the ops that fed `root` and are now unused.
static void eraseDeadProducers(RewriterBase &rewriter,
                               SetVector<Operation *> &slice) {
  bool changed = true;
  while (changed) {
    changed = false;
    for (Operation *op : llvm::reverse(slice)) {
      if (!op || !op->use_empty() || !isMemoryEffectFree(op))
        continue;
      slice.remove(op);
      rewriter.eraseOp(op);
      changed = true;
      break;
    }
  }
}

static void collectProducers(Value v, SetVector<Operation *> &slice) {
  SmallVector<Value> work = {v};
  while (!work.empty()) {
    Value cur = work.pop_back_val();
    Operation *def = cur.getDefiningOp();
    if (!def || slice.contains(def))
      continue;
    slice.insert(def);
    for (Value operand : def->getOperands())
      work.push_back(operand);
    def->walk([&](Operation *nested) {
      for (Value operand : nested->getOperands())
        if (!def->isAncestor(operand.getParentBlock()->getParentOp()))
          work.push_back(operand);
    });
  }
}

static std::string describeMask(const MaskInfo &m) {
  if (m.right == 0)
    return m.left < 0
               ? "causal"
               : llvm::formatv("causal, window_left = {0}", m.left).str();
  if (m.left < 0 && m.right < 0)
    return "no mask";
  return llvm::formatv("window ({0}, {1})", m.left, m.right).str();
}

static void setMaskAttrs(Operation *op, const MaskInfo &m) {
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

/// The 24 orders in which the root's four dims can play batch, query
/// position, head and value channel; the identity (BSHD) first, then the
/// head-major layout (BHSD).
FuseAttempt Matcher::commitFusion(RewriterBase &rewriter, Operation *fused,
                                  const std::array<unsigned, 4> &order) {
  // The root's producers, before the root is replaced (the fused op and its
  // operands are not among them).
  SetVector<Operation *> slice;
  collectProducers(root, slice);
  SmallVector<unsigned> roles(4);
  for (unsigned role = 0; role < 4; ++role)
    roles[order[role]] = role;
  Value replacement = replaceRoot(rewriter, fused->getResult(0), roles);
  rewriter.replaceAllUsesWith(root, replacement);
  eraseDeadProducers(rewriter, slice);
  FuseAttempt a;
  a.fused = true;
  a.fusedOp = fused;
  return a;
}

static SmallVector<std::array<unsigned, 4>> roleOrders() {
  SmallVector<std::array<unsigned, 4>> orders = {{0, 1, 2, 3}, {0, 2, 1, 3}};
  std::array<unsigned, 4> p = {0, 1, 2, 3};
  do {
    if (!llvm::is_contained(orders, p))
      orders.push_back(p);
  } while (std::next_permutation(p.begin(), p.end()));
  return orders;
}

//===----------------------------------------------------------------------===//
// V2
//===----------------------------------------------------------------------===//

FuseAttempt Matcher::matchV2(RewriterBase &rewriter) {
  if (!setupRoot())
    return failure();
  Expr *top = b.open(
      b.leaf(root, llvm::to_vector(llvm::map_range(
                       rootDims, [&](unsigned d) { return b.dim(d); }))));
  if (!isArith(top, ArithKind::Sub)) {
    fail(kRootShape, "the result is not a difference");
    return failure();
  }
  // lhs - factors(rhs): one factor sigmoid(lam), one an attention.
  Term t0, t1;
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
    // Explain near misses: a raw lambda, or the difference the other way.
    bool lhsTerm = matchTerm(top->args[0], t0);
    if (lhsTerm && factors.size() == 2) {
      for (int i = 0; i < 2; ++i) {
        Term probe;
        if (matchTerm(originals[i], probe)) {
          fail(kPairing, "lambda is not passed through a sigmoid (V2 needs "
                         "sigmoid(lambda))");
          return failure();
        }
      }
    }
    SmallVector<Expr *> lf, lo;
    double lc = 1.0;
    flattenProduct(b, top->args[0], lf, lc, &lo);
    if (lf.size() == 2 && lc == 1.0) {
      for (int i = 0; i < 2; ++i) {
        Term probe;
        if (matchSigmoid(lf[i]) && matchTerm(lo[1 - i], probe) &&
            matchTerm(top->args[1], t1)) {
          fail(kPairing, "the subtraction is in the other order "
                         "(sigmoid(lambda) * A - A)");
          return failure();
        }
      }
    }
    fail(lhsTerm ? kPairing : kEpilogue,
         "the subtrahend is not sigmoid(lambda) times an attention");
    return failure();
  }
  // A difference gated by a sigmoid on a tensor of unknown shape: report
  // it rather than look further (views of dynamic tensors do not fold).
  if (!checkStatic({root}))
    return failure();
  if (!matchTerm(top->args[0], t0) || !matchTerm(originals[termIdx], t1))
    return failure();
  if (!sameTerms(t0, t1, true))
    return failure();
  if (!checkStatic({root, t0.q->value, t0.k->value, t0.v->value, lam->value}))
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
  for (const std::array<unsigned, 4> &order : roleOrders()) {
    unsigned rb = rootDims[order[0]], ri = rootDims[order[1]],
             rh = rootDims[order[2]], re = rootDims[order[3]];
    int64_t numPairs = b.extent(rh);
    if (!termsUseOnly(t0, t1, rb, ri, rh, re) ||
        !usesOnly(lam, {rb, ri, rh}, "lambda"))
      continue;
    if (!b.usesDim(t0.q, ri) && b.extent(ri) > 1)
      continue;
    std::optional<MaskInfo> m0 = commonMask(t0, t1, ri);
    if (!m0)
      continue;
    OperandPlan q;
    if (!planQuery(t0, t1, rb, ri, rh, numPairs, q))
      continue;
    q.elementType = elemType;
    // Both heads of a pair must read the same key and value head.
    DenseMap<unsigned, AffineExpr> same;
    bool shared = true;
    for (int64_t h = 0; h < numPairs && shared; ++h) {
      if (headIndex(t0.k, rh, cst(ctx, h), same) !=
          headIndex(t1.k, rh, cst(ctx, h), same)) {
        fail(kOperands,
             llvm::formatv("query heads {0} and {1} (pair {2}) do not share "
                           "a key head",
                           2 * h, 2 * h + 1, h)
                 .str());
        shared = false;
      } else if (headIndex(t0.v, rh, cst(ctx, h), same) !=
                 headIndex(t1.v, rh, cst(ctx, h), same)) {
        fail(kOperands,
             llvm::formatv("query heads {0} and {1} (pair {2}) do not share "
                           "a value head",
                           2 * h, 2 * h + 1, h)
                 .str());
        shared = false;
      }
    }
    if (!shared)
      continue;
    int64_t pairsPerKv = pairsPerKvHead(t0, rh, numPairs, same);
    int64_t numKv = numPairs / pairsPerKv;
    auto kvPlan = [&](Expr *leaf, unsigned channel, int64_t width) {
      OperandPlan p;
      unsigned kb = b.newDim(b.extent(rb)), kt = b.newDim(b.extent(tDim)),
               kg = b.newDim(numKv), kd = b.newDim(width);
      DenseMap<unsigned, AffineExpr> ren = {
          {rb, b.dim(kb)}, {tDim, b.dim(kt)}, {channel, b.dim(kd)}};
      p.base = leaf->value;
      p.map = headIndex(leaf, rh, b.dim(kg) * pairsPerKv, ren);
      p.dims = {kb, kt, kg, kd};
      p.shape = {b.extent(rb), b.extent(tDim), numKv, width};
      p.elementType = elemType;
      return p;
    };
    OperandPlan k = kvPlan(t0.k, dDim, b.extent(dDim));
    OperandPlan v = kvPlan(t0.v, re, b.extent(re));
    OperandPlan l;
    {
      unsigned lb = b.newDim(b.extent(rb)), li = b.newDim(b.extent(ri)),
               lh = b.newDim(numPairs);
      DenseMap<unsigned, AffineExpr> ren = {{rb, b.dim(lb)}, {ri, b.dim(li)}};
      l.base = lam->value;
      l.map = headIndex(lam, rh, b.dim(lh), ren);
      l.dims = {lb, li, lh};
      l.shape = {b.extent(rb), b.extent(ri), numPairs};
      l.elementType = lamType;
    }
    // Emit.
    OpBuilder::InsertionGuard guard(rewriter);
    rewriter.setInsertionPointAfterValue(root);
    Location loc = root.getLoc();
    Value qv = materialize(rewriter, loc, q);
    Value kv = materialize(rewriter, loc, k);
    Value vv = materialize(rewriter, loc, v);
    Value lv = materialize(rewriter, loc, l);
    auto outType = RankedTensorType::get(
        {b.extent(rb), b.extent(ri), numPairs, b.extent(re)}, elemType);
    auto op = V2Op::create(rewriter, loc, outType, qv, kv, vv, lv,
                           /*kv_len=*/Value(), /*causal=*/false,
                           rewriter.getF32FloatAttr(t0.scale));
    setMaskAttrs(op, *m0);
    FuseAttempt a = commitFusion(rewriter, op, order);
    a.description =
        llvm::formatv("fused differential attention V2: {0} query heads in "
                      "{1} pairs, {2} KV heads, head dim {3}, value dim {4}, "
                      "{5}, scale {6}",
                      2 * numPairs, numPairs, numKv, b.extent(dDim),
                      b.extent(re), describeMask(*m0), t0.scale)
            .str();
    return a;
  }
  return failure();
}

//===----------------------------------------------------------------------===//
// V1
//===----------------------------------------------------------------------===//

FuseAttempt Matcher::matchV1(RewriterBase &rewriter) {
  if (!setupRoot())
    return failure();
  Expr *rootLeaf =
      b.leaf(root, llvm::to_vector(llvm::map_range(
                       rootDims, [&](unsigned d) { return b.dim(d); })));
  // c * diff * rsqrt(mean(diff^2) + eps) [* w]
  SmallVector<Expr *> factors, originals;
  double coef = 1.0;
  flattenProduct(b, rootLeaf, factors, coef, &originals);
  Expr *diff = nullptr, *rms = nullptr, *weight = nullptr;
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
      coef *= nc;
      factors.append(nf.begin(), nf.end());
      originals.append(no.begin(), no.end());
    } else if (isArith(f, ArithKind::Sub) && !diff) {
      diff = f;
    } else if (!weight && originals[i]->kind == ExprKind::Leaf) {
      weight = originals[i];
    } else {
      fail(kRootShape, "the result is not a scaled RMSNorm of a difference");
      return failure();
    }
  }
  if (!diff || !rms) {
    fail(kRootShape, "the result is not a scaled RMSNorm of a difference");
    return failure();
  }
  if (!checkStatic({root}))
    return failure();
  // rms = mean(diff^2 over the value channel) + eps.
  if (!isArith(rms, ArithKind::Add)) {
    fail(kEpilogue, "the RMSNorm denominator is not mean + eps");
    return failure();
  }
  double eps = 0.0;
  Expr *mean = nullptr;
  for (int i = 0; i < 2; ++i) {
    Expr *c = b.open(rms->args[i]);
    if (c->kind == ExprKind::Const) {
      eps = c->cst;
      mean = rms->args[1 - i];
    }
  }
  if (!mean || !(eps > 0.0)) {
    fail(kEpilogue, "the RMSNorm epsilon is not a positive constant");
    return failure();
  }
  SmallVector<Expr *> mf;
  double meanCoef = 1.0;
  flattenProduct(b, mean, mf, meanCoef);
  if (mf.size() != 1 || mf[0]->kind != ExprKind::Reduce || mf[0]->isMax ||
      mf[0]->bound.size() != 1 || !isConstExpr(b.open(mf[0]->args[0]), 0.0)) {
    fail(kEpilogue, "the RMSNorm statistic is not a mean of squares");
    return failure();
  }
  unsigned r = mf[0]->bound[0];
  SmallVector<Expr *> sq;
  double sqCoef = 1.0;
  flattenProduct(b, mf[0]->args[1], sq, sqCoef);
  meanCoef *= sqCoef;
  if (sq.size() != 2) {
    fail(kEpilogue, "the RMSNorm statistic is not a mean of squares");
    return failure();
  }
  // Which root dim the norm reduces: the one whose substitution by the
  // bound dim turns the difference into the squared factors.
  int normDim = -1;
  for (unsigned d : rootDims) {
    if (b.extent(d) != b.extent(r))
      continue;
    Expr *shifted = b.substitute(diff, {{d, b.dim(r)}});
    if (b.equal(sq[0], shifted) && b.equal(sq[1], shifted)) {
      normDim = d;
      break;
    }
  }
  if (normDim < 0) {
    fail(kEpilogue, "the RMSNorm does not normalize the difference over one "
                    "axis");
    return failure();
  }
  if (std::abs(meanCoef * b.extent(normDim) - 1.0) > 1e-6) {
    fail(kEpilogue, "the RMSNorm statistic is not a mean");
    return failure();
  }
  // diff = A_a - lam * A_b.
  SmallVector<Expr *> df, dOrig;
  double lamConst = 1.0;
  flattenProduct(b, diff->args[1], df, lamConst, &dOrig);
  Term t0, t1;
  Expr *lam = nullptr;
  if (df.size() == 2) {
    for (int i = 0; i < 2 && !lam; ++i) {
      Term probe;
      if (dOrig[1 - i]->kind == ExprKind::Leaf && matchTerm(dOrig[i], probe)) {
        lam = dOrig[1 - i];
        t1 = probe;
      }
    }
  } else if (df.size() == 1 && matchTerm(dOrig[0], t1)) {
    lam = nullptr; // a constant lambda, materialized below
  } else {
    fail(kEpilogue, "the subtrahend is not lambda times an attention");
    return failure();
  }
  if ((df.size() == 2 && !lam) || !t1.q) {
    fail(kEpilogue, "the subtrahend is not lambda times an attention");
    return failure();
  }
  if (lam && lamConst != 1.0) {
    fail(kPairing, "lambda is scaled by a constant");
    return failure();
  }
  if (!matchTerm(diff->args[0], t0))
    return failure();
  if (!sameTerms(t0, t1, false))
    return failure();
  SmallVector<Value> values = {root, t0.q->value, t0.k->value, t0.v->value};
  if (lam)
    values.push_back(lam->value);
  if (weight)
    values.push_back(weight->value);
  if (!checkStatic(values))
    return failure();
  Type elemType = commonElementType(t0);
  if (!elemType)
    return failure();
  if (weight && !isa<FloatType>(elementTypeOf(weight->value))) {
    fail(kOperands, "the RMSNorm weight is not a float tensor");
    return failure();
  }
  MLIRContext *ctx = b.getContext();
  for (const std::array<unsigned, 4> &order : roleOrders()) {
    unsigned rb = rootDims[order[0]], ri = rootDims[order[1]],
             rh = rootDims[order[2]], re = rootDims[order[3]];
    if (re != static_cast<unsigned>(normDim))
      continue;
    int64_t numPairs = b.extent(rh);
    if (!termsUseOnly(t0, t1, rb, ri, rh, re) ||
        (lam && !usesOnly(lam, {}, "lambda")) ||
        (weight && !usesOnly(weight, {re}, "the RMSNorm weight")))
      continue;
    if (!b.usesDim(t0.q, ri) && b.extent(ri) > 1)
      continue;
    if (b.extent(re) != 2 * b.extent(dDim)) {
      fail(kOperands, "the value width is not twice the head dim (V1)");
      continue;
    }
    std::optional<MaskInfo> m0 = commonMask(t0, t1, ri);
    if (!m0)
      continue;
    if (m0->right != 0 && !(m0->left < 0 && m0->right < 0)) {
      fail(kOperands, "diffattn.v1 supports causal or unmasked attention "
                      "only");
      continue;
    }
    if (m0->right == 0 && m0->left >= 0) {
      fail(kOperands, "diffattn.v1 has no sliding window");
      continue;
    }
    OperandPlan q;
    if (!planQuery(t0, t1, rb, ri, rh, numPairs, q))
      continue;
    q.elementType = elemType;
    DenseMap<unsigned, AffineExpr> same;
    // k: the two attentions' key heads a fixed distance apart; v shared.
    SmallVector<int64_t> kDelta;
    bool ok = true;
    {
      SmallVector<AffineExpr> k0 = headIndex(t0.k, rh, cst(ctx, 0), same);
      SmallVector<AffineExpr> k1 = headIndex(t1.k, rh, cst(ctx, 0), same);
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
      SmallVector<AffineExpr> k0 = headIndex(t0.k, rh, cst(ctx, h), same);
      SmallVector<AffineExpr> k1 = headIndex(t1.k, rh, cst(ctx, h), same);
      for (auto [n, x] : llvm::enumerate(k0))
        ok = ok && b.simplify(x + kDelta[n]) == k1[n];
    }
    if (!ok) {
      fail(kOperands, "the key heads of the two attentions are not a fixed "
                      "distance apart");
      continue;
    }
    bool shared = true;
    for (int64_t h = 0; h < numPairs && shared; ++h) {
      if (headIndex(t0.v, rh, cst(ctx, h), same) !=
          headIndex(t1.v, rh, cst(ctx, h), same)) {
        fail(kOperands,
             llvm::formatv("the two attentions of pair {0} read different "
                           "value heads",
                           h)
                 .str());
        shared = false;
      }
    }
    if (!shared)
      continue;
    int64_t pairsPerKv = pairsPerKvHead(t0, rh, numPairs, same);
    int64_t numKv = numPairs / pairsPerKv;
    OperandPlan k;
    {
      unsigned kb = b.newDim(b.extent(rb)), kt = b.newDim(b.extent(tDim)),
               kj = b.newDim(2 * numKv), kd = b.newDim(b.extent(dDim));
      DenseMap<unsigned, AffineExpr> ren = {
          {rb, b.dim(kb)}, {tDim, b.dim(kt)}, {dDim, b.dim(kd)}};
      AffineExpr j = b.dim(kj);
      k.map = headIndex(t0.k, rh, j.floorDiv(2) * pairsPerKv, ren);
      for (auto [n, d] : llvm::enumerate(kDelta))
        k.map[n] = b.simplify(k.map[n] + (j % 2) * d);
      k.base = t0.k->value;
      k.dims = {kb, kt, kj, kd};
      k.shape = {b.extent(rb), b.extent(tDim), 2 * numKv, b.extent(dDim)};
      k.elementType = elemType;
    }
    OperandPlan v;
    {
      unsigned vb = b.newDim(b.extent(rb)), vt = b.newDim(b.extent(tDim)),
               vg = b.newDim(numKv), ve = b.newDim(b.extent(re));
      DenseMap<unsigned, AffineExpr> ren = {
          {rb, b.dim(vb)}, {tDim, b.dim(vt)}, {re, b.dim(ve)}};
      v.map = headIndex(t0.v, rh, b.dim(vg) * pairsPerKv, ren);
      v.base = t0.v->value;
      v.dims = {vb, vt, vg, ve};
      v.shape = {b.extent(rb), b.extent(tDim), numKv, b.extent(re)};
      v.elementType = elemType;
    }
    OpBuilder::InsertionGuard guard(rewriter);
    rewriter.setInsertionPointAfterValue(root);
    Location loc = root.getLoc();
    Value qv = materialize(rewriter, loc, q);
    Value kv = materialize(rewriter, loc, k);
    Value vv = materialize(rewriter, loc, v);
    Value lv;
    auto scalarF32 = RankedTensorType::get({}, rewriter.getF32Type());
    if (lam) {
      OperandPlan l;
      l.base = lam->value;
      l.map.assign(lam->idx.begin(), lam->idx.end());
      l.elementType = rewriter.getF32Type();
      lv = materialize(rewriter, loc, l);
    } else {
      lv = arith::ConstantOp::create(
          rewriter, loc,
          DenseElementsAttr::get(scalarF32, static_cast<float>(lamConst)));
    }
    Value wv;
    if (weight) {
      OperandPlan w;
      unsigned wd = b.newDim(b.extent(re));
      w.base = weight->value;
      w.map = headIndex(weight, rh, cst(ctx, 0), {{re, b.dim(wd)}});
      w.dims = {wd};
      w.shape = {b.extent(re)};
      Type wt = elementTypeOf(weight->value);
      w.elementType = wt == elemType || wt.isF32() ? wt : elemType;
      wv = materialize(rewriter, loc, w);
    } else {
      auto wType = RankedTensorType::get({b.extent(re)}, elemType);
      wv = arith::ConstantOp::create(
          rewriter, loc,
          DenseElementsAttr::get(wType, rewriter.getFloatAttr(elemType, 1.0)));
    }
    auto outType = RankedTensorType::get(
        {b.extent(rb), b.extent(ri), numPairs, b.extent(re)}, elemType);
    double lambdaInit = 1.0 - coef;
    auto op = V1Op::create(rewriter, loc, outType, qv, kv, vv, lv, wv,
                           /*causal=*/m0->right == 0,
                           rewriter.getF32FloatAttr(t0.scale),
                           APFloat(static_cast<float>(lambdaInit)),
                           APFloat(static_cast<float>(eps)));
    FuseAttempt a = commitFusion(rewriter, op, order);
    a.description =
        llvm::formatv("fused differential attention V1: {0} query heads in "
                      "{1} pairs, {2} KV heads, head dim {3}, {4}, scale {5}, "
                      "lambda_init {6}, eps {7}",
                      2 * numPairs, numPairs, numKv, b.extent(dDim),
                      describeMask(*m0), t0.scale, lambdaInit, eps)
            .str();
    return a;
  }
  return failure();
}

FuseAttempt mlir::diffattn::fusion::tryFuseV2(RewriterBase &rewriter,
                                              Value root) {
  Matcher m(root);
  return m.matchV2(rewriter);
}

FuseAttempt mlir::diffattn::fusion::tryFuseV1(RewriterBase &rewriter,
                                              Value root) {
  Matcher m(root);
  return m.matchV1(rewriter);
}
