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
//   S_h^T = K q_h^T (h = 2p, 2p + 1), G^T = V dout^T: wgmma
//     m64n{blockQ}k16, all operands K-major in shared memory; the stage
//     holds both heads' q stacked in each span, and with stackScores (the
//     backward-stacking option; by default at D = 128) both heads' S^T are
//     one product [S_2p^T S_2p+1^T] = K [q_2p; q_2p+1]^T (m64n{2 blockQ}k16),
//     which reads the warpgroup's K once for both;
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
// The accumulating formulation (deterministic = false; FlashAttention-2's
// Algorithm 2, dq accumulated in f32) also computes each block's dq here,
// so that no dq kernel recomputes S and G (10 S-sized products per pair
// instead of 13): each warpgroup stores its keys' dS^T of both heads with
// stmatrix.trans as dS tiles (queries as rows, K-major over the CTA's 128
// keys); after a CTA barrier warpgroup w issues its part of dq beside dk's
// products: head w's dq_w^T = K^T dS_w^T (m64n{blockQ}k16 with A = K
// MN-major, imm-trans-a, one product per span of D), or with stackDq (the
// option's dq or both, the default at D = 128: blockQ = 32) dq of both
// heads stacked as 64 rows, dq_stacked = dS_stacked K over span w of D
// (wgmma m64n64k16, A = dS K-major, B = K MN-major, imm-trans-b;
// KeyKernelLayout::stacksDq). It adds the f32 result from its registers
// to the workspace's accumulator with red.global.add.v4.f32:
// the accumulator is a chunk per (batch, pair, query block) in the
// accumulators' fragment order, so that every reduction is 16 contiguous
// bytes per thread and 512 per warp (FlashAttention-3 stages dq in shared
// memory for a bulk reduction instead: measured 0.96-1.01x this on an
// H200, backward run 21, docs/performance.md). The conversion kernel
// (buildDqConvertKernel) reads the chunks back in the same order and
// writes dq through shared memory as whole 16-byte pieces of its rows.
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

void BackwardBuilder::setClampedKeyLength(const mma_sync::BackwardArgs &args,
                                          Value batch) {
  Value kvLenElem =
      args.kvLen ? memref::LoadOp::create(b, loc, args.kvLen, ValueRange{batch})
                       .getResult()
                 : Value();
  keyLen = buildKeyLength(b, loc, kvLenElem, args.seqK);
  offset = sub(keyLen, args.seqQ);
}

void BackwardBuilder::loadFirstBlock(Value count,
                                     function_ref<void(Value, Value)> load) {
  ifThen(cmp(arith::CmpIPredicate::sgt, count, idx(0)),
         [&] { load(idx(0), idx(0)); });
  NVVM::CpAsyncCommitGroupOp::create(b, loc);
}

SmallVector<Value> BackwardBuilder::pipelineBlocks(
    Value count, ValueRange init, function_ref<void(Value, Value)> load,
    function_ref<SmallVector<Value>(Value, Value, ValueRange,
                                    function_ref<void()>)>
        body) {
  auto loop = scf::ForOp::create(
      b, loc, idx(0), count, idx(1), init,
      [&](OpBuilder &, Location, Value j, ValueRange carried) {
        Value stage = rem(j, plan.stages);
        // Block j's copies (issued during block j - 1, or before block 0)
        // have landed; the async proxy reads them.
        NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
        fenceAsyncProxy();
        gpu::BarrierOp::create(b, loc);
        Value next = add(j, idx(1));
        auto loadNext = [&] {
          ifThen(cmp(arith::CmpIPredicate::slt, next, count),
                 [&] { load(next, rem(next, plan.stages)); });
          NVVM::CpAsyncCommitGroupOp::create(b, loc);
        };
        scf::YieldOp::create(b, loc, body(j, stage, carried, loadNext));
      });
  NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
  return loop.getResults();
}

Value BackwardBuilder::kMajorStep(Value low, int64_t rows, int64_t kk) {
  // As scoreDescriptors: the leading byte offset unused (1), 8-row groups
  // 1024 bytes apart; a k16 step is 32 bytes into the span's rows.
  int64_t span = kk / (kSpan / 16), within = (kk % (kSpan / 16)) * 32;
  return packDescriptor(
      advanceDescriptor(low, span * rows * kRowBytes + within), kAtomBytes);
}

