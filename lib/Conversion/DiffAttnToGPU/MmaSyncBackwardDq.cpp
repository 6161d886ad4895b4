//===- MmaSyncBackwardDq.cpp - the backward's dq through bulk reductions --===//
//
// The accumulating formulation of the portable backward (the strategy
// option deterministic = false, on chips with bulk copies; see
// MmaSyncBackward.cpp): FlashAttention-2's (Dao 2023, Algorithm 2, lines
// 15-16), where the kernel that walks a key block's query blocks also adds
// dq_j += dS_j K_block to an f32 accumulator in global memory, so that dq
// needs no kernel of its own recomputing S and G; the additions are
// FlashAttention-3's (Shah et al. 2024): a CTA stages its partial dq_j in
// shared memory and one thread adds it to global memory with one bulk
// reduction (cp.reduce.async.bulk .add.f32), instead of one f32 atomic per
// element (measured 1.6x slower than no reduction at all: Hopper backward
// run 8b in docs/performance.md).
//
// The parts: the statistics kernel zeroes the accumulator rows of its row
// block (with out_odd, buildDqZeroKernel zeroes the accumulator before the
// statistics kernel, which then only reads); the dk/dv kernel
// (MmaSyncBackwardWide.cpp) multiplies each query block's dS by its K rows,
// stages the f32 product in shared memory and adds it with bulk reductions
// (addStagedDq); the conversion kernel scales the sums and rounds them to the
// element type.
//
// The accumulator, after the workspace's records: [B, H, Sq, 2 D] f32, a
// (pair, query row)'s two heads' D columns each, so that a query block's
// rows are one contiguous range of the bulk reduction; within a row, the
// 8-column (32-byte) chunk c is stored at chunk c ^ (i % 8) (i: the query
// row), which spreads the staging stores of a warp's 8 rows over the banks
// (rows are 2 D x 4 bytes apart, a multiple of 128).
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

Value mma_sync::dqAccumulatorOffset(GPUKernelBuilder &kb, Value seqQ,
                                    int64_t pairs) {
  Value batches = gpu::GridDimOp::create(kb.b, kb.loc, gpu::Dimension::z);
  return kb.mul(kb.mul(kb.mul(batches, seqQ), pairs), kStatWidth);
}

Value mma_sync::dqRowIndex(GPUKernelBuilder &kb, Value batch, Value pair,
                           Value query, Value seqQ, int64_t pairs,
                           int64_t headDim) {
  return kb.mul(kb.add(kb.mul(kb.add(kb.mul(batch, pairs), pair), seqQ), query),
                2 * headDim);
}

Value mma_sync::dqSwizzledColumn(GPUKernelBuilder &kb, Value column,
                                 Value query) {
  // Chunk column / 8 goes to chunk (column / 8) ^ (query % 8).
  Value chunk =
      arith::XOrIOp::create(kb.b, kb.loc, kb.div(column, 8), kb.rem(query, 8));
  return kb.add(kb.mul(chunk, 8), kb.rem(column, 8));
}

Value mma_sync::dqChunkOffset(GPUKernelBuilder &kb, Value accBase, Value batch,
                              Value pair, Value qBlock, Value seqQ,
                              int64_t pairs, int64_t chunkRows,
                              int64_t chunkFloats) {
  Value blocks = kb.div(kb.add(seqQ, chunkRows - 1), chunkRows);
  Value chunk =
      kb.add(kb.mul(kb.add(kb.mul(batch, pairs), pair), blocks), qBlock);
  return kb.add(accBase, kb.mul(chunk, chunkFloats));
}

