//===- MmaSyncBackward.cpp - mma.sync strategy: the backward kernels ------===//
//
// The backward of diffattn.v2 (diffattn.v2_backward) with the portable
// strategy: FlashAttention-2's backward (Dao 2023, Algorithm 2) with the
// differential epilogue's chain rule. By default (the strategy option
// deterministic = true) three kernels launched in order on one stream, none
// with atomics (the gradients are deterministic); deterministic = false on
// sm_90 and later replaces kernels 2 and 3 by one dk/dv kernel that also
// adds dq to an f32 accumulator (MmaSyncBackwardWide.cpp, in
// FlashAttention-2's warp layout; MmaSyncBackwardDq.cpp) and a conversion
// kernel after it (with the forward's out_odd, also a zeroing kernel before
// the statistics kernel, buildDqZeroKernel):
//
// 1. `_stats`, a CTA per block of 64 group rows (as the forward's row
//    blocks: a row is a (pair, query row) couple): walks the row's key
//    blocks once for r = rowsum(P_{2h+1} o G), G = dout V^T, then writes
//    the row's record (kStatWidth f32) to the workspace: D_{2h} =
//    rowsum(dout o out) + sigmoid(lam) r, D_{2h+1} = -sigmoid(lam) r,
//    sigmoid(lam) and both heads' -lse log2 e; and dlam = -sigmoid(lam)
//    sigmoid(-lam) r.
// 2. `_dq`, the same rows and key blocks: P_j = exp(scale S_j - lse_j)
//    recomputed, dS_{2h} = P_{2h} o (G - D_{2h}), dS_{2h+1} = P_{2h+1} o
//    (-sigmoid(lam) G - D_{2h+1}), dq_j = scale * dS_j K accumulated in
//    registers over the keys (dS_j is the A operand straight from the
//    accumulators, as P is in the forward's P V).
// 3. `_dkdv`, a CTA per block of 64 keys of a KV head: walks the query
//    blocks (32 rows) of every pair of the KV group that see its keys, with
//    the transposed products (S^T = K Q_j^T, G^T = V dout^T, each warp
//    holding 16 keys as rows), dv += (P_{2h} - sigmoid(lam) P_{2h+1})^T dout
//    and dk += scale * sum_j dS_j^T q_j in registers; each written once.
//
// Since dA_{2h+1} = -sigmoid(lam) dA_{2h}, one G serves both heads of a
// pair, and dv needs one product per pair. The fragment layouts are the
// forward's (MmaSyncBuilder.h, PTX ISA "Matrix Fragments for
// mma.m16n8k16"); all tiles use the padded shared-memory layout.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"
#include "WgmmaBuilder.h"

#include "diffattn/Conversion/DiffAttnToGPU/KernelSignature.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

