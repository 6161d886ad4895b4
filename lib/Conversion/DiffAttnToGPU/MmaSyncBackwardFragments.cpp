//===- MmaSyncBackwardFragments.cpp - the backward's kernel parts ---------===//
//
// The parts of the portable strategy's backward kernels (see
// MmaSyncBackwardBuilder.h): the kernel arguments, the products with every
// ldmatrix fragment shared by the products it feeds (PTX ISA "Matrix
// Fragments for mma.m16n8k16" and "ldmatrix"), the recomputed
// probabilities with masking only where a block straddles a bound, and the
// cp.async pipeline over blocks.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"

#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

BackwardArgs mma_sync::readBackwardArgs(Block &entry,
                                        const AttentionConfig &attn) {
  BackwardArgs a;
  unsigned i = 0;
  a.q = entry.getArgument(i++);
  a.k = entry.getArgument(i++);
  a.v = entry.getArgument(i++);
  a.lam = entry.getArgument(i++);
  a.out = entry.getArgument(i++);
  a.dout = entry.getArgument(i++);
  a.lse = entry.getArgument(i++);
  if (attn.hasKvLen)
    a.kvLen = entry.getArgument(i++);
  if (attn.hasOutOdd)
    a.outOdd = entry.getArgument(i++);
  a.dq = entry.getArgument(i++);
  a.dk = entry.getArgument(i++);
  a.dv = entry.getArgument(i++);
  a.dlam = entry.getArgument(i++);
  a.workspace = entry.getArgument(i++);
  i++; // B: the grid's z extent.
  a.seqQ = entry.getArgument(i++);
  a.seqK = entry.getArgument(i++);
  return a;
}

Value mma_sync::recordIndex(GPUKernelBuilder &kb, Value batch, Value pair,
                            Value query, Value seqQ, int64_t pairs) {
  return kb.mul(kb.add(kb.mul(kb.add(kb.mul(batch, pairs), pair), seqQ), query),
                kStatWidth);
}

std::pair<Value, Value> mma_sync::keyBlockQueries(GPUKernelBuilder &kb,
                                                  const AttentionConfig &attn,
                                                  Value key0, int64_t blockKeys,
                                                  int64_t blockQ, Value offset,
                                                  Value keyLen, Value seqQ) {
  Value qlo = kb.idx(0), qhi = seqQ;
  if (attn.windowRight >= 0)
    qlo = kb.maxI(qlo, kb.sub(kb.sub(key0, offset), kb.idx(attn.windowRight)));
  if (attn.windowLeft >= 0)
    qhi = kb.minI(qhi, kb.add(kb.sub(kb.add(key0, kb.idx(blockKeys)), offset),
                              kb.idx(attn.windowLeft)));
  qhi = kb.select(kb.cmp(arith::CmpIPredicate::slt, key0, keyLen), qhi,
                  kb.idx(0));
  qlo = alignDownToBlock(kb.b, kb.loc, kb.minI(qlo, seqQ), blockQ);
  Value queryBlocks = kb.select(
      kb.cmp(arith::CmpIPredicate::slt, qlo, qhi),
      kb.div(kb.add(kb.sub(qhi, qlo), blockQ - 1), blockQ), kb.idx(0));
  return {qlo, queryBlocks};
}

void mma_sync::copyRecordsAsync(GPUKernelBuilder &kb, const BackwardArgs &args,
                                Value sStat, Value stage, Value batch,
                                Value pair, Value q0, Value rows, Value tid,
                                int64_t blockQ, int64_t pairs) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  int64_t chunksPerRow = kStatWidth / 4;
  kb.ifThen(
      kb.cmp(arith::CmpIPredicate::ult, tid, kb.idx(blockQ * chunksPerRow)),
      [&] {
        Value row = kb.div(tid, chunksPerRow);
        Value col = kb.mul(kb.rem(tid, chunksPerRow), 4);
        Value ok = kb.cmp(arith::CmpIPredicate::slt, row, rows);
        Value src = kb.add(
            recordIndex(kb, batch, pair, kb.add(q0, row), args.seqQ, pairs),
            col);
        nvgpu::DeviceAsyncCopyOp::create(
            b, loc, nvgpu::DeviceAsyncTokenType::get(kb.ctx), sStat,
            ValueRange{stage, row, col}, args.workspace,
            ValueRange{kb.select(ok, src, kb.idx(0))}, b.getIndexAttr(4),
            kb.select(ok, kb.idx(4), kb.idx(0)), b.getUnitAttr());
      });
}

