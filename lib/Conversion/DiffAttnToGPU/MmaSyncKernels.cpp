//===- MmaSyncKernels.cpp - the portable tensor-core strategy -------------===//
//
// The DiffAttnToMmaSyncKernels pass and its core, emitMmaSyncKernel: the
// FlashAttention tiled form of a diffattn.v2 op mapped onto sm_80+ tensor
// cores (mma.sync, ldmatrix, cp.async). This file holds the strategy's
// planning (measured tile defaults, option checks against the chip table)
// and the assembly of the kernel(s) from the shared GPU parts
// (include/diffattn/Conversion/DiffAttnToGPU/) and the strategy's builder
// (MmaSyncBuilder.h). See the pass description in Passes.td for the
// mapping.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBuilder.h"

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelSignature.h"
#include "diffattn/Conversion/DiffAttnToGPU/MmaSync.h"
#include "diffattn/Conversion/DiffAttnToGPU/SplitKVCombine.h"
#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNTOMMASYNCKERNELS
#include "diffattn/Conversion/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

/// Checks that the strategy supports `op` on `chip` and fills the plan.
static FailureOr<MmaSyncPlan>
makePlan(Operation *op, const DiffAttnToMmaSyncKernelsOptions &options,
         const GPUChipInfo &chip) {
  if (!isa<V2Op, V2PagedOp, V2VarlenOp>(op))
    return op->emitOpError(
        "is not supported by the portable GPU strategy yet (only "
        "diffattn.v2, diffattn.v2_paged and diffattn.v2_varlen have GPU "
        "kernels)");
  MmaSyncPlan plan;
  plan.attn = AttentionConfig::get(op);
  plan.chip = &chip;
  plan.elementType = plan.attn.elementType;
  if (!plan.elementType.isF16() && !plan.elementType.isBF16())
    return op->emitOpError()
           << "element type " << plan.elementType
           << " is not supported by the portable GPU strategy (expected "
              "f16 or bf16)";
  plan.headDim = plan.attn.headDim;
  plan.valueDim = plan.attn.valueDim;
  if (plan.headDim != 64 && plan.headDim != 128)
    return op->emitOpError() << "head dimension D = " << plan.headDim
                             << " is not supported by the portable GPU "
                                "strategy (expected 64 or 128)";
  if (plan.valueDim != plan.headDim)
    return op->emitOpError() << "value dimension Dv = " << plan.valueDim
                             << " != D = " << plan.headDim
                             << " is not supported by the portable GPU "
                                "strategy";
  // The log-sum-exp result is written by the row-block kernels: with it,
  // kv_len selects those instead of split-KV (whose combine kernel has no
  // per-head statistics to write).
  plan.writesLse = isa<V2Op>(op) && op->getNumResults() >= 2;
  plan.splitKV = plan.attn.hasKvLen && !plan.writesLse;
  // Tile defaults, measured on the H200 (docs/performance.md). Row
  // blocks: D = 64 wants 4 warps x 64 keys. D = 128 with a causal-like
  // mask wants 4 warps x 32 keys (both heads share every fragment, and the
  // small tiles waste less on the diagonal); without one, 8 warps x 64
  // keys (each K/V tile in shared memory feeds 128 rows). Split-KV: 16 keys
  // per warp, so that three stages of four warps leave room for two CTAs
  // per SM.
  bool causalLike = plan.attn.isCausalLike();
  // Packed sequences (varlen) keep 4 warps x 32 keys without a mask too:
  // their per-sequence offsets make the wide tiles spill (56 bytes) and
  // run at 0.93x of the batched kernel, the narrow ones at 0.975x
  // (benchmarks/gpu_varlen_tiles.py, docs/performance.md, run 4).
  bool wideTiles =
      !plan.splitKV && plan.headDim == 128 && !causalLike && !plan.attn.varlen;
  int64_t defaultBlockK =
      plan.splitKV ? 16 : (plan.headDim == 128 && !wideTiles ? 32 : 64);
  plan.blockK = options.blockK ? options.blockK : defaultBlockK;
  if (plan.blockK <= 0 || plan.blockK % 16 != 0 || plan.blockK > 128)
    return op->emitOpError() << "block-k = " << plan.blockK
                             << " is not supported (expected a multiple of "
                                "16 up to 128)";
  plan.stages = options.stages ? options.stages : (plan.splitKV ? 3 : 2);
  if (plan.stages < 2 || plan.stages > 8)
    return op->emitOpError() << "stages = " << plan.stages
                             << " is not supported (expected 2 to 8)";
  if (failed(setSoftmaxOptions(op, options, plan)))
    return failure();
  plan.warps = options.warps ? options.warps : (wideTiles ? 8 : 4);
  plan.l2Prefetch = options.l2Prefetch && plan.splitKV;
  plan.programmaticLaunch =
      options.programmaticLaunch && chip.programmaticLaunch && plan.splitKV;
  if (options.smemLayout == "auto")
    plan.swizzle = plan.splitKV;
  else if (options.smemLayout == "swizzled" || options.smemLayout == "padded")
    plan.swizzle = options.smemLayout == "swizzled";
  else
    return op->emitOpError()
           << "smem-layout = '" << options.smemLayout
           << "' is not supported (expected auto, padded or swizzled)";
  if (plan.warps != 4 && plan.warps != 8)
    return op->emitOpError()
           << "warps = " << plan.warps << " is not supported (expected 4 or 8)";
  plan.blockQ = plan.splitKV ? 16 : 16 * plan.warps;
  // Split-KV rows hold one query head each: every query head of the group
  // shares the CTA's K/V tiles, with half the accumulators per row.
  plan.headsPerRow = plan.splitKV ? 1 : 2;
  plan.rowsPerQuery = plan.attn.numPairs / plan.attn.numKeyHeads *
                      (plan.headsPerRow == 2 ? 1 : 2);
  // Split-KV: with Sq <= directSqMax one CTA holds every row of its group.
  plan.directSqMax = plan.splitKV ? 16 / plan.rowsPerQuery : 0;
  plan.pairs = plan.attn.numPairs;
  plan.queryHeads = 2 * plan.pairs;
  plan.kvHeads = plan.attn.numKeyHeads;
  plan.lamType = cast<ShapedType>(op->getOperand(3).getType()).getElementType();
  // The decode form reads a KV cache with few query rows: split the keys so
  // that enough CTAs stream the cache. By default the runtime picks the
  // split size per launch (about splitTargetCtas CTAs in all).
  plan.fixedSplitKeys = plan.splitKV ? options.splitKeys : 0;
  if (plan.fixedSplitKeys < 0 || plan.fixedSplitKeys % plan.blockK != 0)
    return op->emitOpError()
           << "split-keys = " << plan.fixedSplitKeys
           << " must be a positive multiple of block-k = " << plan.blockK
           << " (or 0: chosen at launch)";
  plan.splitTargetCtas =
      options.splitTargetCtas ? options.splitTargetCtas : chip.splitTargetCtas;
  if (plan.splitTargetCtas <= 0)
    return op->emitOpError()
           << "split-target-ctas = " << options.splitTargetCtas
           << " must be positive (or 0: the chip's)";
  plan.splitMultiple = plan.blockK * plan.warps;
  plan.combineSplitsPerStep = options.combineSplitsPerStep;
  if (plan.combineSplitsPerStep < 1 || plan.combineSplitsPerStep > 16)
    return op->emitOpError()
           << "combine-splits-per-step = " << options.combineSplitsPerStep
           << " is not supported (expected 1 to 16)";
  // A paged cache: every key block lies in one block of the pool.
  if (plan.attn.isPaged() && plan.attn.pagedBlockSize % plan.blockK != 0)
    return op->emitOpError() << "block-k = " << plan.blockK
                             << " must divide the paged cache's block size "
                             << plan.attn.pagedBlockSize;
  int64_t elementBytes = 2;
  int64_t pipelines = plan.splitKV ? plan.warps : 1;
  plan.qTileBytes = plan.headsPerRow * plan.blockQ *
                    (plan.headDim + plan.rowPad()) * elementBytes;
  plan.kTileBytes = pipelines * plan.stages * plan.blockK *
                    (plan.headDim + plan.rowPad()) * elementBytes;
  plan.vTileBytes = pipelines * plan.stages * plan.blockK *
                    (plan.valueDim + plan.rowPad()) * elementBytes;
  int64_t afterQ = plan.kTileBytes + plan.vTileBytes;
  if (plan.splitKV)
    afterQ = std::max(afterQ, plan.mergeAccBytes() + plan.mergeStatBytes());
  plan.sharedBytes = plan.qTileBytes + afterQ;
  if (failed(checkChipLimits(op, plan,
                             (Twine("block-k = ") + Twine(plan.blockK) +
                              " and stages = " + Twine(plan.stages))
                                 .str())))
    return failure();
  return plan;
}

