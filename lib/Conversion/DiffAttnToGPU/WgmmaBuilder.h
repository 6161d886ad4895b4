//===- WgmmaBuilder.h - the wgmma (sm_90a) strategy's kernel builder -*- C++
//-*-===//
//
// Private to lib/Conversion/DiffAttnToGPU: the Hopper strategy's plan and
// kernel builder, whose definitions are split over WgmmaFragments.cpp
// (shared-memory tiles in the 128-byte swizzled layout, wgmma matrix
// descriptors, cp.async copies, the two products), WgmmaEpilogue.cpp (the
// tile's rows and the differential epilogue) and WgmmaKernel.cpp (the
// kernel body: key loop, masking, online softmax, the producer).
//
// A CTA has two consumer warpgroups (256 threads) over 64 rows of a KV
// group, a row being a (pair p of the group, query row i) couple numbered
// R = p * Sq + i, as in the mma.sync strategy. Warpgroup w computes head
// 2p + w of every row: S = Q Kᵀ (wgmma m64nNk16, Q and K from shared
// memory) and O += P V (wgmma with P from registers, V from shared memory),
// so both heads of a pair run against every K/V tile the CTA loads. The
// differential epilogue meets the pair's two heads through shared memory:
// thread t of each warpgroup hands half of its normalised accumulators to
// thread t of the other, which holds the same (row, column) elements, and
// writes the other half. Warp-
// specialised kernels add a producer warpgroup that copies the tiles and
// hands them over through mbarriers (see WgmmaKernel.cpp). Layouts follow
// the PTX ISA sections "Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate" (register fragments, shared memory matrix layout, matrix
// descriptor).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_WGMMABUILDER_H
#define DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_WGMMABUILDER_H

#include "diffattn/Conversion/DiffAttnToGPU/Epilogue.h"
#include "diffattn/Conversion/DiffAttnToGPU/KernelBuilder.h"
#include "diffattn/Conversion/DiffAttnToGPU/OnlineSoftmax.h"
#include "diffattn/Conversion/DiffAttnToGPU/TileConfig.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "llvm/Support/ErrorHandling.h"

