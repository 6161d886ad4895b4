//===- MmaSyncFragments.cpp - mma.sync strategy: fragments and copies -----===//
//
// The mma.sync strategy's data movement and products (see MmaSyncBuilder.h):
// cp.async tile copies (zero-filled past the valid rows, optionally with
// the L2::128B qualifier), tile indices in the padded or swizzled layout,
// ldmatrix fragments, mma.sync m16n8k16, and the scores S = Q Kᵀ of a key
// block.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBuilder.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

Value MmaSyncKernelBuilder::packOperand(Value pair) {
  // nvvm.mma.sync takes bf16 operands as i32 registers, f16 ones as
  // vector<2xf16>.
  if (plan.elementType.isF16())
    return pair;
  return LLVM::BitcastOp::create(b, loc, b.getI32Type(), pair);
}

Value MmaSyncKernelBuilder::packAccumulators(Value x, Value y) {
  auto pairType = VectorType::get({2}, plan.elementType);
  Value lo = arith::TruncFOp::create(b, loc, plan.elementType, x);
  Value hi = arith::TruncFOp::create(b, loc, plan.elementType, y);
  return packOperand(
      vector::FromElementsOp::create(b, loc, pairType, ValueRange{lo, hi}));
}

SmallVector<Value>
MmaSyncKernelBuilder::ldmatrix(Value smem, ValueRange indices, bool transpose) {
  auto type = VectorType::get({4, 2}, plan.elementType);
  Value frag = nvgpu::LdMatrixOp::create(b, loc, type, smem, indices,
                                         b.getBoolAttr(transpose),
                                         b.getI32IntegerAttr(4));
  SmallVector<Value> regs;
  for (int64_t i = 0; i < 4; ++i)
    regs.push_back(
        packOperand(vector::ExtractOp::create(b, loc, frag, i).getResult()));
  return regs;
}

Acc MmaSyncKernelBuilder::mma(ArrayRef<Value> a, ArrayRef<Value> bReg,
                              const Acc &c) {
  Type f32 = b.getF32Type();
  auto resultType = LLVM::LLVMStructType::getLiteral(ctx, {f32, f32, f32, f32});
  NVVM::MMATypes ptxType =
      plan.elementType.isF16() ? NVVM::MMATypes::f16 : NVVM::MMATypes::bf16;
  Value d = NVVM::MmaOp::create(
      b, loc, resultType, a, bReg, ValueRange(c), {16, 8, 16},
      /*b1Op=*/std::nullopt, /*intOverflow=*/std::nullopt,
      std::array<NVVM::MMATypes, 2>{ptxType, ptxType},
      std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                     NVVM::MMALayout::col});
  Acc r;
  for (int64_t i = 0; i < 4; ++i)
    r[i] = LLVM::ExtractValueOp::create(b, loc, d, i);
  return r;
}

void MmaSyncKernelBuilder::copyChunkWithL2Prefetch(Value src, Value srcIndex,
                                                   Value dst,
                                                   ValueRange dstIndices) {
  // cp.async's L2::128B qualifier (the 128-byte line around the chunk may
  // be fetched into L2 at once) has no op in the NVVM dialect: inline PTX,
  // on pointers made from the buffers' aligned pointers.
  auto dstType = cast<MemRefType>(dst.getType());
  Value linear = idx(0);
  for (auto [index, size] : llvm::zip(dstIndices, dstType.getShape()))
    linear = add(mul(linear, size), index);
  auto pointerOf = [&](Value memref, Value element, unsigned space) {
    Value base = memref::ExtractAlignedPointerAsIndexOp::create(b, loc, memref);
    Value address = arith::IndexCastOp::create(
        b, loc, b.getI64Type(),
        add(base, mul(element, plan.elementType.getIntOrFloatBitWidth() / 8)));
    return LLVM::IntToPtrOp::create(
        b, loc, LLVM::LLVMPointerType::get(ctx, space), address);
  };
  Value dstPtr = pointerOf(dst, linear, /*shared=*/3);
  Value srcPtr = pointerOf(src, srcIndex, /*global=*/1);
  NVVM::InlinePtxOp::create(
      b, loc, TypeRange{}, ValueRange{dstPtr, srcPtr}, ValueRange{},
      "cp.async.cg.shared.global.L2::128B [$0], [$1], 16;", Value());
}