/// zeroDqAccumulator's chunked form: zeroes the chunks (of `chunkFloats`
/// f32) that start in the tile's group rows (a chunk starts at a query row
/// that is a multiple of chunkRows), so every chunk once over the row
/// kernels' grid. Group rows run pair-major (query row + 1 until Sq, then
/// the next pair's row 0), so the tile's chunk starts are found by stepping
/// from one to the next (a few steps per tile) rather than by testing each
/// row, which took a division by Sq per row (64 per thread in the
/// statistics kernel).
static void zeroDqChunks(GPUKernelBuilder &kb, Value workspace, Value accBase,
                         Value batch, Value row0, Value rows,
                         function_ref<Value(Value)> pairOf,
                         function_ref<Value(Value)> queryRowOf, Value seqQ,
                         Value tid, int64_t threads, int64_t pairs,
                         int64_t chunkRows, int64_t chunkFloats) {
  // The CTA zeroes a chunk with 16-byte stores (the accumulator starts
  // 16-byte aligned, chunks are multiples of 4 f32).
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  auto zeros = arith::ConstantOp::create(
      b, loc,
      DenseElementsAttr::get(VectorType::get({4}, b.getF32Type()), 0.0f));
  // State: (tile row r, its query row, its pair), uniform over the CTA.
  Type index = b.getIndexType();
  SmallVector<Value> init = {kb.idx(0), queryRowOf(row0), pairOf(row0)};
  auto loop =
      scf::WhileOp::create(b, loc, TypeRange{index, index, index}, init);
  Block *before = b.createBlock(&loop.getBefore(), {}, {index, index, index},
                                {loc, loc, loc});
  b.setInsertionPointToStart(before);
  scf::ConditionOp::create(
      b, loc, kb.cmp(arith::CmpIPredicate::slt, before->getArgument(0), rows),
      before->getArguments());
  Block *after = b.createBlock(&loop.getAfter(), {}, {index, index, index},
                               {loc, loc, loc});
  b.setInsertionPointToStart(after);
  Value r = after->getArgument(0), query = after->getArgument(1),
        pair = after->getArgument(2);
  Value block = kb.div(query, chunkRows);
  // Only the tile's first row may fall inside a chunk.
  kb.ifThen(
      kb.cmp(arith::CmpIPredicate::eq, kb.rem(query, chunkRows), kb.idx(0)),
      [&] {
        Value chunk = dqChunkOffset(kb, accBase, batch, pair, block, seqQ,
                                    pairs, chunkRows, chunkFloats);
        scf::ForOp::create(
            b, loc, kb.mul(tid, 4), kb.idx(chunkFloats), kb.idx(4 * threads),
            ValueRange{}, [&](OpBuilder &, Location, Value i, ValueRange) {
              vector::StoreOp::create(b, loc, zeros, workspace,
                                      ValueRange{kb.add(chunk, i)},
                                      /*nontemporal=*/false, llvm::Align(16));
              scf::YieldOp::create(b, loc);
            });
      });
  // The next chunk start: the pair's next multiple of chunkRows, or the
  // next pair's row 0 past Sq.
  Value next = kb.mul(kb.add(block, kb.idx(1)), chunkRows);
  Value wraps = kb.cmp(arith::CmpIPredicate::uge, next, seqQ);
  Value step = kb.select(wraps, kb.sub(seqQ, query), kb.sub(next, query));
  scf::YieldOp::create(
      b, loc,
      ValueRange{kb.add(r, step), kb.select(wraps, kb.idx(0), next),
                 kb.add(pair, kb.select(wraps, kb.idx(1), kb.idx(0)))});
  b.setInsertionPointAfter(loop);
}

void mma_sync::zeroDqAccumulator(GPUKernelBuilder &kb, Value workspace,
                                 Value accBase, Value batch, Value row0,
                                 Value rows, function_ref<Value(Value)> pairOf,
                                 function_ref<Value(Value)> queryRowOf,
                                 Value seqQ, Value tid, int64_t threads,
                                 int64_t pairs, int64_t headDim,
                                 int64_t chunkRows) {
  if (chunkRows)
    return zeroDqChunks(kb, workspace, accBase, batch, row0, rows, pairOf,
                        queryRowOf, seqQ, tid, threads, pairs, chunkRows,
                        2 * headDim * chunkRows);
  // The accumulator's rows run (batch, pair, query row) and group rows
  // pair-major (queryRowOf(r) + 1 until Sq, then pairOf(r) + 1 at row 0), so
  // the tile's rows are one contiguous span of rows x 2 D f32 from row0's
  // row: 16-byte stores at a constant stride, without the division by Sq per
  // store of a per-row walk (the statistics kernel's time did not change
  // with it: 154 us at 64% of DRAM bandwidth, 4 x 4096 causal, H200
  // backward run 58; its writes bound it). Aligned: the workspace's base
  // is, and the records before the accumulator are a multiple of 8 f32.
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  auto zeros = arith::ConstantOp::create(
      b, loc,
      DenseElementsAttr::get(VectorType::get({4}, b.getF32Type()), 0.0f));
  Value first =
      kb.add(accBase, dqRowIndex(kb, batch, pairOf(row0), queryRowOf(row0),
                                 seqQ, pairs, headDim));
  Value floats = kb.mul(rows, 2 * headDim);
  scf::ForOp::create(
      b, loc, kb.mul(tid, 4), floats, kb.idx(4 * threads), ValueRange{},
      [&](OpBuilder &, Location, Value i, ValueRange) {
        vector::StoreOp::create(b, loc, zeros, workspace,
                                ValueRange{kb.add(first, i)},
                                /*nontemporal=*/false, llvm::Align(16));
        scf::YieldOp::create(b, loc);
      });
}

Value mma_sync::workspaceAddress(GPUKernelBuilder &kb, Value workspace,
                                 Value index) {
  Value address = kb.add(
      memref::ExtractAlignedPointerAsIndexOp::create(kb.b, kb.loc, workspace)
          .getResult(),
      kb.mul(index, 4));
  return arith::IndexCastOp::create(kb.b, kb.loc, kb.b.getI64Type(), address);
}