namespace mlir::diffattn::wgmma {

/// The 128-byte swizzle (PTX ISA "Shared Memory Matrix Layout", 128B
/// swizzling mode): a tile is stored as spans of kSpan columns (128 bytes
/// of 2-byte elements), each span as rows of 128 bytes; the 16-byte chunk
/// c of row r sits at chunk c ^ (r % 8). Atoms of 8 rows (1024 bytes) must
/// start 1024-byte aligned.
constexpr int64_t kSpan = 64;
constexpr int64_t kRowBytes = 128;
constexpr int64_t kAtomBytes = 8 * kRowBytes;
/// Rows of a warpgroup's wgmma tile (m64), and threads of a warpgroup.
constexpr int64_t kWarpgroupRows = 64;
constexpr int64_t kWarpgroupThreads = 128;
/// The dynamic scheduler's end under overlap-tiles, as the producer
/// announces it in a Q buffer's tile-index slot: no tile. The consumers
/// test the slot against this immediate rather than the tile count, which
/// they would otherwise keep live across the tile loop: ptxas spilled it,
/// and Hopper run 82 found its reload on the path from one tile to the
/// next. The default kernels keep the tile count: the immediate measured
/// level there (0.996-1.006x, Hopper run 84) and raised their static
/// spills.
constexpr uint32_t kNoTile = 0xffffffffu;
/// Named barriers of warp-specialised kernels (0 is the CTA's): the
/// consumers' epilogue, the consumers' ping-pong turns (2 + head) and the
/// producer warpgroup's hand-over of the dynamic scheduler's next tile.
constexpr int32_t kConsumerBarrier = 1;
constexpr int32_t kProducerBarrier = 4;

/// The steps of the hand-off epilogue (WgmmaPlan::handoffEpilogue) that
/// synchronise its two warpgroups, each through an mbarrier of 128
/// arrivals per tile (release on arrival, acquire on the wait): warpgroup 0
/// waits until warpgroup 1's last S has landed (the Q buffer is free) and,
/// once its columns are in shared memory, arrives; warpgroup 1 waits for
/// them.
enum class HandoffStep { AwaitRegion, HandOver, AwaitColumns };

/// Which consumer threads arrive on a K/V stage's empty mbarrier once the
/// product that read the tile has landed (the release-arrivals option):
/// every one, lane 0 of each warp, or one thread of each warpgroup.
enum class ReleaseArrivals { Thread, Warp, Warpgroup };

/// The wgmma strategy's tile configuration.
struct WgmmaPlan : TileConfig {
  /// Bytes of the Q tiles (both heads, of every Q buffer), of all K stages
  /// and of all V stages; each a multiple of kAtomBytes.
  int64_t qTileBytes = 0, kTileBytes = 0, vTileBytes = 0;
  /// Q buffers: 2 for a persistent CTA (the CTA's i-th tile's Q in buffer
  /// i % 2, so the producer may load the next tile's while the consumers
  /// read this one's) where they fit, else 1.
  int64_t qBuffers = 1;
  /// Bytes of one Q buffer: both heads' 64 x D tiles.
  int64_t qBufferBytes() const { return 2 * kWarpgroupRows * headDim * 2; }
  /// Bytes of one K stage and one V stage.
  int64_t kStageBytes() const { return blockK * headDim * 2; }
  /// A producer warpgroup copies Q and the K/V blocks and hands them to the
  /// two consumer warpgroups through mbarriers (else all threads copy, and
  /// CTA barriers order the stages).
  bool warpSpecialized = false;
  /// Warp-specialised: the consumers take turns issuing their products.
  bool pingPong = false;
  /// Ping-pong: a tile's first S and last P V take turns too (the
  /// ping-pong-edges option; else only the key loop's steps do).
  bool edgeTurns = false;
  /// Warp-specialised: which consumer threads arrive on a stage's empty
  /// mbarriers (the release-arrivals option).
  ReleaseArrivals releaseArrivals = ReleaseArrivals::Warpgroup;
  /// The arrivals that complete a phase of a stage's empty mbarriers: 256
  /// (every consumer thread), 8 (lane 0 of each consumer warp) or 2 (one
  /// thread per consumer warpgroup).
  int64_t releaseArrivalCount() const {
    switch (releaseArrivals) {
    case ReleaseArrivals::Thread:
      return 2 * kWarpgroupThreads;
    case ReleaseArrivals::Warp:
      return 2 * kWarpgroupThreads / 32;
    case ReleaseArrivals::Warpgroup:
      return 2;
    }
    llvm_unreachable("unknown release-arrivals form");
  }
  /// The last key block's P V skips the second half of its k16 steps
  /// where no row of the tile sees those keys (the trim-last-pv option).
  bool trimLastPV = false;
  /// Dynamic scheduler, two Q buffers: a consumer issues the next tile's
  /// first S with this tile's last P V and carries that block's softmax
  /// into the next tile (the overlap-tiles option).
  bool overlapTiles = false;
  /// With two Q buffers, the producer loads a tile's Q before its block 0
  /// (the q-first option).
  bool qFirst = false;
  /// Warp-specialised, two Q buffers: the epilogue's hand-off form
  /// (warpgroup 0 hands every column to warpgroup 1 through the tile's Q
  /// buffer and moves on; the epilogue option).
  bool handoffEpilogue = false;
  /// The backward's dk/dv kernel (the backward-stacking option): S^T of
  /// both heads as one product over their stacked q, and (accumulating
  /// formulation, D = 128) dq of both heads stacked as one product's rows.
  bool stackScores = false, stackDq = false;
  /// Warp-specialised: one producer thread loads K/V tiles with TMA; the
  /// kernel's leading parameters are the K and V tensor maps.
  bool tmaLoads = false;
  /// Warp-specialised kernels walk tiles (grid x: tiles); a persistent
  /// launch caps the grid at this many CTAs (0: one CTA per tile).
  int64_t persistentCtas = 0;
  /// Persistent, batched sequences: tiles after a CTA's first come from a
  /// tile counter in the workspace (the tile-scheduler option, dynamic);
  /// else every gridDim.x-th tile.
  bool dynamicTiles = false;
  /// Bytes after the mbarriers of the dynamic scheduler's tile indices
  /// (i32): two for the producer's own hand-over (by tile parity), then one
  /// per Q buffer for the consumers.
  int64_t tileIndexBytes() const {
    return dynamicTiles ? 4 * (2 + qBuffers) : 0;
  }
  /// Byte offset (from the tiles' start) of the mbarriers, 8 bytes each:
  /// four groups of one per stage (full, fullValues, emptyKeys,
  /// emptyValues), then qFull and qEmpty, one per Q buffer, then with the
  /// hand-off epilogue its two (HandoffStep; warp-specialised kernels
  /// only), then in a cluster kernel with the dynamic scheduler the tile
  /// index hand-over's (clusterIndexBarrier: full, then empty, one per
  /// producer slot); and of the tile indices after them.
  int64_t barrierOffset() const { return qTileBytes + kTileBytes + vTileBytes; }
  /// The index of the first of the cluster's tile-index mbarriers: the
  /// count of those before them.
  int64_t clusterIndexBarrierIndex() const {
    return 4 * stages + 2 * qBuffers + (handoffEpilogue ? 2 : 0);
  }
  int64_t barrierBytes() const {
    return warpSpecialized ? 8 * (clusterIndexBarrierIndex() +
                                  (clusterSize > 1 && dynamicTiles ? 4 : 0))
                           : 0;
  }
  int64_t tileIndexOffset() const { return barrierOffset() + barrierBytes(); }
  /// Warp-specialised, batched: the producer prefetches into L2 the Q rows
  /// of the tile this many tiles later (0: none; see the q-prefetch
  /// option). A persistent CTA prefetches the tile gridDim.x later instead
  /// (its next with the static stride, about it with the dynamic
  /// scheduler).
  int64_t qPrefetchDistance = 0;
  /// CTAs per thread block cluster (the cluster-size option): 1, or 2 (TMA
  /// loads, batched sequences, an even number of pairs per KV group; with
  /// the dynamic scheduler rank 0 takes each tile pair for both): CTA rank r of
  /// a cluster takes row block b of the KV group's half r (group rows r * P/2 *
  /// Sq .. (r + 1) * P/2 * Sq - 1: the same query rows for both ranks, so the
  /// same key blocks under any mask), its producer loads keys r * block-k/2 ..
  /// of every K/V tile multicast into both CTAs, and the consumers release each
  /// stage in both CTAs. Grid x is 2 x the tile pairs (or the persistent cap,
  /// even).
  int64_t clusterSize = 1;
  /// TMA loads, batched sequences: the kernel's third tensor map is Q's,
  /// used when Sq is a multiple of 64 (see the q-tma option).
  bool qTma = false;
  /// Registers per thread after setmaxnreg: the producer's and the
  /// consumers' (128 x producer + 256 x consumer <= 168 x 384, the
  /// registers the CTA launches with); makePlan sets them.
  int64_t producerRegisters = 0, consumerRegisters = 0;
  int64_t vStageBytes() const { return blockK * valueDim * 2; }
};

class WgmmaKernelBuilder : public GPUKernelBuilder {
public:
  WgmmaKernelBuilder(OpBuilder &b, Location loc, const WgmmaPlan &plan)
      : GPUKernelBuilder(b, loc), plan(plan),
        epilogue(*this, plan.pairs, plan.valueDim, plan.elementType),
        softmax(*this, FragmentLayout::wgmmaM64NSlice(), plan.attn.scale,
                plan.rescaleThreshold, plan.exp2Emulation) {}

