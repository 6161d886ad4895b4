//===- LinalgBuilders.h - small builders shared by the lowerings -*- C++
//-*-===//
//
// Internal helpers of the decomposition and the tiling: linalg.generic on
// tensors, filled tensors and the scalar math of attention (conversion to
// the accumulator type, sigmoid, the guards that make empty rows 0 instead
// of NaN). The scalar builders compute in the float type of their operands:
// the accumulator type A (AttentionConfig::accumulatorType, f64 for f64
// operands, else f32), so one builder serves both precisions.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_LINALGBUILDERS_H
#define DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_LINALGBUILDERS_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Utils/StructuredOpsUtils.h"
#include "mlir/IR/Builders.h"

namespace mlir::diffattn::lowering {

using BodyBuilder = function_ref<void(OpBuilder &, Location, ValueRange)>;

constexpr utils::IteratorType kPar = utils::IteratorType::parallel;
constexpr utils::IteratorType kRed = utils::IteratorType::reduction;

/// Fast-math flags of the dot-product and softmax arithmetic: reassociation
/// lets the backends vectorise reductions; the reference tolerance of
/// SPEC.md covers the reordering.
inline arith::FastMathFlags attentionFastMath() {
  return arith::FastMathFlags::reassoc | arith::FastMathFlags::contract;
}

/// A linalg.generic on tensors whose results have the types of `outputs`.
SmallVector<Value> buildGeneric(OpBuilder &b, Location loc, ValueRange inputs,
                                ValueRange outputs, ArrayRef<AffineMap> maps,
                                ArrayRef<utils::IteratorType> iterators,
                                BodyBuilder body);

/// The value `then(b, loc)` builds when `condition` holds, else `otherwise`
/// (an scf.if, so that `then`'s reads, e.g. an indirect tensor.extract,
/// happen only when `condition` holds).
Value buildIfElse(OpBuilder &b, Location loc, Value condition,
                  function_ref<Value(OpBuilder &, Location)> then,
                  Value otherwise);

/// A tensor of `sizes` x `elementType` filled with `value`.
Value buildFilledTensor(OpBuilder &b, Location loc,
                        ArrayRef<OpFoldResult> sizes, Type elementType,
                        double value);

/// A scalar constant `value` of the float type `type`.
Value buildFloatConstant(OpBuilder &b, Location loc, Type type, double value);

/// `value` (a float) converted to the float type `type`: extended when
/// `type` is wider (an operand into the accumulator type), truncated when
/// narrower (a sum into a result's element type), unchanged when equal.
Value buildFloatCast(OpBuilder &b, Location loc, Value value, Type type);

/// 1 / (1 + exp(-x)) in x's type.
Value buildSigmoid(OpBuilder &b, Location loc, Value x);

/// A running max usable as an exp() offset: 0 when the max is -inf (no
/// visible key yet), so exp(s - m) is 0, never NaN.
Value buildSafeMax(OpBuilder &b, Location loc, Value max);

/// A row's log-sum-exp from its running max and sum (natural log, in their
/// type): max + log(sum); -inf for a row that saw no key (max = -inf, sum =
/// 0).
Value buildLogSumExp(OpBuilder &b, Location loc, Value max, Value sum);

/// `acc / sum`, or 0 when the row saw no key (sum == 0).
Value buildNormalize(OpBuilder &b, Location loc, Value acc, Value sum);

/// The differential combination of one pair: acc0/sum0 - weight * acc1/sum1
/// (each normalisation 0 for an empty row).
Value buildPairDifference(OpBuilder &b, Location loc, Value acc0, Value acc1,
                          Value sum0, Value sum1, Value weight);

/// acc + ext(lhs) * ext(rhs) in acc's type with attentionFastMath().
Value buildMulAcc(OpBuilder &b, Location loc, Value lhs, Value rhs, Value acc);

/// The V1 epilogue scale of one element, in x's type: (1 - lambdaInit) * x
/// * rsqrt(sumSquares / width + eps) * weight.
Value buildRMSNormScale(OpBuilder &b, Location loc, Value x, Value sumSquares,
                        Value weight, int64_t width, float eps,
                        float lambdaInit);

/// init + sum over the reduction loops of lhs * rhs, where the last loop is
/// parallel, static (init's last dimension, W) and indexes the last,
/// contiguous dimension of rhs and init only, and lhs does not depend on it:
/// `maps` and `iterators` as for the linalg.generic of that contraction.
/// Built as loops over init's rows (the parallel loops, in their order)
/// whose body holds the row as one vector<W x A> across the reduction loops
/// (in their order), adding lhs * (the rhs row) per step: an axpy per step
/// on contiguous rows, with no memory traffic for the accumulator. As a
/// linalg.generic, LLVM fully unrolled the W loop at W = 32 and then either
/// kept every element scalar or vectorised an outer loop with gathers and
/// scatters (docs/performance.md, CPU 2026-12-04 (evening)). `guard`, when
/// given, returns per step (from the loops' induction values) whether the
/// step's term is added. Returns the new init (A = init's element type).
Value buildRowContraction(
    OpBuilder &b, Location loc, Value lhs, Value rhs, Value init,
    ArrayRef<AffineMap> maps, ArrayRef<utils::IteratorType> iterators,
    function_ref<Value(OpBuilder &, Location, ArrayRef<Value>)> guard = {});

} // namespace mlir::diffattn::lowering

#endif // DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_LINALGBUILDERS_H
