//===- MmaSyncBackwardWide.cpp - the accumulating dk/dv kernel, wide tiles ===//
//
// The portable strategy's accumulating dk/dv kernel (the strategy option
// deterministic = false, on sm_90 and later) in FlashAttention-2's warp
// layout (Dao 2023, Algorithm 2; the 64 x 128 blocks and 2 x 4 / 4 x 2 warp
// grids of its sm80 head-dim-128 backward): per CTA 128 keys of a KV head
// and 8 warps, per iteration 64 query rows of one pair of the group, and
// every product a 32 x 32 (scores) or 32 x D / 2 (gradients) warp tile, so
// that each B fragment loaded from shared memory feeds two mma instead of
// one (the deterministic kernels' warps hold 16 keys as the M rows of every
// product: 0.58 ldmatrix per mma, their shared pipe 71% busy for a 42%
// tensor pipe, H200 backward run 44 in docs/performance.md).
//
// Per iteration (query block of 64 rows q0.., pair p), the block's copies
// complete and visible (waited for before the previous iteration's last
// barrier):
// 1. G = dout V^T, S_2h = q_2h K^T, S_2h+1 = q_2h+1 K^T, [64 x 128] each;
//    warp w the rows 32 (w % 2) and keys 32 (w / 2), both heads' S one
//    16-row tile at a time, K's fragments shared by both heads (the three
//    32 x 32 tiles at once and dk/dv left ptxas 220 bytes of spills at D =
//    128; per row tile, 4), G of both row tiles with the first (V's
//    fragments shared by both), all in one loop over k.
// 2. P_j = exp2(scale log2e S_j - lse_j log2e) (masked where the block
//    straddles a bound), dS_2h = P_2h (G - D_2h), dS_2h+1 = P_2h+1 (-sigmoid
//    (lam) G - D_2h+1), P_c = P_2h - sigmoid(lam) P_2h+1, rounded into
//    shared memory as [query, key] tiles with st.shared.b32 (one stmatrix x4
//    per 16 x 16 tile instead measured level in H200 backward run 57: 0.99-
//    1.00x); a barrier. Before the first row tile's stores, one thread waits
//    for block j - 1's bulk reductions to have read their staging (the dS tiles
//    and block j + 1's q stage), a barrier, and block j + 1's copies go out.
// 3. dv += P_c^T dout, dk += dS_2h^T q_2h + dS_2h+1^T q_2h+1 in registers:
//    at D = 128 after a barrier of warps w and w ^ 1 alone, warp w the keys
//    32 (w / 2) (theirs) and columns D / 2 (w % 2); at D = 64 after the
//    CTA's barrier, the keys 32 (w % 4) and columns D / 2 (w / 4); the A
//    operands through ldmatrix.trans of the [query, key] tiles.
// 4. dq_j = dS_j K: at D = 128 after a barrier of the four warps of its row
//    half, warp w rows 32 (w % 2), head (w / 2) % 2, columns D / 2 (w / 4);
//    at D = 64 head w / 4, rows 32 ((w / 2) % 2), columns D / 2 (w % 2);
//    the group barriers let warps drift apart, so that products and
//    exponentials overlap (H200 backward run 77); a barrier; the f32
//    product staged in the accumulator's rows layout
//    (MmaSyncBackwardDq.cpp), rows 0-31 over the dS tiles, rows 32-63 over
//    the block's q stage; a barrier; one thread adds each half with
//    one bulk reduction (cp.reduce.async.bulk .add.f32). Measured on an
//    H200 (backward run 47): 1.01-1.10x the same kernel adding dq with
//    red.global.add.v2.f32 from registers (FlashAttention-2's atomics).
//    The next iteration waits for the reductions to have read their
//    staging only after its first row tile's products and exponentials.
// The statistics kernel zeroes the accumulator and the conversion kernel
// scales and rounds it (MmaSyncBackwardDq.cpp). Fragment layouts: PTX ISA
// "Matrix Fragments for mma.m16n8k16" and "ldmatrix".
//
//===----------------------------------------------------------------------===//

#include "MmaSyncBackwardBuilder.h"

#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::mma_sync;

