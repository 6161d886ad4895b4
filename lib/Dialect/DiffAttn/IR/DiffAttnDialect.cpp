//===- DiffAttnDialect.cpp - diffattn dialect -----------------------------===//
//
// Registers the diffattn operations with the dialect.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnDialect.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

using namespace mlir;
using namespace mlir::diffattn;

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOpsDialect.cpp.inc"

void DiffAttnDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.cpp.inc"
      >();
}
