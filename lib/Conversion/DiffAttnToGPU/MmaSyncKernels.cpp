//===- MmaSyncKernels.cpp - portable tensor-core kernels ------------------===//
//
// The DiffAttnToMmaSyncKernels pass and its core, emitMmaSyncKernel: the
// FlashAttention tiled form of a diffattn.v2 op mapped onto sm_80+ tensor
// cores. See the pass description in include/diffattn/Conversion/Passes.td
// for the mapping; the fragment layouts below follow the PTX ISA sections
// "Matrix Fragments for mma.m16n8k16" and "ldmatrix".
//
// Per CTA: 4 warps, 64 rows of one KV group, both heads of each row's pair.
// The rows of a group are (pair p of the group, query row i) pairs, numbered
// R = p * Sq + i: with many query rows a CTA holds 64 rows of one pair
// (prefill); with few (decode) it holds the rows of every pair of the group,
// so each K/V byte is read once for all query heads of its group. Per warp:
// 16 rows. A thread of lane l holds, of each 16x8 accumulator tile, the rows
// g = l / 4 and g + 8 at the columns 2 (l % 4) + {0, 1}.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU.h"
#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

#include <cmath>
#include <limits>

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNTOMMASYNCKERNELS
#include "diffattn/Conversion/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;

namespace {

constexpr int64_t kWarps = 4;
constexpr int64_t kThreads = 32 * kWarps;
constexpr int64_t kBlockQ = 16 * kWarps;
constexpr int64_t kStages = 2;
/// Row padding of shared-memory tiles (16 bytes): rows of 8 consecutive
/// ldmatrix addresses then fall in distinct banks.
constexpr int64_t kPad = 8;

/// A 16x8 f32 accumulator tile: c0, c1 (row g), c2, c3 (row g + 8).
using Acc = std::array<Value, 4>;

/// Everything the kernel is specialised on.
struct Plan {
  AttentionConfig attn;
  int64_t blockK;
  int64_t queryHeads, pairs, kvHeads, headDim, valueDim;
  int64_t sharedBytes;
  int64_t qTileBytes, kTileBytes;
  Type elementType, lamType;
  /// Split-KV (decode form): keys per split, 0 for none. Each CTA then
  /// covers one split of the keys and writes its partial softmax state to a
  /// workspace; a second kernel combines the splits and applies the
  /// epilogue.
  int64_t splitKeys = 0;
  int64_t pairsPerGroup() const { return pairs / kvHeads; }
  /// f32 elements of one partial row state: Dv accumulators, max, sum.
  int64_t partialWidth() const { return valueDim + 2; }
};

class MmaSyncKernelBuilder {
public:
  MmaSyncKernelBuilder(OpBuilder &b, Location loc, const Plan &plan)
      : b(b), loc(loc), plan(plan), ctx(b.getContext()) {}

  /// Fills the body of `func` (arguments: q, k, v, lam, [kv_len], out,
  /// [workspace], B, Sq, Sk).
  void build(gpu::GPUFuncOp func);

  /// Fills the body of the split-KV combine kernel (arguments: workspace,
  /// lam, out, B, Sq, Sk; one CTA of Dv threads per row of a KV group).
  void buildCombine(gpu::GPUFuncOp func);

private:
  // Scalar helpers.
  Value idx(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value f32(float v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, loc, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, loc, x, y); }
  Value mul(Value x, int64_t y) { return mul(x, idx(y)); }
  Value add(Value x, int64_t y) { return add(x, idx(y)); }
  Value div(Value x, int64_t y) {
    return arith::DivUIOp::create(b, loc, x, idx(y));
  }
  Value rem(Value x, int64_t y) {
    return arith::RemUIOp::create(b, loc, x, idx(y));
  }
  Value minI(Value x, Value y) { return arith::MinSIOp::create(b, loc, x, y); }
  Value maxI(Value x, Value y) { return arith::MaxSIOp::create(b, loc, x, y); }
  Value cmp(arith::CmpIPredicate p, Value x, Value y) {
    return arith::CmpIOp::create(b, loc, p, x, y);
  }
  Value select(Value c, Value x, Value y) {
    return arith::SelectOp::create(b, loc, c, x, y);
  }
  Value fmax(Value x, Value y) {
    return arith::MaxNumFOp::create(b, loc, x, y);
  }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, loc, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, loc, x, y); }
  Value fsub(Value x, Value y) { return arith::SubFOp::create(b, loc, x, y); }
  /// 2^x with the SFU's ex2.approx.ftz: `math.exp2` would lower to a
  /// libdevice call, which makes the PTX depend on finding libdevice.
  Value exp2(Value x) {
    return LLVM::CallIntrinsicOp::create(
               b, loc, b.getF32Type(),
               b.getStringAttr("llvm.nvvm.ex2.approx.ftz.f32"), ValueRange{x})
        .getResult(0);
  }
  Value shuffleXor(Value x, int32_t offset) {
    return gpu::ShuffleOp::create(b, loc, x, offset, 32,
                                  gpu::ShuffleMode::XOR)
        .getShuffleResult();
  }
  /// sigmoid(lam[index]) in f32: 1 / (1 + 2^(-x log2 e)).
  Value sigmoidOfLam(Value lam, Value index) {
    Value x = memref::LoadOp::create(b, loc, lam, ValueRange{index});
    if (!x.getType().isF32())
      x = arith::ExtFOp::create(b, loc, b.getF32Type(), x);
    Value one = f32(1.0f);
    return arith::DivFOp::create(
        b, loc, one,
        fadd(one, exp2(fmul(x, f32(-static_cast<float>(M_LOG2E))))));
  }
  /// acc / sum, or 0 for a row that saw no key.
  Value normalize(Value acc, Value sum) {
    Value seen =
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, sum, f32(0));
    return select(seen,
                  arith::DivFOp::create(b, loc, acc,
                                        select(seen, sum, f32(1.0f))),
                  f32(0.0f));
  }
  /// max / sum over the four lanes that hold one accumulator row.
  Value quadMax(Value x) {
    x = fmax(x, shuffleXor(x, 1));
    return fmax(x, shuffleXor(x, 2));
  }
  Value quadSum(Value x) {
    x = fadd(x, shuffleXor(x, 1));
    return fadd(x, shuffleXor(x, 2));
  }

  // Fragments.
  /// One 32-bit mma operand register from two 16-bit values.
  Value packOperand(Value pair);
  SmallVector<Value> ldmatrix(Value smem, ValueRange indices, bool transpose);
  Acc mma(ArrayRef<Value> a, ArrayRef<Value> bReg, const Acc &c);
  Acc zeroAcc() {
    Value z = f32(0.0f);
    return {z, z, z, z};
  }

  /// Issues cp.async copies of `rows` x `cols` elements: row r of the tile
  /// is `src[rowStart(r) ...]`, rows >= `validRows` are zero-filled.
  void copyTileAsync(Value src, function_ref<Value(Value)> rowStart,
                     Value validRows, Value dst, ValueRange dstLead,
                     int64_t rows, int64_t cols);

  /// The online-softmax state of one head of the pair: its accumulator
  /// tiles and the running max and sum of the thread's two rows.
  struct HeadState {
    SmallVector<Acc> acc;
    std::array<Value, 2> rowMax, rowSum;
  };

  /// Attention of both heads of the pair over one key block. Every K and V
  /// fragment loaded from shared memory feeds the products of both heads.
  void attendBlock(Value stage, Value key0, Value needsMask,
                   std::array<HeadState, 2> &heads);

  /// The online softmax of one head over the block's scores `s` (replaced
  /// by the probabilities); rescales the head's state.
  void softmaxBlock(SmallVectorImpl<Acc> &s, HeadState &head);

  OpBuilder &b;
  Location loc;
  const Plan &plan;
  MLIRContext *ctx;

  // Values of the kernel, set by build().
  Value lane, warp, keyLen, offset;
  /// Query rows (of the sequence) of the thread's two accumulator rows, and
  /// the smallest and largest query row of the CTA.
  std::array<Value, 2> threadRow;
  Value minRow, maxRow;
  Value sQ, sK, sV;
};

