//===- InitAllDiffAttn.cpp - register the project's dialects, passes -----===//
//
// Implements the registration entry points shared by every tool.
//
//===----------------------------------------------------------------------===//

#include "diffattn/InitAllDiffAttn.h"

#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnDialect.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h"
#include "diffattn/Frontend/Tosa/TosaFrontend.h"
#include "diffattn/Target/CPU/CPUTarget.h"

void mlir::diffattn::registerAllDiffAttnDialects(DialectRegistry &registry) {
  registry.insert<DiffAttnDialect>();
}

void mlir::diffattn::registerAllDiffAttnPasses() {
  registerDiffAttnPasses();
  registerDiffAttnConversionPasses();
  registerCPUTarget();
  registerTosaFrontend();
}