SmallVector<Value>
BackwardBuilder::kMajorDescriptors(Value aOffset, int64_t aRows, Value bOffset,
                                   int64_t bRows, int64_t kDim) {
  Value a0 = descriptorLow(aOffset, 16), b0 = descriptorLow(bOffset, 16);
  SmallVector<Value> descriptors;
  for (int64_t kk = 0; kk < kDim / 16; ++kk)
    descriptors.append({kMajorStep(a0, aRows, kk), kMajorStep(b0, bRows, kk)});
  return descriptors;
}

SmallVector<Value> BackwardBuilder::mnMajorDescriptors(Value offset,
                                                       int64_t rows,
                                                       int64_t spanBytes) {
  Value low = descriptorLow(offset, spanBytes ? spanBytes : rows * kRowBytes);
  SmallVector<Value> descriptors;
  for (int64_t kt = 0; kt < rows / 16; ++kt)
    descriptors.push_back(packDescriptor(
        advanceDescriptor(low, kt * 16 * kRowBytes), kAtomBytes));
  return descriptors;
}

void BackwardBuilder::storeDsTiles(ArrayRef<SmallVector<Value>> dsRegs,
                                   int64_t dsOffset) {
  // Register 4 kt + i of a head (packProbabilities) is the 8 x 8 matrix of
  // keys 16 warpInGroup + 8 (i % 2) .. + 7 (rows, lane / 4) and query
  // columns 8 (2 kt + i / 2) .. + 7 (lane % 4 pairs): stmatrix x4 with
  // .trans stores matrix i as 8 rows, one per query (the address of lane
  // 8 i + query % 8), of 8 consecutive keys: one 16-byte chunk of the
  // query's row in the warpgroup's span of keys (PTX ISA "stmatrix").
  // The warpgroup's keys are span `warpgroup` of the CTA's; a head's
  // blockQ rows of it start at headRows(h) (KeyKernelLayout).
  bool stacked = KeyKernelLayout::stacksDq(plan);
  int64_t rowsBytes = plan.blockQ * kRowBytes;
  auto headRows = [&](int64_t h) {
    return stacked ? add(idx(dsOffset + h * rowsBytes),
                         mul(warpgroup, 2 * rowsBytes))
                   : add(idx(dsOffset + h * KeyKernelLayout::dsHeadBytes(plan)),
                         mul(warpgroup, rowsBytes));
  };
  Value matrix = div(lane, 8), query8 = rem(lane, 8);
  Value chunk = add(mul(warpInGroup, 2), rem(matrix, 2));
  for (int64_t h = 0; h < 2; ++h)
    for (size_t kt = 0; kt < dsRegs[h].size() / 4; ++kt) {
      Value query = add(mul(add(div(matrix, 2), 2 * kt), 8), query8);
      // blockQ is a multiple of 8: the row's 8-row phase is the query's.
      Value swizzled = arith::XOrIOp::create(b, loc, chunk, rem(query, 8));
      Value offset =
          add(headRows(h), add(mul(query, kRowBytes), mul(swizzled, 16)));
      NVVM::StMatrixOp::create(b, loc, sharedPointer(offset),
                               ArrayRef<Value>(dsRegs[h]).slice(4 * kt, 4),
                               NVVM::MMALayout::col,
                               NVVM::LdStMatrixShapeAttr::get(ctx, 8, 8),
                               NVVM::LdStMatrixEltType::B16);
    }
  // Generic-proxy writes that the dq products (async proxy) read.
  fenceAsyncProxy();
}

SmallVector<Value> BackwardBuilder::dqDescriptors(int64_t kOffset,
                                                  int64_t dsOffset,
                                                  int64_t span) {
  // A: span `span` of K (keys as the K dimension, D contiguous: MN-major).
  SmallVector<Value> a = mnMajorDescriptors(
      idx(kOffset + span * plan.blockK * kRowBytes), plan.blockK);
  // B: dS of head w, [blockK / 64 spans, blockQ, 64] (K-major).
  Value b0 = descriptorLow(
      add(idx(dsOffset), mul(warpgroup, KeyKernelLayout::dsHeadBytes(plan))),
      16);
  SmallVector<Value> descriptors;
  for (int64_t kk = 0; kk < plan.blockK / 16; ++kk)
    descriptors.append({a[kk], kMajorStep(b0, plan.blockQ, kk)});
  return descriptors;
}

