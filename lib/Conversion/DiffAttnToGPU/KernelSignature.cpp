//===- KernelSignature.cpp - GPU kernel signature and launch rule ---------===//
//
// See KernelSignature.h; docs/manifest.md documents the launch rule's
// fields, which the runtime's manifest reader evaluates.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/KernelSignature.h"
#include "diffattn/Conversion/DiffAttnToGPU/SequenceCheck.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"

#include "mlir/IR/BuiltinTypes.h"

using namespace mlir;
using namespace mlir::diffattn;

KernelSignature mlir::diffattn::getKernelSignature(Builder &b,
                                                   DictionaryAttr desc,
                                                   bool splitKV) {
  KernelSignature sig;
  for (Attribute arg : desc.getAs<ArrayAttr>("args")) {
    auto dict = cast<DictionaryAttr>(arg);
    StringRef name = dict.getAs<StringAttr>("name").getValue();
    if (dict.get("shape")) {
      sig.buffers.push_back(name);
      StringRef dtype = dict.getAs<StringAttr>("dtype").getValue();
      Type elem = dtype == "i32"    ? Type(b.getI32Type())
                  : dtype == "f32"  ? Type(b.getF32Type())
                  : dtype == "bf16" ? Type(b.getBF16Type())
                                    : Type(b.getF16Type());
      sig.argTypes.push_back(MemRefType::get({ShapedType::kDynamic}, elem));
    } else {
      sig.argTypes.push_back(b.getIndexType());
    }
  }
  sig.workspaceType = MemRefType::get({ShapedType::kDynamic}, b.getF32Type());
  if (splitKV) {
    sig.argTypes.insert(sig.argTypes.begin() + sig.buffers.size(),
                        sig.workspaceType);
    sig.argTypes.push_back(b.getIndexType()); // split_keys
  }
  return sig;
}

gpu::GPUFuncOp mlir::diffattn::createKernelFunc(OpBuilder &b, Location loc,
                                                StringRef name,
                                                ArrayRef<Type> types,
                                                int32_t threads) {
  auto func =
      gpu::GPUFuncOp::create(b, loc, name, b.getFunctionType(types, {}));
  func->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), b.getUnitAttr());
  func.setKnownBlockSizeAttr(b.getDenseI32ArrayAttr({threads, 1, 1}));
  return func;
}

Attribute mlir::diffattn::tensorMapParam(Builder &b, StringRef buffer,
                                         ArrayRef<int64_t> box,
                                         int64_t swizzleBytes) {
  return b.getDictionaryAttr(
      {b.getNamedAttr("arg", b.getStringAttr(buffer)),
       b.getNamedAttr("field", b.getStringAttr("tensor_map")),
       b.getNamedAttr("box", b.getI64ArrayAttr(box)),
       b.getNamedAttr("swizzle", b.getI64IntegerAttr(swizzleBytes))});
}

SmallVector<Attribute> mlir::diffattn::launchParams(Builder &b,
                                                    ArrayRef<StringRef> buffers,
                                                    ArrayRef<StringRef> sizes) {
  SmallVector<Attribute> params;
  for (StringRef buf : buffers)
    for (StringRef field : {"allocated", "aligned", "offset", "size", "stride"})
      params.push_back(b.getDictionaryAttr(
          {b.getNamedAttr("arg", b.getStringAttr(buf)),
           b.getNamedAttr("field", b.getStringAttr(field))}));
  for (StringRef size : sizes)
    params.push_back(b.getDictionaryAttr(
        {b.getNamedAttr("arg", b.getStringAttr(size)),
         b.getNamedAttr("field", b.getStringAttr("value"))}));
  return params;
}

Attribute mlir::diffattn::ceilDivRule(Builder &b, StringRef symbol, int64_t by,
                                      int64_t mul) {
  return b.getDictionaryAttr(
      {b.getNamedAttr("ceil_div", b.getStringAttr(symbol)),
       b.getNamedAttr("mul", b.getI64IntegerAttr(mul)),
       b.getNamedAttr("by", b.getI64IntegerAttr(by))});
}