Value MmaSyncKernelBuilder::packOperand(Value pair) {
  // nvvm.mma.sync takes bf16 operands as i32 registers, f16 ones as
  // vector<2xf16>.
  if (plan.elementType.isF16())
    return pair;
  return LLVM::BitcastOp::create(b, loc, b.getI32Type(), pair);
}

SmallVector<Value> MmaSyncKernelBuilder::ldmatrix(Value smem,
                                                  ValueRange indices,
                                                  bool transpose) {
  auto type = VectorType::get({4, 2}, plan.elementType);
  Value frag = nvgpu::LdMatrixOp::create(b, loc, type, smem, indices,
                                         b.getBoolAttr(transpose),
                                         b.getI32IntegerAttr(4));
  SmallVector<Value> regs;
  for (int64_t i = 0; i < 4; ++i)
    regs.push_back(
        packOperand(vector::ExtractOp::create(b, loc, frag, i).getResult()));
  return regs;
}

Acc MmaSyncKernelBuilder::mma(ArrayRef<Value> a, ArrayRef<Value> bReg,
                              const Acc &c) {
  Type f32 = b.getF32Type();
  auto resultType = LLVM::LLVMStructType::getLiteral(ctx, {f32, f32, f32, f32});
  NVVM::MMATypes ptxType = plan.elementType.isF16() ? NVVM::MMATypes::f16
                                                    : NVVM::MMATypes::bf16;
  Value d = NVVM::MmaOp::create(
      b, loc, resultType, a, bReg, ValueRange(c), {16, 8, 16},
      /*b1Op=*/std::nullopt, /*intOverflow=*/std::nullopt,
      std::array<NVVM::MMATypes, 2>{ptxType, ptxType},
      std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                     NVVM::MMALayout::col});
  Acc r;
  for (int64_t i = 0; i < 4; ++i)
    r[i] = LLVM::ExtractValueOp::create(b, loc, d, i);
  return r;
}

void MmaSyncKernelBuilder::copyTileAsync(Value src,
                                         function_ref<Value(Value)> rowStart,
                                         Value validRows, Value dst,
                                         ValueRange dstLead, int64_t rows,
                                         int64_t cols) {
  // 16-byte chunks, spread over the CTA's threads.
  int64_t chunksPerRow = cols / 8;
  int64_t chunks = rows * chunksPerRow;
  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  for (int64_t first = 0; first < chunks; first += kThreads) {
    Value chunk = add(tid, first);
    auto emitCopy = [&]() {
      Value row = div(chunk, chunksPerRow);
      Value col = mul(rem(chunk, chunksPerRow), 8);
      Value valid = cmp(arith::CmpIPredicate::slt, row, validRows);
      // Rows past the valid ones read nothing (zero-fill) from a valid
      // address.
      Value srcIndex = select(valid, add(rowStart(row), col), idx(0));
      Value srcElements = select(valid, idx(8), idx(0));
      SmallVector<Value> dstIndices(dstLead);
      dstIndices.append({row, col});
      nvgpu::DeviceAsyncCopyOp::create(
          b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), dst, dstIndices, src,
          ValueRange{srcIndex}, b.getIndexAttr(8), srcElements,
          b.getUnitAttr());
    };
    if (first + kThreads <= chunks) {
      emitCopy();
    } else {
      auto inRange = cmp(arith::CmpIPredicate::ult, chunk, idx(chunks));
      scf::IfOp::create(b, loc, inRange, [&](OpBuilder &, Location) {
        emitCopy();
        scf::YieldOp::create(b, loc);
      });
    }
  }
}

