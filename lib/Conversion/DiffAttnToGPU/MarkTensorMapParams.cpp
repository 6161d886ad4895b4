//===- MarkTensorMapParams.cpp - tensor maps as grid-constant params ------===//
//
// diffattn-mark-tensor-map-params: see the pass description in Passes.td.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/KernelSignature.h"
#include "diffattn/Conversion/Passes.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNMARKTENSORMAPPARAMS
#include "diffattn/Conversion/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;

namespace {
/// Bytes and alignment of a CUtensorMap (PTX ISA "Tensor-map"; cuda.h).
constexpr int64_t kTensorMapBytes = 128, kTensorMapAlign = 64;

struct DiffAttnMarkTensorMapParamsPass
    : public diffattn::impl::DiffAttnMarkTensorMapParamsBase<
          DiffAttnMarkTensorMapParamsPass> {
  void runOnOperation() override {
    LLVM::LLVMFuncOp func = getOperation();
    auto count =
        func->getAttrOfType<IntegerAttr>(diffattn::kTensorMapArgsAttrName);
    if (!count)
      return;
    if (!func->hasAttr(NVVM::NVVMDialect::getKernelFuncAttrName())) {
      func.emitError() << diffattn::kTensorMapArgsAttrName
                       << " on a function that is not an NVVM kernel";
      return signalPassFailure();
    }
    int64_t n = count.getInt();
    if (n < 0 || n > static_cast<int64_t>(func.getNumArguments())) {
      func.emitError() << diffattn::kTensorMapArgsAttrName << " = " << n
                       << " but the kernel has " << func.getNumArguments()
                       << " parameters";
      return signalPassFailure();
    }
    Builder b(&getContext());
    Type mapType = LLVM::LLVMArrayType::get(b.getI8Type(), kTensorMapBytes);
    for (int64_t i = 0; i < n; ++i) {
      if (!isa<LLVM::LLVMPointerType>(func.getArgument(i).getType())) {
        func.emitError() << "tensor map parameter " << i << " is not a pointer";
        return signalPassFailure();
      }
      func.setArgAttr(i, LLVM::LLVMDialect::getByValAttrName(),
                      TypeAttr::get(mapType));
      func.setArgAttr(i, LLVM::LLVMDialect::getAlignAttrName(),
                      b.getI64IntegerAttr(kTensorMapAlign));
      func.setArgAttr(i, NVVM::NVVMDialect::getGridConstantAttrName(),
                      b.getUnitAttr());
    }
  }
};
} // namespace
