//===- V2Backward.cpp - diffattn.v2_backward as linalg on tensors ---------===//
//
// lowerV2Backward: the gradients of diffattn.v2 (the formula in the op's ODS
// description) as linalg.generic ops on tensors, either over all rows and
// keys at once (diffattn-decompose: the oracle, memory quadratic in the
// sequence length) or over blocks of query rows and keys (diffattn-tile-flash:
// FlashAttention-2's backward, Dao 2023; memory B x 2H x blockQ x blockK per
// term, in the accumulator type A: f64 for f64 operands, else f32).
//
// Per block of rows and block of keys, P = exp(scale S - lse) is recomputed
// from q, k and the forward's log-sum-exp, and G = dout V^T. Since out =
// A_{2h} - sigmoid(lam) A_{2h+1}, the row terms D_j = rowsum(dA_j * A_j) need
// only r = rowsum(dout * A_{2h+1}) = sum_t P_{2h+1} G_{2h+1}: D_{2h} =
// rowsum(dout * out) + sigmoid(lam) r, D_{2h+1} = -sigmoid(lam) r, dlam =
// -sigmoid'(lam) r. Each block of rows therefore walks its key blocks twice:
// once for r, once for dS = scale P (w_j G - D_j) (w_j = 1, or -sigmoid(lam)
// for the pair's second head), dq += dS K (complete after the block's key
// loop, written once) and each key block's dk += dS^T q and dv += (w P)^T
// dout, summed over the query heads of each KV group and accumulated over
// the row blocks. Key blocks that no row of a row block sees (causal mask,
// window, kv_len) are skipped through the loop bounds (KeyRange.h).
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

/// The row-indexed operands of one block of query rows [row0, row0 + rows):
/// q [B, rows, 2H, D], out and dout [B, rows, H, Dv], lam [B, rows, H], lse
/// [B, 2H, rows]; the whole tensors (and a null row0) when rows are not
/// tiled.
struct RowBlock {
  Value q, out, dout, lam, lse;
  Value row0, rows;
};

/// The gradients carried through the row blocks: dq and dlam (each row
/// block writes its rows once), and the dk, dv sums in A [B, Sk, Hkv, D or
/// Dv] (each row block adds to the keys it sees).
struct Gradients {
  Value dq, dk, dv, dlam;
};

/// The builder of one op's backward pass.
class BackwardLowering {
public:
  BackwardLowering(RewriterBase &rewriter, V2BackwardOp op,
                   FlashTileSizes sizes)
      : rewriter(rewriter), op(op), loc(op.getLoc()), ctx(op.getContext()),
        config(AttentionConfig::get(op)), q(op.getQ()), k(op.getK()),
        v(op.getV()), lam(op.getLam()), out(op.getOut()), dout(op.getDout()),
        lse(op.getLse()), kvLen(op.getKvLen()), acc(config.accumulatorType),
        sizes(sizes) {
    groupSize = 2 * config.numPairs / config.numKeyHeads;
  }

  /// Replaces the op.
  void build();

private:
  /// What one block of rows and keys gives: the masked scores, P and G =
  /// dout V^T ([B, 2H, rows, keys] A each).
  struct BlockTerms {
    Value masked, probs, doutValues;
  };
  BlockTerms blockTerms(Decomposition &dec, const RowBlock &rb, Value kBlock,
                        Value vBlock);
  /// r += sum over the block's keys of P_{2h+1} G_{2h+1}: [B, rows, H] A.
  Value addSecondHeadTerm(Decomposition &dec, const BlockTerms &t, Value r);
  /// D_j [B, 2H, rows] A from r and rowsum(dout * out).
  Value rowTerms(Decomposition &dec, const RowBlock &rb, Value r, Value outDot);
  /// scale dS and w P of the block.
  std::pair<Value, Value> scoreGradients(Decomposition &dec, const RowBlock &rb,
                                         const BlockTerms &t, Value rows);
  /// dq += (scale dS) K over the block's keys: [B, rows, 2H, D] A.
  Value addQueryGradient(Decomposition &dec, Value dScores, Value kBlock,
                         Value dqSum);
  /// `init` += the block's dk ((scale dS)^T q) or dv ((w P)^T dout) summed
  /// over each KV group: A [B, keys, Hkv, D or Dv].
  Value keyGradient(Decomposition &dec, const RowBlock &rb, Value grads,
                    bool values, Value init);
  /// dlam = -sigmoid'(lam) r of the block's rows, into `dest`.
  Value lambdaGradient(Decomposition &dec, const RowBlock &rb, Value r,
                       Value dest);

