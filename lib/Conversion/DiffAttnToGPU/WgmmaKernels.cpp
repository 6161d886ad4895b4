//===- WgmmaKernels.cpp - the Hopper (sm_90a) strategy --------------------===//
//
// The DiffAttnToWgmmaKernels pass and its core, emitWgmmaKernel: the
// FlashAttention tiled form of a diffattn.v2 op on Hopper's warpgroup MMA
// (see WgmmaBuilder.h and the pass description in Passes.td). This file
// holds the strategy's planning (tile defaults, option checks against the
// chip table), the hand-off of the ops it has no kernel for to the portable
// strategy, and the assembly of the kernel from the shared GPU parts.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBuilder.h"
#include "WgmmaBuilder.h"

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelSignature.h"
#include "diffattn/Conversion/DiffAttnToGPU/MmaSync.h"
#include "diffattn/Conversion/DiffAttnToGPU/SequenceCheck.h"
#include "diffattn/Conversion/DiffAttnToGPU/Wgmma.h"
#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNTOWGMMAKERNELS
#include "diffattn/Conversion/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

/// Whether `op` gets a wgmma kernel: the prefill form of diffattn.v2 (no
/// kv_len, contiguous K/V) and packed sequences (diffattn.v2_varlen). With
/// the cp.async producer the packed kernel measured 396 / 458 TFLOP/s
/// against the portable kernel's 321 / 347 (4 x 4096, D 128, causal /
/// unmasked, H200; docs/performance.md, Hopper run 12); it loads through
/// TMA like the batched kernel since Hopper run 17. diffattn.v2 with its
/// lse result gets it too (the wgmma epilogue writes lse); the backward
/// (diffattn.v2_backward) has portable kernels only so far.
static bool hasWgmmaKernel(Operation *op) {
  if (isa<V2VarlenOp>(op))
    return op->getNumResults() == 1;
  // diffattn.v2 with or without its lse result.
  return isa<V2Op>(op) && !AttentionConfig::get(op).hasKvLen;
}

/// The dynamic tile scheduler's first stage `name` (one thread): zeroes the
/// tile counter, element 0 of the workspace (`workspaceType`,
/// memref<?xf32>; 0.0f and u32 0 share their bits), letting the tile
/// kernel launch first (griddepcontrol.launch_dependents: the kernel waits
/// for this one's end before its first increment).
static void buildTileCounterReset(OpBuilder &b, Location loc, StringRef name,
                                  Type workspaceType) {
  gpu::GPUFuncOp func = createKernelFunc(b, loc, name, {workspaceType}, 1);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(&func.getBody().front());
  NVVM::GriddepcontrolOp::create(b, loc,
                                 NVVM::GridDepActionKind::launch_dependents);
  memref::StoreOp::create(
      b, loc, arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f)),
      func.getArgument(0),
      ValueRange{arith::ConstantIndexOp::create(b, loc, 0)});
  gpu::ReturnOp::create(b, loc);
}

/// An auto/true/false strategy option `name` (e.g. "persistent") whose
/// value is `value`: `autoValue` for auto, else the value; a diagnostic on
/// `op` for anything else.
static FailureOr<bool> resolveAutoOption(Operation *op, StringRef name,
                                         StringRef value, bool autoValue) {
  if (value == "auto")
    return autoValue;
  if (value == "true" || value == "false")
    return value == "true";
  return op->emitOpError() << name << " = '" << value
                           << "' is not supported (expected auto, true or "
                              "false)";
}

