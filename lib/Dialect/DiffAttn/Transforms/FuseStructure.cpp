//===- FuseStructure.cpp - the attentions under a V1/V2 root --------------===//
//
// The structural phase of diffattn-fuse's matcher (FuseMatcher.h): reads each
// attention of the root as sum_t P[t] * v[t] with P a softmax over the key
// axis of scale * q.k + mask, and records q, k and v as leaves, the scale and
// the mask parts. What is accepted:
//   - the softmax written out (max/sub/exp/sum/div, a reciprocal, or
//     linalg.softmax), with any shift constant along the key axis;
//   - torch's safe-softmax guard `where(all_t(s == -inf), 0, softmax(s))`
//     on the masked scores s (SDPA's decomposition), which is SPEC's rule
//     that a row seeing no key gives 0;
//   - constant positive scales anywhere on the scores or on q and k (SDPA
//     splits the scale as sqrt(scale) on q and on k^T);
//   - masks as additive terms or selects against a masking constant, in any
//     order and either orientation.
//
//===----------------------------------------------------------------------===//

#include "FuseMatcher.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>
#include <limits>

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

//===----------------------------------------------------------------------===//
// Failures and names
//===----------------------------------------------------------------------===//

Matcher::Matcher(Value root) : b(root.getContext()), root(root) {}

bool Matcher::fail(int stage, const Twine &msg) {
  stage = std::max(stage, stageFloor);
  if (stage >= bestStage) {
    bestStage = stage;
    bestMessage = msg.str();
  }
  return false;
}

FuseAttempt Matcher::failure() const {
  FuseAttempt a;
  a.stage = bestStage;
  a.message = bestMessage;
  return a;
}

std::string Matcher::name(Value v) {
  if (!asmState) {
    Operation *scope = root.getDefiningOp();
    if (Operation *fn = scope ? scope->getParentOp() : nullptr)
      scope = fn;
    while (scope && scope->getParentOp() &&
           !scope->hasTrait<OpTrait::IsIsolatedFromAbove>())
      scope = scope->getParentOp();
    if (!scope)
      return "a value";
    asmState = std::make_unique<AsmState>(scope);
  }
  std::string s;
  llvm::raw_string_ostream os(s);
  v.printAsOperand(os, *asmState);
  return s;
}

std::string mlir::diffattn::fusion::formatNumber(double x) {
  return llvm::formatv("{0}", llvm::format("%g", x)).str();
}

//===----------------------------------------------------------------------===//
// Root
//===----------------------------------------------------------------------===//

bool Matcher::setupRoot() {
  auto type = dyn_cast<RankedTensorType>(root.getType());
  if (!type || type.getRank() != 4)
    return fail(kRootShape, "the result is not a 4-d tensor");
  for (int64_t s : type.getShape())
    rootDims.push_back(b.newDim(ShapedType::isDynamic(s) ? -1 : s));
  return true;
}

Expr *Matcher::rootElement() {
  return b.leaf(root, llvm::to_vector(llvm::map_range(
                          rootDims, [&](unsigned d) { return b.dim(d); })));
}

//===----------------------------------------------------------------------===//
// Contractions and leaves
//===----------------------------------------------------------------------===//