void BackwardBuilder::buildRowKernel(gpu::GPUFuncOp func, bool stats) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  BackwardArgs args = readArgs(entry);
  int64_t blockQ = plan.blockQ, blockK = plan.blockK;
  int64_t d = plan.headDim, dv = plan.valueDim;
  Value seqQ = args.seqQ, seqK = args.seqK;

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  warp = div(tid, 32);
  // The grid is (row blocks, KV heads, B). With a causal-like mask later
  // rows see more keys: the CTAs take the row blocks from the last to the
  // first, row block by row block across heads and sequences
  // (blockIdsXSlowest), so that the last wave holds the shortest.
  bool remap = attn.isCausalLike();
  std::array<Value, 3> ids = blockIds(remap);
  Value qBlock = ids[0], kvHead = ids[1], batch = ids[2];
  Value groupRows = mul(seqQ, plan.pairsPerGroup());
  if (remap)
    qBlock = sub(sub(div(add(groupRows, blockQ - 1), blockQ), idx(1)), qBlock);
  Value row0 = mul(qBlock, blockQ);
  Value rowsValid = minI(idx(blockQ), sub(groupRows, row0));
  qRow0 = mul(warp, 16);
  Value firstPair = mul(kvHead, plan.pairsPerGroup());
  auto pairOf = [&](Value r) {
    return add(firstPair, arith::DivUIOp::create(b, loc, r, seqQ));
  };
  auto queryRowOf = [&](Value r) {
    return arith::RemUIOp::create(b, loc, r, seqQ).getResult();
  };
  Value qRowBase = mul(batch, seqQ), kRowBase = mul(batch, seqK);

  setKeyLength(args, batch, tid);

  // Shared memory: Q of both heads (of the odd head only in the statistics
  // kernel), dout, then the K and V stages.
  Type elem = plan.elementType;
  int64_t pad = plan.rowPad();
  int64_t qHeads = stats ? 1 : 2;
  int64_t qBytes = qHeads * blockQ * (d + pad) * 2;
  int64_t doBytes = blockQ * (dv + pad) * 2;
  int64_t kBytes = plan.stages * blockK * (d + pad) * 2;
  sQ = sharedView(0, {qHeads, blockQ, d + pad}, elem);
  Value sDO = sharedView(qBytes, {blockQ, dv + pad}, elem);
  sK = sharedView(qBytes + doBytes, {plan.stages, blockK, d + pad}, elem);
  sV = sharedView(qBytes + doBytes + kBytes, {plan.stages, blockK, dv + pad},
                  elem);
  for (int64_t s = 2 - qHeads; s < 2; ++s)
    copyTileAsync(
        args.q,
        [&](Value r) {
          Value global = add(row0, r);
          Value head = add(mul(pairOf(global), 2), idx(s));
          return mul(
              add(mul(add(qRowBase, queryRowOf(global)), plan.queryHeads),
                  head),
              d);
        },
        rowsValid, sQ,
        [&](Value row, Value col) {
          return tileIndex(idx(s - (2 - qHeads)), row, col);
        },
        blockQ, d, tid, plan.threads());
  copyTileAsync(
      args.dout,
      [&](Value r) {
        Value global = add(row0, r);
        return mul(add(mul(add(qRowBase, queryRowOf(global)), plan.pairs),
                       pairOf(global)),
                   dv);
      },
      rowsValid, sDO,
      [&](Value row, Value col) { return tileIndex({}, row, col); }, blockQ, dv,
      tid, plan.threads());
  NVVM::CpAsyncCommitGroupOp::create(b, loc);
  if (stats && reduceDq)
    zeroDqAccumulator(*this, args.workspace,
                      dqAccumulatorOffset(*this, seqQ, plan.pairs), batch, row0,
                      rowsValid, pairOf, queryRowOf, seqQ, tid, plan.threads(),
                      plan.pairs, plan.headDim, dqChunkRows);

  // The thread's two rows: group row, validity, query row, pair, and their
  // row statistics (from lse and lam in the statistics kernel, from its
  // workspace records in the dq kernel).
  std::array<Value, 2> valid, pairRow, statBase, sig, lamValue;
  std::array<std::array<Value, 2>, 2> shift; // [head][rr]
  // The dq kernel's odd-head records negated (ColumnRecords says why).
  std::array<Value, 2> deltaEven, negOdd, negSig;
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value global = add(add(row0, qRow0), add(div(lane, 4), rr * 8));
    valid[rr] = cmp(arith::CmpIPredicate::slt, global, groupRows);
    threadRow[rr] = queryRowOf(global);
    Value pair = pairOf(global);
    pairRow[rr] = select(
        valid[rr], epilogue.pairRowIndex(add(qRowBase, threadRow[rr]), pair),
        idx(0));
    statBase[rr] =
        select(valid[rr],
               recordIndex(*this, batch, pair, threadRow[rr], seqQ, plan.pairs),
               idx(0));
    auto stat = [&](int64_t field) {
      return loadF32(args.workspace, add(statBase[rr], field));
    };
    if (!stats) {
      deltaEven[rr] = stat(kDeltaEven);
      negOdd[rr] = fneg(stat(kDeltaOdd));
      sig[rr] = stat(kSigmoid);
      negSig[rr] = fneg(sig[rr]);
      shift[0][rr] = stat(kShiftEven);
      shift[1][rr] = stat(kShiftOdd);
      continue;
    }
    for (int64_t j = 0; j < 2; ++j) {
      Value head = add(mul(pair, 2), idx(j));
      Value at = select(
          valid[rr],
          lseIndex(*this, batch, head, threadRow[rr], seqQ, plan.queryHeads),
          idx(0));
      shift[j][rr] = negLseShift(loadF32(args.lse, at));
    }
    lamValue[rr] = loadF32(args.lam, pairRow[rr]);
    sig[rr] = epilogue.sigmoid(lamValue[rr]);
  }
  setRowRange(row0, rowsValid, seqQ);
  Value lo, hi;
  std::tie(lo, hi) =
      buildVisibleKeyBounds(b, loc, attn, minRow, maxRow, offset, keyLen);
  lo = alignDownToBlock(b, loc, lo, blockK);
  Value count = select(cmp(arith::CmpIPredicate::slt, lo, hi),
                       div(add(sub(hi, lo), blockK - 1), blockK), idx(0));
  auto keyOf = [&](Value j) { return add(lo, mul(j, blockK)); };
  auto load = [&](Value j, Value stage) {
    Value key0 = keyOf(j);
    Value validKeys = minI(idx(blockK), sub(keyLen, key0));
    Value rowBase = add(kRowBase, key0);
    copyRowsAsync(args.k,
                  mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.headDim),
                  plan.kvHeads * d, validKeys, sK, {stage}, blockK, d, tid,
                  plan.threads());
    copyRowsAsync(args.v, mul(add(mul(rowBase, plan.kvHeads), kvHead), dv),
                  plan.kvHeads * dv, validKeys, sV, {stage}, blockK, dv, tid,
                  plan.threads());
  };
  int64_t keyTiles = blockK / 8, qTiles = d / 8;
  SmallVector<Value> init;
  if (stats)
    init = {f32(0.0f), f32(0.0f)};
  else
    init.assign(2 * qTiles * 4, f32(0.0f));

  // The statistics kernel's A fragments (Q of the odd head, dout), loaded
  // once; empty: the products load them per block.
  SmallVector<SmallVector<SmallVector<Value>>> oddFrags, doFrags;
  SmallVector<Value> final = pipelined(
      count, init, load,
      [&](Value j, Value stage, ValueRange carried) -> SmallVector<Value> {
        Value key0 = keyOf(j);
        // S_j = Q_j K^T (each K fragment feeds both heads), G = dout V^T;
        // the statistics kernel's A fragments are in registers.
        std::array<SmallVector<Acc>, 2> s;
        SmallVector<TileRef> qs;
        for (int64_t h = 0; h < qHeads; ++h)
          qs.push_back({sQ, {idx(h)}});
        auto sk = productsABt(qs, qRow0, {{sK, {stage}}}, blockK, d, oddFrags);
        for (int64_t h = 0; h < qHeads; ++h)
          s[h + 2 - qHeads] = sk[h][0];
        SmallVector<Acc> g = productsABt({{sDO, {}}}, qRow0, {{sV, {stage}}},
                                         blockK, dv, doFrags)[0][0];
        Value colLane = add(key0, mul(rem(lane, 4), 2));
        auto visible = [&](int64_t i) {
          return buildIsVisible(b, loc, attn, threadRow[(i % 4) / 2],
                                add(colLane, (i / 4) * 8 + i % 2), offset,
                                keyLen);
        };
        Value needsMask = buildBlockNeedsMask(b, loc, attn, key0, blockK,
                                              minRow, maxRow, offset, keyLen);
        SmallVector<int64_t> heads =
            stats ? SmallVector<int64_t>{1} : SmallVector<int64_t>{0, 1};
        std::array<SmallVector<Acc>, 2> p = probabilities(
            heads, s,
            [&](int64_t h, int64_t i) { return shift[h][(i % 4) / 2]; },
            needsMask, visible);
        if (stats) {
          SmallVector<Value> r(carried);
          for (int64_t nt = 0; nt < keyTiles; ++nt)
            for (int64_t e = 0; e < 4; ++e)
              r[e / 2] = fma(p[1][nt][e], g[nt][e], r[e / 2]);
          return r;
        }
        std::array<SmallVector<Acc>, 2> ds = {SmallVector<Acc>(keyTiles),
                                              SmallVector<Acc>(keyTiles)};
        for (int64_t nt = 0; nt < keyTiles; ++nt)
          for (int64_t e = 0; e < 4; ++e) {
            int64_t rr = e / 2;
            ds[0][nt][e] = fmul(p[0][nt][e], fsub(g[nt][e], deltaEven[rr]));
            ds[1][nt][e] =
                fmul(p[1][nt][e], fma(negSig[rr], g[nt][e], negOdd[rr]));
          }
        // dq_j += dS_j K, each K fragment feeding both heads.
        std::array<SmallVector<Acc>, 2> acc;
        for (int64_t h = 0; h < 2; ++h) {
          acc[h].resize(qTiles);
          for (int64_t t = 0; t < qTiles; ++t)
            for (int64_t e = 0; e < 4; ++e)
              acc[h][t][e] = carried[(h * qTiles + t) * 4 + e];
        }
        productsPB({ds[0], ds[1]}, {sK, {stage}}, {&acc[0], &acc[1]});
        SmallVector<Value> results;
        for (int64_t h = 0; h < 2; ++h)
          for (const Acc &t : acc[h])
            results.append(t.begin(), t.end());
        return results;
      },
      [&] {
        if (!stats)
          return;
        // Q of the odd head and dout have landed (only the first blocks'
        // copies may be in flight): their A fragments stay in registers.
        NVVM::CpAsyncWaitGroupOp::create(b, loc, plan.stages - 1);
        gpu::BarrierOp::create(b, loc);
        oddFrags = {loadAFragments({sQ, {idx(0)}}, qRow0, d)};
        doFrags = {loadAFragments({sDO, {}}, qRow0, dv)};
      });

  Value colLane = mul(rem(lane, 4), 2);
  if (stats) {
    for (int64_t rr = 0; rr < 2; ++rr)
      writeRowStatistics(*this, epilogue, args,
                         {quadSum(final[rr]),
                          outputRowDot(*this, args, pairRow[rr], colLane, dv),
                          valid[rr], statBase[rr], pairRow[rr], lamValue[rr],
                          sig[rr], shift[0][rr], shift[1][rr], lane});
    gpu::ReturnOp::create(b, loc);
    return;
  }
  // dq_j = scale * dS_j K of the thread's rows, columns 2 (lane % 4) + {0,
  // 1} of each 8-column tile.
  Value scale = f32(attn.scale);
  for (int64_t rr = 0; rr < 2; ++rr) {
    ifThen(valid[rr], [&] {
      Value global = add(add(row0, qRow0), add(div(lane, 4), rr * 8));
      Value rowIndex = add(qRowBase, threadRow[rr]);
      for (int64_t h = 0; h < 2; ++h) {
        Value head = add(mul(pairOf(global), 2), idx(h));
        Value base = mul(add(mul(rowIndex, plan.queryHeads), head), d);
        for (int64_t t = 0; t < qTiles; ++t) {
          int64_t at = (h * qTiles + t) * 4 + 2 * rr;
          storePair(args.dq, fmul(final[at], scale), fmul(final[at + 1], scale),
                    add(add(base, colLane), t * 8));
        }
      }
    });
  }
  gpu::ReturnOp::create(b, loc);
}

