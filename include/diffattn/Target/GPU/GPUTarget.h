//===- GPUTarget.h - the GPU targets: PTX and cubin ------------*- C++ -*-===//
//
// The GPU target's stages of diffattn-compile, for a chip of the GPU target
// table (include/diffattn/Conversion/DiffAttnToGPU/Chips.h): the GPU
// pipeline (diffattn-gpu-pipeline: outlined kernel -> gpu.module), PTX
// through LLVM's NVPTX backend, and a cubin through ptxas.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_TARGET_GPU_GPUTARGET_H
#define DIFFATTN_TARGET_GPU_GPUTARGET_H

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"
#include "diffattn/Target/Stage.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/JSON.h"

#include <optional>
#include <string>

namespace mlir::diffattn {

/// The diffattn-gpu-pipeline options text for `chip` and the user's extra
/// strategy options (space separated `key=value`, e.g. "warps=8"; later
/// keys win): "chip=<name> <extra>".
std::string getGPUPipelineOptions(const GPUChipInfo &chip, StringRef extra);

/// Adds diffattn-gpu-pipeline{`options`} to `pm`; invalid options are
/// reported through `emitError`.
LogicalResult
buildGPUPipeline(OpPassManager &pm, StringRef options,
                 function_ref<LogicalResult(const Twine &)> emitError);

/// The lowering from gpu.module kernels to a gpu.binary holding PTX, as
/// pipeline text: lower-affine, then gpu-lower-to-nvvm-pipeline with
/// `chip`'s name and PTX features.
std::string getPTXPipeline(const GPUChipInfo &chip);

/// Adds getPTXPipeline(`chip`) to `pm`.
LogicalResult buildPTXPipeline(OpPassManager &pm, const GPUChipInfo &chip);

/// The PTX text of the single gpu.binary in `module`.
FailureOr<std::string> extractPTX(ModuleOp module);

/// Resource usage reported by ptxas -v (the largest over the cubin's
/// kernels).
struct PtxasReport {
  int64_t registers = -1;
  int64_t spillStores = -1;
  int64_t spillLoads = -1;
  int64_t stackFrame = -1;
};

/// Why GPU kernels cannot be compiled on this machine, or std::nullopt:
/// no ptxas (looked up as assemblePTX does), or no libdevice in the CUDA
/// toolkit that MLIR's NVVM serialiser links (where CUDA_ROOT, CUDA_HOME or
/// CUDA_PATH names one).
std::optional<std::string> diagnoseCUDAToolkit();

/// Assembles `ptxPath` into `cubinPath` for `chip` with ptxas (the one in
/// DIFFATTN_PTXAS, else on PATH, else /usr/local/cuda/bin). Errors are
/// emitted at `loc`.
FailureOr<PtxasReport> assemblePTX(Location loc, StringRef ptxPath,
                                   StringRef cubinPath,
                                   const GPUChipInfo &chip);

/// Compiles the outlined kernel `name`, alone in `kernelModule`, for
/// `chip`: stage "gpu <name>" (diffattn-gpu-pipeline{`pipelineOptions`},
/// see getGPUPipelineOptions), "ptx <name>" (buildPTXPipeline), then
/// "ptxas <name>.cubin". Writes <name>.ptx and <name>.cubin into
/// `outputDir` and returns the kernel's manifest entry (its description
/// with the launch rule, plus `entry`, `ptx`, `cubin`, `chip`, `ptxas` and
/// the replayable `pipeline`).
FailureOr<llvm::json::Object>
compileGPUKernel(ModuleOp kernelModule, StringRef name, const GPUChipInfo &chip,
                 StringRef pipelineOptions, StringRef outputDir,
                 StageRunner run, TimingScope &timing);

} // namespace mlir::diffattn

#endif // DIFFATTN_TARGET_GPU_GPUTARGET_H
