//===- diffattn-compile.cpp - the compile driver --------------------------===//
//
// diffattn-compile IN.mlir --target=cpu|sm_80|sm_90|sm_90a|sm_100a -o DIR
//
// Compiles every differential-attention op of IN into kernels and writes
// DIR/manifest.json plus one artifact per kernel. The stages, each an
// ordinary pass runnable alone in diffattn-opt:
//
//   parse + verify
//   diffattn-fuse                         recognise V1/V2 in a model graph
//                                         (--no-fuse skips it)
//   diffattn-outline-kernels              one kernel per op configuration
//   per kernel, the target pipeline:
//     cpu: diffattn-cpu-pipeline{outline=0}  -> LLVM dialect + C entry point
//          LLVM -O3 for the host, object file, `cc -shared`  -> <kernel>.so
//     sm_80, sm_90: diffattn-to-mma-sync-kernels  -> gpu.module kernel
//          lower-affine, gpu-lower-to-nvvm-pipeline{cubin-format=isa}
//          (NVVM, LLVM NVPTX)                     -> <kernel>.ptx
//          ptxas -O3                              -> <kernel>.cubin
//
// Exit status 0 only when every kernel and the manifest were written.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/Passes.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"
#include "diffattn/InitAllDiffAttn.h"
#include "diffattn/Target/CPU/CPUTarget.h"
#include "diffattn/Target/GPU/GPUTarget.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Support/Timing.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace mlir::diffattn;

#ifndef DIFFATTN_VERSION
#define DIFFATTN_VERSION "unknown"
#endif

namespace cl = llvm::cl;

static cl::OptionCategory category("diffattn-compile options");

static cl::opt<std::string> inputFilename(cl::Positional,
                                          cl::desc("<input .mlir>"),
                                          cl::Required, cl::cat(category));
static cl::opt<std::string>
    outputDir("o", cl::desc("Output directory (created if absent)"),
              cl::value_desc("dir"), cl::Required, cl::cat(category));
static cl::opt<std::string>
    target("target",
           cl::desc("Target: cpu, sm_80, sm_90 (portable tensor-core "
                    "strategy), sm_90a (Hopper), sm_100a (Blackwell)"),
           cl::init("cpu"), cl::cat(category));
static cl::opt<std::string>
    lowering("lowering",
             cl::desc("CPU lowering: 'flash' (tiled, default) or "
                      "'decompose' (untiled oracle)"),
             cl::init("flash"), cl::cat(category));
static cl::opt<int64_t> blockQ("block-q",
                               cl::desc("Query rows per block, CPU (0: the "
                                        "target's default)"),
                               cl::init(0), cl::cat(category));
static cl::opt<int64_t> blockK("block-k",
                               cl::desc("Keys per block (0: the target's "
                                        "default)"),
                               cl::init(0), cl::cat(category));
static cl::opt<int64_t>
    stages("stages",
           cl::desc("GPU: K/V blocks per cp.async pipeline (0: the "
                    "strategy's default)"),
           cl::init(0), cl::cat(category));
static cl::opt<int64_t> warps("warps",
                              cl::desc("GPU: warps per CTA, 4 or 8 (0: the "
                                       "strategy's default)"),
                              cl::init(0), cl::cat(category));
static cl::opt<int64_t>
    splitKeys("split-keys",
              cl::desc("GPU: keys per split of the decode form's split-KV "
                       "kernels (0: the runtime picks it per launch)"),
              cl::init(0), cl::cat(category));
static cl::opt<int64_t> splitTargetCtas(
    "split-target-ctas",
    cl::desc("GPU: CTAs a split-KV launch aims for when the runtime picks "
             "the split (0: the target's default, about one wave)"),
    cl::init(0), cl::cat(category));
static cl::opt<bool> l2Prefetch(
    "l2-prefetch",
    cl::desc("GPU: split-KV kernels copy whole K/V tiles with cp.async's "
             "L2::128B qualifier (inline PTX; default off: with swizzled "
             "tiles it measured no faster than plain cp.async)"),
    cl::init(false), cl::cat(category));
