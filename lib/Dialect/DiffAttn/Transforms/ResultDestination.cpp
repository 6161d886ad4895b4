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

/// The materialization that sinks `op`'s result `index` into a block
/// argument.
static bufferization::MaterializeInDestinationOp getSink(Operation *op,
                                                         unsigned index) {
  Value result = op->getResult(index);
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

Value mlir::diffattn::getResultDestination(Operation *op, unsigned index) {
  auto sink = getSink(op, index);
  return sink ? sink.getDest() : Value();
}

void mlir::diffattn::replaceWithResults(RewriterBase &rewriter, Operation *op,
                                        ValueRange results) {
  SmallVector<bufferization::MaterializeInDestinationOp> sinks;
  for (unsigned i = 0; i < op->getNumResults(); ++i)
    if (auto sink = getSink(op, i))
      sinks.push_back(sink);
  rewriter.replaceOp(op, results);
  for (auto sink : sinks)
    rewriter.replaceOp(sink, sink.getSource());
}
