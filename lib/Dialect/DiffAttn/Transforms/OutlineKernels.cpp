//===- OutlineKernels.cpp - one kernel function per diffattn config -------===//
//
// The DiffAttnOutlineKernels pass and its core, outlineDiffAttnKernels. A
// kernel is named after everything it is specialised on, so that equal ops
// share one kernel and a name identifies a configuration; its manifest entry
// (parameters and argument order) travels with it as `diffattn.kernel`.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/Format.h"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNOUTLINEKERNELS
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;

namespace {

std::string typeName(Type type) {
  std::string text;
  llvm::raw_string_ostream os(text);
  type.print(os);
  return text;
}

std::string floatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  std::string text;
  llvm::raw_string_ostream(text) << llvm::format_hex_no_prefix(bits, 8);
  return text;
}

/// The manifest's kind of the kernel of `op`: v2, v2_backward or v1.
StringRef kernelKind(Operation *op) {
  if (isa<V1Op>(op))
    return "v1";
  return isa<V2BackwardOp>(op) ? "v2_backward" : "v2";
}

/// Whether the kernel of `op` also writes diffattn.v2's log-sum-exp.
bool writesLse(Operation *op) {
  return !isa<V2BackwardOp>(op) && op->getNumResults() >= 2;
}

/// The kernel name: the op kind and every specialisation parameter.
std::string kernelName(Operation *op, const AttentionConfig &c) {
  std::string name;
  llvm::raw_string_ostream os(name);
  bool isV2 = c.kind == AttentionConfig::Kind::V2;
  os << "diffattn_" << kernelKind(op) << "_" << typeName(c.elementType) << "_h"
     << 2 * c.numPairs << "_kv" << c.numValueHeads << "_d" << c.headDim << "_dv"
     << c.valueDim;
  if (c.causal)
    os << "_causal";
  if (isV2) {
    auto nameV2 = [&](auto v2) {
      if (v2.getWindowLeftBound() >= 0)
        os << "_wl" << v2.getWindowLeftBound();
      if (v2.getWindowRightBound() >= 0)
        os << "_wr" << v2.getWindowRightBound();
      Type lamType = v2.getLam().getType().getElementType();
      if (lamType != c.elementType)
        os << "_lam" << typeName(lamType);
      if (c.hasKvLen)
        os << "_kvlen";
      if (c.isPaged())
        os << "_paged" << c.pagedBlockSize;
      if (c.varlen)
        os << "_varlen";
      if (v2.getScaleAttr())
        os << "_s" << floatBits(c.scale);
      if (writesLse(op))
        os << "_lse";
      if (c.hasOutOdd)
        os << "_odd";
    };
    if (auto v2 = dyn_cast<V2Op>(op))
      nameV2(v2);
    else if (auto backward = dyn_cast<V2BackwardOp>(op))
      nameV2(backward);
    else if (auto paged = dyn_cast<V2PagedOp>(op))
      nameV2(paged);
    else
      nameV2(cast<V2VarlenOp>(op));
  } else {
    auto v1 = cast<V1Op>(op);
    os << "_li" << floatBits(c.lambdaInit) << "_eps" << floatBits(c.eps);
    Type weightType = v1.getNormWeight().getType().getElementType();
    if (weightType != c.elementType)
      os << "_w" << typeName(weightType);
    if (v1.getScaleAttr())
      os << "_s" << floatBits(c.scale);
  }
  return name;
}

