//===- ResultDestination.cpp - lowering into the op's destination ---------===//
//
// Lowerings of an outlined diffattn op write its result straight into the
// kernel's output argument when the op's only use materializes it there.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Bufferization/IR/Bufferization.h"

using namespace mlir;
using namespace mlir::diffattn;

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
