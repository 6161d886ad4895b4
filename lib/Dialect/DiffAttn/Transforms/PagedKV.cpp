//===- PagedKV.cpp - a paged KV cache as a gathered contiguous cache ------===//
//
// The tensor-level lowerings (the decomposition and the FlashAttention
// tiling) handle diffattn.v2_paged by gathering each sequence's logical
// cache out of the block pool and running diffattn.v2 on it. Keys at
// t >= kv_len[b] are never read from the pool (block table entries past a
// sequence's last block may hold any value) and come out as 0, which the
// op ignores anyway. The GPU strategies read the pool in place instead.
//
//===----------------------------------------------------------------------===//

#include "LinalgBuilders.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Verifier.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

/// The logical cache [B, MB * BS, Hkv, X] of `pool` [NB, BS, Hkv, X]:
/// element (b, t, h, x) is pool[block_table[b, t / BS], t % BS, h, x] when
/// t < kv_len[b] and the entry lies in [0, NB), else 0.
static Value gatherCache(OpBuilder &b, Location loc, Value pool,
                         Value blockTable, Value kvLen, int64_t blockSize) {
  auto poolType = cast<RankedTensorType>(pool.getType());
  OpFoldResult batch = tensor::getMixedSize(b, loc, blockTable, 0);
  OpFoldResult maxBlocks = tensor::getMixedSize(b, loc, blockTable, 1);
  AffineExpr mb;
  bindSymbols(b.getContext(), mb);
  OpFoldResult seqK = affine::makeComposedFoldedAffineApply(
      b, loc, mb * blockSize, {maxBlocks});
  Value seqKValue = getValueOrCreateConstantIndexOp(b, loc, seqK);
  Value numBlocks = tensor::DimOp::create(b, loc, pool, 0);
  Value empty = tensor::EmptyOp::create(
      b, loc,
      ArrayRef<OpFoldResult>{batch, seqK,
                             b.getIndexAttr(poolType.getDimSize(2)),
                             b.getIndexAttr(poolType.getDimSize(3))},
      poolType.getElementType());
  MLIRContext *ctx = b.getContext();
  AffineExpr d0, d1, d2, d3;
  bindDims(ctx, d0, d1, d2, d3);
  auto id = AffineMap::get(4, 0, {d0, d1, d2, d3}, ctx);
  auto perBatch = AffineMap::get(4, 0, {d0}, ctx);
  return buildGeneric(
      b, loc, {kvLen}, {empty}, {perBatch, id}, {kPar, kPar, kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        using arith::CmpIPredicate;
        Value batchIdx = linalg::IndexOp::create(nb, l, 0);
        Value key = linalg::IndexOp::create(nb, l, 1);
        Value head = linalg::IndexOp::create(nb, l, 2);
        Value col = linalg::IndexOp::create(nb, l, 3);
        Value bs = arith::ConstantIndexOp::create(nb, l, blockSize);
        Value slot = arith::DivUIOp::create(nb, l, key, bs);
        Value row = arith::RemUIOp::create(nb, l, key, bs);
        Value keyLen = buildKeyLength(nb, l, args[0], seqKValue);
        Value stored =
            arith::CmpIOp::create(nb, l, CmpIPredicate::ult, key, keyLen);
        Type elem = poolType.getElementType();
        Value zero = arith::ConstantOp::create(nb, l, nb.getZeroAttr(elem));
        // The block table is read only for stored keys; a block outside the
        // pool reads nothing (the Python API raises before a call).
        Value value = buildIfElse(
            nb, l, stored,
            [&](OpBuilder &tb, Location tl) {
              Value entry = arith::IndexCastOp::create(
                  tb, tl, tb.getIndexType(),
                  tensor::ExtractOp::create(tb, tl, blockTable,
                                            ValueRange{batchIdx, slot}));
              Value inPool = arith::AndIOp::create(
                  tb, tl,
                  arith::CmpIOp::create(
                      tb, tl, CmpIPredicate::sge, entry,
                      arith::ConstantIndexOp::create(tb, tl, 0)),
                  arith::CmpIOp::create(tb, tl, CmpIPredicate::slt, entry,
                                        numBlocks));
              return buildIfElse(
                  tb, tl, inPool,
                  [&](OpBuilder &ib, Location il) -> Value {
                    return tensor::ExtractOp::create(
                        ib, il, pool, ValueRange{entry, row, head, col});
                  },
                  zero);
            },
            zero);
        linalg::YieldOp::create(nb, l, value);
      })[0];
}

FailureOr<Operation *>
mlir::diffattn::materializePagedKVCache(RewriterBase &rewriter, Operation *op) {
  auto paged = dyn_cast<V2PagedOp>(op);
  if (!paged)
    return op;
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  Location loc = op->getLoc();
  int64_t blockSize = paged.getBlockSize();
  Value k = gatherCache(rewriter, loc, paged.getKCache(), paged.getBlockTable(),
                        paged.getKvLen(), blockSize);
  Value v = gatherCache(rewriter, loc, paged.getVCache(), paged.getBlockTable(),
                        paged.getKvLen(), blockSize);
  FailureOr<Operation *> v2 = createV2Like(
      rewriter, op, {paged.getQ(), k, v, paged.getLam(), paged.getKvLen()},
      op->getResult(0).getType());
  if (failed(v2))
    return failure();
  rewriter.replaceOp(op, (*v2)->getResults());
  return *v2;
}

FailureOr<Operation *> mlir::diffattn::createV2Like(RewriterBase &rewriter,
                                                    Operation *op,
                                                    ValueRange operands,
                                                    Type resultType) {
  OperationState state(op->getLoc(), V2Op::getOperationName());
  state.addOperands(operands);
  state.addAttributes(op->getAttrs());
  state.addTypes(resultType);
  Operation *v2 = rewriter.create(state);
  if (failed(mlir::verify(v2)))
    return failure();
  return v2;
}