/// Symbolic dimensions of each operand: the names of the dynamic ones, the
/// sizes of the static ones.
SmallVector<SmallVector<Attribute>>
argumentShapes(Operation *op, const AttentionConfig &c, Builder &b) {
  auto sym = [&](StringRef s) -> Attribute { return b.getStringAttr(s); };
  auto num = [&](int64_t n) -> Attribute { return b.getI64IntegerAttr(n); };
  int64_t queryHeads = 2 * c.numPairs;
  if (c.varlen) {
    // Packed tokens: total_q and total_k, bound from the buffers; B + 1
    // offsets per cu_seqlens.
    Attribute offsets =
        b.getDictionaryAttr({b.getNamedAttr("ceil_div", b.getStringAttr("B")),
                             b.getNamedAttr("mul", b.getI64IntegerAttr(1)),
                             b.getNamedAttr("by", b.getI64IntegerAttr(1)),
                             b.getNamedAttr("add", b.getI64IntegerAttr(1))});
    return {{sym("total_q"), num(queryHeads), num(c.headDim)},
            {sym("total_k"), num(c.numKeyHeads), num(c.headDim)},
            {sym("total_k"), num(c.numValueHeads), num(c.valueDim)},
            {sym("total_q"), num(c.numPairs)},
            {offsets},
            {offsets},
            {sym("total_q"), num(c.numPairs), num(c.valueDim)}};
  }
  // A paged cache: the pool's blocks, and Sk = MB * BS keys of logical
  // cache per sequence (the block table's width is ceil(Sk / BS)).
  Attribute cacheRows = c.isPaged() ? sym("num_blocks") : sym("B");
  Attribute cacheKeys = c.isPaged() ? num(c.pagedBlockSize) : sym("Sk");
  SmallVector<SmallVector<Attribute>> shapes = {
      {sym("B"), sym("Sq"), num(queryHeads), num(c.headDim)},
      {cacheRows, cacheKeys, num(c.numKeyHeads), num(c.headDim)},
      {cacheRows, cacheKeys, num(c.numValueHeads), num(c.valueDim)}};
  if (c.kind == AttentionConfig::Kind::V2) {
    shapes.push_back({sym("B"), sym("Sq"), num(c.numPairs)});
    if (c.hasKvLen)
      shapes.push_back({sym("B")});
    if (c.isPaged())
      shapes.push_back(
          {sym("B"),
           b.getDictionaryAttr(
               {b.getNamedAttr("ceil_div", b.getStringAttr("Sk")),
                b.getNamedAttr("mul", b.getI64IntegerAttr(1)),
                b.getNamedAttr("by", b.getI64IntegerAttr(c.pagedBlockSize))})});
  } else {
    shapes.push_back({});
    shapes.push_back({num(c.valueDim)});
  }
  SmallVector<Attribute> outShape = {sym("B"), sym("Sq"), num(c.numPairs),
                                     num(c.valueDim)};
  SmallVector<Attribute> lseShape = {sym("B"), num(queryHeads), sym("Sq")};
  if (isa<V2BackwardOp>(op)) {
    // Inputs out, dout, lse (and kv_len), then dq, dk, dv, dlam shaped like
    // q, k, v, lam.
    SmallVector<Attribute> kvLenShape;
    if (c.hasKvLen)
      kvLenShape = shapes.pop_back_val();
    SmallVector<SmallVector<Attribute>> inputs = shapes;
    shapes.append({outShape, outShape, lseShape});
    if (c.hasKvLen)
      shapes.push_back(kvLenShape);
    if (c.hasOutOdd)
      shapes.push_back(outShape);
    shapes.append(inputs.begin(), inputs.end());
    return shapes;
  }
  shapes.push_back(outShape);
  // diffattn.v2's log-sum-exp: [B, 2H, Sq] f32, after the output, then
  // out_odd shaped as the output.
  if (writesLse(op))
    shapes.push_back(lseShape);
  if (c.hasOutOdd)
    shapes.push_back(outShape);
  return shapes;
}

RankedTensorType kernelType(RankedTensorType type, ArrayRef<Attribute> shape) {
  SmallVector<int64_t> dims;
  for (Attribute dim : shape)
    dims.push_back(isa<IntegerAttr>(dim) ? cast<IntegerAttr>(dim).getInt()
                                         : ShapedType::kDynamic);
  return RankedTensorType::get(dims, type.getElementType());
}

