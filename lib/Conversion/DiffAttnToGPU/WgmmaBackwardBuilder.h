//===- WgmmaBackwardBuilder.h - wgmma strategy: backward kernels -*- C++
//-*-===//
//
// Private to lib/Conversion/DiffAttnToGPU: the sm_90a backward's kernel
// builder, whose definitions are split over WgmmaBackward.cpp (the dk/dv
// kernel, descriptors) and WgmmaBackwardRows.cpp (the statistics and dq
// kernels, over the portable row kernels' tiles of 64 group rows). Its
// kernels take the portable backward's arguments and read and write its
// workspace records (MmaSyncBackwardBuilder.h).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_WGMMABACKWARDBUILDER_H
#define DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_WGMMABACKWARDBUILDER_H

#include "MmaSyncBackwardBuilder.h"
#include "WgmmaBuilder.h"

namespace mlir::diffattn::wgmma {

/// Byte offsets (from the 1024-byte aligned base) of the kernel's tiles:
/// K [D / 64 spans, blockK, 64], V [Dv / 64, blockK, 64], then per stage
/// q [D / 64, 2 heads x blockQ, 64] (both heads stacked as the N rows of
/// S^T = K q^T), dout [Dv / 64, blockQ, 64] and the
/// records [blockQ, kStatWidth] f32; with `reduceDq` (the accumulating
/// formulation) dS of both heads, K-major with keys as columns: with
/// stacksDq [blockK / 64, 2 heads x blockQ, 64] (the A operand of the
/// stacked dq = dS K), else [2, blockK / 64, blockQ, 64] (the B operand of
/// dq^T = K^T dS^T).
struct KeyKernelLayout {
  int64_t k = 0, v, q, dout, stat, ds, end;
  KeyKernelLayout(const WgmmaPlan &plan, bool reduceDq) {
    v = k + plan.blockK * plan.headDim * 2;
    q = v + plan.blockK * plan.valueDim * 2;
    dout = q + plan.stages * 2 * plan.blockQ * plan.headDim * 2;
    stat = dout + plan.stages * plan.blockQ * plan.valueDim * 2;
    ds = stat + plan.stages * plan.blockQ * mma_sync::kStatWidth * 4;
    end = ds + (reduceDq ? dsBytes(plan) : 0);
  }
  int64_t qStageBytes(const WgmmaPlan &plan) const {
    return 2 * plan.blockQ * plan.headDim * 2;
  }
  int64_t doutStageBytes(const WgmmaPlan &plan) const {
    return plan.blockQ * plan.valueDim * 2;
  }
  /// One head's dS tile.
  static int64_t dsHeadBytes(const WgmmaPlan &plan) {
    return plan.blockQ * plan.blockK * 2;
  }
  static int64_t dsBytes(const WgmmaPlan &plan) {
    return 2 * dsHeadBytes(plan);
  }
  /// Whether the accumulating dk/dv kernel computes dq with both heads
  /// stacked as the M rows (WgmmaPlan::stackDq, the backward-stacking
  /// option): dq_stacked [2 blockQ, D] = dS_stacked [2 blockQ, blockK] K,
  /// warpgroup w taking the 64 columns of D of span w (wgmma m64n64k16, A =
  /// dS K-major, B = K MN-major), which needs a span per warpgroup (D =
  /// 128) and 2 blockQ = 64 rows. Otherwise warpgroup w computes head w's
  /// dq^T = K^T dS_w^T per span of D (m64n{blockQ}k16). At blockQ = 32
  /// the stacked form's operands are 64 KB of shared memory per block
  /// against 96 KB, in 8 wgmma instructions per warpgroup instead of 16.
  static bool stacksDq(const WgmmaPlan &plan) {
    assert((!plan.stackDq ||
            (plan.blockQ * 2 == kWarpgroupRows &&
             plan.headDim == kSpan * (plan.blockK / kWarpgroupRows))) &&
           "stacked dq needs D = 128 and 32-row query blocks");
    return plan.stackDq;
  }
};

/// Byte offsets of the row kernels' tiles: q [heads, D / 64, 64, 64] (both
/// heads in the dq kernel, the odd one in the statistics kernel) and dout
/// [Dv / 64, 64, 64] of the tile's 64 rows, then per stage K [D / 64,
/// blockK, 64] and V [Dv / 64, blockK, 64]; the statistics kernel's
/// exchange of r, 64 f32, last.
struct RowKernelLayout {
  int64_t q = 0, dout, k, v, exchange, end;
  RowKernelLayout(const WgmmaPlan &plan, bool stats) {
    dout = q + (stats ? 1 : 2) * kWarpgroupRows * plan.headDim * 2;
    k = dout + kWarpgroupRows * plan.valueDim * 2;
    v = k + plan.stages * plan.blockK * plan.headDim * 2;
    exchange = v + plan.stages * plan.blockK * plan.valueDim * 2;
    end = exchange + (stats ? kWarpgroupRows * 4 : 0);
  }
};

class BackwardBuilder : public WgmmaKernelBuilder {
public:
  using WgmmaKernelBuilder::WgmmaKernelBuilder;
  void buildKeyKernel(gpu::GPUFuncOp func);
  /// The accumulating formulation (the strategy option deterministic =
  /// false) in the dk/dv kernel: it adds each query block's dq to the f32
  /// accumulator's chunks (no dq kernel; buildDqConvertKernel writes dq).
  bool reduceDq = false;
  /// The statistics kernel of the accumulating formulation: the query rows
  /// of the accumulator's chunks (the dk/dv kernel's blockQ), which it
  /// zeroes (0: none).
  int64_t dqChunkRows = 0;
  /// The accumulating formulation's conversion kernel: dq = scale x the
  /// chunked accumulator (the dk/dv kernel's fragment order), rounded to
  /// the element type; a CTA of 256 threads per (block of blockQ query
  /// rows, pair).
  void buildDqConvertKernel(gpu::GPUFuncOp func);
  /// The dq kernel, or with `stats` the statistics kernel.
  void buildRowKernel(gpu::GPUFuncOp func, bool stats);

private:
  /// Sets keyLen (kv_len[batch] clamped to [0, Sk], or Sk) and offset =
  /// keyLen - Sq. The range is not checked here: with kv_len the statistics
  /// kernel, launched first, is the portable one, which checks it with a
  /// device-side assertion (one in a wgmma kernel would serialise its
  /// products).
  void setClampedKeyLength(const mma_sync::BackwardArgs &args, Value batch);
  /// Issues block 0's copies into stage 0 (`load(0, 0)`, if `count` > 0)
  /// and commits them with whatever was copied before.
  void loadFirstBlock(Value count, function_ref<void(Value, Value)> load);
  /// The two-stage cp.async pipeline over `count` blocks after
  /// loadFirstBlock (`load(j, stage)` issues block j's copies, by all
  /// threads): iteration j waits for block j's copies, fences them for the
  /// async proxy and synchronises the CTA, then runs `body(j, stage,
  /// carried, loadNext)`, which calls `loadNext()` once its first products
  /// are issued: block j + 1's copies then go out while the tensor cores
  /// work. Their stage was last read by block j - 1, whose products every
  /// warpgroup waited for before the barrier (each body ends with
  /// wgmma.wait_group 0), so no second barrier closes the iteration.
  /// Returns the loop's results.
  SmallVector<Value>
  pipelineBlocks(Value count, ValueRange init,
                 function_ref<void(Value, Value)> load,
                 function_ref<SmallVector<Value>(Value, Value, ValueRange,
                                                 function_ref<void()>)>
                     body);
  /// The dk/dv kernel's part of the accumulating formulation
  /// (WgmmaBackward.cpp). storeDsTiles writes the warpgroup's dS^T of both
  /// heads (`dsRegs`, packed as packProbabilities makes them: keys as rows)
  /// into the dS tiles at `dsOffset` as dS (queries as rows) with
  /// stmatrix.trans, then fence.proxy.async.
  void storeDsTiles(ArrayRef<SmallVector<Value>> dsRegs, int64_t dsOffset);
  /// Descriptors of dq_w^T = K^T dS_w^T for the 64 columns of D of span
  /// `span` (A = K MN-major, B = dS of the warpgroup's head w K-major),
  /// interleaved per k16 step over the CTA's keys.
  SmallVector<Value> dqDescriptors(int64_t kOffset, int64_t dsOffset,
                                   int64_t span);
  /// Descriptors of the stacked dq (KeyKernelLayout::stacksDq): A = dS of
  /// both heads [2 blockQ, blockK] K-major, B = the warpgroup's span of K
  /// (keys as the K dimension, D contiguous: MN-major), interleaved per
  /// k16 step over the CTA's keys.
  SmallVector<Value> stackedDqDescriptors(int64_t kOffset, int64_t dsOffset);
  /// The f32 offset within a dq chunk of value 4 i .. 4 i + 3 of this
  /// thread's dq accumulators (i = product x tiles + tile): the chunk in
  /// fragment order, [i][warpgroup][thread of the warpgroup][4], so that a
  /// warp's 16-byte accesses are 512 contiguous bytes.
  Value dqFragmentOffset(int64_t i);
  /// Adds the dq accumulators (`products`, of `tiles` tiles of 8 columns
  /// each) to the chunk at f32 `chunk` of `workspace` in fragment order, 16
  /// bytes per red.global.add.v4.f32 (a warp's 512 contiguous bytes per
  /// instruction).
  void addDqFromRegisters(ArrayRef<Value> products, int64_t tiles,
                          Value workspace, Value chunk);
  /// The descriptor of k16 step `kk` of a K-major operand whose low word
  /// (descriptorLow) is `low`: a tile of `rows` rows per 64-column span.
  Value kMajorStep(Value low, int64_t rows, int64_t kk);
  /// Descriptors of A (the warpgroup's 64 rows at byte `aOffset` of a tile
  /// of `aRows` rows per span) and B (a tile of `bRows` rows at `bOffset`),
  /// both K-major, per k16 step over `kDim` columns, interleaved (the form
  /// issueSharedProduct takes).
  SmallVector<Value> kMajorDescriptors(Value aOffset, int64_t aRows,
                                       Value bOffset, int64_t bRows,
                                       int64_t kDim);
  /// Descriptors of an MN-major B operand: the tile of `rows` rows (the K
  /// dimension) at `offset`, one per k16 step (the leading byte offset
  /// steps between 64-column spans, `spanBytes` apart: by default a whole
  /// tile).
  SmallVector<Value> mnMajorDescriptors(Value offset, int64_t rows,
                                        int64_t spanBytes = 0);
};

} // namespace mlir::diffattn::wgmma

#endif // DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_WGMMABACKWARDBUILDER_H