void MmaSyncKernelBuilder::attendBlock(Value stage, Value key0,
                                       Value needsMask,
                                       std::array<HeadState, 2> &heads) {
  int64_t keyTiles = plan.blockK / 8;
  int64_t d = plan.headDim;
  Value l8 = rem(lane, 8), g8 = div(lane, 8);

  // S = Q Kᵀ for both heads: 16 x blockK per warp and head.
  std::array<SmallVector<Acc>, 2> s = {SmallVector<Acc>(keyTiles, zeroAcc()),
                                       SmallVector<Acc>(keyTiles, zeroAcc())};
  Value qRow = add(add(mul(warp, 16), l8), mul(rem(g8, 2), 8));
  Value qColLane = mul(div(lane, 16), 8);
  Value kRowLane = add(l8, mul(div(lane, 16), 8));
  Value kColLane = mul(rem(g8, 2), 8);
  for (int64_t kk = 0; kk < d / 16; ++kk) {
    std::array<SmallVector<Value>, 2> a;
    for (int64_t h = 0; h < 2; ++h)
      a[h] = ldmatrix(sQ, {idx(h), qRow, add(qColLane, kk * 16)}, false);
    for (int64_t np = 0; np < keyTiles / 2; ++np) {
      SmallVector<Value> kr = ldmatrix(
          sK, {stage, add(kRowLane, np * 16), add(kColLane, kk * 16)}, false);
      for (int64_t h = 0; h < 2; ++h) {
        s[h][2 * np] = mma(a[h], {kr[0], kr[1]}, s[h][2 * np]);
        s[h][2 * np + 1] = mma(a[h], {kr[2], kr[3]}, s[h][2 * np + 1]);
      }
    }
  }

  // Mask the blocks that straddle the mask boundary (or the key length).
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  SmallVector<Value> flat;
  for (int64_t h = 0; h < 2; ++h)
    for (const Acc &t : s[h])
      flat.append(t.begin(), t.end());
  auto ifOp = scf::IfOp::create(
      b, loc, needsMask,
      [&](OpBuilder &, Location) {
        SmallVector<Value> masked;
        Value colLane = add(key0, mul(rem(lane, 4), 2));
        SmallVector<Value> visible;
        for (int64_t nt = 0; nt < keyTiles; ++nt)
          for (int64_t e = 0; e < 4; ++e)
            visible.push_back(buildIsVisible(
                b, loc, plan.attn, threadRow[e / 2],
                add(colLane, nt * 8 + e % 2), offset, keyLen));
        for (int64_t h = 0; h < 2; ++h)
          for (int64_t i = 0; i < keyTiles * 4; ++i)
            masked.push_back(
                select(visible[i], flat[h * keyTiles * 4 + i], ninf));
        scf::YieldOp::create(b, loc, masked);
      },
      [&](OpBuilder &, Location) { scf::YieldOp::create(b, loc, flat); });
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t nt = 0; nt < keyTiles; ++nt)
      for (int64_t e = 0; e < 4; ++e)
        s[h][nt][e] = ifOp.getResult((h * keyTiles + nt) * 4 + e);

  for (int64_t h = 0; h < 2; ++h)
    softmaxBlock(s[h], heads[h]);

  // O += P V with P from registers: two accumulator tiles (16 keys) make
  // one A operand; each V fragment serves both heads.
  auto pairType = VectorType::get({2}, plan.elementType);
  auto packP = [&](Value x, Value y) {
    Value lo = arith::TruncFOp::create(b, loc, plan.elementType, x);
    Value hi = arith::TruncFOp::create(b, loc, plan.elementType, y);
    return packOperand(
        vector::FromElementsOp::create(b, loc, pairType, ValueRange{lo, hi}));
  };
  Value vRowLane = add(l8, mul(rem(g8, 2), 8));
  Value vColLane = mul(div(lane, 16), 8);
  for (int64_t kt = 0; kt < keyTiles / 2; ++kt) {
    std::array<SmallVector<Value>, 2> a;
    for (int64_t h = 0; h < 2; ++h)
      a[h] = {packP(s[h][2 * kt][0], s[h][2 * kt][1]),
              packP(s[h][2 * kt][2], s[h][2 * kt][3]),
              packP(s[h][2 * kt + 1][0], s[h][2 * kt + 1][1]),
              packP(s[h][2 * kt + 1][2], s[h][2 * kt + 1][3])};
    for (int64_t dp = 0; dp < plan.valueDim / 16; ++dp) {
      SmallVector<Value> vr = ldmatrix(
          sV, {stage, add(vRowLane, kt * 16), add(vColLane, dp * 16)}, true);
      for (int64_t h = 0; h < 2; ++h) {
        SmallVector<Acc> &acc = heads[h].acc;
        acc[2 * dp] = mma(a[h], {vr[0], vr[1]}, acc[2 * dp]);
        acc[2 * dp + 1] = mma(a[h], {vr[2], vr[3]}, acc[2 * dp + 1]);
      }
    }
  }
}

void MmaSyncKernelBuilder::softmaxBlock(SmallVectorImpl<Acc> &s,
                                        HeadState &head) {
  // Online softmax of the thread's two rows; exp2 with the scale folded in.
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  std::array<Value, 2> alpha;
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value m = s[0][2 * rr];
    for (const Acc &t : s)
      m = fmax(m, fmax(t[2 * rr], t[2 * rr + 1]));
    Value newMax = fmax(head.rowMax[rr], quadMax(m));
    // A row that has seen no key yet keeps max -inf: use 0 as the offset
    // so that exp2(-inf - 0) = 0, never NaN.
    Value safeMax = select(
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, newMax, ninf),
        f32(0.0f), newMax);
    Value shift = fmul(safeMax, scaleLog2);
    alpha[rr] = exp2(fsub(fmul(head.rowMax[rr], scaleLog2), shift));
    Value sum = f32(0.0f);
    for (Acc &t : s)
      for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e) {
        t[e] = exp2(fsub(fmul(t[e], scaleLog2), shift));
        sum = fadd(sum, t[e]);
      }
    head.rowMax[rr] = newMax;
    head.rowSum[rr] = fadd(fmul(head.rowSum[rr], alpha[rr]), sum);
  }
  for (Acc &t : head.acc)
    for (int64_t e = 0; e < 4; ++e)
      t[e] = fmul(t[e], alpha[e / 2]);
}

