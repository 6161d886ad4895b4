//===- EmitCEntryPoints.cpp - plain C entry points for CPU kernels --------===//
//
// The DiffAttnEmitCEntryPoints pass: after lowering to the LLVM dialect, each
// kernel takes its memrefs as expanded descriptors (allocated and aligned
// pointer, offset, sizes, strides). The entry point added here takes one
// plain pointer per contiguous BSHD buffer plus B, Sq and Sk, rebuilds the
// descriptors from the kernel's manifest entry, and calls the kernel.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"
#include "diffattn/Target/CPU/Passes.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/Builders.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNEMITCENTRYPOINTS
#include "diffattn/Target/CPU/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;

namespace {

/// Adds the C entry point of `kernel` (described by `desc`).
LogicalResult emitEntryPoint(LLVM::LLVMFuncOp kernel, DictionaryAttr desc) {
  auto args = desc.getAs<ArrayAttr>("args");
  if (!args)
    return kernel.emitError("diffattn.kernel has no 'args'");
  SmallVector<ArrayAttr> tensorShapes;
  SmallVector<StringRef> sizeNames;
  for (Attribute arg : args) {
    auto dict = cast<DictionaryAttr>(arg);
    if (auto shape = dict.getAs<ArrayAttr>("shape"))
      tensorShapes.push_back(shape);
    else
      sizeNames.push_back(dict.getAs<StringAttr>("name").getValue());
  }
  unsigned expected = 0;
  for (ArrayAttr shape : tensorShapes)
    expected += 3 + 2 * shape.size();
  if (kernel.getNumArguments() != expected)
    return kernel.emitError()
           << "lowered kernel takes " << kernel.getNumArguments()
           << " arguments, expected " << expected
           << " (one expanded memref descriptor per tensor operand)";
  if (!isa<LLVM::LLVMVoidType>(kernel.getFunctionType().getReturnType()))
    return kernel.emitError(
        "lowered kernel still returns a value: its output was not written "
        "in place");

  MLIRContext *ctx = kernel.getContext();
  OpBuilder b(kernel);
  Location loc = kernel.getLoc();
  std::string name = kernel.getSymName().str();
  kernel.setSymName(name + "_impl");
  kernel.setLinkage(LLVM::Linkage::Internal);
  kernel->removeAttr(kKernelAttrName);

  Type ptr = LLVM::LLVMPointerType::get(ctx);
  Type i64 = b.getI64Type();
  SmallVector<Type> params(tensorShapes.size(), ptr);
  params.append(sizeNames.size(), i64);
  auto entry = LLVM::LLVMFuncOp::create(
      b, loc, name,
      LLVM::LLVMFunctionType::get(LLVM::LLVMVoidType::get(ctx), params));
  entry->setAttr(kKernelAttrName, desc);
  Block *block = entry.addEntryBlock(b);
  b.setInsertionPointToStart(block);

  llvm::StringMap<Value> sizes;
  for (auto [i, sizeName] : llvm::enumerate(sizeNames))
    sizes[sizeName] = block->getArgument(tensorShapes.size() + i);
  auto constant = [&](int64_t value) -> Value {
    return LLVM::ConstantOp::create(b, loc, i64, b.getI64IntegerAttr(value));
  };

  SmallVector<Value> operands;
  for (auto [i, shape] : llvm::enumerate(tensorShapes)) {
    Value base = block->getArgument(i);
    SmallVector<Value> dims;
    for (Attribute dim : shape) {
      auto lookup = [&](StringRef name) -> Value {
        auto it = sizes.find(name);
        return it == sizes.end() ? Value() : it->second;
      };
      if (auto sym = dyn_cast<StringAttr>(dim)) {
        Value size = lookup(sym.getValue());
        if (!size)
          return kernel.emitError()
                 << "unknown size '" << sym.getValue() << "' in a shape";
        dims.push_back(size);
      } else if (auto rule = dyn_cast<DictionaryAttr>(dim)) {
        // ceil(mul * symbol / by) + add, e.g. a block table's ceil(Sk / BS).
        auto sym = rule.getAs<StringAttr>("ceil_div");
        auto mul = rule.getAs<IntegerAttr>("mul");
        auto by = rule.getAs<IntegerAttr>("by");
        Value size = sym ? lookup(sym.getValue()) : Value();
        if (!size || !mul || !by || by.getInt() <= 0)
          return kernel.emitError() << "malformed size rule " << rule;
        Value scaled =
            LLVM::MulOp::create(b, loc, size, constant(mul.getInt()));
        Value dimSize = LLVM::UDivOp::create(
            b, loc,
            LLVM::AddOp::create(b, loc, scaled, constant(by.getInt() - 1)),
            constant(by.getInt()));
        // + add (cu_seqlens: B + 1 offsets).
        if (auto add = rule.getAs<IntegerAttr>("add"))
          dimSize =
              LLVM::AddOp::create(b, loc, dimSize, constant(add.getInt()));
        dims.push_back(dimSize);
      } else {
        dims.push_back(constant(cast<IntegerAttr>(dim).getInt()));
      }
    }
    // Row-major strides of a contiguous buffer.
    SmallVector<Value> strides(dims.size());
    Value stride = constant(1);
    for (int64_t d = static_cast<int64_t>(dims.size()) - 1; d >= 0; --d) {
      strides[d] = stride;
      stride = LLVM::MulOp::create(b, loc, stride, dims[d]);
    }
    operands.append({base, base, constant(0)});
    operands.append(dims.begin(), dims.end());
    operands.append(strides.begin(), strides.end());
  }
  LLVM::CallOp::create(b, loc, kernel, operands);
  LLVM::ReturnOp::create(b, loc, ValueRange{});
  return success();
}

struct DiffAttnEmitCEntryPointsPass
    : public diffattn::impl::DiffAttnEmitCEntryPointsBase<
          DiffAttnEmitCEntryPointsPass> {
  void runOnOperation() override {
    SmallVector<LLVM::LLVMFuncOp> functions =
        llvm::to_vector(getOperation().getOps<LLVM::LLVMFuncOp>());
    for (LLVM::LLVMFuncOp func : functions) {
      auto desc = func->getAttrOfType<DictionaryAttr>(kKernelAttrName);
      if (desc && failed(emitEntryPoint(func, desc)))
        return signalPassFailure();
    }
    // Only the entry points are exported; helpers the lowering generated
    // (e.g. dealloc_helper) stay inside the shared object.
    for (LLVM::LLVMFuncOp func : functions)
      if (!func.isExternal() && !func->hasAttr(kKernelAttrName))
        func.setLinkage(LLVM::Linkage::Internal);
  }
};

} // namespace
