//===- DiffAttnPlugin.cpp - diffattn as an MLIR dialect and pass plugin ---===//
//
// Exposes the diffattn dialect (--load-dialect-plugin) and every project pass
// and pipeline (--load-pass-plugin: diffattn-fuse, the TOSA front end,
// decompose, tile-flash, outline-kernels, the CPU pipeline and the GPU
// strategy) to any MLIR tool that links the same shared libMLIR.so, such as
// Debian's mlir-opt-22:
//
//   mlir-opt-22 --load-dialect-plugin=build/lib/libDiffAttnPlugin.so \
//               --load-pass-plugin=build/lib/libDiffAttnPlugin.so \
//               graph.mlir --diffattn-fuse
//
//===----------------------------------------------------------------------===//

#include "diffattn/InitAllDiffAttn.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/Plugins/DialectPlugin.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "llvm/Config/llvm-config.h"
#include "llvm/Support/Compiler.h"

using namespace mlir;

/// The dialect plugin entry point: registers the diffattn dialect.
extern "C" LLVM_ATTRIBUTE_WEAK DialectPluginLibraryInfo
mlirGetDialectPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "DiffAttn", LLVM_VERSION_STRING,
          [](DialectRegistry *registry) {
            diffattn::registerAllDiffAttnDialects(*registry);
          }};
}

/// The pass plugin entry point: registers the project's passes and
/// pipelines.
extern "C" LLVM_ATTRIBUTE_WEAK PassPluginLibraryInfo mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "DiffAttnPasses", LLVM_VERSION_STRING,
          []() { diffattn::registerAllDiffAttnPasses(); }};
}
