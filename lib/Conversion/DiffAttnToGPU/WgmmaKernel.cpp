//===- WgmmaKernel.cpp - wgmma strategy: the kernel body ------------------===//
//
// The body of a Hopper (sm_90a) kernel (see WgmmaBuilder.h and the
// DiffAttnToWgmmaKernels pass description): the tile schedule, the Q copy,
// the pipeline over key blocks (cp.async, or a producer warpgroup with TMA
// and mbarriers), S = Q Kᵀ and O += P V on wgmma, masking of the blocks
// that straddle the mask and the online softmax (OnlineSoftmax.h). A
// tile's rows and key range are in WgmmaTile.cpp, the differential
// epilogue in WgmmaEpilogue.cpp.
//
//===----------------------------------------------------------------------===//

#include "WgmmaBuilder.h"

#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

void WgmmaKernelBuilder::setThreadIndices() {
  tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  warpgroup = arith::IndexCastOp::create(
      b, loc, b.getIndexType(),
      gpu::ShuffleOp::create(
          b, loc,
          arith::IndexCastOp::create(b, loc, b.getI32Type(),
                                     div(tid, kWarpgroupThreads)),
          0, 32, gpu::ShuffleMode::IDX)
          .getShuffleResult());
  groupThread = rem(tid, kWarpgroupThreads);
  warpInGroup = div(groupThread, 32);
}