DictionaryAttr mlir::diffattn::buildLaunchRule(
    Builder &b, const TileConfig &config, StringRef strategy, StringRef name,
    ArrayRef<StringRef> buffers, ArrayRef<Attribute> leadingParams,
    const LinearTiles &tiles, StringRef sequenceCheck) {
  // The combine kernel takes no pool size (withPool false); the first
  // stage's parameters start with `leadingParams`.
  bool firstStage = true;
  auto paramsOf = [&](ArrayRef<StringRef> bufs, bool withPool = true) {
    SmallVector<Attribute> params;
    if (firstStage)
      params.append(leadingParams.begin(), leadingParams.end());
    firstStage = false;
    SmallVector<StringRef> sizes = {"B", "Sq", "Sk"};
    if (withPool && config.attn.isPaged())
      sizes.push_back("num_blocks");
    if (config.attn.varlen)
      sizes.append({"total_q", "total_k"});
    if (config.splitKV)
      sizes.push_back("split_keys");
    params.append(launchParams(b, bufs, sizes));
    return b.getArrayAttr(params);
  };
  auto ceilDiv = [&](StringRef sym, int64_t by, int64_t mulBy) {
    return ceilDivRule(b, sym, by, mulBy);
  };
  // The `workspace` entry: the product of `factors` times `times` f32.
  auto workspaceRule = [&](ArrayRef<Attribute> factors, int64_t times) {
    return b.getNamedAttr(
        "workspace",
        b.getDictionaryAttr(
            {b.getNamedAttr("dtype", b.getStringAttr("f32")),
             b.getNamedAttr("product", b.getArrayAttr(factors)),
             b.getNamedAttr("times", b.getI64IntegerAttr(times))}));
  };
  int64_t ppg = config.pairsPerGroup();
  Attribute rowBlocks = ceilDiv("Sq", config.blockQ, config.rowsPerQuery);
  SmallVector<NamedAttribute> common = {
      b.getNamedAttr("kind", b.getStringAttr("cuda")),
      b.getNamedAttr("strategy", b.getStringAttr(strategy)),
      b.getNamedAttr("block_q", b.getI64IntegerAttr(config.blockQ)),
      b.getNamedAttr("block_k", b.getI64IntegerAttr(config.blockK)),
      b.getNamedAttr("pipeline_stages", b.getI64IntegerAttr(config.stages))};
  auto stage = [&](StringRef function, ArrayRef<Attribute> grid,
                   int64_t threads, int64_t shared, ArrayAttr params,
                   bool programmatic = false,
                   ArrayRef<NamedAttribute> skipWhen = {}) {
    SmallVector<NamedAttribute> entries = {
        b.getNamedAttr("function", b.getStringAttr(function)),
        b.getNamedAttr("grid", b.getArrayAttr(grid)),
        b.getNamedAttr("block", b.getI64ArrayAttr({threads, 1, 1})),
        b.getNamedAttr("dynamic_shared_memory", b.getI64IntegerAttr(shared)),
        b.getNamedAttr("params", params)};
    // The stage may be launched before the previous one ends (it waits
    // for it itself).
    if (programmatic)
      entries.push_back(
          b.getNamedAttr("programmatic_launch", b.getBoolAttr(true)));
    // Not launched when each of these sizes is at most its bound.
    if (!skipWhen.empty())
      entries.push_back(
          b.getNamedAttr("skip_when", b.getDictionaryAttr(skipWhen)));
    return b.getDictionaryAttr(entries);
  };
  if (!config.splitKV) {
    // x: blocks of the rows of a KV group (its pairs x Sq), y: KV heads;
    // or x: all tiles, at most `atMost` CTAs.
    SmallVector<Attribute> grid = {
        rowBlocks, b.getI64IntegerAttr(config.kvHeads), ceilDiv("B", 1, 1)};
    if (tiles.enabled) {
      // Clusters: each CTA of a cluster takes the same row block of its
      // part of the group's rows.
      if (tiles.clusterSize > 1) {
        assert(config.rowsPerQuery % tiles.clusterSize == 0 &&
               "a cluster splits a KV group's pairs evenly");
        grid[0] = ceilDiv("Sq", config.blockQ,
                          config.rowsPerQuery / tiles.clusterSize);
        grid.push_back(b.getI64IntegerAttr(tiles.clusterSize));
      }
      SmallVector<NamedAttribute> product = {
          b.getNamedAttr("product", b.getArrayAttr(grid))};
      if (tiles.atMost > 0)
        product.push_back(
            b.getNamedAttr("at_most", b.getI64IntegerAttr(tiles.atMost)));
      grid = {b.getDictionaryAttr(product), b.getI64IntegerAttr(1),
              b.getI64IntegerAttr(1)};
    }
    bool dynamic = !tiles.counterReset.empty();
    SmallVector<StringRef> tileBuffers(buffers);
    if (dynamic)
      tileBuffers.push_back("workspace");
    DictionaryAttr only =
        stage(name, grid, config.threads(), config.sharedBytes,
              paramsOf(tileBuffers), dynamic && config.programmaticLaunch);
    SmallVector<NamedAttribute> attrs(common);
    if (tiles.atMost > 0)
      attrs.push_back(b.getNamedAttr(
          "tile_scheduler", b.getStringAttr(dynamic ? "dynamic" : "static")));
    if (tiles.clusterSize > 1)
      attrs.push_back(b.getNamedAttr(
          "cluster_dims", b.getI64ArrayAttr({tiles.clusterSize, 1, 1})));
    if (dynamic) {
      assert(sequenceCheck.empty() && "packed sequences use static tiles");
      // The counter's reset first: one thread, the workspace's fields.
      DictionaryAttr reset =
          stage(tiles.counterReset,
                {b.getI64IntegerAttr(1), b.getI64IntegerAttr(1),
                 b.getI64IntegerAttr(1)},
                1, 0, b.getArrayAttr(launchParams(b, {"workspace"}, {})));
      attrs.push_back(b.getNamedAttr("stages", b.getArrayAttr({reset, only})));
      // One f32 element (the counter, as u32).
      attrs.push_back(workspaceRule({b.getI64IntegerAttr(1)}, 1));
      return b.getDictionaryAttr(attrs);
    }
    if (!sequenceCheck.empty()) {
      // The check kernel first: one thread per sequence.
      assert(config.attn.varlen && "a sequence check needs cu_seqlens");
      DictionaryAttr check =
          stage(sequenceCheck,
                {ceilDiv("B", kSequenceCheckThreads, 1), b.getI64IntegerAttr(1),
                 b.getI64IntegerAttr(1)},
                kSequenceCheckThreads, 0,
                paramsOf({"cu_seqlens_q", "cu_seqlens_k"}, /*withPool=*/false));
      attrs.push_back(b.getNamedAttr("stages", b.getArrayAttr({check, only})));
      return b.getDictionaryAttr(attrs);
    }
    attrs.append(only.getValue().begin(), only.getValue().end());
    return b.getDictionaryAttr(attrs);
  }
  // Stage 1, x: (split, row block) couples; stage 2, x: the group's rows.
  // `splits` = ceil(Sk / split_keys), split_keys being the launch's
  // choice (`split`); the kernel decodes x with the same two factors.
  SmallVector<StringRef> mainBuffers(buffers);
  mainBuffers.push_back("workspace");
  SmallVector<StringRef> combineBuffers = {"workspace", "lam", "out"};
  SmallVector<Attribute> splitFactors = {rowBlocks, ceilDiv("splits", 1, 1)};
  Attribute splitGrid = b.getDictionaryAttr(
      {b.getNamedAttr("product", b.getArrayAttr(splitFactors))});
  SmallVector<NamedAttribute> attrs(common);
  // How the runtime picks split_keys: fixed, or the smallest multiple of
  // `multiple_of` keys that makes about `target_ctas` CTAs in all.
  SmallVector<NamedAttribute> split;
  if (config.fixedSplitKeys)
    split.push_back(
        b.getNamedAttr("fixed", b.getI64IntegerAttr(config.fixedSplitKeys)));
  else
    split.append({b.getNamedAttr("multiple_of",
                                 b.getI64IntegerAttr(config.splitMultiple)),
                  b.getNamedAttr("target_ctas",
                                 b.getI64IntegerAttr(config.splitTargetCtas))});
  attrs.push_back(b.getNamedAttr("split", b.getDictionaryAttr(split)));
  // With one split and Sq <= directSqMax() the split kernel writes the
  // output itself.
  SmallVector<NamedAttribute> combineSkip;
  if (config.directSqMax > 0)
    combineSkip = {
        b.getNamedAttr("Sq", b.getI64IntegerAttr(config.directSqMax)),
        b.getNamedAttr("splits", b.getI64IntegerAttr(1))};
  attrs.push_back(b.getNamedAttr(
      "stages",
      b.getArrayAttr(
          {stage(name,
                 {splitGrid, b.getI64IntegerAttr(config.kvHeads),
                  ceilDiv("B", 1, 1)},
                 config.threads(), config.sharedBytes, paramsOf(mainBuffers)),
           stage((name + "_combine").str(),
                 {ceilDiv("Sq", 1, ppg), b.getI64IntegerAttr(config.kvHeads),
                  ceilDiv("B", 1, 1)},
                 config.valueDim, 0,
                 paramsOf(combineBuffers, /*withPool=*/false),
                 config.programmaticLaunch, combineSkip)})));
  // f32 elements: B x Hkv x splits x (pairs of a group x Sq) x 2 heads x
  // (Dv + 2).
  attrs.push_back(workspaceRule(
      {ceilDiv("B", 1, 1), ceilDiv("splits", 1, 1), ceilDiv("Sq", 1, 1)},
      config.kvHeads * ppg * 2 * config.partialWidth()));
  return b.getDictionaryAttr(attrs);
}

