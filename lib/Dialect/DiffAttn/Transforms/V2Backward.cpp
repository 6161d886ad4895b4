//===- V2Backward.cpp - diffattn.v2_backward as linalg on tensors ---------===//
//
// lowerV2Backward: the gradients of diffattn.v2 (the formula in the op's ODS
// description) as linalg.generic ops on tensors, either over all keys at
// once (diffattn-decompose: the oracle, memory quadratic in the sequence
// length) or over blocks of keys (diffattn-tile-flash: FlashAttention-2's
// backward, Dao 2023, tiled over key blocks; memory B x 2H x Sq x blockK).
//
// Per key block, P = exp(scale S - lse) is recomputed from q, k and the
// forward's log-sum-exp, and G = dout V^T. Since out = A_{2h} - sigmoid(lam)
// A_{2h+1}, the row terms D_j = rowsum(dA_j * A_j) need only r =
// rowsum(dout * A_{2h+1}) = sum_t P_{2h+1} G_{2h+1}: D_{2h} = rowsum(dout *
// out) + sigmoid(lam) r, D_{2h+1} = -sigmoid(lam) r, dlam = -sigmoid'(lam) r.
// The tiled form therefore walks the key blocks twice: once for r, once for
// dS = P (w_j G - D_j) (w_j = 1, or -sigmoid(lam) for the pair's second
// head), dq += scale dS K, and each block's dk = scale dS^T q and dv = (w P)^T
// dout, summed over the query heads of each KV group.
//
//===----------------------------------------------------------------------===//

#include "DecomposeBuilders.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Utils/StaticValueUtils.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

namespace {

/// The builder of one op's backward pass.
class BackwardLowering {
public:
  BackwardLowering(RewriterBase &rewriter, V2BackwardOp op)
      : rewriter(rewriter), op(op), loc(op.getLoc()), ctx(op.getContext()),
        config(AttentionConfig::get(op)), q(op.getQ()), k(op.getK()),
        v(op.getV()), lam(op.getLam()), out(op.getOut()), dout(op.getDout()),
        lse(op.getLse()), kvLen(op.getKvLen()), acc(config.accumulatorType) {
    groupSize = 2 * config.numPairs / config.numKeyHeads;
  }

  /// Replaces the op; `blockK` keys per block, or 0 for one block of all
  /// keys.
  void build(int64_t blockK);

private:
  /// What one block of keys gives: the masked scores, P and G = dout V^T
  /// ([B, 2H, Sq, n] each). All intermediates are in the accumulator type A
  /// (f64 for f64 operands, else f32).
  struct BlockTerms {
    Value masked, probs, doutValues;
  };
  BlockTerms blockTerms(Decomposition &dec, Value kBlock, Value vBlock);
  /// r += sum over the block's keys of P_{2h+1} G_{2h+1}: [B, Sq, H] A.
  Value addSecondHeadTerm(Decomposition &dec, const BlockTerms &t, Value r);
  /// D_j [B, 2H, Sq] A from r and rowsum(dout * out).
  Value rowTerms(Decomposition &dec, Value r, Value outDot);
  /// dS and w P of the block.
  std::pair<Value, Value> scoreGradients(Decomposition &dec,
                                         const BlockTerms &t, Value rows);
  /// dq += dS K over the block's keys (A, unscaled).
  Value addQueryGradient(Decomposition &dec, Value dScores, Value kBlock,
                         Value dqSum);
  /// The block's dk (dS^T q) or dv ((w P)^T dout) summed over each KV
  /// group, A [B, n, Hkv, D or Dv], into `init`.
  Value keyGradient(Decomposition &dec, Value grads, bool values, Value init);
  /// dlam = -sigmoid'(lam) r, into the op's destination.
  Value lambdaGradient(Decomposition &dec, Value r);

