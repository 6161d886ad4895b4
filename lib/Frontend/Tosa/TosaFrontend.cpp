//===- TosaFrontend.cpp - the diffattn-tosa-frontend pipeline -------------===//
//
// Lists the stages of the TOSA front end (TosaFrontend.h) and registers them.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Frontend/Tosa/TosaFrontend.h"

#include "mlir/Conversion/TosaToArith/TosaToArith.h"
#include "mlir/Conversion/TosaToLinalg/TosaToLinalg.h"
#include "mlir/Conversion/TosaToTensor/TosaToTensor.h"
#include "mlir/Dialect/Tosa/IR/TosaOps.h"
#include "mlir/Pass/PassRegistry.h"

using namespace mlir;

void mlir::diffattn::buildTosaFrontendPipeline(OpPassManager &pm) {
  pm.addNestedPass<func::FuncOp>(createDiffAttnTosaNarrowF64Compares());
  // The same stages as upstream's --tosa-to-linalg-pipeline (validation
  // first, then named ops, elementwise ops and cleanups).
  tosa::addTosaToLinalgPasses(pm, TosaToLinalgOptions(),
                              TosaToLinalgNamedOptions());
  pm.addNestedPass<func::FuncOp>(createTosaToTensorPass());
  pm.addNestedPass<func::FuncOp>(createTosaToArithPass());
}

bool mlir::diffattn::needsTosaFrontend(ModuleOp module) {
  bool found = false;
  module.walk([&](Operation *op) {
    if (isa_and_nonnull<tosa::TosaDialect>(op->getDialect())) {
      found = true;
      return WalkResult::interrupt();
    }
    return WalkResult::advance();
  });
  return found;
}

void mlir::diffattn::registerTosaFrontend() {
  registerDiffAttnTosaPasses();
  PassPipelineRegistration<>(
      "diffattn-tosa-frontend",
      "Lower a TOSA model graph (torch-mlir's TOSA export) to linalg on "
      "tensors for diffattn-fuse: diffattn-tosa-narrow-f64-compares, then "
      "MLIR's tosa-to-linalg-pipeline, tosa-to-tensor and tosa-to-arith",
      [](OpPassManager &pm) { buildTosaFrontendPipeline(pm); });
}