  /// The gradients after the row block `rb` (both passes over its keys).
  Gradients rowBlock(const RowBlock &rb, const Gradients &in);
  /// The keys [lo, hi) that some row of `rb` sees in some batch row (lo on a
  /// block boundary).
  std::pair<Value, Value> keyBounds(const RowBlock &rb);
  /// Runs `body` over the key blocks [t0, t0 + n) of [lo, hi), n =
  /// min(blockK, hi - t0), carrying `init` (or once over all keys, t0 null,
  /// when keys are not tiled): the K and V slices and a Decomposition whose
  /// keys start at t0 and rows at rb.row0.
  using KeyBlockBody = function_ref<SmallVector<Value>(
      Decomposition &, Value kBlock, Value vBlock, Value t0, ValueRange)>;
  SmallVector<Value> forEachKeyBlock(const RowBlock &rb, Value lo, Value hi,
                                     ValueRange init, KeyBlockBody body);

  /// `source` restricted to [start, start + size) along `dim`, and `part`
  /// (such a slice) inserted back into `dest`.
  Value slice(Value source, unsigned dim, Value start, Value size);
  Value insert(Value part, Value dest, unsigned dim, Value start, Value size);

  /// The op's destination for result `index` if it has one, else a new
  /// tensor shaped like `like`.
  Value destination(unsigned index, Value like);
  /// A zero-filled A accumulator for result `index` shaped like `like`: the
  /// destination itself when its element type is A, else a new tensor.
  Value accumulator(unsigned index, Value like, Value dest);
  /// `sum` (A) converted to `dest`'s element type, into `dest` (unchanged
  /// when that is A: then `sum` was accumulated in `dest`).
  Value finish(Value sum, Value dest);
  Value zeroPairRows(Decomposition &dec) {
    return buildFilledTensor(rewriter, loc, {dec.batch, dec.seqQ, dec.pairs},
                             acc, 0);
  }
  Value index(int64_t value) {
    return arith::ConstantIndexOp::create(rewriter, loc, value);
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
  FlashTileSizes sizes;
  int64_t groupSize;
  /// Set by build(): whether rows / keys are tiled, Sq and Sk, and the
  /// smallest and largest key length over the batch (Sk without kv_len).
  bool tileRows = false, tileKeys = false;
  Value seqQ, seqK, minKeyLen, maxKeyLen;
};

} // namespace