  /// The op's destination for result `index` if it has one, else a new
  /// tensor shaped like `like`.
  Value destination(unsigned index, Value like);
  /// `factor * sum` converted to result `index`'s element type, into
  /// `dest`.
  Value finish(Value sum, Value dest, double factor);
  /// Whether result `index` has the accumulator type and is scaled by
  /// `factor` = 1: its sum is then accumulated in the destination itself
  /// (an identity copy into it would fold away).
  bool accumulatesInPlace(unsigned index, double factor) {
    return cast<ShapedType>(op->getResult(index).getType()).getElementType() ==
               acc &&
           factor == 1.0;
  }
  /// A tensor of A zeros shaped like `like`.
  Value zeros(Value like) {
    return buildFilledTensor(
        rewriter, loc, tensor::getMixedSizes(rewriter, loc, like), acc, 0);
  }
  Value zeroPairRows(Decomposition &dec) {
    return buildFilledTensor(rewriter, loc, {dec.batch, dec.seqQ, dec.pairs},
                             acc, 0);
  }
  /// A scalar constant of the accumulator type.
  Value constant(OpBuilder &b, Location l, double value) const {
    return buildFloatConstant(b, l, acc, value);
  }
  /// Whether query head j (loop `headLoop`) is the second of its pair.
  static Value isSecondHead(OpBuilder &b, Location l, unsigned headLoop) {
    Value j = linalg::IndexOp::create(b, l, headLoop);
    return arith::CmpIOp::create(
        b, l, arith::CmpIPredicate::eq,
        arith::RemUIOp::create(b, l, j,
                               arith::ConstantIndexOp::create(b, l, 2)),
        arith::ConstantIndexOp::create(b, l, 1));
  }

  RewriterBase &rewriter;
  V2BackwardOp op;
  Location loc;
  MLIRContext *ctx;
  AttentionConfig config;
  Value q, k, v, lam, out, dout, lse, kvLen;
  Type acc;
  int64_t groupSize;
};

} // namespace

BackwardLowering::BlockTerms
BackwardLowering::blockTerms(Decomposition &dec, Value kBlock, Value vBlock) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3),
             d4 = dec.dim(4);
  BlockTerms t;
  // P[b, j, i, t] = exp(scale * S - lse[b, j, i]), 0 where masked (also on
  // rows with no visible key, whose lse is -inf).
  t.masked = dec.maskedScores(q, kBlock);
  AffineMap id4 = dec.map(4, {d0, d1, d2, d3});
  t.probs = buildGeneric(
      rewriter, loc, {t.masked, lse}, {dec.emptyScores()},
      {id4, dec.map(4, {d0, d1, d2}), id4}, {kPar, kPar, kPar, kPar},
      [&](OpBuilder &b, Location l, ValueRange args) {
        Value isMasked = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OEQ,
                                               args[0], dec.minusInf(b, l));
        Value p = math::ExpOp::create(
            b, l, arith::SubFOp::create(b, l, args[0], args[1]));
        linalg::YieldOp::create(
            b, l,
            arith::SelectOp::create(b, l, isMasked, constant(b, l, 0.0), p)
                .getResult());
      })[0];
  // G[b, j, i, t] = sum_e dout[b, i, j / 2, e] * v[b, t, vh(j), e] (loops b
  // j i t e): dP / w_j; 0 at keys past kv_len, whose values are never read
  // (a cache may hold NaN there, and P G must stay 0).
  Value zero = buildFilledTensor(rewriter, loc, dec.scoreSizes(), acc, 0);
  t.doutValues = dec.contract(dout, vBlock, zero,
                              {dec.map(5, {d0, d2, d1.floorDiv(2), d4}),
                               dec.map(5, {d0, d3, config.valueHead(d1), d4}),
                               dec.map(5, {d0, d1, d2, d3})},
                              {kPar, kPar, kPar, kPar, kRed}, /*keyLoop=*/3);
  return t;
}