ColumnRecords mma_sync::loadColumnRecords(GPUKernelBuilder &kb, Value sStat,
                                          Value stage, Value colLane,
                                          int64_t qTiles) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  ColumnRecords records;
  auto statType = VectorType::get({4}, b.getF32Type());
  for (int64_t nt = 0; nt < qTiles; ++nt)
    for (int64_t c = 0; c < 2; ++c) {
      Value row = kb.add(colLane, nt * 8 + c);
      Value rec = vector::LoadOp::create(b, loc, statType, sStat,
                                         ValueRange{stage, row, kb.idx(0)});
      auto field = [&](int64_t f) {
        return vector::ExtractOp::create(b, loc, rec, f).getResult();
      };
      records.deltaEven.push_back(field(kDeltaEven));
      records.deltaOdd.push_back(field(kDeltaOdd));
      records.sigmoid.push_back(field(kSigmoid));
      records.shift[0].push_back(field(kShiftEven));
      records.shift[1].push_back(memref::LoadOp::create(
          b, loc, sStat, ValueRange{stage, row, kb.idx(kShiftOdd)}));
    }
  return records;
}

Value mma_sync::keyBlockNeedsMask(GPUKernelBuilder &kb,
                                  const AttentionConfig &attn, Value key0,
                                  int64_t blockKeys, Value q0, int64_t blockQ,
                                  Value seqQ, Value offset, Value keyLen) {
  Value lastRow = kb.minI(kb.add(q0, blockQ - 1), kb.sub(seqQ, kb.idx(1)));
  return arith::OrIOp::create(
      kb.b, kb.loc,
      buildBlockNeedsMask(kb.b, kb.loc, attn, key0, blockKeys, q0, lastRow,
                          offset, keyLen),
      kb.cmp(arith::CmpIPredicate::sgt, kb.add(q0, blockQ), seqQ));
}

Value mma_sync::keyColumnVisible(GPUKernelBuilder &kb,
                                 const AttentionConfig &attn, Value q0,
                                 Value colLane, int64_t i,
                                 ArrayRef<Value> keyRow, Value seqQ,
                                 Value offset, Value keyLen) {
  Value query = kb.add(kb.add(q0, colLane), (i / 4) * 8 + i % 2);
  return arith::AndIOp::create(
      kb.b, kb.loc, kb.cmp(arith::CmpIPredicate::slt, query, seqQ),
      buildIsVisible(kb.b, kb.loc, attn, query, keyRow[(i % 4) / 2], offset,
                     keyLen));
}

void mma_sync::writeKeyGradients(GPUKernelBuilder &kb, const BackwardArgs &args,
                                 ValueRange final, ArrayRef<Value> keyRow,
                                 Value kRowBase, Value kvHead, Value colLane,
                                 const TileConfig &plan) {
  int64_t d = plan.headDim, dv = plan.valueDim;
  int64_t dTiles = d / 8, vTiles = dv / 8;
  Value scale = kb.f32(plan.attn.scale);
  for (int64_t rr = 0; rr < 2; ++rr) {
    kb.ifThen(kb.cmp(arith::CmpIPredicate::slt, keyRow[rr], args.seqK), [&] {
      Value row =
          kb.add(kb.mul(kb.add(kRowBase, keyRow[rr]), plan.kvHeads), kvHead);
      for (int64_t t = 0; t < dTiles; ++t) {
        int64_t at = t * 4 + 2 * rr;
        kb.storePair(args.dk, kb.fmul(final[at], scale),
                     kb.fmul(final[at + 1], scale),
                     kb.add(kb.add(kb.mul(row, d), colLane), t * 8));
      }
      for (int64_t t = 0; t < vTiles; ++t) {
        int64_t at = (dTiles + t) * 4 + 2 * rr;
        kb.storePair(args.dv, final[at], final[at + 1],
                     kb.add(kb.add(kb.mul(row, dv), colLane), t * 8));
      }
    });
  }
}

Value mma_sync::lseIndex(GPUKernelBuilder &kb, Value batch, Value head,
                         Value query, Value seqQ, int64_t queryHeads) {
  return kb.add(kb.mul(kb.add(kb.mul(batch, queryHeads), head), seqQ), query);
}

Value mma_sync::outputRowDot(GPUKernelBuilder &kb, const BackwardArgs &args,
                             Value pairRow, Value colLane, int64_t valueDim) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  Type elem = cast<MemRefType>(args.out.getType()).getElementType();
  Value dot = kb.f32(0.0f);
  Value base = kb.mul(pairRow, valueDim);
  auto vecType = VectorType::get({2}, elem);
  for (int64_t t = 0; t < valueDim / 8; ++t) {
    Value index = kb.add(kb.add(base, colLane), t * 8);
    Value o =
        vector::LoadOp::create(b, loc, vecType, args.out, ValueRange{index});
    Value g =
        vector::LoadOp::create(b, loc, vecType, args.dout, ValueRange{index});
    for (int64_t e = 0; e < 2; ++e) {
      auto ext = [&](Value vec) {
        return arith::ExtFOp::create(
            b, loc, b.getF32Type(),
            vector::ExtractOp::create(b, loc, vec, e).getResult());
      };
      dot = kb.fma(ext(o), ext(g), dot);
    }
  }
  return kb.quadSum(dot);
}

