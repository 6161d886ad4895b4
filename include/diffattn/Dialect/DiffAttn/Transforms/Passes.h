//===- Passes.h - diffattn transformation passes ----------------*- C++ -*-===//
//
// Declares the passes of Passes.td and the CPU pipeline registration.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_PASSES_H
#define DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_PASSES_H

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir::diffattn {

#define GEN_PASS_DECL
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"

} // namespace mlir::diffattn

#endif // DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_PASSES_H
