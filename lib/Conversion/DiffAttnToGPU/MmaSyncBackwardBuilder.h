//===- MmaSyncBackwardBuilder.h - the backward's kernel builder -*- C++ -*-===//
//
// Private to lib/Conversion/DiffAttnToGPU: the portable strategy's backward
// kernels (MmaSyncBackward.cpp: the statistics, dq and dk/dv kernels and
// their launch rule) and their parts (MmaSyncBackwardFragments.cpp: the
// products, probabilities, the cp.async pipeline). The fragment layouts are
// the forward's (MmaSyncBuilder.h).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_MMASYNCBACKWARDBUILDER_H
#define DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_MMASYNCBACKWARDBUILDER_H

#include "MmaSyncBuilder.h"

#include <functional>

namespace mlir::diffattn::mma_sync {

/// Query rows per block of the dk/dv kernel.
constexpr int64_t kQueryBlock = 32;
/// Group rows and threads per CTA of the statistics kernel that reads
/// out_odd (buildOutputStatisticsKernel): four threads per row.
constexpr int64_t kOutputStatsRows = 64;
constexpr int64_t kOutputStatsThreads = 4 * kOutputStatsRows;
/// The workspace's record of one (b, pair, query row), f32, at ((b * H +
/// pair) * Sq + i) * kStatWidth: what the dq and dk/dv kernels need of the
/// row, written by the statistics kernel (two 16-byte cp.async chunks).
constexpr int64_t kStatWidth = 8;
enum StatField : int64_t {
  kDeltaEven = 0, ///< D_{2h} = rowsum(dout o out) + sigmoid(lam) r
  kDeltaOdd,      ///< D_{2h+1} = -sigmoid(lam) r
  kSigmoid,       ///< sigmoid(lam)
  kShiftEven,     ///< -lse_{2h} log2 e (-inf for a row with no key)
  kShiftOdd,      ///< -lse_{2h+1} log2 e
};

/// The kernel arguments, in the manifest's order (docs/manifest.md): the
/// op's operands and results as 1-D buffers, the workspace, then B, Sq, Sk.
struct BackwardArgs {
  Value q, k, v, lam, out, dout, lse, kvLen, outOdd, dq, dk, dv, dlam,
      workspace;
  Value seqQ, seqK;
};
/// The backward kernels' arguments from their entry block (kv_len and
/// out_odd where `attn` has them).
BackwardArgs readBackwardArgs(Block &entry, const AttentionConfig &attn);

/// The workspace index (f32 elements) of the record of (batch, pair, query
/// row `query`): ((batch * pairs + pair) * Sq + query) * kStatWidth.
Value recordIndex(GPUKernelBuilder &kb, Value batch, Value pair, Value query,
                  Value seqQ, int64_t pairs);
/// The dk/dv kernels' query blocks for the keys [key0, key0 + blockKeys):
/// the query rows that may see one of them (KeyRange.h's rule inverted: i
/// >= key0 - offset - right with a right bound, i <= key0 + blockKeys - 1
/// - offset + left with a left bound, none when key0 >= keyLen) as the
/// first row `qlo` (a multiple of blockQ) and the number of blockQ-row
/// blocks from it.
std::pair<Value, Value> keyBlockQueries(GPUKernelBuilder &kb,
                                        const AttentionConfig &attn, Value key0,
                                        int64_t blockKeys, int64_t blockQ,
                                        Value offset, Value keyLen, Value seqQ);
/// cp.async copies of the workspace records of query rows q0 .. q0 + rows -
/// 1 of `pair` into sStat[stage] ([stages, blockQ, kStatWidth] f32), zero
/// past `rows`: the first blockQ * kStatWidth / 4 threads copy a 16-byte
/// chunk each.
void copyRecordsAsync(GPUKernelBuilder &kb, const BackwardArgs &args,
                      Value sStat, Value stage, Value batch, Value pair,
                      Value q0, Value rows, Value tid, int64_t blockQ,
                      int64_t pairs);
/// The records of the thread's columns of a query block in the dk/dv
/// kernels (query rows 8 nt + colLane + c, c = 0, 1, of sStat[stage]), one
/// value per column in that order.
struct ColumnRecords {
  SmallVector<Value> deltaEven, deltaOdd, sigmoid, shift[2];
};
ColumnRecords loadColumnRecords(GPUKernelBuilder &kb, Value sStat, Value stage,
                                Value colLane, int64_t qTiles);
/// Whether a query block q0 .. q0 + blockQ - 1 needs the per-element mask
/// against the keys [key0, key0 + blockKeys): it straddles a bound or Sq.
Value keyBlockNeedsMask(GPUKernelBuilder &kb, const AttentionConfig &attn,
                        Value key0, int64_t blockKeys, Value q0, int64_t blockQ,
                        Value seqQ, Value offset, Value keyLen);
/// Whether value i of the thread's S^T tiles (key row keyRow[(i % 4) / 2],
/// query q0 + colLane + 8 (i / 4) + i % 2) is visible, and the query one of
/// the sequence's.
Value keyColumnVisible(GPUKernelBuilder &kb, const AttentionConfig &attn,
                       Value q0, Value colLane, int64_t i,
                       ArrayRef<Value> keyRow, Value seqQ, Value offset,
                       Value keyLen);
/// Writes dk = scale * final's first D / 8 tiles and dv = the next Dv / 8
/// (accumulator tiles of key rows keyRow[0], keyRow[1], columns colLane +
/// 8 t (+ 1)) for the rows below Sk.
void writeKeyGradients(GPUKernelBuilder &kb, const BackwardArgs &args,
                       ValueRange final, ArrayRef<Value> keyRow, Value kRowBase,
                       Value kvHead, Value colLane, const TileConfig &plan);

/// The lse element (f32) of head `head` (of 2H) at query row `query`:
/// (batch * queryHeads + head) * Sq + query ([B, 2H, Sq]).
Value lseIndex(GPUKernelBuilder &kb, Value batch, Value head, Value query,
               Value seqQ, int64_t queryHeads);
/// rowsum(dout o out) of the row at `pairRow` (its index in out and dout),
/// summed over the quad: every lane reads Dv / 4 columns from `colLane`
/// (2 (lane % 4)), pairs of 2-element loads 8 columns apart.
Value outputRowDot(GPUKernelBuilder &kb, const BackwardArgs &args,
                   Value pairRow, Value colLane, int64_t valueDim);
/// What the statistics kernels know of one of the thread's rows when they
/// write its record, each summed over the row's quad where it is a sum: r
/// = rowsum(dout o A_2h+1) (recomputed as rowsum(P_2h+1 o G), or read from
/// out_odd), dot = rowsum(dout o out), whether the row exists (one of the
/// group's, or with out_odd one of the sequence's), the record's first element
/// in the workspace, the row's index in lam (pairRow), lam there (f32) and
/// sigmoid of it, both heads' -lse log2 e, and the thread's lane.
struct RowStatistics {
  Value r, dot, valid, statBase, pairRow, lam, sigmoid, shiftEven, shiftOdd;
  Value lane;
};
/// Writes the row's record (D_2h = dot + sigmoid(lam) r, D_2h+1 =
/// -sigmoid(lam) r, sigmoid(lam), the shifts) and dlam = -sigmoid(lam)
/// sigmoid(-lam) r from the quad's first lane.
void writeRowStatistics(GPUKernelBuilder &kb, DifferentialEpilogue &epilogue,
                        const BackwardArgs &args, const RowStatistics &row);

/// The f32 dq accumulator of the accumulating formulation (the strategy
/// option deterministic = false; MmaSyncBackwardDq.cpp): [B, H, Sq, 2 D]
/// f32 after the records, unscaled, a (pair, query row)'s two heads' D
/// columns each, 8-column chunks swizzled by query row.
/// Where it starts in the workspace (f32 elements): after the records, B x
/// H x Sq x kStatWidth (B = gridDim.z).
Value dqAccumulatorOffset(GPUKernelBuilder &kb, Value seqQ, int64_t pairs);
/// The accumulator's element index of (batch, pair, query row), column 0.
Value dqRowIndex(GPUKernelBuilder &kb, Value batch, Value pair, Value query,
                 Value seqQ, int64_t pairs, int64_t headDim);
/// Where column `column` (of the row's 2 D) of query row `query` is
/// stored: its 8-column chunk XOR query % 8.
Value dqSwizzledColumn(GPUKernelBuilder &kb, Value column, Value query);
/// The sm_90a accumulating kernels' accumulator (WgmmaBackward.cpp) is
/// instead a chunk of `chunkFloats` f32 per (batch, pair, block of
/// `chunkRows` query rows) in the dk/dv kernel's fragment order, chunk
/// ((batch * pairs + pair) * ceil(Sq / chunkRows) + qBlock): its element
/// offset (the workspace holds B x roundup(Sq, chunkRows) rows).
Value dqChunkOffset(GPUKernelBuilder &kb, Value accBase, Value batch,
                    Value pair, Value qBlock, Value seqQ, int64_t pairs,
                    int64_t chunkRows, int64_t chunkFloats);
/// Zeroes the accumulator of group rows row0 .. row0 + rows - 1 of a row
/// kernel's CTA (group row r: pair pairOf(r), query row queryRowOf(r)) with
/// 16-byte stores spread over the CTA's `threads` threads: their rows, or
/// with `chunkRows` (the chunked layout) the chunks that start in them.
void zeroDqAccumulator(GPUKernelBuilder &kb, Value workspace, Value accBase,
                       Value batch, Value row0, Value rows,
                       function_ref<Value(Value)> pairOf,
                       function_ref<Value(Value)> queryRowOf, Value seqQ,
                       Value tid, int64_t threads, int64_t pairs,
                       int64_t headDim, int64_t chunkRows);
/// The i64 generic address of f32 element `index` of the 1-D `workspace`,
/// for inline PTX that converts it to a global one.
Value workspaceAddress(GPUKernelBuilder &kb, Value workspace, Value index);
/// One thread's bulk reduction of `bytes` (index) of staged f32 rows at
/// shared address `source` (index) into the accumulator at element
/// `target` of `workspace` (cp.reduce.async.bulk .add.f32), committed as a
/// bulk group.
void addStagedDq(GPUKernelBuilder &kb, Value workspace, Value target,
                 Value source, Value bytes);

/// The dq zeroing kernel (BackwardBuilder::buildDqZeroKernel): threads per
/// CTA, and accumulator rows (2 D f32 each) per CTA: 64, or the chunked
/// layout's chunk rows (a span's floats, a multiple of 4 kDqZeroThreads
/// for these, give every thread the same number of 16-byte stores; the
/// stores are guarded either way).
constexpr int64_t kDqZeroThreads = 256;
inline int64_t dqZeroSpanRows(int64_t dqChunkRows) {
  return dqChunkRows ? dqChunkRows : 64;
}

/// The accumulating formulation's dk/dv kernel (MmaSyncBackwardWide.cpp):
/// keys per CTA (8 warps) and query rows per block.
constexpr int64_t kWideKeys = 128;
constexpr int64_t kWideQueryBlock = 64;
/// Its dynamic shared memory (bytes): K and V rows, `plan.stages` stages of
/// (q of both heads, dout, records), dS of both heads and P_c, padded rows.
int64_t wideKeySharedBytes(const TileConfig &plan);

class BackwardBuilder : public MmaSyncKernelBuilder {
public:
  using MmaSyncKernelBuilder::MmaSyncKernelBuilder;

