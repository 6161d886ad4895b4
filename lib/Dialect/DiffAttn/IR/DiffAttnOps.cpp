//===- DiffAttnOps.cpp - diffattn operations ------------------------------===//
//
// Verifiers and accessors of diffattn.v2 and diffattn.v1. Both ops describe
// their operands as BSHD layouts over named dimensions (B, Sq, Sk, H, Hkv, D,
// Dv); one shared checker binds every named dimension across operands and
// reports the first disagreement, naming the operand, the dimension and
// what was expected. Checks run structure first (ranks, element types), then
// shapes, then head-count rules, then attributes.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringMap.h"

#include <cmath>
#include <limits>

using namespace mlir;
using namespace mlir::diffattn;

namespace {

/// One dimension of an operand layout: `multiplier * symbol`, e.g. {"H", 2}
/// for the 2H query heads.
struct LayoutDim {
  StringRef symbol;
  int64_t multiplier = 1;
};

/// Names of the dimensions that may be dynamic: batch and sequence lengths.
/// Every other dimension (heads, head dims) is a kernel specialisation and
/// must be static.
bool mayBeDynamic(StringRef symbol) {
  return symbol == "B" || symbol == "Sq" || symbol == "Sk" || symbol == "NB" ||
         symbol == "MB" || symbol == "Tq" || symbol == "Tk" || symbol == "B+1";
}

std::string formatDim(const LayoutDim &dim) {
  if (dim.multiplier == 1)
    return dim.symbol.str();
  return std::to_string(dim.multiplier) + dim.symbol.str();
}

std::string formatLayout(ArrayRef<LayoutDim> layout) {
  std::string text = "[";
  for (auto [i, dim] : llvm::enumerate(layout)) {
    if (i)
      text += ", ";
    text += formatDim(dim);
  }
  return text + "]";
}

/// Binds the named dimensions of a differential-attention op across its
/// operands and diagnoses every disagreement.
class LayoutChecker {
public:
  explicit LayoutChecker(Operation *op) : op(op) {}

  /// Checks the rank of `type` against `layout` and binds each dimension.
  LogicalResult check(StringRef name, RankedTensorType type,
                      ArrayRef<LayoutDim> layout) {
    if (type.getRank() != static_cast<int64_t>(layout.size()))
      return op->emitOpError()
             << "'" << name << "' must have rank " << layout.size() << " "
             << formatLayout(layout) << ", got " << type;
    for (auto [i, dim] : llvm::enumerate(layout))
      if (failed(bind(name, i, dim, type.getDimSize(i))))
        return failure();
    return success();
  }

  /// The bound static size of `symbol`, or ShapedType::kDynamic.
  int64_t get(StringRef symbol) const {
    auto it = bound.find(symbol);
    return it == bound.end() ? ShapedType::kDynamic : it->second.size;
  }

private:
  struct Binding {
    int64_t size;
    std::string source;
  };

  LogicalResult bind(StringRef name, unsigned index, const LayoutDim &dim,
                     int64_t size) {
    if (ShapedType::isDynamic(size)) {
      if (mayBeDynamic(dim.symbol))
        return success();
      return op->emitOpError()
             << "'" << name << "' dimension " << index << " (" << formatDim(dim)
             << ") must be static: head counts and head dimensions "
                "specialise the kernel";
    }
    if (!mayBeDynamic(dim.symbol) && size <= 0)
      return op->emitOpError()
             << "'" << name << "' dimension " << index << " (" << formatDim(dim)
             << ") must be positive, got " << size;
    if (size % dim.multiplier != 0)
      return op->emitOpError() << "'" << name << "' dimension " << index << " ("
                               << formatDim(dim) << ") must be a multiple of "
                               << dim.multiplier << ", got " << size;
    int64_t value = size / dim.multiplier;
    auto [it, inserted] = bound.try_emplace(
        dim.symbol, Binding{value, "'" + name.str() + "' dimension " +
                                       std::to_string(index)});
    if (inserted || it->second.size == value)
      return success();
    return op->emitOpError()
           << "'" << name << "' dimension " << index << " (" << formatDim(dim)
           << ") is " << size << ", expected "
           << dim.multiplier * it->second.size << " to agree with "
           << it->second.source << " (" << dim.symbol << " = "
           << it->second.size << ")";
  }