SmallVector<Value> BackwardBuilder::stackedDqDescriptors(int64_t kOffset,
                                                         int64_t dsOffset) {
  // B: span w of K, one k16 step per 16 keys (2048 bytes).
  SmallVector<Value> bDesc = mnMajorDescriptors(
      add(idx(kOffset), mul(warpgroup, plan.blockK * kRowBytes)), plan.blockK);
  // A: the stacked dS, [blockK / 64 spans, 2 blockQ, 64] K-major.
  Value a0 = descriptorLow(idx(dsOffset), 16);
  SmallVector<Value> descriptors;
  for (int64_t kk = 0; kk < plan.blockK / 16; ++kk)
    descriptors.append({kMajorStep(a0, 2 * plan.blockQ, kk), bDesc[kk]});
  return descriptors;
}

Value BackwardBuilder::dqFragmentOffset(int64_t i) {
  return mul(add(add(idx(i * 2 * kWarpgroupThreads),
                     mul(warpgroup, kWarpgroupThreads)),
                 groupThread),
             4);
}

void BackwardBuilder::addDqFromRegisters(ArrayRef<Value> products,
                                         int64_t tiles, Value workspace,
                                         Value chunk) {
  for (size_t p = 0; p < products.size(); ++p) {
    SmallVector<Acc> acc = readAccumulators(products[p], tiles);
    fenceTiles(acc);
    for (int64_t nt = 0; nt < tiles; ++nt) {
      SmallVector<Value> operands = {mma_sync::workspaceAddress(
          *this, workspace, add(chunk, dqFragmentOffset(p * tiles + nt)))};
      operands.append(acc[nt].begin(), acc[nt].end());
      // No NVVM op expresses a vector reduction (PTX ISA "red": .v4.f32
      // on sm_90); the global address converted from generic.
      LLVM::InlineAsmOp::create(
          b, loc, TypeRange(), operands,
          "{\n.reg .u64 g;\ncvta.to.global.u64 g, $0;\n"
          "red.global.add.v4.f32 [g], {$1, $2, $3, $4};\n}",
          "l,f,f,f,f", /*has_side_effects=*/true, /*is_align_stack=*/false,
          LLVM::tailcallkind::TailCallKind::None,
          LLVM::AsmDialectAttr::get(ctx, LLVM::AsmDialect::AD_ATT),
          /*operand_attrs=*/ArrayAttr());
    }
  }
}

