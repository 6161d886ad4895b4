//===- Decompose.cpp - diffattn ops to untiled linalg ---------------------===//
//
// The DiffAttnDecompose pass and its core, decomposeDiffAttnOp: SPEC.md's
// formulas written as linalg.generic ops over whole tensors. Scores, softmax
// statistics and accumulation are f32; the result has q's element type.
//
//===----------------------------------------------------------------------===//

#include "LinalgBuilders.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

#include <limits>

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNDECOMPOSE
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

LogicalResult mlir::diffattn::decomposeDiffAttnOp(RewriterBase &rewriter,
                                                  Operation *op) {
  FailureOr<Operation *> dense = materializeServingLayouts(rewriter, op);
  if (failed(dense))
    return failure();
  op = *dense;
  AttentionConfig config = AttentionConfig::get(op);
  Location loc = op->getLoc();
  MLIRContext *ctx = op->getContext();
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);

  Value q = op->getOperand(0), k = op->getOperand(1), v = op->getOperand(2);
  Value lam = op->getOperand(3);
  Value kvLen = config.hasKvLen ? op->getOperand(4) : Value();
  Type f32 = rewriter.getF32Type();
  float ninf = -std::numeric_limits<float>::infinity();

  OpFoldResult batch = tensor::getMixedSize(rewriter, loc, q, 0);
  OpFoldResult seqQ = tensor::getMixedSize(rewriter, loc, q, 1);
  OpFoldResult seqK = tensor::getMixedSize(rewriter, loc, k, 1);
  Value seqQValue = getValueOrCreateConstantIndexOp(rewriter, loc, seqQ);
  Value seqKValue = getValueOrCreateConstantIndexOp(rewriter, loc, seqK);
  OpFoldResult queryHeads = rewriter.getIndexAttr(2 * config.numPairs);
  OpFoldResult pairs = rewriter.getIndexAttr(config.numPairs);
  OpFoldResult valueDim = rewriter.getIndexAttr(config.valueDim);

  auto map = [&](unsigned numDims, ArrayRef<AffineExpr> results) {
    return AffineMap::get(numDims, 0, results, ctx);
  };
  AffineExpr d0, d1, d2, d3, d4;
  bindDims(ctx, d0, d1, d2, d3, d4);

  // S[b, j, i, t] = sum_d q[b, i, j, d] * k[b, t, kh(j), d]   (loops b j i t d)
  Value zeroScores =
      buildFilledTensor(rewriter, loc, {batch, queryHeads, seqQ, seqK}, f32, 0);
  // A contraction over the last of five loops, accumulated in f32.
  auto contract = [&](Value lhs, Value rhs, Value init,
                      ArrayRef<AffineMap> maps) {
    return buildGeneric(
        rewriter, loc, {lhs, rhs}, {init}, maps, {kPar, kPar, kPar, kPar, kRed},
        [&](OpBuilder &b, Location l, ValueRange args) {
          linalg::YieldOp::create(b, l,
                                  buildMulAcc(b, l, args[0], args[1], args[2]));
        })[0];
  };
  Value scores = contract(q, k, zeroScores,
                          {map(5, {d0, d2, d1, d4}),
                           map(5, {d0, d3, config.keyHead(d1), d4}),
                           map(5, {d0, d1, d2, d3})});

  // Scale and mask: masked scores are -inf.                (loops b j i t)
  AffineMap id4 = map(4, {d0, d1, d2, d3});
  SmallVector<Value> maskInputs = {scores};
  SmallVector<AffineMap> maskMaps = {id4};
  if (kvLen) {
    maskInputs.push_back(kvLen);
    maskMaps.push_back(map(4, {d0}));
  }
  maskMaps.push_back(id4);
  Value emptyScores = tensor::EmptyOp::create(
      rewriter, loc, ArrayRef<OpFoldResult>{batch, queryHeads, seqQ, seqK},
      f32);
  Value masked = buildGeneric(
      rewriter, loc, maskInputs, {emptyScores}, maskMaps,
      {kPar, kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value row = linalg::IndexOp::create(b, l, 2);
        Value key = linalg::IndexOp::create(b, l, 3);
        Value keyLen =
            buildKeyLength(b, l, kvLen ? args[1] : Value(), seqKValue);
        Value offset = arith::SubIOp::create(b, l, keyLen, seqQValue);
        Value visible = buildIsVisible(b, l, config, row, key, offset, keyLen);
        Value scaled = arith::MulFOp::create(
            b, l, args[0],
            arith::ConstantOp::create(b, l, b.getF32FloatAttr(config.scale)));
        Value minusInf =
            arith::ConstantOp::create(b, l, b.getF32FloatAttr(ninf));
        linalg::YieldOp::create(
            b, l,
            arith::SelectOp::create(b, l, visible, scaled, minusInf)
                .getResult());
      })[0];

  // Row max M[b, j, i] and probabilities P = exp(S - M).
  AffineMap rowMap = map(4, {d0, d1, d2});
  Value rowInit =
      buildFilledTensor(rewriter, loc, {batch, queryHeads, seqQ}, f32, ninf);
  Value rowMax = buildGeneric(
      rewriter, loc, {masked}, {rowInit}, {id4, rowMap},
      {kPar, kPar, kPar, kRed}, [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(
            b, l, arith::MaxNumFOp::create(b, l, args[0], args[1]).getResult());
      })[0];
  Value probs = buildGeneric(
      rewriter, loc, {masked, rowMax}, {emptyScores}, {id4, rowMap, id4},
      {kPar, kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value shifted =
            arith::SubFOp::create(b, l, args[0], buildSafeMax(b, l, args[1]));
        linalg::YieldOp::create(b, l,
                                math::ExpOp::create(b, l, shifted).getResult());
      })[0];
  Value zeroRows =
      buildFilledTensor(rewriter, loc, {batch, queryHeads, seqQ}, f32, 0);
  Value rowSum = buildGeneric(
      rewriter, loc, {probs}, {zeroRows}, {id4, rowMap},
      {kPar, kPar, kPar, kRed}, [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(
            b, l, arith::AddFOp::create(b, l, args[0], args[1]).getResult());
      })[0];

  // A[b, i, j, e] = sum_t P[b, j, i, t] * v[b, t, vh(j), e]  (loops b i j e t)
  Value zeroAcc = buildFilledTensor(
      rewriter, loc, {batch, seqQ, queryHeads, valueDim}, f32, 0);
  // Keys at t >= kv_len[b] are never read into a product: a cache may hold
  // NaN or Inf there, and P = 0 times NaN is NaN (SPEC.md: such keys are
  // ignored). The scores need no such guard: the mask selects -inf there.
  SmallVector<Value> pvInputs = {probs, v};
  SmallVector<AffineMap> pvMaps = {map(5, {d0, d2, d1, d4}),
                                   map(5, {d0, d4, config.valueHead(d2), d3})};
  if (kvLen) {
    pvInputs.push_back(kvLen);
    pvMaps.push_back(map(5, {d0}));
  }
  pvMaps.push_back(map(5, {d0, d1, d2, d3}));
  Value acc = buildGeneric(
      rewriter, loc, pvInputs, {zeroAcc}, pvMaps,
      {kPar, kPar, kPar, kPar, kRed},
      [&](OpBuilder &b, Location l, ValueRange args) {
        Value sum = buildMulAcc(b, l, args[0], args[1], args.back());
        if (kvLen) {
          Value key = linalg::IndexOp::create(b, l, 4);
          Value stored =
              arith::CmpIOp::create(b, l, arith::CmpIPredicate::ult, key,
                                    buildKeyLength(b, l, args[2], seqKValue));
          sum = arith::SelectOp::create(b, l, stored, sum, args.back());
        }
        linalg::YieldOp::create(b, l, sum);
      })[0];

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
  // The result is written into the op's destination when it has one.
  auto resultInit = [&]() -> Value {
    if (Value dest = getResultDestination(op))
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
          Value sig = buildSigmoid(b, l, buildExtToF32(b, l, args[4]));
          Value diff = difference(b, l, args, sig);
          linalg::YieldOp::create(
              b, l, buildTruncFromF32(b, l, diff, config.elementType));
        })[0];
  } else {
    // V1: x = A1 - lam * A2, then RMSNorm over the 2D values of each head.
    pairInputs.push_back(lam);
    pairMaps.push_back(map(4, {}));
    pairMaps.push_back(outMap);
    Value emptyF32 = tensor::EmptyOp::create(
        rewriter, loc, ArrayRef<OpFoldResult>{batch, seqQ, pairs, valueDim},
        f32);
    Value diff = buildGeneric(rewriter, loc, pairInputs, {emptyF32}, pairMaps,
                              {kPar, kPar, kPar, kPar},
                              [&](OpBuilder &b, Location l, ValueRange args) {
                                linalg::YieldOp::create(
                                    b, l, difference(b, l, args, args[4]));
                              })[0];
    Value zeroSq =
        buildFilledTensor(rewriter, loc, {batch, seqQ, pairs}, f32, 0);
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
          linalg::YieldOp::create(
              b, l, buildTruncFromF32(b, l, y, config.elementType));
        })[0];
  }

  // The op's result type may be more static than the computed one.
  if (result.getType() != op->getResult(0).getType())
    result = tensor::CastOp::create(rewriter, loc, op->getResult(0).getType(),
                                    result);
  SmallVector<Value> results = {result};
  // diffattn.v2's log-sum-exp [B, 2H, Sq] from the row max and sum.
  if (op->getNumResults() == 2) {
    Type lseType = op->getResult(1).getType();
    Value lseInit = getResultDestination(op, 1);
    if (!lseInit)
      lseInit = tensor::EmptyOp::create(
          rewriter, loc, ArrayRef<OpFoldResult>{batch, queryHeads, seqQ}, f32);
    AffineMap id3 = map(3, {d0, d1, d2});
    Value lse = buildGeneric(
        rewriter, loc, {rowMax, rowSum}, {lseInit}, {id3, id3, id3},
        {kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
          linalg::YieldOp::create(b, l, buildLogSumExp(b, l, args[0], args[1]));
        })[0];
    if (lse.getType() != lseType)
      lse = tensor::CastOp::create(rewriter, loc, lseType, lse);
    results.push_back(lse);
  }
  replaceWithResults(rewriter, op, results);
  return success();
}

namespace {
struct DiffAttnDecomposePass
    : public diffattn::impl::DiffAttnDecomposeBase<DiffAttnDecomposePass> {
  void runOnOperation() override {
    if (failed(rejectUnloweredOps(getOperation(), "diffattn-decompose")))
      return signalPassFailure();
    IRRewriter rewriter(&getContext());
    for (Operation *op : collectDiffAttnOps(getOperation()))
      if (failed(decomposeDiffAttnOp(rewriter, op)))
        return signalPassFailure();
  }
};
} // namespace
