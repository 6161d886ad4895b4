//===- MmaSyncWarpMerge.cpp - mma.sync strategy: split-KV warp merge ------===//
//
// Split-KV kernels of the mma.sync strategy: the CTA's warps covered
// different key blocks of the same 16 rows; their states are merged
// through shared memory into the CTA's partial state, written to the
// workspace for the combine kernel (SplitKVCombine.h), or, with one split
// and every row of the KV group in the CTA, normalised and written to the
// output directly.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBuilder.h"

#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

void MmaSyncKernelBuilder::emitWarpMerge(ValueRange final, Value workspace,
                                         Value lam, Value out, Value batch,
                                         Value kvHead, Value split,
                                         Value numSplits, Value seqQ,
                                         Value row0, Value rowsValid) {
  // Every warp's state of the 16 rows: sAcc[warp][head][row][col] and
  // sStat[warp][head][row][max, sum], in the K/V stages' bytes.
  int64_t dv = plan.valueDim, valueTiles = dv / 8, perHead = valueTiles * 4 + 4;
  int64_t rowHeads = plan.headsPerRow;
  Value sAcc = sharedView(plan.qTileBytes, {plan.warps, rowHeads, 16, dv},
                          b.getF32Type());
  Value sStat = sharedView(plan.qTileBytes + plan.mergeAccBytes(),
                           {plan.warps, rowHeads, 16, 2}, b.getF32Type());
  auto f32Pair = VectorType::get({2}, b.getF32Type());
  Value colLane = mul(rem(lane, 4), 2);
  Value firstOfQuad = cmp(arith::CmpIPredicate::eq, rem(lane, 4), idx(0));
  for (int64_t h = 0; h < rowHeads; ++h) {
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value row = add(div(lane, 4), rr * 8);
      for (int64_t t = 0; t < valueTiles; ++t) {
        Value pairValue = vector::FromElementsOp::create(
            b, loc, f32Pair,
            ValueRange{final[h * perHead + t * 4 + 2 * rr],
                       final[h * perHead + t * 4 + 2 * rr + 1]});
        vector::StoreOp::create(
            b, loc, pairValue, sAcc,
            ValueRange{warp, idx(h), row, add(colLane, t * 8)});
      }
      Value sum = quadSum(final[h * perHead + valueTiles * 4 + 2 + rr]);
      Value stat = vector::FromElementsOp::create(
          b, loc, f32Pair,
          ValueRange{final[h * perHead + valueTiles * 4 + rr], sum});
      scf::IfOp::create(b, loc, firstOfQuad, [&](OpBuilder &, Location) {
        vector::StoreOp::create(b, loc, stat, sStat,
                                ValueRange{warp, idx(h), row, idx(0)});
        scf::YieldOp::create(b, loc);
      });
    }
  }
  gpu::BarrierOp::create(b, loc);

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  Value ninf = f32(-std::numeric_limits<float>::infinity());
  Value scaleLog2 = f32(plan.attn.scale * static_cast<float>(M_LOG2E));
  // Element (h, row, col) of the CTA's state merged over its warps:
  // (unnormalised accumulator, sum, max).
  auto merged = [&](Value h, Value row, Value col) {
    SmallVector<Value> maxes, sums;
    Value maxAll = ninf;
    for (int64_t w = 0; w < plan.warps; ++w) {
      Value stat = vector::LoadOp::create(b, loc, f32Pair, sStat,
                                          ValueRange{idx(w), h, row, idx(0)});
      maxes.push_back(vector::ExtractOp::create(b, loc, stat, 0));
      sums.push_back(vector::ExtractOp::create(b, loc, stat, 1));
      maxAll = fmax(maxAll, maxes.back());
    }
    // Rows no warp saw a key for keep max -inf: weights of 0.
    Value shift = negShift(maxAll, plan.attn.scale);
    Value acc = f32(0.0f), sum = f32(0.0f);
    for (int64_t w = 0; w < plan.warps; ++w) {
      Value weight = exp2(fma(maxes[w], scaleLog2, shift));
      Value x =
          memref::LoadOp::create(b, loc, sAcc, ValueRange{idx(w), h, row, col});
      acc = fma(weight, x, acc);
      sum = fma(weight, sums[w], sum);
    }
    return std::array<Value, 3>{acc, sum, maxAll};
  };
  Value pairRows = mul(seqQ, plan.pairsPerGroup());

  // Thread tid merges the elements tid, tid + threads, ... of the CTA's
  // heads x 16 x Dv (head, row, column) and writes them, with each valid
  // row's max and sum, to the workspace (whose rows are the group's pairs
  // x Sq, both heads each).
  auto toWorkspace = [&] {
    int64_t elements = rowHeads * 16 * dv;
    scf::ForOp::create(
        b, loc, tid, idx(elements), idx(plan.threads()), ValueRange{},
        [&](OpBuilder &, Location, Value e, ValueRange) {
          Value h = div(e, 16 * dv), row = rem(div(e, dv), 16),
                col = rem(e, dv);
          scf::IfOp::create(
              b, loc, cmp(arith::CmpIPredicate::slt, row, rowsValid),
              [&](OpBuilder &, Location) {
                auto [acc, sum, maxAll] = merged(h, row, col);
                Value global = add(row0, row);
                // The row's pair row of the workspace and head in the pair.
                Value pairRow = global, headInPair = h;
                if (rowHeads == 1) {
                  Value groupHead =
                      arith::DivUIOp::create(b, loc, global, seqQ);
                  pairRow = add(mul(div(groupHead, 2), seqQ),
                                arith::RemUIOp::create(b, loc, global, seqQ));
                  headInPair = rem(groupHead, 2);
                }
                Value rowState =
                    add(mul(add(mul(add(mul(batch, plan.kvHeads), kvHead),
                                    numSplits),
                                split),
                            pairRows),
                        pairRow);
                Value base =
                    mul(add(mul(rowState, 2), headInPair), plan.partialWidth());
                memref::StoreOp::create(b, loc, acc, workspace,
                                        ValueRange{add(base, col)});
                scf::IfOp::create(
                    b, loc, cmp(arith::CmpIPredicate::eq, col, idx(0)),
                    [&](OpBuilder &, Location) {
                      memref::StoreOp::create(b, loc, maxAll, workspace,
                                              ValueRange{add(base, dv)});
                      memref::StoreOp::create(b, loc, sum, workspace,
                                              ValueRange{add(base, dv + 1)});
                      scf::YieldOp::create(b, loc);
                    });
                scf::YieldOp::create(b, loc);
              });
          scf::YieldOp::create(b, loc);
        });
  };
  if (rowHeads != 1 || plan.directSqMax == 0) {
    toWorkspace();
    return;
  }
  // One split and every row of the group here (row0 = 0): normalise,
  // apply the epilogue and write the output, element (pair row, column)
  // per thread; the launch skips the combine stage (its manifest entry's
  // skip_when says so with the same condition).
  Value direct = arith::AndIOp::create(
      b, loc, cmp(arith::CmpIPredicate::eq, numSplits, idx(1)),
      cmp(arith::CmpIPredicate::ule, seqQ, idx(plan.directSqMax)));
  scf::IfOp::create(
      b, loc, direct,
      [&](OpBuilder &, Location) {
        scf::ForOp::create(
            b, loc, tid, mul(pairRows, dv), idx(plan.threads()), ValueRange{},
            [&](OpBuilder &, Location, Value e, ValueRange) {
              Value pairRow = div(e, dv), col = rem(e, dv);
              Value pairInGroup = arith::DivUIOp::create(b, loc, pairRow, seqQ);
              Value queryRow = arith::RemUIOp::create(b, loc, pairRow, seqQ);
              std::array<Value, 2> value;
              for (int64_t s = 0; s < 2; ++s) {
                // Row (query head 2p + s of the group, query row i).
                Value row =
                    add(mul(add(mul(pairInGroup, 2), idx(s)), seqQ), queryRow);
                auto [acc, sum, maxAll] = merged(idx(0), row, col);
                value[s] = epilogue.normalize(acc, sum);
              }
              Value pair = add(mul(kvHead, plan.pairsPerGroup()), pairInGroup);
              Value outRow =
                  epilogue.pairRowIndex(add(mul(batch, seqQ), queryRow), pair);
              epilogue.storeDifference(out, outRow, col, value[0], value[1],
                                       epilogue.sigmoidOfLam(lam, outRow));
              scf::YieldOp::create(b, loc);
            });
        scf::YieldOp::create(b, loc);
      },
      [&](OpBuilder &, Location) {
        toWorkspace();
        scf::YieldOp::create(b, loc);
      });
}