Value BackwardLowering::addSecondHeadTerm(Decomposition &dec,
                                          const BlockTerms &t, Value r) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3);
  // (loops b i h t)
  AffineMap second = dec.map(4, {d0, d2 * 2 + 1, d1, d3});
  return buildGeneric(rewriter, loc, {t.probs, t.doutValues}, {r},
                      {second, second, dec.map(4, {d0, d1, d2})},
                      {kPar, kPar, kPar, kRed},
                      [&](OpBuilder &b, Location l, ValueRange args) {
                        linalg::YieldOp::create(
                            b, l, buildMulAcc(b, l, args[0], args[1], args[2]));
                      })[0];
}

Value BackwardLowering::rowTerms(Decomposition &dec, Value r, Value outDot) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2);
  // (loops b j i)
  AffineMap headPair = dec.map(3, {d0, d2, d1.floorDiv(2)});
  Value rows = tensor::EmptyOp::create(
      rewriter, loc,
      ArrayRef<OpFoldResult>{dec.batch, dec.queryHeads, dec.seqQ}, acc);
  return buildGeneric(
      rewriter, loc, {r, outDot, lam}, {rows},
      {headPair, headPair, headPair, dec.map(3, {d0, d1, d2})},
      {kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value sig = buildSigmoid(b, l, buildFloatCast(b, l, args[2], acc));
        Value weighted = arith::MulFOp::create(b, l, sig, args[0]);
        Value first = arith::AddFOp::create(b, l, args[1], weighted);
        Value second = arith::NegFOp::create(b, l, weighted);
        linalg::YieldOp::create(
            b, l,
            arith::SelectOp::create(b, l, isSecondHead(b, l, 1), second, first)
                .getResult());
      })[0];
}

std::pair<Value, Value> BackwardLowering::scoreGradients(Decomposition &dec,
                                                         const BlockTerms &t,
                                                         Value rows) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3);
  // dS = P * (w_j G - D_j), 0 where masked, and w_j P, which dv reads.
  //                                                        (loops b j i t)
  AffineMap id4 = dec.map(4, {d0, d1, d2, d3});
  SmallVector<Value> results = buildGeneric(
      rewriter, loc, {t.probs, t.doutValues, rows, lam, t.masked},
      {dec.emptyScores(), dec.emptyScores()},
      {id4, id4, dec.map(4, {d0, d1, d2}), dec.map(4, {d0, d2, d1.floorDiv(2)}),
       id4, id4, id4},
      {kPar, kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value sig = buildSigmoid(b, l, buildFloatCast(b, l, args[3], acc));
        Value weight = arith::SelectOp::create(b, l, isSecondHead(b, l, 1),
                                               arith::NegFOp::create(b, l, sig),
                                               constant(b, l, 1.0));
        Value dp = arith::MulFOp::create(b, l, weight, args[1]);
        Value ds = arith::MulFOp::create(
            b, l, args[0], arith::SubFOp::create(b, l, dp, args[2]));
        Value isMasked = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OEQ,
                                               args[4], dec.minusInf(b, l));
        ds = arith::SelectOp::create(b, l, isMasked, constant(b, l, 0.0), ds);
        linalg::YieldOp::create(
            b, l, ValueRange{ds, arith::MulFOp::create(b, l, weight, args[0])});
      });
  return {results[0], results[1]};
}

Value BackwardLowering::addQueryGradient(Decomposition &dec, Value dScores,
                                         Value kBlock, Value dqSum) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3),
             d4 = dec.dim(4);
  // dq[b, i, j, d] += sum_t dS[b, j, i, t] * k[b, t, kh(j), d] (loops b i j
  // d t; keys past kv_len never read).
  return dec.contract(dScores, kBlock, dqSum,
                      {dec.map(5, {d0, d2, d1, d4}),
                       dec.map(5, {d0, d4, config.keyHead(d2), d3}),
                       dec.map(5, {d0, d1, d2, d3})},
                      {kPar, kPar, kPar, kPar, kRed}, /*keyLoop=*/4);
}