void MmaSyncKernelBuilder::build(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  bool decode = attn.hasKvLen;
  unsigned a = 0;
  Value q = entry.getArgument(a++), k = entry.getArgument(a++),
        v = entry.getArgument(a++), lam = entry.getArgument(a++);
  Value kvLen = decode ? entry.getArgument(a++) : Value();
  Value out = entry.getArgument(a++);
  Value workspace = plan.splitKeys ? entry.getArgument(a++) : Value();
  a++; // B: the grid's z extent.
  Value seqQ = entry.getArgument(a++), seqK = entry.getArgument(a++);

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  warp = div(tid, 32);
  Value qBlock = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  // The CTA's rows R0 .. R0 + rowsValid - 1 of the group's pairsPerGroup * Sq.
  int64_t pairsPerGroup = plan.pairsPerGroup();
  Value groupRows = mul(seqQ, pairsPerGroup);
  // Split-KV: grid x enumerates (split, row block).
  Value split, numSplits;
  if (plan.splitKeys) {
    Value rowBlocks = div(add(groupRows, kBlockQ - 1), kBlockQ);
    split = arith::DivUIOp::create(b, loc, qBlock, rowBlocks);
    qBlock = arith::RemUIOp::create(b, loc, qBlock, rowBlocks);
    numSplits = div(add(seqK, plan.splitKeys - 1), plan.splitKeys);
  }
  Value row0 = mul(qBlock, kBlockQ);
  Value rowsValid = minI(idx(kBlockQ), sub(groupRows, row0));
  Value firstPair = mul(kvHead, pairsPerGroup);
  auto pairOf = [&](Value r) { return add(firstPair, arith::DivUIOp::create(b, loc, r, seqQ)); };
  auto queryRowOf = [&](Value r) { return arith::RemUIOp::create(b, loc, r, seqQ).getResult(); };

  Value kvLenElem =
      decode ? memref::LoadOp::create(b, loc, kvLen, ValueRange{batch})
                   .getResult()
             : Value();
  keyLen = buildKeyLength(b, loc, kvLenElem, seqK);
  offset = sub(keyLen, seqQ);

  // Shared memory: Q of both heads, then the K and V stages.
  auto wg = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
  Value smem = gpu::DynamicSharedMemoryOp::create(
      b, loc, MemRefType::get({ShapedType::kDynamic}, b.getI8Type(), MemRefLayoutAttrInterface(), wg));
  auto view = [&](int64_t byteOffset, ArrayRef<int64_t> shape) -> Value {
    return memref::ViewOp::create(
        b, loc, MemRefType::get(shape, plan.elementType, MemRefLayoutAttrInterface(), wg), smem,
        idx(byteOffset), ValueRange{});
  };
  int64_t dPad = plan.headDim + kPad, dvPad = plan.valueDim + kPad;
  sQ = view(0, {2, kBlockQ, dPad});
  sK = view(plan.qTileBytes, {kStages, plan.blockK, dPad});
  sV = view(plan.qTileBytes + plan.kTileBytes,
            {kStages, plan.blockK, dvPad});

  // Q of both heads of each row's pair: one cp.async group together with
  // the first K/V block.
  for (int64_t s = 0; s < 2; ++s)
    copyTileAsync(
        q,
        [&](Value r) {
          Value global = add(row0, r);
          Value head = add(mul(pairOf(global), 2), s);
          return mul(add(mul(add(mul(batch, seqQ), queryRowOf(global)),
                             plan.queryHeads),
                         head),
                     plan.headDim);
        },
        rowsValid, sQ, {idx(s)}, kBlockQ, plan.headDim);

  // The query rows of the thread's two accumulator rows, and the range the
  // CTA covers (all of 0 .. Sq - 1 when its rows span two pairs).
  for (int64_t rr = 0; rr < 2; ++rr)
    threadRow[rr] =
        queryRowOf(add(add(row0, mul(warp, 16)), add(div(lane, 4), rr * 8)));
  Value lastGlobal = sub(add(row0, rowsValid), idx(1));
  Value onePair =
      cmp(arith::CmpIPredicate::eq, arith::DivUIOp::create(b, loc, row0, seqQ),
          arith::DivUIOp::create(b, loc, lastGlobal, seqQ));
  minRow = select(onePair, queryRowOf(row0), idx(0));
  maxRow = select(onePair, queryRowOf(lastGlobal), sub(seqQ, idx(1)));

  // Keys any row of the block may see: [lo, hi), lo on a block boundary.
  Value lo = idx(0), hi = keyLen;
  if (attn.windowLeft >= 0)
    lo = maxI(idx(0), sub(add(minRow, offset), idx(attn.windowLeft)));
  if (attn.windowRight >= 0)
    hi = minI(keyLen, add(add(maxRow, offset), idx(attn.windowRight + 1)));
  if (plan.splitKeys) {
    Value splitStart = mul(split, plan.splitKeys);
    lo = maxI(lo, splitStart);
    hi = minI(hi, add(splitStart, plan.splitKeys));
  }
  lo = sub(lo, rem(lo, plan.blockK));

  int64_t kStride = plan.kvHeads * plan.headDim;
  int64_t vStride = plan.kvHeads * plan.valueDim;
  auto loadKeyBlock = [&](Value key0, Value stage) {
    Value validKeys = minI(idx(plan.blockK), sub(keyLen, key0));
    Value rowBase = add(mul(batch, seqK), key0);
    Value kBase = mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.headDim);
    Value vBase = mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.valueDim);
    copyTileAsync(
        k, [&](Value r) { return add(kBase, mul(r, kStride)); }, validKeys, sK,
        {stage}, plan.blockK, plan.headDim);
    copyTileAsync(
        v, [&](Value r) { return add(vBase, mul(r, vStride)); }, validKeys, sV,
        {stage}, plan.blockK, plan.valueDim);
  };
  scf::IfOp::create(b, loc, cmp(arith::CmpIPredicate::slt, lo, hi),
                    [&](OpBuilder &, Location) {
                      loadKeyBlock(lo, idx(0));
                      scf::YieldOp::create(b, loc);
                    });
  NVVM::CpAsyncCommitGroupOp::create(b, loc);

  // Loop-carried state: per head, Dv/8 accumulator tiles, then max and sum
  // of the thread's two rows.
  int64_t valueTiles = plan.valueDim / 8;
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  SmallVector<Value> init;
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t t = 0; t < valueTiles * 4; ++t)
      init.push_back(f32(0.0f));
    init.append({ninf, ninf, f32(0.0f), f32(0.0f)});
  }
  int64_t perHead = valueTiles * 4 + 4;

  auto loop = scf::ForOp::create(
      b, loc, lo, hi, idx(plan.blockK), init,
      [&](OpBuilder &, Location, Value key0, ValueRange carried) {
        Value stage = rem(div(sub(key0, lo), plan.blockK), kStages);
        // Prefetch the next block into the other stage.
        Value next = add(key0, plan.blockK);
        scf::IfOp::create(b, loc, cmp(arith::CmpIPredicate::slt, next, hi),
                          [&](OpBuilder &, Location) {
                            loadKeyBlock(next, sub(idx(1), stage));
                            scf::YieldOp::create(b, loc);
                          });
        NVVM::CpAsyncCommitGroupOp::create(b, loc);
        NVVM::CpAsyncWaitGroupOp::create(b, loc, 1);
        gpu::BarrierOp::create(b, loc);

        // Is any key of the block hidden from any row of the block?
        Value needsMask =
            cmp(arith::CmpIPredicate::sgt, add(key0, plan.blockK), keyLen);
        if (attn.windowRight >= 0)
          needsMask = arith::OrIOp::create(
              b, loc, needsMask,
              cmp(arith::CmpIPredicate::sgt, add(key0, plan.blockK - 1),
                  add(add(minRow, offset), idx(attn.windowRight))));
        if (attn.windowLeft >= 0)
          needsMask = arith::OrIOp::create(
              b, loc, needsMask,
              cmp(arith::CmpIPredicate::slt, key0,
                  sub(add(maxRow, offset), idx(attn.windowLeft))));

        std::array<HeadState, 2> heads;
        for (int64_t h = 0; h < 2; ++h) {
          ValueRange st = carried.slice(h * perHead, perHead);
          heads[h].acc.resize(valueTiles);
          for (int64_t t = 0; t < valueTiles; ++t)
            for (int64_t e = 0; e < 4; ++e)
              heads[h].acc[t][e] = st[t * 4 + e];
          heads[h].rowMax = {st[valueTiles * 4], st[valueTiles * 4 + 1]};
          heads[h].rowSum = {st[valueTiles * 4 + 2], st[valueTiles * 4 + 3]};
        }
        attendBlock(stage, key0, needsMask, heads);
        SmallVector<Value> results;
        for (const HeadState &head : heads) {
          for (const Acc &t : head.acc)
            results.append(t.begin(), t.end());
          results.append({head.rowMax[0], head.rowMax[1], head.rowSum[0],
                           head.rowSum[1]});
        }
        // The stage read here is refilled by the next iteration.
        gpu::BarrierOp::create(b, loc);
        scf::YieldOp::create(b, loc, results);
      });
  ValueRange final = loop.getResults();
  // No copy may be in flight when the CTA exits (blocks whose rows see no
  // key skip the loop, and with it the wait for Q).
  NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);

  if (plan.splitKeys) {
    // Partial state of each row and head of this split: the accumulators,
    // the running max and the (quad-reduced) running sum.
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value global = add(add(row0, mul(warp, 16)), add(div(lane, 4), rr * 8));
      Value valid = cmp(arith::CmpIPredicate::slt, global, groupRows);
      std::array<Value, 2> sum;
      for (int64_t s = 0; s < 2; ++s)
        sum[s] = quadSum(final[s * perHead + valueTiles * 4 + 2 + rr]);
      scf::IfOp::create(b, loc, valid, [&](OpBuilder &, Location) {
        Value rowState =
            add(mul(add(mul(add(mul(batch, plan.kvHeads), kvHead), numSplits),
                        split),
                    groupRows),
                global);
        auto f32Pair = VectorType::get({2}, b.getF32Type());
        for (int64_t s = 0; s < 2; ++s) {
          Value base = mul(add(mul(rowState, 2), s), plan.partialWidth());
          for (int64_t t = 0; t < valueTiles; ++t) {
            Value pairValue = vector::FromElementsOp::create(
                b, loc, f32Pair,
                ValueRange{final[s * perHead + t * 4 + 2 * rr],
                           final[s * perHead + t * 4 + 2 * rr + 1]});
            vector::StoreOp::create(
                b, loc, pairValue, workspace,
                ValueRange{add(add(base, mul(rem(lane, 4), 2)), t * 8)});
          }
          Value first = cmp(arith::CmpIPredicate::eq, rem(lane, 4), idx(0));
          scf::IfOp::create(b, loc, first, [&](OpBuilder &, Location) {
            memref::StoreOp::create(
                b, loc, final[s * perHead + valueTiles * 4 + rr], workspace,
                ValueRange{add(base, plan.valueDim)});
            memref::StoreOp::create(b, loc, sum[s], workspace,
                                    ValueRange{add(base, plan.valueDim + 1)});
            scf::YieldOp::create(b, loc);
          });
        }
        scf::YieldOp::create(b, loc);
      });
    }
    gpu::ReturnOp::create(b, loc);
    return;
  }

  // Epilogue: normalise, combine the pair, write the single output head.
  int64_t lamStride = plan.pairs;
  auto outPairType = VectorType::get({2}, plan.elementType);
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value global = add(add(row0, mul(warp, 16)), add(div(lane, 4), rr * 8));
    Value valid = cmp(arith::CmpIPredicate::slt, global, groupRows);
    Value row = threadRow[rr];
    Value pair = pairOf(global);
    std::array<Value, 2> sum;
    for (int64_t s = 0; s < 2; ++s)
      sum[s] = quadSum(final[s * perHead + valueTiles * 4 + 2 + rr]);
    Value rowIndex = add(mul(batch, seqQ), row);
    Value lamIndex = select(valid, add(mul(rowIndex, lamStride), pair), idx(0));
    Value sig = sigmoidOfLam(lam, lamIndex);
    scf::IfOp::create(b, loc, valid, [&](OpBuilder &, Location) {
      Value outBase = mul(add(mul(rowIndex, plan.pairs), pair), plan.valueDim);
      Value colLane = mul(rem(lane, 4), 2);
      for (int64_t t = 0; t < valueTiles; ++t) {
        SmallVector<Value> vals;
        for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e) {
          Value o0 = normalize(final[t * 4 + e], sum[0]);
          Value o1 = normalize(final[perHead + t * 4 + e], sum[1]);
          vals.push_back(arith::TruncFOp::create(b, loc, plan.elementType,
                                                 fsub(o0, fmul(sig, o1))));
        }
        Value pairValue =
            vector::FromElementsOp::create(b, loc, outPairType, vals);
        vector::StoreOp::create(b, loc, pairValue, out,
                                ValueRange{add(add(outBase, colLane), t * 8)});
      }
      scf::YieldOp::create(b, loc);
    });
  }
  gpu::ReturnOp::create(b, loc);
}

