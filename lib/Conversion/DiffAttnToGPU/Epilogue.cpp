//===- Epilogue.cpp - the differential epilogue on the GPU ----------------===//
//
// See Epilogue.h. The sigmoid is 1 / (1 + 2^(-x log2 e)) with the SFU's
// exp2, exact to f32 rounding of the exponent.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/Epilogue.h"

using namespace mlir;
using namespace mlir::diffattn;

Value DifferentialEpilogue::pairRowIndex(Value rowIndex, Value pair) {
  return kb.add(kb.mul(rowIndex, numPairs), pair);
}

Value DifferentialEpilogue::sigmoid(Value x) {
  Value one = kb.f32(1.0f);
  return arith::DivFOp::create(
      kb.b, kb.loc, one,
      kb.fadd(one, kb.exp2(kb.fmul(x, kb.f32(-static_cast<float>(M_LOG2E))))));
}

Value DifferentialEpilogue::sigmoidOfLam(Value lam, Value index) {
  return sigmoid(kb.loadF32(lam, index));
}

Value DifferentialEpilogue::normalize(Value acc, Value sum) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  Value seen =
      arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, sum, kb.f32(0));
  return kb.select(
      seen,
      arith::DivFOp::create(b, loc, acc, kb.select(seen, sum, kb.f32(1.0f))),
      kb.f32(0.0f));
}

Value DifferentialEpilogue::inverseSum(Value sum) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  Value seen =
      arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, sum, kb.f32(0));
  return kb.select(seen,
                   arith::DivFOp::create(b, loc, kb.f32(1.0f),
                                         kb.select(seen, sum, kb.f32(1.0f))),
                   kb.f32(0.0f));
}

void DifferentialEpilogue::storeDifference(Value out, Value pairRow, Value col,
                                           Value o0, Value o1, Value sig) {
  OpBuilder &b = kb.b;
  Location loc = kb.loc;
  Value result = arith::TruncFOp::create(b, loc, elementType,
                                         kb.fsub(o0, kb.fmul(sig, o1)));
  memref::StoreOp::create(b, loc, result, out,
                          ValueRange{kb.add(kb.mul(pairRow, valueDim), col)});
}
