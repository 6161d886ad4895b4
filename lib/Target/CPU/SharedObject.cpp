//===- SharedObject.cpp - LLVM-dialect kernels to a host shared object ----===//
//
// Translates the CPU pipeline's output to LLVM IR, runs LLVM's -O3 for the
// host CPU, emits an object file with the host TargetMachine and links it
// into a shared object with the system C compiler driver.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Target/CPU/CPUTarget.h"

#include "mlir/ExecutionEngine/OptUtils.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "llvm/ADT/ScopeExit.h"
#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Module.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/Target/TargetOptions.h"
#include "llvm/TargetParser/Host.h"

using namespace mlir;
using namespace mlir::diffattn;

static std::string hostFeatures() {
  std::string features;
  for (const auto &feature : llvm::sys::getHostCPUFeatures()) {
    if (!features.empty())
      features += ",";
    features += (feature.second ? "+" : "-") + feature.first().str();
  }
  return features;
}

std::string mlir::diffattn::getHostCPUDescription() {
  return llvm::sys::getDefaultTargetTriple() + "/" +
         llvm::sys::getHostCPUName().str();
}

LogicalResult mlir::diffattn::emitSharedObject(ModuleOp module,
                                               StringRef path) {
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  MLIRContext *ctx = module.getContext();
  DialectRegistry registry;
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  ctx->appendDialectRegistry(registry);

  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(module, llvmContext, "diffattn_cpu");
  if (!llvmModule)
    return module.emitError("failed to translate the CPU kernels to LLVM IR");

  // The shared object may only call into the C library: a call into an MLIR
  // runtime library (memrefCopy and friends) would fail at load time.
  for (const llvm::Function &fn : llvmModule->functions())
    if (fn.isDeclaration() && !fn.isIntrinsic() &&
        !llvm::is_contained({"malloc", "free", "aligned_alloc"}, fn.getName()))
      return module.emitError()
             << "the CPU kernels call '" << fn.getName()
             << "', which no library linked into the shared object provides";

  llvm::Triple triple(llvm::sys::getDefaultTargetTriple());
  std::string error;
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(triple, error);
  if (!target)
    return module.emitError() << "no LLVM target for the host: " << error;
  std::unique_ptr<llvm::TargetMachine> machine(target->createTargetMachine(
      triple, llvm::sys::getHostCPUName(), hostFeatures(),
      llvm::TargetOptions(), llvm::Reloc::PIC_, std::nullopt,
      llvm::CodeGenOptLevel::Aggressive));
  if (!machine)
    return module.emitError("cannot create a TargetMachine for the host");
  llvmModule->setDataLayout(machine->createDataLayout());
  llvmModule->setTargetTriple(triple);

  auto optimize =
      makeOptimizingTransformer(/*optLevel=*/3, /*sizeLevel=*/0, machine.get());
  if (llvm::Error err = optimize(llvmModule.get()))
    return module.emitError()
           << "LLVM optimisation failed: " << llvm::toString(std::move(err));

  llvm::SmallString<128> objectPath;
  if (std::error_code ec =
          llvm::sys::fs::createTemporaryFile("diffattn-cpu", "o", objectPath))
    return module.emitError()
           << "cannot create a temporary object file: " << ec.message();
  auto removeObject =
      llvm::scope_exit([&] { llvm::sys::fs::remove(objectPath); });
  {
    std::error_code ec;
    llvm::raw_fd_ostream os(objectPath, ec, llvm::sys::fs::OF_None);
    if (ec)
      return module.emitError()
             << "cannot write " << objectPath << ": " << ec.message();
    llvm::legacy::PassManager codegen;
    if (machine->addPassesToEmitFile(codegen, os, nullptr,
                                     llvm::CodeGenFileType::ObjectFile))
      return module.emitError("the host target cannot emit object files");
    codegen.run(*llvmModule);
  }

  // Link with the C compiler driver: it knows the system's linker, libm
  // (expf) and libgcc (f16 conversions on CPUs without F16C).
  llvm::ErrorOr<std::string> driver = llvm::sys::findProgramByName("cc");
  if (!driver)
    driver = llvm::sys::findProgramByName("gcc");
  if (!driver)
    driver = llvm::sys::findProgramByName("clang");
  if (!driver)
    return module.emitError(
        "no C compiler driver (cc, gcc or clang) on PATH to link the shared "
        "object");
  SmallVector<StringRef> args = {*driver, "-shared",  "-o",
                                 path,    objectPath, "-lm"};
  std::string message;
  int rc = llvm::sys::ExecuteAndWait(*driver, args, std::nullopt, {}, 0, 0,
                                     &message);
  if (rc != 0)
    return module.emitError()
           << "linking " << path << " with " << *driver << " failed (exit "
           << rc << ")" << (message.empty() ? "" : ": ") << message;
  return success();
}
