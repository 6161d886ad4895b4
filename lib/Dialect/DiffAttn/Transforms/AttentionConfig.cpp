//===- AttentionConfig.cpp - what every diffattn lowering shares ----------===//
//
// The head mapping, mask predicate and key length that the decomposition,
// the FlashAttention tiling and the target strategies all use, so that the
// semantics of SPEC.md live in one place.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;
using namespace mlir::diffattn;

AttentionConfig AttentionConfig::get(Operation *op) {
  AttentionConfig config;
  if (auto v2 = dyn_cast<V2Op>(op)) {
    config.kind = Kind::V2;
    config.numPairs = v2.getNumPairs();
    config.numKeyHeads = config.numValueHeads = v2.getNumKvHeads();
    config.headDim = v2.getHeadDim();
    config.valueDim = v2.getValueDim();
    config.elementType = v2.getQ().getType().getElementType();
    config.scale = v2.getScaleOrDefault();
    config.causal = v2.getCausal();
    config.windowLeft = v2.getWindowLeftBound();
    config.windowRight = v2.getWindowRightBound();
    config.hasKvLen = v2.isDecode();
  } else {
    auto v1 = cast<V1Op>(op);
    config.kind = Kind::V1;
    config.numPairs = v1.getNumPairs();
    config.numValueHeads = v1.getNumKvHeads();
    config.numKeyHeads = 2 * config.numValueHeads;
    config.headDim = v1.getHeadDim();
    config.valueDim = 2 * config.headDim;
    config.elementType = v1.getQ().getType().getElementType();
    config.scale = v1.getScaleOrDefault();
    config.causal = v1.getCausal();
    config.windowLeft = -1;
    config.windowRight = -1;
    config.hasKvLen = false;
    config.lambdaInit = v1.getLambdaInitAttr().getValueAsDouble();
    config.eps = v1.getEpsAttr().getValueAsDouble();
  }
  if (config.causal)
    config.windowRight = 0;
  return config;
}

AffineExpr AttentionConfig::keyHead(AffineExpr j) const {
  if (kind == Kind::V2) // G = 2H / Hkv query heads per KV head.
    return j.floorDiv(2 * numPairs / numKeyHeads);
  // V1: pair h = j / 2 reads KV group h / R (R = H / Hkv); query head 2h+s
  // reads key head 2 * group + s; (j / 2) / R == j / (2R).
  int64_t pairsPerGroup = numPairs / numValueHeads;
  return j.floorDiv(2 * pairsPerGroup) * 2 + j % 2;
}

AffineExpr AttentionConfig::valueHead(AffineExpr j) const {
  if (kind == Kind::V2)
    return keyHead(j);
  int64_t pairsPerGroup = numPairs / numValueHeads;
  return j.floorDiv(2 * pairsPerGroup);
}

SmallVector<Operation *> mlir::diffattn::collectDiffAttnOps(Operation *root) {
  SmallVector<Operation *> ops;
  root->walk([&](Operation *op) {
    if (isa<V2Op, V1Op>(op))
      ops.push_back(op);
  });
  return ops;
}

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

/// The materialization that sinks `op`'s result into a block argument.
static bufferization::MaterializeInDestinationOp getSink(Operation *op) {
  Value result = op->getResult(0);
  if (!result.hasOneUse())
    return nullptr;
  auto sink =
      dyn_cast<bufferization::MaterializeInDestinationOp>(*result.user_begin());
  if (!sink || sink.getSource() != result ||
      !isa<BlockArgument>(sink.getDest()) ||
      sink.getDest().getType() != result.getType())
    return nullptr;
  return sink;
}

Value mlir::diffattn::getResultDestination(Operation *op) {
  auto sink = getSink(op);
  return sink ? sink.getDest() : Value();
}

void mlir::diffattn::replaceWithResult(RewriterBase &rewriter, Operation *op,
                                       Value result) {
  auto sink = getSink(op);
  rewriter.replaceOp(op, result);
  if (sink)
    rewriter.replaceOp(sink, sink.getSource());
}
