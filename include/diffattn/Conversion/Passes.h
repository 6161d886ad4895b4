//===- Passes.h - diffattn conversion passes --------------------*- C++ -*-===//

#ifndef DIFFATTN_CONVERSION_PASSES_H
#define DIFFATTN_CONVERSION_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir::diffattn {

#define GEN_PASS_DECL
#include "diffattn/Conversion/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "diffattn/Conversion/Passes.h.inc"

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_PASSES_H