BackwardBuilder::KeyBlockWalk BackwardBuilder::walkKeyBlock(
    const BackwardArgs &args, Value batch, Value kvHead, Value key0, Value tid,
    int64_t blockKeys, int64_t blockQ, Value sDO, Value sStat) {
  const AttentionConfig &attn = plan.attn;
  int64_t d = plan.headDim, dv = plan.valueDim;
  Value seqQ = args.seqQ;
  Value firstPair = mul(kvHead, plan.pairsPerGroup());
  Value qRowBase = mul(batch, seqQ), kRowBase = mul(batch, args.seqK);
  Value validKeys = minI(idx(blockKeys), sub(keyLen, key0));
  Value kvRow = add(kRowBase, key0);
  copyRowsAsync(args.k, mul(add(mul(kvRow, plan.kvHeads), kvHead), d),
                plan.kvHeads * d, validKeys, sK, {}, blockKeys, d, tid,
                plan.threads());
  copyRowsAsync(args.v, mul(add(mul(kvRow, plan.kvHeads), kvHead), dv),
                plan.kvHeads * dv, validKeys, sV, {}, blockKeys, dv, tid,
                plan.threads());
  NVVM::CpAsyncCommitGroupOp::create(b, loc);

  // The query rows that may see a key of [key0, key0 + blockKeys): i >=
  // key0 - offset - right with a right bound, i <= key0 + blockKeys - 1 -
  // offset + left with a left bound (KeyRange.h's rule, inverted), none
  // past kv_len.
  auto [qlo, queryBlocks] = keyBlockQueries(*this, attn, key0, blockKeys,
                                            blockQ, offset, keyLen, seqQ);
  KeyBlockWalk walk;
  walk.count = mul(queryBlocks, plan.pairsPerGroup());
  walk.blockOf = [this, firstPair, qlo = qlo, queryBlocks = queryBlocks,
                  blockQ](Value j) {
    Value pair = add(firstPair, arith::DivUIOp::create(b, loc, j, queryBlocks));
    Value q0 =
        add(qlo, mul(arith::RemUIOp::create(b, loc, j, queryBlocks).getResult(),
                     blockQ));
    return std::make_pair(pair, q0);
  };
  walk.load = [this, args, batch, tid, qRowBase, sDO, sStat, blockQ, d, dv,
               blockOf = walk.blockOf](Value j, Value stage) {
    auto [pair, q0] = blockOf(j);
    Value rows = minI(idx(blockQ), sub(args.seqQ, q0));
    Value rowIndex = add(qRowBase, q0);
    for (int64_t s = 0; s < 2; ++s)
      copyRowsAsync(
          args.q,
          mul(add(mul(rowIndex, plan.queryHeads), add(mul(pair, 2), idx(s))),
              d),
          plan.queryHeads * d, rows, sQ, {stage, idx(s)}, blockQ, d, tid,
          plan.threads());
    copyRowsAsync(args.dout, mul(add(mul(rowIndex, plan.pairs), pair), dv),
                  plan.pairs * dv, rows, sDO, {stage}, blockQ, dv, tid,
                  plan.threads());
    copyRecordsAsync(*this, args, sStat, stage, batch, pair, q0, rows, tid,
                     blockQ, plan.pairs);
  };
  return walk;
}