  /// Fills the body of `func` (arguments: q, k, v, lam, out, B, Sq, Sk).
  void build(gpu::GPUFuncOp func);

protected:
  /// Sets tid, lane, warpgroup (the warpgroup index broadcast from lane 0:
  /// ptxas then knows it is warp-uniform and keeps what derives from it,
  /// the descriptors and barrier ids, in uniform registers instead of
  /// moving it there, R2UR, in every iteration), groupThread and
  /// warpInGroup.
  void setThreadIndices();
  // Shared memory (WgmmaFragments.cpp).
  /// Sets `base` (the 1024-byte aligned start of the tiles, a byte offset
  /// into dynamic shared memory) and `baseAddress` (its shared-window
  /// address, i64).
  void alignSharedBase();
  /// alignSharedBase, then the tile views sQ, sK, sV.
  void layoutSharedMemory();
  /// A shared-memory pointer (LLVM address space 3) `offset` bytes past the
  /// tiles' start.
  Value sharedPointer(Value offset);
  /// fence.proxy.async.shared::cta: orders this thread's view of generic-
  /// proxy writes to shared memory (cp.async copies) before its later
  /// async-proxy reads (wgmma).
  void fenceAsyncProxy();
  /// An expect-tx arrival on mbarrier `bar` for `bytes` more bytes (CTA
  /// scope).
  void expectBytes(Value bar, int64_t bytes);
  /// The consumers' release of a K/V stage: this thread's part of the
  /// plan.releaseArrivalCount() arrivals on empty mbarrier `bar` (every thread,
  /// lane 0 of the warp, or one thread of the warpgroup). After the
  /// wgmma.wait_group of the product that read the tile, the reads were the
  /// tensor cores': a warp's wait covers its own part of the product, and
  /// one thread per warpgroup relies on the product completing for the
  /// whole warpgroup at once, as CUTLASS's PipelineTmaAsync consumer
  /// release does. An arrival releases only the arriving thread's own
  /// accesses, so `afterGenericAccesses` (the epilogue's exchange through
  /// the tile) first synchronises the warp, or the consumers, so that every
  /// thread's accesses and proxy fence come before the arrival.
  void releaseStage(Value bar, bool afterGenericAccesses = false);
  /// One TMA load (cp.async.bulk.tensor, tile mode) through tensor map
  /// `map` into shared memory at `shared` (a shared::cta pointer),
  /// completing on `bar`; `coordinates` builds its i32 coordinates,
  /// innermost first.
  /// With `multicastMask` (an i16 of cluster CTA ranks) the tile lands at
  /// the same offset in each of those CTAs' shared memory, completing on
  /// the mbarrier at `bar`'s offset in each (.multicast::cluster).
  void loadTensorTile(Value map, Value shared,
                      function_ref<SmallVector<Value>()> coordinates, Value bar,
                      Value multicastMask = Value());
  /// The producer's TMA loads of block `key0`'s K or V tile (`dim`
  /// columns) into the stage at byte `tileOffset` through tensor map `map`,
  /// from one thread: an expect-tx arrival for the tile's bytes on `bar`,
  /// then one load per 64-column span into the span's swizzled rows
  /// (coordinates innermost first: column, KV head, key, batch). TMA
  /// writes through the async proxy and zero-fills keys past Sk. Packed
  /// sequences: one map over [1, total_k, Hkv, D], the key at the
  /// sequence's first row plus key0; keys past the sequence (the next
  /// sequence's, finite) are masked like keys past Sk, so their
  /// probabilities are exactly 0 and their values add nothing. A cluster
  /// kernel's CTA loads its half of the keys into both CTAs.
  void loadKeyValueTile(Value map, Value tileOffset, int64_t dim, Value key0,
                        Value bar);
  /// Cluster kernels (plan.clusterSize 2): a plain arrival (release, at
  /// cluster scope with `clusterScope`, else CTA scope) on the mbarrier at
  /// `bar`'s offset in the other CTA of the cluster (mapa,
  /// mbarrier.arrive.shared::cluster).
  void arriveOnPeer(Value bar, bool clusterScope);
  /// Cluster kernels: the shared::cluster address of `ptr`'s offset in the
  /// other CTA of the cluster (mapa).
  Value peerPointer(Value ptr);
  /// Cluster kernels: the group rows [start, end) of the CTA's half of a
  /// KV group with `seqQ` query rows; otherwise all of them, [0, P Sq).
  std::pair<Value, Value> ctaGroupRows(Value seqQ);
  /// L2 prefetch of the Q rows of linear tile `t` (batched sequences, the
  /// q-prefetch option) of `numTiles`, with `tileRowBlocks` row blocks per
  /// KV group and `seqQ` query rows: producer thread `thread` (0..127) takes
  /// row thread / 2 of the tile, head 2p + thread % 2, one 128-byte line per
  /// 64 columns (PTX prefetch.global.L2; a hint, so its only cost is issue).
  /// Tiles past the last and rows past the KV group prefetch nothing.
  void prefetchTileQ(Value q, Value t, Value numTiles, Value tileRowBlocks,
                     Value seqQ, Value thread);
  /// Indices into a tile view [lead..., spans, rows, kSpan] of the 16-byte
  /// chunk holding columns col .. col + 7 (col a multiple of 8) of `row`.
  SmallVector<Value> swizzledIndex(ValueRange lead, Value row, Value col);
  /// cp.async copies (as copyTileAsync) of rows at a constant distance: row
  /// dstRow + r of the tile `dst[dstLead...]` is `src[base + r * rowStride
  /// ...]` (swizzled; dstRow a multiple of 8); `threads` must be a multiple
  /// of the chunks per row and divide the rows into whole steps.
  void copyRows(Value src, Value base, int64_t rowStride, Value validRows,
                Value dst, ValueRange dstLead, int64_t rows, int64_t cols,
                Value thread, int64_t threads, int64_t dstRow = 0);
  /// The low word (i32) of a wgmma matrix descriptor (PTX ISA "Matrix
  /// Descriptor Format") of the tile at byte offset `offset` from `base`,
  /// with leading byte offset `lbo`: start address and leading byte offset.
  Value descriptorLow(Value offset, int64_t lbo);
  /// The whole descriptor (i64) from its low word: stride byte offset
  /// `sbo`, base offset 0, 128-byte swizzle (a constant high word).
  Value packDescriptor(Value low, int64_t sbo);
  /// The low word `low` moved by `bytes` (a multiple of 16) of shared memory.
  Value advanceDescriptor(Value low, int64_t bytes);
  /// The low word of the tile at `tileOffset` + `stage` x `stageBytes`.
  Value stageDescriptorLow(Value tileOffset, Value stage, int64_t stageBytes,
                           int64_t lbo);
  Value i32Const(int64_t v) {
    return arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(v));
  }

