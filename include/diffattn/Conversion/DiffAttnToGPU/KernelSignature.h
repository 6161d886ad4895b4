//===- KernelSignature.h - GPU kernel signature and launch rule -*- C++ -*-===//
//
// The contract between a GPU kernel and the runtime, built the same way by
// every strategy: the kernel's parameters, read from the outlined kernel's
// manifest entry (`diffattn.kernel`: its `args`, buffers then sizes), and
// the launch rule recorded back into that entry (grid as rules over B, Sq,
// Sk, block, dynamic shared memory, parameter list; split-KV launches have
// two stages and a workspace). docs/manifest.md is the schema.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_KERNELSIGNATURE_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_KERNELSIGNATURE_H

#include "diffattn/Conversion/DiffAttnToGPU/TileConfig.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::diffattn {

/// The parameters of a kernel: one 1-D buffer (memref<?xT>, contiguous
/// BSHD) per tensor argument of the manifest entry, in its order, then
/// index-typed sizes (B, Sq, Sk); a split-KV kernel also takes the f32
/// workspace after the buffers and `split_keys` last.
struct KernelSignature {
  SmallVector<Type> argTypes;
  /// Names of the buffer arguments, in order (without the workspace).
  SmallVector<StringRef> buffers;
  /// The workspace type (memref<?xf32>).
  Type workspaceType;
};

/// Reads the signature of the kernel whose manifest entry is `desc`.
KernelSignature getKernelSignature(Builder &b, DictionaryAttr desc,
                                   bool splitKV);

/// Creates an empty `gpu.func` kernel `name` of `types` with a known block
/// size of `threads` x 1 x 1.
gpu::GPUFuncOp createKernelFunc(OpBuilder &b, Location loc, StringRef name,
                                ArrayRef<Type> types, int32_t threads);

/// Launch parameter entries (docs/manifest.md): the memref-descriptor
/// fields (allocated, aligned, offset, size, stride) of each of `buffers`,
/// then the values of the sizes `sizes` (B, Sq, Sk, ...), in that order.
SmallVector<Attribute> launchParams(Builder &b, ArrayRef<StringRef> buffers,
                                    ArrayRef<StringRef> sizes);

/// A launch-rule factor: ceil(mul * `symbol` / by).
Attribute ceilDivRule(Builder &b, StringRef symbol, int64_t by, int64_t mul);

/// The launch rule of the kernel(s) of `config`, for the manifest entry's
/// `launch` field; `strategy` names the strategy that built them, `name`
/// is the kernel (the combine kernel is `name`_combine). `leadingParams`
/// (parameter entries, e.g. tensorMapParam's) come before the buffers'
/// parameters of the first (or only) stage.
/// `tiles` (kernels that walk tiles, no split-KV) says how.
/// `sequenceCheck` (packed sequences, no split-KV) names a check kernel
/// (SequenceCheck.h) launched as the first stage.
struct LinearTiles {
  /// Grid x covers the tiles (row blocks x KV heads x B), y and z are 1.
  bool enabled = false;
  /// > 0: x is capped at this (a persistent launch).
  int64_t atMost = 0;
  /// Non-empty: the persistent CTAs take tiles from a counter in a one-
  /// element workspace, zeroed by this one-thread kernel (parameters: the
  /// workspace) launched first; the tile kernel takes the workspace after
  /// its buffers and launches programmatically with
  /// config.programmaticLaunch. launch.tile_scheduler records
  /// "dynamic" (else "static" for a persistent launch).
  std::string counterReset;
  /// > 1: CTAs per cluster (x). Tiles are then tile pairs of half a KV
  /// group's rows each, grid x being clusterSize times their count (or the
  /// cap); the rule records `cluster_dims`.
  int64_t clusterSize = 1;
};
DictionaryAttr buildLaunchRule(Builder &b, const TileConfig &config,
                               StringRef strategy, StringRef name,
                               ArrayRef<StringRef> buffers,
                               ArrayRef<Attribute> leadingParams = {},
                               const LinearTiles &tiles = {},
                               StringRef sequenceCheck = {});

