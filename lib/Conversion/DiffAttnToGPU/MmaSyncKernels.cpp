//===- MmaSyncKernels.cpp - portable tensor-core kernels ------------------===//
//
// The DiffAttnToMmaSyncKernels pass and its core, emitMmaSyncKernel: the
// FlashAttention tiled form of a diffattn.v2 op mapped onto sm_80+ tensor
// cores. See the pass description in include/diffattn/Conversion/Passes.td
// for the mapping; the fragment layouts below follow the PTX ISA sections
// "Matrix Fragments for mma.m16n8k16" and "ldmatrix".
//
// Row-block (prefill) kernels: per CTA, 4 or 8 warps of 16 rows of one KV
// group, a row being a (pair p of the group, query row i) couple numbered
// R = p * Sq + i with both heads of the pair, so the differential epilogue
// is local to the thread. Split-KV (decode form) kernels: per CTA, 16 rows
// that are (query head h of the group, query row i) couples, R = h * Sq + i,
// shared by all warps, which take the split's key blocks in turn and merge
// their states at the end. Either way each K/V byte a CTA loads serves all
// its rows. A thread of lane l holds, of each 16x8 accumulator tile, the
// rows g = l / 4 and g + 8 at the columns 2 (l % 4) + {0, 1}.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU.h"
#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"
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

/// Two layouts of the shared-memory tiles keep the 8 row addresses of an
/// ldmatrix in distinct banks:
/// - padded: each row padded by 16 bytes (kPad elements). Addresses of a
///   lane's fragments differ by constants, which fold into the load's
///   immediate offset. But a cp.async whose 128 destination bytes straddle
///   two 128-byte lines is split, and asks L2 for 1.5x the sectors of the
///   K/V stream (4-5% of decode bandwidth on an H200).
/// - swizzled: unpadded rows, chunk c (16 bytes) of row r stored at chunk
///   c ^ (r % kSwizzleRows); 8 consecutive threads copying one row write
///   one 128-byte line. Addresses need an XOR, and registers, per 16-byte
///   column offset within a kSwizzleSpan-element span.
constexpr int64_t kPad = 8;
constexpr int64_t kSwizzleRows = 8;
/// Elements of a 16-byte chunk (2-byte elements).
constexpr int64_t kChunkElements = 8;
constexpr int64_t kSwizzleSpan = kSwizzleRows * kChunkElements;

/// A 16x8 f32 accumulator tile: c0, c1 (row g), c2, c3 (row g + 8).
using Acc = std::array<Value, 4>;

/// Everything the kernel is specialised on.
struct Plan {
  AttentionConfig attn;
  /// Warps per CTA.
  int64_t warps;
  /// Heads per tile row: 2 (a row is a (pair, query row) couple holding
  /// both heads of the pair, so the epilogue is local), or 1 (a row is a
  /// (query head, query row) couple: split-KV, whose epilogue runs in the
  /// combine kernel; half the accumulators and products per key).
  int64_t headsPerRow = 2;
  /// Tile rows of a KV group per query row.
  int64_t rowsPerQuery() const {
    return pairsPerGroup() * (headsPerRow == 2 ? 1 : 2);
  }
  /// Split-KV: the largest Sq for which one CTA holds every row of its KV
  /// group (a launch with one split then writes the output directly), or
  /// 0.
  int64_t directSqMax() const { return 16 / rowsPerQuery(); }
  int64_t threads() const { return 32 * warps; }
  /// Rows of a KV group per CTA: 16 per warp (row blocks), or 16 shared by
  /// all warps (split-KV).
  int64_t blockQ;
  /// Keys per block, and K/V blocks in flight per pipeline (the CTA's, or
  /// each warp's with split-KV).
  int64_t blockK, stages;
  int64_t queryHeads, pairs, kvHeads, headDim, valueDim;
  int64_t sharedBytes;
  int64_t qTileBytes, kTileBytes, vTileBytes;
  Type elementType, lamType;
  /// Split-KV (decode form): keys per split, 0 for none. Each CTA then
  /// covers one split of the keys with 16 rows; its warps take the split's
  /// key blocks in turn, each with its own pipeline, and merge their states
  /// through shared memory at the end. The CTA writes the partial softmax
  /// state of its rows to a workspace; a second kernel combines the splits
  /// and applies the epilogue.
  bool splitKV = false;
  /// Keys per split: fixed at compile time, or 0 for the runtime's choice
  /// (a multiple of blockK * warps aiming at splitTargetCtas CTAs).
  int64_t fixedSplitKeys = 0;
  int64_t splitTargetCtas = 0;
  /// Lazy rescaling: the softmax offsets move only when a probability would
  /// exceed 2^rescaleThreshold (0: they move with every block).
  float rescaleThreshold = 0;
  /// Split-KV: whole K/V tiles are copied with cp.async's L2::128B prefetch
  /// qualifier (inline PTX; an opt-in, see --l2-prefetch).
  bool l2Prefetch = false;
  /// Tiles in the swizzled layout (else padded).
  bool swizzle = false;
  /// Split-KV: the combine kernel is a programmatic dependent launch.
  bool programmaticLaunch = false;
  /// Row padding of the tiles (elements).
  int64_t rowPad() const { return swizzle ? 0 : kPad; }
  int64_t pairsPerGroup() const { return pairs / kvHeads; }
  /// f32 elements of one partial row state: Dv accumulators, max, sum.
  int64_t partialWidth() const { return valueDim + 2; }
  /// Split-KV: bytes of the warps' accumulators and (max, sum) pairs
  /// exchanged by the merge (over the K/V stages).
  int64_t mergeAccBytes() const {
    return warps * headsPerRow * 16 * valueDim * 4;
  }
  int64_t mergeStatBytes() const { return warps * headsPerRow * 16 * 2 * 4; }
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
  /// SPEC.md: 0 <= kv_len[b] <= Sk is checked at run time, with no host
  /// synchronisation and no extra launch. Thread 0 of CTA (0, 0, b) raises a
  /// device-side assertion (cf.assert, lowered to the PTX system call
  /// `__assertfail`) when `kvLen` (kv_len[b], i32) is out of range: PyTorch's
  /// convention for device-side index errors. The launch's stream then
  /// reports CUDA_ERROR_ASSERT ("device-side assert triggered") at the
  /// caller's next synchronisation, and the device prints the message below,
  /// which names kv_len. Every other thread goes on with kv_len clamped to
  /// [0, Sk] (buildKeyLength), so nothing out of bounds is read.
  void assertKeyLengthInRange(Value kvLen, Value seqK, Value tid) {
    Value len = arith::IndexCastOp::create(b, loc, b.getIndexType(), kvLen);
    Value inRange = arith::AndIOp::create(
        b, loc, cmp(arith::CmpIPredicate::sge, len, idx(0)),
        cmp(arith::CmpIPredicate::sle, len, seqK));
    Value reporter = cmp(arith::CmpIPredicate::eq, tid, idx(0));
    for (gpu::Dimension dim : {gpu::Dimension::x, gpu::Dimension::y})
      reporter = arith::AndIOp::create(
          b, loc, reporter,
          cmp(arith::CmpIPredicate::eq, gpu::BlockIdOp::create(b, loc, dim),
              idx(0)));
    Value silent = arith::XOrIOp::create(
        b, loc, reporter,
        arith::ConstantOp::create(b, loc, b.getBoolAttr(true)));
    cf::AssertOp::create(
        b, loc, arith::OrIOp::create(b, loc, inRange, silent),
        "diffattn: kv_len[b] out of range [0, Sk] (b = blockIdx.z)");
  }

