//===- launch.h - launching a kernel ----------------------------*- C++ -*-===//
//
// The runtime's launch: a kernel's stages in order on the caller's stream,
// through the CUDA driver, with a launch plan per configuration so that a
// repeated launch costs its pointer writes and driver calls. Opt-in host
// timing of its phases for benchmarks (diffattn_launch_timing).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_LAUNCH_H
#define DIFFATTN_RUNTIME_LIB_LAUNCH_H

#include "diffattn/runtime.h"
#include "manifest.h"

namespace diffattn::runtime {

/// Checks (check.h) and launches every stage of `spec` that has work for
/// B, Sq, Sk (stages whose skip_when holds and stages with an empty grid
/// are not launched) on `stream`. The first launch of a configuration (the
/// buffers' names, dtypes and shapes and B, Sq, Sk) runs every check and
/// records a launch plan; a launch of a configuration with a plan re-checks
/// only the data pointers (a null one takes the checking path, for its
/// message) and the current context. At the first launch that needs the
/// GPU it opens the driver, makes the device's primary context current if
/// none is, and loads the cubin into the current context when it is not
/// loaded there yet. Not thread-safe for one `spec`: the caller serialises
/// launches of a module. Returns DIFFATTN_OK or records why and returns a
/// DIFFATTN_ERROR_* status.
int launch(KernelSpec &spec, const diffattn_buffer *buffers, int numBuffers,
           int64_t B, int64_t Sq, int64_t Sk, void *stream);

/// Host time of launch() by phase since the last call, as runtime.h's
/// diffattn_launch_timing describes; resets the sums and turns the timing
/// on (`enable` != 0) or off.
int takeLaunchTiming(int enable, double *out, int capacity);

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_LAUNCH_H
