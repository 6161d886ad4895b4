//===- DiffAttnOps.h - diffattn operations ----------------------*- C++ -*-===//
//
// Declares the diffattn operations and the accumulator-type rule their
// verifiers and lowerings share.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_H
#define DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnDialect.h"

#define GET_OP_CLASSES
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h.inc"

namespace mlir::diffattn {

/// The type in which the ops compute on operands of element type T
/// (`elementType`): scores, softmax statistics, sums and the log-sum-exp
/// result `lse` are f64 when T is f64 and f32 when T is f32, f16 or bf16.
Type getAccumulatorType(Type elementType);

} // namespace mlir::diffattn

#endif // DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_H