  Operation *op;
  llvm::StringMap<Binding> bound;
};

bool isAttentionElementType(Type type) {
  return type.isF64() || type.isF32() || type.isF16() || type.isBF16();
}

/// Checks that q, k, v and the result share one element type T in
/// {f64, f32, f16, bf16} (f64 has CPU lowerings only; the GPU strategies
/// reject it).
LogicalResult verifyAttentionElementTypes(Operation *op, RankedTensorType q,
                                          RankedTensorType k,
                                          RankedTensorType v,
                                          RankedTensorType out) {
  Type elem = q.getElementType();
  if (!isAttentionElementType(elem))
    return op->emitOpError()
           << "'q' must have element type f64, f32, f16 or bf16, got " << elem;
  auto expectSame = [&](StringRef name,
                        RankedTensorType type) -> LogicalResult {
    if (type.getElementType() == elem)
      return success();
    return op->emitOpError()
           << "'" << name << "' must have the element type of 'q' (" << elem
           << "), got " << type.getElementType();
  };
  if (failed(expectSame("k", k)) || failed(expectSame("v", v)) ||
      failed(expectSame("out", out)))
    return failure();
  return success();
}

/// Checks an element type that may be T (q's) or f32.
LogicalResult verifyTOrF32(Operation *op, StringRef name, RankedTensorType type,
                           Type elem) {
  Type got = type.getElementType();
  if (got == elem || got.isF32())
    return success();
  return op->emitOpError() << "'" << name << "' must have element type " << elem
                           << " (as 'q') or f32, got " << got;
}

/// Checks the optional `scale` attribute: finite and > 0.
LogicalResult verifyScale(Operation *op, FloatAttr scale) {
  if (!scale)
    return success();
  double value = scale.getValueAsDouble();
  if (std::isfinite(value) && value > 0.0)
    return success();
  return op->emitOpError() << "attribute 'scale' must be finite and > 0, got "
                           << scale.getValueAsDouble();
}

/// The `scale` attribute's value, or 1/sqrt(D) when it is absent.
float scaleOrDefault(FloatAttr scale, int64_t headDim) {
  if (scale)
    return static_cast<float>(scale.getValueAsDouble());
  return 1.0f / std::sqrt(static_cast<float>(headDim));
}

} // namespace

//===----------------------------------------------------------------------===//
// V2Op
//===----------------------------------------------------------------------===//

/// The largest window bound, INT32_MAX: FlashAttention's `window_size` is a
/// C int. The kernels add a bound to row positions in index arithmetic,
/// which a bound near INT64_MAX overflows (wrong masks, not an error); a
/// bound of max(Sq, Sk) or more already means "unlimited" for every row.
static constexpr int64_t kMaxWindow = std::numeric_limits<int32_t>::max();

/// The checks diffattn.v2, v2_paged and v2_varlen share, after their own
/// shape checks bound H, Hkv, D and Dv in `layout`: the head-count rules and
/// the attributes. `keys` names the key operand in messages.
static LogicalResult verifyV2Rules(Operation *op, LayoutChecker &layout,
                                   FloatAttr scale, bool causal,
                                   int64_t windowLeft, int64_t windowRight,
                                   StringRef keys = "k") {
  // Head counts: both heads of every pair must read the same KV head.
  int64_t queryHeads = 2 * layout.get("H");
  int64_t kvHeads = layout.get("Hkv");
  if (queryHeads % kvHeads != 0)
    return op->emitOpError()
           << "'q' heads (2H = " << queryHeads << ") must be a multiple of '"
           << keys << "' heads (Hkv = " << kvHeads << ")";
  if ((queryHeads / kvHeads) % 2 != 0)
    return op->emitOpError()
           << "group size G = 2H / Hkv = " << queryHeads << " / " << kvHeads
           << " = " << queryHeads / kvHeads
           << " must be even, so that both heads of a pair read the same KV "
              "head";

  // Attributes.
  if (failed(verifyScale(op, scale)))
    return failure();
  for (auto [name, value] :
       {std::pair<StringRef, int64_t>{"window_left", windowLeft},
        {"window_right", windowRight}})
    if (value < -1 || value > kMaxWindow)
      return op->emitOpError()
             << "attribute '" << name << "' must be -1 (unlimited) or in [0, "
             << kMaxWindow << "], got " << value;
  if (causal && windowRight > 0)
    return op->emitOpError() << "attribute 'window_right' must be -1 or 0 "
                                "with 'causal', got "
                             << windowRight;
  return success();
}

