//===- DecomposeBuilders.h - linalg parts of the decompositions -*- C++ -*-===//
//
// Internal to the transforms library: what the untiled decomposition of
// diffattn.v2 (Decompose.cpp) and the backward lowerings (V2Backward.cpp,
// untiled or over blocks of query rows and keys) share: an op's sizes, the
// scaled and masked scores, and the contractions with the kv_len guard, all in
// the op's accumulator type A (f64 for f64 operands, else f32).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_DECOMPOSEBUILDERS_H
#define DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_DECOMPOSEBUILDERS_H

#include "LinalgBuilders.h"

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"
#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/PatternMatch.h"

#include <limits>
#include <optional>

namespace mlir::diffattn::lowering {

/// What the forward and backward decompositions of one op share: its sizes,
/// the scores with SPEC.md's mask, and the products with the values.
struct Decomposition {
  /// `k` holds the keys the products read: all of them, or (the backward's
  /// key blocks) the block of keys `keyBase` onwards of a cache of
  /// `fullSeqK` keys. Likewise `q` holds all query rows, or (the backward's
  /// row blocks) the rows `rowBase` onwards of `fullSeqQ`.
  Decomposition(RewriterBase &rewriter, Operation *op, Value q, Value k,
                Value kvLen, Value keyBase = Value(), Value fullSeqK = Value(),
                Value rowBase = Value(), Value fullSeqQ = Value())
      : rewriter(rewriter), loc(op->getLoc()), ctx(op->getContext()),
        config(AttentionConfig::get(op)), acc(config.accumulatorType),
        kvLen(kvLen), keyBase(keyBase), rowBase(rowBase) {
    batch = tensor::getMixedSize(rewriter, loc, q, 0);
    seqQ = tensor::getMixedSize(rewriter, loc, q, 1);
    seqK = tensor::getMixedSize(rewriter, loc, k, 1);
    seqQValue = getValueOrCreateConstantIndexOp(rewriter, loc, seqQ);
    seqKValue = getValueOrCreateConstantIndexOp(rewriter, loc, seqK);
    this->fullSeqK = fullSeqK ? fullSeqK : seqKValue;
    this->fullSeqQ = fullSeqQ ? fullSeqQ : seqQValue;
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
    return buildKeyLength(b, l, kvLenElement, fullSeqK);
  }

  /// The cache position of the key that loop `keyLoop` indexes.
  Value keyIndex(OpBuilder &b, Location l, unsigned keyLoop) const {
    Value key = linalg::IndexOp::create(b, l, keyLoop);
    return keyBase ? arith::AddIOp::create(b, l, key, keyBase).getResult()
                   : key;
  }

  /// The query row that loop `rowLoop` indexes.
  Value rowIndex(OpBuilder &b, Location l, unsigned rowLoop) const {
    Value row = linalg::IndexOp::create(b, l, rowLoop);
    return rowBase ? arith::AddIOp::create(b, l, row, rowBase).getResult()
                   : row;
  }

