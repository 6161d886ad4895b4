//===- CPUPipeline.cpp - diffattn-cpu-pipeline ----------------------------===//
//
// The stages from diffattn ops to LLVM-dialect kernels with C entry points.
// Each stage is an ordinary pass, so `diffattn-opt --pass-pipeline=...` can
// reproduce any prefix of the pipeline and print the IR between stages:
//
//   1. diffattn-outline-kernels           one kernel function per config
//   2. diffattn-tile-flash{target=cpu}    FlashAttention tiling
//      (or diffattn-decompose: untiled linalg, the oracle)
//   3. eliminate-empty-tensors (the epilogue writes straight into the
//      output), empty-tensor-to-alloc-tensor (before cse, so that no two
//      temporaries share one buffer), canonicalize, cse
//   4. one-shot-bufferize,
//      canonicalize (loops that pass the output
//      through fold away), drop-equivalent-buffer-results,
//      buffer-deallocation-pipeline       tensors -> memrefs, out in place
//   5. convert-linalg-to-loops, lower-affine, expand-strided-metadata,
//      convert-scf-to-cf                  loops
//   6. convert-vector-to-llvm (the row contractions: P V, dq, dk, dv),
//      convert-math-to-llvm, convert-to-llvm, reconcile-unrealized-casts
//   7. diffattn-emit-c-entry-points       plain C signatures
//
//===----------------------------------------------------------------------===//

#include "diffattn/Target/CPU/CPUTarget.h"
#include "diffattn/Target/CPU/Passes.h"

#include "mlir/Pass/PassRegistry.h"

using namespace mlir;
using namespace mlir::diffattn;

LogicalResult mlir::diffattn::buildCPUPipeline(
    OpPassManager &pm, const CPUPipelineOptions &options,
    function_ref<LogicalResult(const Twine &)> emitError) {
  std::string lowering;
  if (options.lowering == "flash") {
    lowering = "diffattn-tile-flash{target=cpu block-q=" +
               std::to_string(options.blockQ) +
               " block-k=" + std::to_string(options.blockK) + "}";
  } else if (options.lowering == "decompose") {
    lowering = "diffattn-decompose";
  } else {
    return emitError("diffattn-cpu-pipeline: unknown lowering '" +
                     options.lowering.getValue() +
                     "' (expected 'flash' or 'decompose')");
  }
  std::string pipeline =
      std::string(options.outline ? "diffattn-outline-kernels," : "") +
      lowering +
      ",eliminate-empty-tensors,empty-tensor-to-alloc-tensor,canonicalize,"
      "cse,"
      "one-shot-bufferize{bufferize-function-boundaries=1 "
      "function-boundary-type-conversion=identity-layout-map "
      "allow-return-allocs-from-loops=1},"
      "canonicalize,drop-equivalent-buffer-results,"
      "buffer-deallocation-pipeline,"
      "func.func(convert-linalg-to-loops),lower-affine,"
      "expand-strided-metadata,lower-affine,convert-scf-to-cf,"
      "canonicalize,cse,"
      "convert-vector-to-llvm,"
      "convert-math-to-llvm,convert-to-llvm,reconcile-unrealized-casts,"
      "diffattn-emit-c-entry-points";
  return parsePassPipeline(pipeline, pm);
}

void mlir::diffattn::registerCPUTarget() {
  registerDiffAttnCPUPasses();
  registerPassPipeline(
      "diffattn-cpu-pipeline",
      "Lower diffattn ops to LLVM-dialect CPU kernels with plain C entry "
      "points (see lib/Target/CPU/CPUPipeline.cpp for the stages)",
      [](OpPassManager &pm, StringRef text,
         function_ref<LogicalResult(const Twine &)> errorHandler) {
        CPUPipelineOptions options;
        if (failed(options.parseFromString(text)))
          return failure();
        return buildCPUPipeline(pm, options, errorHandler);
      },
      [](function_ref<void(const detail::PassOptions &)> optHandler) {
        optHandler(CPUPipelineOptions());
      });
}
