//===- WgmmaFragments.cpp - wgmma strategy: tiles, descriptors, products --===//
//
// The wgmma strategy's shared-memory tiles in the 128-byte swizzled layout,
// their cp.async copies, wgmma matrix descriptors, and the two products of
// a key block (see WgmmaBuilder.h). Sources: PTX ISA 8.0, "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate Instructions": "Shared Memory
// Matrix Layout" (canonical K-major and MN-major layouts, 128B swizzling),
// "Matrix Descriptor Format" (start address, leading and stride byte
// offsets, swizzle mode in bits 62-63) and "Register Fragments" (A of
// m64nNk16 from registers, D of m64nN).
//
//===----------------------------------------------------------------------===//

#include "WgmmaBuilder.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

void WgmmaKernelBuilder::alignSharedBase() {
  // The swizzle atoms must start 1024-byte aligned (the descriptors' base
  // offset field stays 0): align the tiles' start at run time, from the
  // shared-window address of dynamic shared memory (the plan reserves the
  // 1024 bytes this may skip).
  Value smemBuffer = dynamicSharedMemory();
  Value address =
      memref::ExtractAlignedPointerAsIndexOp::create(b, loc, smemBuffer);
  base = rem(sub(idx(kAtomBytes), rem(address, kAtomBytes)), kAtomBytes);
  baseAddress =
      arith::IndexCastOp::create(b, loc, b.getI64Type(), add(address, base));
}

void WgmmaKernelBuilder::layoutSharedMemory() {
  alignSharedBase();
  Type elem = plan.elementType;
  int64_t dSpans = plan.headDim / kSpan, vSpans = plan.valueDim / kSpan;
  sQ = sharedViewAt(base, {2 * plan.qBuffers, dSpans, kWarpgroupRows, kSpan},
                    elem);
  qSlot = idx(0);
  sK = sharedViewAt(add(base, plan.qTileBytes),
                    {plan.stages, dSpans, plan.blockK, kSpan}, elem);
  sV = sharedViewAt(add(base, plan.qTileBytes + plan.kTileBytes),
                    {plan.stages, vSpans, plan.blockK, kSpan}, elem);
}

Value WgmmaKernelBuilder::sharedPointer(Value offset) {
  Value address = arith::AddIOp::create(
      b, loc, baseAddress,
      arith::IndexCastOp::create(b, loc, b.getI64Type(), offset));
  return LLVM::IntToPtrOp::create(
      b, loc, LLVM::LLVMPointerType::get(ctx, /*shared=*/3), address);
}

void WgmmaKernelBuilder::fenceAsyncProxy() {
  NVVM::FenceProxyOp::create(
      b, loc, NVVM::ProxyKindAttr::get(ctx, NVVM::ProxyKind::async_shared),
      NVVM::SharedSpaceAttr::get(ctx, NVVM::SharedSpace::shared_cta));
}

void WgmmaKernelBuilder::expectBytes(Value bar, int64_t bytes) {
  NVVM::MBarrierArriveExpectTxOp::create(b, loc, Type(), bar, i32(bytes),
                                         NVVM::MemScopeKind::CTA,
                                         /*relaxed=*/false, Value());
}

void WgmmaKernelBuilder::releaseStage(Value bar, bool afterGenericAccesses) {
  // A cluster kernel's stage is also the other CTA's producer's: it waits
  // for both CTAs' consumers (its init count is doubled).
  auto arrive = [&] {
    NVVM::MBarrierArriveOp::create(b, loc, Type(), bar, Value());
    // Release at CTA scope, as CUTLASS's ClusterBarrier::arrive(cta_id):
    // what it orders are this warpgroup's wgmma reads of the stage,
    // complete at the wgmma.wait_group before it.
    if (plan.clusterSize > 1)
      arriveOnPeer(bar, /*clusterScope=*/false);
  };
  if (plan.releaseArrivals == ReleaseArrivals::Thread)
    return arrive();
  bool perWarp = plan.releaseArrivals == ReleaseArrivals::Warp;
  if (afterGenericAccesses) {
    if (perWarp)
      NVVM::SyncWarpOp::create(b, loc, i32(-1));
    else
      NVVM::BarrierOp::create(b, loc, Type(), i32(kConsumerBarrier),
                              i32(2 * kWarpgroupThreads), nullptr, Value());
  }
  Value elected = cmp(arith::CmpIPredicate::eq, lane, idx(0));
  if (!perWarp)
    elected = arith::AndIOp::create(
        b, loc, elected, cmp(arith::CmpIPredicate::eq, warpInGroup, idx(0)));
  ifThen(elected, arrive);
}