Type mlir::diffattn::getAccumulatorType(Type elementType) {
  if (elementType.isF64())
    return elementType;
  return Float32Type::get(elementType.getContext());
}

/// Checks a log-sum-exp tensor: [B, 2H, Sq] of the accumulator type of q's
/// element type `elem` (f64 for f64, else f32).
static LogicalResult verifyLse(Operation *op, LayoutChecker &layout, Value lse,
                               Type elem) {
  auto type = cast<RankedTensorType>(lse.getType());
  Type expected = getAccumulatorType(elem);
  if (type.getElementType() != expected)
    return op->emitOpError()
           << "'lse' must have element type " << expected << " (for 'q' of "
           << elem << "), got " << type.getElementType();
  return layout.check("lse", type, {{"B"}, {"H", 2}, {"Sq"}});
}

/// Checks diffattn.v2's `out_odd` (result or the backward's operand): the
/// type of `out`, [B, Sq, H, Dv] of T.
static LogicalResult verifyOutOdd(Operation *op, RankedTensorType out,
                                  Value outOdd) {
  if (outOdd.getType() == out)
    return success();
  return op->emitOpError() << "'out_odd' must have the type of 'out' (" << out
                           << "), got " << outOdd.getType();
}

/// Checks an i32 operand (kv_len, block_table).
static LogicalResult verifyI32(Operation *op, StringRef name, Value value) {
  auto type = cast<RankedTensorType>(value.getType());
  if (type.getElementType().isSignlessInteger(32))
    return success();
  return op->emitOpError() << "'" << name
                           << "' must have element type i32, got "
                           << type.getElementType();
}

/// diffattn.v2's structure checks, which diffattn.v2_backward repeats for
/// the forward it differentiates: q, k, v and out of one element type T,
/// lam T or f32, kv_len i32.
static LogicalResult verifyV2Types(Operation *op, RankedTensorType q,
                                   RankedTensorType k, RankedTensorType v,
                                   RankedTensorType lam, RankedTensorType out,
                                   Value kvLen) {
  if (failed(verifyAttentionElementTypes(op, q, k, v, out)) ||
      failed(verifyTOrF32(op, "lam", lam, q.getElementType())))
    return failure();
  if (kvLen && failed(verifyI32(op, "kv_len", kvLen)))
    return failure();
  return success();
}

/// diffattn.v2's shape checks (shared as verifyV2Types): every named
/// dimension of q, k, v, lam, kv_len and out agrees, bound in `layout`.
static LogicalResult verifyV2Shapes(LayoutChecker &layout, RankedTensorType q,
                                    RankedTensorType k, RankedTensorType v,
                                    RankedTensorType lam, RankedTensorType out,
                                    Value kvLen) {
  if (failed(layout.check("q", q, {{"B"}, {"Sq"}, {"H", 2}, {"D"}})) ||
      failed(layout.check("k", k, {{"B"}, {"Sk"}, {"Hkv"}, {"D"}})) ||
      failed(layout.check("v", v, {{"B"}, {"Sk"}, {"Hkv"}, {"Dv"}})) ||
      failed(layout.check("lam", lam, {{"B"}, {"Sq"}, {"H"}})))
    return failure();
  if (kvLen && failed(layout.check(
                   "kv_len", cast<RankedTensorType>(kvLen.getType()), {{"B"}})))
    return failure();
  return layout.check("out", out, {{"B"}, {"Sq"}, {"H"}, {"Dv"}});
}

