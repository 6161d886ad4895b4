//===- diffattn-opt.cpp - the project's opt-like driver -------------------===//
//
// mlir-opt with every upstream dialect, extension and pass, plus the
// diffattn dialect and the project's passes and pipelines.
//
//===----------------------------------------------------------------------===//

#include "diffattn/InitAllDiffAttn.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  mlir::diffattn::registerAllDiffAttnPasses();

  mlir::DialectRegistry registry;
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  mlir::registerAllToLLVMIRTranslations(registry);
  mlir::diffattn::registerAllDiffAttnDialects(registry);

  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "diffattn optimizer driver\n", registry));
}