void WgmmaKernelBuilder::loadTensorTile(
    Value map, Value shared, function_ref<SmallVector<Value>()> coordinates,
    Value bar, Value multicastMask) {
  Value cluster = LLVM::AddrSpaceCastOp::create(
      b, loc, LLVM::LLVMPointerType::get(ctx, /*shared::cluster=*/7), shared);
  NVVM::CpAsyncBulkTensorGlobalToSharedClusterOp::create(
      b, loc, cluster, map, coordinates(), bar, ValueRange{}, multicastMask,
      Value(), NVVM::TMALoadMode::TILE, /*isCTAOnly=*/false,
      NVVM::CTAGroupKindAttr(), Value());
}

void WgmmaKernelBuilder::loadKeyValueTile(Value map, Value tileOffset,
                                          int64_t dim, Value key0, Value bar) {
  const AttentionConfig &attn = plan.attn;
  int64_t blockK = plan.blockK;
  auto i32Of = [&](Value v) {
    return arith::IndexCastOp::create(b, loc, b.getI32Type(), v).getResult();
  };
  // A cluster kernel's CTA r loads keys r * block-k/2 .. of the tile (its
  // map's box has block-k/2 rows; 64 rows keep the swizzle's 1 KiB period)
  // into both CTAs (multicast mask 0b11); each CTA's barrier expects the
  // whole tile.
  Value multicast, halfOffset, first = key0;
  if (plan.clusterSize > 1) {
    multicast = arith::ConstantOp::create(
        b, loc, b.getI16IntegerAttr((1 << plan.clusterSize) - 1));
    Value halfKeys = mul(clusterRank, blockK / plan.clusterSize);
    halfOffset = mul(halfKeys, kRowBytes);
    first = add(key0, halfKeys);
  }
  expectBytes(bar, blockK * dim * 2);
  for (int64_t span = 0; span < dim / kSpan; ++span) {
    Value offset = add(tileOffset, span * blockK * kRowBytes);
    loadTensorTile(
        map, sharedPointer(halfOffset ? add(offset, halfOffset) : offset),
        [&]() -> SmallVector<Value> {
          return {i32(span * kSpan), i32Of(tile.kvHead),
                  i32Of(attn.varlen ? add(tile.kRowBase, first) : first),
                  attn.varlen ? i32(0) : i32Of(tile.batch)};
        },
        bar, multicast);
  }
}

Value WgmmaKernelBuilder::peerPointer(Value ptr) {
  Value peer = arith::XOrIOp::create(
      b, loc, arith::IndexCastOp::create(b, loc, b.getI32Type(), clusterRank),
      i32(1));
  return NVVM::MapaOp::create(
      b, loc, LLVM::LLVMPointerType::get(ctx, /*shared::cluster=*/7), ptr,
      peer);
}

void WgmmaKernelBuilder::arriveOnPeer(Value bar, bool clusterScope) {
  NVVM::MBarrierArriveOp::create(b, loc, Type(), peerPointer(bar), Value(),
                                 clusterScope ? NVVM::MemScopeKind::CLUSTER
                                              : NVVM::MemScopeKind::CTA,
                                 /*relaxed=*/false);
}

std::pair<Value, Value> WgmmaKernelBuilder::ctaGroupRows(Value seqQ) {
  if (plan.clusterSize == 1)
    return {idx(0), mul(seqQ, plan.rowsPerQuery)};
  Value half = mul(seqQ, plan.rowsPerQuery / plan.clusterSize);
  Value start = mul(clusterRank, half);
  return {start, add(start, half)};
}

