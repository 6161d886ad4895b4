//===- TileFlash.cpp - FlashAttention tiling of diffattn ops --------------===//
//
// The DiffAttnTileFlash pass and its core, tileDiffAttnOp. For each batch,
// head pair and block of query rows, one loop walks the key/value blocks
// that the mask leaves visible; each iteration extracts one K tile and one V
// tile (V1: one K tile per head, one shared V tile) and advances the online
// softmax of both heads of the pair; after the loop, the differential
// epilogue writes the pair's output head once.
//
//===----------------------------------------------------------------------===//

#include "LinalgBuilders.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

#include <limits>

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNTILEFLASH
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

FailureOr<FlashTileSizes>
mlir::diffattn::getDefaultFlashTileSizes(StringRef target) {
  // CPU: a 64x64 f32 score tile (16 KiB) and its K/V tiles stay in L1/L2.
  if (target == "cpu")
    return FlashTileSizes{64, 64};
  // GPU strategies: 128 query rows per CTA (4 warps x 16 rows x 2 heads)
  // and 64 keys per pipelined K/V stage.
  if (target == "sm_80" || target == "sm_90" || target == "sm_90a" ||
      target == "sm_100a")
    return FlashTileSizes{128, 64};
  return failure();
}

namespace {

/// The online-softmax state of one query head over a block of rows, in the
/// accumulator type A (f64 for f64 operands, else f32).
struct HeadState {
  Value max; // [bq] A, running max of the scaled scores
  Value sum; // [bq] A, running sum of exp(score - max)
  Value acc; // [bq, Dv] A, running sum of exp(score - max) * v
};

/// Builds the tiled form of one op. Index values named as in SPEC.md.
class FlashTiler {
public:
  FlashTiler(RewriterBase &rewriter, Operation *op, FlashTileSizes sizes)
      : b(rewriter), op(op), loc(op->getLoc()), ctx(op->getContext()),
        config(AttentionConfig::get(op)), acc(config.accumulatorType),
        sizes(sizes) {}

  /// The op's results: the output and, for diffattn.v2 with its `lse`
  /// result, the log-sum-exp.
  SmallVector<Value> build();

private:
  Value cst(int64_t value) {
    return arith::ConstantIndexOp::create(b, loc, value);
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, loc, x, y); }
  Value min(Value x, Value y) { return arith::MinSIOp::create(b, loc, x, y); }
  Value max(Value x, Value y) { return arith::MaxSIOp::create(b, loc, x, y); }
  Value applyHead(AffineExpr (AttentionConfig::*head)(AffineExpr) const,
                  Value queryHead) {
    AffineExpr j = getAffineDimExpr(0, ctx);
    return affine::AffineApplyOp::create(
        b, loc, AffineMap::get(1, 0, (config.*head)(j)), queryHead);
  }
  AffineMap map(unsigned numDims, ArrayRef<AffineExpr> results) {
    return AffineMap::get(numDims, 0, results, ctx);
  }

  /// `source[batch, row0 : row0 + rows, head, :]` as a [rows, width] tensor.
  Value extractRows(Value source, Value batch, Value row0, Value head,
                    Value rows, int64_t width);
  /// The [bq] running statistics and [bq, Dv] accumulator of a fresh head.
  HeadState initialState(Value rows);
  /// One key/value block of the online softmax of one head.
  HeadState step(Value qTile, Value kTile, Value vTile, HeadState state,
                 Value needsMask, Value row0, Value key0, Value offset,
                 Value keyLen, Value rows, Value keys);
  /// Scaled (and, when `masked`, masked) scores of a block.
  Value scaleScores(Value scores, bool masked, Value row0, Value key0,
                    Value offset, Value keyLen, Value rows, Value keys);
  /// The fused differential epilogue of one block of rows: [bq, Dv] of T.
  Value epilogue(HeadState h0, HeadState h1, Value batch, Value row0,
                 Value pair, Value rows);
  /// `lse` with head `head`'s rows row0 .. row0 + rows - 1 of batch `batch`
  /// set to the head's log-sum-exp, max + log(sum) ([bq] A).
  Value insertLse(Value lse, HeadState h, Value batch, Value head, Value row0,
                  Value rows);
  /// The head's normalised output acc / sum ([bq, Dv] of T): diffattn.v2's
  /// `out_odd` rows of the pair's second head.
  Value normalizedOutput(HeadState h, Value rows);

