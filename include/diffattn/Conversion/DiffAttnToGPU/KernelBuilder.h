//===- KernelBuilder.h - scalar IR helpers of GPU kernel builders -*- C++
//-*-===//
//
// GPUKernelBuilder: the builder, location and scalar helpers (index and f32
// arithmetic, comparisons, shuffles, exp2, views of dynamic shared memory)
// that every GPU strategy's kernel builder and the shared parts (online
// softmax, differential epilogue, split-KV combine) write their IR with.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_KERNELBUILDER_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_KERNELBUILDER_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Builders.h"

#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/SmallVector.h"

#include <array>
#include <cmath>
#include <limits>

namespace mlir::diffattn {

/// A 16x8 f32 accumulator tile as one thread holds it: c0, c1 (row g),
/// c2, c3 (row g + 8), g = lane / 4, at columns 2 (lane % 4) + {0, 1}. This
/// is the per-warp layout of an mma.sync m16n8 accumulator and of each
/// 8-column slice of a warp's 16 rows of a wgmma m64nN accumulator (PTX
/// ISA, "Matrix Fragments for mma.m16n8k16" and "wgmma .m64nNk16 register
/// fragment D").
using Acc = std::array<Value, 4>;

/// Scalar IR helpers over one OpBuilder and Location. All index arithmetic
/// is on `index` values; unsigned division and remainder (the operands are
/// never negative).
class GPUKernelBuilder {
public:
  GPUKernelBuilder(OpBuilder &b, Location loc)
      : b(b), loc(loc), ctx(b.getContext()) {}