/// Checks that the strategy supports `op` on `chip` and fills the plan.
static FailureOr<WgmmaPlan>
makePlan(Operation *op, const DiffAttnToWgmmaKernelsOptions &options,
         const GPUChipInfo &chip) {
  WgmmaPlan plan;
  plan.attn = AttentionConfig::get(op);
  plan.chip = &chip;
  plan.elementType = plan.attn.elementType;
  plan.headDim = plan.attn.headDim;
  plan.valueDim = plan.attn.valueDim;
  // Tile defaults, measured on an H200 against each other in one process
  // (docs/performance.md, Hopper run 25, benchmarks/gpu_ab.py): at D = 128,
  // 128 keys per block (S is m64n128 per warpgroup) in two stages (1.00 to
  // 1.02x three stages; 176 and 192 keys, FlashAttention-3's unmasked
  // choice, 0.95-0.98x outside 16K causal); at D = 64, 192 keys in three
  // stages (1.02x 128 keys, as FlashAttention-3's 192). With persistent
  // CTAs (Hopper run 35) three stages, 160 and 176 keys at D = 128 and 128
  // keys at D = 64 each ran 0.955-0.986x. The uniform (not
  // warp-specialised) form needs three stages.
  plan.blockK =
      options.blockK ? options.blockK : (plan.headDim == 64 ? 192 : 128);
  if (plan.blockK < 16 || plan.blockK % 16 != 0 || plan.blockK > 256)
    return op->emitOpError() << "block-k = " << plan.blockK
                             << " is not supported by the wgmma strategy "
                                "(expected a multiple of 16 up to 256)";
  // Measured on an H200 (docs/performance.md, Hopper strategy run 5): with
  // the ping-pong schedule the warp-specialised form is as fast as the
  // uniform one or faster on every SPEC.md prefill shape (482 against 436
  // TFLOP/s at 4 x 4096 unmasked, 312 against 273 at D = 64).
  FailureOr<bool> warpSpecialized = resolveAutoOption(
      op, "warp-specialize", options.warpSpecialize, /*autoValue=*/true);
  if (failed(warpSpecialized))
    return failure();
  plan.warpSpecialized = *warpSpecialized;
  int64_t ctaWarps = plan.warpSpecialized ? 12 : 8;
  plan.warps = options.warps ? options.warps : ctaWarps;
  if (plan.warps != ctaWarps)
    return op->emitOpError()
           << "warps = " << plan.warps
           << " is not supported by the wgmma strategy (its CTA is "
           << (plan.warpSpecialized
                   ? "a producer and two consumer warpgroups: 12"
                   : "two warpgroups: 8")
           << ")";
  plan.stages = options.stages
                    ? options.stages
                    : (plan.warpSpecialized && plan.headDim == 128 ? 2 : 3);
  // Iteration j reads K_j and V_{j-1}. The warp-specialised producer
  // refills a stage's K and V tiles separately, as soon as S_j, P_j V_j,
  // has read them, so two stages suffice there (block j + 2's keys land
  // while block j + 1 is computed); the uniform form copies whole blocks
  // one iteration ahead and needs three.
  if (plan.stages != 3 && !(plan.warpSpecialized && plan.stages == 2))
    return op->emitOpError()
           << "stages = " << plan.stages
           << " is not supported by the wgmma strategy (expected 3, or 2 "
              "with warp specialisation)";
  plan.pingPong = plan.warpSpecialized && options.pingPong;
  plan.edgeTurns = options.pingPongEdges;
  plan.trimLastPV = options.trimLastPV;
  if (options.releaseArrivals == "thread")
    plan.releaseArrivals = ReleaseArrivals::Thread;
  else if (options.releaseArrivals == "warp")
    plan.releaseArrivals = ReleaseArrivals::Warp;
  else if (options.releaseArrivals == "warpgroup")
    plan.releaseArrivals = ReleaseArrivals::Warpgroup;
  else
    return op->emitOpError()
           << "release-arrivals = '" << options.releaseArrivals
           << "' is not supported (expected thread, warp "
              "or warpgroup)";
  // TMA addresses tiles by coordinates in one tensor per operand (packed
  // sequences: the packed [total_k, Hkv, D] tensors, from each sequence's
  // first key).
  plan.tmaLoads = plan.warpSpecialized && options.tma;
  // setmaxnreg (PTX ISA 8.0): counts are multiples of 8 in [24, 256]; the
  // CTA launches with 168 per thread (384 threads, .minnctapersm 1), and
  // the warpgroups' counts must fit that pool: 128 p + 256 c <= 168 x 384.
  // Measured on an H200 (docs/performance.md, Hopper runs 9 and 11): with
  // TMA the producer needs few registers and 240 / 24 (FA3's split) is as
  // fast as or faster than 216 on every SPEC.md shape; the cp.async
  // producer spills at 24 (0.6x) and is fastest at 216 / 72.
  int64_t consumerRegisters = options.consumerRegisters
                                  ? options.consumerRegisters
                                  : (plan.tmaLoads ? 240 : 216);
  if (consumerRegisters % 8 || consumerRegisters < 168 ||
      consumerRegisters > 240)
    return op->emitOpError()
           << "consumer-registers = " << options.consumerRegisters
           << " is not supported (expected a multiple of 8 from 168 to 240, "
              "or 0 for the default)";
  plan.consumerRegisters = consumerRegisters;
  plan.producerRegisters = 504 - 2 * consumerRegisters;
  if (options.smemLayout != "auto" && options.smemLayout != "swizzled")
    return op->emitOpError()
           << "smem-layout = '" << options.smemLayout
           << "' is not supported by the wgmma strategy (its tiles are in "
              "wgmma's 128-byte swizzled layout: auto or swizzled)";
  if (failed(setSoftmaxOptions(op, options, plan)))
    return failure();
  plan.blockQ = kWarpgroupRows;
  plan.pairs = plan.attn.numPairs;
  plan.queryHeads = 2 * plan.pairs;
  plan.kvHeads = plan.attn.numKeyHeads;
  plan.rowsPerQuery = plan.pairsPerGroup();
  plan.lamType = cast<ShapedType>(op->getOperand(3).getType()).getElementType();
  plan.writesLse = isa<V2Op>(op) && op->getNumResults() >= 2;
  plan.kTileBytes = plan.stages * plan.kStageBytes();
  plan.vTileBytes = plan.stages * plan.vStageBytes();
  // Warp-specialised kernels walk tiles (see WgmmaKernel.cpp); persistent
  // ones launch at most one CTA per SM of the target's reference GPU.
  // Measured on an H200 (docs/performance.md): with the static stride,
  // persistent CTAs with two Q buffers ran level with one CTA per tile
  // (Hopper run 27, 0.98-1.01x: the stride loads CTAs unequally under a
  // causal-like mask); with the dynamic tile scheduler 1.013-1.07x one CTA
  // per tile on SPEC.md's five prefill shapes (Hopper run 33, gpu_ab.py),
  // the static stride 0.94-0.97x the dynamic scheduler.
  // auto: persistent for batched sequences with warp specialisation (the
  // dynamic scheduler's counter is in the launch's workspace, which packed
  // sequences' launch does not have).
  FailureOr<bool> persistent =
      resolveAutoOption(op, "persistent", options.persistent,
                        plan.warpSpecialized && !plan.attn.varlen);
  if (failed(persistent))
    return failure();
  if (*persistent && !plan.warpSpecialized)
    return op->emitOpError()
           << "persistent = true needs warp specialisation (the uniform "
              "form launches one CTA per tile)";
  plan.persistentCtas = *persistent ? chip.multiprocessors : 0;
  if (options.tileScheduler != "dynamic" && options.tileScheduler != "static")
    return op->emitOpError() << "tile-scheduler = '" << options.tileScheduler
                             << "' is not supported (expected dynamic or "
                                "static)";
  // Packed sequences keep the static stride (their launch has no
  // workspace); the manifest's launch.tile_scheduler records which applies.
  plan.dynamicTiles = plan.persistentCtas > 0 && !plan.attn.varlen &&
                      options.tileScheduler == "dynamic";
  // The kernel may start while the counter's reset runs (it waits for it
  // before its first increment).
  plan.programmaticLaunch = plan.dynamicTiles && options.programmaticLaunch &&
                            chip.programmaticLaunch;
  // A persistent CTA's producer loads the next tile's Q into a second
  // buffer while the consumers still read this tile's, where both fit.
  // The tiles, then the mbarriers and the dynamic scheduler's tile indices
  // (WgmmaPlan::barrierBytes, tileIndexBytes).
  auto sharedBytes = [&] {
    return kAtomBytes + plan.qBuffers * plan.qBufferBytes() + plan.kTileBytes +
           plan.vTileBytes + plan.barrierBytes() + plan.tileIndexBytes();
  };
  if (options.qBuffers < 0 || options.qBuffers > 2)
    return op->emitOpError() << "q-buffers = " << options.qBuffers
                             << " is not supported (expected 0, 1 or 2)";
  if (options.qBuffers == 2 && !plan.persistentCtas)
    return op->emitOpError() << "q-buffers = 2 needs persistent = true (a "
                                "CTA of one tile has one Q)";
  if (options.epilogue != "auto" && options.epilogue != "exchange" &&
      options.epilogue != "handoff")
    return op->emitOpError() << "epilogue = '" << options.epilogue
                             << "' is not supported (expected auto, "
                                "exchange or handoff)";
  plan.qBuffers = options.qBuffers ? options.qBuffers : 2;
  // Two Q buffers bring the hand-off epilogue's mbarriers with them, so
  // the test of whether two fit counts those.
  plan.handoffEpilogue = options.epilogue != "exchange";
  if (!plan.persistentCtas ||
      (!options.qBuffers && sharedBytes() > chip.maxSharedBytesPerCTA))
    plan.qBuffers = 1;
  plan.qTileBytes = plan.qBuffers * plan.qBufferBytes();
  if (options.epilogue == "handoff" && plan.qBuffers != 2)
    return op->emitOpError()
           << "epilogue = handoff needs two Q buffers (warp-specialised "
              "persistent CTAs with q-buffers = 2, or 0 where two fit)";
  plan.handoffEpilogue = plan.handoffEpilogue && plan.qBuffers == 2;
  // q-first: measured on an H200 (docs/performance.md, Hopper runs 59-60):
  // ahead on SPEC.md's causal shapes but 8 x 2048 (0.991-1.000x), behind
  // unmasked (0.996-0.997x); windows without causality are unmeasured and
  // keep FlashAttention-3's order.
  FailureOr<bool> qFirst =
      resolveAutoOption(op, "q-first", options.qFirst, plan.attn.causal);
  if (failed(qFirst))
    return failure();
  plan.qFirst = plan.qBuffers == 2 && *qFirst;
  // overlap-tiles: the consumers learn the next tile from the dynamic
  // scheduler's slot and read its Q from the other buffer while this
  // tile's last P V runs; its first S issues outside the turns.
  // auto also needs the registers: in the tail a consumer holds the next
  // S (block-k / 2 f32), this tile's P (block-k / 4) and O (Dv / 2) at
  // once, with both tiles' row state; ptxas 13.0 serialises the kernel's
  // wgmma (C7512, insufficient registers) past 172 of them (D = 128 at 160
  // keys, D = 64 at the default 192; not at 144 and 176), or with fewer
  // than 224 registers per consumer thread (216 and 200 at D = 128).
  bool overlapFits = 3 * plan.blockK / 4 + plan.valueDim / 2 <= 172 &&
                     plan.consumerRegisters >= 224;
  bool canOverlap =
      plan.dynamicTiles && plan.qBuffers == 2 && !plan.edgeTurns && overlapFits;
  FailureOr<bool> overlapTiles =
      resolveAutoOption(op, "overlap-tiles", options.overlapTiles, canOverlap);
  if (failed(overlapTiles))
    return failure();
  if (*overlapTiles) {
    if (!plan.dynamicTiles || plan.qBuffers != 2)
      return op->emitOpError()
             << "overlap-tiles = true needs warp-specialised persistent CTAs "
                "with the dynamic tile scheduler and two Q buffers (batched "
                "sequences, tile-scheduler = dynamic, q-buffers = 0 or 2 "
                "where two fit)";
    if (plan.edgeTurns)
      return op->emitOpError() << "overlap-tiles = true is not supported with "
                                  "ping-pong-edges = true (the next tile's "
                                  "first S issues outside the turns)";
    if (!overlapFits)
      op->emitWarning() << "overlap-tiles = true at block-k = " << plan.blockK
                        << ", Dv = " << plan.valueDim << " and "
                        << plan.consumerRegisters
                        << " consumer registers leaves too few registers: "
                           "ptxas serialises the kernel's wgmma "
                           "(overlap-tiles = auto turns it off here)";
  }
  plan.overlapTiles = *overlapTiles;
  // Clusters of two CTAs sharing each K/V tile through TMA multicast
  // (WgmmaPlan::clusterSize). Measured on an H200 (docs/performance.md,
  // Hopper runs 64-65): 1.016-1.058x one CTA on SPEC.md's four shapes with
  // P = 2 under persistent CTAs; with one CTA per tile 0.90-1.00x the
  // default (run 63), so auto asks for persistent CTAs too.
  if (options.clusterSize < 0 || options.clusterSize > 2)
    return op->emitOpError() << "cluster-size = " << options.clusterSize
                             << " is not supported (expected 0, 1 or 2)";
  plan.clusterSize = options.clusterSize ? options.clusterSize : 1;
  if (!options.clusterSize && plan.tmaLoads && plan.persistentCtas &&
      !plan.attn.varlen && plan.rowsPerQuery % 2 == 0) {
    // The dynamic scheduler's cluster hand-off adds mbarriers: keep one
    // CTA where they would not fit.
    plan.clusterSize = 2;
    if (sharedBytes() > chip.maxSharedBytesPerCTA)
      plan.clusterSize = 1;
  }
  if (plan.clusterSize == 2) {
    if (!plan.tmaLoads)
      return op->emitOpError()
             << "cluster-size = 2 needs TMA loads (warp-specialize and tma "
                "not false): the CTAs share K/V tiles through TMA multicast";
    if (plan.attn.varlen)
      return op->emitOpError() << "cluster-size = 2 is not supported for "
                                  "packed sequences (diffattn.v2_varlen)";
    if (plan.rowsPerQuery % 2)
      return op->emitOpError()
             << "cluster-size = 2 needs an even number of pairs per KV group "
                "(the cluster's CTAs take its two halves), got "
             << plan.rowsPerQuery;
  }
  // The epilogue's exchange (Dv / 2 f32 per thread of a warpgroup, Dv x
  // 256 bytes) reuses the last block's V tile, or the tile's Q buffer (both
  // heads: 2 x 64 rows x D bf16/f16, the same bytes as Dv = D), which is
  // dead once both warpgroups' products are done.
  assert(plan.valueDim / 2 * kWarpgroupThreads * 4 <= plan.qBufferBytes() &&
         "the epilogue's exchange must fit a Q buffer");
  plan.sharedBytes = sharedBytes();
  plan.qTma = plan.tmaLoads && options.qTma && !plan.attn.varlen;
  plan.qPrefetchDistance =
      plan.warpSpecialized && options.qPrefetch && !plan.attn.varlen
          ? chip.multiprocessors
          : 0;
  if (failed(checkChipLimits(op, plan,
                             (Twine("block-k = ") + Twine(plan.blockK) +
                              " and stages = " + Twine(plan.stages) +
                              (plan.qBuffers > 1 ? " with q-buffers = 2" : ""))
                                 .str())))
    return failure();
  return plan;
}