Value BackwardLowering::keyGradient(Decomposition &dec, Value grads,
                                    bool values, Value init) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3),
             d4 = dec.dim(4), d5 = dec.dim(5), d6 = dec.dim(6);
  // The query heads j = g * G + jj of KV head g: the head dimension is split
  // into (g, jj) (dout's pairs into (g, jj / 2)) so that every loop indexes
  // some operand directly (linalg needs invertible indexing maps).
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
  if (!values) {
    // dk[b, t, g, d] = sum_{jj, i} dS[b, g, jj, i, t] * q[b, i, g, jj, d]
    //                                                  (loops b t g d jj i)
    OpFoldResult group = rewriter.getIndexAttr(groupSize);
    Value groupedScores =
        expand(grads, {{0}, {1, 2}, {3}, {4}},
               {dec.batch, kvHeads, group, dec.seqQ, dec.seqK});
    Value groupedQ = expand(q, {{0}, {1}, {2, 3}, {4}},
                            {dec.batch, dec.seqQ, kvHeads, group,
                             rewriter.getIndexAttr(config.headDim)});
    return dec.contract(groupedScores, groupedQ, init,
                        {dec.map(6, {d0, d2, d4, d5, d1}),
                         dec.map(6, {d0, d5, d2, d4, d3}),
                         dec.map(6, {d0, d1, d2, d3})},
                        {kPar, kPar, kPar, kPar, kRed, kRed});
  }
  // dv[b, t, g, e] = sum_{pp, s, i} w_j P[b, g, pp, s, i, t] *
  // dout[b, i, g, pp, e] (j = g * G + 2 pp + s)     (loops b t g e pp s i)
  OpFoldResult pairsPerGroup = rewriter.getIndexAttr(groupSize / 2);
  Value groupedProbs = expand(grads, {{0}, {1, 2, 3}, {4}, {5}},
                              {dec.batch, kvHeads, pairsPerGroup,
                               rewriter.getIndexAttr(2), dec.seqQ, dec.seqK});
  Value groupedDout =
      expand(dout, {{0}, {1}, {2, 3}, {4}},
             {dec.batch, dec.seqQ, kvHeads, pairsPerGroup, dec.valueDim});
  return dec.contract(groupedProbs, groupedDout, init,
                      {dec.map(7, {d0, d2, d4, d5, d6, d1}),
                       dec.map(7, {d0, d6, d2, d4, d3}),
                       dec.map(7, {d0, d1, d2, d3})},
                      {kPar, kPar, kPar, kPar, kRed, kRed, kRed});
}

Value BackwardLowering::lambdaGradient(Decomposition &dec, Value r) {
  // dlam = -sigmoid'(lam) r = -sigmoid(lam) sigmoid(-lam) r (not sigmoid
  // (1 - sigmoid), which is 0 in f32 once sigmoid(lam) rounds to 1, from
  // lam ~ 17; in f64 from lam ~ 37).
  AffineMap id3 = dec.map(3, {dec.dim(0), dec.dim(1), dec.dim(2)});
  Type lamElement = cast<RankedTensorType>(lam.getType()).getElementType();
  return buildGeneric(
      rewriter, loc, {r, lam}, {destination(3, lam)}, {id3, id3, id3},
      {kPar, kPar, kPar}, [&](OpBuilder &b, Location l, ValueRange args) {
        Value x = buildFloatCast(b, l, args[1], acc);
        Value slope = arith::MulFOp::create(
            b, l, buildSigmoid(b, l, x),
            buildSigmoid(b, l, arith::NegFOp::create(b, l, x)));
        Value grad = arith::NegFOp::create(
            b, l, arith::MulFOp::create(b, l, slope, args[0]));
        linalg::YieldOp::create(b, l, buildFloatCast(b, l, grad, lamElement));
      })[0];
}

Value BackwardLowering::destination(unsigned index, Value like) {
  if (Value dest = getResultDestination(op, index))
    return dest;
  auto type = cast<RankedTensorType>(op->getResult(index).getType());
  return tensor::EmptyOp::create(rewriter, loc,
                                 tensor::getMixedSizes(rewriter, loc, like),
                                 type.getElementType());
}

