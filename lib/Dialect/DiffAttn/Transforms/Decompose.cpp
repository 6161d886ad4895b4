//===- Decompose.cpp - diffattn ops to untiled linalg ---------------------===//
//
// The DiffAttnDecompose pass and its core, decomposeDiffAttnOp: SPEC.md's
// formulas, and diffattn.v2_backward's gradients, written as linalg.generic
// ops over whole tensors (the untiled oracle). Scores, softmax statistics
// and accumulation are f32; results have their operands' element types.
//
//===----------------------------------------------------------------------===//

#include "LinalgBuilders.h"

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

namespace {
/// What the forward and backward decompositions of one op share: its sizes,
/// the scores with SPEC.md's mask, and the products with the values.
struct Decomposition {
  Decomposition(RewriterBase &rewriter, Operation *op, Value q, Value k,
                Value kvLen)
      : rewriter(rewriter), loc(op->getLoc()), ctx(op->getContext()),
        config(AttentionConfig::get(op)), kvLen(kvLen) {
    batch = tensor::getMixedSize(rewriter, loc, q, 0);
    seqQ = tensor::getMixedSize(rewriter, loc, q, 1);
    seqK = tensor::getMixedSize(rewriter, loc, k, 1);
    seqQValue = getValueOrCreateConstantIndexOp(rewriter, loc, seqQ);
    seqKValue = getValueOrCreateConstantIndexOp(rewriter, loc, seqK);
    queryHeads = rewriter.getIndexAttr(2 * config.numPairs);
    pairs = rewriter.getIndexAttr(config.numPairs);
    valueDim = rewriter.getIndexAttr(config.valueDim);
  }

  AffineMap map(unsigned numDims, ArrayRef<AffineExpr> results) const {
    return AffineMap::get(numDims, 0, results, ctx);
  }
  AffineExpr dim(unsigned i) const { return getAffineDimExpr(i, ctx); }

  /// The number of valid keys of the batch row whose kv_len element is
  /// `kvLenElement` (null without kv_len).
  Value keyLength(OpBuilder &b, Location l, Value kvLenElement) const {
    return buildKeyLength(b, l, kvLenElement, seqKValue);
  }

  /// A sum of products `init += lhs * rhs` (f32) over the reduction loops of
  /// `iterators`. With kv_len, `keyLoop` names the loop over keys: keys at
  /// t >= kv_len[b] are never read into the sum (a cache may hold NaN or Inf
  /// there, and 0 * NaN is NaN; SPEC.md: such keys are ignored).
  Value contract(Value lhs, Value rhs, Value init, ArrayRef<AffineMap> maps,
                 ArrayRef<utils::IteratorType> iterators,
                 std::optional<unsigned> keyLoop = std::nullopt) const {
    SmallVector<Value> inputs = {lhs, rhs};
    SmallVector<AffineMap> allMaps(maps.take_front(2));
    bool guarded = kvLen && keyLoop;
    if (guarded) {
      inputs.push_back(kvLen);
      allMaps.push_back(map(iterators.size(), {dim(0)}));
    }
    allMaps.push_back(maps.back());
    return buildGeneric(
        rewriter, loc, inputs, {init}, allMaps, iterators,
        [&](OpBuilder &b, Location l, ValueRange args) {
          Value sum = buildMulAcc(b, l, args[0], args[1], args.back());
          if (guarded) {
            Value key = linalg::IndexOp::create(b, l, *keyLoop);
            Value stored = arith::CmpIOp::create(
                b, l, arith::CmpIPredicate::ult, key, keyLength(b, l, args[2]));
            sum = arith::SelectOp::create(b, l, stored, sum, args.back());
          }
          linalg::YieldOp::create(b, l, sum);
        })[0];
  }

