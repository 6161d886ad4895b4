//===- MmaSyncKernel.cpp - mma.sync strategy: the kernel body -------------===//
//
// The body of a portable tensor-core kernel (see MmaSyncBuilder.h and the
// DiffAttnToMmaSyncKernels pass description): the CTA's rows, the kv_len
// check, the Q copy, the range of key blocks (shared with the tiled CPU
// lowering, KeyRange.h), the cp.async pipeline over key blocks, masking of
// the blocks that straddle the mask, the online softmax (OnlineSoftmax.h),
// P·V, and the differential epilogue of row blocks.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBuilder.h"

#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

Value MmaSyncKernelBuilder::pagedRow(Value blockTable, Value numBlocks,
                                     Value batch, Value seqK, Value key0,
                                     Value tid) {
  int64_t bs = plan.attn.pagedBlockSize;
  Value maxBlocks = div(seqK, bs);
  Value entry = memref::LoadOp::create(
      b, loc, blockTable,
      ValueRange{add(mul(batch, maxBlocks), div(key0, bs))});
  Value page = arith::IndexCastOp::create(b, loc, b.getIndexType(), entry);
  Value inPool = arith::AndIOp::create(
      b, loc, cmp(arith::CmpIPredicate::sge, page, idx(0)),
      cmp(arith::CmpIPredicate::slt, page, numBlocks));
  // As for kv_len (assertKeyLengthInRange): one thread of the copy reports
  // a block outside the pool; every thread reads block 0 instead.
  Value silent = cmp(arith::CmpIPredicate::ne, rem(tid, 32), idx(0));
  cf::AssertOp::create(
      b, loc, arith::OrIOp::create(b, loc, inPool, silent),
      "diffattn: block_table[b, t / BS] outside the pool [0, num_blocks) for "
      "a key t < kv_len[b] (b = blockIdx.z)");
  page = select(inPool, page, idx(0));
  return add(mul(page, bs), rem(key0, bs));
}

void MmaSyncKernelBuilder::assertKeyLengthInRange(Value kvLen, Value seqK,
                                                  Value tid) {
  Value len = arith::IndexCastOp::create(b, loc, b.getIndexType(), kvLen);
  Value inRange =
      arith::AndIOp::create(b, loc, cmp(arith::CmpIPredicate::sge, len, idx(0)),
                            cmp(arith::CmpIPredicate::sle, len, seqK));
  assertPerSequence(inRange, tid,
                    "diffattn: kv_len[b] out of range [0, Sk] (b = "
                    "blockIdx.z)");
}

void MmaSyncKernelBuilder::setRowRange(Value row0, Value rowsValid,
                                       Value seqQ) {
  Value lastGlobal = sub(add(row0, rowsValid), idx(1));
  Value onePair =
      cmp(arith::CmpIPredicate::eq, arith::DivUIOp::create(b, loc, row0, seqQ),
          arith::DivUIOp::create(b, loc, lastGlobal, seqQ));
  auto queryRowOf = [&](Value r) {
    return arith::RemUIOp::create(b, loc, r, seqQ).getResult();
  };
  minRow = select(onePair, queryRowOf(row0), idx(0));
  maxRow = select(onePair, queryRowOf(lastGlobal), sub(seqQ, idx(1)));
}