LogicalResult V2Op::verify() {
  Operation *op = getOperation();
  auto q = getQ().getType();
  auto k = getK().getType();
  auto v = getV().getType();
  auto lam = getLam().getType();
  auto out = getOut().getType();
  // Structure, then shapes (every named dimension agrees across operands),
  // then the log-sum-exp result, head counts and attributes.
  if (failed(verifyV2Types(op, q, k, v, lam, out, getKvLen())))
    return failure();
  LayoutChecker layout(op);
  if (failed(verifyV2Shapes(layout, q, k, v, lam, out, getKvLen())))
    return failure();
  if (getSaved().size() > 2)
    return emitOpError()
           << "expects at most 3 results (out, lse, out_odd), got "
           << op->getNumResults();
  if (Value lse = getLse())
    if (failed(verifyLse(op, layout, lse, q.getElementType())))
      return failure();
  if (Value outOdd = getOutOdd())
    if (failed(verifyOutOdd(op, out, outOdd)))
      return failure();
  return verifyV2Rules(op, layout, getScaleAttr(), getCausal(),
                       getWindowLeftBound(), getWindowRightBound());
}

float V2Op::getScaleOrDefault() {
  return scaleOrDefault(getScaleAttr(), getHeadDim());
}

int64_t V2Op::getNumPairs() { return getQ().getType().getDimSize(2) / 2; }
int64_t V2Op::getNumKvHeads() { return getK().getType().getDimSize(2); }
int64_t V2Op::getGroupSize() { return 2 * getNumPairs() / getNumKvHeads(); }
int64_t V2Op::getHeadDim() { return getQ().getType().getDimSize(3); }
int64_t V2Op::getValueDim() { return getV().getType().getDimSize(3); }

//===----------------------------------------------------------------------===//
// V2BackwardOp
//===----------------------------------------------------------------------===//

float V2BackwardOp::getScaleOrDefault() {
  return scaleOrDefault(getScaleAttr(), getHeadDim());
}

int64_t V2BackwardOp::getNumPairs() {
  return getQ().getType().getDimSize(2) / 2;
}
int64_t V2BackwardOp::getNumKvHeads() { return getK().getType().getDimSize(2); }
int64_t V2BackwardOp::getHeadDim() { return getQ().getType().getDimSize(3); }
int64_t V2BackwardOp::getValueDim() { return getV().getType().getDimSize(3); }

LogicalResult V2BackwardOp::verify() {
  Operation *op = getOperation();
  auto q = getQ().getType();
  auto k = getK().getType();
  auto v = getV().getType();
  auto lam = getLam().getType();
  auto out = getOut().getType();
  auto dout = getDout().getType();

  // Structure: the forward's element types; dout as out; each gradient has
  // its input's type.
  if (failed(verifyV2Types(op, q, k, v, lam, out, getKvLen())))
    return failure();
  if (dout.getElementType() != q.getElementType())
    return op->emitOpError()
           << "'dout' must have the element type of 'q' (" << q.getElementType()
           << "), got " << dout.getElementType();
  for (auto [name, grad, input] :
       {std::tuple<StringRef, Type, Type>{"dq", getDq().getType(), q},
        {"dk", getDk().getType(), k},
        {"dv", getDv().getType(), v},
        {"dlam", getDlam().getType(), lam}})
    if (grad != input)
      return op->emitOpError()
             << "result '" << name << "' must have the type "
             << "of its input (" << input << "), got " << grad;

  // Shapes: the forward's layout, then the output's gradient and the
  // log-sum-exp.
  LayoutChecker layout(op);
  if (failed(verifyV2Shapes(layout, q, k, v, lam, out, getKvLen())) ||
      failed(layout.check("dout", dout, {{"B"}, {"Sq"}, {"H"}, {"Dv"}})) ||
      failed(verifyLse(op, layout, getLse(), q.getElementType())))
    return failure();
  if (Value outOdd = getOutOdd())
    if (failed(verifyOutOdd(op, out, outOdd)))
      return failure();
  return verifyV2Rules(op, layout, getScaleAttr(), getCausal(),
                       getWindowLeftBound(), getWindowRightBound());
}

