//===- Stage.h - how the compile driver runs a target's stages --*- C++ -*-===//
//
// diffattn-compile runs each stage as a pass manager of its own (as
// Triton's backend runs ttir -> ttgir -> llir -> ptx -> cubin); the targets'
// compile functions hand their pass managers back to the driver through a
// StageRunner, so that --mlir-timing, --mlir-print-ir-after-all and the
// other pass-manager options apply to every stage alike.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_TARGET_STAGE_H
#define DIFFATTN_TARGET_STAGE_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/Timing.h"

namespace mlir::diffattn {

/// Runs `pm` on `module` as the stage called `stage` (its timing scope is
/// nested under the driver's). Returns failure when the pipeline fails.
using StageRunner = function_ref<LogicalResult(PassManager &pm, ModuleOp module,
                                               StringRef stage)>;

} // namespace mlir::diffattn

#endif // DIFFATTN_TARGET_STAGE_H
