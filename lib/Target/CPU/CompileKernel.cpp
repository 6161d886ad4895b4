//===- CompileKernel.cpp - one outlined kernel to a CPU shared object -----===//
//
// The CPU target's stages of diffattn-compile: the CPU pipeline, then the
// shared object, then the manifest entry.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"
#include "diffattn/Target/CPU/CPUTarget.h"
#include "diffattn/Target/Manifest.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "llvm/Support/Path.h"

using namespace mlir;
using namespace mlir::diffattn;

FailureOr<llvm::json::Object> mlir::diffattn::compileCPUKernel(
    ModuleOp kernelModule, StringRef name, const CPUPipelineOptions &options,
    StringRef outputDir, StageRunner run, TimingScope &timing) {
  PassManager pm(kernelModule.getContext());
  auto reportError = [&](const Twine &message) {
    return kernelModule.emitError(message);
  };
  if (failed(buildCPUPipeline(pm, options, reportError)))
    return failure();
  if (failed(run(pm, kernelModule, ("lower " + name).str())))
    return failure();

  llvm::SmallString<256> libraryPath(outputDir);
  std::string library = name.str() + ".so";
  llvm::sys::path::append(libraryPath, library);
  {
    TimingScope emitTiming = timing.nest("emit " + library);
    if (failed(emitSharedObject(kernelModule, libraryPath)))
      return failure();
  }

  auto entry = kernelModule.lookupSymbol<LLVM::LLVMFuncOp>(name);
  auto desc = entry ? entry->getAttrOfType<DictionaryAttr>(kKernelAttrName)
                    : DictionaryAttr();
  if (!desc)
    return kernelModule.emitError() << "no entry point for kernel " << name;
  llvm::json::Object object = *attributeToJSON(desc).getAsObject();
  object["library"] = library;
  object["entry"] = name.str();
  object["launch"] = llvm::json::Object{
      {"kind", "c_call"},
      {"returns", "void"},
      {"rule", "one call computes the whole op; pointers are contiguous "
               "row-major (BSHD) buffers in 'args' order, then B, Sq, Sk"}};
  return object;
}
