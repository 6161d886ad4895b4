//===- CompileKernel.cpp - one outlined kernel to PTX and a cubin ---------===//
//
// The GPU target's stages of diffattn-compile for one kernel: the GPU
// pipeline (strategy), PTX, ptxas; then the manifest entry.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"
#include "diffattn/Target/GPU/GPUTarget.h"
#include "diffattn/Target/Manifest.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/ToolOutputFile.h"

using namespace mlir;
using namespace mlir::diffattn;

FailureOr<llvm::json::Object>
mlir::diffattn::compileGPUKernel(ModuleOp kernelModule, StringRef name,
                                 const GPUChipInfo &chip,
                                 StringRef pipelineOptions, StringRef outputDir,
                                 StageRunner run, TimingScope &timing) {
  MLIRContext *context = kernelModule.getContext();
  auto reportError = [&](const Twine &message) {
    return kernelModule.emitError(message);
  };
  {
    PassManager pm(context);
    if (failed(buildGPUPipeline(pm, pipelineOptions, reportError)))
      return failure();
    if (failed(run(pm, kernelModule, ("gpu " + name).str())))
      return failure();
  }
  DictionaryAttr desc;
  kernelModule.walk([&](gpu::GPUFuncOp func) {
    if (auto attr = func->getAttrOfType<DictionaryAttr>(kKernelAttrName))
      desc = attr;
  });
  if (!desc)
    return kernelModule.emitError() << "no GPU kernel made for " << name;
  llvm::json::Object object = *attributeToJSON(desc).getAsObject();

  {
    PassManager pm(context);
    if (failed(buildPTXPipeline(pm, chip)))
      return failure();
    if (failed(run(pm, kernelModule, ("ptx " + name).str())))
      return failure();
  }
  FailureOr<std::string> ptx = extractPTX(kernelModule);
  if (failed(ptx))
    return failure();

  std::string ptxFile = name.str() + ".ptx", cubinFile = name.str() + ".cubin";
  llvm::SmallString<256> ptxPath(outputDir), cubinPath(outputDir);
  llvm::sys::path::append(ptxPath, ptxFile);
  llvm::sys::path::append(cubinPath, cubinFile);
  {
    std::string errorMessage;
    auto output = openOutputFile(ptxPath, &errorMessage);
    if (!output)
      return kernelModule.emitError() << errorMessage;
    output->os() << *ptx;
    output->keep();
  }
  FailureOr<PtxasReport> report;
  {
    TimingScope ptxasTiming = timing.nest("ptxas " + cubinFile);
    report = assemblePTX(kernelModule.getLoc(), ptxPath, cubinPath, chip);
  }
  if (failed(report))
    return failure();
  object["entry"] = name.str();
  object["ptx"] = ptxFile;
  object["cubin"] = cubinFile;
  object["chip"] = chip.name.str();
  object["ptxas"] = llvm::json::Object{{"registers", report->registers},
                                       {"spill_stores", report->spillStores},
                                       {"spill_loads", report->spillLoads},
                                       {"stack_frame", report->stackFrame}};
  // The GPU stage, replayable alone: diffattn-opt --diffattn-outline-kernels
  // --diffattn-gpu-pipeline="<options>".
  object["pipeline"] = ("diffattn-gpu-pipeline{" + pipelineOptions + "}").str();
  return object;
}