  // Products (WgmmaFragments.cpp). The issue functions only issue: the
  // caller fences (wgmma.fence, after any register write the products
  // read), commits and waits (wgmma.commit_group / wait_group) before it
  // reads the results.
  /// The descriptors of S = Q Kᵀ over one key block, K from stage `stage`
  /// (A and B of each k16 step, interleaved). Their bases are computed
  /// before the wgmma.fence (ptxas serialises wgmma whose general input
  /// registers are defined inside the pipeline stage); the products add
  /// the steps' constant offsets in their own PTX (splitDescriptors in
  /// WgmmaFragments.cpp), which ptxas does in uniform registers.
  SmallVector<Value> scoreDescriptors(Value stage);
  /// Issues S = Q Kᵀ of the warpgroup's head over one key block (wgmma
  /// m64n{blockK}k16 over the head dimension); returns the accumulator
  /// struct (blockK / 2 f32).
  Value issueScores(ArrayRef<Value> descriptors);
  /// Issues D = A B (wgmma m64n{n}k16, one k16 step per descriptor pair, A
  /// and B of each step interleaved, both from shared memory, each K-major
  /// or, with `transposeA` / `transposeB`, MN-major: imm-trans-a /
  /// imm-trans-b 1), D starting from zero; returns the accumulator struct
  /// (n / 2 f32). Descriptors built as packDescriptor(advanceDescriptor(low,
  /// bytes)) from a shared low word are passed as that base and an add.s64
  /// per step.
  Value issueSharedProduct(ArrayRef<Value> descriptors, int64_t n,
                           bool transposeA = false, bool transposeB = false);
  /// The thread's blockK / 8 accumulator tiles of issued scores.
  SmallVector<Acc> readScores(Value scores);
  /// The thread's `tiles` accumulator tiles (8 columns each) of a product's
  /// accumulator struct.
  SmallVector<Acc> readAccumulators(Value product, int64_t tiles);
  /// The descriptors of V in stage `stage`, one per k16 step of P V.
  SmallVector<Value> pvDescriptors(Value stage);
  /// Issues O += P V over one key block: P from registers (`packedP`, as
  /// packProbabilities makes them), V through `descriptors`; `acc` becomes
  /// the results.
  void issuePV(ArrayRef<Value> packedP, ArrayRef<Value> descriptors,
               SmallVectorImpl<Acc> &acc);
  /// A tile's last P V (after the key loop), issued between `turn(true)`
  /// and `turn(false)` and waited for: as issuePV, but with
  /// plan.trimLastPV, where `keysSeen` (the keys past the block's first
  /// that some row of the tile sees) is at most half the block, only the
  /// first half of the k16 steps issue: the probabilities of the rest are
  /// exactly 0 (a causal tile ending mid-block). Each of the two forms
  /// waits for its own product, so no accumulator crosses a branch in
  /// flight (ptxas would serialise the kernel's wgmma).
  void issueLastPV(ArrayRef<Value> packedP, ArrayRef<Value> descriptors,
                   Value keysSeen, SmallVectorImpl<Acc> &acc,
                   function_ref<void(bool)> turn);
  /// Issues acc += A B (wgmma m64n{8 acc.size()}k16, one k16 step per
  /// descriptor): A from registers (four per step, as packProbabilities
  /// makes them), B MN-major from shared memory (imm-trans-b 1).
  void issueRegisterProduct(ArrayRef<Value> packedA,
                            ArrayRef<Value> descriptors,
                            SmallVectorImpl<Acc> &acc);
  /// `values` (f32) passed through an empty asm statement with side
  /// effects, which keeps their uses below the wgmma.wait_group before it:
  /// results of in-flight products, and registers that a product still in
  /// flight may read, must not be touched before their wait (ptxas would
  /// otherwise serialise the products or inject waits).
  SmallVector<Value> fenceOperands(ValueRange values);
  /// Keeps the (i32) values of `values` live in LLVM up to this point (an
  /// empty asm statement with side effects that reads them): the A operand
  /// of a product in flight until the wgmma.wait_group before this, so
  /// that LLVM does not reuse its virtual registers before the wait. The
  /// statement is empty in the PTX, so it does not constrain ptxas, which
  /// allocates registers anew; what keeps ptxas from hoisting a
  /// wgmma.wait_group above independent work is the block structure
  /// (WgmmaKernel.cpp's key loop waits inside the rescale's branch).
  void keepLive(ValueRange values);
  /// fenceOperands over accumulator tiles, in place.
  void fenceTiles(SmallVectorImpl<Acc> &tiles);
  /// The A operand registers of P V (four per k16 step) from probabilities
  /// in the accumulator layout (8-column tiles, an even number: blockK / 8
  /// in the forward), which is the A operand's layout two tiles at a time.
  SmallVector<Value> packProbabilities(ArrayRef<Acc> p);
  /// One 32-bit A-operand register from two f32 probabilities.
  Value packPair(Value x, Value y);

