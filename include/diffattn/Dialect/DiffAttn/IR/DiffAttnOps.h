//===- DiffAttnOps.h - diffattn operations ----------------------*- C++ -*-===//
//
// Declares the diffattn.v2 and diffattn.v1 operations.
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

#endif // DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_H
