//===- FuseShapes.h - symbolic sizes for dynamic views ----------*- C++ -*-===//
//
// What diffattn-fuse needs to read dynamic-shape exports: torch-mlir writes
// a view of a dynamic tensor as `tensor.reshape` whose shape is computed in
// i64 arithmetic (tensor.from_elements of index_cast / muli / divsi /
// select of tensor.dim), and a broadcast as a gather whose index is
// `select(size == 1, 0, i)`. The fusion may read through them only where it
// proves them to be plain views, which needs sizes as symbols:
//
//   - `SizeReasoner` writes a size (of a tensor dim, or an integer/index
//     value) as a constant times a product of symbols, each symbol one
//     runtime tensor size (never negative) or an opaque integer. It folds
//     the casts, products, exact quotients and selects whose condition it can
//     decide (`x < 0` is false for a product of sizes).
//   - `reshapeGroups` proves a `tensor.reshape` to be a sequence of
//     splits and merges (like expand_shape/collapse_shape), and
//     `regroupIndex` rewrites an index through one group.
//
// All of it only reads the IR; nothing is created.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSESHAPES_H
#define DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSESHAPES_H

#include "mlir/IR/AffineExpr.h"
#include "mlir/IR/Value.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SmallVector.h"

#include <optional>
#include <string>

namespace mlir {
namespace linalg {
class LinalgOp;
} // namespace linalg
namespace tensor {
class ReshapeOp;
} // namespace tensor

namespace diffattn::fusion {

/// One factor of a symbolic size: dim `dim` of the tensor `value` (a size,
/// never negative), or the opaque integer `value` (`dim` == -1).
struct SizeSymbol {
  Value value;
  int64_t dim;

  bool operator==(const SizeSymbol &o) const {
    return value == o.value && dim == o.dim;
  }
  bool operator<(const SizeSymbol &o) const;
};

/// `coef` times the product of `syms` (sorted).
struct SizeProduct {
  int64_t coef = 1;
  SmallVector<SizeSymbol, 2> syms;

  static SizeProduct constant(int64_t c) {
    SizeProduct p;
    p.coef = c;
    return p;
  }
  bool isConstant() const { return syms.empty(); }
  /// Every symbol is a tensor size and the coefficient is not negative.
  bool isNonNegative() const;
  bool operator==(const SizeProduct &o) const {
    return coef == o.coef && syms == o.syms;
  }
  bool operator!=(const SizeProduct &o) const { return !(*this == o); }
};

/// Reads sizes as products of symbols (memoized; one per match).
class SizeReasoner {
public:
  /// Size `dim` of the ranked tensor `shaped`.
  std::optional<SizeProduct> sizeOf(Value shaped, int64_t dim);
  /// The value of an integer or index `v`.
  std::optional<SizeProduct> valueOf(Value v);
  /// The value of an i1 `v`, when it can be decided.
  std::optional<bool> truthOf(Value v);
  /// The range of loop `loop` of `op`, read from an operand indexed by it.
  std::optional<SizeProduct> loopSize(linalg::LinalgOp op, unsigned loop);
  /// Whether both are known and provably equal.
  bool equal(const std::optional<SizeProduct> &a,
             const std::optional<SizeProduct> &b) const {
    return a && b && *a == *b;
  }

private:
  std::optional<SizeProduct> sizeImpl(Value shaped, int64_t dim,
                                      unsigned depth);
  std::optional<SizeProduct> valueImpl(Value v, unsigned depth);
  std::optional<bool> truthImpl(Value v, unsigned depth);

  DenseMap<std::pair<Value, int64_t>, std::optional<SizeProduct>> sizeMemo;
  DenseMap<Value, std::optional<SizeProduct>> valueMemo;
};

/// One group of a reshape: source dims `src` hold the same elements as
/// result dims `dst` (either may be empty where the other has only unit
/// dims).
struct ReshapeGroup {
  SmallVector<int64_t, 4> src, dst;
};

/// Proves `op` a sequence of splits and merges of its source's dims: cuts
/// where the products of the sizes before (or after) them agree, so that
/// the row-major order of each group is read alone, and within a group only
/// the first non-unit dim of each side dynamic. On failure, `why` says what
/// could not be proven.
std::optional<SmallVector<ReshapeGroup>>
reshapeGroups(tensor::ReshapeOp op, SizeReasoner &sizes, std::string &why);

/// The source index of one group: the result index `dstIdx` over sizes
/// `dstSizes` (ShapedType::kDynamic allowed in the first non-unit dim),
/// linearized and split again over `srcSizes` (likewise). Nullopt where a
/// dynamic size is not leading or a side has no non-unit dim while the
/// other has one.
std::optional<SmallVector<AffineExpr>> regroupIndex(ArrayRef<AffineExpr> dstIdx,
                                                    ArrayRef<int64_t> dstSizes,
                                                    ArrayRef<int64_t> srcSizes,
                                                    MLIRContext *ctx);

} // namespace diffattn::fusion
} // namespace mlir

#endif // DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSESHAPES_H