void MmaSyncKernelBuilder::copyRowsAsync(Value src, Value base,
                                         int64_t rowStride, Value validRows,
                                         Value dst, ValueRange dstLead,
                                         int64_t rows, int64_t cols,
                                         Value thread, int64_t threads) {
  // Thread t copies the 16-byte chunk (t % chunksPerRow) of the rows
  // t / chunksPerRow + i * rowsPerStep: one address per thread, then
  // constant offsets.
  int64_t chunksPerRow = cols / 8;
  int64_t chunks = rows * chunksPerRow;
  assert(threads % chunksPerRow == 0 && "threads must cover whole rows");
  int64_t rowsPerStep = threads / chunksPerRow;
  Value laneRow = div(thread, chunksPerRow);
  Value laneCol = mul(rem(thread, chunksPerRow), 8);
  Value laneSrc = add(add(base, mul(laneRow, rowStride)), laneCol);
  auto emitCopies = [&](bool zeroFill) {
    for (int64_t first = 0, step = 0; first < chunks;
         first += threads, ++step) {
      auto emitCopy = [&] {
        Value row = add(laneRow, step * rowsPerStep);
        Value srcIndex = add(laneSrc, step * rowsPerStep * rowStride);
        Value srcElements = idx(8);
        if (zeroFill) {
          // Rows past the valid ones read nothing from a valid address.
          Value valid = cmp(arith::CmpIPredicate::slt, row, validRows);
          srcIndex = select(valid, srcIndex, idx(0));
          srcElements = select(valid, srcElements, idx(0));
        }
        SmallVector<Value> dstIndices = tileIndex(dstLead, row, laneCol);
        if (!zeroFill && plan.l2Prefetch) {
          copyChunkWithL2Prefetch(src, srcIndex, dst, dstIndices);
          return;
        }
        nvgpu::DeviceAsyncCopyOp::create(
            b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), dst, dstIndices, src,
            ValueRange{srcIndex}, b.getIndexAttr(8),
            zeroFill ? srcElements : Value(), b.getUnitAttr());
      };
      if (first + threads <= chunks) {
        emitCopy();
        continue;
      }
      Value inRange =
          cmp(arith::CmpIPredicate::ult, add(thread, first), idx(chunks));
      scf::IfOp::create(b, loc, inRange, [&](OpBuilder &, Location) {
        emitCopy();
        scf::YieldOp::create(b, loc);
      });
    }
  };
  // Whole tiles (all but the last of a sequence) need no zero-fill.
  scf::IfOp::create(
      b, loc, cmp(arith::CmpIPredicate::sge, validRows, idx(rows)),
      [&](OpBuilder &, Location) {
        emitCopies(false);
        scf::YieldOp::create(b, loc);
      },
      [&](OpBuilder &, Location) {
        emitCopies(true);
        scf::YieldOp::create(b, loc);
      });
}

SmallVector<Value> MmaSyncKernelBuilder::tileIndex(ValueRange lead, Value row,
                                                   Value col,
                                                   int64_t constCol) {
  auto plus = [&](Value v, int64_t c) { return c ? add(v, c) : v; };
  SmallVector<Value> indices(lead);
  if (!plan.swizzle) {
    indices.append({row, plus(col, constCol)});
    return indices;
  }
  // The XOR touches the column bits below kSwizzleSpan only; the part of
  // constCol above them stays a constant offset.
  int64_t inSpan = constCol % kSwizzleSpan;
  Value rowMod = arith::AndIOp::create(b, loc, row, idx(kSwizzleRows - 1));
  Value swizzled = arith::XOrIOp::create(b, loc, plus(col, inSpan),
                                         mul(rowMod, kChunkElements));
  indices.append({row, plus(swizzled, constCol - inSpan)});
  return indices;
}

void MmaSyncKernelBuilder::loadQFragments() {
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value qRow = add(add(qRow0, l8), mul(rem(g8, 2), 8));
  Value qColLane = mul(div(lane, 16), 8);
  qFrags.assign(plan.headsPerRow, {});
  for (int64_t h = 0; h < plan.headsPerRow; ++h)
    for (int64_t kk = 0; kk < plan.headDim / 16; ++kk)
      qFrags[h].push_back(
          ldmatrix(sQ, tileIndex(idx(h), qRow, qColLane, kk * 16), false));
}

MmaSyncKernelBuilder::Scores
MmaSyncKernelBuilder::scoreBlock(ValueRange kvLead) {
  int64_t keyTiles = plan.blockK / 8;
  int64_t d = plan.headDim;
  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Scores s = {SmallVector<Acc>(keyTiles, zeroAcc()),
              SmallVector<Acc>(keyTiles, zeroAcc())};
  Value qRow = add(add(qRow0, l8), mul(rem(g8, 2), 8));
  Value qColLane = mul(div(lane, 16), 8);
  Value kRowLane = add(l8, mul(div(lane, 16), 8));
  Value kColLane = mul(rem(g8, 2), 8);
  // Split-KV warps wait on memory, not on the tensor cores: there the D/16
  // dependent products of a score tile go to two accumulator chains (even
  // and odd kk), which halves the latency from the block's data to its
  // scores. Row blocks (at 255 registers) keep one chain.
  int64_t chains = plan.splitKV ? 2 : 1;
  SmallVector<Scores> parts(chains, s);
  for (int64_t kk = 0; kk < d / 16; ++kk) {
    Scores &acc = parts[kk % chains];
    std::array<SmallVector<Value>, 2> a;
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      a[h] =
          qFrags.empty()
              ? ldmatrix(sQ, tileIndex(idx(h), qRow, qColLane, kk * 16), false)
              : qFrags[h][kk];
    for (int64_t np = 0; np < keyTiles / 2; ++np) {
      SmallVector<Value> kr = ldmatrix(
          sK, tileIndex(kvLead, add(kRowLane, np * 16), kColLane, kk * 16),
          false);
      for (int64_t h = 0; h < plan.headsPerRow; ++h) {
        acc[h][2 * np] = mma(a[h], {kr[0], kr[1]}, acc[h][2 * np]);
        acc[h][2 * np + 1] = mma(a[h], {kr[2], kr[3]}, acc[h][2 * np + 1]);
      }
    }
  }
  s = parts[0];
  for (int64_t c = 1; c < chains; ++c)
    for (int64_t h = 0; h < plan.headsPerRow; ++h)
      for (int64_t nt = 0; nt < keyTiles; ++nt)
        for (int64_t e = 0; e < 4; ++e)
          s[h][nt][e] = fadd(s[h][nt][e], parts[c][h][nt][e]);
  return s;
}
