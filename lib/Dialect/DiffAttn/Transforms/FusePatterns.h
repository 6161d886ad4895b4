//===- FusePatterns.h - V1/V2 subgraph matchers -----------------*- C++ -*-===//
//
// The matchers behind diffattn-fuse. Each takes the value a candidate
// differential attention would replace (the "root": the subtraction of V2,
// the final scale of V1) and either rewrites the graph to a diffattn.v2 /
// diffattn.v1 reading the graph's own q/k/v/lambda tensors, or explains why
// not.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEPATTERNS_H
#define DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEPATTERNS_H

#include "mlir/IR/PatternMatch.h"

#include <string>

namespace mlir::diffattn::fusion {

/// How far a match got and why it stopped. Stages below
/// `kReportableStage` mean "this is not an attention at all" and are not
/// reported; above it, the candidate computes attention and the message says
/// which rule it breaks.
struct FuseAttempt {
  bool fused = false;
  int stage = 0;
  std::string message;
  /// On success: the new op and a one-line description of it.
  Operation *fusedOp = nullptr;
  std::string description;
};

constexpr int kReportableStage = 3;

/// Tries to replace `root` by a diffattn.v2.
FuseAttempt tryFuseV2(RewriterBase &rewriter, Value root);
/// Tries to replace `root` by a diffattn.v1.
FuseAttempt tryFuseV1(RewriterBase &rewriter, Value root);

} // namespace mlir::diffattn::fusion

#endif // DIFFATTN_LIB_DIALECT_DIFFATTN_TRANSFORMS_FUSEPATTERNS_H