void BackwardBuilder::buildKeyKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  BackwardArgs args = readArgs(entry);
  int64_t blockKeys = 16 * plan.warps, blockQ = kQueryBlock;
  int64_t d = plan.headDim, dv = plan.valueDim;
  Value seqQ = args.seqQ, seqK = args.seqK;

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  warp = div(tid, 32);
  // The grid is (key blocks, KV heads, B); with a causal-like mask the
  // first key blocks see the most query rows, taken first across heads and
  // sequences (blockIdsXSlowest).
  std::array<Value, 3> ids = blockIds(attn.isCausalLike());
  Value keyBlock = ids[0], kvHead = ids[1], batch = ids[2];
  Value key0 = mul(keyBlock, blockKeys);
  Value kRow0 = mul(warp, 16);
  Value kRowBase = mul(batch, seqK);
  setKeyLength(args, batch, tid);

  // Shared memory: the CTA's K and V rows, then the stages of (q of both
  // heads, dout) of a query block.
  Type elem = plan.elementType;
  int64_t pad = plan.rowPad();
  int64_t kBytes = blockKeys * (d + pad) * 2;
  int64_t vBytes = blockKeys * (dv + pad) * 2;
  int64_t qBytes = plan.stages * 2 * blockQ * (d + pad) * 2;
  sK = sharedView(0, {blockKeys, d + pad}, elem);
  sV = sharedView(kBytes, {blockKeys, dv + pad}, elem);
  sQ = sharedView(kBytes + vBytes, {plan.stages, 2, blockQ, d + pad}, elem);
  int64_t doBytes = plan.stages * blockQ * (dv + pad) * 2;
  Value sDO = sharedView(kBytes + vBytes + qBytes,
                         {plan.stages, blockQ, dv + pad}, elem);
  // The query rows' workspace records (kStatWidth f32 each).
  Value sStat = sharedView(kBytes + vBytes + qBytes + doBytes,
                           {plan.stages, blockQ, kStatWidth}, b.getF32Type());
  auto [count, blockOf, load] = walkKeyBlock(args, batch, kvHead, key0, tid,
                                             blockKeys, blockQ, sDO, sStat);

  int64_t qTiles = blockQ / 8, dTiles = d / 8, vTiles = dv / 8;
  std::array<Value, 2> keyRow;
  for (int64_t rr = 0; rr < 2; ++rr)
    keyRow[rr] = add(add(key0, kRow0), add(div(lane, 4), rr * 8));
  SmallVector<Value> init((dTiles + vTiles) * 4, f32(0.0f));
  SmallVector<Value> final = pipelined(
      count, init, load,
      [&](Value j, Value stage, ValueRange carried) -> SmallVector<Value> {
        auto [pair, q0] = blockOf(j);
        // S_j^T = K Q_j^T (each K fragment feeds both heads), G^T = V
        // dout^T.
        auto sk = productsABt({{sK, {}}}, kRow0,
                              {{sQ, {stage, idx(0)}}, {sQ, {stage, idx(1)}}},
                              blockQ, d);
        std::array<SmallVector<Acc>, 2> s = {sk[0][0], sk[0][1]};
        SmallVector<Acc> g =
            productsABt({{sV, {}}}, kRow0, {{sDO, {stage}}}, blockQ, dv)[0][0];
        // The records of the thread's columns (query rows).
        Value colLane = mul(rem(lane, 4), 2);
        ColumnRecords records =
            loadColumnRecords(*this, sStat, stage, colLane, qTiles);
        ArrayRef<Value> colEven = records.deltaEven;
        // The odd head's records negated, so that dS_2h+1 = P (-sigmoid G -
        // D_2h+1) and P_c = P_2h - sigmoid P_2h+1 are one FFMA each (ptxas
        // folds the negation into the FFMA's operand; `0 - x` and a separate
        // product cost 64 instructions per block and thread in the wide
        // kernel, H200 backward run 75).
        SmallVector<Value> negSig, negOdd;
        for (auto [sig, odd] : llvm::zip(records.sigmoid, records.deltaOdd)) {
          negSig.push_back(fneg(sig));
          negOdd.push_back(fneg(odd));
        }
        // Masks only where the block straddles a bound (or Sq).
        Value needsMask = keyBlockNeedsMask(*this, attn, key0, blockKeys, q0,
                                            blockQ, seqQ, offset, keyLen);
        auto visible = [&](int64_t i) {
          return keyColumnVisible(*this, attn, q0, colLane, i, keyRow, seqQ,
                                  offset, keyLen);
        };
        std::array<SmallVector<Acc>, 2> p = probabilities(
            {0, 1}, s,
            [&](int64_t h, int64_t i) {
              return records.shift[h][(i / 4) * 2 + i % 2];
            },
            needsMask, visible);
        SmallVector<Acc> pv(qTiles), dsEven(qTiles), dsOdd(qTiles);
        for (int64_t nt = 0; nt < qTiles; ++nt)
          for (int64_t e = 0; e < 4; ++e) {
            int64_t c = nt * 2 + e % 2;
            Value pe = p[0][nt][e], po = p[1][nt][e];
            pv[nt][e] = fma(negSig[c], po, pe);
            dsEven[nt][e] = fmul(pe, fsub(g[nt][e], colEven[c]));
            dsOdd[nt][e] = fmul(po, fma(negSig[c], g[nt][e], negOdd[c]));
          }
        SmallVector<Acc> dk(dTiles), dvAcc(vTiles);
        for (int64_t t = 0; t < dTiles; ++t)
          for (int64_t e = 0; e < 4; ++e)
            dk[t][e] = carried[t * 4 + e];
        for (int64_t t = 0; t < vTiles; ++t)
          for (int64_t e = 0; e < 4; ++e)
            dvAcc[t][e] = carried[(dTiles + t) * 4 + e];
        productsPB({pv}, {sDO, {stage}}, {&dvAcc});
        productsPB({dsEven}, {sQ, {stage, idx(0)}}, {&dk});
        productsPB({dsOdd}, {sQ, {stage, idx(1)}}, {&dk});
        SmallVector<Value> results;
        for (const Acc &t : dk)
          results.append(t.begin(), t.end());
        for (const Acc &t : dvAcc)
          results.append(t.begin(), t.end());
        return results;
      });

  // dk = scale * sum_j dS_j^T q_j and dv of the thread's keys.
  writeKeyGradients(*this, args, final, keyRow, kRowBase, kvHead,
                    mul(rem(lane, 4), 2), plan);
  gpu::ReturnOp::create(b, loc);
}

