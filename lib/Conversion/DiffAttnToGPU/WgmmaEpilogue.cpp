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
  // Warpgroup w writes the columns of accumulator tiles [w * half, (w + 1)
  // * half) and hands the others over: slot (i, w, thread) holds the four
  // values of accumulator tile i of what warpgroup w hands over, 16 bytes
  // per thread (one 128-bit shared access instead of four; a warp's 512
  // contiguous bytes, free of bank conflicts).
  int64_t tiles = static_cast<int64_t>(final.acc.size());
  int64_t half = tiles / 2;
  auto quad = VectorType::get({4}, b.getF32Type());
  Value exchange =
      sharedViewAt(exchangeAt, {half, 2, kWarpgroupThreads, 4}, b.getF32Type());
  auto forEachWarpgroup = [&](function_ref<void(int64_t)> body) {
    for (int64_t w = 0; w < 2; ++w)
      ifThen(cmp(arith::CmpIPredicate::eq, pairHead, idx(w)), [&] { body(w); });
  };
  sync();
  forEachWarpgroup([&](int64_t w) {
    int64_t handed = (1 - w) * half;
    for (int64_t i = 0; i < half; ++i) {
      Value values = vector::FromElementsOp::create(
          b, loc, quad, ArrayRef<Value>(normalized).slice((handed + i) * 4, 4));
      vector::StoreOp::create(b, loc, values, exchange,
                              ValueRange{idx(i), idx(w), groupThread, idx(0)},
                              /*nontemporal=*/false, llvm::MaybeAlign(16));
    }
  });
  // Each store writes a row's two adjacent columns (colLane, an even
  // column): one 4-byte store where out (and out_odd) start 4-byte aligned,
  // as the runtime's and torch's allocations do, else two 2-byte stores
  // (a uniform branch on the buffers' addresses; kernel buffers are flat
  // memrefs at offset 0, so the aligned pointer is the first element's).
  Value storesAligned = startsAligned(out, 4);
  if (outOdd)
    storesAligned =
        arith::AndIOp::create(b, loc, storesAligned, startsAligned(outOdd, 4));
  sync();
  forEachWarpgroup([&](int64_t w) {
    int64_t kept = w * half;
    auto outPairType = VectorType::get({2}, plan.elementType);
    SmallVector<Value> received;
    for (int64_t i = 0; i < half; ++i)
      received.push_back(vector::LoadOp::create(
          b, loc, quad, exchange,
          ValueRange{idx(i), idx(1 - w), groupThread, idx(0)},
          /*nontemporal=*/false, llvm::MaybeAlign(16)));
    auto storeRows = [&](llvm::MaybeAlign alignment) {
      for (int64_t rr = 0; rr < 2; ++rr) {
        ifThen(valid[rr], [&] {
          Value outBase = mul(pairRow[rr], plan.valueDim);
          Value colLane = mul(rem(lane, 4), 2);
          for (int64_t t = kept; t < kept + half; ++t) {
            SmallVector<Value> columns, odd;
            for (int64_t e = 2 * rr; e < 2 * rr + 2; ++e) {
              Value own = normalized[t * 4 + e];
              Value other = vector::ExtractOp::create(
                  b, loc, received[t - kept], ArrayRef<int64_t>{e});
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
  });
}