  /// Kernels 1 (`stats`) and 2 of the file comment.
  void buildRowKernel(gpu::GPUFuncOp func, bool stats);
  /// Kernel 3.
  void buildKeyKernel(gpu::GPUFuncOp func);
  /// Kernel 3 of the accumulating formulation (reduceDq), in
  /// FlashAttention-2's warp layout (MmaSyncBackwardWide.cpp).
  void buildWideKeyKernel(gpu::GPUFuncOp func);
  /// Kernel 1 when the op has out_odd (MmaSyncBackwardStats.cpp): the
  /// records and dlam from rowsum(dout o out) and r = rowsum(dout o
  /// out_odd), kOutputStatsRows (query row, pair) rows per CTA of
  /// kOutputStatsThreads (a quad per row), the pair fastest: grid
  /// (ceil(Sq x H / kOutputStatsRows), 1, B). It reads only: the
  /// accumulating formulation's zeroing is buildDqZeroKernel's.
  void buildOutputStatisticsKernel(gpu::GPUFuncOp func);
  /// The accumulating formulation's first kernel when the statistics are
  /// bandwidth-bound (out_odd): zeroes the f32 dq accumulator, in either
  /// layout (dqChunkRows), with 16-byte stores. Grid (x, KV head, batch),
  /// kDqZeroThreads threads; CTA x zeroes dqZeroSpanRows(dqChunkRows) rows
  /// of 2 D f32 from row x times that of its KV group's run (the last CTA
  /// fewer), so x covers ceil(pairsPerGroup x rows / span rows) CTAs, rows
  /// being Sq or Sq rounded up to dqChunkRows. A kernel of its own because
  /// the statistics kernel, zeroing while it read, reached 64% of the
  /// H200's DRAM bandwidth (backward run 58).
  void buildDqZeroKernel(gpu::GPUFuncOp func);
  /// The dq conversion kernel of the accumulating formulation: dq = scale *
  /// the workspace's f32 accumulator, rounded to the element type, over the
  /// row kernels' grid.
  void buildDqConvertKernel(gpu::GPUFuncOp func);