//===----------------------------------------------------------------------===//
// V2PagedOp
//===----------------------------------------------------------------------===//

LogicalResult V2PagedOp::verify() {
  Operation *op = getOperation();
  auto q = getQ().getType();
  auto k = getKCache().getType();
  auto v = getVCache().getType();
  auto lam = getLam().getType();
  auto out = getOut().getType();

  // Structure: element types.
  if (failed(verifyAttentionElementTypes(op, q, k, v, out)) ||
      failed(verifyTOrF32(op, "lam", lam, q.getElementType())) ||
      failed(verifyI32(op, "kv_len", getKvLen())) ||
      failed(verifyI32(op, "block_table", getBlockTable())))
    return failure();
  // Shapes.
  LayoutChecker layout(op);
  if (failed(layout.check("q", q, {{"B"}, {"Sq"}, {"H", 2}, {"D"}})) ||
      failed(layout.check("k_cache", k, {{"NB"}, {"BS"}, {"Hkv"}, {"D"}})) ||
      failed(layout.check("v_cache", v, {{"NB"}, {"BS"}, {"Hkv"}, {"Dv"}})) ||
      failed(layout.check("lam", lam, {{"B"}, {"Sq"}, {"H"}})) ||
      failed(layout.check(
          "kv_len", cast<RankedTensorType>(getKvLen().getType()), {{"B"}})) ||
      failed(layout.check("block_table",
                          cast<RankedTensorType>(getBlockTable().getType()),
                          {{"B"}, {"MB"}})) ||
      failed(layout.check("out", out, {{"B"}, {"Sq"}, {"H"}, {"Dv"}})))
    return failure();
  int64_t blockSize = layout.get("BS");
  if (blockSize % 16 != 0)
    return emitOpError() << "'k_cache' block size (dimension 1, BS) must be a "
                            "multiple of 16, got "
                         << blockSize;
  return verifyV2Rules(op, layout, getScaleAttr(), getCausal(),
                       getWindowLeftBound(), getWindowRightBound(), "k_cache");
}

float V2PagedOp::getScaleOrDefault() {
  return scaleOrDefault(getScaleAttr(), getHeadDim());
}

int64_t V2PagedOp::getNumPairs() { return getQ().getType().getDimSize(2) / 2; }
int64_t V2PagedOp::getNumKvHeads() {
  return getKCache().getType().getDimSize(2);
}
int64_t V2PagedOp::getGroupSize() {
  return 2 * getNumPairs() / getNumKvHeads();
}
int64_t V2PagedOp::getHeadDim() { return getQ().getType().getDimSize(3); }
int64_t V2PagedOp::getValueDim() { return getVCache().getType().getDimSize(3); }
int64_t V2PagedOp::getBlockSize() {
  return getKCache().getType().getDimSize(1);
}

//===----------------------------------------------------------------------===//
// V2VarlenOp
//===----------------------------------------------------------------------===//

LogicalResult V2VarlenOp::verify() {
  Operation *op = getOperation();
  auto q = getQ().getType();
  auto k = getK().getType();
  auto v = getV().getType();
  auto lam = getLam().getType();
  auto out = getOut().getType();
  if (failed(verifyAttentionElementTypes(op, q, k, v, out)) ||
      failed(verifyTOrF32(op, "lam", lam, q.getElementType())) ||
      failed(verifyI32(op, "cu_seqlens_q", getCuSeqlensQ())) ||
      failed(verifyI32(op, "cu_seqlens_k", getCuSeqlensK())))
    return failure();
  LayoutChecker layout(op);
  if (failed(layout.check("q", q, {{"Tq"}, {"H", 2}, {"D"}})) ||
      failed(layout.check("k", k, {{"Tk"}, {"Hkv"}, {"D"}})) ||
      failed(layout.check("v", v, {{"Tk"}, {"Hkv"}, {"Dv"}})) ||
      failed(layout.check("lam", lam, {{"Tq"}, {"H"}})) ||
      failed(layout.check("cu_seqlens_q",
                          cast<RankedTensorType>(getCuSeqlensQ().getType()),
                          {{"B+1"}})) ||
      failed(layout.check("cu_seqlens_k",
                          cast<RankedTensorType>(getCuSeqlensK().getType()),
                          {{"B+1"}})) ||
      failed(layout.check("out", out, {{"Tq"}, {"H"}, {"Dv"}})))
    return failure();
  int64_t offsets = layout.get("B+1");
  if (!ShapedType::isDynamic(offsets) && offsets < 1)
    return emitOpError() << "'cu_seqlens_q' must hold B + 1 >= 1 offsets, got "
                         << offsets;
  return verifyV2Rules(op, layout, getScaleAttr(), getCausal(),
                       getWindowLeftBound(), getWindowRightBound());
}

