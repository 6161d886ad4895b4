//===- WgmmaOverlap.cpp - wgmma strategy: a head's state, tile overlap ----===//
//
// What a Hopper (sm_90a) forward kernel's consumer warpgroup carries
// through its key loop (see WgmmaBuilder.h): its head's state, the ring
// stage of each key block, one block's softmax; and the end of a tile under
// the overlap-tiles option (cross-tile pipelining), where the next tile's
// first S = Q K_0ᵀ issues before this tile's last P V and its softmax runs
// while that product does, as WgmmaKernel.cpp's key loop runs S_j's beside
// P_{j-1} V_{j-1}.
//
//===----------------------------------------------------------------------===//

#include "WgmmaBuilder.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

HeadState WgmmaKernelBuilder::unpackState(ValueRange carried) {
  int64_t valueTiles = plan.valueDim / 8;
  HeadState state;
  state.acc.resize(valueTiles);
  for (int64_t t = 0; t < valueTiles; ++t)
    for (int64_t e = 0; e < 4; ++e)
      state.acc[t][e] = carried[t * 4 + e];
  state.rowMax = {carried[valueTiles * 4], carried[valueTiles * 4 + 1]};
  state.rowSum = {carried[valueTiles * 4 + 2], carried[valueTiles * 4 + 3]};
  return state;
}

SmallVector<Value> WgmmaKernelBuilder::packState(const HeadState &state) {
  SmallVector<Value> results;
  for (const Acc &t : state.acc)
    results.append(t.begin(), t.end());
  results.append(
      {state.rowMax[0], state.rowMax[1], state.rowSum[0], state.rowSum[1]});
  return results;
}

// Block j's stage (j % stages) and the parity of that stage's use (j /
// stages % 2), in 32-bit arithmetic (block counts fit): a 64-bit division
// by 3 costs about a dozen instructions per use in the loop. Blocks of
// earlier tiles of a persistent CTA came first in the ring (blockBase).
Value WgmmaKernelBuilder::stageOfBlock(Value j) {
  Value block =
      arith::IndexCastUIOp::create(b, loc, b.getI32Type(), add(blockBase, j));
  return arith::IndexCastUIOp::create(
      b, loc, b.getIndexType(),
      arith::RemUIOp::create(b, loc, block, i32(plan.stages)));
}

Value WgmmaKernelBuilder::parityOfBlock(Value j) {
  Value block =
      arith::IndexCastUIOp::create(b, loc, b.getI32Type(), add(blockBase, j));
  return arith::AndIOp::create(
      b, loc, arith::DivUIOp::create(b, loc, block, i32(plan.stages)), i32(1));
}

WgmmaKernelBuilder::BlockSoftmax
WgmmaKernelBuilder::blockSoftmax(Value scores, Value key0, HeadState &head) {
  SmallVector<Acc> s = readScores(scores);
  fenceTiles(s);
  SmallVector<Value> flat;
  for (const Acc &t : s)
    flat.append(t.begin(), t.end());
  SmallVector<Value> visible = maskBlock(flat, key0);
  for (int64_t nt = 0; nt < plan.blockK / 8; ++nt)
    for (int64_t e = 0; e < 4; ++e)
      s[nt][e] = visible[nt * 4 + e];
  Value moved;
  SmallVector<Value, 2> factors = softmax.blockDeferred(s, head, &moved);
  return {s, factors, moved};
}