void WgmmaKernelBuilder::prefetchTileQ(Value q, Value t, Value numTiles,
                                       Value tileRowBlocks, Value seqQ,
                                       Value thread) {
  const AttentionConfig &attn = plan.attn;
  ifThen(cmp(arith::CmpIPredicate::ult, t, numTiles), [&] {
    Value rest = arith::DivUIOp::create(b, loc, t, tileRowBlocks);
    Value qBlock = arith::RemUIOp::create(b, loc, t, tileRowBlocks);
    if (attn.isCausalLike())
      qBlock = sub(sub(tileRowBlocks, idx(1)), qBlock);
    Value row = add(mul(qBlock, plan.blockQ), div(thread, 2));
    // A cluster kernel's tile is a row block of the CTA's half of the rows.
    auto [rowStart, rowEnd] = ctaGroupRows(seqQ);
    if (plan.clusterSize > 1)
      row = add(rowStart, row);
    ifThen(cmp(arith::CmpIPredicate::ult, row, rowEnd), [&] {
      Value pair = add(mul(rem(rest, plan.kvHeads), plan.pairsPerGroup()),
                       divRemU32(row, seqQ, false));
      Value token =
          add(mul(div(rest, plan.kvHeads), seqQ), divRemU32(row, seqQ, true));
      Value head = add(mul(pair, 2), rem(thread, 2));
      Value element = mul(add(mul(token, plan.queryHeads), head), plan.headDim);
      Value base = memref::ExtractAlignedPointerAsIndexOp::create(b, loc, q);
      Value address = arith::IndexCastOp::create(b, loc, b.getI64Type(),
                                                 add(base, mul(element, 2)));
      for (int64_t line = 0; line < plan.headDim * 2 / 128; ++line) {
        Value ptr = LLVM::IntToPtrOp::create(
            b, loc, LLVM::LLVMPointerType::get(ctx),
            arith::AddIOp::create(
                b, loc, address,
                arith::ConstantIntOp::create(b, loc, line * 128, 64))
                .getResult());
        NVVM::PrefetchOp::create(b, loc,
                                 NVVM::PrefetchCacheLevelAttr::get(
                                     ctx, NVVM::PrefetchCacheLevel::L2),
                                 NVVM::CacheEvictionPriorityAttr(), ptr,
                                 Value(), UnitAttr());
      }
    });
  });
}

SmallVector<Value> WgmmaKernelBuilder::swizzledIndex(ValueRange lead, Value row,
                                                     Value col) {
  // Chunk c (8 elements) of a 128-byte row r sits at chunk c ^ (r % 8).
  Value rowMod = arith::AndIOp::create(b, loc, row, idx(7));
  Value inSpan = arith::XOrIOp::create(b, loc, rem(col, kSpan), mul(rowMod, 8));
  SmallVector<Value> indices(lead);
  indices.append({div(col, kSpan), row, inSpan});
  return indices;
}

void WgmmaKernelBuilder::copyRows(Value src, Value base, int64_t rowStride,
                                  Value validRows, Value dst,
                                  ValueRange dstLead, int64_t rows,
                                  int64_t cols, Value thread, int64_t threads,
                                  int64_t dstRow) {
  assert(dstRow % 8 == 0 && "the swizzle phase is the row's within the tile");
  // Thread t copies chunk t % chunksPerRow of rows t / chunksPerRow + i *
  // rowsPerStep: a loop whose addresses move by constants (the row's
  // swizzle, r % 8, stays the thread's own), so that a producer with few
  // registers keeps one source and one destination address.
  int64_t chunksPerRow = cols / 8;
  int64_t rowsPerStep = threads / chunksPerRow;
  Value laneRow = div(thread, chunksPerRow);
  Value col = mul(rem(thread, chunksPerRow), 8);
  Value laneSrc = add(add(base, mul(laneRow, rowStride)), col);
  scf::ForOp::create(
      b, loc, idx(0), idx(rows / rowsPerStep), idx(1), ValueRange{},
      [&](OpBuilder &, Location, Value step, ValueRange) {
        Value row = add(laneRow, mul(step, rowsPerStep));
        Value valid = cmp(arith::CmpIPredicate::slt, row, validRows);
        // Rows past the valid ones read nothing (zero-fill) from a valid
        // address.
        Value srcIndex = select(
            valid, add(laneSrc, mul(step, rowsPerStep * rowStride)), idx(0));
        nvgpu::DeviceAsyncCopyOp::create(
            b, loc, nvgpu::DeviceAsyncTokenType::get(ctx), dst,
            swizzledIndex(dstLead, add(row, idx(dstRow)), col), src,
            ValueRange{srcIndex}, b.getIndexAttr(8),
            select(valid, idx(8), idx(0)), b.getUnitAttr());
        scf::YieldOp::create(b, loc);
      });
}