  // The tile's rows and keys (WgmmaTile.cpp).
  /// The kernel's sequence arguments: Sq and Sk (with packed sequences the
  /// longest), and with packed sequences cu_seqlens_q, cu_seqlens_k ([B +
  /// 1] i32) and the packed token counts (null otherwise).
  struct SequenceArgs {
    Value seqQ, seqK, cuSeqQ, cuSeqK, totalQ, totalK;
  };
  /// Row blocks (of blockQ group rows) of a KV group of `queries` query
  /// rows.
  Value rowBlocksOf(Value queries);
  /// Sets `tile`, keyLen, offset and threadRow for row block `qBlock` of KV
  /// head `kvHead` of `batch`: row blocks run from the last to the first
  /// under a causal-like mask (the longest tiles first); with packed
  /// sequences the sequence's rows and keys come from cu_seqlens (bad
  /// offsets give an empty sequence: the check kernel reports them) and a
  /// tile past the sequence's rows is idle (ctaActive false, no key
  /// block).
  void setupTile(const SequenceArgs &sequences, Value qBlock, Value kvHead,
                 Value batch);
  /// A block's scores (the thread's blockK / 8 accumulator tiles, flat)
  /// with -inf where the key at `key0` + column is not visible to the
  /// thread's row, under a uniform branch taken only by a block that
  /// straddles the mask (the scores unchanged otherwise).
  SmallVector<Value> maskBlock(ArrayRef<Value> scores, Value key0);
  // A consumer's key loop (WgmmaOverlap.cpp).
  /// The loop-carried state of a warpgroup's head, flat: Dv / 8
  /// accumulator tiles (4 f32 each), then the max and the sum of the
  /// thread's two rows.
  HeadState unpackState(ValueRange carried);
  SmallVector<Value> packState(const HeadState &state);
  /// Key block j's stage in the K/V ring and the parity of that stage's
  /// use (i32), blockBase blocks of the CTA's earlier tiles before it.
  Value stageOfBlock(Value j);
  Value parityOfBlock(Value j);
  /// One block's softmax: its scores (the issued product `scores`), masked
  /// where the block straddles the mask (maskBlock, keys from `key0`),
  /// through the online softmax of `head` (its accumulators left alone):
  /// the probabilities, the accumulators' correction factors (one per
  /// row) and whether any row's offset moved.
  struct BlockSoftmax {
    SmallVector<Acc> probabilities;
    SmallVector<Value, 2> factors;
    Value moved;
  };
  BlockSoftmax blockSoftmax(Value scores, Value key0, HeadState &head);
  /// What overlapLastPV needs of the kernel: `enterNext` makes the CTA's
  /// next tile current (its Q waited for; tile state, qSlot and tileIndex
  /// set) and returns whether there is one; `acquire(j)` / `releaseKeys(j)`
  /// wait for block j's K tile and hand it back; `edgeTurn` as keyLoop's.
  struct OverlapHooks {
    function_ref<Value()> enterNext;
    function_ref<void(Value)> acquire, releaseKeys;
    function_ref<void(bool)> edgeTurn;
  };
  /// overlap-tiles: the tile's last P V (P in `lastP`, V through `vDesc`,
  /// `keysSeen` as issueLastPV's) with the next tile's first S issued
  /// before it and that block's softmax run while the P V does (the whole
  /// P V: no trim-last-pv); where there is no next tile, or it has no key
  /// block, the P V alone (issueLastPV). Leaves the final accumulators in
  /// `head` and the tile state the current tile's; returns what the next tile
  /// starts from, in noCarry's layout: whether block 0 was computed (i1), its
  /// row max and sum (4 f32), its P registers (blockK / 4 i32).
  SmallVector<Value> overlapLastPV(HeadState &head, ArrayRef<Value> lastP,
                                   ArrayRef<Value> vDesc, Value keysSeen,
                                   const OverlapHooks &hooks);
  /// The state a head starts a tile from (unpackState's layout: zeros,
  /// -inf, 0), and the carry of a tile that computed nothing of the next.
  SmallVector<Value> initialState, noCarry;