BackwardLowering::BlockTerms BackwardLowering::blockTerms(Decomposition &dec,
                                                          const RowBlock &rb,
                                                          Value kBlock,
                                                          Value vBlock) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3),
             d4 = dec.dim(4);
  BlockTerms t;
  // P[b, j, i, t] = exp(scale * S - lse[b, j, i]), 0 where masked (also on
  // rows with no visible key, whose lse is -inf).
  t.masked = dec.maskedScores(rb.q, kBlock);
  AffineMap id4 = dec.map(4, {d0, d1, d2, d3});
  t.probs = buildGeneric(
      rewriter, loc, {t.masked, rb.lse}, {dec.emptyScores()},
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
  t.doutValues = dec.contract(rb.dout, vBlock, zero,
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

Value BackwardLowering::rowTerms(Decomposition &dec, const RowBlock &rb,
                                 Value r, Value outDot) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2);
  // (loops b j i)
  AffineMap headPair = dec.map(3, {d0, d2, d1.floorDiv(2)});
  Value rows = tensor::EmptyOp::create(
      rewriter, loc,
      ArrayRef<OpFoldResult>{dec.batch, dec.queryHeads, dec.seqQ}, acc);
  return buildGeneric(
      rewriter, loc, {r, outDot, rb.lam}, {rows},
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
                                                         const RowBlock &rb,
                                                         const BlockTerms &t,
                                                         Value rows) {
  AffineExpr d0 = dec.dim(0), d1 = dec.dim(1), d2 = dec.dim(2), d3 = dec.dim(3);
  // scale dS = scale P (w_j G - D_j), 0 where masked (the scale of dq and
  // dk, applied once per element), and w_j P, which dv reads.
  //                                                        (loops b j i t)
  AffineMap id4 = dec.map(4, {d0, d1, d2, d3});
  double scale = config.scaleIn(acc);
  SmallVector<Value> results = buildGeneric(
      rewriter, loc, {t.probs, t.doutValues, rows, rb.lam, t.masked},
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
        ds = arith::MulFOp::create(b, l, ds, constant(b, l, scale));
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
  // t d; keys past kv_len never read). With d last, contract builds rows of
  // dq held as vectors across the loop over keys, an axpy per key on a
  // contiguous row of k (buildRowContraction); with the sum over keys
  // innermost, k was read with a stride of Hkv x D elements (scalar
  // gathers, 0.5-2 GFLOP/s; docs/performance.md, CPU 2026-12-04).
  return dec.contract(dScores, kBlock, dqSum,
                      {dec.map(5, {d0, d2, d1, d3}),
                       dec.map(5, {d0, d3, config.keyHead(d2), d4}),
                       dec.map(5, {d0, d1, d2, d4})},
                      {kPar, kPar, kPar, kRed, kPar}, /*keyLoop=*/3);
}

Value BackwardLowering::keyGradient(Decomposition &dec, const RowBlock &rb,
                                    Value grads, bool values, Value init) {
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
    // dk[b, t, g, d] += sum_{jj, i} dS[b, g, jj, i, t] * q[b, i, g, jj, d]
    // (loops b g jj i t d; contract walks the rows (b, g, t) of dk, each a
    // vector across the reductions jj, i: an axpy per step on a contiguous
    // row of q, as for dq).
    OpFoldResult group = rewriter.getIndexAttr(groupSize);
    Value groupedScores =
        expand(grads, {{0}, {1, 2}, {3}, {4}},
               {dec.batch, kvHeads, group, dec.seqQ, dec.seqK});
    Value groupedQ = expand(rb.q, {{0}, {1}, {2, 3}, {4}},
                            {dec.batch, dec.seqQ, kvHeads, group,
                             rewriter.getIndexAttr(config.headDim)});
    return dec.contract(groupedScores, groupedQ, init,
                        {dec.map(6, {d0, d1, d2, d3, d4}),
                         dec.map(6, {d0, d3, d1, d2, d5}),
                         dec.map(6, {d0, d4, d1, d5})},
                        {kPar, kPar, kRed, kRed, kPar, kPar});
  }
  // dv[b, t, g, e] += sum_{pp, s, i} w_j P[b, g, pp, s, i, t] *
  // dout[b, i, g, pp, e] (j = g * G + 2 pp + s)     (loops b g pp s i t e)
  OpFoldResult pairsPerGroup = rewriter.getIndexAttr(groupSize / 2);
  Value groupedProbs = expand(grads, {{0}, {1, 2, 3}, {4}, {5}},
                              {dec.batch, kvHeads, pairsPerGroup,
                               rewriter.getIndexAttr(2), dec.seqQ, dec.seqK});
  Value groupedDout =
      expand(rb.dout, {{0}, {1}, {2, 3}, {4}},
             {dec.batch, dec.seqQ, kvHeads, pairsPerGroup, dec.valueDim});
  return dec.contract(groupedProbs, groupedDout, init,
                      {dec.map(7, {d0, d1, d2, d3, d4, d5}),
                       dec.map(7, {d0, d4, d1, d2, d6}),
                       dec.map(7, {d0, d5, d1, d6})},
                      {kPar, kPar, kRed, kRed, kRed, kPar, kPar});
}

Value BackwardLowering::lambdaGradient(Decomposition &dec, const RowBlock &rb,
                                       Value r, Value dest) {
  // dlam = -sigmoid'(lam) r = -sigmoid(lam) sigmoid(-lam) r (not sigmoid
  // (1 - sigmoid), which is 0 in f32 once sigmoid(lam) rounds to 1, from
  // lam ~ 17; in f64 from lam ~ 37).
  AffineMap id3 = dec.map(3, {dec.dim(0), dec.dim(1), dec.dim(2)});
  Type lamElement = cast<RankedTensorType>(lam.getType()).getElementType();
  return buildGeneric(
      rewriter, loc, {r, rb.lam}, {dest}, {id3, id3, id3}, {kPar, kPar, kPar},
      [&](OpBuilder &b, Location l, ValueRange args) {
        Value x = buildFloatCast(b, l, args[1], acc);
        Value slope = arith::MulFOp::create(
            b, l, buildSigmoid(b, l, x),
            buildSigmoid(b, l, arith::NegFOp::create(b, l, x)));
        Value grad = arith::NegFOp::create(
            b, l, arith::MulFOp::create(b, l, slope, args[0]));
        linalg::YieldOp::create(b, l, buildFloatCast(b, l, grad, lamElement));
      })[0];
}

Value BackwardLowering::slice(Value source, unsigned dim, Value start,
                              Value size) {
  auto type = cast<RankedTensorType>(source.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), rewriter.getIndexAttr(0));
  offsets[dim] = start;
  SmallVector<OpFoldResult> sizes =
      tensor::getMixedSizes(rewriter, loc, source);
  sizes[dim] = size;
  SmallVector<OpFoldResult> strides(type.getRank(), rewriter.getIndexAttr(1));
  return tensor::ExtractSliceOp::create(rewriter, loc, source, offsets, sizes,
                                        strides);
}

