//===- diffattn-compile.cpp - the compile driver --------------------------===//
//
// diffattn-compile IN.mlir --target=cpu|sm_80|sm_90|sm_90a|sm_100a -o DIR
//
// Compiles every differential-attention op of IN into kernels and writes
// DIR/manifest.json plus one artifact per kernel. The driver is a list of
// stages (see printStages; `--print-stages` lists them with the command
// that replays each alone), each a pass manager of its own, so that
// --mlir-timing and --mlir-print-ir-after-all show every stage:
//
//   parse + verify
//   tosa        diffattn-tosa-frontend (only for graphs holding TOSA ops)
//   fuse        diffattn-fuse (--no-fuse skips it)      model graph -> ops
//   outline     diffattn-outline-kernels     one kernel per configuration
//   per kernel, the target's stages:
//     cpu:  lower   diffattn-cpu-pipeline{outline=0}  -> LLVM dialect
//           emit    LLVM -O3 for the host, `cc -shared`  -> <kernel>.so
//     GPU:  gpu     diffattn-gpu-pipeline{chip=... <--gpu-options>}
//                                             -> gpu.module (strategy)
//           ptx     lower-affine, gpu-lower-to-nvvm-pipeline -> <kernel>.ptx
//           ptxas   ptxas -O3                          -> <kernel>.cubin
//   manifest        DIR/manifest.json (lib/Target/Manifest.cpp)
//
// Exit status 0 only when every kernel and the manifest were written.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"
#include "diffattn/Frontend/Tosa/TosaFrontend.h"
#include "diffattn/InitAllDiffAttn.h"
#include "diffattn/SourceId.h"
#include "diffattn/Target/CPU/CPUTarget.h"
#include "diffattn/Target/GPU/GPUTarget.h"
#include "diffattn/Target/Manifest.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Support/Timing.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace mlir::diffattn;

#ifndef DIFFATTN_VERSION
#define DIFFATTN_VERSION "unknown"
#endif

/// The compiler's identity in --version and in manifests: the release and
/// the source id (a hash of the compiler's sources, cmake/SourceId.cmake),
/// which the Python package's kernel cache keys on.
#define DIFFATTN_COMPILER_ID                                                   \
  "diffattn-compile " DIFFATTN_VERSION " (source " DIFFATTN_SOURCE_ID ")"

namespace cl = llvm::cl;

static cl::OptionCategory category("diffattn-compile options");

static cl::opt<std::string> inputFilename(cl::Positional,
                                          cl::desc("<input .mlir>"),
                                          cl::Required, cl::cat(category));
static cl::opt<std::string>
    outputDir("o", cl::desc("Output directory (created if absent)"),
              cl::value_desc("dir"), cl::cat(category));
static cl::opt<std::string> target(
    "target",
    cl::desc("Target (default: cpu): cpu, or a GPU: sm_80, sm_90 (the "
             "portable tensor-core "
             "strategy, mma.sync; an sm_90 cubin runs on Hopper), sm_90a "
             "(the Hopper strategy: wgmma, TMA, warp specialisation; "
             "decode and paged caches use the portable kernels), sm_100a "
             "(Blackwell: the portable strategy for now; the tcgen05 "
             "strategy is separate, later work)"),
    cl::init("cpu"), cl::cat(category));
static cl::opt<std::string>
    lowering("lowering",
             cl::desc("CPU lowering: 'flash' (tiled, default) or "
                      "'decompose' (untiled oracle)"),
             cl::init("flash"), cl::cat(category));
static cl::opt<int64_t> blockQ("block-q",
                               cl::desc("CPU: query rows per block (0: the "
                                        "default)"),
                               cl::init(0), cl::cat(category));
static cl::opt<int64_t> blockK("block-k",
                               cl::desc("CPU: keys per block (0: the "
                                        "default); GPU targets take "
                                        "--gpu-options=block-k=N"),
                               cl::init(0), cl::cat(category));
static cl::opt<std::string> gpuOptions(
    "gpu-options",
    cl::desc("GPU: options of the GPU strategy, as diffattn-gpu-pipeline "
             "takes them (space-separated key=value: block-k, stages, warps, "
             "rescale-threshold, strategy, ...; sm_90a adds "
             "warp-specialize, ping-pong, tma, persistent, tile-scheduler, "
             "epilogue, release-arrivals, trim-last-pv, ...; "
             "`diffattn-opt --help` lists them all with their measured "
             "defaults, docs/DiffAttnConversionPasses.md documents them), "
             "e.g. --gpu-options=\"warps=8 stages=3\""),
    cl::value_desc("options"), cl::init(""), cl::cat(category));
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
static cl::opt<bool>
    printStages("print-stages",
                cl::desc("List the target's stages and the command that "
                         "replays each alone, then exit"),
                cl::init(false), cl::cat(category));

