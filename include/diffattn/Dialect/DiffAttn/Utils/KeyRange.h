//===- KeyRange.h - which keys a query row sees ----------------*- C++ -*-===//
//
// SPEC.md's visibility rule (key length, causal mask, sliding window,
// bottom-right aligned) as IR builders, and the one key-range / needs-mask
// computation that every blocked lowering shares: the FlashAttention tiling
// (diffattn-tile-flash) and the GPU strategies skip key blocks no row of a
// query block can see, and mask only the blocks that straddle the mask.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_UTILS_KEYRANGE_H
#define DIFFATTN_DIALECT_DIFFATTN_UTILS_KEYRANGE_H

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"

#include "mlir/IR/Builders.h"

#include <tuple>
#include <utility>

namespace mlir::diffattn {

/// Builds `key` visibility for query row `row` (all index values):
/// `key < keyLen` and the causal/window bounds around `row + offset`, where
/// `offset = keyLen - Sq` (bottom-right alignment).
Value buildIsVisible(OpBuilder &b, Location loc, const AttentionConfig &config,
                     Value row, Value key, Value offset, Value keyLen);

/// The number of valid keys of one sequence (index typed): `kvLen` (an i32
/// element of the op's `kv_len`) clamped to [0, seqLen], or `seqLen` when
/// `kvLen` is null.
Value buildKeyLength(OpBuilder &b, Location loc, Value kvLen, Value seqLen);

/// The keys [lo, hi) that some query row in [minRow, maxRow] may see (all
/// index values; `offset = keyLen - Sq`): lo = max(0, minRow + offset -
/// left) with a left window bound, else 0; hi = min(keyLen, maxRow + offset
/// + right + 1) with a right bound (causal: right = 0), else keyLen. Rows
/// outside the window see no key of [0, lo) or [hi, keyLen). lo may exceed
/// hi (no key visible). Not aligned to a block: see alignDownToBlock.
std::pair<Value, Value> buildVisibleKeyBounds(OpBuilder &b, Location loc,
                                              const AttentionConfig &config,
                                              Value minRow, Value maxRow,
                                              Value offset, Value keyLen);

/// `lo` rounded down to a multiple of `blockK` (lo >= 0), so that key blocks
/// start on block boundaries.
Value alignDownToBlock(OpBuilder &b, Location loc, Value lo, int64_t blockK);

/// Whether some key of the block [key0, key0 + blockK) is hidden from some
/// query row in [minRow, maxRow] (i1): the block reaches past `keyLen`, or
/// past the right bound of the first row, or starts before the left bound
/// of the last row. Blocks for which this is false need no mask at all;
/// the others are masked per element with buildIsVisible.
Value buildBlockNeedsMask(OpBuilder &b, Location loc,
                          const AttentionConfig &config, Value key0,
                          int64_t blockK, Value minRow, Value maxRow,
                          Value offset, Value keyLen);

} // namespace mlir::diffattn

#endif // DIFFATTN_DIALECT_DIFFATTN_UTILS_KEYRANGE_H
