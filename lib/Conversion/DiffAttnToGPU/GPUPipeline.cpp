//===- GPUPipeline.cpp - the DiffAttnGPUPipeline pass ---------------------===//
//
// diffattn-gpu-pipeline: picks the GPU strategy for the chip (or the one
// asked for) and runs that strategy's pass with the pipeline's own options,
// forwarded as text so that the option list is declared once (Passes.td,
// DiffAttnGPUStrategyOptions). This is the GPU stage of diffattn-compile.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"
#include "diffattn/Conversion/Passes.h"

#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/StringExtras.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNGPUPIPELINE
#include "diffattn/Conversion/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;

namespace {
struct DiffAttnGPUPipelinePass
    : public diffattn::impl::DiffAttnGPUPipelineBase<DiffAttnGPUPipelinePass> {
  using Base::Base;

  /// The options only the wgmma strategy reads, given explicitly with the
  /// mma_sync strategy, are an error: that strategy would ignore them
  /// without checking their values.
  LogicalResult checkPortableOptions(ModuleOp module) {
    SmallVector<StringRef> given;
    auto note = [&](const auto &...options) {
      ((options.hasValue() ? given.push_back(options.getArgStr()) : void()),
       ...);
    };
    note(warpSpecialize, pingPong, pingPongEdges, releaseArrivals, overlapTiles,
         trimLastPV, tma, persistent, tileScheduler, qBuffers, qFirst,
         clusterSize, epilogue, qTma, qPrefetch, consumerRegisters);
    if (given.empty())
      return success();
    InFlightDiagnostic diag = module.emitError();
    diag << "diffattn-gpu-pipeline: " << llvm::join(given, ", ")
         << (given.size() == 1 ? " applies" : " apply")
         << " only to the wgmma strategy";
    if (strategy == "auto")
      diag << " (chip=sm_90a); chip=" << chip << " compiles mma_sync";
    else
      diag << ", not to strategy=mma_sync";
    return diag;
  }

  void runOnOperation() override {
    ModuleOp module = getOperation();
    const GPUChipInfo *info = lookupGPUChip(chip);
    if (!info) {
      module.emitError() << "diffattn-gpu-pipeline: unknown chip '" << chip
                         << "' (expected " << getGPUChipNames() << ")";
      return signalPassFailure();
    }
    std::string chosen = strategy == "auto" ? info->strategy.str() : strategy;
    OpPassManager pm(ModuleOp::getOperationName());
    if (chosen == "mma_sync") {
      if (failed(checkPortableOptions(module)))
        return signalPassFailure();
      pm.addPass(createDiffAttnToMmaSyncKernels());
    } else if (chosen == "wgmma") {
      pm.addPass(createDiffAttnToWgmmaKernels());
    } else if (chosen == "tcgen05") {
      module.emitError()
          << "the tcgen05 strategy of chip=" << chip
          << " is not implemented yet; strategy=mma_sync compiles the "
             "portable strategy, whose cubin runs on Blackwell";
      return signalPassFailure();
    } else {
      module.emitError() << "diffattn-gpu-pipeline: unknown strategy '"
                         << strategy << "' (expected auto, mma_sync or wgmma)";
      return signalPassFailure();
    }
    // The strategy pass takes the same option list: hand it ours, as the
    // textual pipeline prints them ("diffattn-gpu-pipeline{k=v ...}").
    std::string printed;
    llvm::raw_string_ostream os(printed);
    printAsTextualPipeline(os);
    StringRef text = StringRef(printed).trim();
    text = text.drop_until([](char c) { return c == '{'; });
    text.consume_front("{");
    text.consume_back("}");
    Pass &strategyPass = *pm.begin();
    if (failed(strategyPass.initializeOptions(
            text, [&](const Twine &msg) { return module.emitError(msg); })))
      return signalPassFailure();
    if (failed(runPipeline(pm, module)))
      return signalPassFailure();
  }
};
} // namespace
