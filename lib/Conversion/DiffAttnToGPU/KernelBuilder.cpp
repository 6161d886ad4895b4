//===- KernelBuilder.cpp - GPU kernel builder helpers ---------------------===//
//
// The parts of GPUKernelBuilder (KernelBuilder.h) that every strategy's
// kernels share beyond scalar arithmetic: per-sequence device-side
// assertions, the packed sequences' ranges and cp.async tile copies.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"

#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;

void GPUKernelBuilder::assertPerSequence(Value ok, Value tid, StringRef message,
                                         Value reporter) {
  if (!reporter) {
    reporter = cmp(arith::CmpIPredicate::eq, tid, idx(0));
    for (gpu::Dimension dim : {gpu::Dimension::x, gpu::Dimension::y})
      reporter = arith::AndIOp::create(b, loc, reporter,
                                       cmp(arith::CmpIPredicate::eq,
                                           gpu::BlockIdOp::create(b, loc, dim),
                                           idx(0)));
  }
  Value silent = arith::XOrIOp::create(
      b, loc, reporter, arith::ConstantOp::create(b, loc, b.getBoolAttr(true)));
  cf::AssertOp::create(b, loc, arith::OrIOp::create(b, loc, ok, silent),
                       message);
}

std::pair<Value, Value>
GPUKernelBuilder::sequenceRange(Value cuSeqlens, Value batch, Value total,
                                Value maxLength, Value tid, Value reporter,
                                bool report) {
  auto load = [&](Value i) -> Value {
    return arith::IndexCastOp::create(
        b, loc, b.getIndexType(),
        memref::LoadOp::create(b, loc, cuSeqlens, ValueRange{i}));
  };
  Value start = load(batch), end = load(add(batch, idx(1)));
  // 0 <= start <= end <= total, or a device-side assertion (one thread
  // reports it, see assertPerSequence) and an empty sequence.
  Value ok = arith::AndIOp::create(
      b, loc,
      arith::AndIOp::create(b, loc,
                            cmp(arith::CmpIPredicate::sge, start, idx(0)),
                            cmp(arith::CmpIPredicate::sle, start, end)),
      arith::AndIOp::create(
          b, loc, cmp(arith::CmpIPredicate::sle, end, total),
          cmp(arith::CmpIPredicate::sle, sub(end, start), maxLength)));
  if (report)
    assertPerSequence(ok, tid,
                      "diffattn: cu_seqlens must be non-decreasing, end at "
                      "most at the packed length and hold no sequence longer "
                      "than max_seqlen",
                      reporter);
  return {select(ok, start, idx(0)), select(ok, sub(end, start), idx(0))};
}

void GPUKernelBuilder::copyTileAsync(
    Value src, function_ref<Value(Value)> rowStart, Value validRows, Value dst,
    function_ref<SmallVector<Value>(Value, Value)> dstIndex, int64_t rows,
    int64_t cols, Value thread, int64_t threads) {
  // 16-byte chunks, spread over the threads.
  int64_t chunksPerRow = cols / 8;
  int64_t chunks = rows * chunksPerRow;
  for (int64_t first = 0; first < chunks; first += threads) {
    Value chunk = add(thread, first);
    auto emitCopy = [&]() {
      Value row = div(chunk, chunksPerRow);
      Value col = mul(rem(chunk, chunksPerRow), 8);
      Value valid = cmp(arith::CmpIPredicate::slt, row, validRows);
      // Rows past the valid ones read nothing (zero-fill) from a valid
      // address.
      Value srcIndex = select(valid, add(rowStart(row), col), idx(0));
      Value srcElements = select(valid, idx(8), idx(0));
      SmallVector<Value> dstIndices = dstIndex(row, col);
      nvgpu::DeviceAsyncCopyOp::create(
          b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), dst, dstIndices, src,
          ValueRange{srcIndex}, b.getIndexAttr(8), srcElements,
          b.getUnitAttr());
    };
    if (first + threads <= chunks) {
      emitCopy();
    } else {
      auto inRange = cmp(arith::CmpIPredicate::ult, chunk, idx(chunks));
      scf::IfOp::create(b, loc, inRange, [&](OpBuilder &, Location) {
        emitCopy();
        scf::YieldOp::create(b, loc);
      });
    }
  }
}