/// The manifest entry of a kernel.
DictionaryAttr kernelDescription(Operation *op, const AttentionConfig &c,
                                 StringRef name,
                                 ArrayRef<SmallVector<Attribute>> shapes,
                                 Builder &b) {
  bool isV2 = c.kind == AttentionConfig::Kind::V2;
  SmallVector<NamedAttribute> params = {
      b.getNamedAttr("element_type", b.getStringAttr(typeName(c.elementType))),
      b.getNamedAttr("query_heads", b.getI64IntegerAttr(2 * c.numPairs)),
      b.getNamedAttr("pairs", b.getI64IntegerAttr(c.numPairs)),
      b.getNamedAttr("kv_heads", b.getI64IntegerAttr(c.numValueHeads)),
      b.getNamedAttr("head_dim", b.getI64IntegerAttr(c.headDim)),
      b.getNamedAttr("value_dim", b.getI64IntegerAttr(c.valueDim)),
      b.getNamedAttr("causal", b.getBoolAttr(c.causal)),
      b.getNamedAttr("scale", b.getF32FloatAttr(c.scale))};
  if (isV2) {
    // The attributes as written (causal is not folded into window_right).
    auto bound = [&](StringRef attr) -> int64_t {
      auto value = op->getAttrOfType<IntegerAttr>(attr);
      return value ? value.getInt() : -1;
    };
    params.push_back(b.getNamedAttr("window_left",
                                    b.getI64IntegerAttr(bound("window_left"))));
    params.push_back(b.getNamedAttr(
        "window_right", b.getI64IntegerAttr(bound("window_right"))));
    params.push_back(b.getNamedAttr(
        "group_size", b.getI64IntegerAttr(2 * c.numPairs / c.numKeyHeads)));
    params.push_back(b.getNamedAttr("kv_len", b.getBoolAttr(c.hasKvLen)));
    if (c.isPaged())
      params.push_back(b.getNamedAttr("paged_block_size",
                                      b.getI64IntegerAttr(c.pagedBlockSize)));
    if (c.varlen)
      params.push_back(b.getNamedAttr("varlen", b.getBoolAttr(true)));
  } else {
    params.push_back(
        b.getNamedAttr("lambda_init", b.getF32FloatAttr(c.lambdaInit)));
    params.push_back(b.getNamedAttr("eps", b.getF32FloatAttr(c.eps)));
  }

  SmallVector<StringRef> names = {"q", "k", "v", "lam"};
  bool backward = isa<V2BackwardOp>(op);
  if (backward)
    names.append({"out", "dout", "lse"});
  if (isV2 && c.hasKvLen)
    names.push_back("kv_len");
  if (backward && c.hasOutOdd)
    names.push_back("out_odd");
  if (c.isPaged())
    names.push_back("block_table");
  if (c.varlen)
    names.append({"cu_seqlens_q", "cu_seqlens_k"});
  if (!isV2)
    names.push_back("norm_weight");
  // The outputs, one per result: out (T) and diffattn.v2's log-sum-exp
  // (f32) if asked; the backward's dq, dk, dv, dlam.
  size_t inputs = names.size();
  if (backward)
    names.append({"dq", "dk", "dv", "dlam"});
  else
    names.push_back("out");
  if (writesLse(op))
    names.push_back("lse");
  if (!backward && c.hasOutOdd)
    names.push_back("out_odd");
  SmallVector<Attribute> args;
  for (auto [index, argName] : llvm::enumerate(names)) {
    Value value =
        index < inputs ? op->getOperand(index) : op->getResult(index - inputs);
    Type elem = cast<ShapedType>(value.getType()).getElementType();
    args.push_back(b.getDictionaryAttr(
        {b.getNamedAttr("name", b.getStringAttr(argName)),
         b.getNamedAttr("role",
                        b.getStringAttr(index < inputs ? "input" : "output")),
         b.getNamedAttr("dtype", b.getStringAttr(typeName(elem))),
         b.getNamedAttr("shape", b.getArrayAttr(shapes[index]))}));
  }
  SmallVector<StringRef> sizes = {"B", "Sq", "Sk"};
  // The pool's size, bound from the cache buffers at launch.
  if (c.isPaged())
    sizes.push_back("num_blocks");
  // Packed tokens (Sq and Sk are then the longest sequence's lengths).
  if (c.varlen)
    sizes.append({"total_q", "total_k"});
  for (StringRef dim : sizes)
    args.push_back(
        b.getDictionaryAttr({b.getNamedAttr("name", b.getStringAttr(dim)),
                             b.getNamedAttr("role", b.getStringAttr("size")),
                             b.getNamedAttr("dtype", b.getStringAttr("i64"))}));

  return b.getDictionaryAttr(
      {b.getNamedAttr("name", b.getStringAttr(name)),
       b.getNamedAttr("kind", b.getStringAttr(kernelKind(op))),
       b.getNamedAttr("params", b.getDictionaryAttr(params)),
       b.getNamedAttr("args", b.getArrayAttr(args))});
}

} // namespace