Expr *Matcher::baseLeaf(Expr *e, double *scale) {
  for (unsigned depth = 0; depth < 32; ++depth) {
    e = b.normalize(e);
    if (e->kind != ExprKind::Leaf || !isa<RankedTensorType>(e->value.getType()))
      return nullptr;
    auto linalgOp = e->value.getDefiningOp<linalg::LinalgOp>();
    if (!linalgOp || linalgOp.getNumReductionLoops() != 0)
      return e;
    Expr *p = b.peel(e);
    // Only exact casts: reading below a truncation would change the values.
    if (isExactCast(p) && p->args[0]->kind == ExprKind::Leaf) {
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

bool Matcher::matchSumOfProducts(Expr *e, unsigned &dim,
                                 SmallVectorImpl<Expr *> &factors,
                                 SmallVectorImpl<Expr *> &originals,
                                 Refusal notSum, Refusal extentMismatch,
                                 Refusal notProduct) {
  if (!e->isReduce(ReduceKind::Add) || e->bound.size() != 1 ||
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
      if (!isExactCast(p))
        break;
      o = b.normalize(p->args[0]);
    }
    originals.push_back(o);
    factors.push_back(b.open(o));
  }
  return true;
}

bool Matcher::looksLikeSoftmax(Expr *e) {
  // A bounded search for sum_t(... exp ...).
  SmallVector<std::pair<Expr *, unsigned>> work = {{e, 0}};
  unsigned visited = 0;
  while (!work.empty() && visited < 64) {
    auto [x, depth] = work.pop_back_val();
    ++visited;
    x = b.open(x);
    if (x->isReduce(ReduceKind::Add)) {
      Expr *body = b.open(x->args[1]);
      if (isArith(body, ArithKind::Exp))
        return true;
    }
    if (depth >= 6 || x->kind == ExprKind::Leaf)
      continue;
    for (Expr *a : x->args)
      work.push_back({a, depth + 1});
  }
  return false;
}

//===----------------------------------------------------------------------===//
// One attention
//===----------------------------------------------------------------------===//

/// Whether a softmax-shaped computation (linalg.softmax, or a linalg op
/// computing math.exp) feeds `v`, within a bounded walk of its producers.
static bool softmaxUpstream(Value v) {
  SmallVector<Value> work = {v};
  llvm::SmallPtrSet<Operation *, 32> seen;
  while (!work.empty() && seen.size() < 256) {
    Operation *def = work.pop_back_val().getDefiningOp();
    if (!def || !seen.insert(def).second)
      continue;
    if (isa<linalg::SoftmaxOp>(def))
      return true;
    bool hasExp = false;
    if (isa<linalg::LinalgOp>(def))
      def->walk([&](math::ExpOp) { hasExp = true; });
    if (hasExp)
      return true;
    // Operands, and values a region captures (gathers' tensor.extract).
    def->walk([&](Operation *nested) {
      for (Value operand : nested->getOperands())
        work.push_back(operand);
    });
  }
  return false;
}

bool Matcher::failOpaque(Expr *leaf, StringRef what) {
  if (!wouldKeep(kSoftmax))
    return false;
  Operation *def = leaf->value.getDefiningOp();
  std::string why = def ? b.whyOpaque(def) : std::string();
  return fail(
      kSoftmax,
      llvm::formatv("{0} through {1}{2}, which the fusion does not "
                    "look through{3}",
                    what, name(leaf->value),
                    def ? " (" + def->getName().getStringRef().str() + ")"
                        : std::string(),
                    why.empty() ? why : ": " + why));
}

bool Matcher::matchTerm(Expr *e, Term &t) {
  SmallVector<Expr *> factors, originals;
  Expr *opened = b.open(e);
  if (opened->kind == ExprKind::Leaf && wouldKeep(kSoftmax) &&
      softmaxUpstream(opened->value))
    return failOpaque(opened, "an attention feeds the difference");
  if (!matchSumOfProducts(
          b.open(e), tDim, factors, originals,
          {kEpilogue, "an operand of the difference is not a P*V product"},
          {kPairing, "the two attentions have different key lengths"},
          {kContraction, "the contraction is not probabilities times values"}))
    return false;
  for (int order = 0; order < 2; ++order) {
    Term candidate;
    // Below a softmax-shaped reduction every refusal is reported.
    Expr *f = factors[order];
    bool softmaxLike = looksLikeSoftmax(f) ||
                       (f->kind == ExprKind::Leaf && softmaxUpstream(f->value));
    StageFloorScope floor(*this, softmaxLike ? static_cast<int>(kSoftmax) : 0);
    if (f->kind == ExprKind::Leaf && softmaxLike) {
      failOpaque(f, "the probabilities reach the P*V product");
      continue;
    }
    if (!matchProbabilities(originals[order], candidate))
      continue;
    candidate.v = baseLeaf(originals[1 - order], nullptr);
    if (!candidate.v)
      return fail(kScores, "the values are not read from a tensor");
    if (!b.usesDim(candidate.v, tDim))
      return fail(kScores, "the values do not depend on the key position");
    t = candidate;
    return true;
  }
  return false;
}

bool Matcher::matchProbabilities(Expr *pe, Term &t) {
  Expr *p = b.open(pe);
  auto pName = [&]() {
    return pe->kind == ExprKind::Leaf ? " (" + name(pe->value) + ")"
                                      : std::string();
  };
  // where(all_t(s == -inf), 0, softmax(s)): torch's safe softmax.
  Expr *guard = nullptr;
  if (isArith(p, ArithKind::Select) && isConstExpr(b.open(p->args[1]), 0.0)) {
    guard = p->args[0];
    pe = b.normalize(p->args[2]);
    p = b.open(pe);
  }
  Expr *scores = nullptr;
  if (!matchSoftmax(p, t, scores)) {
    // Name what sits between the softmax and the P.V product.
    if (isArith(p, ArithKind::Mul) || isArith(p, ArithKind::Div)) {
      SmallVector<Expr *> factors;
      double coef = 1.0;
      flattenProduct(b, p, factors, coef);
      int softmaxAt = -1;
      int saved = bestStage;
      std::string savedMsg = bestMessage;
      for (auto [i, f] : llvm::enumerate(factors)) {
        Expr *side = f;
        if (isArith(side, ArithKind::Select) &&
            isConstExpr(b.open(side->args[1]), 0.0))
          side = b.open(side->args[2]); // a guarded softmax
        Term probe;
        Expr *s = nullptr;
        if (softmaxAt < 0 && looksLikeSoftmax(side) &&
            matchSoftmax(side, probe, s))
          softmaxAt = i;
      }
      bestStage = saved;
      bestMessage = savedMsg;
      if (softmaxAt >= 0 && factors.size() > 1)
        return fail(kSoftmax,
                    llvm::formatv("the probabilities{0} are multiplied by "
                                  "another tensor after the softmax (dropout "
                                  "in training mode?)",
                                  pName()));
      if (softmaxAt >= 0)
        return fail(kSoftmax,
                    llvm::formatv("the probabilities{0} are scaled by {1} "
                                  "after the softmax",
                                  pName(), formatNumber(coef)));
    }
    return false;
  }
  if (guard && !matchGuard(guard, scores))
    return fail(kSoftmax,
                llvm::formatv("the select on the probabilities{0} is not "
                              "torch's safe-softmax guard (0 where every "
                              "masked score of the row is -inf)",
                              pName()));
  t.guarded = guard != nullptr;
  return matchScores(scores, t);
}

bool Matcher::matchSoftmax(Expr *p, Term &t, Expr *&scores) {
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
  if (!den->isReduce(ReduceKind::Add) || den->bound.size() != 1 ||
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
  scores = x;
  return true;
}

bool Matcher::matchGuard(Expr *cond, Expr *scores) {
  Expr *c = b.open(cond);
  if (!c->isReduce(ReduceKind::And) || c->bound.size() != 1 ||
      b.extent(c->bound[0]) != b.extent(tDim) ||
      !isConstExpr(b.open(c->args[0]), 1.0))
    return false;
  Expr *cmp = b.open(c->args[1]);
  if (!isArith(cmp, ArithKind::CmpF) ||
      cmp->pred != static_cast<int64_t>(arith::CmpFPredicate::OEQ))
    return false;
  double negInf = -std::numeric_limits<double>::infinity();
  Expr *lhs = b.open(cmp->args[0]), *rhs = b.open(cmp->args[1]);
  Expr *s = isConstExpr(rhs, negInf)   ? lhs
            : isConstExpr(lhs, negInf) ? rhs
                                       : nullptr;
  if (!s)
    return false;
  // The guard must read the same masked scores the softmax reads, along the
  // key axis.
  Expr *expected = b.substitute(b.open(scores), {{tDim, b.dim(c->bound[0])}});
  return b.equal(s, expected);
}

/// The side of a sum that holds the q.k contraction (looking through
/// constant factors, selects against masking constants and nested sums).
static bool holdsContraction(ExprBuilder &b, Expr *s) {
  for (unsigned k = 0; k < 16; ++k) {
    s = b.open(s);
    SmallVector<Expr *> f;
    double c = 1.0;
    flattenProduct(b, s, f, c);
    if (f.size() == 1 && f[0] != s) {
      s = f[0];
      continue;
    }
    if (isArith(s, ArithKind::Select)) {
      // The branch that is not the masking constant carries the scores.
      Expr *t = b.open(s->args[1]), *e = b.open(s->args[2]);
      s = isMaskingConstant(t) ? e : t;
      continue;
    }
    if (isArith(s, ArithKind::Add)) {
      return holdsContraction(b, s->args[0]) || holdsContraction(b, s->args[1]);
    }
    break;
  }
  return s->isReduce(ReduceKind::Add);
}

bool Matcher::matchScores(Expr *x, Term &t) {
  double mult = 1.0;
  for (unsigned depth = 0; depth < 32; ++depth) {
    x = b.open(x);
    if (isArith(x, ArithKind::Select)) {
      Expr *a = b.open(x->args[1]), *c = b.open(x->args[2]);
      if (isMaskingConstant(a)) {
        t.mask.push_back({x->args[0], false, false, mult, a->cst});
        x = x->args[2];
        continue;
      }
      if (isMaskingConstant(c)) {
        t.mask.push_back({x->args[0], false, true, mult, c->cst});
        x = x->args[1];
        continue;
      }
      return fail(kScores, "a select on the scores does not mask with -inf "
                           "or a large negative constant");
    }
    if (isArith(x, ArithKind::Add)) {
      // The side holding the q.k contraction continues; the other is an
      // additive mask.
      bool h0 = holdsContraction(b, x->args[0]);
      bool h1 = holdsContraction(b, x->args[1]);
      if (h0 == h1)
        return fail(kScores, h0 ? "both sides of a sum on the scores hold a "
                                  "contraction"
                                : "the scores are not a q*k contraction");
      int scoreSide = h0 ? 0 : 1;
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
      if (isExactCast(p))
        arg = b.normalize(p->args[0]);
      else
        break;
    }
    return arg->kind == ExprKind::Leaf ? arg : nullptr;
  }
  return nullptr;
}

bool Matcher::sameTerms(const Term &a, const Term &c) {
  if (a.q->value != c.q->value)
    return fail(kPairing, llvm::formatv("the two attentions read different "
                                        "query tensors ({0} and {1})",
                                        name(a.q->value), name(c.q->value)));
  if (a.k->value != c.k->value)
    return fail(kPairing, llvm::formatv("the two attentions read different "
                                        "key tensors ({0} and {1})",
                                        name(a.k->value), name(c.k->value)));
  if (a.v->value != c.v->value)
    return fail(kPairing, llvm::formatv("the two attentions read different "
                                        "value tensors ({0} and {1})",
                                        name(a.v->value), name(c.v->value)));
  if (std::abs(a.scale - c.scale) > 1e-6 * std::abs(a.scale))
    return fail(kPairing,
                llvm::formatv("the two attentions use different "
                              "scales ({0} and {1})",
                              formatNumber(a.scale), formatNumber(c.scale)));
  return true;
}