/// The configuration checks both strategies share on sm_90a, with the
/// wgmma strategy's wording: element type and head dimensions.
static LogicalResult checkSupported(Operation *op) {
  if (!isa<V2Op, V2PagedOp, V2VarlenOp, V2BackwardOp>(op))
    return op->emitOpError(
        "is not supported by the GPU strategies yet (only diffattn.v2, "
        "diffattn.v2_paged, diffattn.v2_varlen and diffattn.v2_backward have "
        "GPU kernels)");
  AttentionConfig attn = AttentionConfig::get(op);
  if (!attn.elementType.isF16() && !attn.elementType.isBF16())
    return op->emitOpError() << "element type " << attn.elementType
                             << " is not supported on sm_90a (expected f16 "
                                "or bf16)";
  if (attn.headDim != 64 && attn.headDim != 128)
    return op->emitOpError() << "head dimension D = " << attn.headDim
                             << " is not supported on sm_90a (expected 64 "
                                "or 128)";
  if (attn.valueDim != attn.headDim)
    return op->emitOpError()
           << "value dimension Dv = " << attn.valueDim
           << " != D = " << attn.headDim << " is not supported on sm_90a";
  return success();
}

LogicalResult
mlir::diffattn::emitWgmmaKernel(RewriterBase &rewriter, func::FuncOp kernel,
                                const DiffAttnToWgmmaKernelsOptions &options) {
  FailureOr<OutlinedKernel> outlined = readOutlinedKernel(kernel, options.chip);
  if (failed(outlined))
    return failure();
  auto [desc, op, chip] = *outlined;
  if (chip->strategy != "wgmma")
    return kernel.emitError()
           << "the wgmma strategy needs chip=sm_90a (wgmma and its "
              "descriptors are sm_90a instructions), got chip="
           << options.chip;
  if (options.strategy != "auto" && options.strategy != "wgmma")
    return kernel.emitError() << "strategy '" << options.strategy
                              << "' is not the Hopper strategy (wgmma) that "
                                 "diffattn-to-wgmma-kernels emits";
  if (failed(checkSupported(op)))
    return failure();
  // The backward: in the deterministic formulation the wgmma kernels
  // (WgmmaBackward*.cpp), else the portable accumulating ones.
  if (isa<V2BackwardOp>(op))
    return emitMmaSyncBackward(rewriter, kernel, desc, op, *chip,
                               options.deterministic, /*wgmmaKernels=*/true,
                               options.backwardStacking);
  if (!hasWgmmaKernel(op)) {
    // The decode form and paged caches:
    // the portable strategy's kernels (split-KV for decode), with its own
    // tile defaults; the manifest records strategy mma_sync.
    DiffAttnToMmaSyncKernelsOptions portable;
    copyStrategyOptions(options, portable);
    portable.strategy = "mma_sync";
    portable.blockK = portable.stages = portable.warps = 0;
    return emitMmaSyncKernel(rewriter, kernel, portable);
  }
  FailureOr<WgmmaPlan> plan = makePlan(op, options, *chip);
  if (failed(plan))
    return failure();

  Location loc = kernel.getLoc();
  OpBuilder::InsertionGuard guard(rewriter);
  createKernelModule(rewriter, kernel);
  KernelSignature sig = getKernelSignature(rewriter, desc, /*splitKV=*/false);
  // TMA: the K and V tensor maps lead the parameters (by value, 64-byte
  // aligned; diffattn-mark-tensor-map-params completes their attributes
  // after GPU-to-NVVM conversion), 2-D boxes of one 64-column span (128
  // bytes, the swizzle span) by block-k rows of one head of one batch.
  SmallVector<Type> argTypes(sig.argTypes);
  SmallVector<Attribute> tensorMaps;
  // With q-tma, Q's map follows (one head's 64 query rows of one span).
  unsigned numMaps = plan->tmaLoads ? (plan->qTma ? 3 : 2) : 0;
  if (plan->tmaLoads) {
    argTypes.insert(argTypes.begin(), numMaps,
                    LLVM::LLVMPointerType::get(rewriter.getContext()));
    // A cluster kernel's CTA loads half of each tile's keys.
    for (StringRef operand : {"k", "v"})
      tensorMaps.push_back(
          tensorMapParam(rewriter, operand,
                         {wgmma::kSpan, 1, plan->blockK / plan->clusterSize, 1},
                         wgmma::kRowBytes));
    if (plan->qTma)
      tensorMaps.push_back(tensorMapParam(
          rewriter, "q", {wgmma::kSpan, 1, wgmma::kWarpgroupRows, 1},
          wgmma::kRowBytes));
  }
  // The dynamic scheduler's counter: the workspace (after the buffers),
  // zeroed by a kernel of its own, launched first.
  if (plan->dynamicTiles)
    argTypes.insert(argTypes.begin() + numMaps + sig.buffers.size(),
                    sig.workspaceType);
  auto func = createKernelFunc(rewriter, loc, kernel.getName(), argTypes,
                               plan->threads());
  if (plan->tmaLoads) {
    for (unsigned i = 0; i < numMaps; ++i)
      func.setArgAttr(i, LLVM::LLVMDialect::getAlignAttrName(),
                      rewriter.getI64IntegerAttr(64));
    func->setAttr(kTensorMapArgsAttrName, rewriter.getI64IntegerAttr(numMaps));
  }
  // setmaxnreg takes effect only with a register count known at entry:
  // one CTA per SM (.minnctapersm 1) with the block size.
  if (plan->warpSpecialized)
    func->setAttr(NVVM::NVVMDialect::getMinctasmAttrName(),
                  rewriter.getI32IntegerAttr(1));
  // .reqnctapercluster: a plain launch forms the clusters.
  if (plan->clusterSize > 1)
    func->setAttr(NVVM::NVVMDialect::getClusterDimAttrName(),
                  rewriter.getDenseI32ArrayAttr(
                      {static_cast<int32_t>(plan->clusterSize), 1, 1}));
  WgmmaKernelBuilder(rewriter, loc, *plan).build(func);
  // Packed sequences: their offsets are checked by a kernel of its own
  // (SequenceCheck.h), launched first.
  std::string check;
  if (plan->attn.varlen) {
    check = (kernel.getName() + "_check_cu_seqlens").str();
    OpBuilder::InsertionGuard checkGuard(rewriter);
    rewriter.setInsertionPointAfter(func);
    buildSequenceCheckKernel(rewriter, loc, check);
  }
  std::string reset;
  if (plan->dynamicTiles) {
    reset = (kernel.getName() + "_reset_tile_counter").str();
    OpBuilder::InsertionGuard resetGuard(rewriter);
    rewriter.setInsertionPointAfter(func);
    buildTileCounterReset(rewriter, loc, reset, sig.workspaceType);
  }
  LinearTiles tiles;
  tiles.enabled = plan->warpSpecialized;
  // (A whole number of clusters.)
  tiles.atMost = plan->persistentCtas / plan->clusterSize * plan->clusterSize;
  tiles.counterReset = reset;
  tiles.clusterSize = plan->clusterSize;
  replaceWithGPUKernel(rewriter, kernel, desc, func,
                       buildLaunchRule(rewriter, *plan, "wgmma",
                                       kernel.getName(), sig.buffers,
                                       tensorMaps, tiles, check));
  return success();
}

namespace {
struct DiffAttnToWgmmaKernelsPass
    : public diffattn::impl::DiffAttnToWgmmaKernelsBase<
          DiffAttnToWgmmaKernelsPass> {
  using Base::Base;
  template <typename Dst, typename Src>
  friend void mlir::diffattn::copyStrategyOptions(const Src &, Dst &);
  void runOnOperation() override {
    ModuleOp module = getOperation();
    IRRewriter rewriter(&getContext());
    DiffAttnToWgmmaKernelsOptions options;
    copyStrategyOptions(*this, options);
    FailureOr<SmallVector<func::FuncOp>> kernels =
        collectOutlinedKernels(module);
    if (failed(kernels))
      return signalPassFailure();
    for (func::FuncOp kernel : *kernels)
      if (failed(emitWgmmaKernel(rewriter, kernel, options)))
        return signalPassFailure();
  }
};
} // namespace