Value BackwardLowering::insert(Value part, Value dest, unsigned dim,
                               Value start, Value size) {
  auto type = cast<RankedTensorType>(dest.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), rewriter.getIndexAttr(0));
  offsets[dim] = start;
  SmallVector<OpFoldResult> sizes = tensor::getMixedSizes(rewriter, loc, dest);
  sizes[dim] = size;
  SmallVector<OpFoldResult> strides(type.getRank(), rewriter.getIndexAttr(1));
  return tensor::InsertSliceOp::create(rewriter, loc, part, dest, offsets,
                                       sizes, strides);
}

Value BackwardLowering::destination(unsigned index, Value like) {
  if (Value dest = getResultDestination(op, index))
    return dest;
  auto type = cast<RankedTensorType>(op->getResult(index).getType());
  return tensor::EmptyOp::create(rewriter, loc,
                                 tensor::getMixedSizes(rewriter, loc, like),
                                 type.getElementType());
}

Value BackwardLowering::accumulator(unsigned index, Value like, Value dest) {
  Type element = cast<RankedTensorType>(dest.getType()).getElementType();
  Value init =
      element == acc
          ? dest
          : tensor::EmptyOp::create(
                rewriter, loc, tensor::getMixedSizes(rewriter, loc, like), acc)
                .getResult();
  return linalg::FillOp::create(rewriter, loc, constant(rewriter, loc, 0.0),
                                init)
      .getResult(0);
}

Value BackwardLowering::finish(Value sum, Value dest) {
  Type element = cast<RankedTensorType>(dest.getType()).getElementType();
  if (element == acc)
    return sum;
  unsigned rank = cast<RankedTensorType>(sum.getType()).getRank();
  AffineMap id = rewriter.getMultiDimIdentityMap(rank);
  return buildGeneric(rewriter, loc, {sum}, {dest}, {id, id},
                      SmallVector<utils::IteratorType>(rank, kPar),
                      [&](OpBuilder &b, Location l, ValueRange args) {
                        linalg::YieldOp::create(
                            b, l, buildFloatCast(b, l, args[0], element));
                      })[0];
}

std::pair<Value, Value> BackwardLowering::keyBounds(const RowBlock &rb) {
  Value firstRow = rb.row0 ? rb.row0 : index(0);
  Value rows = rb.rows ? rb.rows : seqQ;
  Value lastRow = arith::SubIOp::create(
      rewriter, loc, arith::AddIOp::create(rewriter, loc, firstRow, rows),
      index(1));
  // The bounds grow with the key length (bottom-right alignment), so the
  // union over the batch is lo at the smallest and hi at the largest.
  auto bounds = [&](Value keyLen) {
    return buildVisibleKeyBounds(
        rewriter, loc, config, firstRow, lastRow,
        arith::SubIOp::create(rewriter, loc, keyLen, seqQ), keyLen);
  };
  auto [lo, hi] = bounds(maxKeyLen);
  if (minKeyLen != maxKeyLen)
    lo = bounds(minKeyLen).first;
  return {alignDownToBlock(rewriter, loc, lo, sizes.blockK), hi};
}