void BackwardBuilder::buildDqConvertKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  mma_sync::BackwardArgs args = mma_sync::readBackwardArgs(entry, plan.attn);
  int64_t blockQ = plan.blockQ, d = plan.headDim, ppg = plan.pairsPerGroup();
  int64_t qTiles = blockQ / 8, chunkFloats = 2 * d * blockQ;
  setThreadIndices();
  // CTA (x, kvHead, batch): query block x / ppg of pair kvHead ppg + x %
  // ppg; thread (warpgroup w, groupThread) reads the chunk's values that
  // the dk/dv kernel's thread of the same index added: of head 2 pair + w
  // (per-head dq^T), or of span w of D (stacked dq; the head from the
  // thread's rows), mapped below.
  Value x = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  Value qBlock = divRemU32(x, idx(ppg), /*remainder=*/false);
  Value pair = add(mul(kvHead, ppg), divRemU32(x, idx(ppg), true));
  Value q0 = mul(qBlock, blockQ);
  Value chunk = mma_sync::dqChunkOffset(
      *this, mma_sync::dqAccumulatorOffset(*this, args.seqQ, plan.pairs), batch,
      pair, qBlock, args.seqQ, plan.pairs, blockQ, chunkFloats);
  Value colLane = mul(rem(lane, 4), 2);
  Value scale = f32(plan.attn.scale);
  Type elem = plan.elementType;
  auto f32x4 = VectorType::get({4}, b.getF32Type());
  // The chunk goes through shared memory, [2 heads][blockQ rows][D + 8] of
  // T (rows padded by 16 bytes, so that the scattered 2-byte writes below
  // fall in distinct banks), and leaves as whole 16-byte row pieces: the
  // fragment order's direct stores wrote 2 bytes each, half of each 32-byte
  // sector per instruction (stacked dq: 0.48 ms at 4 x 4096, D = 128,
  // against 0.14 ms per head, H200 backward run 36's profile).
  int64_t rowElems = d + kDqConvertPad;
  Value tile = sharedView(0, {2, blockQ, rowElems}, elem);
  // Writes value `e` of `quad`, times scale, at (head 0/1 of the pair, row
  // of the block, column).
  auto put = [&](Value quad, int64_t e, Value head, Value row, Value column) {
    storeAs(tile, fmul(vector::ExtractOp::create(b, loc, quad, e), scale),
            {head, row, column});
  };
  auto loadQuad = [&](int64_t i) {
    return vector::LoadOp::create(b, loc, f32x4, args.workspace,
                                  ValueRange{add(chunk, dqFragmentOffset(i))},
                                  /*nontemporal=*/false, llvm::Align(16))
        .getResult();
  };
  if (KeyKernelLayout::stacksDq(plan)) {
    // Value e of tile nt (wgmma m64n64 D fragment): stacked row 16
    // warpInGroup + lane / 4 + 8 (e / 2), i.e. head 2 pair + warpInGroup / 2
    // and query q0 + 16 (warpInGroup % 2) + lane / 4 + 8 (e / 2); D column
    // 64 warpgroup + 8 nt + colLane + e % 2.
    Value head = div(warpInGroup, 2);
    Value row0 = add(mul(rem(warpInGroup, 2), 16), div(lane, 4));
    for (int64_t nt = 0; nt < kSpan / 8; ++nt) {
      Value quad = loadQuad(nt);
      for (int64_t e = 0; e < 4; ++e)
        put(quad, e, head, add(row0, idx(8 * (e / 2))),
            add(add(mul(warpgroup, kSpan), colLane), idx(8 * nt + e % 2)));
    }
  } else {
    // Value e of tile nt of span `span` (wgmma m64n{blockQ} D fragment of
    // dq^T): D column 64 span + 16 warpInGroup + lane / 4 + 8 (e / 2),
    // query row q0 + 8 nt + colLane + e % 2, head 2 pair + warpgroup.
    for (int64_t span = 0; span < d / kSpan; ++span)
      for (int64_t nt = 0; nt < qTiles; ++nt) {
        Value quad = loadQuad(span * qTiles + nt);
        for (int64_t e = 0; e < 4; ++e)
          put(quad, e, warpgroup, add(colLane, idx(nt * 8 + e % 2)),
              add(add(mul(warpInGroup, 16), div(lane, 4)),
                  idx(span * kSpan + 8 * (e / 2))));
      }
  }
  gpu::BarrierOp::create(b, loc);
  // Piece c = i 256 + tid (i < 2 blockQ D / 8 / 256): head c / (blockQ D /
  // 8), row (c / (D / 8)) % blockQ, columns 8 (c % (D / 8)) .. + 7; rows
  // at or past Sq are dropped. One 16-byte store per piece where dq starts
  // 16-byte aligned (as the runtime's and torch's allocations do; kernel
  // buffers are flat memrefs at offset 0), else eight 2-byte stores (a
  // uniform branch).
  int64_t pieces = d / 8, threads = 2 * kWarpgroupThreads;
  assert((2 * blockQ * pieces) % threads == 0 &&
         "every thread stores the same number of pieces");
  auto piece8 = VectorType::get({8}, elem);
  Value aligned = startsAligned(args.dq, 16);
  auto storePieces = [&](bool vectors) {
    for (int64_t i = 0; i < 2 * blockQ * pieces / threads; ++i) {
      Value c = add(idx(i * threads), tid);
      Value head = div(c, blockQ * pieces);
      Value row = rem(div(c, pieces), blockQ);
      Value column = mul(rem(c, pieces), 8);
      Value query = add(q0, row);
      ifThen(cmp(arith::CmpIPredicate::slt, query, args.seqQ), [&] {
        Value values = vector::LoadOp::create(
            b, loc, piece8, tile, ValueRange{head, row, column},
            /*nontemporal=*/false, llvm::Align(16));
        Value at =
            add(mul(add(mul(add(mul(batch, args.seqQ), query), plan.queryHeads),
                        add(mul(pair, 2), head)),
                    d),
                column);
        if (vectors) {
          vector::StoreOp::create(b, loc, values, args.dq, ValueRange{at},
                                  /*nontemporal=*/false, llvm::Align(16));
          return;
        }
        for (int64_t e = 0; e < 8; ++e)
          memref::StoreOp::create(b, loc,
                                  vector::ExtractOp::create(b, loc, values, e),
                                  args.dq, ValueRange{add(at, idx(e))});
      });
    }
  };
  ifThenElse(
      aligned, [&] { storePieces(true); }, [&] { storePieces(false); });
  gpu::ReturnOp::create(b, loc);
}