  // Scalar helpers.
  Value idx(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value f32(float v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value i32(int32_t v) {
    return arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(v));
  }
  /// A `shape` view of `elementType` at `byteOffset` of the dynamic shared
  /// memory (created once per kernel, at the first view).
  Value sharedView(int64_t byteOffset, ArrayRef<int64_t> shape,
                   Type elementType) {
    auto wg = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
    if (!smem)
      smem = gpu::DynamicSharedMemoryOp::create(
          b, loc,
          MemRefType::get({ShapedType::kDynamic}, b.getI8Type(),
                          MemRefLayoutAttrInterface(), wg));
    return memref::ViewOp::create(
        b, loc,
        MemRefType::get(shape, elementType, MemRefLayoutAttrInterface(), wg),
        smem, idx(byteOffset), ValueRange{});
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
  /// x * y + z in one rounding (FFMA); `math.fma` would lower to a
  /// libdevice call.
  Value fma(Value x, Value y, Value z) {
    return LLVM::FMAOp::create(b, loc, x, y, z);
  }
  /// 2^x with the SFU's ex2.approx.ftz: `math.exp2` would lower to a
  /// libdevice call, which makes the PTX depend on finding libdevice.
  Value exp2(Value x) {
    return LLVM::CallIntrinsicOp::create(
               b, loc, b.getF32Type(),
               b.getStringAttr("llvm.nvvm.ex2.approx.ftz.f32"), ValueRange{x})
        .getResult(0);
  }
  Value shuffleXor(Value x, int32_t offset) {
    return gpu::ShuffleOp::create(b, loc, x, offset, 32, gpu::ShuffleMode::XOR)
        .getShuffleResult();
  }
  /// The softmax offset of a running max: the max, or 0 for a row that has
  /// seen no key (max -inf), so that exp2(-inf - 0) = 0, never NaN.
  Value safeOffset(Value max) {
    Value ninf = f32(-std::numeric_limits<float>::infinity());
    return select(
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, max, ninf),
        f32(0.0f), max);
  }
  /// -safeOffset(max) * scale * log2 e: a score x then weighs
  /// exp2(x * scale * log2 e + negShift(max)).
  Value negShift(Value max) {
    return fmul(safeOffset(max),
                f32(-plan.attn.scale * static_cast<float>(M_LOG2E)));
  }
  /// The row of (pair, query row) in lam and in the output, for rowIndex =
  /// b * Sq + i.
  Value pairRowIndex(Value rowIndex, Value pair) {
    return add(mul(rowIndex, plan.pairs), pair);
  }
  /// out[pairRow, col] = o0 - sig * o1, the differential epilogue of one
  /// element.
  void storeDifference(Value out, Value pairRow, Value col, Value o0, Value o1,
                       Value sig) {
    Value result = arith::TruncFOp::create(b, loc, plan.elementType,
                                           fsub(o0, fmul(sig, o1)));
    memref::StoreOp::create(b, loc, result, out,
                            ValueRange{add(mul(pairRow, plan.valueDim), col)});
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
    return select(
        seen, arith::DivFOp::create(b, loc, acc, select(seen, sum, f32(1.0f))),
        f32(0.0f));
  }
  /// 1 / sum, or 0 for a row that saw no key (sum 0).
  Value inverseSum(Value sum) {
    Value seen =
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, sum, f32(0));
    return select(
        seen,
        arith::DivFOp::create(b, loc, f32(1.0f), select(seen, sum, f32(1.0f))),
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
  /// Indices of tile element (row, col + constCol) after `lead`, in the
  /// tiles' layout; col + constCol starts a 16-byte chunk.
  SmallVector<Value> tileIndex(ValueRange lead, Value row, Value col,
                               int64_t constCol = 0);
  Acc mma(ArrayRef<Value> a, ArrayRef<Value> bReg, const Acc &c);
  Acc zeroAcc() {
    Value z = f32(0.0f);
    return {z, z, z, z};
  }

  /// Issues cp.async copies of `rows` x `cols` elements: row r of the tile
  /// is `src[rowStart(r) ...]`, rows >= `validRows` are zero-filled. The
  /// copies are spread over `threads` threads; this one is `thread`.
  void copyTileAsync(Value src, function_ref<Value(Value)> rowStart,
                     Value validRows, Value dst, ValueRange dstLead,
                     int64_t rows, int64_t cols, Value thread, int64_t threads);
  /// One 16-byte cp.async of src[srcIndex ...] to dst[dstIndices], asking
  /// L2 to fetch the surrounding 128-byte line at once.
  void copyChunkWithL2Prefetch(Value src, Value srcIndex, Value dst,
                               ValueRange dstIndices);
  /// The same for rows at a constant distance: row r of the tile is
  /// `src[base + r * rowStride ...]`. Each thread computes one address;
  /// whole tiles skip the zero-fill checks.
  void copyRowsAsync(Value src, Value base, int64_t rowStride, Value validRows,
                     Value dst, ValueRange dstLead, int64_t rows, int64_t cols,
                     Value thread, int64_t threads);

  /// The online-softmax state of one head of the pair: its accumulator
  /// tiles and the running max and sum of the thread's two rows.
  struct HeadState {
    SmallVector<Acc> acc;
    std::array<Value, 2> rowMax, rowSum;
  };

  /// Scores of the rows' heads (both of a pair, or one) over one key block:
  /// S = Q Kᵀ, 16 x blockK per warp and head, K from sK[kLead..., :, :].
  /// Every K fragment loaded from shared memory feeds every head's product.
  using Scores = std::array<SmallVector<Acc>, 2>;
  Scores scoreBlock(ValueRange kLead);
  /// The warp's Q operand fragments of head h, k-step kk: qFrags[h][kk].
  /// Empty: scoreBlock loads them from shared memory itself.
  SmallVector<SmallVector<SmallVector<Value>>> qFrags;
  /// Loads every Q fragment of the warp's rows into qFrags (once, before
  /// the key loop: they then stay in registers).
  void loadQFragments();
  /// The rest of a block's attention: masks the scores `s` where the block
  /// needs it, runs the online softmax and accumulates P V into `heads`,
  /// V from sV[vLead..., :, :] (each V fragment feeds every head).
  void finishBlock(Scores &s, ValueRange vLead, Value key0, Value needsMask,
                   std::array<HeadState, 2> &heads);
  /// Both parts on the same block (K and V tiles at the same lead indices).
  void attendBlock(ValueRange kvLead, Value key0, Value needsMask,
                   std::array<HeadState, 2> &heads) {
    Scores s = scoreBlock(kvLead);
    finishBlock(s, kvLead, key0, needsMask, heads);
  }
  /// The scores of the row's heads, flattened.
  SmallVector<Value> flatten(const Scores &s) {
    SmallVector<Value> flat;
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      for (const Acc &t : s[h])
        flat.append(t.begin(), t.end());
    return flat;
  }

  /// Split-KV: merges the loop states `final` of the CTA's warps (which
  /// covered different key blocks of the same 16 rows) through shared
  /// memory and writes the CTA's partial state of its valid rows to the
  /// workspace, or, when the launch has one split and the CTA holds every
  /// row of its KV group (directSqMax(), 0 if never), the output itself
  /// (the combine stage is then skipped). All warps must be past their
  /// loops.
  void emitWarpMerge(ValueRange final, Value workspace, Value lam, Value out,
                     Value batch, Value kvHead, Value split, Value numSplits,
                     Value seqQ, Value row0, Value rowsValid);

  /// The online softmax of one head over the block's scores `s` (replaced
  /// by the probabilities); rescales the head's state.
  void softmaxBlock(SmallVectorImpl<Acc> &s, HeadState &head);

  OpBuilder &b;
  Location loc;
  const Plan &plan;
  MLIRContext *ctx;

  // Values of the kernel, set by build().
  Value lane, warp, keyLen, offset;
  /// The first row of the warp's 16 in the Q tile.
  Value qRow0;
  /// Query rows (of the sequence) of the thread's two accumulator rows, and
  /// the smallest and largest query row of the CTA.
  std::array<Value, 2> threadRow;
  Value minRow, maxRow;
  Value sQ, sK, sV;
  /// The kernel's dynamic shared memory (bytes), made by sharedView.
  Value smem;
};

Value MmaSyncKernelBuilder::packOperand(Value pair) {
  // nvvm.mma.sync takes bf16 operands as i32 registers, f16 ones as
  // vector<2xf16>.
  if (plan.elementType.isF16())
    return pair;
  return LLVM::BitcastOp::create(b, loc, b.getI32Type(), pair);
}

SmallVector<Value>
MmaSyncKernelBuilder::ldmatrix(Value smem, ValueRange indices, bool transpose) {
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
  NVVM::MMATypes ptxType =
      plan.elementType.isF16() ? NVVM::MMATypes::f16 : NVVM::MMATypes::bf16;
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
                                         int64_t cols, Value thread,
                                         int64_t threads) {
  // 16-byte chunks, spread over the threads.
  int64_t chunksPerRow = cols / 8;
  int64_t chunks = rows * chunksPerRow;
  for (int64_t first = 0; first < chunks; first += threads) {
    Value chunk = add(thread, first);
    auto emitCopy = [&]() {
      Value row = div(chunk, chunksPerRow);
      Value col = mul(rem(chunk, chunksPerRow), 8);
      Value valid = cmp(arith::CmpIPredicate::slt, row, validRows);
      // Rows past the valid ones read nothing (zero-fill) from a valid
      // address.
      Value srcIndex = select(valid, add(rowStart(row), col), idx(0));
      Value srcElements = select(valid, idx(8), idx(0));
      SmallVector<Value> dstIndices = tileIndex(dstLead, row, col);
      nvgpu::DeviceAsyncCopyOp::create(
          b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), dst, dstIndices, src,
          ValueRange{srcIndex}, b.getIndexAttr(8), srcElements,
          b.getUnitAttr());
    };
    if (first + threads <= chunks) {
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

void MmaSyncKernelBuilder::copyChunkWithL2Prefetch(Value src, Value srcIndex,
                                                   Value dst,
                                                   ValueRange dstIndices) {
  // cp.async's L2::128B qualifier (the 128-byte line around the chunk may
  // be fetched into L2 at once) has no op in the NVVM dialect: inline PTX,
  // on pointers made from the buffers' aligned pointers.
  auto dstType = cast<MemRefType>(dst.getType());
  Value linear = idx(0);
  for (auto [index, size] : llvm::zip(dstIndices, dstType.getShape()))
    linear = add(mul(linear, size), index);
  auto pointerOf = [&](Value memref, Value element, unsigned space) {
    Value base = memref::ExtractAlignedPointerAsIndexOp::create(b, loc, memref);
    Value address = arith::IndexCastOp::create(
        b, loc, b.getI64Type(),
        add(base, mul(element, plan.elementType.getIntOrFloatBitWidth() / 8)));
    return LLVM::IntToPtrOp::create(
        b, loc, LLVM::LLVMPointerType::get(ctx, space), address);
  };
  Value dstPtr = pointerOf(dst, linear, /*shared=*/3);
  Value srcPtr = pointerOf(src, srcIndex, /*global=*/1);
  NVVM::InlinePtxOp::create(
      b, loc, TypeRange{}, ValueRange{dstPtr, srcPtr}, ValueRange{},
      "cp.async.cg.shared.global.L2::128B [$0], [$1], 16;", Value());
}

void MmaSyncKernelBuilder::copyRowsAsync(Value src, Value base,
                                         int64_t rowStride, Value validRows,
                                         Value dst, ValueRange dstLead,
                                         int64_t rows, int64_t cols,
                                         Value thread, int64_t threads) {
  // Thread t copies the 16-byte chunk (t % chunksPerRow) of the rows
  // t / chunksPerRow + i * rowsPerStep: one address per thread, then
  // constant offsets.
  int64_t chunksPerRow = cols / 8;
  int64_t chunks = rows * chunksPerRow;
  assert(threads % chunksPerRow == 0 && "threads must cover whole rows");
  int64_t rowsPerStep = threads / chunksPerRow;
  Value laneRow = div(thread, chunksPerRow);
  Value laneCol = mul(rem(thread, chunksPerRow), 8);
  Value laneSrc = add(add(base, mul(laneRow, rowStride)), laneCol);
  auto emitCopies = [&](bool zeroFill) {
    for (int64_t first = 0, step = 0; first < chunks;
         first += threads, ++step) {
      auto emitCopy = [&] {
        Value row = add(laneRow, step * rowsPerStep);
        Value srcIndex = add(laneSrc, step * rowsPerStep * rowStride);
        Value srcElements = idx(8);
        if (zeroFill) {
          // Rows past the valid ones read nothing from a valid address.
          Value valid = cmp(arith::CmpIPredicate::slt, row, validRows);
          srcIndex = select(valid, srcIndex, idx(0));
          srcElements = select(valid, srcElements, idx(0));
        }
        SmallVector<Value> dstIndices = tileIndex(dstLead, row, laneCol);
        if (!zeroFill && plan.l2Prefetch) {
          copyChunkWithL2Prefetch(src, srcIndex, dst, dstIndices);
          return;
        }
        nvgpu::DeviceAsyncCopyOp::create(
            b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), dst, dstIndices, src,
            ValueRange{srcIndex}, b.getIndexAttr(8),
            zeroFill ? srcElements : Value(), b.getUnitAttr());
      };
      if (first + threads <= chunks) {
        emitCopy();
        continue;
      }
      Value inRange =
          cmp(arith::CmpIPredicate::ult, add(thread, first), idx(chunks));
      scf::IfOp::create(b, loc, inRange, [&](OpBuilder &, Location) {
        emitCopy();
        scf::YieldOp::create(b, loc);
      });
    }
  };
  // Whole tiles (all but the last of a sequence) need no zero-fill.
  scf::IfOp::create(
      b, loc, cmp(arith::CmpIPredicate::sge, validRows, idx(rows)),
      [&](OpBuilder &, Location) {
        emitCopies(false);
        scf::YieldOp::create(b, loc);
      },
      [&](OpBuilder &, Location) {
        emitCopies(true);
        scf::YieldOp::create(b, loc);
      });
}

SmallVector<Value> MmaSyncKernelBuilder::tileIndex(ValueRange lead, Value row,
                                                   Value col,
                                                   int64_t constCol) {
  auto plus = [&](Value v, int64_t c) { return c ? add(v, c) : v; };
  SmallVector<Value> indices(lead);
  if (!plan.swizzle) {
    indices.append({row, plus(col, constCol)});
    return indices;
  }
  // The XOR touches the column bits below kSwizzleSpan only; the part of
  // constCol above them stays a constant offset.
  int64_t inSpan = constCol % kSwizzleSpan;
  Value rowMod = arith::AndIOp::create(b, loc, row, idx(kSwizzleRows - 1));
  Value swizzled = arith::XOrIOp::create(b, loc, plus(col, inSpan),
                                         mul(rowMod, kChunkElements));
  indices.append({row, plus(swizzled, constCol - inSpan)});
  return indices;
}

void MmaSyncKernelBuilder::loadQFragments() {
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value qRow = add(add(qRow0, l8), mul(rem(g8, 2), 8));
  Value qColLane = mul(div(lane, 16), 8);
  qFrags.assign(plan.headsPerRow, {});
  for (int64_t h = 0; h < plan.headsPerRow; ++h)
    for (int64_t kk = 0; kk < plan.headDim / 16; ++kk)
      qFrags[h].push_back(
          ldmatrix(sQ, tileIndex(idx(h), qRow, qColLane, kk * 16), false));
}

MmaSyncKernelBuilder::Scores
MmaSyncKernelBuilder::scoreBlock(ValueRange kvLead) {
  int64_t keyTiles = plan.blockK / 8;
  int64_t d = plan.headDim;
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Scores s = {SmallVector<Acc>(keyTiles, zeroAcc()),
              SmallVector<Acc>(keyTiles, zeroAcc())};
  Value qRow = add(add(qRow0, l8), mul(rem(g8, 2), 8));
  Value qColLane = mul(div(lane, 16), 8);
  Value kRowLane = add(l8, mul(div(lane, 16), 8));
  Value kColLane = mul(rem(g8, 2), 8);
  // Split-KV warps wait on memory, not on the tensor cores: there the D/16
  // dependent products of a score tile go to two accumulator chains (even
  // and odd kk), which halves the latency from the block's data to its
  // scores. Row blocks (at 255 registers) keep one chain.
  int64_t chains = plan.splitKV ? 2 : 1;
  SmallVector<Scores> parts(chains, s);
  for (int64_t kk = 0; kk < d / 16; ++kk) {
    Scores &acc = parts[kk % chains];
    std::array<SmallVector<Value>, 2> a;
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      a[h] =
          qFrags.empty()
              ? ldmatrix(sQ, tileIndex(idx(h), qRow, qColLane, kk * 16), false)
              : qFrags[h][kk];
    for (int64_t np = 0; np < keyTiles / 2; ++np) {
      SmallVector<Value> kr = ldmatrix(
          sK, tileIndex(kvLead, add(kRowLane, np * 16), kColLane, kk * 16),
          false);
      for (int64_t h = 0; h < plan.headsPerRow; ++h) {
        acc[h][2 * np] = mma(a[h], {kr[0], kr[1]}, acc[h][2 * np]);
        acc[h][2 * np + 1] = mma(a[h], {kr[2], kr[3]}, acc[h][2 * np + 1]);
      }
    }
  }
  s = parts[0];
  for (int64_t c = 1; c < chains; ++c)
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      for (int64_t nt = 0; nt < keyTiles; ++nt)
        for (int64_t e = 0; e < 4; ++e)
          s[h][nt][e] = fadd(s[h][nt][e], parts[c][h][nt][e]);
  return s;
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
  for (int64_t kt = 0; kt < keyTiles / 2; ++kt) {
    std::array<SmallVector<Value>, 2> a;
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      a[h] = {packP(s[h][2 * kt][0], s[h][2 * kt][1]),
              packP(s[h][2 * kt][2], s[h][2 * kt][3]),
              packP(s[h][2 * kt + 1][0], s[h][2 * kt + 1][1]),
              packP(s[h][2 * kt + 1][2], s[h][2 * kt + 1][3])};
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

void MmaSyncKernelBuilder::softmaxBlock(SmallVectorImpl<Acc> &s,
                                        HeadState &head) {
  // Online softmax of the thread's two rows; exp2 with the scale folded in.
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  // The largest score of each of the thread's rows among its own columns;
  // the row's max over the block is the largest of its quad's.
  std::array<Value, 2> threadMax, newMax;
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value m = s[0][2 * rr];
    for (const Acc &t : s)
      m = fmax(m, fmax(t[2 * rr], t[2 * rr + 1]));
    threadMax[rr] = m;
  }
  auto reduceNewMax = [&] {
    for (int64_t rr = 0; rr < 2; ++rr)
      newMax[rr] = fmax(head.rowMax[rr], quadMax(threadMax[rr]));
  };
  // Moves the state to the offsets `newMax`: sums and accumulators scale
  // by 2^((old - new) scale log2 e).
  auto rescale = [&](HeadState &state) {
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value alpha =
          exp2(fma(state.rowMax[rr], scaleLog2, negShift(newMax[rr])));
      state.rowMax[rr] = newMax[rr];
      state.rowSum[rr] = fmul(state.rowSum[rr], alpha);
      for (Acc &t : state.acc)
        for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e)
          t[e] = fmul(t[e], alpha);
    }
  };
  if (plan.rescaleThreshold <= 0) {
    reduceNewMax();
    rescale(head);
  } else {
    // Lazy rescaling: the offsets only move when some score of the warp
    // would give a probability above 2^threshold; otherwise the old offsets
    // stay (exact: the sums use the same offsets), and neither the row max
    // (quad shuffles) nor the Dv/2 multiplications of the accumulators are
    // needed. Each thread tests its own scores: no shuffle on this path.
    Value grow = arith::ConstantOp::create(b, loc, b.getBoolAttr(false));
    for (int64_t rr = 0; rr < 2; ++rr)
      grow = arith::OrIOp::create(
          b, loc, grow,
          arith::CmpFOp::create(
              b, loc, arith::CmpFPredicate::OGT,
              fmul(fsub(threadMax[rr], head.rowMax[rr]), scaleLog2),
              f32(plan.rescaleThreshold)));
    Value anyGrow = NVVM::VoteSyncOp::create(b, loc, b.getI1Type(), i32(-1),
                                             grow, NVVM::VoteSyncKind::any);
    auto pack = [](const HeadState &state) {
      SmallVector<Value> values(state.rowMax.begin(), state.rowMax.end());
      values.append(state.rowSum.begin(), state.rowSum.end());
      for (const Acc &t : state.acc)
        values.append(t.begin(), t.end());
      return values;
    };
    auto ifOp = scf::IfOp::create(
        b, loc, anyGrow,
        [&](OpBuilder &, Location) {
          HeadState moved = head;
          reduceNewMax();
          rescale(moved);
          scf::YieldOp::create(b, loc, pack(moved));
        },
        [&](OpBuilder &, Location) {
          scf::YieldOp::create(b, loc, pack(head));
        });
    ValueRange r = ifOp.getResults();
    head.rowMax = {r[0], r[1]};
    head.rowSum = {r[2], r[3]};
    for (size_t t = 0; t < head.acc.size(); ++t)
      for (int64_t e = 0; e < 4; ++e)
        head.acc[t][e] = r[4 + t * 4 + e];
  }
  for (int64_t rr = 0; rr < 2; ++rr) {
    Value shift = negShift(head.rowMax[rr]);
    Value sum = f32(0.0f);
    for (Acc &t : s)
      for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e) {
        t[e] = exp2(fma(t[e], scaleLog2, shift));
        sum = fadd(sum, t[e]);
      }
    head.rowSum[rr] = fadd(head.rowSum[rr], sum);
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
  Value out = entry.getArgument(a++);
  Value workspace = splitKV ? entry.getArgument(a++) : Value();
  a++; // B: the grid's z extent.
  Value seqQ = entry.getArgument(a++), seqK = entry.getArgument(a++);
  // Split-KV: keys per split, a multiple of blockK (the launch's choice).
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
  Value groupRows = mul(seqQ, plan.rowsPerQuery());
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
  // shortest fill the last wave.
  if (!splitKV && attn.windowRight >= 0 && attn.windowLeft < 0) {
    Value rowBlocks = div(add(groupRows, blockQ - 1), blockQ);
    qBlock = sub(sub(rowBlocks, idx(1)), qBlock);
  }
  Value row0 = mul(qBlock, blockQ);
  Value rowsValid = minI(idx(blockQ), sub(groupRows, row0));
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
  for (int64_t s = 0; s < rowHeads; ++s)
    copyTileAsync(
        q,
        [&](Value r) {
          Value global = add(row0, r);
          Value head =
              rowHeads == 2 ? add(mul(pairOf(global), 2), s) : headOf(global);
          return mul(add(mul(add(mul(batch, seqQ), queryRowOf(global)),
                             plan.queryHeads),
                         head),
                     plan.headDim);
        },
        rowsValid, sQ, {idx(s)}, blockQ, plan.headDim, tid, plan.threads());

  // The query rows of the thread's two accumulator rows, and the range the
  // CTA covers (all of 0 .. Sq - 1 when its rows span two pairs).
  for (int64_t rr = 0; rr < 2; ++rr)
    threadRow[rr] = queryRowOf(threadGroupRow(rr));
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
  if (splitKV) {
    Value splitStart = mul(split, splitKeys);
    lo = maxI(lo, splitStart);
    hi = minI(hi, add(splitStart, splitKeys));
  }
  lo = sub(lo, rem(lo, blockK));

  // Copies the K and V rows key0 .. key0 + blockK - 1 into the tiles
  // sK[lead..., :, :] and sV[lead..., :, :].
  int64_t kStride = plan.kvHeads * plan.headDim;
  int64_t vStride = plan.kvHeads * plan.valueDim;
  auto loadKeyBlock = [&](Value key0, ValueRange lead, Value thread,
                          int64_t threads) {
    Value validKeys = minI(idx(blockK), sub(keyLen, key0));
    Value rowBase = add(mul(batch, seqK), key0);
    Value kBase = mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.headDim);
    Value vBase = mul(add(mul(rowBase, plan.kvHeads), kvHead), plan.valueDim);
    copyRowsAsync(k, kBase, kStride, validKeys, sK, lead, blockK, plan.headDim,
                  thread, threads);
    copyRowsAsync(v, vBase, vStride, validKeys, sV, lead, blockK, plan.valueDim,
                  thread, threads);
  };
  auto ifThen = [&](Value condition, function_ref<void()> body) {
    scf::IfOp::create(b, loc, condition, [&](OpBuilder &, Location) {
      body();
      scf::YieldOp::create(b, loc);
    });
  };
  // Is any key of the block hidden from any row of the CTA?
  auto blockNeedsMask = [&](Value key0) {
    Value needsMask = cmp(arith::CmpIPredicate::sgt, add(key0, blockK), keyLen);
    if (attn.windowRight >= 0)
      needsMask = arith::OrIOp::create(
          b, loc, needsMask,
          cmp(arith::CmpIPredicate::sgt, add(key0, blockK - 1),
              add(add(minRow, offset), idx(attn.windowRight))));
    if (attn.windowLeft >= 0)
      needsMask = arith::OrIOp::create(
          b, loc, needsMask,
          cmp(arith::CmpIPredicate::slt, key0,
              sub(add(maxRow, offset), idx(attn.windowLeft))));
    return needsMask;
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
  auto emitEpilogue = [&](ValueRange final) {
    auto outPairType = VectorType::get({2}, plan.elementType);
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value global = threadGroupRow(rr);
      Value valid = cmp(arith::CmpIPredicate::slt, global, groupRows);
      Value row = threadRow[rr];
      Value pair = pairOf(global);
      std::array<Value, 2> inverse;
      for (int64_t s = 0; s < 2; ++s)
        inverse[s] =
            inverseSum(quadSum(final[s * perHead + valueTiles * 4 + 2 + rr]));
      Value rowIndex = add(mul(batch, seqQ), row);
      Value lamIndex = select(valid, pairRowIndex(rowIndex, pair), idx(0));
      Value sig = sigmoidOfLam(lam, lamIndex);
      // o0 - sig * o1 = acc0 * inv0 - (sig * inv1) * acc1.
      Value scale1 = fmul(sig, inverse[1]);
      ifThen(valid, [&] {
        Value outBase = mul(pairRowIndex(rowIndex, pair), plan.valueDim);
        Value colLane = mul(rem(lane, 4), 2);
        for (int64_t t = 0; t < valueTiles; ++t) {
          SmallVector<Value> vals;
          for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e)
            vals.push_back(arith::TruncFOp::create(
                b, loc, plan.elementType,
                fsub(fmul(final[t * 4 + e], inverse[0]),
                     fmul(final[perHead + t * 4 + e], scale1))));
          Value pairValue =
              vector::FromElementsOp::create(b, loc, outPairType, vals);
          vector::StoreOp::create(
              b, loc, pairValue, out,
              ValueRange{add(add(outBase, colLane), t * 8)});
        }
      });
    }
    gpu::ReturnOp::create(b, loc);
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
  emitEpilogue(loop.getResults());
}

void MmaSyncKernelBuilder::emitWarpMerge(ValueRange final, Value workspace,
                                         Value lam, Value out, Value batch,
                                         Value kvHead, Value split,
                                         Value numSplits, Value seqQ,
                                         Value row0, Value rowsValid) {
  // Every warp's state of the 16 rows: sAcc[warp][head][row][col] and
  // sStat[warp][head][row][max, sum], in the K/V stages' bytes.
  int64_t dv = plan.valueDim, valueTiles = dv / 8, perHead = valueTiles * 4 + 4;
  int64_t rowHeads = plan.headsPerRow;
  Value sAcc = sharedView(plan.qTileBytes, {plan.warps, rowHeads, 16, dv},
                          b.getF32Type());
  Value sStat = sharedView(plan.qTileBytes + plan.mergeAccBytes(),
                           {plan.warps, rowHeads, 16, 2}, b.getF32Type());
  auto f32Pair = VectorType::get({2}, b.getF32Type());
  Value colLane = mul(rem(lane, 4), 2);
  Value firstOfQuad = cmp(arith::CmpIPredicate::eq, rem(lane, 4), idx(0));
  for (int64_t h = 0; h < rowHeads; ++h) {
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value row = add(div(lane, 4), rr * 8);
      for (int64_t t = 0; t < valueTiles; ++t) {
        Value pairValue = vector::FromElementsOp::create(
            b, loc, f32Pair,
            ValueRange{final[h * perHead + t * 4 + 2 * rr],
                       final[h * perHead + t * 4 + 2 * rr + 1]});
        vector::StoreOp::create(
            b, loc, pairValue, sAcc,
            ValueRange{warp, idx(h), row, add(colLane, t * 8)});
      }
      Value sum = quadSum(final[h * perHead + valueTiles * 4 + 2 + rr]);
      Value stat = vector::FromElementsOp::create(
          b, loc, f32Pair,
          ValueRange{final[h * perHead + valueTiles * 4 + rr], sum});
      scf::IfOp::create(b, loc, firstOfQuad, [&](OpBuilder &, Location) {
        vector::StoreOp::create(b, loc, stat, sStat,
                                ValueRange{warp, idx(h), row, idx(0)});
        scf::YieldOp::create(b, loc);
      });
    }
  }
  gpu::BarrierOp::create(b, loc);

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  // Element (h, row, col) of the CTA's state merged over its warps:
  // (unnormalised accumulator, sum, max).
  auto merged = [&](Value h, Value row, Value col) {
    SmallVector<Value> maxes, sums;
    Value maxAll = ninf;
    for (int64_t w = 0; w < plan.warps; ++w) {
      Value stat = vector::LoadOp::create(b, loc, f32Pair, sStat,
                                          ValueRange{idx(w), h, row, idx(0)});
      maxes.push_back(vector::ExtractOp::create(b, loc, stat, 0));
      sums.push_back(vector::ExtractOp::create(b, loc, stat, 1));
      maxAll = fmax(maxAll, maxes.back());
    }
    // Rows no warp saw a key for keep max -inf: weights of 0.
    Value shift = negShift(maxAll);
    Value acc = f32(0.0f), sum = f32(0.0f);
    for (int64_t w = 0; w < plan.warps; ++w) {
      Value weight = exp2(fma(maxes[w], scaleLog2, shift));
      Value x =
          memref::LoadOp::create(b, loc, sAcc, ValueRange{idx(w), h, row, col});
      acc = fma(weight, x, acc);
      sum = fma(weight, sums[w], sum);
    }
    return std::array<Value, 3>{acc, sum, maxAll};
  };
  Value pairRows = mul(seqQ, plan.pairsPerGroup());

