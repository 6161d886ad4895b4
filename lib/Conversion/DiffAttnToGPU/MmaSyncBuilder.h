//===- MmaSyncBuilder.h - the mma.sync strategy's kernel builder -*- C++
//-*-===//
//
// Private to lib/Conversion/DiffAttnToGPU: the portable tensor-core
// strategy's plan and kernel builder, whose definitions are split over
// MmaSyncFragments.cpp (ldmatrix, mma.sync, cp.async tiles, Q·Kᵀ),
// MmaSyncKernel.cpp (the kernel body: key loop, masking, P·V, epilogue) and
// MmaSyncWarpMerge.cpp (split-KV: the merge of the warps' states). The
// fragment layouts follow the PTX ISA sections "Matrix Fragments for
// mma.m16n8k16" and "ldmatrix".
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

#ifndef DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_MMASYNCBUILDER_H
#define DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_MMASYNCBUILDER_H

#include "diffattn/Conversion/DiffAttnToGPU/Epilogue.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"
#include "diffattn/Conversion/DiffAttnToGPU/OnlineSoftmax.h"
#include "diffattn/Conversion/DiffAttnToGPU/TileConfig.h"
#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::diffattn::mma_sync {

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

/// The mma.sync strategy's tile configuration: the shared TileConfig plus
/// its row mapping and shared-memory layout.
struct MmaSyncPlan : TileConfig {
  /// Heads per tile row: 2 (a row is a (pair, query row) couple holding
  /// both heads of the pair, so the epilogue is local), or 1 (a row is a
  /// (query head, query row) couple: split-KV, whose epilogue runs in the
  /// combine kernel; half the accumulators and products per key).
  int64_t headsPerRow = 2;
  /// Bytes of the Q tile and of all K and V stages.
  int64_t qTileBytes = 0, kTileBytes = 0, vTileBytes = 0;
  /// Split-KV: whole K/V tiles are copied with cp.async's L2::128B prefetch
  /// qualifier (inline PTX; an opt-in, see l2-prefetch).
  bool l2Prefetch = false;
  /// Tiles in the swizzled layout (else padded).
  bool swizzle = false;
  /// Row padding of the tiles (elements).
  int64_t rowPad() const { return swizzle ? 0 : kPad; }
  /// Split-KV: bytes of the warps' accumulators and (max, sum) pairs
  /// exchanged by the merge (over the K/V stages).
  int64_t mergeAccBytes() const {
    return warps * headsPerRow * 16 * valueDim * 4;
  }
  int64_t mergeStatBytes() const { return warps * headsPerRow * 16 * 2 * 4; }
};

class MmaSyncKernelBuilder : public GPUKernelBuilder {
public:
  MmaSyncKernelBuilder(OpBuilder &b, Location loc, const MmaSyncPlan &plan)
      : GPUKernelBuilder(b, loc), plan(plan),
        epilogue(*this, plan.pairs, plan.valueDim, plan.elementType),
        softmax(*this, FragmentLayout::mmaSyncM16N8(), plan.attn.scale,
                plan.rescaleThreshold, plan.exp2Emulation) {}

  /// Fills the body of `func` (arguments: q, k, v, lam, [kv_len], out,
  /// [workspace], B, Sq, Sk).
  void build(gpu::GPUFuncOp func);

protected:
  /// SPEC.md: 0 <= kv_len[b] <= Sk is checked at run time, with no host
  /// synchronisation and no extra launch. Thread 0 of CTA (0, 0, b) raises a
  /// device-side assertion (cf.assert, lowered to the PTX system call
  /// `__assertfail`) when `kvLen` (kv_len[b], i32) is out of range: PyTorch's
  /// convention for device-side index errors. The launch's stream then
  /// reports CUDA_ERROR_ASSERT ("device-side assert triggered") at the
  /// caller's next synchronisation, and the device prints the message below,
  /// which names kv_len. Every other thread goes on with kv_len clamped to
  /// [0, Sk] (buildKeyLength), so nothing out of bounds is read.
  void assertKeyLengthInRange(Value kvLen, Value seqK, Value tid);
  /// A paged cache (diffattn.v2_paged): the pool row of key `key0` of
  /// sequence `batch`, block_table[batch, key0 / BS] * BS + key0 % BS (the
  /// block table is [B, Sk / BS]); a block outside [0, numBlocks) raises a
  /// device-side assertion (as kv_len does) and reads block 0.
  Value pagedRow(Value blockTable, Value numBlocks, Value batch, Value seqK,
                 Value key0, Value tid);

