//===- Decompose.cpp - diffattn ops to untiled linalg ---------------------===//
//
// The DiffAttnDecompose pass and its core, decomposeDiffAttnOp: SPEC.md's
// formulas, and diffattn.v2_backward's gradients, written as linalg.generic
// ops over whole tensors (the untiled oracle). Scores, softmax statistics
// and accumulation are in the accumulator type (f64 for f64 operands, else
// f32); results have their operands' element types.
//
//===----------------------------------------------------------------------===//

#include "DecomposeBuilders.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"
#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Utils/StaticValueUtils.h"

#include <limits>
#include <optional>

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNDECOMPOSE
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

LogicalResult mlir::diffattn::decomposeDiffAttnOp(RewriterBase &rewriter,
                                                  Operation *op) {
  if (auto backward = dyn_cast<V2BackwardOp>(op))
    return lowerV2Backward(rewriter, backward, FlashTileSizes{0, 0});
  FailureOr<Operation *> dense = materializeServingLayouts(rewriter, op);
  if (failed(dense))
    return failure();
  op = *dense;
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  Value q = op->getOperand(0), k = op->getOperand(1), v = op->getOperand(2);
  Value lam = op->getOperand(3);
  Decomposition dec(rewriter, op, q, k,
                    AttentionConfig::get(op).hasKvLen ? op->getOperand(4)
                                                      : Value());
  const AttentionConfig &config = dec.config;
  Location loc = dec.loc;
  Type accType = dec.acc;
  double ninf = -std::numeric_limits<double>::infinity();
  auto map = [&](unsigned n, ArrayRef<AffineExpr> r) { return dec.map(n, r); };
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3);
  OpFoldResult batch = dec.batch, seqQ = dec.seqQ, queryHeads = dec.queryHeads,
               pairs = dec.pairs, valueDim = dec.valueDim;

  Value masked = dec.maskedScores(q, k);

  // Row max M[b, j, i] and probabilities P = exp(S - M).
  AffineMap id4 = map(4, {d0, d1, d2, d3});
  AffineMap rowMap = map(4, {d0, d1, d2});
  Value rowInit = buildFilledTensor(rewriter, loc, {batch, queryHeads, seqQ},
                                    accType, ninf);
  Value rowMax = buildGeneric(
      rewriter, loc, {masked}, {rowInit}, {id4, rowMap},
      {kPar, kPar, kPar, kRed}, [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(
            b, l, arith::MaxNumFOp::create(b, l, args[0], args[1]).getResult());
      })[0];
  Value probs = buildGeneric(
      rewriter, loc, {masked, rowMax}, {dec.emptyScores()}, {id4, rowMap, id4},
      {kPar, kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value shifted =
            arith::SubFOp::create(b, l, args[0], buildSafeMax(b, l, args[1]));
        linalg::YieldOp::create(b, l,
                                math::ExpOp::create(b, l, shifted).getResult());
      })[0];
  Value zeroRows =
      buildFilledTensor(rewriter, loc, {batch, queryHeads, seqQ}, accType, 0);
  Value rowSum = buildGeneric(
      rewriter, loc, {probs}, {zeroRows}, {id4, rowMap},
      {kPar, kPar, kPar, kRed}, [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(
            b, l, arith::AddFOp::create(b, l, args[0], args[1]).getResult());
      })[0];

  Value acc = dec.valueProduct(probs, v);
  // Epilogue over (b, i, h, e): the two heads of pair h, normalised.
  SmallVector<Value> pairInputs = {acc, acc, rowSum, rowSum};
  SmallVector<AffineMap> pairMaps = {
      map(4, {d0, d1, d2 * 2, d3}), map(4, {d0, d1, d2 * 2 + 1, d3}),
      map(4, {d0, d2 * 2, d1}), map(4, {d0, d2 * 2 + 1, d1})};
  auto difference = [&](OpBuilder &b, Location l, ValueRange args,
                        Value weight) {
    return buildPairDifference(b, l, args[0], args[1], args[2], args[3],
                               weight);
  };
  AffineMap outMap = map(4, {d0, d1, d2, d3});
  // Result `index` (out, or diffattn.v2's out_odd: both [B, Sq, H, Dv] of
  // T) is written into the op's destination when it has one.
  auto resultInit = [&](unsigned index = 0) -> Value {
    if (Value dest = getResultDestination(op, index))
      return dest;
    return tensor::EmptyOp::create(
        rewriter, loc, ArrayRef<OpFoldResult>{batch, seqQ, pairs, valueDim},
        config.elementType);
  };
  Value result;
  if (config.kind == AttentionConfig::Kind::V2) {
    pairInputs.push_back(lam);
    pairMaps.push_back(map(4, {d0, d1, d2}));
    pairMaps.push_back(outMap);
    result = buildGeneric(
        rewriter, loc, pairInputs, {resultInit()}, pairMaps,
        {kPar, kPar, kPar, kPar},
        [&](OpBuilder &b, Location l, ValueRange args) {
          Value sig =
              buildSigmoid(b, l, buildFloatCast(b, l, args[4], accType));
          Value diff = difference(b, l, args, sig);
          linalg::YieldOp::create(
              b, l, buildFloatCast(b, l, diff, config.elementType));
        })[0];
  } else {
    // V1: x = A1 - lam * A2, then RMSNorm over the 2D values of each head.
    pairInputs.push_back(lam);
    pairMaps.push_back(map(4, {}));
    pairMaps.push_back(outMap);
    Value emptyAcc = tensor::EmptyOp::create(
        rewriter, loc, ArrayRef<OpFoldResult>{batch, seqQ, pairs, valueDim},
        accType);
    Value diff = buildGeneric(
        rewriter, loc, pairInputs, {emptyAcc}, pairMaps,
        {kPar, kPar, kPar, kPar},
        [&](OpBuilder &b, Location l, ValueRange args) {
          linalg::YieldOp::create(
              b, l,
              difference(b, l, args, buildFloatCast(b, l, args[4], accType)));
        })[0];
    Value zeroSq =
        buildFilledTensor(rewriter, loc, {batch, seqQ, pairs}, accType, 0);
    Value sumSquares =
        buildGeneric(rewriter, loc, {diff}, {zeroSq},
                     {outMap, map(4, {d0, d1, d2})}, {kPar, kPar, kPar, kRed},
                     [&](OpBuilder &b, Location l, ValueRange args) {
                       linalg::YieldOp::create(
                           b, l, buildMulAcc(b, l, args[0], args[0], args[1]));
                     })[0];
    result = buildGeneric(
        rewriter, loc, {diff, sumSquares, op->getOperand(4)}, {resultInit()},
        {outMap, map(4, {d0, d1, d2}), map(4, {d3}), outMap},
        {kPar, kPar, kPar, kPar},
        [&](OpBuilder &b, Location l, ValueRange args) {
          Value y =
              buildRMSNormScale(b, l, args[0], args[1], args[2],
                                config.valueDim, config.eps, config.lambdaInit);
          linalg::YieldOp::create(b, l,
                                  buildFloatCast(b, l, y, config.elementType));
        })[0];
  }

  // The op's result types may be more static than the computed ones.
  auto asResult = [&](Value value, unsigned index) -> Value {
    Type type = op->getResult(index).getType();
    if (value.getType() == type)
      return value;
    return tensor::CastOp::create(rewriter, loc, type, value);
  };
  SmallVector<Value> results = {asResult(result, 0)};
  // diffattn.v2's log-sum-exp [B, 2H, Sq] from the row max and sum.
  if (op->getNumResults() >= 2) {
    Value lseInit = getResultDestination(op, 1);
    if (!lseInit)
      lseInit = tensor::EmptyOp::create(
          rewriter, loc, ArrayRef<OpFoldResult>{batch, queryHeads, seqQ},
          accType);
    AffineMap id3 = map(3, {d0, d1, d2});
    Value lse = buildGeneric(
        rewriter, loc, {rowMax, rowSum}, {lseInit}, {id3, id3, id3},
        {kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
          linalg::YieldOp::create(b, l, buildLogSumExp(b, l, args[0], args[1]));
        })[0];
    results.push_back(asResult(lse, 1));
  }
  // diffattn.v2's out_odd [B, Sq, H, Dv]: the pairs' second heads, A_{2h+1}.
  if (op->getNumResults() == 3) {
    Value odd = buildGeneric(
        rewriter, loc, {acc, rowSum}, {resultInit(2)},
        {pairMaps[1], pairMaps[3], outMap}, {kPar, kPar, kPar, kPar},
        [&](OpBuilder &b, Location l, ValueRange args) {
          Value o = buildNormalize(b, l, args[0], args[1]);
          linalg::YieldOp::create(b, l,
                                  buildFloatCast(b, l, o, config.elementType));
        })[0];
    results.push_back(asResult(odd, 2));
  }
  replaceWithResults(rewriter, op, results);
  return success();
}

namespace {
struct DiffAttnDecomposePass
    : public diffattn::impl::DiffAttnDecomposeBase<DiffAttnDecomposePass> {
  void runOnOperation() override {
    IRRewriter rewriter(&getContext());
    for (Operation *op : collectDiffAttnOps(getOperation()))
      if (failed(decomposeDiffAttnOp(rewriter, op)))
        return signalPassFailure();
  }
};
} // namespace