  RewriterBase &b;
  Operation *op;
  Location loc;
  MLIRContext *ctx;
  AttentionConfig config;
  /// The accumulator type A of scores, statistics and sums.
  Type acc;
  FlashTileSizes sizes;
};

} // namespace

Value FlashTiler::extractRows(Value source, Value batch, Value row0, Value head,
                              Value rows, int64_t width) {
  SmallVector<OpFoldResult> offsets = {batch, row0, head, b.getIndexAttr(0)};
  SmallVector<OpFoldResult> sizes = {b.getIndexAttr(1), rows, b.getIndexAttr(1),
                                     b.getIndexAttr(width)};
  SmallVector<OpFoldResult> strides(4, b.getIndexAttr(1));
  auto sourceType = cast<RankedTensorType>(source.getType());
  auto tileType = RankedTensorType::get({ShapedType::kDynamic, width},
                                        sourceType.getElementType());
  return tensor::ExtractSliceOp::create(b, loc, tileType, source, offsets,
                                        sizes, strides);
}

HeadState FlashTiler::initialState(Value rows) {
  OpFoldResult valueDim = b.getIndexAttr(config.valueDim);
  return HeadState{buildFilledTensor(b, loc, {rows}, acc,
                                     -std::numeric_limits<double>::infinity()),
                   buildFilledTensor(b, loc, {rows}, acc, 0.0),
                   buildFilledTensor(b, loc, {rows, valueDim}, acc, 0.0)};
}

Value FlashTiler::scaleScores(Value scores, bool masked, Value row0, Value key0,
                              Value offset, Value keyLen, Value rows,
                              Value keys) {
  AffineExpr i, j;
  bindDims(ctx, i, j);
  Value empty =
      tensor::EmptyOp::create(b, loc, ArrayRef<OpFoldResult>{rows, keys}, acc);
  return buildGeneric(
      b, loc, {scores}, {empty}, {map(2, {i, j}), map(2, {i, j})}, {kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        Value scaled = arith::MulFOp::create(
            nb, l, args[0],
            buildFloatConstant(nb, l, acc, config.scaleIn(acc)));
        if (!masked) {
          linalg::YieldOp::create(nb, l, scaled);
          return;
        }
        Value row = arith::AddIOp::create(nb, l, row0,
                                          linalg::IndexOp::create(nb, l, 0));
        Value key = arith::AddIOp::create(nb, l, key0,
                                          linalg::IndexOp::create(nb, l, 1));
        Value visible = buildIsVisible(nb, l, config, row, key, offset, keyLen);
        Value minusInf = buildFloatConstant(
            nb, l, acc, -std::numeric_limits<double>::infinity());
        linalg::YieldOp::create(
            nb, l,
            arith::SelectOp::create(nb, l, visible, scaled, minusInf)
                .getResult());
      })[0];
}