  /// What a persistent (or one-tile) CTA walks: `numTiles` linear tiles,
  /// tile t being row block t % `tileRowBlocks` of KV head t / R % Hkv of
  /// batch t / R / Hkv; `workspace` (memref<?xf32>, with dynamicTiles) holds
  /// the tile counter (element 0, as u32).
  struct TileWalk {
    SequenceArgs sequences;
    Value numTiles, tileRowBlocks, workspace;
  };
  /// Runs `body(i)` for the CTA's i-th tile after setupTile, blockBase
  /// (the key blocks of the CTA's earlier tiles), tileIndex and qSlot (i %
  /// qBuffers); returns the number of tiles. Static: tiles blockIdx.x,
  /// + gridDim.x, ...; `begin(i)` runs before the body. dynamicTiles: the
  /// `producer` warpgroup's loading thread takes each tile after the
  /// CTA's first from the counter once `body` has issued the tile's
  /// loads, and hands it to the producer warpgroup (named barrier
  /// kProducerBarrier); the body must write it to the consumers' slot
  /// (tileIndexSlot(2 + qSlot)) before its arrival on the Q buffer's
  /// qFull. The consumers run `begin(i)` (their wait on qFull, setting
  /// nothing but reading qSlot) before reading the slot; an index past the
  /// last tile ends their walk. With `carry` (the consumers' dynamic
  /// walk only) its values are carried from tile to tile: `body` finds the
  /// previous tile's in it (the initial ones in the first) and leaves the
  /// next tile's.
  Value walkTiles(const TileWalk &walk, bool producer,
                  function_ref<void(Value)> begin,
                  function_ref<void(Value)> body,
                  SmallVectorImpl<Value> *carry = nullptr);
  /// setupTile for linear tile `t` of `walk` (row block t % R, KV head t /
  /// R % Hkv, batch t / R / Hkv).
  void setupTileAt(const TileWalk &walk, Value t);
  /// Shared-memory pointer (i32) of the dynamic scheduler's tile-index slot
  /// `slot`: 0 and 1 the producer's hand-over, 2 + q Q buffer q's.
  Value tileIndexSlot(Value slot);
  /// The tile index (index type) the producer wrote into Q buffer qSlot's
  /// slot; read after the wait on that buffer's qFull.
  Value loadConsumerTileIndex();
  /// The value the producer writes into a Q buffer's slot at the end of the
  /// dynamic walk, and the bound the consumers test each index read there
  /// against (unsigned less than: a tile): kNoTile under overlap-tiles, else
  /// `walk`'s tile count.
  Value endOfWalk(const TileWalk &walk);
  /// Shared-memory pointer of the `index`-th mbarrier (8 bytes each, from
  /// WgmmaPlan::barrierOffset; the layout is WgmmaPlan::barrierBytes').
  Value mbarrierAt(Value index);
  /// The warp-specialised kernel's mbarriers (mbarrierAt's layout): stage
  /// s's full (its K tile landed; the producer's arrivals), fullValues (its
  /// V tile), emptyKeys and emptyValues (the consumers released them); Q
  /// buffer `slot`'s qFull and qEmpty (the consumers' 256 threads arrive
  /// once a tile is done with its Q buffer: once its last S landed, or, for
  /// a tile whose epilogue reuses the buffer, after the epilogue); the
  /// hand-off epilogue's scoresLanded (warpgroup 1's last S of the tile
  /// landed) and handedOver (warpgroup 0's columns are in the Q buffer;
  /// HandoffStep), whose index is 0.
  enum class Barrier {
    Full,
    FullValues,
    EmptyKeys,
    EmptyValues,
    QFull,
    QEmpty,
    ScoresLanded,
    HandedOver
  };
  Value mbarrierOf(Barrier kind, Value index);
  /// Initialises every mbarrier of the kernel (one thread; expected
  /// arrivals as the producer and consumers make them).
  void initBarriers();
  /// A cluster kernel with the dynamic scheduler: the mbarrier (one
  /// arrival per phase) on which rank 0's loading thread announces, in
  /// rank 1, the tile index it stored there in producer slot `slot`
  /// (`full`), or on which rank 1 releases that slot to rank 0 once its
  /// producer threads read it (not `full`).
  Value clusterIndexBarrier(bool full, Value slot);
  /// The Q buffer of the CTA's tile `iter` (iter % qBuffers).
  Value qSlotOf(Value iter) {
    return plan.qBuffers > 1 ? rem(iter, plan.qBuffers) : idx(0);
  }

