//===- FuseExpr.h - element-level view of tensor graphs ---------*- C++ -*-===//
//
// The representation the diffattn-fuse matchers work on. A tensor graph
// (linalg on tensors, tensor reshapes/slices, constants) is read one element
// at a time: the element of a tensor at an affine index is an expression tree
// of arithmetic nodes, index values, constants, reductions and leaves
// (elements of tensors that are not looked through). Layout ops (transpose,
// broadcast, reshape, strided slice, gathers with constant indices) only
// change the affine index of a leaf, so the matchers see the same tree
// whatever layout the front end chose.
//
// Index dimensions are global: every loop or role the matchers talk about is
// one dimension with a known extent, which lets the simplifier fold the
// floordiv/mod that reshapes introduce.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEEXPR_H
#define DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEEXPR_H

#include "FuseShapes.h"

#include "mlir/IR/AffineExpr.h"
#include "mlir/IR/Value.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SmallVector.h"

#include <deque>
#include <optional>

namespace mlir {
namespace arith {
class SelectOp;
} // namespace arith
} // namespace mlir

namespace mlir::diffattn::fusion {

/// Bounds the recursion of every walk over expressions and graphs.
constexpr unsigned kMaxDepth = 96;
/// The most points an index table or a reduction may be evaluated at.
constexpr int64_t kMaxEvalPoints = 1 << 16;

enum class ExprKind { Leaf, Const, Index, Arith, Reduce };

/// How a Reduce node combines its terms: a sum, a max, or a logical and/or
/// of i1 terms (0 or 1).
enum class ReduceKind { Add, Max, And, Or };

enum class ArithKind {
  Add,
  Sub,
  Mul,
  Div,
  Neg,
  Exp,
  Max,
  Min,
  Select,
  CmpF,
  CmpI,
  Rsqrt,
  Sqrt,
  Pow,
  Cast,
  And,
  Or,
  Xor,
  IDiv,
  Rem,
  Other
};

/// One node of an element expression.
struct Expr {
  ExprKind kind;
  /// Leaf: the element of the tensor `value` at `idx`, or the scalar `value`
  /// (empty idx, non-tensor type).
  Value value;
  SmallVector<AffineExpr, 4> idx;
  /// Const.
  double cst = 0.0;
  /// Index: an index value (linalg.index) as an affine function of dims.
  AffineExpr index;
  /// Arith: the operation, the comparison predicate (CmpF/CmpI) and, for
  /// Cast, whether the result is a float.
  ArithKind op = ArithKind::Other;
  int64_t pred = 0;
  bool floatResult = true;
  /// Arith operands; Reduce: {init, body}.
  SmallVector<Expr *, 3> args;
  /// Reduce: how the terms combine over the dims `bound`.
  ReduceKind reduceKind = ReduceKind::Add;
  SmallVector<unsigned, 2> bound;

  bool isReduce(ReduceKind k) const {
    return kind == ExprKind::Reduce && reduceKind == k;
  }
};

/// Builds, expands, compares and evaluates element expressions.
class ExprBuilder {
public:
  explicit ExprBuilder(MLIRContext *ctx) : ctx(ctx) {}

  MLIRContext *getContext() const { return ctx; }

  /// A new dimension of the given extent (-1: unknown).
  unsigned newDim(int64_t extent);
  int64_t extent(unsigned dim) const { return extents[dim]; }
  AffineExpr dim(unsigned d) const;

  Expr *leaf(Value v, ArrayRef<AffineExpr> idx);
  Expr *constant(double c);
  Expr *index(AffineExpr e);
  /// An arithmetic node; folds when every operand is a constant.
  Expr *arith(ArithKind op, ArrayRef<Expr *> args, int64_t pred = 0,
              bool floatResult = true);
  Expr *reduce(ReduceKind kind, ArrayRef<unsigned> bound, Expr *init,
               Expr *body);

  /// Simplifies `e` using the extents of its dims (dims of extent 1 become
  /// 0; floordiv/mod of sums with bounded remainders fold).
  AffineExpr simplify(AffineExpr e) const;

  /// Follows a leaf through layout ops (reshapes, slices, casts, copies,
  /// transposes, broadcasts, gathers with constant indices, splat constants)
  /// to the first producer that computes something. Non-leaves are returned
  /// unchanged.
  Expr *normalize(Expr *e);
  /// normalize(), then one level of expansion: an elementwise linalg op
  /// becomes its payload over the leaf's index, a reduction becomes a Reduce
  /// node, linalg.softmax its max/exp/sum/div formula. Returns the
  /// normalized leaf when its producer cannot be expanded.
  Expr *peel(Expr *e);
  /// peel() and strip float-to-float casts, repeatedly.
  Expr *open(Expr *e);