HeadState FlashTiler::step(Value qTile, Value kTile, Value vTile,
                           HeadState state, Value needsMask, Value row0,
                           Value key0, Value offset, Value keyLen, Value rows,
                           Value keys) {
  AffineExpr i, j, d;
  bindDims(ctx, i, j, d);

  // S = q kᵀ (in A), then scale; mask only blocks that straddle the mask.
  Value zero = buildFilledTensor(b, loc, {rows, keys}, acc, 0.0);
  Value scores = buildGeneric(
      b, loc, {qTile, kTile}, {zero},
      {map(3, {i, d}), map(3, {j, d}), map(3, {i, j})}, {kPar, kPar, kRed},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(nb, l,
                                buildMulAcc(nb, l, args[0], args[1], args[2]));
      })[0];
  if (!needsMask) {
    scores = scaleScores(scores, /*masked=*/false, row0, key0, offset, keyLen,
                         rows, keys);
  } else {
    auto ifOp = scf::IfOp::create(
        b, loc, needsMask,
        [&](OpBuilder &, Location) {
          scf::YieldOp::create(b, loc,
                               scaleScores(scores, /*masked=*/true, row0, key0,
                                           offset, keyLen, rows, keys));
        },
        [&](OpBuilder &, Location) {
          scf::YieldOp::create(b, loc,
                               scaleScores(scores, /*masked=*/false, row0, key0,
                                           offset, keyLen, rows, keys));
        });
    scores = ifOp.getResult(0);
  }

  // New running max, probabilities, rescale factor and sum.
  // The block's row max goes into a fresh tensor (not into the running
  // max, which is still read for the rescale factor), then merges.
  AffineMap tile2 = map(2, {i, j}), rows2 = map(2, {i});
  Value blockMax = buildGeneric(
      b, loc, {scores},
      {buildFilledTensor(b, loc, {rows}, acc,
                         -std::numeric_limits<double>::infinity())},
      {tile2, rows2}, {kPar, kRed},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(
            nb, l,
            arith::MaxNumFOp::create(nb, l, args[0], args[1]).getResult());
      })[0];
  AffineMap id1 = map(1, {i});
  Value newMax = buildGeneric(
      b, loc, {state.max, blockMax},
      {tensor::EmptyOp::create(b, loc, ArrayRef<OpFoldResult>{rows}, acc)},
      {id1, id1, id1}, {kPar}, [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(
            nb, l,
            arith::MaxNumFOp::create(nb, l, args[0], args[1]).getResult());
      })[0];
  Value emptyTile =
      tensor::EmptyOp::create(b, loc, ArrayRef<OpFoldResult>{rows, keys}, acc);
  Value probs = buildGeneric(
      b, loc, {scores, newMax}, {emptyTile}, {tile2, rows2, tile2},
      {kPar, kPar}, [&](OpBuilder &nb, Location l, ValueRange args) {
        Value shifted =
            arith::SubFOp::create(nb, l, args[0], buildSafeMax(nb, l, args[1]));
        linalg::YieldOp::create(
            nb, l, math::ExpOp::create(nb, l, shifted).getResult());
      })[0];
  Value emptyAlpha =
      tensor::EmptyOp::create(b, loc, ArrayRef<OpFoldResult>{rows}, acc);
  Value emptySum =
      tensor::EmptyOp::create(b, loc, ArrayRef<OpFoldResult>{rows}, acc);
  SmallVector<Value> rescaled = buildGeneric(
      b, loc, {state.max, newMax, state.sum}, {emptyAlpha, emptySum},
      {id1, id1, id1, id1, id1}, {kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        Value alpha = math::ExpOp::create(
            nb, l,
            arith::SubFOp::create(nb, l, args[0],
                                  buildSafeMax(nb, l, args[1])));
        linalg::YieldOp::create(
            nb, l,
            ValueRange{alpha, arith::MulFOp::create(nb, l, args[2], alpha)});
      });
  Value alpha = rescaled[0];
  Value newSum = buildGeneric(
      b, loc, {probs}, {rescaled[1]}, {tile2, rows2}, {kPar, kRed},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(
            nb, l, arith::AddFOp::create(nb, l, args[0], args[1]).getResult());
      })[0];

  // acc = acc * alpha + P v: the rescale, then P v row by row with the row's
  // Dv accumulators in one vector, an axpy per key on the key's V row
  // (buildRowContraction; as a linalg.generic LLVM left it scalar at
  // Dv = 32).
  Value scaledAcc = buildGeneric(
      b, loc, {alpha}, {state.acc}, {map(2, {i}), map(2, {i, j})}, {kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(
            nb, l, arith::MulFOp::create(nb, l, args[1], args[0]).getResult());
      })[0];
  Value newAcc = buildRowContraction(
      b, loc, probs, vTile, scaledAcc,
      {map(3, {i, j}), map(3, {j, d}), map(3, {i, d})}, {kPar, kRed, kPar});
  return HeadState{newMax, newSum, newAcc};
}