void WgmmaKernelBuilder::build(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  int64_t blockQ = plan.blockQ, blockK = plan.blockK;
  int64_t threads = plan.threads();
  unsigned a = 0;
  // TMA: the K and V tensor maps (generic addresses of by-value params).
  Value kMap = plan.tmaLoads ? entry.getArgument(a++) : Value();
  Value vMap = plan.tmaLoads ? entry.getArgument(a++) : Value();
  Value qMap = plan.qTma ? entry.getArgument(a++) : Value();
  Value q = entry.getArgument(a++), k = entry.getArgument(a++),
        v = entry.getArgument(a++), lam = entry.getArgument(a++);
  // Packed sequences: cu_seqlens_q, cu_seqlens_k [B + 1] (i32), and after
  // B, Sq, Sk (then the batch and the longest sequences) the packed token
  // counts.
  Value cuSeqQ = attn.varlen ? entry.getArgument(a++) : Value();
  Value cuSeqK = attn.varlen ? entry.getArgument(a++) : Value();
  Value out = entry.getArgument(a++);
  // diffattn.v2's lse result ([B, 2H, Sq] f32).
  Value lseOut = plan.writesLse ? entry.getArgument(a++) : Value();
  // diffattn.v2's out_odd result ([B, Sq, H, Dv] of T).
  Value outOdd = plan.attn.hasOutOdd ? entry.getArgument(a++) : Value();
  // The dynamic scheduler's tile counter.
  Value workspace = plan.dynamicTiles ? entry.getArgument(a++) : Value();
  Value batches = entry.getArgument(a++);
  // Sq and Sk (packed sequences: the longest); per tile, seqQ and seqK
  // become the tile's sequence lengths.
  Value seqQArg = entry.getArgument(a++), seqKArg = entry.getArgument(a++);
  Value totalQ = attn.varlen ? entry.getArgument(a++) : Value();
  Value totalK = attn.varlen ? entry.getArgument(a++) : Value();

  setThreadIndices();
  layoutSharedMemory();
  // A cluster's CTAs are consecutive in x (.reqnctapercluster 2, 1, 1).
  if (plan.clusterSize > 1)
    clusterRank = rem(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
                      plan.clusterSize);

  // The tile a CTA computes (WgmmaBuilder.h): everything below that
  // depends on it is set by setupTile, once per CTA, or per tile of a
  // persistent CTA's loop.
  Value &kvHead = tile.kvHead, &batch = tile.batch, &qRowBase = tile.qRowBase,
        &kRowBase = tile.kRowBase;
  Value &row0 = tile.row0, &rowsValid = tile.rowsValid, &lo = tile.lo,
        &numBlocks = tile.numBlocks;
  Value &seqQ = tile.seqQ, &seqK = tile.seqK;
  seqQ = seqQArg;
  seqK = seqKArg;
  // The kernel's sequence arguments, from which setupTile (WgmmaTile.cpp)
  // derives each tile's.
  SequenceArgs sequences{seqQArg, seqKArg, cuSeqQ, cuSeqK, totalQ, totalK};

  int64_t kStride = plan.kvHeads * plan.headDim;
  int64_t vStride = plan.kvHeads * plan.valueDim;
  // Copies of block `key0`'s keys (K) or values (V) into stage `stage`.
  auto loadBlockPart = [&](bool values, Value key0, Value stage, Value thread,
                           int64_t copyThreads) {
    Value validKeys = minI(idx(blockK), sub(keyLen, key0));
    Value rowBase = add(kRowBase, key0);
    int64_t dim = values ? plan.valueDim : plan.headDim;
    Value base = mul(add(mul(rowBase, plan.kvHeads), kvHead), dim);
    copyRows(values ? v : k, base, values ? vStride : kStride, validKeys,
             values ? sV : sK, {stage}, blockK, dim, thread, copyThreads);
  };
  auto loadKeyBlock = [&](Value key0, Value stage, Value thread,
                          int64_t copyThreads) {
    loadBlockPart(false, key0, stage, thread, copyThreads);
    loadBlockPart(true, key0, stage, thread, copyThreads);
  };

  // Q of both heads of each row's pair (cp.async): tile h holds head
  // 2p + h.
  auto copyQ = [&](Value thread, int64_t copyThreads) {
    for (int64_t h = 0; h < 2; ++h) {
      Value lead = add(mul(qSlot, 2), h);
      copyTileAsync(
          q,
          [&](Value r) {
            Value global = add(row0, r);
            Value head = add(mul(pairOf(global), 2), h);
            return mul(
                add(mul(add(qRowBase, queryRowOf(global)), plan.queryHeads),
                    head),
                plan.headDim);
          },
          rowsValid, sQ,
          [&](Value row, Value col) { return swizzledIndex(lead, row, col); },
          kWarpgroupRows, plan.headDim, thread, copyThreads);
    }
  };

  // Loop-carried state of the warpgroup's head (unpackState).
  int64_t valueTiles = plan.valueDim / 8;
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  SmallVector<Value> &init = initialState;
  init.assign(valueTiles * 4, f32(0.0f));
  init.append({ninf, ninf, f32(0.0f), f32(0.0f)});

  // The key loop, software-pipelined as FlashAttention-3's intra-warpgroup
  // overlap: iteration j issues S_j = Q K_jᵀ and then O += P_{j-1} V_{j-1},
  // runs the softmax of S_j while the tensor cores work on P_{j-1} V_{j-1},
  // and rescales O once that product has landed. Block j lives in stage
  // j % stages (K_j and V_{j-1} are read in iteration j); without warp
  // specialisation block j + 1 is copied (cp.async, all threads) while
  // iteration j computes. Block 0's scores are peeled before the loop, the
  // last block's P V after it.
  auto keyOf = [&](Value j) { return add(lo, mul(j, blockK)); };
  // Block j's stage and that stage's parity (stageOfBlock, parityOfBlock):
  // blocks of earlier tiles of a persistent CTA came first in the ring.
  blockBase = idx(0);
  auto stageOf = [&](Value j) { return stageOfBlock(j); };
  auto parityOf = [&](Value j) { return parityOfBlock(j); };
  auto fenceCopies = [&] {
    // The tensor cores read shared memory through the async proxy: each
    // thread orders its landed copies before the barrier.
    NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
    fenceAsyncProxy();
    gpu::BarrierOp::create(b, loc);
  };
  // Copies block j (if any) into stage j % stages: all threads, or the
  // producer warpgroup.
  auto prefetch = [&](Value j, Value thread, int64_t copyThreads) {
    ifThen(cmp(arith::CmpIPredicate::slt, j, numBlocks),
           [&] { loadKeyBlock(keyOf(j), stageOf(j), thread, copyThreads); });
    NVVM::CpAsyncCommitGroupOp::create(b, loc);
  };
  int64_t pRegs = blockK / 16 * 4;
  Value zeroReg = i32(0);

  // overlap-tiles: what a tile carries into the next when it computed the
  // next one's first block (keyLoop), here nothing.
  SmallVector<Value> &noCarry = this->noCarry;
  noCarry.assign({arith::ConstantOp::create(b, loc, b.getBoolAttr(false)), ninf,
                  ninf, f32(0.0f), f32(0.0f)});
  noCarry.append(pRegs, zeroReg);

  // The key loop of the consumers: `acquire(j)` waits until block j's keys
  // are in shared memory, `acquireValues(j)` until its values are (before
  // the P V that reads them), `releaseKeys(j)` hands its K tile back once
  // S_j has landed and `release(j)` its V tile once P_j V_j has.
  // `scoresDone` runs once every S of the tile has landed (Q is no longer
  // read); with `keepLastStage` the last block's V tile is not released
  // here (the epilogue's exchange uses it). `turn(true)` / `turn(false)`
  // open and close a ping-pong turn around each step's products; without
  // edge turns the first S and the last P V issue outside the turns
  // (FlashAttention-3's order), which keeps both warpgroups' counts equal:
  // n - 1 per tile of n blocks. Returns the final state.
  // With plan.overlapTiles, `carry` holds what the previous tile computed
  // of this one (noCarry's layout: whether it did, block 0's row max and
  // sum, its P registers) and receives what this tile computes of the
  // next, which `enterNext` enters (the next tile's Q waited for, the tile
  // state, qSlot and tileIndex set to it) and returns whether it exists.
  auto keyLoop = [&](function_ref<void(Value)> acquire,
                     function_ref<void(Value)> acquireValues,
                     function_ref<void(Value)> releaseKeys,
                     function_ref<void(Value)> release,
                     function_ref<void(bool)> turn,
                     function_ref<void()> scoresDone, bool keepLastStage,
                     SmallVectorImpl<Value> *carry,
                     function_ref<Value()> enterNext) {
    Value hasBlocks = cmp(arith::CmpIPredicate::sgt, numBlocks, idx(0));
    // The turns of the tile's first S and last P V (ping-pong-edges).
    auto edgeTurn = [&](bool begin) {
      if (plan.edgeTurns)
        turn(begin);
    };
    SmallVector<Value> firstInit(init);
    firstInit.append(pRegs, zeroReg);
    SmallVector<Type> stateTypes;
    for (Value v : firstInit)
      stateTypes.push_back(v.getType());
    auto computeFirst = [&]() -> SmallVector<Value> {
      auto first = scf::IfOp::create(b, loc, stateTypes, hasBlocks,
                                     /*withElseRegion=*/true);
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(first.thenBlock());
      acquire(idx(0));
      SmallVector<Value> sDesc = scoreDescriptors(stageOf(idx(0)));
      edgeTurn(true);
      NVVM::WgmmaFenceAlignedOp::create(b, loc);
      Value scores = issueScores(sDesc);
      NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
      edgeTurn(false);
      NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
      releaseKeys(idx(0));
      HeadState head = unpackState(init);
      SmallVector<Value> p =
          packProbabilities(blockSoftmax(scores, lo, head).probabilities);
      SmallVector<Value> results = packState(head);
      results.append(p);
      scf::YieldOp::create(b, loc, results);
      b.setInsertionPointToStart(first.elseBlock());
      scf::YieldOp::create(b, loc, firstInit);
      return SmallVector<Value>(first.getResults());
    };
    SmallVector<Value> firstState;
    if (!carry) {
      firstState = computeFirst();
    } else {
      // Block 0's softmax came with the previous tile, its accumulators
      // are zero.
      auto carried = scf::IfOp::create(b, loc, stateTypes, (*carry)[0],
                                       /*withElseRegion=*/true);
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(carried.thenBlock());
      SmallVector<Value> state(init.begin(), init.begin() + valueTiles * 4);
      state.append(carry->begin() + 1, carry->end());
      scf::YieldOp::create(b, loc, state);
      b.setInsertionPointToStart(carried.elseBlock());
      scf::YieldOp::create(b, loc, computeFirst());
      firstState.assign(carried.getResults().begin(),
                        carried.getResults().end());
    }

    auto loop = scf::ForOp::create(
        b, loc, idx(1), numBlocks, idx(1), firstState,
        [&](OpBuilder &, Location, Value j, ValueRange carried) {
          acquire(j);
          acquireValues(sub(j, idx(1)));
          HeadState head = unpackState(carried);
          SmallVector<Value> previousP(carried.take_back(pRegs));
          SmallVector<Value> sDesc = scoreDescriptors(stageOf(j));
          SmallVector<Value> vDesc = pvDescriptors(stageOf(sub(j, idx(1))));
          turn(true);
          NVVM::WgmmaFenceAlignedOp::create(b, loc);
          Value scores = issueScores(sDesc);
          NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
          issuePV(previousP, vDesc, head.acc);
          NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
          turn(false);
          NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
          // S_j has landed (groups complete in order): K_j's tile is free.
          releaseKeys(j);
          auto [probabilities, factors, moved] =
              blockSoftmax(scores, keyOf(j), head);
          // Lazy rescaling mostly keeps the offsets (factors exactly 1):
          // skip the Dv / 2 multiplications then (a warp-uniform branch).
          // Each side first waits for P_{j-1} V_{j-1} (which then releases
          // V_{j-1} and lets O and the P registers it read be touched): with
          // the wait inside the branches, which end the block that computes
          // the softmax, ptxas keeps all of block j's exp2 above it (in one
          // block with them it hoisted the wait over all but two), so they
          // run while P_{j-1} V_{j-1} does: FlashAttention-3's
          // intra-warpgroup overlap.
          auto waitForPV = [&]() {
            NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
            keepLive(previousP);
            release(sub(j, idx(1)));
            SmallVector<Acc> acc(head.acc);
            fenceTiles(acc);
            SmallVector<Value> flat;
            for (const Acc &t : acc)
              flat.append(t.begin(), t.end());
            return flat;
          };
          auto rescaled = scf::IfOp::create(
              b, loc, moved,
              [&](OpBuilder &, Location) {
                SmallVector<Value> flatAcc = waitForPV();
                SmallVector<Value> scaled;
                for (size_t i = 0; i < flatAcc.size(); ++i)
                  scaled.push_back(fmul(flatAcc[i], factors[(i % 4) / 2]));
                scf::YieldOp::create(b, loc, scaled);
              },
              [&](OpBuilder &, Location) {
                scf::YieldOp::create(b, loc, waitForPV());
              });
          fenceTiles(probabilities);
          for (size_t t = 0; t < head.acc.size(); ++t)
            for (int64_t e = 0; e < 4; ++e)
              head.acc[t][e] = rescaled.getResult(t * 4 + e);
          SmallVector<Value> results = packState(head);
          results.append(packProbabilities(probabilities));
          scf::YieldOp::create(b, loc, results);
        });

    scoresDone();
    // The last block's P V.
    SmallVector<Type> lastTypes(init.size(), b.getF32Type());
    if (carry)
      for (Value v : noCarry)
        lastTypes.push_back(v.getType());
    auto last = scf::IfOp::create(b, loc, lastTypes, hasBlocks,
                                  /*withElseRegion=*/true);
    {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(last.thenBlock());
      ValueRange carried = loop.getResults();
      HeadState head = unpackState(carried);
      acquireValues(sub(numBlocks, idx(1)));
      SmallVector<Value> vDesc = pvDescriptors(stageOf(sub(numBlocks, idx(1))));
      // trim-last-pv: the keys some row of the tile sees in the last block.
      Value keysSeen = sub(tile.hi, keyOf(sub(numBlocks, idx(1))));
      SmallVector<Value> lastP(carried.take_back(pRegs));
      SmallVector<Value> next;
      if (carry)
        next = overlapLastPV(head, lastP, vDesc, keysSeen,
                             {enterNext, acquire, releaseKeys, edgeTurn});
      else
        issueLastPV(lastP, vDesc, keysSeen, head.acc, edgeTurn);
      // The last block's V tile goes back too (after the epilogue with
      // keepLastStage): a persistent CTA's next tile loads into it.
      if (!keepLastStage)
        release(sub(numBlocks, idx(1)));
      SmallVector<Value> results = packState(head);
      results.append(next);
      scf::YieldOp::create(b, loc, results);
      b.setInsertionPointToStart(last.elseBlock());
      results.assign(carried.begin(), carried.begin() + init.size());
      if (carry)
        results.append(noCarry);
      scf::YieldOp::create(b, loc, results);
    }
    if (carry)
      carry->assign(last.getResults().begin() + init.size(),
                    last.getResults().end());
    return SmallVector<Value>(last.getResults().take_front(init.size()));
  };

  if (!plan.warpSpecialized) {
    // One tile per CTA (grid x: row blocks, y: KV heads, z: batch). Every
    // thread copies: Q and block 0 first, then block j + 1 while block j is
    // computed.
    setupTile(sequences, gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
              gpu::BlockIdOp::create(b, loc, gpu::Dimension::y),
              gpu::BlockIdOp::create(b, loc, gpu::Dimension::z));
    pairHead = warpgroup;
    copyQ(tid, threads);
    prefetch(idx(0), tid, threads);
    SmallVector<Value> finalState = keyLoop(
        [&](Value j) {
          fenceCopies();
          prefetch(add(j, idx(1)), tid, threads);
        },
        [](Value) {}, [](Value) {}, [](Value) {}, [](bool) {}, [] {},
        /*keepLastStage=*/false, /*carry=*/nullptr, nullptr);
    // No copy may be in flight when shared memory is reused.
    NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
    emitEpilogue(
        unpackState(finalState), [&] { gpu::BarrierOp::create(b, loc); },
        [](HandoffStep) {}, base, lam, out, lseOut, outOdd);
    gpu::ReturnOp::create(b, loc);
    return;
  }

  // Warp-specialised: warpgroup 0 produces (copies Q and the K/V blocks),
  // warpgroups 1 and 2 consume (heads 2p and 2p + 1). Stage s is guarded by
  // mbarriers full[s] and fullValues[s] (its keys, its values: each of the
  // producer's 128 threads arrives through cp.async.mbarrier.arrive.noinc
  // once its copies landed, so the producer never waits for its own copies
  // and keeps every free stage in flight, and S_j starts once K_j landed)
  // and emptyKeys[s], emptyValues[s] (the consumers arrive, as many as
  // release-arrivals says, once S_j, P_j V_j, has read the K, V tile:
  // K_{j+stages} loads while P_j V_j runs); qFull guards Q (per Q buffer).
  // Phases alternate with each reuse of a stage or buffer. The consumers order
  // the landed copies for the tensor cores' async proxy (fence.proxy.async)
  // after each wait. The mbarriers after the tiles (mbarrierAt).
  auto full = [&](Value s) { return mbarrierOf(Barrier::Full, s); };
  auto fullValues = [&](Value s) { return mbarrierOf(Barrier::FullValues, s); };
  auto emptyKeys = [&](Value s) { return mbarrierOf(Barrier::EmptyKeys, s); };
  auto emptyValues = [&](Value s) {
    return mbarrierOf(Barrier::EmptyValues, s);
  };
  auto qFullOf = [&](Value slot) { return mbarrierOf(Barrier::QFull, slot); };
  auto waitOn = [&](Value bar, Value parity) {
    NVVM::MBarrierTryWaitParityOp::create(b, loc, bar, parity, i32(0));
  };
  auto arrive = [&](Value bar) {
    NVVM::MBarrierArriveOp::create(b, loc, Type(), bar, Value());
  };
  auto qEmptyOf = [&](Value slot) { return mbarrierOf(Barrier::QEmpty, slot); };
  Value scoresLanded = mbarrierOf(Barrier::ScoresLanded, idx(0));
  Value handedOver = mbarrierOf(Barrier::HandedOver, idx(0));
  ifThen(cmp(arith::CmpIPredicate::eq, tid, idx(0)), [&] { initBarriers(); });
  // A cluster kernel's CTAs meet (barrier.cluster.arrive.release, then
  // wait.acquire: every thread of both) before either loads a tile.
  auto clusterBarrier = [&] {
    NVVM::ClusterArriveOp::create(b, loc, UnitAttr());
    NVVM::ClusterWaitOp::create(b, loc, UnitAttr());
  };
  if (plan.clusterSize > 1)
    clusterBarrier();
  else
    gpu::BarrierOp::create(b, loc);

  // The CTA's tiles (walkTiles, WgmmaTile.cpp): one per CTA unless the
  // launch caps the grid; a persistent CTA then runs several, its producer
  // loading the next tile's first block and Q while its consumers finish
  // the last. Row blocks vary fastest, as in the one-CTA-per-tile grid, so
  // the tiles running at once share a few KV heads' K/V in L2 (row blocks
  // slowest measured up to 17% slower, Hopper runs 14-15); with a
  // causal-like mask setupTile reverses them, so each head's longest tiles
  // go first. Producer and consumers walk the same tiles; the stage ring
  // continues across tiles (blockBase).
  Value tileRowBlocks = rowBlocksOf(seqQArg);
  TileWalk walk{sequences, mul(mul(tileRowBlocks, batches), plan.kvHeads),
                tileRowBlocks, workspace};
  Value numTiles = walk.numTiles;
  // The phase of tile i's use of its Q buffer.
  auto parityOfTile = [&](Value tile) {
    return arith::IndexCastOp::create(b, loc, b.getI32Type(),
                                      rem(div(tile, plan.qBuffers), 2))
        .getResult();
  };

  Value isProducer = cmp(arith::CmpIPredicate::eq, warpgroup, idx(0));
  scf::IfOp::create(
      b, loc, isProducer,
      [&](OpBuilder &, Location) {
        NVVM::SetMaxRegisterOp::create(b, loc, plan.producerRegisters,
                                       NVVM::SetMaxRegisterAction::decrease);
        // Each thread's copies announce themselves: the arrival on the
        // barrier happens when all of the thread's earlier cp.async landed.
        auto announce = [&](Value bar) {
          NVVM::CpAsyncMBarrierArriveOp::create(b, loc, bar, /*noinc=*/true);
        };
        Type i32Type = b.getI32Type();
        auto i32Of = [&](Value v) {
          return arith::IndexCastOp::create(b, loc, i32Type, v).getResult();
        };
        // Block j of the tile into its stage: its keys once the consumers
        // released the K tile of the block `stages` before it, its values
        // once they released that block's V tile (the first wait on a
        // fresh barrier, for the phase before it, passes). Keys first (S_j
        // needs them), then values (P_j V_j runs an iteration later), each
        // announced on its own barrier.
        auto issueBlock = [&](Value j) {
          Value stage = stageOf(j);
          Value previous = arith::XOrIOp::create(b, loc, parityOf(j), i32(1));
          waitOn(emptyKeys(stage), previous);
          if (plan.tmaLoads)
            loadKeyValueTile(
                kMap, add(idx(plan.qTileBytes), mul(stage, plan.kStageBytes())),
                plan.headDim, keyOf(j), full(stage));
          else
            loadBlockPart(false, keyOf(j), stage, groupThread,
                          kWarpgroupThreads);
          if (!plan.tmaLoads)
            announce(full(stage));
          waitOn(emptyValues(stage), previous);
          if (plan.tmaLoads)
            loadKeyValueTile(vMap,
                             add(idx(plan.qTileBytes + plan.kTileBytes),
                                 mul(stage, plan.vStageBytes())),
                             plan.valueDim, keyOf(j), fullValues(stage));
          else
            loadBlockPart(true, keyOf(j), stage, groupThread,
                          kWarpgroupThreads);
          if (!plan.tmaLoads)
            announce(fullValues(stage));
        };
        // TMA loads come from one thread, cp.async from all 128.
        Value loader =
            plan.tmaLoads ? cmp(arith::CmpIPredicate::eq, groupThread, idx(0))
                          : cmp(arith::CmpIPredicate::sge, groupThread, idx(0));
        // The loading thread brings the tensor maps into the cache before
        // their first use (FlashAttention-3 does the same).
        if (plan.tmaLoads)
          ifThen(loader, [&] {
            for (Value map : {kMap, vMap, qMap})
              if (map)
                NVVM::PrefetchOp::create(b, loc, NVVM::PrefetchCacheLevelAttr(),
                                         NVVM::CacheEvictionPriorityAttr(), map,
                                         Value(), b.getUnitAttr());
          });
        // Q of the tile, announced on qFull by the producer's 128 threads:
        // with q-tma and Sq a multiple of 64 (the tile's rows then lie in
        // one pair, query rows row0 % Sq onwards), the loading thread's
        // expect-tx arrival and one TMA load per head and 64-column span
        // (the others arrive plainly); else every thread's cp.async copies.
        // The CTA's tile `iter` may use its Q buffer (qSlot) once the
        // consumers released it from tile iter - qBuffers.
        auto waitForQBuffer = [&](Value iter) {
          ifThen(cmp(arith::CmpIPredicate::sge, iter, idx(plan.qBuffers)), [&] {
            waitOn(qEmptyOf(qSlot),
                   parityOfTile(sub(iter, idx(plan.qBuffers))));
          });
        };
        // Dynamic scheduler: the loading thread writes the tile's index (or
        // the end: see below) into qSlot's slot, then arrives on its qFull
        // (the extra arrival its init count has).
        auto announceTile = [&](Value index) {
          ifThen(cmp(arith::CmpIPredicate::eq, groupThread, idx(0)), [&] {
            LLVM::StoreOp::create(
                b, loc, arith::IndexCastOp::create(b, loc, i32Type, index),
                tileIndexSlot(add(qSlot, idx(2))));
            arrive(qFullOf(qSlot));
          });
        };
        auto loadQ = [&](Value loader) {
          auto copyAll = [&] {
            copyQ(groupThread, kWarpgroupThreads);
            announce(qFullOf(qSlot));
          };
          if (!plan.qTma)
            return copyAll();
          Value whole =
              cmp(arith::CmpIPredicate::eq, rem(seqQ, blockQ), idx(0));
          ifThenElse(
              whole,
              [&] {
                ifThenElse(
                    loader,
                    [&] {
                      int64_t spans = plan.headDim / kSpan;
                      expectBytes(qFullOf(qSlot),
                                  2 * spans * kWarpgroupRows * kRowBytes);
                      Value pair = pairOf(row0), queryRow = queryRowOf(row0);
                      for (int64_t h = 0; h < 2; ++h)
                        for (int64_t span = 0; span < spans; ++span)
                          loadTensorTile(
                              qMap,
                              sharedPointer(
                                  add(mul(qSlot, plan.qBufferBytes()),
                                      (h * spans + span) * kWarpgroupRows *
                                          kRowBytes)),
                              [&]() -> SmallVector<Value> {
                                return {i32(span * kSpan),
                                        i32Of(add(mul(pair, 2), h)),
                                        i32Of(queryRow), i32Of(batch)};
                              },
                              qFullOf(qSlot));
                    },
                    [&] { arrive(qFullOf(qSlot)); });
              },
              copyAll);
        };
        Value tiles =
            walkTiles(walk, /*producer=*/true, nullptr, [&](Value tileIter) {
              // Block 0 lands while the consumers finish the previous tile;
              // Q once they released its buffer (the tile qBuffers before:
              // its last S, or its epilogue). With one buffer, block 0
              // first (Q waits for this CTA's current tile); with two and
              // q-first, Q first, whose buffer was released a tile ago,
              // while block 0 would wait for its stages. Then the other
              // blocks.
              auto issueFirstBlock = [&] {
                ifThen(arith::AndIOp::create(
                           b, loc, loader,
                           cmp(arith::CmpIPredicate::sgt, numBlocks, idx(0))),
                       [&] { issueBlock(idx(0)); });
              };
              if (!plan.qFirst)
                issueFirstBlock();
              waitForQBuffer(tileIter);
              // The dynamic scheduler's tile, for the consumers (walkTiles).
              if (plan.dynamicTiles)
                announceTile(tileIndex);
              loadQ(loader);
              if (plan.qFirst)
                issueFirstBlock();
              // The Q of the tile that starts about one tile from now: this
              // CTA's next with the static stride (with the dynamic
              // scheduler, whose next tile is not known yet, about the
              // tile the counter hands out a tile from now), else the one
              // an SM takes next.
              // (A cluster kernel's tiles are tile pairs.)
              if (plan.qPrefetchDistance > 0) {
                Value ahead = plan.persistentCtas > 0
                                  ? Value(gpu::GridDimOp::create(
                                        b, loc, gpu::Dimension::x))
                                  : idx(plan.qPrefetchDistance);
                if (plan.clusterSize > 1)
                  ahead = div(ahead, plan.clusterSize);
                prefetchTileQ(q, add(tileIndex, ahead), numTiles, tileRowBlocks,
                              seqQArg, groupThread);
              }
              ifThen(loader, [&] {
                scf::ForOp::create(
                    b, loc, idx(1), numBlocks, idx(1), ValueRange{},
                    [&](OpBuilder &, Location, Value j, ValueRange) {
                      issueBlock(j);
                      scf::YieldOp::create(b, loc);
                    });
              });
            });
        // The dynamic scheduler's end: the next Q buffer's slot gets
        // endOfWalk, announced without a load.
        if (plan.dynamicTiles) {
          qSlot = qSlotOf(tiles);
          waitForQBuffer(tiles);
          announceTile(endOfWalk(walk));
          arrive(qFullOf(qSlot));
          qSlot = idx(0);
        }
        // No copy of this thread is in flight when it exits.
        NVVM::CpAsyncCommitGroupOp::create(b, loc);
        NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
        scf::YieldOp::create(b, loc);
      },
      [&](OpBuilder &, Location) {
        NVVM::SetMaxRegisterOp::create(b, loc, plan.consumerRegisters,
                                       NVVM::SetMaxRegisterAction::increase);
        pairHead = sub(warpgroup, idx(1));
        // Ping-pong: named barrier 2 + h is warpgroup h's turn (256
        // threads: its own wait and the other's arrival); warpgroup 0 goes
        // first. Both take the same number of turns in every tile.
        Value pairHeadI32 =
            arith::IndexCastOp::create(b, loc, b.getI32Type(), pairHead);
        Value myTurn = arith::AddIOp::create(b, loc, pairHeadI32, i32(2));
        Value otherTurn = arith::SubIOp::create(b, loc, i32(3), pairHeadI32);
        Value turnThreads = i32(2 * kWarpgroupThreads);
        if (plan.pingPong)
          ifThen(cmp(arith::CmpIPredicate::eq, pairHead, idx(1)), [&] {
            NVVM::BarrierArriveOp::create(b, loc, i32(2), turnThreads);
          });
        // Copies landed by the producer's threads are generic-proxy writes:
        // order them before this thread's wgmma reads (async proxy).
        auto acquireCopies = [&](Value bar, Value parity) {
          waitOn(bar, parity);
          fenceAsyncProxy();
        };
        // TMA tiles arrive through the async proxy: the wait is enough.
        auto acquireTiles = [&](Value bar, Value parity) {
          if (plan.tmaLoads)
            waitOn(bar, parity);
          else
            acquireCopies(bar, parity);
        };
        // The epilogue's exchange goes through the last block's V tile
        // when one V stage holds it (block-k >= 128), so that Q is free
        // once the tile's last S landed: the producer loads the next
        // tile's Q while the consumers finish this one.
        // The hand-off epilogue uses the Q buffer, released after it.
        bool stageExchange =
            !plan.handoffEpilogue &&
            plan.vStageBytes() >= plan.valueDim / 2 * kWarpgroupThreads * 4;
        auto acquireQ = [&](Value tileIter) {
          acquireCopies(qFullOf(qSlot), parityOfTile(tileIter));
        };
        // overlap-tiles: the tile after `tileIter` is the one the dynamic
        // scheduler's slot of the next Q buffer names (walkTiles reads the
        // same value again when it gets there).
        SmallVector<Value> carry(noCarry);
        auto bodyOf = [&](Value tileIter) {
          Value qEmpty = qEmptyOf(qSlot);
          // The tile's Q buffer (the epilogue's exchange without a V tile).
          Value qBase = add(base, mul(qSlot, plan.qBufferBytes()));
          Value hasBlocks = cmp(arith::CmpIPredicate::sgt, numBlocks, idx(0));
          Value lastStage = stageOf(sub(numBlocks, idx(1)));
          SmallVector<Value> finalState = keyLoop(
              [&](Value j) { acquireTiles(full(stageOf(j)), parityOf(j)); },
              [&](Value j) {
                acquireTiles(fullValues(stageOf(j)), parityOf(j));
              },
              [&](Value j) { releaseStage(emptyKeys(stageOf(j))); },
              [&](Value j) { releaseStage(emptyValues(stageOf(j))); },
              [&](bool begin) {
                if (!plan.pingPong)
                  return;
                if (begin)
                  NVVM::BarrierOp::create(b, loc, Type(), myTurn, turnThreads,
                                          nullptr, Value());
                else
                  NVVM::BarrierArriveOp::create(b, loc, otherTurn, turnThreads);
              },
              [&] {
                if (stageExchange)
                  ifThen(hasBlocks, [&] { arrive(qEmpty); });
                // Hand-off: warpgroup 1 no longer reads Q, so warpgroup 0
                // may write its columns there.
                if (plan.handoffEpilogue)
                  ifThen(cmp(arith::CmpIPredicate::eq, pairHead, idx(1)),
                         [&] { arrive(scoresLanded); });
              },
              /*keepLastStage=*/stageExchange,
              plan.overlapTiles ? &carry : nullptr,
              [&] {
                Value nextIter = add(tileIter, idx(1));
                qSlot = qSlotOf(nextIter);
                acquireQ(nextIter);
                Value t = loadConsumerTileIndex();
                setupTileAt(walk, t);
                tileIndex = t;
                return cmp(arith::CmpIPredicate::ult, t, endOfWalk(walk));
              });
          Value exchangeAt = qBase;
          if (stageExchange)
            exchangeAt =
                select(hasBlocks,
                       add(add(base, plan.qTileBytes + plan.kTileBytes),
                           mul(lastStage, plan.vStageBytes())),
                       qBase);
          // Each hand-off mbarrier completes one phase per tile of the CTA.
          Value tileParity = arith::IndexCastOp::create(b, loc, b.getI32Type(),
                                                        rem(tileIter, 2));
          // The exchange: the consumers' own barrier (the producer may be
          // loading).
          emitEpilogue(
              unpackState(finalState),
              [&] {
                NVVM::BarrierOp::create(b, loc, Type(), i32(kConsumerBarrier),
                                        i32(2 * kWarpgroupThreads), nullptr,
                                        Value());
              },
              [&](HandoffStep step) {
                if (step == HandoffStep::HandOver)
                  return arrive(handedOver);
                waitOn(step == HandoffStep::AwaitRegion ? scoresLanded
                                                        : handedOver,
                       tileParity);
              },
              exchangeAt, lam, out, lseOut, outOdd);
          // The exchange's generic-proxy accesses come before TMA writes
          // into the region (async proxy): the next Q, or the next block.
          if (!stageExchange) {
            fenceAsyncProxy();
            arrive(qEmpty);
            return;
          }
          fenceAsyncProxy();
          ifThen(hasBlocks, [&] {
            releaseStage(emptyValues(lastStage), /*afterGenericAccesses=*/true);
          });
          ifThen(arith::XOrIOp::create(
                     b, loc, hasBlocks,
                     arith::ConstantOp::create(b, loc, b.getBoolAttr(true))),
                 [&] { arrive(qEmpty); });
        };
        walkTiles(walk, /*producer=*/false, acquireQ, bodyOf,
                  plan.overlapTiles ? &carry : nullptr);
        scf::YieldOp::create(b, loc);
      });
  // Neither CTA of a cluster exits while the other may still arrive on its
  // mbarriers.
  if (plan.clusterSize > 1)
    clusterBarrier();
  gpu::ReturnOp::create(b, loc);
}