  /// scale * S[b, j, i, t] = scale * sum_d q[b, i, j, d] * k[b, t, kh(j), d]
  /// where key t is visible to query row i, else -inf: [B, 2H, Sq, Sk] f32.
  Value maskedScores(Value q, Value k) const {
    AffineExpr d0 = dim(0), d1 = dim(1), d2 = dim(2), d3 = dim(3), d4 = dim(4);
    Type f32 = rewriter.getF32Type();
    Value zero = buildFilledTensor(rewriter, loc, scoreSizes(), f32, 0);
    // Loops b j i t d.
    Value scores = contract(q, k, zero,
                            {map(5, {d0, d2, d1, d4}),
                             map(5, {d0, d3, config.keyHead(d1), d4}),
                             map(5, {d0, d1, d2, d3})},
                            {kPar, kPar, kPar, kPar, kRed});
    AffineMap id4 = map(4, {d0, d1, d2, d3});
    SmallVector<Value> inputs = {scores};
    SmallVector<AffineMap> maps = {id4};
    if (kvLen) {
      inputs.push_back(kvLen);
      maps.push_back(map(4, {d0}));
    }
    maps.push_back(id4);
    return buildGeneric(
        rewriter, loc, inputs, {emptyScores()}, maps, {kPar, kPar, kPar, kPar},
        [&](OpBuilder &b, Location l, ValueRange args) {
          Value row = linalg::IndexOp::create(b, l, 2);
          Value key = linalg::IndexOp::create(b, l, 3);
          Value keyLen = keyLength(b, l, kvLen ? args[1] : Value());
          Value offset = arith::SubIOp::create(b, l, keyLen, seqQValue);
          Value visible =
              buildIsVisible(b, l, config, row, key, offset, keyLen);
          Value scaled = arith::MulFOp::create(
              b, l, args[0],
              arith::ConstantOp::create(b, l, b.getF32FloatAttr(config.scale)));
          linalg::YieldOp::create(
              b, l,
              arith::SelectOp::create(b, l, visible, scaled, minusInf(b, l))
                  .getResult());
        })[0];
  }

  /// A[b, i, j, e] = sum_t P[b, j, i, t] * v[b, t, vh(j), e]: [B, Sq, 2H, Dv]
  /// f32.
  Value valueProduct(Value probs, Value v) const {
    AffineExpr d0 = dim(0), d1 = dim(1), d2 = dim(2), d3 = dim(3), d4 = dim(4);
    Value zero =
        buildFilledTensor(rewriter, loc, {batch, seqQ, queryHeads, valueDim},
                          rewriter.getF32Type(), 0);
    // Loops b i j e t.
    return contract(probs, v, zero,
                    {map(5, {d0, d2, d1, d4}),
                     map(5, {d0, d4, config.valueHead(d2), d3}),
                     map(5, {d0, d1, d2, d3})},
                    {kPar, kPar, kPar, kPar, kRed}, /*keyLoop=*/4);
  }

  SmallVector<OpFoldResult> scoreSizes() const {
    return {batch, queryHeads, seqQ, seqK};
  }
  Value emptyScores() const {
    return tensor::EmptyOp::create(rewriter, loc, scoreSizes(),
                                   rewriter.getF32Type());
  }
  static Value minusInf(OpBuilder &b, Location l) {
    return arith::ConstantOp::create(
        b, l, b.getF32FloatAttr(-std::numeric_limits<float>::infinity()));
  }

  RewriterBase &rewriter;
  Location loc;
  MLIRContext *ctx;
  AttentionConfig config;
  Value kvLen;
  OpFoldResult batch, seqQ, seqK, queryHeads, pairs, valueDim;
  Value seqQValue, seqKValue;
};
} // namespace

static LogicalResult decomposeV2Backward(RewriterBase &rewriter,
                                         V2BackwardOp op);

LogicalResult mlir::diffattn::decomposeDiffAttnOp(RewriterBase &rewriter,
                                                  Operation *op) {
  if (auto backward = dyn_cast<V2BackwardOp>(op))
    return decomposeV2Backward(rewriter, backward);
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
  Type f32 = rewriter.getF32Type();
  float ninf = -std::numeric_limits<float>::infinity();
  auto map = [&](unsigned n, ArrayRef<AffineExpr> r) { return dec.map(n, r); };
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3);
  OpFoldResult batch = dec.batch, seqQ = dec.seqQ, queryHeads = dec.queryHeads,
               pairs = dec.pairs, valueDim = dec.valueDim;

  Value masked = dec.maskedScores(q, k);

  // Row max M[b, j, i] and probabilities P = exp(S - M).
  AffineMap id4 = map(4, {d0, d1, d2, d3});
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
      rewriter, loc, {masked, rowMax}, {dec.emptyScores()}, {id4, rowMap, id4},
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