void mma_sync::writeRowStatistics(GPUKernelBuilder &kb,
                                  DifferentialEpilogue &epilogue,
                                  const BackwardArgs &args,
                                  const RowStatistics &row) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  // sigmoid'(lam) = sigmoid(lam) sigmoid(-lam), each in f32 without
  // cancellation.
  Value sigNeg = epilogue.sigmoid(kb.fsub(kb.f32(0.0f), row.lam));
  Value writer = arith::AndIOp::create(
      b, loc, row.valid,
      kb.cmp(arith::CmpIPredicate::eq, kb.rem(row.lane, 4), kb.idx(0)));
  kb.ifThen(writer, [&] {
    Value sr = kb.fmul(row.sigmoid, row.r);
    auto put = [&](int64_t field, Value x) {
      kb.storeAs(args.workspace, x, kb.add(row.statBase, field));
    };
    put(kDeltaEven, kb.fadd(row.dot, sr));
    put(kDeltaOdd, kb.fsub(kb.f32(0.0f), sr));
    put(kSigmoid, row.sigmoid);
    put(kShiftEven, row.shiftEven);
    put(kShiftOdd, row.shiftOdd);
    kb.storeAs(args.dlam, kb.fsub(kb.f32(0.0f), kb.fmul(sigNeg, sr)),
               row.pairRow);
  });
}

void BackwardBuilder::setKeyLength(const BackwardArgs &args, Value batch,
                                   Value tid) {
  Value kvLenElem;
  if (args.kvLen) {
    kvLenElem = memref::LoadOp::create(b, loc, args.kvLen, ValueRange{batch});
    // The assertion's reporter, thread 0 of CTA (0, 0, z), checks
    // kv_len[blockIdx.z], as its message says: `batch` itself where the
    // grid keeps its order, another sequence where blockIdsXSlowest
    // renumbers the CTAs (the same load then, which LLVM merges, where not).
    assertKeyLengthInRange(
        memref::LoadOp::create(
            b, loc, args.kvLen,
            ValueRange{gpu::BlockIdOp::create(b, loc, gpu::Dimension::z)}),
        args.seqK, tid);
  }
  keyLen = buildKeyLength(b, loc, kvLenElem, args.seqK);
  offset = sub(keyLen, args.seqQ);
}

SmallVector<SmallVector<Value>>
BackwardBuilder::loadAFragments(const TileRef &a, Value aRow0, int64_t kDim) {
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value aRow = add(add(aRow0, l8), mul(rem(g8, 2), 8));
  Value aCol = mul(div(lane, 16), 8);
  SmallVector<SmallVector<Value>> frags;
  for (int64_t kk = 0; kk < kDim / 16; ++kk)
    frags.push_back(
        ldmatrix(a.tile, tileIndex(a.lead, aRow, aCol, kk * 16), false));
  return frags;
}

SmallVector<SmallVector<SmallVector<Acc>>>
BackwardBuilder::productsABt(ArrayRef<TileRef> as, Value aRow0,
                             ArrayRef<TileRef> bs, int64_t n, int64_t kDim,
                             ArrayRef<SmallVector<SmallVector<Value>>> aFrags) {
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value aRow = add(add(aRow0, l8), mul(rem(g8, 2), 8));
  Value aCol = mul(div(lane, 16), 8);
  Value bRow = add(l8, mul(div(lane, 16), 8));
  Value bCol = mul(rem(g8, 2), 8);
  SmallVector<SmallVector<SmallVector<Acc>>> c(
      as.size(), SmallVector<SmallVector<Acc>>(
                     bs.size(), SmallVector<Acc>(n / 8, zeroAcc())));
  for (int64_t kk = 0; kk < kDim / 16; ++kk) {
    SmallVector<SmallVector<Value>> a;
    for (size_t i = 0; i < as.size(); ++i)
      a.push_back(aFrags.empty()
                      ? ldmatrix(as[i].tile,
                                 tileIndex(as[i].lead, aRow, aCol, kk * 16),
                                 false)
                      : aFrags[i][kk]);
    for (int64_t np = 0; np < n / 16; ++np)
      for (size_t j = 0; j < bs.size(); ++j) {
        SmallVector<Value> br = ldmatrix(
            bs[j].tile,
            tileIndex(bs[j].lead, add(bRow, np * 16), bCol, kk * 16), false);
        for (size_t i = 0; i < as.size(); ++i) {
          SmallVector<Acc> &acc = c[i][j];
          acc[2 * np] = mma(a[i], {br[0], br[1]}, acc[2 * np]);
          acc[2 * np + 1] = mma(a[i], {br[2], br[3]}, acc[2 * np + 1]);
        }
      }
  }
  return c;
}