Value WgmmaKernelBuilder::descriptorLow(Value offset, int64_t lbo) {
  // Bits 0-13: start address >> 4; 16-29: leading byte offset >> 4. The
  // shared window is below 256 KiB, so the address field never spills into
  // bit 14 (advanceDescriptor relies on it). 32-bit arithmetic: the low
  // word is all that varies between descriptors. In a cluster kernel a
  // shared address also carries the CTA's rank in the cluster (bits 24 and
  // up, as ptxas forms them): masked to the 18 bits of the CTA's window,
  // else rank 1's would spill into the leading byte offset.
  Type i32 = b.getI32Type();
  Value address = arith::AddIOp::create(
      b, loc, arith::TruncIOp::create(b, loc, i32, baseAddress),
      arith::IndexCastOp::create(b, loc, i32, offset));
  if (plan.clusterSize > 1)
    address = arith::AndIOp::create(b, loc, address, i32Const((1 << 18) - 1));
  Value field = arith::ShRUIOp::create(b, loc, address, i32Const(4));
  return arith::OrIOp::create(b, loc, field, i32Const((lbo >> 4) << 16));
}

Value WgmmaKernelBuilder::packDescriptor(Value low, int64_t sbo) {
  // Bits 32-45: stride byte offset >> 4; 49-51: base offset (0: atoms
  // 1024-byte aligned); 62-63: swizzle mode (1: 128-byte). A constant high
  // word.
  Type i64 = b.getI64Type();
  int64_t high = (sbo >> 4) | (int64_t(1) << 30);
  return arith::OrIOp::create(
      b, loc, arith::ExtUIOp::create(b, loc, i64, low),
      arith::ConstantOp::create(b, loc, b.getI64IntegerAttr(high << 32)));
}

Value WgmmaKernelBuilder::packPair(Value x, Value y) {
  Value lo = arith::TruncFOp::create(b, loc, plan.elementType, x);
  Value hi = arith::TruncFOp::create(b, loc, plan.elementType, y);
  Value pair = vector::FromElementsOp::create(
      b, loc, VectorType::get({2}, plan.elementType), ValueRange{lo, hi});
  return LLVM::BitcastOp::create(b, loc, b.getI32Type(), pair);
}

Value WgmmaKernelBuilder::advanceDescriptor(Value low, int64_t bytes) {
  // The start address field holds address >> 4: moving by a multiple of 16
  // bytes is an add to the low word.
  return arith::AddIOp::create(b, loc, low, i32Const(bytes / 16));
}

Value WgmmaKernelBuilder::stageDescriptorLow(Value tileOffset, Value stage,
                                             int64_t stageBytes, int64_t lbo) {
  Value stage32 = arith::IndexCastOp::create(b, loc, b.getI32Type(), stage);
  return arith::AddIOp::create(
      b, loc, descriptorLow(tileOffset, lbo),
      arith::MulIOp::create(b, loc, stage32, i32Const(stageBytes / 16)));
}