  // The tile (WgmmaEpilogue.cpp).
  /// Pair (of the whole query-head range) and query row of group row `r`
  /// (r / Sq + the tile's first pair, r % Sq) in 32-bit arithmetic.
  Value pairOf(Value r);
  Value queryRowOf(Value r);
  /// Group row of the thread's accumulator row `rr` (0 or 1; wgmma m64nN D
  /// fragment: warp w of the warpgroup holds rows 16 w + lane / 4 and that
  /// + 8).
  Value threadGroupRow(int64_t rr);
  /// The differential epilogue of the tile: normalises `final`'s
  /// accumulators and writes o0 - sigmoid(lam) o1 of every (row, column)
  /// to `out` ([B, Sq, H, Dv], the element type). The pair's two heads
  /// meet through shared memory at byte offset `exchangeAt` ([Dv / 16
  /// accumulator tiles][2 warpgroups][128 threads][4] f32, Dv x 256 bytes,
  /// 16 bytes per access: the tile's Q buffer or the last block's V tile;
  /// each row's lam is loaded before the first `sync`): thread t of each
  /// warpgroup, which holds
  /// the same (row, column) elements as thread t of the other, hands over
  /// half of its columns and writes the other half, so both warpgroups
  /// share the exchange and the stores. The first `sync` orders both
  /// warpgroups' last reads of the region before the writes; the second
  /// the writes before the reads. With `lseOut` ([B, 2H, Sq] f32) each
  /// warpgroup also writes its head's log-sum-exp of the tile's rows,
  /// scale * offset + ln(sum) (-inf for a row that saw no key). With
  /// `outOdd` ([B, Sq, H, Dv] of T) each warpgroup also writes its half of
  /// the columns of the second head's normalised output A_{2h+1}.
  /// With plan.handoffEpilogue the region at `exchangeAt` is the tile's Q
  /// buffer ([Dv / 8 tiles][1][128 threads][4] f32, the same bytes):
  /// warpgroup 0 hands over every column and writes no output, warpgroup 1
  /// writes all of it; `handoff` emits each step's synchronisation
  /// (HandoffStep) and `sync` is not called.
  void emitEpilogue(const HeadState &final, function_ref<void()> sync,
                    function_ref<void(HandoffStep)> handoff, Value exchangeAt,
                    Value lam, Value out, Value lseOut, Value outOdd);