Value BackwardLowering::finish(Value sum, Value dest, double factor) {
  Type element = cast<RankedTensorType>(dest.getType()).getElementType();
  unsigned rank = cast<RankedTensorType>(sum.getType()).getRank();
  AffineMap id = rewriter.getMultiDimIdentityMap(rank);
  return buildGeneric(
      rewriter, loc, {sum}, {dest}, {id, id},
      SmallVector<utils::IteratorType>(rank, kPar),
      [&](OpBuilder &b, Location l, ValueRange args) {
        Value scaled =
            arith::MulFOp::create(b, l, args[0], constant(b, l, factor));
        linalg::YieldOp::create(b, l, buildFloatCast(b, l, scaled, element));
      })[0];
}

void BackwardLowering::build(int64_t blockK) {
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  Decomposition full(rewriter, op, q, k, kvLen);
  AffineExpr d0 = full.dim(0), d1 = full.dim(1), d2 = full.dim(2),
             d3 = full.dim(3);
  double scale = config.scaleIn(acc);
  // rowsum(dout * out) per row and pair.                 (loops b i h e)
  AffineMap id4 = full.map(4, {d0, d1, d2, d3});
  Value outDot = buildGeneric(
      rewriter, loc, {dout, out}, {zeroPairRows(full)},
      {id4, id4, full.map(4, {d0, d1, d2})}, {kPar, kPar, kPar, kRed},
      [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(b, l,
                                buildMulAcc(b, l, args[0], args[1], args[2]));
      })[0];
  // dq accumulates in A (in its destination when that has type A and the
  // scale is 1); dk and dv go to their destinations.
  auto dqInit = [&] {
    return accumulatesInPlace(0, scale)
               ? linalg::FillOp::create(rewriter, loc,
                                        constant(rewriter, loc, 0.0),
                                        destination(0, q))
                     .getResult(0)
               : zeros(q);
  };
  auto finishQuery = [&](Value dqSum) {
    return accumulatesInPlace(0, scale)
               ? dqSum
               : finish(dqSum, destination(0, q), scale);
  };
  SmallVector<Value> results;
  std::optional<int64_t> staticKeys = getConstantIntValue(full.seqK);
  if (blockK <= 0 || (staticKeys && *staticKeys <= blockK)) {
    // One block of all keys: the terms are built once.
    BlockTerms t = blockTerms(full, k, v);
    Value r = addSecondHeadTerm(full, t, zeroPairRows(full));
    auto [dScores, weightedProbs] =
        scoreGradients(full, t, rowTerms(full, r, outDot));
    auto keyGrad = [&](unsigned index, Value like, Value grads, bool values,
                       double factor) {
      if (accumulatesInPlace(index, factor))
        return keyGradient(full, grads, values,
                           linalg::FillOp::create(rewriter, loc,
                                                  constant(rewriter, loc, 0.0),
                                                  destination(index, like))
                               .getResult(0));
      return finish(keyGradient(full, grads, values, zeros(like)),
                    destination(index, like), factor);
    };
    results = {finishQuery(addQueryGradient(full, dScores, k, dqInit())),
               keyGrad(1, k, dScores, false, scale),
               keyGrad(2, v, weightedProbs, true, 1.0),
               lambdaGradient(full, r)};
  } else {
    // Key blocks [t0, t0 + n), n = min(blockK, Sk - t0): K and V slices,
    // the scores' keys offset by t0.
    Value seqK = full.seqKValue;
    auto forEachBlock = [&](ValueRange init, function_ref<SmallVector<Value>(
                                                 Decomposition &, Value, Value,
                                                 Value, ValueRange)>
                                                 body) {
      return scf::ForOp::create(
                 rewriter, loc,
                 arith::ConstantIndexOp::create(rewriter, loc, 0), seqK,
                 arith::ConstantIndexOp::create(rewriter, loc, blockK), init,
                 [&](OpBuilder &, Location, Value t0, ValueRange carried) {
                   Value n = arith::MinSIOp::create(
                       rewriter, loc,
                       arith::ConstantIndexOp::create(rewriter, loc, blockK),
                       arith::SubIOp::create(rewriter, loc, seqK, t0));
                   auto slice = [&](Value t) -> Value {
                     SmallVector<OpFoldResult> offsets(
                         4, rewriter.getIndexAttr(0));
                     offsets[1] = t0;
                     SmallVector<OpFoldResult> sizes =
                         tensor::getMixedSizes(rewriter, loc, t);
                     sizes[1] = n;
                     SmallVector<OpFoldResult> strides(
                         4, rewriter.getIndexAttr(1));
                     return tensor::ExtractSliceOp::create(
                         rewriter, loc, t, offsets, sizes, strides);
                   };
                   Value kBlock = slice(k), vBlock = slice(v);
                   Decomposition dec(rewriter, op, q, kBlock, kvLen, t0, seqK);
                   scf::YieldOp::create(rewriter, loc,
                                        body(dec, kBlock, vBlock, t0, carried));
                 })
          .getResults();
    };
    // Pass 1: r over every key block.
    Value r =
        forEachBlock({zeroPairRows(full)},
                     [&](Decomposition &dec, Value kBlock, Value vBlock, Value,
                         ValueRange carried) -> SmallVector<Value> {
                       return {addSecondHeadTerm(
                           dec, blockTerms(dec, kBlock, vBlock), carried[0])};
                     })[0];
    Value rows = rowTerms(full, r, outDot);
    // Pass 2: dq accumulated; each block's dk and dv, complete after the
    // block, written into the gradients at keys t0 onwards.
    SmallVector<Value> grads = forEachBlock(
        {dqInit(), destination(1, k), destination(2, v)},
        [&](Decomposition &dec, Value kBlock, Value vBlock, Value t0,
            ValueRange carried) -> SmallVector<Value> {
          BlockTerms t = blockTerms(dec, kBlock, vBlock);
          auto [dScores, weightedProbs] = scoreGradients(dec, t, rows);
          SmallVector<Value> updated = {
              addQueryGradient(dec, dScores, kBlock, carried[0])};
          for (auto [index, grad, block] :
               {std::tuple<unsigned, Value, Value>{1, dScores, kBlock},
                {2, weightedProbs, vBlock}}) {
            // Written into the gradient's rows t0 .. t0 + n - 1 (a slice
            // of it, so that bufferization writes in place).
            Value dest = carried[index];
            SmallVector<OpFoldResult> offsets(4, rewriter.getIndexAttr(0));
            offsets[1] = t0;
            SmallVector<OpFoldResult> sizes =
                tensor::getMixedSizes(rewriter, loc, block);
            SmallVector<OpFoldResult> strides(4, rewriter.getIndexAttr(1));
            Value rowsOfDest = tensor::ExtractSliceOp::create(
                rewriter, loc, dest, offsets, sizes, strides);
            double factor = index == 1 ? scale : 1.0;
            Value part =
                accumulatesInPlace(index, factor)
                    ? keyGradient(dec, grad, index == 2,
                                  linalg::FillOp::create(
                                      rewriter, loc,
                                      constant(rewriter, loc, 0.0), rowsOfDest)
                                      .getResult(0))
                    : finish(keyGradient(dec, grad, index == 2, zeros(block)),
                             rowsOfDest, factor);
            updated.push_back(tensor::InsertSliceOp::create(
                rewriter, loc, part, dest, offsets, sizes, strides));
          }
          return updated;
        });
    results = {finishQuery(grads[0]), grads[1], grads[2],
               lambdaGradient(full, r)};
  }
  for (auto [index, result] : llvm::enumerate(results))
    if (result.getType() != op->getResult(index).getType())
      result = tensor::CastOp::create(rewriter, loc,
                                      op->getResult(index).getType(), result);
  replaceWithResults(rewriter, op, results);
}

LogicalResult mlir::diffattn::lowerV2Backward(RewriterBase &rewriter,
                                              V2BackwardOp op, int64_t blockK) {
  BackwardLowering(rewriter, op).build(blockK);
  return success();
}
