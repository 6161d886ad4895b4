//===- launch.h - launching a checked kernel --------------------*- C++ -*-===//
//
// The runtime's launch: a kernel's stages in order on the caller's stream,
// through the CUDA driver. The caller has checked the arguments (check.h).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_LAUNCH_H
#define DIFFATTN_RUNTIME_LIB_LAUNCH_H

#include "diffattn/runtime.h"
#include "manifest.h"

#include <vector>

namespace diffattn::runtime {

/// Launches every stage of `spec` that has work for `sizes` (stages whose
/// skip_when holds and stages with an empty grid are not launched) on
/// `stream`, with `ordered` as check() returned it. At the first launch
/// that needs the GPU it opens the driver, makes the device's primary
/// context current if none is, and loads the cubin into the current context
/// when it is not loaded there yet. Not thread-safe for one `spec`: the
/// caller serialises launches of a module. Returns DIFFATTN_OK or records
/// why and returns a DIFFATTN_ERROR_* status.
int launch(KernelSpec &spec,
           const std::vector<const diffattn_buffer *> &ordered,
           const Sizes &sizes, void *stream);

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_LAUNCH_H