void MmaSyncKernelBuilder::buildCombine(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  Value workspace = entry.getArgument(0), lam = entry.getArgument(1),
        out = entry.getArgument(2);
  Value seqQ = entry.getArgument(4), seqK = entry.getArgument(5);
  Value col = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value groupRow = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  int64_t pairsPerGroup = plan.pairsPerGroup();
  Value groupRows = mul(seqQ, pairsPerGroup);
  Value numSplits = div(add(seqK, plan.splitKeys - 1), plan.splitKeys);
  Value pair = add(mul(kvHead, pairsPerGroup),
                   arith::DivUIOp::create(b, loc, groupRow, seqQ));
  Value row = arith::RemUIOp::create(b, loc, groupRow, seqQ);
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  Value width = idx(plan.partialWidth());
  // Element `field` of the state of head `s` in split `sp`.
  auto stateIndex = [&](Value sp, int64_t s, Value field) {
    Value rowState = add(
        mul(add(mul(add(mul(batch, plan.kvHeads), kvHead), numSplits), sp),
            groupRows),
        groupRow);
    return add(mul(add(mul(rowState, 2), s), width), field);
  };
  auto load = [&](Value index) {
    return memref::LoadOp::create(b, loc, workspace, ValueRange{index})
        .getResult();
  };
  std::array<Value, 2> value;
  for (int64_t s = 0; s < 2; ++s) {
    // The largest max over the splits, then the rescaled sums.
    Value maxAll =
        scf::ForOp::create(
            b, loc, idx(0), numSplits, idx(1), ValueRange{ninf},
            [&](OpBuilder &, Location, Value sp, ValueRange it) {
              scf::YieldOp::create(
                  b, loc,
                  fmax(it[0], load(stateIndex(sp, s, idx(plan.valueDim)))));
            })
            .getResult(0);
    Value safeMax = select(
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, maxAll, ninf),
        f32(0.0f), maxAll);
    auto sums = scf::ForOp::create(
        b, loc, idx(0), numSplits, idx(1), ValueRange{f32(0.0f), f32(0.0f)},
        [&](OpBuilder &, Location, Value sp, ValueRange it) {
          Value m = load(stateIndex(sp, s, idx(plan.valueDim)));
          Value w = exp2(fmul(fsub(m, safeMax), scaleLog2));
          Value l = load(stateIndex(sp, s, idx(plan.valueDim + 1)));
          Value o = load(stateIndex(sp, s, col));
          scf::YieldOp::create(
              b, loc, ValueRange{fadd(it[0], fmul(w, o)), fadd(it[1], fmul(w, l))});
        });
    value[s] = normalize(sums.getResult(0), sums.getResult(1));
  }
  Value rowIndex = add(mul(batch, seqQ), row);
  Value sig = sigmoidOfLam(lam, add(mul(rowIndex, plan.pairs), pair));
  Value result = arith::TruncFOp::create(b, loc, plan.elementType,
                                         fsub(value[0], fmul(sig, value[1])));
  memref::StoreOp::create(
      b, loc, result, out,
      ValueRange{add(mul(add(mul(rowIndex, plan.pairs), pair), plan.valueDim),
                     col)});
  gpu::ReturnOp::create(b, loc);
}

