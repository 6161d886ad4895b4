//===- KeyRange.cpp - which keys a query row sees -------------------------===//
//
// The visibility predicate, the key length, and the one key-range /
// needs-mask computation of blocked lowerings (see KeyRange.h).
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/Utils/KeyRange.h"

#include "mlir/Dialect/Arith/IR/Arith.h"

using namespace mlir;
using namespace mlir::diffattn;

namespace {
/// Index constants and arithmetic over one builder and location.
struct IndexOps {
  OpBuilder &b;
  Location loc;
  Value idx(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, loc, x, y); }
};
} // namespace

Value mlir::diffattn::buildIsVisible(OpBuilder &b, Location loc,
                                     const AttentionConfig &config, Value row,
                                     Value key, Value offset, Value keyLen) {
  using arith::CmpIPredicate;
  Value visible =
      arith::CmpIOp::create(b, loc, CmpIPredicate::slt, key, keyLen);
  if (config.isUnmasked())
    return visible;
  Value pos = arith::AddIOp::create(b, loc, row, offset);
  if (config.windowRight >= 0) {
    Value bound = arith::AddIOp::create(
        b, loc, pos,
        arith::ConstantIndexOp::create(b, loc, config.windowRight));
    visible = arith::AndIOp::create(
        b, loc, visible,
        arith::CmpIOp::create(b, loc, CmpIPredicate::sle, key, bound));
  }
  if (config.windowLeft >= 0) {
    Value bound = arith::SubIOp::create(
        b, loc, pos, arith::ConstantIndexOp::create(b, loc, config.windowLeft));
    visible = arith::AndIOp::create(
        b, loc, visible,
        arith::CmpIOp::create(b, loc, CmpIPredicate::sge, key, bound));
  }
  return visible;
}

Value mlir::diffattn::buildKeyLength(OpBuilder &b, Location loc, Value kvLen,
                                     Value seqLen) {
  if (!kvLen)
    return seqLen;
  // kv_len is checked by the caller before launch; the clamp keeps every
  // access inside the cache even if it was not.
  Value idx = arith::IndexCastOp::create(b, loc, b.getIndexType(), kvLen);
  Value zero = arith::ConstantIndexOp::create(b, loc, 0);
  return arith::MinSIOp::create(
      b, loc, arith::MaxSIOp::create(b, loc, idx, zero), seqLen);
}

std::pair<Value, Value> mlir::diffattn::buildVisibleKeyBounds(
    OpBuilder &b, Location loc, const AttentionConfig &config, Value minRow,
    Value maxRow, Value offset, Value keyLen) {
  IndexOps ops{b, loc};
  auto idx = [&](int64_t v) { return ops.idx(v); };
  auto add = [&](Value x, Value y) { return ops.add(x, y); };
  auto sub = [&](Value x, Value y) { return ops.sub(x, y); };
  Value lo = idx(0), hi = keyLen;
  if (config.windowLeft >= 0)
    lo = arith::MaxSIOp::create(
        b, loc, idx(0), sub(add(minRow, offset), idx(config.windowLeft)));
  if (config.windowRight >= 0)
    hi = arith::MinSIOp::create(
        b, loc, keyLen, add(add(maxRow, offset), idx(config.windowRight + 1)));
  return {lo, hi};
}

Value mlir::diffattn::alignDownToBlock(OpBuilder &b, Location loc, Value lo,
                                       int64_t blockK) {
  Value rem = arith::RemUIOp::create(
      b, loc, lo, arith::ConstantIndexOp::create(b, loc, blockK));
  return arith::SubIOp::create(b, loc, lo, rem);
}

Value mlir::diffattn::buildBlockNeedsMask(OpBuilder &b, Location loc,
                                          const AttentionConfig &config,
                                          Value key0, int64_t blockK,
                                          Value minRow, Value maxRow,
                                          Value offset, Value keyLen) {
  using arith::CmpIPredicate;
  IndexOps ops{b, loc};
  auto idx = [&](int64_t v) { return ops.idx(v); };
  auto add = [&](Value x, Value y) { return ops.add(x, y); };
  auto sub = [&](Value x, Value y) { return ops.sub(x, y); };
  auto cmp = [&](CmpIPredicate p, Value x, Value y) {
    return arith::CmpIOp::create(b, loc, p, x, y).getResult();
  };
  Value needsMask = cmp(CmpIPredicate::sgt, add(key0, idx(blockK)), keyLen);
  if (config.windowRight >= 0)
    needsMask = arith::OrIOp::create(
        b, loc, needsMask,
        cmp(CmpIPredicate::sgt, add(key0, idx(blockK - 1)),
            add(add(minRow, offset), idx(config.windowRight))));
  if (config.windowLeft >= 0)
    needsMask = arith::OrIOp::create(
        b, loc, needsMask,
        cmp(CmpIPredicate::slt, key0,
            sub(add(maxRow, offset), idx(config.windowLeft))));
  return needsMask;
}