  /// The accumulating formulation (the strategy option deterministic =
  /// false, on chips with bulk copies): the statistics kernel (or, with
  /// out_odd, buildDqZeroKernel) zeroes the f32 dq accumulator
  /// (dqAccumulatorOffset), the dk/dv kernel adds each
  /// key block's dS K to it with bulk reductions, buildDqConvertKernel
  /// writes dq.
  bool reduceDq = false;
  /// With reduceDq, the sm_90a kernels' chunked accumulator
  /// (dqChunkOffset) of this many query rows per chunk (0: the rows
  /// layout), whose chunks the statistics kernel zeroes.
  int64_t dqChunkRows = 0;

private:
  BackwardArgs readArgs(Block &entry) {
    return readBackwardArgs(entry, plan.attn);
  }
  /// A dk/dv kernel's key block and the query blocks that see it (both
  /// formulations): `count` blocks, block j being pair firstPair + j /
  /// queryBlocks of the KV group and its rows from qlo + (j % queryBlocks)
  /// blockQ (`blockOf` returns (pair, q0)); `load(j, stage)` issues block
  /// j's cp.async copies of q of both heads into sQ[stage], dout into
  /// sDO[stage] and the rows' records into sStat[stage] (zero past Sq).
  struct KeyBlockWalk {
    Value count;
    std::function<std::pair<Value, Value>(Value)> blockOf;
    std::function<void(Value, Value)> load;
  };
  /// Copies the CTA's K and V rows [key0, key0 + blockKeys) of `kvHead`
  /// into sK and sV as one cp.async group (zero-filled past kv_len: what a
  /// cache holds there must not reach G, 0 * NaN) and returns the walk
  /// over the query blocks of blockQ rows that may see them
  /// (keyBlockQueries). setKeyLength must have run.
  KeyBlockWalk walkKeyBlock(const BackwardArgs &args, Value batch, Value kvHead,
                            Value key0, Value tid, int64_t blockKeys,
                            int64_t blockQ, Value sDO, Value sStat);
  /// Sets keyLen (kv_len[b] clamped to [0, Sk], or Sk) and offset =
  /// keyLen - Sq for sequence `batch`; a device-side assertion checks
  /// kv_len[blockIdx.z] (which is `batch` unless the kernel renumbers its
  /// CTAs, blockIdsXSlowest).
  void setKeyLength(const BackwardArgs &args, Value batch, Value tid);
  /// A row-major tile in shared memory and its lead indices.
  struct TileRef {
    Value tile;
    SmallVector<Value, 2> lead;
  };
  /// The A fragments (ldmatrix) of rows aRow0 .. aRow0 + 15 of `a`, one
  /// per 16 columns of kDim.
  SmallVector<SmallVector<Value>> loadAFragments(const TileRef &a, Value aRow0,
                                                 int64_t kDim);
  /// C[i][j][16 x n] = A_i[aRow0 .. aRow0 + 15, 0 .. kDim) B_j[0 .. n, 0 ..
  /// kDim)^T for every A_i of `as` and B_j of `bs`: each fragment is loaded
  /// once and feeds every product it is an operand of. `aFrags`, if given,
  /// are the A fragments already in registers (loadAFragments).
  SmallVector<SmallVector<SmallVector<Acc>>>
  productsABt(ArrayRef<TileRef> as, Value aRow0, ArrayRef<TileRef> bs,
              int64_t n, int64_t kDim,
              ArrayRef<SmallVector<SmallVector<Value>>> aFrags = {});
  /// acc_i[16 x 8 acc_i.size()] += P_i B for every i: P_i (16 x 8
  /// P_i.size(), f32 accumulator tiles) rounded to the element type as the
  /// A operand, B the row-major tile [8 P_i.size(), 8 acc_i.size()]
  /// (ldmatrix.trans), each B fragment loaded once for every P_i.
  void productsPB(ArrayRef<ArrayRef<Acc>> ps, const TileRef &b,
                  ArrayRef<SmallVectorImpl<Acc> *> accs);
  /// exp2(scale log2e s + shift) where `visible` (null: everywhere), else
  /// 0.
  Value probability(Value s, Value shift, Value visible);
  /// The probabilities of `heads` (scores s[h], shifts shift(h, i) for the
  /// thread's value i of a tile) with masking only where `needsMask` holds
  /// (an scf.if; `visible(i)` of value i of the flattened tiles).
  std::array<SmallVector<Acc>, 2>
  probabilities(ArrayRef<int64_t> heads, std::array<SmallVector<Acc>, 2> &s,
                function_ref<Value(int64_t, int64_t)> shift, Value needsMask,
                function_ref<Value(int64_t)> visible);
  /// The software pipeline over `count` blocks: `load(j, stage)` issues the
  /// cp.async copies of block j, `body(j, stage, carried)` consumes it;
  /// `afterPrologue`, if given, runs after the prologue's copies.
  SmallVector<Value>
  pipelined(Value count, ValueRange init, function_ref<void(Value, Value)> load,
            function_ref<SmallVector<Value>(Value, Value, ValueRange)> body,
            function_ref<void()> afterPrologue = nullptr);
};

} // namespace mlir::diffattn::mma_sync

#endif // DIFFATTN_LIB_CONVERSION_DIFFATTNTOGPU_MMASYNCBACKWARDBUILDER_H