LogicalResult
mlir::diffattn::emitMmaSyncBackward(RewriterBase &rewriter, func::FuncOp kernel,
                                    DictionaryAttr desc, Operation *op,
                                    const GPUChipInfo &chip, bool deterministic,
                                    bool wgmmaKernels, StringRef stacking) {
  MmaSyncPlan plan;
  plan.attn = AttentionConfig::get(op);
  plan.chip = &chip;
  plan.elementType = plan.attn.elementType;
  plan.headDim = plan.attn.headDim;
  plan.valueDim = plan.attn.valueDim;
  if (!plan.elementType.isF16() && !plan.elementType.isBF16())
    return op->emitOpError()
           << "element type " << plan.elementType
           << " is not supported by the GPU backward (expected f16 or bf16)";
  if ((plan.headDim != 64 && plan.headDim != 128) ||
      plan.valueDim != plan.headDim)
    return op->emitOpError()
           << "head dimensions D = " << plan.headDim
           << ", Dv = " << plan.valueDim
           << " are not supported by the GPU backward (expected D = Dv = 64 "
              "or 128)";
  // One tile configuration so far (4 warps; row kernels: 64 rows x 32
  // keys, two stages; dk/dv: 64 keys x 32 query rows): the forward's tile
  // options (block-k, warps, stages) do not apply to it (the pass
  // description in Passes.td says so).
  plan.warps = 4;
  plan.blockQ = 64;
  plan.blockK = 32;
  plan.stages = 2;
  plan.swizzle = false;
  plan.headsPerRow = 2;
  plan.pairs = plan.attn.numPairs;
  plan.queryHeads = 2 * plan.pairs;
  plan.kvHeads = plan.attn.numKeyHeads;
  plan.rowsPerQuery = plan.pairsPerGroup();
  plan.lamType = cast<ShapedType>(op->getOperand(3).getType()).getElementType();
  int64_t d = plan.headDim, dv = plan.valueDim, pad = plan.rowPad();
  auto rowShared = [&](int64_t qHeads) {
    return (qHeads * plan.blockQ * (d + pad) + plan.blockQ * (dv + pad) +
            plan.stages * plan.blockK * (d + dv + 2 * pad)) *
           2;
  };
  // The accumulating formulation needs the bulk reduction (sm_90 and
  // later); elsewhere the backward is the deterministic one. Its dk/dv
  // kernel (MmaSyncBackwardWide.cpp) has 8 warps and 128 keys, the
  // deterministic one 4 warps and 64.
  bool reduceDq = !deterministic && chip.bulkCopies;
  // The backward-stacking option shapes only the wgmma dk/dv kernel, but a
  // value it does not know is an error on every strategy.
  if (stacking != "auto" && stacking != "none" && stacking != "scores" &&
      stacking != "dq" && stacking != "both")
    return op->emitOpError() << "backward-stacking = '" << stacking
                             << "' is not one of auto, none, scores, dq, both";
  MmaSyncPlan keyPlan = plan;
  keyPlan.warps = reduceDq ? 8 : 4;
  int64_t blockKeys = reduceDq ? kWideKeys : 16 * keyPlan.warps;
  int64_t keyShared = (blockKeys * (d + dv + 2 * pad) +
                       plan.stages * kQueryBlock * (2 * d + dv + 3 * pad)) *
                          2 +
                      plan.stages * kQueryBlock * kStatWidth * 4;
  if (reduceDq)
    keyShared = wideKeySharedBytes(keyPlan);
  plan.sharedBytes = rowShared(2);
  keyPlan.sharedBytes = keyShared;
  // The wgmma kernels (sm_90a) serve both formulations: the accumulating
  // one replaces the dq kernel by products and vector reductions
  // (red.global.add.v4.f32) in the dk/dv kernel (WgmmaBackward.cpp).
  wgmma::WgmmaPlan wgmmaKeyPlan, wgmmaRowPlan, wgmmaStatsPlan;
  if (wgmmaKernels) {
    // sm_90a's row kernels: the portable ones' tiles of 64 group rows, two
    // warpgroups; dq: one per head of the pair, 64-key blocks; statistics:
    // 64-key blocks, 32 keys per warpgroup (99.5 KB of shared memory and
    // 79 registers at D = 128: two CTAs per SM; 128-key blocks took 161 KB
    // and were 1.03-1.05x slower for the whole backward at D = 128, level at
    // D = 64, H200 backward run 16).
    static_cast<TileConfig &>(wgmmaRowPlan) = plan;
    wgmmaRowPlan.warps = 8;
    wgmmaRowPlan.blockK = 64;
    wgmmaRowPlan.stages = 2;
    wgmmaRowPlan.sharedBytes =
        wgmma::backwardRowSharedBytes(wgmmaRowPlan, /*stats=*/false);
    wgmmaStatsPlan = wgmmaRowPlan;
    wgmmaStatsPlan.sharedBytes =
        wgmma::backwardRowSharedBytes(wgmmaStatsPlan, /*stats=*/true);
    // dk/dv: 128 keys (two warpgroups of 64) per CTA, query blocks of 32
    // rows at D = 128 and 64 at D = 64 (the registers: dk and dv of 64
    // keys, and S^T of both heads and G^T of a block, per thread).
    static_cast<TileConfig &>(wgmmaKeyPlan) = plan;
    wgmmaKeyPlan.warps = 8;
    wgmmaKeyPlan.blockK = 128;
    wgmmaKeyPlan.blockQ = d == 128 ? 32 : 64;
    wgmmaKeyPlan.stages = 2;
    // Stacked products (the backward-stacking option): by default the
    // scores and dq at D = 128 and none at D = 64, as measured (H200,
    // docs/performance.md: backward run 33, the stacked scores 1.02-1.05x
    // the per-head products at D = 128, all within 1% at D = 64; backward
    // runs 36-37, the stacked dq's dk/dv kernel 1.05x the per-head one, a
    // gain its conversion kernel's 2-byte stores had hidden).
    if (stacking == "auto")
      stacking = d == 128 ? "both" : "none";
    bool dqStacking = stacking == "dq" || stacking == "both";
    wgmmaKeyPlan.stackScores = stacking == "scores" || stacking == "both";
    // The deterministic dk/dv kernel has no dq product to stack (there dq
    // stacks nothing and both the scores alone); stacked dq at D = 64 is
    // an error in either formulation, as no kernel could honour it.
    wgmmaKeyPlan.stackDq = reduceDq && dqStacking;
    if (dqStacking && wgmmaKeyPlan.blockQ * 2 != wgmma::kWarpgroupRows)
      return op->emitOpError()
             << "backward-stacking = '" << stacking
             << "' stacks dq, which needs D = 128 (32-row query blocks: "
                "both heads' rows fill one 64-row wgmma tile); D = "
             << d << " takes 'scores' or 'none'";
    wgmmaKeyPlan.sharedBytes =
        wgmma::backwardKeySharedBytes(wgmmaKeyPlan, reduceDq);
    keyPlan.warps = wgmmaKeyPlan.warps;
    keyPlan.sharedBytes = keyShared = wgmmaKeyPlan.sharedBytes;
    blockKeys = wgmmaKeyPlan.blockK;
  }
  if (failed(checkChipLimits(op, plan, "the backward's tiles")) ||
      failed(checkChipLimits(op, keyPlan, "the backward's tiles")) ||
      (wgmmaKernels &&
       (failed(checkChipLimits(op, wgmmaRowPlan, "the backward's tiles")) ||
        failed(checkChipLimits(op, wgmmaStatsPlan, "the backward's tiles")))))
    return failure();

  Location loc = kernel.getLoc();
  OpBuilder::InsertionGuard guard(rewriter);
  createKernelModule(rewriter, kernel);
  KernelSignature sig = getKernelSignature(rewriter, desc, /*splitKV=*/false);
  SmallVector<Type> argTypes(sig.argTypes);
  argTypes.insert(argTypes.begin() + sig.buffers.size(), sig.workspaceType);
  std::string name = kernel.getName().str();
  // With kv_len the statistics kernel is the portable one: it checks that
  // kv_len[b] lies in [0, Sk] (a device-side assertion, which in a wgmma
  // kernel would serialise its products); the wgmma kernels clamp it.
  // With out_odd the statistics are two dot products of saved rows per
  // (pair, query row): one bandwidth-bound kernel for both strategies
  // (MmaSyncBackwardStats.cpp).
  bool outputStats = plan.attn.hasOutOdd;
  bool wgmmaStats = wgmmaKernels && !plan.attn.hasKvLen && !outputStats;
  // The wgmma kernels' accumulator: chunks of the dk/dv kernel's query
  // blocks in its fragment order (WgmmaBackward.cpp).
  int64_t dqChunkRows = wgmmaKernels && reduceDq ? wgmmaKeyPlan.blockQ : 0;
  auto stats = createKernelFunc(rewriter, loc, name + "_stats", argTypes,
                                outputStats  ? kOutputStatsThreads
                                : wgmmaStats ? wgmmaStatsPlan.threads()
                                             : plan.threads());
  // With out_odd the accumulating formulation zeroes the dq accumulator in
  // a kernel of its own, launched first: the statistics kernel then only
  // reads. (The other statistics kernels recompute scores; their zero
  // stores overlap that work.)
  gpu::GPUFuncOp zero;
  if (outputStats) {
    BackwardBuilder builder(rewriter, loc, plan);
    builder.buildOutputStatisticsKernel(stats);
    if (reduceDq) {
      rewriter.setInsertionPointAfter(stats);
      zero = createKernelFunc(rewriter, loc, name + "_dq_zero", argTypes,
                              kDqZeroThreads);
      BackwardBuilder zeroBuilder(rewriter, loc, plan);
      zeroBuilder.dqChunkRows = dqChunkRows;
      zeroBuilder.buildDqZeroKernel(zero);
    }
  } else if (wgmmaStats) {
    wgmma::buildBackwardRowKernel(rewriter, loc, stats, wgmmaStatsPlan,
                                  /*stats=*/true, dqChunkRows);
  } else {
    BackwardBuilder builder(rewriter, loc, plan);
    builder.reduceDq = reduceDq;
    builder.dqChunkRows = dqChunkRows;
    builder.buildRowKernel(stats, /*stats=*/true);
  }
  rewriter.setInsertionPointAfter(zero ? zero : stats);
  gpu::GPUFuncOp dq;
  if (!reduceDq) {
    int64_t dqThreads = wgmmaKernels ? wgmmaRowPlan.threads() : plan.threads();
    dq = createKernelFunc(rewriter, loc, name + "_dq", argTypes, dqThreads);
    if (wgmmaKernels)
      wgmma::buildBackwardRowKernel(rewriter, loc, dq, wgmmaRowPlan,
                                    /*stats=*/false);
    else
      BackwardBuilder(rewriter, loc, plan).buildRowKernel(dq, /*stats=*/false);
    rewriter.setInsertionPointAfter(dq);
  }
  auto dkdv = createKernelFunc(rewriter, loc, name + "_dkdv", argTypes,
                               keyPlan.threads());
  if (wgmmaKernels) {
    wgmma::buildBackwardKeyKernel(rewriter, loc, dkdv, wgmmaKeyPlan, reduceDq);
  } else {
    BackwardBuilder builder(rewriter, loc, keyPlan);
    builder.reduceDq = reduceDq;
    if (reduceDq)
      builder.buildWideKeyKernel(dkdv);
    else
      builder.buildKeyKernel(dkdv);
  }
  if (reduceDq) {
    rewriter.setInsertionPointAfter(dkdv);
    dq = createKernelFunc(rewriter, loc, name + "_dq_convert", argTypes,
                          dqChunkRows ? 2 * wgmma::kWarpgroupThreads
                                      : plan.threads());
    if (dqChunkRows)
      wgmma::buildBackwardDqConvertKernel(rewriter, loc, dq, wgmmaKeyPlan);
    else
      BackwardBuilder(rewriter, loc, plan).buildDqConvertKernel(dq);
  }

  // The launch rule: three stages (four with the dq zeroing) sharing the
  // parameters (the buffers, the workspace, B, Sq, Sk) and the workspace of one
  // record per (b, pair, i), B x Sq x H x kStatWidth f32, then, in the
  // accumulating formulation, the dq accumulator, B x H x Sq x 2 D f32
  // (MmaSyncBackwardDq.cpp; the wgmma kernels' chunks need Sq rounded up to
  // their query blocks, which the workspace's rows are then).
  Builder &b = rewriter;
  SmallVector<StringRef> buffers(sig.buffers);
  buffers.push_back("workspace");
  ArrayAttr params =
      b.getArrayAttr(launchParams(b, buffers, {"B", "Sq", "Sk"}));
  Attribute kvHeads = b.getI64IntegerAttr(plan.kvHeads);
  Attribute batches = ceilDivRule(b, "B", 1, 1);
  // A stage's grid is (x, y, B): y the KV heads unless given.
  auto stage = [&](StringRef function, Attribute x, int64_t shared,
                   int64_t threads, Attribute y = Attribute()) {
    return b.getDictionaryAttr(
        {b.getNamedAttr("function", b.getStringAttr(function)),
         b.getNamedAttr("grid", b.getArrayAttr({x, y ? y : kvHeads, batches})),
         b.getNamedAttr("block", b.getI64ArrayAttr({threads, 1, 1})),
         b.getNamedAttr("dynamic_shared_memory", b.getI64IntegerAttr(shared)),
         b.getNamedAttr("params", params)});
  };
  Attribute rowBlocks = ceilDivRule(b, "Sq", plan.blockQ, plan.rowsPerQuery);
  Attribute keyBlocks = ceilDivRule(b, "Sk", blockKeys, 1);
  // The statistics kernel with out_odd: a CTA per kOutputStatsRows of a
  // sequence's Sq x H (query row, pair) rows (buildOutputStatisticsKernel).
  Attribute statsStage =
      outputStats ? stage(stats.getName(),
                          ceilDivRule(b, "Sq", kOutputStatsRows, plan.pairs), 0,
                          kOutputStatsThreads, b.getI64IntegerAttr(1))
      : wgmmaStats
          ? stage(stats.getName(), rowBlocks, wgmmaStatsPlan.sharedBytes,
                  wgmmaStatsPlan.threads())
          : stage(stats.getName(), rowBlocks, rowShared(1), plan.threads());
  Attribute keyStage =
      stage(dkdv.getName(), keyBlocks, keyShared, keyPlan.threads());
  SmallVector<Attribute> stages =
      !reduceDq
          ? SmallVector<Attribute>{statsStage,
                                   wgmmaKernels
                                       ? stage(dq.getName(), rowBlocks,
                                               wgmmaRowPlan.sharedBytes,
                                               wgmmaRowPlan.threads())
                                       : stage(dq.getName(), rowBlocks,
                                               rowShared(2), plan.threads()),
                                   keyStage}
          : SmallVector<Attribute>{
                statsStage, keyStage,
                dqChunkRows
                    ? stage(dq.getName(),
                            b.getDictionaryAttr(b.getNamedAttr(
                                "product",
                                b.getArrayAttr(
                                    {ceilDivRule(b, "Sq", dqChunkRows, 1),
                                     b.getI64IntegerAttr(
                                         plan.pairsPerGroup())}))),
                            wgmma::backwardDqConvertSharedBytes(wgmmaKeyPlan),
                            2 * wgmma::kWarpgroupThreads)
                    : stage(dq.getName(), rowBlocks, 0, plan.threads())};
  // The zeroing stage (with out_odd) goes first: x spans a KV group's
  // accumulator run in dqZeroSpanRows rows per CTA (buildDqZeroKernel).
  if (zero) {
    int64_t spanRows = dqZeroSpanRows(dqChunkRows);
    Attribute spans =
        dqChunkRows ? b.getDictionaryAttr(b.getNamedAttr(
                          "product",
                          b.getArrayAttr(
                              {ceilDivRule(b, "Sq", dqChunkRows, 1),
                               b.getI64IntegerAttr(plan.pairsPerGroup() *
                                                   dqChunkRows / spanRows)})))
                    : ceilDivRule(b, "Sq", spanRows, plan.pairsPerGroup());
    stages.insert(stages.begin(),
                  stage(zero.getName(), spans, 0, kDqZeroThreads));
  }
  int64_t workspacePerRow =
      plan.pairs * kStatWidth + (reduceDq ? plan.queryHeads * d : 0);
  DictionaryAttr launch = b.getDictionaryAttr(
      {b.getNamedAttr("kind", b.getStringAttr("cuda")),
       b.getNamedAttr("strategy",
                      b.getStringAttr(wgmmaKernels ? "wgmma" : "mma_sync")),
       b.getNamedAttr("block_q", b.getI64IntegerAttr(plan.blockQ)),
       b.getNamedAttr("block_k", b.getI64IntegerAttr(plan.blockK)),
       b.getNamedAttr("pipeline_stages", b.getI64IntegerAttr(plan.stages)),
       b.getNamedAttr("stages", b.getArrayAttr(stages)),
       b.getNamedAttr(
           "workspace",
           b.getDictionaryAttr(
               {b.getNamedAttr("dtype", b.getStringAttr("f32")),
                b.getNamedAttr(
                    "product",
                    dqChunkRows
                        // B x ceil(Sq / chunk rows) x chunk rows.
                        ? b.getArrayAttr({batches,
                                          ceilDivRule(b, "Sq", dqChunkRows, 1),
                                          b.getI64IntegerAttr(dqChunkRows)})
                        : b.getArrayAttr(
                              {batches, ceilDivRule(b, "Sq", 1, 1)})),
                b.getNamedAttr("times",
                               b.getI64IntegerAttr(workspacePerRow))}))});
  replaceWithGPUKernel(rewriter, kernel, desc, stats, launch);
  return success();
}