float V2VarlenOp::getScaleOrDefault() {
  return scaleOrDefault(getScaleAttr(), getHeadDim());
}

int64_t V2VarlenOp::getNumPairs() { return getQ().getType().getDimSize(1) / 2; }
int64_t V2VarlenOp::getNumKvHeads() { return getK().getType().getDimSize(1); }
int64_t V2VarlenOp::getGroupSize() {
  return 2 * getNumPairs() / getNumKvHeads();
}
int64_t V2VarlenOp::getHeadDim() { return getQ().getType().getDimSize(2); }
int64_t V2VarlenOp::getValueDim() { return getV().getType().getDimSize(2); }

//===----------------------------------------------------------------------===//
// V1Op
//===----------------------------------------------------------------------===//

LogicalResult V1Op::verify() {
  Operation *op = getOperation();
  auto q = getQ().getType();
  auto k = getK().getType();
  auto v = getV().getType();
  auto lam = getLam().getType();
  auto weight = getNormWeight().getType();
  auto out = getOut().getType();

  // Structure: element types and the scalar lambda.
  if (failed(verifyAttentionElementTypes(op, q, k, v, out)) ||
      failed(verifyTOrF32(op, "norm_weight", weight, q.getElementType())))
    return failure();
  if (lam.getRank() != 0 || !lam.getElementType().isF32())
    return emitOpError() << "'lam' must be a scalar tensor<f32> (the layer's "
                            "lambda), got "
                         << lam;

  // Shapes.
  LayoutChecker layout(op);
  if (failed(layout.check("q", q, {{"B"}, {"Sq"}, {"H", 2}, {"D"}})) ||
      failed(layout.check("k", k, {{"B"}, {"Sk"}, {"Hkv", 2}, {"D"}})) ||
      failed(layout.check("v", v, {{"B"}, {"Sk"}, {"Hkv"}, {"D", 2}})) ||
      failed(layout.check("norm_weight", weight, {{"D", 2}})) ||
      failed(layout.check("out", out, {{"B"}, {"Sq"}, {"H"}, {"D", 2}})))
    return failure();

  // Head counts: pair h reads KV head h / (H / Hkv).
  int64_t pairs = layout.get("H");
  int64_t kvHeads = layout.get("Hkv");
  if (pairs % kvHeads != 0)
    return emitOpError() << "head pairs (H = " << pairs
                         << ") must be a multiple of KV heads (Hkv = "
                         << kvHeads << ")";

  // Attributes.
  if (failed(verifyScale(op, getScaleAttr())))
    return failure();
  if (!std::isfinite(getLambdaInitAttr().getValueAsDouble()))
    return emitOpError() << "attribute 'lambda_init' must be finite, got "
                         << getLambdaInitAttr().getValueAsDouble();
  double eps = getEpsAttr().getValueAsDouble();
  if (!std::isfinite(eps) || eps <= 0.0)
    return emitOpError() << "attribute 'eps' must be finite and > 0, got "
                         << getEpsAttr().getValueAsDouble();
  return success();
}

float V1Op::getScaleOrDefault() {
  return scaleOrDefault(getScaleAttr(), getHeadDim());
}

int64_t V1Op::getNumPairs() { return getQ().getType().getDimSize(2) / 2; }
int64_t V1Op::getNumKvHeads() { return getV().getType().getDimSize(2); }
int64_t V1Op::getHeadDim() { return getQ().getType().getDimSize(3); }

#define GET_OP_CLASSES
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.cpp.inc"
