//===- KernelBuilder.cpp - GPU kernel builder helpers ---------------------===//
//
// The parts of GPUKernelBuilder (KernelBuilder.h) that every strategy's
// kernels share beyond scalar arithmetic: per-sequence device-side
// assertions and the packed sequences' ranges.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"

#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"

using namespace mlir;
using namespace mlir::diffattn;

void GPUKernelBuilder::assertPerSequence(Value ok, Value tid,
                                         StringRef message) {
  Value reporter = cmp(arith::CmpIPredicate::eq, tid, idx(0));
  for (gpu::Dimension dim : {gpu::Dimension::x, gpu::Dimension::y})
    reporter =
        arith::AndIOp::create(b, loc, reporter,
                              cmp(arith::CmpIPredicate::eq,
                                  gpu::BlockIdOp::create(b, loc, dim), idx(0)));
  Value silent = arith::XOrIOp::create(
      b, loc, reporter, arith::ConstantOp::create(b, loc, b.getBoolAttr(true)));
  cf::AssertOp::create(b, loc, arith::OrIOp::create(b, loc, ok, silent),
                       message);
}

std::pair<Value, Value>
GPUKernelBuilder::sequenceRange(Value cuSeqlens, Value batch, Value total,
                                Value maxLength, Value tid) {
  auto load = [&](Value i) -> Value {
    return arith::IndexCastOp::create(
        b, loc, b.getIndexType(),
        memref::LoadOp::create(b, loc, cuSeqlens, ValueRange{i}));
  };
  Value start = load(batch), end = load(add(batch, idx(1)));
  // 0 <= start <= end <= total, or a device-side assertion (one thread of
  // CTA (0, 0, b) reports it) and an empty sequence.
  Value ok = arith::AndIOp::create(
      b, loc,
      arith::AndIOp::create(b, loc,
                            cmp(arith::CmpIPredicate::sge, start, idx(0)),
                            cmp(arith::CmpIPredicate::sle, start, end)),
      arith::AndIOp::create(
          b, loc, cmp(arith::CmpIPredicate::sle, end, total),
          cmp(arith::CmpIPredicate::sle, sub(end, start), maxLength)));
  assertPerSequence(ok, tid,
                    "diffattn: cu_seqlens must be non-decreasing, end at most "
                    "at the packed length and hold no sequence longer than "
                    "max_seqlen (b = blockIdx.z)");
  return {select(ok, start, idx(0)), select(ok, sub(end, start), idx(0))};
}