  Value idx(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value f32(float v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value i32(int32_t v) {
    return arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(v));
  }
  /// A `shape` view of `elementType` at `byteOffset` of the kernel's dynamic
  /// shared memory (created once per kernel, at the first view).
  Value sharedView(int64_t byteOffset, ArrayRef<int64_t> shape,
                   Type elementType) {
    return sharedViewAt(idx(byteOffset), shape, elementType);
  }
  /// The same at a byte offset computed at run time.
  Value sharedViewAt(Value byteOffset, ArrayRef<int64_t> shape,
                     Type elementType) {
    auto wg = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
    return memref::ViewOp::create(
        b, loc,
        MemRefType::get(shape, elementType, MemRefLayoutAttrInterface(), wg),
        dynamicSharedMemory(), byteOffset, ValueRange{});
  }
  /// The kernel's dynamic shared memory as bytes (memref<?xi8, workgroup>),
  /// created at the first use.
  Value dynamicSharedMemory() {
    auto wg = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
    if (!smem)
      smem = gpu::DynamicSharedMemoryOp::create(
          b, loc,
          MemRefType::get({ShapedType::kDynamic}, b.getI8Type(),
                          MemRefLayoutAttrInterface(), wg));
    return smem;
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, loc, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, loc, x, y); }
  Value mul(Value x, int64_t y) { return mul(x, idx(y)); }
  Value add(Value x, int64_t y) { return add(x, idx(y)); }
  Value div(Value x, int64_t y) {
    return arith::DivUIOp::create(b, loc, x, idx(y));
  }
  Value rem(Value x, int64_t y) {
    return arith::RemUIOp::create(b, loc, x, idx(y));
  }
  Value minI(Value x, Value y) { return arith::MinSIOp::create(b, loc, x, y); }
  Value maxI(Value x, Value y) { return arith::MaxSIOp::create(b, loc, x, y); }
  Value cmp(arith::CmpIPredicate p, Value x, Value y) {
    return arith::CmpIOp::create(b, loc, p, x, y);
  }
  Value select(Value c, Value x, Value y) {
    return arith::SelectOp::create(b, loc, c, x, y);
  }
  /// An scf.if without results running `body` when `condition` holds.
  void ifThen(Value condition, function_ref<void()> body) {
    scf::IfOp::create(b, loc, condition, [&](OpBuilder &, Location) {
      body();
      scf::YieldOp::create(b, loc);
    });
  }
  /// The same with an else branch.
  void ifThenElse(Value condition, function_ref<void()> then,
                  function_ref<void()> otherwise) {
    scf::IfOp::create(
        b, loc, condition,
        [&](OpBuilder &, Location) {
          then();
          scf::YieldOp::create(b, loc);
        },
        [&](OpBuilder &, Location) {
          otherwise();
          scf::YieldOp::create(b, loc);
        });
  }
  Value fmax(Value x, Value y) {
    return arith::MaxNumFOp::create(b, loc, x, y);
  }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, loc, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, loc, x, y); }
  Value fsub(Value x, Value y) { return arith::SubFOp::create(b, loc, x, y); }
  /// -x (exact; ptxas folds it into the consuming FFMA's operand, where
  /// `0 - x` costs an FADD of its own).
  Value fneg(Value x) { return arith::NegFOp::create(b, loc, x); }
  /// x * y + z in one rounding (FFMA); `math.fma` would lower to a
  /// libdevice call.
  Value fma(Value x, Value y, Value z) {
    return LLVM::FMAOp::create(b, loc, x, y, z);
  }
  /// 2^x with the SFU's ex2.approx.ftz: `math.exp2` would lower to a
  /// libdevice call, which makes the PTX depend on finding libdevice.
  Value exp2(Value x) {
    return LLVM::CallIntrinsicOp::create(
               b, loc, b.getF32Type(),
               b.getStringAttr("llvm.nvvm.ex2.approx.ftz.f32"), ValueRange{x})
        .getResult(0);
  }
  /// 2^x for x <= 16 on the FMA and integer pipes instead of the SFU
  /// (FlashAttention-4's software exponential; KernelBuilder.cpp): x is
  /// clamped to -127 (where the result is exactly 0, so -inf gives 0),
  /// split into round(x) and a fraction in [-1/2, 1/2] by the
  /// 1.5 * 2^23 rounding constant, and 2^fraction, a degree-3 polynomial
  /// (relative error <= 1.1e-4 on [-126, 16]; exact at x = 0),
  /// multiplies 2^round(x), built in an exponent field. NaN stays NaN.
  /// About nine instructions, none on the SFU.
  Value exp2Polynomial(Value x);
  /// `x / d` (or `x % d`) of index values below 2^32 in 32-bit arithmetic:
  /// a 64-bit division is a call to a ~60-instruction routine.
  Value divRemU32(Value x, Value d, bool remainder);
  /// The CTA's grid coordinates {x, y, z} renumbered so that x counts
  /// slowest in launch order. The hardware launches CTA n = blockIdx.x +
  /// gridDim.x (blockIdx.y + gridDim.y blockIdx.z) n-th (x fastest); here
  /// CTA n gets x = n / (gridDim.y gridDim.z), y = n % gridDim.y and
  /// z = (n % (gridDim.y gridDim.z)) / gridDim.y, a bijection of the grid.
  /// A grid whose x orders each (head, sequence)'s CTAs longest first (the
  /// key blocks of a causal backward) then starts every sequence's longest
  /// CTAs in the first waves, not one sequence after another, and leaves
  /// the shortest for the last wave: without it, 13% of the SMs' cycles sat
  /// idle in the wgmma dk/dv kernel's last wave at 4 x 4096 causal (H200
  /// backward run 14), and the portable dk/dv kernel ran 1.11x slower there
  /// (backward run 53, docs/performance.md). 32-bit arithmetic (divRemU32).
  std::array<Value, 3> blockIdsXSlowest();
  /// blockIdsXSlowest() when `xSlowest`, else {blockIdx.x, .y, .z}.
  std::array<Value, 3> blockIds(bool xSlowest) {
    if (xSlowest)
      return blockIdsXSlowest();
    return {gpu::BlockIdOp::create(b, loc, gpu::Dimension::x).getResult(),
            gpu::BlockIdOp::create(b, loc, gpu::Dimension::y).getResult(),
            gpu::BlockIdOp::create(b, loc, gpu::Dimension::z).getResult()};
  }
  /// Rounds the f32 `x` to the element type of `buffer` and stores it at
  /// buffer[indices...] (one index per dimension).
  void storeAs(Value buffer, Value x, ValueRange indices) {
    Type elem = cast<MemRefType>(buffer.getType()).getElementType();
    if (elem != x.getType())
      x = arith::TruncFOp::create(b, loc, elem, x);
    memref::StoreOp::create(b, loc, x, buffer, indices);
  }
  /// Whether the kernel buffer `buffer` (a flat memref at offset 0, so its
  /// aligned pointer is its first element's) starts `bytes`-aligned (a
  /// power of two): the condition of a uniform branch between wide and
  /// element-wise stores.
  Value startsAligned(Value buffer, int64_t bytes) {
    Value address =
        memref::ExtractAlignedPointerAsIndexOp::create(b, loc, buffer);
    return cmp(arith::CmpIPredicate::eq,
               arith::AndIOp::create(b, loc, address, idx(bytes - 1)), idx(0));
  }
  /// Whether every non-null buffer of `buffers` starts `bytes`-aligned
  /// (e.g. out and, where the kernel has it, out_odd).
  Value startsAligned(ArrayRef<Value> buffers, int64_t bytes) {
    Value all;
    for (Value buffer : buffers) {
      if (!buffer)
        continue;
      Value aligned = startsAligned(buffer, bytes);
      all = all ? arith::AndIOp::create(b, loc, all, aligned) : aligned;
    }
    return all;
  }
  /// Stores the f32 pair (x, y), rounded to the element type of the 1-D
  /// `buffer`, at buffer[index] (index even: one 2-element vector store).
  void storePair(Value buffer, Value x, Value y, Value index) {
    Type elem = cast<MemRefType>(buffer.getType()).getElementType();
    Value pair = vector::FromElementsOp::create(
        b, loc, VectorType::get({2}, elem),
        ValueRange{arith::TruncFOp::create(b, loc, elem, x),
                   arith::TruncFOp::create(b, loc, elem, y)});
    vector::StoreOp::create(b, loc, pair, buffer, ValueRange{index});
  }
  /// -lse log2 e, or -inf for a row that saw no key (lse = -inf), so that
  /// exp2(s scale log2 e + shift) is 0 there, never NaN (the backward's
  /// probabilities from the forward's log-sum-exp).
  Value negLseShift(Value lse) {
    Value ninf = f32(-std::numeric_limits<float>::infinity());
    Value empty =
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, lse, ninf);
    return select(empty, ninf, fmul(lse, f32(-static_cast<float>(M_LOG2E))));
  }
  /// buffer[index] read as f32 (extended from a narrower float type).
  Value loadF32(Value buffer, Value index) {
    Value x = memref::LoadOp::create(b, loc, buffer, ValueRange{index});
    if (!x.getType().isF32())
      x = arith::ExtFOp::create(b, loc, b.getF32Type(), x);
    return x;
  }
  /// ln x with the SFU's lg2.approx (ln x = log2 x * ln 2; -inf at 0).
  Value logOf(Value x) {
    Value log2 = LLVM::CallIntrinsicOp::create(
                     b, loc, b.getF32Type(),
                     b.getStringAttr("llvm.nvvm.lg2.approx.f"), ValueRange{x})
                     .getResult(0);
    return fmul(log2, f32(static_cast<float>(M_LN2)));
  }
  Value shuffleXor(Value x, int32_t offset) {
    return gpu::ShuffleOp::create(b, loc, x, offset, 32, gpu::ShuffleMode::XOR)
        .getShuffleResult();
  }
  /// The softmax offset of a running max: the max, or 0 for a row that has
  /// seen no key (max -inf), so that exp2(-inf - 0) = 0, never NaN.
  Value safeOffset(Value max) {
    Value ninf = f32(-std::numeric_limits<float>::infinity());
    return select(
        arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, max, ninf),
        f32(0.0f), max);
  }
  /// -safeOffset(max) * scale * log2 e: a score x then weighs
  /// exp2(x * scale * log2 e + negShift(max, scale)).
  Value negShift(Value max, float scale) {
    return fmul(safeOffset(max), f32(-scale * static_cast<float>(M_LOG2E)));
  }
  /// max / sum over the four lanes (lane ^ 1, lane ^ 2) that hold one
  /// accumulator row.
  Value quadMax(Value x) {
    x = fmax(x, shuffleXor(x, 1));
    return fmax(x, shuffleXor(x, 2));
  }
  Value quadSum(Value x) {
    x = fadd(x, shuffleXor(x, 1));
    return fadd(x, shuffleXor(x, 2));
  }

  /// A device-side assertion of `ok`, reported (with `message`, which names
  /// the argument) by thread 0 of CTA (0, 0, b) only: one line per bad
  /// sequence b (the convention of PyTorch's device-side index errors:
  /// cf.assert, lowered to `__assertfail`; the stream reports
  /// CUDA_ERROR_ASSERT).
  /// `reporter` (i1), if given, replaces that rule: kernels whose CTAs
  /// walk linear tiles name the thread of the sequence's first tile.
  void assertPerSequence(Value ok, Value tid, StringRef message,
                         Value reporter = Value());
  /// Packed sequences (diffattn.v2_varlen): (first token, length) of
  /// sequence `batch` from `cuSeqlens` ([B + 1] i32 offsets into `total`
  /// tokens). Offsets that do not satisfy 0 <= start <= end <= total and
  /// end - start <= maxLength (the launch's max_seqlen) raise a device-side
  /// assertion (as kv_len does) and give an empty sequence.
  /// `reporter` as for assertPerSequence. With `report` false the kernel
  /// only clamps bad offsets to an empty sequence: a check kernel launched
  /// before it raises the assertion (SequenceCheck.h).
  std::pair<Value, Value> sequenceRange(Value cuSeqlens, Value batch,
                                        Value total, Value maxLength, Value tid,
                                        Value reporter = Value(),
                                        bool report = true);

  /// Issues cp.async copies (16-byte chunks, nvgpu.device_async_copy) of
  /// `rows` x `cols` 2-byte elements into the shared-memory tile `dst`: row
  /// r of the tile is `src[rowStart(r) ...]`, rows >= `validRows` are
  /// zero-filled; the chunk holding columns col .. col + 7 of row r goes to
  /// `dst[dstIndex(r, col)]` (the strategy's tile layout). The copies are
  /// spread over `threads` threads; this one is `thread`.
  void copyTileAsync(Value src, function_ref<Value(Value)> rowStart,
                     Value validRows, Value dst,
                     function_ref<SmallVector<Value>(Value, Value)> dstIndex,
                     int64_t rows, int64_t cols, Value thread, int64_t threads);

  OpBuilder &b;
  Location loc;
  MLIRContext *ctx;
  /// The kernel's dynamic shared memory (bytes), made by sharedView.
  Value smem;
};

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_KERNELBUILDER_H
