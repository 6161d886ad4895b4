//===- DiffAttnDialect.h - diffattn dialect ---------------------*- C++ -*-===//
//
// Declares the diffattn dialect class.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNDIALECT_H
#define DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNDIALECT_H

#include "mlir/IR/Dialect.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOpsDialect.h.inc"

#endif // DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNDIALECT_H
