//===- WgmmaBackwardRows.cpp - wgmma strategy: statistics and dq kernels --===//
//
// The sm_90a backward's row kernels, over the portable ones' grid (a CTA
// per 64 rows R = p Sq + i of a KV group, WgmmaBuilder.h), K and V blocks
// copied by cp.async into two stages while the previous block is
// computed:
//
// - `_stats`: warpgroup w takes keys 32 w .. 32 w + 31 of each 64-key
//   block: S_2h+1 = q_2h+1 K^T and G = dout V^T (wgmma, both operands from
//   shared memory), r += rowsum(P_2h+1 o G); the warpgroups' sums meet in
//   shared memory and warpgroup 0 writes the rows' records (D_2h, D_2h+1,
//   sigmoid(lam), both heads' -lse log2 e) and dlam, as the portable
//   statistics kernel does.
// - `_dq`: warpgroup w computes head 2p + w of each row over 64-key
//   blocks: S_h = q_h K^T and G = dout V^T, dS_h = P_h o (dP_h - D_h) with
//   dP_2h = G and dP_2h+1 = -sigmoid(lam) G, dq_h += dS_h K (A from
//   registers, K MN-major); dq = scale * the sum, written once.
//
//===----------------------------------------------------------------------===//

#include "WgmmaBackwardBuilder.h"

#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