/// diffattn.v2_backward as untiled linalg (the formula in the op's ODS
/// description): P from the scores and lse, A_{2h+1} = P V for the odd head
/// of each pair, D_j from dout, out and A_{2h+1}, then dS and the three
/// products; dlam = -sigmoid'(lam) rowsum(dout * A_{2h+1}).
static LogicalResult decomposeV2Backward(RewriterBase &rewriter,
                                         V2BackwardOp op) {
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  Value q = op.getQ(), k = op.getK(), v = op.getV(), lam = op.getLam();
  Value out = op.getOut(), dout = op.getDout(), lse = op.getLse();
  Decomposition dec(rewriter, op, q, k, op.getKvLen());
  const AttentionConfig &config = dec.config;
  Location loc = dec.loc;
  Type f32 = rewriter.getF32Type();
  auto map = [&](unsigned n, ArrayRef<AffineExpr> r) { return dec.map(n, r); };
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3),
             d4 = dec.dim(4), d5 = dec.dim(5);
  int64_t groupSize = 2 * config.numPairs / config.numKeyHeads;
  auto f32Const = [](OpBuilder &b, Location l, float value) -> Value {
    return arith::ConstantOp::create(b, l, b.getF32FloatAttr(value));
  };
  // Whether query head j (loop `headLoop`) is the second of its pair.
  auto isSecondHead = [](OpBuilder &b, Location l, unsigned headLoop) {
    Value j = linalg::IndexOp::create(b, l, headLoop);
    Value two = arith::ConstantIndexOp::create(b, l, 2);
    return arith::CmpIOp::create(b, l, arith::CmpIPredicate::eq,
                                 arith::RemUIOp::create(b, l, j, two),
                                 arith::ConstantIndexOp::create(b, l, 1));
  };
  // The weight of head j in out: 1, or -sigmoid(lam) for the second head.
  auto headWeight = [&](OpBuilder &b, Location l, Value lamElement,
                        unsigned headLoop) {
    Value sig = buildSigmoid(b, l, buildExtToF32(b, l, lamElement));
    return arith::SelectOp::create(b, l, isSecondHead(b, l, headLoop),
                                   arith::NegFOp::create(b, l, sig),
                                   f32Const(b, l, 1.0f))
        .getResult();
  };

  // P[b, j, i, t] = exp(scale * S - lse[b, j, i]), 0 where masked (also on
  // rows with no visible key, whose lse is -inf).
  Value masked = dec.maskedScores(q, k);
  AffineMap id4 = map(4, {d0, d1, d2, d3});
  AffineMap rowMap = map(4, {d0, d1, d2});
  Value probs = buildGeneric(
      rewriter, loc, {masked, lse}, {dec.emptyScores()}, {id4, rowMap, id4},
      {kPar, kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value isMasked = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OEQ,
                                               args[0], dec.minusInf(b, l));
        Value p = math::ExpOp::create(
            b, l, arith::SubFOp::create(b, l, args[0], args[1]));
        linalg::YieldOp::create(
            b, l,
            arith::SelectOp::create(b, l, isMasked, f32Const(b, l, 0.0f), p)
                .getResult());
      })[0];

  // A = P V (every head; the odd heads' are used), then per row and pair
  // r = rowsum(dout * A_{2h+1}) and rowsum(dout * out).  (loops b i h e)
  Value acc = dec.valueProduct(probs, v);
  SmallVector<OpFoldResult> pairRowSizes = {dec.batch, dec.seqQ, dec.pairs};
  auto zeroPairRows = [&] {
    return buildFilledTensor(rewriter, loc, pairRowSizes, f32, 0);
  };
  AffineMap pairRow = map(4, {d0, d1, d2});
  SmallVector<Value> rowDots = buildGeneric(
      rewriter, loc, {dout, acc, out}, {zeroPairRows(), zeroPairRows()},
      {map(4, {d0, d1, d2, d3}), map(4, {d0, d1, d2 * 2 + 1, d3}),
       map(4, {d0, d1, d2, d3}), pairRow, pairRow},
      {kPar, kPar, kPar, kRed}, [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(
            b, l,
            ValueRange{buildMulAcc(b, l, args[0], args[1], args[3]),
                       buildMulAcc(b, l, args[0], args[2], args[4])});
      });
  Value secondDot = rowDots[0], outDot = rowDots[1];

  // D[b, j, i] = rowsum(dA_j * A_j): rowsum(dout * out) + sigmoid(lam) r for
  // the first head (A_{2h} = out + sigmoid(lam) A_{2h+1}), -sigmoid(lam) r
  // for the second.                                           (loops b j i)
  AffineMap headPair = map(3, {d0, d2, d1.floorDiv(2)});
  Value headRows = tensor::EmptyOp::create(
      rewriter, loc,
      ArrayRef<OpFoldResult>{dec.batch, dec.queryHeads, dec.seqQ}, f32);
  Value rowTerm = buildGeneric(
      rewriter, loc, {secondDot, outDot, lam}, {headRows},
      {headPair, headPair, headPair, map(3, {d0, d1, d2})}, {kPar, kPar, kPar},
      [&](OpBuilder &b, Location l, ValueRange args) {
        Value sig = buildSigmoid(b, l, buildExtToF32(b, l, args[2]));
        Value weighted = arith::MulFOp::create(b, l, sig, args[0]);
        Value first = arith::AddFOp::create(b, l, args[1], weighted);
        Value second = arith::NegFOp::create(b, l, weighted);
        linalg::YieldOp::create(
            b, l,
            arith::SelectOp::create(b, l, isSecondHead(b, l, 1), second, first)
                .getResult());
      })[0];

  // dP / w_j = dout_h V^T: G[b, j, i, t] = sum_e dout[b, i, j/2, e] *
  // v[b, t, vh(j), e]                                      (loops b j i t e)
  Value zeroScores = buildFilledTensor(rewriter, loc, dec.scoreSizes(), f32, 0);
  Value doutValues = dec.contract(dout, v, zeroScores,
                                  {map(5, {d0, d2, d1.floorDiv(2), d4}),
                                   map(5, {d0, d3, config.valueHead(d1), d4}),
                                   map(5, {d0, d1, d2, d3})},
                                  {kPar, kPar, kPar, kPar, kRed});

  // dS = P * (w_j G - D_j) (0 where masked: G may be NaN at keys past
  // kv_len) and w_j P, which dv reads.                      (loops b j i t)
  AffineMap lamMap = map(4, {d0, d2, d1.floorDiv(2)});
  SmallVector<Value> scoreGrads = buildGeneric(
      rewriter, loc, {probs, doutValues, rowTerm, lam, masked},
      {dec.emptyScores(), dec.emptyScores()},
      {id4, id4, rowMap, lamMap, id4, id4, id4}, {kPar, kPar, kPar, kPar},
      [&](OpBuilder &b, Location l, ValueRange args) {
        Value weight = headWeight(b, l, args[3], 1);
        Value dp = arith::MulFOp::create(b, l, weight, args[1]);
        Value ds = arith::MulFOp::create(
            b, l, args[0], arith::SubFOp::create(b, l, dp, args[2]));
        Value isMasked = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OEQ,
                                               args[4], dec.minusInf(b, l));
        ds = arith::SelectOp::create(b, l, isMasked, f32Const(b, l, 0.0f), ds);
        linalg::YieldOp::create(
            b, l, ValueRange{ds, arith::MulFOp::create(b, l, weight, args[0])});
      });
  Value dScores = scoreGrads[0], weightedProbs = scoreGrads[1];

  // The op's destination for result `index` when it has one, else a new
  // tensor shaped like `like`.
  auto destination = [&](unsigned index, Value like) -> Value {
    if (Value dest = getResultDestination(op, index))
      return dest;
    auto type = cast<RankedTensorType>(op->getResult(index).getType());
    return tensor::EmptyOp::create(rewriter, loc,
                                   tensor::getMixedSizes(rewriter, loc, like),
                                   type.getElementType());
  };
  auto castToResult = [&](Value grad, unsigned index) {
    Type type = op->getResult(index).getType();
    return grad.getType() == type
               ? grad
               : tensor::CastOp::create(rewriter, loc, type, grad).getResult();
  };
  // Gradient `index` (shaped like `like`): `factor` times the f32 sum that
  // `sum` accumulates into the zero tensor it is given, in the result's
  // element type. An f32 sum with factor 1 accumulates in the destination
  // itself (an identity copy into it would fold away).
  auto gradient = [&](unsigned index, Value like, float factor,
                      function_ref<Value(Value)> sum) -> Value {
    Value dest = destination(index, like);
    Type element = cast<RankedTensorType>(dest.getType()).getElementType();
    if (element.isF32() && factor == 1.0f)
      return sum(linalg::FillOp::create(rewriter, loc,
                                        f32Const(rewriter, loc, 0.0f), dest)
                     .getResult(0));
    Value total = sum(buildFilledTensor(
        rewriter, loc, tensor::getMixedSizes(rewriter, loc, like), f32, 0));
    unsigned rank = cast<RankedTensorType>(like.getType()).getRank();
    AffineMap id = rewriter.getMultiDimIdentityMap(rank);
    return buildGeneric(rewriter, loc, {total}, {dest}, {id, id},
                        SmallVector<utils::IteratorType>(rank, kPar),
                        [&](OpBuilder &b, Location l, ValueRange args) {
                          Value scaled = arith::MulFOp::create(
                              b, l, args[0], f32Const(b, l, factor));
                          linalg::YieldOp::create(
                              b, l, buildTruncFromF32(b, l, scaled, element));
                        })[0];
  };

  // dq[b, i, j, d] = scale * sum_t dS[b, j, i, t] * k[b, t, kh(j), d]
  //                                                         (loops b i j d t)
  float scale = config.scale;
  Value dq = gradient(0, q, scale, [&](Value zero) {
    return dec.contract(dScores, k, zero,
                        {map(5, {d0, d2, d1, d4}),
                         map(5, {d0, d4, config.keyHead(d2), d3}),
                         map(5, {d0, d1, d2, d3})},
                        {kPar, kPar, kPar, kPar, kRed}, /*keyLoop=*/4);
  });
  // dk and dv sum over the query heads j = g * G + jj of KV head g: the
  // head dimension of the operands is split into (g, jj) (or, for dout's
  // pairs, into (g, jj / 2)) so that every loop indexes some operand
  // directly.
  auto expand = [&](Value t, ArrayRef<ReassociationIndices> groups,
                    ArrayRef<OpFoldResult> shape) -> Value {
    SmallVector<int64_t> staticShape;
    for (OpFoldResult size : shape) {
      std::optional<int64_t> known = getConstantIntValue(size);
      staticShape.push_back(known ? *known : ShapedType::kDynamic);
    }
    auto type = RankedTensorType::get(
        staticShape, cast<RankedTensorType>(t.getType()).getElementType());
    return tensor::ExpandShapeOp::create(rewriter, loc, type, t, groups, shape);
  };
  OpFoldResult kvHeads = rewriter.getIndexAttr(config.numKeyHeads);
  OpFoldResult group = rewriter.getIndexAttr(groupSize);
  OpFoldResult pairsPerGroup = rewriter.getIndexAttr(groupSize / 2);
  OpFoldResult two = rewriter.getIndexAttr(2);
  OpFoldResult headDim = rewriter.getIndexAttr(config.headDim);
  // dk[b, t, g, d] = scale * sum_{jj, i} dS[b, g, jj, i, t] * q[b, i, g, jj, d]
  //                                                    (loops b t g d jj i)
  Value groupedScores = expand(dScores, {{0}, {1, 2}, {3}, {4}},
                               {dec.batch, kvHeads, group, dec.seqQ, dec.seqK});
  Value groupedQ = expand(q, {{0}, {1}, {2, 3}, {4}},
                          {dec.batch, dec.seqQ, kvHeads, group, headDim});
  Value dk = gradient(1, k, scale, [&](Value zero) {
    return dec.contract(groupedScores, groupedQ, zero,
                        {map(6, {d0, d2, d4, d5, d1}),
                         map(6, {d0, d5, d2, d4, d3}),
                         map(6, {d0, d1, d2, d3})},
                        {kPar, kPar, kPar, kPar, kRed, kRed});
  });
  // dv[b, t, g, e] = sum_{pp, s, i} w_j P[b, g, pp, s, i, t] *
  // dout[b, i, g, pp, e] (j = g * G + 2 pp + s)     (loops b t g e pp s i)
  AffineExpr d6 = dec.dim(6);
  Value groupedProbs =
      expand(weightedProbs, {{0}, {1, 2, 3}, {4}, {5}},
             {dec.batch, kvHeads, pairsPerGroup, two, dec.seqQ, dec.seqK});
  Value groupedDout =
      expand(dout, {{0}, {1}, {2, 3}, {4}},
             {dec.batch, dec.seqQ, kvHeads, pairsPerGroup, dec.valueDim});
  Value dv = gradient(2, v, 1.0f, [&](Value zero) {
    return dec.contract(groupedProbs, groupedDout, zero,
                        {map(7, {d0, d2, d4, d5, d6, d1}),
                         map(7, {d0, d6, d2, d4, d3}),
                         map(7, {d0, d1, d2, d3})},
                        {kPar, kPar, kPar, kPar, kRed, kRed, kRed});
  });

  // dlam = -sigmoid'(lam) r = -sigmoid(lam) (1 - sigmoid(lam)) r.
  AffineMap id3 = map(3, {d0, d1, d2});
  Type lamElement = cast<RankedTensorType>(lam.getType()).getElementType();
  Value dlam = buildGeneric(
      rewriter, loc, {secondDot, lam}, {destination(3, lam)}, {id3, id3, id3},
      {kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value sig = buildSigmoid(b, l, buildExtToF32(b, l, args[1]));
        Value slope = arith::MulFOp::create(
            b, l, sig, arith::SubFOp::create(b, l, f32Const(b, l, 1.0f), sig));
        Value grad = arith::NegFOp::create(
            b, l, arith::MulFOp::create(b, l, slope, args[0]));
        linalg::YieldOp::create(b, l,
                                buildTruncFromF32(b, l, grad, lamElement));
      })[0];

  replaceWithResults(rewriter, op,
                     {castToResult(dq, 0), castToResult(dk, 1),
                      castToResult(dv, 2), castToResult(dlam, 3)});
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
