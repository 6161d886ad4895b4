//===- WgmmaTile.cpp - wgmma strategy: the rows and keys of a tile --------===//
//
// Which rows, keys and sequence a Hopper (sm_90a) forward kernel's tile
// covers (see WgmmaBuilder.h): the tile's 64 group rows of its KV head and
// batch (the last row blocks first under a causal-like mask; with packed
// sequences, the sequence's range from cu_seqlens), its thread rows, the
// key blocks any of its rows may see (KeyRange.h, shared with the tiled
// CPU lowering) and the masking of a block that straddles the mask.
// WgmmaKernel.cpp calls it once per CTA, or per tile of a persistent CTA,
// whose tiles walkTiles enumerates (statically, or from the dynamic
// scheduler's tile counter).
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"
#include "WgmmaBuilder.h"

#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

Value WgmmaKernelBuilder::rowBlocksOf(Value queries) {
  // A cluster kernel's row blocks cover half of the group's rows.
  return div(
      add(mul(queries, plan.rowsPerQuery / plan.clusterSize), plan.blockQ - 1),
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
  // A cluster kernel's CTA takes its rank's half of them: rows from
  // rowStart to groupRows (the half's end).
  Value rowStart;
  std::tie(rowStart, groupRows) = ctaGroupRows(seqQ);
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
  if (attn.isCausalLike())
    qBlock = sub(sub(rowBlocks, idx(1)), qBlock);
  row0 = add(rowStart, mul(qBlock, blockQ));
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

Value WgmmaKernelBuilder::tileIndexSlot(Value slot) {
  return sharedPointer(add(mul(slot, 4), plan.tileIndexOffset()));
}

Value WgmmaKernelBuilder::loadConsumerTileIndex() {
  return arith::IndexCastUIOp::create(
      b, loc, b.getIndexType(),
      LLVM::LoadOp::create(b, loc, b.getI32Type(),
                           tileIndexSlot(add(qSlot, idx(2)))));
}

Value WgmmaKernelBuilder::endOfWalk(const TileWalk &walk) {
  return plan.overlapTiles ? idx(kNoTile) : walk.numTiles;
}

Value WgmmaKernelBuilder::mbarrierAt(Value index) {
  return sharedPointer(add(mul(index, 8), plan.barrierOffset()));
}

Value WgmmaKernelBuilder::mbarrierOf(Barrier kind, Value index) {
  int64_t stages = plan.stages, first = 0;
  switch (kind) {
  case Barrier::Full:
  case Barrier::FullValues:
  case Barrier::EmptyKeys:
  case Barrier::EmptyValues:
    first = static_cast<int64_t>(kind) * stages;
    break;
  case Barrier::QFull:
    first = 4 * stages;
    break;
  case Barrier::QEmpty:
    first = 4 * stages + plan.qBuffers;
    break;
  case Barrier::ScoresLanded:
    return mbarrierAt(idx(4 * stages + 2 * plan.qBuffers));
  case Barrier::HandedOver:
    return mbarrierAt(idx(4 * stages + 2 * plan.qBuffers + 1));
  }
  return mbarrierAt(first ? add(index, first) : index);
}

void WgmmaKernelBuilder::initBarriers() {
  // With TMA one thread arrives (expecting the tile's bytes; in a
  // cluster kernel both CTAs' halves land on it). A cluster kernel's
  // stages are released by both CTAs' consumers.
  int64_t loaders = plan.tmaLoads ? 1 : kWarpgroupThreads;
  int64_t releases = plan.releaseArrivalCount() * plan.clusterSize;
  for (int64_t s = 0; s < plan.stages; ++s) {
    NVVM::MBarrierInitOp::create(b, loc, mbarrierOf(Barrier::Full, idx(s)),
                                 i32(loaders), Value());
    NVVM::MBarrierInitOp::create(b, loc,
                                 mbarrierOf(Barrier::EmptyValues, idx(s)),
                                 i32(releases), Value());
    NVVM::MBarrierInitOp::create(b, loc, mbarrierOf(Barrier::EmptyKeys, idx(s)),
                                 i32(releases), Value());
    NVVM::MBarrierInitOp::create(
        b, loc, mbarrierOf(Barrier::FullValues, idx(s)), i32(loaders), Value());
  }
  // With the dynamic scheduler the loading thread arrives once more, after
  // writing the tile's index.
  for (int64_t slot = 0; slot < plan.qBuffers; ++slot) {
    NVVM::MBarrierInitOp::create(
        b, loc, mbarrierOf(Barrier::QFull, idx(slot)),
        i32(kWarpgroupThreads + (plan.dynamicTiles ? 1 : 0)), Value());
    NVVM::MBarrierInitOp::create(b, loc, mbarrierOf(Barrier::QEmpty, idx(slot)),
                                 i32(2 * kWarpgroupThreads), Value());
  }
  if (plan.handoffEpilogue)
    for (Barrier bar : {Barrier::ScoresLanded, Barrier::HandedOver})
      NVVM::MBarrierInitOp::create(b, loc, mbarrierOf(bar, idx(0)),
                                   i32(kWarpgroupThreads), Value());
  // The cluster's tile index hand-over (dynamic scheduler).
  if (plan.clusterSize > 1 && plan.dynamicTiles)
    for (bool isFull : {true, false})
      for (int64_t slot = 0; slot < 2; ++slot)
        NVVM::MBarrierInitOp::create(
            b, loc, clusterIndexBarrier(isFull, idx(slot)), i32(1), Value());
  // The other CTA's TMA loads and arrivals may reach these mbarriers as
  // soon as the cluster barrier below opens.
  if (plan.clusterSize > 1)
    NVVM::FenceMbarrierInitOp::create(b, loc);
}

Value WgmmaKernelBuilder::clusterIndexBarrier(bool full, Value slot) {
  return mbarrierAt(
      add(slot, plan.clusterIndexBarrierIndex() + (full ? 0 : 2)));
}

void WgmmaKernelBuilder::setupTileAt(const TileWalk &walk, Value t) {
  // Tile t is (row block t % R, KV head, batch), R row blocks per group.
  Value rest = arith::DivUIOp::create(b, loc, t, walk.tileRowBlocks);
  setupTile(walk.sequences,
            arith::RemUIOp::create(b, loc, t, walk.tileRowBlocks),
            rem(rest, plan.kvHeads), div(rest, plan.kvHeads));
}

Value WgmmaKernelBuilder::walkTiles(const TileWalk &walk, bool producer,
                                    function_ref<void(Value)> begin,
                                    function_ref<void(Value)> body,
                                    SmallVectorImpl<Value> *carry) {
  assert((!carry || (!producer && plan.dynamicTiles)) &&
         "only the consumers' dynamic walk carries values");
  Type i32Type = b.getI32Type();
  Value gridSize = gpu::GridDimOp::create(b, loc, gpu::Dimension::x);
  auto enterTile = [&](Value t, Value carriedBase, Value iter) {
    setupTileAt(walk, t);
    blockBase = carriedBase;
    tileIndex = t;
    qSlot = qSlotOf(iter);
  };
  // The CTA's first tile and the stride between its tiles: blockIdx.x and
  // gridDim.x; in a cluster kernel, whose tiles are tile pairs that both
  // CTAs of a cluster walk, blockIdx.x / 2 and gridDim.x / 2.
  Value first = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value stride = gridSize;
  if (plan.clusterSize > 1) {
    first = div(first, plan.clusterSize);
    stride = div(stride, plan.clusterSize);
  }
  Value iterations;
  if (!plan.dynamicTiles) {
    // Every gridDim.x-th tile from blockIdx.x (tile pairs in a cluster
    // kernel).
    auto loop = scf::ForOp::create(
        b, loc, first, walk.numTiles, stride, ValueRange{idx(0), idx(0)},
        [&](OpBuilder &, Location, Value t, ValueRange carried) {
          enterTile(t, carried[0], carried[1]);
          if (begin)
            begin(carried[1]);
          body(carried[1]);
          scf::YieldOp::create(b, loc,
                               ValueRange{add(carried[0], tile.numBlocks),
                                          add(carried[1], idx(1))});
        });
    iterations = loop.getResult(1);
  } else if (producer) {
    // The first tile is blockIdx.x (below the tile count: the grid is at
    // most the tile count), the others gridDim.x + the counter's value
    // before the loading thread's increment. The thread takes the next
    // once it has issued this tile's loads (late, so that short tiles
    // take more) and hands it to the other producer threads through
    // shared memory (slot iter % 2: a slot is rewritten only after every
    // producer thread passed the next hand-over's barrier).
    // A cluster kernel's tiles are tile pairs: the first is blockIdx.x / 2,
    // the others gridDim.x / 2 + the counter's value, which rank 0's
    // loading thread takes and stores into rank 1's slot too (distributed
    // shared memory), announced on rank 1's clusterIndexBarrier; rank 1
    // releases the slot once its producer threads read it.
    bool cluster = plan.clusterSize > 1;
    Value index = idx(0);
    SmallVector<Type> types(3, b.getIndexType());
    auto loop = scf::WhileOp::create(
        b, loc, types, ValueRange{index, index, first},
        [&](OpBuilder &, Location, ValueRange carried) {
          scf::ConditionOp::create(
              b, loc, cmp(arith::CmpIPredicate::ult, carried[2], walk.numTiles),
              carried);
        },
        [&](OpBuilder &, Location, ValueRange carried) {
          enterTile(carried[2], carried[0], carried[1]);
          if (begin)
            begin(carried[1]);
          body(carried[1]);
          Value slotIndex = rem(carried[1], 2);
          Value slot = tileIndexSlot(slotIndex);
          // The phase of this use of the slot (its uses alternate).
          Value use = arith::IndexCastOp::create(b, loc, i32Type,
                                                 rem(div(carried[1], 2), 2));
          auto takeTile = [&] {
            // The counter is zeroed by the launch's first stage: wait for
            // it (a programmatic launch may start before it ends; a no-op
            // once it has, or without one).
            NVVM::GriddepcontrolOp::create(b, loc,
                                           NVVM::GridDepActionKind::wait);
            Value counter = LLVM::IntToPtrOp::create(
                b, loc, LLVM::LLVMPointerType::get(ctx),
                mma_sync::workspaceAddress(*this, walk.workspace, idx(0)));
            Value taken = LLVM::AtomicRMWOp::create(
                b, loc, LLVM::AtomicBinOp::add, counter, i32(1),
                LLVM::AtomicOrdering::monotonic);
            Value value = arith::AddIOp::create(
                b, loc, taken,
                arith::IndexCastOp::create(b, loc, i32Type, stride));
            LLVM::StoreOp::create(b, loc, value, slot);
            return value;
          };
          // A wait with acquire at cluster scope (the arrival on `bar`
          // came from the other CTA).
          auto waitCluster = [&](Value bar, Value parity) {
            scf::WhileOp::create(
                b, loc, TypeRange{}, ValueRange{},
                [&](OpBuilder &, Location, ValueRange) {
                  Value done = NVVM::MBarrierTryWaitOp::create(
                      b, loc, b.getI1Type(), bar, parity, Value(),
                      NVVM::MemScopeKind::CLUSTER, /*relaxed=*/false);
                  scf::ConditionOp::create(
                      b, loc,
                      arith::XOrIOp::create(b, loc, done,
                                            arith::ConstantOp::create(
                                                b, loc, b.getBoolAttr(true))),
                      ValueRange{});
                },
                [&](OpBuilder &, Location, ValueRange) {
                  scf::YieldOp::create(b, loc);
                });
          };
          ifThen(cmp(arith::CmpIPredicate::eq, groupThread, idx(0)), [&] {
            if (!cluster) {
              takeTile();
              return;
            }
            ifThenElse(
                cmp(arith::CmpIPredicate::eq, clusterRank, idx(0)),
                [&] {
                  // Rank 0: once rank 1 has read the slot's last value
                  // (a fresh barrier passes the first use), the next tile
                  // into both CTAs' slot, then the announcement (release
                  // at cluster scope: the remote store comes first).
                  waitCluster(clusterIndexBarrier(false, slotIndex),
                              arith::XOrIOp::create(b, loc, use, i32(1)));
                  Value value = takeTile();
                  LLVM::StoreOp::create(b, loc, value, peerPointer(slot));
                  arriveOnPeer(clusterIndexBarrier(true, slotIndex),
                               /*clusterScope=*/true);
                },
                [&] {
                  // Rank 1: the announcement.
                  waitCluster(clusterIndexBarrier(true, slotIndex), use);
                });
          });
          NVVM::BarrierOp::create(b, loc, Type(), i32(kProducerBarrier),
                                  i32(kWarpgroupThreads), nullptr, Value());
          Value next = arith::IndexCastUIOp::create(
              b, loc, b.getIndexType(),
              LLVM::LoadOp::create(b, loc, i32Type, slot));
          // Rank 1 hands the slot back once every producer thread read it.
          if (cluster) {
            NVVM::BarrierOp::create(b, loc, Type(), i32(kProducerBarrier),
                                    i32(kWarpgroupThreads), nullptr, Value());
            ifThen(arith::AndIOp::create(
                       b, loc,
                       cmp(arith::CmpIPredicate::eq, groupThread, idx(0)),
                       cmp(arith::CmpIPredicate::eq, clusterRank, idx(1))),
                   [&] {
                     arriveOnPeer(clusterIndexBarrier(false, slotIndex),
                                  /*clusterScope=*/true);
                   });
          }
          scf::YieldOp::create(b, loc,
                               ValueRange{add(carried[0], tile.numBlocks),
                                          add(carried[1], idx(1)), next});
        });
    iterations = loop.getResult(1);
  } else {
    // The consumers learn each tile from the producer: `begin` (the wait
    // for the tile's Q) orders the producer's write of its index into the
    // Q buffer's slot before the read; endOfWalk ends.
    // (blockBase, iter, carry...) before each tile, (blockBase, iter, t,
    // carry...) in it and after the walk.
    Value index = idx(0);
    SmallVector<Value> init{index, index};
    SmallVector<Type> types(3, b.getIndexType());
    if (carry) {
      init.append(carry->begin(), carry->end());
      for (Value v : *carry)
        types.push_back(v.getType());
    }
    auto loop = scf::WhileOp::create(
        b, loc, types, init,
        [&](OpBuilder &, Location, ValueRange carried) {
          qSlot = qSlotOf(carried[1]);
          begin(carried[1]);
          Value t = loadConsumerTileIndex();
          SmallVector<Value> forwarded{carried[0], carried[1], t};
          forwarded.append(carried.begin() + 2, carried.end());
          scf::ConditionOp::create(
              b, loc, cmp(arith::CmpIPredicate::ult, t, endOfWalk(walk)),
              forwarded);
        },
        [&](OpBuilder &, Location, ValueRange carried) {
          enterTile(carried[2], carried[0], carried[1]);
          if (carry)
            carry->assign(carried.begin() + 3, carried.end());
          body(carried[1]);
          SmallVector<Value> next{add(carried[0], tile.numBlocks),
                                  add(carried[1], idx(1))};
          if (carry)
            next.append(carry->begin(), carry->end());
          scf::YieldOp::create(b, loc, next);
        });
    iterations = loop.getResult(1);
  }
  blockBase = idx(0);
  qSlot = idx(0);
  return iterations;
}

SmallVector<Value> WgmmaKernelBuilder::maskBlock(ArrayRef<Value> scores,
                                                 Value key0) {
  const AttentionConfig &attn = plan.attn;
  int64_t blockK = plan.blockK;
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  auto ifOp = scf::IfOp::create(
      b, loc,
      buildBlockNeedsMask(b, loc, attn, key0, blockK, tile.minRow, tile.maxRow,
                          offset, keyLen),
      [&](OpBuilder &, Location) {
        // buildIsVisible's predicate as the row's visible keys [lo, hi)
        // (buildVisibleKeyBounds over that one row), relative to the
        // lane's first column: element c of the block's columns is
        // visible when lo - col <= c < hi - col, one 32-bit compare with
        // an immediate per bound, where the index form took four 64-bit
        // instructions per element. Keys are never negative, so the
        // lower bound matters only with a left window.
        SmallVector<Value> masked;
        Value colLane = add(key0, mul(rem(lane, 4), 2));
        auto relative = [&](Value key) {
          return arith::IndexCastOp::create(b, loc, b.getI32Type(),
                                            sub(key, colLane));
        };
        bool left = attn.windowLeft >= 0;
        std::array<Value, 2> hi, lo;
        for (int64_t rr = 0; rr < 2; ++rr) {
          auto [rowLo, rowHi] = buildVisibleKeyBounds(
              b, loc, attn, threadRow[rr], threadRow[rr], offset, keyLen);
          hi[rr] = relative(rowHi);
          if (left)
            lo[rr] = relative(rowLo);
        }
        for (int64_t nt = 0; nt < blockK / 8; ++nt)
          for (int64_t e = 0; e < 4; ++e) {
            Value c = i32(static_cast<int32_t>(nt * 8 + e % 2));
            Value visible = cmp(arith::CmpIPredicate::slt, c, hi[e / 2]);
            if (left)
              visible = arith::AndIOp::create(
                  b, loc, visible,
                  cmp(arith::CmpIPredicate::sge, c, lo[e / 2]));
            masked.push_back(select(visible, scores[nt * 4 + e], ninf));
          }
        scf::YieldOp::create(b, loc, masked);
      },
      [&](OpBuilder &, Location) { scf::YieldOp::create(b, loc, scores); });
  return SmallVector<Value>(ifOp.getResults());
}