/// Checks that the strategy supports `op` and fills the plan.
FailureOr<Plan> makePlan(Operation *op, const MmaSyncStrategyOptions &options) {
  auto v2 = dyn_cast<V2Op>(op);
  if (!v2)
    return op->emitOpError(
        "is not supported by the portable GPU strategy yet (only "
        "diffattn.v2 has GPU kernels)");
  Plan plan;
  plan.attn = AttentionConfig::get(op);
  plan.elementType = plan.attn.elementType;
  if (!plan.elementType.isF16() && !plan.elementType.isBF16())
    return op->emitOpError()
           << "element type " << plan.elementType
           << " is not supported by the portable GPU strategy (expected "
              "f16 or bf16)";
  plan.headDim = plan.attn.headDim;
  plan.valueDim = plan.attn.valueDim;
  if (plan.headDim != 64 && plan.headDim != 128)
    return op->emitOpError() << "head dimension D = " << plan.headDim
                             << " is not supported by the portable GPU "
                                "strategy (expected 64 or 128)";
  if (plan.valueDim != plan.headDim)
    return op->emitOpError() << "value dimension Dv = " << plan.valueDim
                             << " != D = " << plan.headDim
                             << " is not supported by the portable GPU "
                                "strategy";
  // Keys per block, measured on the H200 (docs/performance.md): D = 64
  // wants 64; D = 128 wants 32 now that both heads share every fragment
  // (64 spills ~90 bytes at 255 registers and was slower in two of three
  // runs).
  plan.blockK = options.blockK ? options.blockK : (plan.headDim == 128 ? 32 : 64);
  if (plan.blockK <= 0 || plan.blockK % 16 != 0 || plan.blockK > 128)
    return op->emitOpError() << "block-k = " << plan.blockK
                             << " is not supported (expected a multiple of "
                                "16 up to 128)";
  plan.pairs = plan.attn.numPairs;
  plan.queryHeads = 2 * plan.pairs;
  plan.kvHeads = plan.attn.numKeyHeads;
  plan.lamType = v2.getLam().getType().getElementType();
  // The decode form reads a KV cache with few query rows: split the keys so
  // that enough CTAs stream the cache (512 keys = 8 blocks per split).
  plan.splitKeys = plan.attn.hasKvLen ? options.splitKeys : 0;
  if (plan.splitKeys % plan.blockK != 0)
    return op->emitOpError() << "split-keys = " << plan.splitKeys
                             << " must be a multiple of block-k = "
                             << plan.blockK;
  int64_t elementBytes = 2;
  plan.qTileBytes = 2 * kBlockQ * (plan.headDim + kPad) * elementBytes;
  plan.kTileBytes = kStages * plan.blockK * (plan.headDim + kPad) * elementBytes;
  int64_t vTileBytes =
      kStages * plan.blockK * (plan.valueDim + kPad) * elementBytes;
  plan.sharedBytes = plan.qTileBytes + plan.kTileBytes + vTileBytes;
  return plan;
}