Value FlashTiler::epilogue(HeadState h0, HeadState h1, Value batch, Value row0,
                           Value pair, Value rows) {
  AffineExpr i, e;
  bindDims(ctx, i, e);
  AffineMap tile = map(2, {i, e}), row = map(2, {i});
  OpFoldResult valueDim = b.getIndexAttr(config.valueDim);
  Value emptyOut = tensor::EmptyOp::create(
      b, loc, ArrayRef<OpFoldResult>{rows, valueDim}, config.elementType);

  if (config.kind == AttentionConfig::Kind::V2) {
    // out = acc0/l0 - sigmoid(lam) * acc1/l1
    SmallVector<OpFoldResult> offsets = {batch, row0, pair};
    SmallVector<OpFoldResult> lamSizes = {b.getIndexAttr(1), rows,
                                          b.getIndexAttr(1)};
    Value lam = op->getOperand(3);
    auto lamType = RankedTensorType::get(
        {ShapedType::kDynamic},
        cast<RankedTensorType>(lam.getType()).getElementType());
    Value lamTile = tensor::ExtractSliceOp::create(
        b, loc, lamType, lam, offsets, lamSizes,
        SmallVector<OpFoldResult>(3, b.getIndexAttr(1)));
    return buildGeneric(
        b, loc, {h0.acc, h1.acc, h0.sum, h1.sum, lamTile}, {emptyOut},
        {tile, tile, row, row, row, tile}, {kPar, kPar},
        [&](OpBuilder &nb, Location l, ValueRange args) {
          Value sig = buildSigmoid(nb, l, buildFloatCast(nb, l, args[4], acc));
          Value diff = buildPairDifference(nb, l, args[0], args[1], args[2],
                                           args[3], sig);
          linalg::YieldOp::create(
              nb, l, buildFloatCast(nb, l, diff, config.elementType));
        })[0];
  }

  // V1: x = acc1/l1 - lam * acc2/l2, RMSNorm over the 2D values, weight and
  // (1 - lambda_init).
  Value lamScalar =
      tensor::ExtractOp::create(b, loc, op->getOperand(3), ValueRange{});
  Value emptyAcc = tensor::EmptyOp::create(
      b, loc, ArrayRef<OpFoldResult>{rows, valueDim}, acc);
  Value lamAcc = buildFloatCast(b, loc, lamScalar, acc);
  Value diff = buildGeneric(
      b, loc, {h0.acc, h1.acc, h0.sum, h1.sum}, {emptyAcc},
      {tile, tile, row, row, tile}, {kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(nb, l,
                                buildPairDifference(nb, l, args[0], args[1],
                                                    args[2], args[3], lamAcc));
      })[0];
  Value zeroRows = buildFilledTensor(b, loc, {rows}, acc, 0.0);
  Value sumSquares =
      buildGeneric(b, loc, {diff}, {zeroRows}, {tile, row}, {kPar, kRed},
                   [&](OpBuilder &nb, Location l, ValueRange args) {
                     linalg::YieldOp::create(
                         nb, l, buildMulAcc(nb, l, args[0], args[0], args[1]));
                   })[0];
  return buildGeneric(
      b, loc, {diff, sumSquares, op->getOperand(4)}, {emptyOut},
      {tile, row, map(2, {e}), tile}, {kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        Value y =
            buildRMSNormScale(nb, l, args[0], args[1], args[2], config.valueDim,
                              config.eps, config.lambdaInit);
        linalg::YieldOp::create(nb, l,
                                buildFloatCast(nb, l, y, config.elementType));
      })[0];
}

Value FlashTiler::insertLse(Value lse, HeadState h, Value batch, Value head,
                            Value row0, Value rows) {
  AffineMap id = map(1, {getAffineDimExpr(0, ctx)});
  Value tile = buildGeneric(
      b, loc, {h.max, h.sum},
      {tensor::EmptyOp::create(b, loc, ArrayRef<OpFoldResult>{rows}, acc)},
      {id, id, id}, {kPar}, [&](OpBuilder &nb, Location l, ValueRange args) {
        linalg::YieldOp::create(nb, l, buildLogSumExp(nb, l, args[0], args[1]));
      })[0];
  SmallVector<OpFoldResult> offsets = {batch, head, row0};
  SmallVector<OpFoldResult> sizes = {b.getIndexAttr(1), b.getIndexAttr(1),
                                     rows};
  return tensor::InsertSliceOp::create(
      b, loc, tile, lse, offsets, sizes,
      SmallVector<OpFoldResult>(3, b.getIndexAttr(1)));
}

Value FlashTiler::normalizedOutput(HeadState h, Value rows) {
  AffineExpr i, e;
  bindDims(ctx, i, e);
  Value empty = tensor::EmptyOp::create(
      b, loc, ArrayRef<OpFoldResult>{rows, b.getIndexAttr(config.valueDim)},
      config.elementType);
  return buildGeneric(
      b, loc, {h.acc, h.sum}, {empty},
      {map(2, {i, e}), map(2, {i}), map(2, {i, e})}, {kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        Value o = buildNormalize(nb, l, args[0], args[1]);
        linalg::YieldOp::create(nb, l,
                                buildFloatCast(nb, l, o, config.elementType));
      })[0];
}

