//===- WgmmaBackward.cpp - wgmma strategy: the backward's dk/dv kernel ----===//
//
// The sm_90a dk/dv kernel of diffattn.v2_backward: the third kernel of the
// deterministic backward (MmaSyncBackward.cpp, whose statistics and dq
// kernels it keeps and whose workspace records it reads). A CTA per block
// of blockK = 128 keys of a KV head, two warpgroups of 64 keys each (the M
// rows of every product), walks the query blocks of every pair of the KV
// group that see its keys. K and V stay in shared memory; each query
// block's q of both heads, dout and workspace records are copied by
// cp.async into one of two stages, the next block's while this one is
// computed. Per block and warpgroup:
//
//   S_h^T = K q_h^T (h = 2p, 2p + 1), G^T = V dout^T: wgmma m64n{blockQ}k16,
//     both operands K-major in shared memory;
//   P_h^T = exp2(scale log2 e S_h^T - lse_h log2 e) (the records' shifts);
//   dv += (P_2h - sigmoid(lam) P_2h+1)^T dout and
//   dk += dS_2h^T q_2h + dS_2h+1^T q_2h+1, with dS_2h = P_2h o (G - D_2h)
//     and dS_2h+1 = P_2h+1 o (-sigmoid(lam) G - D_2h+1): wgmma m64n{D}k16
//     with A from registers (S^T's accumulator layout is the A operand's,
//     as P is in the forward's P V) and B MN-major in shared memory.
//
// dk (times scale) and dv are written once from registers, so the
// gradients stay deterministic. Tiles use the forward's 128-byte swizzle
// (WgmmaBuilder.h); the products are the forward's inline-PTX forms
// (WgmmaFragments.cpp), for the reasons given there.
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
using mma_sync::kStatWidth;