LogicalResult mlir::diffattn::emitMmaSyncKernel(
    RewriterBase &rewriter, func::FuncOp kernel,
    const DiffAttnToMmaSyncKernelsOptions &options) {
  FailureOr<OutlinedKernel> outlined = readOutlinedKernel(kernel, options.chip);
  if (failed(outlined))
    return failure();
  auto [desc, op, chip] = *outlined;
  if (options.strategy != "auto" && options.strategy != "mma_sync")
    return kernel.emitError()
           << "strategy '" << options.strategy
           << "' is not the portable tensor-core strategy (mma_sync) that "
              "diffattn-to-mma-sync-kernels emits";
  if (isa<V2BackwardOp>(op))
    return emitMmaSyncBackward(rewriter, kernel, desc, op, *chip,
                               options.deterministic, /*wgmmaKernels=*/false,
                               options.backwardStacking);
  FailureOr<MmaSyncPlan> plan = makePlan(op, options, *chip);
  if (failed(plan))
    return failure();

  Location loc = kernel.getLoc();
  OpBuilder::InsertionGuard guard(rewriter);
  createKernelModule(rewriter, kernel);

  // Kernel arguments: one 1-D buffer per tensor operand (contiguous BSHD),
  // then B, Sq, Sk.
  KernelSignature sig = getKernelSignature(rewriter, desc, plan->splitKV);
  ArrayRef<Type> argTypes = sig.argTypes;
  ArrayRef<StringRef> buffers = sig.buffers;
  auto func = createKernelFunc(rewriter, loc, kernel.getName(), argTypes,
                               plan->threads());
  MmaSyncKernelBuilder(rewriter, loc, *plan).build(func);
  if (plan->splitKV) {
    // The combine stage: workspace, lam, out, B, Sq, Sk, split_keys.
    Type index = rewriter.getIndexType();
    Type lamType = argTypes[3], outType = argTypes[buffers.size() - 1];
    rewriter.setInsertionPointAfter(func);
    auto combine = createKernelFunc(
        rewriter, loc, (kernel.getName() + "_combine").str(),
        {sig.workspaceType, lamType, outType, index, index, index, index},
        static_cast<int32_t>(plan->valueDim));
    buildSplitKVCombine(rewriter, loc, combine, *plan);
  }

  replaceWithGPUKernel(
      rewriter, kernel, desc, func,
      buildLaunchRule(rewriter, *plan, "mma_sync", kernel.getName(), buffers));
  return success();
}

namespace {
struct DiffAttnToMmaSyncKernelsPass
    : public diffattn::impl::DiffAttnToMmaSyncKernelsBase<
          DiffAttnToMmaSyncKernelsPass> {
  using Base::Base;
  template <typename Dst, typename Src>
  friend void mlir::diffattn::copyStrategyOptions(const Src &, Dst &);
  void runOnOperation() override {
    ModuleOp module = getOperation();
    IRRewriter rewriter(&getContext());
    DiffAttnToMmaSyncKernelsOptions options;
    copyStrategyOptions(*this, options);
    FailureOr<SmallVector<func::FuncOp>> kernels =
        collectOutlinedKernels(module);
    if (failed(kernels))
      return signalPassFailure();
    for (func::FuncOp kernel : *kernels)
      if (failed(emitMmaSyncKernel(rewriter, kernel, options)))
        return signalPassFailure();
  }
};
} // namespace