SmallVector<Value> BackwardLowering::forEachKeyBlock(const RowBlock &rb,
                                                     Value lo, Value hi,
                                                     ValueRange init,
                                                     KeyBlockBody body) {
  if (!tileKeys) {
    Decomposition dec(rewriter, op, rb.q, k, kvLen, Value(), Value(), rb.row0,
                      seqQ);
    return body(dec, k, v, Value(), init);
  }
  Value blockK = index(sizes.blockK);
  return scf::ForOp::create(
             rewriter, loc, lo, hi, blockK, init,
             [&](OpBuilder &, Location, Value t0, ValueRange carried) {
               Value n = arith::MinSIOp::create(
                   rewriter, loc, blockK,
                   arith::SubIOp::create(rewriter, loc, hi, t0));
               Value kBlock = slice(k, 1, t0, n), vBlock = slice(v, 1, t0, n);
               Decomposition dec(rewriter, op, rb.q, kBlock, kvLen, t0, seqK,
                                 rb.row0, seqQ);
               scf::YieldOp::create(rewriter, loc,
                                    body(dec, kBlock, vBlock, t0, carried));
             })
      .getResults();
}

Gradients BackwardLowering::rowBlock(const RowBlock &rb, const Gradients &in) {
  Decomposition rowsDec(rewriter, op, rb.q, k, kvLen, Value(), Value(), rb.row0,
                        seqQ);
  AffineExpr d0 = rowsDec.dim(0), d1 = rowsDec.dim(1), d2 = rowsDec.dim(2),
             d3 = rowsDec.dim(3);
  // rowsum(dout * out) per row and pair.                 (loops b i h e)
  AffineMap id4 = rowsDec.map(4, {d0, d1, d2, d3});
  Value outDot = buildGeneric(
      rewriter, loc, {rb.dout, rb.out}, {zeroPairRows(rowsDec)},
      {id4, id4, rowsDec.map(4, {d0, d1, d2})}, {kPar, kPar, kPar, kRed},
      [&](OpBuilder &b, Location l, ValueRange args) {
        linalg::YieldOp::create(b, l,
                                buildMulAcc(b, l, args[0], args[1], args[2]));
      })[0];
  Value lo, hi;
  if (tileKeys)
    std::tie(lo, hi) = keyBounds(rb);
  // The terms of a key block; with keys not tiled, the one block's are
  // built once and read by both passes.
  std::optional<BlockTerms> allKeys;
  auto terms = [&](Decomposition &dec, Value kBlock, Value vBlock) {
    if (tileKeys)
      return blockTerms(dec, rb, kBlock, vBlock);
    if (!allKeys)
      allKeys = blockTerms(dec, rb, kBlock, vBlock);
    return *allKeys;
  };

  // Pass 1: r over the block's key blocks; then D_j of its rows.
  Value r = forEachKeyBlock(
      rb, lo, hi, {zeroPairRows(rowsDec)},
      [&](Decomposition &dec, Value kBlock, Value vBlock, Value,
          ValueRange carried) -> SmallVector<Value> {
        return {addSecondHeadTerm(dec, terms(dec, kBlock, vBlock), carried[0])};
      })[0];
  Value dRows = rowTerms(rowsDec, rb, r, outDot);
  auto rowsOf = [&](Value grad, unsigned dim) {
    return rb.row0 ? slice(grad, dim, rb.row0, rb.rows) : grad;
  };
  auto intoRows = [&](Value part, Value grad, unsigned dim) {
    return rb.row0 ? insert(part, grad, dim, rb.row0, rb.rows) : part;
  };

  // Pass 2: dq of the rows, complete after their key loop; each key block's
  // dk and dv added to the sums at keys t0 onwards (a slice of them, so
  // that bufferization updates them in place).
  Value dqRows = rowsOf(in.dq, 1);
  SmallVector<Value> sums = forEachKeyBlock(
      rb, lo, hi, {accumulator(0, rb.q, dqRows), in.dk, in.dv},
      [&](Decomposition &dec, Value kBlock, Value vBlock, Value t0,
          ValueRange carried) -> SmallVector<Value> {
        BlockTerms t = terms(dec, kBlock, vBlock);
        auto [dScores, weightedProbs] = scoreGradients(dec, rb, t, dRows);
        SmallVector<Value> updated = {
            addQueryGradient(dec, dScores, kBlock, carried[0])};
        for (auto [sum, grad, values] :
             {std::tuple<Value, Value, bool>{carried[1], dScores, false},
              {carried[2], weightedProbs, true}}) {
          if (!t0) {
            updated.push_back(keyGradient(dec, rb, grad, values, sum));
            continue;
          }
          Value keys = dec.seqKValue;
          Value part =
              keyGradient(dec, rb, grad, values, slice(sum, 1, t0, keys));
          updated.push_back(insert(part, sum, 1, t0, keys));
        }
        return updated;
      });
  Gradients result;
  result.dq = intoRows(finish(sums[0], dqRows), in.dq, 1);
  result.dk = sums[1];
  result.dv = sums[2];
  result.dlam =
      intoRows(lambdaGradient(rowsDec, rb, r, rowsOf(in.dlam, 1)), in.dlam, 1);
  return result;
}

