//===- GPUTarget.h - the GPU targets: PTX and cubin ------------*- C++ -*-===//
//
// From a module of kernels made by a GPU strategy (gpu.module + gpu.func)
// to PTX through LLVM's NVPTX backend, and from PTX to a cubin through
// ptxas.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_TARGET_GPU_GPUTARGET_H
#define DIFFATTN_TARGET_GPU_GPUTARGET_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/PassManager.h"

#include <optional>
#include <string>

namespace mlir::diffattn {

/// A GPU target of diffattn-compile.
struct GPUTargetInfo {
  /// The --target name (sm_80, sm_90, ...).
  std::string name;
  /// The chip ptxas and LLVM compile for.
  std::string chip;
  /// PTX ISA feature string for LLVM (e.g. +ptx80).
  std::string features;
  /// The strategy that makes kernels for it (mma_sync, wgmma, tcgen05).
  std::string strategy;
  /// CTAs a split-KV (decode) launch aims for when the runtime picks the
  /// split size: about one wave of the decode kernel on the target's
  /// reference GPU (A100: 108 SMs, 1 CTA each; H100/H200: 132 SMs, 2 each;
  /// B200: 148 SMs, 2 each).
  int64_t splitTargetCtas;
  /// The chip has programmatic dependent launch (sm_90 and later): a
  /// kernel may start before the previous one on its stream ends and wait
  /// for it itself (griddepcontrol).
  bool programmaticLaunch;
};

/// The GPU target called `name`, or nullopt.
std::optional<GPUTargetInfo> lookupGPUTarget(StringRef name);

/// Adds the lowering from gpu.module kernels to a gpu.binary holding PTX:
/// lower-affine, then gpu-lower-to-nvvm-pipeline with `target`'s chip.
LogicalResult buildPTXPipeline(OpPassManager &pm, const GPUTargetInfo &target);

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

/// Assembles `ptxPath` into `cubinPath` for `target.chip` with ptxas (the
/// one in DIFFATTN_PTXAS, else on PATH, else /usr/local/cuda/bin). Errors
/// are emitted at `loc`.
FailureOr<PtxasReport> assemblePTX(Location loc, StringRef ptxPath,
                                   StringRef cubinPath,
                                   const GPUTargetInfo &target);

} // namespace mlir::diffattn

#endif // DIFFATTN_TARGET_GPU_GPUTARGET_H