/// The launch rule of the kernel(s), for the manifest: grids as rules over
/// B, Sq, Sk (`ceil(mul * sym / by)`), block, dynamic shared memory and the
/// parameter list (memref descriptor fields of each buffer, then sizes).
/// Split-KV kernels have two stages and a workspace.
DictionaryAttr launchDescription(Builder &b, const Plan &plan, StringRef name,
                                 ArrayRef<StringRef> buffers) {
  auto paramsOf = [&](ArrayRef<StringRef> bufs) {
    SmallVector<Attribute> params;
    for (StringRef buf : bufs)
      for (StringRef field :
           {"allocated", "aligned", "offset", "size", "stride"})
        params.push_back(b.getDictionaryAttr(
            {b.getNamedAttr("arg", b.getStringAttr(buf)),
             b.getNamedAttr("field", b.getStringAttr(field))}));
    for (StringRef size : {"B", "Sq", "Sk"})
      params.push_back(b.getDictionaryAttr(
          {b.getNamedAttr("arg", b.getStringAttr(size)),
           b.getNamedAttr("field", b.getStringAttr("value"))}));
    return b.getArrayAttr(params);
  };
  auto ceilDiv = [&](StringRef sym, int64_t by, int64_t mulBy) -> Attribute {
    return b.getDictionaryAttr(
        {b.getNamedAttr("ceil_div", b.getStringAttr(sym)),
         b.getNamedAttr("mul", b.getI64IntegerAttr(mulBy)),
         b.getNamedAttr("by", b.getI64IntegerAttr(by))});
  };
  int64_t ppg = plan.pairsPerGroup();
  Attribute rowBlocks = ceilDiv("Sq", kBlockQ, ppg);
  SmallVector<NamedAttribute> common = {
      b.getNamedAttr("kind", b.getStringAttr("cuda")),
      b.getNamedAttr("strategy", b.getStringAttr("mma_sync")),
      b.getNamedAttr("block_q", b.getI64IntegerAttr(kBlockQ)),
      b.getNamedAttr("block_k", b.getI64IntegerAttr(plan.blockK))};
  auto stage = [&](StringRef function, ArrayRef<Attribute> grid,
                   int64_t threads, int64_t shared, ArrayAttr params) {
    return b.getDictionaryAttr(
        {b.getNamedAttr("function", b.getStringAttr(function)),
         b.getNamedAttr("grid", b.getArrayAttr(grid)),
         b.getNamedAttr("block", b.getI64ArrayAttr({threads, 1, 1})),
         b.getNamedAttr("dynamic_shared_memory", b.getI64IntegerAttr(shared)),
         b.getNamedAttr("params", params)});
  };
  if (!plan.splitKeys) {
    // x: blocks of the rows of a KV group (its pairs x Sq), y: KV heads.
    DictionaryAttr only =
        stage(name, {rowBlocks, b.getI64IntegerAttr(plan.kvHeads),
                     ceilDiv("B", 1, 1)},
              kThreads, plan.sharedBytes, paramsOf(buffers));
    SmallVector<NamedAttribute> attrs(common);
    attrs.append(only.getValue().begin(), only.getValue().end());
    return b.getDictionaryAttr(attrs);
  }
  // Stage 1, x: (split, row block) couples; stage 2, x: the group's rows.
  // The number of splits is ceil(Sk / splitKeys), but the grid rule is a
  // product of one ceil_div, so stage 1's x is rounded up per factor:
  // the kernel decodes x with the same two factors.
  SmallVector<StringRef> mainBuffers(buffers);
  mainBuffers.push_back("workspace");
  SmallVector<StringRef> combineBuffers = {"workspace", "lam", "out"};
  Attribute splitGrid = b.getDictionaryAttr(
      {b.getNamedAttr("product",
                      b.getArrayAttr({rowBlocks, ceilDiv("Sk", plan.splitKeys,
                                                         1)}))});
  SmallVector<NamedAttribute> attrs(common);
  attrs.push_back(b.getNamedAttr("split_keys",
                                 b.getI64IntegerAttr(plan.splitKeys)));
  attrs.push_back(b.getNamedAttr(
      "stages",
      b.getArrayAttr(
          {stage(name, {splitGrid, b.getI64IntegerAttr(plan.kvHeads),
                        ceilDiv("B", 1, 1)},
                 kThreads, plan.sharedBytes, paramsOf(mainBuffers)),
           stage((name + "_combine").str(),
                 {ceilDiv("Sq", 1, ppg), b.getI64IntegerAttr(plan.kvHeads),
                  ceilDiv("B", 1, 1)},
                 plan.valueDim, 0, paramsOf(combineBuffers))})));
  // f32 elements: B x Hkv x splits x (pairs of a group x Sq) x 2 heads x
  // (Dv + 2).
  attrs.push_back(b.getNamedAttr(
      "workspace",
      b.getDictionaryAttr(
          {b.getNamedAttr("dtype", b.getStringAttr("f32")),
           b.getNamedAttr("product",
                          b.getArrayAttr({ceilDiv("B", 1, 1),
                                          ceilDiv("Sk", plan.splitKeys, 1),
                                          ceilDiv("Sq", 1, 1)})),
           b.getNamedAttr("times",
                          b.getI64IntegerAttr(plan.kvHeads * ppg * 2 *
                                              plan.partialWidth()))})));
  return b.getDictionaryAttr(attrs);
}

} // namespace

