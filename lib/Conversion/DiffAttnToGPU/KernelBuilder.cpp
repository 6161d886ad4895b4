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

Value GPUKernelBuilder::exp2Polynomial(Value x) {
  // Minimax (Lawson's iteration, relative error, 1 + c1 f + c2 f^2 + c3 f^3
  // with the constant term fixed at 1) of 2^f on [-1/2, 1/2], rounded to
  // f32; python/tests/test_exp2_polynomial.py reads these constants back
  // from the PTX and checks the error bound above.
  constexpr float c1 = 0x1.62f5fap-1f, c2 = 0x1.f00bfep-3f, c3 = 0x1.c2a15cp-5f;
  // 1.5 * 2^23: x + this rounds x to an integer, held in the low mantissa
  // bits, for |x| < 2^22.
  constexpr float roundingConstant = 12582912.0f;
  Type i32Type = b.getI32Type();
  // maximumf keeps NaN (maxnumf would turn it into -127, a probability 0).
  Value clamped = arith::MaximumFOp::create(b, loc, x, f32(-127.0f));
  Value shifted = fadd(clamped, f32(roundingConstant));
  Value whole = fsub(shifted, f32(roundingConstant));
  Value fraction = fsub(clamped, whole);
  Value p = fma(fraction, f32(c3), f32(c2));
  p = fma(fraction, p, f32(c1));
  p = fma(fraction, p, f32(1.0f));
  // 2^round(x): round(x) + 127 in the exponent field, from the low bits of
  // `shifted` (the constant's own bits shift out of the word); 0.0 at
  // x = -127, so the product is exactly 0 there. The product (not an
  // integer add into p's exponent) keeps a NaN x NaN.
  Value bits = arith::BitcastOp::create(b, loc, i32Type, shifted);
  Value power = arith::ShLIOp::create(
      b, loc, arith::AddIOp::create(b, loc, bits, i32(127)), i32(23));
  return fmul(p, arith::BitcastOp::create(b, loc, b.getF32Type(), power));
}

Value GPUKernelBuilder::divRemU32(Value x, Value d, bool remainder) {
  Type i32Type = b.getI32Type();
  Value x32 = arith::IndexCastUIOp::create(b, loc, i32Type, x);
  Value d32 = arith::IndexCastUIOp::create(b, loc, i32Type, d);
  Value result = remainder
                     ? arith::RemUIOp::create(b, loc, x32, d32).getResult()
                     : arith::DivUIOp::create(b, loc, x32, d32).getResult();
  return arith::IndexCastUIOp::create(b, loc, b.getIndexType(), result);
}

std::array<Value, 3> GPUKernelBuilder::blockIdsXSlowest() {
  auto id = [&](gpu::Dimension dim) {
    return gpu::BlockIdOp::create(b, loc, dim).getResult();
  };
  auto dimOf = [&](gpu::Dimension dim) {
    return gpu::GridDimOp::create(b, loc, dim).getResult();
  };
  Value linear =
      add(id(gpu::Dimension::x),
          mul(dimOf(gpu::Dimension::x),
              add(id(gpu::Dimension::y),
                  mul(dimOf(gpu::Dimension::y), id(gpu::Dimension::z)))));
  Value ys = dimOf(gpu::Dimension::y);
  Value yzs = mul(ys, dimOf(gpu::Dimension::z));
  Value within = divRemU32(linear, yzs, /*remainder=*/true);
  return {divRemU32(linear, yzs, /*remainder=*/false),
          divRemU32(within, ys, /*remainder=*/true),
          divRemU32(within, ys, /*remainder=*/false)};
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