  /// A sum of products `init += lhs * rhs` (in A) over the reduction loops of
  /// `iterators`. With kv_len, `keyLoop` names the loop over keys: keys at
  /// t >= kv_len[b] are never read into the sum (a cache may hold NaN or Inf
  /// there, and 0 * NaN is NaN; SPEC.md: such keys are ignored). A last loop
  /// that is parallel (a static, contiguous D of rhs and init) builds row
  /// loops with vector accumulators (buildRowContraction), any other a
  /// linalg.generic.
  Value contract(Value lhs, Value rhs, Value init, ArrayRef<AffineMap> maps,
                 ArrayRef<utils::IteratorType> iterators,
                 std::optional<unsigned> keyLoop = std::nullopt) const {
    bool guarded = kvLen && keyLoop;
    // A last loop that is parallel (the gradients' axpy form): rows of init
    // held as vectors across the reductions (buildRowContraction).
    if (iterators.back() == utils::IteratorType::parallel) {
      auto guard = [&](OpBuilder &b, Location l, ArrayRef<Value> ivs) -> Value {
        if (!guarded)
          return Value();
        Value key = ivs[*keyLoop];
        if (keyBase)
          key = arith::AddIOp::create(b, l, key, keyBase);
        Value length = keyLength(
            b, l, tensor::ExtractOp::create(b, l, kvLen, ValueRange{ivs[0]}));
        return arith::CmpIOp::create(b, l, arith::CmpIPredicate::ult, key,
                                     length);
      };
      return buildRowContraction(rewriter, loc, lhs, rhs, init, maps, iterators,
                                 guard);
    }
    SmallVector<Value> inputs = {lhs, rhs};
    SmallVector<AffineMap> allMaps(maps.take_front(2));
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
            Value key = keyIndex(b, l, *keyLoop);
            Value stored = arith::CmpIOp::create(
                b, l, arith::CmpIPredicate::ult, key, keyLength(b, l, args[2]));
            sum = arith::SelectOp::create(b, l, stored, sum, args.back());
          }
          linalg::YieldOp::create(b, l, sum);
        })[0];
  }

  /// scale * S[b, j, i, t] = scale * sum_d q[b, i, j, d] * k[b, t, kh(j), d]
  /// where key t is visible to query row i, else -inf: [B, 2H, Sq, Sk] A.
  Value maskedScores(Value q, Value k) const {
    AffineExpr d0 = dim(0), d1 = dim(1), d2 = dim(2), d3 = dim(3), d4 = dim(4);
    Value zero = buildFilledTensor(rewriter, loc, scoreSizes(), acc, 0);
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
          Value row = rowIndex(b, l, 2);
          Value key = keyIndex(b, l, 3);
          Value keyLen = keyLength(b, l, kvLen ? args[1] : Value());
          Value offset = arith::SubIOp::create(b, l, keyLen, fullSeqQ);
          Value visible =
              buildIsVisible(b, l, config, row, key, offset, keyLen);
          Value scaled = arith::MulFOp::create(
              b, l, args[0],
              buildFloatConstant(b, l, acc, config.scaleIn(acc)));
          linalg::YieldOp::create(
              b, l,
              arith::SelectOp::create(b, l, visible, scaled, minusInf(b, l))
                  .getResult());
        })[0];
  }

  /// A[b, i, j, e] = sum_t P[b, j, i, t] * v[b, t, vh(j), e]: [B, Sq, 2H, Dv]
  /// A.
  Value valueProduct(Value probs, Value v) const {
    AffineExpr d0 = dim(0), d1 = dim(1), d2 = dim(2), d3 = dim(3), d4 = dim(4);
    Value zero = buildFilledTensor(rewriter, loc,
                                   {batch, seqQ, queryHeads, valueDim}, acc, 0);
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
    return tensor::EmptyOp::create(rewriter, loc, scoreSizes(), acc);
  }
  Value minusInf(OpBuilder &b, Location l) const {
    return buildFloatConstant(b, l, acc,
                              -std::numeric_limits<double>::infinity());
  }

  RewriterBase &rewriter;
  Location loc;
  MLIRContext *ctx;
  AttentionConfig config;
  /// The accumulator type A of every intermediate (config.accumulatorType).
  Type acc;
  Value kvLen;
  /// The first key of `k` in the cache (null: 0) and the cache's keys.
  Value keyBase, fullSeqK;
  /// The first row of `q` (null: 0) and the op's query rows Sq.
  Value rowBase, fullSeqQ;
  /// seqQ / seqK: the rows of `q` and keys of `k` (a block's, in the
  /// backward's blocks).
  OpFoldResult batch, seqQ, seqK, queryHeads, pairs, valueDim;
  Value seqQValue, seqKValue;
};

} // namespace mlir::diffattn::lowering

#endif // DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_DECOMPOSEBUILDERS_H