LogicalResult
mlir::diffattn::emitMmaSyncKernel(RewriterBase &rewriter, func::FuncOp kernel,
                                  const MmaSyncStrategyOptions &options) {
  auto desc = kernel->getAttrOfType<DictionaryAttr>(kKernelAttrName);
  SmallVector<Operation *> ops = collectDiffAttnOps(kernel);
  if (!desc || ops.size() != 1)
    return kernel.emitError("not a diffattn kernel: run "
                            "diffattn-outline-kernels first");
  Operation *op = ops.front();
  FailureOr<Plan> plan = makePlan(op, options);
  if (failed(plan))
    return failure();

  Location loc = kernel.getLoc();
  MLIRContext *ctx = kernel.getContext();
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(kernel);
  auto gpuModule = gpu::GPUModuleOp::create(rewriter, loc,
                                            (kernel.getName() + "_module").str());
  rewriter.setInsertionPointToStart(gpuModule.getBody());

  // Kernel arguments: one 1-D buffer per tensor operand (contiguous BSHD),
  // then B, Sq, Sk.
  SmallVector<Type> argTypes;
  SmallVector<StringRef> buffers;
  for (Attribute arg : desc.getAs<ArrayAttr>("args")) {
    auto dict = cast<DictionaryAttr>(arg);
    StringRef name = dict.getAs<StringAttr>("name").getValue();
    if (dict.get("shape")) {
      buffers.push_back(name);
      StringRef dtype = dict.getAs<StringAttr>("dtype").getValue();
      Type elem = dtype == "i32"    ? Type(rewriter.getI32Type())
                  : dtype == "f32"  ? Type(rewriter.getF32Type())
                  : dtype == "bf16" ? Type(rewriter.getBF16Type())
                                    : Type(rewriter.getF16Type());
      argTypes.push_back(MemRefType::get({ShapedType::kDynamic}, elem));
    } else {
      argTypes.push_back(rewriter.getIndexType());
    }
  }
  Type workspaceType =
      MemRefType::get({ShapedType::kDynamic}, rewriter.getF32Type());
  if (plan->splitKeys)
    argTypes.insert(argTypes.begin() + buffers.size(), workspaceType);
  auto makeFunc = [&](StringRef name, ArrayRef<Type> types, int32_t threads) {
    auto func = gpu::GPUFuncOp::create(rewriter, loc, name,
                                       rewriter.getFunctionType(types, {}));
    func->setAttr(gpu::GPUDialect::getKernelFuncAttrName(),
                  rewriter.getUnitAttr());
    func.setKnownBlockSizeAttr(rewriter.getDenseI32ArrayAttr({threads, 1, 1}));
    return func;
  };
  auto func = makeFunc(kernel.getName(), argTypes, kThreads);
  MmaSyncKernelBuilder(rewriter, loc, *plan).build(func);
  if (plan->splitKeys) {
    // The combine stage: workspace, lam, out, B, Sq, Sk.
    Type index = rewriter.getIndexType();
    Type lamType = argTypes[3], outType = argTypes[buffers.size() - 1];
    rewriter.setInsertionPointAfter(func);
    auto combine =
        makeFunc((kernel.getName() + "_combine").str(),
                 {workspaceType, lamType, outType, index, index, index},
                 static_cast<int32_t>(plan->valueDim));
    MmaSyncKernelBuilder(rewriter, loc, *plan).buildCombine(combine);
  }

  NamedAttrList entry(desc);
  entry.set("launch",
            launchDescription(rewriter, *plan, kernel.getName(), buffers));
  func->setAttr(kKernelAttrName, DictionaryAttr::get(ctx, entry));
  rewriter.eraseOp(kernel);
  return success();
}

namespace {
struct DiffAttnToMmaSyncKernelsPass
    : public diffattn::impl::DiffAttnToMmaSyncKernelsBase<
          DiffAttnToMmaSyncKernelsPass> {
  using Base::Base;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    UnitAttr::get(&getContext()));
    IRRewriter rewriter(&getContext());
    MmaSyncStrategyOptions options;
    options.blockK = blockK;
    options.splitKeys = splitKeys;
    SmallVector<func::FuncOp> kernels;
    for (auto func : module.getOps<func::FuncOp>())
      if (func->hasAttr(kKernelAttrName))
        kernels.push_back(func);
    if (kernels.empty()) {
      module.emitError("no diffattn kernel to convert: run "
                       "diffattn-outline-kernels first");
      return signalPassFailure();
    }
    for (func::FuncOp kernel : kernels)
      if (failed(emitMmaSyncKernel(rewriter, kernel, options)))
        return signalPassFailure();
  }
};
} // namespace
