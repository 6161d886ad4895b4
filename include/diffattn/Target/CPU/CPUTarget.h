//===- CPUTarget.h - the CPU target: pipeline and shared objects -*- C++
//-*-===//
//
// The CPU lowering of the tiled (or decomposed) form: one pass pipeline,
// registered as `diffattn-cpu-pipeline`, from a module holding diffattn ops
// to the LLVM dialect with plain C entry points; and the emission of an LLVM
// dialect module as a host shared object.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_TARGET_CPU_CPUTARGET_H
#define DIFFATTN_TARGET_CPU_CPUTARGET_H

#include "diffattn/Target/Stage.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassOptions.h"
#include "llvm/Support/JSON.h"

namespace mlir::diffattn {

/// Options of `diffattn-cpu-pipeline`.
struct CPUPipelineOptions : public PassPipelineOptions<CPUPipelineOptions> {
  PassOptions::Option<std::string> lowering{
      *this, "lowering",
      llvm::cl::desc("How diffattn ops are lowered: 'flash' (the "
                     "FlashAttention tiling) or 'decompose' (untiled linalg, "
                     "quadratic memory; the oracle)"),
      llvm::cl::init("flash")};
  PassOptions::Option<int64_t> blockQ{
      *this, "block-q",
      llvm::cl::desc("Query rows per block (0: the CPU default)"),
      llvm::cl::init(0)};
  PassOptions::Option<int64_t> blockK{
      *this, "block-k", llvm::cl::desc("Keys per block (0: the CPU default)"),
      llvm::cl::init(0)};
  PassOptions::Option<bool> outline{
      *this, "outline",
      llvm::cl::desc("Start by outlining one kernel per diffattn op "
                     "configuration (diffattn-outline-kernels)"),
      llvm::cl::init(true)};
};

/// Adds the CPU pipeline to `pm` (anchored on builtin.module). Reports
/// invalid options through `emitError` and fails.
LogicalResult
buildCPUPipeline(OpPassManager &pm, const CPUPipelineOptions &options,
                 function_ref<LogicalResult(const Twine &)> emitError);

/// Registers `diffattn-cpu-pipeline` and the CPU target's passes.
void registerCPUTarget();

/// Translates `module` (LLVM dialect, from the CPU pipeline) to LLVM IR,
/// optimises it for the host CPU, and links it into the shared object
/// `path`. Errors are emitted on `module`.
LogicalResult emitSharedObject(ModuleOp module, StringRef path);

/// The host CPU the shared objects are built for (part of cache keys).
std::string getHostCPUDescription();

/// Compiles the outlined kernel `name`, alone in `kernelModule`, for the
/// CPU: stage "lower <name>" (diffattn-cpu-pipeline{outline=0} with
/// `options`), then "emit <name>.so" into `outputDir`. Returns the kernel's
/// manifest entry (its description plus `library`, `entry` and the C-call
/// launch rule).
FailureOr<llvm::json::Object>
compileCPUKernel(ModuleOp kernelModule, StringRef name,
                 const CPUPipelineOptions &options, StringRef outputDir,
                 StageRunner run, TimingScope &timing);

} // namespace mlir::diffattn

#endif // DIFFATTN_TARGET_CPU_CPUTARGET_H
