//===- GPUTarget.cpp - PTX through NVPTX, cubin through ptxas -------------===//
//
// The GPU pipeline's construction, the PTX lowering and the ptxas step of
// the GPU target (see GPUTarget.h).
//
//===----------------------------------------------------------------------===//

#include "diffattn/Target/GPU/GPUTarget.h"
#include "diffattn/Conversion/Passes.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Target/LLVM/NVVM/Utils.h"
#include "llvm/ADT/ScopeExit.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/Regex.h"

using namespace mlir;
using namespace mlir::diffattn;

std::string mlir::diffattn::getGPUPipelineOptions(const GPUChipInfo &chip,
                                                  StringRef extra) {
  std::string options = "chip=" + chip.name.str();
  if (!extra.trim().empty())
    options += " " + extra.trim().str();
  return options;
}

LogicalResult mlir::diffattn::buildGPUPipeline(
    OpPassManager &pm, StringRef options,
    function_ref<LogicalResult(const Twine &)> emitError) {
  std::unique_ptr<Pass> pass = createDiffAttnGPUPipeline();
  if (failed(pass->initializeOptions(options, emitError)))
    return failure();
  pm.addPass(std::move(pass));
  return success();
}

std::string mlir::diffattn::getPTXPipeline(const GPUChipInfo &chip) {
  // MLIR's gpu-lower-to-nvvm-pipeline (cubin-format=isa opt-level=3), pass
  // by pass, with diffattn-mark-tensor-map-params after the GPU-to-NVVM
  // conversion: that conversion drops the by-value attribute of the
  // kernels' tensor-map parameters (see the pass's description).
  std::string target = "chip=" + chip.name.str() +
                       " features=" + chip.ptxFeatures.str() + " O=3";
  return "lower-affine,convert-nvgpu-to-nvvm,gpu-kernel-outlining,"
         "convert-vector-to-scf,convert-scf-to-cf,convert-nvvm-to-llvm,"
         "convert-func-to-llvm,expand-strided-metadata,nvvm-attach-target{" +
         target +
         "},lower-affine,convert-arith-to-llvm,convert-index-to-llvm,"
         "canonicalize,cse,"
         "gpu.module(convert-gpu-to-nvvm,canonicalize,cse,"
         "reconcile-unrealized-casts,"
         "llvm.func(diffattn-mark-tensor-map-params)),"
         "gpu-to-llvm,gpu-module-to-binary{format=isa},"
         "convert-math-to-llvm,canonicalize,cse,reconcile-unrealized-casts";
}

LogicalResult mlir::diffattn::buildPTXPipeline(OpPassManager &pm,
                                               const GPUChipInfo &chip) {
  return parsePassPipeline(getPTXPipeline(chip), pm);
}

FailureOr<std::string> mlir::diffattn::extractPTX(ModuleOp module) {
  SmallVector<gpu::BinaryOp> binaries =
      llvm::to_vector(module.getOps<gpu::BinaryOp>());
  if (binaries.size() != 1)
    return module.emitError()
           << "expected one gpu.binary after lowering, found "
           << binaries.size();
  auto objects = binaries.front().getObjects();
  if (objects.size() != 1)
    return binaries.front().emitError("expected one object in gpu.binary");
  auto object = cast<gpu::ObjectAttr>(objects[0]);
  if (object.getFormat() != gpu::CompilationTarget::Assembly)
    return binaries.front().emitError("expected PTX assembly in gpu.binary");
  return object.getObject().getValue().str();
}

static constexpr llvm::StringLiteral kNoPtxas =
    "ptxas not found (set DIFFATTN_PTXAS, put it on PATH, or install the "
    "CUDA toolkit in /usr/local/cuda)";

static std::optional<std::string> lookupPtxas() {
  if (const char *env = std::getenv("DIFFATTN_PTXAS"))
    return std::string(env);
  if (auto onPath = llvm::sys::findProgramByName("ptxas"))
    return *onPath;
  if (llvm::sys::fs::can_execute("/usr/local/cuda/bin/ptxas"))
    return std::string("/usr/local/cuda/bin/ptxas");
  return std::nullopt;
}

static FailureOr<std::string> findPtxas(Location loc) {
  if (std::optional<std::string> ptxas = lookupPtxas())
    return *ptxas;
  return emitError(loc, kNoPtxas);
}

std::optional<std::string> mlir::diffattn::diagnoseCUDAToolkit() {
  if (!lookupPtxas())
    return kNoPtxas.str();
  // Where a toolkit path is known (NVVM::getCUDAToolkitPath: CUDA_ROOT,
  // CUDA_HOME or CUDA_PATH, else the path LLVM was built with, empty in
  // Debian's build), MLIR's NVVM serialiser links that toolkit's libdevice
  // into every kernel and fails without it; with none it links nothing.
  StringRef toolkit = NVVM::getCUDAToolkitPath();
  if (toolkit.empty())
    return std::nullopt;
  llvm::SmallString<128> libdevice(toolkit);
  llvm::sys::path::append(libdevice, "nvvm", "libdevice", "libdevice.10.bc");
  if (!llvm::sys::fs::exists(libdevice))
    return (libdevice +
            " not found (CUDA_ROOT, CUDA_HOME or CUDA_PATH names a CUDA "
            "toolkit without it)")
        .str();
  return std::nullopt;
}

FailureOr<PtxasReport> mlir::diffattn::assemblePTX(Location loc,
                                                   StringRef ptxPath,
                                                   StringRef cubinPath,
                                                   const GPUChipInfo &chip) {
  FailureOr<std::string> ptxas = findPtxas(loc);
  if (failed(ptxas))
    return failure();
  llvm::SmallString<128> logPath;
  if (llvm::sys::fs::createTemporaryFile("diffattn-ptxas", "log", logPath))
    return emitError(loc, "cannot create a temporary file for ptxas output");
  auto removeLog = llvm::scope_exit([&] { llvm::sys::fs::remove(logPath); });
  std::string arch = ("-arch=" + chip.name).str();
  SmallVector<StringRef> args = {*ptxas,  arch, "-O3",    "-v",
                                 ptxPath, "-o", cubinPath};
  std::optional<StringRef> redirects[] = {std::nullopt, StringRef(logPath),
                                          StringRef(logPath)};
  std::string message;
  int rc = llvm::sys::ExecuteAndWait(*ptxas, args, std::nullopt, redirects, 0,
                                     0, &message);
  auto log = llvm::MemoryBuffer::getFile(logPath);
  StringRef text = log ? (*log)->getBuffer() : StringRef();
  if (rc != 0)
    return emitError(loc) << "ptxas failed (exit " << rc << ") on " << ptxPath
                          << ": " << message << "\n"
                          << text;
  // The largest figures over the entry functions (a strategy may emit
  // several kernels into one cubin).
  PtxasReport report;
  llvm::Regex registers("Used ([0-9]+) registers");
  llvm::Regex frame("([0-9]+) bytes stack frame, ([0-9]+) bytes spill stores, "
                    "([0-9]+) bytes spill loads");
  auto raise = [](int64_t &into, StringRef digits) {
    int64_t value;
    if (!digits.getAsInteger(10, value))
      into = std::max(into, value);
  };
  SmallVector<StringRef> lines;
  text.split(lines, '\n');
  for (StringRef line : lines) {
    SmallVector<StringRef> m;
    if (registers.match(line, &m))
      raise(report.registers, m[1]);
    if (frame.match(line, &m)) {
      raise(report.stackFrame, m[1]);
      raise(report.spillStores, m[2]);
      raise(report.spillLoads, m[3]);
    }
  }
  return report;
}