SmallVector<Value> FlashTiler::build() {
  Value q = op->getOperand(0), k = op->getOperand(1), v = op->getOperand(2);
  Value kvLen = config.hasKvLen ? op->getOperand(4) : Value();
  auto resultType = cast<RankedTensorType>(op->getResult(0).getType());

  Value batchSize = tensor::DimOp::create(b, loc, q, 0);
  Value seqQ = tensor::DimOp::create(b, loc, q, 1);
  Value seqK = tensor::DimOp::create(b, loc, k, 1);
  SmallVector<Value> dynSizes;
  if (resultType.isDynamicDim(0))
    dynSizes.push_back(batchSize);
  if (resultType.isDynamicDim(1))
    dynSizes.push_back(seqQ);
  Value init = getResultDestination(op);
  if (!init)
    init = tensor::EmptyOp::create(b, loc, resultType, dynSizes);
  // diffattn.v2's log-sum-exp [B, 2H, Sq] and out_odd [B, Sq, H, Dv],
  // carried beside the output.
  bool withLse = op->getNumResults() >= 2;
  bool withOutOdd = op->getNumResults() == 3;
  SmallVector<Value> inits = {init};
  if (withLse) {
    auto lseType = cast<RankedTensorType>(op->getResult(1).getType());
    Value lseInit = getResultDestination(op, 1);
    if (!lseInit) {
      SmallVector<Value> lseSizes;
      if (lseType.isDynamicDim(0))
        lseSizes.push_back(batchSize);
      if (lseType.isDynamicDim(2))
        lseSizes.push_back(seqQ);
      lseInit = tensor::EmptyOp::create(b, loc, lseType, lseSizes);
    }
    inits.push_back(lseInit);
  }
  if (withOutOdd) {
    Value oddInit = getResultDestination(op, 2);
    if (!oddInit)
      oddInit = tensor::EmptyOp::create(b, loc, resultType, dynSizes);
    inits.push_back(oddInit);
  }

  Value c0 = cst(0), c1 = cst(1), c2 = cst(2);
  Value blockQ = cst(sizes.blockQ), blockK = cst(sizes.blockK);
  bool sharedKeys = config.kind == AttentionConfig::Kind::V2;

  auto batchLoop = scf::ForOp::create(
      b, loc, c0, batchSize, c1, inits,
      [&](OpBuilder &, Location, Value batch, ValueRange batchArgs) {
        Value kvLenElem =
            kvLen ? tensor::ExtractOp::create(b, loc, kvLen, batch).getResult()
                  : Value();
        Value keyLen = buildKeyLength(b, loc, kvLenElem, seqK);
        Value offset = sub(keyLen, seqQ);
        auto pairLoop = scf::ForOp::create(
            b, loc, c0, cst(config.numPairs), c1, batchArgs,
            [&](OpBuilder &, Location, Value pair, ValueRange pairArgs) {
              Value head0 = arith::MulIOp::create(b, loc, pair, c2);
              Value head1 = add(head0, c1);
              Value keyHead0 = applyHead(&AttentionConfig::keyHead, head0);
              Value keyHead1 =
                  sharedKeys ? keyHead0
                             : applyHead(&AttentionConfig::keyHead, head1);
              // V2 reads K and V of one head; V1 one V head per pair.
              Value valueHead =
                  sharedKeys ? keyHead0
                             : applyHead(&AttentionConfig::valueHead, head0);
              auto rowLoop = scf::ForOp::create(
                  b, loc, c0, seqQ, blockQ, pairArgs,
                  [&](OpBuilder &, Location, Value row0, ValueRange rowArgs) {
                    Value rows = min(blockQ, sub(seqQ, row0));
                    Value lastRow = sub(add(row0, rows), c1);
                    Value q0 = extractRows(q, batch, row0, head0, rows,
                                           config.headDim);
                    Value q1 = extractRows(q, batch, row0, head1, rows,
                                           config.headDim);

                    // Keys any row of the block may see: [lo, hi), lo on
                    // a block boundary (shared with the GPU strategies).
                    Value lo, hi;
                    std::tie(lo, hi) = buildVisibleKeyBounds(
                        b, loc, config, row0, lastRow, offset, keyLen);
                    lo = alignDownToBlock(b, loc, lo, sizes.blockK);

                    HeadState s0 = initialState(rows), s1 = initialState(rows);
                    auto keyLoop = scf::ForOp::create(
                        b, loc, lo, hi, blockK,
                        ValueRange{s0.max, s0.sum, s0.acc, s1.max, s1.sum,
                                   s1.acc},
                        [&](OpBuilder &, Location, Value key0, ValueRange st) {
                          Value keys = min(blockK, sub(hi, key0));
                          Value kTile0 = extractRows(k, batch, key0, keyHead0,
                                                     keys, config.headDim);
                          Value kTile1 =
                              sharedKeys ? kTile0
                                         : extractRows(k, batch, key0, keyHead1,
                                                       keys, config.headDim);
                          Value vTile = extractRows(v, batch, key0, valueHead,
                                                    keys, config.valueDim);
                          // Mask only blocks that straddle the mask of
                          // some row of the block (or the key length).
                          Value needsMask;
                          if (!config.isUnmasked())
                            needsMask = buildBlockNeedsMask(
                                b, loc, config, key0, sizes.blockK, row0,
                                lastRow, offset, keyLen);
                          HeadState n0 =
                              step(q0, kTile0, vTile, {st[0], st[1], st[2]},
                                   needsMask, row0, key0, offset, keyLen, rows,
                                   keys);
                          HeadState n1 =
                              step(q1, kTile1, vTile, {st[3], st[4], st[5]},
                                   needsMask, row0, key0, offset, keyLen, rows,
                                   keys);
                          scf::YieldOp::create(b, loc,
                                               ValueRange{n0.max, n0.sum,
                                                          n0.acc, n1.max,
                                                          n1.sum, n1.acc});
                        });
                    ValueRange r = keyLoop.getResults();
                    Value tile =
                        epilogue({r[0], r[1], r[2]}, {r[3], r[4], r[5]}, batch,
                                 row0, pair, rows);
                    SmallVector<OpFoldResult> offsets = {batch, row0, pair,
                                                         b.getIndexAttr(0)};
                    SmallVector<OpFoldResult> tileSizes = {
                        b.getIndexAttr(1), rows, b.getIndexAttr(1),
                        b.getIndexAttr(config.valueDim)};
                    SmallVector<Value> updated = {tensor::InsertSliceOp::create(
                        b, loc, tile, rowArgs[0], offsets, tileSizes,
                        SmallVector<OpFoldResult>(4, b.getIndexAttr(1)))};
                    if (withLse) {
                      Value lse = insertLse(rowArgs[1], {r[0], r[1], r[2]},
                                            batch, head0, row0, rows);
                      updated.push_back(insertLse(lse, {r[3], r[4], r[5]},
                                                  batch, head1, row0, rows));
                    }
                    if (withOutOdd)
                      updated.push_back(tensor::InsertSliceOp::create(
                          b, loc, normalizedOutput({r[3], r[4], r[5]}, rows),
                          rowArgs[2], offsets, tileSizes,
                          SmallVector<OpFoldResult>(4, b.getIndexAttr(1))));
                    scf::YieldOp::create(b, loc, updated);
                  });
              scf::YieldOp::create(b, loc, rowLoop.getResults());
            });
        scf::YieldOp::create(b, loc, pairLoop.getResults());
      });
  return SmallVector<Value>(batchLoop.getResults());
}

