//===- LinalgBuilders.cpp - small builders shared by the lowerings --------===//

#include "LinalgBuilders.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

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

Value lowering::buildFloatConstant(OpBuilder &b, Location loc, Type type,
                                   double value) {
  return arith::ConstantOp::create(b, loc, b.getFloatAttr(type, value));
}

Value lowering::buildFloatCast(OpBuilder &b, Location loc, Value value,
                               Type type) {
  Type from = value.getType();
  if (from == type)
    return value;
  if (from.getIntOrFloatBitWidth() < type.getIntOrFloatBitWidth())
    return arith::ExtFOp::create(b, loc, type, value);
  return arith::TruncFOp::create(b, loc, type, value);
}

Value lowering::buildSigmoid(OpBuilder &b, Location loc, Value x) {
  Value one = buildFloatConstant(b, loc, x.getType(), 1.0);
  Value negX = arith::NegFOp::create(b, loc, x);
  Value denom =
      arith::AddFOp::create(b, loc, one, math::ExpOp::create(b, loc, negX));
  return arith::DivFOp::create(b, loc, one, denom);
}

Value lowering::buildSafeMax(OpBuilder &b, Location loc, Value max) {
  Type type = max.getType();
  Value ninf = buildFloatConstant(b, loc, type,
                                  -std::numeric_limits<double>::infinity());
  Value zero = buildFloatConstant(b, loc, type, 0.0);
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
  Value zero = buildFloatConstant(b, loc, sum.getType(), 0.0);
  Value seen =
      arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, sum, zero);
  Value one = buildFloatConstant(b, loc, sum.getType(), 1.0);
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
  Type type = acc.getType();
  Value prod = arith::MulFOp::create(b, loc, buildFloatCast(b, loc, lhs, type),
                                     buildFloatCast(b, loc, rhs, type), fm);
  return arith::AddFOp::create(b, loc, acc, prod, fm);
}

