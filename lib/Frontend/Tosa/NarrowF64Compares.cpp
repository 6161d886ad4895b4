//===- NarrowF64Compares.cpp - compare below f64 where it is exact --------===//
//
// The DiffAttnTosaNarrowF64Compares pass (see Passes.td): rewrites TOSA
// comparisons of floats that torch-mlir widened to f64 into comparisons in
// the floats' own type, which MLIR 22's TOSA validation accepts.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Frontend/Tosa/TosaFrontend.h"

#include "mlir/Dialect/Tosa/IR/TosaOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNTOSANARROWF64COMPARES
#include "diffattn/Frontend/Tosa/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;

namespace {

/// One f64 operand of a comparison, read as a narrower float.
struct NarrowOperand {
  /// The narrow value a cast widened, or null for a constant.
  Value source;
  /// The constant's elements (for a constant operand).
  DenseFPElementsAttr constant;
};

/// `v` as a widened narrow float or an f64 constant; nullopt otherwise.
static std::optional<NarrowOperand> readOperand(Value v) {
  if (auto cast = v.getDefiningOp<tosa::CastOp>()) {
    auto srcType = dyn_cast<RankedTensorType>(cast.getInput().getType());
    if (srcType && isa<FloatType>(srcType.getElementType()) &&
        !srcType.getElementType().isF64())
      return NarrowOperand{cast.getInput(), {}};
    return std::nullopt;
  }
  if (auto cst = v.getDefiningOp<tosa::ConstOp>())
    if (auto dense = dyn_cast<DenseFPElementsAttr>(cst.getValues()))
      return NarrowOperand{Value(), dense};
  return std::nullopt;
}

/// `attr` converted to `type`'s element type when every element converts
/// exactly.
static DenseElementsAttr narrowConstant(DenseFPElementsAttr attr,
                                        FloatType type) {
  SmallVector<APFloat> values;
  for (APFloat v : attr.getValues<APFloat>()) {
    bool losesInfo = false;
    APFloat::opStatus status = v.convert(
        type.getFloatSemantics(), APFloat::rmNearestTiesToEven, &losesInfo);
    if (losesInfo || (status != APFloat::opOK && status != APFloat::opInexact))
      return {};
    values.push_back(v);
  }
  auto shaped = RankedTensorType::get(attr.getType().getShape(), type);
  return DenseElementsAttr::get(shaped, values);
}

template <typename CompareOp>
struct NarrowCompare : public OpRewritePattern<CompareOp> {
  using OpRewritePattern<CompareOp>::OpRewritePattern;

  LogicalResult matchAndRewrite(CompareOp op,
                                PatternRewriter &rewriter) const override {
    Value lhs = op->getOperand(0), rhs = op->getOperand(1);
    auto lhsType = dyn_cast<RankedTensorType>(lhs.getType());
    if (!lhsType || !lhsType.getElementType().isF64())
      return rewriter.notifyMatchFailure(op, "not an f64 comparison");
    std::optional<NarrowOperand> a = readOperand(lhs), b = readOperand(rhs);
    if (!a || !b || (!a->source && !b->source))
      return rewriter.notifyMatchFailure(op, "operands are not widened");
    Type narrow = a->source ? getElementTypeOrSelf(a->source)
                            : getElementTypeOrSelf(b->source);
    if ((a->source && getElementTypeOrSelf(a->source) != narrow) ||
        (b->source && getElementTypeOrSelf(b->source) != narrow))
      return rewriter.notifyMatchFailure(op, "widened from different types");
    SmallVector<Value, 2> operands;
    for (auto [operand, wide] : {std::pair(*a, lhs), std::pair(*b, rhs)}) {
      if (operand.source) {
        operands.push_back(operand.source);
        continue;
      }
      DenseElementsAttr attr =
          narrowConstant(operand.constant, cast<FloatType>(narrow));
      if (!attr)
        return rewriter.notifyMatchFailure(op, "constant is not exact");
      operands.push_back(
          tosa::ConstOp::create(rewriter, wide.getLoc(), attr.getType(), attr));
    }
    rewriter.replaceOpWithNewOp<CompareOp>(op, op.getType(), operands[0],
                                           operands[1]);
    return success();
  }
};

struct DiffAttnTosaNarrowF64ComparesPass
    : public diffattn::impl::DiffAttnTosaNarrowF64ComparesBase<
          DiffAttnTosaNarrowF64ComparesPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<NarrowCompare<tosa::EqualOp>, NarrowCompare<tosa::GreaterOp>,
                 NarrowCompare<tosa::GreaterEqualOp>>(&getContext());
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      signalPassFailure();
  }
};

} // namespace