int64_t mma_sync::wideKeySharedBytes(const TileConfig &plan) {
  // Backward plans are never swizzled (MmaSyncBackward.cpp sets
  // plan.swizzle = false), so the kernel's plan.rowPad() is kPad.
  int64_t d = plan.headDim, dv = plan.valueDim, pad = kPad;
  int64_t keys = kWideKeys, rows = kWideQueryBlock;
  int64_t kv = keys * (d + dv + 2 * pad) * 2;
  int64_t stage =
      rows * (2 * (d + pad) + (dv + pad)) * 2 + rows * kStatWidth * 4;
  int64_t probs = 3 * rows * (keys + pad) * 2;
  return kv + plan.stages * stage + probs;
}

void BackwardBuilder::buildWideKeyKernel(gpu::GPUFuncOp func) {
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  const AttentionConfig &attn = plan.attn;
  BackwardArgs args = readArgs(entry);
  const int64_t blockKeys = kWideKeys, blockQ = kWideQueryBlock;
  int64_t d = plan.headDim, dv = plan.valueDim;
  Value seqQ = args.seqQ, seqK = args.seqK;

  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  lane = rem(tid, 32);
  warp = div(tid, 32);
  // The grid is (key blocks, KV heads, B). With a causal-like mask the
  // first key blocks see the most query rows: the CTAs take them key block
  // by key block across heads and sequences (blockIdsXSlowest), so that
  // the last wave holds the shortest.
  std::array<Value, 3> ids = blockIds(attn.isCausalLike());
  Value keyBlock = ids[0], kvHead = ids[1], batch = ids[2];
  Value key0 = mul(keyBlock, blockKeys);
  Value kRowBase = mul(batch, seqK);
  setKeyLength(args, batch, tid);

  // Shared memory (wideKeySharedBytes): K and V rows, the stages of (q of
  // both heads, dout, records), then dS of both heads and P_c.
  Type elem = plan.elementType;
  int64_t pad = plan.rowPad();
  int64_t at = 0;
  auto view = [&](ArrayRef<int64_t> shape, Type type, int64_t bytes) {
    Value v = sharedView(at, shape, type);
    at += bytes;
    return v;
  };
  sK = view({blockKeys, d + pad}, elem, blockKeys * (d + pad) * 2);
  sV = view({blockKeys, dv + pad}, elem, blockKeys * (dv + pad) * 2);
  sQ = view({plan.stages, 2, blockQ, d + pad}, elem,
            plan.stages * 2 * blockQ * (d + pad) * 2);
  Value sDO = view({plan.stages, blockQ, dv + pad}, elem,
                   plan.stages * blockQ * (dv + pad) * 2);
  Value sStat = view({plan.stages, blockQ, kStatWidth}, b.getF32Type(),
                     plan.stages * blockQ * kStatWidth * 4);
  Value sDS = view({2, blockQ, blockKeys + pad}, elem,
                   2 * blockQ * (blockKeys + pad) * 2);
  Value sP =
      view({blockQ, blockKeys + pad}, elem, blockQ * (blockKeys + pad) * 2);
  Value accBase = dqAccumulatorOffset(*this, seqQ, plan.pairs);

  auto [count, blockOf, load] = walkKeyBlock(args, batch, kvHead, key0, tid,
                                             blockKeys, blockQ, sDO, sStat);

  Value l8 = rem(lane, 8), g8 = div(lane, 8);
  Value quad = div(lane, 4), colLane = mul(rem(lane, 4), 2);
  // Fragment addresses (see the file comment's PTX sections): an A operand
  // stored row-major (rows as M) by ldmatrix, rows l8 + 8 (g8 % 2), columns
  // 8 (lane / 16); a B operand stored as [n, k] by ldmatrix, rows l8 + 8
  // (lane / 16), columns 8 (g8 % 2); an A operand stored as [k, m] (the
  // transpose) by ldmatrix.trans, rows l8 + 8 (lane / 16), columns 8 (g8 %
  // 2); a B operand stored as [k, n] by ldmatrix.trans, rows l8 + 8 (g8 %
  // 2), columns 8 (lane / 16).
  Value aRow = add(l8, mul(rem(g8, 2), 8)), aCol = mul(div(lane, 16), 8);
  Value bRow = add(l8, mul(div(lane, 16), 8)), bCol = mul(rem(g8, 2), 8);
  Value atRow = bRow, atCol = bCol;
  Value btRow = aRow, btCol = aCol;

  // Phase 1's warp tile: rows sRow0 .., keys sKey0 ...
  Value sRow0 = mul(rem(warp, 2), 32), sKey0 = mul(div(warp, 2), 32);
  // Group barriers (D = 128): phases 3 and 4 wait only for the warps
  // whose dS and P_c they read, not for the whole CTA, so that warps drift
  // apart and one warp's products run while another's exponentials do (the
  // CTA's barrier held all eight in step). Phase 3's warp w then takes the
  // keys that it and warp w ^ 1 computed in phases 1-2 (keys 32 (w / 2):
  // a barrier of that warp pair), phase 4's the rows of its phase-1 tile
  // (32 (w % 2): a barrier of the row half's four warps). Measured on an
  // H200 (backward run 77, 9 shuffled rounds): 1.005-1.011x at D = 128,
  // 0.984x at D = 64, which keeps the CTA barrier and the other tiles.
  const bool groupBarriers = d >= 128;
  // Phase 3's warp tile: keys gKey0 .., columns gCol0 .. (D / 2 of them, of
  // dk and of dv: the GPU backward takes D = Dv only). Phase 4's: head
  // qHead, rows qRow0 .., columns qCol0 ... With group barriers, the named
  // barriers' ids: 1 + w / 2 (phase 3) and 5 + w % 2 (phase 4).
  Value gKey0, gCol0, qHead, qRow0, qCol0, pairBarrier, rowBarrier;
  if (groupBarriers) {
    gKey0 = mul(div(warp, 2), 32);
    gCol0 = mul(rem(warp, 2), d / 2);
    qHead = rem(div(warp, 2), 2);
    qRow0 = mul(rem(warp, 2), 32);
    qCol0 = mul(div(warp, 4), d / 2);
    Value warp32 = arith::IndexCastOp::create(b, loc, b.getI32Type(), warp);
    pairBarrier = arith::AddIOp::create(
        b, loc, arith::DivUIOp::create(b, loc, warp32, i32(2)), i32(1));
    rowBarrier = arith::AddIOp::create(
        b, loc, arith::RemUIOp::create(b, loc, warp32, i32(2)), i32(5));
  } else {
    gKey0 = mul(rem(warp, 4), 32);
    gCol0 = mul(div(warp, 4), d / 2);
    qHead = div(warp, 4);
    qRow0 = mul(rem(div(warp, 2), 2), 32);
    qCol0 = mul(rem(warp, 2), d / 2);
  }
  int64_t gTiles = d / 16, gvTiles = dv / 16;

  // The loop carries dk then dv: [mt][t] accumulator tiles of keys gKey0 +
  // 16 mt, columns gCol0 + 8 t.
  SmallVector<Value> init((2 * gTiles + 2 * gvTiles) * 4, f32(0.0f));
  // The staging of a block's dq (f32, the accumulator's rows layout, 32 rows
  // per half): rows 0-31 over the dS tiles, rows 32-63 over the block's q
  // stage, both dead once the block's products are done.
  int64_t stageQBytes = 2 * blockQ * (d + pad) * 2;
  int64_t dsOffset = at - 3 * blockQ * (blockKeys + pad) * 2;
  int64_t qOffset = blockKeys * (d + dv + 2 * pad) * 2;
  Value threadZero = cmp(arith::CmpIPredicate::eq, tid, idx(0));
  auto dqStaging = [&](int64_t half, Value stage) {
    Value offset =
        half ? add(idx(qOffset), mul(stage, stageQBytes)) : idx(dsOffset);
    return sharedViewAt(offset, {blockQ / 2, 2 * d}, b.getF32Type());
  };

  // The loop over blocks: block j + 1's copies go out once block j - 1's
  // staged dq has been read by its bulk reductions (its q stage is block j
  // + 1's).
  ifThen(cmp(arith::CmpIPredicate::slt, idx(0), count),
         [&] { load(idx(0), idx(0)); });
  NVVM::CpAsyncCommitGroupOp::create(b, loc);
  NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
  gpu::BarrierOp::create(b, loc);
  auto loop = scf::ForOp::create(
      b, loc, idx(0), count, idx(1), init,
      [&](OpBuilder &, Location, Value j, ValueRange carried) {
        // Block j's copies are complete and visible: waited for before the
        // previous iteration's last barrier (or the one above).
        Value stage = rem(j, 2);
        Value next = add(j, 1);
        auto [pair, q0] = blockOf(j);
        // 1-2, one pass per row tile (the thread's rows sRow0 + 16 mt + quad
        // + 8 rr, row index r = 2 mt + rr). scores() runs the product groups
        // in one loop over k, so that each step has every group's
        // independent accumulators in flight (G alone left four per step, a
        // chain of dependent mma); in group g, outs[h][4 m + nt] += A_h B^T,
        // A_h its tile h at rows sRow0 + 16 mts[m], B its key tile nt (rows
        // sKey0 + 8 nt), and each B fragment feeds every A fragment. Every
        // product's k is D: the GPU backward takes D = Dv only
        // (MmaSyncBackward.cpp rejects the rest).
        assert(d == dv && "the GPU backward needs D = Dv");
        struct Group {
          SmallVector<TileRef, 2> as;
          SmallVector<int64_t, 2> mts;
          Value bTile;
          SmallVector<SmallVector<Acc> *, 2> outs;
        };
        auto scores = [&](ArrayRef<Group> groups) {
          for (int64_t kk = 0; kk < d / 16; ++kk) {
            SmallVector<SmallVector<SmallVector<Value>>> af(groups.size());
            for (auto [gi, g] : llvm::enumerate(groups))
              for (const TileRef &a : g.as)
                for (int64_t mt : g.mts)
                  af[gi].push_back(
                      ldmatrix(a.tile,
                               tileIndex(a.lead, add(add(sRow0, aRow), mt * 16),
                                         aCol, kk * 16),
                               false));
            for (int64_t np = 0; np < 2; ++np)
              for (auto [gi, g] : llvm::enumerate(groups)) {
                SmallVector<Value> br =
                    ldmatrix(g.bTile,
                             tileIndex({}, add(add(sKey0, bRow), np * 16), bCol,
                                       kk * 16),
                             false);
                for (size_t h = 0; h < g.as.size(); ++h)
                  for (size_t m = 0; m < g.mts.size(); ++m) {
                    SmallVector<Acc> &out = *g.outs[h];
                    const SmallVector<Value> &a = af[gi][h * g.mts.size() + m];
                    Acc &t0 = out[m * 4 + 2 * np];
                    Acc &t1 = out[m * 4 + 2 * np + 1];
                    t0 = mma(a, {br[0], br[1]}, t0);
                    t1 = mma(a, {br[2], br[3]}, t1);
                  }
              }
          }
        };
        // A record field of row index r, loaded where it is used (records
        // held across the products cost registers).
        auto record = [&](int64_t r, int64_t field) -> Value {
          Value row = add(add(sRow0, quad), (r / 2) * 16 + (r % 2) * 8);
          return memref::LoadOp::create(b, loc, sStat,
                                        ValueRange{stage, row, idx(field)});
        };
        Value needsMask = keyBlockNeedsMask(*this, attn, key0, blockKeys, q0,
                                            blockQ, seqQ, offset, keyLen);
        auto pairType = VectorType::get({2}, elem);
        // Stores (x, y) rounded at the thread's row 2 mt + rr, key tile nt
        // of `tile` [lead..., query, key].
        auto store = [&](Value tile, ValueRange lead, int64_t mt, int64_t nt,
                         int64_t rr, Value x, Value y) {
          Value pairValue = vector::FromElementsOp::create(
              b, loc, pairType,
              ValueRange{arith::TruncFOp::create(b, loc, elem, x),
                         arith::TruncFOp::create(b, loc, elem, y)});
          SmallVector<Value> indices(lead);
          indices.push_back(add(add(sRow0, quad), mt * 16 + rr * 8));
          indices.push_back(add(add(sKey0, colLane), nt * 8));
          vector::StoreOp::create(b, loc, pairValue, tile, indices);
        };
        // One pass per row tile (the file comment says why).
        SmallVector<Acc> gBoth;
        for (int64_t pass = 0; pass < 2; ++pass) {
          SmallVector<int64_t, 1> mts = {pass};
          int64_t tiles = 4 * mts.size();
          // Both heads' S (each K fragment feeds both); in the first pass
          // also G of both row tiles (each V fragment feeds both: 16 of 232
          // ldmatrix per block fewer at D = 128, without spills).
          std::array<SmallVector<Acc>, 2> sh;
          sh[0].assign(tiles, zeroAcc());
          sh[1].assign(tiles, zeroAcc());
          Group sGroup{{{sQ, {stage, idx(0)}}, {sQ, {stage, idx(1)}}},
                       {pass},
                       sK,
                       {&sh[0], &sh[1]}};
          if (pass == 0) {
            gBoth.assign(2 * tiles, zeroAcc());
            scores({Group{{{sDO, {stage}}}, {0, 1}, sV, {&gBoth}}, sGroup});
          } else {
            scores({sGroup});
          }
          ArrayRef<Acc> g = ArrayRef<Acc>(gBoth).slice(pass * tiles, tiles);
          // Value i of the pass's flattened tiles: tile i / 4 = m * 4 + nt,
          // element i % 4: row index 2 mts[m] + (i % 4) / 2, key sKey0 + 8
          // nt + colLane + i % 2.
          auto rowOf = [&](int64_t i) { return 2 * mts[i / 16] + (i % 4) / 2; };
          auto visible = [&](int64_t i) {
            Value query = add(add(q0, add(sRow0, quad)),
                              mts[i / 16] * 16 + ((i % 4) / 2) * 8);
            Value key =
                add(add(key0, add(sKey0, colLane)), ((i / 4) % 4) * 8 + i % 2);
            return arith::AndIOp::create(
                b, loc, cmp(arith::CmpIPredicate::slt, query, seqQ),
                buildIsVisible(b, loc, attn, query, key, offset, keyLen));
          };
          DenseMap<int64_t, Value> shifts[2], deltas[2], negSigs, negOdd;
          for (int64_t mt : mts)
            for (int64_t r = 2 * mt; r < 2 * mt + 2; ++r)
              for (int64_t h = 0; h < 2; ++h)
                shifts[h][r] = record(r, h ? kShiftOdd : kShiftEven);
          std::array<SmallVector<Acc>, 2> p = probabilities(
              {0, 1}, sh,
              [&](int64_t h, int64_t i) { return shifts[h][rowOf(i)]; },
              needsMask, visible);
          if (pass == 0) {
            // The first store below overwrites block j - 1's dq staging
            // (rows 0-31 over the dS tiles) and block j + 1's copies its q
            // stage (rows 32-63): wait here, after the first row tile's
            // products and exponentials, for block j - 1's bulk reductions
            // to have read them, rather than at the top of the iteration
            // right after issuing them (that barrier was the kernel's
            // hottest line, 14.2% of the stall samples in H200 backward
            // run 48).
            ifThen(threadZero, [&] {
              NVVM::CpAsyncBulkWaitGroupOp::create(b, loc, 0, b.getUnitAttr());
            });
            gpu::BarrierOp::create(b, loc);
            ifThen(cmp(arith::CmpIPredicate::slt, next, count),
                   [&] { load(next, rem(next, 2)); });
            NVVM::CpAsyncCommitGroupOp::create(b, loc);
          }
          for (int64_t mt : mts)
            for (int64_t r = 2 * mt; r < 2 * mt + 2; ++r) {
              for (int64_t h = 0; h < 2; ++h)
                deltas[h][r] = record(r, h ? kDeltaOdd : kDeltaEven);
              negSigs[r] = fneg(record(r, kSigmoid));
              negOdd[r] = fneg(deltas[1][r]);
            }
          for (size_t m = 0; m < mts.size(); ++m)
            for (int64_t nt = 0; nt < 4; ++nt)
              for (int64_t rr = 0; rr < 2; ++rr) {
                int64_t mt = mts[m], t = m * 4 + nt, r = 2 * mt + rr;
                Value ds[2][2], pc[2];
                for (int64_t c = 0; c < 2; ++c) {
                  int64_t e = 2 * rr + c;
                  Value ge = g[t][e], pe = p[0][t][e], po = p[1][t][e];
                  // dS_2h+1 = P (-sigmoid G - D) and P_c = P_2h - sigmoid
                  // P_2h+1 as FFMAs on the negated row records: 0 - x and
                  // a separate product cost 32 instructions per pass and
                  // thread (SASS of the D = 128 kernel).
                  ds[0][c] = fmul(pe, fsub(ge, deltas[0][r]));
                  ds[1][c] = fmul(po, fma(negSigs[r], ge, negOdd[r]));
                  pc[c] = fma(negSigs[r], po, pe);
                }
                for (int64_t h = 0; h < 2; ++h)
                  store(sDS, {idx(h)}, mt, nt, rr, ds[h][0], ds[h][1]);
                store(sP, {}, mt, nt, rr, pc[0], pc[1]);
              }
        }
        // The dS and P_c that phase 3 reads are in shared memory: with
        // group barriers the warp pair's (keys 32 (w / 2), every query row;
        // named barrier 1 + w / 2 of 64 threads), else every warp's.
        if (groupBarriers)
          NVVM::BarrierOp::create(b, loc, Type(), pairBarrier, i32(64), nullptr,
                                  Value());
        else
          gpu::BarrierOp::create(b, loc);

        // 3. dv += P_c^T dout, dk += dS_j^T q_j: accumulators [mt][t].
        SmallVector<Acc> dk, dvAcc;
        for (int64_t i = 0; i < 2 * gTiles; ++i)
          dk.push_back({carried[i * 4], carried[i * 4 + 1], carried[i * 4 + 2],
                        carried[i * 4 + 3]});
        for (int64_t i = 0; i < 2 * gvTiles; ++i) {
          int64_t o = (2 * gTiles + i) * 4;
          dvAcc.push_back(
              {carried[o], carried[o + 1], carried[o + 2], carried[o + 3]});
        }
        // acc[mt * tiles + t] += A^T B with A = tile aT (lead aLead) as
        // [query, key], B = tile bT (lead bLead) as [query, column].
        auto gradient = [&](Value aT, ValueRange aLead, Value bT,
                            ValueRange bLead, int64_t tiles,
                            SmallVectorImpl<Acc> &acc) {
          for (int64_t kk = 0; kk < blockQ / 16; ++kk) {
            SmallVector<Value> a[2];
            for (int64_t mt = 0; mt < 2; ++mt)
              a[mt] = ldmatrix(aT,
                               tileIndex(aLead, add(atRow, kk * 16),
                                         add(add(gKey0, atCol), mt * 16)),
                               true);
            for (int64_t dp = 0; dp < tiles / 2; ++dp) {
              SmallVector<Value> br =
                  ldmatrix(bT,
                           tileIndex(bLead, add(btRow, kk * 16),
                                     add(gCol0, btCol), dp * 16),
                           true);
              for (int64_t mt = 0; mt < 2; ++mt) {
                Acc &t0 = acc[mt * tiles + 2 * dp];
                Acc &t1 = acc[mt * tiles + 2 * dp + 1];
                t0 = mma(a[mt], {br[0], br[1]}, t0);
                t1 = mma(a[mt], {br[2], br[3]}, t1);
              }
            }
          }
        };
        gradient(sP, {}, sDO, {stage}, gvTiles, dvAcc);
        gradient(sDS, {idx(0)}, sQ, {stage, idx(0)}, gTiles, dk);
        gradient(sDS, {idx(1)}, sQ, {stage, idx(1)}, gTiles, dk);

        // 4. dq_j += dS_j K, [mt][t] tiles of rows qRow0 + 16 mt, columns
        // qCol0 + 8 t, added to the accumulator. With group barriers, the
        // row half's dS (every key) is in shared memory once its four warps
        // pass named barrier 5 + w % 2.
        if (groupBarriers)
          NVVM::BarrierOp::create(b, loc, Type(), rowBarrier, i32(128), nullptr,
                                  Value());
        int64_t qTiles = d / 16;
        SmallVector<Acc> dq(2 * qTiles, zeroAcc());
        for (int64_t kk = 0; kk < blockKeys / 16; ++kk) {
          SmallVector<Value> a[2];
          for (int64_t mt = 0; mt < 2; ++mt)
            a[mt] = ldmatrix(sDS,
                             tileIndex(ValueRange(qHead),
                                       add(add(qRow0, aRow), mt * 16), aCol,
                                       kk * 16),
                             false);
          for (int64_t dp = 0; dp < qTiles / 2; ++dp) {
            SmallVector<Value> br = ldmatrix(
                sK,
                tileIndex({}, add(btRow, kk * 16), add(qCol0, btCol), dp * 16),
                true);
            for (int64_t mt = 0; mt < 2; ++mt) {
              Acc &t0 = dq[mt * qTiles + 2 * dp];
              Acc &t1 = dq[mt * qTiles + 2 * dp + 1];
              t0 = mma(a[mt], {br[0], br[1]}, t0);
              t1 = mma(a[mt], {br[2], br[3]}, t1);
            }
          }
        }
        // Stage dq (every warp is done reading dS, P_c and the q stage),
        // then one thread adds each half's valid rows with one bulk
        // reduction (MmaSyncBackwardDq.cpp's addStagedDq).
        gpu::BarrierOp::create(b, loc);
        Value dqCol = add(add(mul(qHead, d), qCol0), colLane);
        auto f32Pair = VectorType::get({2}, b.getF32Type());
        for (int64_t half = 0; half < 2; ++half) {
          Value target = dqStaging(half, stage);
          ifThen(cmp(arith::CmpIPredicate::eq, div(qRow0, 32), idx(half)), [&] {
            for (int64_t mt = 0; mt < 2; ++mt)
              for (int64_t rr = 0; rr < 2; ++rr) {
                // The swizzle takes the row within the half: q0 and the
                // halves start at multiples of 8 query rows (qlo is aligned
                // down to the 64-row block), so it is the query row's,
                // which the conversion kernel undoes.
                Value row = add(quad, mt * 16 + rr * 8);
                for (int64_t t = 0; t < qTiles; ++t) {
                  const Acc &acc = dq[mt * qTiles + t];
                  Value pairValue = vector::FromElementsOp::create(
                      b, loc, f32Pair,
                      ValueRange{acc[2 * rr], acc[2 * rr + 1]});
                  // Even columns of 8-byte aligned rows: one 8-byte store
                  // (without the alignment LLVM split some into two).
                  vector::StoreOp::create(
                      b, loc, pairValue, target,
                      ValueRange{
                          row, dqSwizzledColumn(*this, add(dqCol, t * 8), row)},
                      /*nontemporal=*/false, llvm::Align(8));
                }
              }
          });
        }
        NVVM::FenceProxyOp::create(
            b, loc,
            NVVM::ProxyKindAttr::get(ctx, NVVM::ProxyKind::async_shared),
            NVVM::SharedSpaceAttr::get(ctx, NVVM::SharedSpace::shared_cta));
        // This barrier also makes block j + 1's copies visible.
        NVVM::CpAsyncWaitGroupOp::create(b, loc, 0);
        gpu::BarrierOp::create(b, loc);
        ifThen(threadZero, [&] {
          for (int64_t half = 0; half < 2; ++half) {
            Value r0 = add(q0, half * blockQ / 2);
            Value rows = minI(idx(blockQ / 2), sub(seqQ, r0));
            ifThen(cmp(arith::CmpIPredicate::sgt, rows, idx(0)), [&] {
              Value source = memref::ExtractAlignedPointerAsIndexOp::create(
                                 b, loc, dqStaging(half, stage))
                                 .getResult();
              addStagedDq(*this, args.workspace,
                          add(accBase, dqRowIndex(*this, batch, pair, r0, seqQ,
                                                  plan.pairs, d)),
                          source, mul(rows, 2 * d * 4));
            });
          }
        });

        SmallVector<Value> results;
        for (const Acc &t : dk)
          results.append(t.begin(), t.end());
        for (const Acc &t : dvAcc)
          results.append(t.begin(), t.end());
        scf::YieldOp::create(b, loc, results);
      });
  ValueRange final = loop.getResults();
  // Every bulk reduction done before the kernel ends.
  ifThen(threadZero,
         [&] { NVVM::CpAsyncBulkWaitGroupOp::create(b, loc, 0, UnitAttr()); });

  // dk = scale * sum_j dS_j^T q_j and dv of the thread's keys gKey0 + 16 mt
  // + quad + 8 rr, columns gCol0 + colLane + 8 t.
  Value scale = f32(plan.attn.scale);
  for (int64_t mt = 0; mt < 2; ++mt)
    for (int64_t rr = 0; rr < 2; ++rr) {
      Value key = add(add(key0, add(gKey0, quad)), mt * 16 + rr * 8);
      ifThen(cmp(arith::CmpIPredicate::slt, key, seqK), [&] {
        Value row = add(mul(add(kRowBase, key), plan.kvHeads), kvHead);
        for (int64_t t = 0; t < gTiles; ++t) {
          int64_t o = (mt * gTiles + t) * 4 + 2 * rr;
          storePair(args.dk, fmul(final[o], scale), fmul(final[o + 1], scale),
                    add(add(mul(row, d), add(gCol0, colLane)), t * 8));
        }
        for (int64_t t = 0; t < gvTiles; ++t) {
          int64_t o = (2 * gTiles + mt * gvTiles + t) * 4 + 2 * rr;
          storePair(args.dv, final[o], final[o + 1],
                    add(add(mul(row, dv), add(gCol0, colLane)), t * 8));
        }
      });
    }
  gpu::ReturnOp::create(b, loc);
}