SmallVector<Value>
WgmmaKernelBuilder::overlapLastPV(HeadState &head, ArrayRef<Value> lastP,
                                  ArrayRef<Value> vDesc, Value keysSeen,
                                  const OverlapHooks &hooks) {
  const SmallVector<Value> &init = initialState;
  // The current tile's state, restored once the next tile's block 0 is
  // issued and its softmax emitted.
  Tile current = tile;
  Value currentKeyLen = keyLen, currentOffset = offset;
  std::array<Value, 2> currentRows = threadRow;
  Value currentBase = blockBase, currentSlot = qSlot, currentIndex = tileIndex;
  Value nextBase = add(blockBase, tile.numBlocks);
  Value go = hooks.enterNext();
  blockBase = nextBase;
  go = arith::AndIOp::create(
      b, loc, go, cmp(arith::CmpIPredicate::sgt, tile.numBlocks, idx(0)));
  SmallVector<Type> types(init.size() - 4, b.getF32Type());
  for (Value v : ArrayRef<Value>(noCarry).drop_front())
    types.push_back(v.getType());
  auto flatten = [](ArrayRef<Acc> tiles) {
    SmallVector<Value> flat;
    for (const Acc &t : tiles)
      flat.append(t.begin(), t.end());
    return flat;
  };
  auto ifOp = scf::IfOp::create(b, loc, types, go, /*withElseRegion=*/true);
  {
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(ifOp.thenBlock());
    hooks.acquire(idx(0));
    SmallVector<Value> sDesc = scoreDescriptors(stageOfBlock(idx(0)));
    // S_0 of the next tile, then this tile's whole P V (groups complete in
    // order): trim-last-pv's half form would need a second copy of the
    // softmax (a product in flight cannot leave a branch), and it measured
    // level (Hopper runs 52-53).
    NVVM::WgmmaFenceAlignedOp::create(b, loc);
    Value scores = issueScores(sDesc);
    NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
    SmallVector<Acc> tiles(head.acc);
    issuePV(lastP, vDesc, tiles);
    NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
    NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
    hooks.releaseKeys(idx(0));
    HeadState first = unpackState(init);
    BlockSoftmax block = blockSoftmax(scores, tile.lo, first);
    // The wait for the P V inside a branch, as in the key loop, keeps
    // block 0's exp2 above it (ptxas schedules within a block). The two
    // sides would be identical, and LLVM would fold the branch away: each
    // starts with a different empty asm statement (a PTX comment).
    auto waitForPV = [&](StringRef side) {
      LLVM::InlineAsmOp::create(
          b, loc, TypeRange(), ValueRange(),
          ("// overlap-tiles: block 0's softmax done, " + side).str(), "",
          /*has_side_effects=*/true, /*is_align_stack=*/false,
          LLVM::tailcallkind::TailCallKind::None,
          LLVM::AsmDialectAttr::get(ctx, LLVM::AsmDialect::AD_ATT),
          /*operand_attrs=*/ArrayAttr());
      NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
      keepLive(lastP);
      SmallVector<Acc> acc(tiles);
      fenceTiles(acc);
      scf::YieldOp::create(b, loc, flatten(acc));
    };
    auto waited = scf::IfOp::create(
        b, loc, block.moved,
        [&](OpBuilder &, Location) { waitForPV("an offset moved"); },
        [&](OpBuilder &, Location) { waitForPV("no offset moved"); });
    fenceTiles(block.probabilities);
    SmallVector<Value> results(waited.getResults());
    results.append(
        {first.rowMax[0], first.rowMax[1], first.rowSum[0], first.rowSum[1]});
    results.append(packProbabilities(block.probabilities));
    scf::YieldOp::create(b, loc, results);
    b.setInsertionPointToStart(ifOp.elseBlock());
    SmallVector<Acc> alone(head.acc);
    issueLastPV(lastP, vDesc, keysSeen, alone, hooks.edgeTurn);
    results = flatten(alone);
    results.append(noCarry.begin() + 1, noCarry.end());
    scf::YieldOp::create(b, loc, results);
  }
  tile = current;
  keyLen = currentKeyLen;
  offset = currentOffset;
  threadRow = currentRows;
  blockBase = currentBase;
  qSlot = currentSlot;
  tileIndex = currentIndex;
  for (size_t t = 0; t < head.acc.size(); ++t)
    for (int64_t e = 0; e < 4; ++e)
      head.acc[t][e] = ifOp.getResult(t * 4 + e);
  SmallVector<Value> next{go};
  next.append(ifOp.getResults().begin() + head.acc.size() * 4,
              ifOp.getResults().end());
  return next;
}