SmallVector<Value> WgmmaKernelBuilder::scoreDescriptors(Value stage) {
  // The warpgroup's head of the pair: Q tile `pairHead` of buffer qSlot.
  Value qOffset =
      mul(add(mul(qSlot, 2), pairHead), plan.headDim * kWarpgroupRows * 2);
  // K-major operands, 128-byte swizzle: 8-row groups 1024 bytes apart (the
  // stride byte offset); the leading byte offset is unused (1). A k16 step
  // is 32 bytes into the span's rows; spans are whole tiles apart. Stage 0's
  // descriptor (loop-invariant) moved by adds: a few integer instructions
  // per block instead of a mask and shift per step.
  Value q0 = descriptorLow(qOffset, 16);
  Value k0 =
      stageDescriptorLow(idx(plan.qTileBytes), stage, plan.kStageBytes(), 16);
  SmallVector<Value> descriptors;
  for (int64_t kk = 0; kk < plan.headDim / 16; ++kk) {
    int64_t span = kk / (kSpan / 16), within = (kk % (kSpan / 16)) * 32;
    descriptors.push_back(packDescriptor(
        advanceDescriptor(q0, span * kWarpgroupRows * kRowBytes + within),
        kAtomBytes));
    descriptors.push_back(packDescriptor(
        advanceDescriptor(k0, span * plan.blockK * kRowBytes + within),
        kAtomBytes));
  }
  return descriptors;
}

/// A product's descriptors as few 64-bit base operands and per-descriptor
/// constant offsets (16-byte units): descriptor i is bases[base[i]] +
/// offset[i] when it was built as packDescriptor(advanceDescriptor(low,
/// bytes)) from a low word shared with others. Passing the bases and
/// adding the offsets in the product's PTX keeps one live register pair
/// per base instead of one per k16 step (LLVM hoists the loop-invariant
/// descriptors out of the key loop, and ptxas then moves each from
/// general to uniform registers, R2UR, before its wgmma).
struct SplitDescriptors {
  SmallVector<Value> bases;
  SmallVector<int64_t> base, offset;
};

static SplitDescriptors splitDescriptors(OpBuilder &b, Location loc,
                                         ArrayRef<Value> descriptors) {
  SplitDescriptors split;
  // (low word, high word) of each base.
  SmallVector<std::pair<Value, int64_t>> keys;
  for (Value d : descriptors) {
    Value low;
    int64_t high = 0, add = 0;
    auto orOp = d.getDefiningOp<arith::OrIOp>();
    auto ext =
        orOp ? orOp.getLhs().getDefiningOp<arith::ExtUIOp>() : arith::ExtUIOp();
    auto highConst = orOp ? orOp.getRhs().getDefiningOp<arith::ConstantOp>()
                          : arith::ConstantOp();
    if (ext && highConst) {
      high = cast<IntegerAttr>(highConst.getValue()).getInt();
      low = ext.getIn();
      if (auto addOp = low.getDefiningOp<arith::AddIOp>())
        if (auto c = addOp.getRhs().getDefiningOp<arith::ConstantOp>()) {
          add = cast<IntegerAttr>(c.getValue()).getInt();
          low = addOp.getLhs();
        }
    }
    if (!low) {
      // Not a built descriptor: an operand of its own.
      split.base.push_back(split.bases.size());
      split.offset.push_back(0);
      split.bases.push_back(d);
      keys.push_back({Value(), 0});
      continue;
    }
    auto it = llvm::find(keys, std::make_pair(low, high));
    int64_t index = it - keys.begin();
    if (it == keys.end()) {
      keys.push_back({low, high});
      Type i64 = b.getI64Type();
      split.bases.push_back(arith::OrIOp::create(
          b, loc, arith::ExtUIOp::create(b, loc, i64, low),
          arith::ConstantOp::create(b, loc, b.getI64IntegerAttr(high))));
    }
    split.base.push_back(index);
    split.offset.push_back(add);
  }
  return split;
}

/// The PTX operand of descriptor `i` of `split` whose bases are operands
/// `firstOperand` on: the base itself, or a scratch register %wgdI that
/// `setup` gets an add.s64 for.
static std::string descriptorOperand(const SplitDescriptors &split, size_t i,
                                     int64_t firstOperand, std::string &setup) {
  std::string base = "$" + std::to_string(firstOperand + split.base[i]);
  if (split.offset[i] == 0)
    return base;
  std::string name = "%wgd" + std::to_string(i);
  setup += "add.s64 " + name + ", " + base + ", " +
           std::to_string(split.offset[i]) + ";\n";
  return name;
}

