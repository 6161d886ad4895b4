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
  // accumulator), config.combineSplitsPerStep splits per step (the
  // combine-splits-per-step option, 8 by default): every load of a
  // step is issued before any of its arithmetic, so the combine waits on
  // memory once per step rather than once per split (at B 1-4 a launch
  // has 16-64 splits, and each wait is an L2 round trip). Splits past the
  // last read the last one's state (in bounds) and weigh 0 (max -inf).
  int64_t perStep = config.combineSplitsPerStep;
  Value lastSplit = kb.sub(numSplits, kb.idx(1));
  SmallVector<Value> init;
  for (int64_t s = 0; s < 2; ++s)
    init.append({ninf, kb.f32(0.0f), kb.f32(0.0f)});
  auto merged = scf::ForOp::create(
      b, loc, kb.idx(0), numSplits, kb.idx(perStep), init,
      [&](OpBuilder &, Location, Value sp0, ValueRange it) {
        // loaded[u][s] = (max, sum, accumulator) of split sp0 + u, head s.
        SmallVector<std::array<std::array<Value, 3>, 2>> loaded(perStep);
        SmallVector<Value> valid(perStep);
        for (int64_t u = 0; u < perStep; ++u) {
          Value sp = kb.add(sp0, u);
          valid[u] = kb.cmp(arith::CmpIPredicate::ult, sp, numSplits);
          Value at = u == 0 ? sp : kb.minI(sp, lastSplit);
          for (int64_t s = 0; s < 2; ++s)
            loaded[u][s] = {
                load(stateIndex(at, s, kb.idx(config.valueDim))),
                load(stateIndex(at, s, kb.idx(config.valueDim + 1))),
                load(stateIndex(at, s, col))};
        }
        SmallVector<Value> next;
        for (int64_t s = 0; s < 2; ++s) {
          Value runMax = it[3 * s], runSum = it[3 * s + 1],
                runAcc = it[3 * s + 2];
          SmallVector<Value> maxes;
          Value newMax = runMax;
          for (int64_t u = 0; u < perStep; ++u) {
            maxes.push_back(u == 0
                                ? loaded[u][s][0]
                                : kb.select(valid[u], loaded[u][s][0], ninf));
            newMax = kb.fmax(newMax, maxes.back());
          }
          // Empty states (max -inf) weigh 0; so does everything while the
          // new max is still -inf.
          Value safeMax = kb.safeOffset(newMax);
          Value wRun = kb.exp2(kb.fmul(kb.fsub(runMax, safeMax), scaleLog2));
          Value sum = kb.fmul(runSum, wRun), acc = kb.fmul(runAcc, wRun);
          for (int64_t u = 0; u < perStep; ++u) {
            Value w = kb.exp2(kb.fmul(kb.fsub(maxes[u], safeMax), scaleLog2));
            sum = kb.fma(loaded[u][s][1], w, sum);
            acc = kb.fma(loaded[u][s][2], w, acc);
          }
          next.append({newMax, sum, acc});
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