void mma_sync::addStagedDq(GPUKernelBuilder &kb, Value workspace, Value target,
                           Value source, Value bytes) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  Type i32 = b.getI32Type();
  SmallVector<Value> operands = {
      workspaceAddress(kb, workspace, target),
      arith::IndexCastOp::create(b, loc, i32, source),
      arith::IndexCastOp::create(b, loc, i32, bytes)};
  // No NVVM op expresses the non-tensor bulk reduction (PTX ISA
  // "cp.reduce.async.bulk"); the global address converted from generic.
  LLVM::InlineAsmOp::create(
      b, loc, TypeRange(), operands,
      "{\n.reg .u64 g;\ncvta.to.global.u64 g, $0;\n"
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [g], "
      "[$1], $2;\n}",
      "l,r,r", /*has_side_effects=*/true, /*is_align_stack=*/false,
      LLVM::tailcallkind::TailCallKind::None,
      LLVM::AsmDialectAttr::get(kb.ctx, LLVM::AsmDialect::AD_ATT),
      /*operand_attrs=*/ArrayAttr());
  NVVM::CpAsyncBulkCommitGroupOp::create(b, loc);
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
  Value accBase = dqAccumulatorOffset(*this, seqQ, plan.pairs);
  int64_t chunks = 2 * plan.headDim / 4;
  auto f32x4 = VectorType::get({4}, b.getF32Type());
  auto scale = arith::ConstantOp::create(
      b, loc, DenseElementsAttr::get(f32x4, plan.attn.scale));
  // 16 bytes (4 columns) per step: columns c .. c + 3 of the row's two
  // heads, from the swizzled accumulator into dq [B, Sq, 2H, D] (a pair's
  // two heads are adjacent there too).
  scf::ForOp::create(
      b, loc, tid, mul(rows, chunks), idx(plan.threads()), ValueRange{},
      [&](OpBuilder &, Location, Value i, ValueRange) {
        Value r = add(row0, div(i, chunks));
        Value pair = add(firstPair, arith::DivUIOp::create(b, loc, r, seqQ));
        Value query = arith::RemUIOp::create(b, loc, r, seqQ);
        Value column = mul(rem(i, chunks), 4);
        Value from =
            add(add(accBase, dqRowIndex(*this, batch, pair, query, seqQ,
                                        plan.pairs, plan.headDim)),
                dqSwizzledColumn(*this, column, query));
        Value sum = vector::LoadOp::create(
            b, loc, f32x4, args.workspace, ValueRange{from},
            /*nontemporal=*/false, llvm::Align(16));
        Value dq = arith::TruncFOp::create(
            b, loc, VectorType::get({4}, plan.elementType),
            arith::MulFOp::create(b, loc, sum, scale));
        Value to =
            add(mul(add(mul(add(mul(batch, seqQ), query), plan.queryHeads),
                        mul(pair, 2)),
                    plan.headDim),
                column);
        vector::StoreOp::create(b, loc, dq, args.dq, ValueRange{to},
                                /*nontemporal=*/false, llvm::Align(8));
        scf::YieldOp::create(b, loc);
      });
  gpu::ReturnOp::create(b, loc);
}

void BackwardBuilder::buildDqZeroKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  BackwardArgs args = readArgs(entry);
  Value seqQ = args.seqQ;
  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value span = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  // Both layouts put a KV group's accumulator in one contiguous run of
  // pairsPerGroup x rows x 2 D f32 from row 0 (or chunk 0) of the group's
  // first pair: dqRowIndex's rows (rows = Sq), or dqChunkOffset's chunks
  // (rows = Sq rounded up to dqChunkRows).
  int64_t rowFloats = 2 * plan.headDim;
  int64_t spanRows = dqZeroSpanRows(dqChunkRows);
  int64_t spanFloats = spanRows * rowFloats;
  Value accBase = dqAccumulatorOffset(*this, seqQ, plan.pairs);
  Value firstPair = mul(kvHead, plan.pairsPerGroup());
  Value rows = seqQ, groupStart;
  if (dqChunkRows) {
    rows = mul(div(add(seqQ, dqChunkRows - 1), dqChunkRows), dqChunkRows);
    groupStart = dqChunkOffset(*this, accBase, batch, firstPair, idx(0), seqQ,
                               plan.pairs, dqChunkRows, spanFloats);
  } else {
    groupStart = add(accBase, dqRowIndex(*this, batch, firstPair, idx(0), seqQ,
                                         plan.pairs, plan.headDim));
  }
  Value groupFloats = mul(mul(rows, plan.pairsPerGroup()), rowFloats);
  Value start = mul(span, spanFloats);
  Value base = add(groupStart, start);
  // The grid (kDqZeroThreads threads, dqZeroSpanRows rows per CTA) leaves
  // the last CTA a partial span.
  Value floats = minI(idx(spanFloats), sub(groupFloats, start));
  auto zeros = arith::ConstantOp::create(
      b, loc,
      DenseElementsAttr::get(VectorType::get({4}, b.getF32Type()), 0.0f));
  // A fixed number of 16-byte stores per thread, each guarded, so that all
  // of them issue back to back (spanFloats / (4 kDqZeroThreads) of them:
  // 16 at 64 rows and D = 128).
  Value first = mul(tid, 4);
  for (int64_t k = 0; k < spanFloats; k += 4 * kDqZeroThreads) {
    Value at = add(first, k);
    ifThen(cmp(arith::CmpIPredicate::slt, at, floats), [&] {
      vector::StoreOp::create(b, loc, zeros, args.workspace,
                              ValueRange{add(base, at)},
                              /*nontemporal=*/false, llvm::Align(16));
    });
  }
  gpu::ReturnOp::create(b, loc);
}
