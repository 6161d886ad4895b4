//===- TosaFrontend.h - TOSA graphs into linalg -----------------*- C++ -*-===//
//
// The TOSA front end: what a TOSA model graph (torch-mlir's TOSA export) needs
// before diffattn-fuse can read it, as one pipeline registered as
// `diffattn-tosa-frontend`:
//   diffattn-tosa-narrow-f64-compares   (torch's f64 guard compares)
//   tosa-to-linalg-pipeline             (upstream; validates, then lowers)
//   tosa-to-tensor, tosa-to-arith       (reshapes/slices, constants)
// The compile driver runs it on modules that hold TOSA ops, so a user hands
// it a TOSA export as is.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_FRONTEND_TOSA_TOSAFRONTEND_H
#define DIFFATTN_FRONTEND_TOSA_TOSAFRONTEND_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tosa/IR/TosaOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"

namespace mlir::diffattn {

#define GEN_PASS_DECL
#include "diffattn/Frontend/Tosa/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "diffattn/Frontend/Tosa/Passes.h.inc"

/// Adds the TOSA front end to `pm` (anchored on builtin.module): the f64
/// compare narrowing and MLIR's TOSA-to-linalg/tensor/arith lowering, so
/// that the module holds linalg on tensors for diffattn-fuse.
void buildTosaFrontendPipeline(OpPassManager &pm);

/// Whether `module` holds any TOSA op (and so needs the TOSA front end
/// before fusion).
bool needsTosaFrontend(ModuleOp module);

/// Registers `diffattn-tosa-narrow-f64-compares` and the
/// `diffattn-tosa-frontend` pipeline.
void registerTosaFrontend();

} // namespace mlir::diffattn

#endif // DIFFATTN_FRONTEND_TOSA_TOSAFRONTEND_H
