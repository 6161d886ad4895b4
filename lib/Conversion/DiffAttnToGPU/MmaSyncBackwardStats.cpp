//===- MmaSyncBackwardStats.cpp - row statistics from saved outputs -------===//
//
// The backward's first kernel when diffattn.v2_backward has `out_odd` (the
// forward's A_{2h+1}, saved beside out): the row statistics need r =
// rowsum(dout o A_{2h+1}) and rowsum(dout o out), both dot products of
// saved row vectors, so the kernel reads three rows instead of recomputing
// S_{2h+1} and G = dout V^T over every visible key block (FlashAttention-2's
// preprocessing kernel, D = rowsum(dO o O), with the differential pair's
// second dot product). Shared by both strategies: it is bandwidth-bound and
// uses no matrix instruction.
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"

#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

void BackwardBuilder::buildOutputStatisticsKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  BackwardArgs args = readArgs(entry);
  int64_t dv = plan.valueDim, pairs = plan.pairs;
  Value seqQ = args.seqQ;

  // CTA (x, 0, batch) takes rows x kOutputStatsRows on of the sequence's Sq
  // x H (query row, pair) rows, the pair fastest, four threads (a quad) per
  // row: the CTA's rows of out, out_odd and dout are then one contiguous
  // run (kOutputStatsRows x Dv elements of each). Taken as the row
  // kernels' grid takes them (a KV group's rows, pair by pair: a CTA's
  // consecutive rows H x Dv elements apart, 4 KB at 16 pairs and D = 128),
  // they were read at 55% of the H200's DRAM bandwidth (backward run 62).
  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  Value rowBlock = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value batch = gpu::BlockIdOp::create(b, loc, gpu::Dimension::z);
  Value global = add(mul(rowBlock, kOutputStatsRows), div(tid, 4));
  Value valid = cmp(arith::CmpIPredicate::slt, global, mul(seqQ, pairs));
  Value row = select(valid, global, idx(0));
  Value query = div(row, pairs), pair = rem(row, pairs);
  Value pairRow = epilogue.pairRowIndex(add(mul(batch, seqQ), query), pair);

  // Lane q of the quad reads 8 columns (16 bytes) at 8 q + 32 t of out,
  // out_odd and dout: a quad reads 64 contiguous bytes of each per step.
  Type elem = plan.elementType;
  auto vecType = VectorType::get({8}, elem);
  Value base = add(mul(pairRow, dv), mul(rem(lane, 4), 8));
  Value dot = f32(0.0f), r = f32(0.0f);
  for (int64_t t = 0; t < dv / 32; ++t) {
    Value at = add(base, t * 32);
    auto load = [&](Value buffer) {
      return vector::LoadOp::create(b, loc, vecType, buffer, ValueRange{at},
                                    /*nontemporal=*/false, llvm::Align(16))
          .getResult();
    };
    Value o = load(args.out), odd = load(args.outOdd), g = load(args.dout);
    for (int64_t e = 0; e < 8; ++e) {
      auto ext = [&](Value vec) {
        return arith::ExtFOp::create(
            b, loc, b.getF32Type(),
            vector::ExtractOp::create(b, loc, vec, e).getResult());
      };
      Value ge = ext(g);
      dot = fma(ext(o), ge, dot);
      r = fma(ext(odd), ge, r);
    }
  }
  dot = quadSum(dot);
  r = quadSum(r);

  std::array<Value, 2> shift;
  for (int64_t j = 0; j < 2; ++j) {
    Value head = add(mul(pair, 2), idx(j));
    shift[j] = negLseShift(loadF32(
        args.lse, lseIndex(*this, batch, head, query, seqQ, plan.queryHeads)));
  }
  Value lam = loadF32(args.lam, pairRow);
  Value record = recordIndex(*this, batch, pair, query, seqQ, plan.pairs);
  writeRowStatistics(*this, epilogue, args,
                     {r, dot, valid, record, pairRow, lam,
                      epilogue.sigmoid(lam), shift[0], shift[1], lane});
  gpu::ReturnOp::create(b, loc);
}