void BackwardBuilder::buildRowKernel(gpu::GPUFuncOp func, bool stats) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  mma_sync::BackwardArgs args = mma_sync::readBackwardArgs(entry, attn);
  int64_t blockK = plan.blockK, threads = plan.threads();
  int64_t d = plan.headDim, dv = plan.valueDim;
  // Keys of a block per warpgroup: all of them in the dq kernel, half in
  // the statistics kernel.
  int64_t groupKeys = stats ? blockK / 2 : blockK;
  Value seqQ = args.seqQ, seqK = args.seqK;
  RowKernelLayout layout(plan, stats);
  setThreadIndices();
  // The tile: 64 rows R = p Sq + i of the KV group (WgmmaBuilder.h).
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  tile.seqQ = seqQ;
  tile.seqK = seqK;
  tile.firstPair = mul(kvHead, plan.pairsPerGroup());
  tile.groupRows = mul(seqQ, plan.rowsPerQuery);
  // With a causal-like mask, row blocks go from the last rows to the first
  // (the longest tiles start first), as in the forward: 1.01-1.02x for dq
  // at 4 x 4096 and 1 x 16384 causal (H200 backward run 16). Taking them
  // row block by row block across heads and sequences (blockIdsXSlowest,
  // as the dk/dv kernels do) measured 0.97-1.00x of this order (backward
  // run 53): not kept.
  Value rowBlock = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  if (attn.isCausalLike())
    rowBlock =
        sub(sub(gpu::GridDimOp::create(b, loc, gpu::Dimension::x), idx(1)),
            rowBlock);
  tile.row0 = mul(rowBlock, kWarpgroupRows);
  tile.rowsValid = minI(idx(kWarpgroupRows), sub(tile.groupRows, tile.row0));
  Value qRowBase = mul(batch, seqQ), kRowBase = mul(batch, seqK);
  setClampedKeyLength(args, batch);
  // Keys any row of the tile may see: [lo, hi), lo on a block boundary.
  Value lastRow = sub(add(tile.row0, tile.rowsValid), idx(1));
  Value onePair =
      cmp(arith::CmpIPredicate::eq, pairOf(tile.row0), pairOf(lastRow));
  Value minRow = select(onePair, queryRowOf(tile.row0), idx(0));
  Value maxRow = select(onePair, queryRowOf(lastRow), sub(seqQ, idx(1)));
  auto [lo, hi] =
      buildVisibleKeyBounds(b, loc, attn, minRow, maxRow, offset, keyLen);
  lo = alignDownToBlock(b, loc, lo, blockK);
  Value numBlocks = select(cmp(arith::CmpIPredicate::slt, lo, hi),
                           div(add(sub(hi, lo), blockK - 1), blockK), idx(0));

  alignSharedBase();
  Type elem = plan.elementType;
  int64_t dSpans = d / kSpan, vSpans = dv / kSpan, qHeads = stats ? 1 : 2;
  Value sQuery = sharedViewAt(add(base, idx(layout.q)),
                              {qHeads, dSpans, kWarpgroupRows, kSpan}, elem);
  Value sDout = sharedViewAt(add(base, idx(layout.dout)),
                             {vSpans, kWarpgroupRows, kSpan}, elem);
  Value sKeys = sharedViewAt(add(base, idx(layout.k)),
                             {plan.stages, dSpans, blockK, kSpan}, elem);
  Value sValues = sharedViewAt(add(base, idx(layout.v)),
                               {plan.stages, vSpans, blockK, kSpan}, elem);

  // q (of both heads, or of the odd one) and dout of the tile's rows (zero
  // past the group's).
  for (int64_t h = 0; h < qHeads; ++h)
    copyTileAsync(
        args.q,
        [&](Value r) {
          Value row = add(tile.row0, r);
          Value head = add(mul(pairOf(row), 2), h + 2 - qHeads);
          return mul(
              add(mul(add(qRowBase, queryRowOf(row)), plan.queryHeads), head),
              d);
        },
        tile.rowsValid, sQuery,
        [&](Value row, Value col) { return swizzledIndex({idx(h)}, row, col); },
        kWarpgroupRows, d, tid, threads);
  copyTileAsync(
      args.dout,
      [&](Value r) {
        Value row = add(tile.row0, r);
        return mul(
            add(mul(add(qRowBase, queryRowOf(row)), plan.pairs), pairOf(row)),
            dv);
      },
      tile.rowsValid, sDout,
      [&](Value row, Value col) { return swizzledIndex({}, row, col); },
      kWarpgroupRows, dv, tid, threads);
  // Key block j: keys lo + j blockK on, zero past kv_len.
  auto load = [&](Value j, Value stage) {
    Value key0 = add(lo, mul(j, blockK));
    Value rows = minI(idx(blockK), sub(keyLen, key0));
    Value kvRow = add(kRowBase, key0);
    copyRows(args.k, mul(add(mul(kvRow, plan.kvHeads), kvHead), d),
             plan.kvHeads * d, rows, sKeys, {stage}, blockK, d, tid, threads);
    copyRows(args.v, mul(add(mul(kvRow, plan.kvHeads), kvHead), dv),
             plan.kvHeads * dv, rows, sValues, {stage}, blockK, dv, tid,
             threads);
  };

  loadFirstBlock(numBlocks, load);
  // The accumulating formulation: the dk/dv kernel, launched next, adds
  // every key block's dq of these rows to their accumulator rows.
  if (stats && dqChunkRows)
    mma_sync::zeroDqAccumulator(
        *this, args.workspace,
        mma_sync::dqAccumulatorOffset(*this, seqQ, plan.pairs), batch,
        tile.row0, tile.rowsValid, [&](Value r) { return pairOf(r); },
        [&](Value r) { return queryRowOf(r); }, seqQ, tid, threads, plan.pairs,
        d, dqChunkRows);

  // The thread's two rows: validity, query row, pair, and what the
  // probabilities need: -lse log2 e of the head (the odd one in the
  // statistics kernel, from lse; the warpgroup's in the dq kernel, from the
  // records), D of the head and the factor of G in dP (1, or
  // -sigmoid(lam) for the odd head). Rows past the group's read row 0's.
  Value odd = cmp(arith::CmpIPredicate::eq, warpgroup, idx(1));
  // The record's index: in the dq kernel here, in the statistics kernel
  // where it writes it.
  std::array<Value, 2> valid, queryRow, pair, pairRow, record, shift, delta,
      dpFactor;
  // -lse log2 e of head 2 pair + h of the thread's row rr.
  auto lseShift = [&](int64_t rr, int64_t h) {
    Value head = add(mul(pair[rr], 2), idx(h));
    return negLseShift(
        loadF32(args.lse, mma_sync::lseIndex(*this, batch, head, queryRow[rr],
                                             seqQ, plan.queryHeads)));
  };
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value row = threadGroupRow(rr);
    valid[rr] = cmp(arith::CmpIPredicate::slt, row, tile.groupRows);
    row = select(valid[rr], row, idx(0));
    queryRow[rr] = queryRowOf(row);
    pair[rr] = pairOf(row);
    pairRow[rr] = epilogue.pairRowIndex(add(qRowBase, queryRow[rr]), pair[rr]);
    if (stats) {
      shift[rr] = lseShift(rr, 1);
      continue;
    }
    record[rr] = mma_sync::recordIndex(*this, batch, pair[rr], queryRow[rr],
                                       seqQ, plan.pairs);
    auto field = [&](int64_t f) {
      return memref::LoadOp::create(b, loc, args.workspace,
                                    ValueRange{add(record[rr], idx(f))})
          .getResult();
    };
    shift[rr] =
        select(odd, field(mma_sync::kShiftOdd), field(mma_sync::kShiftEven));
    delta[rr] =
        select(odd, field(mma_sync::kDeltaOdd), field(mma_sync::kDeltaEven));
    dpFactor[rr] =
        select(odd, fsub(f32(0.0f), field(mma_sync::kSigmoid)), f32(1.0f));
  }

  int64_t kTiles = groupKeys / 8, dTiles = d / 8;
  Value colLane = mul(rem(lane, 4), 2);
  Value scaleLog2 = f32(attn.scale * static_cast<float>(M_LOG2E));
  // The warpgroup's A tile of q, and its first key of a block.
  Value qHead =
      stats ? idx(layout.q)
            : add(idx(layout.q), mul(warpgroup, kWarpgroupRows * d * 2));
  Value groupKey0 = stats ? mul(warpgroup, groupKeys) : idx(0);
  Value groupKeyBytes = mul(groupKey0, kRowBytes);
  SmallVector<Value> init(stats ? 2 : dTiles * 4, f32(0.0f));
  SmallVector<Value> final = pipelineBlocks(
      numBlocks, init, load,
      [&](Value j, Value stage, ValueRange carried,
          function_ref<void()> loadNext) -> SmallVector<Value> {
        Value key0 = add(lo, mul(j, blockK));
        Value kStage = add(idx(layout.k), mul(stage, blockK * d * 2));
        Value vStage = add(idx(layout.v), mul(stage, blockK * dv * 2));
        SmallVector<Value> sDesc = kMajorDescriptors(
            qHead, kWarpgroupRows, add(kStage, groupKeyBytes), blockK, d);
        SmallVector<Value> gDesc =
            kMajorDescriptors(idx(layout.dout), kWarpgroupRows,
                              add(vStage, groupKeyBytes), blockK, dv);
        SmallVector<Value> dqDesc;
        if (!stats)
          dqDesc = mnMajorDescriptors(kStage, blockK);
        // S = q K^T, then G = dout V^T (in flight while P is computed).
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        Value sAcc = issueSharedProduct(sDesc, groupKeys);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        Value gAcc = issueSharedProduct(gDesc, groupKeys);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        loadNext();
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
        SmallVector<Acc> sc = readAccumulators(sAcc, kTiles);
        fenceTiles(sc);
        Value needsMask = buildBlockNeedsMask(b, loc, attn, key0, blockK,
                                              minRow, maxRow, offset, keyLen);
        Value threadKey0 = add(add(key0, groupKey0), colLane);
        auto computeP = [&](bool masked) {
          SmallVector<Value> flat;
          for (int64_t i = 0; i < kTiles * 4; ++i) {
            int64_t rr = (i % 4) / 2;
            Value p = exp2(fma(sc[i / 4][i % 4], scaleLog2, shift[rr]));
            if (masked) {
              Value key = add(threadKey0, (i / 4) * 8 + i % 2);
              p = select(buildIsVisible(b, loc, attn, queryRow[rr], key, offset,
                                        keyLen),
                         p, f32(0.0f));
            }
            flat.push_back(p);
          }
          scf::YieldOp::create(b, loc, flat);
        };
        auto probs = scf::IfOp::create(
            b, loc, needsMask, [&](OpBuilder &, Location) { computeP(true); },
            [&](OpBuilder &, Location) { computeP(false); });
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
        SmallVector<Acc> g = readAccumulators(gAcc, kTiles);
        fenceTiles(g);
        SmallVector<Value> results;
        if (stats) {
          // r += rowsum(P_2h+1 o G) over the thread's columns.
          results.assign(carried.begin(), carried.end());
          for (int64_t i = 0; i < kTiles * 4; ++i)
            results[(i % 4) / 2] =
                fma(probs.getResult(i), g[i / 4][i % 4], results[(i % 4) / 2]);
          return results;
        }
        // dS_h = P_h o (dP_h - D_h), dq_h += dS_h K.
        SmallVector<Acc> ds(kTiles);
        for (int64_t i = 0; i < kTiles * 4; ++i) {
          int64_t rr = (i % 4) / 2;
          ds[i / 4][i % 4] =
              fmul(probs.getResult(i),
                   fsub(fmul(dpFactor[rr], g[i / 4][i % 4]), delta[rr]));
        }
        SmallVector<Value> dsRegs = packProbabilities(ds);
        SmallVector<Acc> dq(dTiles);
        for (int64_t t = 0; t < dTiles; ++t)
          for (int64_t e = 0; e < 4; ++e)
            dq[t][e] = carried[t * 4 + e];
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        issueRegisterProduct(dsRegs, dqDesc, dq);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
        keepLive(dsRegs);
        fenceTiles(dq);
        for (const Acc &t : dq)
          results.append(t.begin(), t.end());
        return results;
      });

  if (stats) {
    // r of each row: the quad's lanes, then both warpgroups' keys (warpgroup
    // 1 hands its sums over in shared memory).
    Value sExchange = sharedViewAt(add(base, idx(layout.exchange)),
                                   {kWarpgroupRows}, b.getF32Type());
    std::array<Value, 2> r;
    for (int64_t rr = 0; rr < 2; ++rr)
      r[rr] = quadSum(final[rr]);
    Value localRow = add(mul(warpInGroup, 16), div(lane, 4));
    ifThen(odd, [&] {
      for (int64_t rr = 0; rr < 2; ++rr)
        memref::StoreOp::create(b, loc, r[rr], sExchange,
                                ValueRange{add(localRow, rr * 8)});
    });
    gpu::BarrierOp::create(b, loc);
    // Warpgroup 0 (not odd) writes the records.
    Value even = arith::XOrIOp::create(
        b, loc, odd, arith::ConstantIntOp::create(b, loc, 1, 1));
    ifThen(even, [&] {
      for (int64_t rr = 0; rr < 2; ++rr) {
        Value sum = fadd(
            r[rr], memref::LoadOp::create(b, loc, sExchange,
                                          ValueRange{add(localRow, rr * 8)}));
        record[rr] = mma_sync::recordIndex(*this, batch, pair[rr], queryRow[rr],
                                           seqQ, plan.pairs);
        Value shiftEven = lseShift(rr, 0);
        Value lam = loadF32(args.lam, pairRow[rr]);
        Value dot =
            mma_sync::outputRowDot(*this, args, pairRow[rr], colLane, dv);
        mma_sync::writeRowStatistics(*this, epilogue, args,
                                     {sum, dot, valid[rr], record[rr],
                                      pairRow[rr], lam, epilogue.sigmoid(lam),
                                      shiftEven, shift[rr], lane});
      }
    });
    gpu::ReturnOp::create(b, loc);
    return;
  }

  // dq = scale * the sum, rows of the group only.
  Value scale = f32(attn.scale);
  for (int64_t rr = 0; rr < 2; ++rr) {
    ifThen(valid[rr], [&] {
      Value head = add(mul(pair[rr], 2), warpgroup);
      Value row = add(mul(add(qRowBase, queryRow[rr]), plan.queryHeads), head);
      for (int64_t t = 0; t < dTiles; ++t) {
        int64_t at = t * 4 + 2 * rr;
        storePair(args.dq, fmul(final[at], scale), fmul(final[at + 1], scale),
                  add(add(mul(row, d), colLane), t * 8));
      }
    });
  }
  gpu::ReturnOp::create(b, loc);
}

int64_t mlir::diffattn::wgmma::backwardRowSharedBytes(const WgmmaPlan &plan,
                                                      bool stats) {
  return RowKernelLayout(plan, stats).end + kAtomBytes;
}

void mlir::diffattn::wgmma::buildBackwardRowKernel(OpBuilder &b, Location loc,
                                                   gpu::GPUFuncOp func,
                                                   const WgmmaPlan &plan,
                                                   bool stats,
                                                   int64_t dqChunkRows) {
  BackwardBuilder builder(b, loc, plan);
  builder.dqChunkRows = dqChunkRows;
  builder.buildRowKernel(func, stats);
}