void MmaSyncKernelBuilder::finishBlock(Scores &s, ValueRange vLead, Value key0,
                                       Value needsMask,
                                       std::array<HeadState, 2> &heads) {
  int64_t keyTiles = plan.blockK / 8;
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value vRowLane = add(l8, mul(rem(g8, 2), 8));
  Value vColLane = mul(div(lane, 16), 8);
  auto loadV = [&](int64_t kt, int64_t dp) {
    return ldmatrix(
        sV, tileIndex(vLead, add(vRowLane, kt * 16), vColLane, dp * 16), true);
  };
  // Split-KV warps (registers to spare, memory latency to hide) load the
  // block's V fragments before the softmax, so that their latency overlaps
  // it; row blocks load each just before its products.
  SmallVector<SmallVector<Value>> early;
  if (plan.splitKV)
    for (int64_t kt = 0; kt < keyTiles / 2; ++kt)
      for (int64_t dp = 0; dp < plan.valueDim / 16; ++dp)
        early.push_back(loadV(kt, dp));
  // Mask the blocks that straddle the mask boundary (or the key length).
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  SmallVector<Value> flat = flatten(s);
  auto ifOp = scf::IfOp::create(
      b, loc, needsMask,
      [&](OpBuilder &, Location) {
        SmallVector<Value> masked;
        Value colLane = add(key0, mul(rem(lane, 4), 2));
        SmallVector<Value> visible;
        for (int64_t nt = 0; nt < keyTiles; ++nt)
          for (int64_t e = 0; e < 4; ++e)
            visible.push_back(
                buildIsVisible(b, loc, plan.attn, threadRow[e / 2],
                               add(colLane, nt * 8 + e % 2), offset, keyLen));
        for (int64_t h = 0; h < plan.headsPerRow; ++h)
          for (int64_t i = 0; i < keyTiles * 4; ++i)
            masked.push_back(
                select(visible[i], flat[h * keyTiles * 4 + i], ninf));
        scf::YieldOp::create(b, loc, masked);
      },
      [&](OpBuilder &, Location) { scf::YieldOp::create(b, loc, flat); });
  for (int64_t h = 0; h < plan.headsPerRow; ++h)
    for (int64_t nt = 0; nt < keyTiles; ++nt)
      for (int64_t e = 0; e < 4; ++e)
        s[h][nt][e] = ifOp.getResult((h * keyTiles + nt) * 4 + e);

  for (int64_t h = 0; h < plan.headsPerRow; ++h)
    softmax.block(s[h], heads[h]);

  // O += P V with P from registers: two accumulator tiles (16 keys) make
  // one A operand; each V fragment serves both heads.
  for (int64_t kt = 0; kt < keyTiles / 2; ++kt) {
    std::array<SmallVector<Value>, 2> a;
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      a[h] = {packAccumulators(s[h][2 * kt][0], s[h][2 * kt][1]),
              packAccumulators(s[h][2 * kt][2], s[h][2 * kt][3]),
              packAccumulators(s[h][2 * kt + 1][0], s[h][2 * kt + 1][1]),
              packAccumulators(s[h][2 * kt + 1][2], s[h][2 * kt + 1][3])};
    for (int64_t dp = 0; dp < plan.valueDim / 16; ++dp) {
      SmallVector<Value> vr =
          early.empty() ? loadV(kt, dp) : early[kt * (plan.valueDim / 16) + dp];
      for (int64_t h = 0; h < plan.headsPerRow; ++h) {
        SmallVector<Acc> &acc = heads[h].acc;
        acc[2 * dp] = mma(a[h], {vr[0], vr[1]}, acc[2 * dp]);
        acc[2 * dp + 1] = mma(a[h], {vr[2], vr[3]}, acc[2 * dp + 1]);
      }
    }
  }
}