LogicalResult mlir::diffattn::tileDiffAttnOp(RewriterBase &rewriter,
                                             Operation *op,
                                             FlashTileSizes sizes) {
  if (sizes.blockQ <= 0 || sizes.blockK <= 0)
    return op->emitOpError()
           << "block sizes must be positive, got block-q = " << sizes.blockQ
           << ", block-k = " << sizes.blockK;
  if (auto backward = dyn_cast<V2BackwardOp>(op))
    return lowerV2Backward(rewriter, backward, sizes);
  FailureOr<Operation *> dense = materializeServingLayouts(rewriter, op);
  if (failed(dense))
    return failure();
  op = *dense;
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  SmallVector<Value> results = FlashTiler(rewriter, op, sizes).build();
  replaceWithResults(rewriter, op, results);
  return success();
}

namespace {
struct DiffAttnTileFlashPass
    : public diffattn::impl::DiffAttnTileFlashBase<DiffAttnTileFlashPass> {
  using Base::Base;

  void runOnOperation() override {
    FailureOr<FlashTileSizes> defaults = getDefaultFlashTileSizes(target);
    if (failed(defaults)) {
      getOperation()->emitError()
          << "diffattn-tile-flash: unknown target '" << target
          << "' (expected cpu, sm_80, sm_90, sm_90a or sm_100a)";
      return signalPassFailure();
    }
    FlashTileSizes sizes = *defaults;
    if (blockQ != 0)
      sizes.blockQ = blockQ;
    if (blockK != 0)
      sizes.blockK = blockK;

    IRRewriter rewriter(&getContext());
    for (Operation *op : collectDiffAttnOps(getOperation()))
      if (failed(tileDiffAttnOp(rewriter, op, sizes)))
        return signalPassFailure();
  }
};
} // namespace
