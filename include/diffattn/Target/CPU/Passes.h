//===- Passes.h - CPU target passes -----------------------------*- C++ -*-===//

#ifndef DIFFATTN_TARGET_CPU_PASSES_H
#define DIFFATTN_TARGET_CPU_PASSES_H

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir::diffattn {

#define GEN_PASS_DECL
#include "diffattn/Target/CPU/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "diffattn/Target/CPU/Passes.h.inc"

} // namespace mlir::diffattn

#endif // DIFFATTN_TARGET_CPU_PASSES_H