static cl::opt<std::string> smemLayout(
    "smem-layout",
    cl::desc("GPU: Q/K/V tiles in shared memory: padded, swizzled or auto "
             "(default: swizzled for split-KV, padded for row blocks)"),
    cl::init("auto"), cl::cat(category));
static cl::opt<bool> programmaticLaunch(
    "programmatic-launch",
    cl::desc("GPU: launch the decode form's combine kernel as a "
             "programmatic dependent of the split kernel (default on where "
             "the target has it: sm_90 and later)"),
    cl::init(true), cl::cat(category));
static cl::opt<double> rescaleThreshold(
    "rescale-threshold",
    cl::desc("GPU: lazy softmax rescaling threshold in log2 units, 0 to 16 "
             "(0: rescale with every key block; default 8)"),
    cl::init(8), cl::cat(category));
static cl::opt<bool> noFuse("no-fuse",
                            cl::desc("Compile only the diffattn ops already in "
                                     "the input (skip diffattn-fuse)"),
                            cl::init(false), cl::cat(category));
static cl::opt<bool>
    fuseRemarks("fuse-remarks",
                cl::desc("Report what diffattn-fuse fused, and why it left "
                         "attention-like subgraphs alone"),
                cl::init(false), cl::cat(category));
static cl::opt<bool> timing("timing",
                            cl::desc("Print where compile time goes (the same "
                                     "report as --mlir-timing)"),
                            cl::init(false), cl::cat(category));