  const WgmmaPlan &plan;
  DifferentialEpilogue epilogue;
  OnlineSoftmax softmax;

  // Values of the kernel, set by build().
  Value tid, lane, warpgroup, warpInGroup;
  /// The head of the pair (0 or 1) the thread's warpgroup computes.
  Value pairHead;
  /// Cluster kernels: the CTA's rank in its cluster (blockIdx.x % 2);
  /// null otherwise.
  Value clusterRank;
  Value base, baseAddress;
  Value sQ, sK, sV;
  /// The Q buffer of the current tile (index; 0 with one buffer).
  Value qSlot;
  /// Key blocks of the CTA's tiles before the current one (the stage ring
  /// continues across tiles), and the current tile's linear index.
  Value blockBase, tileIndex;
  /// Query rows (of the sequence) of the thread's two accumulator rows.
  std::array<Value, 2> threadRow;
  /// The thread's index in its warpgroup (0..127).
  Value groupThread;
  /// The tile a CTA computes, set per tile by setupTile: a block of 64 rows
  /// row0 .. row0 + rowsValid - 1 of the `groupRows` rows (pair-major;
  /// in a cluster kernel, the end of the CTA's half of them) of
  /// KV head `kvHead` of `batch`, whose first query row and key sit at
  /// qRowBase and kRowBase of the (packed) tensors; seqQ and seqK are the
  /// sequence's lengths, firstPair the group's first pair, ctaActive (packed
  /// sequences; null otherwise) whether the tile has rows, [lo, hi) the
  /// keys its rows may see in numBlocks blocks (minRow .. maxRow: the query
  /// rows that bound them).
  struct Tile {
    Value kvHead, batch, qRowBase, kRowBase, groupRows, rowBlocks, ctaActive;
    Value row0, rowsValid, firstPair, minRow, maxRow, lo, hi, numBlocks;
    Value seqQ, seqK;
  } tile;
  Value keyLen, offset;
};

/// The backward's dk/dv kernel on sm_90a (WgmmaBackward.cpp), with the
/// portable backward's arguments and workspace records
/// (MmaSyncBackwardBuilder.h): `plan` gives blockK keys per CTA (two
/// warpgroups of 64, warps = 8), blockQ query rows per block (a multiple of
/// 16), the stages (2), the element type, head dimensions and heads. With
/// `reduceDq` (the accumulating formulation) it also adds each query
/// block's dq to the workspace's f32 accumulator (no dq kernel).
void buildBackwardKeyKernel(OpBuilder &b, Location loc, gpu::GPUFuncOp func,
                            const WgmmaPlan &plan, bool reduceDq);
/// Its dynamic shared memory (bytes).
int64_t backwardKeySharedBytes(const WgmmaPlan &plan, bool reduceDq);
/// The accumulating formulation's dq conversion on sm_90a (the dk/dv
/// kernel's `plan`): grid (ceil(Sq / blockQ) x pairs per KV group, KV
/// heads, B), 256 threads, backwardDqConvertSharedBytes of dynamic shared
/// memory (the chunk's dq as T, rows padded by kDqConvertPad elements).
void buildBackwardDqConvertKernel(OpBuilder &b, Location loc,
                                  gpu::GPUFuncOp func, const WgmmaPlan &plan);
inline constexpr int64_t kDqConvertPad = 8;
int64_t backwardDqConvertSharedBytes(const WgmmaPlan &plan);
/// The backward's statistics (`stats`) or dq kernel on sm_90a
/// (WgmmaBackwardRows.cpp), over the portable row kernels' grid (64 group
/// rows per CTA): `plan` gives blockK keys per block (64 for dq, whose
/// warpgroup w computes head 2p + w; 64 for the statistics too, whose
/// warpgroup w takes keys 32 w .. 32 w + 31 of each block), the stages (2),
/// warps = 8, the element type, dimensions and heads. With `dqChunkRows`
/// (the accumulating formulation) the statistics kernel also zeroes the
/// chunks of the f32 dq accumulator that start in its tile.
void buildBackwardRowKernel(OpBuilder &b, Location loc, gpu::GPUFuncOp func,
                            const WgmmaPlan &plan, bool stats,
                            int64_t dqChunkRows = 0);
/// Its dynamic shared memory (bytes).
int64_t backwardRowSharedBytes(const WgmmaPlan &plan, bool stats);

} // namespace mlir::diffattn::wgmma

#endif // DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_WGMMABUILDER_H