/// The PTX block's scratch declarations for `split`.
static std::string descriptorScratch(const SplitDescriptors &split) {
  return "{\n.reg .b64 %wgd<" + std::to_string(split.base.size()) + ">;\n";
}

Value WgmmaKernelBuilder::issueScores(ArrayRef<Value> descriptors) {
  return issueSharedProduct(descriptors, plan.blockK);
}

Value WgmmaKernelBuilder::issueSharedProduct(ArrayRef<Value> descriptors,
                                             int64_t n, bool transposeA,
                                             bool transposeB) {
  int64_t values = n / 2, steps = descriptors.size() / 2;
  auto structType = LLVM::LLVMStructType::getLiteral(
      ctx, SmallVector<Type>(values, b.getF32Type()));
  // nvvm.wgmma.mma_async expresses this product, but MLIR 22 lowers it to
  // one asm statement per instruction that sets its scale-d predicate with
  // a setp: a non-wgmma instruction defining a wgmma input inside the
  // pipeline stage, for which ptxas serialises the kernel's wgmma (C7513).
  // Inline PTX with immediate scale-d (0 for the first k16 step: S starts
  // from zero), one statement for the block: $0 .. $(values - 1) the
  // accumulators (written), then A and B descriptors per step.
  auto reg = [](int64_t i) { return "$" + std::to_string(i); };
  std::string accRegs;
  for (int64_t i = 0; i < values; ++i)
    accRegs += (i ? ", " : "") + reg(i);
  SplitDescriptors split = splitDescriptors(b, loc, descriptors);
  std::string ptx = descriptorScratch(split);
  for (int64_t kk = 0; kk < steps; ++kk) {
    std::string a = descriptorOperand(split, 2 * kk, values, ptx);
    std::string bDesc = descriptorOperand(split, 2 * kk + 1, values, ptx);
    ptx += "wgmma.mma_async.sync.aligned.m64n" + std::to_string(n) +
           "k16.f32." + (plan.elementType.isF16() ? "f16.f16" : "bf16.bf16") +
           " {" + accRegs + "}, " + a + ", " + bDesc + ", " +
           (kk == 0 ? "0" : "1") + ", 1, 1, " + (transposeA ? "1" : "0") +
           ", " + (transposeB ? "1" : "0") + ";\n";
  }
  ptx += "}\n";
  std::string constraints;
  for (int64_t i = 0; i < values; ++i)
    constraints += "=f,";
  for (size_t i = 0; i < split.bases.size(); ++i)
    constraints += (i ? ",l" : "l");
  return LLVM::InlineAsmOp::create(
             b, loc, structType, split.bases, ptx, constraints,
             /*has_side_effects=*/true, /*is_align_stack=*/false,
             LLVM::tailcallkind::TailCallKind::None,
             LLVM::AsmDialectAttr::get(ctx, LLVM::AsmDialect::AD_ATT),
             /*operand_attrs=*/ArrayAttr())
      .getResult(0);
}

SmallVector<Value> WgmmaKernelBuilder::fenceOperands(ValueRange values) {
  // An empty asm statement with side effects that reads and writes the
  // registers: ordered after the wgmma.wait_group before it, so nothing
  // that reads or writes these values is scheduled above that wait.
  std::string constraints;
  for (size_t i = 0; i < values.size(); ++i)
    constraints += (i ? ",=f" : "=f");
  for (size_t i = 0; i < values.size(); ++i)
    constraints += "," + std::to_string(i);
  auto structType = LLVM::LLVMStructType::getLiteral(
      ctx, SmallVector<Type>(values.size(), b.getF32Type()));
  Value fenced = LLVM::InlineAsmOp::create(
                     b, loc, structType, values, "", constraints,
                     /*has_side_effects=*/true, /*is_align_stack=*/false,
                     LLVM::tailcallkind::TailCallKind::None,
                     LLVM::AsmDialectAttr::get(ctx, LLVM::AsmDialect::AD_ATT),
                     /*operand_attrs=*/ArrayAttr())
                     .getResult(0);
  SmallVector<Value> results;
  for (size_t i = 0; i < values.size(); ++i)
    results.push_back(LLVM::ExtractValueOp::create(b, loc, fenced, i));
  return results;
}

