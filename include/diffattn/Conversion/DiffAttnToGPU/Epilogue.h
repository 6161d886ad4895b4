//===- Epilogue.h - the differential epilogue on the GPU --------*- C++ -*-===//
//
// SPEC.md's V2 epilogue, out[b, i, h, :] = A_2h[i, :] - sigmoid(lam[b, i, h])
// * A_2h+1[i, :], written once to the output: the normalisation of each
// head's accumulators by its row sum (0 for a row that saw no key), the
// sigmoid of the lambda logit, and the store of the pair's single head.
// Shared by the GPU strategies and the split-KV combine kernel.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_EPILOGUE_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_EPILOGUE_H

#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"

namespace mlir::diffattn {

/// Emits the epilogue's pieces. `out` and `lam` are 1-D buffers of the
/// contiguous BSHD tensors: out [B, Sq, H, Dv] of `elementType`, lam
/// [B, Sq, H] (any float type; read as f32).
class DifferentialEpilogue {
public:
  DifferentialEpilogue(GPUKernelBuilder &kb, int64_t numPairs, int64_t valueDim,
                       Type elementType)
      : kb(kb), numPairs(numPairs), valueDim(valueDim),
        elementType(elementType) {}

  /// The row of (pair, query row) in lam and in the output, for rowIndex =
  /// b * Sq + i: rowIndex * H + pair.
  Value pairRowIndex(Value rowIndex, Value pair);
  /// sigmoid(lam[index]) in f32: 1 / (1 + 2^(-x log2 e)).
  Value sigmoidOfLam(Value lam, Value index);
  /// sigmoid(x) of an f32 x: 1 / (1 + 2^(-x log2 e)).
  Value sigmoid(Value x);
  /// acc / sum, or 0 for a row that saw no key (sum 0).
  Value normalize(Value acc, Value sum);
  /// 1 / sum, or 0 for a row that saw no key (sum 0).
  Value inverseSum(Value sum);
  /// out[pairRow * Dv + col] = o0 - sig * o1 (one element, truncated to the
  /// element type).
  void storeDifference(Value out, Value pairRow, Value col, Value o0, Value o1,
                       Value sig);

private:
  GPUKernelBuilder &kb;
  int64_t numPairs, valueDim;
  Type elementType;
};

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_EPILOGUE_H
