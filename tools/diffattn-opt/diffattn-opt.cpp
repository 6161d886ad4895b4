//===- diffattn-opt.cpp - the project's opt-like driver -------------------===//
//
// mlir-opt with every upstream dialect, extension and pass, plus the
// diffattn dialect and the project's passes and pipelines.
//
// One difference from mlir-opt's defaults: a diagnostic does not print the
// operation it is attached to (`--mlir-print-op-on-diagnostic` defaults to
// false), so a failing pass reports one located line instead of the whole
// module in generic form. `--mlir-print-op-on-diagnostic=true` restores the
// dump.
//
//===----------------------------------------------------------------------===//

#include "diffattn/InitAllDiffAttn.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "llvm/Support/CommandLine.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  mlir::diffattn::registerAllDiffAttnPasses();

  mlir::DialectRegistry registry;
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  mlir::registerAllToLLVMIRTranslations(registry);
  mlir::diffattn::registerAllDiffAttnDialects(registry);

  auto [inputFilename, outputFilename] = mlir::registerAndParseCLIOptions(
      argc, argv, "diffattn optimizer driver\n", registry);
  // MLIRContext's option (lib/IR/MLIRContext.cpp), a cl::opt<bool>, read
  // when MlirOptMain creates its context: false unless given.
  llvm::cl::Option *printOp =
      llvm::cl::getRegisteredOptions().lookup("mlir-print-op-on-diagnostic");
  if (printOp && printOp->getNumOccurrences() == 0)
    static_cast<llvm::cl::opt<bool> *>(printOp)->setValue(false);
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, inputFilename, outputFilename, registry));
}
