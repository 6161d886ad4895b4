//===- MmaSyncBackwardDq.cpp - the backward's dq through f32 atomics ------===//
//
// The atomic formulation of the portable backward (the strategy option
// deterministic = false; see MmaSyncBackward.cpp): FlashAttention-2's
// (Dao 2023, Algorithm 2, lines 15-16), where the kernel that walks a key
// block's query blocks also adds dq_j += dS_j K_block to an f32 accumulator
// in global memory, so that dq needs no kernel of its own recomputing S and
// G. Its parts: the statistics kernel zeroes the accumulator rows of its
// row block; the dk/dv kernel stages both heads' dS^T in shared memory
// (the accumulators hold it with keys as rows; dq needs queries as rows:
// ldmatrix.trans reads it back as the A operand) and adds each warp's
// product with f32 atomics (red.global.add); the conversion kernel scales
// the sums and rounds them to the element type. Fragment layouts: PTX ISA
// "Matrix Fragments for mma.m16n8k16" and "ldmatrix".
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"

#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

Value BackwardBuilder::dqAccumulatorOffset(Value seqQ) {
  Value batches = gpu::GridDimOp::create(b, loc, gpu::Dimension::z);
  return mul(mul(mul(batches, seqQ), plan.pairs), kStatWidth);
}

Value BackwardBuilder::dqRowIndex(Value batchRow, Value pair) {
  return mul(add(mul(batchRow, plan.queryHeads), mul(pair, 2)), plan.headDim);
}

void BackwardBuilder::zeroDqAccumulator(Value workspace, Value accBase,
                                        Value qRowBase, Value row0, Value rows,
                                        function_ref<Value(Value)> pairOf,
                                        function_ref<Value(Value)> queryRowOf,
                                        Value tid) {
  // Each row's two heads are 2 D contiguous f32: 2 D / 4 16-byte chunks
  // (aligned: the workspace's base is, and the records before the
  // accumulator are a multiple of 8 f32).
  int64_t chunks = 2 * plan.headDim / 4;
  auto zeros = arith::ConstantOp::create(
      b, loc,
      DenseElementsAttr::get(VectorType::get({4}, b.getF32Type()), 0.0f));
  scf::ForOp::create(
      b, loc, tid, mul(rows, chunks), idx(plan.threads()), ValueRange{},
      [&](OpBuilder &, Location, Value i, ValueRange) {
        Value r = add(row0, div(i, chunks));
        Value index = add(
            add(accBase, dqRowIndex(add(qRowBase, queryRowOf(r)), pairOf(r))),
            mul(rem(i, chunks), 4));
        vector::StoreOp::create(b, loc, zeros, workspace, ValueRange{index},
                                /*nontemporal=*/false, llvm::Align(16));
        scf::YieldOp::create(b, loc);
      });
}

void BackwardBuilder::accumulateDq(Value workspace, Value sDS, Value accBase,
                                   Value batchRow0, Value rows, Value pair) {
  int64_t d = plan.headDim;
  int64_t keys = 16 * plan.warps;
  int64_t colSplits = plan.warps / 4, cols = d / colSplits;
  // Warp w: head w / (2 colSplits), rows 16 ((w / colSplits) % 2) of the
  // block, columns cols (w % colSplits).
  Value head = div(warp, 2 * colSplits);
  Value m0 = mul(rem(div(warp, colSplits), 2), 16);
  Value n0 = mul(rem(warp, colSplits), cols);
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  // A = dS (queries x keys) from dS^T (keys x queries, row-major):
  // ldmatrix.trans of matrix g8 at keys 8 (g8 / 2), queries 8 (g8 % 2).
  Value aRow = add(l8, mul(div(lane, 16), 8));
  Value aCol = add(m0, mul(rem(g8, 2), 8));
  // B = K (keys x D, row-major): ldmatrix.trans, as productsPB's.
  Value bRow = add(l8, mul(rem(g8, 2), 8));
  Value bCol = add(n0, mul(div(lane, 16), 8));
  SmallVector<Acc> acc(cols / 8, zeroAcc());
  for (int64_t kk = 0; kk < keys / 16; ++kk) {
    SmallVector<Value> a = ldmatrix(
        sDS, tileIndex(ValueRange(head), add(aRow, kk * 16), aCol), true);
    for (int64_t dp = 0; dp < cols / 16; ++dp) {
      SmallVector<Value> br =
          ldmatrix(sK, tileIndex({}, add(bRow, kk * 16), bCol, dp * 16), true);
      acc[2 * dp] = mma(a, {br[0], br[1]}, acc[2 * dp]);
      acc[2 * dp + 1] = mma(a, {br[2], br[3]}, acc[2 * dp + 1]);
    }
  }
  // The thread's values: rows m0 + lane / 4 (+ 8), columns n0 + 8 t + 2
  // (lane % 4) (+ 1).
  Value colLane = add(n0, mul(rem(lane, 4), 2));
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value row = add(m0, add(div(lane, 4), rr * 8));
    ifThen(cmp(arith::CmpIPredicate::slt, row, rows), [&] {
      Value base = add(add(accBase, dqRowIndex(add(batchRow0, row), pair)),
                       add(mul(head, d), colLane));
      for (int64_t t = 0; t < cols / 8; ++t)
        for (int64_t c = 0; c < 2; ++c)
          memref::AtomicRMWOp::create(b, loc, arith::AtomicRMWKind::addf,
                                      acc[t][2 * rr + c], workspace,
                                      ValueRange{add(base, t * 8 + c)});
    });
  }
}

void BackwardBuilder::buildDqConvertKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  BackwardArgs args = readArgs(entry);
  Value seqQ = args.seqQ;
  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value qBlock = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  Value groupRows = mul(seqQ, plan.pairsPerGroup());
  Value row0 = mul(qBlock, plan.blockQ);
  Value rows = minI(idx(plan.blockQ), sub(groupRows, row0));
  Value firstPair = mul(kvHead, plan.pairsPerGroup());
  Value accBase = dqAccumulatorOffset(seqQ);
  int64_t chunks = 2 * plan.headDim / 4;
  auto f32x4 = VectorType::get({4}, b.getF32Type());
  auto scale = arith::ConstantOp::create(
      b, loc, DenseElementsAttr::get(f32x4, plan.attn.scale));
  scf::ForOp::create(
      b, loc, tid, mul(rows, chunks), idx(plan.threads()), ValueRange{},
      [&](OpBuilder &, Location, Value i, ValueRange) {
        Value r = add(row0, div(i, chunks));
        Value pair = add(firstPair, arith::DivUIOp::create(b, loc, r, seqQ));
        Value query = arith::RemUIOp::create(b, loc, r, seqQ);
        Value index = add(dqRowIndex(add(mul(batch, seqQ), query), pair),
                          mul(rem(i, chunks), 4));
        Value sum = vector::LoadOp::create(
            b, loc, f32x4, args.workspace, ValueRange{add(accBase, index)},
            /*nontemporal=*/false, llvm::Align(16));
        Value dq = arith::TruncFOp::create(
            b, loc, VectorType::get({4}, plan.elementType),
            arith::MulFOp::create(b, loc, sum, scale));
        vector::StoreOp::create(b, loc, dq, args.dq, ValueRange{index},
                                /*nontemporal=*/false, llvm::Align(8));
        scf::YieldOp::create(b, loc);
      });
  gpu::ReturnOp::create(b, loc);
}