void MmaSyncKernelBuilder::build(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  bool decode = attn.hasKvLen;
  bool splitKV = plan.splitKV;
  int64_t blockQ = plan.blockQ, blockK = plan.blockK, stages = plan.stages;
  unsigned a = 0;
  Value q = entry.getArgument(a++), k = entry.getArgument(a++),
        v = entry.getArgument(a++), lam = entry.getArgument(a++);
  Value kvLen = decode ? entry.getArgument(a++) : Value();
  // Paged cache: block_table [B, Sk / BS] (i32) and the pool's size.
  Value blockTable = attn.isPaged() ? entry.getArgument(a++) : Value();
  // Packed sequences: cu_seqlens_q, cu_seqlens_k [B + 1] (i32).
  Value cuSeqQ = attn.varlen ? entry.getArgument(a++) : Value();
  Value cuSeqK = attn.varlen ? entry.getArgument(a++) : Value();
  Value out = entry.getArgument(a++);
  Value lseOut = plan.writesLse ? entry.getArgument(a++) : Value();
  Value outOdd = attn.hasOutOdd ? entry.getArgument(a++) : Value();
  Value workspace = splitKV ? entry.getArgument(a++) : Value();
  a++; // B: the grid's z extent.
  Value seqQ = entry.getArgument(a++), seqK = entry.getArgument(a++);
  // Split-KV: keys per split, a multiple of blockK (the launch's choice).
  Value numBlocks = attn.isPaged() ? entry.getArgument(a++) : Value();
  // Packed sequences: the packed token counts (after B, Sq, Sk, which are
  // then the batch and the longest sequences).
  Value totalQ = attn.varlen ? entry.getArgument(a++) : Value();
  Value totalK = attn.varlen ? entry.getArgument(a++) : Value();
  Value splitKeys = splitKV ? entry.getArgument(a++) : Value();

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  warp = div(tid, 32);
  Value qBlock = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  // The CTA's rows R0 .. R0 + rowsValid - 1 of the group's rows: R = p *
  // Sq + i for pair p of the group (both heads per row), or R = h * Sq + i
  // for query head h of the group (one head per row).
  int64_t pairsPerGroup = plan.pairsPerGroup();
  int64_t rowHeads = plan.headsPerRow;
  // The first query row and key of the sequence in the (packed) tensors;
  // with packed sequences, Sq and Sk become the sequence's own lengths.
  Value qRowBase, kRowBase;
  if (attn.varlen) {
    std::tie(qRowBase, seqQ) = sequenceRange(cuSeqQ, batch, totalQ, seqQ, tid);
    std::tie(kRowBase, seqK) = sequenceRange(cuSeqK, batch, totalK, seqK, tid);
  } else {
    qRowBase = mul(batch, seqQ);
    kRowBase = mul(batch, seqK);
  }
  Value groupRows = mul(seqQ, plan.rowsPerQuery);
  // Packed sequences: the grid covers the longest sequence; CTAs past this
  // one's rows compute nothing and write nothing.
  ctaActive = Value();
  if (attn.varlen) {
    Value rowBlocks = div(add(groupRows, blockQ - 1), blockQ);
    ctaActive = cmp(arith::CmpIPredicate::ult, qBlock, rowBlocks);
    qBlock = select(ctaActive, qBlock, idx(0));
  }
  // Split-KV: grid x enumerates (split, row block).
  Value split, numSplits;
  if (splitKV) {
    Value rowBlocks = div(add(groupRows, blockQ - 1), blockQ);
    split = arith::DivUIOp::create(b, loc, qBlock, rowBlocks);
    qBlock = arith::RemUIOp::create(b, loc, qBlock, rowBlocks);
    numSplits = arith::DivUIOp::create(
        b, loc, sub(add(seqK, splitKeys), idx(1)), splitKeys);
  }
  // With a causal-like mask (later rows see more keys), row blocks go from
  // the last rows to the first: the longest CTAs start first and the
  // shortest fill the last wave. (Taking them row block by row block
  // across heads and sequences, blockIdsXSlowest, measured 0.975-1.015x
  // of this order on the H200, backward run 53: not kept.)
  if (!splitKV && attn.isCausalLike()) {
    Value rowBlocks = div(add(groupRows, blockQ - 1), blockQ);
    qBlock = sub(sub(rowBlocks, idx(1)), qBlock);
  }
  Value row0 = mul(qBlock, blockQ);
  Value rowsValid = minI(idx(blockQ), sub(groupRows, row0));
  if (ctaActive)
    rowsValid = select(ctaActive, rowsValid, idx(0));
  // The warp's 16 rows: its own with row blocks, the CTA's with split-KV.
  qRow0 = splitKV ? idx(0) : mul(warp, 16);
  Value firstPair = mul(kvHead, pairsPerGroup);
  // The pair of a group row (with both heads per row), or its query head.
  auto pairOf = [&](Value r) {
    return add(firstPair, arith::DivUIOp::create(b, loc, r, seqQ));
  };
  auto headOf = [&](Value r) {
    return add(mul(firstPair, 2), arith::DivUIOp::create(b, loc, r, seqQ));
  };
  auto queryRowOf = [&](Value r) {
    return arith::RemUIOp::create(b, loc, r, seqQ).getResult();
  };
  // Group row of the thread's accumulator row rr.
  auto threadGroupRow = [&](int64_t rr) {
    return add(add(row0, qRow0), add(div(lane, 4), rr * 8));
  };

  Value kvLenElem =
      decode
          ? memref::LoadOp::create(b, loc, kvLen, ValueRange{batch}).getResult()
          : Value();
  if (decode)
    assertKeyLengthInRange(kvLenElem, seqK, tid);
  keyLen = buildKeyLength(b, loc, kvLenElem, seqK);
  offset = sub(keyLen, seqQ);

  // Shared memory: Q (of both heads with pair rows), then the K and V
  // stages (per warp with split-KV).
  SmallVector<int64_t> stageShape;
  if (splitKV)
    stageShape.push_back(plan.warps);
  stageShape.push_back(stages);
  Type elem = plan.elementType;
  sQ = sharedView(0, {rowHeads, blockQ, plan.headDim + plan.rowPad()}, elem);
  SmallVector<int64_t> kShape(stageShape), vShape(stageShape);
  kShape.append({blockK, plan.headDim + plan.rowPad()});
  vShape.append({blockK, plan.valueDim + plan.rowPad()});
  sK = sharedView(plan.qTileBytes, kShape, elem);
  sV = sharedView(plan.qTileBytes + plan.kTileBytes, vShape, elem);

  // Q of each row's heads (cp.async, all threads).
  for (int64_t s = 0; s < rowHeads; ++s) {
    Value lead = idx(s);
    copyTileAsync(
        q,
        [&](Value r) {
          Value global = add(row0, r);
          Value head =
              rowHeads == 2 ? add(mul(pairOf(global), 2), s) : headOf(global);
          return mul(
              add(mul(add(qRowBase, queryRowOf(global)), plan.queryHeads),
                  head),
              plan.headDim);
        },
        rowsValid, sQ,
        [&](Value row, Value col) { return tileIndex(lead, row, col); }, blockQ,
        plan.headDim, tid, plan.threads());
  }

  // The query rows of the thread's two accumulator rows, and the range the
  // CTA covers (all of 0 .. Sq - 1 when its rows span two pairs).
  for (int64_t rr = 0; rr < 2; ++rr)
    threadRow[rr] = queryRowOf(threadGroupRow(rr));
  setRowRange(row0, rowsValid, seqQ);

  // Keys any row of the block may see: [lo, hi), lo on a block boundary.
  Value lo, hi;
  std::tie(lo, hi) =
      buildVisibleKeyBounds(b, loc, attn, minRow, maxRow, offset, keyLen);
  if (splitKV) {
    Value splitStart = mul(split, splitKeys);
    lo = maxI(lo, splitStart);
    hi = minI(hi, add(splitStart, splitKeys));
  }
  lo = alignDownToBlock(b, loc, lo, blockK);
  // An idle CTA (packed sequences) runs no key block.
  if (ctaActive)
    hi = select(ctaActive, hi, lo);

  // Copies the K and V rows key0 .. key0 + blockK - 1 into the tiles
  // sK[lead..., :, :] and sV[lead..., :, :].
  int64_t kStride = plan.kvHeads * plan.headDim;
  int64_t vStride = plan.kvHeads * plan.valueDim;
  auto loadKeyBlock = [&](Value key0, ValueRange lead, Value thread,
                          int64_t threads) {
    Value validKeys = minI(idx(blockK), sub(keyLen, key0));
    Value rowBase =
        attn.isPaged() ? pagedRow(blockTable, numBlocks, batch, seqK, key0, tid)
                       : add(kRowBase, key0);
    Value kBase = mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.headDim);
    Value vBase = mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.valueDim);
    copyRowsAsync(k, kBase, kStride, validKeys, sK, lead, blockK, plan.headDim,
                  thread, threads);
    copyRowsAsync(v, vBase, vStride, validKeys, sV, lead, blockK, plan.valueDim,
                  thread, threads);
  };
  // Is any key of the block hidden from any row of the CTA?
  auto blockNeedsMask = [&](Value key0) {
    return buildBlockNeedsMask(b, loc, attn, key0, blockK, minRow, maxRow,
                               offset, keyLen);
  };

  // Loop-carried state: per head, Dv/8 accumulator tiles, then max and sum
  // of the thread's two rows.
  int64_t valueTiles = plan.valueDim / 8;
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  SmallVector<Value> init;
  for (int64_t s = 0; s < rowHeads; ++s) {
    for (int64_t t = 0; t < valueTiles * 4; ++t)
      init.push_back(f32(0.0f));
    init.append({ninf, ninf, f32(0.0f), f32(0.0f)});
  }
  int64_t perHead = valueTiles * 4 + 4;
  auto unpackState = [&](ValueRange carried) {
    std::array<HeadState, 2> state;
    for (int64_t h = 0; h < rowHeads; ++h) {
      ValueRange st = carried.slice(h * perHead, perHead);
      state[h].acc.resize(valueTiles);
      for (int64_t t = 0; t < valueTiles; ++t)
        for (int64_t e = 0; e < 4; ++e)
          state[h].acc[t][e] = st[t * 4 + e];
      state[h].rowMax = {st[valueTiles * 4], st[valueTiles * 4 + 1]};
      state[h].rowSum = {st[valueTiles * 4 + 2], st[valueTiles * 4 + 3]};
    }
    return state;
  };
  auto packState = [&](const std::array<HeadState, 2> &state) {
    SmallVector<Value> results;
    for (int64_t h = 0; h < rowHeads; ++h) {
      const HeadState &head = state[h];
      for (const Acc &t : head.acc)
        results.append(t.begin(), t.end());
      results.append(
          {head.rowMax[0], head.rowMax[1], head.rowSum[0], head.rowSum[1]});
    }
    return results;
  };

  if (splitKV) {
    // The Q copies form their own group, then each warp runs a pipeline of
    // its own over the blocks w, w + 4, w + 8, ... of the split.
    NVVM::CpAsyncCommitGroupOp::create(b, loc);
    Value numBlocks = select(cmp(arith::CmpIPredicate::slt, lo, hi),
                             div(add(sub(hi, lo), blockK - 1), blockK), idx(0));
    Value warpBlocks =
        div(sub(add(numBlocks, plan.warps - 1), warp), plan.warps);
    auto keyOf = [&](Value j) {
      return add(lo, mul(add(warp, mul(j, plan.warps)), blockK));
    };
    for (int64_t p = 0; p + 1 < stages; ++p) {
      ifThen(cmp(arith::CmpIPredicate::slt, idx(p), warpBlocks), [&] {
        loadKeyBlock(keyOf(idx(p)), {warp, idx(p)}, lane, 32);
      });
      NVVM::CpAsyncCommitGroupOp::create(b, loc);
    }
    // Q has landed (only the warp's own stages may be in flight); make it
    // visible to every warp.
    NVVM::CpAsyncWaitGroupOp::create(b, loc, stages - 1);
    gpu::BarrierOp::create(b, loc);
    // One head per row: its Q fragments (D / 4 registers) stay in registers
    // for the whole loop instead of being reloaded for every block.
    if (plan.headsPerRow == 1)
      loadQFragments();
    // The stage of block j (j mod stages) is carried, not divided for.
    SmallVector<Value> loopInit(init);
    loopInit.push_back(idx(0));
    auto loop = scf::ForOp::create(
        b, loc, idx(0), warpBlocks, idx(1), loopInit,
        [&](OpBuilder &, Location, Value j, ValueRange carried) {
          Value stage = carried.back();
          Value isFirst = cmp(arith::CmpIPredicate::eq, stage, idx(0));
          Value isLast = cmp(arith::CmpIPredicate::eq, stage, idx(stages - 1));
          // Block j + stages - 1 goes where block j - 1 was.
          Value nextStage =
              select(isFirst, idx(stages - 1), sub(stage, idx(1)));
          Value next = add(j, stages - 1);
          ifThen(cmp(arith::CmpIPredicate::slt, next, warpBlocks), [&] {
            loadKeyBlock(keyOf(next), {warp, nextStage}, lane, 32);
          });
          NVVM::CpAsyncCommitGroupOp::create(b, loc);
          NVVM::CpAsyncWaitGroupOp::create(b, loc, stages - 1);
          NVVM::SyncWarpOp::create(b, loc, i32(-1));
          Value key0 = keyOf(j);
          std::array<HeadState, 2> heads = unpackState(carried.drop_back());
          attendBlock({warp, stage}, key0, blockNeedsMask(key0), heads);
          // The stage read here is refilled by a later iteration.
          NVVM::SyncWarpOp::create(b, loc, i32(-1));
          SmallVector<Value> results = packState(heads);
          results.push_back(select(isLast, idx(0), add(stage, idx(1))));
          scf::YieldOp::create(b, loc, results);
        });
    NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
    // The combine kernel may start once every CTA got here (it waits for
    // this grid's results before reading them).
    if (plan.programmaticLaunch)
      NVVM::GriddepcontrolOp::create(
          b, loc, NVVM::GridDepActionKind::launch_dependents);
    // Every warp is done with its stages: merge the warps' states through
    // shared memory (over the stages), then write the CTA's partial state
    // to the workspace.
    gpu::BarrierOp::create(b, loc);
    emitWarpMerge(loop.getResults().drop_back(), workspace, lam, out, batch,
                  kvHead, split, numSplits, seqQ, row0, rowsValid);
    gpu::ReturnOp::create(b, loc);
    return;
  }

  // Epilogue: normalise, combine the pair, write the single output head.
  // Each store writes a row's two adjacent columns (colLane is even): two
  // 2-byte stores, or with `alignment` 4 one 4-byte store.
  auto emitEpilogue = [&](ValueRange final, llvm::MaybeAlign alignment) {
    auto outPairType = VectorType::get({2}, plan.elementType);
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value global = threadGroupRow(rr);
      Value valid = cmp(arith::CmpIPredicate::slt, global, groupRows);
      if (ctaActive)
        valid = arith::AndIOp::create(b, loc, valid, ctaActive);
      Value row = threadRow[rr];
      Value pair = pairOf(global);
      // The row sums over the quad (shuffles: outside any divergent branch;
      // at D = 64 inside the alignment branch below, which every lane of
      // the grid takes alike).
      std::array<Value, 2> sums, inverse;
      for (int64_t s = 0; s < 2; ++s) {
        sums[s] = quadSum(final[s * perHead + valueTiles * 4 + 2 + rr]);
        inverse[s] = epilogue.inverseSum(sums[s]);
      }
      Value pairRow = epilogue.pairRowIndex(add(qRowBase, row), pair);
      Value sig = epilogue.sigmoidOfLam(lam, select(valid, pairRow, idx(0)));
      // o0 - sig * o1 = acc0 * inv0 - (sig * inv1) * acc1.
      Value scale1 = fmul(sig, inverse[1]);
      // lse[b, 2 pair + s, i] = scale * offset + ln(sum): the sums are
      // relative to the offsets the rows ended with (-inf for a row that saw
      // no key: ln 0). One lane of the row's quad writes it.
      if (lseOut) {
        Value writer = arith::AndIOp::create(
            b, loc, valid, cmp(arith::CmpIPredicate::eq, rem(lane, 4), idx(0)));
        ifThen(writer, [&] {
          for (int64_t s = 0; s < 2; ++s) {
            Value max = final[s * perHead + valueTiles * 4 + rr];
            Value lse = fma(safeOffset(max), f32(attn.scale), logOf(sums[s]));
            Value head = add(mul(pair, 2), idx(s));
            Value index =
                add(mul(add(mul(batch, plan.queryHeads), head), seqQ), row);
            memref::StoreOp::create(b, loc, lse, lseOut, ValueRange{index});
          }
        });
      }
      ifThen(valid, [&] {
        Value outBase = mul(pairRow, plan.valueDim);
        Value colLane = mul(rem(lane, 4), 2);
        for (int64_t t = 0; t < valueTiles; ++t) {
          Value at = add(add(outBase, colLane), t * 8);
          SmallVector<Value> vals;
          for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e)
            vals.push_back(arith::TruncFOp::create(
                b, loc, plan.elementType,
                fsub(fmul(final[t * 4 + e], inverse[0]),
                     fmul(final[perHead + t * 4 + e], scale1))));
          Value pairValue =
              vector::FromElementsOp::create(b, loc, outPairType, vals);
          vector::StoreOp::create(b, loc, pairValue, out, ValueRange{at},
                                  /*nontemporal=*/false, alignment);
          // out_odd: the second head's normalised output, A_{2h+1}.
          if (outOdd) {
            SmallVector<Value> odd;
            for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e)
              odd.push_back(arith::TruncFOp::create(
                  b, loc, plan.elementType,
                  fmul(final[perHead + t * 4 + e], inverse[1])));
            vector::StoreOp::create(
                b, loc,
                vector::FromElementsOp::create(b, loc, outPairType, odd),
                outOdd, ValueRange{at}, /*nontemporal=*/false, alignment);
          }
        }
      });
    }
  };

  // Row blocks: the CTA's pipeline keeps stages - 1 blocks in flight; Q
  // joins the first block's group.
  for (int64_t p = 0; p + 1 < stages; ++p) {
    Value key0 = add(lo, p * blockK);
    ifThen(cmp(arith::CmpIPredicate::slt, key0, hi),
           [&] { loadKeyBlock(key0, {idx(p)}, tid, plan.threads()); });
    NVVM::CpAsyncCommitGroupOp::create(b, loc);
  }
  auto loop = scf::ForOp::create(
      b, loc, lo, hi, idx(blockK), init,
      [&](OpBuilder &, Location, Value key0, ValueRange carried) {
        Value j = div(sub(key0, lo), blockK);
        Value next = add(key0, (stages - 1) * blockK);
        ifThen(cmp(arith::CmpIPredicate::slt, next, hi), [&] {
          loadKeyBlock(next, {rem(add(j, stages - 1), stages)}, tid,
                       plan.threads());
        });
        NVVM::CpAsyncCommitGroupOp::create(b, loc);
        NVVM::CpAsyncWaitGroupOp::create(b, loc, stages - 1);
        gpu::BarrierOp::create(b, loc);
        std::array<HeadState, 2> heads = unpackState(carried);
        attendBlock({rem(j, stages)}, key0, blockNeedsMask(key0), heads);
        // The stage read here is refilled by a later iteration.
        gpu::BarrierOp::create(b, loc);
        scf::YieldOp::create(b, loc, packState(heads));
      });
  // No copy may be in flight when the CTA exits (blocks whose rows see no
  // key skip the loop, and with it the wait for Q).
  NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
  // At D = 64 the epilogue takes one 4-byte store per column pair where out
  // (and out_odd) start 4-byte aligned, as the runtime's and torch's
  // allocations do (a uniform branch on the buffers' addresses, so the row
  // sums' quad shuffles inside either side see every lane), else the
  // 2-byte stores. Measured on the H200 (backward run 63): 1.019x at 4 x
  // 4096 causal, D = 64; at D = 128 the same epilogue ran 1.025x at 8 x
  // 2048 causal but 0.982x at 1 x 16384 causal and 0.956x unmasked (its
  // key loop, not its stores, got slower), so D = 128 keeps the 2-byte
  // stores.
  if (plan.headDim == 64) {
    Value storesAligned = startsAligned({out, outOdd}, 4);
    scf::IfOp::create(
        b, loc, storesAligned,
        [&](OpBuilder &, Location) {
          emitEpilogue(loop.getResults(), llvm::Align(4));
          scf::YieldOp::create(b, loc);
        },
        [&](OpBuilder &, Location) {
          emitEpilogue(loop.getResults(), llvm::MaybeAlign());
          scf::YieldOp::create(b, loc);
        });
  } else {
    emitEpilogue(loop.getResults(), llvm::MaybeAlign());
  }
  gpu::ReturnOp::create(b, loc);
}
