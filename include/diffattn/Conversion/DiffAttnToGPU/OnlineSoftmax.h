//===- OnlineSoftmax.h - register online softmax on MMA fragments -*- C++
//-*-===//
//
// The FlashAttention online softmax of one head over one key block, run on
// the scores as the tensor cores leave them in registers (accumulator
// fragments), with exp2 and the scale folded in, optional lazy rescaling,
// and the row statistics reduced across the lanes that share a row. Shared
// by the GPU strategies: the layout of a warp's slice of the accumulator is
// a parameter.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_ONLINESOFTMAX_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_ONLINESOFTMAX_H

#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"

#include "llvm/ADT/SmallVector.h"

namespace mlir::diffattn {

/// Where a thread's values of an accumulator tile (Acc, 4 values) sit: the
/// tile's values e belong to the thread's row e / valuesPerRow, and the
/// lanes that hold the other columns of a row are lane ^ m for the masks in
/// rowLaneMasks (their max / sum is one shuffle per mask).
struct FragmentLayout {
  /// Rows of the tile one thread holds.
  int64_t rowsPerThread;
  /// Values of each such row one thread holds.
  int64_t valuesPerRow;
  /// XOR lane masks that reach every lane holding the same row.
  SmallVector<int32_t, 2> rowLaneMasks;

  /// The per-warp layout of mma.sync m16n8 (PTX ISA "Matrix Fragments for
  /// mma.m16n8k16", C/D): rows g and g + 8 (g = lane / 4), columns
  /// 2 (lane % 4) + {0, 1}; a row lives in the 4 lanes of a quad.
  static FragmentLayout mmaSyncM16N8() { return {2, 2, {1, 2}}; }
  /// The per-warp layout of an 8-column slice of wgmma m64nN's f32
  /// accumulator (PTX ISA "wgmma .m64nNk16 register fragment D"): warp w of
  /// the warpgroup holds rows 16 w + g and 16 w + g + 8 with the same column
  /// pattern, so it equals mmaSyncM16N8.
  static FragmentLayout wgmmaM64NSlice() { return {2, 2, {1, 2}}; }
};

/// The online-softmax state of one head: its accumulator tiles and the
/// running max and sum of each of the thread's rows (rowsPerThread each).
struct HeadState {
  SmallVector<Acc> acc;
  SmallVector<Value, 2> rowMax, rowSum;
};

/// Emits the online softmax of one head over a block's scores.
class OnlineSoftmax {
public:
  /// `scale` multiplies the scores (SPEC.md); `rescaleThreshold` > 0 enables
  /// lazy rescaling (the offsets move only when a probability would exceed
  /// 2^threshold; exact, see block()). Of a thread's n tiles of a block,
  /// floor(n emulatedExp2 / 8) (emulatedExp2 0 to 8), spread evenly, take
  /// their probabilities' exp2 from GPUKernelBuilder::exp2Polynomial (FMA
  /// pipe) instead of the SFU.
  OnlineSoftmax(GPUKernelBuilder &kb, FragmentLayout layout, float scale,
                float rescaleThreshold, int64_t emulatedExp2 = 0)
      : kb(kb), layout(std::move(layout)), scale(scale),
        rescaleThreshold(rescaleThreshold), emulatedExp2(emulatedExp2) {}

  /// Replaces the scores `s` (one head, the thread's tiles of one key block)
  /// by their probabilities exp(scale (s - max)) under the running max, and
  /// moves `head` (max, sum, accumulators) to that max: the accumulators
  /// and sums are multiplied by exp(scale (old max - new max)). Rows whose
  /// max is still -inf (no key seen) get probabilities 0, never NaN. With
  /// lazy rescaling the max only moves when some score of the warp would
  /// give a probability above 2^threshold (a warp vote); the same offset
  /// serves sums and accumulators, so the result is exact. Returns an i1
  /// that is false only where the offsets stayed (warp-uniform; the
  /// constant true without lazy rescaling).
  Value block(SmallVectorImpl<Acc> &s, HeadState &head);

  /// As block(), but leaves the accumulators `head.acc` alone and returns
  /// the factor each of the thread's rows must multiply them by (1 where the
  /// offset did not move): for pipelines that rescale the accumulators only
  /// once the products of the previous block, still in flight, have landed.
  /// `moved`, if given, is set to an i1 that is false only where every
  /// factor is exactly 1 (lazy rescaling kept the offsets; warp-uniform),
  /// so the caller may skip the multiplications; without lazy rescaling it
  /// is the constant true.
  SmallVector<Value, 2> blockDeferred(SmallVectorImpl<Acc> &s, HeadState &head,
                                      Value *moved = nullptr);

  /// The row max reduction of one thread's value over the lanes of its row.
  Value rowMax(Value x);
  /// The row sum reduction.
  Value rowSum(Value x);

private:
  GPUKernelBuilder &kb;
  FragmentLayout layout;
  float scale;
  float rescaleThreshold;
  int64_t emulatedExp2;
};

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_ONLINESOFTMAX_H