void WgmmaKernelBuilder::keepLive(ValueRange values) {
  // An empty asm statement with side effects that reads the (i32)
  // registers: they stay allocated up to here.
  std::string constraints;
  for (size_t i = 0; i < values.size(); ++i)
    constraints += (i ? ",r" : "r");
  LLVM::InlineAsmOp::create(
      b, loc, TypeRange(), values, "", constraints,
      /*has_side_effects=*/true, /*is_align_stack=*/false,
      LLVM::tailcallkind::TailCallKind::None,
      LLVM::AsmDialectAttr::get(ctx, LLVM::AsmDialect::AD_ATT),
      /*operand_attrs=*/ArrayAttr());
}

void WgmmaKernelBuilder::fenceTiles(SmallVectorImpl<Acc> &tiles) {
  SmallVector<Value> flat;
  for (const Acc &t : tiles)
    flat.append(t.begin(), t.end());
  SmallVector<Value> fenced = fenceOperands(flat);
  for (size_t t = 0; t < tiles.size(); ++t)
    for (int64_t e = 0; e < 4; ++e)
      tiles[t][e] = fenced[t * 4 + e];
}

SmallVector<Acc> WgmmaKernelBuilder::readScores(Value scores) {
  return readAccumulators(scores, plan.blockK / 8);
}

SmallVector<Acc> WgmmaKernelBuilder::readAccumulators(Value product,
                                                      int64_t tiles) {
  SmallVector<Acc> s(tiles);
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t e = 0; e < 4; ++e)
      s[t][e] = LLVM::ExtractValueOp::create(b, loc, product, t * 4 + e);
  return s;
}

SmallVector<Value> WgmmaKernelBuilder::packProbabilities(ArrayRef<Acc> p) {
  SmallVector<Value> regs;
  for (size_t kt = 0; kt < p.size() / 2; ++kt)
    regs.append({packPair(p[2 * kt][0], p[2 * kt][1]),
                 packPair(p[2 * kt][2], p[2 * kt][3]),
                 packPair(p[2 * kt + 1][0], p[2 * kt + 1][1]),
                 packPair(p[2 * kt + 1][2], p[2 * kt + 1][3])});
  return regs;
}

SmallVector<Value> WgmmaKernelBuilder::pvDescriptors(Value stage) {
  // MN-major operand, 128-byte swizzle: the leading byte offset steps
  // between 64-column spans (a whole tile of keys), the stride byte offset
  // between groups of 8 keys; a k16 step is 16 rows of 128 bytes.
  Value v0 = stageDescriptorLow(idx(plan.qTileBytes + plan.kTileBytes), stage,
                                plan.vStageBytes(), plan.blockK * kRowBytes);
  SmallVector<Value> descriptors;
  for (int64_t kt = 0; kt < plan.blockK / 16; ++kt)
    descriptors.push_back(
        packDescriptor(advanceDescriptor(v0, kt * 16 * kRowBytes), kAtomBytes));
  return descriptors;
}

void WgmmaKernelBuilder::issuePV(ArrayRef<Value> packedP,
                                 ArrayRef<Value> descriptors,
                                 SmallVectorImpl<Acc> &acc) {
  issueRegisterProduct(packedP, descriptors, acc);
}