FailureOr<SmallVector<func::FuncOp>>
mlir::diffattn::collectOutlinedKernels(ModuleOp module) {
  module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                  UnitAttr::get(module.getContext()));
  SmallVector<func::FuncOp> kernels;
  for (auto func : module.getOps<func::FuncOp>())
    if (func->hasAttr(kKernelAttrName))
      kernels.push_back(func);
  if (kernels.empty())
    return module.emitError("no diffattn kernel to convert: run "
                            "diffattn-outline-kernels first");
  return kernels;
}

FailureOr<OutlinedKernel>
mlir::diffattn::readOutlinedKernel(func::FuncOp kernel, StringRef chipName) {
  OutlinedKernel result;
  result.desc = kernel->getAttrOfType<DictionaryAttr>(kKernelAttrName);
  SmallVector<Operation *> ops = collectDiffAttnOps(kernel);
  if (!result.desc || ops.size() != 1)
    return kernel.emitError("not a diffattn kernel: run "
                            "diffattn-outline-kernels first");
  result.op = ops.front();
  result.chip = lookupGPUChip(chipName);
  if (!result.chip)
    return kernel.emitError() << "unknown chip '" << chipName << "' (expected "
                              << getGPUChipNames() << ")";
  return result;
}

gpu::GPUModuleOp mlir::diffattn::createKernelModule(RewriterBase &rewriter,
                                                    func::FuncOp kernel) {
  rewriter.setInsertionPoint(kernel);
  auto gpuModule = gpu::GPUModuleOp::create(
      rewriter, kernel.getLoc(), (kernel.getName() + "_module").str());
  rewriter.setInsertionPointToStart(gpuModule.getBody());
  return gpuModule;
}

void mlir::diffattn::replaceWithGPUKernel(RewriterBase &rewriter,
                                          func::FuncOp kernel,
                                          DictionaryAttr desc,
                                          gpu::GPUFuncOp func,
                                          DictionaryAttr launch) {
  NamedAttrList entry(desc);
  entry.set("launch", launch);
  func->setAttr(kKernelAttrName,
                DictionaryAttr::get(kernel.getContext(), entry));
  rewriter.eraseOp(kernel);
}
