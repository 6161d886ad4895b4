//===- Fuse.cpp - fuse differential attention subgraphs -------------------===//
//
// The DiffAttnFuse pass and its core, fuseDiffAttn: finds V1/V2 differential
// attention written out in linalg on tensors (FusePatterns.cpp) and replaces
// it with diffattn.v1 / diffattn.v2. Candidates are visited from the end of
// each block, so an enclosing V1 pattern is tried before the V2-like
// difference inside it.
//
//===----------------------------------------------------------------------===//

#include "FusePatterns.h"

#include "diffattn/Dialect/DiffAttn/IR/DiffAttnDialect.h"
#include "diffattn/Dialect/DiffAttn/IR/DiffAttnOps.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h"
#include "diffattn/Dialect/DiffAttn/Transforms/Transforms.h"

#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "llvm/Support/Debug.h"

#define DEBUG_TYPE "diffattn-fuse"

namespace mlir::diffattn {
#define GEN_PASS_DEF_DIFFATTNFUSE
#include "diffattn/Dialect/DiffAttn/Transforms/Passes.h.inc"
} // namespace mlir::diffattn

using namespace mlir;
using namespace mlir::diffattn;
using namespace mlir::diffattn::fusion;

/// The values a differential attention could end in: 4-d results of linalg
/// ops, last first.
static SmallVector<Value> collectCandidates(Operation *root) {
  SmallVector<Value> candidates;
  root->walk([&](linalg::LinalgOp op) {
    if (op->getNumResults() != 1)
      return;
    auto type = dyn_cast<RankedTensorType>(op->getResult(0).getType());
    if (type && type.getRank() == 4)
      candidates.push_back(op->getResult(0));
  });
  std::reverse(candidates.begin(), candidates.end());
  return candidates;
}

FailureOr<unsigned> mlir::diffattn::fuseDiffAttn(Operation *root,
                                                 const FuseOptions &options) {
  IRRewriter rewriter(root->getContext());
  unsigned numFused = 0;
  // Each fusion erases ops, so the candidates are collected again after it;
  // the last round, which fuses nothing, explains the near misses.
  while (true) {
    bool fusedOne = false;
    SmallVector<std::pair<Value, FuseAttempt>> misses;
    for (Value candidate : collectCandidates(root)) {
      FuseAttempt v1 = tryFuseV1(rewriter, candidate);
      if (v1.fused) {
        if (options.emitRemarks)
          v1.fusedOp->emitRemark(v1.description);
        fusedOne = true;
        break;
      }
      FuseAttempt v2 = tryFuseV2(rewriter, candidate);
      if (v2.fused) {
        if (options.emitRemarks)
          v2.fusedOp->emitRemark(v2.description);
        fusedOne = true;
        break;
      }
      LLVM_DEBUG(llvm::dbgs() << "candidate " << candidate.getLoc() << ": v1 "
                              << v1.stage << " " << v1.message << "; v2 "
                              << v2.stage << " " << v2.message << "\n");
      FuseAttempt &best = v1.stage > v2.stage ? v1 : v2;
      if (best.stage >= kReportableStage)
        misses.push_back({candidate, best});
    }
    if (fusedOne) {
      ++numFused;
      continue;
    }
    if (options.emitRemarks) {
      for (auto &[value, attempt] : llvm::reverse(misses))
        value.getDefiningOp()->emitRemark("not fused: ") << attempt.message;
    }
    break;
  }
  return numFused;
}

namespace {
struct DiffAttnFusePass
    : public diffattn::impl::DiffAttnFuseBase<DiffAttnFusePass> {
  using Base::Base;
  void getDependentDialects(DialectRegistry &registry) const override {
    Base::getDependentDialects(registry);
    registry.insert<DiffAttnDialect>();
  }
  void runOnOperation() override {
    FuseOptions options;
    options.emitRemarks = remarks;
    if (failed(fuseDiffAttn(getOperation(), options)))
      signalPassFailure();
  }
};
} // namespace