  /// Replaces dims by affine expressions everywhere in `e`.
  Expr *substitute(Expr *e, const DenseMap<unsigned, AffineExpr> &repl);
  /// Structural equality, expanding leaves as needed; bound dims of
  /// reductions are matched positionally.
  bool equal(Expr *a, Expr *b);
  /// Dims `e` depends on (through leaf indices, index nodes and reduction
  /// bodies; bound dims excluded). Leaves are not expanded.
  void collectDims(Expr *e, llvm::SmallDenseSet<unsigned, 8> &dims);
  bool usesDim(Expr *e, unsigned d);

  /// Expands every leaf that can be expanded (depth-limited); the result's
  /// leaves are tensors that cannot be expanded further.
  Expr *expandAll(Expr *e, unsigned depth = 0);
  /// Evaluates a fully expanded expression with concrete dim values
  /// (`values[d]` for dim d). Leaves must be constant tensors. Nullopt when
  /// something cannot be evaluated.
  std::optional<double> evaluate(Expr *e, ArrayRef<int64_t> values);
  /// Concrete value of an affine expression.
  std::optional<int64_t> evaluate(AffineExpr e, ArrayRef<int64_t> values);

  unsigned numDims() const { return extents.size(); }

  /// Symbolic sizes of the graph's tensors (dynamic views and gathers are
  /// read only where they are proven to preserve the ranges).
  SizeReasoner &sizes() { return sizeReasoner; }
  /// Why `op`, a view the expressions stop at, is not looked through
  /// (empty when there is nothing more specific to say).
  std::string whyOpaque(Operation *op);

private:
  Expr *create(ExprKind kind);
  /// One step of `normalize` through a view op; null when `leaf`'s producer
  /// is not a view op.
  Expr *stepView(Expr *leaf);
  Expr *peelLinalg(Expr *leaf);
  /// `leaf` with the index of every loop its producer's element does not
  /// depend on replaced by 0 (unchanged when there is none).
  Expr *zeroIgnoredLoops(Expr *leaf);
  Expr *peelSoftmax(Expr *leaf);
  Expr *buildPayload(Operation *op, Value v, ArrayRef<AffineExpr> loops,
                     DenseMap<Value, Expr *> &memo, unsigned depth);
  Expr *scalarExpr(Value v);
  /// The loop of `op` whose index `sel` is, when `sel` is a broadcast's
  /// `select(n == 1, 0, index)` over a loop of range n.
  std::optional<unsigned> broadcastIndex(linalg::LinalgOp op,
                                         arith::SelectOp sel);
  bool equalImpl(Expr *a, Expr *b, DenseMap<unsigned, AffineExpr> &rename,
                 unsigned depth);
  std::optional<double> evalImpl(Expr *e, SmallVectorImpl<int64_t> &values,
                                 unsigned depth);

  MLIRContext *ctx;
  SmallVector<int64_t> extents;
  std::deque<Expr> nodes;
  /// While a reduction's payload is expanded: its accumulator, which may
  /// only appear in the combining op (anywhere else the expansion fails).
  Value forbiddenArg;
  SizeReasoner sizeReasoner;
};

/// The value of an arithmetic node over concrete operands; nullopt for
/// `Other` and integer division by zero.
std::optional<double> applyArith(ArithKind op, int64_t pred,
                                 ArrayRef<double> values);

/// Floor division of integers (rounds towards negative infinity).
inline int64_t floorDivInt(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/// `Expr::pred` of a Cast node that is exact (a float extension): the
/// value is unchanged, so a leaf may be read through it.
constexpr int64_t kExactCast = 1;

/// True when `e` is an exact float extension.
inline bool isExactCast(Expr *e) {
  return e->kind == ExprKind::Arith && e->op == ArithKind::Cast &&
         e->floatResult && e->pred == kExactCast && e->args.size() == 1;
}

/// True when `e` is the constant `c`.
inline bool isConstExpr(Expr *e, double c) {
  return e->kind == ExprKind::Const && e->cst == c;
}

/// True when `e` is an arithmetic node of kind `k`.
inline bool isArith(Expr *e, ArithKind k) {
  return e->kind == ExprKind::Arith && e->op == k;
}

/// Flattens nested products: `Mul`s, `Neg`s, squares (`Pow` by 2) and `Div`s
/// by constants become a list of factors (opened) and one constant
/// coefficient. Divisions by non-constants stay factors. `originals`, when
/// given, receives each factor as it was before opening (normalized), which
/// is the tensor leaf an operand is read from.
void flattenProduct(ExprBuilder &b, Expr *e, SmallVectorImpl<Expr *> &factors,
                    double &coefficient,
                    SmallVectorImpl<Expr *> *originals = nullptr);

/// True for a constant that masks a score: -inf or at most -1e4.
bool isMaskingConstant(Expr *e);

/// Prints `e` to stderr (debugging).
void dumpExpr(Expr *e);

} // namespace mlir::diffattn::fusion

#endif // DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEEXPR_H