Value lowering::buildRMSNormScale(OpBuilder &b, Location loc, Value x,
                                  Value sumSquares, Value weight, int64_t width,
                                  float eps, float lambdaInit) {
  Type type = x.getType();
  Value widthF = buildFloatConstant(b, loc, type, static_cast<double>(width));
  Value epsF = buildFloatConstant(b, loc, type, eps);
  Value mean = arith::DivFOp::create(b, loc, sumSquares, widthF);
  Value inv =
      math::RsqrtOp::create(b, loc, arith::AddFOp::create(b, loc, mean, epsF));
  // 1 - lambda_init: rounded to f32 for f32 sums, exact in double (from
  // lambda_init's f32 value) for f64 sums.
  double outScaleValue =
      type.isF64() ? 1.0 - static_cast<double>(lambdaInit) : 1.0f - lambdaInit;
  Value outScale = buildFloatConstant(b, loc, type, outScaleValue);
  Value y = arith::MulFOp::create(b, loc, x, inv);
  y = arith::MulFOp::create(b, loc, y, buildFloatCast(b, loc, weight, type));
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

Value lowering::buildRowContraction(
    OpBuilder &b, Location loc, Value lhs, Value rhs, Value init,
    ArrayRef<AffineMap> maps, ArrayRef<utils::IteratorType> iterators,
    function_ref<Value(OpBuilder &, Location, ArrayRef<Value>)> guard) {
  OpBuilder::InsertionGuard insertionGuard(b);
  unsigned numLoops = iterators.size(), last = numLoops - 1;
  auto initType = cast<RankedTensorType>(init.getType());
  auto rhsType = cast<RankedTensorType>(rhs.getType());
  Type accType = initType.getElementType();
  int64_t width = initType.getShape().back();
  auto vecType = VectorType::get({width}, accType);
  auto rowType = VectorType::get({width}, rhsType.getElementType());
  auto fm = arith::FastMathFlagsAttr::get(b.getContext(), attentionFastMath());
  Value zero = arith::ConstantIndexOp::create(b, loc, 0);
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  // Each loop's trip count: the size of an operand dimension it indexes
  // directly.
  std::array<Value, 3> operands = {lhs, rhs, init};
  SmallVector<Value> sizes(numLoops);
  for (unsigned loop = 0; loop < last; ++loop)
    for (unsigned o = 0; o < 3 && !sizes[loop]; ++o)
      for (auto [pos, expr] : llvm::enumerate(maps[o].getResults()))
        if (auto d = dyn_cast<AffineDimExpr>(expr);
            d && d.getPosition() == loop) {
          sizes[loop] = tensor::DimOp::create(b, loc, operands[o], pos);
          break;
        }
  SmallVector<unsigned> parallel, reduction;
  for (unsigned loop = 0; loop < last; ++loop) {
    assert(sizes[loop] && "every loop indexes some operand directly");
    (iterators[loop] == utils::IteratorType::parallel ? parallel : reduction)
        .push_back(loop);
  }
  SmallVector<Value> ivs(numLoops, zero);
  // `map`'s indices at the current loops (its last result, the vector
  // dimension's, as 0 when `row`).
  auto indicesOf = [&](AffineMap map, bool row) {
    SmallVector<Value> indices;
    unsigned count = map.getNumResults() - (row ? 1 : 0);
    for (unsigned r = 0; r < count; ++r) {
      AffineExpr expr = map.getResult(r);
      if (auto d = dyn_cast<AffineDimExpr>(expr))
        indices.push_back(ivs[d.getPosition()]);
      else
        indices.push_back(affine::AffineApplyOp::create(
            b, loc, AffineMap::get(numLoops, 0, expr), ivs));
    }
    if (row)
      indices.push_back(zero);
    return indices;
  };
  // Nested loops over `loops`, carrying `carried`; `body` builds the
  // innermost value.
  std::function<Value(ArrayRef<unsigned>, Value, function_ref<Value(Value)>)>
      nest = [&](ArrayRef<unsigned> loops, Value carried,
                 function_ref<Value(Value)> body) -> Value {
    if (loops.empty())
      return body(carried);
    auto loop = scf::ForOp::create(b, loc, zero, sizes[loops.front()], one,
                                   ValueRange{carried});
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(loop.getBody());
    ivs[loops.front()] = loop.getInductionVar();
    Value next = nest(loops.drop_front(), loop.getRegionIterArgs()[0], body);
    scf::YieldOp::create(b, loc, next);
    return loop.getResult(0);
  };
  return nest(parallel, init, [&](Value tile) -> Value {
    SmallVector<Value> at = indicesOf(maps[2], /*row=*/true);
    Value accPad = buildFloatConstant(b, loc, accType, 0.0);
    Value start = vector::TransferReadOp::create(b, loc, vecType, tile, at,
                                                 accPad, ArrayRef<bool>{true});
    Value sum = nest(reduction, start, [&](Value partial) -> Value {
      Value coefficient =
          buildFloatCast(b, loc,
                         tensor::ExtractOp::create(
                             b, loc, lhs, indicesOf(maps[0], /*row=*/false)),
                         accType);
      Value rowPad = buildFloatConstant(b, loc, rhsType.getElementType(), 0.0);
      Value row = vector::TransferReadOp::create(
          b, loc, rowType, rhs, indicesOf(maps[1], /*row=*/true), rowPad,
          ArrayRef<bool>{true});
      if (rowType != vecType)
        row = arith::ExtFOp::create(b, loc, vecType, row);
      Value term = arith::MulFOp::create(
          b, loc, vector::BroadcastOp::create(b, loc, vecType, coefficient),
          row, fm);
      Value next = arith::AddFOp::create(b, loc, partial, term, fm);
      if (guard)
        if (Value keep = guard(b, loc, ivs))
          next = arith::SelectOp::create(b, loc, keep, next, partial);
      return next;
    });
    return vector::TransferWriteOp::create(b, loc, sum, tile, at,
                                           ArrayRef<bool>{true})
        .getResult();
  });
}