void BackwardLowering::build() {
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  OpFoldResult rowsSize = tensor::getMixedSize(rewriter, loc, q, 1);
  OpFoldResult keysSize = tensor::getMixedSize(rewriter, loc, k, 1);
  seqQ = getValueOrCreateConstantIndexOp(rewriter, loc, rowsSize);
  seqK = getValueOrCreateConstantIndexOp(rewriter, loc, keysSize);
  // A dimension that fits one block is not tiled (nor is anything when
  // the block size is 0: the untiled oracle).
  auto tiles = [](OpFoldResult size, int64_t block) {
    std::optional<int64_t> known = getConstantIntValue(size);
    return block > 0 && !(known && *known <= block);
  };
  tileRows = tiles(rowsSize, sizes.blockQ);
  tileKeys = tiles(keysSize, sizes.blockK);
  // The smallest and largest key length over the batch, for the key
  // bounds of the row blocks.
  minKeyLen = maxKeyLen = seqK;
  if (tileKeys && kvLen) {
    Value batch = tensor::DimOp::create(rewriter, loc, q, 0);
    auto lengths = scf::ForOp::create(
        rewriter, loc, index(0), batch, index(1), ValueRange{seqK, index(0)},
        [&](OpBuilder &, Location, Value b, ValueRange minMax) {
          Value len = buildKeyLength(
              rewriter, loc, tensor::ExtractOp::create(rewriter, loc, kvLen, b),
              seqK);
          scf::YieldOp::create(
              rewriter, loc,
              ValueRange{
                  arith::MinSIOp::create(rewriter, loc, minMax[0], len),
                  arith::MaxSIOp::create(rewriter, loc, minMax[1], len)});
        });
    minKeyLen = lengths.getResult(0);
    maxKeyLen = lengths.getResult(1);
  }

  Value dkDest = destination(1, k), dvDest = destination(2, v);
  Gradients init{destination(0, q), accumulator(1, k, dkDest),
                 accumulator(2, v, dvDest), destination(3, lam)};
  Gradients grads;
  if (!tileRows) {
    grads = rowBlock({q, out, dout, lam, lse, Value(), Value()}, init);
  } else {
    Value blockQ = index(sizes.blockQ);
    auto rowLoop = scf::ForOp::create(
        rewriter, loc, index(0), seqQ, blockQ,
        ValueRange{init.dq, init.dk, init.dv, init.dlam},
        [&](OpBuilder &, Location, Value row0, ValueRange carried) {
          Value rows = arith::MinSIOp::create(
              rewriter, loc, blockQ,
              arith::SubIOp::create(rewriter, loc, seqQ, row0));
          RowBlock rb{slice(q, 1, row0, rows),
                      slice(out, 1, row0, rows),
                      slice(dout, 1, row0, rows),
                      slice(lam, 1, row0, rows),
                      slice(lse, 2, row0, rows),
                      row0,
                      rows};
          Gradients g =
              rowBlock(rb, {carried[0], carried[1], carried[2], carried[3]});
          scf::YieldOp::create(rewriter, loc,
                               ValueRange{g.dq, g.dk, g.dv, g.dlam});
        });
    ValueRange r = rowLoop.getResults();
    grads = {r[0], r[1], r[2], r[3]};
  }
  SmallVector<Value> results = {grads.dq, finish(grads.dk, dkDest),
                                finish(grads.dv, dvDest), grads.dlam};
  for (auto [index, result] : llvm::enumerate(results))
    if (result.getType() != op->getResult(index).getType())
      result = tensor::CastOp::create(rewriter, loc,
                                      op->getResult(index).getType(), result);
  replaceWithResults(rewriter, op, results);
}

LogicalResult mlir::diffattn::lowerV2Backward(RewriterBase &rewriter,
                                              V2BackwardOp op,
                                              FlashTileSizes sizes) {
  BackwardLowering(rewriter, op, sizes).build();
  return success();
}
