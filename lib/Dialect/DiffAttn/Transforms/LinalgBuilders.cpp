//===- LinalgBuilders.cpp - small builders shared by the lowerings --------===//

#include "LinalgBuilders.h"

#include "mlir/Dialect/SCF/IR/SCF.h"

#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

#include <limits>

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

SmallVector<Value>
lowering::buildGeneric(OpBuilder &b, Location loc, ValueRange inputs,
                       ValueRange outputs, ArrayRef<AffineMap> maps,
                       ArrayRef<utils::IteratorType> iterators,
                       BodyBuilder body) {
  auto op = linalg::GenericOp::create(b, loc, TypeRange(outputs), inputs,
                                      outputs, maps, iterators, body);
  return SmallVector<Value>(op.getResults());
}

Value lowering::buildFilledTensor(OpBuilder &b, Location loc,
                                  ArrayRef<OpFoldResult> sizes,
                                  Type elementType, double value) {
  Value empty = tensor::EmptyOp::create(b, loc, sizes, elementType);
  Value scalar =
      arith::ConstantOp::create(b, loc, b.getFloatAttr(elementType, value));
  return linalg::FillOp::create(b, loc, scalar, empty).getResult(0);
}

Value lowering::buildExtToF32(OpBuilder &b, Location loc, Value value) {
  if (value.getType().isF32())
    return value;
  return arith::ExtFOp::create(b, loc, b.getF32Type(), value);
}

Value lowering::buildTruncFromF32(OpBuilder &b, Location loc, Value value,
                                  Type type) {
  if (type.isF32())
    return value;
  return arith::TruncFOp::create(b, loc, type, value);
}

Value lowering::buildSigmoid(OpBuilder &b, Location loc, Value x) {
  Value one = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(1.0f));
  Value negX = arith::NegFOp::create(b, loc, x);
  Value denom =
      arith::AddFOp::create(b, loc, one, math::ExpOp::create(b, loc, negX));
  return arith::DivFOp::create(b, loc, one, denom);
}

Value lowering::buildSafeMax(OpBuilder &b, Location loc, Value max) {
  Value ninf = arith::ConstantOp::create(
      b, loc, b.getF32FloatAttr(-std::numeric_limits<float>::infinity()));
  Value zero = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f));
  Value isEmpty =
      arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, max, ninf);
  return arith::SelectOp::create(b, loc, isEmpty, zero, max);
}

Value lowering::buildLogSumExp(OpBuilder &b, Location loc, Value max,
                               Value sum) {
  return arith::AddFOp::create(b, loc, max, math::LogOp::create(b, loc, sum));
}

Value lowering::buildNormalize(OpBuilder &b, Location loc, Value acc,
                               Value sum) {
  Value zero = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f));
  Value seen =
      arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, sum, zero);
  Value one = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(1.0f));
  Value safeSum = arith::SelectOp::create(b, loc, seen, sum, one);
  Value quotient = arith::DivFOp::create(b, loc, acc, safeSum);
  return arith::SelectOp::create(b, loc, seen, quotient, zero);
}

Value lowering::buildPairDifference(OpBuilder &b, Location loc, Value acc0,
                                    Value acc1, Value sum0, Value sum1,
                                    Value weight) {
  Value o0 = buildNormalize(b, loc, acc0, sum0);
  Value o1 = buildNormalize(b, loc, acc1, sum1);
  return arith::SubFOp::create(b, loc, o0,
                               arith::MulFOp::create(b, loc, weight, o1));
}

Value lowering::buildMulAcc(OpBuilder &b, Location loc, Value lhs, Value rhs,
                            Value acc) {
  auto fm = arith::FastMathFlagsAttr::get(b.getContext(), attentionFastMath());
  Value prod = arith::MulFOp::create(b, loc, buildExtToF32(b, loc, lhs),
                                     buildExtToF32(b, loc, rhs), fm);
  return arith::AddFOp::create(b, loc, acc, prod, fm);
}

Value lowering::buildRMSNormScale(OpBuilder &b, Location loc, Value x,
                                  Value sumSquares, Value weight, int64_t width,
                                  float eps, float lambdaInit) {
  Value widthF = arith::ConstantOp::create(
      b, loc, b.getF32FloatAttr(static_cast<float>(width)));
  Value epsF = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(eps));
  Value mean = arith::DivFOp::create(b, loc, sumSquares, widthF);
  Value inv =
      math::RsqrtOp::create(b, loc, arith::AddFOp::create(b, loc, mean, epsF));
  Value outScale =
      arith::ConstantOp::create(b, loc, b.getF32FloatAttr(1.0f - lambdaInit));
  Value y = arith::MulFOp::create(b, loc, x, inv);
  y = arith::MulFOp::create(b, loc, y, buildExtToF32(b, loc, weight));
  return arith::MulFOp::create(b, loc, y, outScale);
}

Value mlir::diffattn::lowering::buildIfElse(
    OpBuilder &b, Location loc, Value condition,
    function_ref<Value(OpBuilder &, Location)> then, Value otherwise) {
  auto ifOp = scf::IfOp::create(
      b, loc, condition,
      [&](OpBuilder &tb, Location tl) {
        scf::YieldOp::create(tb, tl, then(tb, tl));
      },
      [&](OpBuilder &eb, Location el) {
        scf::YieldOp::create(eb, el, otherwise);
      });
  return ifOp.getResult(0);
}
