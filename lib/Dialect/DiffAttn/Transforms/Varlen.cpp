//===- Varlen.cpp - packed variable-length batches as a padded batch ------===//
//
// The tensor-level lowerings handle diffattn.v2_varlen by padding: each
// sequence's queries (and lambda logits) are placed at the END of a
// [B, Sq_max] slot and its keys at the start of a [B, Sk_max] slot with
// kv_len[b] = Sk_b, so that diffattn.v2's bottom-right alignment
// (query row i' sees up to i' + kv_len[b] - Sq_max) is exactly the
// per-sequence alignment i + Sk_b - Sq_b for i = i' - (Sq_max - Sq_b); the
// rows of each sequence are then copied back into the packed output. The
// GPU strategies read the packed tensors in place instead.
//
//===----------------------------------------------------------------------===//

#include "LinalgBuilders.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Verifier.h"

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::lowering;

namespace {

/// Index-typed helpers over one builder and location.
struct IndexMath {
  OpBuilder &b;
  Location loc;
  Value cst(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, loc, x, y); }
  /// cu[i] as an index.
  Value offset(Value cu, Value i) {
    return arith::IndexCastOp::create(b, loc, b.getIndexType(),
                                      tensor::ExtractOp::create(b, loc, cu, i));
  }
};

/// max over b of cu[b + 1] - cu[b] (0 for an empty batch).
Value maxLength(OpBuilder &b, Location loc, Value cu, Value batch) {
  IndexMath m{b, loc};
  auto loop = scf::ForOp::create(
      b, loc, m.cst(0), batch, m.cst(1), ValueRange{m.cst(0)},
      [&](OpBuilder &nb, Location l, Value i, ValueRange acc) {
        IndexMath n{nb, l};
        Value len = n.sub(n.offset(cu, n.add(i, n.cst(1))), n.offset(cu, i));
        scf::YieldOp::create(
            nb, l, arith::MaxSIOp::create(nb, l, acc[0], len).getResult());
      });
  return loop.getResult(0);
}

/// [B, S, rest...] from packed [T, rest...]: element (b, s, ...) is
/// packed[cu[b] + s - shift(b), ...] for shift(b) <= s < shift(b) + len(b),
/// else 0, with shift(b) = S - len(b) (`alignEnd`) or 0.
Value pad(OpBuilder &b, Location loc, Value packed, Value cu, Value batch,
          Value slot, bool alignEnd) {
  auto type = cast<RankedTensorType>(packed.getType());
  int64_t rank = type.getRank();
  SmallVector<OpFoldResult> sizes = {batch, slot};
  for (int64_t d = 1; d < rank; ++d)
    sizes.push_back(tensor::getMixedSize(b, loc, packed, d));
  Value empty = tensor::EmptyOp::create(b, loc, sizes, type.getElementType());
  AffineMap id = b.getMultiDimIdentityMap(rank + 1);
  SmallVector<utils::IteratorType> iters(rank + 1, kPar);
  return buildGeneric(
      b, loc, {}, {empty}, {id}, iters,
      [&](OpBuilder &nb, Location l, ValueRange) {
        IndexMath m{nb, l};
        Value bi = linalg::IndexOp::create(nb, l, 0);
        Value s = linalg::IndexOp::create(nb, l, 1);
        Value start = m.offset(cu, bi);
        Value len = m.sub(m.offset(cu, m.add(bi, m.cst(1))), start);
        Value shift = alignEnd ? m.sub(slot, len) : m.cst(0);
        using arith::CmpIPredicate;
        Value inside = arith::AndIOp::create(
            nb, l, arith::CmpIOp::create(nb, l, CmpIPredicate::sge, s, shift),
            arith::CmpIOp::create(nb, l, CmpIPredicate::slt, s,
                                  m.add(shift, len)));
        Type elem = type.getElementType();
        Value zero = arith::ConstantOp::create(nb, l, nb.getZeroAttr(elem));
        // linalg.index must sit in the generic's own body.
        SmallVector<Value> rest;
        for (int64_t d = 1; d < rank; ++d)
          rest.push_back(linalg::IndexOp::create(nb, l, d + 1));
        Value value = buildIfElse(
            nb, l, inside,
            [&](OpBuilder &tb, Location tl) -> Value {
              IndexMath t{tb, tl};
              SmallVector<Value> idx = {t.sub(t.add(start, s), shift)};
              idx.append(rest.begin(), rest.end());
              return tensor::ExtractOp::create(tb, tl, packed, idx);
            },
            zero);
        linalg::YieldOp::create(nb, l, value);
      })[0];
}

} // namespace

