//===- WgmmaTile.cpp - wgmma strategy: the rows and keys of a tile --------===//
//
// Which rows, keys and sequence a Hopper (sm_90a) forward kernel's tile
// covers (see WgmmaBuilder.h): the tile's 64 group rows of its KV head and
// batch (the last row blocks first under a causal-like mask; with packed
// sequences, the sequence's range from cu_seqlens), its thread rows, and
// the key blocks any of its rows may see (KeyRange.h, shared with the
// tiled CPU lowering). WgmmaKernel.cpp calls it once per CTA, or per tile
// of a persistent CTA.
//
//===----------------------------------------------------------------------===//

#include "WgmmaBuilder.h"

#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

Value WgmmaKernelBuilder::rowBlocksOf(Value queries) {
  return div(add(mul(queries, plan.rowsPerQuery), plan.blockQ - 1),
             plan.blockQ);
}

void WgmmaKernelBuilder::setupTile(const SequenceArgs &sequences, Value qBlock,
                                   Value kvHead, Value batch) {
  const AttentionConfig &attn = plan.attn;
  int64_t blockQ = plan.blockQ, blockK = plan.blockK;
  Value &qRowBase = tile.qRowBase, &kRowBase = tile.kRowBase,
        &groupRows = tile.groupRows, &rowBlocks = tile.rowBlocks,
        &ctaActive = tile.ctaActive, &row0 = tile.row0,
        &rowsValid = tile.rowsValid, &firstPair = tile.firstPair,
        &minRow = tile.minRow, &maxRow = tile.maxRow, &lo = tile.lo,
        &hi = tile.hi, &numBlocks = tile.numBlocks, &seqQ = tile.seqQ,
        &seqK = tile.seqK;
  tile.kvHead = kvHead;
  tile.batch = batch;
  seqQ = sequences.seqQ;
  seqK = sequences.seqK;
  // The first query row and key of the sequence in the (packed) tensors;
  // with packed sequences, Sq and Sk become the sequence's own lengths.
  if (attn.varlen) {
    // Bad offsets give empty sequences here; the check kernel launched
    // before this one raises the device-side assertion (SequenceCheck.h:
    // a call to __assertfail in this kernel would serialise its wgmma).
    std::tie(qRowBase, seqQ) =
        sequenceRange(sequences.cuSeqQ, batch, sequences.totalQ, seqQ, tid,
                      Value(), /*report=*/false);
    std::tie(kRowBase, seqK) =
        sequenceRange(sequences.cuSeqK, batch, sequences.totalK, seqK, tid,
                      Value(), /*report=*/false);
  } else {
    qRowBase = mul(batch, seqQ);
    kRowBase = mul(batch, seqK);
  }
  // The tile's rows R0 .. R0 + rowsValid - 1 of the group's rows R = p *
  // Sq + i (pair p of the group, query row i).
  groupRows = mul(seqQ, plan.rowsPerQuery);
  rowBlocks = rowBlocksOf(seqQ);
  // Packed sequences: the tiles cover the longest sequence; tiles past
  // this one's rows compute nothing and write nothing.
  ctaActive = Value();
  if (attn.varlen) {
    ctaActive = cmp(arith::CmpIPredicate::ult, qBlock, rowBlocks);
    qBlock = select(ctaActive, qBlock, idx(0));
  }
  // With a causal-like mask, row blocks go from the last rows to the
  // first: the longest tiles start first.
  if (attn.windowRight >= 0 && attn.windowLeft < 0)
    qBlock = sub(sub(rowBlocks, idx(1)), qBlock);
  row0 = mul(qBlock, blockQ);
  rowsValid = minI(idx(blockQ), sub(groupRows, row0));
  if (ctaActive)
    rowsValid = select(ctaActive, rowsValid, idx(0));
  firstPair = mul(kvHead, plan.pairsPerGroup());
  keyLen = buildKeyLength(b, loc, Value(), seqK);
  offset = sub(keyLen, seqQ);
  for (int64_t rr = 0; rr < 2; ++rr)
    threadRow[rr] = queryRowOf(threadGroupRow(rr));
  Value lastGlobal = sub(add(row0, rowsValid), idx(1));
  Value onePair =
      cmp(arith::CmpIPredicate::eq, pairOf(row0), pairOf(lastGlobal));
  minRow = select(onePair, queryRowOf(row0), idx(0));
  maxRow = select(onePair, queryRowOf(lastGlobal), sub(seqQ, idx(1)));
  // Keys any row of the block may see: [lo, hi), lo on a block boundary.
  std::tie(lo, hi) =
      buildVisibleKeyBounds(b, loc, attn, minRow, maxRow, offset, keyLen);
  lo = alignDownToBlock(b, loc, lo, blockK);
  // An idle tile (packed sequences) runs no key block.
  if (ctaActive)
    hi = select(ctaActive, hi, lo);
  numBlocks = select(cmp(arith::CmpIPredicate::slt, lo, hi),
                     div(add(sub(hi, lo), blockK - 1), blockK), idx(0));
}