  // Fragments.
  /// One 32-bit mma operand register from two 16-bit values.
  Value packOperand(Value pair);
  /// The A-operand register of two f32 accumulator values (columns c, c + 1
  /// of a row: P or dS) rounded to the element type.
  Value packAccumulators(Value x, Value y);
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

  /// One 16-byte cp.async of src[srcIndex ...] to dst[dstIndices], asking
  /// L2 to fetch the surrounding 128-byte line at once.
  void copyChunkWithL2Prefetch(Value src, Value srcIndex, Value dst,
                               ValueRange dstIndices);
  /// cp.async copies (as copyTileAsync) of rows at a constant distance: row
  /// r of the tile `dst[dstLead...]` is `src[base + r * rowStride ...]`.
  /// Each thread computes one address;
  /// whole tiles skip the zero-fill checks.
  void copyRowsAsync(Value src, Value base, int64_t rowStride, Value validRows,
                     Value dst, ValueRange dstLead, int64_t rows, int64_t cols,
                     Value thread, int64_t threads);

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

  /// Sets minRow and maxRow, the smallest and largest query row of the
  /// CTA's group rows row0 .. row0 + rowsValid - 1 (R = p * Sq + i): all of
  /// 0 .. Sq - 1 when they span two pairs.
  void setRowRange(Value row0, Value rowsValid, Value seqQ);

  /// Split-KV: merges the loop states `final` of the CTA's warps (which
  /// covered different key blocks of the same 16 rows) through shared
  /// memory and writes the CTA's partial state of its valid rows to the
  /// workspace, or, when the launch has one split and the CTA holds every
  /// row of its KV group (directSqMax, 0 if never), the output itself
  /// (the combine stage is then skipped). All warps must be past their
  /// loops.
  void emitWarpMerge(ValueRange final, Value workspace, Value lam, Value out,
                     Value batch, Value kvHead, Value split, Value numSplits,
                     Value seqQ, Value row0, Value rowsValid);

  const MmaSyncPlan &plan;
  DifferentialEpilogue epilogue;
  OnlineSoftmax softmax;

  // Values of the kernel, set by build().
  Value lane, warp, keyLen, offset;
  /// The first row of the warp's 16 in the Q tile.
  Value qRow0;
  /// Query rows (of the sequence) of the thread's two accumulator rows, and
  /// the smallest and largest query row of the CTA.
  std::array<Value, 2> threadRow;
  Value minRow, maxRow;
  /// Packed sequences: whether the CTA has rows of its sequence (null
  /// otherwise: every CTA has).
  Value ctaActive;
  Value sQ, sK, sV;
};

} // namespace mlir::diffattn::mma_sync

namespace mlir::diffattn {
/// The backward of diffattn.v2 with the portable strategy
/// (MmaSyncBackward.cpp): replaces `kernel` (holding `op`, a
/// diffattn.v2_backward) with its three kernels and their launch rule;
/// `deterministic` (the strategy option) picks the formulation without
/// atomics. `wgmmaKernels` (the wgmma strategy, sm_90a): the deterministic
/// formulation's kernels are the wgmma ones (WgmmaBackward*.cpp; the
/// statistics kernel stays the portable one with kv_len) and the manifest
/// records strategy wgmma. `stacking` is the backward-stacking option (the
/// wgmma dk/dv kernel's stacked products; ignored by the portable kernels).
LogicalResult emitMmaSyncBackward(RewriterBase &rewriter, func::FuncOp kernel,
                                  DictionaryAttr desc, Operation *op,
                                  const GPUChipInfo &chip, bool deterministic,
                                  bool wgmmaKernels = false,
                                  StringRef stacking = "auto");
} // namespace mlir::diffattn

#endif // DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_MMASYNCBUILDER_H