namespace {

llvm::json::Value toJSON(Attribute attr) {
  if (auto b = dyn_cast<BoolAttr>(attr))
    return b.getValue();
  if (auto i = dyn_cast<IntegerAttr>(attr))
    return i.getInt();
  if (auto f = dyn_cast<FloatAttr>(attr))
    return f.getValueAsDouble();
  if (auto s = dyn_cast<StringAttr>(attr))
    return s.getValue().str();
  if (auto a = dyn_cast<ArrayAttr>(attr)) {
    llvm::json::Array array;
    for (Attribute element : a)
      array.push_back(toJSON(element));
    return array;
  }
  if (auto d = dyn_cast<DictionaryAttr>(attr)) {
    llvm::json::Object object;
    for (NamedAttribute named : d)
      object[named.getName().getValue()] = toJSON(named.getValue());
    return object;
  }
  std::string text;
  llvm::raw_string_ostream os(text);
  attr.print(os);
  return text;
}

/// Runs `pm` on `module` with the command line's pass-manager options
/// (--mlir-timing, --mlir-print-ir-after-all, ...).
LogicalResult runPipeline(PassManager &pm, ModuleOp module,
                          TimingScope &timing) {
  if (failed(applyPassManagerCLOptions(pm)))
    return failure();
  pm.enableTiming(timing);
  return pm.run(module);
}

/// Compiles one outlined kernel for the CPU: DIR/<kernel>.so.
FailureOr<llvm::json::Object>
compileCPUKernel(ModuleOp kernelModule, StringRef name, TimingScope &timing) {
  PassManager pm(kernelModule.getContext());
  CPUPipelineOptions options;
  options.outline = false;
  options.lowering = lowering;
  options.blockQ = blockQ;
  options.blockK = blockK;
  auto reportError = [&](const Twine &message) {
    return kernelModule.emitError(message);
  };
  if (failed(buildCPUPipeline(pm, options, reportError)))
    return failure();
  {
    TimingScope lowerTiming = timing.nest("lower " + name.str());
    if (failed(runPipeline(pm, kernelModule, lowerTiming)))
      return failure();
  }

  llvm::SmallString<256> libraryPath(outputDir);
  std::string library = name.str() + ".so";
  llvm::sys::path::append(libraryPath, library);
  {
    TimingScope emitTiming = timing.nest("emit " + library);
    if (failed(emitSharedObject(kernelModule, libraryPath)))
      return failure();
  }

  auto entry = kernelModule.lookupSymbol<LLVM::LLVMFuncOp>(name);
  auto desc = entry ? entry->getAttrOfType<DictionaryAttr>(kKernelAttrName)
                    : DictionaryAttr();
  if (!desc)
    return kernelModule.emitError() << "no entry point for kernel " << name;
  llvm::json::Object object = *toJSON(desc).getAsObject();
  object["library"] = library;
  object["entry"] = name.str();
  object["launch"] = llvm::json::Object{
      {"kind", "c_call"},
      {"returns", "void"},
      {"rule", "one call computes the whole op; pointers are contiguous "
               "row-major (BSHD) buffers in 'args' order, then B, Sq, Sk"}};
  return object;
}

/// Compiles one outlined kernel for a GPU: DIR/<kernel>.ptx and .cubin.
FailureOr<llvm::json::Object> compileGPUKernel(ModuleOp kernelModule,
                                               StringRef name,
                                               const GPUTargetInfo &gpu,
                                               TimingScope &timing) {
  MLIRContext *context = kernelModule.getContext();
  {
    PassManager pm(context);
    DiffAttnToMmaSyncKernelsOptions options;
    options.blockK = blockK;
    options.stages = stages;
    options.warps = warps;
    options.splitKeys = splitKeys;
    options.splitTargetCtas =
        splitTargetCtas ? int64_t(splitTargetCtas) : gpu.splitTargetCtas;
    options.rescaleThreshold = rescaleThreshold;
    options.l2Prefetch = l2Prefetch;
    options.smemLayout = smemLayout;
    options.programmaticLaunch = programmaticLaunch && gpu.programmaticLaunch;
    pm.addPass(createDiffAttnToMmaSyncKernels(options));
    TimingScope strategyTiming = timing.nest("strategy " + name.str());
    if (failed(runPipeline(pm, kernelModule, strategyTiming)))
      return failure();
  }
  DictionaryAttr desc;
  kernelModule.walk([&](gpu::GPUFuncOp func) {
    if (auto attr = func->getAttrOfType<DictionaryAttr>(kKernelAttrName))
      desc = attr;
  });
  if (!desc)
    return kernelModule.emitError() << "no GPU kernel made for " << name;
  llvm::json::Object object = *toJSON(desc).getAsObject();

  {
    PassManager pm(context);
    if (failed(buildPTXPipeline(pm, gpu)))
      return failure();
    TimingScope lowerTiming = timing.nest("lower to PTX " + name.str());
    if (failed(runPipeline(pm, kernelModule, lowerTiming)))
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
    report = assemblePTX(kernelModule.getLoc(), ptxPath, cubinPath, gpu);
  }
  if (failed(report))
    return failure();
  object["entry"] = name.str();
  object["ptx"] = ptxFile;
  object["cubin"] = cubinFile;
  object["chip"] = gpu.chip;
  object["ptxas"] = llvm::json::Object{{"registers", report->registers},
                                       {"spill_stores", report->spillStores},
                                       {"spill_loads", report->spillLoads},
                                       {"stack_frame", report->stackFrame}};
  return object;
}

LogicalResult compile(MLIRContext &context, llvm::SourceMgr &sourceMgr,
                      TimingScope &timing) {
  OwningOpRef<ModuleOp> module;
  {
    TimingScope parseTiming = timing.nest("parse + verify");
    module = parseSourceFile<ModuleOp>(sourceMgr, &context);
  }
  if (!module)
    return failure();

  std::optional<GPUTargetInfo> gpuTarget;
  if (target != "cpu") {
    gpuTarget = lookupGPUTarget(target);
    if (!gpuTarget)
      return module->emitError()
             << "unknown target '" << target
             << "' (expected cpu, sm_80, sm_90, sm_90a or sm_100a)";
    if (gpuTarget->strategy != "mma_sync")
      return module->emitError()
             << "the " << gpuTarget->strategy
             << " strategy of --target=" << target
             << " is not implemented yet; --target=sm_90 compiles the "
                "portable mma.sync strategy, whose cubin runs on Hopper";
    if (blockQ != 0)
      return module->emitError(
          "--block-q applies to --target=cpu only (the mma.sync strategy "
          "uses 64-row query blocks: 4 warps of 16 rows)");
  }

  if (!noFuse) {
    TimingScope fuseTiming = timing.nest("fuse");
    FuseOptions fuseOptions;
    fuseOptions.emitRemarks = fuseRemarks;
    if (failed(fuseDiffAttn(*module, fuseOptions)))
      return failure();
  }

  {
    TimingScope outlineTiming = timing.nest("outline kernels");
    if (failed(outlineDiffAttnKernels(*module)))
      return failure();
  }

  if (std::error_code ec = llvm::sys::fs::create_directories(outputDir))
    return module->emitError()
           << "cannot create " << outputDir << ": " << ec.message();

  llvm::json::Array kernels;
  for (auto kernel : module->getOps<func::FuncOp>()) {
    // Each kernel is lowered in a module of its own.
    OwningOpRef<ModuleOp> kernelModule = ModuleOp::create(kernel.getLoc());
    kernelModule->getBody()->push_back(kernel.clone());
    FailureOr<llvm::json::Object> entry =
        gpuTarget
            ? compileGPUKernel(*kernelModule, kernel.getSymName(), *gpuTarget,
                               timing)
            : compileCPUKernel(*kernelModule, kernel.getSymName(), timing);
    if (failed(entry))
      return failure();
    kernels.push_back(std::move(*entry));
  }

  llvm::json::Object manifest{
      {"format_version", 1},
      {"compiler", "diffattn-compile " DIFFATTN_VERSION},
      {"target", target.getValue()},
      {"host", getHostCPUDescription()},
      {"source", llvm::sys::path::filename(inputFilename).str()},
      {"kernels", std::move(kernels)}};
  llvm::SmallString<256> manifestPath(outputDir);
  llvm::sys::path::append(manifestPath, "manifest.json");
  std::string errorMessage;
  auto output = openOutputFile(manifestPath, &errorMessage);
  if (!output)
    return module->emitError() << errorMessage;
  output->os() << llvm::formatv("{0:2}", llvm::json::Value(std::move(manifest)))
               << "\n";
  output->keep();
  return success();
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  registerAllPasses();
  registerAllDiffAttnPasses();
  registerAsmPrinterCLOptions();
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  registerDefaultTimingManagerCLOptions();
  cl::SetVersionPrinter([](llvm::raw_ostream &os) {
    os << "diffattn-compile " << DIFFATTN_VERSION << "\n";
  });
  cl::HideUnrelatedOptions({&category, &cl::getGeneralCategory()});
  cl::ParseCommandLineOptions(
      argc, argv,
      "diffattn-compile: differential-attention ops to kernels + manifest\n");

  DialectRegistry registry;
  registerAllDialects(registry);
  registerAllExtensions(registry);
  registerAllToLLVMIRTranslations(registry);
  registerAllDiffAttnDialects(registry);
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  // Every driver error is one located line (plus notes that help), never a
  // dump of the module under "see current operation".
  context.printOpOnDiagnostic(false);

  std::string errorMessage;
  auto file = openInputFile(inputFilename, &errorMessage);
  if (!file) {
    llvm::errs() << "diffattn-compile: " << errorMessage << "\n";
    return 1;
  }
  llvm::SourceMgr sourceMgr;
  sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
  SourceMgrDiagnosticHandler diagnostics(sourceMgr, &context);

  DefaultTimingManager timingManager;
  applyDefaultTimingManagerCLOptions(timingManager);
  if (timing)
    timingManager.setEnabled(true);
  TimingScope rootTiming = timingManager.getRootScope();
  if (failed(compile(context, sourceMgr, rootTiming)))
    return 1;
  return 0;
}
