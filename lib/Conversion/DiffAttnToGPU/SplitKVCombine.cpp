//===- SplitKVCombine.cpp - the split-KV combine kernel -------------------===//
//
// One CTA per row of a KV group, one thread per output column: an online
// merge over the splits of both heads' (max, sum, accumulator), then the
// differential epilogue (see SplitKVCombine.h for the workspace layout).
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/SplitKVCombine.h"
#include "diffattn/Conversion/DiffAttnToGPU/Epilogue.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;

void mlir::diffattn::buildSplitKVCombine(OpBuilder &b, Location loc,
                                         gpu::GPUFuncOp func,
                                         const TileConfig &config) {
  GPUKernelBuilder kb(b, loc);
  DifferentialEpilogue epilogue(kb, config.pairs, config.valueDim,
                                config.elementType);
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  Value workspace = entry.getArgument(0), lam = entry.getArgument(1),
        out = entry.getArgument(2);
  Value seqQ = entry.getArgument(4), seqK = entry.getArgument(5);
  Value col = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value groupRow = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value kvHead = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  int64_t pairsPerGroup = config.pairsPerGroup();
  Value groupRows = kb.mul(seqQ, pairsPerGroup);
  Value splitKeys = entry.getArgument(6);
  Value numSplits = arith::DivUIOp::create(
      b, loc, kb.sub(kb.add(seqK, splitKeys), kb.idx(1)), splitKeys);
  Value pair = kb.add(kb.mul(kvHead, pairsPerGroup),
                      arith::DivUIOp::create(b, loc, groupRow, seqQ));
  Value row = arith::RemUIOp::create(b, loc, groupRow, seqQ);
  Value ninf = kb.f32(-std::numeric_limits<float>::infinity());
  Value scaleLog2 = kb.f32(config.attn.scale * static_cast<float>(M_LOG2E));
  Value width = kb.idx(config.partialWidth());
  // Element `field` of the state of head `s` in split `sp`.
  auto stateIndex = [&](Value sp, int64_t s, Value field) {
    Value rowState = kb.add(
        kb.mul(kb.add(kb.mul(kb.add(kb.mul(batch, config.kvHeads), kvHead),
                             numSplits),
                      sp),
               groupRows),
        groupRow);
    return kb.add(kb.mul(kb.add(kb.mul(rowState, 2), s), width), field);
  };
  auto load = [&](Value index) {
    return memref::LoadOp::create(b, loc, workspace, ValueRange{index})
        .getResult();
  };
  // lam first: its load does not wait for anything.
  Value outRow = epilogue.pairRowIndex(kb.add(kb.mul(batch, seqQ), row), pair);
  Value sig = epilogue.sigmoidOfLam(lam, outRow);
  // Launched as a programmatic dependent, this kernel may run before the
  // split kernel ends: wait for its results (a no-op after a plain launch).
  if (config.programmaticLaunch)
    NVVM::GriddepcontrolOp::create(b, loc, NVVM::GridDepActionKind::wait);
  // One pass over the splits for both heads, an online merge of (max, sum,
  // accumulator): each split's loads are independent of each other and of
  // the running state, so one trip to memory serves all of them (with one
  // split, the common case, the whole kernel waits on memory once).
  SmallVector<Value> init;
  for (int64_t s = 0; s < 2; ++s)
    init.append({ninf, kb.f32(0.0f), kb.f32(0.0f)});
  auto merged = scf::ForOp::create(
      b, loc, kb.idx(0), numSplits, kb.idx(1), init,
      [&](OpBuilder &, Location, Value sp, ValueRange it) {
        SmallVector<Value> loaded;
        for (int64_t s = 0; s < 2; ++s)
          loaded.append({load(stateIndex(sp, s, kb.idx(config.valueDim))),
                         load(stateIndex(sp, s, kb.idx(config.valueDim + 1))),
                         load(stateIndex(sp, s, col))});
        SmallVector<Value> next;
        for (int64_t s = 0; s < 2; ++s) {
          Value runMax = it[3 * s], runSum = it[3 * s + 1],
                runAcc = it[3 * s + 2];
          Value m = loaded[3 * s], l = loaded[3 * s + 1], o = loaded[3 * s + 2];
          // Empty states (max -inf) weigh 0; so does everything while the
          // new max is still -inf.
          Value newMax = kb.fmax(runMax, m);
          Value safeMax = kb.safeOffset(newMax);
          Value wRun = kb.exp2(kb.fmul(kb.fsub(runMax, safeMax), scaleLog2));
          Value wNew = kb.exp2(kb.fmul(kb.fsub(m, safeMax), scaleLog2));
          next.append({newMax, kb.fadd(kb.fmul(runSum, wRun), kb.fmul(l, wNew)),
                       kb.fadd(kb.fmul(runAcc, wRun), kb.fmul(o, wNew))});
        }
        scf::YieldOp::create(b, loc, next);
      });
  std::array<Value, 2> value;
  for (int64_t s = 0; s < 2; ++s)
    value[s] = epilogue.normalize(merged.getResult(3 * s + 2),
                                  merged.getResult(3 * s + 1));
  epilogue.storeDifference(out, outRow, col, value[0], value[1], sig);
  gpu::ReturnOp::create(b, loc);
}
