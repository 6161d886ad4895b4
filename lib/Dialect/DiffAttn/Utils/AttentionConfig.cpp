//===- AttentionConfig.cpp - the static description of a diffattn op ------===//
//
// The head mapping and constants that the decomposition, the FlashAttention
// tiling and the GPU strategies all read, so that SPEC.md's semantics live in
// one place.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/Utils/AttentionConfig.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include <cmath>

using namespace mlir;
using namespace mlir::diffattn;

/// The `scale` attribute's value (an f32, exact in double), or 1/sqrt(D)
/// computed in double when it is absent.
static double scaleOrDefaultF64(FloatAttr scale, int64_t headDim) {
  if (scale)
    return scale.getValueAsDouble();
  return 1.0 / std::sqrt(static_cast<double>(headDim));
}

AttentionConfig AttentionConfig::get(Operation *op) {
  AttentionConfig config;
  auto readV2 = [&](auto v2) {
    config.kind = Kind::V2;
    config.numPairs = v2.getNumPairs();
    config.numKeyHeads = config.numValueHeads = v2.getNumKvHeads();
    config.headDim = v2.getHeadDim();
    config.valueDim = v2.getValueDim();
    config.elementType = v2.getQ().getType().getElementType();
    config.scale = v2.getScaleOrDefault();
    config.scaleF64 = scaleOrDefaultF64(v2.getScaleAttr(), config.headDim);
    config.causal = v2.getCausal();
    config.windowLeft = v2.getWindowLeftBound();
    config.windowRight = v2.getWindowRightBound();
  };
  if (auto v2 = dyn_cast<V2Op>(op)) {
    readV2(v2);
    config.hasKvLen = v2.isDecode();
    config.hasOutOdd = static_cast<bool>(v2.getOutOdd());
  } else if (auto paged = dyn_cast<V2PagedOp>(op)) {
    readV2(paged);
    config.hasKvLen = true;
    config.pagedBlockSize = paged.getBlockSize();
  } else if (auto backward = dyn_cast<V2BackwardOp>(op)) {
    readV2(backward);
    config.hasKvLen = backward.getKvLen() != nullptr;
    config.hasOutOdd = backward.getOutOdd() != nullptr;
  } else if (auto varlen = dyn_cast<V2VarlenOp>(op)) {
    readV2(varlen);
    config.hasKvLen = false;
    config.varlen = true;
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
    config.scaleF64 = scaleOrDefaultF64(v1.getScaleAttr(), config.headDim);
    config.causal = v1.getCausal();
    config.windowLeft = -1;
    config.windowRight = -1;
    config.hasKvLen = false;
    config.lambdaInit = v1.getLambdaInitAttr().getValueAsDouble();
    config.eps = v1.getEpsAttr().getValueAsDouble();
  }
  if (config.causal)
    config.windowRight = 0;
  config.accumulatorType = getAccumulatorType(config.elementType);
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
    if (isa<V2Op, V2PagedOp, V2VarlenOp, V1Op, V2BackwardOp>(op))
      ops.push_back(op);
  });
  return ops;
}
