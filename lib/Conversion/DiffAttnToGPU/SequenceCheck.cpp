//===- SequenceCheck.cpp - the packed-sequence offsets check kernel -------===//
//
// One thread per sequence: the offsets checks of GPUKernelBuilder::
// sequenceRange on cu_seqlens_q and cu_seqlens_k (see SequenceCheck.h).
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/SequenceCheck.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelSignature.h"

#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;

gpu::GPUFuncOp mlir::diffattn::buildSequenceCheckKernel(OpBuilder &b,
                                                        Location loc,
                                                        StringRef name) {
  Type offsets = MemRefType::get({ShapedType::kDynamic}, b.getI32Type());
  Type index = b.getIndexType();
  gpu::GPUFuncOp func = createKernelFunc(
      b, loc, name, {offsets, offsets, index, index, index, index, index},
      kSequenceCheckThreads);
  OpBuilder::InsertionGuard guard(b);
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  GPUKernelBuilder kb(b, loc);
  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value batch = kb.add(kb.mul(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
                              kSequenceCheckThreads),
                       tid);
  Value batches = entry.getArgument(2);
  Value always = arith::ConstantOp::create(b, loc, b.getBoolAttr(true));
  scf::IfOp::create(
      b, loc, kb.cmp(arith::CmpIPredicate::ult, batch, batches),
      [&](OpBuilder &, Location) {
        // Sequence `batch` of the queries (max_seqlen Sq, total_q tokens)
        // and of the keys (Sk, total_k); every thread reports its own.
        kb.sequenceRange(entry.getArgument(0), batch, entry.getArgument(5),
                         entry.getArgument(3), tid, always);
        kb.sequenceRange(entry.getArgument(1), batch, entry.getArgument(6),
                         entry.getArgument(4), tid, always);
        scf::YieldOp::create(b, loc);
      });
  gpu::ReturnOp::create(b, loc);
  return func;
}