LogicalResult mlir::diffattn::outlineDiffAttnKernels(ModuleOp module) {
  SmallVector<Operation *> ops = collectDiffAttnOps(module);
  if (ops.empty())
    return module.emitError()
           << "no diffattn.v2 or diffattn.v1 op to compile (run "
              "--diffattn-fuse on a model graph first)";

  OpBuilder b(module.getContext());
  SmallVector<func::FuncOp> kernels;
  llvm::StringSet<> seen;
  for (Operation *op : ops) {
    AttentionConfig config = AttentionConfig::get(op);
    std::string name = kernelName(op, config);
    if (!seen.insert(name).second)
      continue;
    SmallVector<SmallVector<Attribute>> shapes = argumentShapes(op, config, b);

    SmallVector<Type> argTypes;
    unsigned numInputs = op->getNumOperands();
    for (auto [index, operand] : llvm::enumerate(op->getOperands()))
      argTypes.push_back(
          kernelType(cast<RankedTensorType>(operand.getType()), shapes[index]));
    // One output argument per result (out, and lse if asked).
    SmallVector<Type> resultTypes;
    for (auto [index, result] : llvm::enumerate(op->getResults()))
      resultTypes.push_back(kernelType(cast<RankedTensorType>(result.getType()),
                                       shapes[numInputs + index]));
    argTypes.append(resultTypes);

    b.setInsertionPointToEnd(module.getBody());
    auto func = func::FuncOp::create(b, op->getLoc(), name,
                                     b.getFunctionType(argTypes, resultTypes));
    // Private: the target adds the public entry point (a C function, or a
    // GPU kernel), which also lets the outputs be dropped from the results
    // once bufferization writes them in place.
    func.setPrivate();
    func->setAttr(kKernelAttrName,
                  kernelDescription(op, config, name, shapes, b));
    for (unsigned i = numInputs; i < argTypes.size(); ++i)
      func.setArgAttr(i, "bufferization.writable", b.getBoolAttr(true));
    Block *entry = func.addEntryBlock();
    b.setInsertionPointToStart(entry);
    IRMapping mapping;
    mapping.map(op->getOperands(), entry->getArguments().take_front(numInputs));
    Operation *clone = b.clone(*op, mapping);
    SmallVector<Value> results;
    for (auto [index, type] : llvm::enumerate(resultTypes)) {
      clone->getResult(index).setType(type);
      results.push_back(bufferization::MaterializeInDestinationOp::create(
                            b, op->getLoc(), clone->getResult(index),
                            entry->getArgument(numInputs + index))
                            .getResult());
    }
    func::ReturnOp::create(b, op->getLoc(), results);
    kernels.push_back(func);
  }

  // Keep only the kernels.
  for (Operation &op :
       llvm::make_early_inc_range(module.getBody()->getOperations()))
    if (!llvm::is_contained(kernels, dyn_cast<func::FuncOp>(&op)))
      op.erase();
  for (func::FuncOp kernel : kernels)
    if (failed(kernel.verify()) || failed(mlir::verify(kernel)))
      return failure();
  return success();
}

namespace {
struct DiffAttnOutlineKernelsPass
    : public diffattn::impl::DiffAttnOutlineKernelsBase<
          DiffAttnOutlineKernelsPass> {
  void runOnOperation() override {
    if (failed(outlineDiffAttnKernels(getOperation())))
      signalPassFailure();
  }
};
} // namespace
