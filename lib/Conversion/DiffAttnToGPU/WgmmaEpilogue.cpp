//===- WgmmaEpilogue.cpp - wgmma strategy: the tile's rows, the epilogue -===//
//
// The rows of a Hopper (sm_90a) kernel's tile (see WgmmaBuilder.h) and its
// differential epilogue, where the two heads of a pair, computed by the two
// consumer warpgroups, meet through shared memory.
//
//===----------------------------------------------------------------------===//

#include "WgmmaBuilder.h"

#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::wgmma;

Value WgmmaKernelBuilder::pairOf(Value r) {
  return add(tile.firstPair, divRemU32(r, tile.seqQ, /*remainder=*/false));
}

Value WgmmaKernelBuilder::queryRowOf(Value r) {
  return divRemU32(r, tile.seqQ, /*remainder=*/true);
}

Value WgmmaKernelBuilder::threadGroupRow(int64_t rr) {
  return add(add(tile.row0, mul(warpInGroup, 16)), add(div(lane, 4), rr * 8));
}

void WgmmaKernelBuilder::emitEpilogue(const HeadState &final,
                                      function_ref<void()> sync,
                                      function_ref<void(HandoffStep)> handoff,
                                      Value exchangeAt, Value lam, Value out,
                                      Value lseOut, Value outOdd) {
  // The thread's two rows: the row sums over the quad (shuffles: outside
  // any branch), whether the row is one of the group's, and its pair.
  std::array<Value, 2> sums, inverse, inRows, pair;
  for (int64_t rr = 0; rr < 2; ++rr) {
    sums[rr] = quadSum(final.rowSum[rr]);
    inverse[rr] = epilogue.inverseSum(sums[rr]);
    Value global = threadGroupRow(rr);
    inRows[rr] = cmp(arith::CmpIPredicate::slt, global, tile.groupRows);
    pair[rr] = pairOf(global);
  }
  // lse[b, 2 pair + head, i] = scale * offset + ln(sum), the sums being
  // relative to the offsets the rows ended with (as the mma.sync
  // strategy's row-block kernel writes it); one lane of the row's quad
  // writes it.
  if (lseOut) {
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value writer = arith::AndIOp::create(
          b, loc, inRows[rr],
          cmp(arith::CmpIPredicate::eq, rem(lane, 4), idx(0)));
      ifThen(writer, [&] {
        Value lse = fma(safeOffset(final.rowMax[rr]), f32(plan.attn.scale),
                        logOf(sums[rr]));
        Value head = add(mul(pair[rr], 2), pairHead);
        Value index =
            add(mul(add(mul(tile.batch, plan.queryHeads), head), tile.seqQ),
                threadRow[rr]);
        memref::StoreOp::create(b, loc, lse, lseOut, ValueRange{index});
      });
    }
  }
  // The rows' lam, loaded before the warpgroups meet: the load's latency
  // (a global load per row, once per tile) runs under the wait for the
  // other warpgroup and the exchange instead of after them (Hopper run 31:
  // with the load after the exchange, a kernel without it was 1.01-1.03x).
  std::array<Value, 2> valid, pairRow, sig;
  for (int64_t rr = 0; rr < 2; ++rr) {
    valid[rr] = inRows[rr];
    if (tile.ctaActive)
      valid[rr] = arith::AndIOp::create(b, loc, valid[rr], tile.ctaActive);
    Value rowIndex = add(tile.qRowBase, threadRow[rr]);
    pairRow[rr] = epilogue.pairRowIndex(rowIndex, pair[rr]);
    sig[rr] =
        epilogue.sigmoidOfLam(lam, select(valid[rr], pairRow[rr], idx(0)));
  }
  SmallVector<Value> normalized;
  for (const Acc &t : final.acc)
    for (int64_t e = 0; e < 4; ++e)
      normalized.push_back(fmul(t[e], inverse[e / 2]));
  // Each store writes a row's two adjacent columns (colLane, an even
  // column): one 4-byte store where out (and out_odd) start 4-byte aligned,
  // as the runtime's and torch's allocations do, else two 2-byte stores
  // (a uniform branch on the buffers' addresses; kernel buffers are flat
  // memrefs at offset 0, so the aligned pointer is the first element's).
  Value storesAligned = startsAligned({out, outOdd}, 4);
  auto quad = VectorType::get({4}, b.getF32Type());
  // Writes o0 - sigmoid(lam) o1 (and o1 to out_odd) of accumulator tiles
  // [first, first + count) of warpgroup w, the other head's four values of
  // tile t being received[t - first].
  auto writeColumns = [&](int64_t w, int64_t first, int64_t count,
                          ArrayRef<Value> received) {
    auto outPairType = VectorType::get({2}, plan.elementType);
    auto storeRows = [&](llvm::MaybeAlign alignment) {
      for (int64_t rr = 0; rr < 2; ++rr) {
        ifThen(valid[rr], [&] {
          Value outBase = mul(pairRow[rr], plan.valueDim);
          Value colLane = mul(rem(lane, 4), 2);
          for (int64_t t = first; t < first + count; ++t) {
            SmallVector<Value> columns, odd;
            for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e) {
              Value own = normalized[t * 4 + e];
              Value other = vector::ExtractOp::create(
                  b, loc, received[t - first], ArrayRef<int64_t>{e});
              Value o0 = w == 0 ? own : other, o1 = w == 0 ? other : own;
              columns.push_back(arith::TruncFOp::create(
                  b, loc, plan.elementType, fsub(o0, fmul(sig[rr], o1))));
              if (outOdd)
                odd.push_back(
                    arith::TruncFOp::create(b, loc, plan.elementType, o1));
            }
            Value at = add(add(outBase, colLane), t * 8);
            vector::StoreOp::create(
                b, loc,
                vector::FromElementsOp::create(b, loc, outPairType, columns),
                out, ValueRange{at}, /*nontemporal=*/false, alignment);
            if (outOdd)
              vector::StoreOp::create(
                  b, loc,
                  vector::FromElementsOp::create(b, loc, outPairType, odd),
                  outOdd, ValueRange{at}, /*nontemporal=*/false, alignment);
          }
        });
      }
    };
    scf::IfOp::create(
        b, loc, storesAligned,
        [&](OpBuilder &, Location) {
          storeRows(llvm::Align(4));
          scf::YieldOp::create(b, loc);
        },
        [&](OpBuilder &, Location) {
          storeRows(llvm::MaybeAlign());
          scf::YieldOp::create(b, loc);
        });
  };
  // Slot (i, w, thread) of the region holds the four values of accumulator
  // tile i that warpgroup w hands over, 16 bytes per thread (one 128-bit
  // shared access instead of four; a warp's 512 contiguous bytes, free of
  // bank conflicts).
  int64_t tiles = static_cast<int64_t>(final.acc.size());
  auto handOver = [&](Value region, int64_t w, int64_t first, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
      Value values = vector::FromElementsOp::create(
          b, loc, quad, ArrayRef<Value>(normalized).slice((first + i) * 4, 4));
      vector::StoreOp::create(b, loc, values, region,
                              ValueRange{idx(i), idx(w), groupThread, idx(0)},
                              /*nontemporal=*/false, llvm::MaybeAlign(16));
    }
  };
  auto receive = [&](Value region, int64_t w, int64_t count) {
    SmallVector<Value> received;
    for (int64_t i = 0; i < count; ++i)
      received.push_back(vector::LoadOp::create(
          b, loc, quad, region, ValueRange{idx(i), idx(w), groupThread, idx(0)},
          /*nontemporal=*/false, llvm::MaybeAlign(16)));
    return received;
  };
  auto ifWarpgroup = [&](int64_t w, function_ref<void()> body) {
    ifThen(cmp(arith::CmpIPredicate::eq, pairHead, idx(w)), body);
  };
  if (plan.handoffEpilogue) {
    // Hand-off: warpgroup 0 (ahead of warpgroup 1 by half an iteration
    // under ping-pong) waits only for warpgroup 1's last S (the region is
    // the tile's Q buffer), hands every column over and leaves; warpgroup
    // 1 writes the whole output once they are there.
    Value region = sharedViewAt(exchangeAt, {tiles, 1, kWarpgroupThreads, 4},
                                b.getF32Type());
    ifWarpgroup(0, [&] {
      handoff(HandoffStep::AwaitRegion);
      handOver(region, 0, 0, tiles);
      handoff(HandoffStep::HandOver);
    });
    ifWarpgroup(1, [&] {
      handoff(HandoffStep::AwaitColumns);
      writeColumns(1, 0, tiles, receive(region, 0, tiles));
    });
    return;
  }
  // Exchange: warpgroup w writes the columns of accumulator tiles
  // [w * half, (w + 1) * half) and hands the others over.
  int64_t half = tiles / 2;
  Value exchange =
      sharedViewAt(exchangeAt, {half, 2, kWarpgroupThreads, 4}, b.getF32Type());
  sync();
  for (int64_t w = 0; w < 2; ++w)
    ifWarpgroup(w, [&] { handOver(exchange, w, (1 - w) * half, half); });
  sync();
  for (int64_t w = 0; w < 2; ++w)
    ifWarpgroup(w, [&] {
      writeColumns(w, w * half, half, receive(exchange, 1 - w, half));
    });
}
