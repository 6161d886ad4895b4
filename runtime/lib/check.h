//===- check.h - a launch's arguments against the manifest ------*- C++ -*-===//
//
// The checks every launch passes before anything reaches the GPU: the
// sizes B, Sq, Sk are in range, and each buffer the manifest names is
// present with its dtype and its shape for these sizes, plus the workspace
// the kernel needs. Messages name the kernel, the buffer and what was
// expected.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_CHECK_H
#define DIFFATTN_RUNTIME_LIB_CHECK_H

#include "diffattn/runtime.h"
#include "manifest.h"

#include <vector>

namespace diffattn::runtime {

/// Checks a launch of `spec` with `numBuffers` `buffers` (any order,
/// matched by name) for B, Sq, Sk. On success returns DIFFATTN_OK and fills
/// `ordered` (the buffers in the manifest's argument order, then the
/// workspace if the kernel needs one) and the launch's `sizes`; otherwise
/// records why and returns DIFFATTN_ERROR_INVALID_ARGUMENT.
int check(const KernelSpec &spec, const diffattn_buffer *buffers,
          int numBuffers, int64_t B, int64_t Sq, int64_t Sk,
          std::vector<const diffattn_buffer *> &ordered, Sizes &sizes);

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_CHECK_H
