//===- InitAllDiffAttn.h - register the project's dialects, passes -*- C++
//-*-===//
//
// One place that registers everything the project defines, shared by
// diffattn-opt, diffattn-compile and the C API.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_INITALLDIFFATTN_H
#define DIFFATTN_INITALLDIFFATTN_H

#include "mlir/IR/DialectRegistry.h"

namespace mlir::diffattn {

/// Adds the project's dialects to `registry`.
void registerAllDiffAttnDialects(DialectRegistry &registry);

/// Registers the project's passes and pass pipelines with the global
/// registry, so that textual pipelines and diffattn-opt flags can name them.
void registerAllDiffAttnPasses();

} // namespace mlir::diffattn

#endif // DIFFATTN_INITALLDIFFATTN_H