  // Thread tid merges the elements tid, tid + threads, ... of the CTA's
  // heads x 16 x Dv (head, row, column) and writes them, with each valid
  // row's max and sum, to the workspace (whose rows are the group's pairs
  // x Sq, both heads each).
  auto toWorkspace = [&] {
    int64_t elements = rowHeads * 16 * dv;
    scf::ForOp::create(
        b, loc, tid, idx(elements), idx(plan.threads()), ValueRange{},
        [&](OpBuilder &, Location, Value e, ValueRange) {
          Value h = div(e, 16 * dv), row = rem(div(e, dv), 16),
                col = rem(e, dv);
          scf::IfOp::create(
              b, loc, cmp(arith::CmpIPredicate::slt, row, rowsValid),
              [&](OpBuilder &, Location) {
                auto [acc, sum, maxAll] = merged(h, row, col);
                Value global = add(row0, row);
                // The row's pair row of the workspace and head in the pair.
                Value pairRow = global, headInPair = h;
                if (rowHeads == 1) {
                  Value groupHead =
                      arith::DivUIOp::create(b, loc, global, seqQ);
                  pairRow = add(mul(div(groupHead, 2), seqQ),
                                arith::RemUIOp::create(b, loc, global, seqQ));
                  headInPair = rem(groupHead, 2);
                }
                Value rowState =
                    add(mul(add(mul(add(mul(batch, plan.kvHeads), kvHead),
                                    numSplits),
                                split),
                            pairRows),
                        pairRow);
                Value base =
                    mul(add(mul(rowState, 2), headInPair), plan.partialWidth());
                memref::StoreOp::create(b, loc, acc, workspace,
                                        ValueRange{add(base, col)});
                scf::IfOp::create(
                    b, loc, cmp(arith::CmpIPredicate::eq, col, idx(0)),
                    [&](OpBuilder &, Location) {
                      memref::StoreOp::create(b, loc, maxAll, workspace,
                                              ValueRange{add(base, dv)});
                      memref::StoreOp::create(b, loc, sum, workspace,
                                              ValueRange{add(base, dv + 1)});
                      scf::YieldOp::create(b, loc);
                    });
                scf::YieldOp::create(b, loc);
              });
          scf::YieldOp::create(b, loc);
        });
  };
  if (rowHeads != 1 || plan.directSqMax() == 0) {
    toWorkspace();
    return;
  }
  // One split and every row of the group here (row0 = 0): normalise,
  // apply the epilogue and write the output, element (pair row, column)
  // per thread; the launch skips the combine stage (its manifest entry's
  // skip_when says so with the same condition).
  Value direct = arith::AndIOp::create(
      b, loc, cmp(arith::CmpIPredicate::eq, numSplits, idx(1)),
      cmp(arith::CmpIPredicate::ule, seqQ, idx(plan.directSqMax())));
  scf::IfOp::create(
      b, loc, direct,
      [&](OpBuilder &, Location) {
        scf::ForOp::create(
            b, loc, tid, mul(pairRows, dv), idx(plan.threads()), ValueRange{},
            [&](OpBuilder &, Location, Value e, ValueRange) {
              Value pairRow = div(e, dv), col = rem(e, dv);
              Value pairInGroup = arith::DivUIOp::create(b, loc, pairRow, seqQ);
              Value queryRow = arith::RemUIOp::create(b, loc, pairRow, seqQ);
              std::array<Value, 2> value;
              for (int64_t s = 0; s < 2; ++s) {
                // Row (query head 2p + s of the group, query row i).
                Value row =
                    add(mul(add(mul(pairInGroup, 2), idx(s)), seqQ), queryRow);
                auto [acc, sum, maxAll] = merged(idx(0), row, col);
                value[s] = normalize(acc, sum);
              }
              Value pair = add(mul(kvHead, plan.pairsPerGroup()), pairInGroup);
              Value outRow =
                  pairRowIndex(add(mul(batch, seqQ), queryRow), pair);
              storeDifference(out, outRow, col, value[0], value[1],
                              sigmoidOfLam(lam, outRow));
              scf::YieldOp::create(b, loc);
            });
        scf::YieldOp::create(b, loc);
      },
      [&](OpBuilder &, Location) {
        toWorkspace();
        scf::YieldOp::create(b, loc);
      });
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
  Value splitKeys = entry.getArgument(6);
  Value numSplits = arith::DivUIOp::create(
      b, loc, sub(add(seqK, splitKeys), idx(1)), splitKeys);
  Value pair = add(mul(kvHead, pairsPerGroup),
                   arith::DivUIOp::create(b, loc, groupRow, seqQ));
  Value row = arith::RemUIOp::create(b, loc, groupRow, seqQ);
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  Value width = idx(plan.partialWidth());
  // Element `field` of the state of head `s` in split `sp`.
  auto stateIndex = [&](Value sp, int64_t s, Value field) {
    Value rowState =
        add(mul(add(mul(add(mul(batch, plan.kvHeads), kvHead), numSplits), sp),
                groupRows),
            groupRow);
    return add(mul(add(mul(rowState, 2), s), width), field);
  };
  auto load = [&](Value index) {
    return memref::LoadOp::create(b, loc, workspace, ValueRange{index})
        .getResult();
  };
  // lam first: its load does not wait for anything.
  Value outRow = pairRowIndex(add(mul(batch, seqQ), row), pair);
  Value sig = sigmoidOfLam(lam, outRow);
  // Launched as a programmatic dependent, this kernel may run before the
  // split kernel ends: wait for its results (a no-op after a plain launch).
  if (plan.programmaticLaunch)
    NVVM::GriddepcontrolOp::create(b, loc, NVVM::GridDepActionKind::wait);
  // One pass over the splits for both heads, an online merge of (max, sum,
  // accumulator): each split's loads are independent of each other and of
  // the running state, so one trip to memory serves all of them (with one
  // split, the common case, the whole kernel waits on memory once).
  SmallVector<Value> init;
  for (int64_t s = 0; s < 2; ++s)
    init.append({ninf, f32(0.0f), f32(0.0f)});
  auto merged = scf::ForOp::create(
      b, loc, idx(0), numSplits, idx(1), init,
      [&](OpBuilder &, Location, Value sp, ValueRange it) {
        SmallVector<Value> loaded;
        for (int64_t s = 0; s < 2; ++s)
          loaded.append({load(stateIndex(sp, s, idx(plan.valueDim))),
                         load(stateIndex(sp, s, idx(plan.valueDim + 1))),
                         load(stateIndex(sp, s, col))});
        SmallVector<Value> next;
        for (int64_t s = 0; s < 2; ++s) {
          Value runMax = it[3 * s], runSum = it[3 * s + 1],
                runAcc = it[3 * s + 2];
          Value m = loaded[3 * s], l = loaded[3 * s + 1], o = loaded[3 * s + 2];
          // Empty states (max -inf) weigh 0; so does everything while the
          // new max is still -inf.
          Value newMax = fmax(runMax, m);
          Value safeMax = safeOffset(newMax);
          Value wRun = exp2(fmul(fsub(runMax, safeMax), scaleLog2));
          Value wNew = exp2(fmul(fsub(m, safeMax), scaleLog2));
          next.append({newMax, fadd(fmul(runSum, wRun), fmul(l, wNew)),
                       fadd(fmul(runAcc, wRun), fmul(o, wNew))});
        }
        scf::YieldOp::create(b, loc, next);
      });
  std::array<Value, 2> value;
  for (int64_t s = 0; s < 2; ++s)
    value[s] =
        normalize(merged.getResult(3 * s + 2), merged.getResult(3 * s + 1));
  storeDifference(out, outRow, col, value[0], value[1], sig);
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
  plan.splitKV = plan.attn.hasKvLen;
  // Tile defaults, measured on the H200 (docs/performance.md). Row
  // blocks: D = 64 wants 4 warps x 64 keys. D = 128 with a causal-like
  // mask wants 4 warps x 32 keys (both heads share every fragment, and the
  // small tiles waste less on the diagonal); without one, 8 warps x 64
  // keys (each K/V tile in shared memory feeds 128 rows). Split-KV: 16 keys
  // per warp, so that three stages of four warps leave room for two CTAs
  // per SM.
  bool causalLike = plan.attn.windowRight >= 0 && plan.attn.windowLeft < 0;
  bool wideTiles = !plan.splitKV && plan.headDim == 128 && !causalLike;
  int64_t defaultBlockK =
      plan.splitKV ? 16 : (plan.headDim == 128 && !wideTiles ? 32 : 64);
  plan.blockK = options.blockK ? options.blockK : defaultBlockK;
  if (plan.blockK <= 0 || plan.blockK % 16 != 0 || plan.blockK > 128)
    return op->emitOpError() << "block-k = " << plan.blockK
                             << " is not supported (expected a multiple of "
                                "16 up to 128)";
  plan.stages = options.stages ? options.stages : (plan.splitKV ? 3 : 2);
  if (plan.stages < 2 || plan.stages > 8)
    return op->emitOpError() << "stages = " << plan.stages
                             << " is not supported (expected 2 to 8)";
  plan.rescaleThreshold = static_cast<float>(options.rescaleThreshold);
  if (!(plan.rescaleThreshold >= 0 && plan.rescaleThreshold <= 16))
    return op->emitOpError()
           << "rescale-threshold = " << options.rescaleThreshold
           << " is not supported (expected 0 to 16)";
  plan.warps = options.warps ? options.warps : (wideTiles ? 8 : 4);
  plan.l2Prefetch = options.l2Prefetch && plan.splitKV;
  plan.programmaticLaunch = options.programmaticLaunch && plan.splitKV;
  if (options.smemLayout == "auto")
    plan.swizzle = plan.splitKV;
  else if (options.smemLayout == "swizzled" || options.smemLayout == "padded")
    plan.swizzle = options.smemLayout == "swizzled";
  else
    return op->emitOpError()
           << "smem-layout = '" << options.smemLayout
           << "' is not supported (expected auto, padded or swizzled)";
  if (plan.warps != 4 && plan.warps != 8)
    return op->emitOpError()
           << "warps = " << plan.warps << " is not supported (expected 4 or 8)";
  plan.blockQ = plan.splitKV ? 16 : 16 * plan.warps;
  // Split-KV rows hold one query head each: every query head of the group
  // shares the CTA's K/V tiles, with half the accumulators per row.
  plan.headsPerRow = plan.splitKV ? 1 : 2;
  plan.pairs = plan.attn.numPairs;
  plan.queryHeads = 2 * plan.pairs;
  plan.kvHeads = plan.attn.numKeyHeads;
  plan.lamType = v2.getLam().getType().getElementType();
  // The decode form reads a KV cache with few query rows: split the keys so
  // that enough CTAs stream the cache. By default the runtime picks the
  // split size per launch (about splitTargetCtas CTAs in all).
  plan.fixedSplitKeys = plan.splitKV ? options.splitKeys : 0;
  if (plan.fixedSplitKeys < 0 || plan.fixedSplitKeys % plan.blockK != 0)
    return op->emitOpError()
           << "split-keys = " << plan.fixedSplitKeys
           << " must be a multiple of block-k = " << plan.blockK
           << " (or 0: chosen at launch)";
  plan.splitTargetCtas = options.splitTargetCtas;
  if (plan.splitTargetCtas <= 0)
    return op->emitOpError()
           << "split-target-ctas = " << options.splitTargetCtas
           << " must be positive";
  int64_t elementBytes = 2;
  int64_t pipelines = plan.splitKV ? plan.warps : 1;
  plan.qTileBytes = plan.headsPerRow * plan.blockQ *
                    (plan.headDim + plan.rowPad()) * elementBytes;
  plan.kTileBytes = pipelines * plan.stages * plan.blockK *
                    (plan.headDim + plan.rowPad()) * elementBytes;
  plan.vTileBytes = pipelines * plan.stages * plan.blockK *
                    (plan.valueDim + plan.rowPad()) * elementBytes;
  int64_t afterQ = plan.kTileBytes + plan.vTileBytes;
  if (plan.splitKV)
    afterQ = std::max(afterQ, plan.mergeAccBytes() + plan.mergeStatBytes());
  plan.sharedBytes = plan.qTileBytes + afterQ;
  // The limit of one CTA on sm_80 and later (227 KiB on sm_90).
  constexpr int64_t kMaxSharedBytes = 163 * 1024;
  if (plan.sharedBytes > kMaxSharedBytes)
    return op->emitOpError()
           << "needs " << plan.sharedBytes
           << " bytes of shared memory per CTA with block-k = " << plan.blockK
           << " and stages = " << plan.stages << " (at most " << kMaxSharedBytes
           << " on sm_80)";
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
    SmallVector<StringRef> sizes = {"B", "Sq", "Sk"};
    if (plan.splitKV)
      sizes.push_back("split_keys");
    for (StringRef size : sizes)
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
  Attribute rowBlocks = ceilDiv("Sq", plan.blockQ, plan.rowsPerQuery());
  SmallVector<NamedAttribute> common = {
      b.getNamedAttr("kind", b.getStringAttr("cuda")),
      b.getNamedAttr("strategy", b.getStringAttr("mma_sync")),
      b.getNamedAttr("block_q", b.getI64IntegerAttr(plan.blockQ)),
      b.getNamedAttr("block_k", b.getI64IntegerAttr(plan.blockK)),
      b.getNamedAttr("pipeline_stages", b.getI64IntegerAttr(plan.stages))};
  auto stage = [&](StringRef function, ArrayRef<Attribute> grid,
                   int64_t threads, int64_t shared, ArrayAttr params,
                   bool programmatic = false,
                   ArrayRef<NamedAttribute> skipWhen = {}) {
    SmallVector<NamedAttribute> entries = {
        b.getNamedAttr("function", b.getStringAttr(function)),
        b.getNamedAttr("grid", b.getArrayAttr(grid)),
        b.getNamedAttr("block", b.getI64ArrayAttr({threads, 1, 1})),
        b.getNamedAttr("dynamic_shared_memory", b.getI64IntegerAttr(shared)),
        b.getNamedAttr("params", params)};
    // The stage may be launched before the previous one ends (it waits
    // for it itself).
    if (programmatic)
      entries.push_back(
          b.getNamedAttr("programmatic_launch", b.getBoolAttr(true)));
    // Not launched when each of these sizes is at most its bound.
    if (!skipWhen.empty())
      entries.push_back(
          b.getNamedAttr("skip_when", b.getDictionaryAttr(skipWhen)));
    return b.getDictionaryAttr(entries);
  };
  if (!plan.splitKV) {
    // x: blocks of the rows of a KV group (its pairs x Sq), y: KV heads.
    DictionaryAttr only = stage(
        name,
        {rowBlocks, b.getI64IntegerAttr(plan.kvHeads), ceilDiv("B", 1, 1)},
        plan.threads(), plan.sharedBytes, paramsOf(buffers));
    SmallVector<NamedAttribute> attrs(common);
    attrs.append(only.getValue().begin(), only.getValue().end());
    return b.getDictionaryAttr(attrs);
  }
  // Stage 1, x: (split, row block) couples; stage 2, x: the group's rows.
  // `splits` = ceil(Sk / split_keys), split_keys being the launch's
  // choice (`split`); the kernel decodes x with the same two factors.
  SmallVector<StringRef> mainBuffers(buffers);
  mainBuffers.push_back("workspace");
  SmallVector<StringRef> combineBuffers = {"workspace", "lam", "out"};
  SmallVector<Attribute> splitFactors = {rowBlocks, ceilDiv("splits", 1, 1)};
  Attribute splitGrid = b.getDictionaryAttr(
      {b.getNamedAttr("product", b.getArrayAttr(splitFactors))});
  SmallVector<NamedAttribute> attrs(common);
  // How the runtime picks split_keys: fixed, or the smallest multiple of
  // `multiple_of` keys that makes about `target_ctas` CTAs in all.
  SmallVector<NamedAttribute> split;
  if (plan.fixedSplitKeys)
    split.push_back(
        b.getNamedAttr("fixed", b.getI64IntegerAttr(plan.fixedSplitKeys)));
  else
    split.append({b.getNamedAttr("multiple_of",
                                 b.getI64IntegerAttr(plan.blockK * plan.warps)),
                  b.getNamedAttr("target_ctas",
                                 b.getI64IntegerAttr(plan.splitTargetCtas))});
  attrs.push_back(b.getNamedAttr("split", b.getDictionaryAttr(split)));
  // With one split and Sq <= directSqMax() the split kernel writes the
  // output itself.
  SmallVector<NamedAttribute> combineSkip;
  if (plan.directSqMax() > 0)
    combineSkip = {
        b.getNamedAttr("Sq", b.getI64IntegerAttr(plan.directSqMax())),
        b.getNamedAttr("splits", b.getI64IntegerAttr(1))};
  attrs.push_back(b.getNamedAttr(
      "stages",
      b.getArrayAttr(
          {stage(name,
                 {splitGrid, b.getI64IntegerAttr(plan.kvHeads),
                  ceilDiv("B", 1, 1)},
                 plan.threads(), plan.sharedBytes, paramsOf(mainBuffers)),
           stage((name + "_combine").str(),
                 {ceilDiv("Sq", 1, ppg), b.getI64IntegerAttr(plan.kvHeads),
                  ceilDiv("B", 1, 1)},
                 plan.valueDim, 0, paramsOf(combineBuffers),
                 plan.programmaticLaunch, combineSkip)})));
  // f32 elements: B x Hkv x splits x (pairs of a group x Sq) x 2 heads x
  // (Dv + 2).
  attrs.push_back(b.getNamedAttr(
      "workspace",
      b.getDictionaryAttr(
          {b.getNamedAttr("dtype", b.getStringAttr("f32")),
           b.getNamedAttr("product", b.getArrayAttr({ceilDiv("B", 1, 1),
                                                     ceilDiv("splits", 1, 1),
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
  auto gpuModule = gpu::GPUModuleOp::create(
      rewriter, loc, (kernel.getName() + "_module").str());
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
  if (plan->splitKV) {
    argTypes.insert(argTypes.begin() + buffers.size(), workspaceType);
    argTypes.push_back(rewriter.getIndexType()); // split_keys
  }
  auto makeFunc = [&](StringRef name, ArrayRef<Type> types, int32_t threads) {
    auto func = gpu::GPUFuncOp::create(rewriter, loc, name,
                                       rewriter.getFunctionType(types, {}));
    func->setAttr(gpu::GPUDialect::getKernelFuncAttrName(),
                  rewriter.getUnitAttr());
    func.setKnownBlockSizeAttr(rewriter.getDenseI32ArrayAttr({threads, 1, 1}));
    return func;
  };
  auto func = makeFunc(kernel.getName(), argTypes, plan->threads());
  MmaSyncKernelBuilder(rewriter, loc, *plan).build(func);
  if (plan->splitKV) {
    // The combine stage: workspace, lam, out, B, Sq, Sk, split_keys.
    Type index = rewriter.getIndexType();
    Type lamType = argTypes[3], outType = argTypes[buffers.size() - 1];
    rewriter.setInsertionPointAfter(func);
    auto combine =
        makeFunc((kernel.getName() + "_combine").str(),
                 {workspaceType, lamType, outType, index, index, index, index},
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
    options.splitTargetCtas = splitTargetCtas;
    options.stages = stages;
    options.warps = warps;
    options.rescaleThreshold = rescaleThreshold;
    options.l2Prefetch = l2Prefetch;
    options.smemLayout = smemLayout;
    options.programmaticLaunch = programmaticLaunch;
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