FailureOr<Operation *>
mlir::diffattn::materializeVarlenBatch(RewriterBase &rewriter, Operation *op) {
  auto varlen = dyn_cast<V2VarlenOp>(op);
  if (!varlen)
    return op;
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(op);
  Location loc = op->getLoc();
  IndexMath m{rewriter, loc};
  Value cuQ = varlen.getCuSeqlensQ(), cuK = varlen.getCuSeqlensK();
  Value batch = m.sub(tensor::DimOp::create(rewriter, loc, cuQ, 0), m.cst(1));
  Value seqQ = maxLength(rewriter, loc, cuQ, batch);
  Value seqK = maxLength(rewriter, loc, cuK, batch);
  Value q = pad(rewriter, loc, varlen.getQ(), cuQ, batch, seqQ, true);
  Value lam = pad(rewriter, loc, varlen.getLam(), cuQ, batch, seqQ, true);
  Value k = pad(rewriter, loc, varlen.getK(), cuK, batch, seqK, false);
  Value v = pad(rewriter, loc, varlen.getV(), cuK, batch, seqK, false);
  // kv_len[b] = Sk_b.
  Value kvEmpty = tensor::EmptyOp::create(
      rewriter, loc, ArrayRef<OpFoldResult>{batch}, rewriter.getI32Type());
  Value kvLen = buildGeneric(
      rewriter, loc, {}, {kvEmpty}, {rewriter.getMultiDimIdentityMap(1)},
      {kPar}, [&](OpBuilder &nb, Location l, ValueRange) {
        IndexMath n{nb, l};
        Value bi = linalg::IndexOp::create(nb, l, 0);
        Value len = arith::SubIOp::create(
            nb, l, tensor::ExtractOp::create(nb, l, cuK, n.add(bi, n.cst(1))),
            tensor::ExtractOp::create(nb, l, cuK, bi));
        linalg::YieldOp::create(nb, l, len);
      })[0];

  auto outType = cast<RankedTensorType>(op->getResult(0).getType());
  auto paddedType =
      RankedTensorType::get({ShapedType::kDynamic, ShapedType::kDynamic,
                             outType.getDimSize(1), outType.getDimSize(2)},
                            outType.getElementType());
  FailureOr<Operation *> created =
      createV2Like(rewriter, op, {q, k, v, lam, kvLen}, paddedType);
  if (failed(created))
    return failure();
  Operation *v2 = *created;

  // Copy each sequence's rows back: out[cu_q[b] .. cu_q[b+1]) = the last
  // Sq_b rows of slot b.
  Value dest = getResultDestination(op);
  Value init = dest;
  if (!init)
    init = tensor::EmptyOp::create(
        rewriter, loc,
        ArrayRef<OpFoldResult>{
            tensor::getMixedSize(rewriter, loc, varlen.getQ(), 0),
            rewriter.getIndexAttr(outType.getDimSize(1)),
            rewriter.getIndexAttr(outType.getDimSize(2))},
        outType.getElementType());
  Value padded = v2->getResult(0);
  // Token t of sequence b (cu_q[b] <= t < cu_q[b+1], found by a scan over
  // the B sequences) is row Sq_max - Sq_b + t - cu_q[b] of slot b; tokens
  // of no sequence keep the destination's value.
  AffineMap id3 = rewriter.getMultiDimIdentityMap(3);
  Value result = buildGeneric(
      rewriter, loc, {}, {init}, {id3}, {kPar, kPar, kPar},
      [&](OpBuilder &nb, Location l, ValueRange args) {
        IndexMath n{nb, l};
        using arith::CmpIPredicate;
        Value t = linalg::IndexOp::create(nb, l, 0);
        Value h = linalg::IndexOp::create(nb, l, 1);
        Value e = linalg::IndexOp::create(nb, l, 2);
        // (sequence, row in its slot), or (-1, 0) for no sequence.
        auto scan = scf::ForOp::create(
            nb, l, n.cst(0), batch, n.cst(1), ValueRange{n.cst(-1), n.cst(0)},
            [&](OpBuilder &fb, Location fl, Value bi, ValueRange acc) {
              IndexMath f{fb, fl};
              Value start = f.offset(cuQ, bi);
              Value end = f.offset(cuQ, f.add(bi, f.cst(1)));
              Value in = arith::AndIOp::create(
                  fb, fl,
                  arith::CmpIOp::create(fb, fl, CmpIPredicate::sge, t, start),
                  arith::CmpIOp::create(fb, fl, CmpIPredicate::slt, t, end));
              Value row =
                  f.add(f.sub(seqQ, f.sub(end, start)), f.sub(t, start));
              scf::YieldOp::create(
                  fb, fl,
                  ValueRange{arith::SelectOp::create(fb, fl, in, bi, acc[0]),
                             arith::SelectOp::create(fb, fl, in, row, acc[1])});
            });
        Value seq = scan.getResult(0), row = scan.getResult(1);
        Value found =
            arith::CmpIOp::create(nb, l, CmpIPredicate::sge, seq, n.cst(0));
        Value value = buildIfElse(
            nb, l, found,
            [&](OpBuilder &tb, Location tl) -> Value {
              return tensor::ExtractOp::create(tb, tl, padded,
                                               ValueRange{seq, row, h, e});
            },
            args[0]);
        linalg::YieldOp::create(nb, l, value);
      })[0];
  if (result.getType() != outType)
    result = tensor::CastOp::create(rewriter, loc, outType, result);
  replaceWithResult(rewriter, op, result);
  return v2;
}

FailureOr<Operation *>
mlir::diffattn::materializeServingLayouts(RewriterBase &rewriter,
                                          Operation *op) {
  FailureOr<Operation *> unpaged = materializePagedKVCache(rewriter, op);
  if (failed(unpaged))
    return failure();
  return materializeVarlenBatch(rewriter, *unpaged);
}