void BackwardBuilder::productsPB(ArrayRef<ArrayRef<Acc>> ps, const TileRef &bt,
                                 ArrayRef<SmallVectorImpl<Acc> *> accs) {
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value bRow = add(l8, mul(rem(g8, 2), 8));
  Value bCol = mul(div(lane, 16), 8);
  for (size_t kt = 0; kt < ps.front().size() / 2; ++kt) {
    SmallVector<SmallVector<Value>> a;
    for (ArrayRef<Acc> p : ps)
      a.push_back({packAccumulators(p[2 * kt][0], p[2 * kt][1]),
                   packAccumulators(p[2 * kt][2], p[2 * kt][3]),
                   packAccumulators(p[2 * kt + 1][0], p[2 * kt + 1][1]),
                   packAccumulators(p[2 * kt + 1][2], p[2 * kt + 1][3])});
    for (size_t dp = 0; dp < accs.front()->size() / 2; ++dp) {
      SmallVector<Value> br = ldmatrix(
          bt.tile, tileIndex(bt.lead, add(bRow, kt * 16), bCol, dp * 16), true);
      for (size_t i = 0; i < ps.size(); ++i) {
        SmallVectorImpl<Acc> &acc = *accs[i];
        acc[2 * dp] = mma(a[i], {br[0], br[1]}, acc[2 * dp]);
        acc[2 * dp + 1] = mma(a[i], {br[2], br[3]}, acc[2 * dp + 1]);
      }
    }
  }
}

Value BackwardBuilder::probability(Value s, Value shift, Value visible) {
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  Value p = exp2(fma(s, scaleLog2, shift));
  return visible ? select(visible, p, f32(0.0f)) : p;
}

std::array<SmallVector<Acc>, 2> BackwardBuilder::probabilities(
    ArrayRef<int64_t> heads, std::array<SmallVector<Acc>, 2> &s,
    function_ref<Value(int64_t, int64_t)> shift, Value needsMask,
    function_ref<Value(int64_t)> visible) {
  int64_t tiles = s[heads.front()].size();
  auto compute = [&](bool masked) {
    SmallVector<Value> flat;
    for (int64_t i = 0; i < tiles * 4; ++i) {
      Value vis = masked ? visible(i) : Value();
      for (int64_t h : heads)
        flat.push_back(probability(s[h][i / 4][i % 4], shift(h, i), vis));
    }
    scf::YieldOp::create(b, loc, flat);
  };
  auto ifOp = scf::IfOp::create(
      b, loc, needsMask, [&](OpBuilder &, Location) { compute(true); },
      [&](OpBuilder &, Location) { compute(false); });
  std::array<SmallVector<Acc>, 2> p;
  for (int64_t h : heads)
    p[h].resize(tiles);
  for (int64_t i = 0, at = 0; i < tiles * 4; ++i)
    for (int64_t h : heads)
      p[h][i / 4][i % 4] = ifOp.getResult(at++);
  return p;
}

SmallVector<Value> BackwardBuilder::pipelined(
    Value count, ValueRange init, function_ref<void(Value, Value)> load,
    function_ref<SmallVector<Value>(Value, Value, ValueRange)> body,
    function_ref<void()> afterPrologue) {
  int64_t stages = plan.stages;
  for (int64_t p = 0; p + 1 < stages; ++p) {
    ifThen(cmp(arith::CmpIPredicate::slt, idx(p), count),
           [&] { load(idx(p), idx(p)); });
    NVVM::CpAsyncCommitGroupOp::create(b, loc);
  }
  if (afterPrologue)
    afterPrologue();
  auto loop = scf::ForOp::create(
      b, loc, idx(0), count, idx(1), init,
      [&](OpBuilder &, Location, Value j, ValueRange carried) {
        Value next = add(j, stages - 1);
        ifThen(cmp(arith::CmpIPredicate::slt, next, count),
               [&] { load(next, rem(next, stages)); });
        NVVM::CpAsyncCommitGroupOp::create(b, loc);
        NVVM::CpAsyncWaitGroupOp::create(b, loc, stages - 1);
        gpu::BarrierOp::create(b, loc);
        SmallVector<Value> results = body(j, rem(j, stages), carried);
        // The stage read here is refilled by a later iteration.
        gpu::BarrierOp::create(b, loc);
        scf::YieldOp::create(b, loc, results);
      });
  NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
  return loop.getResults();
}