/// A launch parameter entry asking the runtime for a tiled CUtensorMap
/// (cuTensorMapEncodeTiled) over the 4-D buffer `buffer` [d3, d2, d1, d0]
/// (row-major), passed by value: dimensions innermost first (d0 .. d3),
/// byte strides of the contiguous layout, box `box` (elements, innermost
/// first), element strides 1, no interleave, `swizzleBytes` swizzle (0, 32,
/// 64 or 128), zero fill out of bounds. docs/manifest.md documents it.
Attribute tensorMapParam(Builder &b, StringRef buffer, ArrayRef<int64_t> box,
                         int64_t swizzleBytes);

/// The kernel attribute (an integer N) saying that the kernel's first N
/// parameters are tensor maps passed by value (see the pass
/// diffattn-mark-tensor-map-params).
constexpr StringLiteral kTensorMapArgsAttrName = "diffattn.tensor_map_args";

/// An outlined kernel function (made by diffattn-outline-kernels) as a GPU
/// strategy reads it: its manifest entry, its one diffattn op and the chip
/// it is compiled for.
struct OutlinedKernel {
  DictionaryAttr desc;
  Operation *op = nullptr;
  const GPUChipInfo *chip = nullptr;
};

/// Reads `kernel` for the chip called `chipName`; an error on `kernel` when
/// it is not an outlined diffattn kernel or the chip is unknown.
FailureOr<OutlinedKernel> readOutlinedKernel(func::FuncOp kernel,
                                             StringRef chipName);

/// Creates the gpu.module that replaces `kernel` (`<name>_module`, just
/// before it) and sets `rewriter`'s insertion point to its body.
gpu::GPUModuleOp createKernelModule(RewriterBase &rewriter,
                                    func::FuncOp kernel);

/// Records `launch` in `kernel`'s manifest entry `desc`, moves the entry to
/// the GPU kernel `func` and erases `kernel`.
void replaceWithGPUKernel(RewriterBase &rewriter, func::FuncOp kernel,
                          DictionaryAttr desc, gpu::GPUFuncOp func,
                          DictionaryAttr launch);

/// The kernel functions diffattn-outline-kernels made in `module` (marked
/// with the manifest entry), after marking `module` a GPU container module;
/// an error on `module` if there are none.
FailureOr<SmallVector<func::FuncOp>> collectOutlinedKernels(ModuleOp module);

/// Copies the GPU strategy options (Passes.td, DiffAttnGPUStrategyOptions)
/// from one strategy's option struct to another's, or from a strategy pass
/// (which declares this a friend: its options are protected members) to
/// its option struct.
template <typename Dst, typename Src>
void copyStrategyOptions(const Src &src, Dst &dst) {
  dst.chip = src.chip;
  dst.strategy = src.strategy;
  dst.blockK = src.blockK;
  dst.stages = src.stages;
  dst.warps = src.warps;
  dst.rescaleThreshold = src.rescaleThreshold;
  dst.exp2Emulation = src.exp2Emulation;
  dst.l2Prefetch = src.l2Prefetch;
  dst.smemLayout = src.smemLayout;
  dst.programmaticLaunch = src.programmaticLaunch;
  dst.combineSplitsPerStep = src.combineSplitsPerStep;
  dst.warpSpecialize = src.warpSpecialize;
  dst.pingPong = src.pingPong;
  dst.pingPongEdges = src.pingPongEdges;
  dst.releaseArrivals = src.releaseArrivals;
  dst.trimLastPV = src.trimLastPV;
  dst.overlapTiles = src.overlapTiles;
  dst.qFirst = src.qFirst;
  dst.clusterSize = src.clusterSize;
  dst.consumerRegisters = src.consumerRegisters;
  dst.tma = src.tma;
  dst.persistent = src.persistent;
  dst.tileScheduler = src.tileScheduler;
  dst.qBuffers = src.qBuffers;
  dst.qPrefetch = src.qPrefetch;
  dst.qTma = src.qTma;
  dst.epilogue = src.epilogue;
  dst.deterministic = src.deterministic;
  dst.backwardStacking = src.backwardStacking;
  dst.splitKeys = src.splitKeys;
  dst.splitTargetCtas = src.splitTargetCtas;
}

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_KERNELSIGNATURE_H