void BackwardBuilder::buildKeyKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  mma_sync::BackwardArgs args = mma_sync::readBackwardArgs(entry, attn);
  int64_t blockKeys = plan.blockK, blockQ = plan.blockQ;
  int64_t d = plan.headDim, dv = plan.valueDim, ppg = plan.pairsPerGroup();
  int64_t threads = plan.threads();
  Value seqQ = args.seqQ, seqK = args.seqK;
  KeyKernelLayout layout(plan, reduceDq);
  bool stackedDq = KeyKernelLayout::stacksDq(plan);
  assert(layout.ds % kAtomBytes == 0 && "dS tiles must be atom-aligned");

  setThreadIndices();
  // The grid is (key blocks, KV heads, B) as the portable kernel's, but
  // CTAs take their tiles in launch order key block by key block: the
  // first key blocks, which the most query rows see (causal masks), start
  // first (without this, ncu showed 13% of the SMs' cycles idle in the
  // last wave at 4 x 4096 causal, H200 backward run 14).
  std::array<Value, 3> ids = blockIdsXSlowest();
  Value keyBlock = ids[0], kvHead = ids[1], batch = ids[2];
  Value key0 = mul(keyBlock, blockKeys);
  Value firstPair = mul(kvHead, ppg);
  Value qRowBase = mul(batch, seqQ), kRowBase = mul(batch, seqK);
  setClampedKeyLength(args, batch);

  alignSharedBase();
  Type elem = plan.elementType;
  int64_t dSpans = d / kSpan, vSpans = dv / kSpan;
  Value sKeys =
      sharedViewAt(add(base, idx(layout.k)), {dSpans, blockKeys, kSpan}, elem);
  Value sValues =
      sharedViewAt(add(base, idx(layout.v)), {vSpans, blockKeys, kSpan}, elem);
  Value sQuery = sharedViewAt(add(base, idx(layout.q)),
                              {plan.stages, dSpans, 2 * blockQ, kSpan}, elem);
  Value sDout = sharedViewAt(add(base, idx(layout.dout)),
                             {plan.stages, vSpans, blockQ, kSpan}, elem);
  Value sStat = sharedViewAt(add(base, idx(layout.stat)),
                             {plan.stages, blockQ, kStatWidth}, b.getF32Type());
  // The accumulating formulation's accumulator and its chunks.
  int64_t chunkFloats = 2 * d * blockQ;
  Value accBase = reduceDq
                      ? mma_sync::dqAccumulatorOffset(*this, seqQ, plan.pairs)
                      : Value();

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

  // The query blocks of the rows that may see a key of the CTA's.
  auto [qlo, queryBlocks] = mma_sync::keyBlockQueries(
      *this, attn, key0, blockKeys, blockQ, offset, keyLen, seqQ);
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
          plan.queryHeads * d, rows, sQuery, {stage}, blockQ, d, tid, threads,
          /*dstRow=*/h * blockQ);
    copyRows(args.dout, mul(add(mul(rowIndex, plan.pairs), pair), dv),
             plan.pairs * dv, rows, sDout, {stage}, blockQ, dv, tid, threads);
    mma_sync::copyRecordsAsync(*this, args, sStat, stage, batch, pair, q0, rows,
                               tid, blockQ, plan.pairs);
  };
  loadFirstBlock(count, load);

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
  SmallVector<Value> final = pipelineBlocks(
      count, init, load,
      [&](Value j, Value stage, ValueRange carried,
          function_ref<void()> loadNext) -> SmallVector<Value> {
        auto [pair, q0] = blockOf(j);

        // S_h^T = K q_h^T and G^T = V dout^T. With stackScores both heads
        // as one product [S_2p^T S_2p+1^T] = K [q_2p; q_2p+1]^T over the
        // stage's 2 blockQ rows (the warpgroup's K read once for both).
        Value qStage = add(idx(layout.q), mul(stage, layout.qStageBytes(plan)));
        Value kRows = add(idx(layout.k), warpgroupRows);
        SmallVector<SmallVector<Value>> sDesc;
        if (plan.stackScores)
          sDesc.push_back(
              kMajorDescriptors(kRows, blockKeys, qStage, 2 * blockQ, d));
        else
          for (int64_t h = 0; h < 2; ++h)
            sDesc.push_back(kMajorDescriptors(
                kRows, blockKeys, add(qStage, idx(h * blockQ * kRowBytes)),
                2 * blockQ, d));
        Value doutStage =
            add(idx(layout.dout), mul(stage, layout.doutStageBytes(plan)));
        SmallVector<Value> gDesc =
            kMajorDescriptors(add(idx(layout.v), warpgroupRows), blockKeys,
                              doutStage, blockQ, dv);
        SmallVector<Value> dvDesc = mnMajorDescriptors(doutStage, blockQ);
        // q_h alone for dk's products: its blockQ rows of each span.
        int64_t qSpanBytes = 2 * blockQ * kRowBytes;
        SmallVector<Value> dkDesc[2] = {
            mnMajorDescriptors(qStage, blockQ, qSpanBytes),
            mnMajorDescriptors(add(qStage, idx(blockQ * kRowBytes)), blockQ,
                               qSpanBytes)};
        SmallVector<SmallVector<Value>> dqDesc;
        if (reduceDq && stackedDq)
          dqDesc.push_back(stackedDqDescriptors(layout.k, layout.ds));
        else if (reduceDq)
          for (int64_t span = 0; span < dSpans; ++span)
            dqDesc.push_back(dqDescriptors(layout.k, layout.ds, span));
        // Three commit groups, waited for in order: S^T of both heads, then
        // G^T (in flight while P^T is computed), then dv's product (in
        // flight while dS^T is).
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        SmallVector<Value> scores;
        for (ArrayRef<Value> descriptors : sDesc)
          scores.push_back(issueSharedProduct(
              descriptors, 2 * blockQ / static_cast<int64_t>(sDesc.size())));
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        Value g = issueSharedProduct(gDesc, blockQ);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        loadNext();
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
        SmallVector<Acc> both;
        for (Value product : scores)
          both.append(readAccumulators(product, 2 * qTiles / scores.size()));
        fenceTiles(both);
        // Tiles 0 .. qTiles - 1: head 2p's queries; then head 2p + 1's.
        std::array<SmallVector<Acc>, 2> s = {
            SmallVector<Acc>(ArrayRef<Acc>(both).take_front(qTiles)),
            SmallVector<Acc>(ArrayRef<Acc>(both).drop_front(qTiles))};

        // The records of the thread's columns (query rows 8 nt + colLane
        // + c of the block).
        mma_sync::ColumnRecords records =
            mma_sync::loadColumnRecords(*this, sStat, stage, colLane, qTiles);
        ArrayRef<Value> colSig = records.sigmoid, colEven = records.deltaEven,
                        colOdd = records.deltaOdd;
        // P_h^T, masked only where the block straddles a bound (or Sq).
        Value needsMask = mma_sync::keyBlockNeedsMask(
            *this, attn, key0, blockKeys, q0, blockQ, seqQ, offset, keyLen);
        auto computeP = [&](bool masked) {
          SmallVector<Value> flat;
          for (int64_t i = 0; i < qTiles * 4; ++i) {
            int64_t c = (i / 4) * 2 + i % 2;
            Value visible =
                masked
                    ? mma_sync::keyColumnVisible(*this, attn, q0, colLane, i,
                                                 keyRow, seqQ, offset, keyLen)
                    : Value();
            for (int64_t h = 0; h < 2; ++h) {
              Value p =
                  exp2(fma(s[h][i / 4][i % 4], scaleLog2, records.shift[h][c]));
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
        // The accumulating formulation: dS of both heads to shared memory
        // (before the registers become a product's operand); after the
        // barrier every warpgroup's dS is there, and dq_w^T = K^T dS_w^T is
        // committed before dk's products, so that its reductions run while
        // dk's products do (ncu, backward run 24: with the reductions last
        // in the block, the top of the next one stalled on their
        // registers).
        SmallVector<Value> dqProducts;
        if (reduceDq) {
          storeDsTiles(dsRegs, layout.ds);
          gpu::BarrierOp::create(b, loc);
          NVVM::WgmmaFenceAlignedOp::create(b, loc);
          for (ArrayRef<Value> descriptors : dqDesc)
            dqProducts.push_back(stackedDq
                                     ? issueSharedProduct(descriptors, kSpan,
                                                          /*transposeA=*/false,
                                                          /*transposeB=*/true)
                                     : issueSharedProduct(descriptors, blockQ,
                                                          /*transposeA=*/true));
          NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        }
        NVVM::WgmmaFenceAlignedOp::create(b, loc);
        issueRegisterProduct(dsRegs[0], dkDesc[0], dk);
        issueRegisterProduct(dsRegs[1], dkDesc[1], dk);
        NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
        if (reduceDq) {
          NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 1);
          // The block's pair and rows again, next to their use: reusing the
          // body's changes ptxas's schedule of this 255-register kernel (not
          // the validated PTX of H200 backward run 25).
          auto [pair, q0] = blockOf(j);
          addDqFromRegisters(
              dqProducts, (stackedDq ? kSpan : blockQ) / 8, args.workspace,
              mma_sync::dqChunkOffset(*this, accBase, batch, pair,
                                      div(q0, blockQ), seqQ, plan.pairs, blockQ,
                                      chunkFloats));
        }
        NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
        SmallVector<Value> aRegs(pvRegs);
        aRegs.append(dsRegs[0]);
        aRegs.append(dsRegs[1]);
        keepLive(aRegs);
        fenceTiles(dk);
        fenceTiles(dvAcc);
        SmallVector<Value> results;
        for (const Acc &t : dk)
          results.append(t.begin(), t.end());
        for (const Acc &t : dvAcc)
          results.append(t.begin(), t.end());
        return results;
      });

  // dk = scale * sum_j dS_j^T q_j and dv of the thread's keys (zero for
  // keys no query sees, and past kv_len).
  mma_sync::writeKeyGradients(*this, args, final, keyRow, kRowBase, kvHead,
                              colLane, plan);
  gpu::ReturnOp::create(b, loc);
}

int64_t
mlir::diffattn::wgmma::backwardDqConvertSharedBytes(const WgmmaPlan &plan) {
  return 2 * plan.blockQ * (plan.headDim + kDqConvertPad) * 2;
}

int64_t mlir::diffattn::wgmma::backwardKeySharedBytes(const WgmmaPlan &plan,
                                                      bool reduceDq) {
  // The tiles, and the 1024 bytes that aligning their start may skip.
  return KeyKernelLayout(plan, reduceDq).end + kAtomBytes;
}

void mlir::diffattn::wgmma::buildBackwardKeyKernel(OpBuilder &b, Location loc,
                                                   gpu::GPUFuncOp func,
                                                   const WgmmaPlan &plan,
                                                   bool reduceDq) {
  BackwardBuilder builder(b, loc, plan);
  builder.reduceDq = reduceDq;
  builder.buildKeyKernel(func);
}

void mlir::diffattn::wgmma::buildBackwardDqConvertKernel(
    OpBuilder &b, Location loc, gpu::GPUFuncOp func, const WgmmaPlan &plan) {
  BackwardBuilder(b, loc, plan).buildDqConvertKernel(func);
}