namespace {

/// Runs `pm` on `module` as stage `stage` with the command line's
/// pass-manager options (--mlir-timing, --mlir-print-ir-after-all, ...),
/// timed under `timing`.
LogicalResult runStage(PassManager &pm, ModuleOp module, StringRef stage,
                       TimingScope &timing) {
  if (failed(applyPassManagerCLOptions(pm)))
    return failure();
  TimingScope stageTiming = timing.nest(stage.str());
  pm.enableTiming(stageTiming);
  return pm.run(module);
}

/// The stages before any target: fuse (unless --no-fuse), outline.
LogicalResult addFrontStages(OpPassManager &pm) {
  std::string pipeline =
      noFuse ? ""
             : (fuseRemarks ? "diffattn-fuse{remarks=1}," : "diffattn-fuse,");
  return parsePassPipeline(pipeline + "diffattn-outline-kernels", pm);
}

/// Sets the CPU pipeline's options from the command line.
void setCPUOptions(CPUPipelineOptions &options) {
  options.outline = false;
  options.lowering = lowering;
  options.blockQ = blockQ;
  options.blockK = blockK;
}

/// --print-stages: the target's stages, in order, each with the command
/// that replays it alone (what compile() runs, built from the same options).
void printStageList(const GPUChipInfo *chip) {
  llvm::raw_ostream &os = llvm::outs();
  auto print = [&](StringRef stage, const Twine &replay) {
    os << llvm::formatv("  {0,-8} ", stage) << replay << "\n";
  };
  os << "stages of diffattn-compile --target=" << target
     << " (each replays alone):\n";
  print("tosa", "diffattn-opt --diffattn-tosa-frontend   (graphs holding "
                "TOSA ops only)");
  if (!noFuse)
    print("fuse", Twine("diffattn-opt --diffattn-fuse") +
                      (fuseRemarks ? "=remarks=1" : ""));
  print("outline", "diffattn-opt --diffattn-outline-kernels");
  if (!chip) {
    print("lower", "diffattn-opt --diffattn-cpu-pipeline=\"outline=0 "
                   "lowering=" +
                       lowering + " block-q=" + Twine(blockQ) +
                       " block-k=" + Twine(blockK) + "\"   (per kernel)");
    print("emit", "LLVM -O3 for the host CPU, cc -shared -> <kernel>.so");
  } else {
    print("gpu", "diffattn-opt --diffattn-gpu-pipeline=\"" +
                     getGPUPipelineOptions(*chip, gpuOptions) +
                     "\"   (per kernel)");
    print("ptx", "diffattn-opt --pass-pipeline='builtin.module(" +
                     getPTXPipeline(*chip) + ")'   -> <kernel>.ptx");
    print("ptxas", "ptxas -arch=" + chip->name + " -O3 -v -> <kernel>.cubin");
  }
  print("manifest", "DIR/manifest.json (docs/manifest.md)");
}

LogicalResult compile(MLIRContext &context, llvm::SourceMgr &sourceMgr,
                      const GPUChipInfo *chip, TimingScope &timing) {
  OwningOpRef<ModuleOp> module;
  {
    TimingScope parseTiming = timing.nest("parse + verify");
    module = parseSourceFile<ModuleOp>(sourceMgr, &context);
  }
  if (!module)
    return failure();
  Location loc = module->getLoc();

  // A TOSA graph (torch-mlir's TOSA export) first goes to linalg.
  if (needsTosaFrontend(*module)) {
    PassManager pm(&context);
    buildTosaFrontendPipeline(pm);
    if (failed(runStage(pm, *module, "tosa frontend", timing)))
      return failure();
  }
  {
    PassManager pm(&context);
    if (failed(addFrontStages(pm)) ||
        failed(runStage(pm, *module, noFuse ? "outline" : "fuse + outline",
                        timing)))
      return failure();
  }

  // A directory this run creates is removed again if a kernel fails, so a
  // failed compile writes nothing.
  bool created = !llvm::sys::fs::exists(outputDir);
  if (std::error_code ec = llvm::sys::fs::create_directories(outputDir))
    return emitError(loc) << "cannot create " << outputDir << ": "
                          << ec.message();
  auto failAndClean = [&]() -> LogicalResult {
    if (created)
      (void)llvm::sys::fs::remove_directories(outputDir);
    return failure();
  };

  auto run = [&](PassManager &pm, ModuleOp kernelModule, StringRef stage) {
    return runStage(pm, kernelModule, stage, timing);
  };
  std::string pipelineOptions =
      chip ? getGPUPipelineOptions(*chip, gpuOptions) : std::string();
  CPUPipelineOptions cpuOptions;
  setCPUOptions(cpuOptions);
  ManifestWriter manifest(DIFFATTN_COMPILER_ID, target, getHostCPUDescription(),
                          llvm::sys::path::filename(inputFilename));
  for (auto kernel : module->getOps<func::FuncOp>()) {
    // Each kernel is lowered in a module of its own.
    OwningOpRef<ModuleOp> kernelModule = ModuleOp::create(kernel.getLoc());
    kernelModule->getBody()->push_back(kernel.clone());
    FailureOr<llvm::json::Object> entry =
        chip ? compileGPUKernel(*kernelModule, kernel.getSymName(), *chip,
                                pipelineOptions, outputDir, run, timing)
             : compileCPUKernel(*kernelModule, kernel.getSymName(), cpuOptions,
                                outputDir, run, timing);
    if (failed(entry))
      return failAndClean();
    manifest.addKernel(std::move(*entry));
  }
  TimingScope manifestTiming = timing.nest("manifest");
  if (failed(manifest.write(outputDir, loc)))
    return failAndClean();
  return success();
}

/// The GPU chip of --target, null for cpu; diagnoses options that do not
/// apply to the target.
FailureOr<const GPUChipInfo *> resolveTarget() {
  auto fail = [](const Twine &message) {
    llvm::errs() << "diffattn-compile: " << message << "\n";
    return failure();
  };
  if (target == "cpu") {
    if (!gpuOptions.empty())
      return fail("--gpu-options applies to GPU targets (sm_80, sm_90, "
                  "sm_90a, sm_100a), not --target=cpu");
    return static_cast<const GPUChipInfo *>(nullptr);
  }
  const GPUChipInfo *chip = lookupGPUChip(target);
  if (!chip)
    return fail("unknown target '" + target + "' (expected cpu, " +
                getGPUChipNames() + ")");
  if (blockQ != 0 || blockK != 0)
    return fail("--block-q and --block-k apply to --target=cpu; GPU targets "
                "take --gpu-options=\"block-k=N\" (query rows follow from "
                "the warps: 16 per warp)");
  if (lowering != "flash")
    return fail("--lowering applies to --target=cpu");
  // --target sets the pipeline's chip; a second chip= would override it.
  SmallVector<StringRef> tokens;
  llvm::SplitString(gpuOptions, tokens);
  for (StringRef token : tokens)
    if (token == "chip" || token.starts_with("chip="))
      return fail("--gpu-options: chip is set by --target, not here");
  // Check --gpu-options before anything is compiled (the pipeline's options
  // parser names the bad key or value).
  OpPassManager pm(ModuleOp::getOperationName());
  if (failed(buildGPUPipeline(pm, getGPUPipelineOptions(*chip, gpuOptions),
                              [](const Twine &message) {
                                std::string text = message.str();
                                if (!StringRef(text).trim().empty())
                                  llvm::errs()
                                      << "diffattn-compile: "
                                         "--gpu-options: "
                                      << StringRef(text).trim() << "\n";
                                return failure();
                              })))
    return failure();
  return chip;
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
  cl::SetVersionPrinter(
      [](llvm::raw_ostream &os) { os << DIFFATTN_COMPILER_ID << "\n"; });
  // --help lists the tool's own options; MLIR's (--mlir-timing,
  // --mlir-print-ir-after-all, ...) and LLVM's still apply and
  // --help-hidden lists them (several hundred, most for other targets).
  // Shown: the tool's category and --help's own (LLVM's generic options).
  auto &options = cl::getRegisteredOptions();
  cl::OptionCategory *generic = options.lookup("help")->Categories.front();
  for (auto &entry : options) {
    cl::Option *option = entry.second;
    bool shown = llvm::any_of(option->Categories, [&](cl::OptionCategory *c) {
      return c == &category || c == generic;
    });
    if (!shown && option->getOptionHiddenFlag() == cl::NotHidden)
      option->setHiddenFlag(cl::Hidden);
  }
  cl::ParseCommandLineOptions(
      argc, argv,
      "diffattn-compile: differential-attention ops to kernels + manifest\n\n"
      "  MLIR's and LLVM's options (--mlir-timing, --mlir-print-ir-after-all, "
      "...)\n  also apply; --help-hidden lists them.\n");

  FailureOr<const GPUChipInfo *> chip = resolveTarget();
  if (failed(chip))
    return 1;

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

  if (printStages) {
    printStageList(*chip);
    return 0;
  }
  if (outputDir.empty()) {
    llvm::errs() << "diffattn-compile: no output directory (-o DIR)\n";
    return 1;
  }
  if (*chip) {
    if (std::optional<std::string> problem = diagnoseCUDAToolkit()) {
      llvm::errs() << "diffattn-compile: --target=" << target
                   << " needs the CUDA toolkit: " << *problem << "\n";
      return 1;
    }
  }
  if (llvm::sys::fs::exists(outputDir) &&
      !llvm::sys::fs::is_directory(outputDir)) {
    llvm::errs() << "diffattn-compile: -o " << outputDir
                 << ": exists and is not a directory\n";
    return 1;
  }

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
  if (failed(compile(context, sourceMgr, *chip, rootTiming)))
    return 1;
  return 0;
}