void WgmmaKernelBuilder::issueLastPV(ArrayRef<Value> packedP,
                                     ArrayRef<Value> descriptors,
                                     Value keysSeen, SmallVectorImpl<Acc> &acc,
                                     function_ref<void(bool)> turn) {
  // The product over the block's first `steps` k16 steps of keys, to its
  // wait; returns the accumulators, flat.
  auto product = [&](int64_t steps) {
    SmallVector<Acc> tiles(acc.begin(), acc.end());
    turn(true);
    NVVM::WgmmaFenceAlignedOp::create(b, loc);
    issuePV(packedP.take_front(4 * steps), descriptors.take_front(steps),
            tiles);
    NVVM::WgmmaGroupSyncAlignedOp::create(b, loc);
    turn(false);
    NVVM::WgmmaWaitGroupSyncOp::create(b, loc, 0);
    SmallVector<Value> flat;
    for (const Acc &t : tiles)
      flat.append(t.begin(), t.end());
    return fenceOperands(flat);
  };
  int64_t steps = descriptors.size();
  SmallVector<Value> flat;
  if (plan.trimLastPV && steps % 2 == 0) {
    Value half = cmp(arith::CmpIPredicate::sle, keysSeen, idx(8 * steps));
    auto ifOp = scf::IfOp::create(
        b, loc, half,
        [&](OpBuilder &, Location) {
          scf::YieldOp::create(b, loc, product(steps / 2));
        },
        [&](OpBuilder &, Location) {
          scf::YieldOp::create(b, loc, product(steps));
        });
    flat.append(ifOp.getResults().begin(), ifOp.getResults().end());
  } else {
    flat = product(steps);
  }
  for (size_t t = 0; t < acc.size(); ++t)
    for (int64_t e = 0; e < 4; ++e)
      acc[t][e] = flat[t * 4 + e];
}

void WgmmaKernelBuilder::issueRegisterProduct(ArrayRef<Value> packedP,
                                              ArrayRef<Value> descriptors,
                                              SmallVectorImpl<Acc> &acc) {
  int64_t n = acc.size() * 8, values = n / 2, steps = descriptors.size();
  Type f32 = b.getF32Type();
  auto structType =
      LLVM::LLVMStructType::getLiteral(ctx, SmallVector<Type>(values, f32));
  // wgmma with A from registers has no NVVM op in MLIR 22 (only the
  // shared-memory form): inline PTX, one statement for the block's k16
  // steps so that nothing lands between them (ptxas would otherwise fence
  // each one). Operands: $0 .. $(values - 1) the accumulators (read and
  // written, tied), then per step four A registers, then per step V's
  // descriptor. Immediates: scale-d 1 (accumulate), scale-a and scale-b 1,
  // imm-trans-b 1 (V is MN-major: rows of keys, Dv contiguous).
  auto reg = [](int64_t i) { return "$" + std::to_string(i); };
  std::string accRegs;
  for (int64_t i = 0; i < values; ++i)
    accRegs += (i ? ", " : "") + reg(i);
  SplitDescriptors split = splitDescriptors(b, loc, descriptors);
  std::string ptx = descriptorScratch(split);
  for (int64_t kt = 0; kt < steps; ++kt) {
    int64_t a = values + 4 * kt;
    std::string bDesc = descriptorOperand(split, kt, values + 4 * steps, ptx);
    ptx += "wgmma.mma_async.sync.aligned.m64n" + std::to_string(n) +
           "k16.f32." + (plan.elementType.isF16() ? "f16.f16" : "bf16.bf16") +
           " {" + accRegs + "}, {" + reg(a) + ", " + reg(a + 1) + ", " +
           reg(a + 2) + ", " + reg(a + 3) + "}, " + bDesc + ", 1, 1, 1, 1;\n";
  }
  ptx += "}\n";
  std::string constraints;
  for (int64_t i = 0; i < values; ++i)
    constraints += "=f,";
  for (int64_t i = 0; i < 4 * steps; ++i)
    constraints += "r,";
  for (size_t i = 0; i < split.bases.size(); ++i)
    constraints += (i ? ",l" : "l");
  for (int64_t i = 0; i < values; ++i)
    constraints += "," + std::to_string(i);
  SmallVector<Value> operands(packedP);
  operands.append(split.bases.begin(), split.bases.end());
  for (const Acc &t : acc)
    operands.append(t.begin(), t.end());
  auto asmOp = LLVM::InlineAsmOp::create(
      b, loc, structType, operands, ptx, constraints,
      /*has_side_effects=*/true, /*is_align_stack=*/false,
      LLVM::tailcallkind::TailCallKind::None,
      LLVM::AsmDialectAttr::get(ctx, LLVM::AsmDialect::AD_ATT),
      /*operand_attrs=*/ArrayAttr());
  for (size_t t = 0; t < acc.size(); ++t)
    for (int64_t e = 0; e < 4; ++e)
      acc[t][e] =
          LLVM::ExtractValueOp::create(b, loc, asmOp.getResult(0), t * 4 + e);
}