void BackwardBuilder::setThreadIndices() {
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

SmallVector<Value>
BackwardBuilder::kMajorDescriptors(Value aOffset, int64_t aRows, Value bOffset,
                                   int64_t bRows, int64_t kDim) {
  // As scoreDescriptors: the leading byte offset unused (1), 8-row groups
  // 1024 bytes apart; a k16 step is 32 bytes into the span's rows.
  Value a0 = descriptorLow(aOffset, 16), b0 = descriptorLow(bOffset, 16);
  SmallVector<Value> descriptors;
  for (int64_t kk = 0; kk < kDim / 16; ++kk) {
    int64_t span = kk / (kSpan / 16), within = (kk % (kSpan / 16)) * 32;
    descriptors.push_back(packDescriptor(
        advanceDescriptor(a0, span * aRows * kRowBytes + within), kAtomBytes));
    descriptors.push_back(packDescriptor(
        advanceDescriptor(b0, span * bRows * kRowBytes + within), kAtomBytes));
  }
  return descriptors;
}

SmallVector<Value> BackwardBuilder::mnMajorDescriptors(Value offset,
                                                       int64_t rows) {
  Value low = descriptorLow(offset, rows * kRowBytes);
  SmallVector<Value> descriptors;
  for (int64_t kt = 0; kt < rows / 16; ++kt)
    descriptors.push_back(packDescriptor(
        advanceDescriptor(low, kt * 16 * kRowBytes), kAtomBytes));
  return descriptors;
}

void BackwardBuilder::buildKeyKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  mma_sync::BackwardArgs args =
      mma_sync::readBackwardArgs(entry, attn.hasKvLen);
  int64_t blockKeys = plan.blockK, blockQ = plan.blockQ;
  int64_t d = plan.headDim, dv = plan.valueDim, ppg = plan.pairsPerGroup();
  int64_t threads = plan.threads();
  Value seqQ = args.seqQ, seqK = args.seqK;
  KeyKernelLayout layout(plan);

  setThreadIndices();
  // The grid is (key blocks, KV heads, B) as the portable kernel's, but
  // CTAs take their tiles in launch order key block by key block: the
  // first key blocks, which the most query rows see (causal masks), start
  // first (without this, ncu showed 13% of the SMs' cycles idle in the
  // last wave at 4 x 4096 causal, H200 backward run 14).
  Value linear =
      add(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
          mul(gpu::GridDimOp::create(b, loc, gpu::Dimension::x),
              add(gpu::BlockIdOp::create(b, loc, gpu::Dimension::y),
                  mul(gpu::GridDimOp::create(b, loc, gpu::Dimension::y),
                      gpu::BlockIdOp::create(b, loc, gpu::Dimension::z)))));
  Value kvHeads = gpu::GridDimOp::create(b, loc, gpu::Dimension::y);
  Value sequences =
      mul(kvHeads, gpu::GridDimOp::create(b, loc, gpu::Dimension::z));
  Value keyBlock = divRemU32(linear, sequences, /*remainder=*/false);
  Value within = divRemU32(linear, sequences, /*remainder=*/true);
  Value kvHead = divRemU32(within, kvHeads, /*remainder=*/true);
  Value batch = divRemU32(within, kvHeads, /*remainder=*/false);
  Value key0 = mul(keyBlock, blockKeys);
  Value firstPair = mul(kvHead, ppg);
  Value qRowBase = mul(batch, seqQ), kRowBase = mul(batch, seqK);
  // kv_len: the statistics kernel, launched first, checks its range (an
  // assertion here would serialise the kernel's wgmma); clamped here.
  Value kvLenElem =
      args.kvLen ? memref::LoadOp::create(b, loc, args.kvLen, ValueRange{batch})
                       .getResult()
                 : Value();
  keyLen = buildKeyLength(b, loc, kvLenElem, seqK);
  offset = sub(keyLen, seqQ);

  alignSharedBase();
  Type elem = plan.elementType;
  int64_t dSpans = d / kSpan, vSpans = dv / kSpan;
  Value sKeys =
      sharedViewAt(add(base, idx(layout.k)), {dSpans, blockKeys, kSpan}, elem);
  Value sValues =
      sharedViewAt(add(base, idx(layout.v)), {vSpans, blockKeys, kSpan}, elem);
  Value sQuery = sharedViewAt(add(base, idx(layout.q)),
                              {plan.stages, 2, dSpans, blockQ, kSpan}, elem);
  Value sDout = sharedViewAt(add(base, idx(layout.dout)),
                             {plan.stages, vSpans, blockQ, kSpan}, elem);
  Value sStat = sharedViewAt(add(base, idx(layout.stat)),
                             {plan.stages, blockQ, kStatWidth}, b.getF32Type());

  // K and V of the CTA's keys; keys past kv_len are zero-filled (whatever
  // the cache holds there must not reach G^T: 0 * NaN).
  Value validKeys = minI(idx(blockKeys), sub(keyLen, key0));
  Value kvRow = add(kRowBase, key0);
  copyRows(args.k, mul(add(mul(kvRow, plan.kvHeads), kvHead), d),
           plan.kvHeads * d, validKeys, sKeys, {}, blockKeys, d, tid, threads);
  copyRows(args.v, mul(add(mul(kvRow, plan.kvHeads), kvHead), dv),
           plan.kvHeads * dv, validKeys, sValues, {}, blockKeys, dv, tid,
           threads);
  NVVM::CpAsyncCommitGroupOp::create(b, loc);

  // The query rows that may see a key of [key0, key0 + blockKeys)
  // (KeyRange.h's rule inverted, as the portable dk/dv kernel).
  Value qlo = idx(0), qhi = seqQ;
  if (attn.windowRight >= 0)
    qlo = maxI(qlo, sub(sub(key0, offset), idx(attn.windowRight)));
  if (attn.windowLeft >= 0)
    qhi = minI(
        qhi, add(sub(add(key0, idx(blockKeys)), offset), idx(attn.windowLeft)));
  qhi = select(cmp(arith::CmpIPredicate::slt, key0, keyLen), qhi, idx(0));
  qlo = alignDownToBlock(b, loc, minI(qlo, seqQ), blockQ);
  Value queryBlocks =
      select(cmp(arith::CmpIPredicate::slt, qlo, qhi),
             div(add(sub(qhi, qlo), blockQ - 1), blockQ), idx(0));
  Value count = mul(queryBlocks, ppg);
  // Block j: pair j / queryBlocks of the group, rows from qlo + (j %
  // queryBlocks) blockQ.
  auto blockOf = [&](Value j) {
    Value pair = add(firstPair, divRemU32(j, queryBlocks, false));
    Value q0 = add(qlo, mul(divRemU32(j, queryBlocks, true), blockQ));
    return std::make_pair(pair, q0);
  };
  auto load = [&](Value j, Value stage) {
    auto [pair, q0] = blockOf(j);
    Value rows = minI(idx(blockQ), sub(seqQ, q0));
    Value rowIndex = add(qRowBase, q0);
    for (int64_t h = 0; h < 2; ++h)
      copyRows(
          args.q,
          mul(add(mul(rowIndex, plan.queryHeads), add(mul(pair, 2), idx(h))),
              d),
          plan.queryHeads * d, rows, sQuery, {stage, idx(h)}, blockQ, d, tid,
          threads);
    copyRows(args.dout, mul(add(mul(rowIndex, plan.pairs), pair), dv),
             plan.pairs * dv, rows, sDout, {stage}, blockQ, dv, tid, threads);
    // The rows' records: 16-byte chunks, zero past Sq.
    int64_t chunksPerRow = kStatWidth / 4;
    ifThen(
        cmp(arith::CmpIPredicate::ult, tid, idx(blockQ * chunksPerRow)), [&] {
          Value row = div(tid, chunksPerRow);
          Value col = mul(rem(tid, chunksPerRow), 4);
          Value ok = cmp(arith::CmpIPredicate::slt, row, rows);
          Value src = add(mul(add(mul(add(mul(batch, plan.pairs), pair), seqQ),
                                  add(q0, row)),
                              kStatWidth),
                          col);
          nvgpu::DeviceAsyncCopyOp::create(
              b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), sStat,
              ValueRange{stage, row, col}, args.workspace,
              ValueRange{select(ok, src, idx(0))}, b.getIndexAttr(4),
              select(ok, idx(4), idx(0)), b.getUnitAttr());
        });
  };
  ifThen(cmp(arith::CmpIPredicate::sgt, count, idx(0)),
         [&] { load(idx(0), idx(0)); });
  NVVM::CpAsyncCommitGroupOp::create(b, loc);

  int64_t qTiles = blockQ / 8, dTiles = d / 8, vTiles = dv / 8;
  // The thread's key rows (wgmma m64nN D fragment: warp w of the
  // warpgroup holds rows 16 w + lane / 4 and that + 8).
  Value kRow0 = add(mul(warpgroup, kWarpgroupRows), mul(warpInGroup, 16));
  std::array<Value, 2> keyRow;
  for (int64_t rr = 0; rr < 2; ++rr)
    keyRow[rr] = add(add(key0, kRow0), add(div(lane, 4), rr * 8));
  Value colLane = mul(rem(lane, 4), 2);
  Value warpgroupRows = mul(warpgroup, kWarpgroupRows * kRowBytes);
  Value scaleLog2 = f32(attn.scale * static_cast<float>(M_LOG2E));

  SmallVector<Value> init((dTiles + vTiles) * 4, f32(0.0f));
  auto loop = scf::ForOp::create(
      b, loc, idx(0), count, idx(1), init,
      [&](OpBuilder &, Location, Value j, ValueRange carried) {
        Value stage = rem(j, plan.stages);
        // The next block's copies go to the stage the previous iteration
        // read (its closing barrier has passed); then this block's (and K
        // and V) have landed once at most one group is pending.
        Value next = add(j, idx(1));
        ifThen(cmp(arith::CmpIPredicate::slt, next, count),
               [&] { load(next, rem(next, plan.stages)); });
        NVVM::CpAsyncCommitGroupOp::create(b, loc);
        NVVM::CpAsyncWaitGroupOp::create(b, loc, 1);
        // The copies are generic-proxy writes that wgmma (async proxy)
        // reads.
        fenceAsyncProxy();
        gpu::BarrierOp::create(b, loc);
        auto [pair, q0] = blockOf(j);

        // S_h^T = K q_h^T and G^T = V dout^T.
        Value qStage = add(idx(layout.q), mul(stage, layout.qStageBytes(plan)));
        Value kRows = add(idx(layout.k), warpgroupRows);
        SmallVector<Value> s0Desc =
            kMajorDescriptors(kRows, blockKeys, qStage, blockQ, d);
        SmallVector<Value> s1Desc = kMajorDescriptors(
            kRows, blockKeys, add(qStage, idx(blockQ * d * 2)), blockQ, d);
        Value doutStage =
            add(idx(layout.dout), mul(stage, layout.doutStageBytes(plan)));
        SmallVector<Value> gDesc =
            kMajorDescriptors(add(idx(layout.v), warpgroupRows), blockKeys,
                              doutStage, blockQ, dv);
        SmallVector<Value> dvDesc = mnMajorDescriptors(doutStage, blockQ);
        SmallVector<Value> dkDesc[2] = {
            mnMajorDescriptors(qStage, blockQ),
            mnMajorDescriptors(add(qStage, idx(blockQ * d * 2)), blockQ)};
        // Three commit groups, waited for in order: S^T of both heads, then
        // G^T (in flight while P^T is computed), then dv's product (in
        // flight while dS^T is).
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        Value s0 = issueSharedProduct(s0Desc, blockQ);
        Value s1 = issueSharedProduct(s1Desc, blockQ);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        Value g = issueSharedProduct(gDesc, blockQ);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
        std::array<SmallVector<Acc>, 2> s = {readAccumulators(s0, qTiles),
                                             readAccumulators(s1, qTiles)};
        fenceTiles(s[0]);
        fenceTiles(s[1]);

        // The records of the thread's columns (query rows 8 nt + colLane
        // + c of the block).
        SmallVector<Value> colShift[2], colSig, colEven, colOdd;
        auto statType = VectorType::get({4}, b.getF32Type());
        for (int64_t nt = 0; nt < qTiles; ++nt)
          for (int64_t c = 0; c < 2; ++c) {
            Value row = add(colLane, nt * 8 + c);
            Value rec = vector::LoadOp::create(b, loc, statType, sStat,
                                               ValueRange{stage, row, idx(0)});
            auto field = [&](int64_t f) {
              return vector::ExtractOp::create(b, loc, rec, f).getResult();
            };
            colEven.push_back(field(mma_sync::kDeltaEven));
            colOdd.push_back(field(mma_sync::kDeltaOdd));
            colSig.push_back(field(mma_sync::kSigmoid));
            colShift[0].push_back(field(mma_sync::kShiftEven));
            colShift[1].push_back(memref::LoadOp::create(
                b, loc, sStat,
                ValueRange{stage, row, idx(mma_sync::kShiftOdd)}));
          }
        // P_h^T, masked only where the block straddles a bound (or Sq).
        Value lastRow = minI(add(q0, blockQ - 1), sub(seqQ, idx(1)));
        Value needsMask = arith::OrIOp::create(
            b, loc,
            buildBlockNeedsMask(b, loc, attn, key0, blockKeys, q0, lastRow,
                                offset, keyLen),
            cmp(arith::CmpIPredicate::sgt, add(q0, blockQ), seqQ));
        auto computeP = [&](bool masked) {
          SmallVector<Value> flat;
          for (int64_t i = 0; i < qTiles * 4; ++i) {
            int64_t c = (i / 4) * 2 + i % 2;
            Value visible;
            if (masked) {
              Value query = add(add(q0, colLane), (i / 4) * 8 + i % 2);
              visible = arith::AndIOp::create(
                  b, loc, cmp(arith::CmpIPredicate::slt, query, seqQ),
                  buildIsVisible(b, loc, attn, query, keyRow[(i % 4) / 2],
                                 offset, keyLen));
            }
            for (int64_t h = 0; h < 2; ++h) {
              Value p =
                  exp2(fma(s[h][i / 4][i % 4], scaleLog2, colShift[h][c]));
              flat.push_back(visible ? select(visible, p, f32(0.0f)) : p);
            }
          }
          scf::YieldOp::create(b, loc, flat);
        };
        auto probs = scf::IfOp::create(
            b, loc, needsMask, [&](OpBuilder &, Location) { computeP(true); },
            [&](OpBuilder &, Location) { computeP(false); });
        auto probability = [&](int64_t h, int64_t i) {
          return probs.getResult(2 * i + h);
        };
        // dv += (P_2h - sigmoid(lam) P_2h+1)^T dout.
        SmallVector<Acc> pv(qTiles), dsEven(qTiles), dsOdd(qTiles);
        for (int64_t i = 0; i < qTiles * 4; ++i) {
          int64_t c = (i / 4) * 2 + i % 2;
          pv[i / 4][i % 4] =
              fsub(probability(0, i), fmul(colSig[c], probability(1, i)));
        }
        SmallVector<Value> pvRegs = packProbabilities(pv);
        SmallVector<Acc> dk(dTiles), dvAcc(vTiles);
        for (int64_t t = 0; t < dTiles; ++t)
          for (int64_t e = 0; e < 4; ++e)
            dk[t][e] = carried[t * 4 + e];
        for (int64_t t = 0; t < vTiles; ++t)
          for (int64_t e = 0; e < 4; ++e)
            dvAcc[t][e] = carried[(dTiles + t) * 4 + e];
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        issueRegisterProduct(pvRegs, dvDesc, dvAcc);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        // G^T has landed: dS^T, then dk += dS_h^T q_h.
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
        SmallVector<Acc> gt = readAccumulators(g, qTiles);
        fenceTiles(gt);
        for (int64_t i = 0; i < qTiles * 4; ++i) {
          int64_t nt = i / 4, e = i % 4, c = nt * 2 + e % 2;
          Value gv = gt[nt][e];
          dsEven[nt][e] = fmul(probability(0, i), fsub(gv, colEven[c]));
          dsOdd[nt][e] = fmul(probability(1, i),
                              fsub(f32(0.0f), fma(colSig[c], gv, colOdd[c])));
        }
        SmallVector<Value> dsRegs[2] = {packProbabilities(dsEven),
                                        packProbabilities(dsOdd)};
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        issueRegisterProduct(dsRegs[0], dkDesc[0], dk);
        issueRegisterProduct(dsRegs[1], dkDesc[1], dk);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
        SmallVector<Value> aRegs(pvRegs);
        aRegs.append(dsRegs[0]);
        aRegs.append(dsRegs[1]);
        keepLive(aRegs);
        fenceTiles(dk);
        fenceTiles(dvAcc);
        // Every warpgroup's products have read the stage before the next
        // iteration's copies overwrite it.
        gpu::BarrierOp::create(b, loc);
        SmallVector<Value> results;
        for (const Acc &t : dk)
          results.append(t.begin(), t.end());
        for (const Acc &t : dvAcc)
          results.append(t.begin(), t.end());
        scf::YieldOp::create(b, loc, results);
      });
  NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);

  // dk = scale * sum_j dS_j^T q_j and dv of the thread's keys (zero for
  // keys no query sees, and past kv_len).
  ValueRange final = loop.getResults();
  Value scale = f32(attn.scale);
  for (int64_t rr = 0; rr < 2; ++rr) {
    ifThen(cmp(arith::CmpIPredicate::slt, keyRow[rr], seqK), [&] {
      Value row = add(mul(add(kRowBase, keyRow[rr]), plan.kvHeads), kvHead);
      for (int64_t t = 0; t < dTiles; ++t) {
        int64_t at = t * 4 + 2 * rr;
        storePair(args.dk, fmul(final[at], scale), fmul(final[at + 1], scale),
                  add(add(mul(row, d), colLane), t * 8));
      }
      for (int64_t t = 0; t < vTiles; ++t) {
        int64_t at = (dTiles + t) * 4 + 2 * rr;
        storePair(args.dv, final[at], final[at + 1],
                  add(add(mul(row, dv), colLane), t * 8));
      }
    });
  }
  gpu::ReturnOp::create(b, loc);
}

int64_t mlir::diffattn::wgmma::backwardKeySharedBytes(const WgmmaPlan &plan) {
  // The tiles, and the 1024 bytes that aligning their start may skip.
  return KeyKernelLayout(plan).end + kAtomBytes;
}

void mlir::diffattn::wgmma::buildBackwardKeyKernel(OpBuilder &b, Location loc,
                                                   gpu::GPUFuncOp func,
                                                   const WgmmaPlan &plan) {
  BackwardBuilder(b, loc, plan).buildKeyKernel(func);
}
