//===- OnlineSoftmax.cpp - register online softmax on MMA fragments -------===//
//
// FlashAttention-2's online softmax (Dao, 2023, Algorithm 1, lines 8-10) on
// accumulator fragments: per block, the new row max, probabilities
// exp2(s * scale * log2 e - max * scale * log2 e), and the rescaling of the
// running sum and accumulators by exp2((old - new) * scale * log2 e).
// Optionally part of the probabilities' exp2 run on the FMA pipe
// (GPUKernelBuilder::exp2Polynomial), FlashAttention-4's split of the
// exponentials between the SFU and the FMAs (Zadouri et al., 2026).
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/OnlineSoftmax.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"

using namespace mlir;
using namespace mlir::diffattn;

Value OnlineSoftmax::rowMax(Value x) {
  for (int32_t mask : layout.rowLaneMasks)
    x = kb.fmax(x, kb.shuffleXor(x, mask));
  return x;
}

Value OnlineSoftmax::rowSum(Value x) {
  for (int32_t mask : layout.rowLaneMasks)
    x = kb.fadd(x, kb.shuffleXor(x, mask));
  return x;
}

Value OnlineSoftmax::block(SmallVectorImpl<Acc> &s, HeadState &head) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  int64_t rows = layout.rowsPerThread, per = layout.valuesPerRow;
  // Online softmax of the thread's rows; exp2 with the scale folded in.
  Value scaleLog2 = kb.f32(scale * static_cast<float>(M_LOG2E));
  // The largest score of each of the thread's rows among its own columns;
  // the row's max over the block is the largest of its lanes'.
  SmallVector<Value, 2> threadMax(rows), newMax(rows);
  for (int64_t rr = 0; rr < rows; ++rr) {
    Value m = s[0][per * rr];
    for (const Acc &t : s) {
      Value own = t[per * rr];
      for (int64_t c = 1; c < per; ++c)
        own = kb.fmax(own, t[per * rr + c]);
      m = kb.fmax(m, own);
    }
    threadMax[rr] = m;
  }
  auto reduceNewMax = [&] {
    for (int64_t rr = 0; rr < rows; ++rr)
      newMax[rr] = kb.fmax(head.rowMax[rr], rowMax(threadMax[rr]));
  };
  // Moves the state to the offsets `newMax`: sums and accumulators scale
  // by 2^((old - new) scale log2 e).
  auto rescale = [&](HeadState &state) {
    for (int64_t rr = 0; rr < rows; ++rr) {
      Value alpha = kb.exp2(
          kb.fma(state.rowMax[rr], scaleLog2, kb.negShift(newMax[rr], scale)));
      state.rowMax[rr] = newMax[rr];
      state.rowSum[rr] = kb.fmul(state.rowSum[rr], alpha);
      for (Acc &t : state.acc)
        for (int64_t e = per * rr; e < per * rr + per; ++e)
          t[e] = kb.fmul(t[e], alpha);
    }
  };
  Value moved;
  if (rescaleThreshold <= 0) {
    reduceNewMax();
    rescale(head);
    moved = arith::ConstantOp::create(b, loc, b.getBoolAttr(true));
  } else {
    // Lazy rescaling: the offsets only move when some score of the warp
    // would give a probability above 2^threshold; otherwise the old offsets
    // stay (exact: the sums use the same offsets), and neither the row max
    // (shuffles) nor the multiplications of the accumulators are needed.
    // Each thread tests its own scores: no shuffle on this path.
    Value grow = arith::ConstantOp::create(b, loc, b.getBoolAttr(false));
    for (int64_t rr = 0; rr < rows; ++rr)
      grow = arith::OrIOp::create(
          b, loc, grow,
          arith::CmpFOp::create(
              b, loc, arith::CmpFPredicate::OGT,
              kb.fmul(kb.fsub(threadMax[rr], head.rowMax[rr]), scaleLog2),
              kb.f32(rescaleThreshold)));
    Value anyGrow = NVVM::VoteSyncOp::create(b, loc, b.getI1Type(), kb.i32(-1),
                                             grow, NVVM::VoteSyncKind::any);
    moved = anyGrow;
    auto pack = [](const HeadState &state) {
      SmallVector<Value> values(state.rowMax.begin(), state.rowMax.end());
      values.append(state.rowSum.begin(), state.rowSum.end());
      for (const Acc &t : state.acc)
        values.append(t.begin(), t.end());
      return values;
    };
    auto ifOp = scf::IfOp::create(
        b, loc, anyGrow,
        [&](OpBuilder &, Location) {
          HeadState moved = head;
          reduceNewMax();
          rescale(moved);
          scf::YieldOp::create(b, loc, pack(moved));
        },
        [&](OpBuilder &, Location) {
          scf::YieldOp::create(b, loc, pack(head));
        });
    ValueRange r = ifOp.getResults();
    for (int64_t rr = 0; rr < rows; ++rr) {
      head.rowMax[rr] = r[rr];
      head.rowSum[rr] = r[rows + rr];
    }
    for (size_t t = 0; t < head.acc.size(); ++t)
      for (int64_t e = 0; e < 4; ++e)
        head.acc[t][e] = r[2 * rows + t * 4 + e];
  }
  for (int64_t rr = 0; rr < rows; ++rr) {
    Value shift = kb.negShift(head.rowMax[rr], scale);
    Value sum = kb.f32(0.0f);
    for (auto [i, t] : llvm::enumerate(s)) {
      // The SFU returns 16 exponentials per clock per SM; at D = 64 wgmma
      // makes scores at the same rate (PTX ISA / CUDA C++ Programming
      // Guide, arithmetic instruction throughput, compute capability 9.0).
      // Slices i with a new multiple of 8 in (i + 1) K: floor(n K / 8) of
      // n, spread evenly.
      int64_t slice = static_cast<int64_t>(i);
      bool polynomial =
          (slice + 1) * emulatedExp2 / 8 != slice * emulatedExp2 / 8;
      for (int64_t e = per * rr; e < per * rr + per; ++e) {
        Value x = kb.fma(t[e], scaleLog2, shift);
        t[e] = polynomial ? kb.exp2Polynomial(x) : kb.exp2(x);
        sum = kb.fadd(sum, t[e]);
      }
    }
    head.rowSum[rr] = kb.fadd(head.rowSum[rr], sum);
  }
  return moved;
}

SmallVector<Value, 2> OnlineSoftmax::blockDeferred(SmallVectorImpl<Acc> &s,
                                                   HeadState &head,
                                                   Value *moved) {
  // The factors are what block() would multiply the accumulators by: run
  // it on a tile of ones (a thread's tile holds rowsPerThread rows of
  // valuesPerRow values) in place of the accumulators.
  Value one = kb.f32(1.0f);
  HeadState probe;
  probe.acc = {Acc{one, one, one, one}};
  probe.rowMax = head.rowMax;
  probe.rowSum = head.rowSum;
  Value probeMoved = block(s, probe);
  if (moved)
    *moved = probeMoved;
  head.rowMax = probe.rowMax;
  head.rowSum = probe.rowSum;
  SmallVector<Value, 2> factors;
  for (int64_t rr = 0; rr < layout.rowsPerThread; ++rr)
    factors.push_back(probe.acc[0][layout.valuesPerRow * rr]);
  return factors;
}
